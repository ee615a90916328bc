"""Properties of LRP (and its gradient relatives) on random networks drawn by hypothesis.

* conservation: sum_i R_i^{m-1} = sum_j R_j^m at every layer whenever the rule's denominator is exactly the sum
  of its numerators (LRP-0/epsilon->0 without bias in the denominator, ZPlus/AlphaBeta(1,0)/Gamma on nonnegative
  inputs of bias-free layers, Flat, WSquare without bias), so sum_i R_i(x) = s_c(x) (the starting relevance);
* Ancona et al. 2018, Proposition 3: epsilon-LRP (epsilon -> 0) = Gradient*Input on ReLU nets; = DeepLIFT-rescale with a
  zero baseline on bias-free nets with f(0) = 0 (ReLU, Tanh);
* batch independence: a batch gives the same attributions as its samples one at a time;
* float32 agrees with float64.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import reference_numpy as ref

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def rp():
    import relprop
    return relprop


@st.composite
def networks(draw, kinds=("dense", "conv_max", "conv_avg"), acts=("relu",), bias=st.booleans(),
             positive_x=False, min_n=1):
    """(spec, x): a small random Dense or Conv2d/pool network and a batch of inputs."""
    kind = draw(st.sampled_from(kinds))
    act = draw(st.sampled_from(acts))
    has_bias = draw(bias) if not isinstance(bias, bool) else bias
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    softmax_last = draw(st.booleans())
    if kind == "dense":
        hidden = draw(st.lists(st.integers(2, 6), min_size=1, max_size=3))
        n_in, n_out = draw(st.integers(1, 6)), draw(st.integers(2, 5))
        spec = ref.random_dense_net(rng, [n_in] + hidden + [n_out], act=act, bias=has_bias,
                                    softmax_last=softmax_last)
        shape = (n_in,)
    else:
        stride = draw(st.sampled_from([1, 2]))
        size = draw(st.integers(4, 7)) if stride == 1 else draw(st.integers(6, 8))
        spec, shape = ref.random_conv_net(
            rng, in_ch=draw(st.integers(1, 2)), size=size, channels=draw(st.integers(1, 3)),
            pool=kind.split("_")[1], act=act, bias=has_bias, n_out=draw(st.integers(2, 4)), stride=stride,
            second_conv=draw(st.booleans()), softmax_last=softmax_last)
    n = draw(st.integers(min_n, 3))
    x = rng.normal(0, 1, (n,) + shape)
    if positive_x:
        x = np.abs(x)
    return spec, x


def _score(spec, x, target):
    s = ref.scores(spec, x)
    t = ref.resolve_target(spec, x, target)
    return s[np.arange(len(x)), t]


def _attr(rp, spec, x, method, target=None, **params):
    R = rp.attribute(ref.to_relprop(spec, rp), x, method, target=target, **params)
    assert R.shape == x.shape and R.dtype == x.dtype
    assert np.all(np.isfinite(R))
    return R


def _sums(R):
    return R.reshape(R.shape[0], -1).sum(axis=1)


def _abs_sums(R):
    return np.abs(R).reshape(R.shape[0], -1).sum(axis=1)


def _n_lin(spec):
    return len(ref.linear_layer_kinds(spec))


def _has_avgpool(spec):
    return any(layer[0] == "avgpool" for layer in spec)


def _tol(spec):
    """AvgPool's Norm rule keeps its fixed 1e-6 stabilizer: allow eps / min|avgpool output| (>= 1e-2)."""
    return 1e-4 if _has_avgpool(spec) else 1e-6


def _avgpool_ok(spec, x):
    """No nonzero AvgPool output (nor LRP-0 denominator) within 1e-2 of 0."""
    return not _has_avgpool(spec) or ref.min_abs_denominator(spec, x, [ref.rule("z")] * _n_lin(spec)) > 1e-2


def _conserves(spec, x, rules):
    """The reference itself conserves on this draw (excludes draws where a denominator is exactly 0 while
    relevance reaches it, e.g. a target whose positive pre-activation part is 0 under ZPlus)."""
    R = ref.lrp(spec, x, rules)
    s = _score(spec, x, None)
    return np.all(np.abs(_sums(R) - s) <= 1e-6 * (_abs_sums(R) + np.abs(s)) + 1e-12)


