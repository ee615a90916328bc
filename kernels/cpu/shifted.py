"""Stride-1 convolutions as shifted GEMMs over a padded, flattened input (no im2col).

For a stride-1 convolution with a ``kh x kw`` window, pad each image to ``(Hp, Wp)`` and lay
the batch out channel-major and flat: ``xf[c, n*Hp*Wp + y*Wp + x]``. Output position
``q = n*Hp*Wp + y*Wp + x`` (``y < Ho = Hp - kh + 1``, ``x < Wo = Wp - kw + 1``) reads input
``q + i*Wp + j`` for tap ``(i, j)``, so

    Z[r, q] = sum_(i, j) sum_c W[r, c, i, j] xf[c, q + i*Wp + j]

is ``kh*kw`` GEMMs ``Z += W_ij @ xf[:, i*Wp + j : i*Wp + j + L]`` over shifted views of one
buffer (``L = N*Hp*Wp``; BLAS accumulates with beta = 1), the "wide" result holding every
``(y, x)`` of the padded grid of which :func:`crop_wide` keeps the valid ones. The same
multiplications as im2col + one GEMM, without writing the ``kh*kw``-times larger column
matrix: on the 2-core reference machine 1.5-1.7x faster for VGG's 64- and 128-channel layers
(``bench/results/2026-12-02-cpu-shifted-conv.md``).

The GEMMs run on relprop's private single-threaded copy of numpy's OpenBLAS, in column blocks over
relprop's threads (:mod:`relprop.kernels.cpu.blas`), else on numpy's own OpenBLAS through its CBLAS
entry point; where numpy's BLAS does not export one, :data:`AVAILABLE` is False and convolutions
take the im2col route.
"""
import ctypes
import os

import numba as nb
import numpy as np

from . import blas
from .threads import threaded

_ROW_MAJOR, _NO_TRANS = 101, 111


def _find_cblas():
    """numpy's bundled OpenBLAS CBLAS ``?gemm`` (ILP64 in numpy >= 2 wheels) as ctypes functions
    by dtype (the fallback where relprop's private copy cannot be made)."""
    path = blas._numpy_openblas()
    if path is None:
        return None
    found = blas.gemm_functions(ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LOCAL))  # numpy's own copy
    return None if found is None else found[0]


_GEMM = _find_cblas()
AVAILABLE = _GEMM is not None


def wide_geometry(h, w, kh, kw, ph, pw):
    """(Hp, Wp, Ho, Wo, tail) of a stride-1 convolution on the padded grid; ``tail`` extra
    zero columns after the last image keep every shifted view inside the buffer."""
    hp, wp = h + 2 * ph, w + 2 * pw
    return hp, wp, hp - kh + 1, wp - kw + 1, (kh - 1) * wp + (kw - 1)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def pad_flat(x, ph, pw, out, part, parts):
    """``out[c, n*Hp*Wp + (y+ph)*Wp + (x+pw)] = x[n, c, y, x]``, zero elsewhere (the padding and
    the tail). ``x`` (N, C, H, W), ``out`` (C, N*Hp*Wp + tail). Parallel over channels."""
    n_, c_, h_, w_ = x.shape
    hp, wp = h_ + 2 * ph, w_ + 2 * pw
    if ph < 0 or pw < 0 or out.shape[0] != c_ or out.shape[1] < n_ * hp * wp:
        raise ValueError("pad_flat: out must have shape (C, >= N*Hp*Wp) and padding be >= 0")
    for c in range(c_ * part // parts, c_ * (part + 1) // parts):
        out[c, :] = 0.0
        for n in range(n_):
            base = n * hp * wp + ph * wp + pw
            for y in range(h_):
                row = base + y * wp
                for t in range(w_):
                    out[c, row + t] = x[n, c, y, t]


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def crop_wide(zw, n_, hp, wp, ho, wo, out, part, parts):
    """``out[r, n*Ho*Wo + y*Wo + x] = zw[r, n*Hp*Wp + y*Wp + x]``: the valid positions of a
    wide GEMM result (R, >= N*Hp*Wp) in the compact (R, N*Ho*Wo) layout the epilogues read."""
    r_ = zw.shape[0]
    if ho < 1 or wo < 1 or ho > hp or wo > wp or zw.shape[1] < n_ * hp * wp or out.shape[0] != r_ \
            or out.shape[1] != n_ * ho * wo:
        raise ValueError("crop_wide: zw must be (R, >= N*Hp*Wp) and out (R, N*Ho*Wo) with Ho <= Hp, Wo <= Wp")
    for r in range(r_ * part // parts, r_ * (part + 1) // parts):
        for n in range(n_):
            for y in range(ho):
                src = n * hp * wp + y * wp
                dst = (n * ho + y) * wo
                for t in range(wo):
                    out[r, dst + t] = zw[r, src + t]


def taps(wmat, c, kh, kw):
    """A weight (R, C*kh*kw) (im2col order) as ``kh*kw`` contiguous tap matrices (kh*kw, R, C)."""
    r = wmat.shape[0]
    return np.ascontiguousarray(wmat.reshape(r, c, kh, kw).transpose(2, 3, 0, 1).reshape(kh * kw, r, c))


def gemm_taps(wtaps, xf, wp, kw, zw):
    """``zw (R, L) = sum_t wtaps[t] (R, C) @ xf[:, off_t : off_t + L]``, ``off_t = (t // kw)*Wp + t % kw``:
    one BLAS GEMM per tap over shifted views of ``xf`` (C, S), accumulating (beta = 1)."""
    t_, r, c = wtaps.shape
    length = zw.shape[1]
    if xf.shape[0] != c or zw.shape[0] != r or xf.dtype != zw.dtype or wtaps.dtype != zw.dtype:
        raise ValueError("gemm_taps: wtaps (T, R, C), xf (C, S) and zw (R, L) must match, one dtype")
    if (t_ - 1) // kw * wp + (t_ - 1) % kw + length > xf.shape[1]:
        raise ValueError("gemm_taps: a shifted view would read past the end of xf (missing tail)")
    for a in (wtaps, xf, zw):
        if not a.flags.c_contiguous:
            raise ValueError("gemm_taps: arrays must be C-contiguous")
    private = blas.private_gemm(zw.dtype)
    f = private or _GEMM[zw.dtype]
    item = zw.itemsize
    s = xf.shape[1]

    def columns(lo, hi):
        for t in range(t_):
            off = (t // kw) * wp + t % kw
            f(_ROW_MAJOR, _NO_TRANS, _NO_TRANS, r, hi - lo, c, 1.0, wtaps[t].ctypes.data, c,
              xf.ctypes.data + (off + lo) * item, s, 0.0 if t == 0 else 1.0, zw.ctypes.data + lo * item, length)

    if private is not None and t_ * r * c * length >= blas.SPLIT_MNK:  # column blocks on relprop's threads
        blas.run_blocks(columns, length, blas.MIN_COLS)
    else:
        columns(0, length)
