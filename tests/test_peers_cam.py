"""Grad-CAM, Grad-CAM++ and Guided Grad-CAM (Selvaraju et al. 2017; Chattopadhay et al. 2018).

* "gradcam" vs Captum ``LayerGradCam`` + ``LayerAttribution.interpolate`` and "guided_gradcam"
  vs Captum ``GuidedGradCam`` on identical weights. relprop node ``"i"`` of a ``PeerNet``'s
  ``rp.Sequential`` is module ``i`` of its ``torch.nn.Sequential`` (same layer order). relprop
  returns x's shape: the (N, 1, H, W) upsampled Grad-CAM map repeated over the input channels.
* "gradcam_pp" (no Captum peer) vs an independent reference: the layer activation and its
  gradient from torch autograd hooks, the closed-form Grad-CAM++ weights written out in numpy,
  upsampling by torch ``F.interpolate``; and two analytic properties.
* layer= / interpolate= / relu_attributions= validation.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

import relprop.methods.cam  # noqa: F401  (registers the CAM methods until relprop/__init__ imports it)
from peer_models import assert_agree, make_net, relprop_target, resolved_targets, rp, to_torch

pytestmark = pytest.mark.peers

# (net, layer= as handed to relprop (None: default = last 4-D node), target kind)
# vgg_relu nodes: 0 conv 1 relu 2 conv 3 relu 4 maxpool 5 conv 6 relu 7 avgpool 8 flatten 9 dense 10 relu 11 dense
# strided nodes:  0 conv(s2) 1 relu 2 conv 3 relu 4 maxpool(k3 s2 p1) 5 avgpool(k2 s1 p1) 6 flatten ...
CASES = [
    ("vgg_relu", None, "none"),
    ("vgg_relu", "5", "array"),
    ("vgg_relu", 3, "int"),
    ("vgg_relu", -8, "array"),  # node 4, the max-pool
    ("strided", None, "array"),
    ("strided", "2", "none"),
    ("strided", 1, "int"),
    ("strided", "4", "array"),
]

DEFAULT_LAYER = {"vgg_relu": "7", "strided": "5"}


def _node_index(net_name, layer):
    if layer is None:
        return int(DEFAULT_LAYER[net_name])
    n_nodes = len(make_net(net_name).spec)
    return int(layer) % n_nodes if isinstance(layer, int) else int(layer)


def _targets(net, model, xt, kind):
    with torch.no_grad():
        return torch.as_tensor(resolved_targets(kind, net, model(xt).numpy()))


def _captum_gradcam(net, x, tdt, idx, kind, relu, mode):
    model = net.torch(tdt)
    xt = to_torch(x, tdt, requires_grad=True)
    t = _targets(net, model, xt.detach(), kind)
    a = LayerGradCam(model, model[idx]).attribute(xt, target=t, relu_attributions=relu)
    up = LayerAttribution.interpolate(a, tuple(x.shape[2:]), interpolate_mode=mode)
    assert up.shape == (x.shape[0], 1) + x.shape[2:]
    return up.detach().expand(x.shape).numpy()


@pytest.mark.parametrize("net_name,layer,kind", CASES)
def test_gradcam_vs_captum(net_name, layer, kind):
    net = make_net(net_name)
    idx = _node_index(net_name, layer)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r = rp().attribute(net.relprop(npd), x, "gradcam", target=relprop_target(kind, net), layer=layer)
        return r, _captum_gradcam(net, x, tdt, idx, kind, True, "bilinear")

    assert_agree(run, f"gradcam vs Captum LayerGradCam on {net_name} layer {layer!r}")


@pytest.mark.parametrize("net_name,layer,kind", [("vgg_relu", "5", "none"), ("strided", "2", "array")])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_gradcam_no_relu_and_nearest_vs_captum(net_name, layer, kind, mode):
    net = make_net(net_name)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r = rp().attribute(net.relprop(npd), x, "gradcam", target=relprop_target(kind, net), layer=layer,
                           relu_attributions=False, interpolate=mode)
        return r, _captum_gradcam(net, x, tdt, int(layer), kind, False, mode)

    assert_agree(run, f"gradcam (relu_attributions=False, {mode}) vs Captum on {net_name} layer {layer!r}")


@pytest.mark.parametrize("net_name,layer,kind", CASES)
def test_guided_gradcam_vs_captum(net_name, layer, kind):
    net = make_net(net_name)
    idx = _node_index(net_name, layer)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r = rp().attribute(net.relprop(npd), x, "guided_gradcam", target=relprop_target(kind, net), layer=layer)
        model = net.torch(tdt)
        xt = to_torch(x, tdt, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = GuidedGradCam(model, model[idx]).attribute(xt, target=_targets(net, model, xt.detach(), kind),
                                                           interpolate_mode="bilinear")
        return r, c.detach().numpy()

    assert_agree(run, f"guided_gradcam vs Captum GuidedGradCam on {net_name} layer {layer!r}")


def test_guided_gradcam_nearest_vs_captum():
    """Captum GuidedGradCam's own default interpolate_mode is "nearest" (relprop's is "bilinear")."""
    net = make_net("strided")

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r = rp().attribute(net.relprop(npd), x, "guided_gradcam", layer="2", interpolate="nearest")
        model = net.torch(tdt)
        xt = to_torch(x, tdt, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = GuidedGradCam(model, model[2]).attribute(xt, target=_targets(net, model, xt.detach(), "none"))
        return r, c.detach().numpy()

    assert_agree(run, "guided_gradcam (nearest) vs Captum GuidedGradCam default")


# ------------------------------------------------------------------------------------------
# Grad-CAM++: independent reference


def _torch_layer_act_grad(model, idx, xt, t):
    """A = output of module ``idx`` and dS_c/dA, by autograd with a forward hook."""
    store = {}

    def hook(_m, _i, out):
        out.retain_grad()
        store["a"] = out

    h = model[idx].register_forward_hook(hook)
    try:
        out = model(xt)
        out[torch.arange(out.shape[0]), t].sum().backward()
    finally:
        h.remove()
    return store["a"].detach().numpy(), store["a"].grad.detach().numpy()


def gradcam_pp_reference(A, G, relu=True):
    """Chattopadhyay et al. 2018, Eq. 19 (exp score, piecewise-linear net), per channel k:
    alpha_ij = G_ij^2 / (2 G_ij^2 + sum_ab A_ab G_ij^3) (0 where that denominator is 0),
    w_k = sum_ij alpha_ij max(G_ij, 0), L = max(sum_k w_k A_k, 0). Written with loops over k."""
    n, k = A.shape[:2]
    L = np.zeros((n,) + A.shape[2:])
    for i in range(n):
        for c in range(k):
            a, g = A[i, c].astype(np.float64), G[i, c].astype(np.float64)
            den = 2.0 * g ** 2 + a.sum() * g ** 3
            alpha = np.zeros_like(g)
            ok = den != 0
            alpha[ok] = g[ok] ** 2 / den[ok]
            L[i] += (alpha * np.maximum(g, 0.0)).sum() * a
    return np.maximum(L, 0.0) if relu else L


@pytest.mark.parametrize("net_name,layer,kind", [("vgg_relu", None, "none"), ("vgg_relu", "2", "array"),
                                                 ("strided", "2", "int"), ("strided", None, "array")])
@pytest.mark.parametrize("relu", [True, False])
def test_gradcam_pp_vs_reference(net_name, layer, kind, relu):
    net = make_net(net_name)
    idx = _node_index(net_name, layer)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r = rp().attribute(net.relprop(npd), x, "gradcam_pp", target=relprop_target(kind, net), layer=layer,
                           relu_attributions=relu)
        model = net.torch(tdt)
        xt = to_torch(x, tdt, requires_grad=True)
        A, G = _torch_layer_act_grad(model, idx, xt, _targets(net, model, xt.detach(), kind))
        L = torch.as_tensor(gradcam_pp_reference(A, G, relu), dtype=tdt)[:, None]
        up = F.interpolate(L, size=tuple(x.shape[2:]), mode="bilinear", align_corners=False)
        return r, up.expand(x.shape).numpy().astype(npd)

    assert_agree(run, f"gradcam_pp vs numpy reference on {net_name} layer {layer!r}")


def _conv_dense_net(rng, pool):
    """conv (3->4, k3 p1, keeps 6x6) [-> GlobalAvgPool] -> Flatten -> Dense: the score is linear
    in the conv output A, so dS_c/dA is the Dense weight row (no ReLU after the layer)."""
    w1 = rng.standard_normal((4, 3, 3, 3))
    b1 = 0.1 * rng.standard_normal(4)
    n_in = 4 if pool else 4 * 6 * 6
    w2 = rng.standard_normal((5, n_in)) / np.sqrt(n_in)
    b2 = 0.1 * rng.standard_normal(5)
    mid = [rp().GlobalAvgPool2d()] if pool else []
    net = rp().Sequential(rp().Conv2d(w1, b1, padding=1), *mid, rp().Flatten(), rp().Dense(w2, b2))
    return net, (w1, b1, w2, b2)


def _conv_out(x, w1, b1):
    return F.conv2d(torch.as_tensor(x), torch.as_tensor(w1), torch.as_tensor(b1), padding=1).numpy()


def test_gradcam_pp_linear_score_closed_form():
    """No ReLU after the layer: g = W2[c] reshaped to (K, h, w) exactly, so Grad-CAM++ is
    alpha = W^2 / (2 W^2 + (sum_ab A_kab) W^3), w_k = sum alpha relu(W), L = relu(sum_k w_k A_k)
    (h, w = the input's: no interpolation)."""
    rng = np.random.default_rng(3)
    net, (w1, b1, w2, _) = _conv_dense_net(rng, pool=False)
    x = rng.standard_normal((4, 3, 6, 6))
    t = np.array([0, 3, 4, 1])
    r = rp().attribute(net, x, "gradcam_pp", target=t, layer=0)
    A = _conv_out(x, w1, b1)
    Wc = w2[t].reshape(4, 4, 6, 6)
    S = A.sum(axis=(2, 3), keepdims=True)
    alpha = Wc ** 2 / (2 * Wc ** 2 + S * Wc ** 3)
    w = (alpha * np.maximum(Wc, 0)).sum(axis=(2, 3))
    L = np.maximum(np.einsum("nk,nkhw->nhw", w, A), 0)
    np.testing.assert_allclose(r, np.broadcast_to(L[:, None], x.shape), rtol=1e-10, atol=1e-12)
    # Grad-CAM on the same net: weights = mean of W2[c] over each channel's positions
    r_gc = rp().attribute(net, x, "gradcam", target=t, layer="0", relu_attributions=False)
    L_gc = np.einsum("nk,nkhw->nhw", Wc.mean(axis=(2, 3)), A)
    np.testing.assert_allclose(r_gc[:, 2], L_gc, rtol=1e-10, atol=1e-12)


def test_gradcam_gap_dense_is_cam():
    """conv -> GlobalAvgPool -> Dense (the CAM architecture, Zhou et al. 2016): Grad-CAM's weights
    are W2[c, k] / Z and the map is relu(sum_k W2[c, k] A_k) / Z (Selvaraju et al. Sec. 3.1).
    For Grad-CAM++ the gradient is the constant W/Z per channel: alpha = 1 / (2 + S W/Z)."""
    rng = np.random.default_rng(4)
    net, (w1, b1, w2, _) = _conv_dense_net(rng, pool=True)
    x = rng.standard_normal((3, 3, 6, 6))
    r = rp().attribute(net, x, "gradcam", target=2)
    A = _conv_out(x, w1, b1)
    Z = 36.0
    L = np.maximum(np.einsum("k,nkhw->nhw", w2[2], A), 0) / Z
    np.testing.assert_allclose(r, np.broadcast_to(L[:, None], x.shape), rtol=1e-10, atol=1e-12)
    g = w2[2][None, :] / Z
    S = A.sum(axis=(2, 3))
    alpha = g ** 2 / (2 * g ** 2 + S * g ** 3)
    w = Z * alpha * np.maximum(g, 0)
    Lpp = np.maximum(np.einsum("nk,nkhw->nhw", w, A), 0)
    np.testing.assert_allclose(rp().attribute(net, x, "gradcam_pp", target=2), np.broadcast_to(Lpp[:, None], x.shape),
                               rtol=1e-10, atol=1e-12)


def test_shapes_dtypes_channels():
    net = make_net("vgg_relu")
    for npd in (np.float32, np.float64):
        x = net.inputs(dtype=npd)
        for m in ("gradcam", "gradcam_pp", "guided_gradcam"):
            r = rp().attribute(net.relprop(npd), x, m)
            assert r.shape == x.shape and r.dtype == x.dtype and r.flags.c_contiguous
            assert np.all(np.isfinite(r))
            if m != "guided_gradcam":
                assert np.array_equal(r[:, 0], r[:, 1]) and np.array_equal(r[:, 0], r[:, 2])  # copies of one map
                assert np.all(r >= 0) and np.any(r > 0)


def test_interp_matrix_matches_torch():
    cam = relprop.methods.cam
    rng = np.random.default_rng(0)
    for h, w, H, W in [(4, 4, 16, 16), (9, 7, 17, 15), (5, 4, 17, 15), (6, 5, 17, 15), (3, 3, 3, 3),
                       (8, 8, 4, 4), (7, 9, 7, 18)]:
        m = rng.standard_normal((2, h, w))
        for mode in cam.INTERPOLATE_MODES:
            want = F.interpolate(torch.as_tensor(m)[:, None], size=(H, W), mode=mode).numpy()[:, 0]
            np.testing.assert_allclose(cam.upsample(m, (H, W), mode), want, rtol=1e-12, atol=1e-12)


def test_multi_helper_matches_single_calls():
    """attribute(targets=...) (one forward pass, relprop.methods.cam.multi) equals per-target calls."""
    net = make_net("strided")
    g = net.relprop(np.float64)
    x = net.inputs(dtype=np.float64)
    for m in ("gradcam", "gradcam_pp", "guided_gradcam"):
        got = rp().attribute(g, x, m, targets=[0, 4, 6])
        for j, c in enumerate([0, 4, 6]):
            np.testing.assert_allclose(got[:, j], rp().attribute(g, x, m, target=c), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------
# errors


@pytest.fixture(scope="module")
def vgg():
    net = make_net("vgg_relu")
    return net.relprop(), net.inputs(n=2)


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "guided_gradcam"])
def test_errors(vgg, method):
    g, x = vgg
    with pytest.raises(ValueError, match=r"unknown layer '71'.*did you mean"):
        rp().attribute(g, x, method, layer="71")
    with pytest.raises(ValueError, match=r"layer index 12 is out of range .* 12 nodes"):
        rp().attribute(g, x, method, layer=12)
    with pytest.raises(ValueError, match=r"layer index -13 is out of range"):
        rp().attribute(g, x, method, layer=-13)
    with pytest.raises(ValueError, match=r"'9' \(Dense, output \(N, 32\)\) does not have an \(N, C, H, W\) output"):
        rp().attribute(g, x, method, layer="9")
    with pytest.raises(ValueError, match=r"'8' \(Flatten, output \(N, 256\)\)"):
        rp().attribute(g, x, method, layer=-4)
    with pytest.raises(ValueError, match=r"unknown interpolate 'bicubic'"):
        rp().attribute(g, x, method, interpolate="bicubic")
    with pytest.raises(ValueError, match=r"did you mean 'bilinear'"):
        rp().attribute(g, x, method, interpolate="biliner")
    with pytest.raises(TypeError, match=r"layer must be a node name"):
        rp().attribute(g, x, method, layer=True)
    with pytest.raises(TypeError, match=r"layer must be a node name"):
        rp().attribute(g, x, method, layer=2.0)
    with pytest.raises(TypeError, match=r"unknown parameter 'layr'"):
        rp().attribute(g, x, method, layr="5")


def test_errors_specific(vgg):
    g, x = vgg
    with pytest.raises(TypeError, match=r"relu_attributions must be True or False"):
        rp().attribute(g, x, "gradcam", relu_attributions="yes")
    with pytest.raises(TypeError, match=r"unknown parameter 'relu_attributions'"):
        rp().attribute(g, x, "guided_gradcam", relu_attributions=False)  # Captum: always ReLU
    mlp = make_net("mlp")
    with pytest.raises(ValueError, match=r"x must be an image batch"):
        rp().attribute(mlp.relprop(), mlp.inputs(), "gradcam")
    # 4-D input, but no 4-D layer before the score
    net = rp().Sequential(rp().Flatten(), rp().Dense(np.ones((3, 12), np.float32)))
    with pytest.raises(ValueError, match=r"no layer with an \(N, C, H, W\) output"):
        rp().attribute(net, np.ones((2, 3, 2, 2), np.float32), "gradcam")
    # numpy integer index and negative index accepted
    a = rp().attribute(g, x, "gradcam", layer=np.int64(-5))
    b = rp().attribute(g, x, "gradcam", layer="7")
    np.testing.assert_array_equal(a, b)  # exact: the same layer