# ---- conservation -----------------------------------------------------------------------------------


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max"), acts=("relu", "tanh")))
def test_lrp_z_without_bias_conserves(rp, net):
    """LRP-0, bias out of the denominator: sum_i w_ji a_i / sum_k w_jk a_k = 1 for every j, any network."""
    spec, x = net
    assume(_conserves(spec, x, [ref.rule("z", include_bias=False)] * _n_lin(spec)))
    s = _score(spec, x, None)
    for method, params in [("lrp.z", {"include_bias": False}),
                           ("lrp.epsilon", {"include_bias": False, "epsilon": 1e-12})]:
        R = _attr(rp, spec, x, method, **params)
        tol = 1e-8 * (_abs_sums(R) + np.abs(s)) + 1e-12
        assert np.all(np.abs(_sums(R) - s) <= tol), (method, _sums(R), s)


@SETTINGS
@given(net=networks(kinds=("conv_avg",), acts=("relu",)))
def test_lrp_z_without_bias_conserves_through_avgpool(rp, net):
    """AvgPool's Norm rule conserves up to its fixed 1e-6 stabilizer."""
    spec, x = net
    assume(_avgpool_ok(spec, x) and _conserves(spec, x, [ref.rule("z", include_bias=False)] * _n_lin(spec)))
    s = _score(spec, x, None)
    R = _attr(rp, spec, x, "lrp.z", include_bias=False)
    assert np.all(np.abs(_sums(R) - s) <= 1e-5 * (_abs_sums(R) + np.abs(s)) + 1e-12)


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max", "conv_avg"), bias=False, positive_x=True),
       which=st.sampled_from(["z_plus", "alpha_beta", "gamma"]), include_bias=st.booleans())
def test_positive_rules_conserve_on_positive_inputs_without_bias(rp, net, which, include_bias):
    """ZPlus, AlphaBeta(1, 0) and Gamma on x >= 0 in bias-free ReLU nets: denominators = sums of numerators."""
    spec, x = net
    params = {"include_bias": include_bias, "epsilon": 1e-12}
    if which == "gamma":
        params["gamma"] = 0.5
    rules = [ref.rule(which, **params)] * _n_lin(spec)
    assume(_conserves(spec, x, rules))
    s = _score(spec, x, None)
    R = _attr(rp, spec, x, "lrp." + which, **params)
    assert np.all(np.abs(_sums(R) - s) <= 2e-5 * (_abs_sums(R) + np.abs(s)) + 1e-12), (_sums(R), s)


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max"), acts=("relu", "tanh", "sigmoid")),
       first=st.sampled_from(["flat", "w_square"]))
def test_flat_and_wsquare_conserve(rp, net, first):
    """Flat (ones/ones) and WSquare without bias (w^2 / sum w^2) distribute exactly what they receive."""
    spec, x = net
    assume(_conserves(spec, x, [ref.rule("z", include_bias=False)] * _n_lin(spec)))
    rules = [rp.rules.Flat(epsilon=1e-12) if first == "flat" else rp.rules.WSquare(epsilon=1e-12, include_bias=False)]
    rules += [rp.rules.Z(include_bias=False) for _ in range(_n_lin(spec) - 1)]
    s = _score(spec, x, None)
    R = _attr(rp, spec, x, "lrp", rules=rules)
    assert np.all(np.abs(_sums(R) - s) <= 1e-5 * (_abs_sums(R) + np.abs(s)) + 1e-12)
    # all-Flat / all-WSquare too
    rules = [rp.rules.Flat(epsilon=1e-12) if first == "flat" else rp.rules.WSquare(epsilon=1e-12, include_bias=False)
             for _ in range(_n_lin(spec))]
    R = _attr(rp, spec, x, "lrp", rules=rules)
    assert np.all(np.abs(_sums(R) - s) <= 1e-5 * (_abs_sums(R) + np.abs(s)) + 1e-12)


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max"), acts=("relu",)), target=st.integers(0, 1))
def test_conservation_for_any_target(rp, net, target):
    """The start signal is s_c e_c for the requested class, not only the argmax."""
    spec, x = net
    n_out = ref.scores(spec, x[:1]).shape[1]
    R_ref = ref.lrp(spec, x, [ref.rule("z", include_bias=False)] * _n_lin(spec), target=target % n_out)
    s = _score(spec, x, target % n_out)
    assume(np.all(np.abs(_sums(R_ref) - s) <= 1e-8 * (_abs_sums(R_ref) + np.abs(s)) + 1e-12))
    R = _attr(rp, spec, x, "lrp.z", target=target % n_out, include_bias=False)
    assert np.all(np.abs(_sums(R) - s) <= 1e-8 * (_abs_sums(R) + np.abs(s)) + 1e-12)


