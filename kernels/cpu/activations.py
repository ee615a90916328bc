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

ELU, GELU (exact and tanh) and SiLU run in blocks through :func:`_exp_nonpos`, an ``exp`` written
so that the compiler vectorizes it (Cody-Waite reduction by ln 2, a degree-13 Taylor polynomial on
[-ln2/2, ln2/2], the power of two built in the float's exponent bits; 1-2 ulps, subnormal results
included), and for the exact GELU :func:`_erfc_block`, ``erfc`` by the method and rational
approximations of fdlibm's ``s_erf.c`` (Sun Microsystems 1993) with every branch computed and
the right one selected; Softplus and Mish call the C library's scalar ``log1p`` and ``tanh``.
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
_2_M128 = 2.0 ** -128
_BLOCK = 512  # elements per block of the vectorized path (its buffers stay in L1)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _exp_nonpos(u, bits, out, minus_one):
    """``out = exp(u)`` (``exp(u) - 1`` with ``minus_one``, accurate near 0) for ``u <= 0``, in
    loops without calls, which LLVM vectorizes. ``bits`` (int64, u's size) is scratch."""
    for i in range(u.size):
        x = max(u[i], -746.0)  # exp(-746) is below the smallest subnormal: 0 either way
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
        # 2^n in the exponent bits; below the normal range (n < -1022) as 2^(n + 128) 2^-128
        bits[i] = (np.int64(n) + (1023 + 128 if n < -1022.0 else 1023)) << 52
        out[i] = q
    scale = bits.view(np.float64)
    for i in range(u.size):
        sub = math.floor(max(u[i], -746.0) * _LOG2E + 0.5) < -1022.0  # the same n as above
        e = (out[i] + 1.0) * scale[i]
        if minus_one:  # exp(u) - 1: the polynomial itself where n = 0 (no cancellation)
            e = out[i] if scale[i] == 1.0 else e - 1.0
        if sub:
            e = -1.0 if minus_one else e * _2_M128
        out[i] = e if u[i] == u[i] else u[i]  # NaN stays NaN (max() above dropped it)


# erfc's rational approximations (the fdlibm / Sun Microsystems 1993 s_erf.c method and coefficients:
# |x| < 0.84375, 0.84375 <= |x| < 1.25, 1.25 <= |x| < 1/0.35, 1/0.35 <= |x| < 28; errors below 2^-57)
_ERX = 8.45062911510467529297e-01
_PP = (1.28379167095512558561e-01, -3.25042107247001499370e-01, -2.84817495755985104766e-02,
       -5.77027029648944159157e-03, -2.37630166566501626084e-05)
_QQ = (3.97917223959155352819e-01, 6.50222499887672944485e-02, 5.08130628187576562776e-03,
       1.32494738004321644526e-04, -3.96022827877536812320e-06)
_PA = (-2.36211856075265944077e-03, 4.14856118683748331666e-01, -3.72207876035701323847e-01,
       3.18346619901161753674e-01, -1.10894694282396677476e-01, 3.54783043256182359371e-02,
       -2.16637559486879084300e-03)
_QA = (1.06420880400844228286e-01, 5.40397917702171048937e-01, 7.18286544141962662868e-02,
       1.26171219808761642112e-01, 1.36370839120290507362e-02, 1.19844998467991074170e-02)
_RA = (-9.86494403484714822705e-03, -6.93858572707181764372e-01, -1.05586262253232909814e+01,
       -6.23753324503260060396e+01, -1.62396669462573470355e+02, -1.84605092906711035994e+02,
       -8.12874355063065934246e+01, -9.81432934416914548592e+00)
_SA = (1.96512716674392571292e+01, 1.37657754143519042600e+02, 4.34565877475229228821e+02,
       6.45387271733267880336e+02, 4.29008140027567833386e+02, 1.08635005541779435134e+02,
       6.57024977031928170135e+00, -6.04244152148580987438e-02)
_RB = (-9.86494292470009928597e-03, -7.99283237680523006574e-01, -1.77579549177547519889e+01,
       -1.60636384855821916062e+02, -6.37566443368389627722e+02, -1.02509513161107724954e+03,
       -4.83519191608651397019e+02)
_SB = (3.03380607434824582924e+01, 3.25792512996573918826e+02, 1.53672958608443695994e+03,
       3.19985821950859553908e+03, 2.55305040643316442583e+03, 4.74528541206955367215e+02,
       -2.24409524465858183362e+01)


@nb.njit(cache=True, inline="always")
def _pq(t):  # erf(x) - x)/x on |x| < 0.84375, t = x^2
    p = _PP[0] + t * (_PP[1] + t * (_PP[2] + t * (_PP[3] + t * _PP[4])))
    return p / (1.0 + t * (_QQ[0] + t * (_QQ[1] + t * (_QQ[2] + t * (_QQ[3] + t * _QQ[4])))))


@nb.njit(cache=True, inline="always")
def _pqa(t):  # erf(1 + t) - erx on 0.84375 <= |x| < 1.25, t = |x| - 1
    p = _PA[0] + t * (_PA[1] + t * (_PA[2] + t * (_PA[3] + t * (_PA[4] + t * (_PA[5] + t * _PA[6])))))
    return p / (1.0 + t * (_QA[0] + t * (_QA[1] + t * (_QA[2] + t * (_QA[3] + t * (_QA[4] + t * _QA[5]))))))


