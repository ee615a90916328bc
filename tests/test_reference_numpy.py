"""Every method and rule of the API contract against the independent numpy reference (``reference_numpy``).

A test matrix: networks (Dense with ReLU/Tanh/Sigmoid, Conv2d with max/avg pooling, strides, padding,
overlapping and padded pools, rectangular kernels) x methods (gradient family, IG schemes, DeepLIFT, every LRP
rule, rule lists, composites, deep_taylor) x targets (None, int, per-sample array) x dtype.
float64: |R - R_ref| <= 1e-9 max|R_ref|;  float32: <= 1e-4 max|R_ref| (reference run in float64 on the
float32-rounded input; weights are float32-representable).  The first tests check the reference itself
(conv against a sliding-window einsum, gradient against finite differences).
"""
import zlib

import numpy as np
import pytest

import reference_numpy as ref

RTOL64 = 1e-9
RTOL32 = 1e-4


@pytest.fixture(scope="module")
def rp():
    import relprop
    return relprop


# --------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------


def _dense(act, bias=True):
    def build(rng):
        return ref.random_dense_net(rng, [6, 7, 5, 4], act=act, bias=bias, softmax_last=True), (6,)
    return build


def _conv(**kw):
    def build(rng):
        return ref.random_conv_net(rng, **kw)
    return build


def _rect(rng):
    """Rectangular kernel, pair stride/padding, second conv without padding, no pooling."""
    w1 = ref._f32(rng.normal(0, 0.5, (3, 2, 3, 2)))
    b1 = ref._f32(rng.normal(0, 0.2, 3))
    w2 = ref._f32(rng.normal(0, 0.4, (2, 3, 2, 2)))
    spec = [ref.conv(w1, b1, stride=(1, 2), padding=(1, 0)), ref.relu(),
            ref.conv(w2, None, stride=1, padding=0), ref.tanh(), ref.flatten()]
    # input 2x5x6 -> conv1: (5+2-3)/1+1 = 5, (6-2)/2+1 = 3 -> conv2: 4 x 2
    n_in = 2 * 4 * 2
    spec.append(ref.dense(ref._f32(rng.normal(0, 1 / np.sqrt(n_in), (3, n_in))), ref._f32(rng.normal(0, .2, 3))))
    return spec, (2, 5, 6)


def _dense_mixed(rng):
    """Tanh, Identity, Sigmoid and a final activation before the score (the score is the Tanh output)."""
    f = ref._f32
    spec = [ref.dense(f(rng.normal(0, .6, (6, 5))), f(rng.normal(0, .3, 6))), ref.tanh(),
            ref.dense(f(rng.normal(0, .5, (5, 6))), None), ref.identity(),
            ref.dense(f(rng.normal(0, .5, (4, 5))), f(rng.normal(0, .3, 4))), ref.sigmoid(),
            ref.dense(f(rng.normal(0, 1., (3, 4))), f(rng.normal(0, .3, 3))), ref.tanh()]
    return spec, (5,)


def _conv_deep(rng):
    """Pooling straight after a convolution (negative inputs to the pools), two pools, Dense-Tanh-Dense head."""
    f = ref._f32
    spec = [ref.conv(f(rng.normal(0, .4, (3, 2, 3, 3))), f(rng.normal(0, .2, 3)), stride=1, padding=1),
            ref.maxpool(2), ref.relu(),
            ref.conv(f(rng.normal(0, .4, (4, 3, 2, 2))), f(rng.normal(0, .2, 4)), stride=1, padding=1),
            ref.avgpool(2, 1), ref.sigmoid(), ref.flatten()]
    # 2x8x8 -> conv 3x8x8 -> pool 3x4x4 -> conv(k2,p1) 4x5x5 -> avgpool(2, stride 1) 4x4x4
    spec += [ref.dense(f(rng.normal(0, .15, (6, 64))), f(rng.normal(0, .2, 6))), ref.tanh(),
             ref.dense(f(rng.normal(0, .5, (4, 6))), f(rng.normal(0, .2, 4))), ref.softmax()]
    return spec, (2, 8, 8)


