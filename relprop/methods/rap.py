"""Relative Attributing Propagation (RAP; Nam, Gur, Choi, Wolf, Lee, AAAI 2020).

RAP explains the target class ``c`` in three steps (Nam et al. 2020, Fig. 2). The formulas below are
those of the authors' public code, which the paper's experiments used
(github.com/wjNam/Relative_Attributing_Propagation: ``modules/layers.py``, the ``RAP_relprop``
methods; ``main.py`` starts them from the one-hot target ``T``). Notation, per sample: a layer's
input ``a`` with ``a+ = max(a, 0)``, ``a- = min(a, 0)``; weights ``W`` (``W+``, ``W-`` likewise),
bias ``b``; the relevance ``R`` at the layer's output; ``u / v`` is 0 where ``v == 0`` exactly (the
authors' ``safe_divide``: RAP has no epsilon); ``W a`` is the layer's contraction (a GEMM, or a
convolution) and ``W^T s`` its transpose.

1. **Output layer** (a Dense layer; *absolute influence normalization*). Relevance starts as the
   one-hot ``e_c`` (value 1, not the score); the layer decomposes its output ``z_c`` and normalizes::

       P = a+ . W+_c + a- . W-_c  >= 0,        N = a+ . W-_c + a- . W+_c  <= 0   (P + N = z_c - b_c)
       R'_i = a_i W_ci + b_c P/(P+N) a+_i W+_ci / (a+ . W+_c) + b_c N/(P+N) a+_i W-_ci / (a+ . W-_c)
       R_i  = |R'_i| sum_j R'_j / sum_j |R'_j|

   so ``sum_i R_i = z_c`` (the target's pre-softmax score) and every unit takes the sign of ``z_c``.
   The bias shares are spread over the ``a+`` terms only, so a share is lost where ``a+ . W+_c = 0``
   but ``P != 0`` (likewise for ``N``), which takes negative inputs (not ReLU outputs); authors' code.

2. **Hidden Dense/Conv2d layers** (*propagation of relevant and irrelevant units*, then *uniform
   shifting*). Each sign part of the input runs separately, with its relevant contribution ``A`` and
   irrelevant contribution ``B`` per output unit (both >= 0) and ``T = A + B``::

       part a+:   A = W+ a+,        B = -(W- a+)
       part a-:   A = -(W+ a-),     B = W- a-
       Dense:     g_A = R / A,      g_B = [B != 0] R / T
       Conv2d:    g_A = R+ / A,     g_B = [B != 0] (R- / B + R / T)
       C(a+) = a+ (W+^T g_A - W-^T g_B),      C(a-) = a- (W-^T g_B - W+^T g_A)
       C <- C - [C != 0] (sum C - sum R) / #{C != 0}          (each part, per sample)
       R_in = C(a+) + C(a-)

   An output's relevance goes in full to the inputs that raised it (``A``) and, in the share
   ``B / T``, to those that lowered it too; the shift then takes the surplus back in equal parts
   from every unit holding relevance, so each part carries ``sum R``. Biases take no part (the
   authors' bias handling here is commented out).

3. **Input layer** (every Dense/Conv2d with no Dense/Conv2d upstream): the z^B rule with bounds
   ``l, h`` -- each sample's minimum and maximum input value (the authors' choice), or ``low``
   and ``high``::

       Z = W a - W+ l - W- h,     s = R / Z,     R_in = a W^T s - l W+^T s - h W-^T s

Other nodes: ReLU, Dropout and Identity pass ``R``; Flatten/Reshape reshape it; max, average and
global average pooling take the z-rule ``R_in = a pool^T(R / z)`` (max pooling: to the window's
winner); BatchNorm2d passes ``R`` where ``a * scale != 0``; Add gives input ``i`` the share
``a_i R / z``; Concat gives each input its slice where ``a_i != 0``; relevance a node receives from
several consumers adds up. Tanh, Sigmoid, LeakyReLU, Softplus, ELU, GELU, SiLU, Hardswish,
Hardsigmoid, ReLU6 and Mish have no RAP rule and are refused.

Conservation: when the output layer and every hidden Dense/Conv2d read nonnegative activations (ReLU
networks such as the authors' VGG and ResNet models), ``sum_i R_i(x) = z_c(x)``, up to relevance
dropped by a zero denominator.

Where the authors' code is taken as written, or had to be read for cases it does not reach:

* The Conv2d and Dense (``Linear``) steps differ: a negative ``R-`` goes to the irrelevant inputs
  (``B``) in the Conv2d code and to the relevant ones (``A``) in the Linear code. Kept. (A Conv2d
  unit with ``R < 0`` and ``B = 0`` passes nothing; the shift restores the total unless no unit of
  the layer's input holds relevance.)
* A hidden layer whose input has both signs runs both parts, each carrying ``sum R`` after its
  shift, so that layer doubles the total (authors' code; their VGG/ResNet hidden layers all read
  ReLU outputs, so it never occurs there). Kept, not corrected.
* The authors detect the input layer by ``in_channels == 3`` (their input layers are RGB
  convolutions); here it is every Dense/Conv2d without a Dense/Conv2d upstream, Dense included.
* The first propagation is triggered in the code by ``R.max() == 1`` in a Linear layer, i.e. at the
  Dense layer that produces the scores; a model whose scores do not come from a Dense layer (through
  Identity/Dropout at most) is refused.
* BatchNorm: the authors subtract a per-channel bias share and add it back through the same ratio,
  which leaves ``R`` where ``a * gamma != 0`` (their scale squares ``running_var``; only its being
  nonzero matters). Steps 2 and 3 ignore biases and are invariant to a positive per-channel scale
  of the layer's output, so a canonized model (BN folded, ``gamma > 0``) gives the same result.
* Add: the code's proportional split (``RelPropSimple``); fan-out: the sum of the branches (their
  Bottleneck's ``x1 + x``; the ``Clone`` step of their BasicBlock does not run as written).
* ``low``/``high`` (extension): fixed bounds for step 3 instead of each sample's min and max.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..core import backend, engine, linear
from ..core.layers import register_mode
from ..core.checks import _check_bounds, _reads_input_directly
from .base import Method, onehot, register
from ..core.plan import flipped_transpose
from ..core.rules import HIGH, LOW, X



def plan(graph):
    """``(output Dense name, names of the input layers)`` of a model RAP can run; ValueError otherwise.

    Only the nodes up to the score node are traversed (a final Softmax is skipped)."""
    names = [n.name for n in graph.nodes]
    stop = names.index(graph.score_node)
    for node in graph.nodes[: stop + 1]:
        if node.layer.kind not in STEPS:
            raise ValueError(
                f"rap: node {node.name!r} is a {node.layer.kind} layer, which RAP has no rule for (the authors' "
                f"code defines it for Dense, Conv2d, ReLU, max/average pooling, BatchNorm2d, Add and Concat; "
                f"supported here: {', '.join(STEPS)})")
    out = graph.by_name[graph.score_node]
    while out.layer.identity and out.inputs[0] != "input":
        out = graph.by_name[out.inputs[0]]
    if out.layer.kind != "Dense":
        raise ValueError(
            f"rap: RAP starts with its first propagation at the Dense layer that produces the scores (the "
            f"authors' code); the scores of this model come from node {out.name!r} ({out.layer.kind})")
    upstream = {"input": False}  # a Dense/Conv2d lies between the input and the node's output
    first = set()
    for node in graph.nodes:
        up = any(upstream[s] for s in node.inputs)
        if node.layer.linear and not up:
            first.add(node.name)
        upstream[node.name] = up or node.layer.linear
    first.discard(out.name)
    return out.name, first


def _needs(graph, stop):
    """Node outputs the RAP traversal reads, and the max-pool nodes whose winners it needs
    (``STEPS``)."""
    keep, idx = {graph.score_node}, set()
    for node in graph.nodes[: stop + 1]:
        _, reads, winners = STEPS[node.layer.kind]
        if "inputs" in reads:
            keep.update(node.inputs)
        if "output" in reads:
            keep.add(node.name)
        if winners:
            idx.add(node.name)
    return keep, idx


def rap(ctx, x, target, low=None, high=None):
    """RAP attributions of the target scores (see the module docstring); ``low``/``high``: fixed
    bounds of the input layer's z^B rule (None: each sample's min and max). One forward pass,
    then the shared backward traversal in mode ``"rap"`` (the steps registered below)."""
    graph, m = ctx.graph, ctx.m
    out_name, first = plan(graph)
    stop = [n.name for n in graph.nodes].index(graph.score_node)
    keep, idx = _needs(graph, stop)
    score, _, tape = engine.forward(m, x, keep, idx, ctx.shapes)
    start = onehot(score, score.argmax(axis=1) if target is None else target, False)
    bounds = None if low is None else (low, high)
    out = engine.backward(m, tape, start, "rap", out=out_name, first=first, bounds=bounds)
    return out.reshape(x.shape).astype(x.dtype, copy=False)


def _linear_step(bw, node, r):
    """Dense/Conv2d: step 1 at the output layer, step 3 at the input layers, step 2 between."""
    opt, a = bw.options, bw.tape.out[node.inputs[0]]
    if node.name == opt["out"]:
        rin = _first_propagation(bw.m, node, a, r)
    elif node.name in opt["first"]:
        rin = _input_layer(bw.k, bw.m, node, a, r, opt["bounds"], bw.tape.shapes["input"])
    else:
        rin = _relative(bw.k, bw.m, node, a, r)
    return [(node.inputs[0], rin)]


def _div(u, v):
    """``u / v``, 0 where ``v == 0`` (the authors' ``safe_divide``)."""
    out = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.result_type(u, v))
    return np.divide(u, v, out=out, where=v != 0)


