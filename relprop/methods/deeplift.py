"""DeepLIFT (Shrikumar et al. 2017): multipliers ``Delta f / Delta z`` from a baseline.

One DEEPLIFT traversal of ``[x; x0]`` (the forward pass of both halves in one batch): the
Rescale rule at nonlinearities (Ancona et al. 2018, Eq. 17-18), the linear rule at linear
layers, times ``x - x0``. ``deeplift.reveal_cancel`` takes the RevealCancel rule (Shrikumar et
al. 2017, Sec. 3.5.3) at every nonlinearity fed by a Dense layer (and by a Conv2d layer when
``conv_rule="reveal_cancel"``; the default ``"rescale"`` follows the paper's choice for
convolutions): positive and negative contributions pass each nonlinearity separately, so for
``min(i1, i2)`` with reference 0 both inputs receive ``min(i1, i2) / 2``. Summation-to-delta
(sum R = s_c(x) - s_c(x0)) holds exactly for both.
"""
from __future__ import annotations

from ..core.checks import _check_baseline
from ..core.modes import DEEPLIFT
from ..core.plan import reveal_cancel_nodes
from .base import Method, register

GPU = frozenset({"cpu", "gpu"})


def _check(graph, x, p):
    out = dict(p)
    out["baseline"] = _check_baseline(p["baseline"], x)
    if "conv_rule" in p and p["conv_rule"] not in ("rescale", "reveal_cancel"):
        raise ValueError(f"deeplift.reveal_cancel: conv_rule must be 'rescale' or 'reveal_cancel' (the rule at "
                         f"nonlinearities after Conv2d layers), got {p['conv_rule']!r}")
    return out


register(Method("deeplift.rescale", "DeepLIFT Rescale", {"baseline": 0.0}, validate=_check, mode=DEEPLIFT,
                post="times_delta", backends=GPU, per_sample=("baseline",), sums_to="delta",
                baseline_param="baseline", family="deeplift"))
register(Method("deeplift.reveal_cancel", "DeepLIFT RevealCancel", {"baseline": 0.0, "conv_rule": "rescale"},
                validate=_check, mode=DEEPLIFT, reveal=lambda g, p: reveal_cancel_nodes(g, p["conv_rule"]),
                post="times_delta", backends=GPU, per_sample=("baseline",), sums_to="delta",
                baseline_param="baseline", family="deeplift"))
