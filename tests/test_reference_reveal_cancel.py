"""DeepLIFT RevealCancel (``"deeplift.reveal_cancel"``; Shrikumar et al. 2017, Sec. 3.5.3).

Checked against the seed's worked statement (``min(i1, i2)`` with reference 0: both inputs get
``min / 2``), against the independent per-sample numpy reference (``reference_numpy.deeplift_reveal_cancel``,
written on contribution matrices, not on the engine's W+/W- blocks), and against the properties the
rule must have: summation-to-delta, equality with Rescale where no nonlinearity sees mixed-sign
contributions, multi-target = K single calls.
"""
import zlib

import numpy as np
import pytest
from tolerance import assert_blas_close
from hypothesis import given, settings, strategies as st

import reference_numpy as ref
import relprop as rp

RTOL64, RTOL32 = 1e-9, 1e-4


def _min_net(rp_):
    """min(i1, i2) = relu(i1) - relu(-i1) - relu(i1 - i2) as Dense-ReLU-Dense."""
    w1 = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, -1.0]])
    w2 = np.array([[1.0, -1.0, -1.0]])
    return rp_.Sequential(rp_.Dense(w1, np.zeros(3)), rp_.ReLU(), rp_.Dense(w2, np.zeros(1)))


@pytest.mark.parametrize("i1,i2", [(3.0, 5.0), (5.0, 3.0), (2.0, 2.0), (0.5, 7.25)])
def test_seed_min_example_splits_evenly(i1, i2):
    """Seed 001 after Eq. 4.30: 'RevealCancel would assign a contribution of 0.5 min(i1, i2) to both
    inputs' (positive inputs, reference 0), where Rescale gives everything to one input."""
    x = np.array([[i1, i2]])
    R = rp.attribute(_min_net(rp), x, "deeplift.reveal_cancel", target=0)
    np.testing.assert_allclose(R, [[0.5 * min(i1, i2)] * 2], rtol=1e-12, atol=1e-12)
    if i1 != i2:
        Rs = rp.attribute(_min_net(rp), x, "deeplift.rescale", target=0)
        assert np.count_nonzero(np.abs(Rs) > 1e-12) == 1


def _nets():
    rng = np.random.default_rng(7)
    yield "dense-relu", ref.random_dense_net(rng, [6, 8, 7, 4], act="relu"), (6,)
    yield "dense-tanh", ref.random_dense_net(rng, [5, 6, 6, 3], act="tanh"), (5,)
    yield "dense-sigmoid", ref.random_dense_net(rng, [5, 7, 3], act="sigmoid", softmax_last=True), (5,)
    spec, shape = ref.random_conv_net(rng, pool="max", second_conv=True)
    yield "conv-max", spec, shape
    spec, shape = ref.random_conv_net(rng, pool="avg", stride=2, padding=1, act="tanh")
    yield "conv-avg-s2", spec, shape
    # conv -> relu -> flatten -> dense -> relu -> dense: RevealCancel at a dense ReLU after conv layers
    spec, shape = ref.random_conv_net(rng, pool=None, n_out=6)
    spec = spec + [ref.relu(), ref.dense(ref._f32(rng.normal(0, 0.4, (3, 6))), ref._f32(rng.normal(0, 0.2, 3)))]
    yield "conv-dense-dense", spec, shape


NETS = list(_nets())


@pytest.mark.parametrize("name,spec,shape", NETS, ids=[n[0] for n in NETS])
@pytest.mark.parametrize("conv_rule", ["rescale", "reveal_cancel"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference(name, spec, shape, conv_rule, dtype):
    rng = np.random.default_rng(zlib.crc32(f"{name}/{conv_rule}".encode()))  # stable across processes
    x = rng.normal(size=(5,) + shape).astype(dtype)
    base = (0.3 * rng.normal(size=(5,) + shape)).astype(dtype)
    target = rng.integers(0, 3, size=5)
    R = rp.attribute(ref.to_relprop(spec, rp), x, "deeplift.reveal_cancel", target=target, baseline=base,
                     conv_rule=conv_rule)
    Rref = ref.deeplift_reveal_cancel(spec, x, target, base, conv_rule)
    assert R.dtype == dtype and R.shape == x.shape
    tol = (RTOL64 if dtype == np.float64 else RTOL32) * np.abs(Rref).max()
    np.testing.assert_allclose(R, Rref, rtol=0, atol=tol)
    # the rule changes something on these nets (else the comparison above would not test it)
    if name.startswith("dense") or conv_rule == "reveal_cancel":
        Rs = ref.deeplift_rescale(spec, x, target, base)
        assert np.abs(Rs - Rref).max() > 20 * tol


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), width=st.integers(1, 9), act=st.sampled_from(["relu", "tanh", "sigmoid"]),
       conv_rule=st.sampled_from(["rescale", "reveal_cancel"]))
