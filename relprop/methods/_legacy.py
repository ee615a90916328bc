"""Methods: a starting signal, a traversal mode, and (LRP) a rule per linear layer.

Each method is a :class:`Method` with its parameters' defaults; ``run`` takes a validated
batch and returns the attribution. The traversal itself lives in ``relprop.engine``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import backend
from ..core import composites as C
from ..core import engine, quadrature
from ..core import rules as R
from ..core.plan import DEEPLIFT, GRAD, LRP, needs, reveal_cancel_nodes

IG_SCHEMES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre", "uniform")


@dataclass(frozen=True)
class Method:
    """A method: ``run(graph, x, target, shapes, **params)`` on a validated batch, its
    parameters' defaults, and (optional) ``validate(graph, x, params) -> params``, called once
    at the public boundary before any kernel runs."""

    name: str
    run: object
    params: dict = field(default_factory=dict)
    doc: str = ""
    validate: object = None


def register(method):
    """Add a method to the registry (modules of further methods call this at import)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    METHODS[method.name] = method
    return method


def xp_of(a):
    """numpy or cupy: the array module of ``a``'s backend."""
    return backend.kernels_for(a).xp


def _onehot(score, target, scale):
    """Starting signal at the score node: ``e_c`` (gradient family) or ``s_c e_c`` (LRP)."""
    xp = xp_of(score)
    start = xp.zeros_like(score)
    rows = xp.arange(score.shape[0])
    target = xp.asarray(target)
    start[rows, target] = score[rows, target] if scale else 1
    return start


def _resolve_target(score, target):
    if target is None:
        return score.argmax(axis=1)
    return target


def gradient(graph, x, target, shapes):
    """``d s_c / dx`` by one forward and one backward pass (seed 000 Eq. 9.12-9.13)."""
    keep, idx = needs(graph, GRAD)
    score, _, tape = engine.forward(graph, x, keep, idx, shapes)
    t = _resolve_target(score, target)
    return engine.backward(graph, tape, _onehot(score, t, False), GRAD)


def _modified_relu(relu):
    def run(graph, x, target, shapes):
        keep, idx = needs(graph, GRAD)
        score, _, tape = engine.forward(graph, x, keep, idx, shapes)
        t = _resolve_target(score, target)
        return engine.backward(graph, tape, _onehot(score, t, False), GRAD, relu=relu)

    run.__doc__ = ("Guided backprop (Springenberg et al.; seed 001 Eq. 4.6): only positive signals pass ReLUs "
                   "that were active." if relu == "guided" else
                   "DeconvNet (Zeiler & Fergus; seed 001 Eq. 4.5): ReLUs pass the positive part of the signal, "
                   "whatever the forward pass did.")
    return run


def rectgrad(graph, x, target, shapes, q):
    """RectGrad (Kim et al. 2019; seed 001 Eq. 4.9-4.10): at every ReLU the signal passes only
    where the importance ``a * R`` exceeds the q-th percentile of that layer's importances (per
    sample); the input attribution is ``x * R`` kept where positive."""
    keep, idx = needs(graph, GRAD)
    keep.update(n.name for n in graph.nodes if n.layer.kind == "ReLU")
    score, _, tape = engine.forward(graph, x, keep, idx, shapes)
    t = _resolve_target(score, target)
    g = engine.backward(graph, tape, _onehot(score, t, False), GRAD, relu=("rectgrad", q))
    r = x * g
    return xp_of(x).maximum(r, 0).astype(x.dtype)


def excitation_backprop(graph, x, target, shapes, epsilon, include_bias):
    """Excitation backprop (Zhang et al. 2016): marginal winning probabilities, i.e. the z+ rule on
    every linear layer from a unit start signal ``e_c`` (Zennit's ``ExcitationBackprop``)."""
    rules = [R.ZPlus(epsilon, include_bias)] * len(graph.linear_nodes())
    by_node = dict(zip((nd.name for nd in graph.linear_nodes()), rules))
    keep, idx = needs(graph, LRP, by_node)
    keep.add("input")
    score, _, tape = engine.forward(graph, x, keep, idx, shapes)
    t = _resolve_target(score, target)
    return engine.backward(graph, tape, _onehot(score, t, False), LRP, rules=by_node)


def _saliency(graph, x, target, shapes):
    return abs(gradient(graph, x, target, shapes))


def _gradient_x_input(graph, x, target, shapes):
    return gradient(graph, x, target, shapes) * x


