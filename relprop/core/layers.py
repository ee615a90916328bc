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
AdaptiveAvg,   ``A^T g`` (separable ``A``)  z-rule ``x * A^T(R/stab(z))`` ``A^T g`` (linear rule)
Upsample                                    (nearest: ``A^T R``)
AdaptiveMax    route to the winner          route to the winner           Captum's max rule
LayerNorm,     exact Jacobian (statistics   pass ``R`` (``"identity"``)   linear/Rescale/product
GroupNorm      included)                    or z-rule, stats constant     decomposition (exact)
Mul            product rule                 all to the signal input       Shapley product split
ZeroInsert2d   back to the source pixel     back to the source pixel      back to the source pixel
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
        gin = xp.empty(g.shape, g.dtype)  # C order: its ravel() is a view the kernel writes
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
    ``derivative``). Their forward and gradient run as the backends' ``param_act`` /
    ``param_act_grad`` kernels (one pass, each value in float64 rounded once); DeepLIFT and
    RevealCancel use the same formulas as array expressions of the backend's ``xp`` (``evaluate``,
    ``derivative``). They are not fused into a linear layer's epilogue. The gradient is ``g * f'(z)`` with torch autograd's value at the
    kinks; LRP passes relevance through (Zennit's Pass); DeepLIFT takes the Rescale multiplier
    ``(f(z) - f(z0)) / (z - z0)`` (Shrikumar et al. 2017, Sec. 3.5.2; Ancona et al. 2018, Eq. 17),
    ``f'(z)`` where ``|z - z0| < DEEPLIFT_EPS`` (as Captum's ``nonlinear``)."""

    kinds = ("LeakyReLU", "Softplus", "ELU", "GELU", "SiLU", "Hardswish", "Hardsigmoid", "ReLU6", "Mish")

    def store(self, node, mode, rule=None):
        if mode == GRAD:
            return (node.inputs[0],), False
        return super().store(node, mode, rule)

    def forward(self, fw, node, xs):
        z = xs[0]
        out = fw.k.xp.empty(z.shape, z.dtype)  # C order: its ravel() is a view the kernel writes
        fw.k.param_act(z.ravel(), *param_act_args(fw.k, node.layer), out.ravel())
        return out

    def grad(self, bw, node, g):
        z = bw.tape.out[node.inputs[0]]
        out = bw.k.xp.empty(g.shape, g.dtype)
        bw.k.param_act_grad(g.ravel(), z.ravel(), *param_act_args(bw.k, node.layer), out.ravel())
        return [(node.inputs[0], out)]

    def deeplift(self, bw, node, g):
        if node.name in bw.reveal:
            return [(node.inputs[0], reveal_cancel(bw, node, g))]
        xp, n, src = bw.k.xp, bw.n, node.inputs[0]
        z, a2 = bw.tape.out[src], bw.tape.out[node.name]
        dz = z[:n] - z[n:]
        small = xp.abs(dz) < DEEPLIFT_EPS
        ratio = (a2[:n] - a2[n:]) / xp.where(small, 1, dz)
        return [(src, g * xp.where(small, derivative(xp, node.layer, z[:n]), ratio))]


def param_act_args(k, layer):
    """(code, p0, p1) of an activation layer for the backends' ``param_act`` kernels (the codes
    of ``relprop.kernels.cpu.activations``)."""
    kind = layer.kind
    if kind == "GELU" and layer.approximate == "tanh":
        kind = "GELU_tanh"
    p0 = {"LeakyReLU": "negative_slope", "Softplus": "beta", "ELU": "alpha"}.get(kind)
    return (k.PARAM_ACT_CODES[kind], float(getattr(layer, p0)) if p0 else 0.0,
            float(layer.threshold) if kind == "Softplus" else 0.0)


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


class Pad(Op):
    """Spatial padding (constant, reflect, replicate, circular). Padding is linear and every
    padded value copies one input pixel, so the gradient, DeepLIFT's multipliers and LRP
    relevance all take the adjoint: the signal at each padded position is added back onto its
    source pixel (the constant's share has no source and is dropped, as for zero padding inside
    a convolution). This is what autograd, Captum and Zennit give for torch's padding modes."""

    kinds = ("Pad",)

    def forward(self, fw, node, xs):
        from .graph import PAD_MODES

        layer, x = node.layer, xs[0]
        t, b, l, r = layer.pads
        width = ((0, 0), (0, 0), (t, b), (l, r))
        if layer.mode == "constant":
            return fw.k.xp.pad(x, width, mode="constant", constant_values=x.dtype.type(layer.value))
        return fw.k.xp.pad(x, width, mode=PAD_MODES[layer.mode])

    def grad(self, bw, node, g):
        xp, shape = bw.k.xp, bw.in_shape(node, g)
        rows, cols = node.layer.sources(shape[2], shape[3])
        # one-hot maps padded position -> source (a -1 row, the constant, maps nowhere):
        # the adjoint is Ph^T g Pw, exact (sums of copies) and device-agnostic
        ph = (rows[:, None] == np.arange(shape[2])[None, :]).astype(g.dtype)
        pw = (cols[:, None] == np.arange(shape[3])[None, :]).astype(g.dtype)
        out = xp.asarray(np.ascontiguousarray(ph.T)) @ (g @ xp.asarray(pw))
        return [(node.inputs[0], xp.ascontiguousarray(out))]

    lrp = deeplift = grad