def test_summation_to_delta(seed, width, act, conv_rule):
    """sum_i C_i = s_c(x) - s_c(x0) exactly (Dy+ + Dy- = Dy at every nonlinearity, Shrikumar et al. 2017)."""
    rng = np.random.default_rng(seed)
    spec = ref.random_dense_net(rng, [4, width, width, 3], act=act, scale=2.0)
    if seed % 2:
        spec, shape = ref.random_conv_net(rng, channels=width, act=act, second_conv=True)
    else:
        shape = (4,)
    net = ref.to_relprop(spec, rp)
    x, base = rng.normal(size=(3,) + shape), rng.normal(size=(3,) + shape)
    R = rp.attribute(net, x, "deeplift.reveal_cancel", target=1, baseline=base, conv_rule=conv_rule)
    delta = ref.scores(spec, x)[:, 1] - ref.scores(spec, base)[:, 1]
    np.testing.assert_allclose(R.reshape(3, -1).sum(1), delta, rtol=1e-9, atol=1e-9)


def test_equals_rescale_without_cancellation():
    """Nonnegative weights and x >= x0: every unit sees only positive contributions (Dx- = 0), so
    Dy+ = Dy and RevealCancel is Rescale."""
    rng = np.random.default_rng(3)
    spec = [ref.dense(np.abs(rng.normal(size=(6, 4))), rng.normal(size=6)), ref.relu(),
            ref.dense(np.abs(rng.normal(size=(5, 6))), rng.normal(size=5)), ref.tanh(),
            ref.dense(rng.normal(size=(2, 5)), None)]
    net = ref.to_relprop(spec, rp)
    base = rng.normal(size=(4, 4))
    x = base + np.abs(rng.normal(size=(4, 4)))
    a = rp.attribute(net, x, "deeplift.reveal_cancel", target=0, baseline=base)
    b = rp.attribute(net, x, "deeplift.rescale", target=0, baseline=base)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_conv_only_net_with_rescale_conv_rule_is_rescale():
    rng = np.random.default_rng(4)
    spec, shape = ref.random_conv_net(rng, pool="max", second_conv=True)
    net = ref.to_relprop(spec, rp)
    x = rng.normal(size=(3,) + shape)
    a = rp.attribute(net, x, "deeplift.reveal_cancel", target=2)
    b = rp.attribute(net, x, "deeplift.rescale", target=2)
    np.testing.assert_array_equal(a, b)  # exact: no RevealCancel node, so Rescale's code path


@pytest.mark.parametrize("conv_rule", ["rescale", "reveal_cancel"])
def test_multi_target_equals_single_calls(conv_rule):
    name, spec, shape = NETS[-1]
    rng = np.random.default_rng(11)
    net = ref.to_relprop(spec, rp)
    x = rng.normal(size=(4,) + shape).astype(np.float32)
    base = rng.normal(size=shape).astype(np.float32) * 0.1
    M = rp.attribute(net, x, "deeplift.reveal_cancel", targets="all", baseline=base, conv_rule=conv_rule)
    for k in range(3):
        assert_blas_close(M[:, k], rp.attribute(net, x, "deeplift.reveal_cancel", target=k,
                                                baseline=base, conv_rule=conv_rule))


def test_large_batch_is_chunked_like_small_batches():
    name, spec, shape = NETS[3]
    rng = np.random.default_rng(12)
    net = ref.to_relprop(spec, rp)
    x = rng.normal(size=(300,) + shape).astype(np.float32)
    R = rp.attribute(net, x, "deeplift.reveal_cancel", target=1, conv_rule="reveal_cancel")
    small = rp.attribute(net, x[290:], "deeplift.reveal_cancel", target=1, conv_rule="reveal_cancel")
    np.testing.assert_allclose(R[290:], small, rtol=0, atol=1e-5 * np.abs(small).max())  # BLAS blocking


@pytest.mark.parametrize("params,err,match", [
    ({"conv_rule": "revealcancel"}, ValueError, "conv_rule must be 'rescale' or 'reveal_cancel'"),
    ({"conv_rule": None}, ValueError, "conv_rule"),
    ({"baseline": np.zeros((3, 3))}, ValueError, "baseline of shape"),
    ({"baseline": np.nan}, ValueError, "baseline must be finite"),
    ({"steps": 3}, TypeError, "unknown parameter 'steps'"),
])
def test_bad_parameters(params, err, match):
    with pytest.raises(err, match=match):
        rp.attribute(_min_net(rp), np.ones((2, 2)), "deeplift.reveal_cancel", target=0, **params)
