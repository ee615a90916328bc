"""relprop's GEMMs: a private, single-threaded copy of numpy's OpenBLAS, each large product split
into column blocks over relprop's own worker threads.

Why not numpy's OpenBLAS with its own threads: after every GEMM, OpenBLAS's worker threads spin
for ``2**OPENBLAS_THREAD_TIMEOUT`` cycles (default ``2**28``, about 0.1 s) before they sleep. A CNN's
passes alternate GEMMs with relprop's elementwise kernels every few milliseconds, so the spinning
workers held the cores relprop's kernel threads wanted: on the 2-core reference machine relprop's
second thread bought nothing on the VGG-shaped W1 (``bench/results/2026-12-02-cpu-blas-spin.md``),
and a call ran 16-31% faster with GEMMs computed this way. The timeout is read once, when the
library loads, for the whole process; relprop must not change it (nor numpy's thread count) for
its user's other code. So relprop loads its own copy of the library file (the dynamic loader
gives a copy with another inode its own state), sets that copy to one thread, and runs the
blocks of a product on its worker threads, which sleep on a queue between kernels.

The copy goes to ``RELPROP_CACHE_DIR`` or ``$XDG_CACHE_HOME/relprop`` (``~/.cache/relprop``),
named by numpy's file name (which carries a hash of its contents) and size; a cached copy is used
only when this user owns it and nobody else can write it. When it loads, the copy starts its own
worker threads (OpenBLAS does so from the core count); they spin about 0.1 s and then sleep for
good, since the copy is held at one thread (also against ``threadpoolctl``, which does not list
it: its name does not start as numpy's). Where no copy can be made (numpy built on another BLAS,
as numpy < 2's wheels, macOS and Windows; a cache that cannot be written; a loader error;
``RELPROP_PRIVATE_BLAS=0``), :func:`matmul` is ``numpy.matmul``.

The column blocks are cut at positions that depend on the product's shape only (``PARTS`` blocks,
taken by whichever thread is free), so the results are the same bits for any number of threads.
"""
import ctypes
import glob
import hashlib
import os
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np

from . import threads as TH

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
SPLIT_MNK = 1 << 21  # m*n*k from which a product is cut into column blocks (smaller: one call)
MIN_COLS = 64  # columns per block at least
PARTS = 8  # column blocks of a large product (at most; fixed, so the bits do not depend on the threads)

_state = {"pid": None, "lib": None}
_lock = threading.Lock()


def _after_fork():  # a fork while another thread held the lock (making the copy) leaves it held
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _numpy_openblas():
    """The path of the OpenBLAS file numpy has loaded (numpy's wheels bundle scipy-openblas), or None."""
    here = os.path.dirname(np.__file__)
    for path in sorted(glob.glob(os.path.join(os.path.dirname(here), "numpy.libs", "libscipy_openblas*.so*"))):
        try:
            ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL)  # the copy numpy uses: loaded already
        except (OSError, AttributeError):
            continue
        return path
    return None


def cache_dir():
    env = os.environ.get("RELPROP_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "relprop"


def _trusted(p, size):
    """Whether the cached copy ``p`` can be loaded: this user's, writable by nobody else, whole."""
    try:
        st = os.stat(p)
    except OSError:
        return False
    return st.st_size == size and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _private_copy(path):
    """A copy of ``path`` in the cache (made once: written under a temporary name, then renamed)."""
    size = os.stat(path).st_size
    key = hashlib.sha256(f"{os.path.basename(path)}:{size}".encode()).hexdigest()[:16]
    dest = cache_dir() / f"private-openblas-{key}.so"
    if not _trusted(dest, size):
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, dest)
        finally:
            if tmp.exists():
                tmp.unlink()
    return dest


