"""Methods declared as data, and the one executor that runs the traversal methods.

A method (Ancona et al. 2018, Table 1) is a starting signal at the score, what replaces the
derivative at each nonlinearity, and the rule at each linear layer. Most methods are exactly
that: a :class:`Method` with a ``mode`` (``GRAD``, ``LRP`` or ``DEEPLIFT``, see
``relprop.core.engine``), a start (``"unit"``: ``e_c``; ``"score"``: ``s_c e_c``), a ReLU rule,
rules per linear layer, and a post-processing step; :func:`traverse` runs all of them, for K
targets at once (one forward pass, the K backward passes batched). Methods that are not one
traversal (path integrals, perturbations, surrogates, CAM, RAP) declare a ``run`` instead.

Every method also declares its capabilities, which the API, the multi-target executor,
``smoothgrad`` and the docs read instead of lists of names:

* ``backends``: where it runs (``{"cpu"}`` or ``{"cpu", "gpu"}``);
* ``random``: it draws random numbers; draws are per sample (:func:`row_rng`), so results do not
  depend on the batch a sample is in;
* ``averages_noise``: it already averages over noisy inputs (smoothgrad refuses to wrap it);
* ``per_sample``: array parameters that may carry one row per sample (sliced with the batch);
* ``sums_to``: ``"score"`` (relevance conservation: sum R = s_c(x)), ``"delta"``
  (completeness / summation-to-delta: sum R = s_c(x) - s_c(baseline)) or None; a call's
  parameters may change it (:func:`sums_to`: the LRP family's ``start="one_hot"`` conserves 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..core import backend, dense_chain, engine
from ..core.modes import DEEPLIFT, LRP
from ..core.plan import needs

METHODS = {}


@dataclass(frozen=True)
class Method:
    """A declared attribution method (see the module docstring for the capability fields).

    Traversal methods set ``mode``; the others set ``run(ctx, x, target, **params)`` returning
    (N, ...) for one target per sample (``target`` an int array (N,) or None for the argmax),
    and optionally ``run_multi(ctx, x, targets, **params)`` returning (N, K, ...) for a target
    matrix (N, K) at once. ``validate(graph, x, params) -> params`` runs once per call, before
    any kernel, and returns the parameters to run with."""

    name: str
    doc: str
    params: dict = field(default_factory=dict)
    validate: object = None
    # the traversal
    mode: str = None
    start: str = "unit"
    relu: object = "gradient"  # or a function params -> ReLU rule (e.g. rectgrad's ("rectgrad", q))
    rules: object = None  # function (graph, params) -> one Rule per Dense/Conv2d (LRP mode)
    reveal: object = None  # function (graph, params) -> activation nodes with DeepLIFT's RevealCancel
    backward_model: object = None  # function (compiled, params) -> Compiled the backward pass reads
    post: str = None  # None, "abs", "times_x", "times_delta", "positive_times_x"
    # or a method of its own
    run: object = None
    run_multi: object = None
    # capabilities
    backends: frozenset = frozenset({"cpu"})
    random: bool = False
    averages_noise: bool = False
    per_sample: tuple = ()
    sums_to: str = None
    baseline_param: str = None  # the parameter holding the reference input(s) of sums_to="delta"
    family: str = ""
    wrapper: bool = False  # wraps another method (smoothgrad)


def register(method):
    """Add a method to the registry (each family module calls this at import)."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is registered twice")
    if (method.mode is None) == (method.run is None) and not method.wrapper:
        raise ValueError(f"method {method.name!r} must declare either a traversal mode or run")
    METHODS[method.name] = method
    return method


@dataclass
class Context:
    """What a method run sees besides x and its parameters: the compiled model state ``m``
    (``relprop.core.plan.Compiled``: the graph and its derived weights), the per-node shapes,
    the global index of x's first row (for per-sample random draws), the seed, the row budget
    of one backward pass (``rows``) and of one batch of expanded copies (``expand_rows``: path
    points, perturbed copies, coalitions; set by ``relprop.core.execute.Budget``)."""

    m: object
    shapes: dict
    row0: int = 0
    seed: int = None
    rows: int = 256
    expand_rows: int = 256
    score: object = None  # set by :func:`traverse`: the score rows (N, classes) of its forward pass
    picked: object = None  # set by :func:`traverse` when it chose the targets: each row's argmax (N, 1)
    dest: object = None  # where the traversal of this batch may write its (N, K, ...) result (the caller's
    # output rows; taken once, by the Dense-chain kernel; a context for other rows, ``at``, has none)

    @property
    def graph(self):
        return self.m.graph

    def at(self, row0):
        """The same context for a batch whose first row has global index ``row0``."""
        return Context(self.m, self.shapes, row0, self.seed, self.rows, self.expand_rows)


def row_rng(seed, row, stream=0):
    """The random generator of sample ``row`` (its global index in the job): every random method
    draws sample by sample from ``SeedSequence(seed, spawn_key=(stream, row))``, so a sample's
    draws depend on the seed and its index only, not on the batch or chunk it comes in."""
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(stream), int(row))))


def xp_of(a):
    """numpy or cupy: the array module of ``a``'s backend."""
    return backend.kernels_for(a).xp


def onehot(score, target, scale):
    """Starting signal at the score node: ``e_c`` (``scale`` False) or ``s_c e_c`` (LRP)."""
    xp = xp_of(score)
    start = xp.zeros_like(score)
    rows = xp.arange(score.shape[0])
    target = xp.asarray(target)
    start[rows, target] = score[rows, target] if scale else 1
    return start


def forward_scores(ctx, x):
    """The score rows (N, classes) of ``x``: one forward pass storing nothing else."""
    return engine.forward(ctx.m, x, (ctx.graph.score_node,), (), ctx.shapes)[0]


