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


def needs(graph, mode, rules=None, reveal=()):
    """Names of node outputs (``"input"`` for x) the backward pass of ``mode`` reads,
    and the MaxPool nodes whose winner indices it needs. ``reveal``: activation nodes
    that take DeepLIFT's RevealCancel rule (their linear layer's input is read too)."""
    keep, idx = set(), set()
    for name in reveal:
        keep.add(graph.by_name[graph.by_name[name].inputs[0]].inputs[0])
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
        elif kind in ("LeakyReLU", "Softplus"):
            if mode == GRAD:
                keep.add(src)
            elif mode == DEEPLIFT:
                keep.update((src, node.name))
        elif kind in ("AvgPool2d", "GlobalAvgPool2d") and mode == LRP:
            keep.update((src, node.name))
        elif kind == "Add" and mode == LRP:
            keep.update(node.inputs)
            keep.add(node.name)
        elif node.layer.linear and mode == LRP:
            keep.add(src)
            rule = rules[node.name]
            if rule.uses_layer_z or rule.z_form() is not None or any(g.mask for g in rule.groups()):
                keep.add(node.name)
    keep.add(graph.score_node)
    return keep, idx


REVEAL_CANCEL_ACTS = ("ReLU", "Tanh", "Sigmoid", "LeakyReLU", "Softplus")


def reveal_cancel_nodes(graph, conv_rule="rescale"):
    """Activation nodes that take DeepLIFT's RevealCancel rule: those fed by a Dense layer
    (and by a Conv2d layer when ``conv_rule == "reveal_cancel"``) whose output feeds nothing
    else, so the layer's positive and negative input contributions reach the activation
    unmixed. Every other nonlinearity keeps the Rescale rule (Shrikumar et al. 2017 used
    RevealCancel on dense layers and Rescale on convolutions)."""
    kinds = ("Dense", "Conv2d") if conv_rule == "reveal_cancel" else ("Dense",)
    out = []
    for node in graph.nodes:
        if node.layer.kind not in REVEAL_CANCEL_ACTS:
            continue
        src = node.inputs[0]
        if src == "input":
            continue
        prod = graph.by_name[src]
        if prod.layer.kind in kinds and graph.consumers.get(src, []) == [node.name]:
            out.append(node.name)
    return tuple(out)


@dataclass
class RuleState:
    """A rule compiled for one layer: ``z_g = B[g] @ stack(a) + bias_g``, backward ``B.T @ s``.

    ``B`` is (G*O, Mm*K) with K = in-features (Dense) or C*kh*kw (Conv2d); ``modes`` are the
    Mm input-modifier codes stacked along K. ``zmode`` says how the denominators are formed
    (see ``rules.Rule.z_form``); only zmode 1 and 2 run a forward GEMM, with ``Wp``.
    """

    B: np.ndarray
    modes: np.ndarray
    bias_g: np.ndarray
    coefs: np.ndarray
    masks: np.ndarray
    eps: float
    zmode: int  # 0: den = layer z + bias_g; 1: den = B a + bias_g; 2: den = cz z + cp (W+ a) + bias_g
    Wp: np.ndarray  # the matrix of the extra forward GEMM: B (zmode 1) or W+ (zmode 2)
    cz: np.ndarray
    cp: np.ndarray
    b: np.ndarray  # zeros: the kernels' ``z - b``; zmode 2 folds ``-cz b`` into bias_g (float64) instead
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
    zform = rule.z_form() if nonneg else None
    cz, cp = (np.array([f[0] for f in zform]), np.array([f[1] for f in zform])) if zform else (np.zeros(G), np.zeros(G))
    folded = bias_g - np.repeat(cz, o) * np.tile(b, G)  # den_g = cz z + cp (W+ a) + folded_g, z as stored
    if rule.uses_layer_z:
        bias_g -= b  # the stored z already holds the layer's bias
        zmode, Wp = 0, np.zeros((1, 1))
    elif zform is not None and all(_one_sign(g.mask, cz[gi], cp[gi], folded[gi * o:(gi + 1) * o])
                                   for gi, g in enumerate(groups)):
        bias_g = folded
        zmode, Wp = 2, np.maximum(Wm, 0)
    else:  # direct evaluation, B a
        cz, cp = np.zeros(G), np.zeros(G)
        zmode, Wp = 1, B
    st = RuleState(
        B=np.ascontiguousarray(B, dtype=dtype),
        modes=np.array(modes, dtype=np.int64),
        bias_g=bias_g.astype(dtype),
        coefs=np.array([g.coef for g in groups], dtype=dtype),
        masks=np.array([g.mask for g in groups], dtype=np.int64),
        eps=float(rule.epsilon),
        zmode=zmode,
        Wp=np.ascontiguousarray(Wp, dtype=dtype),
        cz=cz.astype(dtype),
        cp=cp.astype(dtype),
        b=np.zeros(o, dtype),
    )
    if layer.kind == "Conv2d":
        st.Bt = flipped_transpose(st.B, G * o, Mm * layer.weight.shape[1], *layer.weight.shape[2:])
    graph.cache[key] = st
    return st


def _one_sign(mask, cz, cp, c):
    """True when the terms of ``cz z + cp (W+ a) + c`` (a >= 0) have one sign wherever ``mask``
    keeps the group, so the sum rounds like the direct evaluation (no cancellation)."""
    if mask == R.NOMASK and cz != 0:
        return False  # z of either sign
    signs = np.concatenate([[np.sign(cz) * (-1.0 if mask == R.ZNEG else 1.0), np.sign(cp)], np.sign(c)])
    return not (np.any(signs > 0) and np.any(signs < 0))


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