def gemm_functions(lib):
    """(CBLAS ``?gemm`` functions of an OpenBLAS ``lib`` by dtype, their name prefix, suffix and
    integer type), trying scipy-openblas's and plain names, ILP64 first; None without both."""
    for prefix, suffix, it in (("scipy_cblas_", "64_", ctypes.c_int64), ("cblas_", "64_", ctypes.c_int64),
                               ("scipy_cblas_", "", ctypes.c_int32), ("cblas_", "", ctypes.c_int32)):
        fns = {}
        for t, ct in (("s", ctypes.c_float), ("d", ctypes.c_double)):
            f = getattr(lib, f"{prefix}{t}gemm{suffix}", None)
            if f is None:
                break
            f.restype = None
            f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, it, it, it, ct, ctypes.c_void_p, it,
                          ctypes.c_void_p, it, ct, ctypes.c_void_p, it]
            fns[np.dtype(ct)] = f
        if len(fns) == 2:
            return fns, prefix, suffix, it
    return None


def _bind(lib):
    """(gemm functions by dtype, set_num_threads, get_num_threads, largest CBLAS int) of an
    OpenBLAS ``lib``, or None."""
    found = gemm_functions(lib)
    if found is None:
        return None
    fns, prefix, suffix, it = found
    pre = "scipy_openblas" if prefix.startswith("scipy") else "openblas"
    setter = getattr(lib, f"{pre}_set_num_threads{suffix}", None) or getattr(lib, f"{pre}_set_num_threads", None)
    getter = getattr(lib, f"{pre}_get_num_threads{suffix}", None) or getattr(lib, f"{pre}_get_num_threads", None)
    if setter is None or getter is None:
        return None
    setter.argtypes, setter.restype, getter.argtypes, getter.restype = [ctypes.c_int], None, [], ctypes.c_int
    return fns, setter, getter, 2 ** (8 * ctypes.sizeof(it) - 1) - 1


def enabled():
    """``RELPROP_PRIVATE_BLAS``: "1" (default) or "0"."""
    v = os.environ.get("RELPROP_PRIVATE_BLAS", "1").strip()
    if v not in ("0", "1"):
        raise ValueError(f"RELPROP_PRIVATE_BLAS must be 1 (relprop's private BLAS copy, the default) or 0 "
                         f"(numpy's BLAS), got {v!r}")
    return v == "1"


def _load():
    if not enabled():
        return None
    try:
        path = _numpy_openblas()
        if path is None:
            return None
        lib = ctypes.CDLL(str(_private_copy(path)), mode=os.RTLD_LOCAL)
        bound = _bind(lib)
        if bound is None:
            return None
        bound[1](1)
        return (lib,) + bound
    except (OSError, ValueError):
        return None


def _private():
    """(lib, gemm by dtype, set_num_threads, get_num_threads, largest int its CBLAS takes) of this
    process, or None."""
    pid = os.getpid()
    if _state["pid"] != pid:
        with _lock:
            if _state["pid"] != pid:
                _state["lib"], _state["pid"] = _load(), pid
    return _state["lib"]


def private_gemm(dtype):
    """The private copy's CBLAS ``?gemm`` for ``dtype`` (float32/float64), or None; its thread
    count is held at one (``threadpoolctl`` in the user's code may have changed it)."""
    p = _private()
    if p is None:
        return None
    _, fns, setter, getter, _ = p
    if getter() != 1:
        setter(1)
    return fns.get(np.dtype(dtype))


def _int_max():
    p = _private()
    return 0 if p is None else p[4]


def _operand(a):
    """(transpose flag, leading dimension) for a 2-D operand BLAS can read in place, else None."""
    if not a.flags.aligned:
        return None
    s0, s1 = a.strides
    item = a.itemsize
    if s1 == item and s0 % item == 0 and s0 // item >= max(1, a.shape[1]):
        return _NO_TRANS, s0 // item
    if s0 == item and s1 % item == 0 and s1 // item >= max(1, a.shape[0]):
        return _TRANS, s1 // item
    return None


