"""Dask integration: lazy attributions of a dask array, and dataset jobs on a cluster.

* :func:`attribute` maps an Explainer over the sample chunks of a dask array: one
  ``Explainer.attribute`` call per chunk, told the global index of the chunk's first row, so
  random methods (which draw per sample from the seed and the sample's index) give what one call
  on the whole array gives, however the array is chunked.
* :func:`run_chunks` is what ``Explainer.map(..., scheduler=client)`` runs: one
  ``dask.distributed`` task per unfinished chunk of the job; each task reads its rows from the
  source, computes them and writes them into the store itself (a path every worker sees), and
  hands back only (rows, seconds). Scheduling, placement, and rescheduling the tasks of a lost
  worker are dask's own.

Needs ``dask[array]`` and ``distributed`` (``pip install 'relprop[dask]'``), imported only when
these functions are called.
"""
from __future__ import annotations

import importlib
import mmap
import numbers
import os
import time
import uuid
from pathlib import Path

import numpy as np

from .runner import sources, stores
from .runner.job import JobError, Progress, model_shape


def _need(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"relprop.dask needs {name.split('.')[0]} (pip install 'relprop[dask]')") from None


# -- lazy attributions of a dask array ---------------------------------------------------------
def attribute(explainer_or_net, x, method=None, *, target=None, targets=None, row_offset=0, **params):
    """Attributions of a dask array, as a lazy dask array: one Explainer call per sample chunk.

    Parameters
    ----------
    explainer_or_net : ``rp.Explainer``, or a model (then ``method`` and ``**params`` build one)
    x : dask array (N, ...), float32 or float64, shaped as the model reads it. It may be chunked
        along samples in any way (uneven chunks too); the other axes are merged into one chunk.
    method : str, with a model: one of ``rp.METHODS``
    target : None (each sample's argmax), a class index, or an int array (N,) (numpy or dask;
        a dask array is rechunked to ``x``'s sample chunks)
    targets : several classes per sample: a list, ``"all"``, or an int array (N, K) (numpy or
        dask); the result is then (N, K, ...)
    row_offset : the global index of ``x``'s first row (when ``x`` is itself part of a dataset)
    **params : with a model: the method's parameters (and ``batch_size=``, ``backend=``)

    Returns
    -------
    dask array (N, ...) or (N, K, ...), x's dtype, chunked like ``x`` along samples. A random
    method whose seed is None gets one seed drawn now, shared by all chunks (and by every
    ``compute()`` of the result).

    Examples
    --------
    >>> import dask.array as da, relprop as rp, relprop.dask       # doctest: +SKIP
    >>> x = da.from_zarr("images.zarr").rechunk({0: 256})          # doctest: +SKIP
    >>> R = relprop.dask.attribute(net, x, "lrp.epsilon", target=3)   # doctest: +SKIP
    >>> R.mean(axis=0).compute()                                   # doctest: +SKIP
    """
    da = _need("dask.array")
    dask = _need("dask")
    ex = _explainer(explainer_or_net, method, params)
    if not isinstance(x, da.Array):
        raise TypeError(f"x must be a dask array (N, ...); for a {type(x).__name__} use rp.Explainer(...)(x), or "
                        f"wrap it with dask.array.from_array(x, chunks=(rows, ...))")
    if np.dtype(x.dtype) not in (np.float32, np.float64):
        raise TypeError(f"x must be a float32 or float64 dask array, got dtype {x.dtype} (cast it with "
                        f"x.astype(np.float32))")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, ...) with the samples first, got shape {x.shape}")
    if any(np.isnan(c) for c in x.chunks[0]):
        raise ValueError("x has chunks of unknown size along the samples axis; call x.compute_chunk_sizes() first")
    n = int(x.shape[0])
    if n == 0:
        raise ValueError(f"x is empty (shape {x.shape})")
    if isinstance(row_offset, (bool, np.bool_)) or not isinstance(row_offset, numbers.Integral):
        raise TypeError(f"row_offset must be an int >= 0 (the global index of x's first row), got {row_offset!r}")
    if row_offset < 0:
        raise ValueError(f"row_offset must be >= 0 (the global index of x's first row), got {row_offset}")
    shape = tuple(int(s) for s in x.shape[1:])
    want = model_shape(ex.net, shape, "x")
    if want != shape:
        raise ValueError(f"x's samples are shaped {shape}, the model reads {want}: reshape x first "
                         f"(x.reshape((-1,) + {want}))")
    out_shape = ex.net.infer_shapes(shape)[ex.net.score_node]
    if len(out_shape) != 1:
        raise ValueError(f"the model's output must be (N, classes) scores, got per-sample shape {out_shape}")
    classes = out_shape[0]

    ex = ex.with_seed()  # one seed for every chunk
    x = x.rechunk({a: -1 for a in range(1, x.ndim)})
    rows = (x.chunks[0],)
    rest = tuple(f"d{a}" for a in range(1, x.ndim))
    args, new_axes, kw = [x, ("n",) + rest, da.arange(n, chunks=rows), ("n",)], {}, {}
    if targets is not None:
        if target is not None:
            raise TypeError("give either target= (one class per sample) or targets= (several classes), not both")
        if isinstance(targets, str) and targets == "all":
            targets = list(range(classes))
        if isinstance(targets, da.Array) or (hasattr(targets, "ndim") and targets.ndim == 2):
            t = _index_array(da, targets, (n, None), classes, "targets")
            args += [t.rechunk((rows[0], -1)), ("n", "k")]  # the output's K axis is this array's
        else:
            t = np.asarray(targets)
            if t.size == 0 or t.ndim != 1 or not np.issubdtype(t.dtype, np.integer):
                raise TypeError(f"targets must be a non-empty list of class indices, 'all' or an int array (N, K), "
                                f"got {targets!r:.80}")
            _in_range(t, classes, "targets")
            kw["targets"], new_axes["k"] = [int(c) for c in t], len(t)
        out_ind = ("n", "k") + rest
    else:
        out_ind = ("n",) + rest
        if isinstance(target, da.Array) or (target is not None and not isinstance(target, numbers.Integral)):
            t = _index_array(da, target, (n,), classes, "target")
            args += [t.rechunk(rows), ("n",)]
        elif target is not None:
            if isinstance(target, (bool, np.bool_)):
                raise TypeError(f"target must be None, a class index or an int array (N,), got {target!r}")
            _in_range(np.asarray([target]), classes, "target")
            kw["target"] = int(target)
    per_sample = _per_sample_params(ex, x.ndim, n)
    kw.update(row_offset=int(row_offset), per_sample=per_sample)
    # given, so dask never calls the block on fake data; numpy or cupy, like x's blocks
    meta = da.utils.meta_from_array(x, ndim=len(out_ind), dtype=x.dtype)
    exd = dask.delayed(ex, name=f"relprop-explainer-{uuid.uuid4().hex}")  # one graph key, not a copy per task
    return da.blockwise(_attribute_block, out_ind, exd, None, *args, new_axes=new_axes, dtype=x.dtype, meta=meta,
                        name=f"relprop-{ex.method.name}-{uuid.uuid4().hex}", **kw)


