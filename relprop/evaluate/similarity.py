"""Batched similarity measures between attribution maps.

These compare two attributions of the same inputs, e.g. the attribution of a trained model against
the one of a model whose parameters were randomised (model-parameter randomisation sanity check,
Adebayo et al. 2018) or the attributions of two different classes (class sensitivity).  Every
measure takes two arrays of equal shape with the batch first and returns one float64 value per
sample (per map for the 2-D measures) without a Python loop over samples -- except
:func:`hog_pearson`, whose HOG descriptor comes from scikit-image one image at a time.

Inputs may be NumPy arrays of any real dtype, torch tensors (converted with
``.detach().cpu().numpy()``) or CuPy arrays (copied to the host); everything is computed in float64.
Non-finite values are rejected, because every measure here would silently turn them into NaN.

Conventions for degenerate input (all documented per function):

* correlations (:func:`pearson`, :func:`spearman`, :func:`hog_pearson`) are NaN for a sample whose
  ``a`` or ``b`` row is constant -- the coefficient is undefined there.  This is SciPy's value
  (``scipy.stats.pearsonr`` / ``spearmanr``) and therefore Quantus 0.6's, but without the
  ``ConstantInputWarning``; aggregate with ``np.nanmean`` or count the NaNs.
* :func:`ssim` with ``data_range=None`` uses each pair's own range; a pair with range 0 (both maps
  the same constant) is defined as SSIM 1 (identical maps), where scikit-image's formula is 0/0.
* :func:`topk_intersection` breaks ties in ``|a|`` by the lower flat feature index (stable sort).

References
----------
Adebayo, J., Gilmer, J., Muelly, M., Goodfellow, I., Hardt, M., & Kim, B. (2018). Sanity checks
for saliency maps. NeurIPS 31.
Wang, Z., Bovik, A. C., Sheikh, H. R., & Simoncelli, E. P. (2004). Image quality assessment: from
error visibility to structural similarity. IEEE Transactions on Image Processing, 13(4), 600-612.
Dalal, N., & Triggs, B. (2005). Histograms of oriented gradients for human detection. CVPR.
Ghorbani, A., Abid, A., & Zou, J. (2019). Interpretation of neural networks is fragile. AAAI.
"""
from __future__ import annotations

import functools
import numbers
from typing import Callable

import numpy as np
from scipy import ndimage
from scipy.stats import rankdata

__all__ = [
    "MEASURES",
    "hog_pearson",
    "measure",
    "pearson",
    "spearman",
    "ssim",
    "topk_intersection",
]

# scikit-image's SSIM constants (Wang et al. 2004, Eq. 7 and 9: C1 = (K1 L)^2, C2 = (K2 L)^2).
_K1 = 0.01
_K2 = 0.03
# scikit-image truncates the Gaussian window at 3.5 sigma (an 11-tap window for sigma = 1.5,
# the window of Wang et al. 2004).
_GAUSS_TRUNCATE = 3.5


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _to_float64(x, name: str) -> np.ndarray:
    """Return ``x`` as a float64 NumPy array, accepting NumPy, torch and CuPy arrays."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor; torch is never imported here
        t = x.detach().cpu()
        try:
            x = t.numpy()
        except TypeError:  # bfloat16 and friends have no NumPy dtype
            x = t.float().numpy()
    elif type(x).__module__.split(".")[0] == "cupy":
        # CuPy refuses implicit conversion (np.asarray raises); copy to the host explicitly.
        x = x.get()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - report what was passed, whatever failed
        raise TypeError(f"{name} must be an array of real numbers, got {type(x).__name__}") from exc
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); "
                         "similarity measures need finite attributions")
    return arr


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = _to_float64(a, "a")
    b = _to_float64(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got a {a.shape} and b {b.shape}")
    return a, b


def _pair_rows(a, b, *, min_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate a batch pair ``(N, ...)`` and flatten it to rows ``(N, F)``."""
    a, b = _pair(a, b)
    if a.ndim < 2:
        raise ValueError(f"a and b must be batches shaped (N, ...) with the batch first, got shape "
                         f"{a.shape}; add a batch axis for a single sample (a[None], b[None])")
    n = a.shape[0]
    features = int(np.prod(a.shape[1:]))
    if features < min_features:
        raise ValueError(f"each sample needs at least {min_features} feature(s), got shape {a.shape} "
                         f"({features} per sample)")
    return a.reshape(n, features), b.reshape(n, features)


