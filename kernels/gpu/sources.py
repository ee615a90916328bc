"""The CUDA sources of the GPU kernels, one ``.cu`` file per kernel family, and how they compile.

Every kernel is a template ``name<T, I>`` over the float type ``T`` (``float``, ``double``) and
the index type ``I`` (``int``, ``long long``); :func:`sources` lists each family with the
name expressions of all its instantiations. CuPy compiles a family the first time one of its
kernels runs on a device (``cupy.RawModule`` with these name expressions and
:data:`OPTIONS`) and caches the binary on disk; ``tests/test_gpu_compile.py`` compiles every
instantiation with NVRTC alone, so a kernel that does not compile fails CI, which has no GPU.

This module imports neither CuPy nor anything relative (the compile test loads it by path).
"""
from pathlib import Path

HERE = Path(__file__).resolve().parent

# kernel names per family (file ``<family>.cu``)
KERNELS = {
    "conv": ("im2col", "col2im_gather"),
    "elementwise": (
        "bias_act_from_gemm", "bias_act_rows", "act_backward", "act_rescale_backward", "lrp_ratio",
        "lrp_ratio_rows", "combine_from_gemm", "grad_to_rows", "stacked_mul_sum", "stack_input_mods",
        "any_negative",
    ),
    "pool": (
        "maxpool_forward", "maxpool_backward", "maxpool_rescale_route", "maxpool_rescale_divide",
        "maxpool_rescale_small", "avgpool_forward", "avgpool_backward",
    ),
    "depthwise": ("depthwise_conv", "depthwise_conv_grad"),
    "activations": ("param_act", "param_act_grad"),
}

FLOAT_TYPES = {"float32": "float", "float64": "double"}
INDEX_TYPES = {False: "int", True: "long long"}  # keyed by "needs 64-bit indices"

# No fused multiply-add: the Numba kernels round every product, and so do these (CuPy adds
# -ftz=true and the target architecture itself).
OPTIONS = ("--fmad=false",)


def instance(name, dtype_name, big):
    """The name expression of one instantiation, e.g. ``im2col<float, int>``."""
    return f"{name}<{FLOAT_TYPES[dtype_name]}, {INDEX_TYPES[big]}>"


def name_expressions(family):
    return [instance(k, d, b) for k in KERNELS[family] for d in FLOAT_TYPES for b in INDEX_TYPES]


def source(family):
    return (HERE / f"{family}.cu").read_text()


def sources():
    """[(family, CUDA source, name expressions)] for every family."""
    return [(fam, source(fam), name_expressions(fam)) for fam in KERNELS]
