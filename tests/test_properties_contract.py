"""One contract for every registered method, driven by the registry (``rp.METHODS``).

For each method: results independent of the internal batch size (1, 7, automatic: float64 to
1e-12, float32 to 1e-5 x max|R|), ``targets=`` equal to one call per target, seeded methods
reproducible and independent of the batch a sample comes in (``row_offset``), bad parameters
rejected before any kernel runs, the declared completeness / conservation reported by
``Explainer.explain`` equal to an independent computation, pickled Explainers giving the same
numbers, and emulated-device parity for every method declared to run on the GPU. A method
added to the registry without a case here fails ``test_every_method_has_a_case``.
"""
import pickle

import numpy as np
import pytest

import fake_device as fd
import relprop as rp
from tolerance import SCALE_TOL, assert_blas_close

RNG = np.random.default_rng(20261202)
N = 9


def _net():
    r = np.random.default_rng(7)
    return rp.Sequential(
        rp.Conv2d(r.normal(0, 0.4, (4, 2, 3, 3)), r.normal(0, 0.1, 4), padding=1), rp.ReLU(),
        rp.MaxPool2d(2),
        rp.Conv2d(r.normal(0, 0.4, (4, 4, 3, 3)), r.normal(0, 0.1, 4), padding=1), rp.ReLU(),
        rp.Flatten(), rp.Dense(r.normal(0, 0.4, (5, 36)), r.normal(0, 0.1, 5)))


NET = _net()
SHAPE = (2, 6, 6)
X = np.abs(RNG.normal(size=(N,) + SHAPE))  # non-negative, inside the z^B box below
BASES = RNG.normal(0, 0.3, (3,) + SHAPE)
PATTERNS = rp.fit_patterns(NET, np.abs(RNG.normal(size=(64,) + SHAPE)))

CASES = {
    "gradient": {}, "saliency": {}, "gradient_x_input": {}, "guided_backprop": {}, "deconvnet": {},
    "rectgrad": {"q": 90.0}, "excitation_backprop": {},
    "integrated_gradients": {"steps": 6, "baseline": 0.1},
    "deeplift.rescale": {"baseline": 0.1}, "deeplift.reveal_cancel": {"conv_rule": "reveal_cancel"},
    "lrp.z": {}, "lrp.epsilon": {"epsilon": 0.01}, "lrp.gamma": {}, "lrp.alpha_beta": {"alpha": 2.0, "beta": 1.0},
    "lrp.z_plus": {}, "lrp.flat": {}, "lrp.w_square": {},
    "lrp": {"rules": rp.composites.EpsilonGammaBox(low=0.0, high=5.0)},
    "deep_taylor": {"low": 0.0, "high": 5.0},
    "occlusion": {"window": (2, 3, 3), "stride": (2, 2, 2)},
    "deepshap": {"baselines": BASES}, "expected_gradients": {"baselines": BASES, "samples": 4, "seed": 3},
    "gradient_shap": {"baselines": BASES, "samples": 4, "stdevs": 0.1, "seed": 3},
    "gradcam": {}, "gradcam_pp": {}, "guided_gradcam": {},
    "kernel_shap": {"patch": 3, "samples": 24, "seed": 5}, "lime": {"patch": 3, "samples": 24, "seed": 5},
    "rap": {}, "patternnet": {"patterns": PATTERNS}, "pattern_attribution": {"patterns": PATTERNS},
    "smoothgrad": {"base": "lrp.epsilon", "samples": 3, "sigma": 0.1, "seed": 4},
}
NAMES = sorted(rp.METHODS)


def _close(a, b, dtype):
    assert_blas_close(a, b, tol=SCALE_TOL[np.dtype(dtype)])


def test_every_method_has_a_case():
    assert sorted(CASES) == NAMES


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", NAMES)
def test_independent_of_batch_size(method, dtype):
    x = X.astype(dtype)
    auto = rp.attribute(NET, x, method, target=1, **CASES[method])
    assert auto.shape == x.shape and auto.dtype == dtype
    for bs in (1, 7):
        _close(rp.attribute(NET, x, method, target=1, batch_size=bs, **CASES[method]), auto, dtype)


@pytest.mark.parametrize("method", NAMES)
def test_targets_equal_one_call_per_target(method):
    ex = rp.Explainer(NET, method, **CASES[method])
    M = ex(X, targets=[3, 0])
    assert M.shape == (N, 2) + SHAPE
    for j, t in enumerate([3, 0]):
        _close(M[:, j], ex(X, target=t), np.float64)
    per_sample = np.stack([np.arange(N) % 5, (np.arange(N) + 2) % 5], axis=1)  # (N, K) targets
    P = ex(X, targets=per_sample)
    for j in range(2):
        _close(P[:, j], ex(X, target=per_sample[:, j]), np.float64)


RANDOM = [m for m in NAMES if rp.METHODS[m].random]


def test_random_methods_are_declared():
    assert set(RANDOM) == {"expected_gradients", "gradient_shap", "kernel_shap", "lime", "smoothgrad"}