def _pair_maps(a, b, *, min_hw: tuple[int, int], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair of map stacks ``(..., H, W)``."""
    a, b = _pair(a, b)
    if a.ndim < 2:
        raise ValueError(f"a and b must be 2-D maps shaped (..., H, W), got shape {a.shape}")
    h, w = a.shape[-2:]
    if h < min_hw[0] or w < min_hw[1]:
        raise ValueError(f"maps of {h}x{w} (shape {a.shape}) are smaller than {what} "
                         f"({min_hw[0]}x{min_hw[1]})")
    return a, b


# --------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------


def _row_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of ``(N, F)`` float64 arrays; NaN for constant rows.

    r = sum (x - mean x)(y - mean y) / (||x - mean x|| ||y - mean y||)  (Pearson 1895).
    Centred rows are scaled by their largest magnitude first (as ``scipy.stats.pearsonr`` does) so
    that neither tiny nor huge attributions under- or overflow in the squares.
    """
    # Exact constancy is decided on the data, not on the centred rows: the mean of a constant row
    # can differ from its value in the last bit, leaving tiny non-zero "deviations".
    constant = (x.max(axis=1, initial=-np.inf) == x.min(axis=1, initial=np.inf)) | (
        y.max(axis=1, initial=-np.inf) == y.min(axis=1, initial=np.inf))
    xm = x - x.mean(axis=1, keepdims=True)
    ym = y - y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        xm /= np.abs(xm).max(axis=1, keepdims=True, initial=0.0)
        ym /= np.abs(ym).max(axis=1, keepdims=True, initial=0.0)
        r = np.einsum("ij,ij->i", xm, ym) / (np.linalg.norm(xm, axis=1) * np.linalg.norm(ym, axis=1))
    r = np.clip(r, -1.0, 1.0)  # rounding can leave |r| a hair above 1
    r[constant] = np.nan
    return r


def pearson(a, b) -> np.ndarray:
    """Pearson correlation per sample over all features.

    Parameters
    ----------
    a, b : array_like, shape (N, ...)
        Two attribution batches of the same shape, batch first; the trailing axes of each sample are
        flattened.  Each sample needs at least 2 features.

    Returns
    -------
    numpy.ndarray of float64, shape (N,)
        ``r_n = cov(a_n, b_n) / (std(a_n) std(b_n))`` (Pearson 1895), in [-1, 1].  NaN where ``a_n``
        or ``b_n`` is constant (the coefficient is undefined), as ``scipy.stats.pearsonr`` and
        Quantus 0.6's ``correlation_pearson`` return, but without a warning.

    References
    ----------
    Adebayo et al. (2018), Sanity checks for saliency maps, NeurIPS (similarity of attributions
    before and after randomisation).
    """
    x, y = _pair_rows(a, b, min_features=2)
    return _row_pearson(x, y)


def spearman(a, b, *, absolute: bool = False) -> np.ndarray:
    """Spearman rank correlation per sample over all features.

    Parameters
    ----------
    a, b : array_like, shape (N, ...)
        Two attribution batches of the same shape, batch first; the trailing axes of each sample are
        flattened.  Each sample needs at least 2 features.
    absolute : bool, default False
        Rank ``|a|`` and ``|b|`` instead of the signed values.  Adebayo et al. (2018) report both:
        the absolute version ignores sign flips, which randomised layers often produce.

    Returns
    -------
    numpy.ndarray of float64, shape (N,)
        Pearson correlation of the ranks (Spearman 1904), ties getting their average rank -- the
        value of ``scipy.stats.spearmanr`` per row.  NaN where a row (of ``|a|`` / ``|b|`` with
        ``absolute``) is constant, as SciPy returns, but without a warning.

    Notes
    -----
    Quantus 0.6's batched ``correlation_spearman`` passes the whole batch to ``spearmanr(a, b,
    axis=1)``, which checks only the first two stacked rows for constancy and then returns one bare
    NaN for everything (on which Quantus fails with an ``AttributeError``).  Here only the constant
    sample is NaN; otherwise the values agree, NaNs included.
    """
    if not isinstance(absolute, (bool, np.bool_)):
        raise TypeError(f"absolute must be a bool, got {absolute!r}")
    x, y = _pair_rows(a, b, min_features=2)
    if absolute:
        x, y = np.abs(x), np.abs(y)
    # rankdata(axis=1) ranks all rows in one call; 'average' is spearmanr's tie rule.
    return _row_pearson(rankdata(x, method="average", axis=1), rankdata(y, method="average", axis=1))


def hog_pearson(a, b, *, orientations: int = 9, pixels_per_cell=(8, 8),
                cells_per_block=(3, 3)) -> np.ndarray:
    """Pearson correlation of the HOG descriptors of two maps.

    Parameters
    ----------
    a, b : array_like, shape (..., H, W)
        Two stacks of 2-D maps of the same shape.  Each map needs at least
        ``pixels_per_cell * cells_per_block`` pixels per side (24x24 with the defaults).
    orientations : int, default 9
        Number of orientation bins.
    pixels_per_cell, cells_per_block : pair of int, default (8, 8) and (3, 3)
        Cell and block sizes of the descriptor (Dalal & Triggs 2005), as in
        ``skimage.feature.hog`` (L2-Hys block normalisation, no gamma correction).

    Returns
    -------
    numpy.ndarray of float64, shape ``a.shape[:-2]``
        Pearson correlation of the two feature vectors per map pair (a 0-d array for a single pair).
        NaN where a descriptor is constant -- e.g. a constant map, whose gradients and so HOG
        features are all zero.

    Notes
    -----
    The one measure here with a Python loop over maps: ``skimage.feature.hog`` describes one image
    per call.  The correlations of all descriptors are then computed in one vectorised step.
    Needs scikit-image (``pip install scikit-image``).

    References
    ----------
    Dalal, N., & Triggs, B. (2005). Histograms of oriented gradients for human detection. CVPR.
    Adebayo et al. (2018), Sanity checks for saliency maps, NeurIPS (HOG similarity).
    """
    try:
        from skimage.feature import hog
    except ImportError as exc:
        raise ImportError("hog_pearson needs scikit-image: pip install scikit-image") from exc
    if isinstance(orientations, (bool, np.bool_)) or not isinstance(orientations, numbers.Integral) \
            or orientations < 1:
        raise ValueError(f"orientations must be a positive int, got {orientations!r}")
    ppc = _int_pair(pixels_per_cell, "pixels_per_cell")
    cpb = _int_pair(cells_per_block, "cells_per_block")
    x, y = _pair_maps(a, b, min_hw=(ppc[0] * cpb[0], ppc[1] * cpb[1]),
                      what="one HOG block (pixels_per_cell * cells_per_block)")
    lead = x.shape[:-2]
    maps_x = x.reshape((-1,) + x.shape[-2:])
    maps_y = y.reshape((-1,) + y.shape[-2:])
    if maps_x.shape[0] == 0:
        return np.empty(lead, dtype=np.float64)
    kw = dict(orientations=int(orientations), pixels_per_cell=ppc, cells_per_block=cpb,
              feature_vector=True)
    fx = np.stack([hog(m, **kw) for m in maps_x]).astype(np.float64, copy=False)
    fy = np.stack([hog(m, **kw) for m in maps_y]).astype(np.float64, copy=False)
    return _row_pearson(fx, fy).reshape(lead)


def _int_pair(value, name: str) -> tuple[int, int]:
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                                 and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a pair of positive ints, got {value!r}")
    return int(pair[0]), int(pair[1])


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def ssim(a, b, *, data_range=None, win_size: int | None = 7, gaussian_weights: bool = False,
         sigma: float = 1.5) -> np.ndarray:
    """Mean structural similarity (SSIM) of each pair of 2-D maps.

    Parameters
    ----------
    a, b : array_like, shape (..., H, W)
        Two stacks of maps of the same shape; every leading index is one map pair, all filtered in
        one call.  ``H`` and ``W`` must be at least ``win_size``.
    data_range : float or None, default None
        Dynamic range ``L`` in the stabilising constants.  ``None`` uses each pair's own range
        ``max(a.max(), b.max()) - min(a.min(), b.min())``, as Quantus 0.6's ``ssim`` does; a
        positive number applies to every pair.
    win_size : odd int >= 3 or None, default 7
        Side of the sliding window; with ``gaussian_weights`` it sets only the border crop and the
        sample-covariance factor (the Gaussian sets the weights), as in scikit-image.  ``None`` means
        scikit-image's default: 7, or ``2 * int(3.5 * sigma + 0.5) + 1`` with ``gaussian_weights``.
    gaussian_weights : bool, default False
        Weight each window by a Gaussian of width ``sigma`` truncated at 3.5 sigma instead of
        uniformly.
    sigma : float, default 1.5
        Standard deviation of the Gaussian window.

    Returns
    -------
    numpy.ndarray of float64, shape ``a.shape[:-2]``
        The SSIM map averaged over the window positions at least ``(win_size - 1) // 2`` pixels from
        the border; a 0-d array for a single pair of 2-D maps.

    Notes
    -----
    Wang et al. (2004), Eq. 13, with windowed (weighted) means ``mu``, variances ``s^2`` and
    covariance ``s_xy`` (Eq. 14-16 for Gaussian weights)::

        SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
        C1 = (0.01 L)^2,  C2 = (0.03 L)^2.

    This reproduces ``skimage.metrics.structural_similarity(a2d, b2d, win_size=win_size,
    data_range=L, gaussian_weights=gaussian_weights, sigma=sigma)`` per map: the same K1, K2,
    reflect-mode filters (``uniform_filter`` or ``gaussian_filter`` with ``truncate=3.5``), the
    sample-covariance factor ``n / (n - 1)`` with ``n = win_size**2`` (applied with either
    weighting) and the border crop.

    With ``data_range=None`` a pair whose maps are the same constant has range 0, so ``C1 = C2 = 0``
    and Eq. 13 is 0/0 (scikit-image then returns NaN or 1 depending on rounding); that pair is
    defined as 1, the value for identical maps with any positive range.  Constant but different
    maps have a positive range and are computed as usual.
    """
    if not isinstance(gaussian_weights, (bool, np.bool_)):
        raise TypeError(f"gaussian_weights must be a bool, got {gaussian_weights!r}")
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, numbers.Real) \
            or not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    sigma = float(sigma)
    if win_size is None:
        win_size = 2 * int(_GAUSS_TRUNCATE * sigma + 0.5) + 1 if gaussian_weights else 7
    if isinstance(win_size, (bool, np.bool_)) or not isinstance(win_size, numbers.Integral) \
            or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd int >= 3 (or None), got {win_size!r}")
    win_size = int(win_size)
    if data_range is not None:
        if isinstance(data_range, (bool, np.bool_)) or not isinstance(data_range, numbers.Real) \
                or not np.isfinite(data_range) or data_range <= 0:
            raise ValueError(f"data_range must be None or a finite number > 0, got {data_range!r}")
    x, y = _pair_maps(a, b, min_hw=(win_size, win_size), what=f"win_size={win_size}")
    lead = x.shape[:-2]
    if x.size == 0:
        return np.empty(lead, dtype=np.float64)

    if data_range is None:
        hi = np.maximum(x.max(axis=(-2, -1)), y.max(axis=(-2, -1)))
        lo = np.minimum(x.min(axis=(-2, -1)), y.min(axis=(-2, -1)))
        rng = hi - lo
        degenerate = rng == 0
        # Any positive placeholder keeps the arithmetic warning-free; those pairs are set to 1 below.
        rng = np.where(degenerate, 1.0, rng)[..., None, None]
    else:
        degenerate = None
        rng = float(data_range)

    # One filter call over the five moment images of every pair: the filters run along the last
    # two axes only, so each map is filtered exactly as scikit-image filters it on its own.
    moments = np.stack([x, y, x * x, y * y, x * y])
    if gaussian_weights:
        filtered = ndimage.gaussian_filter(moments, sigma, mode="reflect", truncate=_GAUSS_TRUNCATE,
                                           axes=(-2, -1))
    else:
        filtered = ndimage.uniform_filter(moments, size=win_size, mode="reflect", axes=(-2, -1))
    ux, uy, uxx, uyy, uxy = filtered

    n_win = win_size ** 2
    cov_norm = n_win / (n_win - 1)  # sample covariance, scikit-image's default
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_K1 * rng) ** 2
    c2 = (_K2 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))

    pad = (win_size - 1) // 2  # ignore window positions that reach past the border
    h, w = x.shape[-2:]
    out = s[..., pad:h - pad, pad:w - pad].mean(axis=(-2, -1), dtype=np.float64)
    if degenerate is not None:
        out = np.where(degenerate, 1.0, out)
    return np.asarray(out, dtype=np.float64).reshape(lead)


