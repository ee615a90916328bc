"""Sampling methods over a distribution of baselines: Expected Gradients, GradientSHAP, DeepSHAP.

* ``"expected_gradients"`` (Erion et al. 2021, "Improving performance of deep learning models with
  axiomatic attribution priors and expected gradients", Eq. 4): the mean over ``samples``
  draws of ``grad s_c(x' + alpha (x - x')) * (x - x')``, with ``x'`` drawn uniformly from
  ``baselines`` and ``alpha ~ U(0, 1)``. Summed over features its expectation is
  ``s_c(x) - mean_b s_c(baselines[b])`` (completeness in expectation).
* ``"gradient_shap"``: Captum ``GradientShap``: as above, but each draw also adds Gaussian
  noise ``N(0, stdevs^2)`` to the input first, ``x~ = x + noise``; the draw's value is
  ``grad s_c(x' + alpha (x~ - x')) * (x~ - x')``. With ``stdevs=0`` it is expected_gradients.
* ``"deepshap"``: Captum ``DeepLiftShap``: DeepLIFT rescale (``"deeplift.rescale"``) run with
  every baseline of ``baselines`` and averaged, so ``sum R = mean_b (s_c(x) - s_c(baselines[b]))``
  exactly.

Draws are per sample: sample ``r`` (its global index, ``row_offset`` + position in x) draws from
``row_rng(seed, r, stream 2)`` (``relprop.methods.base``), in this order, its baseline indices
``integers(0, B, size=samples)``, its path positions ``random(samples)`` and (gradient_shap with
``stdevs > 0``) its noise ``standard_normal((samples,) + x.shape[1:]) * stdevs`` (``sample_draws``
returns them). So results do not depend on the batch a sample comes in or on internal batching.
``target=None`` takes the argmax at the clean ``x`` for every draw.

All evaluation points of a batch (``N * samples`` path points, or ``N * B`` DeepLIFT pairs) run
through the gradient / DeepLIFT traversal as large batches, in chunks of bounded memory.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..core.checks import _check_fits, _check_seed, _number
from .base import METHODS, Method, gradient, register, resolve_target, row_rng, traverse


# ---------------------------------------------------------------------------------------
# draws

DRAW_STREAM = 2


def row_draws(seed, row, samples, n_baselines, shape=None, stdevs=0.0):
    """The draws of sample ``row`` (its global index): baseline indices (samples,), alphas
    (samples,) in [0, 1), and noise (samples, *shape) times ``stdevs`` (None unless stdevs > 0),
    drawn in that order from ``row_rng(seed, row, stream 2)``, float64."""
    rng = row_rng(seed, row, DRAW_STREAM)
    idx = rng.integers(0, n_baselines, size=samples)
    alpha = rng.random(samples)
    noise = rng.standard_normal((samples,) + tuple(shape)) * stdevs if stdevs > 0 else None
    return idx, alpha, noise


def sample_draws(seed, n, samples, n_baselines, shape=None, stdevs=0.0, row_offset=0):
    """The draws a call on a batch of ``n`` samples (rows ``row_offset ..``) makes:
    ``(idx, alpha, noise)`` with ``idx`` (n, samples) baseline indices, ``alpha`` (n, samples)
    in [0, 1), ``noise`` (n, samples, *shape) (``None`` unless ``stdevs > 0``), float64."""
    d = [row_draws(seed, row_offset + i, samples, n_baselines, shape, stdevs) for i in range(n)]
    noise = None if stdevs <= 0 else np.stack([e[2] for e in d])
    return np.stack([e[0] for e in d]), np.stack([e[1] for e in d]), noise


# ---------------------------------------------------------------------------------------
# methods

def _path_samples(ctx, x, target, baselines, samples, stdevs, seed):
    """Mean over draws of ``grad(x' + alpha (x~ - x')) * (x~ - x')`` (x~ = x + noise)."""
    n, s = x.shape[0], int(samples)
    feat = x.shape[1:]
    base = np.asarray(baselines, dtype=x.dtype)
    idx, alpha, noise = sample_draws(ctx.seed, n, s, base.shape[0], feat, stdevs, ctx.row0)
    idx, alpha = idx.reshape(-1), alpha.reshape(-1).astype(x.dtype)
    if noise is not None:
        with np.errstate(over="ignore"):
            noise = noise.reshape((n * s,) + feat).astype(x.dtype)
    t = np.repeat(resolve_target(ctx, x, target), s)
    acc = np.zeros(x.shape, np.float64)
    rows = n * s
    per_chunk = ctx.expand_rows
    bshape = (-1,) + (1,) * len(feat)
    for r0 in range(0, rows, per_chunk):
        r1 = min(rows, r0 + per_chunk)
        i = np.arange(r0, r1) // s
        xr = x[i]
        if noise is not None:
            xr = xr + noise[r0:r1]
            if not np.all(np.isfinite(xr)):
                raise ValueError(f"gradient_shap: the noisy inputs x + N(0, stdevs^2) are not finite in {x.dtype} "
                                 f"(stdevs={stdevs!r} overflows); use a smaller stdevs")
        b = base[idx[r0:r1]]
        diff = xr - b
        pts = np.ascontiguousarray(b + alpha[r0:r1].reshape(bshape) * diff)
        g = gradient(ctx, pts, t[r0:r1]) * diff
        _add_rows(acc, g, i)
    return (acc / s).astype(x.dtype)


def _add_rows(acc, g, i):
    """``acc[i[k]] += g[k]`` for sorted row owners ``i`` (contiguous runs), in float64."""
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    acc[i[starts]] += np.add.reduceat(g.astype(np.float64), starts, axis=0)


def expected_gradients(ctx, x, target, baselines, samples, seed):
    """Expected Gradients (Erion et al. 2021, Eq. 4): mean over ``samples`` draws of
    ``grad(x' + alpha (x - x')) * (x - x')``, ``x'`` uniform over ``baselines``, ``alpha ~ U(0,1)``."""
    return _path_samples(ctx, x, target, baselines, samples, 0.0, seed)


def gradient_shap(ctx, x, target, baselines, samples, stdevs, seed):
    """GradientSHAP (Lundberg & Lee 2017; Captum ``GradientShap``): Expected Gradients at noisy
    copies ``x + N(0, stdevs^2)`` of the input."""
    return _path_samples(ctx, x, target, baselines, samples, float(stdevs), seed)


def deepshap(ctx, x, target, baselines):
    """DeepSHAP (Lundberg & Lee 2017; Captum ``DeepLiftShap``): the mean over baselines ``b`` of
    DeepLIFT rescale at ``x`` with baseline ``b``; all (sample, baseline) pairs run as one batch
    (bounded chunks)."""
    n = x.shape[0]
    base = np.asarray(baselines, dtype=x.dtype)
    nb = base.shape[0]
    t = np.repeat(resolve_target(ctx, x, target), nb)
    acc = np.zeros(x.shape, np.float64)
    rows = n * nb
    per_chunk = max(1, ctx.expand_rows // 2)  # DeepLIFT runs x and x0 together
    rescale = METHODS["deeplift.rescale"]
    for r0 in range(0, rows, per_chunk):
        r1 = min(rows, r0 + per_chunk)
        pr = np.arange(r0, r1)
        i = pr // nb
        g = traverse(ctx.at(ctx.row0), np.ascontiguousarray(x[i]), t[r0:r1, None], rescale,
                     {"baseline": np.ascontiguousarray(base[pr % nb])})[:, 0]
        _add_rows(acc, g, i)
    return (acc / nb).astype(x.dtype)


# ---------------------------------------------------------------------------------------
# validation (called once by rp.attribute, before any kernel runs)

def _check_baselines(name, b, x):
    if b is None:
        raise TypeError(f"method {name!r} needs baselines=: a float numpy array of shape (B,) + {x.shape[1:]} "
                        f"holding B >= 1 reference inputs (e.g. samples of the training data)")
    if not isinstance(b, np.ndarray):
        raise TypeError(f"{name}: baselines must be a numpy array of shape (B,) + {x.shape[1:]}, "
                        f"got {type(b).__name__}")
    if not np.issubdtype(b.dtype, np.floating):
        raise TypeError(f"{name}: baselines must be a float array, got dtype {b.dtype}")
    if b.ndim != x.ndim or b.shape[1:] != x.shape[1:]:
        raise ValueError(f"{name}: baselines must have shape (B,) + {x.shape[1:]} (one reference input per "
                         f"row, like the samples of x {x.shape}), got {b.shape}")
    if b.shape[0] < 1:
        raise ValueError(f"{name}: baselines is empty (shape {b.shape}); give at least one reference input")
    if not np.all(np.isfinite(b)):
        bad = np.argwhere(~np.isfinite(b))[0]
        raise ValueError(f"{name}: baselines contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")
    _check_fits(b, x.dtype, f"{name}: baselines")
    return np.ascontiguousarray(b, dtype=x.dtype)


def _check_stdevs(name, v):
    if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: stdevs must be a finite number >= 0 (noise standard deviation), got {v!r}")
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name}: stdevs must be a finite number >= 0 (noise standard deviation), got {v!r}")
    return float(v)


def _validate_path(name, with_noise):
    def validate(graph, x, params):
        if x is None:  # an Explainer being built: what does not depend on x
            _number(params["samples"], f"{name}: samples", 1, integer=True)
            _check_seed(name, params["seed"])
            if with_noise:
                _check_stdevs(name, params["stdevs"])
            if params["baselines"] is None:
                raise TypeError(f"method {name!r} needs baselines=: a float numpy array (B, ...) of reference inputs")
            return params
        b = _check_baselines(name, params["baselines"], x)
        out = {"baselines": b, "samples": _number(params["samples"], f"{name}: samples", 1, integer=True),
               "seed": _check_seed(name, params["seed"])}
        if with_noise:
            out["stdevs"] = _check_stdevs(name, params["stdevs"])
        return out

    return validate


def _validate_deepshap(graph, x, params):
    if x is None:
        if params["baselines"] is None:
            raise TypeError("method 'deepshap' needs baselines=: a float numpy array (B, ...) of reference inputs")
        return params
    return {"baselines": _check_baselines("deepshap", params["baselines"], x)}


register(Method("expected_gradients", "Expected Gradients: E over baselines b ~ U(baselines), alpha ~ U(0,1) of "
                "grad(b + alpha (x - b)) * (x - b)", {"baselines": None, "samples": 32, "seed": None},
                validate=_validate_path("expected_gradients", False), run=expected_gradients, random=True,
                averages_noise=True, sums_to="delta", baseline_param="baselines", family="sampling"))
register(Method("gradient_shap", "GradientSHAP (Captum GradientShap): Expected Gradients at noisy inputs "
                "x + N(0, stdevs^2)", {"baselines": None, "samples": 5, "stdevs": 0.0, "seed": None},
                validate=_validate_path("gradient_shap", True), run=gradient_shap, random=True, averages_noise=True,
                sums_to="delta", baseline_param="baselines", family="sampling"))
register(Method("deepshap", "DeepSHAP (Captum DeepLiftShap): DeepLIFT rescale averaged over the baselines",
                {"baselines": None}, validate=_validate_deepshap, run=deepshap, sums_to="delta",
                baseline_param="baselines", family="sampling"))