@pytest.mark.parametrize("method", RANDOM)
def test_seeded_methods_reproducible_and_batch_independent(method):
    kw = CASES[method]
    a = rp.attribute(NET, X, method, target=2, **kw)
    np.testing.assert_array_equal(a, rp.attribute(NET, X, method, target=2, **kw))  # same call, same numbers
    assert not np.allclose(a, rp.attribute(NET, X, method, target=2, **{**kw, "seed": kw["seed"] + 1}))
    # a sample's draws depend on its global index only: rows 4..6 alone (row_offset=4) are rows 4..6
    _close(rp.attribute(NET, X[4:7], method, target=2, row_offset=4, **kw), a[4:7], np.float64)
    # seed=None draws a fresh seed per call; the Explanation records it and reproduces the call
    e = rp.Explainer(NET, method, **{**kw, "seed": None}).explain(X, target=2)
    again = rp.attribute(NET, X, method, target=2, **{**kw, "seed": e.params["seed"]})
    np.testing.assert_array_equal(e.attribution, again)


def _bad_values(method):
    """Wrong-typed or out-of-range values for each of the method's parameters."""
    for name in rp.METHODS[method].params:
        for bad in ("bad", -1.5, np.full((2, 2), np.nan)):
            if name in ("baseline", "fill") and isinstance(bad, float):
                continue  # a negative baseline or fill is a valid reference value
            if name in ("low", "high") and isinstance(bad, float):
                continue  # one bound alone is refused, but -1.5 is a valid bound value
            yield name, bad


@pytest.mark.parametrize("method", NAMES)
def test_bad_parameters_rejected_before_any_kernel(method, monkeypatch):
    import relprop.core.engine as engine

    def forbidden(*a, **k):
        raise AssertionError("a kernel ran before the parameters were validated")

    monkeypatch.setattr(engine, "forward", forbidden)
    monkeypatch.setattr(engine, "backward", forbidden)
    with pytest.raises(TypeError, match="unknown parameter 'no_such_parameter'"):
        rp.attribute(NET, X, method, no_such_parameter=1, **CASES[method])
    for name, bad in _bad_values(method):
        try:
            rp.attribute(NET, X, method, **{**CASES[method], name: bad})
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"{method}: {name}={bad!r} was accepted")


def _scores(x):
    return rp.forward(NET, x)  # the model ends with the score layer (no softmax)


