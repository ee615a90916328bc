"""Compile step: what a method needs from the forward pass, and each linear layer's rule state.

``needs(graph, mode)`` lists the node outputs the backward traversal reads, so the forward
pass stores only those. ``rule_state`` turns a rule (relprop.rules) into the block matrix the
kernels contract with; it is computed once per (model, layer, rule, dtype) and cached on the graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import rules as R

GRAD, LRP, DEEPLIFT = "grad", "lrp", "deeplift"


def needs(graph, mode, rules=None):
    """Names of node outputs (``"input"`` for x) the backward pass of ``mode`` reads,
    and the MaxPool nodes whose winner indices it needs."""
    keep, idx = set(), set()
    for node in graph.nodes:
        kind = node.layer.kind
        src = node.inputs[0]
        if kind in ("ReLU", "Tanh", "Sigmoid"):
            if mode == GRAD:
                keep.add(src if kind == "ReLU" else node.name)
            elif mode == DEEPLIFT:
                keep.update((src, node.name))
        elif kind == "MaxPool2d":
            if mode == DEEPLIFT:
                keep.update((src, node.name))
            idx.add(node.name)
        elif kind == "AvgPool2d" and mode == LRP:
            keep.update((src, node.name))
        elif node.layer.linear and mode == LRP:
            keep.add(src)
            rule = rules[node.name]
            if rule.uses_layer_z or any(g.mask for g in rule.groups()):
                keep.add(node.name)
    keep.add(graph.score_node)
    return keep, idx


@dataclass
class RuleState:
    """A rule compiled for one layer: ``z_g = B[g] @ stack(a) + bias_g``, backward ``B.T @ s``.

    ``B`` is (G*O, Mm*K) with K = in-features (Dense) or C*kh*kw (Conv2d); ``modes`` are the
    Mm input-modifier codes stacked along K; ``has_zg`` is False when the denominator is the
    layer's own stored pre-activation (epsilon, z) and ``bias_g`` is then added to it.
    """

    B: np.ndarray
    modes: np.ndarray
    bias_g: np.ndarray
    coefs: np.ndarray
    masks: np.ndarray
    eps: float
    has_zg: bool
    Bt: np.ndarray = None  # Conv2d: B as the weight of the transposed (flipped) convolution


def rule_state(graph, node, rule, dtype, nonneg):
    """Compile ``rule`` for ``node`` (cached). ``nonneg``: the layer input has no negative
    entries, so terms on a- vanish and are dropped from the block matrix."""
    key = ("rule", node.name, rule.key, np.dtype(dtype).str, bool(nonneg))
    st = graph.cache.get(key)
    if st is not None:
        return st
    layer = node.layer
    W = layer.weight.astype(np.float64)
    b = layer.bias.astype(np.float64)
    o = W.shape[0]
    Wm = W.reshape(o, -1)
    k = Wm.shape[1]
    groups = rule.groups()
    modes = []
    for g in groups:
        for t in g.terms:
            if nonneg and t.mode == R.XNEG:
                continue
            if t.mode not in modes:
                modes.append(t.mode)
    G, Mm = len(groups), len(modes)
    B = np.zeros((G * o, Mm * k))
    bias_g = np.zeros(G * o)
    for gi, g in enumerate(groups):
        for t in g.terms:
            if nonneg and t.mode == R.XNEG:
                continue
            m = modes.index(t.mode)
            B[gi * o:(gi + 1) * o, m * k:(m + 1) * k] += t.weight(Wm)
            bias_g[gi * o:(gi + 1) * o] += t.bias(b)
    if rule.uses_layer_z:
        bias_g -= b  # the stored z already holds the layer's bias
    st = RuleState(
        B=np.ascontiguousarray(B, dtype=dtype),
        modes=np.array(modes, dtype=np.int64),
        bias_g=bias_g.astype(dtype),
        coefs=np.array([g.coef for g in groups], dtype=dtype),
        masks=np.array([g.mask for g in groups], dtype=np.int64),
        eps=float(rule.epsilon),
        has_zg=not rule.uses_layer_z,
    )
    if layer.kind == "Conv2d":
        st.Bt = flipped_transpose(st.B, G * o, Mm * layer.weight.shape[1], *layer.weight.shape[2:])
    graph.cache[key] = st
    return st


def flipped_transpose(B, rows, cin, kh, kw):
    """(rows, cin*kh*kw) conv weight -> (cin, rows*kh*kw) weight of the stride-1 transposed
    convolution (spatially flipped), so backward passes run as forward convolutions."""
    B4 = B.reshape(rows, cin, kh, kw)[:, :, ::-1, ::-1]
    return np.ascontiguousarray(B4.transpose(1, 0, 2, 3).reshape(cin, rows * kh * kw))


def grad_weight_t(graph, node, dtype):
    """Cached flipped-transposed weight of a Conv2d for gradient-type backward passes."""
    key = ("wt", node.name, np.dtype(dtype).str)
    got = graph.cache.get(key)
    if got is None:
        W, _ = graph.params(node, dtype)
        o, c, kh, kw = W.shape
        got = flipped_transpose(W.reshape(o, -1), o, c, kh, kw)
        graph.cache[key] = got
    return got
