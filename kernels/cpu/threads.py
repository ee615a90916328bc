"""relprop's own worker threads for the CPU kernels (no Numba threading layer).

Each kernel is a serial Numba function compiled with ``nogil=True`` and ``error_model="numpy"``
(the model ``parallel=True`` code uses: a division by zero gives inf/nan instead of a Python check
per element, which keeps the loops vectorized; 7x on the LRP ratio) that takes two extra
trailing arguments ``part, parts`` and runs only its share ``[T*part//parts, T*(part+1)//parts)``
of its outer loop of ``T`` iterations. ``threaded(kernel)`` returns the public function (the
kernel's signature without ``part, parts``): it runs part 0 in the calling thread and parts
1..parts-1 on a pool of ``parts - 1`` Python threads, which execute the compiled code in
parallel because it releases the GIL. Every outer iteration writes its own output elements,
so the result is bit for bit the same for any number of parts.

Why not ``numba.prange`` under ``parallel=True``: its threads come from Numba's process-wide
threading layer. Numba's default (``omp`` here, ``tbb`` where installed) keeps its workers
spinning after each parallel kernel, and they take the cores OpenBLAS needs for the GEMM that
follows (on the 2-core reference box the VGG workload ran ~3x slower than with ``workqueue``,
bench/results/2026-11-22-cpu-profile.md); selecting ``workqueue`` for the whole process changes
global state for every other Numba user in it, and ``workqueue`` aborts the process when two
Python threads enter it at once. These workers block on a queue between kernels (like
``workqueue``, no spinning) and belong to relprop alone.

Threads: ``RELPROP_NUM_THREADS`` if set, else the CPUs this process may run on. Arrays below
``MIN_PARALLEL`` elements run in the calling thread (a hand-off costs tens of microseconds).
A forked child starts its own pool (a pool's threads do not survive ``fork``).
"""
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_PARALLEL = 1 << 15  # elements of the largest array argument


def num_threads():
    """Threads a kernel call uses: ``RELPROP_NUM_THREADS``, else the CPUs available to the process."""
    env = os.environ.get("RELPROP_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"RELPROP_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"RELPROP_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


_state = {"pid": None, "pool": None, "threads": 1}
_lock = threading.Lock()


def _pool():
    """(pool, threads) of this process, created on first use (again after a fork)."""
    pid = os.getpid()
    if _state["pid"] != pid:
        with _lock:
            if _state["pid"] != pid:
                n = num_threads()
                _state["pool"] = ThreadPoolExecutor(n - 1, "relprop-kernel") if n > 1 else None
                _state["threads"] = n
                _state["pid"] = pid
    return _state["pool"], _state["threads"]


def threaded(kernel):
    """The public kernel for ``kernel(*args, part, parts)``: ``f(*args)`` runs all parts."""

    @functools.wraps(kernel.py_func)
    def run(*args):
        pool, parts = _pool()
        if pool is None or max((a.size for a in args if isinstance(a, np.ndarray)), default=0) < MIN_PARALLEL:
            kernel(*args, 0, 1)
            return
        rest = [pool.submit(kernel, *args, i, parts) for i in range(1, parts)]
        try:
            kernel(*args, 0, parts)
        finally:
            for f in rest:
                f.result()

    run.kernel = kernel  # the compiled Numba function (part, parts as its last arguments)
    del run.__wrapped__  # inspect.signature: the public one, without part, parts
    return run