def ig_points(scheme, steps):
    """Path positions ``alpha_k`` in [0, 1] and quadrature weights ``w_k`` of a scheme.

    ``riemann_*`` and ``gauss_legendre`` follow Captum; ``uniform`` is the textbook rule
    (seed 000 Eq. 9.15-9.16): ``alpha_t = t / (T - 1)``, ``w_t = 1 / T``.
    """
    n = steps
    if scheme == "riemann_left":
        return np.linspace(0, 1 - 1 / n, n), np.full(n, 1 / n)
    if scheme == "riemann_right":
        return np.linspace(1 / n, 1, n), np.full(n, 1 / n)
    if scheme == "riemann_middle":
        return np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n), np.full(n, 1 / n)
    if scheme == "riemann_trapezoid":
        w = np.full(n, 1 / (n - 1))
        w[0] = w[-1] = 1 / (2 * (n - 1))
        return np.linspace(0, 1, n), w
    if scheme == "gauss_legendre":
        xg, wg = quadrature.gauss_legendre(n)  # O(n^2); leggauss is O(n^3)
        return 0.5 * (xg + 1), 0.5 * wg
    if scheme == "uniform":
        return np.arange(n) / (n - 1), np.full(n, 1 / n)
    raise ValueError(f"unknown scheme {scheme!r}")  # validated earlier


