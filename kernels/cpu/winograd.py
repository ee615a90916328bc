"""Winograd F(2x2, 3x3) convolutions (Lavin & Gray 2016, "Fast Algorithms for Convolutional
Neural Networks", Sec. 4): a 3x3 stride-1 convolution as 16 GEMMs over 4x4 input tiles,
2.25x fewer multiplications than direct or im2col convolution.

With the transforms of F(2x2, 3x3)::

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

each 2x2 output tile is ``Y = A^T [ (G g G^T) . (B^T d B) ] A`` summed over channels, so with
``U[k] = (G g G^T)[k]`` (16, R, C) (:func:`winograd_filter`, once per model) and
``V[k] = (B^T d B)[k]`` (16, C, T) (:func:`winograd_input`) the channel sums are 16 GEMMs
``M[k] = U[k] @ V[k]``, and :func:`winograd_output` applies ``A^T . A``. The transforms add
rounding of a few units in the last place relative to the direct sum (float32: ~5e-7 of the
largest output on VGG-sized layers); relprop uses them where they are faster, on maps of at
most 16x16 outputs (``relprop.core.linear.conv_gemm``), and the tests compare with a direct
numpy convolution.
"""
import numba as nb
import numpy as np

from .threads import threaded

G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def _transformed_filters(gm, wmat, c):
    """``gm g gm^T`` of each 3x3 filter of a weight (R, C*9) (im2col order) as (T*T, R, C),
    computed in float64 and rounded once to the weight's dtype."""
    r, t = wmat.shape[0], gm.shape[0]
    g = np.asarray(wmat, np.float64).reshape(r, c, 3, 3)
    u = np.einsum("ai,rcij,bj->abrc", gm, g, gm, optimize=True)
    return np.ascontiguousarray(u.reshape(t * t, r, c).astype(wmat.dtype))


def winograd_filter(wmat, c):
    """``U`` (16, R, C): ``G g G^T`` of each 3x3 filter for F(2x2, 3x3)."""
    return _transformed_filters(G, wmat, c)


def winograd_tiles(ho, wo):
    """Tiles (th, tw) covering an Ho x Wo output with 2x2 tiles."""
    return (ho + 1) // 2, (wo + 1) // 2


