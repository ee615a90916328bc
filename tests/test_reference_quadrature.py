"""relprop.core.quadrature.gauss_legendre against numpy's eigenvalue-based ``leggauss`` and
against the defining property of the n-point Gauss rule (exact up to degree 2n - 1)."""
import numpy as np
import pytest
from numpy.polynomial import legendre as L

from relprop.core import quadrature as Q

SMALL = (1, 2, 3, 5, 50, 300)


@pytest.mark.parametrize("n", SMALL)
def test_matches_numpy_leggauss(n):
    x, w = Q.gauss_legendre(n)
    xr, wr = L.leggauss(n)
    assert x.dtype == w.dtype == np.float64 and x.shape == w.shape == (n,)
    np.testing.assert_allclose(x, xr, rtol=0, atol=1e-13)
    np.testing.assert_allclose(w, wr, rtol=0, atol=1e-13)


@pytest.mark.parametrize("n", SMALL)
def test_exact_for_polynomials_of_degree_2n_minus_1(n):
    """A Legendre series of degree 2n - 1 integrates to 2 c_0 (P_k, k >= 1, integrate to 0); the
    monomials x^k, k <= 2n - 1, to 2 / (k + 1) for even k and 0 for odd k."""
    x, w = Q.gauss_legendre(n)
    c = np.random.default_rng(n).normal(size=2 * n)
    assert abs(w @ L.legval(x, c) - 2 * c[0]) <= 1e-13 * np.abs(c).sum()
    k = np.arange(2 * n)
    want = np.where(k % 2 == 0, 2.0 / (k + 1), 0.0)
    got = (w[:, None] * x[:, None] ** k).sum(axis=0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13)


def test_8000_points_complete_and_integrate():
    """n = 8000 (O(n^3) leggauss took minutes): finishes, and the rule is a valid Gauss rule."""
    n = 8000
    x, w = Q.gauss_legendre(n)
    assert x.shape == w.shape == (n,)
    assert np.all(np.diff(x) > 0) and -1 < x[0] and x[-1] < 1 and np.all(w > 0)
    np.testing.assert_array_equal(x, -x[::-1])  # built symmetric, so exactly
    assert abs(w.sum() - 2) < 1e-12
    assert abs(w @ np.cos(x) - 2 * np.sin(1.0)) < 1e-12
    c = np.random.default_rng(0).normal(size=2 * n)
    assert abs(w @ L.legval(x, c) - 2 * c[0]) <= 1e-12 * np.abs(c).sum()
    # the roots are those of P_8000 (scipy's Golub-Welsch + Newton, an independent method)
    from scipy.special import roots_legendre

    np.testing.assert_allclose(x, roots_legendre(n)[0], rtol=0, atol=1e-13)


def test_cached_and_read_only():
    a = Q.gauss_legendre(7)
    b = Q.gauss_legendre(np.int64(7))
    assert a[0] is b[0] and a[1] is b[1]
    with pytest.raises(ValueError, match="read-only"):
        a[0][0] = 0.0


@pytest.mark.parametrize("n,err,match", [
    (0, ValueError, r"between 1 and 100000.*got 0"),
    (-3, ValueError, "got -3"),
    (Q.MAX_N + 1, ValueError, "got 100001"),
    (2.0, TypeError, r"n must be an int, got 2\.0"),
    (True, TypeError, "n must be an int"),
    ("5", TypeError, "n must be an int"),
])
def test_bad_n(n, err, match):
    with pytest.raises(err, match=match):
        Q.gauss_legendre(n)


def test_integrated_gradients_with_8000_gauss_legendre_steps():
    """The default scheme with many steps: the rule is built in O(n^2) (leggauss spent minutes
    in its O(n^3) eigenvalue solve before any kernel ran); completeness to float64 rounding."""
    import reference_numpy as ref
    import relprop as rp

    rng = np.random.default_rng(3)
    spec = ref.random_dense_net(rng, [4, 5, 3], act="tanh")
    x, base = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    R = rp.attribute(ref.to_relprop(spec, rp), x, "integrated_gradients", baseline=base, steps=8000, target=0)
    delta = ref.scores(spec, x)[:, 0] - ref.scores(spec, base)[:, 0]
    np.testing.assert_allclose(R.sum(axis=1), delta, rtol=0, atol=1e-12 * max(1.0, np.abs(delta).max()))
