"""Faithfulness and axiomatic metrics of attributions: pixel flipping, region perturbation, AOPC,
sensitivity-n, completeness, input invariance and continuity.

Every metric scores the model's *pre-softmax* target score ``s_c`` (``rp.scores``: the logits
when the model ends in a Softmax). The perturbed inputs of all samples and all steps are built
as one array and run through the forward pass together (in chunks of at most ``max_rows`` rows,
by default as many as fit in about 64 MiB per array), never one sample or one step at a time.
Every metric takes ``backend=None | "cpu" | "gpu"`` (where the passes run; arrays in and out
stay numpy).

Conventions (and how they map onto Quantus 0.6, which the peer tests check):

* curves are raw target scores with the unperturbed score in column 0; Quantus returns the
  perturbed steps only (``PixelFlipping``: raw scores, ``RegionPerturbation``: the drop
  ``s(x) - s(x_k)``);
* patches form a non-overlapping grid (as Quantus); an input whose H or W the patch size does
  not divide is refused (Quantus pads it instead);
* ranks are stable: equal relevance sums keep the patches' index order (row-major grid);
* every random draw comes from ``np.random.default_rng(seed)`` and is documented, so a
  separately written loop reproduces it exactly.

References
----------
Samek, Binder, Montavon, Lapuschkin, Mueller (2017): Evaluating the visualization of what a deep
    neural network has learned. IEEE TNNLS 28(11), 2660-2673.
Ancona, Ceolini, Oeztireli, Gross (2018): Towards better understanding of gradient-based
    attribution methods for deep neural networks. ICLR.
Sundararajan, Taly, Yan (2017): Axiomatic attribution for deep networks. ICML.
Kindermans, Hooker, Adebayo, Alber, Schuett, Daehne, Erhan, Kim (2019): The (un)reliability of
    saliency methods. In: Explainable AI, LNCS 11700, 267-280.
Montavon, Samek, Mueller (2018): Methods for interpreting and understanding deep neural
    networks. Digital Signal Processing 73, 1-15.
"""
from __future__ import annotations

import contextvars
import functools
import inspect
import numbers
from fractions import Fraction

import numpy as np

from ..api import attribute
from ..api import scores as _api_scores
from ..core.checks import _check_model, _check_target, _check_x
from ..core.graph import Conv2d, Dense, Graph, Node, Sequential
from ..methods import METHODS

__all__ = ["pixel_flipping", "region_perturbation", "aopc", "sensitivity_n", "completeness",
           "input_invariance", "continuity", "shifted_model"]

_BACKEND = contextvars.ContextVar("relprop_evaluate_backend", default=None)


def scores(net, x):
    """``rp.scores`` on the backend the public function was called with (``backend=``)."""
    return _api_scores(net, x, backend=_BACKEND.get())


def _on_backend(fn):
    """Adds ``backend=None`` (None: the CPU for numpy inputs, ``"cpu"`` or ``"gpu"``: where the
    forward and explanation passes run; inputs and results stay numpy) to a public metric."""
    @functools.wraps(fn)
    def wrapper(*args, backend=None, **kwargs):
        if backend not in (None, "cpu", "gpu"):
            raise ValueError(f"backend must be None, 'cpu' or 'gpu', got {backend!r}")
        token = _BACKEND.set(backend)
        try:
            return fn(*args, **kwargs)
        finally:
            _BACKEND.reset(token)

    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    at = next((i for i, q in enumerate(params) if q.kind is q.VAR_KEYWORD), len(params))
    params.insert(at, inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default=None))
    wrapper.__signature__ = sig.replace(parameters=params)
    return wrapper


#: bytes one chunk of perturbed inputs may take (the where() result; its two operands are the
#: same size): bounds the memory of the large batches without a Python loop per step
_CHUNK_BYTES = 64 << 20

_FILL_NAMES = ("mean", "blur", "uniform", "black", "white")


# -- parameter checks -----------------------------------------------------------------------
def _int(v, name, low=None, high=None):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {v!r} ({type(v).__name__})")
    v = int(v)
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v}")
    if high is not None and v > high:
        raise ValueError(f"{name} must be <= {high}, got {v}")
    return v


def _positive(v, name):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _choice(v, name, options):
    if not isinstance(v, str) or v not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(o) for o in options)}, got {v!r}")
    return v