def _explainer(explainer_or_net, method, params):
    from .explainer import Explainer

    if isinstance(explainer_or_net, Explainer):
        if method is not None or params:
            given = ["method"] * (method is not None) + sorted(params)
            raise TypeError(f"an Explainer carries its method and parameters; got {', '.join(given)} as well")
        return explainer_or_net
    if method is None:
        raise TypeError("with a model, give method= (one of rp.METHODS), or pass an rp.Explainer")
    return Explainer(explainer_or_net, method, **params)


def _index_array(da, t, shape, classes, name):
    """An int dask array of class indices shaped ``shape`` (None: any length); numpy arrays are
    checked for range now, dask arrays by the Explainer per chunk."""
    if not isinstance(t, da.Array):
        t = np.asarray(t)
    if not np.issubdtype(t.dtype, np.integer) or t.ndim != len(shape) or \
            any(w is not None and s != w for s, w in zip(t.shape, shape)):
        want = f"({shape[0]},)" if len(shape) == 1 else f"({shape[0]}, K)"
        raise ValueError(f"a {name} array must be int, shaped {want}, got {t.dtype} {tuple(t.shape)}")
    if isinstance(t, da.Array):
        return t
    _in_range(t, classes, name)
    return da.from_array(t)


def _in_range(t, classes, name):
    if t.size and (t.min() < 0 or t.max() >= classes):
        raise ValueError(f"{name} must lie in 0..{classes - 1} for a model with {classes} outputs, got min "
                         f"{int(t.min())}, max {int(t.max())}")


def _per_sample_params(ex, ndim, n):
    """The method's array parameters that hold one row per sample of the whole ``x`` (e.g. a
    baseline per sample): each chunk gets its own rows of them."""
    return tuple(k for k in ex.runs.per_sample
                 if getattr(ex.params.get(k), "ndim", None) == ndim and ex.params[k].shape[0] == n and n > 1)


