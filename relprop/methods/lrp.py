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

import numpy as np

from ..core import backend
from ..core import composites as C
from ..core import engine
from ..core import rules as R
from ..core.checks import _check_bounds, _check_fits
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
        """Builds (and so checks) the rule list; checks z^B bounds against x (:func:`_zbox_rule`)
        and the dense columns of expanded depthwise layers (``Conv2d.check_columns``)."""
        start = _check_start(name, p)
        try:
            rules = build(graph, _rule_params(p))
        except TypeError as e:
            msg = str(e)
            raise TypeError(msg if msg.startswith("method ") else f"method {name!r}: {msg}") from None
        nodes = graph.linear_nodes()
        shapes = None if x is None else graph.infer_shapes(tuple(x.shape[1:]))  # (as the call's own check of x)
        rules = list(rules)
        for i, (node, rule) in enumerate(zip(nodes, rules)):
            if not isinstance(rule, R.Rule):
                raise TypeError(f"the rule for layer {node.name!r} ({node.layer.kind}) must be a rule instance from "
                                f"rp.rules (e.g. rp.rules.Epsilon()), got {rule!r}")
            if x is None:
                continue
            _check_fits(rule.epsilon, x.dtype, f"the epsilon of the rule on layer {node.name!r}")
            if isinstance(rule, R.ZBox):
                rules[i] = _zbox_rule(graph, node, rule, x, shapes)
        if x is not None:  # every LRP rule reads the dense columns, of depthwise layers too, in x's dtype
            graph.check_columns(shapes, x.dtype, depthwise=True, where=f"method {name!r}")
        out = {"rules": rules}
        if x is not None and x.shape[0] > 1 and any(isinstance(r, _SampleBounds) for r in rules):
            out["zbox_rows"] = np.arange(x.shape[0]).reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        if start is not None:
            out["start"] = start
        out["pool_eps"] = p["rules"].stabilizer if isinstance(p.get("rules"), C.Composite) else engine.POOL_STABILIZER
        return out

    return validate


def _rules(graph, p):
    """The rule list of one internal batch: z^B bounds with a row per sample cut to its rows
    (``zbox_rows``, a per-sample parameter the executor slices with x)."""
    rows = p.get("zbox_rows")
    if rows is None:
        return p["rules"]
    idx = backend.to_host(rows).reshape(-1)
    return [r.rows(idx) if isinstance(r, _SampleBounds) else r for r in p["rules"]]


# ---- z^B bounds ------------------------------------------------------------------------------
# The z^B rule (Montavon et al. 2017, Sec. 4.3: R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) /
# sum_i (...) R_j) reads its layer's input x with the box [l, h] that holds it. Users give the
# box of the model's input; layers that only copy values of x (reshapes, Pad, ZeroInsert2d)
# carry it to the layer's input: a copied pixel keeps its bounds, a constant Pad value or an
# inserted zero c gets l = h = c (the input IS c there, and it contributes c w - c w+ - c w- = 0,
# what Conv2d's own zero padding does to the bounds: one Pad + Conv2d equals the padded Conv2d).


class _SampleBounds(R.ZBox):
    """A z^B rule whose bounds carry one row per sample of x (``n`` rows of rank ``rank``):
    :func:`_rules` gives each internal batch the rule of its rows."""

    def __init__(self, low, high, epsilon, n, rank):
        super().__init__(low, high, epsilon)
        self.n, self.rank = n, rank

    def rows(self, idx):
        def cut(v):
            return v[idx] if v.ndim == self.rank and v.shape[0] == self.n else v

        return R.ZBox(cut(self.low), cut(self.high), self.epsilon)


def _fits(v, shape):
    try:
        return np.broadcast_shapes(np.shape(v), tuple(shape)) == tuple(shape)
    except ValueError:
        return False


def _per_sample(v, shape):
    """True when the bound ``v`` has one row per sample of ``shape`` (N, ...), N > 1."""
    return np.ndim(v) == len(shape) and shape[0] > 1 and np.shape(v)[0] == shape[0]


def _batched(v, shape):
    """``v`` broadcast to ``(B,) + shape[1:]``: B = N for a bound with a row per sample, else 1."""
    v = np.asarray(v, np.float64)
    v = v.reshape((1,) * (len(shape) - v.ndim) + v.shape)
    return np.broadcast_to(v, ((shape[0] if _per_sample(v, shape) else 1),) + tuple(shape[1:]))


def _copies_of_x(graph, node):
    """The nodes between x and ``node`` (x first) when each copies values of its input (a
    reshape, Pad, ZeroInsert2d); None when another layer or a merge lies between."""
    path, src = [], node.inputs[0]
    while src != "input":
        prev = graph.by_name[src]
        if len(prev.inputs) != 1 or not (prev.layer.passes_values or prev.layer.kind in ("Pad", "ZeroInsert2d")):
            return None
        path.append(prev)
        src = prev.inputs[0]
    return path[::-1]


