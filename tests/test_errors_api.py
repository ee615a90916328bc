"""Bad input raises ValueError/TypeError at the public boundary, with a message naming the problem.

Messages are matched on their key noun (case-insensitive), and where the contract promises "what was received
and what was expected", on the numbers involved.
"""
import re

import numpy as np
import pytest

import reference_numpy as ref


@pytest.fixture(scope="module")
def rp():
    import relprop
    return relprop


def _ci(pattern):
    return re.compile(pattern, re.IGNORECASE | re.DOTALL)


def _all(*words):
    """Regex that matches when every word occurs (any order)."""
    return _ci("".join(f"(?=.*{w})" for w in words))


@pytest.fixture
def dense_net(rp):
    rng = np.random.default_rng(0)
    return rp.Sequential(rp.Dense(rng.normal(size=(5, 4)), rng.normal(size=5)), rp.ReLU(),
                         rp.Dense(rng.normal(size=(3, 5)), rng.normal(size=3)), rp.Softmax())


@pytest.fixture
def conv_net(rp):
    rng = np.random.default_rng(1)
    spec, _ = ref.random_conv_net(rng, in_ch=2, size=6, channels=3, pool="max", n_out=4)
    return ref.to_relprop(spec, rp)


X = np.random.default_rng(2).normal(size=(2, 4))
XC = np.random.default_rng(3).normal(size=(2, 2, 6, 6))


# ---- x: rank, shape, dtype, finiteness ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [X[0], X[None], X[:, :3], np.zeros((2, 5))], ids=["1d", "3d", "too_few", "too_many"])
def test_dense_input_shape(rp, dense_net, bad):
    with pytest.raises(ValueError, match=_ci(r"shape")) as e:
        rp.attribute(dense_net, bad, "gradient")
    assert str(tuple(bad.shape)) in str(e.value) or "x" in str(e.value)


@pytest.mark.parametrize("bad", [XC[0], XC[:, :1], XC[:, :, :5, :5], XC.reshape(2, -1)],
                         ids=["no_batch", "channels", "spatial", "flat"])
def test_conv_input_shape(rp, conv_net, bad):
    with pytest.raises(ValueError, match=_ci(r"shape|channel")):
        rp.attribute(conv_net, bad, "lrp.epsilon")


def test_input_shape_message_says_what_was_received_and_expected(rp, dense_net):
    with pytest.raises(ValueError, match=_all(r"\b3\b", r"\b4\b")):
        rp.attribute(dense_net, X[:, :3], "gradient")


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
def test_non_float_dtype(rp, dense_net, dtype):
    with pytest.raises(TypeError, match=_ci(r"dtype|float")):
        rp.attribute(dense_net, (X * 3).astype(dtype), "gradient")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", ["gradient", "lrp.z", "integrated_gradients", "deeplift.rescale"])
def test_nonfinite_x(rp, dense_net, value, method):
    x = X.copy()
    x[1, 2] = value
    with pytest.raises(ValueError, match=_ci(r"nan|inf|finite")):
        rp.attribute(dense_net, x, method)


def test_nonfinite_x_float32(rp, conv_net):
    x = XC.astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=_ci(r"nan|finite")):
        rp.attribute(conv_net, x, "lrp.epsilon")


# ---- weights --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["dense_weight", "dense_bias", "conv_weight", "conv_bias"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_weights(rp, where, value):
    rng = np.random.default_rng(4)
    w, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    cw, cb = rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2)
    {"dense_weight": w, "dense_bias": b, "conv_weight": cw, "conv_bias": cb}[where].flat[1] = value
    with pytest.raises(ValueError, match=_ci(r"nan|inf|finite")):
        if where.startswith("dense"):
            net = rp.Sequential(rp.Dense(w, b))
            rp.attribute(net, X, "gradient")
        else:
            net = rp.Sequential(rp.Conv2d(cw, cb, padding=1), rp.ReLU(), rp.Flatten(), rp.Dense(np.ones((2, 2 * 16))))
            rp.attribute(net, np.ones((1, 1, 4, 4)), "gradient")


@pytest.mark.parametrize("shape", [(3, 3), (2, 1, 3), (2, 1, 3, 3, 1), (2,)])
def test_conv_weight_rank(rp, shape):
    with pytest.raises(ValueError, match=_ci(r"weight|rank|dim|shape")):
        net = rp.Sequential(rp.Conv2d(np.ones(shape)), rp.Flatten())
        rp.attribute(net, np.ones((1, 1, 5, 5)), "gradient")