# --------------------------------------------------------------------------------------------
# top-k intersection
# --------------------------------------------------------------------------------------------


def topk_intersection(a, b, *, k=0.1) -> np.ndarray:
    """Fraction of the top-k features of ``a`` that are also top-k features of ``b``.

    Parameters
    ----------
    a, b : array_like, shape (N, ...)
        Two attribution batches of the same shape, batch first; the trailing axes are flattened.
    k : int or float, default 0.1
        An int is a count of features, ``1 <= k <= F``; a float in (0, 1] is a fraction of the
        ``F`` features per sample, rounded half up to a count and at least 1.  Note that ``k=1`` is
        one feature while ``k=1.0`` is all of them.

    Returns
    -------
    numpy.ndarray of float64, shape (N,)
        ``|top_k(|a_n|) & top_k(|b_n|)| / k`` (Ghorbani et al. 2019), in [0, 1].

    Notes
    -----
    Features are ranked by absolute value.  Ties are broken deterministically by a stable sort of
    ``-|a|``: among equal magnitudes, the feature with the lower flat index ranks higher (the same
    rule for ``b``).

    References
    ----------
    Ghorbani, A., Abid, A., & Zou, J. (2019). Interpretation of neural networks is fragile. AAAI.
    """
    x, y = _pair_rows(a, b, min_features=1)
    n, f = x.shape
    count = _topk_count(k, f)
    rows = np.arange(n)[:, None]
    top_x = np.argsort(-np.abs(x), axis=1, kind="stable")[:, :count]
    top_y = np.argsort(-np.abs(y), axis=1, kind="stable")[:, :count]
    in_x = np.zeros((n, f), dtype=bool)
    in_x[rows, top_x] = True
    # each of b's top-k indices is distinct, so the hits count the intersection exactly
    hits = in_x[rows, top_y].sum(axis=1)
    return hits.astype(np.float64) / count


