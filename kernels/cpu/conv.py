"""im2col / col2im for 2-D convolutions (NCHW, zero padding).

A convolution ``z[n, o, p] = sum_k W[o, k] x_col[k, n*P + p]`` runs as one BLAS GEMM
``Z = Wmat @ cols`` with ``cols = im2col(x)`` of shape ``(C*kh*kw, N*P)``; its transpose
(the backward pass of every method) is ``cols_grad = Wmat.T @ S`` followed by
``col2im_gather``.

Every kernel checks, once per call, that the window geometry is valid (kernel and stride >= 1,
padding >= 0) and that the buffers have the shapes it implies, and raises ``ValueError``
otherwise: no argument can make a kernel index outside its arrays.
"""
import numba as nb
import numpy as np

from .threads import threaded

def conv_out_shape(h, w, kh, kw, sh, sw, ph, pw):
    """Output height and width of a convolution/pooling window sweep."""
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def im2col(x, kh, kw, sh, sw, ph, pw, cols, part, parts):
    """Unfold ``x`` (N, C, H, W) into ``cols`` (C*kh*kw, N*Ho*Wo).

    ``cols[(c*kh + i)*kw + j, n*P + ho*Wo + wo] = x[n, c, ho*sh - ph + i, wo*sw - pw + j]``
    (zero outside the image). Parallel over the rows of ``cols``.
    """
    n_, c_, h_, w_ = x.shape
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0:
        raise ValueError("im2col: kernel and stride must be >= 1, padding >= 0")
    ho_ = (h_ + 2 * ph - kh) // sh + 1
    wo_ = (w_ + 2 * pw - kw) // sw + 1
    p_ = ho_ * wo_
    rows = c_ * kh * kw
    if ho_ < 1 or wo_ < 1 or cols.shape[0] != rows or cols.shape[1] != n_ * p_:
        raise ValueError("im2col: cols must have shape (C*kh*kw, N*Ho*Wo) for x and a window that fits")
    for r in range(rows * part // parts, rows * (part + 1) // parts):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        # output columns whose input column wo*sw - pw + j lies inside the image
        lo = min(max(0, (pw - j + sw - 1) // sw), wo_)
        hi = min(wo_, (w_ - 1 + pw - j) // sw + 1)
        if hi < lo:
            hi = lo
        for n in range(n_):
            base = n * p_
            for ho in range(ho_):
                h = ho * sh - ph + i
                off = base + ho * wo_
                if h < 0 or h >= h_:
                    for wo in range(wo_):
                        cols[r, off + wo] = 0.0
                    continue
                for wo in range(lo):
                    cols[r, off + wo] = 0.0
                w0 = lo * sw - pw + j
                if sw == 1:  # contiguous interior: a straight copy the compiler vectorizes
                    for t in range(hi - lo):
                        cols[r, off + lo + t] = x[n, c, h, w0 + t]
                else:
                    for t in range(hi - lo):
                        cols[r, off + lo + t] = x[n, c, h, w0 + t * sw]
                for wo in range(hi, wo_):
                    cols[r, off + wo] = 0.0


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def col2im_gather(cols, kh, kw, sh, sw, ph, pw, out, xs, mods, part, parts):
    """Fold ``cols`` (Ct*kh*kw, N*Ho*Wo) back onto the input grid (the transpose of im2col).

    Written as a gather (each input pixel sums the window positions that read it), so the
    parallel loop over (n, channel) never writes the same element twice.

    ``mods == 0``: ``out`` (N, Ct, H, W) receives the folded values.
    ``mods  > 0``: the Ct = mods*C folded channels are combined with the stacked modified
    inputs ``xs`` (N, Ct, H, W): ``out[n, c] = sum_m xs[n, m*C + c] * fold[n, m*C + c]``,
    the ``a'_i * (W'^T s)_i`` product of an LRP rule, fused here.
    """
    n_ = out.shape[0]
    h_ = out.shape[2]
    w_ = out.shape[3]
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or ph < 0 or pw < 0 or mods < 0:
        raise ValueError("col2im_gather: kernel and stride must be >= 1, padding and mods >= 0")
    ct = cols.shape[0] // (kh * kw)
    ho_ = (h_ + 2 * ph - kh) // sh + 1
    wo_ = (w_ + 2 * pw - kw) // sw + 1
    p_ = ho_ * wo_
    c_out = ct if mods == 0 else ct // mods
    if ho_ < 1 or wo_ < 1 or out.shape[1] != c_out or cols.shape[1] < n_ * p_:
        raise ValueError("col2im_gather: out must have Ct (mods == 0) or Ct/mods channels and cols at least "
                         "N*Ho*Wo columns for out and a window that fits")
    if mods > 0 and (xs.shape[0] < n_ or xs.shape[1] < ct or xs.shape[2] != h_ or xs.shape[3] != w_):
        raise ValueError("col2im_gather: xs must have shape (N, Ct, H, W) of out")
    if mods == 0:
        # per (n, c) plane, tap by tap: each window row adds its contiguous run of columns onto a
        # float64 plane (the same per-pixel sums, in the same tap order, as the gather below, which
        # tests every tap of every pixel against the stride: 4x the loop trips for a 7x7 / 2 stem)
        buf = np.empty((h_, w_))
        for t in range(n_ * c_out * part // parts, n_ * c_out * (part + 1) // parts):
            n = t // c_out
            c = t % c_out
            buf[:, :] = 0.0
            for i in range(kh):
                y0 = 0 if i >= ph else (ph - i + sh - 1) // sh  # rows ho with 0 <= ho*sh - ph + i < H
                y1 = min(ho_, (h_ - 1 + ph - i) // sh + 1)
                for j in range(kw):
                    q0 = 0 if j >= pw else (pw - j + sw - 1) // sw
                    q1 = min(wo_, (w_ - 1 + pw - j) // sw + 1)
                    if q1 <= q0:
                        continue
                    r = (c * kh + i) * kw + j
                    for ho in range(y0, y1):
                        row = buf[ho * sh - ph + i]
                        src = cols[r, n * p_ + ho * wo_ + q0:n * p_ + ho * wo_ + q1]
                        if sw == 1:
                            dst = row[q0 - pw + j:q1 - pw + j]
                        else:
                            dst = row[q0 * sw - pw + j:(q1 - 1) * sw - pw + j + 1:sw]
                        for q in range(q1 - q0):
                            dst[q] += src[q]
            for h in range(h_):
                orow = out[n, c, h]
                brow = buf[h]
                for w in range(w_):
                    orow[w] = brow[w]
        return
    for t in range(n_ * c_out * part // parts, n_ * c_out * (part + 1) // parts):
        n = t // c_out
        c = t % c_out
        nm = 1 if mods == 0 else mods
        for h in range(h_):
            for w in range(w_):
                acc = 0.0
                for m in range(nm):
                    cc = c + m * c_out
                    v = 0.0
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
                            if wo >= wo_:
                                continue
                            v += cols[(cc * kh + i) * kw + j, n * p_ + ho * wo_ + wo]
                    if mods == 0:
                        acc = v
                    else:
                        acc += xs[n, cc, h, w] * v
                out[n, c, h, w] = acc
