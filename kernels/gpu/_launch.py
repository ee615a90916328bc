"""Compiling, caching and launching the CUDA kernels; operand conversion shared by the families.

A family's module is compiled (``cupy.RawModule`` over all its template instantiations) the
first time one of its kernels runs on a device; CuPy keeps the binary in its on-disk kernel
cache, so later processes only load it.
"""
import cupy
import numpy as np

from . import sources

BLOCK = 256
MAX_BLOCKS = 1 << 16  # grid-stride loops cover the rest
INT_LIMIT = 1 << 30  # arrays below this size index with int (the loop step stays below 2^31 too)

_modules = {}  # (family, device) -> cupy.RawModule
_kernels = {}  # (family, name, dtype, big, device) -> kernel


def float_dtype(a, what):
    """The kernel's float type, taken from an output array."""
    dt = np.dtype(a.dtype)
    if dt.name not in sources.FLOAT_TYPES:
        raise TypeError(f"relprop.kernels.gpu: {what} must be float32 or float64, got {dt.name}")
    return dt


def needs_int64(*sizes):
    return max(sizes) >= INT_LIMIT


def index_scalars(big, *values):
    """Python ints as the kernel's index type ``I`` (int or long long)."""
    t = np.int64 if big else np.int32
    return tuple(t(v) for v in values)


def code(v):
    """An ``int`` kernel argument (activation/mode codes, flags)."""
    return np.int32(int(v))


def operand(a, dtype):
    """A read-only operand as a C-contiguous device array of ``dtype`` (no copy when it is one)."""
    return cupy.ascontiguousarray(cupy.asarray(a, dtype=dtype))


def vector(v, dtype):
    """A parameter vector (numpy or cupy) on the device, flat."""
    return operand(v, dtype).ravel()


def out_buffer(a, dtype):
    """``a`` itself when the kernel can write it in place, else a contiguous copy of it
    (kernels may read their output) that :func:`write_back` copies into ``a``."""
    if isinstance(a, cupy.ndarray) and a.dtype == dtype and a.flags.c_contiguous:
        return a
    return operand(a, dtype)


def write_back(a, buf):
    if buf is a:
        return
    if isinstance(a, cupy.ndarray):
        a[...] = buf
    else:
        a[...] = cupy.asnumpy(buf)


def check(cond, msg):
    if not cond:
        raise ValueError(f"relprop.kernels.gpu: {msg}")


def check_window(name, kh, kw, sh, sw, ph, pw):
    """A window geometry the kernels can index with: kernel and stride >= 1, padding >= 0."""
    check(min(kh, kw, sh, sw) >= 1 and min(ph, pw) >= 0,
          f"{name}: kernel {kh}x{kw} and stride {sh}x{sw} must be >= 1, padding {ph}x{pw} >= 0")


def launch(family, name, dtype, big, total, args):
    """Run ``name<T, I>`` from ``family`` over ``total`` work items on the current stream."""
    if total <= 0:
        return
    dev = cupy.cuda.runtime.getDevice()
    key = (family, name, dtype.name, big, dev)
    kern = _kernels.get(key)
    if kern is None:
        mod = _modules.get((family, dev))
        if mod is None:
            mod = cupy.RawModule(code=sources.source(family), options=sources.OPTIONS,
                                 name_expressions=sources.name_expressions(family))
            _modules[(family, dev)] = mod
        kern = _kernels[key] = mod.get_function(sources.instance(name, dtype.name, big))
    blocks = min((total + BLOCK - 1) // BLOCK, MAX_BLOCKS)
    kern((blocks,), (BLOCK,), args)