def _first_propagation(m, node, a, pd):
    """Step 1 at the output Dense layer (``pd``: the one-hot start), then the absolute influence
    normalization ``R = |R'| sum R' / sum |R'|``."""
    W, b = m.params(backend.kernels_for(a), node)
    Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
    ap, an = np.maximum(a, 0), np.minimum(a, 0)
    z1, z2, z3, z4 = ap @ Wp.T, ap @ Wn.T, an @ Wp.T, an @ Wn.T
    pos = ((z1 + z4) * pd).sum(axis=1, keepdims=True)
    neg = ((z2 + z3) * pd).sum(axis=1, keepdims=True)
    bp, bn = b * pd * _div(pos, pos + neg), b * pd * _div(neg, pos + neg)  # the bias, split as P : N
    s1 = _div(z1 * pd, z1) + _div(bp, z1)
    s2 = _div(z2 * pd, z2) + _div(bn, z2)
    r1 = ap * (s1 @ Wp + s2 @ Wn) + an * (_div(z3 * pd, z3) @ Wp + _div(z4 * pd, z4) @ Wn)
    mag = np.abs(r1)
    return mag * _div(r1.sum(axis=1, keepdims=True), mag.sum(axis=1, keepdims=True))


def _relative(k, m, node, a, r):
    """Step 2 at a hidden Dense/Conv2d layer: each sign part of ``a`` propagated, then shifted."""
    B, Bt = _blocks(m, node, "pm")
    o = node.layer.weight.shape[0]
    conv = node.layer.kind == "Conv2d"
    if k.all_nonnegative(a.ravel()):
        parts = ((1, a),)
    else:
        parts = ((1, np.maximum(a, 0)), (-1, np.minimum(a, 0)))
    out = None
    for sign, part in parts:
        def ratio(z, sl, sign=sign):
            A, Bi = sign * z[:, :o], -sign * z[:, o:]  # both >= 0
            rr = r[sl]
            if conv:  # the Conv2d code sends R- to the irrelevant inputs, the Linear code to the relevant ones
                ga = _div(np.maximum(rr, 0), A)
                gb = (_div(np.minimum(rr, 0), Bi) + _div(rr, A + Bi)) * (Bi != 0)
            else:
                ga = _div(rr, A)
                gb = _div(rr, A + Bi) * (Bi != 0)
            return np.concatenate([sign * ga, -sign * gb], axis=1)

        c = _contract(k, node, np.ascontiguousarray(part), 1, B, Bt, ratio)
        _shift(c, r)
        out = c if out is None else out + c
    return out


