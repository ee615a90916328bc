"""Compile step: what a method needs from the forward pass, and the model's derived weights.

``needs(graph, mode)`` lists the node outputs the backward traversal reads, so the forward
pass stores only those. :class:`Compiled` holds everything derived from one model's weights for
one dtype: weight casts, each linear layer's rule state (``rule_state`` turns a rule of
``relprop.core.rules`` into the block matrix the kernels contract with), stacked and transposed
weights, and their device copies. It is tied to the weight version it was built from
(``Graph.version``): a model whose weights were reassigned gets a fresh one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from . import backend
from . import rules as R

from .modes import DEEPLIFT, GRAD, LRP, ZMode  # noqa: E402,F401  (re-exported)


def needs(graph, mode, rules=None, reveal=()):
    """Names of node outputs (``"input"`` for x) the backward pass of ``mode`` reads,
    and the MaxPool nodes whose winner indices it needs (each layer kind's ``store`` in
    ``relprop.core.layers``). ``reveal``: activation nodes that take DeepLIFT's RevealCancel
    rule (their linear layer's input is read too)."""
    from .layers import OPS

    keep, idx = set(), set()
    for name in reveal:
        keep.add(graph.by_name[graph.by_name[name].inputs[0]].inputs[0])
    for node in graph.nodes:
        names, winners = OPS[node.layer.kind].store(node, mode, None if rules is None else rules.get(node.name))
        keep.update(names)
        if winners:
            idx.add(node.name)
    keep.add(graph.score_node)
    return keep, idx


def reveal_cancel_nodes(graph, conv_rule="rescale"):
    """Activation nodes that take DeepLIFT's RevealCancel rule: those fed by a Dense layer
    (and by a Conv2d layer when ``conv_rule == "reveal_cancel"``) whose output feeds nothing
    else, so the layer's positive and negative input contributions reach the activation
    unmixed. Every other nonlinearity keeps the Rescale rule (Shrikumar et al. 2017 used
    RevealCancel on dense layers and Rescale on convolutions)."""
    kinds = ("Dense", "Conv2d") if conv_rule == "reveal_cancel" else ("Dense",)
    out = []
    for node in graph.nodes:
        if not node.layer.activation:
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


def rule_state(node, rule, dtype, nonneg):
    """Compile ``rule`` for ``node``. ``nonneg``: the layer input has no negative
    entries, so terms on a- vanish and are dropped from the block matrix."""
    layer = node.layer
    W = layer.weight.astype(np.float64)
    b = layer.bias.astype(np.float64)
    o = W.shape[0]
    Wm = W.reshape(o, -1)
    k = Wm.shape[1]
    # a grouped / dilated Conv2d computes with a dense weight whose structural zeros are not
    # taps: a weight map that ignores the values (Flat's ones) must keep them zero, so that the
    # rule sees the convolution the layer is (as Zennit, which runs the grouped/dilated conv);
    # for every other map (W, W+, W-, W^2) the zeros stay zero and the mask changes nothing
    mask = layer.structure_mask() if layer.kind == "Conv2d" else None
    mask = None if mask is None else mask.reshape(o, -1)
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
            tw = t.weight(Wm)
            B[gi * o:(gi + 1) * o, m * k:(m + 1) * k] += tw if mask is None else np.where(mask, tw, 0.0)
            bias_g[gi * o:(gi + 1) * o] += t.bias(b)
    zform = rule.z_form() if nonneg else None
    cz, cp = (np.array([f[0] for f in zform]), np.array([f[1] for f in zform])) if zform else (np.zeros(G), np.zeros(G))
    folded = bias_g - np.repeat(cz, o) * np.tile(b, G)  # den_g = cz z + cp (W+ a) + folded_g, z as stored
    if rule.uses_layer_z:
        bias_g -= b  # the stored z already holds the layer's bias
        zmode, Wp = ZMode.LAYER_Z, np.zeros((1, 1))
    elif zform is not None and all(_one_sign(g.mask, cz[gi], cp[gi], folded[gi * o:(gi + 1) * o])
                                   for gi, g in enumerate(groups)):
        bias_g = folded
        zmode, Wp = ZMode.PLUS, np.maximum(Wm, 0)
    else:  # direct evaluation, B a
        cz, cp = np.zeros(G), np.zeros(G)
        zmode, Wp = ZMode.DIRECT, B
    st = RuleState(
        B=np.ascontiguousarray(B, dtype=dtype),
        modes=np.array(modes, dtype=np.int64),
        bias_g=bias_g.astype(dtype),
        coefs=np.array([g.coef for g in groups], dtype=dtype),
        masks=np.array([g.mask for g in groups], dtype=np.int64),
        eps=float(rule.epsilon),
        zmode=int(zmode),
        Wp=np.ascontiguousarray(Wp, dtype=dtype),
        cz=cz.astype(dtype),
        cp=cp.astype(dtype),
        b=np.zeros(o, dtype),
    )
    if layer.kind == "Conv2d":
        st.Bt = flipped_transpose(st.B, G * o, Mm * layer.weight.shape[1], *layer.weight.shape[2:])
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


class Compiled:
    """The derived weights of one model for one dtype, built on first use and kept.

    ``host(key, build)`` returns ``build()`` computed once; ``on(k, key, build)`` the same
    copied once to kernel module ``k``'s device (the value itself on the CPU). Values are
    arrays, tuples of arrays or dataclasses with array fields. It refers to its model weakly (the
    registry of ``compiled`` must not keep models alive); whoever uses it holds the model.
    Pickled, it is its model and dtype: the receiving process (a Dask worker) derives the
    weights again."""

    def __init__(self, graph, dtype):
        self._graph = weakref.ref(graph)
        self.dtype = np.dtype(dtype)
        self.version = graph.version
        self._host = {}
        self._dev = {}
        self.fit_step = {}  # (backend, sample shape, key) -> rows that fitted in device memory

    @property
    def graph(self):
        return self._graph()

    def __reduce__(self):
        return compiled, (self.graph, self.dtype)

    def host(self, key, build, node=None):
        """``build()`` once per key. With ``node``: the value depends on that node's layer alone
        (its weights, hyper-parameters and this dtype), and is shared by every model that holds
        the same layer object under the same name (``_LAYER_STATE``): a randomization study's
        models, which differ from the original in a few layers, derive only those again."""
        got = self._host.get(key)
        if got is None:
            if node is not None:
                per = _LAYER_STATE.get(node.layer)
                if per is None or per[0] != node.layer.version:  # a new weight: the old state goes
                    per = _LAYER_STATE[node.layer] = (node.layer.version, {})
                lkey = (self.dtype.str,) + tuple(key)
                got = per[1].get(lkey)
                if got is None:
                    got = per[1][lkey] = build()
            else:
                got = build()
            self._host[key] = got
        return got

    def on(self, k, key, build, node=None):
        value = self.host(key, build, node)
        if not backend.is_device(k):
            return value
        dkey = (k.name,) + key
        got = self._dev.get(dkey)
        if got is None:
            if node is not None:  # the device copy too is shared by the models holding the layer
                per = _LAYER_STATE.get(node.layer)
                lkey = ("device", self.dtype.str) + dkey
                got = per[1].get(lkey) if per is not None and per[0] == node.layer.version else None
                if got is None:
                    got = _move(k.xp, value)
                    if per is not None and per[0] == node.layer.version:
                        per[1][lkey] = got
            else:
                got = _move(k.xp, value)
            self._dev[dkey] = got
        return got

    # -- the derived weights the engine reads ------------------------------------------
    def params(self, k, node):
        """(weight, bias) of ``node`` in this dtype."""
        L = node.layer
        return self.on(k, ("params", node.name), lambda: (np.ascontiguousarray(L.weight, dtype=self.dtype),
                                                          np.ascontiguousarray(L.bias, dtype=self.dtype)), node)

    def rule(self, k, node, rule, nonneg):
        """(host RuleState, the same on ``k``'s device) of ``rule`` on ``node``."""
        key = ("rule", node.name, rule.key, bool(nonneg))
        build = lambda: rule_state(node, rule, self.dtype, nonneg)  # noqa: E731
        return self.host(key, build, node), self.on(k, key, build, node)

    def _nonneg_state(self, node, rule):
        return self.rule(_HOST, node, rule, True)[0]

    def wants_plus(self, node, rule):
        """True when, on inputs >= 0, ``rule`` on ``node`` (a Conv2d) reads a second product of its
        input that the forward GEMM can compute beside ``W a`` (``stacked_plus``): ``W+ a`` for the
        z-form rules (ZPlus, Gamma, alpha-beta with beta = 0), ``B a`` for rules evaluated directly on
        ``a`` itself (alpha-beta with beta > 0: ``[W+; W-] a``, no cancellation)."""
        if node.layer.kind != "Conv2d":
            return False
        st = self._nonneg_state(node, rule)
        return (st.zmode == ZMode.PLUS and rule.z_form() is not None) or _direct_on_a(st)

    def stacked_plus(self, k, node, rule):
        """The forward GEMM weight of a Conv2d whose rule reads a second product (``wants_plus``),
        and whether z is the sum of its two blocks: ``[W; W+]`` (2O, K) for the z-form rules,
        ``B`` alone when its blocks add up to W exactly (alpha-beta: ``[W+; W-]``, z = W+ a + W- a,
        a GEMM of 2O rows as for ``[W; W+]``), else ``[W; B]``."""
        st = self._nonneg_state(node, rule)
        direct = _direct_on_a(st)

        def build():
            Wm = self.params(_HOST, node)[0].reshape(node.layer.weight.shape[0], -1)
            if not direct:
                return np.ascontiguousarray(np.concatenate([Wm, np.maximum(Wm, 0)])), False
            o = Wm.shape[0]
            B = st.B
            W64 = node.layer.weight.astype(np.float64).reshape(o, -1)
            if B.shape[0] == 2 * o and np.array_equal(B[:o].astype(np.float64) + B[o:].astype(np.float64), W64):
                return np.ascontiguousarray(B.astype(Wm.dtype)), True
            return np.ascontiguousarray(np.concatenate([Wm, B.astype(Wm.dtype)])), False

        key = ("wplus", node.name) + ((rule.key,) if direct else ())
        W, summed = self.host(key, build, node)
        return (self.on(k, key + ("W",), lambda: W) if backend.is_device(k) else W), summed

    def weight_t(self, k, node):
        """Flipped-transposed weight of a Conv2d for gradient-type backward passes."""
        def build():
            W, _ = self.params(_HOST, node)
            o, c, kh, kw = W.shape
            return flipped_transpose(W.reshape(o, -1), o, c, kh, kw)

        return self.on(k, ("wt", node.name), build, node)

    def bn(self, k, node, ndim):
        """Batch norm's (scale, shift) shaped to broadcast over (N, C, ...)."""
        shape = (-1,) + (1,) * (ndim - 2)
        return self.on(k, ("bn", node.name, ndim),
                       lambda: tuple(v.astype(self.dtype).reshape(shape) for v in node.layer.scale_shift), node)


def _direct_on_a(st):
    """A rule state evaluated directly (``B a``) whose only input modifier is ``a`` itself (or
    ``a+ = a`` on inputs >= 0): ``B a`` can come with the forward GEMM."""
    return st.zmode == ZMode.DIRECT and len(st.modes) == 1 and int(st.modes[0]) in (int(R.X), int(R.XPOS))


class _Host:  # the CPU as a kernel-module stand-in for Compiled.on
    xp = np
    name = "cpu"


_HOST = _Host()


def _move(xp, v):
    if isinstance(v, np.ndarray):
        return xp.asarray(v)
    if isinstance(v, tuple):
        return tuple(_move(xp, a) for a in v)
    if dataclasses.is_dataclass(v):
        return dataclasses.replace(v, **{f.name: _move(xp, getattr(v, f.name)) for f in dataclasses.fields(v)
                                         if isinstance(getattr(v, f.name), np.ndarray)})
    return v


_COMPILED = {}  # id(graph) -> (weakref to the graph, {dtype: Compiled})
# layer -> (layer version, {(dtype, key): derived value}): what depends on one layer alone, shared by
# the models holding that layer object; dropped with the layer or when its weights change
_LAYER_STATE = weakref.WeakKeyDictionary()
_COMPILED_LOCK = threading.Lock()


def compiled(graph, dtype):
    """The :class:`Compiled` state of ``graph`` for ``dtype``, shared by every call on that
    model (``rp.attribute`` reuses it across calls) and rebuilt when the weights changed. It
    is dropped when the model is garbage-collected; nothing is stored on the model."""
    dtype = np.dtype(dtype)
    with _COMPILED_LOCK:
        entry = _COMPILED.get(id(graph))
        if entry is None or entry[0]() is not graph:
            entry = (weakref.ref(graph, lambda _, i=id(graph), reg=_COMPILED: reg.pop(i, None)), {})
            _COMPILED[id(graph)] = entry
        got = entry[1].get(dtype)
        if got is None or got.version != graph.version:
            got = entry[1][dtype] = Compiled(graph, dtype)
        return got


def fingerprint(graph):
    """SHA-256 of a model's structure (node names, kinds, inputs, hyper-parameters) and weights
    (dtype, shape, bytes), computed once per weight version."""
    def build():
        h = hashlib.sha256()
        for node in graph.nodes:
            layer = node.layer
            hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in
                     ((k, getattr(layer, k)) for k in layer.hyper)}
            h.update(json.dumps([node.name, layer.kind, list(node.inputs), hyper]).encode())
            for a in layer.arrays:
                arr = np.ascontiguousarray(getattr(layer, a))
                h.update(f"{a}:{arr.dtype.str}:{arr.shape}".encode())
                h.update(memoryview(arr).cast("B"))
        return (h.hexdigest(),)

    return compiled(graph, np.float64).host(("fingerprint",), build)[0]
