"""MLPs through one fused kernel: the whole traversal of a chain of Dense layers, tile by tile.

A model whose layers up to the score are Dense layers with ReLU / Tanh / Sigmoid between them
(and reshapes or dropouts before the first) is an MLP; its gradient-mode and LRP traversals run
through the CPU kernel ``dense_chain`` (``relprop.kernels.cpu.dense_chain``), which takes a
tile of rows through the forward pass, the start signal and the backward pass while they stay
in cache, instead of the engine's layer-by-layer passes over the whole batch. The per-element
steps are the engine's own kernels, so results agree with the layer-by-layer path to rounding
(the GEMMs are blocked differently). :func:`run` returns None, and the engine runs, for
everything else: other layer kinds, DeepLIFT, guided ReLU rules, RevealCancel, the z^B rule's
bounds, a rule on x- where the sign of the layer's input is not known before the pass, a
forward-reuse cache, devices, or layers too wide for tiles whose GEMMs stay on the calling
thread (the layer-by-layer GEMMs are large and efficient there).
"""
from __future__ import annotations

import numpy as np

from . import backend, reuse
from .execute import page_aligned
from . import rules as R
from .graph import ACT_CODES
from .modes import GRAD, LRP, ZMode

ENABLED = True  # tests switch it off to compare with the layer-by-layer path
MIN_TILE = 8  # rows; narrower tiles spend more in per-call overhead than they save
RMETA = 20  # columns of the kernel's per-layer rule record (see relprop.kernels.cpu.dense_chain)
MIN_ROWS = 256  # smaller batches take the engine: as fast there, and no first compile of the kernel
# (about 6 s once per machine) for a handful of rows -- a demo's 4 passengers
MAX_TILE = 256
_PRE = ("Flatten", "Reshape", "Identity", "Dropout")
_PASS = ("Identity", "Dropout")
_NONNEG_ACTS = (ACT_CODES["ReLU"], ACT_CODES["Sigmoid"])  # outputs >= 0: a rule's x- terms vanish


def chain_of(graph):
    """(Dense nodes, activation code after each) when ``graph`` up to its score is a Dense
    chain, else None. The score node must be the last Dense layer (its own activation, if any,
    lies beyond the score)."""
    order = [nd.name for nd in graph.nodes]
    stop = order.index(graph.score_node)
    dense, acts, prev = [], [], "input"
    for node in graph.nodes[:stop + 1]:
        kind = node.layer.kind
        if tuple(node.inputs) != (prev,) or (prev != "input" and graph.consumers.get(prev, []) != [node.name]):
            return None
        if kind == "Dense":
            dense.append(node)
            acts.append(0)
        elif kind in ACT_CODES and kind != "Identity" and dense and prev == dense[-1].name and acts[-1] == 0:
            acts[-1] = ACT_CODES[kind]
        elif not (kind in _PASS or (kind in _PRE and not dense)):
            return None
        prev = node.name
    if not dense or graph.score_node != dense[-1].name:
        return None
    return tuple(dense), tuple(acts)


