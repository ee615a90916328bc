"""What each layer kind does in the two passes, in one place per kind.

An :class:`Op` says, for one family of layer kinds, what the forward pass computes
(``forward``), which outputs the backward pass of each mode reads (``store``), and the
backward step of each mode (``grad``, ``lrp``, ``deeplift``); ``OPS`` maps every IR kind to its
op, and ``relprop.core.engine`` runs both passes as short loops over it. The backward modes
(Ancona et al. 2018, Table 1):

=============  ===========================  ============================  ======================
node           ``grad`` (gradient, IG)      ``lrp`` (rules)               ``deeplift`` (rescale)
=============  ===========================  ============================  ======================
Dense/Conv2d   ``W^T g``                    the layer's rule (RuleState)  ``W^T g`` (linear rule)
activation     ``g * f'(z)``                pass ``R`` through            ``g * df/dz`` (rescale)
MaxPool2d      route to the winner          route to the winner           Captum's max rule
AvgPool2d      ``pool^T g``                 ``x * pool^T(R / stab(z))``   ``pool^T g``
Add            copy to every input          split by the inputs' shares   copy to every input
=============  ===========================  ============================  ======================

DeepLIFT RevealCancel (``reveal=`` activation names) changes two rows of the DEEPLIFT column:
the activation sends the pair of multipliers ``(m+, m-)`` of its input's positive and negative
parts (Shrikumar et al. 2017, Sec. 3.5.3) and the linear layer below hands each input the one
that matches the sign of its contribution ``w_ji Delta a_i`` (``relprop.core.linear``).

A method with a traversal of its own (RAP) registers a table ``{kind: backward step}`` under a
mode name of its own (:func:`register_mode`): the same loop then runs its rules.
"""
from __future__ import annotations

import numpy as np

from . import linear
from .graph import ACT_CODES
from .modes import DEEPLIFT, GRAD, LRP

DEEPLIFT_EPS = 1e-10
POOL_STABILIZER = 1e-6


class Forward:
    """State of one forward pass: kernels ``k``, compiled model ``m``, the tape being filled,
    what to keep, the max-pool nodes whose winners to keep, the Conv2d nodes that want ``W+ a``."""

    def __init__(self, k, m, tape, keep, idx_nodes, plus):
        self.k, self.m, self.tape, self.keep, self.idx_nodes, self.plus = k, m, tape, keep, idx_nodes, plus
        self.skip = set()  # activation nodes already computed in a linear layer's epilogue


class Backward:
    """State of one backward pass: kernels, compiled model, tape, mode and its options."""

    def __init__(self, k, m, tape, mode, rules, pool_eps, relu, reveal, n, options):
        self.k, self.m, self.tape, self.mode = k, m, tape, mode
        self.rules, self.pool_eps, self.relu, self.reveal, self.n = rules, pool_eps, relu, reveal, n
        self.options = options

    def in_shape(self, node, g, i=0):
        return (g.shape[0],) + self.tape.shapes[node.inputs[i]]


def stab(z, eps):
    """``z + eps * sign(z)`` with ``sign(0) = +1`` (the LRP stabilizer)."""
    return z + (2 * (z >= 0).astype(z.dtype) - 1) * z.dtype.type(eps)


def expit(xp, z):
    """The logistic function, overflow-free, for numpy and cupy arrays alike."""
    e = xp.exp(-xp.abs(z))
    return xp.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(z.dtype)


class Op:
    """Default behaviour: one input, passed through unchanged in every pass, nothing stored."""

    kinds = ()

    def store(self, node, mode, rule=None):
        """(node names whose outputs the backward pass of ``mode`` reads, winner indices needed)."""
        return (), False

    def forward(self, fw, node, xs):
        return xs[0]

    def grad(self, bw, node, g):
        return [(node.inputs[0], g)]

    lrp = deeplift = grad


class Identity(Op):
    kinds = ("Identity", "Dropout")


