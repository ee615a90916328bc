"""SmoothGrad, SmoothGrad^2 and VarGrad around any method (Smilkov et al. 2017; Adebayo et al. 2018).

Each sample gets ``samples`` noisy copies ``x + N(0, (sigma * (max x - min x))^2)`` (sigma
relative to that sample's value range, as in Smilkov et al.); the base method runs on the
copies and their attributions are averaged (``mean``), averaged squared (``squared``) or their
variance taken (``var``). ``target=None`` takes the argmax at the clean input for every copy.

Noise is drawn per sample (``relprop.methods.base.row_rng``, stream 1), in float64 and cast to
the input dtype, for as many samples at a time as keep their noisy copies' activations and
noise within ``relprop.core.execute.Budget.expand`` (256 MiB): memory stays bounded whatever the
batch and ``samples``, and a sample's noise depends only on ``seed`` and its index. A base method that draws its own random numbers sees copy ``j`` of
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
    """(N, K, ...) smoothed attributions of ``base`` for the targets (N, K) (None: argmax at x)."""
    xp = xp_of(x)
    n, s = x.shape[0], int(samples)
    if targets is None:
        targets = resolve_target(ctx, x, None)[:, None]
    targets = xp.asarray(targets)
    kk = targets.shape[1]
    out = xp.empty((n, kk) + x.shape[1:], x.dtype)
    feat = int(np.prod(x.shape[1:]))
    per_copy = execute.row_bytes(ctx.shapes, x.itemsize) + 8 * feat  # activations + float64 noise
    per = max(1, budget.BUDGET.expand // (s * per_copy))
    flat = x.reshape(n, -1)
    scale = sigma * (flat.max(axis=1) - flat.min(axis=1))
    for i0 in range(0, n, per):
        i1 = min(n, i0 + per)
        m = i1 - i0
        eps = xp.asarray(np.stack([noise(seed, ctx.row0 + i, s, x.shape[1:]) for i in range(i0, i1)]))
        eps = eps * scale[i0:i1].reshape((m, 1) + (1,) * (x.ndim - 1))  # float64, this chunk only
        xn = xp.ascontiguousarray((x[i0:i1, None] + eps).astype(x.dtype).reshape((m * s,) + x.shape[1:]))
        bp = dict(base_params)
        for key in base.per_sample:
            b = bp.get(key)
            if hasattr(b, "ndim") and b.ndim == x.ndim and b.shape[0] == n and n > 1:
                bp[key] = xp.repeat(b[i0:i1], s, axis=0)
        a = run_targets(ctx.at((ctx.row0 + i0) * s), xn, xp.repeat(targets[i0:i1], s, axis=0), base, bp)
        a = a.reshape((m, s, kk) + x.shape[1:]).astype(np.float64)
        if kind == "mean":
            r = a.mean(axis=1)
        elif kind == "squared":
            r = (a ** 2).mean(axis=1)
        else:
            r = a.var(axis=1)
        out[i0:i1] = r.astype(x.dtype)
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
                {"base": "gradient", "samples": 32, "sigma": 0.15, "kind": "mean", "seed": None},
                wrapper=True, random=True, averages_noise=True, family="smoothgrad"))