NETS = {
    "dense_relu": _dense("relu"),
    "dense_tanh": _dense("tanh"),
    "dense_sigmoid": _dense("sigmoid"),
    "dense_relu_nobias": _dense("relu", bias=False),
    "conv_max": _conv(pool="max"),
    "conv_avg": _conv(pool="avg", softmax_last=True),
    "conv2_max_stride2": _conv(pool="max", second_conv=True, stride=2, size=8),
    "conv_max_overlap_pad": _conv(pool="max", size=7, pool_kernel=3, pool_stride=2, pool_padding=1),
    "conv_avg_overlap_pad": _conv(pool="avg", size=7, pool_kernel=3, pool_stride=2, pool_padding=1),
    "conv_tanh_avg_nobias": _conv(pool="avg", act="tanh", bias=False),
    "conv_rect": _rect,
    "dense_mixed": _dense_mixed,
    "conv_deep": _conv_deep,
}

# DeepLIFT's max-pool rule (Captum's unpool) is only defined for non-overlapping windows
OVERLAPPING_MAXPOOL = {"conv_max_overlap_pad"}


def _well_conditioned(spec, x, baseline):
    """No ReLU/Tanh/Sigmoid input or score within 1e-3 of 0 (float32 must agree on every kink and sign)."""
    return ref.min_abs_preactivation(spec, x, baseline) > 1e-3


_CASES = {}


def make_case(name):
    """(spec, x, baseline array) for a network, with a well-conditioned seed (deterministic)."""
    if name in _CASES:
        return _CASES[name]
    for seed in range(200):
        rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
        spec, shape = NETS[name](rng)
        x = ref._f32(rng.normal(0, 1, (3,) + shape))
        base = ref._f32(rng.normal(0, 0.3, (3,) + shape))
        if _well_conditioned(spec, x, base):
            break
    _CASES[name] = (spec, x, base)
    return _CASES[name]


# --------------------------------------------------------------------------------------------------
# methods: each entry builds (method, params, reference function) for a network
# --------------------------------------------------------------------------------------------------


def rp_rule(rp, r):
    """relprop rule object for a reference rule tuple."""
    name, p = r
    cls = {"z": "Z", "epsilon": "Epsilon", "gamma": "Gamma", "alpha_beta": "AlphaBeta", "z_plus": "ZPlus",
           "flat": "Flat", "w_square": "WSquare", "z_box": "ZBox"}[name]
    return getattr(rp.rules, cls)(**p)


def _bounds(x):
    """ZBox bounds: per-channel (1, C, 1, 1) for images, per-feature (1, F) for vectors, containing x."""
    axes = (0,) + tuple(range(2, x.ndim))
    low = x.min(axis=axes, keepdims=True) - 0.5
    high = x.max(axis=axes, keepdims=True) + 0.25
    return ref._f32(low), ref._f32(high)


def _simple(method, **params):
    def build(rp, spec, x, base):
        fn = {"gradient": ref.gradient, "saliency": ref.saliency, "gradient_x_input": ref.gradient_x_input}[method]
        return method, params, lambda xx, t: fn(spec, xx, t)
    return build


def _ig(scheme, steps, baseline="zero"):
    def build(rp, spec, x, base):
        b = {"zero": 0.0, "scalar": 0.25, "array": base}[baseline]
        params = {"scheme": scheme, "steps": steps}
        if baseline != "zero":
            params["baseline"] = b
        return ("integrated_gradients", params,
                lambda xx, t: ref.integrated_gradients(spec, xx, t, baseline=b, steps=steps, scheme=scheme))
    return build


def _ig_default():
    def build(rp, spec, x, base):
        return ("integrated_gradients", {},
                lambda xx, t: ref.integrated_gradients(spec, xx, t, baseline=0.0, steps=50, scheme="gauss_legendre"))
    return build


