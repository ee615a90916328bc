"""Depthwise convolutions (groups = input = output channels; MobileNet, EfficientNet, ConvNeXt),
forward and gradient, one channel plane at a time.

Each plane is copied once into a zero-padded, flattened buffer of row length ``Wp = W + 2 pw``;
tap ``(i, j)`` then reads the buffer shifted by ``i*Wp + j``, so the whole plane's multiply-add
for a tap is one contiguous loop over the "wide" output grid (every column of the padded row,
of which the valid ones are kept) -- the shifted-GEMM idea of ``shifted.py`` with a scalar
weight per plane, vectorized and cache-resident. Strides compute the stride-1 grid and keep
every ``s``-th position; dilation reads only the taps at multiples of ``d`` of the dense
(dilated) kernel ``taps`` (C, kh, kw) that ``relprop.core.graph.Conv2d`` stores.

The gradient is the exact adjoint: each output gradient, placed on the wide grid at the
position its forward value was read from (zeros elsewhere, including between strided
positions), adds ``w[i, j]`` times itself onto the padded input at ``+ i*Wp + j``; the padding
is then cut away. Taps are summed in the same order as the forward (row-major over the kernel).
"""
import numba as nb
import numpy as np

from .threads import threaded


@nb.njit(cache=True, inline="always")
def _check(x_shape, taps, sh, sw, ph, pw, dh, dw, ho, wo, name):
    n_, c_, h_, w_ = x_shape
    kh, kw = taps.shape[1], taps.shape[2]
    if sh < 1 or sw < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0 or taps.shape[0] != c_:
        raise ValueError("depthwise: stride and dilation must be >= 1, padding >= 0, taps (C, kh, kw)")
    if ho != (h_ + 2 * ph - kh) // sh + 1 or wo != (w_ + 2 * pw - kw) // sw + 1 or ho < 1 or wo < 1:
        raise ValueError("depthwise: (Ho, Wo) must be the window sweep of the padded input")


@nb.njit(cache=True, inline="always")
def _to_grid(plane, grid, r0, c0, sr, sc, wp):
    """``grid[(r0 + y*sr)*wp + c0 + q*sc] = plane[y, q]`` (a plane onto the flat grid)."""
    for y in range(plane.shape[0]):
        dst = grid[(r0 + y * sr) * wp + c0:(r0 + y * sr) * wp + c0 + (plane.shape[1] - 1) * sc + 1:sc]
        src = plane[y]
        for q in range(plane.shape[1]):
            dst[q] = src[q]


@nb.njit(cache=True, inline="always")
def _from_grid(grid, plane, r0, c0, sr, sc, wp):
    """``plane[y, q] = grid[(r0 + y*sr)*wp + c0 + q*sc]`` (the inverse of :func:`_to_grid`)."""
    for y in range(plane.shape[0]):
        src = grid[(r0 + y * sr) * wp + c0:(r0 + y * sr) * wp + c0 + (plane.shape[1] - 1) * sc + 1:sc]
        dst = plane[y]
        for q in range(plane.shape[1]):
            dst[q] = src[q]


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def depthwise_conv(x, taps, sh, sw, ph, pw, dh, dw, ho, wo, out, part, parts):
    """``out[c, n*Ho*Wo + y*Wo + q] = sum_(i, j) taps[c, i, j] xpad[n, c, y*sh + i, q*sw + j]``
    over the taps at multiples of the dilation; ``x`` (N, C, H, W), ``out`` (C, N*Ho*Wo) (the
    layout of a GEMM output, which the epilogues read). Parallel over (image, channel) planes."""
    n_, c_, h_, w_ = x.shape
    _check(x.shape, taps, sh, sw, ph, pw, dh, dw, ho, wo, "depthwise_conv")
    if out.shape[0] != c_ or out.shape[1] != n_ * ho * wo:
        raise ValueError("depthwise_conv: out must be (C, N*Ho*Wo)")
    kh, kw = taps.shape[1], taps.shape[2]
    p_ = ho * wo
    hp, wp = h_ + 2 * ph, w_ + 2 * pw
    pad = np.zeros(hp * wp + kw, x.dtype)  # + kw: the last row's shifted reads stay inside
    m_ = ((ho - 1) * sh + 1) * wp  # the stride-1 wide rows the outputs need
    wide = np.empty(m_, out.dtype)
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        _to_grid(x[n, c], pad, ph, pw, 1, 1, wp)
        wide[:] = 0.0
        for i in range(0, kh, dh):
            for j in range(0, kw, dw):
                wv = taps[c, i, j]
                src = pad[i * wp + j:i * wp + j + m_]
                for m in range(m_):
                    wide[m] += wv * src[m]
        _from_grid(wide, out[c, n * p_:(n + 1) * p_].reshape((ho, wo)), 0, 0, sh, sw, wp)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def depthwise_conv_grad(g, taps, sh, sw, ph, pw, dh, dw, gin, part, parts):
    """``gin = W^T g`` of :func:`depthwise_conv` (its exact adjoint): ``g`` (N, C, Ho, Wo), ``gin``
    (N, C, H, W), overwritten. Parallel over (image, channel) planes."""
    n_, c_, ho, wo = g.shape
    h_, w_ = gin.shape[2], gin.shape[3]
    if gin.shape[0] != n_ or gin.shape[1] != c_:
        raise ValueError("depthwise_conv_grad: g and gin must have one N and C")
    _check(gin.shape, taps, sh, sw, ph, pw, dh, dw, ho, wo, "depthwise_conv_grad")
    kh, kw = taps.shape[1], taps.shape[2]
    hp, wp = h_ + 2 * ph, w_ + 2 * pw
    gpad = np.empty(hp * wp + kw, gin.dtype)
    m_ = ((ho - 1) * sh + 1) * wp
    wide = np.zeros(m_, g.dtype)
    zeros = np.zeros((ho, wo), g.dtype)
    for t in range(n_ * c_ * part // parts, n_ * c_ * (part + 1) // parts):
        n = t // c_
        c = t % c_
        _to_grid(g[n, c], wide, 0, 0, sh, sw, wp)  # zeros between strided positions and in the extra columns
        gpad[:] = 0.0
        for i in range(0, kh, dh):
            for j in range(0, kw, dw):
                wv = taps[c, i, j]
                dst = gpad[i * wp + j:i * wp + j + m_]
                for m in range(m_):
                    dst[m] += wv * wide[m]
        _from_grid(gpad, gin[n, c], ph, pw, 1, 1, wp)
        if sh > 1 or sw > 1:  # clear the strided positions for the next plane (the rest stays zero)
            _to_grid(zeros, wide, 0, 0, sh, sw, wp)