class Reshape(Op):
    kinds = ("Flatten", "Reshape")

    def forward(self, fw, node, xs):
        return xs[0].reshape((xs[0].shape[0],) + fw.tape.shapes[node.name])

    def grad(self, bw, node, g):
        return [(node.inputs[0], g.reshape(bw.in_shape(node, g)))]

    lrp = deeplift = grad


class Activation(Op):
    """ReLU, Tanh, Sigmoid (kernel codes ``ACT_CODES``): fused into the preceding linear layer's
    epilogue when it is that layer's only consumer. LRP passes relevance through (Zennit's Pass);
    the gradient may be replaced by guided backprop, DeconvNet or RectGrad's rule at ReLUs."""

    kinds = ("ReLU", "Tanh", "Sigmoid")

    def store(self, node, mode, rule=None):
        if mode == GRAD:
            return ((node.inputs[0],) if node.layer.kind == "ReLU" else (node.name,)), False
        if mode == DEEPLIFT:
            return (node.inputs[0], node.name), False
        return (), False

    def forward(self, fw, node, xs):
        return evaluate(fw.k.xp, node.layer, xs[0])

    def grad(self, bw, node, g):
        k, tape, src, kind, xp = bw.k, bw.tape, node.inputs[0], node.layer.kind, bw.k.xp
        relu = bw.relu
        if kind == "ReLU" and relu != "gradient":
            if isinstance(relu, tuple):  # ("rectgrad", q): Kim et al. 2019, Eq. 4: tau = q-th percentile per sample
                scores = tape.out[node.name] * g
                n = g.shape[0]
                tau = xp.percentile(scores.reshape(n, -1), relu[1], axis=1).reshape((n,) + (1,) * (g.ndim - 1))
                return [(src, xp.where(scores > tau, g, 0).astype(g.dtype))]
            if relu == "deconvnet":  # the backward pass ignores the forward mask (Zeiler & Fergus 2014)
                return [(src, xp.maximum(g, 0))]
            return [(src, xp.where(tape.out[src] > 0, xp.maximum(g, 0), 0).astype(g.dtype))]  # guided
        gin = xp.empty_like(g)
        zz = tape.out[src] if kind == "ReLU" else g
        aa = tape.out[node.name] if kind != "ReLU" else g
        k.act_backward(g.ravel(), zz.ravel(), aa.ravel(), ACT_CODES[kind], gin.ravel())
        return [(src, gin)]

    def lrp(self, bw, node, g):
        return [(node.inputs[0], g)]

    def deeplift(self, bw, node, g):
        if node.name in bw.reveal:
            return [(node.inputs[0], reveal_cancel(bw, node, g))]
        n, tape, src = bw.n, bw.tape, node.inputs[0]
        gin = bw.k.xp.empty_like(g)
        z2, a2 = tape.out[src], tape.out[node.name]
        bw.k.act_rescale_backward(g.ravel(), z2[:n].ravel(), z2[n:].ravel(), a2[:n].ravel(), a2[n:].ravel(),
                                  ACT_CODES[node.layer.kind], DEEPLIFT_EPS, gin.ravel())
        return [(src, gin)]


