"""CuPy/CUDA kernels: the GPU twins of ``relprop.kernels.cpu``, same names and signatures.

Every function takes the CPU kernel's arguments as CuPy arrays (float32 or float64; max-pool
winners int64), writes its output arrays in place and returns what the CPU kernel returns
(``all_nonnegative`` a Python bool). Layout conventions are the CPU package's:

* activations are NCHW (``(N, C, H, W)``) or ``(N, F)``; a dense layer is treated as a
  1x1 "convolution" over ``P = 1`` positions;
* a linear layer's contraction runs on cuBLAS as ``Z = B @ cols`` with ``cols`` of shape
  ``(K, M)``, ``M = N * P`` (batch times output positions), so GEMM outputs are
  ``(rows, M)`` and the epilogue kernels below move them back to NCHW.

The CUDA C lives in ``conv.cu``, ``depthwise.cu``, ``elementwise.cu``, ``activations.cu`` and
``pool.cu`` (listed by ``sources.py``); each family compiles on first use per device (CuPy
caches the binary on disk).
Arithmetic follows the Numba kernels' float64 promotions (see ``elementwise.cu``), so results
agree with the CPU to rounding. Inputs that are not C-contiguous device arrays of the output's
dtype are converted (copied); outputs that are not are computed in a buffer and copied back.

Importing this package imports CuPy; ``relprop.core.backend`` imports it only when it sees a CuPy
array. Besides the kernels the package names its array module ``xp`` (cupy), its backend
``name``, the ``OOM`` exceptions of a full device, ``free_memory()`` and ``set_tf32()``.
"""
import cupy as xp
import numpy as np
from cupy._core import _routines_linalg as _linalg

from .conv import im2col, col2im_gather, conv_out_shape
from .depthwise import depthwise_conv, depthwise_conv_grad
from .activations import PARAM_ACT_CODES, param_act, param_act_grad
from .elementwise import (
    bias_act_from_gemm,
    bias_act_rows,
    act_backward,
    act_rescale_backward,
    lrp_ratio,
    lrp_ratio_rows,
    combine_from_gemm,
    grad_to_rows,
    stacked_mul_sum,
    stack_input_mods,
    all_nonnegative,
    row_sums,
)
from .pool import (
    maxpool_forward,
    maxpool_backward,
    maxpool_rescale_backward,
    avgpool_forward,
    avgpool_backward,
)

name = "gpu"  # backend name (device caches are keyed by it)
SHIFTED = WINOGRAD = False  # CPU lowerings (shifted GEMMs, Winograd); here im2col + cuBLAS serves every conv
OOM = (xp.cuda.memory.OutOfMemoryError,)  # the API answers these by splitting the batch


def matmul(a, b, out=None):
    """``a @ b`` into ``out`` (the CPU backend's ``matmul``: there a private BLAS on relprop's threads)."""
    return xp.matmul(a, b, out=out)


def free_memory():
    """Return the blocks cached by CuPy's memory pools to the driver (after an OOM)."""
    xp.get_default_memory_pool().free_all_blocks()
    xp.get_default_pinned_memory_pool().free_all_blocks()


def set_tf32(on):
    """Let float32 GEMMs (cuBLAS via cupy.matmul) use TF32 tensor cores (``on=True``) or not
    (``False``); returns the previous setting, which ``set_tf32`` accepts to restore it."""
    prev = _linalg.get_compute_type(np.float32)
    if isinstance(on, bool):
        on = _linalg.COMPUTE_TYPE_TF32 if on else _linalg.COMPUTE_TYPE_DEFAULT
    _linalg.set_compute_type(np.float32, on)
    return prev


__all__ = [
    "xp", "name", "OOM", "free_memory", "set_tf32", "matmul",
    "im2col", "col2im_gather", "conv_out_shape",
    "depthwise_conv", "depthwise_conv_grad", "PARAM_ACT_CODES", "param_act", "param_act_grad",
    "SHIFTED", "WINOGRAD",
    "bias_act_from_gemm", "bias_act_rows", "act_backward", "act_rescale_backward",
    "lrp_ratio", "lrp_ratio_rows", "combine_from_gemm", "grad_to_rows", "stacked_mul_sum", "stack_input_mods", "all_nonnegative", "row_sums",
    "maxpool_forward", "maxpool_backward", "maxpool_rescale_backward",
    "avgpool_forward", "avgpool_backward",
]
