"""LRP rules for linear layers (Dense, Conv2d), declared as data.

Every rule is a list of output *groups*; a group has a coefficient, an optional mask on the
sign of the layer's own pre-activation z, and *terms* ``(input modifier, weight map, bias map)``.
For layer weights ``W``, inputs ``a`` and upper relevance ``R_j`` (the rules of Montavon et al. 2019, "Layer-wise relevance propagation: an overview")::

    z_g   = sum_{t in g} W_t a_t + b_t                  (one modified forward)
    s_g   = coef_g * mask_g(z) * R / stab(z_g)          stab(z) = z + eps * sign(z), sign(0) = +1
    R_in  = sum_g sum_{t in g} a_t * (W_t^T s_g)        (one modified backward)

which is Zennit's rule semantics (input/param modifiers, gradient mapper, reducer). The engine
stacks all terms of a rule into ONE block matrix, so any rule costs one forward GEMM and one
backward GEMM per layer (the epsilon and z rules with the bias reuse the stored forward and skip
the first; on a >= 0 z+, alpha-beta with beta = 0 and gamma with the bias need only ``W+ a``,
see ``Rule.z_form``).
``include_bias=False`` drops the bias from every denominator (the textbook's exactly
conservative form, LRP-0 of Bach et al. 2015).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

# input-modifier codes (kernels/cpu/elementwise.py)
class Mod(IntEnum):
    """Input modifier of a term: ``a``, ``a+``, ``a-``, ones (flat), the lower / upper bound (z^B)."""

    X = 0
    XPOS = 1
    XNEG = 2
    ONES = 3
    LOW = 4
    HIGH = 5


class Mask(IntEnum):
    """Which outputs a group keeps, by the sign of the layer's own pre-activation z."""

    NONE = 0
    ZPOS = 1
    ZNEG = 2


X, XPOS, XNEG, ONES, LOW, HIGH = Mod
# group masks on the sign of the layer's own z
NOMASK, ZPOS, ZNEG = Mask


def _pos(w):
    return np.maximum(w, 0)


def _neg(w):
    return np.minimum(w, 0)


def _ident(w):
    return w


def _zero(w):
    return np.zeros_like(w)


@dataclass(frozen=True)
class Term:
    """One modified contribution ``weight(W) @ mode(a) + bias(b)``."""

    mode: int
    weight: object
    bias: object


@dataclass(frozen=True)
class Group:
    """Output group: relevance ``coef * mask * R`` divided by the stabilized sum of its terms."""

    coef: float
    mask: int
    terms: tuple


def _check_eps(name, eps):
    if not isinstance(eps, (int, float, np.floating)) or isinstance(eps, bool) or not np.isfinite(eps) or eps < 0:
        raise ValueError(f"{name}: epsilon must be a finite number >= 0, got {eps!r}")
    return float(eps)


class Rule:
    """Base class of linear-layer rules. ``key`` identifies the rule for weight caching."""

    name = "rule"
    #: True when the denominator is the layer's own pre-activation z (no extra forward GEMM)
    uses_layer_z = False

    def __init__(self, epsilon=1e-6, include_bias=True):
        self.epsilon = _check_eps(type(self).__name__, epsilon)
        if not isinstance(include_bias, (bool, np.bool_)):
            raise TypeError(f"{type(self).__name__}: include_bias must be True or False, got {include_bias!r}")
        self.include_bias = bool(include_bias)

    def _b(self, f):
        return f if self.include_bias else _zero

    def z_form(self):
        """``((cz, cp), ...)`` per group when, on inputs a >= 0, the group's denominator is
        ``cz * (W a) + cp * (W+ a) + bias_g``: then the layer's stored ``z = W a + b`` and ONE
        extra GEMM ``W+ a`` give every group, instead of a GEMM with G*O rows.

        Declared only where that is as accurate as the direct evaluation: written as
        ``cz * z + cp * (W+ a) + (bias_g - cz * b)``, the three terms must have one sign
        wherever the group's mask keeps it (``plan.rule_state`` checks this per layer), so
        no large, nearly equal terms cancel. ``W- a = W a - W+ a`` (alpha-beta's negative
        part) and ``W a = z - b`` (a bias-free denominator) are such cancellations: a float32
        denominator of size 1e-4 next to terms of size 30 keeps no correct digit. None when
        the rule has no exact enough form."""
        return None

    def groups(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def key(self):
        return (type(self).__name__, self.epsilon, self.include_bias) + self._extra_key()

    def _extra_key(self):
        return ()

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self._repr_items())
        return f"{type(self).__name__}(epsilon={self.epsilon}, include_bias={self.include_bias}{extra})"

    def _repr_items(self):
        return ()


