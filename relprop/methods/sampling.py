"""Sampling methods over a distribution of baselines: Expected Gradients, GradientSHAP, DeepSHAP.

* ``"expected_gradients"`` (Erion et al. 2019; seed 001 Eq. 4.34): the mean over ``samples``
  draws of ``grad s_c(x' + alpha (x - x')) * (x - x')``, with ``x'`` drawn uniformly from
  ``baselines`` and ``alpha ~ U(0, 1)``. Summed over features its expectation is
  ``s_c(x) - mean_b s_c(baselines[b])`` (completeness in expectation).
* ``"gradient_shap"``: Captum ``GradientShap``: as above, but each draw also adds Gaussian
  noise ``N(0, stdevs^2)`` to the input first, ``x~ = x + noise``; the draw's value is
  ``grad s_c(x' + alpha (x~ - x')) * (x~ - x')``. With ``stdevs=0`` it is expected_gradients.
* ``"deepshap"``: Captum ``DeepLiftShap``: DeepLIFT rescale (``"deeplift.rescale"``) run with
  every baseline of ``baselines`` and averaged, so ``sum R = mean_b (s_c(x) - s_c(baselines[b]))``
  exactly.

Draws: ``numpy.random.default_rng(seed)`` gives, in this order, the baseline indices
``integers(0, B, size=(N, samples))``, the path positions ``random((N, samples))`` and
(gradient_shap with ``stdevs > 0``) the noise ``standard_normal((N, samples) + x.shape[1:]) * stdevs``,
sample-major (``sample_draws`` returns them). They are drawn once for the whole batch given to
``rp.attribute``, so results do not depend on internal batching. ``target=None`` takes the argmax
at the clean ``x`` for every draw.

All evaluation points of a batch (``N * samples`` path points, or ``N * B`` DeepLIFT pairs) run
through ``relprop.methods.gradient`` / ``relprop.methods.deeplift_rescale`` as large batches, in
chunks of bounded memory.
"""
from __future__ import annotations

import numbers

import numpy as np

from ..core import engine
from ._legacy import Method, _path_chunk, deeplift_rescale, gradient, register


# ---------------------------------------------------------------------------------------
# draws

class _Draws:
    """The random draws of one validated batch of ``n`` rows, handed out in row order.

    ``rp.attribute`` may split the batch into internal chunks and call the method once per
    chunk (in order); each call takes the next rows, so the draws of a row do not depend on the
    chunking. Rows beyond the validated batch (e.g. ``smoothgrad`` running the method on noisy
    copies) get fresh draws from the same generator (still reproducible for a given seed)."""

    def __init__(self, seed, n, samples, n_baselines):
        self.rng = np.random.default_rng(seed)
        self.samples, self.n_baselines = samples, n_baselines
        self.idx = self.rng.integers(0, n_baselines, size=(n, samples))
        self.alpha = self.rng.random((n, samples))
        self.n, self.cursor = n, 0

    def take(self, m):
        """(baseline indices (m, S), alphas (m, S)) of the next ``m`` rows."""
        c = self.cursor
        if c + m <= self.n:
            self.cursor = c + m
            return self.idx[c:c + m], self.alpha[c:c + m]
        self.cursor = self.n
        return (self.rng.integers(0, self.n_baselines, size=(m, self.samples)),
                self.rng.random((m, self.samples)))

    def noise(self, rows, shape):
        """Standard-normal noise for the next ``rows`` draws (sample-major stream)."""
        return self.rng.standard_normal((rows,) + tuple(shape))


def sample_draws(seed, n, samples, n_baselines, shape=None, stdevs=0.0):
    """The draws a call on a batch of ``n`` samples makes: ``(idx, alpha, noise)`` with ``idx``
    (n, samples) baseline indices, ``alpha`` (n, samples) in [0, 1), ``noise`` (n, samples,
    *shape) (``None`` unless ``stdevs > 0``), in float64."""
    d = _Draws(seed, n, samples, n_baselines)
    noise = None
    if stdevs > 0:
        noise = d.noise(n * samples, shape).reshape((n, samples) + tuple(shape)) * stdevs
    return d.idx, d.alpha, noise


# ---------------------------------------------------------------------------------------
# methods

def _clean_target(graph, x, target, shapes):
    if target is not None:
        return np.broadcast_to(np.asarray(target, dtype=np.int64), (x.shape[0],))
    score, _, _ = engine.forward(graph, x, (graph.score_node,), (), shapes)
    return score.argmax(axis=1)


