"""The two passes: one forward that stores what the method needs, one backward traversal.

The backward traversal is the same for every method (Ancona et al. 2018, Table 1); a ``mode`` picks
what happens at each node:

=============  ===========================  ============================  ======================
node           GRAD (gradient, IG)          LRP (rules)                   DEEPLIFT (rescale)
=============  ===========================  ============================  ======================
Dense/Conv2d   ``W^T g``                    the layer's rule (RuleState)  ``W^T g`` (linear rule)
activation     ``g * f'(z)``                pass ``R`` through            ``g * df/dz`` (rescale)
MaxPool2d      route to the winner          route to the winner           Captum's max rule
AvgPool2d      ``pool^T g``                 ``x * pool^T(R / stab(z))``   ``pool^T g``
=============  ===========================  ============================  ======================

DeepLIFT RevealCancel (``reveal=`` activation names) changes two rows of the DEEPLIFT column:
the activation sends the pair of multipliers ``(m+, m-)`` of its input's positive and negative
parts (Shrikumar et al. 2017, Sec. 3.5.3) and the linear layer below hands each input the one that
matches the sign of its contribution ``w_ji Delta a_i`` (see ``_reveal_cancel``).
"""
from __future__ import annotations

import numpy as np

from . import backend
from .graph import ACT_CODES
from .plan import DEEPLIFT, GRAD, LRP
from . import rules as R

# bytes one im2col buffer may take; batches are cut into chunks below this
COLS_BUDGET = 8 * 2**20
DEEPLIFT_EPS = 1e-10
POOL_STABILIZER = 1e-6


class Tape:
    """What the forward pass kept: node outputs, max-pool winners, and the batch size."""

    def __init__(self, n):
        self.n = n
        self.out = {}
        self.idx = {}
        self.plus = {}  # Conv2d name -> W+ a (N, O, Ho, Wo), computed with the forward GEMM
        self.nonneg = {}  # linear node name -> whether its input had no negative entry (checked once)


_WORK = {}


def _scratch(slot, shape, dtype, xp=np):
    """A reusable scratch buffer (im2col columns and GEMM inputs): fresh multi-MB arrays
    for every chunk cost a page fault per 4 KiB page, which showed up as much as im2col
    itself. Calls are serialized by backend.LOCK, so one buffer per slot is safe."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    key = (xp.__name__, slot)
    buf = _WORK.get(key)
    if buf is None or buf.nbytes < nbytes:
        _WORK.pop(key, None)  # free the old one first (device memory)
        buf = xp.empty(max(nbytes, 1), np.uint8)
        _WORK[key] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def release_scratch():
    """Drop the cached scratch buffers (e.g. before retrying a smaller batch after a device OOM)."""
    _WORK.clear()


def _expit(xp, z):
    """The logistic function, overflow-free, for numpy and cupy arrays alike."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)