class Epsilon(Rule):
    """LRP-epsilon: ``R_i = sum_j a_i w_ij / (z_j + eps sign(z_j)) R_j`` (Bach et al. 2015; Montavon et al. 2019)."""

    name = "epsilon"

    @property
    def uses_layer_z(self):
        # without the bias, W a = z - b would cancel when |b| >> |W a|: evaluate it directly
        return self.include_bias

    def groups(self):
        return (Group(1.0, NOMASK, (Term(X, _ident, self._b(_ident)),)),)


class Z(Epsilon):
    """LRP-0 (Bach et al. 2015; Montavon et al. 2019): epsilon = 0; a zero denominator passes zero relevance."""

    name = "z"

    def __init__(self, include_bias=True):
        super().__init__(0.0, include_bias)

    def __repr__(self):
        return f"Z(include_bias={self.include_bias})"


class Gamma(Rule):
    """Generalized LRP-gamma (Montavon et al. 2019; Zennit's ``Gamma``).

    Positive outputs (z > 0) are explained by ``(W + gamma W+) a+ + (W + gamma W-) a-``,
    negative outputs by ``(W + gamma W-) a+ + (W + gamma W+) a-``; on a >= 0 this is the
    textbook ``w + gamma w+`` rule.
    """

    name = "gamma"

    def __init__(self, gamma=0.25, epsilon=1e-6, include_bias=True):
        super().__init__(epsilon, include_bias)
        if not isinstance(gamma, (int, float, np.floating)) or isinstance(gamma, bool) or not np.isfinite(gamma) or gamma < 0:
            raise ValueError(f"Gamma: gamma must be a finite number >= 0, got {gamma!r}")
        self.gamma = float(gamma)

    def _extra_key(self):
        return (self.gamma,)

    def z_form(self):
        """On a >= 0: ``(W + g W+) a = W a + g W+ a`` and ``(W + g W-) a = (1 + g) W a - g W+ a``,
        so one GEMM (W+ a) serves both groups. With the bias the denominators are
        ``z + g (W+ a + b+)`` (z > 0) and ``(1 + g) z - g (W+ a + b+)`` (z < 0), sums of
        terms of one sign; without it ``z - b`` would cancel, so no form then."""
        g = self.gamma
        return ((1.0, g), (1.0 + g, -g)) if self.include_bias else None

    def _repr_items(self):
        return (("gamma", self.gamma),)

    def groups(self):
        g = self.gamma

        def up(w):
            return w + g * np.maximum(w, 0)

        def down(w):
            return w + g * np.minimum(w, 0)

        b = self._b
        return (
            Group(1.0, ZPOS, (Term(XPOS, up, b(up)), Term(XNEG, down, _zero))),
            Group(1.0, ZNEG, (Term(XPOS, down, b(down)), Term(XNEG, up, _zero))),
        )


