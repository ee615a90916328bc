"""im2col / col2im for 2-D convolutions (NCHW, zero padding), CuPy.

A convolution ``z[n, o, p] = sum_k W[o, k] x_col[k, n*P + p]`` runs as one cuBLAS GEMM
``Z = Wmat @ cols`` with ``cols = im2col(x)`` of shape ``(C*kh*kw, N*P)``; its transpose
(the backward pass of every method) is ``cols_grad = Wmat.T @ S`` followed by
``col2im_gather``. The CUDA code is ``conv.cu``; arguments and results as in
``relprop.kernels.cpu.conv``.
"""
from ._launch import (check, check_window, float_dtype, index_scalars, launch, needs_int64, operand,
                      out_buffer, write_back, code)


def conv_out_shape(h, w, kh, kw, sh, sw, ph, pw):
    """Output height and width of a convolution/pooling window sweep."""
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def im2col(x, kh, kw, sh, sw, ph, pw, cols):
    """Unfold ``x`` (N, C, H, W) into ``cols`` (C*kh*kw, N*Ho*Wo).

    ``cols[(c*kh + i)*kw + j, n*P + ho*Wo + wo] = x[n, c, ho*sh - ph + i, wo*sw - pw + j]``
    (zero outside the image). One thread per element of ``cols``.
    """
    dt = float_dtype(cols, "cols")
    check_window("im2col", kh, kw, sh, sw, ph, pw)
    n, c, h, w = x.shape
    ho, wo = conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    check(ho >= 1 and wo >= 1, f"im2col: window {kh}x{kw} does not fit x {tuple(x.shape)}")
    check(tuple(cols.shape) == (c * kh * kw, n * ho * wo),
          f"im2col: cols has shape {tuple(cols.shape)}, expected {(c * kh * kw, n * ho * wo)}")
    xb, cb = operand(x, dt), out_buffer(cols, dt)
    big = needs_int64(xb.size, cb.size)
    launch("conv", "im2col", dt, big, cb.size,
           (xb, *index_scalars(big, n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo), cb))
    write_back(cols, cb)


def col2im_gather(cols, kh, kw, sh, sw, ph, pw, out, xs, mods):
    """Fold ``cols`` (Ct*kh*kw, N*Ho*Wo) back onto the input grid (the transpose of im2col).

    Written as a gather (each input pixel sums the window positions that read it): one thread
    per element of ``out``, no atomics.

    ``mods == 0``: ``out`` (N, Ct, H, W) receives the folded values.
    ``mods  > 0``: the Ct = mods*C folded channels are combined with the stacked modified
    inputs ``xs`` (N, Ct, H, W): ``out[n, c] = sum_m xs[n, m*C + c] * fold[n, m*C + c]``,
    the ``a'_i * (W'^T s)_i`` product of an LRP rule, fused here.
    """
    dt = float_dtype(out, "out")
    check_window("col2im_gather", kh, kw, sh, sw, ph, pw)
    check(mods >= 0, f"col2im_gather: mods must be >= 0, got {mods}")
    n, c_out, h, w = out.shape
    ct = cols.shape[0] // (kh * kw)
    ho, wo = conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    check(ho >= 1 and wo >= 1, f"col2im_gather: window {kh}x{kw} does not fit out {tuple(out.shape)}")
    check(c_out == (ct if mods == 0 else ct // mods),
          f"col2im_gather: out has {c_out} channels, cols fold to {ct} (mods={mods})")
    check(cols.shape[1] >= n * ho * wo, f"col2im_gather: cols has {cols.shape[1]} columns, needs {n * ho * wo}")
    cb, ob = operand(cols, dt), out_buffer(out, dt)
    if mods > 0:
        xb = operand(xs, dt)
        check(xb.shape[0] == n and xb.shape[1] >= ct and tuple(xb.shape[2:]) == (h, w),
              f"col2im_gather: xs has shape {tuple(xb.shape)}, expected {(n, ct, h, w)}")
    else:
        xb = cb  # unread
    big = needs_int64(cb.size, ob.size, xb.size)
    launch("conv", "col2im_gather", dt, big, ob.size,
           (cb, *index_scalars(big, cb.shape[1], n, h, w, kh, kw, sh, sw, ph, pw, ho, wo, c_out), code(mods),
            xb, *index_scalars(big, xb.shape[1] if mods > 0 else 0), ob))
    write_back(out, ob)