# ---- Ancona et al. 2018, Proposition 3 ------------------------------------------------------------------------


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max", "conv_avg"), acts=("relu",)))
def test_prop3_epsilon_lrp_equals_gradient_x_input_on_relu_nets(rp, net):
    """Prop. 3 i: with only ReLUs, g_LRP = f(z)/z = f'(z), so epsilon-LRP (epsilon -> 0, bias in the
    denominator as in Eq. 15) is Gradient*Input."""
    spec, x = net
    assume(ref.min_abs_preactivation(spec, x) > 1e-4 and _avgpool_ok(spec, x))
    G = _attr(rp, spec, x, "gradient_x_input")
    scale = np.abs(G).max() + 1e-12
    for method, params in [("lrp.epsilon", {"epsilon": 1e-12}), ("lrp.z", {})]:
        R = _attr(rp, spec, x, method, **params)
        assert np.abs(R - G).max() <= _tol(spec) * scale, method


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max", "conv_avg"), acts=("relu",), bias=False) |
       networks(kinds=("dense", "conv_avg"), acts=("tanh",), bias=False))
def test_prop3_deeplift_zero_baseline_equals_epsilon_lrp_without_biases(rp, net):
    """Prop. 3 ii: no biases and f(0) = 0 -> every reference activation is 0, g_DL = g_LRP = f(z)/z."""
    spec, x = net
    assume(ref.min_abs_preactivation(spec, x) > 1e-4 and _avgpool_ok(spec, x))
    D = _attr(rp, spec, x, "deeplift.rescale", baseline=0.0)
    R = _attr(rp, spec, x, "lrp.epsilon", epsilon=1e-12)
    assert np.abs(R - D).max() <= _tol(spec) * (np.abs(D).max() + 1e-12)


# ---- batch independence -----------------------------------------------------------------------------

BATCH_METHODS = [
    ("gradient", {}), ("saliency", {}), ("gradient_x_input", {}),
    ("integrated_gradients", {"steps": 8}), ("deeplift.rescale", {"baseline": 0.1}),
    ("lrp.z", {}), ("lrp.epsilon", {}), ("lrp.gamma", {}), ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    ("lrp.z_plus", {"include_bias": False}), ("deep_taylor", {}), ("composite", {}),
]


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max", "conv_avg"), acts=("relu", "tanh"), min_n=2),
       method=st.sampled_from(BATCH_METHODS), per_sample_target=st.booleans())
def test_batch_equals_one_sample_at_a_time(rp, net, method, per_sample_target):
    spec, x = net
    name, params = method
    if name == "composite":
        name, params = "lrp", {"rules": rp.composites.EpsilonAlpha2Beta1Flat()}
    n_out = ref.scores(spec, x[:1]).shape[1]
    target = (np.arange(len(x)) % n_out) if per_sample_target else None
    R = _attr(rp, spec, x, name, target=target, **params)
    for i in range(len(x)):
        ti = None if target is None else int(target[i])
        Ri = _attr(rp, spec, x[i:i + 1], name, target=ti, **params)
        scale = np.abs(R[i]).max() + 1e-300
        assert np.abs(Ri[0] - R[i]).max() <= 1e-10 * scale, (name, i)


# ---- float32 vs float64 -----------------------------------------------------------------------------

DTYPE_METHODS = BATCH_METHODS[:5] + [
    ("lrp.epsilon", {"epsilon": 1e-3}), ("lrp.gamma", {}), ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    ("lrp.z_plus", {}), ("deep_taylor", {}), ("composite", {}),
]


@SETTINGS
@given(net=networks(kinds=("dense", "conv_max", "conv_avg"), acts=("relu", "tanh", "sigmoid")),
       method=st.sampled_from(DTYPE_METHODS))
def test_float32_agrees_with_float64(rp, net, method):
    spec, x = net
    x = x.astype(np.float32).astype(np.float64)
    # weights are float32-representable; skip draws sitting on a ReLU kink / sign change
    assume(ref.min_abs_preactivation(spec, x, 0.1) > 1e-2)
    name, params = method
    if name == "deeplift.rescale":
        assume(ref.min_abs_delta_preactivation(spec, x, 0.1) > 1e-2)
    if name == "composite":
        name, params = "lrp", {"rules": rp.composites.EpsilonPlusFlat()}
    if name.startswith("lrp") or name == "deep_taylor":
        rules = {"lrp.epsilon": [ref.rule("epsilon", epsilon=1e-3)], "lrp.gamma": [ref.rule("gamma")],
                 "lrp.alpha_beta": [ref.rule("alpha_beta", alpha=2.0, beta=1.0)],
                 "lrp.z_plus": [ref.rule("z_plus")]}.get(name)
        if rules is not None:
            assume(ref.min_abs_denominator(spec, x, rules * _n_lin(spec)) > 1e-2)
    R64 = _attr(rp, spec, x, name, **params)
    R32 = _attr(rp, spec, x.astype(np.float32), name, **params)
    assert np.abs(R32 - R64).max() <= 1e-3 * (np.abs(R64).max() + 1e-6), name
