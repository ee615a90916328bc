"""The activations without a fused-epilogue code, as elementwise kernels: LeakyReLU, Softplus,
ELU, GELU (exact and tanh), SiLU, Hardswish, Hardsigmoid, ReLU6, Mish (torch's formulas).

Codes (``PARAM_ACT_CODES``; ``p0``, ``p1`` the layer's parameters): 0 LeakyReLU (``p0`` the
negative slope), 1 Softplus (``p0`` beta, ``p1`` threshold), 2 ELU (``p0`` alpha), 3 GELU
(exact: ``z Phi(z)``, Hendrycks & Gimpel 2016), 4 GELU (tanh approximation, same paper), 5 SiLU
(``z sigmoid(z)``, Elfwing et al. 2018), 6 Hardswish, 7 Hardsigmoid (Howard et al. 2019),
8 ReLU6, 9 Mish (``z tanh(softplus(z))``, Misra 2019).

Each value is computed in float64 and rounded once to the output's dtype, from forms that
neither overflow nor cancel for any finite ``z``: exponentials only of non-positive arguments,
``z Phi(z)`` through ``erfc`` (no cancellation for ``z << 0``), softplus as
``max(z, 0) + log1p(exp(-|z|))``. At the kinks ``f'`` takes the value torch's autograd gives
(ELU'(0) = alpha, ReLU6'(0) = ReLU6'(6) = 0, Hardsigmoid'(+-3) = 0, Hardswish'(-3) = 0,
Hardswish'(3) = 1, LeakyReLU'(0) = slope, Softplus at the threshold: linear above it only).

ELU, GELU (tanh) and SiLU, whose only transcendental function is ``exp``, run in blocks through
:func:`_exp_nonpos`, an ``exp`` written so that the compiler vectorizes it (Cody-Waite reduction
by ln 2, a degree-13 Taylor polynomial on [-ln2/2, ln2/2], the power of two built in the float's
exponent bits; 1-2 ulps, subnormal results included); the others call
the C library's scalar functions (erfc, log1p, tanh), which no compiler vectorizes here.
"""
import math

import numba as nb
import numpy as np

from .threads import threaded

PARAM_ACT_CODES = {"LeakyReLU": 0, "Softplus": 1, "ELU": 2, "GELU": 3, "GELU_tanh": 4, "SiLU": 5,
                   "Hardswish": 6, "Hardsigmoid": 7, "ReLU6": 8, "Mish": 9}

_SQRT1_2 = 0.7071067811865476  # 1 / sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1 / sqrt(2 pi)
_GELU_K = 0.7978845608028654  # sqrt(2 / pi)
_GELU_C = 0.044715
_GELU_CLIP = 100.0  # |z| beyond which the tanh form is saturated in float64


@nb.njit(cache=True, inline="always")
def _sigmoid(u):
    if u >= 0.0:
        return 1.0 / (1.0 + math.exp(-u))
    e = math.exp(u)
    return e / (1.0 + e)


@nb.njit(cache=True, inline="always")
def _softplus(u):
    return max(u, 0.0) + math.log1p(math.exp(-abs(u)))


@nb.njit(cache=True, inline="always")
def _f(z, code, p0, p1):
    if code == 0:
        return z if z > 0.0 else z * p0
    if code == 1:
        bz = z * p0
        return z if bz > p1 else _softplus(bz) / p0
    if code == 2:
        return z if z > 0.0 else p0 * math.expm1(min(z, 0.0))
    if code == 3:
        return 0.5 * z * math.erfc(-z * _SQRT1_2)
    if code == 4:
        zc = min(max(z, -_GELU_CLIP), _GELU_CLIP)
        return z * _sigmoid(2.0 * _GELU_K * (zc + _GELU_C * zc * zc * zc))  # z/2 (1 + tanh u)
    if code == 5:
        return z * _sigmoid(z)
    if code == 6:
        return z * min(max(z + 3.0, 0.0), 6.0) / 6.0
    if code == 7:
        return min(max(z + 3.0, 0.0), 6.0) / 6.0
    if code == 8:
        return min(max(z, 0.0), 6.0)
    return z * math.tanh(_softplus(z))