def _path_samples(graph, x, target, shapes, baselines, samples, stdevs, seed, draws):
    """Mean over draws of ``grad(x' + alpha (x~ - x')) * (x~ - x')`` (x~ = x + noise)."""
    n, s = x.shape[0], int(samples)
    feat = x.shape[1:]
    base = np.asarray(baselines, dtype=x.dtype)
    if draws is None:
        draws = _Draws(seed, n, s, base.shape[0])
    idx, alpha = draws.take(n)
    idx, alpha = idx.reshape(-1), alpha.reshape(-1).astype(x.dtype)
    t = np.repeat(_clean_target(graph, x, target, shapes), s)
    acc = np.zeros(x.shape, np.float64)
    rows = n * s
    per_chunk = max(1, _path_chunk(shapes, x.itemsize))
    bshape = (-1,) + (1,) * len(feat)
    for r0 in range(0, rows, per_chunk):
        r1 = min(rows, r0 + per_chunk)
        i = np.arange(r0, r1) // s
        xr = x[i]
        if stdevs > 0:
            xr = xr + (draws.noise(r1 - r0, feat) * stdevs).astype(x.dtype)
        b = base[idx[r0:r1]]
        diff = xr - b
        pts = np.ascontiguousarray(b + alpha[r0:r1].reshape(bshape) * diff)
        g = gradient(graph, pts, t[r0:r1], shapes) * diff
        _add_rows(acc, g, i)
    return (acc / s).astype(x.dtype)


def _add_rows(acc, g, i):
    """``acc[i[k]] += g[k]`` for sorted row owners ``i`` (contiguous runs), in float64."""
    starts = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
    acc[i[starts]] += np.add.reduceat(g.astype(np.float64), starts, axis=0)


def expected_gradients(graph, x, target, shapes, baselines, samples, seed, _draws=None):
    """Expected Gradients (seed 001 Eq. 4.34): mean over ``samples`` draws of
    ``grad(x' + alpha (x - x')) * (x - x')``, ``x'`` uniform over ``baselines``, ``alpha ~ U(0,1)``."""
    return _path_samples(graph, x, target, shapes, baselines, samples, 0.0, seed, _draws)


def gradient_shap(graph, x, target, shapes, baselines, samples, stdevs, seed, _draws=None):
    """GradientSHAP (Captum ``GradientShap``): Expected Gradients at noisy copies
    ``x + N(0, stdevs^2)`` of the input."""
    return _path_samples(graph, x, target, shapes, baselines, samples, float(stdevs), seed, _draws)


def deepshap(graph, x, target, shapes, baselines):
    """DeepSHAP (Captum ``DeepLiftShap``): the mean over baselines ``b`` of DeepLIFT rescale at
    ``x`` with baseline ``b``; all (sample, baseline) pairs run as one batch (bounded chunks)."""
    n = x.shape[0]
    base = np.asarray(baselines, dtype=x.dtype)
    nb = base.shape[0]
    t = np.repeat(_clean_target(graph, x, target, shapes), nb)
    acc = np.zeros(x.shape, np.float64)
    rows = n * nb
    per_chunk = max(1, _path_chunk(shapes, x.itemsize) // 2)  # DeepLIFT runs x and x0 together
    for r0 in range(0, rows, per_chunk):
        r1 = min(rows, r0 + per_chunk)
        pr = np.arange(r0, r1)
        i = pr // nb
        g = deeplift_rescale(graph, np.ascontiguousarray(x[i]), t[r0:r1], shapes,
                             np.ascontiguousarray(base[pr % nb]))
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
    return np.ascontiguousarray(b, dtype=x.dtype)


def _check_samples(name, v):
    if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: samples must be an int >= 1 (draws per input), got {v!r}")
    if v < 1:
        raise ValueError(f"{name}: samples must be >= 1 (draws per input), got {v!r}")
    return int(v)


def _check_seed(name, v):
    if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_))):
        raise TypeError(f"{name}: seed must be None or an int, got {v!r}")
    if v is not None and v < 0:
        raise ValueError(f"{name}: seed must be a non-negative int (numpy.random.default_rng), got {v!r}")
    return None if v is None else int(v)


def _check_stdevs(name, v):
    if not isinstance(v, numbers.Real) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name}: stdevs must be a finite number >= 0 (noise standard deviation), got {v!r}")
    if not np.isfinite(v) or v < 0:
        raise ValueError(f"{name}: stdevs must be a finite number >= 0 (noise standard deviation), got {v!r}")
    return float(v)


def _validate_path(name, with_noise):
    def validate(graph, x, params):
        b = _check_baselines(name, params["baselines"], x)
        out = {"baselines": b, "samples": _check_samples(name, params["samples"]),
               "seed": _check_seed(name, params["seed"])}
        if with_noise:
            out["stdevs"] = _check_stdevs(name, params["stdevs"])
        out["_draws"] = _Draws(out["seed"], x.shape[0], out["samples"], b.shape[0])
        return out

    return validate


def _validate_deepshap(graph, x, params):
    return {"baselines": _check_baselines("deepshap", params["baselines"], x)}


register(Method("expected_gradients", expected_gradients, {"baselines": None, "samples": 32, "seed": None},
                "Expected Gradients: E over baselines b ~ U(baselines), alpha ~ U(0,1) of "
                "grad(b + alpha (x - b)) * (x - b)", validate=_validate_path("expected_gradients", False)))
register(Method("gradient_shap", gradient_shap, {"baselines": None, "samples": 5, "stdevs": 0.0, "seed": None},
                "GradientSHAP (Captum GradientShap): Expected Gradients at noisy inputs x + N(0, stdevs^2)",
                validate=_validate_path("gradient_shap", True)))
register(Method("deepshap", deepshap, {"baselines": None},
                "DeepSHAP (Captum DeepLiftShap): DeepLIFT rescale averaged over the baselines",
                validate=_validate_deepshap))
