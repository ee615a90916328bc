"""RectGrad against a plain-numpy implementation of Kim et al. 2019, Eq. 4-5, and the
one-rule method strings lrp.flat / lrp.w_square against their rule lists."""
import numpy as np
import pytest

import relprop as rp

RNG = np.random.default_rng(9)
W1, b1 = RNG.normal(size=(12, 6)), RNG.normal(0, 0.1, 12)
W2, b2 = RNG.normal(size=(10, 12)), RNG.normal(0, 0.1, 10)
W3, b3 = RNG.normal(size=(4, 10)), RNG.normal(0, 0.1, 4)
NET = rp.Sequential(rp.Dense(W1, b1), rp.ReLU(), rp.Dense(W2, b2), rp.ReLU(), rp.Dense(W3, b3))
X = RNG.normal(size=(5, 6))


def rectgrad_reference(x, t, q):
    """Eq. 4.9: R_i^[l] = 1(a_i R_i^[l+1] > tau) R_i^[l+1], tau the q-th percentile of a*R in the
    layer (per sample); Eq. 4.10: x * R * 1(x * R > 0)."""
    out = np.zeros_like(x)
    for n in range(x.shape[0]):
        z1 = W1 @ x[n] + b1
        a1 = np.maximum(z1, 0)
        z2 = W2 @ a1 + b2
        a2 = np.maximum(z2, 0)
        r = W3[t[n]].copy()  # gradient of the score at a2
        s = a2 * r
        r = np.where(s > np.percentile(s, q), r, 0)
        r = W2.T @ r
        s = a1 * r
        r = np.where(s > np.percentile(s, q), r, 0)
        r = W1.T @ r
        out[n] = np.where(x[n] * r > 0, x[n] * r, 0)
    return out


@pytest.mark.parametrize("q", [0.0, 50.0, 90.0, 98.0])
def test_rectgrad_matches_equations(q):
    t = np.array([0, 1, 2, 3, 1])
    np.testing.assert_allclose(rp.attribute(NET, X, "rectgrad", q=q, target=t), rectgrad_reference(X, t, q),
                               rtol=1e-12, atol=1e-14)


def test_rectgrad_is_nonnegative_and_validated():
    assert np.all(rp.attribute(NET, X, "rectgrad") >= 0)
    with pytest.raises(ValueError, match="percentile"):
        rp.attribute(NET, X, "rectgrad", q=120)


@pytest.mark.parametrize("method,rule", [("lrp.flat", rp.rules.Flat(1e-6)),
                                         ("lrp.w_square", rp.rules.WSquare(1e-6)),
                                         ("lrp.w_square", rp.rules.WSquare(1e-6, include_bias=False))])
def test_single_rule_methods_equal_rule_lists(method, rule):
    kw = {} if method == "lrp.flat" else {"include_bias": rule.include_bias}
    a = rp.attribute(NET, X, method, **kw)
    b = rp.attribute(NET, X, "lrp", rules=[rule] * 3)
    np.testing.assert_array_equal(a, b)  # exact: the same rules, the same code path


def test_rectgrad_targets_equal_single_calls():
    M = rp.attribute(NET, X, "rectgrad", targets=[0, 1])
    for j in (0, 1):
        np.testing.assert_allclose(M[:, j], rp.attribute(NET, X, "rectgrad", target=j), rtol=1e-6, atol=1e-6 * np.abs(M).max())
