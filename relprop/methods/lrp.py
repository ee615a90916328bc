"""The LRP family: one LRP traversal with a rule per Dense/Conv2d layer.

Relevance starts as ``R = s_c e_c`` at the score (Bach et al. 2015; Montavon et al. 2019) and
each linear layer applies its rule (``relprop.core.rules``: z, epsilon, gamma, alpha-beta, z+,
flat, w^2, z^B); activations and batch norm pass relevance through, average pooling and Add
split it in proportion to their inputs (Zennit's ``Norm``), max pooling routes it to the
winner.

* ``lrp.<rule>``: one rule on every layer; ``lrp``: ``rules=`` a composite
  (``relprop.core.composites``, Zennit's layer-type maps) or a list with one rule per layer;
* ``deep_taylor``: Deep Taylor Decomposition (Montavon et al. 2017): z+ on every layer above
  the first, w^2 (or z^B with ``low``/``high``) on the first;
* ``excitation_backprop`` (Zhang et al. 2016): marginal winning probabilities, the z+ rule on
  every linear layer from a unit start signal ``e_c`` (Zennit's ``ExcitationBackprop``).
"""
from __future__ import annotations

from ..core import composites as C
from ..core import engine
from ..core import rules as R
from ..core.checks import _check_bounds, _check_fits, _reads_input_directly
from ..core.modes import LRP
from .base import Method, register

GPU = frozenset({"cpu", "gpu"})

# "lrp.<rule>": one rule of relprop.core.rules on every layer (z^B needs bounds: only in rule lists)
RULE_METHODS = {f"lrp.{name}": cls for name, cls in R.RULES.items() if cls is not R.ZBox}


def rules_for(graph, method, params):
    """The per-layer rule list of an LRP-family call."""
    nlin = len(graph.linear_nodes())
    p = dict(params)
    if method == "lrp":
        rules = p["rules"]
        if isinstance(rules, C.Composite):
            return rules.rules_for(graph)
        return list(rules)
    if method == "deep_taylor":  # Montavon et al. 2017: the w^2, z^B and z+ rules have no bias term
        low, high = p["low"], p["high"]
        first = R.WSquare(p["epsilon"], include_bias=False) if low is None else R.ZBox(low, high, p["epsilon"])
        return [first] + [R.ZPlus(p["epsilon"], include_bias=False) for _ in range(nlin - 1)]
    if method == "excitation_backprop":
        return [R.ZPlus(p["epsilon"], p["include_bias"])] * nlin
    rule = RULE_METHODS[method](**p)
    return [rule] * nlin


def _validator(name):
    def validate(graph, x, p):
        """Builds (and so checks) the rule list; checks z^B bounds against x where x is the layer input."""
        if name == "lrp":
            rules = p["rules"]
            nlin = len(graph.linear_nodes())
            if rules is None:
                raise TypeError("method 'lrp' needs rules=: a composite (rp.composites.*) or a list of rules, "
                                "one per Dense/Conv2d layer")
            if not isinstance(rules, C.Composite):
                if not isinstance(rules, (list, tuple)):
                    raise TypeError(f"rules must be a composite or a list of rules, got {type(rules).__name__}")
                if len(rules) != nlin:
                    raise ValueError(f"rules has {len(rules)} entries but the model has {nlin} Dense/Conv2d layers "
                                     f"(one rule each)")
                for i, r in enumerate(rules):
                    if not isinstance(r, R.Rule):
                        raise TypeError(f"rules[{i}] must be a rule from rp.rules, got {type(r).__name__}")
        if name == "deep_taylor" and (p["low"] is None) != (p["high"] is None):
            raise ValueError("deep_taylor: give both low and high (z^B first layer) or neither (w^2 first layer)")
        try:
            rules = rules_for(graph, name, p)
        except TypeError as e:
            raise TypeError(f"method {name!r}: {e}") from None
        for node, rule in zip(graph.linear_nodes(), rules):
            if not isinstance(rule, R.Rule):
                raise TypeError(f"the rule for layer {node.name!r} ({node.layer.kind}) must be a rule instance from "
                                f"rp.rules (e.g. rp.rules.Epsilon()), got {rule!r}")
            if x is not None:
                _check_fits(rule.epsilon, x.dtype, f"the epsilon of the rule on layer {node.name!r}")
            if isinstance(rule, R.ZBox) and x is not None and _reads_input_directly(graph, node):
                _check_bounds(rule.low, rule.high, x, f"ZBox rule on layer {node.name!r}")
        out = {"rules": rules}
        out["pool_eps"] = p["rules"].stabilizer if isinstance(p.get("rules"), C.Composite) else engine.POOL_STABILIZER
        return out

    return validate


def _rules(graph, p):
    return p["rules"]


def _lrp(name, params, doc, start="score", sums_to="score"):
    register(Method(name, doc, params, validate=_validator(name), mode=LRP, start=start, rules=_rules, backends=GPU,
                    sums_to=sums_to, family="lrp"))


_lrp("lrp.z", {"include_bias": True}, "LRP-0: R_i = sum_j a_i w_ij / z_j R_j")
_lrp("lrp.epsilon", {"epsilon": 1e-6, "include_bias": True}, "LRP-epsilon")
_lrp("lrp.gamma", {"gamma": 0.25, "epsilon": 1e-6, "include_bias": True}, "LRP-gamma (positive weights favoured)")
_lrp("lrp.alpha_beta", {"alpha": 1.0, "beta": 0.0, "epsilon": 1e-6, "include_bias": True},
     "LRP-alpha-beta (positive and negative contributions weighted alpha and beta)")
_lrp("lrp.z_plus", {"epsilon": 1e-6, "include_bias": True}, "LRP z+ (positive contributions only)")
_lrp("lrp.flat", {"epsilon": 1e-6}, "LRP flat (uniform over the receptive field)")
_lrp("lrp.w_square", {"epsilon": 1e-6, "include_bias": True}, "LRP w^2 (squared weights)")
_lrp("lrp", {"rules": None}, "LRP with a composite or one rule per Dense/Conv2d layer (rules=)")
_lrp("deep_taylor", {"low": None, "high": None, "epsilon": 1e-6},
     "Deep Taylor Decomposition: z+ above the first layer, w^2 or z^B (low/high) on the first")
_lrp("excitation_backprop", {"epsilon": 1e-6, "include_bias": True}, "excitation backprop (z+ from e_c)",
     start="unit", sums_to=None)
