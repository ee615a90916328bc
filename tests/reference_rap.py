"""Slow, plain-numpy reference of Relative Attributing Propagation (RAP; Nam et al. 2020) for the tests.

Written independently of ``relprop`` (nothing here imports it; ``to_relprop`` only receives the module to build
the same network). Every sample runs on its own, in float64, as flat C-order vectors; every Dense, Conv2d and
pooling layer is an explicit matrix. The RAP steps transcribe the authors' code
(github.com/wjNam/Relative_Attributing_Propagation, ``modules/layers.py``, ``RAP_relprop``) statement by statement,
with ``safe_divide(u, v) = u / v`` where ``v != 0`` and 0 elsewhere and the autograd products ``x * grad(Z, x, S)``
written as ``x * (G^T S)`` for the matrix ``G = dZ/dx``:

* output Dense (``first_prop`` + ``redistribute``) from the one-hot ``pd``;
* hidden Dense/Conv2d (``f`` -> ``pos_prop`` on the positive and on the negative input part, ``shift_rel``), with
  the Linear and the Conv2d variant of ``pos_prop`` (they differ in where the negative relevance goes);
* input layer (``final_backward``): z^B with the sample's min and max (or given bounds);
* BatchNorm (``BatchNorm2d.RAP_relprop`` with its bias share and its ``running_var ** 2``), pooling and Add
  (``RelPropSimple``: ``x * grad(z, x, R / z)``), Concat (``Cat``), ReLU/Dropout pass-through.

A network is a list of nodes ``(name, layer, inputs)`` in topological order (``chain`` builds a sequence); the
last node is the output, a final softmax is skipped (RAP starts at its input).
"""
from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------------
# network description
# --------------------------------------------------------------------------------------------------


def _pair(v):
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def dense(weight, bias=None):
    return ("dense", np.asarray(weight, float), None if bias is None else np.asarray(bias, float))


def conv(weight, bias=None, stride=1, padding=0):
    return ("conv", np.asarray(weight, float), None if bias is None else np.asarray(bias, float), stride, padding)


def maxpool(kernel_size, stride=None, padding=0):
    return ("maxpool", kernel_size, stride, padding)


def avgpool(kernel_size, stride=None, padding=0):
    return ("avgpool", kernel_size, stride, padding)


def gap():
    return ("gap",)


def batchnorm(gamma, beta, mean, var, eps=1e-5):
    return ("bn", np.asarray(gamma, float), np.asarray(beta, float), np.asarray(mean, float),
            np.asarray(var, float), float(eps))


def flatten():
    return ("flatten",)


def relu():
    return ("relu",)


def tanh():
    return ("tanh",)


def identity():
    return ("identity",)


def dropout():
    return ("dropout",)


def add():
    return ("add",)


def concat():
    return ("concat",)  # along the channel (first per-sample) axis


def softmax():
    return ("softmax",)


def chain(*layers):
    """Nodes of a sequence: node ``"i"`` reads node ``"i-1"``, the first reads ``"input"``."""
    nodes, prev = [], "input"
    for i, layer in enumerate(layers):
        nodes.append((str(i), layer, (prev,)))
        prev = str(i)
    return nodes


def to_relprop(spec, rp):
    """The relprop ``Graph`` of ``spec`` (``rp`` is the relprop module)."""
    nodes = []
    for name, layer, inputs in spec:
        kind = layer[0]
        if kind == "dense":
            lay = rp.Dense(layer[1], layer[2])
        elif kind == "conv":
            lay = rp.Conv2d(layer[1], layer[2], stride=layer[3], padding=layer[4])
        elif kind == "maxpool":
            lay = rp.MaxPool2d(layer[1], stride=layer[2], padding=layer[3])
        elif kind == "avgpool":
            lay = rp.AvgPool2d(layer[1], stride=layer[2], padding=layer[3])
        elif kind == "bn":
            lay = rp.BatchNorm2d(*layer[1:5], eps=layer[5])
        elif kind == "concat":
            lay = rp.Concat(1)
        else:
            lay = {"gap": rp.GlobalAvgPool2d, "flatten": rp.Flatten, "relu": rp.ReLU, "tanh": rp.Tanh,
                   "identity": rp.Identity, "dropout": rp.Dropout, "add": rp.Add, "softmax": rp.Softmax}[kind]()
        nodes.append(rp.Node(name, lay, tuple(inputs)))
    return rp.Graph(nodes)


def f32(a):
    """Round to float32 and back (weights both dtypes see identically)."""
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


# --------------------------------------------------------------------------------------------------
# layers as explicit per-sample operators
# --------------------------------------------------------------------------------------------------