class ParamActivation(Activation):
    """The elementwise activations without a kernel code: LeakyReLU, Softplus, ELU, GELU (exact
    and tanh), SiLU, Hardswish, Hardsigmoid, ReLU6 and Mish (torch's formulas; ``evaluate`` and
    ``derivative``). They run as array expressions of the backend's ``xp`` (numpy or cupy), so
    CPU and GPU share this code and no kernel of their own is needed (they are not fused into a
    linear layer's epilogue). The gradient is ``g * f'(z)`` with torch autograd's value at the
    kinks; LRP passes relevance through (Zennit's Pass); DeepLIFT takes the Rescale multiplier
    ``(f(z) - f(z0)) / (z - z0)`` (Shrikumar et al. 2017, Sec. 3.5.2; Ancona et al. 2018, Eq. 17),
    ``f'(z)`` where ``|z - z0| < DEEPLIFT_EPS`` (as Captum's ``nonlinear``)."""

    kinds = ("LeakyReLU", "Softplus", "ELU", "GELU", "SiLU", "Hardswish", "Hardsigmoid", "ReLU6", "Mish")

    def store(self, node, mode, rule=None):
        if mode == GRAD:
            return (node.inputs[0],), False
        return super().store(node, mode, rule)

    def grad(self, bw, node, g):
        return [(node.inputs[0], g * derivative(bw.k.xp, node.layer, bw.tape.out[node.inputs[0]]))]

    def deeplift(self, bw, node, g):
        if node.name in bw.reveal:
            return [(node.inputs[0], reveal_cancel(bw, node, g))]
        xp, n, src = bw.k.xp, bw.n, node.inputs[0]
        z, a2 = bw.tape.out[src], bw.tape.out[node.name]
        dz = z[:n] - z[n:]
        small = xp.abs(dz) < DEEPLIFT_EPS
        ratio = (a2[:n] - a2[n:]) / xp.where(small, 1, dz)
        return [(src, g * xp.where(small, derivative(xp, node.layer, z[:n]), ratio))]


def evaluate(xp, layer, z):
    """``f(z)`` of an activation layer."""
    kind = layer.kind
    if kind == "ReLU":
        return xp.maximum(z, 0)
    if kind == "Tanh":
        return xp.tanh(z)
    if kind == "Sigmoid":
        return expit(xp, z)
    if kind == "LeakyReLU":
        return xp.where(z > 0, z, z * z.dtype.type(layer.negative_slope))
    if kind in _FORMS:
        return _FORMS[kind][0](xp, layer, z).astype(z.dtype, copy=False)
    bz = z * z.dtype.type(layer.beta)  # Softplus, linear above the threshold
    return xp.where(bz > layer.threshold, z, xp.logaddexp(0, bz) / z.dtype.type(layer.beta)).astype(z.dtype)


def derivative(xp, layer, z):
    """``f'(z)`` of an activation layer."""
    kind = layer.kind
    if kind == "ReLU":
        return (z > 0).astype(z.dtype)
    if kind == "Tanh":
        return 1 - xp.tanh(z) ** 2
    if kind == "Sigmoid":
        s = expit(xp, z)
        return s * (1 - s)
    if kind == "LeakyReLU":
        return xp.where(z > 0, 1, layer.negative_slope).astype(z.dtype)
    if kind in _FORMS:
        return _FORMS[kind][1](xp, layer, z).astype(z.dtype, copy=False)
    bz = z * z.dtype.type(layer.beta)
    return xp.where(bz > layer.threshold, 1, expit(xp, bz)).astype(z.dtype)


# -- ELU, GELU, SiLU, Hardswish, Hardsigmoid, ReLU6, Mish: (f, f') as xp expressions -----------
# Written so that large |z| (1e4 in float32, and far beyond) gives no overflow or NaN:
# exponentials only of non-positive arguments (expit, expm1/exp of min(z, 0)), softplus as
# logaddexp, polynomials of z clipped where the function has long saturated. At the kinks f' takes the value torch's
# autograd gives there (checked in tests/test_models_activations.py): ELU'(0) = alpha,
# ReLU6'(0) = ReLU6'(6) = 0, Hardsigmoid'(+-3) = 0, Hardswish'(-3) = 0, Hardswish'(3) = 1.
_SQRT1_2 = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_GELU_K = 0.7978845608028654  # sqrt(2 / pi)
_GELU_C = 0.044715
# |z| beyond which GELU's tanh form is saturated in float64 (its tanh argument exceeds 3e4)
_GELU_CLIP = 100.0


def _erfc(xp, z):
    """The complementary error function of the backend: scipy's on the host, cupyx's on a GPU."""
    if getattr(xp, "__name__", "") == "cupy":
        from cupyx.scipy.special import erfc
    else:
        from scipy.special import erfc
    return erfc(z)