def _deeplift(baseline):
    def build(rp, spec, x, base):
        b = {"zero": 0.0, "array": base, "first": base[:1]}[baseline]
        params = {} if baseline == "zero" else {"baseline": b}
        return "deeplift.rescale", params, lambda xx, t: ref.deeplift_rescale(spec, xx, t, baseline=b)
    return build


def _lrp_method(name, **params):
    def build(rp, spec, x, base):
        n = len(ref.linear_layer_kinds(spec))
        rules = [ref.rule(name, **params)] * n
        return "lrp." + name, params, lambda xx, t: ref.lrp(spec, xx, rules, target=t)
    return build


def _rule_list(kind):
    def build(rp, spec, x, base):
        n = len(ref.linear_layer_kinds(spec))
        low, high = _bounds(x)
        cycle = [ref.rule("z"), ref.rule("epsilon", epsilon=1e-3, include_bias=False), ref.rule("gamma", gamma=0.5),
                 ref.rule("alpha_beta", alpha=2.0, beta=1.0, include_bias=False), ref.rule("z_plus"),
                 ref.rule("w_square", include_bias=False), ref.rule("flat", epsilon=1e-4)]
        first = {"flat": ref.rule("flat"), "w_square": ref.rule("w_square"),
                 "w_square_nb": ref.rule("w_square", include_bias=False),
                 "z_box": ref.rule("z_box", low=low, high=high),
                 "z_box_scalar": ref.rule("z_box", low=-5.0, high=5.0, epsilon=1e-4)}
        if kind == "cycle":
            rules = [cycle[k % len(cycle)] for k in range(n)]
        elif kind == "cycle_shifted":
            rules = [cycle[(k + 3) % len(cycle)] for k in range(n)]
        else:
            rest = {"flat": ref.rule("epsilon"), "w_square": ref.rule("gamma"),
                    "w_square_nb": ref.rule("alpha_beta", alpha=2.0, beta=1.0),
                    "z_box": ref.rule("z_plus", include_bias=False),
                    "z_box_scalar": ref.rule("gamma", gamma=0.1, include_bias=False)}[kind]
            rules = [first[kind]] + [rest] * (n - 1)
        rp_rules = [rp_rule(rp, r) for r in rules]
        return "lrp", {"rules": rp_rules}, lambda xx, t: ref.lrp(spec, xx, rules, target=t)
    return build


def _composite(name, **params):
    def build(rp, spec, x, base):
        kw = dict(params)
        if name == "EpsilonGammaBox":
            kw["low"], kw["high"] = _bounds(x)
        rules = ref.composite_rules(spec, name, **kw)
        comp = getattr(rp.composites, name)(**kw)
        pool_eps = kw.get("stabilizer", 1e-6)
        return "lrp", {"rules": comp}, lambda xx, t: ref.lrp(spec, xx, rules, target=t, pool_eps=pool_eps)
    return build


def _deep_taylor(bounds, **params):
    def build(rp, spec, x, base):
        kw = dict(params)
        if bounds:
            kw["low"], kw["high"] = _bounds(x)
        rules = ref.deep_taylor_rules(spec, **kw)
        return "deep_taylor", kw, lambda xx, t: ref.lrp(spec, xx, rules, target=t)
    return build


