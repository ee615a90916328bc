"""2-D max and average pooling, forward and backward (NCHW).

Every kernel checks, once per call, the window geometry and that its buffers have matching
shapes, and raises ``ValueError`` otherwise: no argument can make it index outside its arrays.
The max-pool backward kernels route to the winners ``idx`` that :func:`maxpool_forward` wrote
for an input of ``out``'s shape (they lie in ``[0, H*W)``, guaranteed by its checks).
"""
import numba as nb
import numpy as np

from .threads import threaded

@nb.njit(cache=True, nogil=True, error_model="numpy")
def _check_window(x, kh, kw, sh, sw, ph, pw, out):
    """``out`` (N, C, Ho, Wo) is the window sweep of ``x`` (N, C, H, W) with this geometry."""
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError("pooling: kernel and stride must be >= 1, padding >= 0")
    n_, c_, h_, w_ = x.shape
    if (out.shape[0] != n_ or out.shape[1] != c_ or out.shape[2] != (h_ + 2 * ph - kh) // sh + 1
            or out.shape[3] != (w_ + 2 * pw - kw) // sw + 1):
        raise ValueError("pooling: out must have shape (N, C, Ho, Wo) of the window sweep over x")


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def maxpool_forward(x, kh, kw, sh, sw, ph, pw, out, idx, part, parts):
    """``out[n, c, ho, wo] = max`` over the window (padding never wins), ``idx`` the flat
    ``h*W + w`` position of the first maximum in row-major window order, a NaN winning its
    window (the last NaN of several): torch's choice (its CPU and CUDA kernels replace the
    running maximum when ``v > max or isnan(v)``)."""
    _check_window(x, kh, kw, sh, sw, ph, pw, out)
    n_, c_, h_, w_ = x.shape
    ho_, wo_ = out.shape[2], out.shape[3]
    # padding < kernel: every window of the sweep holds a pixel of x, so idx is a valid position
    if ph >= kh or pw >= kw or idx.shape != out.shape or (out.size > 0 and (h_ < 1 or w_ < 1)):
        raise ValueError("maxpool_forward: padding must be < kernel and idx must have out's shape")
    if kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0:
        # the common 2x2 / 2 window without padding: no bounds tests, branch-free selects (the
        # same winner as the general loop below)
        for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
            n = t // c_
            c = t % c_
            for ho in range(ho_):
                r0 = x[n, c, 2 * ho]
                r1 = x[n, c, 2 * ho + 1]
                o = out[n, c, ho]
                ix = idx[n, c, ho]
                b0 = 2 * ho * w_
                for wo in range(wo_):
                    bv = r0[2 * wo]
                    bi = b0 + 2 * wo
                    v = r0[2 * wo + 1]
                    win = v > bv or v != v
                    bv = v if win else bv
                    bi = b0 + 2 * wo + 1 if win else bi
                    v = r1[2 * wo]
                    win = v > bv or v != v
                    bv = v if win else bv
                    bi = b0 + w_ + 2 * wo if win else bi
                    v = r1[2 * wo + 1]
                    win = v > bv or v != v
                    bv = v if win else bv
                    bi = b0 + w_ + 2 * wo + 1 if win else bi
                    o[wo] = bv
                    ix[wo] = bi
        return
    # any other window: per output row, tap by tap over the whole row (the same row-major tap
    # order and test as the per-element loop, so the same winners), the in-bounds range of each
    # tap computed once instead of testing every tap of every window
    bv = np.empty(wo_, x.dtype)
    bi = np.empty(wo_, np.int64)
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        for ho in range(ho_):
            bi[:] = -1
            for i in range(kh):
                h = ho * sh - ph + i
                if h < 0 or h >= h_:
                    continue
                xr = x[n, c, h]
                for j in range(kw):
                    q0 = 0 if j >= pw else (pw - j + sw - 1) // sw
                    q1 = min(wo_, (w_ - 1 + pw - j) // sw + 1)
                    for q in range(q0, q1):
                        w = q * sw - pw + j
                        v = xr[w]
                        b = bv[q]
                        win = (bi[q] < 0) | (v > b) | (v != v)  # no short-circuit: selects, not branches
                        bv[q] = v if win else b
                        bi[q] = h * w_ + w if win else bi[q]
            o = out[n, c, ho]
            ix = idx[n, c, ho]
            for q in range(wo_):
                o[q] = bv[q]
                ix[q] = bi[q]


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def maxpool_backward(g, idx, out, part, parts):
    """Route ``g`` (N, C, Ho, Wo) to the window winners: ``out`` (N, C, H, W) = sum of the
    ``g`` of every window a pixel won (the gradient of max pooling)."""
    n_, c_, h_, w_ = out.shape
    ho_, wo_ = g.shape[2], g.shape[3]
    if g.shape[0] != n_ or g.shape[1] != c_ or idx.shape != g.shape:
        raise ValueError("maxpool_backward: g and idx must have one shape (N, C, Ho, Wo) with out's N and C")
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        for h in range(h_):
            for w in range(w_):
                out[n, c, h, w] = 0.0
        for ho in range(ho_):
            for wo in range(wo_):
                k = idx[n, c, ho, wo]
                out[n, c, k // w_, k % w_] += g[n, c, ho, wo]


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def maxpool_rescale_backward(g, x, x0, y, y0, idx, idx0, eps, out, part, parts):
    """DeepLIFT multiplier through max pooling, Captum's convention.

    The change of each window's max, ``y - y0``, is split as ``(max(y, y0) - y0)`` routed to
    the input's winner and ``(y - max(y, y0))`` routed to the baseline's winner, each times
    the upstream multiplier ``g``; the pixel's multiplier is that sum divided by
    ``x - x0``, or the plain max-pool gradient where ``|x - x0| < eps``.
    """
    n_, c_, h_, w_ = out.shape
    ho_, wo_ = g.shape[2], g.shape[3]
    if (g.shape[0] != n_ or g.shape[1] != c_ or idx.shape != g.shape or idx0.shape != g.shape
            or y.shape != g.shape or y0.shape != g.shape or x.shape != out.shape or x0.shape != out.shape):
        raise ValueError("maxpool_rescale_backward: g, y, y0, idx, idx0 must have one shape (N, C, Ho, Wo) and "
                         "x, x0 out's shape (N, C, H, W)")
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        # out collects the routed deltas; a scratch plane would double memory, so the
        # plain gradient for the |dx| < eps pixels is recomputed in a second sweep.
        for h in range(h_):
            for w in range(w_):
                out[n, c, h, w] = 0.0
        for ho in range(ho_):
            for wo in range(wo_):
                gv = g[n, c, ho, wo]
                yv = y[n, c, ho, wo]
                y0v = y0[n, c, ho, wo]
                ym = yv if yv > y0v else y0v
                k = idx[n, c, ho, wo]
                out[n, c, k // w_, k % w_] += gv * (ym - y0v)
                k0 = idx0[n, c, ho, wo]
                out[n, c, k0 // w_, k0 % w_] += gv * (yv - ym)
        for h in range(h_):
            for w in range(w_):
                dx = x[n, c, h, w] - x0[n, c, h, w]
                if abs(dx) >= eps:
                    out[n, c, h, w] = out[n, c, h, w] / dx
                else:
                    out[n, c, h, w] = 0.0
        for ho in range(ho_):
            for wo in range(wo_):
                k = idx[n, c, ho, wo]
                hh = k // w_
                ww = k % w_
                if abs(x[n, c, hh, ww] - x0[n, c, hh, ww]) < eps:
                    out[n, c, hh, ww] += g[n, c, ho, wo]


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def avgpool_forward(x, kh, kw, sh, sw, ph, pw, out, part, parts):
    """Window mean with zero padding counted (torch's ``count_include_pad=True``)."""
    _check_window(x, kh, kw, sh, sw, ph, pw, out)
    n_, c_, h_, w_ = x.shape
    ho_, wo_ = out.shape[2], out.shape[3]
    inv = 1.0 / (kh * kw)
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        for ho in range(ho_):
            for wo in range(wo_):
                acc = 0.0
                for i in range(kh):
                    h = ho * sh - ph + i
                    if h < 0 or h >= h_:
                        continue
                    for j in range(kw):
                        w = wo * sw - pw + j
                        if 0 <= w < w_:
                            acc += x[n, c, h, w]
                out[n, c, ho, wo] = acc * inv


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def avgpool_backward(g, kh, kw, sh, sw, ph, pw, x, mul_x, out, part, parts):
    """Transpose of average pooling: ``out[n, c, h, w] = sum_windows g / (kh*kw)``.

    With ``mul_x`` the result is multiplied by ``x`` (N, C, H, W): the z-rule (Zennit's
    ``Norm``) redistribution ``R_in = x * pool^T(R / stab(z))``, fused.
    """
    _check_window(out, kh, kw, sh, sw, ph, pw, g)
    if mul_x and x.shape != out.shape:
        raise ValueError("avgpool_backward: x must have out's shape")
    n_, c_, h_, w_ = out.shape
    ho_, wo_ = g.shape[2], g.shape[3]
    inv = 1.0 / (kh * kw)
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        for h in range(h_):
            for w in range(w_):
                acc = 0.0
                for i in range(kh):
                    hh = h + ph - i
                    if hh < 0 or hh % sh != 0:
                        continue
                    ho = hh // sh
                    if ho >= ho_:
                        continue
                    for j in range(kw):
                        ww = w + pw - j
                        if ww < 0 or ww % sw != 0:
                            continue
                        wo = ww // sw
                        if wo < wo_:
                            acc += g[n, c, ho, wo]
                v = acc * inv
                out[n, c, h, w] = v * x[n, c, h, w] if mul_x else v
