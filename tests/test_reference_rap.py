"""Relative Attributing Propagation (``"rap"``; Nam et al. 2020).

* agreement with the independent per-sample numpy reference (``reference_rap``, a statement-by-statement
  transcription of the authors' ``RAP_relprop`` code on explicit matrices) on small Dense, Conv2d/pool,
  BatchNorm and residual/concat networks, several targets, float64 (1e-9 max|R|) and float32 (1e-4 max|R|);
* conservation as the authors' code prints it (``main.py``: 'Pred logit' = 'Relevance Sum'): on ReLU networks the
  input relevance sums to the target's pre-softmax score; the output layer's absolute influence normalization
  gives every unit below it the sign of that score; a hidden layer with mixed-sign input doubles the total
  (the authors' code, documented in ``relprop.rap``);
* a hand-computed example; bad parameters and models refused before any kernel runs; the API contract
  (target=None, batches, dtypes, internal chunking, canonized BatchNorm).
"""
import itertools
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import reference_rap as ref
import relprop as rp

RTOL64, RTOL32 = 1e-9, 1e-4
f32 = ref.f32


# --------------------------------------------------------------------------------------------------
# networks (weights float32-representable; "input" shapes per sample)
# --------------------------------------------------------------------------------------------------


def _n(rng, *shape, scale=1.0):
    return f32(rng.normal(0, scale, shape))


def _dense_relu(rng):
    """Dense-BatchNorm(features)-ReLU-Dense-ReLU-Dense-Softmax."""
    return ref.chain(ref.dense(_n(rng, 6, 5, scale=.5), _n(rng, 6, scale=.3)),
                     ref.batchnorm(np.abs(_n(rng, 6)) + .5, _n(rng, 6, scale=.3), _n(rng, 6, scale=.2),
                                   np.abs(_n(rng, 6)) + .5), ref.relu(),
                     ref.dense(_n(rng, 7, 6, scale=.4), _n(rng, 7, scale=.3)), ref.relu(),
                     ref.dense(_n(rng, 4, 7, scale=.4), _n(rng, 4, scale=.3)), ref.softmax()), (5,)


def _dense_mixed(rng):
    """Dense-Dense without an activation between: the hidden layer sees both signs (both parts run)."""
    return ref.chain(ref.dense(_n(rng, 5, 4, scale=.5), _n(rng, 5, scale=.3)),
                     ref.dense(_n(rng, 6, 5, scale=.5), _n(rng, 6, scale=.3)), ref.relu(),
                     ref.dense(_n(rng, 3, 6, scale=.5), _n(rng, 3, scale=.3))), (4,)


def _conv_max(rng):
    """Conv(pad)-ReLU-MaxPool-Conv-ReLU-Flatten-Dense-ReLU-Dense: a hidden conv and a hidden dense layer."""
    return ref.chain(ref.conv(_n(rng, 3, 2, 3, 3, scale=.4), _n(rng, 3, scale=.2), 1, 1), ref.relu(),
                     ref.maxpool(2),
                     ref.conv(_n(rng, 4, 3, 3, 3, scale=.3), _n(rng, 4, scale=.2), 1, 1), ref.relu(), ref.flatten(),
                     ref.dense(_n(rng, 5, 36, scale=.2), _n(rng, 5, scale=.2)), ref.relu(),
                     ref.dense(_n(rng, 3, 5, scale=.5), _n(rng, 3, scale=.2))), (2, 6, 6)


def _conv_bn(rng):
    """Stride-2 conv, BatchNorm, overlapping padded average pooling, a 2x2 conv, a 1x1 conv reading a
    mixed-sign map, GlobalAvgPool."""
    return ref.chain(ref.conv(_n(rng, 3, 2, 3, 3, scale=.4), _n(rng, 3, scale=.2), 2, 1),
                     ref.batchnorm(np.abs(_n(rng, 3)) + .5, _n(rng, 3, scale=.3), _n(rng, 3, scale=.2),
                                   np.abs(_n(rng, 3)) + .5), ref.relu(),
                     ref.avgpool(3, 1, 1),
                     ref.conv(_n(rng, 4, 3, 2, 2, scale=.4), _n(rng, 4, scale=.2), 1, 0),
                     ref.conv(_n(rng, 4, 4, 1, 1, scale=.5), None, 1, 0), ref.relu(), ref.gap(), ref.flatten(),
                     ref.dense(_n(rng, 3, 4, scale=.6), _n(rng, 3, scale=.2))), (2, 8, 8)


