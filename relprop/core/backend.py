"""Backend dispatch: the only module that imports a kernel package (and so Numba or CuPy).

The backend is picked from the input array's type: numpy arrays run on the Numba CPU kernels
(``relprop.kernels.cpu``), CuPy arrays on the CuPy kernels (``relprop.kernels.gpu``, imported
the first time a CuPy array is seen). Both kernel packages have the same function names and
signatures and name their array module ``xp`` (numpy / cupy), so the engine is written once:
``k = kernels_for(x)`` then ``k.xp.empty(...)``, ``k.im2col(...)``. Model weights and compiled
rule matrices are copied to the device once by the compiled plan (``relprop.core.plan.Compiled.on``).

Threading: importing relprop leaves Numba's process-wide configuration alone (a library
embedded in other libraries must not change global state on import). The CPU kernels do not
use ``parallel=True``/``prange``, so they never start or enter a Numba threading layer: they
are serial ``nogil`` functions split over relprop's own worker threads
(``relprop.kernels.cpu.threads``; ``RELPROP_NUM_THREADS`` sets how many). Those threads block
between kernels instead of spinning, so OpenBLAS keeps the cores for the GEMMs in between --
the benefit once bought by forcing Numba's ``workqueue`` layer (3x on the 2-core VGG bench
against ``omp``, whose workers spin). Other Numba code in the process keeps the layer it
chooses, in any thread. Kernel calls are serialized by ``LOCK`` because the engine reuses one
scratch buffer per slot (dataset jobs parallelize over processes, e.g. Dask workers).
"""
from __future__ import annotations

import threading

import numpy as np

from ..kernels import cpu as _cpu

LOCK = threading.RLock()

# extra backends: (predicate(x) -> bool, loader() -> kernel module); tests register a strict
# host-emulated "device" here to check that no host array leaks into a device pipeline
_EXTRA = []


def register(predicate, loader):
    """Add a backend for arrays where ``predicate(x)`` holds; ``loader()`` returns its kernel
    module (the names of ``relprop.kernels.cpu`` plus ``xp``, ``name``, ``OOM``)."""
    _EXTRA.insert(0, (predicate, loader))


def unregister(predicate):
    _EXTRA[:] = [e for e in _EXTRA if e[0] is not predicate]


def _is_cupy(x):
    return type(x).__module__.startswith("cupy")


def _load_gpu():
    try:
        from ..kernels import gpu
    except ImportError as e:  # pragma: no cover - needs a broken CuPy install
        raise ImportError(f"relprop: CuPy arrays need the gpu extra (pip install 'relprop[gpu]'): {e}") from e
    return gpu


def kernels_for(x):
    """The kernel module for arrays like ``x``."""
    for pred, loader in _EXTRA:
        if pred(x):
            return loader()
    if isinstance(x, np.ndarray):
        return _cpu
    if _is_cupy(x):
        return _load_gpu()
    raise TypeError(f"relprop: expected a numpy or cupy array, got {type(x).__module__}.{type(x).__name__}")


def is_device(k):
    """True for a kernel module whose arrays are not numpy arrays (the GPU)."""
    return k.xp is not np


def to_host(a):
    """A numpy array with the contents of ``a`` (numpy or device array)."""
    if isinstance(a, np.ndarray) and type(a) is np.ndarray:
        return a
    get = getattr(a, "get", None)
    return np.asarray(get() if get is not None else a)


def free_memory(k):
    """Return cached device memory to the driver (after an out-of-memory error)."""
    if is_device(k) and hasattr(k, "free_memory"):
        k.free_memory()


class tf32:
    """Context: float32 GEMMs on the GPU may use TF32 tensor cores (``allow_tf32=True``).

    TF32 rounds the GEMM operands to a 10-bit mantissa (relative error ~1e-3 per product
    instead of ~1e-7); attributions then agree with fp32 to about 1e-3 x max|R|, not 1e-6.
    Off by default. No effect on the CPU or in float64."""

    def __init__(self, k, on):
        self.k, self.on, self.saved = k, bool(on), None

    def __enter__(self):
        if self.on and is_device(self.k):
            self.saved = self.k.set_tf32(True)
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            self.k.set_tf32(self.saved)
        return False