def _pack(m, k, dense, acts, rule_states, flags):
    """The kernel's packed arrays (see ``relprop.kernels.cpu.dense_chain``)."""
    dt = m.dtype
    Ws, bs = zip(*(m.params(k, nd) for nd in dense))
    offs = np.cumsum([0] + [2 * W.size for W in Ws])  # W, then W^T
    boffs = np.cumsum([0] + [b.size for b in bs])
    meta = np.array([(W.shape[1], W.shape[0], offs[i], boffs[i]) for i, W in enumerate(Ws)], np.int64)
    wbuf = np.concatenate([np.concatenate([W.ravel(), W.T.ravel()]) for W in Ws]).astype(dt)
    packed = [wbuf, np.concatenate(bs).astype(dt), meta, np.array(acts, np.int64)]
    if rule_states is None:
        return packed + [np.zeros(1, dt), np.zeros(1, np.int64), np.zeros((len(dense), RMETA), np.int64),
                         np.zeros(len(dense))]
    fparts, iparts, rmeta, fo, io = [], [], [], 0, 0

    def put(a):
        nonlocal fo
        fparts.append(np.ascontiguousarray(a, dtype=dt).ravel())
        fo += fparts[-1].size
        return fo - fparts[-1].size

    def put_int(a):
        nonlocal io
        iparts.append(np.asarray(a, np.int64).ravel())
        io += iparts[-1].size
        return io - iparts[-1].size

    for st, known in zip(rule_states, flags):
        g, mm = st.coefs.shape[0], st.modes.shape[0]
        flat = mm == 1 and int(st.modes[0]) == int(R.ONES) and st.zmode == int(ZMode.DIRECT) \
            and bool(np.all(st.B == 1)) and not np.any(st.masks)
        # a plain epsilon step: one group, no masks, the layer's own z, the input itself as modifier
        eps_step = g == 1 and mm == 1 and (int(st.modes[0]) == 0 or (int(st.modes[0]) == 1 and bool(known))) \
            and st.zmode == int(ZMode.LAYER_Z) \
            and not np.any(st.masks) and dt.type(st.eps) >= np.finfo(dt).tiny  # (epsilon kept in the input's dtype)
        row = [g, mm, st.zmode, put(st.B), st.Wp.shape[1], st.Wp.shape[0], put(st.Wp.T), put(st.coefs), put(st.cz),
               put(st.cp), put(st.b), put(st.bias_g), put_int(st.modes), put_int(st.masks), int(known), int(flat),
               put(_flat_weights(st) if flat else np.zeros(1)), int(eps_step), put(np.array([st.eps])),
               int(not np.any(st.bias_g))]
        rmeta.append(row)
    return packed + [np.concatenate(fparts), np.concatenate(iparts), np.array(rmeta, np.int64),
                     np.array([st.eps for st in rule_states], np.float64)]


def _flat_weights(st):
    """Per output unit, ``sum_g coef_g / stab(z_g)`` of a Flat-type rule state, whose
    denominators ``z_g = B 1 + bias_g`` (a count plus the rule's bias) do not depend on the input:
    its step is ``R_in[i, :] = sum_o R[i, o] w[o]``. ``stab`` as the kernels' (``z + eps sign(z)``,
    sign(0) = +1; LRP-0 takes 0 where ``z = 0``), in float64."""
    g, o = st.coefs.shape[0], st.b.shape[0]
    den = st.B.astype(np.float64).sum(axis=1) + st.bias_g.astype(np.float64)
    if st.eps == 0.0:
        inv = np.divide(1.0, den, out=np.zeros_like(den), where=den != 0)
    else:
        inv = 1.0 / np.where(den >= 0, den + st.eps, den - st.eps)
    return (st.coefs.astype(np.float64)[:, None] * inv.reshape(g, o)).sum(axis=0)


