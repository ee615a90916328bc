"""Peer agreement: relprop's gradient family, Integrated Gradients and DeepLIFT against Captum 0.9.0
(and plain torch autograd for ``gradient``).

Tolerance: per sample, max|R_relprop - R_peer| <= 1e-4 * max|R_peer| in float32; a failure is
re-run in float64 on both sides and the message says whether it is float32 noise or a real
difference (see ``peer_models.assert_agree``).
"""
from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pytest
import torch

# Peers are required: these imports are unconditional so a missing peer fails collection.
import captum.attr._core.deep_lift as deep_lift_mod
from captum.attr import DeepLift, InputXGradient, IntegratedGradients, Saliency

from peer_models import (
    assert_agree,
    make_net,
    relprop_target,
    resolved_targets,
    rp,
    to_torch,
)

pytestmark = pytest.mark.peers

ALL_NETS = ["vgg_relu", "vgg_tanh", "vgg_sigmoid", "strided", "mlp"]
# (net, target kind): every net, every target kind
NET_TARGETS = [
    ("vgg_relu", "none"),
    ("vgg_relu", "array"),
    ("vgg_tanh", "int"),
    ("vgg_sigmoid", "array"),
    ("strided", "none"),
    ("mlp", "array"),
]


def _torch_targets(net, model, xt, target_kind):
    with torch.no_grad():
        logits = model(xt).numpy()
    return torch.as_tensor(resolved_targets(target_kind, net, logits))


def _accumulating_max_unpool2d(t, indices, kernel_size, stride, padding, output_size):
    """``F.max_unpool2d`` that *sums* values routed to the same input position.

    Captum 0.9.0's DeepLift maxpool rule scatters ``grad * delta_out`` back with
    ``F.max_unpool2d``, which overwrites instead of accumulating when one input is the argmax
    of several overlapping windows (stride < kernel): the attribution then loses mass and
    stops summing to f(x) - f(x0) (e.g. x=[0,3,1], x0=0, MaxPool (1,2) stride 1, Dense [1,1]:
    f(x)-f(x0)=6, Captum attributes [0,3,0]).  Used only for nets with overlapping max pools.
    """
    n, c = t.shape[:2]
    out = torch.zeros((n, c, int(output_size[-2]) * int(output_size[-1])), dtype=t.dtype)
    out.scatter_add_(2, indices.reshape(n, c, -1), t.reshape(n, c, -1))
    return out.reshape(n, c, int(output_size[-2]), int(output_size[-1]))


def _maxpool2d_accumulating(module, inputs, outputs, grad_input, grad_output, eps=1e-10):
    return deep_lift_mod.maxpool(module, torch.nn.functional.max_pool2d, _accumulating_max_unpool2d,
                                 inputs, outputs, grad_input, grad_output, eps=eps)


def _captum(net, cls, x, target_kind, tdt, **kwargs):
    # DeepLift: work around Captum's activation->MaxPool hook-ordering bug (see PeerNet.torch)
    model = net.torch(tdt, captum_deeplift=cls is DeepLift)
    xt = to_torch(x, tdt, requires_grad=True)
    tgt = _torch_targets(net, model, xt.detach(), target_kind)
    patch = {}
    if cls is DeepLift and net.has_overlapping_maxpool:
        patch = {torch.nn.MaxPool2d: _maxpool2d_accumulating}
    with warnings.catch_warnings(), mock.patch.dict(deep_lift_mod.SUPPORTED_NON_LINEAR, patch):
        warnings.simplefilter("ignore")
        r = cls(model).attribute(xt, target=tgt, **kwargs)
    return r.detach().numpy()


# --------------------------------------------------------------------------------------------
# gradient / saliency / gradient_x_input
# --------------------------------------------------------------------------------------------
def autograd_gradient(net, x, target_kind, tdt):
    model = net.torch(tdt)
    xt = to_torch(x, tdt, requires_grad=True)
    out = model(xt)
    tgt = resolved_targets(target_kind, net, out.detach().numpy())
    score = out[torch.arange(out.shape[0]), torch.as_tensor(tgt)].sum()
    (g,) = torch.autograd.grad(score, xt)
    return g.numpy()


GRADIENT_PEERS = {
    "gradient": lambda net, x, tk, tdt: autograd_gradient(net, x, tk, tdt),
    "saliency": lambda net, x, tk, tdt: _captum(net, Saliency, x, tk, tdt, abs=True),
    "gradient_x_input": lambda net, x, tk, tdt: _captum(net, InputXGradient, x, tk, tdt),
}


@pytest.mark.parametrize("net_name,target_kind", NET_TARGETS)
@pytest.mark.parametrize("method", list(GRADIENT_PEERS))
def test_gradient_family(method, net_name, target_kind):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, method, target=target)
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        return r_rp, GRADIENT_PEERS[method](net, x, target_kind, tdt)

    assert_agree(run, f"{method} on {net_name}")


@pytest.mark.parametrize("method", list(GRADIENT_PEERS))
def test_gradient_family_softmax_head(method):
    """Explanations start from the Softmax input: same result as on the logit network."""
    net = make_net("vgg_relu")

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd, softmax=True), x, method, target=None)
        return r_rp, GRADIENT_PEERS[method](net, x, "none", tdt)

    assert_agree(run, f"{method} with Softmax head")


