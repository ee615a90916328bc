"""Properties of the path / difference methods and of the gradient family.

* IG completeness (Ancona et al. 2018, Eq. 19 and "sensitivity-n"): sum_i R_i -> s_c(x) - s_c(x_bar) as steps grow, for
  every quadrature scheme, with the error shrinking;
* DeepLIFT summation-to-delta (Ancona et al. 2018, Eq. 17-18): sum_i R_i = s_c(x) - s_c(x_bar) up to float error, through
  ReLU/Tanh/Sigmoid, MaxPool (Captum's rule) and AvgPool;
* saliency = |gradient|, gradient_x_input = x * gradient.
Scores s_c come from the independent reference forward pass.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import reference_numpy as ref

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

SCHEMES = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre", "uniform"]


@pytest.fixture(scope="module")
def rp():
    import relprop
    return relprop


@st.composite
def networks(draw, kinds=("dense", "conv_max", "conv_avg"), acts=("relu", "tanh", "sigmoid"), min_n=1):
    kind = draw(st.sampled_from(kinds))
    act = draw(st.sampled_from(acts))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    bias = draw(st.booleans())
    softmax_last = draw(st.booleans())
    if kind == "dense":
        hidden = draw(st.lists(st.integers(2, 6), min_size=1, max_size=3))
        n_in, n_out = draw(st.integers(1, 6)), draw(st.integers(2, 5))
        spec = ref.random_dense_net(rng, [n_in] + hidden + [n_out], act=act, bias=bias, softmax_last=softmax_last,
                                    scale=1.5)
        shape = (n_in,)
    else:
        spec, shape = ref.random_conv_net(
            rng, in_ch=draw(st.integers(1, 2)), size=draw(st.integers(4, 6)), channels=draw(st.integers(1, 3)),
            pool=kind.split("_")[1], act=act, bias=bias, n_out=draw(st.integers(2, 4)),
            second_conv=draw(st.booleans()), softmax_last=softmax_last)
    n = draw(st.integers(min_n, 3))
    x = rng.normal(0, 1, (n,) + shape)
    return spec, x


@st.composite
def baselines(draw, x):
    kind = draw(st.sampled_from(["zero", "scalar", "array", "broadcast"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "zero":
        return 0.0
    if kind == "scalar":
        return float(draw(st.floats(-1, 1)))
    if kind == "array":
        return rng.normal(0, 0.7, x.shape)
    return rng.normal(0, 0.7, (1,) + x.shape[1:])


def _delta(spec, x, baseline, target):
    xb = np.broadcast_to(np.asarray(baseline, np.float64), x.shape)
    t = ref.resolve_target(spec, x, target)
    idx = np.arange(len(x))
    return ref.scores(spec, x)[idx, t] - ref.scores(spec, xb)[idx, t]


def _sums(R):
    return R.reshape(R.shape[0], -1).sum(axis=1)


def _attr(rp, spec, x, method, **params):
    R = rp.attribute(ref.to_relprop(spec, rp), x, method, **params)
    assert R.shape == x.shape and R.dtype == x.dtype and np.all(np.isfinite(R))
    return R


# ---- integrated gradients: completeness ------------------------------------------------------------


@SETTINGS
@given(data=st.data(), net=networks(kinds=("dense", "conv_avg"), acts=("tanh", "sigmoid")),
       scheme=st.sampled_from(SCHEMES))
def test_ig_completeness_error_shrinks_on_smooth_nets(rp, data, net, scheme):
    spec, x = net
    base = data.draw(baselines(x))
    delta = _delta(spec, x, base, None)
    errs = []
    for steps in (8, 64, 512):
        R = _attr(rp, spec, x, "integrated_gradients", baseline=base, steps=steps, scheme=scheme)
        errs.append(np.abs(_sums(R) - delta))
    scale = np.abs(delta) + np.abs(ref.gradient_x_input(spec, x)).reshape(len(x), -1).sum(1) + 1e-3
    assert np.all(errs[2] <= errs[0] + 1e-10 * scale), (scheme, errs)
    assert np.all(errs[2] <= 1e-2 * scale), (scheme, errs)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_ig_completeness_converges_on_relu_conv_net(rp, scheme):
    """Piecewise-linear net: the integrand jumps, every scheme still converges (order 1/steps)."""
    rng = np.random.default_rng(7)
    spec, shape = ref.random_conv_net(rng, pool="max", second_conv=True, softmax_last=True)
    x = rng.normal(0, 1, (2,) + shape)
    base = rng.normal(0, 0.5, (2,) + shape)
    delta = _delta(spec, x, base, None)
    errs = [np.abs(_sums(_attr(rp, spec, x, "integrated_gradients", baseline=base, steps=n, scheme=scheme)) - delta)
            for n in (4, 400)]
    assert np.all(errs[1] <= 2e-2 * np.abs(delta) + 1e-6), errs
    assert np.all(errs[1] <= errs[0] + 1e-12)


@pytest.mark.parametrize("scheme", ["riemann_left", "riemann_right", "riemann_middle", "gauss_legendre"])
def test_ig_exact_on_linear_net(rp, scheme):
    """A linear model has a constant gradient: every scheme whose weights sum to 1 is exact for any steps."""
    rng = np.random.default_rng(3)
    spec = [ref.dense(rng.normal(size=(3, 4)), rng.normal(size=3)), ref.identity(),
            ref.dense(rng.normal(size=(2, 3)), rng.normal(size=2))]
    x = rng.normal(size=(2, 4))
    base = rng.normal(size=(2, 4))
    for steps in (1, 2, 5):
        R = _attr(rp, spec, x, "integrated_gradients", baseline=base, steps=steps, scheme=scheme, target=1)
        np.testing.assert_allclose(_sums(R), _delta(spec, x, base, 1), rtol=1e-12, atol=1e-12)


def test_ig_uniform_is_exact_on_linear_net(rp):
    rng = np.random.default_rng(4)
    spec = [ref.dense(rng.normal(size=(2, 4)), rng.normal(size=2))]
    x, base = rng.normal(size=(2, 4)), rng.normal(size=(2, 4))
    for steps in (2, 3, 10):
        R = _attr(rp, spec, x, "integrated_gradients", baseline=base, steps=steps, scheme="uniform", target=0)
        np.testing.assert_allclose(_sums(R), _delta(spec, x, base, 0), rtol=1e-12, atol=1e-12)


def test_ig_default_scheme_is_gauss_legendre_with_50_steps(rp):
    rng = np.random.default_rng(5)
    spec = ref.random_dense_net(rng, [4, 5, 3], act="tanh")
    x = rng.normal(size=(2, 4))
    R_default = _attr(rp, spec, x, "integrated_gradients")
    R_explicit = _attr(rp, spec, x, "integrated_gradients", baseline=0.0, steps=50, scheme="gauss_legendre")
    np.testing.assert_array_equal(R_default, R_explicit)  # exact: the same parameters, the same computation


def test_ig_equals_zero_when_x_is_baseline(rp):
    rng = np.random.default_rng(6)
    spec = ref.random_dense_net(rng, [4, 5, 3])
    x = rng.normal(size=(2, 4))
    for scheme in SCHEMES:
        R = _attr(rp, spec, x, "integrated_gradients", baseline=x.copy(), steps=5, scheme=scheme)
        np.testing.assert_array_equal(R, np.zeros_like(x))


# ---- DeepLIFT: summation to delta --------------------------------------------------------------------


@SETTINGS
@given(data=st.data(), net=networks())
def test_deeplift_sums_to_delta(rp, data, net):
    spec, x = net
    base = data.draw(baselines(x))
    target = data.draw(st.one_of(st.none(), st.integers(0, 1)))
    R = _attr(rp, spec, x, "deeplift.rescale", baseline=base, target=target)
    delta = _delta(spec, x, base, target)
    scale = np.abs(R).reshape(len(x), -1).sum(1) + np.abs(delta) + 1e-12
    assert np.all(np.abs(_sums(R) - delta) <= 1e-9 * scale), (_sums(R), delta)


@SETTINGS
@given(data=st.data(), net=networks(kinds=("conv_max",), acts=("relu",)))
def test_deeplift_sums_to_delta_relu_maxpool(rp, data, net):
    """ReLU followed by MaxPool: the pooled differences are routed to the winners of x and of the baseline and
    divided by the input differences, so nothing is lost (Captum 0.9 itself loses relevance here, issue #1104)."""
    spec, x = net
    base = data.draw(baselines(x))
    R = _attr(rp, spec, x, "deeplift.rescale", baseline=base)
    delta = _delta(spec, x, base, None)
    scale = np.abs(R).reshape(len(x), -1).sum(1) + np.abs(delta) + 1e-12
    assert np.all(np.abs(_sums(R) - delta) <= 1e-9 * scale), (_sums(R), delta)


@SETTINGS
@given(data=st.data(), net=networks(kinds=("dense", "conv_max", "conv_avg")))
def test_deeplift_sums_to_delta_float32(rp, data, net):
    spec, x = net
    x = x.astype(np.float32)
    base = data.draw(baselines(x))
    if isinstance(base, np.ndarray):
        base = base.astype(np.float32)
    assume(ref.min_abs_delta_preactivation(spec, x, base) > 1e-2)
    R = _attr(rp, spec, x, "deeplift.rescale", baseline=base)
    delta = _delta(spec, x.astype(np.float64), base, None)
    scale = np.abs(R).reshape(len(x), -1).sum(1) + np.abs(delta) + 1e-6
    assert np.all(np.abs(_sums(R) - delta) <= 1e-4 * scale), (_sums(R), delta)


def test_deeplift_zero_when_x_is_baseline(rp):
    rng = np.random.default_rng(8)
    spec, shape = ref.random_conv_net(rng, pool="max", act="sigmoid")
    x = rng.normal(size=(2,) + shape)
    R = _attr(rp, spec, x, "deeplift.rescale", baseline=x.copy())
    np.testing.assert_array_equal(R, np.zeros_like(x))


# ---- gradient family ---------------------------------------------------------------------------------


@SETTINGS
@given(net=networks(), target=st.one_of(st.none(), st.integers(0, 1)))
def test_saliency_is_abs_gradient_and_gxi_is_x_times_gradient(rp, net, target):
    spec, x = net
    G = _attr(rp, spec, x, "gradient", target=target)
    np.testing.assert_array_equal(_attr(rp, spec, x, "saliency", target=target), np.abs(G))  # exact: |same gradient|
    np.testing.assert_allclose(_attr(rp, spec, x, "gradient_x_input", target=target), x * G, rtol=1e-15, atol=0)
    # and the gradient is the reference gradient
    np.testing.assert_allclose(G, ref.gradient(spec, x, target), rtol=0, atol=1e-10 * (np.abs(G).max() + 1e-12))
