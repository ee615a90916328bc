"""Every test of ``test_gpu_kernels.py``, with the CUDA kernels run on the CPU (``cuda_host``).

CI has no GPU; this runs each kernel's CUDA source (compiled as C++ by g++, every thread in
turn, bounds-checked) through the real ``relprop.kernels.gpu`` wrappers against the Numba
kernels, so an indexing, control-flow or argument-passing error fails here. What only a GPU
shows (CUDA's math library, atomics, launch limits) is left to ``test_gpu_kernels.py``.
"""
from __future__ import annotations

import shutil
from types import SimpleNamespace

import pytest

import test_gpu_kernels as gpu_tests
from cuda_host import emulated_cupy

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the host emulation of the CUDA kernels needs g++")


@pytest.fixture(scope="module", params=["int32", "int64"])
def gpu(request):
    """The GPU kernel package over the host emulation; ``int64`` forces the 64-bit index kernels."""
    with emulated_cupy() as (cp, k):
        mp = pytest.MonkeyPatch()
        if request.param == "int64":
            mp.setattr(k._launch, "INT_LIMIT", 0)
        yield SimpleNamespace(k=k, cp=cp)
        mp.undo()


rng = gpu_tests.rng
# the tests themselves, collected again here with the fixture above
globals().update({name: f for name, f in vars(gpu_tests).items() if name.startswith("test_gpu_")})