# --------------------------------------------------------------------------------------------
# Integrated Gradients
# --------------------------------------------------------------------------------------------
SCHEMES = {  # relprop scheme -> Captum method
    "riemann_left": "riemann_left",
    "riemann_right": "riemann_right",
    "riemann_middle": "riemann_middle",
    "riemann_trapezoid": "riemann_trapezoid",
    "gauss_legendre": "gausslegendre",
}
BASELINES = ["zero", "scalar", "per_sample", "broadcast"]


def _baseline(kind, net, npd):
    """(relprop baseline, captum baseline builder(tdt))."""
    if kind == "zero":
        return 0.0, lambda tdt: 0.0
    if kind == "scalar":
        return -0.3, lambda tdt: -0.3
    if kind == "per_sample":
        b = net.baseline(dtype=npd)
        return b, lambda tdt: to_torch(b, tdt)
    if kind == "broadcast":  # shape (1, ...) broadcast over the batch
        b = net.baseline(n=1, dtype=npd)
        return b, lambda tdt: to_torch(b, tdt)
    raise ValueError(kind)


def _ig_cases():
    cases = []
    nets = [("vgg_relu", "none"), ("vgg_tanh", "array"), ("strided", "int"), ("mlp", "array")]
    for scheme in SCHEMES:
        for i, (net_name, tk) in enumerate(nets):
            for bl in BASELINES:
                # full baseline matrix on vgg_relu and mlp, one rotating baseline on the others
                if not (net_name in ("vgg_relu", "mlp") or BASELINES.index(bl) == (i + list(SCHEMES).index(scheme)) % 4):
                    continue
                if bl == "scalar" and scheme in ("riemann_left", "riemann_trapezoid") and net_name != "mlp":
                    # These schemes take the gradient at the baseline itself (alpha = 0). A constant
                    # nonzero image gives every interior position of a feature map the same value in
                    # exact arithmetic, so each 2x2 max-pool window there is a tie that the GEMM's
                    # rounding breaks, and the gradient's route through the pool is arbitrary: with one
                    # OpenBLAS thread (OPENBLAS_NUM_THREADS=1) relprop's float32 result moved 6% off
                    # Captum's on these cases, as it did with relprop's own GEMM blocking. The scalar
                    # baseline keeps its other schemes here, and all of them on the MLP (no pooling);
                    # the zero baseline's ties are exact (0 * w sums to 0 in any order), so it stays;
                    # test_integrated_gradients_scalar_baseline_is_the_constant_image checks the
                    # scalar on these nets against the same image given as an array.
                    continue
                cases.append(pytest.param(scheme, net_name, tk, bl, id=f"{scheme}-{net_name}-target_{tk}-{bl}"))
    return cases


@pytest.mark.parametrize("scheme,net_name,target_kind,baseline", _ig_cases())
def test_integrated_gradients(scheme, net_name, target_kind, baseline):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)
    steps = 16

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        b_rp, b_captum = _baseline(baseline, net, npd)
        r_rp = rp().attribute(net.relprop(npd), x, "integrated_gradients", target=target,
                              baseline=b_rp, steps=steps, scheme=scheme)
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        r_c = _captum(net, IntegratedGradients, x, target_kind, tdt,
                      baselines=b_captum(tdt), n_steps=steps, method=SCHEMES[scheme])
        if scheme == "riemann_trapezoid":
            # Captum 0.9 weights the trapezoid points 1/n (halved at the ends), so they sum to
            # (n-1)/n; relprop uses the exact rule 1/(n-1). Same points, so the results differ
            # by exactly that factor (documented in the README).
            r_c = r_c * (steps / (steps - 1))
        return r_rp, r_c

    assert_agree(run, f"integrated_gradients scheme={scheme} baseline={baseline} on {net_name}")


@pytest.mark.parametrize("scheme", ["riemann_left", "riemann_trapezoid"])
@pytest.mark.parametrize("net_name", ["vgg_relu", "vgg_tanh", "strided"])
def test_integrated_gradients_scalar_baseline_is_the_constant_image(net_name, scheme):
    """A scalar baseline is the constant image of that value: the same result, to float32
    rounding, as the image given as an array (the cases left out of test_integrated_gradients
    above)."""
    net = make_net(net_name)
    x = net.inputs(dtype=np.float32)
    kw = {"target": relprop_target("array", net), "steps": 16, "scheme": scheme}
    r_scalar = rp().attribute(net.relprop(np.float32), x, "integrated_gradients", baseline=-0.3, **kw)
    r_image = rp().attribute(net.relprop(np.float32), x, "integrated_gradients",
                             baseline=np.full(x.shape, -0.3, np.float32), **kw)
    np.testing.assert_allclose(r_scalar, r_image, rtol=0, atol=1e-6 * np.abs(r_image).max())


