"""The execution layer: internal batches, device out-of-memory back-off, backend marshalling.

Every call of every method goes through here once: the input is moved to the chosen backend
(:func:`to_backend`), cut into internal batches of ``batch_size`` rows (:class:`Budget` picks
the size when it is not given), each batch runs, and the results are written into one output.
On the GPU an out-of-memory error frees the cached memory, halves the batch and retries it;
the size that fitted is remembered in the compiled model state.
"""
from __future__ import annotations

import numpy as np

from . import backend, engine
from .checks import _check_model, _check_x
from .budget import BUDGET, Budget  # noqa: F401  (the one memory policy)
from .plan import compiled


def row_bytes(shapes, itemsize):
    """Bytes of all node outputs of one sample."""
    return max(1, sum(int(np.prod(s)) for s in shapes.values()) * itemsize)


def to_backend(x, which):
    """``x`` as an array of the chosen backend, and the function that turns results back
    into ``x``'s own type. ``which``: None (x's own backend), ``"cpu"`` or ``"gpu"``.
    Torch tensors travel through DLPack (zero-copy for CUDA tensors)."""
    if which not in (None, "cpu", "gpu"):
        raise ValueError(f"backend must be None, 'cpu' or 'gpu', got {which!r}")
    back = _same
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach()
        if t.is_cuda:
            cp = _cupy("a torch CUDA tensor")
            x, back = cp.from_dlpack(t.contiguous()), torch.from_dlpack
        else:
            x, back = t.contiguous().numpy(), torch.from_numpy
    if which == "gpu" and isinstance(x, np.ndarray):
        cp = _cupy("backend='gpu'")
        x, inner = cp.asarray(x), back
        back = lambda r: inner(r.get())  # noqa: E731
    elif which == "cpu" and backend.is_device(backend.kernels_for(x)):
        cp = _cupy("a CuPy array")
        x, inner = backend.to_host(x), back
        back = lambda r: inner(cp.asarray(r))  # noqa: E731
    elif not isinstance(x, np.ndarray):
        backend.kernels_for(x)  # TypeError naming the type when no backend takes it
    return x, back


def _same(r):
    return r


def _cupy(what):
    try:
        import cupy
    except ImportError:
        raise ImportError(f"relprop: {what} needs CuPy (pip install 'relprop[gpu]')") from None
    return cupy


def run_batches(m, x, step, key, fn, out=None):
    """``fn(slice, rows)`` over ``x`` in batches of ``step`` rows; results go into ``out``
    (allocated from the first result when None) along the first axis.

    On the GPU an out-of-memory error frees the cached memory, halves the batch and retries
    that batch; the batch size that fitted is remembered in ``m`` for the input shape, and
    when even one sample does not fit the error says so."""
    k = backend.kernels_for(x)
    n = x.shape[0]
    memo = (k.name, tuple(x.shape[1:])) + tuple(key)
    step = max(1, min(step, m.fit_step.get(memo, step)))
    i = 0
    while i < n:
        sl = slice(i, min(n, i + step))
        try:
            r = fn(sl, step)
        except k.OOM as e:
            engine.release_scratch()
            backend.free_memory(k)
            if step == 1:
                raise MemoryError(f"relprop: one sample of shape {tuple(x.shape[1:])} does not fit in {k.name} memory "
                                  f"for this method ({e})") from e
            step = max(1, (sl.stop - sl.start) // 2)
            m.fit_step[memo] = step
            continue
        if out is None:
            if sl.stop == n and i == 0:
                return r
            out = k.xp.empty((n,) + r.shape[1:], r.dtype)
        if not written_in_place(r, out[sl]):
            out[sl] = r
        i = sl.stop
    return out


PAGE = 4096  # bytes: the alignment of page_aligned arrays (and of a dataset store's direct writes)


def page_aligned(shape, dtype):
    """An uninitialised C-order numpy array whose data start on a ``PAGE`` boundary (the results
    a dataset job writes to a ``.npy`` store by direct I/O)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + PAGE, np.uint8)
    skip = -raw.ctypes.data % PAGE
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def written_in_place(r, rows):
    """Whether the result ``r`` is the output rows ``rows`` themselves (a traversal that wrote
    into them, ``Context.dest``; a dataset chunk computed into its in-memory column)."""
    return (isinstance(r, np.ndarray) and isinstance(rows, np.ndarray) and r.shape == rows.shape
            and r.dtype == rows.dtype and r.strides == rows.strides and r.ctypes.data == rows.ctypes.data)


def check_batch_size(batch_size):
    if batch_size is None or batch_size == "auto":
        return None
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be None/'auto' or an int >= 1 (rows per internal batch), got {batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (rows per internal batch), got {batch_size}")
    return int(batch_size)


def forward(net, x, backend=None, batch_size=None):
    """The model's output for ``x`` (softmax applied when the last layer is Softmax), as ``x``'s
    array type; ``backend`` as in ``relprop.attribute``."""
    return _run_forward(net, x, backend, batch_size, scores=False)


def scores(net, x, backend=None, batch_size=None):
    """The score vectors explanations start from, (N, classes): the model's output, or the input of
    a final Softmax (the logits); ``x``'s array type, ``backend`` as in ``relprop.attribute``."""
    return _run_forward(net, x, backend, batch_size, scores=True)


def _run_forward(net, x, backend, batch_size, scores):
    from . import backend as B

    _check_model(net)
    step = check_batch_size(batch_size)
    x, back = to_backend(x, backend)
    x, shapes = _check_x(net, x, scores=scores)
    m = compiled(net, x.dtype)
    if step is None:
        step = BUDGET.rows(row_bytes(shapes, x.itemsize), B.is_device(B.kernels_for(x)))
    if scores:
        keep, key, pick = (net.score_node,), ("scores",), 0
    else:
        keep, key, pick = (), ("forward",), 1
    with B.LOCK:
        return back(run_batches(m, x, step, key, lambda sl, st: engine.forward(m, x[sl], keep, (), shapes)[pick]))