def _carry(v, path, shapes):
    """``v`` (B, *x's per-sample shape) through the copying layers of ``path``: a reshape keeps
    the values, Pad and ZeroInsert2d copy each output from its source pixel (``sources``) and
    put their constant (Pad's ``value``, ZeroInsert2d's 0) where there is none."""
    for nd in path:
        layer = nd.layer
        if layer.passes_values:
            v = v.reshape((v.shape[0],) + tuple(shapes[nd.name]))
            continue
        rows, cols = layer.sources(*v.shape[2:])
        v = v[:, :, np.maximum(rows, 0)][:, :, :, np.maximum(cols, 0)]
        hole = (rows < 0)[:, None] | (cols < 0)[None, :]
        if hole.any():
            v = np.where(hole, v.dtype.type(layer.value if layer.kind == "Pad" else 0), v)
    return v


def _zbox_rule(graph, node, rule, x, shapes):
    """The z^B rule to run on ``node`` for the input x, its bounds checked before any kernel.

    * only reshapes between x and the layer: bounds in x's shape, checked against x (the engine
      reshapes them);
    * copies of x between (Pad, ZeroInsert2d): bounds in x's shape are carried to the layer's
      input (see above) and checked against x, which is the same check on the copies; bounds in
      the layer input's shape (and not x's) are taken as they are and checked against x carried
      through the same layers, i.e. the values the layer reads;
    * any other layer between: the bounds must be those of the layer's input (scalars or arrays
      of its shape; checked for shape now, for values when the layer runs).
    Bounds with one row per sample become a :class:`_SampleBounds`."""
    where = f"ZBox rule on layer {node.name!r}"
    n = x.shape[0]
    in_shape = (n,) + tuple(shapes[node.inputs[0]])
    path = _copies_of_x(graph, node)
    if path is not None and all(nd.layer.passes_values for nd in path):
        _check_bounds(rule.low, rule.high, x, where)
        low, high, space = rule.low, rule.high, x.shape
    elif path is None:
        between = _between(graph, node)
        for nm, v in (("low", rule.low), ("high", rule.high)):
            if not _fits(v, in_shape):
                raise ValueError(f"{where}: {nm} of shape {np.shape(v)} does not broadcast to the layer's input "
                                 f"{in_shape}; {between} lie between x and this layer and do not copy x's values, "
                                 f"so its bounds are those of its own input (scalars or arrays of that shape, checked "
                                 f"when it runs), or put the z^B rule on a layer that reads x")
        low, high, space = rule.low, rule.high, in_shape
    else:
        after = "x after " + ", ".join(f"{nd.name!r} ({nd.layer!r})" for nd in path)
        carried = []
        for nm, v in (("low", rule.low), ("high", rule.high)):
            if _fits(v, x.shape):
                carried.append((True, _carry(_batched(v, x.shape), path, shapes)))
            elif _fits(v, in_shape):
                carried.append((False, np.array(_batched(v, in_shape))))
            else:
                raise ValueError(f"{where}: {nm} of shape {np.shape(v)} broadcasts neither to x {x.shape} nor to the "
                                 f"layer's input {in_shape} ({after})")
        (x_lo, low), (x_hi, high) = carried
        if x_lo and x_hi:  # the layer reads copies of x and of the bounds, or the constant in both
            _check_bounds(rule.low, rule.high, x, where)
        else:
            _check_bounds(low, high, _carry(backend.to_host(x), path, shapes), f"{where} (its input: {after})")
        space = in_shape
    if _per_sample(low, space) or _per_sample(high, space):
        return _SampleBounds(low, high, rule.epsilon, n, len(space))
    if low is rule.low and high is rule.high:
        return rule
    return R.ZBox(low, high, rule.epsilon)


def _between(graph, node):
    """The layers between x and ``node`` that are not copies of x, as a phrase."""
    names, todo, seen = [], list(node.inputs), set()
    while todo:
        src = todo.pop()
        if src == "input" or src in seen:
            continue
        seen.add(src)
        prev = graph.by_name[src]
        if not (prev.layer.passes_values or prev.layer.kind in ("Pad", "ZeroInsert2d")):
            names.append(f"{prev.name!r} ({prev.layer.kind})")
        todo.extend(prev.inputs)
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


_BUILDERS = {}


def _lrp(name, params, doc, build, start="score", sums_to="score"):
    """Register an LRP-family method: its parameters and the function building its rule list.
    A method starting from the score also takes ``start=`` ("score" or "one_hot", see STARTS)."""
    if start == "score":
        params = {**params, "start": "score"}
    _BUILDERS[name] = build
    register(Method(name, doc, params, validate=_validator(name, build), mode=LRP, start=start, rules=_rules, backends=GPU,
                    sums_to=sums_to, family="lrp", per_sample=("zbox_rows",)))


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