def _chunks(n, per_sample_bytes):
    step = max(1, int(COLS_BUDGET // max(per_sample_bytes, 1)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _fusable_act(graph, node):
    """The activation node that consumes ``node`` alone, if any (fused into its epilogue)."""
    cons = graph.consumers.get(node.name, [])
    if len(cons) == 1:
        nxt = graph.by_name[cons[0]]
        if nxt.layer.kind in ACT_CODES:
            return nxt
    return None


def forward(m, x, keep=(), idx_nodes=(), shapes=None, plus=()):
    """Run the graph on ``x``; return (score-node output, final output, Tape).

    ``keep``: names whose outputs the tape stores; ``idx_nodes``: max-pool nodes whose
    winner indices it stores; ``shapes``: per-sample shapes from ``m.graph.infer_shapes``;
    ``plus``: Conv2d nodes whose rule wants ``W+ a`` (z_form rules): on a >= 0 it is computed in
    the same GEMM as ``W a`` (weights stacked, one im2col) and stored on the tape.
    """
    k = backend.kernels_for(x)
    dtype = x.dtype
    tape = Tape(x.shape[0])
    tape.shapes = shapes if shapes is not None else m.graph.infer_shapes(x.shape[1:])
    score = m.graph.score_node
    live = {"input": x}
    remaining = {name: len(c) for name, c in m.graph.consumers.items()}
    skip = set()
    if "input" in keep:
        tape.out["input"] = x
    for node in m.graph.nodes:
        if node.name in skip:
            continue
        layer = node.layer
        xin = live[node.inputs[0]]
        kind = layer.kind
        fused = _fusable_act(m.graph, node) if layer.linear else None
        act = ACT_CODES[fused.layer.kind] if fused is not None else 0
        if layer.linear:
            want_plus = False
            if node.name in plus:
                want_plus = tape.nonneg[node.name] = bool(k.all_nonnegative(xin.ravel()))
            z, a, pz = _linear_forward(k, m, node, xin, act, fused is not None and node.name in keep, dtype,
                                       want_plus)
            if pz is not None:
                tape.plus[node.name] = pz
            outs = {node.name: z}
            if fused is not None:
                outs[fused.name] = a
                skip.add(fused.name)
        elif kind in ACT_CODES:
            outs = {node.name: _act_numpy(kind, xin, k.xp)}
        elif kind == "MaxPool2d":
            out, idx = _pool_forward(k, layer, xin, True)
            outs = {node.name: out}
            if node.name in idx_nodes:
                tape.idx[node.name] = idx
        elif kind == "AvgPool2d":
            outs = {node.name: _pool_forward(k, layer, xin, False)[0]}
        elif kind in ("Flatten", "Reshape"):
            outs = {node.name: xin.reshape((xin.shape[0],) + tape.shapes[node.name])}
        elif kind == "Dropout":
            outs = {node.name: xin}
        elif kind in ("LeakyReLU", "Softplus"):
            outs = {node.name: _param_act(layer, xin, k.xp)}
        elif kind == "BatchNorm2d":
            scale, shift = m.bn(k, node, xin.ndim)
            outs = {node.name: xin * scale + shift}
        elif kind == "GlobalAvgPool2d":
            outs = {node.name: xin.mean(axis=(2, 3), keepdims=True, dtype=dtype)}
        elif kind == "Add":
            acc = live[node.inputs[0]] + live[node.inputs[1]]
            for src in node.inputs[2:]:
                acc += live[src]
            outs = {node.name: acc}
        elif kind == "Concat":
            outs = {node.name: k.xp.concatenate([live[s] for s in node.inputs], axis=layer.sample_axis(xin.ndim - 1) + 1)}
        elif kind == "Softmax":
            zc = xin - xin.max(axis=1, keepdims=True)
            e = k.xp.exp(zc)
            outs = {node.name: e / e.sum(axis=1, keepdims=True)}
        else:  # pragma: no cover - every IR layer is handled above
            raise TypeError(f"no forward for layer kind {kind}")
        for name, val in outs.items():
            if val is not None:
                live[name] = val
                if name in keep:
                    tape.out[name] = val
        for src in node.inputs + ((node.name,) if fused is not None else ()):
            remaining[src] -= 1
            if remaining[src] == 0 and src != score:
                live.pop(src, None)
    return live[m.graph.score_node], live[m.graph.output], tape


def _param_act(layer, z, xp=np):
    """LeakyReLU and Softplus forward (torch's formulas)."""
    if layer.kind == "LeakyReLU":
        return xp.where(z > 0, z, z * z.dtype.type(layer.negative_slope))
    bz = z * z.dtype.type(layer.beta)
    return xp.where(bz > layer.threshold, z, xp.logaddexp(0, bz) / z.dtype.type(layer.beta)).astype(z.dtype)


def _param_act_grad(layer, z, xp=np):
    """f'(z) of LeakyReLU and Softplus."""
    if layer.kind == "LeakyReLU":
        return xp.where(z > 0, 1, layer.negative_slope).astype(z.dtype)
    bz = z * z.dtype.type(layer.beta)
    return xp.where(bz > layer.threshold, 1, _expit(xp, bz)).astype(z.dtype)


def _act_numpy(kind, x, xp=np):
    if kind == "ReLU":
        return xp.maximum(x, 0)
    if kind == "Tanh":
        return xp.tanh(x)
    if kind == "Sigmoid":
        return _expit(xp, x)
    return x


def _linear_forward(k, m, node, xin, act, store_z, dtype, want_plus=False):
    """Dense/Conv2d forward with bias and the following activation fused in the epilogue.
    Returns (z or None, a, W+ a or None) where z is kept only when ``store_z``."""
    W, b = m.params(k, node)
    xp = k.xp
    n = xin.shape[0]
    if node.layer.kind == "Dense":
        z = xin @ W.T
        a = xp.empty_like(z) if (store_z and act) else z
        k.bias_act_rows(z, b, act, a, store_z)
        return (z if (store_z or not act) else None), a, None
    o, c, kh, kw = W.shape
    (sh, sw), (ph, pw) = node.layer.stride, node.layer.padding
    h, w = xin.shape[2:]
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    p = ho * wo
    Wm = m.stacked_plus(k, node) if want_plus else W.reshape(o, -1)
    a = xp.empty((n, o, ho, wo), dtype)
    z = xp.empty_like(a) if (store_z and act) else a
    pz = xp.empty_like(a) if want_plus else None
    zero = xp.zeros(o, dtype)
    for i0, i1 in _chunks(n, c * kh * kw * p * a.itemsize):
        cols = _scratch("cols", (c * kh * kw, (i1 - i0) * p), dtype, xp)
        k.im2col(xin[i0:i1], kh, kw, sh, sw, ph, pw, cols)
        zg = xp.matmul(Wm, cols, out=_scratch("gemm", (Wm.shape[0], (i1 - i0) * p), dtype, xp))
        k.bias_act_from_gemm(zg[:o], b, act, a[i0:i1].reshape(i1 - i0, o, p), z[i0:i1].reshape(i1 - i0, o, p),
                             store_z and act != 0)
        if want_plus:
            pc = pz[i0:i1].reshape(i1 - i0, o, p)
            k.bias_act_from_gemm(zg[o:], zero, 0, pc, pc, False)
    return (z if (store_z or not act) else None), a, pz


def _pool_forward(k, layer, xin, is_max):
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    n, c, h, w = xin.shape
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    out = k.xp.empty((n, c, ho, wo), xin.dtype)
    if is_max:
        idx = k.xp.empty((n, c, ho, wo), np.int64)
        k.maxpool_forward(xin, kh, kw, sh, sw, ph, pw, out, idx)
        return out, idx
    k.avgpool_forward(xin, kh, kw, sh, sw, ph, pw, out)
    return out, None


# ---------------------------------------------------------------------------------------
# backward


def backward(m, tape, start, mode, rules=None, pool_eps=POOL_STABILIZER, relu="gradient", collect=None,
             reveal=()):
    """Propagate ``start`` (signal at the score node) to the input.

    ``mode``: GRAD, LRP or DEEPLIFT. ``rules``: node name -> Rule (LRP). For DEEPLIFT the
    tape holds the forward of ``[x; baseline]`` (2N rows) and ``start`` has N rows.
    ``pool_eps``: stabilizer of the z-rule at average pooling and at Add (LRP).
    ``relu`` (GRAD mode): what replaces the ReLU derivative -- ``"gradient"``, ``"guided"``
    (guided backprop: ``relu(g) * [z > 0]``) or ``"deconvnet"`` (``relu(g)``) (Springenberg et al. 2015; Zeiler & Fergus 2014).
    ``collect``: a dict whose keys name nodes; it receives the signal at each one's output
    (e.g. the gradient at a conv layer for CAM methods). Propagation stops once all are
    collected when ``"input"`` is not among them.
    ``reveal`` (DEEPLIFT): activation nodes that take the RevealCancel rule
    (``plan.reveal_cancel_nodes``); the others take Rescale.
    """
    k = backend.kernels_for(start)
    sig = {m.graph.score_node: start}
    names = [n.name for n in m.graph.nodes]
    stop = names.index(m.graph.score_node)
    n = start.shape[0]
    for node in reversed(m.graph.nodes[: stop + 1]):
        g = sig.pop(node.name, None)
        if g is None:
            continue
        if collect is not None and node.name in collect:
            collect[node.name] = g
            if "input" not in collect and all(v is not None for v in collect.values()):
                return None
        if node.name in reveal:
            steps = [(node.inputs[0], _reveal_cancel(k, m, node, tape, g, n))]
        else:
            steps = _node_backward(k, m, node, tape, g, mode, rules, pool_eps, n, relu)
        for src, gin in steps:
            sig[src] = sig[src] + gin if src in sig else gin
    if collect is not None and "input" in collect:
        collect["input"] = sig["input"]
    return sig["input"]


def _stab(z, eps):
    return z + (2 * (z >= 0).astype(z.dtype) - 1) * z.dtype.type(eps)


def _node_backward(k, m, node, tape, g, mode, rules, pool_eps, n, relu="gradient"):
    """[(input name, signal)] for one node (see the table in the module docstring)."""
    layer = node.layer
    kind = layer.kind
    src = node.inputs[0]
    xp = k.xp
    if layer.linear:
        if mode == LRP:
            return [(src, _linear_lrp(k, m, node, tape.out[src], tape.out.get(node.name), g, rules[node.name],
                                      tape.plus.get(node.name), tape.shapes["input"], tape.nonneg.get(node.name)))]
        if isinstance(g, tuple):  # (m+, m-) from a RevealCancel activation
            return [(src, _reveal_cancel_linear(k, m, node, tape, g, n))]
        return [(src, _linear_grad(k, m, node, g, _in_shape(tape, node, g)))]
    if kind in ("Identity", "Dropout") or (mode == LRP and kind in ("ReLU", "Tanh", "Sigmoid", "LeakyReLU",
                                                                       "Softplus", "BatchNorm2d")):
        return [(src, g)]  # LRP: relevance passes through activations and batch norm (Zennit's Pass)
    if kind == "ReLU" and mode == GRAD and relu != "gradient":
        if isinstance(relu, tuple):  # ("rectgrad", q): Kim et al. 2019, Eq. 4: tau = q-th percentile per sample
            scores = tape.out[node.name] * g
            tau = xp.percentile(scores.reshape(n, -1), relu[1], axis=1).reshape((n,) + (1,) * (g.ndim - 1))
            return [(src, xp.where(scores > tau, g, 0).astype(g.dtype))]
        if relu == "deconvnet":  # the backward pass ignores the forward mask
            return [(src, xp.maximum(g, 0))]
        return [(src, xp.where(tape.out[src] > 0, xp.maximum(g, 0), 0).astype(g.dtype))]  # guided
    if kind in ("ReLU", "Tanh", "Sigmoid"):
        gin = xp.empty_like(g)
        code = ACT_CODES[kind]
        if mode == GRAD:
            zz = tape.out[src] if kind == "ReLU" else g
            aa = tape.out[node.name] if kind != "ReLU" else g
            k.act_backward(g.ravel(), zz.ravel(), aa.ravel(), code, gin.ravel())
        else:
            z2, a2 = tape.out[src], tape.out[node.name]
            k.act_rescale_backward(g.ravel(), z2[:n].ravel(), z2[n:].ravel(), a2[:n].ravel(),
                                   a2[n:].ravel(), code, DEEPLIFT_EPS, gin.ravel())
        return [(src, gin)]
    if kind in ("LeakyReLU", "Softplus"):
        z = tape.out[src]
        if mode == GRAD:
            return [(src, g * _param_act_grad(layer, z, xp))]
        a2 = tape.out[node.name]
        dz = z[:n] - z[n:]
        small = xp.abs(dz) < DEEPLIFT_EPS
        ratio = (a2[:n] - a2[n:]) / xp.where(small, 1, dz)
        return [(src, g * xp.where(small, _param_act_grad(layer, z[:n], xp), ratio))]
    if kind in ("Flatten", "Reshape"):
        return [(src, g.reshape(_in_shape(tape, node, g)))]
    if kind == "MaxPool2d":
        return [(src, _maxpool_backward(k, m, node, tape, g, mode, n))]
    if kind == "AvgPool2d":
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        gin = xp.empty(_in_shape(tape, node, g), g.dtype)
        if mode == LRP:
            s = g / _stab(tape.out[node.name], pool_eps)
            k.avgpool_backward(s, kh, kw, sh, sw, ph, pw, tape.out[src], True, gin)
        else:
            k.avgpool_backward(g, kh, kw, sh, sw, ph, pw, gin, False, gin)
        return [(src, gin)]
    if kind == "GlobalAvgPool2d":
        shape = _in_shape(tape, node, g)
        inv = g.dtype.type(1.0 / (shape[2] * shape[3]))
        if mode == LRP:
            return [(src, tape.out[src] * (g / _stab(tape.out[node.name], pool_eps)) * inv)]
        return [(src, xp.broadcast_to(g * inv, shape).copy())]
    if kind == "BatchNorm2d":
        return [(src, g * m.bn(k, node, g.ndim)[0])]
    if kind == "Add":
        if mode == LRP:  # split in proportion to each input's share (Zennit's Norm on Sum)
            s = g / _stab(tape.out[node.name], pool_eps)
            return [(i, tape.out[i] * s) for i in node.inputs]
        return [(i, g) for i in node.inputs]
    if kind == "Concat":
        ax = layer.sample_axis(g.ndim - 1) + 1
        sizes = [tape.shapes[i][ax - 1] for i in node.inputs]
        parts = xp.split(g, [int(v) for v in np.cumsum(sizes)[:-1]], axis=ax)
        return [(i, xp.ascontiguousarray(p)) for i, p in zip(node.inputs, parts)]
    raise TypeError(f"no backward for layer kind {kind}")  # pragma: no cover


# ---------------------------------------------------------------------------------------
# DeepLIFT RevealCancel

def _act_eval(xp, layer, z):
    return _act_numpy(layer.kind, z, xp) if layer.kind in ("ReLU", "Tanh", "Sigmoid") else _param_act(layer, z, xp)


def _act_deriv(xp, layer, z):
    kind = layer.kind
    if kind == "ReLU":
        return (z > 0).astype(z.dtype)
    if kind == "Tanh":
        return 1 - xp.tanh(z) ** 2
    if kind == "Sigmoid":
        s = _expit(xp, z)
        return s * (1 - s)
    return _param_act_grad(layer, z, xp)


def _pos_neg_state(k, m, node, dtype):
    """The block matrix ``B = [[W+, W-], [W-, W+]]`` over the stacked input ``[d+; d-]``:
    ``B @ [d+; d-]`` gives the positive and negative parts ``(W+ d+ + W- d-, W- d+ + W+ d-)``
    of ``W d``. It is alpha-beta's matrix (no bias), compiled and cached by plan.rule_state."""
    return m.rule(k, node, R.AlphaBeta(2.0, 1.0, epsilon=0.0, include_bias=False), False)[1]


def _pos_neg_forward(k, m, node, da, dtype):
    """``(Delta x+, Delta x-)`` of a Dense/Conv2d layer for input differences ``da``
    (Shrikumar et al. 2017, Sec. 3.5.3: the sums of the positive and of the negative terms ``w_ji Delta a_i``)."""
    st = _pos_neg_state(k, m, node, dtype)
    xp = k.xp
    n = da.shape[0]
    d2 = da.reshape(n, -1)
    xs = xp.empty((n, 2 * d2.shape[1]), dtype)
    k.stack_input_mods(d2, st.modes, d2, d2, xs)
    o = node.layer.weight.shape[0]
    if node.layer.kind == "Dense":
        z = xs @ st.B.T
        return z[:, :o], z[:, o:]
    _, cin, kh, kw = node.layer.weight.shape
    (sh, sw), (ph, pw) = node.layer.stride, node.layer.padding
    h, w = da.shape[2:]
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    p = ho * wo
    xs4 = xs.reshape(n, 2 * cin, h, w)
    z = xp.empty((n, 2 * o, ho, wo), dtype)
    for i0, i1 in _chunks(n, 2 * cin * kh * kw * p * z.itemsize):
        cols = _scratch("cols", (2 * cin * kh * kw, (i1 - i0) * p), dtype, xp)
        k.im2col(xs4[i0:i1], kh, kw, sh, sw, ph, pw, cols)
        zg = xp.matmul(st.B, cols, out=_scratch("gemm", (2 * o, (i1 - i0) * p), dtype, xp))
        z[i0:i1] = zg.reshape(2 * o, i1 - i0, ho, wo).transpose(1, 0, 2, 3)
    return z[:, :o], z[:, o:]


def _reveal_cancel(k, m, node, tape, g, n):
    """RevealCancel at the activation ``y = f(x)`` (Shrikumar et al. 2017, Sec. 3.5.3), ``x`` the output
    of a linear layer with input differences ``Delta a``::

        Dy+ = 1/2 (f(x0 + Dx+) - f(x0)) + 1/2 (f(x0 + Dx- + Dx+) - f(x0 + Dx-))
        Dy- = 1/2 (f(x0 + Dx-) - f(x0)) + 1/2 (f(x0 + Dx+ + Dx-) - f(x0 + Dx+))
        m+ = g Dy+ / Dx+,   m- = g Dy- / Dx-

    (``Dy+ + Dy- = Dy`` exactly, so summation-to-delta holds). Where ``Dx+`` (``Dx-``) is ~0 its
    multiplier is the limit ``g (f'(x0) + f'(x0 + Dx-)) / 2`` (resp. ``Dx+``). Returns (m+, m-)."""
    lin = m.graph.by_name[node.inputs[0]]
    xp = k.xp
    a2 = tape.out[lin.inputs[0]]
    dpos, dneg = _pos_neg_forward(k, m, lin, a2[:n] - a2[n:], g.dtype)
    dpos, dneg = dpos.reshape(g.shape), dneg.reshape(g.shape)
    x0, y2 = tape.out[lin.name][n:], tape.out[node.name]
    y, y0 = y2[:n], y2[n:]
    f_pos, f_neg = _act_eval(xp, node.layer, x0 + dpos), _act_eval(xp, node.layer, x0 + dneg)
    half = g.dtype.type(0.5)
    dy_pos = half * ((f_pos - y0) + (y - f_neg))
    dy_neg = half * ((f_neg - y0) + (y - f_pos))
    d0 = _act_deriv(xp, node.layer, x0)

    def mult(dy, dx, other):
        small = xp.abs(dx) < DEEPLIFT_EPS
        limit = half * (d0 + _act_deriv(xp, node.layer, x0 + other))
        return (g * xp.where(small, limit, dy / xp.where(small, 1, dx))).astype(g.dtype)

    return mult(dy_pos, dpos, dneg), mult(dy_neg, dneg, dpos)


def _reveal_cancel_linear(k, m, node, tape, g, n):
    """Multipliers of a linear layer's inputs from the pair ``(m+, m-)`` at its output: input
    ``i`` takes ``m+`` through the terms ``w_ji Delta a_i > 0`` and ``m-`` through the others::

        m_i = [Da_i > 0] (W+^T m+ + W-^T m-) + [Da_i < 0] (W-^T m+ + W+^T m-)
              + [Da_i = 0] W^T (m+ + m-) / 2

    so that ``sum_i m_i Da_i = sum_j (m+_j Dx+_j + m-_j Dx-_j)``. ``B^T [m+; m-]`` gives both
    brackets in one backward GEMM; a selector stacked like ``[Da+; Da-]`` picks per input."""
    mp, mn = g
    a2 = tape.out[node.inputs[0]]
    da = a2[:n] - a2[n:]
    dtype = mp.dtype
    xp = k.xp
    st = _pos_neg_state(k, m, node, dtype)
    pos = (da > 0).astype(dtype) + dtype.type(0.5) * (da == 0)
    s = xp.concatenate([mp, mn], axis=1)
    sel = xp.concatenate([pos, 1 - pos], axis=1)  # (N, 2F) or (N, 2C, H, W): mode blocks are channel blocks
    if node.layer.kind == "Dense":
        out = xp.empty(da.shape, dtype)
        k.stacked_mul_sum(sel, s @ st.B, 2, out)
        return out
    _, cin, kh, kw = node.layer.weight.shape
    h, w = da.shape[2:]
    go, p = s.shape[1], s.shape[2] * s.shape[3]
    Bt = st.Bt if _stride1(node.layer) else st.B
    out = xp.empty(da.shape, dtype)
    for i0, i1 in _chunks(n, max(2 * cin * kh * kw * p, go * kh * kw * h * w) * s.itemsize):
        _transposed_conv(k, node.layer, xp.ascontiguousarray(s[i0:i1]), Bt, sel[i0:i1], 2, out[i0:i1])
    return out


def _in_shape(tape, node, g):
    return (g.shape[0],) + tape.shapes[node.inputs[0]]


def _maxpool_backward(k, m, node, tape, g, mode, n):
    shape = _in_shape(tape, node, g)
    gin = k.xp.empty(shape, g.dtype)
    idx = tape.idx[node.name]
    if mode == DEEPLIFT:
        xx, yy = tape.out[node.inputs[0]], tape.out[node.name]
        k.maxpool_rescale_backward(g, xx[:n], xx[n:], yy[:n], yy[n:], idx[:n], idx[n:], DEEPLIFT_EPS, gin)
    else:
        k.maxpool_backward(g, idx[:n], gin)
    return gin


def _stride1(layer):
    """Backward of a stride-1 conv runs as a forward conv with the flipped, transposed
    weight (im2col + GEMM), much cheaper than the col2im scatter/gather."""
    kh, kw = layer.weight.shape[2:]
    return layer.stride == (1, 1) and layer.padding[0] <= kh - 1 and layer.padding[1] <= kw - 1


def _transposed_conv(k, layer, s, Bt, xs, mods, out):
    """``out = combine(xs, conv^T(s))`` for NCHW ``s`` (N, Co, Ho, Wo) and ``out`` (N, C, H, W);
    ``Bt`` is the flipped-transposed block weight (stride 1) or the plain block ``B`` (else)."""
    kh, kw = layer.weight.shape[2:]
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    n, co, ho, wo = s.shape
    c, h, w = out.shape[1:]
    xp = k.xp
    ct = Bt.shape[0] if _stride1(layer) else Bt.shape[1] // (kh * kw)
    if _stride1(layer) and co <= 4 * ct:  # else (few input channels, e.g. the RGB layer) the
        # col2im route below unfolds ct*kh*kw rows instead of co*kh*kw: far less memory traffic
        cols = _scratch("cols", (co * kh * kw, n * h * w), s.dtype, xp)
        k.im2col(s, kh, kw, 1, 1, kh - 1 - ph, kw - 1 - pw, cols)
        cg = xp.matmul(Bt, cols, out=_scratch("gemm", (Bt.shape[0], n * h * w), s.dtype, xp))
        k.combine_from_gemm(cg, xs.reshape(n, -1, h * w), mods, out.reshape(n, c, h * w))
        return
    rows = _scratch("rows", (co, n * ho * wo), s.dtype, xp)
    s3 = s.reshape(n, co, ho * wo)
    k.grad_to_rows(s3, s3, s3, 0, rows)
    B = _unflip(xp, Bt, co, kh, kw) if _stride1(layer) else Bt
    ccols = xp.matmul(B.T, rows, out=_scratch("cols", (B.shape[1], n * ho * wo), s.dtype, xp))
    k.col2im_gather(ccols, kh, kw, sh, sw, ph, pw, out, xs.reshape(out.shape[0], -1, h, w), mods)


def _unflip(xp, Bt, rows, kh, kw):
    """Inverse of plan.flipped_transpose: (cin, rows*kh*kw) -> (rows, cin*kh*kw)."""
    cin = Bt.shape[0]
    B4 = Bt.reshape(cin, rows, kh, kw)[:, :, ::-1, ::-1]
    return xp.ascontiguousarray(B4.transpose(1, 0, 2, 3).reshape(rows, cin * kh * kw))


def _linear_grad(k, m, node, g, in_shape):
    """``W^T g``: the gradient (and DeepLIFT linear rule) through Dense/Conv2d."""
    W, _ = m.params(k, node)
    if node.layer.kind == "Dense":
        return g @ W
    o, c, kh, kw = W.shape
    n, _, ho, wo = g.shape
    h, w = in_shape[2:]
    if _stride1(node.layer):
        Bt = m.weight_t(k, node)
    else:
        Bt = W.reshape(o, -1)
    gin = k.xp.empty((n, c, h, w), g.dtype)
    for i0, i1 in _chunks(n, o * kh * kw * h * w * g.itemsize):
        _transposed_conv(k, node.layer, g[i0:i1], Bt, gin[i0:i1], 0, gin[i0:i1])
    return gin


def _linear_lrp(k, m, node, a, z, r, rule, pz=None, x_shape=None, nonneg=None):
    """One LRP rule step through Dense/Conv2d (see relprop.rules for the formula)."""
    dtype = r.dtype
    xp = k.xp
    n = r.shape[0]
    modes_needed = {t.mode for grp in rule.groups() for t in grp.terms}
    if R.XNEG not in modes_needed:
        nonneg = False
    elif nonneg is None:  # not known from the forward pass
        nonneg = bool(k.all_nonnegative(a.ravel()))
    host, st = m.rule(k, node, rule, nonneg)
    modes = host.modes  # read on the host for the decisions below
    mm = len(modes)
    a2 = a.reshape(n, -1)
    if mm == 1 and (modes[0] == R.X or (nonneg and modes[0] == R.XPOS)):
        xs = a2  # a >= 0: a+ is a itself
    else:
        low = high = a2
        if R.LOW in modes:
            low, high = (xp.ascontiguousarray(xp.broadcast_to(v, a.shape), dtype=dtype).reshape(n, -1)
                         for v in _zbox_bounds(xp, rule, a, node, (n,) + x_shape))
        xs = xp.empty((n, mm * a2.shape[1]), dtype)
        k.stack_input_mods(a2, st.modes, low, high, xs)
    go = st.B.shape[0]
    if node.layer.kind == "Dense":
        s = xp.empty((n, go), dtype)
        zg = (a2 if st.zmode == 2 else xs) @ st.Wp.T if st.zmode else s
        k.lrp_ratio_rows(zg, st.zmode, st.cz, st.cp, st.b, st.bias_g, z if z is not None else r, r,
                         st.coefs, st.masks, st.eps, s)
        c = s @ st.B
        out = xp.empty_like(a2)
        k.stacked_mul_sum(xs, c, mm, out)
        return out.reshape(a.shape)
    o, cin, kh, kw = node.layer.weight.shape
    (sh, sw), (ph, pw) = node.layer.stride, node.layer.padding
    _, _, ho, wo = r.shape
    p = ho * wo
    h, w = a.shape[2:]
    xs4 = xs.reshape(n, mm * cin, h, w)
    out = xp.empty(a.shape, dtype)
    zz = z if z is not None else r
    Bt = st.Bt if _stride1(node.layer) else st.B
    per = max(mm * cin * kh * kw * p, go * kh * kw * h * w) * r.itemsize
    for i0, i1 in _chunks(n, per):
        nc = i1 - i0
        s = xp.empty((nc, go, ho, wo), dtype)
        zmode = st.zmode
        zp = zz[i0:i1].reshape(nc, o, p)  # typed placeholder unless zmode 3
        if zmode == 2 and pz is not None:  # W+ a came with the forward GEMM
            zmode, zp = 3, pz[i0:i1].reshape(nc, o, p)
            zg = s.reshape(go, -1)
        elif zmode == 1:
            cols = _scratch("cols", (mm * cin * kh * kw, nc * p), dtype, xp)
            k.im2col(xs4[i0:i1], kh, kw, sh, sw, ph, pw, cols)
            zg = xp.matmul(st.B, cols, out=_scratch("gemm", (go, nc * p), dtype, xp))
        elif zmode == 2:  # a >= 0: one GEMM with W+ gives every group's denominator
            cols = _scratch("cols", (cin * kh * kw, nc * p), dtype, xp)
            k.im2col(a[i0:i1], kh, kw, sh, sw, ph, pw, cols)
            zg = xp.matmul(st.Wp, cols, out=_scratch("gemm", (o, nc * p), dtype, xp))
        else:
            zg = s.reshape(go, -1)  # typed placeholder, unread
        k.lrp_ratio(zg, zp, zmode, st.cz, st.cp, st.b, st.bias_g, zz[i0:i1].reshape(nc, o, p),
                    r[i0:i1].reshape(nc, o, p), st.coefs, st.masks, st.eps, s.reshape(nc, go, p))
        del zg
        _transposed_conv(k, node.layer, s, Bt, xs4[i0:i1], mm, out[i0:i1])
    return out


def _zbox_bounds(xp, rule, a, node, x_shape=None):
    """Bounds broadcast to the layer input ``a``; bounds given in the shape of x are reshaped
    when only reshapes separate x from the layer (an MLP starting with Flatten)."""
    def fit(v):
        v = xp.asarray(v, dtype=a.dtype)
        try:
            return xp.broadcast_to(v, a.shape)
        except ValueError:
            if x_shape is not None and int(np.prod(x_shape)) == a.size:
                return xp.broadcast_to(v, x_shape).reshape(a.shape)
            raise ValueError(f"ZBox on layer {node.name!r}: bounds of shape {np.shape(v)} do not broadcast to "
                             f"its input {a.shape}") from None

    low, high = fit(rule.low), fit(rule.high)
    if bool((a < low).any()) or bool((a > high).any()):
        raise ValueError(
            f"ZBox on layer {node.name!r}: its input is not inside [low, high]; input range "
            f"[{float(a.min()):.4g}, {float(a.max()):.4g}], bounds [{float(low.min()):.4g}, {float(high.max()):.4g}]"
        )
    return low, high

