"""Numba CPU kernels. Plain functions over arrays, ``cache=True``, batched.

Each kernel is a serial ``nogil`` Numba function whose outer loop ``threads.threaded`` splits
over relprop's own worker threads (no Numba threading layer, see ``threads``).

Layout conventions shared by all kernels:

* activations are NCHW (``(N, C, H, W)``) or ``(N, F)``; a dense layer is treated as a
  1x1 "convolution" over ``P = 1`` positions;
* a linear layer's contraction runs on BLAS as ``Z = B @ cols`` with ``cols`` of shape
  ``(K, M)``, ``M = N * P`` (batch times output positions), so GEMM outputs are
  ``(rows, M)`` and the epilogue kernels below move them back to NCHW.
"""
import numpy as xp

from .blas import matmul
from .conv import im2col, col2im_gather, conv_out_shape
from .depthwise import depthwise_conv, depthwise_conv_grad
from .activations import PARAM_ACT_CODES, param_act, param_act_grad
from .shifted import AVAILABLE as SHIFTED, crop_wide, gemm_taps, pad_flat, taps, wide_geometry
from .winograd import (winograd_filter, winograd_input, winograd_output, winograd_tiles, winograd4_filter,
                       winograd4_input, winograd4_output, winograd4_tiles)

WINOGRAD = True  # F(2x2, 3x3) and F(4x4, 3x3) (see relprop.core.linear.winograd_route)
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
from .dense_chain import AVAILABLE as DENSE_CHAIN, dense_chain
from .pool import (
    maxpool_forward,
    maxpool_backward,
    maxpool_rescale_backward,
    avgpool_forward,
    avgpool_backward,
)

name = "cpu"  # backend name (device caches are keyed by it)
OOM = ()  # out-of-memory exceptions the API answers by splitting the batch (host: batches are bounded already)

__all__ = [
    "xp", "name", "OOM", "matmul",
    "im2col", "col2im_gather", "conv_out_shape",
    "depthwise_conv", "depthwise_conv_grad", "PARAM_ACT_CODES", "param_act", "param_act_grad",
    "SHIFTED", "pad_flat", "crop_wide", "gemm_taps", "taps", "wide_geometry",
    "WINOGRAD", "winograd_filter", "winograd_input", "winograd_output", "winograd_tiles",
    "winograd4_filter", "winograd4_input", "winograd4_output", "winograd4_tiles",
    "bias_act_from_gemm", "bias_act_rows", "act_backward", "act_rescale_backward",
    "lrp_ratio", "lrp_ratio_rows", "combine_from_gemm", "grad_to_rows", "stacked_mul_sum", "stack_input_mods", "all_nonnegative", "row_sums",
    "DENSE_CHAIN", "dense_chain",
    "maxpool_forward", "maxpool_backward", "maxpool_rescale_backward",
    "avgpool_forward", "avgpool_backward",
]