def _max_rows(max_rows, x):
    if max_rows is None:
        return max(1, _CHUNK_BYTES // max(1, x[0].size * x.itemsize))
    return _int(max_rows, "max_rows", low=1)


def _inputs(net, x, name="x"):
    """``x`` checked against the model; returns (x, number of classes)."""
    _check_model(net)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array (N, ...) of float32 or float64, got {type(x).__name__}")
    x, shapes = _check_x(net, x, name=name)
    return x, shapes[net.score_node][0]


def _targets(net, x, target, classes):
    t = _check_target(target, x.shape[0], classes)
    if t is None:
        t = np.asarray(scores(net, x)).argmax(axis=1).astype(np.int64)
    return t


def _attributions(a, x, name="attributions"):
    """Attributions as float64, shaped as ``x`` (for images (N, C, H, W) also (N, 1, H, W): one
    heatmap for all channels)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array shaped as x {x.shape}, got {type(a).__name__}")
    if a.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    ok = a.shape == x.shape or (x.ndim == 4 and a.shape == (x.shape[0], 1) + x.shape[2:])
    if not ok:
        alt = f" or {(x.shape[0], 1) + x.shape[2:]}" if x.ndim == 4 else ""
        raise ValueError(f"{name} must have the shape of x {x.shape}{alt}, got {a.shape}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"{name} contain NaN or Inf (first at index {bad})")
    return a


def _layout(x, patch, what):
    """(grid shape, number of patches) of per-sample input ``x[0]``: images (C, H, W) are cut
    into ``patch x patch`` squares over all channels; tabular (F,) inputs into single features."""
    patch = _int(patch, "patch", low=1)
    if x.ndim == 4:
        h, w = x.shape[2:]
        if h % patch or w % patch:
            raise ValueError(f"{what}: patch={patch} does not divide the input's H x W = {h} x {w}; "
                             f"crop or pad x to a multiple of {patch} (Quantus pads the edges instead)")
        return patch, (h // patch, w // patch)
    if x.ndim == 2:
        if patch != 1:
            raise ValueError(f"{what}: tabular inputs (N, F) take patch=1 (one feature per patch), got patch={patch}")
        return 1, (x.shape[1],)
    raise ValueError(f"{what} expects images (N, C, H, W) or tabular inputs (N, F), got x of shape {x.shape}")


def _broadcasts(shape, to):
    try:
        return np.broadcast_shapes(shape, to) == tuple(to)
    except ValueError:
        return False


def _baseline(fill, x, seed, blur_sigma, name="fill"):
    """The per-sample replacement values, an array shaped as ``x`` (x's dtype).

    number: that constant; ``"mean"``: each sample's mean per channel (images) or over its
    features (other shapes); ``"blur"``: each image blurred per channel with a Gaussian of
    ``blur_sigma`` pixels (``scipy.ndimage.gaussian_filter``, mode "reflect", truncate 4);
    ``"uniform"``: ``lo + (hi - lo) * u`` with ``lo, hi`` each sample's min and max and
    ``u = np.random.default_rng(seed).random(x.shape)`` (one random image per sample, shared by
    all steps); ``"black"`` / ``"white"``: each sample's min / max over all its values (Quantus's
    "black" / "white"); an array broadcastable to one sample ``x.shape[1:]`` (a baseline image)
    or shaped as ``x`` (one baseline per sample)."""
    # checked whatever the fill, so a bad value never passes silently
    seed = _int(seed, "seed", low=0)
    blur_sigma = _positive(blur_sigma, "blur_sigma")
    n = x.shape[0]
    flat = x.reshape(n, -1).astype(np.float64)
    lead = (n,) + (1,) * (x.ndim - 1)
    if isinstance(fill, str):
        _choice(fill, name, _FILL_NAMES)
        if fill == "mean":
            if x.ndim == 4:
                b = x.astype(np.float64).mean(axis=(2, 3), keepdims=True)
            else:
                b = flat.mean(axis=1).reshape(lead)
        elif fill == "blur":
            if x.ndim != 4:
                raise ValueError(f"{name}='blur' needs images (N, C, H, W), got x of shape {x.shape}")
            from scipy.ndimage import gaussian_filter

            b = gaussian_filter(x.astype(np.float64), sigma=(0, 0, blur_sigma, blur_sigma), mode="reflect",
                                truncate=4.0)
        elif fill == "uniform":
            lo, hi = flat.min(axis=1).reshape(lead), flat.max(axis=1).reshape(lead)
            b = lo + (hi - lo) * np.random.default_rng(seed).random(x.shape)
        elif fill == "black":
            b = flat.min(axis=1).reshape(lead)
        else:
            b = flat.max(axis=1).reshape(lead)
    elif isinstance(fill, numbers.Real) and not isinstance(fill, (bool, np.bool_)):
        if not np.isfinite(fill):
            raise ValueError(f"{name} must be finite, got {fill!r}")
        b = np.float64(fill)
    elif isinstance(fill, np.ndarray):
        if fill.dtype.kind not in "fiu":
            raise TypeError(f"{name} array must be real numeric, got dtype {fill.dtype}")
        if fill.shape != x.shape and not _broadcasts(fill.shape, x.shape[1:]):
            raise ValueError(f"{name} array of shape {fill.shape} broadcasts neither to one sample "
                             f"{x.shape[1:]} nor is it shaped as x {x.shape}")
        if not np.all(np.isfinite(fill)):
            raise ValueError(f"{name} array contains NaN or Inf")
        b = fill.astype(np.float64)
    else:
        raise TypeError(f"{name} must be a number, an array or one of {', '.join(map(repr, _FILL_NAMES))}, "
                        f"got {fill!r} ({type(fill).__name__})")
    return np.ascontiguousarray(np.broadcast_to(b, x.shape), dtype=x.dtype)


def _ranks(a, patch, grid, order):
    """Rank (0 = first perturbed) of every patch, (N, P): patches ordered by their summed
    relevance over pixels and channels, descending for "morf", ascending for "lerf"; equal sums
    keep the index order (stable sort)."""
    _choice(order, "order", ("morf", "lerf"))
    n = a.shape[0]
    if a.ndim == 4:
        c = a.shape[1]
        sums = a.reshape(n, c, grid[0], patch, grid[1], patch).sum(axis=(1, 3, 5)).reshape(n, -1)
    else:
        sums = a.reshape(n, -1)
    order_ix = np.argsort(-sums if order == "morf" else sums, axis=1, kind="stable")
    rank = np.empty_like(order_ix)
    np.put_along_axis(rank, order_ix, np.arange(sums.shape[1])[None, :], axis=1)
    return rank


def _expand(mask, x_rows, patch, grid):
    """Per-patch masks (rows, P) broadcast against the rows' inputs, and the inputs reshaped to
    match: images as (rows, C, Hp, p, Wp, p), tabular as (rows, F)."""
    rows = mask.shape[0]
    if x_rows.ndim == 4:
        c = x_rows.shape[1]
        return (mask.reshape(rows, 1, grid[0], 1, grid[1], 1),
                lambda v: v.reshape(rows, c, grid[0], patch, grid[1], patch))
    return mask, lambda v: v


def _curves(net, x, base, rank, counts, t, patch, grid, max_rows):
    """Target scores (N, K) of ``x`` with its ``counts[k]`` first-ranked patches replaced by
    ``base``; all N * K perturbed inputs built vectorised and scored in chunks of ``max_rows``."""
    n, k = x.shape[0], len(counts)
    out = np.empty(n * k, np.float64)
    counts = np.asarray(counts, np.int64)
    for r0 in range(0, n * k, max_rows):
        r = np.arange(r0, min(r0 + max_rows, n * k))
        i, j = r // k, r % k
        m = rank[i] < counts[j][:, None]
        m, view = _expand(m, x, patch, grid)
        xp = np.where(m, view(base[i]), view(x[i])).reshape((len(r),) + x.shape[1:])
        out[r] = np.asarray(scores(net, xp), np.float64)[np.arange(len(r)), t[i]]
    return out.reshape(n, k)


# -- perturbation curves ----------------------------------------------------------------------
@_on_backend
def pixel_flipping(net, x, attributions, target=None, *, patch=1, fill=0.0, order="morf", steps=20, seed=0,
                   blur_sigma=1.0, max_rows=None):
    """Pixel-flipping curves: the target score as ever more of the most (or least) relevant
    patches are replaced (Bach et al. 2015, PLoS ONE 10(7); Samek et al. 2017, Sec. III).

    Patches are ``patch x patch`` squares over all channels of an image (N, C, H, W) or single
    features of a tabular input (N, F) (``patch=1``); they are ranked by their summed relevance
    (over the patch's pixels and channels), descending for ``order="morf"`` (most relevant first),
    ascending for ``"lerf"``, equal sums in index order (row-major). Column ``k`` (k = 0..steps)
    holds ``s_c`` of the input whose first ``m_k = round(k * P / steps)`` patches are
    replaced by ``fill`` (P patches; Python's ``round`` of the exact fraction, halves to even;
    column 0 is the
    unperturbed score, column ``steps`` the fully replaced input).

    Parameters
    ----------
    net : relprop model
    x : numpy array (N, C, H, W) or (N, F), float32 or float64
    attributions : array shaped as ``x`` (or (N, 1, H, W) for images)
    target : None (each sample's argmax of ``rp.scores(net, x)``), int, or int array (N,)
    patch : int, side of the square patches; must divide H and W (tabular: 1)
    fill : number, ``"mean"`` (per-sample per-channel mean), ``"blur"`` (Gaussian blur of the
        sample, ``blur_sigma`` pixels), ``"uniform"`` (``U[min x_i, max x_i]`` per sample, drawn
        as ``np.random.default_rng(seed).random(x.shape)``, one image used for all steps),
        ``"black"`` / ``"white"`` (per-sample min / max, as Quantus), or an array broadcastable
        to one sample (a baseline image) or shaped as ``x``
    order : ``"morf"`` or ``"lerf"``
    steps : int >= 1
    seed : int >= 0, for ``fill="uniform"``
    blur_sigma : float > 0, for ``fill="blur"``
    max_rows : rows of perturbed inputs per forward call (None: about 64 MiB of inputs)

    Returns
    -------
    float64 array (N, steps + 1) of target scores.

    Notes
    -----
    ``quantus.PixelFlipping(features_in_step=C * q, perturb_baseline=b, normalise=False,
    abs=False)`` called with ``softmax=False`` and the channel-summed attributions (N, 1, H, W)
    returns ``pixel_flipping(..., patch=1, fill=b, steps=H * W // q)[:, 1:]``: Quantus flattens
    the input and removes ``features_in_step`` values per step (MORF only), without the
    unperturbed column; with all channels tied per pixel that is q whole pixels per step.
    """
    x, classes = _inputs(net, x)
    a = _attributions(attributions, x)
    patch, grid = _layout(x, patch, "pixel_flipping")
    steps = _int(steps, "steps", low=1)
    _choice(order, "order", ("morf", "lerf"))
    rows = _max_rows(max_rows, x)
    base = _baseline(fill, x, seed, blur_sigma)
    t = _targets(net, x, target, classes)  # last: every parameter is checked before a forward pass
    p = int(np.prod(grid))
    counts = [round(Fraction(k * p, steps)) for k in range(steps + 1)]  # exact: the contract's round()
    return _curves(net, x, base, _ranks(a, patch, grid, order), counts, t, patch, grid, rows)


@_on_backend
def region_perturbation(net, x, attributions, target=None, *, patch=8, fill="uniform", order="morf",
                        regions=100, seed=0, blur_sigma=1.0, max_rows=None):
    """Region perturbation (Samek et al. 2017, IEEE TNNLS 28(11), Sec. III, Eq. 10-11): regions
    are replaced one at a time, cumulatively, in the order of their relevance:
    ``x^(0) = x``, ``x^(k) = g(x^(k-1), r_k)``.

    Regions are the non-overlapping ``patch x patch`` squares of a grid over the image (all
    channels), ranked by summed relevance (descending for ``"morf"``, ascending for ``"lerf"``,
    ties in row-major index order). Column ``k`` holds ``s_c(x^(k))``, k = 0..regions.

    Parameters
    ----------
    net, x, attributions, target : as in :func:`pixel_flipping`
    patch : int, region side; must divide H and W
    fill : as in :func:`pixel_flipping`; the default ``"uniform"`` follows the paper (regions
        replaced by uniform noise): ``U[min x_i, max x_i]``, one seeded random image per sample
    order : ``"morf"`` or ``"lerf"``
    regions : int, 1 <= regions <= number of patches
    seed, blur_sigma, max_rows : as in :func:`pixel_flipping`

    Returns
    -------
    float64 array (N, regions + 1) of target scores.

    Notes
    -----
    Mapping to ``quantus.RegionPerturbation`` (0.6, ``softmax=False``, ``normalise=False``,
    ``abs=False``): Quantus returns the drops without column 0,
    ``q = curves[:, :1] - curves[:, 1:]``, and uses the same non-overlapping grid (its patches
    do not overlap; it pads H, W that the patch does not divide, which this function refuses).
    Its default baseline ``"black"`` is each sample's minimum (``fill="black"`` here); its
    ``"uniform"`` draws one U[0, 1) value per sample and step for the whole patch, not a noise
    image, so only the deterministic baselines can agree exactly. The paper (Sec. III) ranks
    9x9 windows around the most relevant locations, which may overlap; this function follows
    Quantus's grid.
    """
    x, classes = _inputs(net, x)
    a = _attributions(attributions, x)
    patch, grid = _layout(x, patch, "region_perturbation")
    p = int(np.prod(grid))
    regions = _int(regions, "regions", low=1)
    if regions > p:
        raise ValueError(f"regions={regions} exceeds the {p} patches of {patch}x{patch} in this input; "
                         f"use regions <= {p} or a smaller patch")
    _choice(order, "order", ("morf", "lerf"))
    rows = _max_rows(max_rows, x)
    base = _baseline(fill, x, seed, blur_sigma)
    t = _targets(net, x, target, classes)  # last: every parameter is checked before a forward pass
    return _curves(net, x, base, _ranks(a, patch, grid, order), list(range(regions + 1)), t, patch, grid, rows)


def aopc(curves):
    """Area over the perturbation curve per sample (Samek et al. 2017, Eq. 12):
    ``AOPC = 1 / (L + 1) * sum_{k=0}^{L} (s(x^(0)) - s(x^(k)))``, L = steps (the paper also
    averages over the data set; average the result for that).

    Parameters
    ----------
    curves : array (N, L + 1), column 0 the unperturbed score (:func:`pixel_flipping`,
        :func:`region_perturbation`)

    Returns
    -------
    float64 array (N,)
    """
    if not isinstance(curves, np.ndarray) or curves.dtype.kind not in "fiu":
        raise TypeError(f"curves must be a real numeric numpy array (N, steps + 1), got {type(curves).__name__}")
    if curves.ndim != 2 or curves.shape[0] == 0 or curves.shape[1] == 0:
        raise ValueError(f"curves must be a non-empty 2-D array (N, steps + 1), got shape {curves.shape}")
    c = curves.astype(np.float64)
    if not np.all(np.isfinite(c)):
        raise ValueError("curves contain NaN or Inf")
    return (c[:, :1] - c).mean(axis=1)


# -- sensitivity-n ------------------------------------------------------------------------------
@_on_backend
def sensitivity_n(net, x, attributions, target=None, *, n, subsets=100, fill=0.0, features="pixels", seed=0,
                  blur_sigma=1.0, max_rows=None):
    """Sensitivity-n (Ancona et al. 2018, ICLR, Sec. 4, Definition 4): an attribution is
    sensitive-n when ``sum_{i in S} R_i(x) = s_c(x) - s_c(x[x_S = fill])`` for all subsets S of n
    features. Per sample, the Pearson correlation over ``subsets`` random subsets between the
    two sides (as the paper measures it).

    Features are the pixels of an image (all channels together, ``features="pixels"``) or the
    single values of ``x`` (``"elements"``); for tabular inputs (N, F) both are the F features.
    Subset j of sample i holds the n features with the smallest keys
    ``np.random.default_rng([seed, 1]).random((N, subsets, F))[i, j]`` (F features; a stream
    apart from the ``fill="uniform"`` image's ``default_rng(seed)``); a feature's attribution is
    the sum over its values (its channels, for pixels).

    Parameters
    ----------
    net, x, attributions, target : as in :func:`pixel_flipping` (any input rank with
        ``features="elements"``)
    n : int, 1 <= n <= F
    subsets : int >= 2
    fill : as in :func:`pixel_flipping` (the paper sets features to 0)
    features : ``"pixels"`` or ``"elements"``
    seed : int >= 0
    blur_sigma, max_rows : as in :func:`pixel_flipping`

    Returns
    -------
    float64 array (N,): the correlation per sample; NaN where either side is constant over the
    subsets (e.g. n = F, or a model whose score does not change).

    Notes
    -----
    ``quantus.SensitivityN`` (0.6) measures something else: it removes the features in MORF
    order cumulatively (``features_in_step`` at a time) and, for each step k, correlates across
    the *samples of the batch* the attribution of the step-k features alone with the cumulative
    drop ``s(x) - s(x_k)`` (returning one value per step, for the first
    ``n_max_percentage`` of the steps, and only the first batch). That equals
    ``pearsonr(sorted_a[:, k], curves[:, 0] - curves[:, k + 1])`` over samples with ``curves``
    from :func:`pixel_flipping` (``patch=1, steps=H * W``), which the peer tests check.
    """
    x, classes = _inputs(net, x)
    a = _attributions(attributions, x)
    features = _choice(features, "features", ("pixels", "elements"))
    if features == "pixels" and x.ndim not in (2, 4):
        raise ValueError(f"features='pixels' needs images (N, C, H, W) or tabular (N, F) inputs, got x of shape "
                         f"{x.shape}; use features='elements'")
    nn_ = x.shape[0]
    pix = features == "pixels" and x.ndim == 4
    f = x.shape[2] * x.shape[3] if pix else x[0].size
    n = _int(n, "n", low=1)
    if n > f:
        raise ValueError(f"n={n} is larger than the {f} features ({features}) of one sample")
    subsets = _int(subsets, "subsets", low=2)
    seed = _int(seed, "seed", low=0)
    rows = _max_rows(max_rows, x)
    if a.shape != x.shape and not pix:
        raise ValueError(f"features='elements' needs attributions shaped as x {x.shape}, got {a.shape}")
    base = _baseline(fill, x, seed, blur_sigma)
    t = _targets(net, x, target, classes)  # last: every parameter is checked before a forward pass
    ag = a.sum(axis=1).reshape(nn_, f) if pix else a.reshape(nn_, f)
    s0 = np.asarray(scores(net, x), np.float64)[np.arange(nn_), t]
    rng = np.random.default_rng([seed, 1])
    total = nn_ * subsets
    att = np.empty(total, np.float64)
    drop = np.empty(total, np.float64)
    for r0 in range(0, total, rows):
        r = np.arange(r0, min(r0 + rows, total))
        i = r // subsets
        # keys for consecutive rows are consecutive draws: chunking does not change the subsets
        keys = rng.random((len(r), f))
        pick = np.argpartition(keys, n - 1, axis=1)[:, :n]
        m = np.zeros((len(r), f), bool)
        np.put_along_axis(m, pick, True, axis=1)
        att[r] = (ag[i] * m).sum(axis=1)
        shape = (len(r), 1) + x.shape[2:] if pix else (len(r),) + x.shape[1:]
        xp = np.where(m.reshape(shape), base[i], x[i])
        drop[r] = s0[i] - np.asarray(scores(net, xp), np.float64)[np.arange(len(r)), t[i]]
    att, drop = att.reshape(nn_, subsets), drop.reshape(nn_, subsets)
    att = att - att.mean(axis=1, keepdims=True)
    drop = drop - drop.mean(axis=1, keepdims=True)
    den = np.sqrt((att ** 2).sum(axis=1) * (drop ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (att * drop).sum(axis=1) / den
    return np.where(den > 0, r, np.nan)


# -- completeness -------------------------------------------------------------------------------
@_on_backend
def completeness(net, x, attributions, target=None, *, baseline=0.0):
    """Completeness error per sample: ``sum_i R_i - (s_c(x) - s_c(baseline))`` (Sundararajan
    et al. 2017, ICML, Sec. 3, completeness axiom); ``baseline=None`` gives LRP's conservation
    error ``sum_i R_i - s_c(x)`` (Bach et al. 2015; Montavon et al. 2018, Sec. 4).

    Parameters
    ----------
    net, x, attributions, target : as in :func:`pixel_flipping` (any input rank)
    baseline : None, a number, an array broadcastable to one sample or shaped as ``x``, or
        ``"black"`` / ``"white"`` / ``"mean"`` (as ``fill`` in :func:`pixel_flipping`)

    Returns
    -------
    float64 array (N,): 0 where the attributions are complete.

    Notes
    -----
    ``quantus.Completeness`` (0.6, ``normalise=False``, ``abs=False``) returns booleans
    ``sum R == output_func(s(x) - s(baseline))`` with exact float equality; with the identity
    ``output_func`` that is ``completeness(...) == 0`` (use ``np.abs(err) <= tol`` instead).
    Its ``perturb_baseline="black"`` is each sample's minimum (``baseline="black"`` here).
    """
    x, classes = _inputs(net, x)
    a = _attributions(attributions, x)
    if isinstance(baseline, str) and baseline in ("uniform", "blur"):
        raise ValueError(f"baseline must be None, a number, an array, 'black', 'white' or 'mean', got {baseline!r}")
    b = None if baseline is None else _baseline(baseline, x, 0, 1.0, name="baseline")
    t = _targets(net, x, target, classes)
    rows = np.arange(x.shape[0])
    if b is None:
        ref = 0.0
        s = np.asarray(scores(net, x), np.float64)[rows, t]
    else:
        # x and its baseline in one forward call
        s2 = np.asarray(scores(net, np.concatenate([x, b])), np.float64)
        s, ref = s2[rows, t], s2[x.shape[0] + rows, t]
    return a.reshape(x.shape[0], -1).sum(axis=1) - (s - ref)


# -- input invariance ---------------------------------------------------------------------------
def _method(method, params):
    if callable(method):
        if params:
            raise TypeError(f"parameters {sorted(params)} are for methods given by name; bind them into the callable")
        return lambda net, x, t: np.asarray(method(net, x, t), np.float64)
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be a name in rp.METHODS or a callable (net, x, target) -> array, got {method!r}")
    return lambda net, x, t: np.asarray(attribute(net, x, method, target=t, backend=_BACKEND.get(), **params),
                                        np.float64)


def shifted_model(net, shift, sample_shape):
    """A copy of ``net`` whose first linear layer absorbs an input shift: ``b' = b - W shift``,
    so that ``shifted(x + shift) == net(x)`` (Kindermans et al. 2019, Sec. 2, "mean shift").

    The input may pass through Flatten / Reshape / Identity / Dropout before the first Dense or
    Conv2d. The new graph shares the other layers (they are immutable) and gets a new first
    linear layer; ``net`` is not changed. A Conv2d absorbs the shift only where ``W shift`` is
    the same at every output position (a per-channel constant shift and no zero padding:
    padded borders see 0, not the shift); otherwise a ValueError says so.
    """
    _check_model(net)
    s = np.broadcast_to(np.asarray(shift, np.float64), sample_shape)
    name, shape = "input", tuple(sample_shape)
    while True:
        readers = net.consumers_of(name)
        if len(readers) != 1:
            raise ValueError(f"input_invariance: {name!r} feeds {len(readers)} layers; the shift can only be "
                             f"absorbed by a single first linear layer")
        node = readers[0]
        if node.layer.linear:
            break
        if not node.layer.passes_values:
            raise ValueError(f"input_invariance: the input reaches {node.layer.kind} (node {node.name!r}) before "
                             f"any Dense/Conv2d; only a first linear layer can absorb the shift")
        shape = tuple(node.layer.out_shape(shape))
        s = s.reshape(shape)  # these layers pass values unchanged (C order)
        name = node.name
    layer = node.layer
    dt = layer.weight.dtype
    w = layer.weight.astype(np.float64)
    if isinstance(layer, Dense):
        delta = w @ s.reshape(-1)
        new = Dense(layer.weight, (layer.bias.astype(np.float64) - delta).astype(dt))
    elif isinstance(layer, Conv2d):
        probe = Sequential(Conv2d(w, None, stride=layer.stride, padding=layer.padding))
        z = np.asarray(probe(np.ascontiguousarray(s, np.float64)[None]))[0]
        delta = z.reshape(z.shape[0], -1)
        spread = np.ptp(delta, axis=1).max()
        if spread > 1e-9 * max(1.0, float(np.abs(delta).max())):
            raise ValueError(f"input_invariance: W * shift differs across the output positions of the first Conv2d "
                             f"(node {node.name!r}, padding {layer.padding}) by up to {spread:.3g}; no bias can absorb "
                             f"it (use a per-channel constant shift and a first Conv2d without padding)")
        new = Conv2d(layer.weight, (layer.bias.astype(np.float64) - delta[:, 0]).astype(dt),
                     stride=layer.stride, padding=layer.padding, groups=layer.groups, dilation=layer.dilation)
    else:
        raise ValueError(f"input_invariance: the first linear layer is {layer.kind}; "
                         f"only Dense and Conv2d are supported")
    nodes = [Node(nd.name, new if nd is node else nd.layer, nd.inputs) for nd in net.nodes]
    return Graph(nodes, input_shape=net.input_shape)


@_on_backend
def input_invariance(net, x, method, *, shift=-1.0, target=None, **params):
    """Input invariance (Kindermans et al. 2019, Sec. 2): explain ``x`` with ``net`` and
    ``x + shift`` with a copy of ``net`` whose first linear layer absorbs the shift
    (``b' = b - W shift``: both models compute the same function of the original input), and
    measure how much the attributions change.

    Returns per sample ``max_i |R_i(x) - R'_i(x + shift)| / max_i |R_i(x)|`` (0: invariant;
    when ``R(x)`` is all zero: 0 if ``R'`` is too, else inf). The gradient is invariant;
    gradient x input, and path methods with a fixed baseline, are not.

    Parameters
    ----------
    net : relprop model; the input reaches a single first Dense / Conv2d (possibly through
        Flatten / Reshape / Identity / Dropout)
    x : numpy array (N, ...), float32 or float64
    method : name in ``rp.METHODS`` (run with ``rp.attribute(..., **params)``), or a callable
        ``method(net, x, target) -> array like x``
    shift : number or array broadcastable to one sample (Quantus's default: -1)
    target : None (each sample's argmax at ``x``; the same class is explained for both), int, or
        int array (N,)
    **params : the method's parameters

    Returns
    -------
    float64 array (N,)

    Notes
    -----
    ``quantus.InputInvariance`` (0.6) returns ``np.all(np.isclose(R, R', atol=1e-4))`` per
    sample, i.e. booleans; its shifted torch model takes ``b - W shift`` from the smallest
    value of ``W shift`` over the output positions (exact only without padding).
    """
    x, classes = _inputs(net, x)
    fn = _method(method, params)
    if isinstance(shift, np.ndarray):
        if shift.dtype.kind not in "fiu" or not np.all(np.isfinite(shift)):
            raise ValueError("shift array must be real and finite")
        if not _broadcasts(shift.shape, x.shape[1:]):
            raise ValueError(f"shift array of shape {shift.shape} does not broadcast to one sample {x.shape[1:]}")
    elif isinstance(shift, (bool, np.bool_)) or not isinstance(shift, numbers.Real) or not np.isfinite(shift):
        raise ValueError(f"shift must be a finite number or an array broadcastable to one sample, got {shift!r}")
    t = _targets(net, x, target, classes)
    net2 = shifted_model(net, shift, x.shape[1:])
    xs = (x.astype(np.float64) + np.asarray(shift, np.float64)).astype(x.dtype)
    r1, r2 = fn(net, x, t), fn(net2, xs, t)
    if r1.shape != x.shape or r2.shape != x.shape:
        raise ValueError(f"the method returned attributions of shape {r1.shape}, expected x's shape {x.shape}")
    n = x.shape[0]
    num = np.abs(r1 - r2).reshape(n, -1).max(axis=1)
    den = np.abs(r1).reshape(n, -1).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    return np.where(den > 0, out, np.where(num > 0, np.inf, 0.0))


# -- continuity -----------------------------------------------------------------------------------
def _translate(x, dx):
    """``x`` (N, C, H, W) moved ``dx`` pixels right (left for dx < 0), vacated columns 0."""
    out = np.zeros_like(x)
    w = x.shape[3]
    if dx >= 0:
        out[..., dx:] = x[..., :w - dx]
    else:
        out[..., :w + dx] = x[..., -dx:]
    return out


@_on_backend
def continuity(net, x, method, *, path, target=None, pairs="consecutive", input_norm=2, **params):
    """Explanation continuity along a path of inputs (Montavon et al. 2018, Digital Signal
    Processing 73, Sec. 5.1): ``max_{x != x'} ||R(x) - R(x')||_1 / ||x - x'||_2``, the max taken
    over the pairs of points of each sample's path (lower is more continuous).

    Each sample's path is ``x_0 = x[i]`` followed by T points ``x_1 .. x_T``. ``pairs``
    chooses the pairs: ``"consecutive"`` (x_t, x_{t+1}), ``"first"`` (x_0, x_t) (Quantus's
    convention), ``"all"`` (every t < u: the paper's max restricted to the path). Pairs of equal
    inputs are skipped (the definition excludes x = x').

    Parameters
    ----------
    net : relprop model
    x : numpy array (N, ...), float32 or float64
    method : name in ``rp.METHODS`` or a callable ``method(net, x, target) -> array like x``
    path : int T: ``x_t`` = x translated t pixels to the right (vacated columns 0), t = 1..T,
        images only, T < W; an array (N, T, ...) of the points x_1..x_T of each sample; or a
        callable ``path(x) -> array (N, T, ...)``
    target : None (each sample's argmax at ``x``, kept along its path), int, or int array (N,)
    pairs : ``"consecutive"``, ``"first"`` or ``"all"``
    input_norm : 2 (the paper) or 1: the norm of ``x - x'`` in the denominator
    **params : the method's parameters

    Returns
    -------
    float64 array (N,); NaN for a sample whose path points all equal each other.

    Notes
    -----
    ``quantus.Continuity`` (0.6, ``abs=False``, ``normalise=False``) is
    ``continuity(..., path=<its translations>, pairs="first", input_norm=2)`` up to the 1e-9 it
    adds to the denominator; its path translates by ``-W + k * dx`` (k = 1..nr_steps,
    ``dx = (2W + 1) // nr_steps``) and fills with each sample's minimum.
    """
    x, classes = _inputs(net, x)
    fn = _method(method, params)
    pairs = _choice(pairs, "pairs", ("consecutive", "first", "all"))
    if isinstance(input_norm, (bool, np.bool_)) or input_norm not in (1, 2):
        raise ValueError(f"input_norm must be 1 or 2, got {input_norm!r}")
    n = x.shape[0]
    if isinstance(path, numbers.Integral) and not isinstance(path, (bool, np.bool_)):
        if x.ndim != 4:
            raise ValueError(f"path=int translates images (N, C, H, W); got x of shape {x.shape} "
                             f"(pass the path as an array (N, T, ...))")
        steps = _int(path, "path", low=1, high=x.shape[3] - 1)
        pts = np.stack([_translate(x, k) for k in range(1, steps + 1)], axis=1)
    else:
        pts = path(x) if callable(path) else path
        if not isinstance(pts, np.ndarray) or pts.dtype.kind not in "fiu":
            raise TypeError(f"path must be an int, a numeric numpy array (N, T, ...) or a callable returning one, "
                            f"got {type(pts).__name__}")
        if pts.ndim != x.ndim + 1 or pts.shape[0] != n or pts.shape[2:] != x.shape[1:] or pts.shape[1] < 1:
            raise ValueError(f"path must have shape (N, T, ...) = ({n}, T) + {x.shape[1:]} with T >= 1, "
                             f"got {pts.shape}")
        if not np.all(np.isfinite(pts)):
            raise ValueError("path contains NaN or Inf")
    T = pts.shape[1]
    t = _targets(net, x, target, classes)
    full = np.concatenate([x[:, None], pts.astype(x.dtype)], axis=1)  # (N, T + 1, ...)
    flat = full.reshape((n * (T + 1),) + x.shape[1:])
    # every point of every path in one call
    R = fn(net, flat, np.repeat(t, T + 1))
    if R.shape != flat.shape:
        raise ValueError(f"the method returned attributions of shape {R.shape}, expected {flat.shape}")
    R = R.reshape(n, T + 1, -1)
    X = full.reshape(n, T + 1, -1).astype(np.float64)
    if pairs == "consecutive":
        a_ix, b_ix = np.arange(T), np.arange(1, T + 1)
    elif pairs == "first":
        a_ix, b_ix = np.zeros(T, np.int64), np.arange(1, T + 1)
    else:
        a_ix, b_ix = np.triu_indices(T + 1, k=1)
    dr = np.abs(R[:, a_ix] - R[:, b_ix]).sum(axis=2)
    dxv = X[:, a_ix] - X[:, b_ix]
    dx = np.abs(dxv).sum(axis=2) if input_norm == 1 else np.sqrt((dxv ** 2).sum(axis=2))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(dx > 0, dr / dx, -np.inf)
    best = ratio.max(axis=1)
    return np.where(np.isfinite(best), best, np.nan)
