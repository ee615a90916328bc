"""Fused elementwise kernels around the cuBLAS contractions, CuPy.

Activation codes (shared with ``relprop.core.graph``): 0 identity, 1 ReLU, 2 tanh, 3 sigmoid.
Mask codes of an LRP rule group: 0 none, 1 keep where z > 0, 2 keep where z < 0.
Input-modifier codes: 0 x, 1 x+ = max(x, 0), 2 x- = min(x, 0), 3 ones, 4 low, 5 high.

The CUDA code is ``elementwise.cu``; arguments and results as in
``relprop.kernels.cpu.elementwise``. Parameter vectors (``bias``, ``bias_g``, ``coefs``,
``masks``, ``cz``, ``cp``, ``bvec``, ``modes``) may be numpy arrays, copied to the device on
every call, or device arrays of the kernel's dtype (int64 for ``masks``/``modes``), used as
they are.
"""
import cupy
import numpy as np

from ._launch import (check, code, float_dtype, index_scalars, launch, needs_int64, operand, out_buffer,
                      vector, write_back)


def bias_act_from_gemm(zg, bias, act, a_out, z_out, store_z):
    """Conv epilogue: ``z[n, o, p] = zg[o, n*P + p] + b[o]``, ``a = f(z)``.

    ``zg`` (O, N*P) is the GEMM output, ``a_out``/``z_out`` (N, O, P); ``z_out`` is written
    only when ``store_z`` (the method needs the pre-activation).
    """
    dt = float_dtype(a_out, "a_out")
    n, o, p = a_out.shape
    zb = operand(zg, dt)
    check(zb.ndim == 2 and zb.shape[0] >= o and zb.shape[1] >= n * p,
          f"bias_act_from_gemm: zg has shape {tuple(zb.shape)}, expected {(o, n * p)}")
    check(bias.shape == (o,), f"bias_act_from_gemm: bias has shape {tuple(bias.shape)}, expected {(o,)}")
    bb, ab = vector(bias, dt), out_buffer(a_out, dt)
    zob = out_buffer(z_out, dt) if store_z else ab
    big = needs_int64(zb.size, ab.size)
    launch("elementwise", "bias_act_from_gemm", dt, big, ab.size,
           (zb, *index_scalars(big, zb.shape[1]), bb, code(act), *index_scalars(big, n, o, p), ab, zob,
            code(bool(store_z))))
    if store_z:
        write_back(z_out, zob)
    write_back(a_out, ab)


def bias_act_rows(z, bias, act, a_out, store_z):
    """Dense epilogue, in place on ``z`` (N, O): ``z += b``; ``a_out = f(z)``.

    With ``store_z`` false and an activation, ``a_out`` may be ``z`` itself.
    """
    dt = float_dtype(z, "z")
    n, o = z.shape
    check(bias.shape == (o,) and a_out.shape == z.shape,
          f"bias_act_rows: bias {tuple(bias.shape)} must be {(o,)} and a_out {tuple(a_out.shape)} z's shape {(n, o)}")
    zb = out_buffer(z, dt)
    ab = zb if a_out is z else out_buffer(a_out, dt)
    bb = vector(bias, dt)
    big = needs_int64(zb.size)
    launch("elementwise", "bias_act_rows", dt, big, zb.size,
           (zb, bb, code(act), *index_scalars(big, n, o), ab, code(bool(store_z))))
    if store_z:
        write_back(z, zb)
    write_back(a_out, ab)


def act_backward(g, z, a, act, out):
    """Chain rule through an activation: ``out = g * f'(z)`` (flat arrays)."""
    dt = float_dtype(out, "out")
    gb, ob = operand(g, dt), out_buffer(out, dt)
    zb = operand(z, dt) if act == 1 else gb  # ReLU reads z, tanh/sigmoid the output a
    ab = operand(a, dt) if act in (2, 3) else gb
    m = g.size
    check(ob.size >= m and zb.size >= m and ab.size >= m, "act_backward: arrays shorter than g")
    big = needs_int64(m)
    launch("elementwise", "act_backward", dt, big, m, (gb, zb, ab, code(act), *index_scalars(big, m), ob))
    write_back(out, ob)