@nb.njit(cache=True, inline="always")
def _phase_rows(x, n, c, y0, pw, p, shift):
    """The tile row's input rows ``y0, y0 + 1, ...`` of plane ``x[n, c]`` (zero outside the image)
    into ``p`` (rows, 2^shift, S) split by column phase: ``p[i, m, s] = row_i[2^shift s + m - pw]``."""
    h_, w_ = x.shape[2], x.shape[3]
    mask = (1 << shift) - 1
    last = min(w_, p.shape[1] * p.shape[2] - pw)
    for i in range(p.shape[0]):
        yy = y0 + i
        pi = p[i]
        pi[:, :] = 0.0
        if yy < 0 or yy >= h_:
            continue
        xr = x[n, c, yy]
        for col in range(last):
            k = col + pw
            pi[k & mask, k >> shift] = xr[col]


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def winograd_input(x, ph, pw, th, tw, v, part, parts):
    """Input tiles of F(2x2, 3x3): ``v[4i + j, c, t] = (B^T d B)[i, j]`` for the 4x4 tile ``d`` of
    ``x`` (N, C, H, W) at rows ``2ty - ph ...``, columns ``2tx - pw ...`` (zero outside the image),
    ``t = (n*th + ty)*tw + tx``; ``v`` (16, C, N*th*tw). Parallel over channels.

    Each input row is split by column parity (``p[m, s] = row[2s + m]``) so that the row
    transforms read and the tile stores write consecutive elements (vectorized loops)."""
    n_, c_, h_, w_ = x.shape
    if ph < 0 or pw < 0 or th < 1 or tw < 1 or v.shape[0] != 16 or v.shape[1] != c_ or v.shape[2] != n_ * th * tw:
        raise ValueError("winograd_input: v must have shape (16, C, N*th*tw), padding >= 0")
    s_ = tw + 1
    p = np.zeros((4, 2, s_), x.dtype)  # the tile row's 4 input rows, by column parity
    q = np.empty((4, 2, s_), x.dtype)  # B^T applied down the columns
    for c in range(c_ * part // parts, c_ * (part + 1) // parts):
        for n in range(n_):
            for ty in range(th):
                _phase_rows(x, n, c, 2 * ty - ph, pw, p, 1)
                p0 = p[0]; p1 = p[1]; p2 = p[2]; p3 = p[3]
                for m in range(2):
                    for s in range(s_):
                        q[0, m, s] = p0[m, s] - p2[m, s]
                        q[1, m, s] = p1[m, s] + p2[m, s]
                        q[2, m, s] = p2[m, s] - p1[m, s]
                        q[3, m, s] = p1[m, s] - p3[m, s]
                t0 = (n * th + ty) * tw
                for i in range(4):
                    qi = q[i]
                    for tx in range(tw):
                        d0 = qi[0, tx]; d1 = qi[1, tx]; d2 = qi[0, tx + 1]; d3 = qi[1, tx + 1]
                        t = t0 + tx
                        v[4 * i + 0, c, t] = d0 - d2
                        v[4 * i + 1, c, t] = d1 + d2
                        v[4 * i + 2, c, t] = d2 - d1
                        v[4 * i + 3, c, t] = d1 - d3


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def winograd_output(mm, n_, th, tw, ho, wo, out, part, parts):
    """Output tiles of F(2x2, 3x3): ``A^T M A`` (2x2) of each tile of ``mm`` (16, R, N*th*tw) into
    ``out`` (R, N*Ho*Wo) (the compact layout the epilogues read; a last half tile is cut).
    Parallel over rows."""
    o_ = mm.shape[1]
    if mm.shape[0] != 16 or mm.shape[2] != n_ * th * tw or out.shape[0] != o_ or out.shape[1] != n_ * ho * wo \
            or ho > 2 * th or wo > 2 * tw or ho < 2 * th - 1 or wo < 2 * tw - 1:
        raise ValueError("winograd_output: mm must be (16, R, N*th*tw) and out (R, N*Ho*Wo) with th, tw = ceil(Ho/2, Wo/2)")
    buf = np.empty((2, 2 * tw), mm.dtype)
    for o in range(o_ * part // parts, o_ * (part + 1) // parts):
        for n in range(n_):
            for ty in range(th):
                t0 = (n * th + ty) * tw
                for tx in range(tw):
                    t = t0 + tx
                    s00 = mm[0, o, t] + mm[4, o, t] + mm[8, o, t]; s01 = mm[1, o, t] + mm[5, o, t] + mm[9, o, t]
                    s02 = mm[2, o, t] + mm[6, o, t] + mm[10, o, t]; s03 = mm[3, o, t] + mm[7, o, t] + mm[11, o, t]
                    s10 = mm[4, o, t] - mm[8, o, t] - mm[12, o, t]; s11 = mm[5, o, t] - mm[9, o, t] - mm[13, o, t]
                    s12 = mm[6, o, t] - mm[10, o, t] - mm[14, o, t]; s13 = mm[7, o, t] - mm[11, o, t] - mm[15, o, t]
                    buf[0, 2 * tx] = s00 + s01 + s02; buf[0, 2 * tx + 1] = s01 - s02 - s03
                    buf[1, 2 * tx] = s10 + s11 + s12; buf[1, 2 * tx + 1] = s11 - s12 - s13
                y = 2 * ty
                base = n * ho * wo
                for q in range(wo):
                    out[o, base + y * wo + q] = buf[0, q]
                if y + 1 < ho:
                    for q in range(wo):
                        out[o, base + (y + 1) * wo + q] = buf[1, q]



# -- F(4x4, 3x3) ------------------------------------------------------------------------------------
# Lavin & Gray (2016), Sec. 4.2 (interpolation points 0, +-1, +-2, infinity): 6x6 input tiles, 4x4
# output tiles, 36 GEMMs for 16 outputs per tile: 4x fewer multiplications than the direct sum
# (F(2x2, 3x3): 2.25x). The transforms have larger coefficients, so the rounding is larger too
# (float32: ~5e-6 of the largest output on VGG-sized layers, vs ~3e-7 direct); float64 ~1e-14.
#
#     B^T = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
#            [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
#     G   = [[1/4, 0, 0], [-1/6, -1/6, -1/6], [-1/6, 1/6, -1/6],
#            [1/24, 1/12, 1/6], [1/24, -1/12, 1/6], [0, 0, 1]]
#     A^T = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]

G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])


def winograd4_filter(wmat, c):
    """``U`` (36, R, C): ``G g G^T`` of each 3x3 filter for F(4x4, 3x3)."""
    return _transformed_filters(G4, wmat, c)


