"""The CUDA sources of ``relprop.kernels.gpu`` compile, without a GPU.

Every kernel family is compiled with NVRTC (``libnvrtc`` from the ``nvidia-cuda-nvrtc`` wheel,
loaded with ctypes: no driver, no CuPy) for each target architecture, with the options CuPy's
``RawModule`` uses plus the package's own, and every template instantiation must resolve to a
kernel in the binary. A syntax or type error in a kernel therefore fails CI, which has no
GPU. Two tests check that a broken source is reported as a failure.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib.util
import os
from pathlib import Path

import pytest

# sm_75 is the oldest architecture CUDA 13 (cupy-cuda13x) targets, sm_90 the H100
ARCHS = ("sm_75", "sm_90")
# what cupy.RawModule adds to the package's options (cupy/cuda/compiler.py)
CUPY_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def _load_sources():
    """kernels/gpu/sources.py, loaded by path: importing relprop.kernels.gpu would import CuPy."""
    kernels = importlib.util.find_spec("relprop.kernels")
    path = Path(kernels.submodule_search_locations[0]) / "gpu" / "sources.py"
    spec = importlib.util.spec_from_file_location("_relprop_gpu_sources", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sources = _load_sources()


def _find_nvrtc():
    candidates = []
    if os.environ.get("RELPROP_NVRTC"):
        candidates.append(os.environ["RELPROP_NVRTC"])
    spec = importlib.util.find_spec("nvidia")
    for root in (spec.submodule_search_locations if spec else []):
        # nvidia-cuda-nvrtc 13.x: nvidia/cu13/lib; 12.x: nvidia/cuda_nvrtc/lib
        for pattern in ("cu*/lib/libnvrtc.so*", "cuda_nvrtc/lib/libnvrtc.so*"):
            candidates += sorted(p for p in glob.glob(os.path.join(root, pattern)) if "builtins" not in p)
    found = ctypes.util.find_library("nvrtc")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            return ctypes.CDLL(path)
        except OSError:
            continue
    pytest.fail("libnvrtc not found: install the test extra (pip install -e '.[test]', it brings "
                "nvidia-cuda-nvrtc) or point RELPROP_NVRTC at libnvrtc.so")


class Nvrtc:
    """The few NVRTC calls a compile check needs."""

    def __init__(self, lib):
        self.lib = lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._ok(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version = (major.value, minor.value)

    def _ok(self, status, what):
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def compile(self, code, name_expressions, options):
        """(compiled?, log, {name expression: lowered name}, binary size)."""
        lib = self.lib
        prog = ctypes.c_void_p()
        self._ok(lib.nvrtcCreateProgram(ctypes.byref(prog), code.encode(), b"relprop.cu", 0, None, None),
                 "nvrtcCreateProgram")
        try:
            for expr in name_expressions:
                self._ok(lib.nvrtcAddNameExpression(prog, expr.encode()), "nvrtcAddNameExpression")
            opts = [o.encode() for o in options]
            status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
            size = ctypes.c_size_t()
            self._ok(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
            log = ctypes.create_string_buffer(size.value)
            self._ok(lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
            log = log.value.decode(errors="replace")
            if status != 0:
                return False, log, {}, 0
            lowered = {}
            for expr in name_expressions:
                name = ctypes.c_char_p()
                self._ok(lib.nvrtcGetLoweredName(prog, expr.encode(), ctypes.byref(name)), "nvrtcGetLoweredName")
                lowered[expr] = name.value.decode()
            self._ok(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
            return True, log, lowered, size.value
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


@pytest.fixture(scope="module")
def nvrtc():
    return Nvrtc(_find_nvrtc())


def _options(arch):
    return sources.OPTIONS + CUPY_OPTIONS + (f"-arch={arch}",)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", list(sources.KERNELS))
def test_gpu_sources_compile(nvrtc, family, arch):
    code, exprs = sources.source(family), sources.name_expressions(family)
    ok, log, lowered, size = nvrtc.compile(code, exprs, _options(arch))
    assert ok, f"{family}.cu does not compile for {arch} (NVRTC {nvrtc.version}):\n{log}"
    ours = [line for line in log.splitlines() if line.startswith("relprop.cu(") and "warning" in line]
    assert not ours, f"{family}.cu compiles with warnings for {arch}:\n{log}"
    # every kernel, in every (float type, index type) instantiation, is in the binary
    assert len(exprs) == 4 * len(sources.KERNELS[family]) and set(lowered) == set(exprs)
    assert len(set(lowered.values())) == len(exprs)
    assert size > 0


def test_gpu_sources_list_every_kernel_once():
    names = [k for fam in sources.KERNELS.values() for k in fam]
    assert len(names) == len(set(names))
    for fam, kernels in sources.KERNELS.items():
        code = sources.source(fam)
        for k in kernels:
            assert code.count(f"__global__ void {k}(") == 1, f"{k} not defined once in {fam}.cu"


def test_gpu_compile_reports_syntax_error(nvrtc):
    broken = sources.source("elementwise").replace("const T z = zg[o * ldz + n * p_ + p] + bias[o];",
                                                   "const T z = zg[o * ldz + n * p_ + p] + bias[o]")
    assert broken != sources.source("elementwise")
    ok, log, _, _ = nvrtc.compile(broken, sources.name_expressions("elementwise"), _options("sm_90"))
    assert not ok and "error" in log


def test_gpu_compile_checks_each_instantiation(nvrtc):
    # a body that is only wrong for T = double: the template alone compiles, the instantiations
    # requested by name expression do not
    code = ("template <typename T, typename I> __global__ void k(T* x, I n) "
            "{ float* p = x; if (n > 0) p[0] = 0.0f; }")
    assert nvrtc.compile(code, [], _options("sm_90"))[0]
    assert nvrtc.compile(code, ["k<float, int>"], _options("sm_90"))[0]
    ok, log, _, _ = nvrtc.compile(code, ["k<float, int>", "k<double, int>"], _options("sm_90"))
    assert not ok and "error" in log
