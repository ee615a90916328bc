"""The backward modes of the one traversal and the denominator forms of a compiled rule.

``GRAD`` (gradient, IG, guided variants), ``LRP`` (a rule per linear layer) and ``DEEPLIFT``
(Rescale / RevealCancel multipliers) name what each layer kind does in the backward pass
(``relprop.core.layers``); ``ZMode`` is read by the kernels.
"""
from __future__ import annotations

from enum import IntEnum

GRAD, LRP, DEEPLIFT = "grad", "lrp", "deeplift"


class ZMode(IntEnum):
    """How a compiled rule forms its denominators (``RuleState.zmode``, read by the kernels)."""

    LAYER_Z = 0  # the layer's stored z + bias_g (epsilon, z)
    DIRECT = 1  # B a + bias_g: one forward GEMM with the block matrix
    PLUS = 2  # cz z + cp (W+ a) + bias_g on a >= 0: one GEMM with W+
    PLUS_STORED = 3  # the same with W+ a from the forward pass (Conv2d, kernels only)
    DIRECT_STORED = 4  # B a + bias_g with B a from the forward pass (Conv2d, kernels only)