def _elu(xp, layer, z):
    c = z.dtype.type
    return xp.where(z > 0, z, c(layer.alpha) * xp.expm1(xp.minimum(z, 0)))


def _elu_d(xp, layer, z):
    c = z.dtype.type  # torch: alpha exp(z) for z <= 0, so ELU'(0) = alpha
    return xp.where(z > 0, c(1), c(layer.alpha) * xp.exp(xp.minimum(z, 0)))


def _gelu_u(xp, z):
    """(clipped z, 2 u) of GELU's tanh form: 1 + tanh(u) = 2 expit(2u), without cancellation."""
    c = z.dtype.type
    zc = xp.clip(z, c(-_GELU_CLIP), c(_GELU_CLIP))
    return zc, c(2 * _GELU_K) * (zc + c(_GELU_C) * zc * zc * zc)


def _gelu(xp, layer, z):
    c = z.dtype.type
    if layer.approximate == "tanh":  # z/2 (1 + tanh u) = z expit(2u)
        return z * expit(xp, _gelu_u(xp, z)[1])
    return c(0.5) * z * _erfc(xp, -z * c(_SQRT1_2))  # z Phi(z), erfc: no cancellation for z << 0


def _gelu_d(xp, layer, z):
    c = z.dtype.type
    if layer.approximate == "tanh":  # d/dz z expit(2u) = s + z * 2 s (1 - s) du/dz
        zc, u2 = _gelu_u(xp, z)
        s, s_neg = expit(xp, u2), expit(xp, -u2)
        return s + zc * c(2) * s * s_neg * (c(_GELU_K) * (c(1) + c(3 * _GELU_C) * zc * zc))
    zc = xp.clip(z, c(-1e3), c(1e3))  # exp(-zc^2 / 2) is 0 there already; zc^2 cannot overflow
    return c(0.5) * _erfc(xp, -z * c(_SQRT1_2)) + z * (c(_INV_SQRT_2PI) * xp.exp(c(-0.5) * zc * zc))


def _silu(xp, layer, z):
    return z * expit(xp, z)


def _silu_d(xp, layer, z):
    s = expit(xp, z)
    return s + z * s * expit(xp, -z)  # s (1 + z (1 - s)), 1 - s without cancellation


def _relu6(xp, layer, z):
    c = z.dtype.type
    return xp.minimum(xp.maximum(z, c(0)), c(6))


def _relu6_d(xp, layer, z):
    return ((z > 0) & (z < 6)).astype(z.dtype)  # torch (hardtanh): 0 at both kinks


def _hardsigmoid(xp, layer, z):
    c = z.dtype.type
    return xp.minimum(xp.maximum(z + c(3), c(0)), c(6)) / c(6)


def _hardsigmoid_d(xp, layer, z):
    c = z.dtype.type  # torch: 1/6 on the open interval (-3, 3)
    return xp.where((z > -3) & (z < 3), c(1 / 6), c(0))


def _hardswish(xp, layer, z):
    c = z.dtype.type
    return z * xp.minimum(xp.maximum(z + c(3), c(0)), c(6)) / c(6)


def _hardswish_d(xp, layer, z):
    c = z.dtype.type  # torch: 0 for z <= -3, z/3 + 1/2 for -3 < z < 3, 1 for z >= 3
    return xp.where(z <= -3, c(0), xp.where(z < 3, z / c(3) + c(0.5), c(1)))


def _mish(xp, layer, z):
    return z * xp.tanh(xp.logaddexp(z.dtype.type(0), z))


def _mish_d(xp, layer, z):
    t = xp.tanh(xp.logaddexp(z.dtype.type(0), z))  # torch: t + z sigmoid(z) (1 - t^2)
    return t + z * expit(xp, z) * (1 - t * t)


_FORMS = {"ELU": (_elu, _elu_d), "GELU": (_gelu, _gelu_d), "SiLU": (_silu, _silu_d),
          "ReLU6": (_relu6, _relu6_d), "Hardsigmoid": (_hardsigmoid, _hardsigmoid_d),
          "Hardswish": (_hardswish, _hardswish_d), "Mish": (_mish, _mish_d)}


