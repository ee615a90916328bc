"""Backend dispatch: the only module that imports a kernel package (and so Numba).

The backend is picked from the input array's type: numpy arrays run on the Numba CPU
kernels (``relprop.kernels.cpu``). A CuPy backend with the same kernel names is the GPU issue.

Threading: Numba's ``omp`` layer spins its workers after every parallel kernel and steals the
cores OpenBLAS needs for the GEMMs in between (on 2 cores the VGG bench ran slower with it).
relprop therefore selects the ``workqueue`` layer unless ``NUMBA_THREADING_LAYER`` is set;
workqueue must not be entered from two Python threads at once, so kernel calls are serialized
by a lock (dataset jobs parallelize over processes, e.g. Dask workers, not threads).
"""
from __future__ import annotations

import os
import threading

import numpy as np

if "NUMBA_THREADING_LAYER" not in os.environ:
    import numba

    numba.config.THREADING_LAYER = "workqueue"

from .kernels import cpu as _cpu  # noqa: E402

LOCK = threading.RLock()


def kernels_for(x):
    """The kernel module for arrays like ``x``."""
    if isinstance(x, np.ndarray):
        return _cpu
    mod = type(x).__module__
    if mod.startswith("cupy"):
        raise TypeError(
            "relprop: the GPU (CuPy) backend is not available in this version; pass a numpy array "
            "(e.g. x.get()) to run on the CPU"
        )
    raise TypeError(f"relprop: expected a numpy array, got {type(x).__module__}.{type(x).__name__}")