def conv_matrix(weight, in_shape, stride, padding):
    """M[(o,y,x), (c,iy,ix)] of a zero-padded cross-correlation and the output shape."""
    O, C, KH, KW = weight.shape
    _, H, W = in_shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    Ho, Wo = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    M = np.zeros((O * Ho * Wo, C * H * W))
    for o in range(O):
        for y in range(Ho):
            for x in range(Wo):
                j = (o * Ho + y) * Wo + x
                for c in range(C):
                    for ky in range(KH):
                        iy = y * sh - ph + ky
                        if not 0 <= iy < H:
                            continue
                        for kx in range(KW):
                            ix = x * sw - pw + kx
                            if 0 <= ix < W:
                                M[j, (c * H + iy) * W + ix] = weight[o, c, ky, kx]
    return M, (O, Ho, Wo)


def pool_windows(in_shape, kernel_size, stride, padding):
    """List over outputs (c, y, x) of the flat input indices in the window (row-major, padding left out)."""
    C, H, W = in_shape
    KH, KW = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    Ho, Wo = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    wins = []
    for c in range(C):
        for y in range(Ho):
            for x in range(Wo):
                wins.append([(c * H + y * sh - ph + ky) * W + x * sw - pw + kx
                             for ky in range(KH) for kx in range(KW)
                             if 0 <= y * sh - ph + ky < H and 0 <= x * sw - pw + kx < W])
    return wins, (C, Ho, Wo), KH * KW


def _forward_node(layer, ins, shapes):
    """(output vector, output shape, operator info) of one node for flat input vectors ``ins``."""
    kind = layer[0]
    a, shape = ins[0], shapes[0]
    if kind == "dense":
        W, b = layer[1], layer[2]
        b = np.zeros(W.shape[0]) if b is None else b
        return W @ a + b, (W.shape[0],), {"M": W, "b": b}
    if kind == "conv":
        M, out_shape = conv_matrix(layer[1], shape, layer[3], layer[4])
        b = np.zeros(layer[1].shape[0]) if layer[2] is None else layer[2]
        bb = np.repeat(b, out_shape[1] * out_shape[2])
        return M @ a + bb, out_shape, {"M": M, "b": bb}
    if kind in ("maxpool", "avgpool", "gap"):
        if kind == "gap":
            wins, out_shape, size = pool_windows(shape, shape[1:], 1, 0)
        else:
            wins, out_shape, size = pool_windows(shape, layer[1], layer[2], layer[3])
        P = np.zeros((len(wins), a.size))
        for j, win in enumerate(wins):
            if kind == "maxpool":
                P[j, win[int(np.argmax(a[win]))]] = 1.0  # first maximum (torch's choice)
            else:
                P[j, win] = 1.0 / size  # zero padding counted (torch's count_include_pad)
        return P @ a, out_shape, {"P": P}
    if kind == "bn":
        gamma, beta, mean, var, eps = layer[1:]
        per = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        scale = np.repeat(gamma / np.sqrt(var + eps), per)
        return scale * a + np.repeat(beta - mean * gamma / np.sqrt(var + eps), per), shape, {"per": per}
    if kind == "flatten":
        return a, (a.size,), {}
    if kind == "relu":
        return np.maximum(a, 0), shape, {}
    if kind == "tanh":
        return np.tanh(a), shape, {}
    if kind in ("identity", "dropout", "softmax"):
        return a, shape, {}
    if kind == "add":
        return sum(ins), shape, {}
    if kind == "concat":
        out_shape = (sum(s[0] for s in shapes),) + tuple(shape[1:])
        return np.concatenate(ins), out_shape, {}
    raise ValueError(kind)


def _score_name(spec):
    return spec[-1][2][0] if spec[-1][1][0] == "softmax" else spec[-1][0]


def forward(spec, x):
    """Per-sample trace: (values, shapes, operator info) by node name, for one sample ``x``."""
    vals, shapes, info = {"input": np.asarray(x, float).ravel()}, {"input": tuple(np.shape(x))}, {}
    for name, layer, inputs in spec:
        vals[name], shapes[name], info[name] = _forward_node(layer, [vals[i] for i in inputs],
                                                             [shapes[i] for i in inputs])
    return vals, shapes, info


def scores(spec, x):
    """Pre-softmax scores (N, classes)."""
    s = _score_name(spec)
    return np.stack([forward(spec, xi)[0][s] for xi in np.asarray(x, float)])


# --------------------------------------------------------------------------------------------------
# RAP, per sample
# --------------------------------------------------------------------------------------------------


def safe_divide(a, b):
    a, b = np.broadcast_arrays(np.asarray(a, float), np.asarray(b, float))
    out = np.zeros(a.shape)
    nz = b != 0
    out[nz] = a[nz] / b[nz]
    return out