def reveal_cancel(bw, node, g):
    """RevealCancel at the activation ``y = f(x)`` (Shrikumar et al. 2017, Sec. 3.5.3), ``x`` the
    output of a linear layer with input differences ``Delta a``::

        Dy+ = 1/2 (f(x0 + Dx+) - f(x0)) + 1/2 (f(x0 + Dx- + Dx+) - f(x0 + Dx-))
        Dy- = 1/2 (f(x0 + Dx-) - f(x0)) + 1/2 (f(x0 + Dx+ + Dx-) - f(x0 + Dx+))
        m+ = g Dy+ / Dx+,   m- = g Dy- / Dx-

    (``Dy+ + Dy- = Dy`` exactly, so summation-to-delta holds). Where ``Dx+`` (``Dx-``) is ~0 its
    multiplier is the limit ``g (f'(x0) + f'(x0 + Dx-)) / 2`` (resp. ``Dx+``). Returns (m+, m-)."""
    k, m, tape, n = bw.k, bw.m, bw.tape, bw.n
    lin = m.graph.by_name[node.inputs[0]]
    xp = k.xp
    a2 = tape.out[lin.inputs[0]]
    dpos, dneg = linear.pos_neg_forward(k, m, lin, a2[:n] - a2[n:], g.dtype)
    dpos, dneg = dpos.reshape(g.shape), dneg.reshape(g.shape)
    x0, y2 = tape.out[lin.name][n:], tape.out[node.name]
    y, y0 = y2[:n], y2[n:]
    f_pos, f_neg = evaluate(xp, node.layer, x0 + dpos), evaluate(xp, node.layer, x0 + dneg)
    half = g.dtype.type(0.5)
    dy_pos = half * ((f_pos - y0) + (y - f_neg))
    dy_neg = half * ((f_neg - y0) + (y - f_pos))
    d0 = derivative(xp, node.layer, x0)

    def mult(dy, dx, other):
        small = xp.abs(dx) < DEEPLIFT_EPS
        limit = half * (d0 + derivative(xp, node.layer, x0 + other))
        return (g * xp.where(small, limit, dy / xp.where(small, 1, dx))).astype(g.dtype)

    return mult(dy_pos, dpos, dneg), mult(dy_neg, dneg, dpos)


class Linear(Op):
    """Dense and Conv2d (``relprop.core.linear`` does the numeric work)."""

    kinds = ("Dense", "Conv2d")

    def store(self, node, mode, rule=None):
        if mode != LRP:
            return (), False
        keep = [node.inputs[0]]
        if rule.uses_layer_z or rule.z_form() is not None or any(gr.mask for gr in rule.groups()):
            keep.append(node.name)
        return keep, False

    def forward(self, fw, node, xs):
        k, tape, xin = fw.k, fw.tape, xs[0]
        fused = fusable_activation(fw.m.graph, node)
        act = ACT_CODES[fused.layer.kind] if fused is not None else 0
        plus_rule = None
        if node.name in fw.plus:
            if bool(k.all_nonnegative(xin.ravel())):
                plus_rule = fw.plus[node.name]
            tape.nonneg[node.name] = plus_rule is not None
        z, a, pz = linear.forward(k, fw.m, node, xin, act, fused is not None and node.name in fw.keep, xin.dtype,
                                  plus_rule)
        if pz is not None:
            tape.plus[node.name] = pz
        if fused is None:
            return z
        fw.skip.add(fused.name)
        return {node.name: z, fused.name: a}

    def grad(self, bw, node, g):
        if isinstance(g, tuple):  # (m+, m-) from a RevealCancel activation
            return [(node.inputs[0], linear.reveal_cancel(bw.k, bw.m, node, bw.tape, g, bw.n))]
        return [(node.inputs[0], linear.grad(bw.k, bw.m, node, g, bw.in_shape(node, g)))]

    deeplift = grad

    def lrp(self, bw, node, g):
        tape, src = bw.tape, node.inputs[0]
        return [(src, linear.lrp(bw.k, bw.m, node, tape.out[src], tape.out.get(node.name), g, bw.rules[node.name],
                                 tape.plus.get(node.name), tape.shapes["input"], tape.nonneg.get(node.name)))]