@pytest.mark.parametrize("shape", [(3,), (3, 4, 1)])
def test_dense_weight_rank(rp, shape):
    with pytest.raises(ValueError, match=_ci(r"weight|rank|dim|shape")):
        net = rp.Sequential(rp.Dense(np.ones(shape)))
        rp.attribute(net, np.ones((1, 4)), "gradient")


def test_dense_bias_shape(rp):
    with pytest.raises(ValueError, match=_ci(r"bias")):
        net = rp.Sequential(rp.Dense(np.ones((3, 4)), np.ones(4)))
        rp.attribute(net, X, "gradient")


def test_conv_bias_shape(rp):
    with pytest.raises(ValueError, match=_ci(r"bias")):
        net = rp.Sequential(rp.Conv2d(np.ones((2, 1, 3, 3)), np.ones(3)), rp.Flatten())
        rp.attribute(net, np.ones((1, 1, 5, 5)), "gradient")


def test_dense_shape_mismatch_with_preceding_dense(rp):
    with pytest.raises(ValueError, match=_all(r"\b5\b", r"\b4\b")):
        net = rp.Sequential(rp.Dense(np.ones((4, 3))), rp.ReLU(), rp.Dense(np.ones((2, 5))))
        rp.attribute(net, np.ones((1, 3)), "gradient")


def test_dense_shape_mismatch_after_flatten(rp):
    # conv (2 ch, 4x4) -> flatten gives 32 features, the Dense expects 30
    with pytest.raises(ValueError, match=_ci(r"shape|feature|\b30\b|\b32\b")):
        net = rp.Sequential(rp.Conv2d(np.ones((2, 1, 3, 3)), padding=1), rp.ReLU(), rp.Flatten(),
                            rp.Dense(np.ones((3, 30))))
        rp.attribute(net, np.ones((1, 1, 4, 4)), "gradient")


def test_conv_channel_mismatch_between_layers(rp):
    with pytest.raises(ValueError, match=_ci(r"channel|shape|\b3\b")):
        net = rp.Sequential(rp.Conv2d(np.ones((3, 1, 3, 3))), rp.ReLU(), rp.Conv2d(np.ones((2, 2, 1, 1))),
                            rp.Flatten())
        rp.attribute(net, np.ones((1, 1, 5, 5)), "gradient")


def test_softmax_not_last(rp):
    with pytest.raises(ValueError, match=_ci(r"softmax")):
        net = rp.Sequential(rp.Dense(np.ones((3, 4))), rp.Softmax(), rp.Dense(np.ones((2, 3))))
        rp.attribute(net, X, "gradient")


# ---- target -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [3, 99, -1])
def test_target_int_out_of_range(rp, dense_net, target):
    with pytest.raises(ValueError, match=_ci(r"target")):
        rp.attribute(dense_net, X, "gradient", target=target)


def test_target_out_of_range_names_the_number_of_classes(rp, dense_net):
    with pytest.raises(ValueError, match=_all("target", r"\b3\b")):
        rp.attribute(dense_net, X, "lrp.epsilon", target=3)


@pytest.mark.parametrize("target", [np.array([0, 3]), np.array([-1, 0]), np.array([7, 7])])
def test_target_array_out_of_range(rp, dense_net, target):
    with pytest.raises(ValueError, match=_ci(r"target")):
        rp.attribute(dense_net, X, "lrp.z", target=target)


@pytest.mark.parametrize("target", [np.array([0, 1, 2]), np.array([0]), np.array([[0], [1]])],
                         ids=["too_long", "too_short", "2d"])
def test_target_array_wrong_shape(rp, dense_net, target):
    with pytest.raises((ValueError, TypeError), match=_ci(r"target")):
        rp.attribute(dense_net, X, "gradient", target=target)


@pytest.mark.parametrize("target", [np.array([0.0, 1.0]), 1.5, "cat"], ids=["float_array", "float", "str"])
def test_target_wrong_type(rp, dense_net, target):
    with pytest.raises((TypeError, ValueError), match=_ci(r"target")):
        rp.attribute(dense_net, X, "gradient", target=target)


# ---- method and parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lrp.zz", "deeplift", "smooth_grad", "LRP.EPSILON", ""])
def test_unknown_method(rp, dense_net, method):
    with pytest.raises(ValueError, match=_ci(r"method|unknown")):
        rp.attribute(dense_net, X, method)


