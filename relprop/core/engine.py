"""The two passes: one forward that stores what the method needs, one backward traversal.

Both are short loops over the graph; what each layer kind does lives in
``relprop.core.layers`` (one op per kind: forward, what to store, backward per mode), the
numeric work of Dense/Conv2d in ``relprop.core.linear``. The backward traversal is the same
for every method (Ancona et al. 2018, Table 1): a ``mode`` picks each kind's step.
"""
from __future__ import annotations

from . import backend, reuse
from .layers import DEEPLIFT_EPS, OPS, POOL_STABILIZER, Backward, Forward, step  # noqa: F401
from .linear import release_scratch  # noqa: F401  (re-exported)


class Tape:
    """What the forward pass kept: node outputs, max-pool winners, and the batch size."""

    def __init__(self, n):
        self.n = n
        self.out = {}
        self.idx = {}
        self.plus = {}  # Conv2d name -> W+ a (N, O, Ho, Wo), computed with the forward GEMM
        self.nonneg = {}  # linear node name -> whether its input had no negative entry (checked once)


_TAPE_FIELDS = ("idx", "plus", "nonneg")  # what a node's forward writes on the tape besides its kept outputs


def forward(m, x, keep=(), idx_nodes=(), shapes=None, plus=()):
    """Run the model ``m.graph`` (``m``: its ``relprop.core.plan.Compiled`` state) on ``x``;
    return (score-node output, final output, Tape).

    ``keep``: names whose outputs the tape stores; ``idx_nodes``: max-pool nodes whose
    winner indices it stores; ``shapes``: per-sample shapes from ``graph.infer_shapes``;
    ``plus``: {Conv2d node: its LRP rule} for rules that read ``W+ a`` or ``B a``
    (``Compiled.wants_plus``): on a >= 0 it is computed in the same GEMM as ``W a`` (weights
    stacked, one im2col) and stored on the tape.
    """
    graph = m.graph
    tape = Tape(x.shape[0])
    tape.shapes = shapes if shapes is not None else graph.infer_shapes(x.shape[1:])
    fw = Forward(backend.kernels_for(x), m, tape, keep, idx_nodes, plus)
    score = graph.score_node
    live = {"input": x}
    remaining = {name: len(c) for name, c in graph.consumers.items()}
    if "input" in keep:
        tape.out["input"] = x
    cache = reuse.current()
    p = cache.begin(graph, x, keep, idx_nodes, plus, m.dtype, fw.k) if cache is not None else None
    if p is None:
        cache = None
    for node in graph.nodes:
        if node.name in fw.skip:
            continue
        got = cache.lookup(p, node.name) if cache is not None else None
        if got is not None:  # the same prefix on the same input ran before (relprop.core.reuse)
            outs, parts, skipped = got
            for field, part in parts.items():
                getattr(tape, field).update(part)
            fw.skip.update(skipped)
        else:
            if cache is not None:
                before = {f: set(getattr(tape, f)) for f in _TAPE_FIELDS}
                skip0 = set(fw.skip)
            out = OPS[node.layer.kind].forward(fw, node, [live[s] for s in node.inputs])
            outs = out if isinstance(out, dict) else {node.name: out}
            if cache is not None:
                parts = {f: {k: v for k, v in getattr(tape, f).items() if k not in before[f]} for f in _TAPE_FIELDS}
                cache.store(p, node.name, outs, parts, fw.skip - skip0)
        for name, val in outs.items():
            if val is not None:
                live[name] = val
                if name in keep:
                    tape.out[name] = val
        for src in node.inputs + ((node.name,) if len(outs) > 1 else ()):  # a fused activation read node
            remaining[src] -= 1
            if remaining[src] == 0 and src != score:
                live.pop(src, None)
    return live[graph.score_node], live[graph.output], tape


def backward(m, tape, start, mode, rules=None, pool_eps=POOL_STABILIZER, relu="gradient", collect=None,
             reveal=(), **options):
    """Propagate ``start`` (signal at the score node) to the input.

    ``mode``: ``"grad"``, ``"lrp"``, ``"deeplift"`` (``relprop.core.plan``) or a mode a method
    registered (``layers.register_mode``; ``options`` reach its steps). ``rules``: node name ->
    Rule (LRP). For DEEPLIFT the tape holds the forward of ``[x; baseline]`` (2N rows) and
    ``start`` has N rows. ``pool_eps``: stabilizer of the z-rule at average pooling and Add (LRP).
    ``relu`` (GRAD mode): what replaces the ReLU derivative -- ``"gradient"``, ``"guided"``
    (guided backprop: ``relu(g) * [z > 0]``), ``"deconvnet"`` (``relu(g)``) (Springenberg et al.
    2015; Zeiler & Fergus 2014) or ``("rectgrad", q)`` (Kim et al. 2019).
    ``collect``: a dict whose keys name nodes; it receives the signal at each one's output
    (e.g. the gradient at a conv layer for CAM methods). Propagation stops once all are
    collected when ``"input"`` is not among them.
    ``reveal`` (DEEPLIFT): activation nodes that take the RevealCancel rule
    (``plan.reveal_cancel_nodes``); the others take Rescale.
    Returns the signal at the input (zeros where none arrives).
    """
    graph = m.graph
    k = backend.kernels_for(start)
    bw = Backward(k, m, tape, mode, rules, pool_eps, relu, reveal, start.shape[0], options)
    sig = {graph.score_node: start}
    stop = [nd.name for nd in graph.nodes].index(graph.score_node)
    for node in reversed(graph.nodes[: stop + 1]):
        g = sig.pop(node.name, None)
        if g is None:
            continue
        if collect is not None and node.name in collect:
            collect[node.name] = g
            if "input" not in collect and all(v is not None for v in collect.values()):
                return None
        for src, gin in step(mode, node.layer.kind)(bw, node, g):
            sig[src] = sig[src] + gin if src in sig else gin
    out = sig.get("input")
    if out is None:
        out = k.xp.zeros((start.shape[0],) + tape.shapes["input"], start.dtype)
    if collect is not None and "input" in collect:
        collect["input"] = out
    return out