def _tile(dense, rule_states):
    """Rows per tile: the largest multiple of 8 (at most ``MAX_TILE``) whose every GEMM has
    ``m*n*k`` within ``SERIAL_GEMM_MNK``; None below ``MIN_TILE``."""
    from ..kernels.cpu.dense_chain import SERIAL_GEMM_MNK

    per_row = 1
    for i, nd in enumerate(dense):
        o, kin = nd.layer.weight.shape
        per_row = max(per_row, o * kin)
        if rule_states is not None:
            st = rule_states[i]
            per_row = max(per_row, st.B.shape[0] * st.B.shape[1], st.Wp.shape[0] * st.Wp.shape[1])
    t = min(MAX_TILE, SERIAL_GEMM_MNK // per_row) // 8 * 8
    return t if t >= MIN_TILE else None


def _static(m, method, by_node, relu, reveal, k):
    """(Dense nodes, activation codes) when the chain kernel can run ``method`` on model ``m``
    with kernels ``k`` whatever the input's sign (the rule states with x- terms on the first
    layer, the larger ones, must fit a tile), else None. The one decision ``row_bytes`` (the
    internal batch size) and ``run`` share; ``run`` checks the input's width and dtype."""
    if not ENABLED or method.mode not in (GRAD, LRP) or reveal or method.backward_model is not None:
        return None
    if method.mode == GRAD and relu != "gradient":
        return None
    if not getattr(k, "DENSE_CHAIN", False) or backend.is_device(k) or reuse.current() is not None:
        return None
    chain = m.host(("dense_chain", "chain"), lambda: chain_of(m.graph))
    if chain is None:
        return None
    dense, acts = chain
    states = None
    if method.mode == LRP:
        states = []
        for i, nd in enumerate(dense):
            needed = _modes(by_node[nd.name])
            known = i > 0 and acts[i - 1] in _NONNEG_ACTS
            if R.LOW in needed or R.HIGH in needed or (R.XNEG in needed and i > 0 and not known):
                return None
            states.append(m.rule(k, nd, by_node[nd.name], known and R.XNEG in needed)[0])
    return chain if _tile(dense, states) is not None else None


def _modes(rule):
    return {t.mode for grp in rule.groups() for t in grp.terms}


def row_bytes(m, method, params, k, shapes, itemsize, targets=1):
    """Bytes one sample takes outside the kernel's tiles when ``method`` runs through the chain
    kernel (its input, scores and ``targets`` results: the kernel writes the results into the
    caller's output rows and a method's post-processing works on them in place), else None."""
    from ..methods.base import rules_by_node

    by_node = rules_by_node(m.graph, method, params) if method.mode == LRP else None
    relu = method.relu(params) if callable(method.relu) else method.relu
    reveal = method.reveal(m.graph, params) if method.reveal is not None else ()
    chain = _static(m, method, by_node, relu, reveal, k)
    if chain is None:
        return None
    f = int(np.prod(shapes["input"]))
    return ((1 + max(1, int(targets))) * f + chain[0][-1].layer.weight.shape[0]) * itemsize


def run(ctx, x, targets, method, params, by_node, relu, reveal, start_scaled):
    """The traversal's result (N, K, ...) before post-processing, with ``ctx.score`` set, or
    None when the chain kernel does not apply (the caller runs the engine)."""
    k = backend.kernels_for(x)
    m = ctx.m
    if x.dtype != m.dtype or x.ndim < 2:
        return None
    chain = _static(m, method, by_node, relu, reveal, k)
    if chain is None:
        return None
    dense, acts = chain
    n = x.shape[0]
    if n < MIN_ROWS:
        return None
    x2 = np.ascontiguousarray(x.reshape(n, -1))  # (a read-only x, e.g. a memory map, has its own compilation)
    if x2.shape[1] != dense[0].layer.weight.shape[1]:
        return None
    states, flags, key = None, None, ("dense_chain", method.mode)
    if method.mode == LRP:
        states, flags = [], []
        for i, nd in enumerate(dense):
            rule = by_node[nd.name]
            needed = _modes(rule)
            known = i > 0 and acts[i - 1] in _NONNEG_ACTS  # the input is an activation >= 0
            nonneg = False  # as relprop.core.linear.lrp decides: only rules with x- terms look
            if R.XNEG in needed:
                nonneg = known or bool(k.all_nonnegative(x2.ravel()))
            states.append(m.rule(k, nd, rule, nonneg)[0])
            flags.append(known or nonneg)
        key += tuple((by_node[nd.name].key, st.modes.tobytes(), f) for nd, st, f in zip(dense, states, flags))
    tile = _tile(dense, states)
    if tile is None:
        return None
    packed = m.host(key, lambda: _pack(m, k, dense, acts, states, flags))
    argmax = targets is None
    tg = np.zeros((n, 1), np.int64) if argmax else np.array(targets, dtype=np.int64, order="C")  # written, own copy
    c = dense[-1].layer.weight.shape[0]
    scores = np.empty((n, c), x.dtype)
    want = (n, tg.shape[1]) + x.shape[1:]
    out, ctx.dest = ctx.dest, None  # the caller's rows, when it gave them (once)
    if not (isinstance(out, np.ndarray) and out.shape == want and out.dtype == x.dtype and out.flags.c_contiguous
            and out.flags.writeable):
        out = page_aligned(want, x.dtype)  # (a dataset store writes it by direct I/O)
    wbuf, bbuf, meta, acts_a, rbuf, ibuf, rmeta, reps = packed
    k.dense_chain(x2, wbuf, bbuf, meta, acts_a, method.mode == LRP, rbuf, ibuf, rmeta, reps, tg, argmax,
                  start_scaled, tile, scores, out.reshape(n, tg.shape[1], -1))
    ctx.score = scores
    if argmax:
        ctx.picked = tg
    return out
