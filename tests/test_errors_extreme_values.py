"""Finite but extreme values: a clear error, never a silent NaN (issue: hardening).

Parameters are checked after casting to the input's dtype (a float64 baseline of 1e39 is
infinite in float32), and every result is checked for finiteness: a method whose arithmetic
overflows raises, naming the method and where the values stopped being finite.
"""
import numpy as np
import pytest

import relprop as rp

RNG = np.random.default_rng(3)
NET = rp.Sequential(rp.Conv2d(RNG.normal(0, 0.5, (3, 2, 3, 3)), RNG.normal(0, 0.1, 3), padding=1), rp.ReLU(),
                    rp.Flatten(), rp.Dense(RNG.normal(0, 0.5, (4, 48)), RNG.normal(0, 0.1, 4)))
X = RNG.normal(size=(2, 2, 4, 4)).astype(np.float32)
PATTERNS = rp.fit_patterns(NET, RNG.normal(size=(32, 2, 4, 4)))

HUGE_INPUT_METHODS = [
    ("lrp.epsilon", {}), ("lrp.z_plus", {}), ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}),
    ("deeplift.rescale", {}), ("rap", {}), ("pattern_attribution", {"patterns": PATTERNS}),
    ("gradient_x_input", {}), ("occlusion", {"window": (1, 2, 2)}),
    ("kernel_shap", {"patch": 2, "samples": 8, "seed": 0}), ("lime", {"patch": 2, "samples": 8, "seed": 0}),
    ("deepshap", {"baselines": np.zeros((2, 2, 4, 4))}),
]


@pytest.mark.parametrize("method,kw", HUGE_INPUT_METHODS, ids=[m for m, _ in HUGE_INPUT_METHODS])
def test_huge_finite_inputs_raise_instead_of_nan(method, kw):
    x = np.full_like(X, 1e38)
    x[:, 0] = -1e38
    try:
        r = rp.attribute(NET, x, method, target=0, **kw)
    except ValueError as e:
        assert method in str(e) and "not finite" in str(e) and any(w in str(e) for w in ("layer", "backward", "forward pass"))
        return
    assert np.all(np.isfinite(r)), "a non-finite result came back without an error"


def test_error_names_the_first_non_finite_layer():
    x = np.full_like(X, 3e38)
    with pytest.raises(ValueError, match=r"lrp.epsilon.*at layer '0' \(Conv2d\) in the forward pass"):
        rp.attribute(NET, x, "lrp.epsilon", target=0)


@pytest.mark.parametrize("method,kw", [
    ("integrated_gradients", {"baseline": 1e39}), ("deeplift.rescale", {"baseline": 1e39}),
    ("deeplift.rescale", {"baseline": np.full((1, 2, 4, 4), 1e39)}),
    ("occlusion", {"window": (1, 2, 2), "fill": -1e39}),
    ("kernel_shap", {"patch": 2, "baseline": 1e39}), ("lime", {"patch": 2, "baseline": 1e39}),
    ("deepshap", {"baselines": np.full((2, 2, 4, 4), 1e39)}),
    ("expected_gradients", {"baselines": np.full((2, 2, 4, 4), 1e39)}),
    ("gradient_shap", {"baselines": np.full((2, 2, 4, 4), 1e39)}),
    ("lrp", {"rules": [rp.rules.ZBox(-1e39, 1e39), rp.rules.Epsilon()]}),
    ("rap", {"low": -1e39, "high": 1e39}),
])
def test_parameters_that_overflow_the_input_dtype_are_refused(method, kw, monkeypatch):
    import relprop.core.engine as engine

    def forbidden(*a, **k):
        raise AssertionError("a kernel ran before the parameters were checked")

    monkeypatch.setattr(engine, "forward", forbidden)
    with pytest.raises(ValueError, match="overflow the input's dtype float32"):
        rp.attribute(NET, X, method, target=0, **kw)


def test_the_same_parameters_are_fine_in_float64():
    r = rp.attribute(NET, X.astype(np.float64), "deeplift.rescale", target=0, baseline=1e39 / 1e30)
    assert np.all(np.isfinite(r))


def test_smoothgrad_memory_is_bounded_whatever_samples(monkeypatch):
    """Noise is drawn per sample for a bounded chunk of samples (float64, this chunk only):
    peak memory follows Budget.expand, not N x samples x the input size."""
    import tracemalloc

    import relprop.core.budget as budget

    net = rp.Sequential(rp.GlobalAvgPool2d(), rp.Flatten(), rp.Dense(RNG.normal(size=(3, 3))))
    x = RNG.normal(size=(16, 3, 64, 64)).astype(np.float32)  # 0.8 MB
    monkeypatch.setattr(budget, "BUDGET", budget.Budget(expand=4 * 2**20))
    kw = dict(base="gradient", samples=64, sigma=0.1, seed=1, target=0)
    rp.attribute(net, x[:1], "smoothgrad", **kw)  # compile first
    tracemalloc.start()
    try:
        r = rp.attribute(net, x, "smoothgrad", **kw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    all_at_once = x.size * 64 * 8  # 201 MB of float64 noise for every copy at once
    assert peak < 32 * 2**20 < all_at_once, f"peak {peak / 2**20:.1f} MiB"
    np.testing.assert_allclose(r, rp.attribute(net, x, "smoothgrad", batch_size=3, **kw), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method,kw,match", [
    ("lrp.epsilon", {"epsilon": 1e39}, "overflow the input's dtype float32"),
    ("smoothgrad", {"sigma": 1e39, "seed": 0}, "noisy copies of x are not finite"),
    ("gradient_shap", {"baselines": np.zeros((2, 2, 4, 4)), "stdevs": 1e39, "seed": 0}, "noisy inputs"),
    ("lime", {"patch": 2, "kernel_width": 1e-300, "seed": 0}, "kernel_width must be finite and >= 1e-6"),
])
def test_other_parameters_that_overflow_are_refused(method, kw, match):
    with pytest.raises(ValueError, match=match):
        rp.attribute(NET, X, method, target=0, **kw)


def test_non_finite_error_names_the_sample():
    x = X.copy()
    x[1] = 3e38
    with pytest.raises(ValueError, match=r"attribution of sample 1 is not finite"):
        rp.attribute(NET, x, "lrp.epsilon", target=0)


def test_gauss_legendre_does_not_use_numpys_cubic_eigen_solver(monkeypatch):
    """The nodes come from relprop's O(n^2) Newton iteration, not numpy's O(n^3) leggauss
    (8000 steps took ~2 min there before any kernel ran); the rule stays exact."""
    from relprop.methods.paths import ig_points

    def cubic(n):
        raise AssertionError("numpy.polynomial.legendre.leggauss is O(n^3)")

    monkeypatch.setattr(np.polynomial.legendre, "leggauss", cubic)
    a, w = ig_points("gauss_legendre", 8000)
    assert a.shape == w.shape == (8000,) and abs(w.sum() - 1) < 1e-12
    assert abs((w * a ** 5).sum() - 1 / 6) < 1e-12