def act_rescale_backward(g, z, z0, a, a0, act, eps, out):
    """DeepLIFT Rescale multiplier (Shrikumar et al. 2017; Ancona et al. 2018, Prop. 2).

    ``out = g * (f(z) - f(z0)) / (z - z0)``, and ``g * f'(z)`` where ``|z - z0| < eps``
    (Captum's convention, eps = 1e-10).
    """
    dt = float_dtype(out, "out")
    gb, zb, z0b, ab, a0b = (operand(v, dt) for v in (g, z, z0, a, a0))
    ob = out_buffer(out, dt)
    m = g.size
    check(min(v.size for v in (zb, z0b, ab, a0b, ob)) >= m, "act_rescale_backward: arrays shorter than g")
    big = needs_int64(m)
    launch("elementwise", "act_rescale_backward", dt, big, m,
           (gb, zb, z0b, ab, a0b, code(act), np.float64(eps), *index_scalars(big, m), ob))
    write_back(out, ob)


def lrp_ratio(zg, zp, zmode, cz, cp, bvec, bias_g, zorig, r, coefs, masks, eps, s):
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
    the transposed contraction. Arrays a zmode does not read are not touched.
    """
    dt = float_dtype(s, "s")
    n, o, p = r.shape
    g = len(coefs)
    check(tuple(s.shape) == (n, g * o, p), f"lrp_ratio: s has shape {tuple(s.shape)}, expected {(n, g * o, p)}")
    sb = out_buffer(s, dt)
    rb, zob = operand(r, dt), operand(zorig, dt)
    check(zob.size == rb.size, "lrp_ratio: zorig and r differ in size")
    zgb = zpb = czb = cpb = bvb = sb  # unread placeholders
    if zmode in (1, 2):
        zgb = operand(zg, dt)
        check(zgb.ndim == 2 and zgb.shape[0] >= (g * o if zmode == 1 else o) and zgb.shape[1] >= n * p,
              f"lrp_ratio: zg has shape {tuple(zgb.shape)} for zmode {zmode}")
    if zmode == 3:
        zpb = operand(zp, dt)
        check(zpb.size == rb.size, "lrp_ratio: zp and r differ in size")
    if zmode == 4:
        zpb = operand(zp, dt)
        check(zpb.size == sb.size, "lrp_ratio: zp (B a from the forward pass) and s differ in size")
    if zmode in (2, 3):
        czb, cpb, bvb = _group_vectors(cz, cp, bvec, g, o, dt)
    bgb, cfb, mkb = _rule_vectors(bias_g, coefs, masks, g, o, dt)
    ldz = zgb.shape[1] if zgb is not sb else 0
    big = needs_int64(sb.size, zgb.size)
    launch("elementwise", "lrp_ratio", dt, big, sb.size,
           (zgb, *index_scalars(big, ldz), zpb, code(zmode), czb, cpb, bvb, bgb, zob, rb, cfb, mkb,
            np.float64(eps), *index_scalars(big, n, g, o, p), sb))
    write_back(s, sb)


def lrp_ratio_rows(zg, zmode, cz, cp, bvec, bias_g, zorig, r, coefs, masks, eps, s):
    """``lrp_ratio`` for Dense layers, rows layout: ``zg`` (N, G*O) or (N, O) (zmode 2),
    ``zorig``/``r`` (N, O), ``s`` (N, G*O). As on the CPU, the epsilon rule (zmode 0, no
    mask, eps > 0) rounds ``(coef * r) / stab(den)``, the other paths ``coef * (r / stab(den))``."""
    dt = float_dtype(s, "s")
    n, o = r.shape
    g = len(coefs)
    check(tuple(s.shape) == (n, g * o), f"lrp_ratio_rows: s has shape {tuple(s.shape)}, expected {(n, g * o)}")
    sb = out_buffer(s, dt)
    rb, zob = operand(r, dt), operand(zorig, dt)
    check(zob.size == rb.size, "lrp_ratio_rows: zorig and r differ in size")
    zgb = czb = cpb = bvb = sb  # unread placeholders
    if zmode != 0:
        zgb = operand(zg, dt)
        check(zgb.ndim == 2 and zgb.shape[0] == n and zgb.shape[1] >= (g * o if zmode == 1 else o),
              f"lrp_ratio_rows: zg has shape {tuple(zgb.shape)} for zmode {zmode}")
    if zmode >= 2:
        czb, cpb, bvb = _group_vectors(cz, cp, bvec, g, o, dt)
    bgb, cfb, mkb = _rule_vectors(bias_g, coefs, masks, g, o, dt)
    ldz = zgb.shape[1] if zgb is not sb else 0
    big = needs_int64(sb.size, zgb.size)
    launch("elementwise", "lrp_ratio_rows", dt, big, sb.size,
           (zgb, *index_scalars(big, ldz), code(zmode), czb, cpb, bvb, bgb, zob, rb, cfb, mkb,
            np.float64(eps), *index_scalars(big, n, g, o), sb))
    write_back(s, sb)


def _rule_vectors(bias_g, coefs, masks, g, o, dt):
    """``bias_g`` (G*O,), ``coefs`` and ``masks`` (G,) on the device, lengths checked."""
    bgb, cfb, mkb = vector(bias_g, dt), vector(coefs, dt), vector(masks, np.int64)
    check(bgb.size >= g * o and mkb.size >= g, f"bias_g needs {g * o} entries and masks {g}")
    return bgb, cfb, mkb


def _group_vectors(cz, cp, bvec, g, o, dt):
    """``cz``, ``cp`` (G,) and ``bvec`` (O,) of zmodes 2 and 3 on the device, lengths checked."""
    czb, cpb, bvb = vector(cz, dt), vector(cp, dt), vector(bvec, dt)
    check(czb.size >= g and cpb.size >= g and bvb.size >= o, f"cz/cp need {g} entries and bvec {o}")
    return czb, cpb, bvb


def combine_from_gemm(cg, xs, mods, out):
    """Epilogue of a transposed contraction ``cg`` (Ct, N*P) back to NCHW ``out`` (N, C, P).

    ``mods == 0``: ``out[n, c, p] = cg[c, n*P + p]`` (gradient).
    ``mods  > 0``: ``out[n, c, p] = sum_m xs[n, m*C + c, p] * cg[m*C + c, n*P + p]``, the
    ``a'_i (W'^T s)_i`` reduction of an LRP rule over its stacked input modifiers.
    """
    dt = float_dtype(out, "out")
    n, c, p = out.shape
    cgb, ob = operand(cg, dt), out_buffer(out, dt)
    nm = max(int(mods), 1)
    check(cgb.ndim == 2 and cgb.shape[0] >= nm * c and cgb.shape[1] >= n * p,
          f"combine_from_gemm: cg has shape {tuple(cgb.shape)}, expected {(nm * c, n * p)}")
    if mods > 0:
        xb = operand(xs, dt)
        check(xb.shape[0] == n and xb.shape[1] >= mods * c and xb.size == n * xb.shape[1] * p,
              f"combine_from_gemm: xs has shape {tuple(xb.shape)}, expected {(n, mods * c, p)}")
        xc = xb.shape[1]
    else:
        xb, xc = cgb, 0  # unread
    big = needs_int64(cgb.size, ob.size, xb.size)
    launch("elementwise", "combine_from_gemm", dt, big, ob.size,
           (cgb, *index_scalars(big, cgb.shape[1]), xb, *index_scalars(big, xc), code(mods),
            *index_scalars(big, n, c, p), ob))
    write_back(out, ob)


def grad_to_rows(g, z, a, act, s):
    """Layout move for the backward GEMM of gradient-type methods, fused with the
    derivative of the activation that follows the layer: ``s[o, n*P + p] = g[n, o, p] * f'(z)``.
    ``act == 0`` is a plain transpose."""
    dt = float_dtype(s, "s")
    n, o, p = g.shape
    gb, sb = operand(g, dt), out_buffer(s, dt)
    zb = operand(z, dt) if act == 1 else gb
    ab = operand(a, dt) if act in (2, 3) else gb
    check(sb.ndim == 2 and sb.shape[0] == o and sb.shape[1] >= n * p,
          f"grad_to_rows: s has shape {tuple(sb.shape)}, expected {(o, n * p)}")
    check(zb.size == gb.size and ab.size == gb.size, "grad_to_rows: z or a differ from g in size")
    big = needs_int64(gb.size, sb.size)
    launch("elementwise", "grad_to_rows", dt, big, o * n * p,
           (gb, zb, ab, code(act), *index_scalars(big, n, o, p), sb, *index_scalars(big, sb.shape[1])))
    write_back(s, sb)


def stacked_mul_sum(xs, c, mods, out):
    """``out[n, f] = sum_m xs[n, m*F + f] * c[n, m*F + f]`` for (N, mods*F) inputs."""
    dt = float_dtype(out, "out")
    n, f = out.shape
    xb, cb, ob = operand(xs, dt), operand(c, dt), out_buffer(out, dt)
    for name, v in (("xs", xb), ("c", cb)):
        check(v.ndim == 2 and v.shape[0] == n and v.shape[1] >= mods * f,
              f"stacked_mul_sum: {name} has shape {tuple(v.shape)}, expected {(n, mods * f)}")
    big = needs_int64(xb.size, cb.size, ob.size)
    launch("elementwise", "stacked_mul_sum", dt, big, ob.size,
           (xb, *index_scalars(big, xb.shape[1]), cb, *index_scalars(big, cb.shape[1]), code(mods),
            *index_scalars(big, n, f), ob))
    write_back(out, ob)


def stack_input_mods(x, modes, low, high, out):
    """Stack the rule's modified inputs along the feature axis.

    ``x`` (N, F); ``out`` (N, len(modes)*F); ``low``/``high`` (N, F) are read only for
    modes 4 and 5 (the z^B rule's bounds).
    """
    dt = float_dtype(out, "out")
    n, f = x.shape
    xb, ob = operand(x, dt), out_buffer(out, dt)
    mb = vector(modes, np.int64)
    mm = mb.size
    check(ob.ndim == 2 and ob.shape[0] == n and ob.shape[1] >= mm * f,
          f"stack_input_mods: out has shape {tuple(ob.shape)}, expected {(n, mm * f)}")
    # the bounds are read only for modes 4/5; numpy modes tell without a device round trip
    bounds = not isinstance(modes, np.ndarray) or bool(np.isin(modes, (4, 5)).any())
    lb = operand(low, dt) if bounds else xb
    hb = operand(high, dt) if bounds else xb
    check(lb.size == xb.size and hb.size == xb.size, "stack_input_mods: low/high differ from x in size")
    big = needs_int64(xb.size, ob.size)
    launch("elementwise", "stack_input_mods", dt, big, n * mm * f,
           (xb, mb, *index_scalars(big, mm), lb, hb, *index_scalars(big, n, f), ob, *index_scalars(big, ob.shape[1])))
    write_back(out, ob)


def all_nonnegative(x):
    """True when no element of the flat array ``x`` is negative (one device-to-host read)."""
    if np.dtype(x.dtype).name not in ("float32", "float64"):
        return not bool((cupy.asarray(x) < 0).any())
    dt = np.dtype(x.dtype)
    xb = operand(x, dt)
    flag = cupy.zeros(1, np.int32)
    big = needs_int64(xb.size)
    launch("elementwise", "any_negative", dt, big, xb.size, (xb, *index_scalars(big, xb.size), flag))
    return int(flag.get()[0]) == 0


def row_sums(a, out):
    """``out[n] = sum_f a[n, f]`` accumulated in float64 (``out`` float64), as the CPU kernel."""
    if out.shape[0] != a.shape[0]:
        raise ValueError("row_sums: out must have one entry per row of a")
    cupy.sum(a, axis=1, dtype=np.float64, out=out)