def _topk_count(k, features: int) -> int:
    if isinstance(k, (bool, np.bool_)):
        raise ValueError(f"k must be an int count or a float fraction in (0, 1], got {k!r}")
    if isinstance(k, numbers.Integral):
        if not 1 <= k <= features:
            raise ValueError(f"k as a count must be in [1, {features}] (features per sample), got {k}")
        return int(k)
    if isinstance(k, numbers.Real):
        if not (np.isfinite(k) and 0 < k <= 1):
            raise ValueError(f"k as a fraction must be in (0, 1], got {k!r}")
        # round half up: a product such as 0.29 * 100 = 28.999999999999996 must count 29, not 28
        return max(1, min(features, int(np.floor(k * features + 0.5))))
    raise ValueError(f"k must be an int count or a float fraction in (0, 1], got {k!r}")


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------


def _batch_of_maps(a, b, fn: Callable, name: str) -> np.ndarray:
    # The registry promises one value per sample: a (N, C, H, W) stack gives (N, C) values, which
    # are averaged over the channel-like axes (channels kept by the caller are weighted equally).
    shape = np.shape(a)
    if len(shape) < 3:
        raise ValueError(f"MEASURES[{name!r}] compares batches of 2-D maps shaped (N, H, W) or "
                         f"(N, ..., H, W), got shape {tuple(shape)}; use 'spearman', 'pearson' or "
                         f"'topk_intersection' for non-image attributions")
    values = fn(a, b)
    return values.reshape(values.shape[0], -1).mean(axis=1) if values.ndim > 1 else values


