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


def winograd_filter(wmat, c):
    """``U`` (16, R, C): ``G g G^T`` of each 3x3 filter of a weight (R, C*9) (im2col order),
    computed in float64 and rounded once to the weight's dtype."""
    r = wmat.shape[0]
    g = np.asarray(wmat, np.float64).reshape(r, c, 3, 3)
    u = np.einsum("ai,rcij,bj->abrc", G, g, G)
    return np.ascontiguousarray(u.reshape(16, r, c).astype(wmat.dtype))


def winograd_tiles(ho, wo):
    """Tiles (th, tw) covering an Ho x Wo output with 2x2 tiles."""
    return (ho + 1) // 2, (wo + 1) // 2


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def winograd_input(x, ph, pw, th, tw, v, part, parts):
    """Input tiles of F(2x2, 3x3): ``v[4i + j, c, t] = (B^T d B)[i, j]`` for the 4x4 tile ``d`` of
    ``x`` (N, C, H, W) at rows ``2ty - ph ...``, columns ``2tx - pw ...`` (zero outside the image),
    ``t = (n*th + ty)*tw + tx``; ``v`` (16, C, N*th*tw). Parallel over channels."""
    n_, c_, h_, w_ = x.shape
    if ph < 0 or pw < 0 or th < 1 or tw < 1 or v.shape[0] != 16 or v.shape[1] != c_ or v.shape[2] != n_ * th * tw:
        raise ValueError("winograd_input: v must have shape (16, C, N*th*tw), padding >= 0")
    L = 2 * tw + 2
    rows = np.zeros((4, L), x.dtype)
    for c in range(c_ * part // parts, c_ * (part + 1) // parts):
        for n in range(n_):
            for ty in range(th):
                for i in range(4):
                    yy = 2 * ty - ph + i
                    r = rows[i]
                    r[:] = 0.0
                    if yy < 0 or yy >= h_:
                        continue
                    hi = min(w_, L - pw)
                    for q in range(hi):
                        r[pw + q] = x[n, c, yy, q]
                t0 = (n * th + ty) * tw
                r0 = rows[0]; r1 = rows[1]; r2 = rows[2]; r3 = rows[3]
                for tx in range(tw):
                    j = 2 * tx
                    # columns of B^T d: e_k(col) for the 4 columns
                    a00 = r0[j] - r2[j]; a01 = r0[j + 1] - r2[j + 1]; a02 = r0[j + 2] - r2[j + 2]; a03 = r0[j + 3] - r2[j + 3]
                    a10 = r1[j] + r2[j]; a11 = r1[j + 1] + r2[j + 1]; a12 = r1[j + 2] + r2[j + 2]; a13 = r1[j + 3] + r2[j + 3]
                    a20 = r2[j] - r1[j]; a21 = r2[j + 1] - r1[j + 1]; a22 = r2[j + 2] - r1[j + 2]; a23 = r2[j + 3] - r1[j + 3]
                    a30 = r1[j] - r3[j]; a31 = r1[j + 1] - r3[j + 1]; a32 = r1[j + 2] - r3[j + 2]; a33 = r1[j + 3] - r3[j + 3]
                    t = t0 + tx
                    v[0, c, t] = a00 - a02; v[1, c, t] = a01 + a02; v[2, c, t] = a02 - a01; v[3, c, t] = a01 - a03
                    v[4, c, t] = a10 - a12; v[5, c, t] = a11 + a12; v[6, c, t] = a12 - a11; v[7, c, t] = a11 - a13
                    v[8, c, t] = a20 - a22; v[9, c, t] = a21 + a22; v[10, c, t] = a22 - a21; v[11, c, t] = a21 - a23
                    v[12, c, t] = a30 - a32; v[13, c, t] = a31 + a32; v[14, c, t] = a32 - a31; v[15, c, t] = a31 - a33

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