def resolve_target(ctx, x, target):
    """``target`` as an int array (N,): the argmax of the scores when None."""
    if target is None:
        return forward_scores(ctx, x).argmax(axis=1)
    return target


def start_scaled(method, params):
    """True when the backward pass starts from ``s_c e_c``, False for ``e_c``: the call's
    ``start=`` ("score" / "one_hot", the LRP family's parameter) where given, else the
    method's declared start."""
    return params.get("start", method.start) == "score"


def sums_to(method, params):
    """What ``sum R`` of ``method`` run with ``params`` should equal: its declared ``sums_to``,
    with ``"one"`` (sum R = 1) for a conserving method started from ``e_c`` (``start="one_hot"``)."""
    if method.sums_to == "score" and params.get("start") == "one_hot":
        return "one"
    return method.sums_to


def rules_by_node(graph, method, params):
    return dict(zip((nd.name for nd in graph.linear_nodes()), method.rules(graph, params)))


def traverse(ctx, x, targets, method, params):
    """A traversal method for the targets (N, K) of each sample (None: each sample's argmax,
    K = 1): ONE forward pass that stores what the backward pass reads, then the K backward
    passes as batches of N*k rows (k targets at a time, at most ``ctx.rows`` rows) through the
    same kernels. Returns (N, K, ...)."""
    m, graph = ctx.m, ctx.graph
    n = x.shape[0]
    xp = xp_of(x)
    mode = method.mode
    by_node = rules_by_node(graph, method, params) if mode == LRP else None
    reveal = method.reveal(graph, params) if method.reveal is not None else ()
    relu = method.relu(params) if callable(method.relu) else method.relu
    keep, idx = needs(graph, mode, by_node, reveal)
    keep.add("input")
    if isinstance(relu, tuple):  # rectgrad thresholds the ReLU outputs' importances
        keep.update(nd.name for nd in graph.nodes if nd.layer.kind == "ReLU")
    fused = dense_chain.run(ctx, x, targets, method, params, by_node, relu, reveal, start_scaled(method, params))
    if fused is not None:  # an MLP: the whole traversal in one kernel, tile by tile
        return _post(method.post, fused, x, None)
    plus = {}
    if mode == LRP:  # Conv2d nodes whose rule reads a second product of the input (Compiled.wants_plus)
        plus = {nm: r for nm, r in by_node.items() if m.wants_plus(graph.by_name[nm], r)}
    xin, x0 = x, None
    if mode == DEEPLIFT:
        x0 = xp.broadcast_to(xp.asarray(params["baseline"], dtype=x.dtype), x.shape)
        xin = xp.concatenate([x, x0])
    score, _, tape = engine.forward(m, xin, keep, idx, ctx.shapes, plus)
    score = score[:n]
    ctx.score = score
    if targets is None:
        targets = ctx.picked = score.argmax(axis=1)[:, None]
    targets = xp.asarray(targets)
    kk = targets.shape[1]
    bm = method.backward_model(m, params) if method.backward_model is not None else m
    pool_eps = params.get("pool_eps", engine.POOL_STABILIZER)
    out = xp.empty((n, kk) + x.shape[1:], x.dtype)
    step = max(1, ctx.rows // n)
    for k0 in range(0, kk, step):
        tk = targets[:, k0:k0 + step]
        k = tk.shape[1]
        tp = tape if k == 1 else _repeat_tape(tape, n, k, mode == DEEPLIFT)
        sc = score if k == 1 else xp.repeat(score, k, axis=0)
        g = engine.backward(bm, tp, onehot(sc, tk.reshape(-1), start_scaled(method, params)), mode, rules=by_node,
                            pool_eps=pool_eps, relu=relu, reveal=reveal).reshape((n, k) + x.shape[1:])
        out[:, k0:k0 + k] = _post(method.post, g, x, x0)
    return out


def _post(post, g, x, x0):
    """The method's post-processing of a traversal result ``g`` (N, K, ...), in place (``g`` is
    the traversal's own array)."""
    if post is None:
        return g
    xp = xp_of(g)
    if post == "abs":
        return xp.abs(g, out=g)
    if post == "times_x":
        return xp.multiply(g, x[:, None], out=g)
    if post == "times_delta":
        return xp.multiply(g, (x - x0)[:, None], out=g)
    if post == "positive_times_x":  # rectgrad: x * R kept where positive
        return xp.maximum(xp.multiply(g, x[:, None], out=g), 0, out=g)
    raise ValueError(f"unknown post-processing {post!r}")  # pragma: no cover - declared in this package


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


def gradient(ctx, x, target):
    """``d s_c / dx`` (N, ...) for one target per sample: the plain GRAD traversal, for methods
    built on gradients (path integrals, sampling)."""
    t = None if target is None else xp_of(x).asarray(target).reshape(-1, 1)
    return traverse(ctx.at(ctx.row0), x, t, METHODS["gradient"], {})[:, 0]


def run_targets(ctx, x, targets, method, params):
    """Any method for the targets (N, K) (None: argmax, K = 1): (N, K, ...). Traversal methods
    and methods with ``run_multi`` take all K at once; the others run once per target."""
    if method.mode is not None:
        return traverse(ctx, x, targets, method, params)
    if method.run_multi is not None and targets is not None:
        return method.run_multi(ctx, x, targets, **params)
    if targets is None:
        return method.run(ctx, x, None, **params)[:, None]
    xp = xp_of(x)
    out = xp.empty((x.shape[0], targets.shape[1]) + x.shape[1:], x.dtype)
    for j in range(targets.shape[1]):
        out[:, j] = method.run(ctx, x, targets[:, j], **params)
    return out