def fusable_activation(graph, node):
    """The activation node that consumes ``node`` alone, if any (fused into its epilogue)."""
    cons = graph.consumers.get(node.name, [])
    if len(cons) == 1:
        nxt = graph.by_name[cons[0]]
        if nxt.layer.kind in ACT_CODES:
            return nxt
    return None


def _window(layer):
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    return kh, kw, sh, sw, ph, pw


def _pool_output(fw, node, xin):
    """(window, empty (N, C, Ho, Wo) output) of a pooling node on ``xin``."""
    n, c, h, w = xin.shape
    win = _window(node.layer)
    ho, wo = fw.k.conv_out_shape(h, w, *win)
    return win, fw.k.xp.empty((n, c, ho, wo), xin.dtype)


class MaxPool(Op):
    """Max pooling: every mode routes the signal to the window's winner (DeepLIFT: Captum's
    rule, the difference of the maxima split over the winners at x and at the baseline)."""

    kinds = ("MaxPool2d",)

    def store(self, node, mode, rule=None):
        return ((node.inputs[0], node.name) if mode == DEEPLIFT else ()), True

    def forward(self, fw, node, xs):
        win, out = _pool_output(fw, node, xs[0])
        idx = fw.k.xp.empty(out.shape, np.int64)
        fw.k.maxpool_forward(xs[0], *win, out, idx)
        if node.name in fw.idx_nodes:
            fw.tape.idx[node.name] = idx
        return out

    def grad(self, bw, node, g):
        gin = bw.k.xp.empty(bw.in_shape(node, g), g.dtype)
        bw.k.maxpool_backward(g, bw.tape.idx[node.name][:bw.n], gin)
        return [(node.inputs[0], gin)]

    lrp = grad

    def deeplift(self, bw, node, g):
        n, tape = bw.n, bw.tape
        gin = bw.k.xp.empty(bw.in_shape(node, g), g.dtype)
        idx = tape.idx[node.name]
        xx, yy = tape.out[node.inputs[0]], tape.out[node.name]
        bw.k.maxpool_rescale_backward(g, xx[:n], xx[n:], yy[:n], yy[n:], idx[:n], idx[n:], DEEPLIFT_EPS, gin)
        return [(node.inputs[0], gin)]


class AvgPool(Op):
    """Average pooling (zero padding counted); LRP: the z-rule ``x * pool^T(R / stab(z))``."""

    kinds = ("AvgPool2d",)

    def store(self, node, mode, rule=None):
        return ((node.inputs[0], node.name) if mode == LRP else ()), False

    def forward(self, fw, node, xs):
        win, out = _pool_output(fw, node, xs[0])
        fw.k.avgpool_forward(xs[0], *win, out)
        return out

    def grad(self, bw, node, g):
        gin = bw.k.xp.empty(bw.in_shape(node, g), g.dtype)
        bw.k.avgpool_backward(g, *_window(node.layer), gin, False, gin)
        return [(node.inputs[0], gin)]

    deeplift = grad

    def lrp(self, bw, node, g):
        tape, src = bw.tape, node.inputs[0]
        gin = bw.k.xp.empty(bw.in_shape(node, g), g.dtype)
        s = g / stab(tape.out[node.name], bw.pool_eps)
        bw.k.avgpool_backward(s, *_window(node.layer), tape.out[src], True, gin)
        return [(src, gin)]