def test_unknown_method_message_names_it(rp, dense_net):
    with pytest.raises(ValueError, match=re.escape("lrp.zz")):
        rp.attribute(dense_net, X, "lrp.zz")


@pytest.mark.parametrize("method,params,bad", [
    ("lrp.epsilon", {"epsilom": 1e-3}, "epsilom"),
    ("lrp.gamma", {"gama": 0.1}, "gama"),
    ("integrated_gradients", {"step": 10}, "step"),
    ("integrated_gradients", {"baselines": 0.0}, "baselines"),
    ("deeplift.rescale", {"steps": 5}, "steps"),
    ("gradient", {"epsilon": 1e-3}, "epsilon"),
    ("lrp.z", {"epsilon": 1e-3}, "epsilon"),
    ("deep_taylor", {"gamma": 0.5}, "gamma"),
    ("lrp.alpha_beta", {"include_bais": False}, "include_bais"),
])
def test_unknown_parameter(rp, dense_net, method, params, bad):
    with pytest.raises(TypeError, match=re.escape(bad)):
        rp.attribute(dense_net, X, method, **params)


@pytest.mark.parametrize("cls,kwargs", [("Epsilon", {"epsilom": 1e-3}), ("Gamma", {"gama": 1.0}),
                                        ("Flat", {"include_bias": False}), ("ZBox", {"low": 0, "hihg": 1})])
def test_rule_unknown_parameter(rp, cls, kwargs):
    with pytest.raises(TypeError):
        getattr(rp.rules, cls)(**kwargs)


def test_composite_unknown_parameter(rp):
    with pytest.raises(TypeError):
        rp.composites.EpsilonPlus(epsilom=1e-3)


@pytest.mark.parametrize("n", [1, 3, 0])
def test_rule_list_wrong_length(rp, dense_net, n):
    with pytest.raises(ValueError, match=_ci(r"rule")):
        rp.attribute(dense_net, X, "lrp", rules=[rp.rules.Epsilon()] * n)


def test_rule_list_wrong_length_names_both_counts(rp, conv_net):
    with pytest.raises(ValueError, match=_all(r"\b3\b", r"\b2\b")):
        rp.attribute(conv_net, XC, "lrp", rules=[rp.rules.Epsilon()] * 3)


@pytest.mark.parametrize("rules", [["epsilon", "epsilon"], [None, None], "EpsilonPlus", 1.0])
def test_rules_of_wrong_type(rp, dense_net, rules):
    with pytest.raises((TypeError, ValueError), match=_ci(r"rule")):
        rp.attribute(dense_net, X, "lrp", rules=rules)


def test_lrp_without_rules(rp, dense_net):
    with pytest.raises((TypeError, ValueError), match=_ci(r"rules")):
        rp.attribute(dense_net, X, "lrp")


# ---- bounds: ZBox / EpsilonGammaBox / deep_taylor ----------------------------------------------------


@pytest.mark.parametrize("low,high", [(0.0, 10.0), (-10.0, 0.0), (-0.1, 0.1)])
def test_zbox_bounds_must_contain_x(rp, conv_net, low, high):
    rules = [rp.rules.ZBox(low, high), rp.rules.Epsilon()]
    with pytest.raises(ValueError, match=_ci(r"low|high|bound|contain")):
        rp.attribute(conv_net, XC, "lrp", rules=rules)


def test_zbox_per_channel_bounds_must_contain_x(rp, conv_net):
    low = XC.min(axis=(0, 2, 3), keepdims=True) - 0.1
    high = XC.max(axis=(0, 2, 3), keepdims=True) + 0.1
    rp.attribute(conv_net, XC, "lrp", rules=[rp.rules.ZBox(low, high), rp.rules.Epsilon()])   # fine
    high2 = high.copy()
    high2[0, 1] = XC[:, 1].max() - 0.05   # channel 1's upper bound cuts into x
    with pytest.raises(ValueError, match=_ci(r"low|high|bound|contain")):
        rp.attribute(conv_net, XC, "lrp", rules=[rp.rules.ZBox(low, high2), rp.rules.Epsilon()])


def test_zbox_bounds_wrong_shape(rp, conv_net):
    with pytest.raises(ValueError, match=_ci(r"low|high|shape|broadcast")):
        rp.attribute(conv_net, XC, "lrp", rules=[rp.rules.ZBox(np.full((1, 5, 1, 1), -9.0), 9.0),
                                                 rp.rules.Epsilon()])


