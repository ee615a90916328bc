"""Gauss-Legendre quadrature nodes and weights on [-1, 1] in O(n^2) time.

``numpy.polynomial.legendre.leggauss`` finds the nodes as eigenvalues of an n x n companion
matrix, O(n^3) time and O(n^2) memory (about two minutes for n = 8000). Here each node is a
root of the Legendre polynomial P_n, found by Newton's method, with P_n evaluated by the
three-term recurrence (Abramowitz & Stegun 1964, 22.7.10)::

    (k + 1) P_{k+1}(x) = (2k + 1) x P_k(x) - k P_{k-1}(x),   P_0 = 1, P_1 = x

vectorized over all roots of one half of [-1, 1] (the nodes are symmetric about 0); O(n) per
evaluation, so O(n^2) per Newton sweep. The initial guesses are Tricomi's asymptotic
approximation of the k-th largest root (F. G. Tricomi, Ann. Mat. Pura Appl. 31, 1950; in the
form of N. Hale and A. Townsend, "Fast and accurate computation of Gauss-Legendre and
Gauss-Jacobi quadrature nodes and weights", SIAM J. Sci. Comput. 35(2), 2013, Eq. 3.7)::

    x_k ~ (1 - (n - 1) / (8 n^3) - (39 - 28 / sin^2 phi_k) / (384 n^4)) cos phi_k,
    phi_k = (k - 1/4) pi / (n + 1/2),

accurate to O(n^-4) inside the interval, so Newton needs a few sweeps (fewer roots each sweep:
converged roots drop out). The weights are ``w_k = 2 / ((1 - x_k^2) P_n'(x_k)^2)``
(Abramowitz & Stegun 25.4.29), with ``P_n'(x) = n (P_{n-1}(x) - x P_n(x)) / (1 - x^2)`` and
``1 - x^2`` computed as ``(1 - x)(1 + x)`` (no cancellation next to +-1).
"""
from __future__ import annotations

import functools
import numbers

import numpy as np

MAX_N = 100_000  # O(n^2) time: a few seconds at the limit; IG converges long before it


def gauss_legendre(n):
    """Nodes ``x`` (increasing) and weights ``w`` of the n-point Gauss-Legendre rule on [-1, 1].

    ``sum(w * f(x))`` integrates polynomials of degree up to ``2n - 1`` exactly (up to
    rounding). Float64 arrays of length ``n``, read-only and cached per ``n`` (a call with the
    same ``n`` returns the same arrays).

    Parameters
    ----------
    n : int
        Number of points, ``1 <= n <= MAX_N`` (100 000).

    Examples
    --------
    >>> x, w = gauss_legendre(3)
    >>> bool(abs((w * x**4).sum() - 2 / 5) < 1e-15)
    True
    """
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral):
        raise TypeError(f"gauss_legendre: n must be an int, got {n!r} ({type(n).__name__})")
    n = int(n)
    if not 1 <= n <= MAX_N:
        raise ValueError(f"gauss_legendre: n must be between 1 and {MAX_N} (time grows as n^2), got {n}")
    return _cached(n)


@functools.lru_cache(maxsize=16)
def _cached(n):
    x, w = _nodes_weights(n)
    x.flags.writeable = False
    w.flags.writeable = False
    return x, w


def _legendre(n, x):
    """``(P_n(x), P_{n-1}(x))`` for an array ``x``, by the three-term recurrence."""
    p0 = np.ones_like(x)
    p1 = x.copy()
    t = np.empty_like(x)
    for k in range(1, n):
        # p0, p1 <- P_k, P_{k+1} with P_{k+1} = ((2k+1) x P_k - k P_{k-1}) / (k+1)
        np.multiply(x, p1, out=t)
        t *= (2 * k + 1) / (k + 1)
        p0 *= k / (k + 1)
        t -= p0
        p0, p1, t = p1, t, p0
    return p1, p0


def _nodes_weights(n):
    m = (n + 1) // 2  # roots in [0, 1): the k-th largest for k = 1..m (x = 0 is one when n is odd)
    phi = (np.arange(1, m + 1) - 0.25) * np.pi / (n + 0.5)
    x = (1 - (n - 1) / (8.0 * n**3) - (39 - 28 / np.sin(phi) ** 2) / (384.0 * n**4)) * np.cos(phi)
    if n % 2:
        x[-1] = 0.0  # the middle root, exactly
    # Newton until each root's step is at the rounding level: below 1e-15, or no smaller than
    # the step before (the evaluation's rounding noise); converged roots drop out of the sweeps
    active, last = np.arange(m), np.full(m, np.inf)
    for _ in range(100):
        xa = x[active]
        pn, pm = _legendre(n, xa)
        dx = pn * ((1 - xa) * (1 + xa)) / (n * (pm - xa * pn))  # P_n / P_n'
        x[active] = xa - dx
        step = np.abs(dx)
        going = (step > 1e-15) & (step < last[active])
        last[active] = step
        active = active[going]
        if active.size == 0:
            break
    else:  # pragma: no cover - Newton from Tricomi's guesses converges in a few sweeps
        raise RuntimeError(f"gauss_legendre: Newton's method did not converge for n = {n}")
    if n % 2:
        x[-1] = 0.0
    pn, pm = _legendre(n, x)
    one_minus_x2 = (1 - x) * (1 + x)
    dp = n * (pm - x * pn) / one_minus_x2
    w = 2.0 / (one_minus_x2 * dp * dp)
    # full rule, increasing nodes: the mirrored half without the middle root, then this half reversed
    h = n // 2
    nodes = np.concatenate([-x[:h], x[::-1]])
    weights = np.concatenate([w[:h], w[::-1]])
    return nodes, weights