def _shift(c, r):
    """Uniform shifting, in place: ``C -= [C != 0] (sum C - sum R) / #{C != 0}`` per sample."""
    n = c.shape[0]
    c2 = c.reshape(n, -1)
    nz = c2 != 0
    cnt = nz.sum(axis=1)
    surplus = c2.sum(axis=1, dtype=np.float64) - r.reshape(n, -1).sum(axis=1, dtype=np.float64)
    each = np.divide(surplus, cnt, out=np.zeros(n), where=cnt > 0).astype(c.dtype)
    c2 -= nz * each[:, None]


def _input_layer(k, m, node, a, r, bounds, x_shape):
    """Step 3: the z^B rule with each sample's min/max of ``a`` (or the validated ``bounds``)."""
    n = a.shape[0]
    dtype = r.dtype
    a2 = np.ascontiguousarray(a).reshape(n, -1)
    if bounds is None:
        lo = np.broadcast_to(a2.min(axis=1, keepdims=True), a2.shape)
        hi = np.broadcast_to(a2.max(axis=1, keepdims=True), a2.shape)
    else:  # the layer reads x through reshapes only (validated): bounds in x's shape fit
        lo, hi = (np.broadcast_to(np.asarray(v, dtype), (n,) + tuple(x_shape)).reshape(n, -1) for v in bounds)
    xs = np.empty((n, 3 * a2.shape[1]), dtype)
    k.stack_input_mods(a2, np.array([X, LOW, HIGH], np.int64), np.ascontiguousarray(lo, dtype=dtype),
                       np.ascontiguousarray(hi, dtype=dtype), xs)
    if node.layer.kind == "Conv2d":
        xs = xs.reshape((n, 3 * a.shape[1]) + a.shape[2:])  # the modes are channel blocks
    B, Bt = _blocks(m, node, "zb")
    return _contract(k, node, xs, 3, B, Bt, lambda z, sl: _div(r[sl], z)).reshape(a.shape)