class AlphaBeta(Rule):
    """LRP-alpha-beta (Bach et al. 2015; Zennit's ``AlphaBeta``), alpha - beta = 1.

    ``R_i = sum_j (alpha (a_i w_ij)+ / z_j+ - beta (a_i w_ij)- / z_j-) R_j`` with the positive
    part ``W+ a+ + W- a- (+ b+)`` and negative part ``W- a+ + W+ a- (+ b-)``.
    """

    name = "alpha_beta"

    def __init__(self, alpha=1.0, beta=0.0, epsilon=1e-6, include_bias=True):
        super().__init__(epsilon, include_bias)
        for nm, v in (("alpha", alpha), ("beta", beta)):
            if not isinstance(v, (int, float, np.floating)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
                raise ValueError(f"AlphaBeta: {nm} must be a finite number >= 0, got {v!r}")
        if abs((alpha - beta) - 1.0) > 1e-12:
            raise ValueError(f"AlphaBeta: alpha - beta must equal 1 (relevance conservation), got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)

    def _extra_key(self):
        return (self.alpha, self.beta)

    def z_form(self):
        """On a >= 0 the positive part is ``W+ a (+ b+)``; the negative part ``W- a`` would be
        ``W a - W+ a``, a cancellation (see ``Rule.z_form``), so beta > 0 has no form and
        its groups are evaluated directly (one GEMM with ``[W+; W-]``)."""
        return ((0.0, 1.0),) if self.beta == 0.0 else None

    def _repr_items(self):
        return (("alpha", self.alpha), ("beta", self.beta))

    def groups(self):
        b = self._b
        out = [Group(self.alpha, NOMASK, (Term(XPOS, _pos, b(_pos)), Term(XNEG, _neg, _zero)))]
        if self.beta != 0.0:
            out.append(Group(-self.beta, NOMASK, (Term(XPOS, _neg, b(_neg)), Term(XNEG, _pos, _zero))))
        return tuple(out)


class ZPlus(Rule):
    """LRP-z+ (Montavon et al. 2017, z+-rule): ``R_i = sum_j a_i w_ij+ / sum_i a_i w_ij+ R_j``
    (on signed inputs also ``a- w-``, as Zennit's ``ZPlus``; ``b+`` in the denominator when
    ``include_bias``, as Zennit; the paper's rule is ``include_bias=False``)."""

    name = "z_plus"

    def z_form(self):
        """On a >= 0 the denominator is ``W+ a + b+`` (see ``Rule.z_form``)."""
        return ((0.0, 1.0),)

    def groups(self):
        return (Group(1.0, NOMASK, (Term(XPOS, _pos, self._b(_pos)), Term(XNEG, _neg, _zero))),)


class Flat(Rule):
    """Flat rule (Lapuschkin et al. 2019): every input of the receptive field gets an equal
    share, ``R_i = sum_j 1 / sum_i 1 R_j``; no bias."""

    name = "flat"

    def __init__(self, epsilon=1e-6):
        super().__init__(epsilon, False)

    def groups(self):
        return (Group(1.0, NOMASK, (Term(ONES, np.ones_like, _zero),)),)

    def __repr__(self):
        return f"Flat(epsilon={self.epsilon})"


class WSquare(Rule):
    """w^2-rule (Montavon et al. 2017): ``R_i = sum_j w_ij^2 / sum_i w_ij^2 R_j``
    (bias squared in the denominator when ``include_bias``, as Zennit; the paper's rule is
    ``include_bias=False``)."""

    name = "w_square"

    def groups(self):
        return (Group(1.0, NOMASK, (Term(ONES, np.square, self._b(np.square)),)),)


class ZBox(Rule):
    """z^B-rule (Montavon et al. 2017) for inputs bounded by ``low <= x <= high``:
    ``R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i (...) R_j``.

    ``low``/``high`` are scalars or arrays broadcastable to x (per channel, per pixel, or with
    one row per sample). On a layer that reads x through reshapes, ``Pad`` or ``ZeroInsert2d``
    (a ConvTranspose2d) the LRP methods carry them to its input as those layers carry x: a
    copied pixel keeps its bounds, a constant Pad value or an inserted zero ``c`` gets
    ``l = h = c`` (it contributes ``c w - c w+ - c w- = 0``, as under Conv2d's own padding);
    bounds of that input's own shape are accepted too. Behind any other layer they are the
    bounds of the layer's input. x must lie inside, up to ``BOUND_ULPS`` ulps of the bound in
    x's dtype (:func:`bound_slack`).
    """

    name = "zbox"

    def __init__(self, low, high, epsilon=1e-6):
        super().__init__(epsilon, True)
        self.low = _bound(low, "low")
        self.high = _bound(high, "high")
        if np.any(np.broadcast_arrays(self.low, self.high)[0] > np.broadcast_arrays(self.low, self.high)[1]):
            raise ValueError("ZBox: low must be <= high everywhere")

    def _extra_key(self):
        return ()  # the compiled blocks do not depend on the bounds (they enter as inputs)

    def _repr_items(self):
        return (("low", self.low if self.low.size == 1 else f"array{self.low.shape}"),
                ("high", self.high if self.high.size == 1 else f"array{self.high.shape}"))

    def groups(self):
        def mpos(w):
            return -np.maximum(w, 0)

        def mneg(w):
            return -np.minimum(w, 0)

        # bias terms b - b+ - b- cancel, exactly as in Zennit
        return (Group(1.0, NOMASK, (Term(X, _ident, _ident), Term(LOW, mpos, mpos), Term(HIGH, mneg, mneg))),)


def _bound(v, name):
    a = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"ZBox: {name} contains NaN or Inf")
    return a


#: how far an input may pass a z^B bound: this many units in the last place of the bound, in the
#: input's own dtype (float32 inputs at float32's resolution, float64 inputs at float64's)
BOUND_ULPS = 4


def bound_slack(v, dtype, ulps=BOUND_ULPS):
    """``ulps`` units in the last place of the bounds ``v`` (numpy) in ``dtype`` (float32 or
    float64, the input's), as an array of ``dtype``'s values: the rounding between a bound
    computed in one precision and an input normalized in another (``(0 - mean) / std`` in
    float64, x in float32) moves x past the bound by about one ulp, which changes the z^B
    relevance by as little; more means x is outside the box."""
    dtype = np.dtype(dtype) if np.dtype(dtype) in (np.float32, np.float64) else np.dtype(np.float32)
    return ulps * np.spacing(np.abs(np.asarray(v, dtype=dtype)))


RULES = {
    "z": Z,
    "epsilon": Epsilon,
    "gamma": Gamma,
    "alpha_beta": AlphaBeta,
    "z_plus": ZPlus,
    "flat": Flat,
    "w_square": WSquare,
    "zbox": ZBox,
}

__all__ = ["Rule", "Z", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "Flat", "WSquare", "ZBox"]