METHODS = {
    "gradient": _simple("gradient"),
    "saliency": _simple("saliency"),
    "gradient_x_input": _simple("gradient_x_input"),
    "ig_default": _ig_default(),
    "ig_left": _ig("riemann_left", 5),
    "ig_right": _ig("riemann_right", 5, "array"),
    "ig_middle": _ig("riemann_middle", 4, "scalar"),
    "ig_trapezoid": _ig("riemann_trapezoid", 6, "array"),
    "ig_gauss": _ig("gauss_legendre", 7, "array"),
    "ig_uniform": _ig("uniform", 4),
    "deeplift_zero": _deeplift("zero"),
    "deeplift_array": _deeplift("array"),
    "deeplift_first": _deeplift("first"),
    "lrp.z": _lrp_method("z"),
    "lrp.z_nobias": _lrp_method("z", include_bias=False),
    "lrp.epsilon": _lrp_method("epsilon"),
    "lrp.epsilon_big_nobias": _lrp_method("epsilon", epsilon=0.1, include_bias=False),
    "lrp.gamma": _lrp_method("gamma"),
    "lrp.gamma_nobias": _lrp_method("gamma", gamma=1.0, include_bias=False),
    "lrp.alpha_beta": _lrp_method("alpha_beta"),
    "lrp.alpha2_beta1": _lrp_method("alpha_beta", alpha=2.0, beta=1.0),
    "lrp.alpha2_beta1_nobias": _lrp_method("alpha_beta", alpha=2.0, beta=1.0, include_bias=False),
    "lrp.z_plus": _lrp_method("z_plus"),
    "lrp.z_plus_nobias": _lrp_method("z_plus", epsilon=1e-3, include_bias=False),
    "rules_cycle": _rule_list("cycle"),
    "rules_cycle_shifted": _rule_list("cycle_shifted"),
    "rules_flat_first": _rule_list("flat"),
    "rules_wsquare_first": _rule_list("w_square"),
    "rules_wsquare_nb_first": _rule_list("w_square_nb"),
    "rules_zbox_first": _rule_list("z_box"),
    "rules_zbox_scalar_first": _rule_list("z_box_scalar"),
    "EpsilonPlus": _composite("EpsilonPlus"),
    "EpsilonPlusFlat": _composite("EpsilonPlusFlat"),
    "EpsilonGammaBox": _composite("EpsilonGammaBox"),
    "EpsilonGammaBox_params": _composite("EpsilonGammaBox", epsilon=1e-3, gamma=0.1, stabilizer=1e-4),
    "EpsilonAlpha2Beta1": _composite("EpsilonAlpha2Beta1"),
    "EpsilonAlpha2Beta1Flat": _composite("EpsilonAlpha2Beta1Flat"),
    "EpsilonPlus_params": _composite("EpsilonPlus", epsilon=1e-2, stabilizer=1e-3),
    "deep_taylor": _deep_taylor(False),
    "deep_taylor_box": _deep_taylor(True),
    "deep_taylor_eps": _deep_taylor(False, epsilon=1e-3),
}

TARGETS = ["none", "int", "array"]


def _target(kind, spec, x):
    n_out = ref.scores(spec, x[:1]).shape[1]
    if kind == "none":
        return None
    if kind == "int":
        return n_out - 1
    return np.arange(x.shape[0]) % n_out


def _compare(R, R_ref, rtol, what):
    scale = max(np.abs(R_ref).max(), 1e-30)
    err = np.abs(R.astype(np.float64) - R_ref).max()
    assert np.all(np.isfinite(R)), f"{what}: non-finite values"
    assert err <= rtol * scale, f"{what}: max|R - R_ref| = {err:.3e} > {rtol:.0e} * max|R_ref| = {rtol * scale:.3e}"


def _run(rp, net_name, method_name, target_kind, dtype):
    spec, x, base = make_case(net_name)
    method, params, ref_fn = METHODS[method_name](rp, spec, x, base)
    t = _target(target_kind, spec, x)
    net = ref.to_relprop(spec, rp)
    xx = x.astype(dtype)
    if dtype == np.float32:
        params = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in params.items()}
    x_before = xx.copy()
    R = rp.attribute(net, xx, method, target=t, **params)
    np.testing.assert_array_equal(xx, x_before, err_msg="attribute modified its input x")
    assert isinstance(R, np.ndarray)
    assert R.shape == x.shape, f"shape {R.shape} != {x.shape}"
    assert R.dtype == dtype, f"dtype {R.dtype} != {dtype}"
    R_ref = ref_fn(xx.astype(np.float64), t)
    _compare(R, R_ref, RTOL64 if dtype == np.float64 else RTOL32, f"{net_name}/{method_name}/{target_kind}")