def _blocks(m, node, which):
    """Block weights of a Dense/Conv2d, derived once per compiled model: ``"pm"`` = ``[W+; W-]``
    (2O, K) for step 2, ``"zb"`` = ``[W, -W+, -W-]`` (O, 3K) over the stacked input ``[a; l; h]``
    for step 3; with the Conv2d's flipped transpose for stride-1 backward passes
    (plan.flipped_transpose)."""
    return m.host(("rap", which, node.name), lambda: _build_blocks(node, m.dtype, which))


def _build_blocks(node, dtype, which):
    W = node.layer.weight.astype(np.float64)
    o, cin = W.shape[:2]
    Wm = W.reshape(o, -1)
    Wp, Wn = np.maximum(Wm, 0), np.minimum(Wm, 0)
    if which == "pm":
        B, rows, mods = np.concatenate([Wp, Wn]), 2 * o, 1
    else:
        B, rows, mods = np.concatenate([Wm, -Wp, -Wn], axis=1), o, 3
    B = np.ascontiguousarray(B, dtype=dtype)
    Bt = flipped_transpose(B, rows, mods * cin, *W.shape[2:]) if node.layer.kind == "Conv2d" else None
    return B, Bt


def _contract(k, node, xs, mods, B, Bt, ratio):
    """``R_in = sum_m xs_m (B^T s)_m`` with ``s = ratio(B xs, samples)``: one forward and one
    transposed contraction through the layer (im2col + GEMM for Conv2d, in chunks of samples).
    ``xs`` stacks ``mods`` input modifiers (feature blocks for Dense, channel blocks for Conv2d)."""
    n = xs.shape[0]
    if node.layer.kind == "Dense":
        s = ratio(xs @ B.T, slice(None))
        out = np.empty((n, xs.shape[1] // mods), xs.dtype)
        k.stacked_mul_sum(xs, np.ascontiguousarray(s @ B), mods, out)
        return out
    layer = node.layer
    rows = B.shape[0]
    _, cin, kh, kw = layer.weight.shape
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    h, w = xs.shape[2:]
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    p = ho * wo
    out = np.empty((n, cin, h, w), xs.dtype)
    Bx = Bt if linear.stride1(layer) else B
    per = max(mods * cin * kh * kw * p, rows * kh * kw * h * w) * xs.itemsize
    for i0, i1 in linear.chunks(n, per):
        nc = i1 - i0
        cols = linear.scratch("cols", (mods * cin * kh * kw, nc * p), xs.dtype)
        k.im2col(xs[i0:i1], kh, kw, sh, sw, ph, pw, cols)
        zg = np.matmul(B, cols, out=linear.scratch("gemm", (rows, nc * p), xs.dtype))
        s = np.ascontiguousarray(ratio(zg.reshape(rows, nc, ho, wo).transpose(1, 0, 2, 3), slice(i0, i1)))
        linear.transposed_conv(k, layer, s, Bx, xs[i0:i1], mods, out[i0:i1])
    return out


# the RAP step of each kind other than Dense/Conv2d (module docstring): (bw, node, r) -> [(input, R)]

def _pass(bw, node, r):
    return [(node.inputs[0], r)]


def _reshape(bw, node, r):
    return [(node.inputs[0], r.reshape((r.shape[0],) + bw.tape.shapes[node.inputs[0]]))]


def _maxpool(bw, node, r):  # a (R / z) at the winner: R, unless the window's max is 0
    tape = bw.tape
    gin = np.empty((r.shape[0],) + tape.shapes[node.inputs[0]], r.dtype)
    bw.k.maxpool_backward(np.ascontiguousarray(r * (tape.out[node.name] != 0)), tape.idx[node.name], gin)
    return [(node.inputs[0], gin)]


def _avgpool(bw, node, r):
    layer, tape, src = node.layer, bw.tape, node.inputs[0]
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    gin = np.empty((r.shape[0],) + tape.shapes[src], r.dtype)
    bw.k.avgpool_backward(_div(r, tape.out[node.name]), kh, kw, sh, sw, ph, pw, tape.out[src], True, gin)
    return [(src, gin)]


def _global_avgpool(bw, node, r):
    a = bw.tape.out[node.inputs[0]]
    return [(node.inputs[0], a * (_div(r, bw.tape.out[node.name]) * r.dtype.type(1.0 / (a.shape[2] * a.shape[3]))))]


def _batchnorm(bw, node, r):
    a = bw.tape.out[node.inputs[0]]
    scale = node.layer.scale_shift[0].reshape((-1,) + (1,) * (a.ndim - 2))
    return [(node.inputs[0], r * ((a != 0) & (scale != 0)))]


def _add(bw, node, r):
    s = _div(r, bw.tape.out[node.name])
    return [(i, bw.tape.out[i] * s) for i in node.inputs]


def _concat(bw, node, r):
    tape = bw.tape
    ax = node.layer.sample_axis(r.ndim - 1) + 1
    sizes = [tape.shapes[i][ax - 1] for i in node.inputs]
    parts = np.split(r, np.cumsum(sizes)[:-1], axis=ax)
    return [(i, part * (tape.out[i] != 0)) for i, part in zip(node.inputs, parts)]


# kind -> (the RAP backward step, what it reads: "inputs" and/or "output", winner indices)
STEPS = {
    "Dense": (_linear_step, ("inputs",), False), "Conv2d": (_linear_step, ("inputs",), False),
    "ReLU": (_pass, (), False), "Dropout": (_pass, (), False), "Identity": (_pass, (), False),
    "Flatten": (_reshape, (), False), "Reshape": (_reshape, (), False),
    "MaxPool2d": (_maxpool, ("output",), True), "AvgPool2d": (_avgpool, ("inputs", "output"), False),
    "GlobalAvgPool2d": (_global_avgpool, ("inputs", "output"), False), "BatchNorm2d": (_batchnorm, ("inputs",), False),
    "Add": (_add, ("inputs", "output"), False), "Concat": (_concat, ("inputs",), False),
}


# ---------------------------------------------------------------------------------------
# parameters


def _bound(v, name, x):
    """A finite number, or a finite real array broadcastable to one sample of ``x`` (shared by the batch)."""
    if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)):
        if not np.isfinite(v):
            raise ValueError(f"rap: {name} must be finite, got {v!r}")
        return float(v)
    if not isinstance(v, np.ndarray):
        raise TypeError(f"rap: {name} must be None, a number or a numpy array broadcastable to one sample of x "
                        f"{x.shape[1:]}, got {type(v).__name__}")
    if v.dtype == np.bool_ or not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise TypeError(f"rap: {name} must be a real numeric array, got dtype {v.dtype}")
    try:
        fits = np.broadcast_shapes(v.shape, x.shape) == x.shape and (v.ndim < x.ndim or v.shape[0] == 1)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"rap: {name} of shape {v.shape} does not broadcast to one sample of x, shape "
                         f"{x.shape[1:]} (the bounds are shared by the whole batch; a leading axis must be 1)")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"rap: {name} contains NaN or Inf")
    return v.astype(np.float64)


