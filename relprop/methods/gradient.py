"""The gradient family: one GRAD traversal from ``e_c``, with a ReLU rule and a post-processing.

* ``gradient``: ``d s_c / dx``; ``saliency``: its absolute value (Simonyan et al. 2014);
  ``gradient_x_input``: times ``x`` (Shrikumar et al. 2016);
* ``guided_backprop`` (Springenberg et al. 2015): ReLUs pass ``relu(g) * [z > 0]``;
* ``deconvnet`` (Zeiler & Fergus 2014): ReLUs pass ``relu(g)``, whatever the forward pass did;
* ``rectgrad`` (Kim et al. 2019, Eq. 4-5): at each ReLU the signal passes only where the
  importance ``a * R`` exceeds the q-th percentile of that layer's importances (per sample);
  the attribution is ``x * R`` kept where positive.
"""
from __future__ import annotations

from ..core.checks import _number
from ..core.modes import GRAD
from .base import Method, register

GPU = frozenset({"cpu", "gpu"})


def _check_rectgrad(graph, x, p):
    _number(p["q"], "q")
    if not 0 <= p["q"] <= 100:
        raise ValueError(f"rectgrad: q is a percentile and must lie in [0, 100], got {p['q']!r}")
    return p


register(Method("gradient", "gradient of the target score", mode=GRAD, backends=GPU, family="gradient"))
register(Method("saliency", "absolute gradient", mode=GRAD, post="abs", backends=GPU, family="gradient"))
register(Method("gradient_x_input", "gradient times input", mode=GRAD, post="times_x", backends=GPU,
                family="gradient"))
register(Method("guided_backprop", "guided backpropagation", mode=GRAD, relu="guided", backends=GPU,
                family="gradient"))
register(Method("deconvnet", "DeconvNet", mode=GRAD, relu="deconvnet", backends=GPU, family="gradient"))
register(Method("rectgrad", "rectified gradient (layer-wise percentile threshold)", {"q": 98.0},
                validate=_check_rectgrad, mode=GRAD, relu=lambda p: ("rectgrad", p["q"]), post="positive_times_x",
                backends=GPU, family="gradient"))