@pytest.mark.parametrize("method", NAMES)
def test_explanation_reports_what_the_method_sums_to(method):
    e = rp.Explainer(NET, method, **CASES[method]).explain(X, target=None)
    s = _scores(X)
    t = s.argmax(axis=1)
    np.testing.assert_array_equal(e.targets, t)
    np.testing.assert_allclose(e.scores, s[np.arange(N), t], rtol=1e-12)
    assert e.method == method and e.sums_to == rp.METHODS[method].sums_to
    total = e.attribution.reshape(N, -1).sum(axis=1)
    if e.sums_to is None:
        assert e.error is None
        return
    if e.sums_to == "score":
        ref = e.scores
    else:
        p = CASES[method]
        if "baselines" in p:
            ref = e.scores - _scores(p["baselines"]).mean(axis=0)[t]
        else:
            ref = e.scores - _scores(np.broadcast_to(np.float64(p.get("baseline", 0.0)), X.shape).copy())[np.arange(N), t]
    np.testing.assert_allclose(e.error, total - ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    if method.startswith("deeplift") or method == "deepshap":  # summation-to-delta is exact
        np.testing.assert_allclose(e.error, 0, atol=1e-9 * np.abs(ref).max())


def test_explanation_multi_target_shapes():
    e = rp.Explainer(NET, "lrp.epsilon").explain(X, targets=[1, 4])
    assert e.attribution.shape == (N, 2) + SHAPE and e.targets.shape == (N, 2) and e.error.shape == (N, 2)
    np.testing.assert_array_equal(e.targets, np.broadcast_to([1, 4], (N, 2)))


@pytest.mark.parametrize("method", NAMES)
def test_pickled_explainer_gives_the_same_numbers(method):
    ex = rp.Explainer(NET, method, **CASES[method])
    a = ex(X, target=1)
    ex2 = pickle.loads(pickle.dumps(ex))
    np.testing.assert_array_equal(ex2(X, target=1), a)


GPU = [m for m in NAMES if "gpu" in rp.METHODS[m].backends]


@pytest.mark.parametrize("method", GPU + ["smoothgrad"])
def test_emulated_device_parity(method):
    """Device-capable methods on a strict emulated device (no host array may meet a device
    array) give the CPU's numbers."""
    x = X.astype(np.float32)
    host = rp.attribute(NET, x, method, target=1, **CASES[method])
    fd.install()
    try:
        dev = rp.attribute(NET, fd.to_device(x), method, target=1, **CASES[method])
    finally:
        fd.uninstall()
    assert isinstance(dev, fd.DeviceArray)
    _close(dev.view(np.ndarray), host, np.float32)


def test_repeated_calls_do_no_compile_work(monkeypatch):
    """Once a model's weights are derived for a dtype, new batches reuse them."""
    import relprop.core.plan as plan

    ex = rp.Explainer(NET, "lrp", rules=rp.composites.EpsilonPlusFlat())
    ex(X[:2])
    built = []
    orig = plan.rule_state
    monkeypatch.setattr(plan, "rule_state", lambda *a, **k: built.append(a) or orig(*a, **k))
    ex(X[2:5])
    rp.attribute(NET, X[5:], "lrp", rules=rp.composites.EpsilonPlusFlat())
    assert built == []


def test_changed_weights_are_seen_by_every_method():
    """Derived weights are tied to the weight version: a reassigned weight reaches LRP too."""
    net = _net()
    ex = rp.Explainer(net, "lrp.z_plus")
    before = ex(X, target=0)
    w = net.nodes[-1].layer.weight
    with pytest.raises(ValueError):
        w.setflags(write=True)  # weights are immutable
    net.nodes[-1].layer.weight = w * 2.0
    after = ex(X, target=0)
    fresh = rp.attribute(_scaled(_net(), 2.0), X, "lrp.z_plus", target=0)
    _close(after, fresh, np.float64)
    assert not np.allclose(after, before)


def _scaled(net, f):
    net.nodes[-1].layer.weight = net.nodes[-1].layer.weight * f
    return net


def _bias_free(linear):
    """A bias-free model: conservation (LRP family, RAP) is exact on it with ReLUs, and on the
    purely linear variant every completeness method is exact (the gradient is constant)."""
    r = np.random.default_rng(11)
    layers = [rp.Conv2d(np.abs(r.normal(0, 0.4, (4, 2, 3, 3))), np.zeros(4), padding=1)]
    layers += [] if linear else [rp.ReLU()]
    layers += [rp.Flatten(), rp.Dense(r.normal(0, 0.4, (5, 144)), np.zeros(5))]
    return rp.Sequential(*layers)


@pytest.mark.parametrize("method", [m for m in NAMES if rp.METHODS[m].sums_to is not None])
def test_declared_sums_to_holds_where_it_is_exact(method):
    """What a method declares it sums to is checked against an independent forward pass, on a
    model where the property is exact (not against the executor's own subtraction)."""
    kw = dict(CASES[method])
    if "baselines" in kw:
        kw["baselines"] = BASES[:1]  # one reference input: every draw uses it
    if method == "gradient_shap":
        kw["stdevs"] = 0.0
    kind = rp.METHODS[method].sums_to
    net = _bias_free(linear=kind == "delta")
    x = X[:, :, :, :]
    s = rp.forward(net, x)
    t = s.argmax(axis=1)
    ref = s[np.arange(N), t]
    if kind == "delta":
        b = kw.get("baselines", np.broadcast_to(np.float64(kw.get("baseline", 0.0)), (1,) + SHAPE))[0]
        ref = ref - rp.forward(net, np.ascontiguousarray(b[None]))[0, t]
    if method in ("deep_taylor", "lrp.epsilon", "lrp.alpha_beta"):
        kw = {}  # defaults: w^2 first layer, epsilon 1e-6, alpha 1 / beta 0 (with beta > 0 a layer whose
        # inputs have no negative contribution, as the first one here, keeps only alpha * R)
    R = rp.attribute(net, x, method, target=t, **kw)
    total = R.reshape(N, -1).sum(axis=1)
    tol = 1e-4 if method in ("lrp.epsilon", "lrp", "lrp.flat") else 1e-6  # epsilon / stabilizers
    np.testing.assert_allclose(total, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("method,kw,err", [
    ("lrp.epsilon", {"epsilon": -1.0}, ValueError), ("integrated_gradients", {"steps": -3}, ValueError),
    ("integrated_gradients", {"scheme": "simpson"}, ValueError), ("gradcam", {"layer": "nope"}, ValueError),
    ("lrp", {}, TypeError), ("smoothgrad", {"kind": "median"}, ValueError), ("kernel_shap", {"samples": 1}, ValueError),
    ("occlusion", {}, TypeError), ("rectgrad", {"q": 101.0}, ValueError), ("expected_gradients", {"samples": 0,
                                                                                                  "baselines": BASES},
                                                                          ValueError),
    ("deep_taylor", {"low": 0.0}, ValueError), ("deeplift.rescale", {"baseline": np.full(3, np.nan)}, ValueError),
    ("lime", {"kernel_width": 0.0}, ValueError), ("rap", {"low": 0.0}, ValueError),
    ("patternnet", {}, TypeError), ("deepshap", {}, TypeError),
])
def test_input_independent_parameters_are_checked_when_the_explainer_is_built(method, kw, err):
    """An Explainer with a bad parameter value fails where it is built (not on its first call,
    e.g. on a Dask worker)."""
    with pytest.raises(err):
        rp.Explainer(NET, method, **kw)