def _residual(rng):
    """Conv-ReLU, a residual Conv-ReLU-Conv branch added to it, ReLU, Concat with the skip, MaxPool, Dense,
    Dropout after the scores' Dense layer."""
    spec = [("c1", ref.conv(_n(rng, 3, 2, 3, 3, scale=.4), _n(rng, 3, scale=.2), 1, 1), ("input",)),
            ("r1", ref.relu(), ("c1",)),
            ("c2", ref.conv(_n(rng, 3, 3, 3, 3, scale=.3), _n(rng, 3, scale=.2), 1, 1), ("r1",)),
            ("r2", ref.relu(), ("c2",)),
            ("c3", ref.conv(_n(rng, 3, 3, 3, 3, scale=.3), _n(rng, 3, scale=.2), 1, 1), ("r2",)),
            ("add", ref.add(), ("c3", "r1")), ("r3", ref.relu(), ("add",)),
            ("cat", ref.concat(), ("r3", "r1")), ("mp", ref.maxpool(2), ("cat",)), ("fl", ref.flatten(), ("mp",)),
            ("d", ref.dense(_n(rng, 4, 54, scale=.2), _n(rng, 4, scale=.2)), ("fl",)), ("drop", ref.dropout(), ("d",))]
    return spec, (2, 6, 6)


NETS = {"dense_relu": _dense_relu, "dense_mixed": _dense_mixed, "conv_max": _conv_max, "conv_bn": _conv_bn,
        "residual": _residual}
_CASES = {}


def make_case(name):
    """(spec, x (4, ...)) with a deterministic seed whose ReLU inputs and top-2 score gaps are not tiny
    (float32 must take every kink and argmax as float64 does)."""
    if name not in _CASES:
        for seed in range(100):
            rng = np.random.default_rng([zlib.crc32(name.encode()), seed])
            spec, shape = NETS[name](rng)
            x = f32(rng.normal(0, 1, (4,) + shape))
            if ref.min_abs_preactivation(spec, x) > 1e-3:
                break
        _CASES[name] = (spec, x)
    return _CASES[name]


def _close(R, R_ref, rtol):
    scale = np.abs(R_ref).max()
    assert scale > 0
    err = np.abs(R - R_ref).max()
    assert err <= rtol * scale, f"max |R - R_ref| = {err:.3g}, max |R_ref| = {scale:.3g}"


# --------------------------------------------------------------------------------------------------
# (1) agreement with the numpy reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(NETS))
def test_matches_reference(name, dtype):
    spec, x = make_case(name)
    net = ref.to_relprop(spec, rp)
    n_out = ref.scores(spec, x[:1]).shape[1]
    for target in (None, n_out - 1, np.arange(len(x)) % n_out):
        R_ref = ref.rap(spec, x, target)
        R = rp.attribute(net, x.astype(dtype), "rap", target=target)
        assert R.shape == x.shape and R.dtype == dtype
        _close(R, R_ref, RTOL64 if dtype == np.float64 else RTOL32)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference_with_bounds(dtype):
    """Fixed z^B bounds: scalars on a Dense input layer, per-channel arrays on a Conv2d input layer."""
    spec, x = make_case("dense_relu")
    R = rp.attribute(ref.to_relprop(spec, rp), x.astype(dtype), "rap", low=-4.0, high=4.0)
    _close(R, ref.rap(spec, x, low=np.full(x.shape[1:], -4.0), high=np.full(x.shape[1:], 4.0)),
           RTOL64 if dtype == np.float64 else RTOL32)
    spec, x = make_case("conv_max")
    low = np.array([-4.0, -5.0]).reshape(2, 1, 1)
    high = np.array([5.0, 4.5]).reshape(1, 2, 1, 1)
    R = rp.attribute(ref.to_relprop(spec, rp), x.astype(dtype), "rap", low=low, high=high)
    _close(R, ref.rap(spec, x, low=np.broadcast_to(low, x.shape[1:]), high=np.broadcast_to(high[0], x.shape[1:])),
           RTOL64 if dtype == np.float64 else RTOL32)