def test_epsilon_gamma_box_bounds_must_contain_x(rp, conv_net):
    with pytest.raises(ValueError, match=_ci(r"low|high|bound|contain")):
        rp.attribute(conv_net, XC, "lrp", rules=rp.composites.EpsilonGammaBox(low=0.0, high=1.0))


@pytest.mark.parametrize("low,high", [(0.0, 10.0), (-10.0, -5.0)])
def test_deep_taylor_bounds_must_contain_x(rp, conv_net, low, high):
    with pytest.raises(ValueError, match=_ci(r"low|high|bound|contain")):
        rp.attribute(conv_net, XC, "deep_taylor", low=low, high=high)


def test_deep_taylor_needs_both_bounds(rp, conv_net):
    with pytest.raises((ValueError, TypeError), match=_ci(r"low|high|bound")):
        rp.attribute(conv_net, XC, "deep_taylor", low=-10.0)


# ---- integrated gradients / DeepLIFT parameters --------------------------------------------------------


@pytest.mark.parametrize("scheme", ["simpson", "gausslegendre", "riemann", "Uniform", ""])
def test_invalid_ig_scheme(rp, dense_net, scheme):
    with pytest.raises(ValueError, match=_ci(r"scheme")):
        rp.attribute(dense_net, X, "integrated_gradients", scheme=scheme)


@pytest.mark.parametrize("steps", [0, -1, -50])
@pytest.mark.parametrize("scheme", ["gauss_legendre", "riemann_left", "uniform"])
def test_ig_steps_below_one(rp, dense_net, steps, scheme):
    with pytest.raises(ValueError, match=_ci(r"steps")):
        rp.attribute(dense_net, X, "integrated_gradients", steps=steps, scheme=scheme)


@pytest.mark.parametrize("steps", [2.5, "10", None])
def test_ig_steps_not_an_integer(rp, dense_net, steps):
    with pytest.raises((TypeError, ValueError), match=_ci(r"steps")):
        rp.attribute(dense_net, X, "integrated_gradients", steps=steps)


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift.rescale"])
def test_baseline_shape(rp, dense_net, method):
    with pytest.raises(ValueError, match=_ci(r"baseline")):
        rp.attribute(dense_net, X, method, baseline=np.zeros((2, 3)))


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift.rescale"])
def test_baseline_nonfinite(rp, dense_net, method):
    b = np.zeros_like(X)
    b[0, 0] = np.nan
    with pytest.raises(ValueError, match=_ci(r"baseline")):
        rp.attribute(dense_net, X, method, baseline=b)


# ---- the model argument ----------------------------------------------------------------------------------


@pytest.mark.parametrize("net", [None, "model", lambda x: x])
def test_not_a_model(rp, net):
    with pytest.raises(TypeError):
        rp.attribute(net, X, "gradient")


def test_valid_calls_do_not_raise(rp, dense_net, conv_net):
    """The boundary checks accept what the contract allows (guards against over-eager validation)."""
    rp.attribute(dense_net, X, "gradient", target=np.int64(2))
    rp.attribute(dense_net, X, "gradient", target=np.array([0, 2], dtype=np.int32))
    rp.attribute(dense_net, X.astype(np.float32), "integrated_gradients", baseline=np.zeros(4), steps=1)
    rp.attribute(conv_net, XC, "deeplift.rescale", baseline=np.zeros((1, 2, 1, 1)))
    rp.attribute(conv_net, XC, "lrp", rules=rp.composites.EpsilonGammaBox(low=XC.min() - 1, high=XC.max() + 1))
    rp.attribute(conv_net, XC, "deep_taylor", low=XC.min(), high=XC.max())   # bounds touching x are fine


@pytest.mark.parametrize("alpha,beta", [(2.0, 0.5), (1.0, 1.0), (3.0, 1.0), (0.5, -0.5)])
@pytest.mark.parametrize("api", ["method", "rule"])
def test_alpha_minus_beta_must_be_one(rp, dense_net, alpha, beta, api):
    """Issue 3: general alpha-beta is checked for alpha - beta = 1 (conservation) before any kernel."""
    match = "alpha - beta must equal 1" if beta >= 0 else "beta must be a finite number >= 0"
    with pytest.raises(ValueError, match=match):
        if api == "method":
            rp.attribute(dense_net, X, "lrp.alpha_beta", alpha=alpha, beta=beta)
        else:
            rp.attribute(dense_net, X, "lrp", rules=[rp.rules.AlphaBeta(alpha, beta)] * len(dense_net.linear_nodes()))