def _attribute_block(ex, x, rows, t=None, *, target=None, targets=None, row_offset=0, per_sample=()):
    """One chunk: ``x`` its samples, ``rows`` their indices in the whole array, ``t`` their
    target column (N,) or matrix (N, K) when the targets came as an array."""
    sl = slice(int(rows[0]), int(rows[-1]) + 1)
    if per_sample:  # the compiled weights are shared, only the rows differ
        ex = ex.for_rows(sl.start, sl.stop, ex.params[per_sample[0]].shape[0], x.ndim)
    if t is not None:
        if t.ndim == 2:
            targets = t
        else:
            target = t
    return ex.attribute(x, target=target, targets=targets, row_offset=row_offset + sl.start)


# -- dataset jobs on a cluster ---------------------------------------------------------------------
def run_chunks(chunk, src, store, done, scheduler, progress):
    """Compute the unfinished chunks of a dataset job on a ``dask.distributed`` cluster.

    What ``Explainer.map(source, out=..., scheduler=...)`` runs (``relprop.runner.job``); the
    store is already laid out. Each unfinished chunk is one task: a worker reopens the store by
    its path, reads the chunk's rows from the source, runs ``chunk.compute`` and writes the
    chunk and its manifest entry itself; only a summary (rows, seconds) comes back. A chunk's
    result does not depend on the worker (random methods draw per sample from the job's seed
    and the sample's index), so the store equals the one a single process writes.

    Parameters
    ----------
    chunk : ``relprop.runner.job.Chunk``: sent to the workers once (``client.scatter``,
        broadcast), not once per task
    src : a random-access source. A ``.npy`` or zarr path, or a memory-mapped array, travels
        as its file's path and each worker maps it again; any other source (an in-memory array,
        an image folder) is scattered once and dask copies it to the workers that need it.
    store : the open store (``NpyStore`` or ``ZarrStore``); its path must be visible to every
        worker (a shared file system)
    done : set of the chunk ids already finished (a resumed job computes only the others)
    scheduler : a ``distributed.Client``, or a scheduler address (``"tcp://host:port"``) or a
        cluster object (then a client is opened for the job and closed after it)
    progress : show a progress bar (``relprop.runner.job.Progress``)

    Raises
    ------
    JobError : the source is an iterable of batches (it cannot be split among workers)
    the first failing task's exception, with a note naming its chunk and rows; the tasks not
        yet started are cancelled, the chunks already written stay finished (a rerun resumes)

    Examples
    --------
    >>> from distributed import Client                                  # doctest: +SKIP
    >>> client = Client("tcp://scheduler:8786")                         # doctest: +SKIP
    >>> res = ex.map("/shared/x.npy", out="/shared/attr.zarr", scheduler=client)   # doctest: +SKIP
    """
    if not getattr(src, "random_access", False):
        raise JobError("a cluster job (scheduler=) needs a random-access source: an array, a .npy or zarr path, IDX "
                       "files or a folder of images; an iterable of batches can only be read in order by one process "
                       "(run it without scheduler=, or write the dataset to .npy/zarr first)")
    if store.path is None:
        raise JobError("a cluster job needs out= (a store on a path every worker sees)")
    distributed = _need("distributed")
    own = not isinstance(scheduler, distributed.Client)
    if own and not (isinstance(scheduler, str) or hasattr(scheduler, "scheduler_address")):
        raise TypeError(f"scheduler must be a distributed.Client, a scheduler address ('tcp://host:port') or a "
                        f"cluster, got {type(scheduler).__name__}")
    todo = [i for i in range(store.chunks) if i not in done]
    bar = Progress(store.n, sum(_rows(store, i) for i in done), progress)
    if not todo:
        bar.close()
        return
    client = distributed.Client(scheduler, set_as_default=False) if own else scheduler
    futures = []
    try:
        path = str(Path(store.path).resolve())
        chunk_f = client.scatter(chunk, broadcast=True, hash=False)
        moving = _Reopen.of(src)
        src_f = client.scatter(moving or src, broadcast=moving is not None, hash=False)
        run = uuid.uuid4().hex[:12]  # recorded with each chunk (as a local run does), and in the task keys
        futures = [client.submit(_run_chunk, chunk_f, src_f, path, store.meta, i, run, pure=False,
                                 key=f"relprop-chunk-{i}-{store.meta['job'][:8]}-{run}") for i in todo]
        where = {f.key: i for f, i in zip(futures, todo)}
        for fut in distributed.as_completed(futures, loop=client.loop):  # this client, not the default one
            try:
                summary = fut.result()
            except Exception as e:
                sl = store.chunk_slice(where[fut.key])
                e.add_note(f"relprop: in chunk {where[fut.key]} (rows {sl.start}..{sl.stop - 1}) of the cluster job "
                           f"writing {path!r}")
                raise
            bar.update(summary["rows"])
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
        bar.close()
        if own:
            client.close()