# DeepLIFT's max-pool rule (Captum's) is not defined for overlapping windows: those pairs are
# left out of the matrix rather than skipped.
CASES = [(n, m) for n in NETS for m in METHODS if not (m.startswith("deeplift") and n in OVERLAPPING_MAXPOOL)]


@pytest.mark.parametrize("target_kind", TARGETS)
@pytest.mark.parametrize("net_name,method_name", CASES)
def test_float64_matches_reference(rp, net_name, method_name, target_kind):
    _run(rp, net_name, method_name, target_kind, np.float64)


@pytest.mark.parametrize("net_name,method_name", CASES)
def test_float32_matches_reference(rp, net_name, method_name):
    _run(rp, net_name, method_name, "array", np.float32)


@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forward_matches_reference(rp, net_name, dtype):
    spec, x, _ = make_case(net_name)
    y = ref.to_relprop(spec, rp)(x.astype(dtype))
    y_ref = ref.forward(spec, x)
    assert y.shape == y_ref.shape and y.dtype == dtype
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=tol * max(1.0, np.abs(y_ref).max()))


@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon", "lrp.z", "lrp.z_plus", "deeplift.rescale"])
def test_maxpool_ties_first_max_wins(rp, method):
    """Equal values in a window: the first (row-major) element wins, for the gradient and for relevance."""
    w = np.array([[1.0, -2.0, 0.5, 3.0], [0.25, 1.5, -1.0, 2.0]])
    spec = [ref.maxpool(2), ref.flatten(), ref.dense(w, None)]
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, :2, :2] = 1.5          # tie in window (0, 0)
    x[0, 0, :2, 2:] = [[-1.0, 2.0], [2.0, 2.0]]     # tie in window (0, 1)
    x[0, 0, 2:, :2] = [[0.5, 0.25], [0.5, 0.5]]     # tie in window (1, 0)
    x[0, 0, 2:, 2:] = [[-3.0, -1.0], [-2.0, -1.0]]  # tie in window (1, 1)
    winners = [(0, 0), (0, 3), (2, 0), (2, 3)]
    params = {"baseline": -5.0} if method == "deeplift.rescale" else {}
    w_copy = w.copy()
    R = rp.attribute(ref.to_relprop(spec, rp), x, method, target=0, **params)
    np.testing.assert_array_equal(w, w_copy, err_msg="the library modified a weight array")
    nz = set(zip(*np.nonzero(R[0, 0])))
    assert nz <= set(winners), f"relevance on non-winners: {sorted(nz - set(winners))}"
    if method == "gradient":
        np.testing.assert_array_equal([R[0, 0][p] for p in winners], w[0])
    if method == "deeplift.rescale":
        R_ref = ref.deeplift_rescale(spec, x, 0, baseline=-5.0)
    elif method == "gradient":
        R_ref = ref.gradient(spec, x, 0)
    else:
        R_ref = ref.lrp(spec, x, [ref.rule(method.split(".")[1])], target=0)
    _compare(R, R_ref, RTOL64, method)


@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon", "lrp.gamma", "lrp.alpha_beta", "lrp.z_plus", "deep_taylor"])
def test_zero_input_gives_zero_relevance_not_nan(rp, method):
    """All denominators 0 (bias-free net, x = 0): LRP-0 takes 0/0 as 0, the others are stabilized."""
    rng = np.random.default_rng(11)
    spec, shape = ref.random_conv_net(rng, bias=False, pool="avg")
    x = np.zeros((2,) + shape)
    x[1] = rng.normal(size=shape)
    R = rp.attribute(ref.to_relprop(spec, rp), x, method)
    assert np.all(np.isfinite(R))
    np.testing.assert_array_equal(R[0], 0.0)