# samples per forward/backward batch for path methods (bounded memory, large GEMMs)
def _path_chunk(shapes, itemsize, budget=256 * 2**20):
    per = sum(int(np.prod(s)) for s in shapes.values()) * itemsize * 2
    return max(1, budget // max(per, 1))


def integrated_gradients(graph, x, target, shapes, baseline, steps, scheme):
    """``(x - x0) * sum_k w_k grad(x0 + alpha_k (x - x0))`` with all path points of the batch
    evaluated as one large batch (in bounded chunks)."""
    n = x.shape[0]
    xp = xp_of(x)
    x0 = xp.broadcast_to(xp.asarray(baseline, dtype=x.dtype), x.shape)
    if target is None:
        score, _, _ = engine.forward(graph, x, (graph.score_node,), (), shapes)
        target = score.argmax(axis=1)
    alphas, weights = ig_points(scheme, steps)
    diff = x - x0
    acc = xp.zeros(x.shape, np.float64 if x.dtype == np.float64 else np.float32)
    target = xp.asarray(target)
    per_chunk = max(1, _path_chunk(shapes, x.itemsize) // n)
    for k0 in range(0, steps, per_chunk):
        al = xp.asarray(alphas[k0:k0 + per_chunk].astype(x.dtype))
        m = al.shape[0]
        pts = (x0[None] + al.reshape((m,) + (1,) * x.ndim) * diff[None]).reshape((m * n,) + x.shape[1:])
        g = gradient(graph, xp.ascontiguousarray(pts), xp.tile(target, m), shapes).reshape((m,) + x.shape)
        acc += xp.tensordot(xp.asarray(weights[k0:k0 + m].astype(acc.dtype)), g, axes=1)
    return (acc * diff).astype(x.dtype)


def deeplift_rescale(graph, x, target, shapes, baseline, reveal=()):
    """DeepLIFT Rescale (seed 000 Eq. 9.38-9.49, seed 004 Eq. 17-18): multipliers
    ``Delta f / Delta z`` at nonlinearities, the linear rule at linear layers, times ``x - x0``.
    ``reveal``: activation nodes that take the RevealCancel rule instead (``deeplift_reveal_cancel``)."""
    n = x.shape[0]
    xp = xp_of(x)
    x0 = xp.broadcast_to(xp.asarray(baseline, dtype=x.dtype), x.shape)
    xx = xp.concatenate([x, x0])
    keep, idx = needs(graph, DEEPLIFT, reveal=reveal)
    score, _, tape = engine.forward(graph, xx, keep, idx, shapes)
    t = _resolve_target(score[:n], target)
    g = engine.backward(graph, tape, _onehot(score[:n], t, False), DEEPLIFT, reveal=reveal)
    return g * (x - x0)


def deeplift_reveal_cancel(graph, x, target, shapes, baseline, conv_rule):
    """DeepLIFT with the RevealCancel rule (Shrikumar et al. 2017; seed 001 Eq. 4.23-4.30) at
    every nonlinearity fed by a Dense layer (and by a Conv2d layer when
    ``conv_rule="reveal_cancel"``; the default ``"rescale"`` follows the paper's choice for
    convolutions); other nonlinearities and max pooling take the Rescale rule. Positive and
    negative contributions pass each nonlinearity separately, so e.g. for ``min(i1, i2)`` with
    reference 0 both inputs receive ``min(i1, i2) / 2``. Summation-to-delta holds exactly."""
    return deeplift_rescale(graph, x, target, shapes, baseline, reveal_cancel_nodes(graph, conv_rule))


def lrp(graph, x, target, shapes, rules, pool_eps=engine.POOL_STABILIZER):
    """Layer-wise relevance propagation from ``R = s_c e_c`` with one rule per linear layer;
    ``pool_eps`` stabilizes the z-rule at average pooling."""
    by_node = dict(zip((nd.name for nd in graph.linear_nodes()), rules))
    keep, idx = needs(graph, LRP, by_node)
    keep.add("input")
    plus = {name for name, rule in by_node.items()
            if rule.z_form() is not None and graph.by_name[name].layer.kind == "Conv2d"}
    score, _, tape = engine.forward(graph, x, keep, idx, shapes, plus)
    t = _resolve_target(score, target)
    return engine.backward(graph, tape, _onehot(score, t, True), LRP, rules=by_node, pool_eps=pool_eps)


def rules_for(graph, method, params):
    """The per-layer rule list of an LRP-family call (validated parameters)."""
    nlin = len(graph.linear_nodes())
    p = dict(params)
    if method == "lrp":
        rules = p["rules"]
        if isinstance(rules, C.Composite):
            return rules.rules_for(graph)
        return list(rules)
    if method == "deep_taylor":
        low, high = p["low"], p["high"]
        first = R.WSquare(p["epsilon"]) if low is None else R.ZBox(low, high, p["epsilon"])
        return [first] + [R.ZPlus(p["epsilon"]) for _ in range(nlin - 1)]
    cls = {"lrp.z": R.Z, "lrp.epsilon": R.Epsilon, "lrp.gamma": R.Gamma, "lrp.alpha_beta": R.AlphaBeta,
           "lrp.z_plus": R.ZPlus, "lrp.flat": R.Flat, "lrp.w_square": R.WSquare}[method]
    rule = cls(**p)
    return [rule] * nlin


def _lrp_method(name):
    def run(graph, x, target, shapes, **params):
        return lrp(graph, x, target, shapes, rules_for(graph, name, params))

    return run


METHODS = {
    "gradient": Method("gradient", gradient, {}, "gradient of the target score"),
    "saliency": Method("saliency", _saliency, {}, "absolute gradient"),
    "gradient_x_input": Method("gradient_x_input", _gradient_x_input, {}, "gradient times input"),
    "guided_backprop": Method("guided_backprop", _modified_relu("guided"), {}, "guided backpropagation"),
    "deconvnet": Method("deconvnet", _modified_relu("deconvnet"), {}, "DeconvNet"),
    "rectgrad": Method("rectgrad", rectgrad, {"q": 98.0}, "rectified gradient (layer-wise percentile threshold)"),
    "excitation_backprop": Method("excitation_backprop", excitation_backprop, {"epsilon": 1e-6, "include_bias": True},
                                  "excitation backprop (z+ from e_c)"),
    "integrated_gradients": Method("integrated_gradients", integrated_gradients,
                                   {"baseline": 0.0, "steps": 50, "scheme": "gauss_legendre"}),
    "deeplift.rescale": Method("deeplift.rescale", deeplift_rescale, {"baseline": 0.0}),
    "deeplift.reveal_cancel": Method("deeplift.reveal_cancel", deeplift_reveal_cancel,
                                     {"baseline": 0.0, "conv_rule": "rescale"}, "DeepLIFT RevealCancel"),
    "lrp.z": Method("lrp.z", _lrp_method("lrp.z"), {"include_bias": True}),
    "lrp.epsilon": Method("lrp.epsilon", _lrp_method("lrp.epsilon"), {"epsilon": 1e-6, "include_bias": True}),
    "lrp.gamma": Method("lrp.gamma", _lrp_method("lrp.gamma"), {"gamma": 0.25, "epsilon": 1e-6, "include_bias": True}),
    "lrp.alpha_beta": Method("lrp.alpha_beta", _lrp_method("lrp.alpha_beta"),
                             {"alpha": 1.0, "beta": 0.0, "epsilon": 1e-6, "include_bias": True}),
    "lrp.z_plus": Method("lrp.z_plus", _lrp_method("lrp.z_plus"), {"epsilon": 1e-6, "include_bias": True}),
    "lrp.flat": Method("lrp.flat", _lrp_method("lrp.flat"), {"epsilon": 1e-6}),
    "lrp.w_square": Method("lrp.w_square", _lrp_method("lrp.w_square"), {"epsilon": 1e-6, "include_bias": True}),
    "lrp": Method("lrp", _lrp_method("lrp"), {"rules": None}),
    "deep_taylor": Method("deep_taylor", _lrp_method("deep_taylor"), {"low": None, "high": None, "epsilon": 1e-6}),
}


# ---------------------------------------------------------------------------------------
# several targets from one forward pass

def _repeat_tape(tape, n, k, two_halves):
    """A tape whose rows are each sample's rows repeated ``k`` times (sample-major), so one
    backward traversal of N*k rows serves k targets. DeepLIFT tapes hold [x; x0] halves."""
    def rep(a):
        xp = xp_of(a)
        if two_halves:
            return xp.concatenate([xp.repeat(a[:n], k, axis=0), xp.repeat(a[n:], k, axis=0)])
        return xp.repeat(a, k, axis=0)

    out = engine.Tape(n * k)
    out.shapes = tape.shapes
    out.out = {name: rep(a) for name, a in tape.out.items()}
    out.idx = {name: rep(a) for name, a in tape.idx.items()}
    out.plus = {name: rep(a) for name, a in tape.plus.items()}
    out.nonneg = tape.nonneg
    return out


MULTI = {  # method -> (mode, start scaled by the score, ReLU rule)
    "gradient": (GRAD, False, "gradient"), "saliency": (GRAD, False, "gradient"),
    "gradient_x_input": (GRAD, False, "gradient"), "guided_backprop": (GRAD, False, "guided"),
    "deconvnet": (GRAD, False, "deconvnet"), "deeplift.rescale": (DEEPLIFT, False, "gradient"),
    "deeplift.reveal_cancel": (DEEPLIFT, False, "gradient"),
    "excitation_backprop": (LRP, False, "gradient"),
}


def multi_target(graph, x, targets, shapes, method, params, rows_budget):
    """Attributions for every class in ``targets`` (K,): shape (N, K, ...), from ONE forward
    pass; the K backward passes run as batches of N*k rows (k targets at a time, bounded by
    ``rows_budget`` rows) through the same kernels."""
    n, kk = x.shape[0], len(targets)
    if method in ("gradcam", "gradcam_pp", "guided_gradcam"):  # one forward, K layer-gradients batched
        from .cam import multi

        return multi(graph, x, targets, shapes, method, params)
    if method == "occlusion":  # every occluded copy is evaluated once for all K classes
        from .perturbation import occlusion_multi

        return occlusion_multi(graph, x, targets, shapes, **params)
    bgraph = graph  # the graph the backward pass runs on
    if method in MULTI:
        mode, scaled, relu = MULTI[method]
    elif method in ("patternnet", "pattern_attribution"):  # gradient pass on the pattern-weight model
        from .patterns import shadow_graph

        mode, scaled, relu = GRAD, True, "gradient"
        bgraph = shadow_graph(graph, params["patterns"], method)
    else:
        mode, scaled, relu = LRP, True, "gradient"
    by_node, pool_eps = None, engine.POOL_STABILIZER
    if mode == LRP:
        if method == "excitation_backprop":
            rules = [R.ZPlus(params["epsilon"], params["include_bias"])] * len(graph.linear_nodes())
        elif "rules" in params:  # "lrp" / "deep_taylor": validated rule list
            rules = params["rules"]
            pool_eps = params.get("pool_eps", pool_eps)
        else:  # "lrp.<rule>"
            rules = rules_for(graph, method, params)
        by_node = dict(zip((nd.name for nd in graph.linear_nodes()), rules))
    reveal = reveal_cancel_nodes(graph, params["conv_rule"]) if method == "deeplift.reveal_cancel" else ()
    keep, idx = needs(graph, mode, by_node, reveal)
    keep.add("input")
    xin = x
    xp = xp_of(x)
    if mode == DEEPLIFT:
        x0 = xp.broadcast_to(xp.asarray(params["baseline"], dtype=x.dtype), x.shape)
        xin = xp.concatenate([x, x0])
    plus = set()
    if mode == LRP:
        plus = {nm for nm, r in by_node.items() if r.z_form() is not None and graph.by_name[nm].layer.kind == "Conv2d"}
    score, _, tape = engine.forward(graph, xin, keep, idx, shapes, plus)
    score = score[:n]
    out = xp.empty((n, kk) + x.shape[1:], x.dtype)
    step = max(1, rows_budget // n)
    for k0 in range(0, kk, step):
        tk = xp.asarray(targets[k0:k0 + step])
        k = len(tk)
        tp = _repeat_tape(tape, n, k, mode == DEEPLIFT)
        sc = xp.repeat(score, k, axis=0)
        g = engine.backward(bgraph, tp, _onehot(sc, xp.tile(tk, n), scaled), mode, rules=by_node, pool_eps=pool_eps,
                            relu=relu, reveal=reveal).reshape((n, k) + x.shape[1:])
        if method == "saliency":
            g = abs(g)
        elif method == "gradient_x_input":
            g = g * x[:, None]
        elif mode == DEEPLIFT:
            g = g * (x - x0)[:, None]
        out[:, k0:k0 + k] = g
    return out
