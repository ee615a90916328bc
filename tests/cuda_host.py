"""Run ``relprop.kernels.gpu`` without a GPU: a host stand-in for the parts of CuPy it uses.

``emulated_cupy()`` puts a module named ``cupy`` into ``sys.modules`` whose arrays are numpy
arrays of a marked subclass ("device" arrays) and whose ``RawModule`` compiles the package's
CUDA source as C++ with g++: ``__global__`` functions become plain functions that a launch
calls for every (block, thread) in turn, pointers become bounds-checked views (an index out
of range aborts), ``atomicAdd`` a plain add. A launch checks every argument against the
kernel's C parameter list the way the GPU would need it (a device array of the right dtype
for a pointer, ``numpy.int32``/``int64``/``float64`` for ``int``/``I``/``double``), so a
marshalling slip fails here instead of reading garbage on a GPU. Device math is the host's
(glibc), so this checks indexing, control flow and argument passing, not CUDA's libm.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import importlib
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

PRELUDE = r"""
#include <cmath>
#include <math.h>
#include <cstdio>
#include <cstdlib>
struct Dim3 { unsigned x = 0, y = 0, z = 0; };
static Dim3 blockIdx, blockDim, threadIdx, gridDim;
#define __global__
#define __device__
#define __forceinline__ inline
template <typename T> struct P {  // a bounds-checked pointer: base, element count, offset
    T* p; long long n; long long off;
    T& operator[](long long i) const {
        if (off + i < 0 || off + i >= n) {
            fprintf(stderr, "cuda_host: index %lld out of bounds [0, %lld)\n", off + i, n);
            abort();
        }
        return p[off + i];
    }
    T& operator*() const { return (*this)[0]; }
    P operator+(long long k) const { return P{p, n, off + k}; }
};
template <typename T> inline T atomicAdd(T* a, T v) { T old = *a; *a = old + v; return old; }
"""

_KERNEL = re.compile(r"template <typename T, typename I>\s*__global__ void (\w+)\((.*?)\)\s*\{", re.S)
# pointer parameter types -> element dtype ("T": the instantiation's float type)
_POINTERS = {"const T*": "T", "T*": "T", "const long long*": np.int64, "long long*": np.int64, "int*": np.int32}
_CHECKED = [("const long long*", "P<const long long>"), ("long long*", "P<long long>"),
            ("const T*", "P<const T>"), ("T*", "P<T>"), ("int*", "P<int>")]
_FLOAT = {"float": np.float32, "double": np.float64}
_INDEX = {"int": np.int32, "long long": np.int64}
_CTYPES = {np.int32: ctypes.c_int32, np.int64: ctypes.c_int64, np.float64: ctypes.c_double}


class ndarray(np.ndarray):
    """A "device" array."""

    def get(self):
        return np.array(self).view(np.ndarray)


def _parse(plist):
    params = []
    for p in plist.split(","):
        typ, name = " ".join(p.split()).rsplit(" ", 1)
        params.append((typ.replace(" *", "*"), name))
    return params


def _split(expr):
    name, targs = expr.split("<", 1)
    t, i = (s.strip() for s in targs.rstrip(">").split(","))
    return name, t, i


class _Kernel:
    def __init__(self, fn, expr, params):
        self.fn, self.expr, self.params = fn, expr, params
        _, t, i = _split(expr)
        self.tdt, self.idt = _FLOAT[t], _INDEX[i]

    def __call__(self, grid, block, args):
        assert isinstance(args, tuple), f"{self.expr}: kernel arguments must be a tuple"
        assert len(args) == len(self.params), f"{self.expr}: {len(args)} arguments for {len(self.params)} parameters"
        n = len(args)
        ptrs, sizes, keep = (ctypes.c_void_p * n)(), (ctypes.c_void_p * n)(), []
        for j, ((typ, pname), a) in enumerate(zip(self.params, args)):
            where = f"{self.expr} argument {j} ({typ} {pname})"
            if typ in _POINTERS:
                want = self.tdt if _POINTERS[typ] == "T" else _POINTERS[typ]
                assert type(a) is ndarray, f"{where}: {type(a).__module__}.{type(a).__name__}, not a device array"
                assert a.dtype == want and a.flags.c_contiguous, f"{where}: {a.dtype}, contiguous={a.flags.c_contiguous}"
                v, size = ctypes.c_void_p(a.ctypes.data), ctypes.c_longlong(a.size)
                keep += [v, size]
                ptrs[j], sizes[j] = ctypes.addressof(v), ctypes.addressof(size)
            else:
                want = {"I": self.idt, "int": np.int32, "double": np.float64}[typ]
                assert type(a) is want, f"{where}: {type(a).__name__} {a!r}, expected numpy.{want.__name__}"
                c = _CTYPES[want](a)
                keep.append(c)
                ptrs[j] = ctypes.addressof(c)
        self.fn(ptrs, sizes, ctypes.c_uint(grid[0]), ctypes.c_uint(block[0]))


class _Compiler:
    """g++ builds of the CUDA sources, one shared library per (source, name expressions)."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.libs = {}

    def build(self, code, exprs):
        key = hashlib.sha1((code + "\0".join(exprs)).encode()).hexdigest()[:16]
        if key in self.libs:
            return self.libs[key]
        sigs = {m.group(1): _parse(m.group(2)) for m in _KERNEL.finditer(code)}
        checked = code
        for a, b in _CHECKED:
            checked = checked.replace(a, b)
        runners = []
        for k, expr in enumerate(exprs):
            name, t, it = _split(expr)
            call = []
            for j, (typ, _) in enumerate(sigs[name]):
                if typ in _POINTERS:
                    base = typ[:-1].replace("T", t)
                    call.append(f"P<{base}>{{*({base.replace('const ', '')}**)a[{j}], *(long long*)s[{j}], 0}}")
                else:
                    call.append(f"*({it if typ == 'I' else typ}*)a[{j}]")
            runners.append(
                f'extern "C" void run_{k}(void** a, void** s, unsigned blocks, unsigned threads) {{\n'
                f"  gridDim.x = blocks; blockDim.x = threads;\n"
                f"  for (unsigned b = 0; b < blocks; ++b) for (unsigned th = 0; th < threads; ++th) {{\n"
                f"    blockIdx.x = b; threadIdx.x = th; {name}<{t}, {it}>({', '.join(call)});\n  }}\n}}")
        cpp, so = self.workdir / f"{key}.cpp", self.workdir / f"{key}.so"
        cpp.write_text(PRELUDE + checked + "\n" + "\n".join(runners) + "\n")
        subprocess.run(["g++", "-O1", "-std=c++17", "-ffp-contract=off", "-shared", "-fPIC", "-o", str(so), str(cpp)],
                       check=True, capture_output=True, text=True)
        lib = ctypes.CDLL(str(so))
        self.libs[key] = (lib, sigs)
        return lib, sigs