class GlobalAvgPool(AvgPool):
    """Mean over H and W; LRP: the z-rule as for average pooling."""

    kinds = ("GlobalAvgPool2d",)

    def forward(self, fw, node, xs):
        return xs[0].mean(axis=(2, 3), keepdims=True, dtype=xs[0].dtype)

    def grad(self, bw, node, g):
        shape = bw.in_shape(node, g)
        inv = g.dtype.type(1.0 / (shape[2] * shape[3]))
        return [(node.inputs[0], bw.k.xp.broadcast_to(g * inv, shape).copy())]

    deeplift = grad

    def lrp(self, bw, node, g):
        tape, src = bw.tape, node.inputs[0]
        shape = bw.in_shape(node, g)
        inv = g.dtype.type(1.0 / (shape[2] * shape[3]))
        return [(src, tape.out[src] * (g / stab(tape.out[node.name], bw.pool_eps)) * inv)]


class BatchNorm(Op):
    """Inference batch norm ``scale * x + shift`` per channel; LRP passes relevance through
    (Zennit's Pass; ``rp.canonize`` folds it into a linear layer instead)."""

    kinds = ("BatchNorm2d",)

    def forward(self, fw, node, xs):
        scale, shift = fw.m.bn(fw.k, node, xs[0].ndim)
        return xs[0] * scale + shift

    def grad(self, bw, node, g):
        return [(node.inputs[0], g * bw.m.bn(bw.k, node, g.ndim)[0])]

    deeplift = grad

    def lrp(self, bw, node, g):
        return [(node.inputs[0], g)]


class Add(Op):
    """Sum of several inputs; LRP splits relevance in proportion to each input's share
    (Zennit's Norm on Sum), the gradient copies it to every input."""

    kinds = ("Add",)

    def store(self, node, mode, rule=None):
        return ((*node.inputs, node.name) if mode == LRP else ()), False

    def forward(self, fw, node, xs):
        acc = xs[0] + xs[1]
        for x in xs[2:]:
            acc += x
        return acc

    def grad(self, bw, node, g):
        return [(i, g) for i in node.inputs]

    deeplift = grad

    def lrp(self, bw, node, g):
        s = g / stab(bw.tape.out[node.name], bw.pool_eps)
        return [(i, bw.tape.out[i] * s) for i in node.inputs]


class Concat(Op):
    """Concatenation along an axis; every mode splits the signal back along it."""

    kinds = ("Concat",)

    def forward(self, fw, node, xs):
        return fw.k.xp.concatenate(xs, axis=node.layer.sample_axis(xs[0].ndim - 1) + 1)

    def grad(self, bw, node, g):
        ax = node.layer.sample_axis(g.ndim - 1) + 1
        sizes = [bw.tape.shapes[i][ax - 1] for i in node.inputs]
        parts = bw.k.xp.split(g, [int(v) for v in np.cumsum(sizes)[:-1]], axis=ax)
        return [(i, bw.k.xp.ascontiguousarray(p)) for i, p in zip(node.inputs, parts)]

    lrp = deeplift = grad


class Softmax(Op):
    """Softmax over the classes (last layer only; explanations start from its input)."""

    kinds = ("Softmax",)

    def forward(self, fw, node, xs):
        zc = xs[0] - xs[0].max(axis=1, keepdims=True)
        e = fw.k.xp.exp(zc)
        return e / e.sum(axis=1, keepdims=True)


OPS = {kind: op for op in (Identity(), Reshape(), Activation(), ParamActivation(), Linear(), MaxPool(), AvgPool(),
                           GlobalAvgPool(), BatchNorm(), Add(), Concat(), Softmax()) for kind in op.kinds}

_MODES = {}  # mode name -> {layer kind: backward step (bw, node, g) -> [(input name, signal)]}


def register_mode(name, table):
    """A backward mode of a method's own: ``table`` maps layer kinds to backward steps."""
    _MODES[name] = dict(table)


def step(mode, kind):
    """The backward step of ``kind`` in ``mode``."""
    table = _MODES.get(mode)
    if table is not None:
        fn = table.get(kind)
        if fn is None:
            raise ValueError(f"mode {mode!r} has no rule for layer kind {kind}")
        return fn
    return getattr(OPS[kind], mode)