def _rows(store, i):
    sl = store.chunk_slice(i)
    return sl.stop - sl.start


def _run_chunk(chunk, source, path, meta, i, run):
    """The task of chunk ``i``, on a worker: read, compute, write; returns a summary."""
    worker = _worker_address()
    src = source.open() if isinstance(source, _Reopen) else source
    try:
        store = stores.open_store(path, meta, mode="r+")
    except (stores.StoreError, OSError) as e:
        raise stores.StoreError(f"worker {worker} cannot open the store {path!r} ({e}); a cluster job's out= must "
                                f"be a path every worker sees (a shared file system)") from None
    try:
        sl = store.chunk_slice(i)
        t0 = time.perf_counter()
        x, y = src.read(sl.start, sl.stop)
        cols = chunk.compute(x, y, sl)
        seconds = round(time.perf_counter() - t0, 4)
        store.write(i, cols, {"seconds": seconds, "run": run, "pid": os.getpid(), "worker": worker})
    finally:
        store.close()
    return {"chunk": i, "rows": sl.stop - sl.start, "seconds": seconds, "worker": worker}


def _worker_address():
    try:
        return _need("distributed").get_worker().address
    except ValueError:  # run outside a worker (e.g. a local test of the task)
        return None


class _Reopen:
    """A random-access source over a file, sent to workers as the file's path (and the labels):
    each worker opens it again (a memory map costs nothing), instead of receiving a copy of the
    data (a numpy memmap pickles as its whole contents)."""

    def __init__(self, kind, path, labels, n, shape, dtype, mapping=None):
        self.kind, self.path, self.labels = kind, path, labels
        self.n, self.shape, self.dtype, self.mapping = n, shape, np.dtype(dtype), mapping

    @classmethod
    def of(cls, src):
        """The reopener of ``src``, or None when it travels as itself."""
        if type(src) is not sources.ArraySource:
            return None
        d = src.describe()
        if d.get("kind") in ("npy", "zarr") and d.get("path"):  # opened by relprop from that path
            return cls(d["kind"], d["path"], src.labels, src.n, src.shape, src.dtype)
        a = src.data
        if isinstance(a, np.memmap) and isinstance(a.base, mmap.mmap) and a.filename:  # a whole map, not a view
            order = "F" if a.flags.f_contiguous and not a.flags.c_contiguous else "C"
            return cls("memmap", a.filename, src.labels, src.n, src.shape, src.dtype, (int(a.offset), order))
        root = getattr(getattr(a, "store", None), "root", None)
        if type(a).__module__.startswith("zarr") and type(a.store).__name__ == "LocalStore" and root is not None:
            # a zarr array pickles with its folder as given: a relative one would read another (or
            # no) folder on a worker whose working directory differs, silently as fill values
            path = Path(root).resolve() / a.path if a.path else Path(root).resolve()
            return cls("zarr", str(path), src.labels, src.n, src.shape, src.dtype)
        return None

    def open(self):
        try:
            if self.kind == "memmap":
                offset, order = self.mapping
                data = np.memmap(self.path, dtype=self.dtype, mode="r", offset=offset, shape=(self.n,) + self.shape,
                                 order=order)
                src = sources.ArraySource(data, self.labels)
            else:
                src = sources.as_source(self.path, labels=self.labels)
        except (OSError, ValueError) as e:
            raise sources.SourceError(f"worker {_worker_address()} cannot open the dataset {self.path!r} ({e}); a "
                                      f"cluster job's source must be a path every worker sees") from None
        if (src.n, src.shape, src.dtype) != (self.n, self.shape, self.dtype):
            raise sources.SourceError(f"the dataset {self.path!r} on worker {_worker_address()} holds {src.n} samples "
                                      f"{src.shape} {src.dtype}; the job was planned for {self.n} samples "
                                      f"{self.shape} {self.dtype} (it changed, or the workers see another file)")
        return src