def _validate(graph, x, params):
    """Checks before any kernel runs: the model (``plan``), the dense im2col columns every
    Conv2d step builds (``_contract``; depthwise layers too, whose plain forward skips them)
    in x's dtype, and the bounds."""
    _, first = plan(graph)
    if x is not None:
        graph.check_columns(graph.infer_shapes(tuple(x.shape[1:])), x.dtype, depthwise=True, where="method 'rap'")
    low, high = params["low"], params["high"]
    if low is None and high is None:
        return {"low": None, "high": None}
    if low is None or high is None:
        raise ValueError("rap: give both low and high (fixed bounds of the input layer's z^B rule) or neither "
                         "(each sample's min and max, the authors' choice)")
    if x is None:  # an Explainer being built: the bounds are checked against x on each call
        return params
    low, high = _bound(low, "low", x), _bound(high, "high", x)
    if not first:
        raise ValueError("rap: low/high bound the input of the first Dense/Conv2d layer, but this model's only "
                         "Dense/Conv2d layer produces the scores (RAP's first propagation, which takes no bounds)")
    for name in sorted(first):
        node = graph.by_name[name]
        if not _reads_input_directly(graph, node):
            raise ValueError(f"rap: low/high bound x, but the input layer {name!r} ({node.layer.kind}) reads x "
                             f"through other layers than Flatten/Reshape/Identity/Dropout; leave low and high "
                             f"as None there (each sample's min and max of that layer's input)")
    _check_bounds(low, high, x, "rap")
    return {"low": low, "high": high}


register_mode("rap", {kind: fn for kind, (fn, _, _) in STEPS.items()})
register(Method("rap", "Relative Attributing Propagation (Nam et al. 2020, the authors' code): absolute "
                "influence normalization at the output, relevant/irrelevant propagation with uniform shifting, z^B at "
                "the input", {"low": None, "high": None}, validate=_validate, run=rap, sums_to="score", family="rap"))