@nb.njit(cache=True, inline="always")
def _df(z, code, p0, p1):
    if code == 0:
        return 1.0 if z > 0.0 else p0
    if code == 1:
        bz = z * p0
        return 1.0 if bz > p1 else _sigmoid(bz)
    if code == 2:
        return 1.0 if z > 0.0 else p0 * math.exp(min(z, 0.0))
    if code == 3:
        zc = min(max(z, -1e3), 1e3)  # exp(-zc^2/2) is 0 there already
        return 0.5 * math.erfc(-z * _SQRT1_2) + z * _INV_SQRT_2PI * math.exp(-0.5 * zc * zc)
    if code == 4:
        zc = min(max(z, -_GELU_CLIP), _GELU_CLIP)
        u2 = 2.0 * _GELU_K * (zc + _GELU_C * zc * zc * zc)
        s = _sigmoid(u2)
        return s + zc * 2.0 * s * _sigmoid(-u2) * (_GELU_K * (1.0 + 3.0 * _GELU_C * zc * zc))
    if code == 5:
        return _sigmoid(z) + z * _sigmoid(z) * _sigmoid(-z)
    if code == 6:
        if z <= -3.0:
            return 0.0
        return z / 3.0 + 0.5 if z < 3.0 else 1.0
    if code == 7:
        return 1.0 / 6.0 if -3.0 < z < 3.0 else 0.0
    if code == 8:
        return 1.0 if 0.0 < z < 6.0 else 0.0
    t = math.tanh(_softplus(z))
    return t + z * _sigmoid(z) * (1.0 - t * t)