def first_prop(pd, a, W, b):
    """The authors' ``Linear.first_prop`` for one sample: the output layer's decomposition of ``pd``-weighted
    outputs (``pd`` the one-hot start), each of the four sign combinations with its own ratio, the bias split in
    proportion to the positive and negative sums."""
    pw, nw = np.maximum(W, 0), np.minimum(W, 0)
    px, nx = np.maximum(a, 0), np.minimum(a, 0)
    Rpp, Rpn, Rnp, Rnn = (pw @ px) * pd, (nw @ px) * pd, (pw @ nx) * pd, (nw @ nx) * pd
    Pos, Neg = (Rpp + Rnn).sum(), (Rpn + Rnp).sum()
    Z1, Z2, Z3, Z4 = pw @ px, nw @ px, pw @ nx, nw @ nx
    C1 = px * (pw.T @ safe_divide(Rpp, Z1))
    C2 = px * (nw.T @ safe_divide(Rpn, Z2))
    C3 = nx * (pw.T @ safe_divide(Rnp, Z3))
    C4 = nx * (nw.T @ safe_divide(Rnn, Z4))
    bp = b * pd * safe_divide(Pos, Pos + Neg)
    bn = b * pd * safe_divide(Neg, Pos + Neg)
    Cb1 = px * (pw.T @ safe_divide(bp, Z1))
    Cb2 = px * (nw.T @ safe_divide(bn, Z2))
    return C1 + C4 + Cb1 + C2 + C3 + Cb2


def redistribute(R):
    """The authors' absolute influence normalization: positive and negative parts over the absolute total."""
    Rp, Rn = np.maximum(R, 0), np.minimum(R, 0)
    tot = (Rp - Rn).sum()
    return safe_divide(Rp, tot) * (Rp + Rn).sum() - safe_divide(Rn, tot) * (Rp + Rn).sum()


def shift_rel(C, val):
    """Uniform shifting: ``val`` taken from the nonzero entries in equal parts."""
    nz = (C != 0).astype(float)
    return C - safe_divide(val, nz.sum()) * nz


def pos_prop(R, Za1, Za2, G1, G2, x1, conv_variant):
    """The authors' ``pos_prop``; ``G1 = dZa1/dx1`` and ``G2 = dZa2/dx1`` (rows masked like the Z's)."""
    R_pos, R_neg = np.maximum(R, 0), np.minimum(R, 0)
    T = Za1 + Za2
    S1 = safe_divide(R_pos * safe_divide(T, T), Za1)
    C1 = x1 * (G1.T @ S1)
    if conv_variant:  # Conv2d.pos_prop: the negative relevance through Za2
        S1n = safe_divide(R_neg * safe_divide(T, T), Za2)
        C1n = x1 * (G2.T @ S1n)
    else:  # Linear.pos_prop: through Za1
        S1n = safe_divide(R_neg * safe_divide(T, T), Za1)
        C1n = x1 * (G1.T @ S1n)
    S2 = safe_divide(R_pos * safe_divide(Za2, T), Za2)
    C2 = x1 * (G2.T @ S2)
    S2n = safe_divide(R_neg * safe_divide(Za2, T), Za2)
    C2n = x1 * (G2.T @ S2n)
    C = (C1 + C2) + (C2n + C1n)
    return shift_rel(C, C.sum() - R.sum())


def hidden_prop(R, a, M, conv_variant):
    """The authors' ``f``: ``pos_prop`` on the positive input part with (W+ x+, -W- x+) and on the negative part
    with (-W+ x-, W- x-), added."""
    pw, nw = np.maximum(M, 0), np.minimum(M, 0)
    px, nx = np.maximum(a, 0), np.minimum(a, 0)
    mask = (R != 0).astype(float)
    Za1, Za2 = (pw @ px) * mask, -(nw @ px) * mask
    Zb1, Zb2 = -(pw @ nx) * mask, (nw @ nx) * mask
    m = mask[:, None]
    C1 = pos_prop(R, Za1, Za2, pw * m, -nw * m, px, conv_variant)
    C2 = pos_prop(R, Zb1, Zb2, -pw * m, nw * m, nx, conv_variant)
    return C1 + C2


def zb_prop(R, a, M, low, high):
    """The authors' ``final_backward``: z^B with bounds L, H (vectors like ``a``)."""
    pw, nw = np.maximum(M, 0), np.minimum(M, 0)
    Za = M @ a - pw @ low - nw @ high
    S = safe_divide(R, Za)
    return a * (M.T @ S) - low * (pw.T @ S) - high * (nw.T @ S)