class Softmax(Op):
    """Softmax over the classes (last layer only; explanations start from its input)."""

    kinds = ("Softmax",)

    def forward(self, fw, node, xs):
        zc = xs[0] - xs[0].max(axis=1, keepdims=True)
        e = fw.k.xp.exp(zc)
        return e / e.sum(axis=1, keepdims=True)


OPS = {kind: op for op in (Identity(), Reshape(), Activation(), ParamActivation(), Linear(), MaxPool(), AvgPool(),
                           GlobalAvgPool(), BatchNorm(), Add(), Concat(), Pad(), Softmax()) for kind in op.kinds}

# -- AdaptiveAvgPool2d, Upsample, AdaptiveMaxPool2d, LayerNorm, GroupNorm, Mul (issue 15) ------
# Array expressions of the backend's ``xp`` (numpy or cupy): CPU and GPU share this code.
def _adaptive_matrix(n_in, n_out):
    """(n_out, n_in) averaging matrix of torch's adaptive windows (``graph._adaptive_bounds``)."""
    from .graph import _adaptive_bounds

    a = np.zeros((n_out, n_in))
    for i, (s, e) in enumerate(_adaptive_bounds(n_in, n_out)):
        a[i, s:e] = 1.0 / (e - s)
    return a


def _resize_matrix(n_in, n_out, mode, align_corners, factor):
    """(n_out, n_in) matrix of torch's 1-D ``interpolate`` (``aten/src/ATen/native/UpSample.h``:
    ``area_pixel_compute_scale``, ``area_pixel_compute_source_index``,
    ``nearest_neighbor_compute_source_index``); ``factor`` the scale factor or None."""
    a = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if align_corners:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    else:
        scale = 1.0 / factor if factor is not None else n_in / n_out
    if mode == "nearest":
        # torch's indices, matched on every (n_in < 40, n_out < 80) pair and on scale factors:
        # from sizes, floor(i * n_in / n_out) exactly (integers); from a scale factor s, float32
        # floorf(i * (1 / s))
        if factor is None:
            src = np.minimum(rows * n_in // n_out, n_in - 1)
        else:
            s32 = np.float32(1.0 / factor)
            src = np.minimum(np.floor(rows.astype(np.float32) * s32).astype(np.int64), n_in - 1)
        a[rows, src] = 1.0
        return a
    src = rows * scale if align_corners else np.maximum(scale * (rows + 0.5) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    np.add.at(a, (rows, i0), 1.0 - lam)
    np.add.at(a, (rows, i1), lam)
    return a


def _reduce_to(xp, g, shape):
    """``g`` summed over the axes that broadcasting expanded from ``shape`` (batch axis kept)."""
    axes = tuple(i + 1 for i, (s, t) in enumerate(zip(shape, g.shape[1:])) if s == 1 and t != 1)
    return g.sum(axis=axes, keepdims=True, dtype=g.dtype) if axes else g


class Resample(Op):
    """AdaptiveAvgPool2d and Upsample: the separable linear map ``y = A_h x A_w^T`` per channel
    (``_adaptive_matrix``, ``_resize_matrix``). Gradient and DeepLIFT (a linear layer's rule,
    Shrikumar et al. 2017, Sec. 3.5.1) take the adjoint ``A_h^T g A_w``; LRP the z-rule
    ``x * A_h^T (R / stab(y)) A_w`` (LRP-0 with the stabilizer of average pooling, Bach et al.
    2015; Montavon et al. 2019), which conserves relevance as all entries of ``A`` are >= 0 -- for
    AdaptiveAvgPool2d this is Zennit's Norm rule on average pooling. Nearest upsampling copies
    one input into each output, so its z-rule is exactly ``A^T R`` (no stabilizer needed; Zennit's
    gradient there)."""

    kinds = ("AdaptiveAvgPool2d", "Upsample")

    def store(self, node, mode, rule=None):
        return ((node.inputs[0], node.name) if mode == LRP else ()), False

    @staticmethod
    def matrices(xp, layer, in_shape, out_shape, dtype):
        (h, w), (ho, wo) = in_shape[1:], out_shape[1:]
        if layer.kind == "AdaptiveAvgPool2d":
            mh, mw = _adaptive_matrix(h, ho), _adaptive_matrix(w, wo)
        else:
            f = layer.scale_factor or (None, None)
            mh = _resize_matrix(h, ho, layer.mode, layer.align_corners, f[0])
            mw = _resize_matrix(w, wo, layer.mode, layer.align_corners, f[1])
        return xp.asarray(mh.astype(dtype)), xp.asarray(mw.astype(dtype))

    def _mats(self, k, tape, node, dtype):
        return self.matrices(k.xp, node.layer, tape.shapes[node.inputs[0]], tape.shapes[node.name], dtype)

    def forward(self, fw, node, xs):
        mh, mw = self._mats(fw.k, fw.tape, node, xs[0].dtype)
        return fw.k.xp.ascontiguousarray(mh @ xs[0] @ mw.T)

    def grad(self, bw, node, g):
        mh, mw = self._mats(bw.k, bw.tape, node, g.dtype)
        return [(node.inputs[0], bw.k.xp.ascontiguousarray(mh.T @ g @ mw))]

    deeplift = grad

    def lrp(self, bw, node, g):
        if node.layer.kind == "Upsample" and node.layer.mode == "nearest":
            # every output copies one input: z_ij / z_j = 1 exactly, the z-rule is A^T R (Zennit's
            # gradient there) and needs no stabilizer, which would only lose relevance at small x
            return self.grad(bw, node, g)
        tape, src = bw.tape, node.inputs[0]
        mh, mw = self._mats(bw.k, tape, node, g.dtype)
        s = g / stab(tape.out[node.name], bw.pool_eps)
        return [(src, tape.out[src] * (mh.T @ s @ mw))]


class AdaptiveMaxPool(Op):
    """AdaptiveMaxPool2d over torch's windows; the winner of a tie is the first pixel in
    row-major order (torch's CPU kernel, and ``argmax``). Gradient and LRP route the signal
    to the winner (as MaxPool2d; Zennit keeps the gradient there); DeepLIFT takes MaxPool2d's
    rule (Captum's: ``max(y, y0) - y0`` to the input's winner, ``y - max(y, y0)`` to the
    baseline's, divided by ``x - x0``; the plain gradient where ``|x - x0| < DEEPLIFT_EPS``)."""

    kinds = ("AdaptiveMaxPool2d",)

    def store(self, node, mode, rule=None):
        return ((node.inputs[0], node.name) if mode == DEEPLIFT else ()), True

    @staticmethod
    def cells(layer, in_shape):
        from .graph import _adaptive_bounds

        (h, w), (ho, wo) = in_shape[1:], layer.output_size
        return [(i, j, hs, he, ws, we) for i, (hs, he) in enumerate(_adaptive_bounds(h, ho))
                for j, (ws, we) in enumerate(_adaptive_bounds(w, wo))]

    def forward(self, fw, node, xs):
        xp, x = fw.k.xp, xs[0]
        n, c, h, w = x.shape
        ho, wo = node.layer.output_size
        out = xp.empty((n, c, ho, wo), x.dtype)
        idx = xp.empty((n, c, ho, wo), np.int64)
        for i, j, hs, he, ws, we in self.cells(node.layer, x.shape[1:]):
            win = x[:, :, hs:he, ws:we].reshape(n, c, -1)
            k = xp.argmax(win, axis=2)  # the first maximum (a NaN wins, as in torch)
            out[:, :, i, j] = xp.take_along_axis(win, k[..., None], axis=2)[..., 0]
            kw = we - ws
            idx[:, :, i, j] = (hs + k // kw) * w + ws + k % kw
        if node.name in fw.idx_nodes:
            fw.tape.idx[node.name] = idx
        return out

    @staticmethod
    def _route(xp, flat, idx, vals):
        """``flat[r, idx[r, cell]] += vals[r, cell]`` per cell (duplicates across cells add up)."""
        rows = xp.arange(flat.shape[0])
        for cell in range(idx.shape[1]):
            flat[rows, idx[:, cell]] += vals[:, cell]

    def grad(self, bw, node, g):
        xp = bw.k.xp
        shape = bw.in_shape(node, g)
        n, c = shape[:2]
        flat = xp.zeros((n * c, shape[2] * shape[3]), g.dtype)
        self._route(xp, flat, bw.tape.idx[node.name][:n].reshape(n * c, -1), g.reshape(n * c, -1))
        return [(node.inputs[0], flat.reshape(shape))]

    lrp = grad

    def deeplift(self, bw, node, g):
        xp, n, tape = bw.k.xp, bw.n, bw.tape
        shape = bw.in_shape(node, g)
        rows = n * shape[1]
        idx = tape.idx[node.name]
        i1, i0 = idx[:n].reshape(rows, -1), idx[n:].reshape(rows, -1)
        xx, yy = tape.out[node.inputs[0]], tape.out[node.name]
        y, y0 = yy[:n].reshape(rows, -1), yy[n:].reshape(rows, -1)
        dx = (xx[:n] - xx[n:]).reshape(rows, -1)
        gg = g.reshape(rows, -1)
        ym = xp.maximum(y, y0)
        routed = xp.zeros(dx.shape, g.dtype)
        self._route(xp, routed, i1, gg * (ym - y0))
        self._route(xp, routed, i0, gg * (y - ym))
        small = xp.abs(dx) < DEEPLIFT_EPS
        mult = xp.where(small, 0, routed / xp.where(small, 1, dx)).astype(g.dtype)
        plain = xp.zeros(dx.shape, g.dtype)
        self._route(xp, plain, i1, gg)
        mult += xp.where(small, plain, 0).astype(g.dtype)
        return [(node.inputs[0], mult.reshape(shape))]


class Norm(Op):
    """LayerNorm and GroupNorm: ``y = x_hat * w + b``, ``x_hat = (x - mu) / sigma`` with ``mu``,
    ``sigma = sqrt(var + eps)`` over each normalization group of ``M`` values.

    * gradient: the exact Jacobian, statistics included (Ioffe & Szegedy 2015, Sec. 3):
      ``dx = (gh - mean(gh) - x_hat mean(gh x_hat)) / sigma`` with ``gh = g w``;
    * LRP, ``lrp_rule="identity"`` (default): relevance passes unchanged (Zennit's Pass, as for
      batch norm: the identity rule on the normalization); conserves relevance. ``"linear"``:
      ``mu`` and ``sigma`` held constant (Ali et al. 2022 hold LayerNorm's std constant), the
      z-rule on the affine map ``y = (w / sigma) x + (b - w mu / sigma)`` without its bias:
      ``R_x = (w x / sigma) / stab(y) * R`` (the bias absorbs the rest; no conservation);
    * DeepLIFT: the layer decomposed as ``y = w c s + b`` with ``c = x - mu`` (linear), ``var =
      mean(c^2)`` (``Dvar = mean((c + c0) Dc)`` exactly) and ``s = 1 / sqrt(var + eps)`` (scalar
      Rescale ``k = Ds / Dvar``, Shrikumar et al. 2017, Sec. 3.5.2; ``ds/dvar`` where ``|Dvar| <
      DEEPLIFT_EPS``), the product ``c s`` split as Mul's (``(s + s0) / 2`` to ``c``, ``(c + c0) / 2``
      to ``s``): with ``G = g w``, ``h = G (s + s0) / 2 + k (c + c0) / M * sum(G (c + c0)) / 2`` and
      the multiplier ``h - mean(h)`` over the group. Summation-to-delta (Shrikumar et al. 2017,
      Eq. 1) holds exactly (an elementwise ``Dy / Dx`` would not: a ReLU-zeroed input with
      ``Dx = 0`` still moves the outputs through the statistics), and as ``x0 -> x`` it tends
      to the exact gradient.

    A channels-first LayerNorm (``axis=1``) runs the same code on ``x`` with axis 1 moved last
    (``_last``) and moves the result back (``_first``): it is the trailing-dim LayerNorm of the
    permuted tensor, so every rule above carries over unchanged.
    """

    kinds = ("LayerNorm", "GroupNorm")

    @staticmethod
    def _last(xp, layer, *arrays):
        """The arrays with axis 1 moved last for a channels-first LayerNorm (unchanged otherwise)."""
        if getattr(layer, "axis", None) == 1:
            return tuple(xp.moveaxis(a, 1, -1) for a in arrays)
        return arrays

    @staticmethod
    def _first(xp, layer, a):
        """The inverse of ``_last`` for one array, made contiguous."""
        return xp.ascontiguousarray(xp.moveaxis(a, -1, 1)) if getattr(layer, "axis", None) == 1 else a

    def store(self, node, mode, rule=None):
        if mode == GRAD:
            return (node.inputs[0],), False
        if mode == LRP:
            return ((node.inputs[0], node.name) if node.layer.lrp_rule == "linear" else ()), False
        return (node.inputs[0], node.name), False

    @staticmethod
    def parts(xp, layer, x):
        """(grouped shape (N, G, M), weight and bias broadcastable to x, x_hat grouped, 1/sigma)."""
        n = x.shape[0]
        if layer.kind == "LayerNorm":
            m = int(np.prod(layer.normalized_shape))
            grouped = (n, x[0].size // m, m)
            wshape = (1,) * (x.ndim - len(layer.normalized_shape)) + layer.normalized_shape
        else:
            grouped = (n, layer.num_groups, x[0].size // layer.num_groups)
            wshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        w = xp.asarray(layer.weight.astype(x.dtype).reshape(wshape))
        b = xp.asarray(layer.bias.astype(x.dtype).reshape(wshape))
        xg = x.reshape(grouped)
        mu = xg.mean(axis=2, keepdims=True, dtype=x.dtype)
        xc = xg - mu
        rstd = 1 / xp.sqrt((xc * xc).mean(axis=2, keepdims=True, dtype=x.dtype) + x.dtype.type(layer.eps))
        return grouped, w, b, xc * rstd, rstd

    def forward(self, fw, node, xs):
        xp, layer = fw.k.xp, node.layer
        (x,) = self._last(xp, layer, xs[0])
        _, w, b, xhat, _ = self.parts(xp, layer, x)
        return self._first(xp, layer, xhat.reshape(x.shape) * w + b)

    def grad(self, bw, node, g):
        xp, layer = bw.k.xp, node.layer
        x, g = self._last(xp, layer, bw.tape.out[node.inputs[0]], g)
        grouped, w, _, xhat, rstd = self.parts(xp, layer, x)
        gh = (g * w).reshape(grouped)
        gin = (gh - gh.mean(axis=2, keepdims=True) - xhat * (gh * xhat).mean(axis=2, keepdims=True)) * rstd
        return [(node.inputs[0], self._first(xp, layer, gin.reshape(g.shape).astype(g.dtype, copy=False)))]

    def lrp(self, bw, node, g):
        if node.layer.lrp_rule == "identity":
            return [(node.inputs[0], g)]
        xp, layer = bw.k.xp, node.layer
        x, y, g = self._last(xp, layer, bw.tape.out[node.inputs[0]], bw.tape.out[node.name], g)
        grouped, w, _, _, rstd = self.parts(xp, layer, x)
        z = (x.reshape(grouped) * rstd).reshape(x.shape) * w
        return [(node.inputs[0], self._first(xp, layer, z * (g / stab(y, bw.pool_eps))))]

    def deeplift(self, bw, node, g):
        xp, n = bw.k.xp, bw.n
        x2, g = self._last(xp, node.layer, bw.tape.out[node.inputs[0]], g)
        grouped, w, _, _, _ = self.parts(xp, node.layer, x2[:n])
        m, half, eps = grouped[2], g.dtype.type(0.5), g.dtype.type(node.layer.eps)

        def stats(x):  # centred values c, variance, s = 1 / sqrt(var + eps)
            xg = x.reshape(grouped)
            c = xg - xg.mean(axis=2, keepdims=True, dtype=g.dtype)
            var = (c * c).mean(axis=2, keepdims=True, dtype=g.dtype)
            return c, var, 1 / xp.sqrt(var + eps)

        (c, var, s), (c0, var0, s0) = stats(x2[:n]), stats(x2[n:])
        gw = (g * w).reshape(grouped)
        dv = var - var0
        small = xp.abs(dv) < DEEPLIFT_EPS
        k = xp.where(small, -half * s * s * s, (s - s0) / xp.where(small, 1, dv))  # Rescale of var -> s
        a = half * (gw * (c + c0)).sum(axis=2, keepdims=True, dtype=g.dtype)
        h = gw * (half * (s + s0)) + a * k * (c + c0) / g.dtype.type(m)  # product rule on c * s
        mult = h - h.mean(axis=2, keepdims=True, dtype=g.dtype)  # the linear rule of the centring
        return [(node.inputs[0], self._first(xp, node.layer, mult.reshape(g.shape).astype(g.dtype, copy=False)))]


class Mul(Op):
    """Elementwise product ``y = a * b`` of two inputs (broadcast per sample).

    * gradient: the product rule, ``g b`` to ``a`` and ``g a`` to ``b``, each summed over the
      axes broadcasting expanded;
    * LRP: all relevance to the signal input (``layer.signal_input``), none to the gate: with
      the gate held constant ``y`` is linear in the signal and the z-rule returns ``R``
      unchanged (Arras et al. 2017 for the gates of LSTMs; Ali et al. 2022 hold attention
      weights constant likewise). It conserves relevance;
    * DeepLIFT: the product's exact two-player Shapley split, ``m_a = g (b + b0) / 2``,
      ``m_b = g (a + a0) / 2``, so ``m_a Da + m_b Db = ab - a0 b0`` (summation-to-delta,
      Shrikumar et al. 2017, Eq. 1, holds; the two-player Shapley value of ``a b``, Shapley
      1953). Captum's DeepLift registers no hook on ``*`` and uses the
      gradient at ``x`` there (``m_a = g b``), which breaks summation-to-delta when both inputs
      differ from their baselines; this differs from Captum on such models.
    """

    kinds = ("Mul",)

    def store(self, node, mode, rule=None):
        return ((tuple(node.inputs) if mode in (GRAD, DEEPLIFT) else ()), False)

    def forward(self, fw, node, xs):
        return xs[0] * xs[1]

    def grad(self, bw, node, g):
        xp, tape = bw.k.xp, bw.tape
        a, b = (tape.out[i][: g.shape[0]] for i in node.inputs)
        return [(node.inputs[0], _reduce_to(xp, g * b, tape.shapes[node.inputs[0]])),
                (node.inputs[1], _reduce_to(xp, g * a, tape.shapes[node.inputs[1]]))]

    def lrp(self, bw, node, g):
        shapes = [bw.tape.shapes[i] for i in node.inputs]
        s = node.layer.signal_input(*shapes)
        return [(node.inputs[s], _reduce_to(bw.k.xp, g, shapes[s]))]

    def deeplift(self, bw, node, g):
        xp, tape, n = bw.k.xp, bw.tape, bw.n
        (a, a0), (b, b0) = ((tape.out[i][:n], tape.out[i][n:]) for i in node.inputs)
        half = g.dtype.type(0.5)
        return [(node.inputs[0], _reduce_to(xp, g * (half * (b + b0)), tape.shapes[node.inputs[0]])),
                (node.inputs[1], _reduce_to(xp, g * (half * (a + a0)), tape.shapes[node.inputs[1]]))]


class ZeroInsert(Op):
    """ZeroInsert2d, the first half of a ConvTranspose2d (``graph.ConvTranspose2d``): each
    output is a copy of one input pixel or an inserted zero, so the gradient, DeepLIFT's
    multipliers (a linear layer) and LRP relevance all take the exact adjoint, a gather of the
    copies back onto their sources; what reaches an inserted zero has no source and is dropped
    (it is zero under every rule that weighs by the input, ``x_i = 0``)."""

    kinds = ("ZeroInsert2d",)

    @staticmethod
    def _index(layer, h, w):
        rows, cols = layer.sources(h, w)
        ro, co = np.nonzero(rows >= 0)[0], np.nonzero(cols >= 0)[0]
        return ro, co, rows[ro], cols[co]

    def forward(self, fw, node, xs):
        xp, x = fw.k.xp, xs[0]
        ro, co, ri, ci = self._index(node.layer, x.shape[2], x.shape[3])
        out = xp.zeros((x.shape[0],) + fw.tape.shapes[node.name], x.dtype)
        out[:, :, xp.asarray(ro)[:, None], xp.asarray(co)[None, :]] = x[:, :, xp.asarray(ri)[:, None],
                                                                        xp.asarray(ci)[None, :]]
        return out

    def grad(self, bw, node, g):
        xp, shape = bw.k.xp, bw.in_shape(node, g)
        ro, co, ri, ci = self._index(node.layer, shape[2], shape[3])
        out = xp.zeros(shape, g.dtype)  # a cropped source gets nothing (it reached no output)
        out[:, :, xp.asarray(ri)[:, None], xp.asarray(ci)[None, :]] = g[:, :, xp.asarray(ro)[:, None],
                                                                        xp.asarray(co)[None, :]]
        return [(node.inputs[0], out)]

    lrp = deeplift = grad


OPS.update({kind: op for op in (Resample(), AdaptiveMaxPool(), Norm(), Mul(), ZeroInsert()) for kind in op.kinds})

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