@nb.njit(cache=True, inline="always")
def _rsa(t):  # log(x erfc(x)) + x^2 - 0.5625 on 1.25 <= |x| < 1/0.35, t = 1/x^2
    r = _RA[0] + t * (_RA[1] + t * (_RA[2] + t * (_RA[3] + t * (_RA[4] + t * (_RA[5] + t * (_RA[6] + t * _RA[7]))))))
    q = _SA[0] + t * (_SA[1] + t * (_SA[2] + t * (_SA[3] + t * (_SA[4] + t * (_SA[5] + t * (_SA[6] + t * _SA[7]))))))
    return r / (1.0 + t * q)


@nb.njit(cache=True, inline="always")
def _rsb(t):  # the same on 1/0.35 <= |x| < 28
    r = _RB[0] + t * (_RB[1] + t * (_RB[2] + t * (_RB[3] + t * (_RB[4] + t * (_RB[5] + t * _RB[6])))))
    q = _SB[0] + t * (_SB[1] + t * (_SB[2] + t * (_SB[3] + t * (_SB[4] + t * (_SB[5] + t * _SB[6])))))
    return r / (1.0 + t * q)


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _erfc_block(x, bits, trunc, u1, u2, e1, e2, out):
    """``out = erfc(x)`` for a block, every branch of the fdlibm method computed and the right one
    selected (so that the loops vectorize); the two exponentials through :func:`_exp_nonpos`."""
    m = x.size
    for i in range(m):
        trunc[i] = abs(x[i])
    tb = trunc.view(np.int64)
    for i in range(m):  # |x| with its low 32 bits cleared: exp(-|x|^2) as exp(-t^2) exp((t - |x|)(t + |x|))
        tb[i] = tb[i] & np.int64(-4294967296)
    for i in range(m):
        ax = abs(x[i])
        t = trunc[i]
        s = 1.0 / max(ax * ax, 1.5625)  # 1 / x^2 (clamped where this branch is not used)
        u1[i] = -t * t - 0.5625
        u2[i] = (t - ax) * (t + ax) + (_rsa(s) if ax < 2.857142857142857 else _rsb(s))
    _exp_nonpos(u1, bits, e1, False)
    _exp_nonpos(u2, bits, e2, False)
    for i in range(m):
        xi = x[i]
        ax = abs(xi)
        z = xi * xi
        y = _pq(z)
        small = 1.0 - (xi + xi * y) if xi < 0.25 else 0.5 - ((xi - 0.5) + xi * y)
        sd = ax - 1.0
        pq = _pqa(sd)
        mid = (1.0 - _ERX) - pq if xi >= 0.0 else 1.0 + (_ERX + pq)
        r = e1[i] * e2[i] / max(ax, 1.25)
        tail = r if xi >= 0.0 else 2.0 - r
        if ax >= 28.0:  # fdlibm's last branch: 0 or 2 (also for +-inf, where the tail is inf - inf)
            tail = 0.0 if xi > 0.0 else 2.0
        v = small if ax < 0.84375 else (mid if ax < 1.25 else tail)
        out[i] = v if xi == xi else xi


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _gelu_block(z, g, grad, x, bits, trunc, u1, u2, e1, e2, ec, out):
    """Exact GELU ``z Phi(z) = z/2 erfc(-z/sqrt 2)`` (or ``g`` times its derivative
    ``Phi(z) + z phi(z)``) of one block, vectorized."""
    m = z.size
    for i in range(m):
        x[i] = -np.float64(z[i]) * _SQRT1_2
    _erfc_block(x, bits, trunc, u1, u2, e1, e2, ec)
    if not grad:
        for i in range(m):
            out[i] = 0.5 * np.float64(z[i]) * ec[i]
        return
    for i in range(m):
        zc = min(max(np.float64(z[i]), -1e3), 1e3)
        u1[i] = -0.5 * zc * zc
    _exp_nonpos(u1, bits, e1, False)
    for i in range(m):
        zi = np.float64(z[i])
        out[i] = g[i] * (0.5 * ec[i] + zi * _INV_SQRT_2PI * e1[i])


@nb.njit(cache=True, nogil=True, error_model="numpy")
def _vector_block(z, g, code, p0, grad, u, e, bits, out):
    """ELU / GELU (tanh) / SiLU values (``grad`` false) or ``g * f'`` of one block (the same
    formulas as :func:`_f`, :func:`_df`)."""
    m = z.size
    if code == 2:  # ELU: alpha expm1(min(z, 0)); f' = alpha exp(min(z, 0))
        for i in range(m):
            zi = np.float64(z[i])
            u[i] = 0.0 if zi > 0.0 else zi  # min(z, 0), NaN kept
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
    if code == 3:
        w = np.empty((8, _BLOCK))
    for b0 in range(0, z.size, _BLOCK):
        b1 = min(z.size, b0 + _BLOCK)
        m = b1 - b0
        if code == 3:
            _gelu_block(z[b0:b1], g[b0:b1], grad, u[:m], bits[:m], w[0, :m], w[1, :m], w[2, :m], w[3, :m],
                        w[4, :m], w[5, :m], out[b0:b1])
        else:
            _vector_block(z[b0:b1], g[b0:b1], code, p0, grad, u[:m], e[:m], bits[:m], out[b0:b1])


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def param_act(z, code, p0, p1, out, part, parts):
    """``out = f(z)`` (flat arrays of one size) for the activation ``code``."""
    if out.size != z.size or code < 0 or code > 9:
        raise ValueError("param_act: z and out must have one size, code in 0..9")
    lo, hi = z.size * part // parts, z.size * (part + 1) // parts
    z, out = z[lo:hi], out[lo:hi]
    if code == 2 or code == 3 or code == 4 or code == 5:
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
    if code == 2 or code == 3 or code == 4 or code == 5:
        _vector_path(z, g, code, p0, True, out)
        return
    for i in range(g.size):
        out[i] = g[i] * _df(np.float64(z[i]), code, p0, p1)