# --------------------------------------------------------------------------------------------------
# (2) conservation
# --------------------------------------------------------------------------------------------------

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def relu_networks(draw):
    """A random ReLU network (every hidden Dense/Conv2d reads ReLU outputs, as in the authors' VGG/ResNet) and a batch."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["dense", "conv"]))
    n_out = draw(st.integers(2, 5))
    if kind == "dense":
        sizes = [draw(st.integers(3, 6))] + draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
        layers = []
        for a, b in itertools.pairwise(sizes):
            layers += [ref.dense(_n(rng, b, a, scale=1 / np.sqrt(a)), _n(rng, b, scale=.3)), ref.relu()]
        layers.append(ref.dense(_n(rng, n_out, sizes[-1], scale=1 / np.sqrt(sizes[-1])), _n(rng, n_out, scale=.3)))
        shape = (sizes[0],)
    else:
        cin, size, ch = draw(st.integers(1, 3)), draw(st.integers(5, 8)), draw(st.integers(2, 4))
        stride = draw(st.sampled_from([1, 2]))
        layers = [ref.conv(_n(rng, ch, cin, 3, 3, scale=.5), _n(rng, ch, scale=.2), stride, 1)]
        if draw(st.booleans()):
            layers.append(ref.batchnorm(np.abs(_n(rng, ch)) + .2, _n(rng, ch, scale=.3), _n(rng, ch, scale=.2),
                                        np.abs(_n(rng, ch)) + .2))
        layers.append(ref.relu())
        h = (size + 2 - 3) // stride + 1
        pool = draw(st.sampled_from(["max", "avg", None]))
        if pool is not None and h >= 2:
            layers.append((ref.maxpool if pool == "max" else ref.avgpool)(2))
            h //= 2
        if h >= 2 and draw(st.booleans()):
            layers += [ref.conv(_n(rng, ch, ch, 3, 3, scale=.5), _n(rng, ch, scale=.2), 1, 1), ref.relu()]
        if draw(st.booleans()):
            layers += [ref.gap()]
            h = 1
        layers += [ref.flatten(), ref.dense(_n(rng, n_out, ch * h * h, scale=.5), _n(rng, n_out, scale=.3))]
        shape = (cin, size, size)
    if draw(st.booleans()):
        layers.append(ref.softmax())
    x = rng.normal(0, 1, (draw(st.integers(1, 3)),) + shape)
    return ref.chain(*layers), x, draw(st.integers(0, n_out - 1))


def _every_layer_sees_signal(spec, x):
    """No Dense/Conv2d input is all zero (e.g. a dead ReLU layer): there a zero denominator drops the relevance
    (the bias of the unit that receives it has no input to go to)."""
    for xi in x:
        vals = ref.forward(spec, xi)[0]
        if any(layer[0] in ("dense", "conv") and not np.any(vals[inputs[0]]) for _, layer, inputs in spec):
            return False
    return True


@SETTINGS
@given(case=relu_networks())
def test_input_relevance_sums_to_the_target_score(case):
    """sum_i R_i(x) = z_c(x): the output step gives z_c, the shifts and the z^B rule keep it. (At least three
    input features: with two, both can sit on the bounds min(x), max(x) and every z^B term vanish; at least two
    channels of 2x2 maps: in a tinier Conv2d layer every unit may lack an input to take its relevance, see
    relprop.rap.)"""
    spec, x, target = case
    assume(_every_layer_sees_signal(spec, x))
    R = rp.attribute(ref.to_relprop(spec, rp), x, "rap", target=target)
    z = ref.scores(spec, x)[:, target]
    total = R.reshape(len(x), -1).sum(axis=1)
    assert np.all(np.abs(total - z) <= 1e-9 * (np.abs(R).reshape(len(x), -1).sum(axis=1) + np.abs(z)) + 1e-12), \
        (total, z)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n_in=st.integers(1, 8), n_out=st.integers(2, 5))
def test_output_layer_normalization_gives_the_score_sign_to_every_unit(seed, n_in, n_out):
    """A single Dense layer on x >= 0 (as on ReLU outputs): R = |R'| z_c / sum|R'|, so R z_c >= 0 everywhere
    and sum R = z_c, the bias included."""
    rng = np.random.default_rng(seed)
    net = rp.Sequential(rp.Dense(rng.normal(0, 1, (n_out, n_in)), rng.normal(0, .5, n_out)))
    x = np.abs(rng.normal(0, 1, (3, n_in)))
    t = rng.integers(0, n_out, 3)
    R = rp.attribute(net, x, "rap", target=t)
    z = rp.forward(net, x)[np.arange(3), t]
    assert np.all(R * z[:, None] >= 0)
    np.testing.assert_allclose(R.sum(axis=1), z, rtol=1e-10, atol=1e-12)


def test_mixed_sign_hidden_input_doubles_the_total():
    """The authors' code propagates the positive and the negative input part of a hidden layer separately,
    each shifted to carry sum R: with Dense-Dense (no ReLU between) the input relevance sums to 2 z_c."""
    spec, x = make_case("dense_mixed")
    R = rp.attribute(ref.to_relprop(spec, rp), x, "rap")
    z = ref.scores(spec, x).max(axis=1)
    np.testing.assert_allclose(R.reshape(len(x), -1).sum(axis=1), 2 * z, rtol=1e-10)


# --------------------------------------------------------------------------------------------------
# (3) a hand-checked example
# --------------------------------------------------------------------------------------------------


def _tiny():
    w1 = np.array([[-1.0, 1.0, 0.0], [0.0, -2.0, 2.0]])
    w2 = np.array([[1.0, 1.0], [3.0, -1.0]])
    w3 = np.array([[1.0, -1.0], [0.0, 1.0]])
    return rp.Sequential(rp.Dense(w1), rp.ReLU(), rp.Dense(w2), rp.ReLU(), rp.Dense(w3, np.array([1.0, 0.0])))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hand_computed_example(dtype):
    """x = (1, 2, 3): h = relu(W1 x) = (1, 2), a = relu(W2 h) = (3, 1), z = W3 a + b = (3, 1), c = 0.

    Output: P = a+.W+_c = 3, N = a+.W-_c = -1; R' = (3 + 1*(3/2)*(3/3), -1 + 1*(-1/2)*(-1/-1)) = (4.5, -1.5);
    normalized R = |R'| * 3 / 6 = (2.25, 0.75).
    Hidden (Dense): unit 1: A = 3, B = 0 -> g_A = 0.75, g_B = 0; unit 2: A = 3, B = 2, T = 5 -> g_A = 0.25,
    g_B = 0.15; C = h (W+^T g_A - W-^T g_B) = (1*(0.75 + 0.75), 2*(0.75 + 0.15)) = (1.5, 1.8); shift
    (3.3 - 3) / 2 = 0.15 each -> (1.35, 1.65).
    Input (z^B, l = 1, h = 3): Z = (2 + 1, 2 + 4) = (3, 6), s = (0.45, 0.275);
    R = (2*0.45, 1*0.45 + 2*0.275, 4*0.275) = (0.9, 1.0, 1.1), summing to z_c = 3.
    """
    R = rp.attribute(_tiny(), np.array([[1.0, 2.0, 3.0]], dtype), "rap")
    np.testing.assert_allclose(R, [[0.9, 1.0, 1.1]], rtol=1e-12 if dtype == np.float64 else 1e-6)


# --------------------------------------------------------------------------------------------------
# (4) bad parameters and models, refused before any kernel runs
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def no_kernels(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a kernel ran before the input was validated")

    monkeypatch.setattr(rp.core.engine, "forward", forbidden)


def _small():
    spec, x = make_case("conv_max")
    return ref.to_relprop(spec, rp), x


@pytest.mark.parametrize("params,err,match", [
    ({"low": -3.0}, ValueError, "both low and high"),
    ({"high": 3.0}, ValueError, "both low and high"),
    ({"low": "a", "high": 3.0}, TypeError, "low must be None, a number or a numpy array"),
    ({"low": -3.0, "high": np.nan}, ValueError, "high must be finite"),
    ({"low": -3.0, "high": np.array([3.0, np.inf]).reshape(2, 1, 1)}, ValueError, "high contains NaN or Inf"),
    ({"low": np.zeros((3, 1, 1)), "high": 3.0}, ValueError, r"low of shape \(3, 1, 1\) does not broadcast"),
    ({"low": np.zeros((4, 2, 6, 6)), "high": 3.0}, ValueError, "shared by the whole batch"),
    ({"low": np.array(["a"]), "high": 3.0}, TypeError, "real numeric array"),
    ({"low": -0.1, "high": 0.1}, ValueError, "not inside the bounds"),
    ({"epsilon": 1e-6}, TypeError, "unknown parameter 'epsilon'"),
])
def test_bad_parameters(no_kernels, params, err, match):
    net, x = _small()
    with pytest.raises(err, match=match):
        rp.attribute(net, x, "rap", **params)


def test_unsupported_models(no_kernels):
    x = np.ones((2, 4))
    tanh = rp.Sequential(rp.Dense(np.eye(4)), rp.Tanh(), rp.Dense(np.ones((2, 4))))
    with pytest.raises(ValueError, match="node '1' is a Tanh layer, which RAP has no rule for"):
        rp.attribute(tanh, x, "rap")
    gap_scores = rp.Sequential(rp.Conv2d(np.ones((3, 1, 1, 1))), rp.ReLU(), rp.GlobalAvgPool2d(), rp.Flatten())
    with pytest.raises(ValueError, match=r"come from node '3' \(Flatten\)"):
        rp.attribute(gap_scores, np.ones((2, 1, 4, 4)), "rap")
    relu_scores = rp.Sequential(rp.Dense(np.eye(4)), rp.ReLU())
    with pytest.raises(ValueError, match=r"come from node '1' \(ReLU\)"):
        rp.attribute(relu_scores, x, "rap")
    pooled = rp.Sequential(rp.MaxPool2d(2), rp.Conv2d(np.ones((2, 1, 1, 1))), rp.Flatten(), rp.Dense(np.ones((2, 8))))
    with pytest.raises(ValueError, match="input layer '1' .* reads x through other layers"):
        rp.attribute(pooled, np.ones((2, 1, 4, 4)), "rap", low=0.0, high=2.0)
    single = rp.Sequential(rp.Dense(np.ones((2, 4))))
    with pytest.raises(ValueError, match="only Dense/Conv2d layer produces the scores"):
        rp.attribute(single, x, "rap", low=0.0, high=2.0)


# --------------------------------------------------------------------------------------------------
# (5) the API contract
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["conv_max", "residual"])
def test_api_batch_target_none_dtypes(name, dtype):
    """target=None takes each sample's argmax; a batch equals its samples one at a time; shape and dtype of x."""
    spec, x = make_case(name)
    net = ref.to_relprop(spec, rp)
    xd = x.astype(dtype)
    R = rp.attribute(net, xd, "rap")
    assert R.shape == x.shape and R.dtype == dtype
    t = rp.forward(net, xd).argmax(axis=1)
    np.testing.assert_array_equal(R, rp.attribute(net, xd, "rap", target=t))  # exact: the same computation
    one = np.concatenate([rp.attribute(net, xd[i:i + 1], "rap") for i in range(len(x))])
    np.testing.assert_allclose(R, one, rtol=0, atol=(1e-12 if dtype == np.float64 else 1e-5) * np.abs(R).max())
    assert "rap" in rp.METHODS and rp.METHODS["rap"].params == {"low": None, "high": None}


def test_api_internal_chunks(monkeypatch):
    """rp.attribute cuts large batches into internal chunks; RAP's per-sample shifts make that exact."""
    spec, x = make_case("conv_bn")
    net = ref.to_relprop(spec, rp)
    full = rp.attribute(net, x, "rap", target=1)
    np.testing.assert_allclose(rp.attribute(net, x, "rap", target=1, batch_size=1), full, rtol=0, atol=1e-12 * np.abs(full).max())


def test_canonized_batchnorm_gives_the_same_result():
    """BN (gamma > 0) after a conv: passing R through it equals folding it into the conv (rp.canonize)."""
    spec, x = make_case("conv_bn")
    net = ref.to_relprop(spec, rp)
    folded = rp.canonize(net)
    assert not any(n.layer.kind == "BatchNorm2d" for n in folded.nodes)
    R = rp.attribute(net, x, "rap")
    np.testing.assert_allclose(rp.attribute(folded, x, "rap"), R, rtol=0, atol=1e-10 * np.abs(R).max())