def test_integrated_gradients_default_scheme_is_gauss_legendre_50():
    net = make_net("vgg_relu")

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, "integrated_gradients")
        r_c = _captum(net, IntegratedGradients, x, "none", tdt, baselines=0.0)  # captum defaults: 50, gausslegendre
        return r_rp, r_c

    assert_agree(run, "integrated_gradients defaults")


def _ig_uniform_reference(net, x, baseline, target_kind, steps, tdt):
    """Textbook rule: points t/(T-1), t = 0..T-1, weights 1/T (plain torch autograd)."""
    model = net.torch(tdt)
    xt = to_torch(x, tdt)
    bt = torch.as_tensor(np.broadcast_to(np.asarray(baseline, dtype=x.dtype), x.shape).copy(), dtype=tdt)
    with torch.no_grad():
        tgt = torch.as_tensor(resolved_targets(target_kind, net, model(xt).numpy()))
    total = torch.zeros_like(xt)
    for t in range(steps):
        alpha = t / (steps - 1)
        p = (bt + alpha * (xt - bt)).requires_grad_(True)
        out = model(p)
        (g,) = torch.autograd.grad(out[torch.arange(out.shape[0]), tgt].sum(), p)
        total += g / steps
    return ((xt - bt) * total).numpy()


@pytest.mark.parametrize("baseline", ["zero", "per_sample"])
@pytest.mark.parametrize("net_name,target_kind", [("vgg_relu", "array"), ("mlp", "none")])
def test_integrated_gradients_uniform_scheme(net_name, target_kind, baseline):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)
    steps = 12

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        b_rp, _ = _baseline(baseline, net, npd)
        r_rp = rp().attribute(net.relprop(npd), x, "integrated_gradients", target=target,
                              baseline=b_rp, steps=steps, scheme="uniform")
        return r_rp, _ig_uniform_reference(net, x, b_rp, target_kind, steps, tdt)

    assert_agree(run, f"integrated_gradients scheme=uniform baseline={baseline} on {net_name}")


# --------------------------------------------------------------------------------------------
# DeepLIFT (rescale) vs Captum DeepLift(multiply_by_inputs=True)
# --------------------------------------------------------------------------------------------
def _deeplift_cases():
    cases = []
    tks = ["none", "array", "int"]
    for i, net_name in enumerate(ALL_NETS):
        for bl in ("zero", "per_sample", "broadcast", "scalar"):
            if bl in ("broadcast", "scalar") and net_name not in ("vgg_relu", "mlp"):
                continue
            tk = tks[(i + len(cases)) % 3]
            cases.append(pytest.param(net_name, bl, tk, id=f"{net_name}-{bl}-target_{tk}"))
    return cases


@pytest.mark.parametrize("net_name,baseline,target_kind", _deeplift_cases())
def test_deeplift_rescale(net_name, baseline, target_kind):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        b_rp, b_captum = _baseline(baseline, net, npd)
        r_rp = rp().attribute(net.relprop(npd), x, "deeplift.rescale", target=target, baseline=b_rp)
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        bc = b_captum(tdt)
        if not isinstance(bc, torch.Tensor):
            bc = torch.full((1,) + x.shape[1:], float(bc), dtype=tdt)
        r_c = _captum(net, DeepLift, x, target_kind, tdt, baselines=bc)
        return r_rp, r_c

    assert_agree(run, f"deeplift.rescale baseline={baseline} on {net_name}")


def test_deeplift_softmax_head():
    net = make_net("vgg_relu")

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        b = net.baseline(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd, softmax=True), x, "deeplift.rescale", target=None, baseline=b)
        r_c = _captum(net, DeepLift, x, "none", tdt, baselines=to_torch(b, tdt))
        return r_rp, r_c

    assert_agree(run, "deeplift.rescale with Softmax head")


def test_deeplift_default_baseline_is_zero():
    net = make_net("strided")

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, "deeplift.rescale", target=None)
        r_c = _captum(net, DeepLift, x, "none", tdt, baselines=torch.zeros((1,) + x.shape[1:], dtype=tdt))
        return r_rp, r_c

    assert_agree(run, "deeplift.rescale default baseline")


@pytest.mark.parametrize("baseline", ["zero", "per_sample"])
@pytest.mark.parametrize("net_name", ALL_NETS)
def test_deeplift_summation_to_delta(net_name, baseline):
    """Peer-independent check: sum R = f_c(x) - f_c(x0) (rescale rule, linear layers, maxpool rule)."""
    net = make_net(net_name)
    x = net.inputs(dtype=np.float64)
    b = np.zeros_like(x) if baseline == "zero" else net.baseline(dtype=np.float64)
    r = rp().attribute(net.relprop(np.float64), x, "deeplift.rescale", target=None, baseline=b)
    model = net.torch(torch.float64)
    with torch.no_grad():
        fx, fb = model(to_torch(x, torch.float64)).numpy(), model(to_torch(b, torch.float64)).numpy()
    tgt = np.argmax(fx, axis=1)
    delta = fx[np.arange(len(x)), tgt] - fb[np.arange(len(x)), tgt]
    np.testing.assert_allclose(r.reshape(len(x), -1).sum(1), delta, rtol=1e-9, atol=1e-12)
