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

The starting signal of every method but excitation backprop is its ``start=`` parameter:
``"score"`` (default), ``R = s_c e_c`` (Bach et al. 2015; Montavon et al. 2019),
so that conservation makes ``sum_i R_i = s_c(x)``; or ``"one_hot"``, ``R = e_c``, what Zennit
returns for ``attributor(x, one_hot)`` (``Explanation.sums_to`` is then ``"one"``: the
relevance sums to 1). Every rule is linear in the relevance it receives, so the two differ by
the factor ``s_c(x)`` per sample. Excitation backprop always starts from ``e_c``: its relevance
is a probability distribution (Zhang et al. 2016).
"""
from __future__ import annotations

from ..core import composites as C
from ..core import engine
from ..core import rules as R
from ..core.checks import _check_bounds, _check_fits, _reads_input_directly
from ..core.modes import LRP
from .base import Method, register

GPU = frozenset({"cpu", "gpu"})
#: the values of the LRP family's ``start=`` parameter: the relevance at the score node
STARTS = {"score": "R = s_c e_c, relevance summing to the target's score",
          "one_hot": "R = e_c as Zennit's attributor(x, one_hot), relevance summing to 1"}

def _rules_given(graph, p):
    """``lrp``: the composite's rules for this graph, or the list given."""
    rules = p["rules"]
    if rules is None:
        raise TypeError("method 'lrp' needs rules=: a composite (rp.composites.*) or a list of rules, "
                        "one per Dense/Conv2d layer")
    if isinstance(rules, C.Composite):
        return rules.rules_for(graph)
    if not isinstance(rules, (list, tuple)):
        raise TypeError(f"rules must be a composite or a list of rules, got {type(rules).__name__}")
    nlin = len(graph.linear_nodes())
    if len(rules) != nlin:
        raise ValueError(f"rules has {len(rules)} entries but the model has {nlin} Dense/Conv2d layers (one rule each)")
    for i, r in enumerate(rules):
        if not isinstance(r, R.Rule):
            raise TypeError(f"rules[{i}] must be a rule from rp.rules, got {type(r).__name__}")
    return list(rules)


def _rules_deep_taylor(graph, p):
    """Montavon et al. 2017: w^2 (or z^B) on the first layer, z+ above; no bias term in any."""
    if (p["low"] is None) != (p["high"] is None):
        raise ValueError("deep_taylor: give both low and high (z^B first layer) or neither (w^2 first layer)")
    low, high = p["low"], p["high"]
    first = R.WSquare(p["epsilon"], include_bias=False) if low is None else R.ZBox(low, high, p["epsilon"])
    return [first] + [R.ZPlus(p["epsilon"], include_bias=False) for _ in range(len(graph.linear_nodes()) - 1)]


def _rules_excitation(graph, p):
    return [R.ZPlus(p["epsilon"], p["include_bias"])] * len(graph.linear_nodes())


def _one_rule(cls):
    """``lrp.<rule>``: the rule ``cls(**params)`` on every layer."""
    def build(graph, p):
        return [cls(**p)] * len(graph.linear_nodes())
    return build


def rules_for(graph, method, params):
    """The per-layer rule list of an LRP-family method (its declared rule builder)."""
    return _BUILDERS[method](graph, _rule_params(params))


def _rule_params(p):
    """The parameters a rule builder reads: all but the starting signal."""
    return {k: v for k, v in p.items() if k != "start"}


def _check_start(name, p):
    if "start" not in p:
        return None
    v = p["start"]
    if not isinstance(v, str) or v not in STARTS:
        raise ValueError(f"method {name!r}: start must be "
                         f"{' or '.join(f'{k!r} ({d})' for k, d in STARTS.items())}, got {v!r}")
    return v


def _validator(name, build):
    def validate(graph, x, p):
        """Builds (and so checks) the rule list; checks z^B bounds against x where x is the layer input."""
        start = _check_start(name, p)
        try:
            rules = build(graph, _rule_params(p))
        except TypeError as e:
            msg = str(e)
            raise TypeError(msg if msg.startswith("method ") else f"method {name!r}: {msg}") from None
        for node, rule in zip(graph.linear_nodes(), rules):
            if not isinstance(rule, R.Rule):
                raise TypeError(f"the rule for layer {node.name!r} ({node.layer.kind}) must be a rule instance from "
                                f"rp.rules (e.g. rp.rules.Epsilon()), got {rule!r}")
            if x is not None:
                _check_fits(rule.epsilon, x.dtype, f"the epsilon of the rule on layer {node.name!r}")
            if isinstance(rule, R.ZBox) and x is not None and _reads_input_directly(graph, node):
                _check_bounds(rule.low, rule.high, x, f"ZBox rule on layer {node.name!r}")
        out = {"rules": rules}
        if start is not None:
            out["start"] = start
        out["pool_eps"] = p["rules"].stabilizer if isinstance(p.get("rules"), C.Composite) else engine.POOL_STABILIZER
        return out

    return validate


def _rules(graph, p):
    return p["rules"]


_BUILDERS = {}


def _lrp(name, params, doc, build, start="score", sums_to="score"):
    """Register an LRP-family method: its parameters and the function building its rule list.
    A method starting from the score also takes ``start=`` ("score" or "one_hot", see STARTS)."""
    if start == "score":
        params = {**params, "start": "score"}
    _BUILDERS[name] = build
    register(Method(name, doc, params, validate=_validator(name, build), mode=LRP, start=start, rules=_rules, backends=GPU,
                    sums_to=sums_to, family="lrp"))


_lrp("lrp.z", {"include_bias": True}, "LRP-0: R_i = sum_j a_i w_ij / z_j R_j", _one_rule(R.Z))
_lrp("lrp.epsilon", {"epsilon": 1e-6, "include_bias": True}, "LRP-epsilon", _one_rule(R.Epsilon))
_lrp("lrp.gamma", {"gamma": 0.25, "epsilon": 1e-6, "include_bias": True}, "LRP-gamma (positive weights favoured)",
     _one_rule(R.Gamma))
_lrp("lrp.alpha_beta", {"alpha": 1.0, "beta": 0.0, "epsilon": 1e-6, "include_bias": True},
     "LRP-alpha-beta (positive and negative contributions weighted alpha and beta)", _one_rule(R.AlphaBeta))
_lrp("lrp.z_plus", {"epsilon": 1e-6, "include_bias": True}, "LRP z+ (positive contributions only)",
     _one_rule(R.ZPlus))
_lrp("lrp.flat", {"epsilon": 1e-6}, "LRP flat (uniform over the receptive field)", _one_rule(R.Flat))
_lrp("lrp.w_square", {"epsilon": 1e-6, "include_bias": True}, "LRP w^2 (squared weights)", _one_rule(R.WSquare))
_lrp("lrp", {"rules": None}, "LRP with a composite or one rule per Dense/Conv2d layer (rules=)", _rules_given)
_lrp("deep_taylor", {"low": None, "high": None, "epsilon": 1e-6},
     "Deep Taylor Decomposition: z+ above the first layer, w^2 or z^B (low/high) on the first", _rules_deep_taylor)
_lrp("excitation_backprop", {"epsilon": 1e-6, "include_bias": True}, "excitation backprop (z+ from e_c)",
     _rules_excitation, start="unit", sums_to=None)