def _ssim_batch(a, b) -> np.ndarray:
    """SSIM per sample of (N, H, W) maps with the default parameters; (N, ..., H, W) stacks give
    the mean over the maps of each sample."""
    return _batch_of_maps(a, b, ssim, "ssim")


def _hog_pearson_batch(a, b) -> np.ndarray:
    """HOG-feature Pearson correlation per sample of (N, H, W) maps with the default parameters;
    (N, ..., H, W) stacks give the mean over the maps of each sample."""
    return _batch_of_maps(a, b, hog_pearson, "hog_pearson")


MEASURES: dict[str, Callable[[object, object], np.ndarray]] = {
    "ssim": _ssim_batch,
    "spearman": spearman,
    "spearman_abs": functools.partial(spearman, absolute=True),
    "pearson": pearson,
    "hog_pearson": _hog_pearson_batch,
    "topk_intersection": topk_intersection,
}


def measure(name: str) -> Callable[[object, object], np.ndarray]:
    """Return the similarity measure ``callable(a, b) -> (N,) float64`` registered as ``name``.

    Raises
    ------
    ValueError
        For a name not in :data:`MEASURES`; the message lists the valid names.
    """
    if isinstance(name, str) and name in MEASURES:
        return MEASURES[name]
    raise ValueError(f"unknown similarity measure {name!r}; valid names: {', '.join(sorted(MEASURES))}")
