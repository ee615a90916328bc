"""Fused elementwise kernels around the BLAS contractions.

Activation codes (shared with ``relprop.core.graph``): 0 identity, 1 ReLU, 2 tanh, 3 sigmoid.
Mask codes of an LRP rule group: 0 none, 1 keep where z > 0, 2 keep where z < 0.
Input-modifier codes: 0 x, 1 x+ = max(x, 0), 2 x- = min(x, 0), 3 ones, 4 low, 5 high.
"""
import math

import numba as nb

from .threads import threaded


@nb.njit(cache=True, inline="always")
def _act(z, act):
    if act == 1:
        return z if z > 0 else 0.0 * z
    if act == 2:
        return math.tanh(z)
    if act == 3:
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return z


@nb.njit(cache=True, inline="always")
def _dact(z, a, act):
    """f'(z) written with the stored input z (ReLU) or output a (tanh, sigmoid)."""
    if act == 1:
        return 1.0 if z > 0 else 0.0
    if act == 2:
        return 1.0 - a * a
    if act == 3:
        return a * (1.0 - a)
    return 1.0


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def bias_act_from_gemm(zg, bias, act, a_out, z_out, store_z, part, parts):
    """Conv epilogue: ``z[n, o, p] = zg[o, n*P + p] + b[o]``, ``a = f(z)``.

    ``zg`` (O, N*P) is the GEMM output, ``a_out``/``z_out`` (N, O, P); ``z_out`` is written
    only when ``store_z`` (the method needs the pre-activation).
    """
    n_, o_, p_ = a_out.shape
    if bias.shape[0] != o_ or zg.shape[0] < o_ or zg.shape[1] != n_ * p_ or (store_z and z_out.shape != a_out.shape):
        raise ValueError("bias_act_from_gemm: zg must be (O, N*P), bias (O,) and z_out a_out's shape (N, O, P)")
    for t in range(n_ * o_ * part // parts, n_ * o_ * (part + 1) // parts):
        n = t // o_
        o = t % o_
        b = bias[o]
        for p in range(p_):
            z = zg[o, n * p_ + p] + b
            if store_z:
                z_out[n, o, p] = z
            a_out[n, o, p] = _act(z, act)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def bias_act_rows(z, bias, act, a_out, store_z, part, parts):
    """Dense epilogue, in place on ``z`` (N, O): ``z += b``; ``a_out = f(z)``.

    With ``store_z`` false and an activation, ``a_out`` may be ``z`` itself.
    """
    n_, o_ = z.shape
    if bias.shape[0] != o_ or a_out.shape != z.shape:
        raise ValueError("bias_act_rows: bias must be (O,) and a_out z's shape (N, O)")
    lo, hi = n_ * part // parts, n_ * (part + 1) // parts
    z, a_out = z[lo:hi], a_out[lo:hi]  # this part's rows: loops from 0 vectorize
    for n in range(hi - lo):
        for o in range(o_):
            v = z[n, o] + bias[o]
            if store_z:
                z[n, o] = v
            a_out[n, o] = _act(v, act)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def act_backward(g, z, a, act, out, part, parts):
    """Chain rule through an activation: ``out = g * f'(z)`` (flat arrays)."""
    if z.size != g.size or a.size != g.size or out.size != g.size:
        raise ValueError("act_backward: g, z, a and out must have one size")
    lo, hi = g.size * part // parts, g.size * (part + 1) // parts
    g, z, a, out = g[lo:hi], z[lo:hi], a[lo:hi], out[lo:hi]  # loops from 0 vectorize (no wrap-around checks)
    for i in range(g.size):
        out[i] = g[i] * _dact(z[i], a[i], act)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def act_rescale_backward(g, z, z0, a, a0, act, eps, out, part, parts):
    """DeepLIFT Rescale multiplier (Shrikumar et al. 2017; Ancona et al. 2018, Prop. 2).

    ``out = g * (f(z) - f(z0)) / (z - z0)``, and ``g * f'(z)`` where ``|z - z0| < eps``
    (Captum's convention, eps = 1e-10).
    """
    if z.size != g.size or z0.size != g.size or a.size != g.size or a0.size != g.size or out.size != g.size:
        raise ValueError("act_rescale_backward: g, z, z0, a, a0 and out must have one size")
    lo, hi = g.size * part // parts, g.size * (part + 1) // parts
    g, z, z0, a, a0, out = g[lo:hi], z[lo:hi], z0[lo:hi], a[lo:hi], a0[lo:hi], out[lo:hi]
    for i in range(g.size):
        dz = z[i] - z0[i]
        if abs(dz) < eps:
            out[i] = g[i] * _dact(z[i], a[i], act)
        else:
            out[i] = g[i] * ((a[i] - a0[i]) / dz)


@nb.njit(cache=True, inline="always")
def _stab_div(r, den, eps):
    """``r / (den + eps * sign(den))`` with sign(0) = +1 (Zennit's convention).

    eps == 0 is LRP-0: the ratio is taken as 0 where the denominator is exactly 0.
    """
    if eps == 0.0:
        return 0.0 * r if den == 0.0 else r / den
    return r / (den + eps if den >= 0 else den - eps)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def lrp_ratio(zg, zp, zmode, cz, cp, bvec, bias_g, zorig, r, coefs, masks, eps, s, part, parts):
    """The ratio step of an LRP rule with G output groups (the rules of Montavon et al. 2019).

    For group g and output unit (n, o, p), with ``m = n*P + p``, ``k = g*O + o``::

        den = zorig[n, o, p] + bias_g[k]                                  zmode 0 (epsilon, z)
        den = zg[k, m] + bias_g[k]                                        zmode 1 (B @ a)
        den = cz[g] (zorig[n, o, p] - bvec[o]) + cp[g] zg[o, m] + bias_g[k]   zmode 2 (W+ @ a)
        den = cz[g] (zorig[n, o, p] - bvec[o]) + cp[g] zp[n, o, p] + bias_g[k]   zmode 3 (W+ @ a
              computed in the forward pass, NCHW)
        den = zp[n, k, p] + bias_g[k]                                     zmode 4 (B @ a computed in
              the forward pass, (N, G*O, P))
        s[n, k, p] = coefs[g] * mask_g(zorig[n, o, p]) * r[n, o, p] / stab(den)

    ``zorig`` is the layer's stored pre-activation; ``s`` (N, G*O, P) is NCHW, ready for
    the transposed contraction.
    """
    n_, o_, p_ = r.shape
    g_ = coefs.shape[0]
    for n in range(n_ * part // parts, n_ * (part + 1) // parts):
        for g in range(g_):
            mk = masks[g]
            cf = coefs[g]
            czg = cz[g]
            cpg = cp[g]
            for o in range(o_):
                k = g * o_ + o
                bg = bias_g[k]
                for p in range(p_):
                    zo = zorig[n, o, p]
                    if (mk == 1 and not zo > 0) or (mk == 2 and not zo < 0):
                        s[n, k, p] = 0.0
                        continue
                    if zmode == 0:
                        den = zo + bg
                    elif zmode == 1:
                        den = zg[k, n * p_ + p] + bg
                    elif zmode == 2:
                        den = czg * (zo - bvec[o]) + cpg * zg[o, n * p_ + p] + bg
                    elif zmode == 3:
                        den = czg * (zo - bvec[o]) + cpg * zp[n, o, p] + bg
                    else:
                        den = zp[n, k, p] + bg
                    s[n, k, p] = cf * _stab_div(r[n, o, p], den, eps)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def lrp_ratio_rows(zg, zmode, cz, cp, bvec, bias_g, zorig, r, coefs, masks, eps, s, part, parts):
    """``lrp_ratio`` for Dense layers, rows layout: ``zg`` (N, G*O) or (N, O) (zmode 2),
    ``zorig``/``r`` (N, O), ``s`` (N, G*O). The unit loop is innermost and branch-free per
    zmode so it vectorizes (the NCHW kernel's spatial loop has length 1 here)."""
    n_, o_ = r.shape
    g_ = coefs.shape[0]
    lo, hi = n_ * part // parts, n_ * (part + 1) // parts
    zg, zorig, r, s = zg[lo:hi], zorig[lo:hi], r[lo:hi], s[lo:hi]  # this part's rows
    for n in range(hi - lo):
        for g in range(g_):
            mk = masks[g]
            cf = coefs[g]
            czg = cz[g]
            cpg = cp[g]
            base = g * o_
            if zmode == 0 and mk == 0 and eps > 0:  # epsilon rule: a tight loop that vectorizes
                for o in range(o_):
                    den = zorig[n, o] + bias_g[base + o]
                    s[n, base + o] = cf * r[n, o] / (den + eps if den >= 0 else den - eps)
                continue
            for o in range(o_):
                zo = zorig[n, o]
                if zmode == 0:
                    den = zo + bias_g[base + o]
                elif zmode == 1:
                    den = zg[n, base + o] + bias_g[base + o]
                else:
                    den = czg * (zo - bvec[o]) + cpg * zg[n, o] + bias_g[base + o]
                v = cf * _stab_div(r[n, o], den, eps)
                keep = mk == 0 or (mk == 1 and zo > 0) or (mk == 2 and zo < 0)
                s[n, base + o] = v if keep else 0.0 * v


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def combine_from_gemm(cg, xs, mods, out, part, parts):
    """Epilogue of a transposed contraction ``cg`` (Ct, N*P) back to NCHW ``out`` (N, C, P).

    ``mods == 0``: ``out[n, c, p] = cg[c, n*P + p]`` (gradient).
    ``mods  > 0``: ``out[n, c, p] = sum_m xs[n, m*C + c, p] * cg[m*C + c, n*P + p]``, the
    ``a'_i (W'^T s)_i`` reduction of an LRP rule over its stacked input modifiers.
    """
    n_, c_, p_ = out.shape
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        for p in range(p_):
            m = n * p_ + p
            if mods == 0:
                out[n, c, p] = cg[c, m]
            else:
                acc = 0.0
                for mi in range(mods):
                    acc += xs[n, mi * c_ + c, p] * cg[mi * c_ + c, m]
                out[n, c, p] = acc


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def grad_to_rows(g, z, a, act, s, part, parts):
    """Layout move for the backward GEMM of gradient-type methods, fused with the
    derivative of the activation that follows the layer: ``s[o, n*P + p] = g[n, o, p] * f'(z)``.
    ``act == 0`` is a plain transpose."""
    n_, o_, p_ = g.shape
    for t in range(n_ * o_ * part // parts, n_ * o_ * (part + 1) // parts):
        n = t // o_
        o = t % o_
        for p in range(p_):
            if act == 0:
                s[o, n * p_ + p] = g[n, o, p]
            else:
                s[o, n * p_ + p] = g[n, o, p] * _dact(z[n, o, p], a[n, o, p], act)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def stacked_mul_sum(xs, c, mods, out, part, parts):
    """``out[n, f] = sum_m xs[n, m*F + f] * c[n, m*F + f]`` for (N, mods*F) inputs."""
    n_, f_ = out.shape
    if xs.shape[0] != n_ or c.shape[0] != n_ or xs.shape[1] != mods * f_ or c.shape[1] != mods * f_:
        raise ValueError("stacked_mul_sum: xs and c must be (N, mods*F) for out (N, F)")
    lo, hi = n_ * part // parts, n_ * (part + 1) // parts
    xs, c, out = xs[lo:hi], c[lo:hi], out[lo:hi]  # this part's rows
    if mods == 1:
        for n in range(hi - lo):
            for f in range(f_):
                out[n, f] = xs[n, f] * c[n, f]
        return
    for n in range(hi - lo):
        for f in range(f_):
            acc = 0.0
            for m in range(mods):
                acc += xs[n, m * f_ + f] * c[n, m * f_ + f]
            out[n, f] = acc


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def stack_input_mods(x, modes, low, high, out, part, parts):
    """Stack the rule's modified inputs along the feature axis.

    ``x`` (N, F); ``out`` (N, len(modes)*F); ``low``/``high`` (N, F) are read only for
    modes 4 and 5 (the z^B rule's bounds).
    """
    n_, f_ = x.shape
    if out.shape[0] != n_ or out.shape[1] != modes.shape[0] * f_ or low.shape != x.shape or high.shape != x.shape:
        raise ValueError("stack_input_mods: out must be (N, len(modes)*F) and low, high x's shape (N, F)")
    lo, hi = n_ * part // parts, n_ * (part + 1) // parts
    x, low, high, out = x[lo:hi], low[lo:hi], high[lo:hi], out[lo:hi]  # this part's rows
    for n in range(hi - lo):
        for mi in range(modes.shape[0]):
            md = modes[mi]
            base = mi * f_
            for f in range(f_):
                v = x[n, f]
                if md == 1:
                    v = v if v > 0 else 0.0 * v
                elif md == 2:
                    v = v if v < 0 else 0.0 * v
                elif md == 3:
                    v = 1.0
                elif md == 4:
                    v = low[n, f]
                elif md == 5:
                    v = high[n, f]
                out[n, base + f] = v


@nb.njit(cache=True)
def all_nonnegative(x):
    """True when no element of the flat array ``x`` is negative."""
    for i in range(x.size):
        if x[i] < 0:
            return False
    return True


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def row_sums(a, out, part, parts):
    """``out[n] = sum_f a[n, f]`` accumulated in float64 (``out`` float64): the totals of an
    attribution that its conservation / completeness error compares with the scores."""
    n_ = a.shape[0]
    if out.shape[0] != n_:
        raise ValueError("row_sums: out must have one entry per row of a")
    for n in range(n_ * part // parts, n_ * (part + 1) // parts):
        acc = 0.0
        for f in range(a.shape[1]):
            acc += a[n, f]
        out[n] = acc