_LOG2E = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts (Cody-Waite): n * _LN2_HI is exact
_LN2_LO = 1.90821492927058770002e-10
_128_LN2 = 128 * 0.6931471805599453  # 128 ln 2 (exact product of the double ln 2)
_2_M128 = 2.0 ** -128
_BLOCK = 512  # elements per block of the vectorized path (its buffers stay in L1)
_VECTOR_CODES = (2, 4, 5)  # ELU, GELU (tanh), SiLU


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _exp_nonpos(u, bits, out, minus_one):
    """``out = exp(u)`` (``exp(u) - 1`` with ``minus_one``, accurate near 0) for ``u <= 0``, in
    loops without calls, which LLVM vectorizes. ``bits`` (int64, u's size) is scratch."""
    for i in range(u.size):
        # below -708 exp(u) is subnormal: exp(u + 128 ln2) 2^-128 (the product rounds to it)
        x = max(u[i] + (_128_LN2 if u[i] < -708.0 else 0.0), -708.0)
        n = math.floor(x * _LOG2E + 0.5)
        r = (x - n * _LN2_HI) - n * _LN2_LO  # |r| <= ln2/2 (+ rounding)
        q = 1.0 / 6227020800.0  # expm1(r) = r + r^2/2! + ... + r^13/13!
        q = q * r + 1.0 / 479001600.0
        q = q * r + 1.0 / 39916800.0
        q = q * r + 1.0 / 3628800.0
        q = q * r + 1.0 / 362880.0
        q = q * r + 1.0 / 40320.0
        q = q * r + 1.0 / 5040.0
        q = q * r + 1.0 / 720.0
        q = q * r + 1.0 / 120.0
        q = q * r + 1.0 / 24.0
        q = q * r + 1.0 / 6.0
        q = q * r + 0.5
        q = q * r * r + r
        bits[i] = (np.int64(n) + 1023) << 52  # 2^n, n in [-1022, 0]
        out[i] = q
    scale = bits.view(np.float64)
    for i in range(u.size):
        e = (out[i] + 1.0) * scale[i]
        if minus_one:  # exp(u) - 1: the polynomial itself where n = 0 (no cancellation)
            e = out[i] if scale[i] == 1.0 else e - 1.0
        if u[i] < -708.0:
            e = -1.0 if minus_one else (out[i] + 1.0) * scale[i] * _2_M128
        out[i] = e


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _vector_block(z, g, code, p0, grad, u, e, bits, out):
    """ELU / GELU (tanh) / SiLU values (``grad`` false) or ``g * f'`` of one block (the same
    formulas as :func:`_f`, :func:`_df`)."""
    m = z.size
    if code == 2:  # ELU: alpha expm1(min(z, 0)); f' = alpha exp(min(z, 0))
        for i in range(m):
            u[i] = min(np.float64(z[i]), 0.0)
        _exp_nonpos(u, bits, e, not grad)
        for i in range(m):
            zi = np.float64(z[i])
            if grad:
                out[i] = g[i] * (1.0 if zi > 0.0 else p0 * e[i])
            else:
                out[i] = zi if zi > 0.0 else p0 * e[i]
        return
    for i in range(m):  # the sigmoid's argument v: z (SiLU) or 2u of GELU's tanh form
        zi = np.float64(z[i])
        if code == 4:
            zc = min(max(zi, -_GELU_CLIP), _GELU_CLIP)
            zi = 2.0 * _GELU_K * (zc + _GELU_C * zc * zc * zc)
        u[i] = -abs(zi)
    _exp_nonpos(u, bits, e, False)
    for i in range(m):
        zi = np.float64(z[i])
        v = zi
        zc = zi
        if code == 4:
            zc = min(max(zi, -_GELU_CLIP), _GELU_CLIP)
            v = 2.0 * _GELU_K * (zc + _GELU_C * zc * zc * zc)
        big = 1.0 / (1.0 + e[i])  # sigmoid(|v|)
        small = e[i] / (1.0 + e[i])  # sigmoid(-|v|), no cancellation
        s = big if v >= 0.0 else small
        sn = small if v >= 0.0 else big  # sigmoid(-v)
        if not grad:
            out[i] = zi * s
        elif code == 5:
            out[i] = g[i] * (s + zi * s * sn)
        else:
            out[i] = g[i] * (s + zc * 2.0 * s * sn * (_GELU_K * (1.0 + 3.0 * _GELU_C * zc * zc)))


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _vector_path(z, g, code, p0, grad, out):
    u = np.empty(_BLOCK)
    e = np.empty(_BLOCK)
    bits = np.empty(_BLOCK, np.int64)
    for b0 in range(0, z.size, _BLOCK):
        b1 = min(z.size, b0 + _BLOCK)
        m = b1 - b0
        _vector_block(z[b0:b1], g[b0:b1], code, p0, grad, u[:m], e[:m], bits[:m], out[b0:b1])


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def param_act(z, code, p0, p1, out, part, parts):
    """``out = f(z)`` (flat arrays of one size) for the activation ``code``."""
    if out.size != z.size or code < 0 or code > 9:
        raise ValueError("param_act: z and out must have one size, code in 0..9")
    lo, hi = z.size * part // parts, z.size * (part + 1) // parts
    z, out = z[lo:hi], out[lo:hi]
    if code == 2 or code == 4 or code == 5:
        _vector_path(z, z, code, p0, False, out)
        return
    for i in range(z.size):
        out[i] = _f(np.float64(z[i]), code, p0, p1)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def param_act_grad(g, z, code, p0, p1, out, part, parts):
    """``out = g * f'(z)`` (flat arrays of one size): the chain rule through the activation."""
    if z.size != g.size or out.size != g.size or code < 0 or code > 9:
        raise ValueError("param_act_grad: g, z and out must have one size, code in 0..9")
    lo, hi = g.size * part // parts, g.size * (part + 1) // parts
    g, z, out = g[lo:hi], z[lo:hi], out[lo:hi]
    if code == 2 or code == 4 or code == 5:
        _vector_path(z, g, code, p0, True, out)
        return
    for i in range(g.size):
        out[i] = g[i] * _df(np.float64(z[i]), code, p0, p1)
