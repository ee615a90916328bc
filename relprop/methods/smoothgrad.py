"""SmoothGrad, SmoothGrad^2 and VarGrad around any method (Smilkov et al. 2017; Adebayo et al. 2018).

Each sample gets ``samples`` noisy copies ``x + N(0, (sigma * (max x - min x))^2)`` (sigma
relative to that sample's value range, as in Smilkov et al.); the base method runs on the
copies and their attributions are averaged (``mean``), averaged squared (``squared``) or their
variance taken (``var``). ``target=None`` takes the argmax at the clean input for every copy.

Noise is drawn per sample (``relprop.methods.base.row_rng``, stream 1), in float64 and cast to
the input dtype, for as many copies at a time as keep their activations and noise within
``relprop.core.budget.Budget.expand`` (256 MiB): memory stays bounded whatever the batch and
``samples``, and a sample's noise depends only on ``seed`` and its index.

Parameters of the base method go as keyword arguments; one whose name smoothgrad uses itself
(``samples``, ``seed``: e.g. kernel_shap's coalition count) goes in ``base_params={...}``. A
random base draws from smoothgrad's seed (its own stream). A base method that draws its own random numbers sees copy ``j`` of
sample ``r`` as row ``r * samples + j``.
"""
from __future__ import annotations

import numpy as np

from ..core import budget, execute
from ..core.checks import _number
from .base import Method, register, resolve_target, row_rng, run_targets, xp_of

KINDS = ("mean", "squared", "var")
NOISE_STREAM = 1


def noise(seed, row, samples, shape):
    """The standard-normal noise (samples, *shape) of sample ``row``, float64."""
    return row_rng(seed, row, NOISE_STREAM).standard_normal((samples,) + tuple(shape))


def smoothgrad(ctx, x, targets, base, base_params, samples, sigma, kind, seed):
    """(N, K, ...) smoothed attributions of ``base`` for the targets (N, K) (None: argmax at x).

    Copies run in chunks that keep their activations and float64 noise within
    ``Budget.expand``: several samples per chunk when all their copies fit, else one sample's
    copies in several chunks (its noise drawn from its generator in order, so the copies are
    the same either way). Moments accumulate in float64 (Chan et al.'s pairwise update for
    ``var``), so memory does not grow with ``samples``."""
    xp = xp_of(x)
    n, s = x.shape[0], int(samples)
    if targets is None:
        targets = resolve_target(ctx, x, None)[:, None]
    targets = xp.asarray(targets)
    kk = targets.shape[1]
    feat = int(np.prod(x.shape[1:]))
    per_copy = execute.row_bytes(ctx.shapes, x.itemsize) + 8 * feat  # activations + float64 noise
    copies = max(1, budget.BUDGET.expand // per_copy)  # copies per chunk
    rows = max(1, copies // s)  # samples per chunk when all their copies fit
    flat = x.reshape(n, -1)
    scale = sigma * (flat.max(axis=1) - flat.min(axis=1))
    out = xp.empty((n, kk) + x.shape[1:], x.dtype)
    bshape = (1,) * (x.ndim - 1)
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        gens = [row_rng(seed, ctx.row0 + i, NOISE_STREAM) for i in range(i0, i1)]
        mean = m2 = None
        done = 0
        step = s if i1 - i0 > 1 else min(s, copies)
        for j0 in range(0, s, step):
            c = min(step, s - j0)
            m = i1 - i0
            eps = xp.asarray(np.stack([g.standard_normal((c,) + x.shape[1:]) for g in gens]))
            eps = eps * scale[i0:i1].reshape((m, 1) + bshape)  # float64, this chunk only
            xn = xp.ascontiguousarray((x[i0:i1, None] + eps).astype(x.dtype).reshape((m * c,) + x.shape[1:]))
            del eps
            if not bool(xp.isfinite(xn).all()):
                raise ValueError(f"smoothgrad: the noisy copies of x are not finite in {x.dtype} (sigma={sigma!r} "
                                 f"times each sample's value range overflows); use a smaller sigma")
            bp = dict(base_params)
            for key in base.per_sample:
                b = bp.get(key)
                if hasattr(b, "ndim") and b.ndim == x.ndim and b.shape[0] == n and n > 1:
                    bp[key] = xp.repeat(b[i0:i1], c, axis=0)
            if m == 1:  # copy j of sample r is row r * samples + j for a random base
                sub = ctx.at((ctx.row0 + i0) * s + j0)
            else:
                sub = ctx.at((ctx.row0 + i0) * s)
            a = run_targets(sub, xn, xp.repeat(targets[i0:i1], c, axis=0), base, bp)
            a = a.reshape((m, c, kk) + x.shape[1:]).astype(np.float64)
            if kind == "squared":
                a = a * a
            cm = a.mean(axis=1)
            if kind == "var":
                cm2 = ((a - cm[:, None]) ** 2).sum(axis=1)
                if mean is None:
                    mean, m2 = cm, cm2
                else:  # Chan, Golub & LeVeque (1979): pairwise update of mean and M2
                    d = cm - mean
                    tot = done + c
                    mean = mean + d * (c / tot)
                    m2 = m2 + cm2 + d * d * (done * c / tot)
            else:
                mean = cm if mean is None else mean + (cm - mean) * (c / (done + c))
            done += c
        out[i0:i1] = (m2 / s if kind == "var" else mean).astype(x.dtype)
    return out


def check(params):
    """Smoothgrad's own parameters (the base method's are checked by the base)."""
    if params["kind"] not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {params['kind']!r}")
    _number(params["samples"], "samples", 1, integer=True)
    _number(params["sigma"], "sigma")
    if not params["sigma"] > 0:
        raise ValueError(f"sigma must be > 0 (noise level relative to each sample's value range), "
                         f"got {params['sigma']!r}")


register(Method("smoothgrad", "SmoothGrad / SmoothGrad^2 / VarGrad around any method (base=)",
                {"base": "gradient", "samples": 32, "sigma": 0.15, "kind": "mean", "seed": None, "base_params": None},
                wrapper=True, random=True, averages_noise=True, backends=frozenset({"cpu", "gpu"}), family="smoothgrad"))