# --------------------------------------------------------------------------------------------------
# checks of the reference itself (no library needed)
# --------------------------------------------------------------------------------------------------


def _conv_einsum(x, w, b, stride, padding):
    """Sliding-window convolution written differently from reference_numpy.conv_matrix."""
    sh, sw = ref._pair(stride)
    ph, pw = ref._pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    O, C, KH, KW = w.shape
    Ho = (xp.shape[2] - KH) // sh + 1
    Wo = (xp.shape[3] - KW) // sw + 1
    out = np.zeros((x.shape[0], O, Ho, Wo))
    for y in range(Ho):
        for z in range(Wo):
            patch = xp[:, :, y * sh:y * sh + KH, z * sw:z * sw + KW]
            out[:, :, y, z] = np.einsum("nckl,ockl->no", patch, w)
    return out + (0 if b is None else b[None, :, None, None])


@pytest.mark.parametrize("stride,padding,k", [(1, 0, (3, 3)), (2, 1, (3, 3)), ((1, 2), (1, 0), (3, 2)), (3, 2, (2, 4))])
def test_reference_conv_matrix_matches_sliding_window(stride, padding, k):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2, 7, 6))
    w = rng.normal(size=(3, 2) + k)
    b = rng.normal(size=3)
    got = ref.scores([ref.conv(w, b, stride, padding), ref.flatten()], x)
    np.testing.assert_allclose(got, _conv_einsum(x, w, b, stride, padding).reshape(2, -1), rtol=1e-12, atol=1e-12)


def test_reference_pools_match_direct_computation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 2, 5, 5))
    # 3x3 windows, stride 2, padding 1: max pads with -inf, avg counts the padding (divides by 9)
    xp_max = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    xp_avg = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    mx = np.array([[[[xp_max[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(3)] for i in range(3)]
                    for c in range(2)] for n in range(2)])
    av = np.array([[[[xp_avg[n, c, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum() / 9 for j in range(3)] for i in range(3)]
                    for c in range(2)] for n in range(2)])
    np.testing.assert_allclose(ref.scores([ref.maxpool(3, 2, 1), ref.flatten()], x), mx.reshape(2, -1), rtol=1e-14)
    np.testing.assert_allclose(ref.scores([ref.avgpool(3, 2, 1), ref.flatten()], x), av.reshape(2, -1), rtol=1e-14)


@pytest.mark.parametrize("net_name", list(NETS))
def test_reference_gradient_matches_finite_differences(net_name):
    spec, x, _ = make_case(net_name)
    t = np.arange(x.shape[0]) % ref.scores(spec, x).shape[1]
    g = ref.gradient(spec, x, t)
    h = 1e-6
    fd = np.zeros_like(x)
    flat = x.reshape(x.shape[0], -1)
    for i in range(flat.shape[1]):
        e = np.zeros_like(flat)
        e[:, i] = h
        sp = ref.scores(spec, (flat + e).reshape(x.shape))[np.arange(x.shape[0]), t]
        sm = ref.scores(spec, (flat - e).reshape(x.shape))[np.arange(x.shape[0]), t]
        fd.reshape(x.shape[0], -1)[:, i] = (sp - sm) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=0, atol=1e-6 * max(1.0, np.abs(g).max()))


@pytest.mark.parametrize("net_name", ["dense_relu", "conv_max", "conv_avg", "conv2_max_stride2"])
def test_reference_lrp_epsilon_is_gradient_x_input_on_relu_nets(net_name):
    """Self-consistency of two independently coded reference paths (Ancona et al. 2018, Prop. 3 i)."""
    spec, x, _ = make_case(net_name)
    R = ref.lrp(spec, x, [ref.rule("z")] * len(ref.linear_layer_kinds(spec)))
    G = ref.gradient_x_input(spec, x)
    np.testing.assert_allclose(R, G, rtol=0, atol=1e-5 * np.abs(G).max())   # AvgPool's fixed 1e-6 stabilizer