def run_blocks(fn, n_items, min_items):
    """``fn(lo, hi)`` over ``[0, n_items)`` cut into at most ``PARTS`` blocks of at least
    ``min_items`` (positions that depend on ``n_items`` only), which relprop's threads take as
    they finish (the calling thread too)."""
    parts = max(1, min(PARTS, n_items // max(1, min_items)))
    bounds = [n_items * i // parts for i in range(parts + 1)]
    pool, threads = TH._pool()
    if pool is None or parts == 1:
        for i in range(parts):
            fn(bounds[i], bounds[i + 1])
        return
    taken = iter(range(parts))  # next() on a range iterator is atomic under the GIL

    def work():
        for i in taken:
            fn(bounds[i], bounds[i + 1])

    rest = [pool.submit(work) for _ in range(min(threads, parts) - 1)]
    try:
        work()
    finally:
        for f in rest:
            f.result()


def matmul(a, b, out=None):
    """``numpy.matmul(a, b, out=out)`` for 2-D and stacked 3-D float arrays, its GEMMs on the
    private single-threaded OpenBLAS, a large one cut into column blocks (3-D: into groups of
    matrices) over relprop's threads. Other inputs (dtypes, layouts, shapes) go to numpy."""
    if not (type(a) is np.ndarray and type(b) is np.ndarray and (out is None or type(out) is np.ndarray)) \
            or a.dtype != b.dtype or a.dtype not in (np.float32, np.float64) or a.ndim != b.ndim \
            or a.ndim not in (2, 3) or (out is not None and not (out.flags.writeable and out.flags.aligned)):
        return np.matmul(a, b, out=out)
    gemm = private_gemm(a.dtype)
    if gemm is None or max(a.shape + b.shape + a.strides + b.strides) > _int_max():
        return np.matmul(a, b, out=out)
    if a.ndim == 3:
        if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1] or a.shape[0] == 0:
            return np.matmul(a, b, out=out)
        if out is None:
            out = np.empty((a.shape[0], a.shape[1], b.shape[2]), a.dtype)
        elif not (out.shape == (a.shape[0], a.shape[1], b.shape[2]) and out.dtype == a.dtype) \
                or np.may_share_memory(out, a) or np.may_share_memory(out, b):
            return np.matmul(a, b, out=out)
        if any(_operand(t[0]) is None for t in (a, b)) or _operand(out[0]) != (_NO_TRANS, out.strides[1] // out.itemsize):
            return np.matmul(a, b, out=out)

        def group(lo, hi):
            for i in range(lo, hi):
                _gemm2(gemm, a[i], b[i], out[i])

        run_blocks(group, a.shape[0], max(1, SPLIT_MNK // max(1, a.shape[1] * a.shape[2] * b.shape[2])))
        return out
    m, k = a.shape
    k2, n = b.shape
    if k != k2:
        return np.matmul(a, b, out=out)  # (numpy's error message)
    if out is None:
        out = np.empty((m, n), a.dtype)
    elif not (out.shape == (m, n) and out.dtype == a.dtype):
        return np.matmul(a, b, out=out)
    if _operand(a) is None or _operand(b) is None or _operand(out) != (_NO_TRANS, out.strides[0] // out.itemsize) \
            or np.may_share_memory(out, a) or np.may_share_memory(out, b):  # (numpy copies what overlaps)
        return np.matmul(a, b, out=out)
    if m * n * k < SPLIT_MNK or n < 2 * MIN_COLS:
        _gemm2(gemm, a, b, out)
        return out
    run_blocks(lambda lo, hi: _gemm2(gemm, a, b[:, lo:hi], out[:, lo:hi]), n, MIN_COLS)
    return out


def _gemm2(gemm, a, b, out):
    """``out = a @ b`` for 2-D operands BLAS reads in place (``out`` row-major)."""
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        out[...] = 0
        return
    ta, lda = _operand(a)
    tb, ldb = _operand(b)
    gemm(_ROW_MAJOR, ta, tb, m, n, k, 1.0, a.ctypes.data, lda, b.ctypes.data, ldb, 0.0, out.ctypes.data,
         out.strides[0] // out.itemsize)