def _fake_cupy(compiler):
    cp = types.ModuleType("cupy")
    cp.ndarray = ndarray

    def asarray(a, dtype=None):
        if isinstance(a, ndarray):
            return a if dtype is None or np.dtype(dtype) == a.dtype else a.view(np.ndarray).astype(dtype).view(ndarray)
        return np.array(a, dtype=dtype, copy=True).view(ndarray)

    def ascontiguousarray(a, dtype=None):
        assert isinstance(a, ndarray), "cupy.ascontiguousarray of a host array"
        if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return np.ascontiguousarray(a.view(np.ndarray), dtype=dtype).view(ndarray)

    def wrap(f):
        def g(*args, **kw):
            r = f(*args, **kw)
            return r.view(ndarray) if isinstance(r, np.ndarray) else r
        return g

    class RawModule:
        def __init__(self, code, options=(), name_expressions=()):
            self.exprs = list(name_expressions)
            self.lib, self.sigs = compiler.build(code, self.exprs)

        def get_function(self, expr):
            return _Kernel(getattr(self.lib, f"run_{self.exprs.index(expr)}"), expr, self.sigs[_split(expr)[0]])

    class _Pool:
        def free_all_blocks(self):
            pass

    cp.asarray, cp.ascontiguousarray, cp.RawModule = asarray, ascontiguousarray, RawModule
    cp.asnumpy = lambda a: np.array(a).view(np.ndarray)
    cp.get_default_memory_pool = cp.get_default_pinned_memory_pool = _Pool
    cp.cuda = types.SimpleNamespace(
        runtime=types.SimpleNamespace(getDevice=lambda: 0, getDeviceCount=lambda: 1),
        memory=types.SimpleNamespace(OutOfMemoryError=type("OutOfMemoryError", (MemoryError,), {})),
    )
    # anything else (zeros, full, isnan, nan, float32, ...) is numpy's, arrays coming back as device arrays
    cp.__getattr__ = lambda name: (wrap(getattr(np, name)) if callable(getattr(np, name))
                                   and not isinstance(getattr(np, name), type) else getattr(np, name))
    linalg = types.ModuleType("cupy._core._routines_linalg")
    linalg.COMPUTE_TYPE_DEFAULT, linalg.COMPUTE_TYPE_TF32 = 1, 7
    state = {"float32": 1}
    linalg.get_compute_type = lambda dtype: state["float32"]
    linalg.set_compute_type = lambda dtype, t: state.update(float32=t)
    core = types.ModuleType("cupy._core")
    core._routines_linalg = linalg
    cp._core = core
    return {"cupy": cp, "cupy._core": core, "cupy._core._routines_linalg": linalg}


def _drop_gpu_package():
    for name in [m for m in sys.modules if m == "relprop.kernels.gpu" or m.startswith("relprop.kernels.gpu.")]:
        del sys.modules[name]
    kernels = sys.modules.get("relprop.kernels")
    if kernels is not None and "gpu" in vars(kernels):
        delattr(kernels, "gpu")


@contextlib.contextmanager
def emulated_cupy():
    """Yield (fake cupy, relprop.kernels.gpu imported against it); sys.modules is restored after."""
    saved = {name: sys.modules.get(name) for name in ("cupy", "cupy._core", "cupy._core._routines_linalg")}
    with tempfile.TemporaryDirectory(prefix="relprop-cuda-host-") as work:
        fakes = _fake_cupy(_Compiler(work))
        try:
            _drop_gpu_package()
            sys.modules.update(fakes)
            yield fakes["cupy"], importlib.import_module("relprop.kernels.gpu")
        finally:
            _drop_gpu_package()
            for name, mod in saved.items():
                if mod is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = mod
