"""Peer agreement: relprop's "occlusion" against Captum 0.9.0 ``Occlusion`` on identical weights,
plus its defining properties and parameter errors.

Captum's conventions (matched exactly): window starts ``k * stride`` for
``k = 0 .. ceil((D - w) / stride)`` per dimension (the last window is cut at the edge when the
stride does not divide ``D - w``), each feature gets the mean over the windows covering it of
``s_c(x) - s_c(x occluded)``.  Tolerance as in ``peer_models.assert_agree``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from captum.attr import Occlusion
from peer_models import (
    assert_agree,
    make_net,
    relprop_target,
    resolved_targets,
    rp,
    to_torch,
)
from tolerance import assert_blas_close

import relprop.methods.perturbation as occ  # importing registers "occlusion"
from relprop.core.plan import compiled
from relprop.methods.base import Context

pytestmark = pytest.mark.peers


def _fill(kind, net, dtype):
    """The ``fill`` of a case: a scalar, a per-channel / per-feature array, or per-sample."""
    if kind == "zero":
        return 0.0
    if kind == "scalar":
        return 0.3
    if kind == "channel":  # (1, C, 1, 1) for images, (F,) for the MLP
        if net.is_image:
            return np.array([-0.4, 0.2, 0.7], dtype=dtype).reshape(1, 3, 1, 1)
        return np.linspace(-0.5, 0.5, net.input_shape[0]).astype(dtype)
    if kind == "sample":
        return net.baseline(dtype=dtype)
    raise ValueError(kind)


def _as_tuple(v, rank):
    return (v,) * rank if isinstance(v, int) else tuple(v)


def _run(net, window, stride, fill_kind, target_kind):
    def run(dtype, tdt):
        x = net.inputs(dtype=dtype)
        fill = _fill(fill_kind, net, dtype)
        r_rp = rp().attribute(net.relprop(dtype), x, "occlusion", target=relprop_target(target_kind, net),
                              window=window, stride=stride, fill=fill)
        model = net.torch(tdt)
        xt = to_torch(x, tdt)
        with torch.no_grad():
            tgt = torch.as_tensor(resolved_targets(target_kind, net, model(xt).numpy()))
            base = fill if isinstance(fill, float) else to_torch(fill, tdt)
            r_peer = Occlusion(model).attribute(
                xt, sliding_window_shapes=_as_tuple(window, len(net.input_shape)), strides=stride,
                baselines=base, target=tgt, perturbations_per_eval=64)
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        return r_rp, r_peer.numpy()

    return run


CASES = [
    # net, window, stride, fill, target kind
    ("vgg_relu", (3, 4, 4), (3, 4, 4), "zero", "none"),         # tiling, no overlap
    ("vgg_relu", (3, 4, 4), (1, 2, 2), "scalar", "array"),      # overlapping windows
    ("vgg_relu", (1, 5, 5), (1, 3, 3), "channel", "int"),       # channel-wise, stride does not divide 16-5
    ("vgg_relu", (2, 3, 6), (1, 2, 4), "sample", "array"),      # per-sample fill, uneven everything
    ("vgg_relu", (3, 16, 16), (3, 16, 16), "scalar", "none"),   # one window = the whole input
    ("strided", (2, 5, 4), (1, 3, 2), "scalar", "none"),        # 15-4 not divisible by 2
    ("strided", (1, 4, 3), (1, 4, 3), "channel", "array"),      # 17, 15 not multiples: cut edge windows
    ("strided", (3, 6, 5), 2, "sample", "int"),                 # int stride
    ("mlp", (3,), (2,), "zero", "none"),                        # 20-3 not divisible by 2
    ("mlp", (1,), (1,), "channel", "array"),                    # single-feature ablation
    ("mlp", 4, 3, "sample", "int"),                             # int window and stride
]


@pytest.mark.parametrize("name,window,stride,fill_kind,target_kind", CASES)
def test_occlusion_matches_captum(name, window, stride, fill_kind, target_kind):
    net = make_net(name)
    assert_agree(_run(net, window, stride, fill_kind, target_kind),
                 f"occlusion {name} window={window} stride={stride} fill={fill_kind} target={target_kind}")


@pytest.mark.parametrize("name", ["vgg_relu", "strided", "mlp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_whole_input_window_is_uniform_score_difference(name, dtype):
    """window = the whole sample, fill = a baseline x0: one window covers every feature once, so
    every feature gets the full s_c(x) - s_c(x0) (pre-softmax, also under a Softmax head).

    Captum's convention divides by the number of windows covering a feature, not by the window
    size: the attribution is uniform with MEAN s_c(x) - s_c(x0) (it sums to D times that)."""
    net = make_net(name)
    x, x0 = net.inputs(dtype=dtype), net.baseline(dtype=dtype)
    t = net.targets()
    rows = np.arange(x.shape[0])
    plain = net.relprop(dtype)
    delta = rp().forward(plain, x)[rows, t].astype(np.float64) - rp().forward(plain, x0)[rows, t]
    for model in (plain, net.relprop(dtype, softmax=True)):
        r = rp().attribute(model, x, "occlusion", target=t, window=net.input_shape, fill=x0)
        assert r.dtype == dtype and r.shape == x.shape
        flat = r.reshape(x.shape[0], -1).astype(np.float64)
        assert np.all(flat == flat[:, :1]), "not uniform"  # exact: one window, one value spread
        np.testing.assert_allclose(flat.mean(axis=1), delta, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-6 if dtype == np.float32 else 1e-13)


def test_target_none_is_argmax_and_matches_explicit_target():
    net = make_net("vgg_relu")
    model, x = net.relprop(), net.inputs()
    t = np.argmax(rp().forward(model, x), axis=1)
    kw = {"window": (3, 4, 4), "stride": (3, 2, 2), "fill": 0.1}
    # exact: target=None only picks the column; the computation is the same
    np.testing.assert_array_equal(rp().attribute(model, x, "occlusion", **kw),
                                  rp().attribute(model, x, "occlusion", target=t, **kw))


def test_chunking_does_not_change_the_result():
    """Perturbed copies in chunks of one window each vs. all windows in one forward."""
    net = make_net("strided")
    model, x = net.relprop(np.float64), net.inputs(dtype=np.float64)
    shapes = model.infer_shapes(x.shape[1:])
    cols = net.targets()[:, None]
    one, huge = (Context(compiled(model, x.dtype), shapes, expand_rows=r) for r in (1, 2**40))
    a = occ.occlusion_scores(one, x, cols, (2, 5, 4), (1, 3, 2), 0.2)
    b = occ.occlusion_scores(huge, x, cols, (2, 5, 4), (1, 3, 2), 0.2)
    assert_blas_close(a, b)  # other GEMM shapes per chunk


def test_multi_target_helper_matches_single_target_calls():
    net = make_net("mlp")
    model, x = net.relprop(), net.inputs()
    ks = [0, 3, 4]
    multi = rp().attribute(model, x, "occlusion", targets=ks, window=3, stride=2)
    assert multi.shape == (x.shape[0], len(ks)) + x.shape[1:]
    for j, k in enumerate(ks):
        one = rp().attribute(model, x, "occlusion", target=k, window=3, stride=2)
        assert_blas_close(multi[:, j], one)


def test_validated_params_are_normalized():
    net = make_net("vgg_relu")
    x = net.inputs()
    p = occ._validate(net.relprop(), x, {"window": 2, "stride": np.int64(1), "fill": np.float32(0.5)})
    assert p == {"window": (2, 2, 2), "stride": (1, 1, 1), "fill": 0.5}


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
IMG_ERRORS = [
    ({}, TypeError, "needs window="),
    ({"window": (3, 4)}, ValueError, "window must have 3 entries"),
    ({"window": (3, 4, 4, 1)}, ValueError, "window must have 3 entries"),
    ({"window": (0, 4, 4)}, ValueError, "window must be >= 1"),
    ({"window": (3, 4.0, 4)}, TypeError, "window must be an int"),
    ({"window": True}, TypeError, "window must be an int"),
    ({"window": "3x3"}, TypeError, "window must be an int"),
    ({"window": (4, 4, 4)}, ValueError, "window .* exceeds the sample shape"),
    ({"window": (3, 17, 4)}, ValueError, "window .* exceeds the sample shape"),
    ({"window": (3, 4, 4), "stride": 0}, ValueError, "stride must be >= 1"),
    ({"window": (3, 4, 4), "stride": (1, 2)}, ValueError, "stride must have 3 entries"),
    ({"window": (3, 4, 4), "stride": 1.5}, TypeError, "stride must be an int"),
    ({"window": (3, 4, 4), "stride": (1, 5, 2)}, ValueError, "stride .* larger than window"),
    ({"window": (3, 4, 4), "fill": float("nan")}, ValueError, "fill must be finite"),
    ({"window": (3, 4, 4), "fill": float("inf")}, ValueError, "fill must be finite"),
    ({"window": (3, 4, 4), "fill": "zero"}, TypeError, "fill must be a number"),
    ({"window": (3, 4, 4), "fill": [0.0, 1.0]}, TypeError, "fill must be a number"),
    ({"window": (3, 4, 4), "fill": np.zeros((2, 3, 1, 1))}, ValueError, "fill of shape"),
    ({"window": (3, 4, 4), "fill": np.zeros((3, 16, 15))}, ValueError, "fill of shape"),
    ({"window": (3, 4, 4), "fill": np.array([0.0, np.nan, 0.0]).reshape(3, 1, 1)}, ValueError, "fill contains NaN"),
    ({"window": (3, 4, 4), "fill": np.zeros(3, dtype=bool).reshape(3, 1, 1)}, TypeError, "fill must be a real"),
    ({"window": (3, 4, 4), "fill": np.zeros(3, dtype=complex).reshape(3, 1, 1)}, TypeError, "fill must be a real"),
    ({"windows": (3, 4, 4)}, TypeError, "did you mean 'window'"),
]


@pytest.mark.parametrize("params,exc,match", IMG_ERRORS)
def test_bad_parameters_raise(params, exc, match):
    net = make_net("vgg_relu")
    with pytest.raises(exc, match=match):
        rp().attribute(net.relprop(), net.inputs(), "occlusion", **params)


def test_stride_larger_than_a_full_window_is_fine():
    """Captum allows any stride in a dimension the window fills entirely."""
    net = make_net("mlp")
    x = net.inputs()
    r = rp().attribute(net.relprop(), x, "occlusion", window=(20,), stride=(50,), target=0)
    assert r.shape == x.shape and np.all(np.isfinite(r))


def test_mlp_window_rank_errors():
    net = make_net("mlp")
    with pytest.raises(ValueError, match="window must have 1 entries"):
        rp().attribute(net.relprop(), net.inputs(), "occlusion", window=(2, 2))
    with pytest.raises(ValueError, match="exceeds the sample shape"):
        rp().attribute(net.relprop(), net.inputs(), "occlusion", window=21)


def test_per_sample_fill_survives_internal_batches_and_targets_all():
    net = make_net("mlp")
    model = net.relprop(np.float64)
    x = net.inputs(dtype=np.float64, n=7)
    fill = np.linspace(-0.5, 0.5, x.size).reshape(x.shape)
    ref = rp().attribute(model, x, "occlusion", window=(3,), fill=fill, target=0)
    # BLAS sums in another order for other batch sizes
    assert_blas_close(rp().attribute(model, x, "occlusion", window=(3,), fill=fill, target=0, batch_size=1), ref)
    multi = rp().attribute(model, x, "occlusion", window=(3,), fill=fill, targets=[0, 2])
    assert_blas_close(multi[:, 0], ref)
