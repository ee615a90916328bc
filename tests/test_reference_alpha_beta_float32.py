"""float32 LRP denominators against the float64 numpy reference where a shortcut would cancel.

A rule's denominators may be formed from the layer's stored ``z = W a + b`` and one GEMM
``W+ a`` (``Rule.z_form``). That is exact enough only when nothing large cancels: alpha-beta's
negative part ``W- a`` is not ``(z - b) - W+ a`` when ``|W- a| ~ 1e-4`` and ``|W+ a| ~ 30``
(float32 keeps ~1e-6 of 30), and a bias-free denominator ``W a`` is not ``z - b`` when
``|b| >> |W a|``. Each case here runs float32 and compares with ``reference_numpy.lrp`` in
float64 (weights and inputs float32-representable) to 1e-5 x max|R|.
"""
import numpy as np
import pytest

import relprop as rp
import reference_numpy as ref

TOL = 1e-5


def _f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def _nearly_positive(rng, shape):
    """|N(0, 1)| weights, 30% of them replaced by tiny negatives (|w-| ~ 1e-5)."""
    w = np.abs(rng.normal(0, 1, shape))
    neg = rng.random(shape) < 0.3
    w[neg] = -rng.uniform(0.5e-5, 1.5e-5, neg.sum())
    return _f32(w)


def _dense_case(rng):
    """Dense 50 -> 20 on x in [0, 2]: |W- a| ~ 1e-4, |W+ a| ~ 30, positive bias."""
    spec = [ref.dense(_nearly_positive(rng, (20, 50)), _f32(rng.uniform(1, 5, 20)))]
    return spec, _f32(rng.uniform(0, 2, (6, 50)))


def _conv_case(rng):
    """Conv2d (same weights regime) -> ReLU -> Flatten -> Dense."""
    spec = [ref.conv(_nearly_positive(rng, (6, 3, 3, 3)), _f32(rng.uniform(1, 5, 6)), padding=1), ref.relu(),
            ref.flatten(), ref.dense(_f32(rng.normal(0, 0.1, (4, 6 * 5 * 5))), _f32(rng.normal(0, 0.1, 4)))]
    return spec, _f32(rng.uniform(0, 2, (6, 3, 5, 5)))


def _big_bias_case(rng, sign):
    """Dense 30 -> 12 with |b| ~ 1000 and |W a| ~ 0.4..8 (signed weights): a bias-free
    denominator W a is not z - b."""
    w = _f32(rng.normal(0.3, 0.5, (12, 30)))
    x = _f32(rng.uniform(0, 1, (6, 30)))
    assert np.abs(x @ w.T).min() > 0.2  # the draw keeps the exact denominators away from 0
    return [ref.dense(w, _f32(sign * rng.uniform(800, 1200, 12)))], x


def _check(spec, x, rp_rules, ref_rules):
    net = ref.to_relprop(spec, rp)
    t = np.arange(len(x)) % ref.scores(spec, x[:1]).shape[1]
    R64 = ref.lrp(spec, x, ref_rules, target=t)
    R32 = rp.attribute(net, x.astype(np.float32), "lrp", target=t, rules=rp_rules)
    assert R32.dtype == np.float32
    err = np.abs(R32 - R64).max() / np.abs(R64).max()
    assert err <= TOL, f"float32 error {err:.2e} x max|R|"


@pytest.mark.parametrize("include_bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("alpha,beta", [(2.0, 1.0), (1.5, 0.5), (1.0, 0.0)])
@pytest.mark.parametrize("case", ["dense", "conv"])
def test_alpha_beta_float32_with_small_negative_part(case, alpha, beta, include_bias):
    spec, x = (_dense_case if case == "dense" else _conv_case)(np.random.default_rng(11))
    n = len(ref.linear_layer_kinds(spec))
    _check(spec, x, [rp.rules.AlphaBeta(alpha, beta, include_bias=include_bias)] * n,
           [ref.rule("alpha_beta", alpha=alpha, beta=beta, include_bias=include_bias)] * n)


@pytest.mark.parametrize("case", ["dense", "conv"])
def test_epsilon_alpha2beta1_composite_float32(case):
    spec, x = (_dense_case if case == "dense" else _conv_case)(np.random.default_rng(12))
    rules = ref.composite_rules(spec, "EpsilonAlpha2Beta1")
    _check(spec, x, rp.composites.EpsilonAlpha2Beta1(), rules)


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["b_pos", "b_neg"])
@pytest.mark.parametrize("name,rp_rule,params", [
    ("gamma", rp.rules.Gamma(include_bias=False), {"include_bias": False}),
    ("gamma", rp.rules.Gamma(), {}),
    ("epsilon", rp.rules.Epsilon(include_bias=False), {"include_bias": False}),
    ("z", rp.rules.Z(include_bias=False), {"include_bias": False}),
    ("alpha_beta", rp.rules.AlphaBeta(2.0, 1.0, include_bias=False), {"alpha": 2.0, "beta": 1.0, "include_bias": False}),
    ("z_plus", rp.rules.ZPlus(include_bias=False), {"include_bias": False}),
], ids=["gamma_no_bias", "gamma", "epsilon_no_bias", "z_no_bias", "alpha2beta1_no_bias", "z_plus_no_bias"])
def test_bias_free_denominators_float32_with_large_bias(name, rp_rule, params, sign):
    spec, x = _big_bias_case(np.random.default_rng(13), sign)
    _check(spec, x, [rp_rule], [ref.rule(name, **params)])


@pytest.mark.parametrize("rule,zmode", [
    (rp.rules.ZPlus(), 2), (rp.rules.AlphaBeta(), 2), (rp.rules.Gamma(), 2), (rp.rules.ZPlus(include_bias=False), 2),
    (rp.rules.AlphaBeta(2.0, 1.0), 1), (rp.rules.Gamma(include_bias=False), 1),
    (rp.rules.Epsilon(), 0), (rp.rules.Z(), 0), (rp.rules.Epsilon(include_bias=False), 1),
])
def test_one_gemm_shortcut_only_where_exact(rule, zmode):
    """On a >= 0 the shortcuts (zmode 0: the layer's z; 2: z and W+ a) stay where they are exact."""
    from relprop.core.plan import rule_state

    rng = np.random.default_rng(5)
    net = rp.Sequential(rp.Dense(rng.normal(size=(8, 6)), rng.normal(size=8)))
    assert rule_state(net.linear_nodes()[0], rule, np.float32, True).zmode == zmode
