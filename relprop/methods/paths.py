"""Integrated gradients (Sundararajan et al. 2017): the path integral of the gradient.

``IG(x) = (x - x0) * int_0^1 grad s_c(x0 + a (x - x0)) da``, evaluated by a quadrature
``sum_k w_k grad(x0 + a_k (x - x0))`` with every path point of the batch in one large batch
(in chunks of bounded memory). Completeness: sum IG = s_c(x) - s_c(x0) up to the quadrature
error.
"""
from __future__ import annotations

import difflib

import numpy as np

from ..core import quadrature
from ..core.checks import _check_baseline, _number
from .base import Method, gradient, register, resolve_target, xp_of

IG_SCHEMES = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre", "uniform")


def ig_points(scheme, steps):
    """Path positions ``alpha_k`` in [0, 1] and quadrature weights ``w_k`` of a scheme.

    ``riemann_*`` and ``gauss_legendre`` follow Captum; ``uniform`` is the plain rule of the
    textbook presentations: ``alpha_t = t / (T - 1)``, ``w_t = 1 / T``.
    """
    n = steps
    if scheme == "riemann_left":
        return np.linspace(0, 1 - 1 / n, n), np.full(n, 1 / n)
    if scheme == "riemann_right":
        return np.linspace(1 / n, 1, n), np.full(n, 1 / n)
    if scheme == "riemann_middle":
        return np.linspace(1 / (2 * n), 1 - 1 / (2 * n), n), np.full(n, 1 / n)
    if scheme == "riemann_trapezoid":
        w = np.full(n, 1 / (n - 1))
        w[0] = w[-1] = 1 / (2 * (n - 1))
        return np.linspace(0, 1, n), w
    if scheme == "gauss_legendre":
        xg, wg = quadrature.gauss_legendre(n)  # O(n^2); numpy's leggauss is O(n^3)
        return 0.5 * (xg + 1), 0.5 * wg
    if scheme == "uniform":
        return np.arange(n) / (n - 1), np.full(n, 1 / n)
    raise ValueError(f"unknown scheme {scheme!r}")  # validated earlier


def integrated_gradients(ctx, x, target, baseline, steps, scheme):
    """``(x - x0) * sum_k w_k grad(x0 + alpha_k (x - x0))``, all path points of the batch as one
    large batch (in chunks of ``ctx.expand_rows`` rows)."""
    n = x.shape[0]
    xp = xp_of(x)
    x0 = xp.broadcast_to(xp.asarray(baseline, dtype=x.dtype), x.shape)
    target = xp.asarray(resolve_target(ctx, x, target))
    alphas, weights = ig_points(scheme, steps)
    diff = x - x0
    acc = xp.zeros(x.shape, np.float64 if x.dtype == np.float64 else np.float32)
    per_chunk = max(1, ctx.expand_rows // n)
    for k0 in range(0, steps, per_chunk):
        al = xp.asarray(alphas[k0:k0 + per_chunk].astype(x.dtype))
        m = al.shape[0]
        pts = (x0[None] + al.reshape((m,) + (1,) * x.ndim) * diff[None]).reshape((m * n,) + x.shape[1:])
        g = gradient(ctx, xp.ascontiguousarray(pts), xp.tile(target, m)).reshape((m,) + x.shape)
        acc += xp.tensordot(xp.asarray(weights[k0:k0 + m].astype(acc.dtype)), g, axes=1)
    return (acc * diff).astype(x.dtype)


def _check(graph, x, p):
    out = dict(p)
    out["baseline"] = _check_baseline(p["baseline"], x)
    _number(p["steps"], "steps", 1, integer=True)
    if p["scheme"] not in IG_SCHEMES:
        close = difflib.get_close_matches(str(p["scheme"]), IG_SCHEMES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown integrated_gradients scheme {p['scheme']!r}{hint} (one of {', '.join(IG_SCHEMES)})")
    if p["steps"] > quadrature.MAX_N:
        raise ValueError(f"integrated_gradients: steps must be at most {quadrature.MAX_N}, got {p['steps']}")
    if p["scheme"] in ("uniform", "riemann_trapezoid") and p["steps"] < 2:
        raise ValueError(f"scheme {p['scheme']!r} needs steps >= 2, got {p['steps']}")
    return out


register(Method("integrated_gradients", "integrated gradients (path integral of the gradient from a baseline)",
                {"baseline": 0.0, "steps": 50, "scheme": "gauss_legendre"}, validate=_check, run=integrated_gradients,
                backends=frozenset({"cpu", "gpu"}), per_sample=("baseline",), sums_to="delta",
                baseline_param="baseline", family="paths"))