def winograd4_tiles(ho, wo):
    """Tiles (th, tw) covering an Ho x Wo output with 4x4 tiles."""
    return (ho + 3) // 4, (wo + 3) // 4


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def winograd4_input(x, ph, pw, th, tw, v, part, parts):
    """Input tiles of F(4x4, 3x3): ``v[6a + b, c, t] = (B^T d B)[a, b]`` for the 6x6 tile ``d`` of
    ``x`` (N, C, H, W) at rows ``4ty - ph ...``, columns ``4tx - pw ...`` (zero outside the image),
    ``t = (n*th + ty)*tw + tx``; ``v`` (36, C, N*th*tw). Parallel over channels.

    Each input row is split by column phase (``p[m, s] = row[4s + m]``) so that the row
    transforms read and the tile stores write consecutive elements (vectorized loops)."""
    n_, c_, h_, w_ = x.shape
    if ph < 0 or pw < 0 or th < 1 or tw < 1 or v.shape[0] != 36 or v.shape[1] != c_ or v.shape[2] != n_ * th * tw:
        raise ValueError("winograd4_input: v must have shape (36, C, N*th*tw), padding >= 0")
    s_ = tw + 1
    p = np.zeros((6, 4, s_), x.dtype)  # the tile row's 6 input rows, by column phase
    q = np.empty((6, 4, s_), x.dtype)  # B^T applied down the columns
    for c in range(c_ * part // parts, c_ * (part + 1) // parts):
        for n in range(n_):
            for ty in range(th):
                _phase_rows(x, n, c, 4 * ty - ph, pw, p, 2)
                p0 = p[0]; p1 = p[1]; p2 = p[2]; p3 = p[3]; p4 = p[4]; p5 = p[5]
                for m in range(4):
                    for s in range(s_):
                        a1 = p1[m, s]; a2 = p2[m, s]; a3 = p3[m, s]; a4 = p4[m, s]
                        q[0, m, s] = 4.0 * p0[m, s] - 5.0 * a2 + a4
                        q[1, m, s] = a4 + a3 - 4.0 * (a1 + a2)
                        q[2, m, s] = a4 - a3 + 4.0 * (a1 - a2)
                        q[3, m, s] = a4 - a2 + 2.0 * (a3 - a1)
                        q[4, m, s] = a4 - a2 - 2.0 * (a3 - a1)
                        q[5, m, s] = 4.0 * a1 - 5.0 * a3 + p5[m, s]
                t0 = (n * th + ty) * tw
                for a in range(6):
                    qa = q[a]
                    for tx in range(tw):
                        d0 = qa[0, tx]; d1 = qa[1, tx]; d2 = qa[2, tx]; d3 = qa[3, tx]
                        d4 = qa[0, tx + 1]; d5 = qa[1, tx + 1]
                        t = t0 + tx
                        v[6 * a + 0, c, t] = 4.0 * d0 - 5.0 * d2 + d4
                        v[6 * a + 1, c, t] = d4 + d3 - 4.0 * (d1 + d2)
                        v[6 * a + 2, c, t] = d4 - d3 + 4.0 * (d1 - d2)
                        v[6 * a + 3, c, t] = d4 - d2 + 2.0 * (d3 - d1)
                        v[6 * a + 4, c, t] = d4 - d2 - 2.0 * (d3 - d1)
                        v[6 * a + 5, c, t] = 4.0 * d1 - 5.0 * d3 + d5


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def winograd4_output(mm, n_, th, tw, ho, wo, out, part, parts):
    """Output tiles of F(4x4, 3x3): ``A^T M A`` (4x4) of each tile of ``mm`` (36, R, N*th*tw) into
    ``out`` (R, N*Ho*Wo) (the compact layout the epilogues read; the last tiles are cut).
    Parallel over rows."""
    o_ = mm.shape[1]
    if mm.shape[0] != 36 or mm.shape[2] != n_ * th * tw or out.shape[0] != o_ or out.shape[1] != n_ * ho * wo \
            or ho > 4 * th or wo > 4 * tw or ho <= 4 * (th - 1) or wo <= 4 * (tw - 1):
        raise ValueError("winograd4_output: mm must be (36, R, N*th*tw) and out (R, N*Ho*Wo) with th, tw = ceil(Ho/4, Wo/4)")
    s = np.empty((4, 6, tw), mm.dtype)  # A^T applied down the columns: s[i, b, tx]
    y = np.empty((4, 4 * tw), mm.dtype)  # the tile row's 4 output rows
    for o in range(o_ * part // parts, o_ * (part + 1) // parts):
        for n in range(n_):
            base = n * ho * wo
            for ty in range(th):
                t0 = (n * th + ty) * tw
                for b in range(6):
                    m0 = mm[b, o, t0:t0 + tw]; m1 = mm[6 + b, o, t0:t0 + tw]; m2 = mm[12 + b, o, t0:t0 + tw]
                    m3 = mm[18 + b, o, t0:t0 + tw]; m4 = mm[24 + b, o, t0:t0 + tw]; m5 = mm[30 + b, o, t0:t0 + tw]
                    for tx in range(tw):
                        e12 = m1[tx] + m2[tx]; d12 = m1[tx] - m2[tx]
                        e34 = m3[tx] + m4[tx]; d34 = m3[tx] - m4[tx]
                        s[0, b, tx] = m0[tx] + e12 + e34
                        s[1, b, tx] = d12 + 2.0 * d34
                        s[2, b, tx] = e12 + 4.0 * e34
                        s[3, b, tx] = d12 + 8.0 * d34 + m5[tx]
                for i in range(4):
                    si = s[i]
                    yi = y[i]
                    for tx in range(tw):
                        e12 = si[1, tx] + si[2, tx]; d12 = si[1, tx] - si[2, tx]
                        e34 = si[3, tx] + si[4, tx]; d34 = si[3, tx] - si[4, tx]
                        yi[4 * tx] = si[0, tx] + e12 + e34
                        yi[4 * tx + 1] = d12 + 2.0 * d34
                        yi[4 * tx + 2] = e12 + 4.0 * e34
                        yi[4 * tx + 3] = d12 + 8.0 * d34 + si[5, tx]
                for i in range(min(4, ho - 4 * ty)):
                    row = base + (4 * ty + i) * wo
                    yi = y[i]
                    for col in range(wo):
                        out[o, row + col] = yi[col]