def bn_prop(R, a, layer, per):
    """The authors' ``BatchNorm2d.RAP_relprop`` (their scale uses running_var squared, as written)."""
    gamma, beta, _, var, eps = layer[1:]
    w = np.repeat(gamma / np.sqrt(var ** 2 + eps), per)
    nzR = (R != 0).astype(float)
    count = np.repeat(nzR.reshape(-1, per).sum(axis=1), per)
    bias_p = safe_divide(np.repeat(beta, per) * nzR, count)

    def f(r):
        return a * (safe_divide(r, a * w) * w)

    return f(R - bias_p) + f(bias_p)


def roles(spec):
    """(name of the output Dense, set of input-layer names): the score's Dense through identity/dropout, and
    the linear layers with no linear layer upstream."""
    by = {name: (layer, inputs) for name, layer, inputs in spec}
    out = _score_name(spec)
    while by[out][0][0] in ("identity", "dropout"):
        out = by[out][1][0]
    assert by[out][0][0] == "dense", "RAP needs a Dense output layer"
    lin_up, first = {"input": False}, set()
    for name, layer, inputs in spec:
        up = any(lin_up[i] for i in inputs)
        if layer[0] in ("dense", "conv") and not up and name != out:
            first.add(name)
        lin_up[name] = up or layer[0] in ("dense", "conv")
    return out, first


def rap_sample(spec, x, target, low=None, high=None):
    """RAP relevance of one sample (shape of ``x``) for class ``target``; ``low``/``high``: arrays shaped like
    ``x`` (or None: the input layer's min and max)."""
    vals, _, info = forward(spec, x)
    out, first = roles(spec)
    score = _score_name(spec)
    names = [n for n, _, _ in spec]
    stop = names.index(score)
    rel = {score: np.eye(vals[score].size)[target]}
    for name, layer, inputs in reversed(spec[: stop + 1]):
        if name not in rel:
            continue
        R = rel.pop(name)
        kind = layer[0]
        a = vals[inputs[0]]
        if kind in ("dense", "conv"):
            M, b = info[name]["M"], info[name]["b"]
            if name == out:
                contrib = [redistribute(first_prop(R, a, M, b))]
            elif name in first:
                if low is None:
                    lo, hi = np.full(a.size, a.min()), np.full(a.size, a.max())
                else:
                    lo, hi = np.broadcast_to(low, np.shape(x)).ravel(), np.broadcast_to(high, np.shape(x)).ravel()
                contrib = [zb_prop(R, a, M, lo, hi)]
            else:
                contrib = [hidden_prop(R, a, M, conv_variant=kind == "conv")]
        elif kind in ("relu", "identity", "dropout", "flatten"):
            contrib = [R]
        elif kind in ("maxpool", "avgpool", "gap"):
            P = info[name]["P"]
            contrib = [a * (P.T @ safe_divide(R, vals[name]))]
        elif kind == "bn":
            contrib = [bn_prop(R, a, layer, info[name]["per"])]
        elif kind == "add":
            S = safe_divide(R, vals[name])
            contrib = [vals[i] * S for i in inputs]
        elif kind == "concat":
            sizes = np.cumsum([vals[i].size for i in inputs])[:-1]
            contrib = [vals[i] * safe_divide(part, vals[i]) for i, part in zip(inputs, np.split(R, sizes))]
        else:
            raise ValueError(f"no RAP rule for {kind}")
        for src, r in zip(inputs, contrib):
            rel[src] = rel[src] + r if src in rel else r
    return rel.get("input", np.zeros(np.size(x))).reshape(np.shape(x))


def rap(spec, x, target=None, low=None, high=None):
    """RAP for a batch ``x`` (N, ...); ``target`` None (argmax), an int or an int array (N,)."""
    x = np.asarray(x, float)
    s = scores(spec, x)
    if target is None:
        t = s.argmax(axis=1)
    else:
        t = np.broadcast_to(np.asarray(target), (len(x),))
    return np.stack([rap_sample(spec, xi, int(ti), low, high) for xi, ti in zip(x, t)])


def min_abs_preactivation(spec, x):
    """Smallest |input| of any ReLU and smallest gap between the top two scores (float32 agrees with float64 on
    every kink and on the argmax when these are not tiny)."""
    out = np.inf
    score = _score_name(spec)
    for xi in np.asarray(x, float):
        vals, _, _ = forward(spec, xi)
        for name, layer, inputs in spec:
            if layer[0] == "relu":
                out = min(out, np.abs(vals[inputs[0]]).min())
        s = np.sort(vals[score])
        out = min(out, s[-1] - s[-2])
    return out
