"""AdaptiveAvgPool2d / AdaptiveMaxPool2d at any output size, Upsample (nearest, bilinear, with and
without align_corners), LayerNorm, GroupNorm and the squeeze-and-excitation ``Mul`` of two
branches: alone and in small models written here, imported from torch (module and functional
forms) and from ONNX (opset 17).

What each reference is:

* forward and gradient: torch itself (autograd), <= 1e-5 x max in float32, 1e-10 in float64;
* integrated gradients: Captum's ``IntegratedGradients(method="gausslegendre")`` (float64, 1e-7:
  Captum casts its quadrature weights to float32);
* DeepLIFT: Captum's ``DeepLift`` where its rules coincide with relprop's (ReLU Rescale; the
  resampling layers are linear, so Captum's gradient there is the linear rule); the Mul rule
  (a Shapley split) and LayerNorm's elementwise Rescale against plain-numpy formulas written here,
  and summation-to-delta on every model;
* LRP: Zennit (its ``Norm`` rule on ``AdaptiveAvgPool2d``, ``Pass`` on LayerNorm / GroupNorm, the
  plain gradient on AdaptiveMaxPool2d and nearest upsampling) where Zennit defines the treatment;
  otherwise a plain-numpy formula (bilinear z-rule, LayerNorm ``lrp_rule="linear"``, Mul) and
  conservation where the treatment conserves;
* ONNX: onnxruntime on the TorchScript exporter's opset-17 graph.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum.attr import DeepLift, IntegratedGradients

import fake_device as fd
import relprop as rp
from tolerance import assert_blas_close  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-10}


def assert_close(actual, expected, rtol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert err <= rtol * scale, f"max abs diff {err:.3g} > {rtol:g} x max|expected| {scale:.3g}"


def import_torch(m, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rp.from_torch(m, x)


def seeded(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return m.eval()


def torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def torch_grad(m, x, target):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    m(xt)[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    return xt.grad.numpy()


# -- each layer alone, between a conv and a linear read-out -------------------------------------
class Alone(nn.Module):
    """Conv(3->4, 3x3, pad 1) - layer - flatten - Linear(-> 3); ``fn`` a module or a function."""

    def __init__(self, fn, feat):
        super().__init__()
        self.conv, self.fn, self.fc = nn.Conv2d(3, 4, 3, padding=1), fn, nn.Linear(feat, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.fn(self.conv(x)), 1))


IN = (3, 7, 9)
LAYERS = {  # name -> (module or function, output features, relprop kind)
    "adaptive_avg_3x3": (nn.AdaptiveAvgPool2d(3), 4 * 9, "AdaptiveAvgPool2d"),
    "adaptive_avg_5x7": (nn.AdaptiveAvgPool2d((5, 7)), 4 * 35, "AdaptiveAvgPool2d"),
    "adaptive_avg_up_10x4": (lambda x: F.adaptive_avg_pool2d(x, (10, 4)), 4 * 40, "AdaptiveAvgPool2d"),
    "adaptive_max_3x3": (nn.AdaptiveMaxPool2d(3), 4 * 9, "AdaptiveMaxPool2d"),
    "adaptive_max_5x7": (lambda x: F.adaptive_max_pool2d(x, (5, 7)), 4 * 35, "AdaptiveMaxPool2d"),
    "up_nearest_x2": (nn.Upsample(scale_factor=2), 4 * 14 * 18, "Upsample"),
    "up_nearest_size": (lambda x: F.interpolate(x, size=(5, 13)), 4 * 5 * 13, "Upsample"),
    "up_bilinear_x1.7": (lambda x: F.interpolate(x, scale_factor=1.7, mode="bilinear"), 4 * 11 * 15, "Upsample"),
    "up_bilinear_ac": (nn.Upsample(size=(12, 5), mode="bilinear", align_corners=True), 4 * 60, "Upsample"),
    "up_bilinear2d": (nn.UpsamplingBilinear2d(scale_factor=2), 4 * 14 * 18, "Upsample"),
    "layernorm_chw": (nn.LayerNorm((4, 7, 9)), 4 * 63, "LayerNorm"),
    "layernorm_w": (lambda x: F.layer_norm(x, (9,), eps=1e-3), 4 * 63, "LayerNorm"),
    "groupnorm": (nn.GroupNorm(2, 4), 4 * 63, "GroupNorm"),
    "groupnorm_fn": (lambda x: F.group_norm(x, 4, eps=1e-4), 4 * 63, "GroupNorm"),
}


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def alone(name, dtype):
    fn, feat, _ = LAYERS[name]
    m = seeded(Alone(fn if isinstance(fn, nn.Module) else Fn(fn), feat), sum(map(ord, name)))
    return m.double() if dtype == np.float64 else m


def inputs(shape=IN, n=3, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((n,) + shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_reference_torch_forward_and_gradient_alone(name, dtype):
    m, x = alone(name, dtype), inputs(dtype=dtype)
    net = import_torch(m, x)
    assert LAYERS[name][2] in [n.layer.kind for n in net.nodes]
    assert_close(rp.forward(net, x), torch_out(m, x), TOL[dtype])
    target = np.array([0, 2, 1])
    assert_close(rp.attribute(net, x, "gradient", target=target), torch_grad(m, x, target), TOL[dtype])


def test_reference_adaptive_max_ties_follow_torch():
    """Ties: torch's CPU kernel keeps the first maximum in row-major order; so does relprop."""
    x = np.zeros((2, 1, 5, 7))
    x[1, 0, 1:4, 2:5] = 1.0  # plateaus spanning several overlapping windows
    net = rp.Sequential(rp.AdaptiveMaxPool2d((3, 4)), rp.Flatten())
    xt = torch.from_numpy(x).requires_grad_(True)
    y = F.adaptive_max_pool2d(xt, (3, 4)).flatten(1)
    w = np.random.default_rng(0).standard_normal(y.shape[1])
    (y * torch.from_numpy(w)).sum().backward()
    net2 = rp.Sequential(rp.AdaptiveMaxPool2d((3, 4)), rp.Flatten(), rp.Dense(w[None, :]))
    np.testing.assert_array_equal(rp.forward(net, x), y.detach().numpy())
    np.testing.assert_allclose(rp.attribute(net2, x, "gradient", target=0), xt.grad.numpy(), atol=1e-14)


# -- small models --------------------------------------------------------------------------------------
class SEBlock(nn.Module):
    """Conv - ReLU - GroupNorm - SE (GAP - FC - ReLU - FC - Sigmoid - Mul) - AdaptiveAvgPool(3) - FC."""

    def __init__(self, functional=False):
        super().__init__()
        self.conv, self.gn = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8)
        self.f1, self.f2, self.fc = nn.Linear(8, 4), nn.Linear(4, 8), nn.Linear(8 * 9, 3)
        self.pool, self.functional = nn.AdaptiveAvgPool2d(3), functional

    def forward(self, x):
        h = self.gn(F.relu(self.conv(x)))
        g = torch.sigmoid(self.f2(F.relu(self.f1(h.mean((2, 3)))))).view(-1, 8, 1, 1)
        h = torch.mul(g, h) if self.functional else h * g
        return self.fc(torch.flatten(self.pool(h), 1))


class Decoder(nn.Module):
    """Encoder conv - MaxPool - conv - Upsample(x2) - Concat with the skip - conv - ReLU -
    AdaptiveMaxPool(5x7) - FC (a U-Net decoder step)."""

    def __init__(self, mode="nearest"):
        super().__init__()
        self.e, self.m = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.d, self.fc = nn.Conv2d(8, 4, 3, padding=1), nn.Linear(4 * 35, 3)
        self.up = nn.Upsample(scale_factor=2, mode=mode)
        self.pool = nn.AdaptiveMaxPool2d((5, 7))

    def forward(self, x):
        s = F.relu(self.e(x))
        u = self.up(F.relu(self.m(F.max_pool2d(s, 2))))
        h = F.relu(self.d(torch.cat([u, s], 1)))
        return self.fc(torch.flatten(self.pool(h), 1))


class LNBlock(nn.Module):
    """Conv - LayerNorm(C, H, W) - ReLU - Upsample bilinear - AdaptiveAvgPool(5x7) - FC."""

    def __init__(self):
        super().__init__()
        self.conv, self.ln, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.LayerNorm((4, 8, 8)), nn.Linear(4 * 35, 3)

    def forward(self, x):
        h = F.relu(self.ln(self.conv(x)))
        h = F.interpolate(h, scale_factor=1.5, mode="bilinear", align_corners=False)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, (5, 7)), 1))


MODELS = {"se": lambda: SEBlock(), "se_functional": lambda: SEBlock(True), "decoder": lambda: Decoder(),
          "decoder_bilinear": lambda: Decoder("bilinear"), "layernorm": lambda: LNBlock()}
MIN = (3, 8, 8)


def model(name, dtype=np.float64):
    m = seeded(MODELS[name](), sum(map(ord, name)) + 1)
    return m.double() if dtype == np.float64 else m


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(MODELS))
def test_reference_torch_models_forward_and_gradient(name, dtype):
    m, x = model(name, dtype), inputs(MIN, dtype=dtype)
    net = import_torch(m, x)
    assert_close(rp.forward(net, x), torch_out(m, x), TOL[dtype])
    target = np.array([1, 0, 2])
    assert_close(rp.attribute(net, x, "gradient", target=target), torch_grad(m, x, target), TOL[dtype])


@pytest.mark.peers
@pytest.mark.parametrize("name", list(MODELS))
def test_peers_captum_integrated_gradients(name):
    m, x = model(name), inputs(MIN)
    net, target, b = import_torch(m, x), np.array([2, 1, 0]), 0.2 * inputs(MIN, seed=1)
    r = rp.attribute(net, x, "integrated_gradients", target=target, baseline=b, steps=16, scheme="gauss_legendre")
    ref = IntegratedGradients(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                           target=torch.as_tensor(target), n_steps=16, method="gausslegendre")
    assert_close(r, ref.detach().numpy(), 1e-7)


def deltas(m, x, b, target):
    rows = np.arange(len(x))
    return torch_out(m, x)[rows, target] - torch_out(m, b)[rows, target]


@pytest.mark.peers
def test_peers_captum_deeplift_linear_resampling():
    """Upsample (nearest) and the adaptive average pooling are linear: Captum's gradient there is
    the linear rule, its ReLU Rescale is relprop's; max pooling is Captum's MaxPool2d rule."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3), nn.Linear(4 * 15, 3)
            self.r1, self.r2, self.up = nn.ReLU(), nn.ReLU(), nn.Upsample(scale_factor=2)
            self.pool = nn.AdaptiveAvgPool2d((3, 5))

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.r2(self.c2(self.up(self.r1(self.c1(x)))))), 1))

    m, x = seeded(M(), 5).double(), inputs(MIN)
    net, target, b = import_torch(m, x), np.array([0, 1, 2]), 0.3 * inputs(MIN, seed=2)
    r = rp.attribute(net, x, "deeplift.rescale", target=target, baseline=b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DeepLift(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b), target=torch.as_tensor(target))
    assert_close(r, ref.detach().numpy(), 1e-9)


@pytest.mark.parametrize("name", list(MODELS))
def test_properties_deeplift_summation_to_delta(name):
    m, x = model(name), inputs(MIN)
    net, target, b = import_torch(m, x), np.array([0, 2, 1]), 0.3 * inputs(MIN, seed=3)
    r = rp.attribute(net, x, "deeplift.rescale", target=target, baseline=b)
    np.testing.assert_allclose(r.reshape(len(x), -1).sum(1), deltas(m, x, b, target), rtol=1e-8, atol=1e-10)


def layernorm_deeplift_numpy(gz, z, z0, gamma, eps=1e-5):
    """The LayerNorm DeepLIFT multiplier, one sample and one output at a time in plain loops:
    y_i = gamma_i c_i s + beta_i; each output's change Dy_i is split over the inputs j by the linear
    rule (c = x - mean), the Shapley product split of c_i * s and the Rescale of s = (var + eps)^-1/2
    with Dvar = mean((c + c0) Dc)."""
    n, m = z.shape
    out = np.zeros_like(z)
    for r in range(n):
        c, c0 = z[r] - z[r].mean(), z0[r] - z0[r].mean()
        var, var0 = (c ** 2).mean(), (c0 ** 2).mean()
        s, s0 = 1 / np.sqrt(var + eps), 1 / np.sqrt(var0 + eps)
        k = (s - s0) / (var - var0)
        for i in range(m):
            for j in range(m):
                dc_dx = (1.0 if i == j else 0.0) - 1.0 / m  # Dc_i per unit Dx_j (linear)
                dvar_dx = sum((c[t] + c0[t]) / m * ((1.0 if t == j else 0.0) - 1.0 / m) for t in range(m))
                dy = gamma[i] * ((s + s0) / 2 * dc_dx + (c[i] + c0[i]) / 2 * k * dvar_dx)
                out[r, j] += gz[r, i] * dy
    return out


def test_reference_deeplift_mul_shapley_and_layernorm_numpy():
    """Mul: m_a = (b + b0) / 2, m_b = (a + a0) / 2; LayerNorm: ``layernorm_deeplift_numpy``;
    written out in numpy on a two-branch net a = W1 x, b = LN(W2 x), s = w3 . (a * b)."""
    rng = np.random.default_rng(4)
    w1, w2, w3 = rng.standard_normal((5, 6)), rng.standard_normal((5, 6)), rng.standard_normal((1, 5))
    gamma, beta = rng.standard_normal(5), rng.standard_normal(5)
    net = rp.Graph([rp.Node("a", rp.Dense(w1), ("input",)), rp.Node("z", rp.Dense(w2), ("input",)),
                    rp.Node("b", rp.LayerNorm(5, gamma, beta), ("z",)), rp.Node("m", rp.Mul(), ("a", "b")),
                    rp.Node("s", rp.Dense(w3), ("m",))])
    x, x0 = rng.standard_normal((4, 6)), 0.2 * rng.standard_normal((4, 6))

    def ln(z):
        mu, var = z.mean(1, keepdims=True), z.var(1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-5) * gamma + beta

    a, a0, z, z0 = x @ w1.T, x0 @ w1.T, x @ w2.T, x0 @ w2.T
    b, b0 = ln(z), ln(z0)
    g = np.broadcast_to(w3, a.shape)
    ma, mb = g * (b + b0) / 2, g * (a + a0) / 2
    mz = layernorm_deeplift_numpy(mb, z, z0, gamma)
    want = (ma @ w1 + mz @ w2) * (x - x0)
    r = rp.attribute(net, x, "deeplift.rescale", target=0, baseline=x0)
    np.testing.assert_allclose(r, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(r.sum(1), ((a * b - a0 * b0) @ w3.T)[:, 0], rtol=1e-10)


# -- LRP ------------------------------------------------------------------------------------------------
def zennit_epsilon(m, x, target, eps, extra=()):
    """Zennit's Epsilon on Conv/Linear, Pass on activations, Norm on (adaptive) average pooling."""
    from zennit import rules as zr
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite
    from zennit.types import Activation, AvgPool, Convolution

    comp = LayerMapComposite([(Activation, zr.Pass()), (AvgPool, zr.Norm()), *extra,
                              (Convolution, zr.Epsilon(eps)), (nn.Linear, zr.Epsilon(eps))])
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    tgt = torch.as_tensor(target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=m, composite=comp) as attributor:
            _, rel = attributor(xt, lambda out: F.one_hot(tgt, out.shape[1]).to(out.dtype) * out.detach())
    return rel.detach().numpy()


@pytest.mark.peers
def test_peers_zennit_adaptive_pools_nearest_upsample_and_norm_pass():
    """Zennit: Norm on AdaptiveAvgPool2d (its AvgPool type), the gradient on AdaptiveMaxPool2d and
    nearest upsampling (winner-takes-all / copies summed), Pass on LayerNorm. (Zennit 0.5.1's Pass
    cannot hook ``nn.GroupNorm``: its backward hook returns three values where torch expects one;
    GroupNorm's identity rule is checked by conservation below.)"""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3), nn.Linear(4 * 15 + 36, 3)
            self.r1, self.r2, self.up = nn.ReLU(), nn.ReLU(), nn.Upsample(scale_factor=2)
            self.ln = nn.LayerNorm((4, 14, 14))
            self.avg, self.max = nn.AdaptiveAvgPool2d((3, 5)), nn.AdaptiveMaxPool2d(3)

        def forward(self, x):
            h = self.ln(self.r2(self.c2(self.up(self.r1(self.c1(x))))))
            return self.fc(torch.cat([torch.flatten(self.avg(h), 1), torch.flatten(self.max(h), 1)], 1))

    m, x = seeded(M(), 9).double(), inputs(MIN)
    net, target = import_torch(m, x), np.array([0, 1, 2])
    from zennit import rules as zr

    ref = zennit_epsilon(m, x, target, 1e-6, [(nn.LayerNorm, zr.Pass())])
    r = rp.attribute(net, x, "lrp.epsilon", target=target, epsilon=1e-6)
    assert_close(r, ref, 1e-6)


def test_reference_lrp_bilinear_upsample_and_layernorm_linear_numpy():
    """z-rule on the bilinear map and LayerNorm's "linear" treatment, written out in numpy."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5))
    gamma, beta, w = rng.standard_normal((4, 5)), rng.standard_normal((4, 5)), rng.standard_normal((1, 3 * 7 * 10))
    net = rp.Sequential(rp.LayerNorm((4, 5), gamma, beta, lrp_rule="linear"),
                        rp.Upsample(size=(7, 10), mode="bilinear"), rp.Flatten(), rp.Dense(w))
    eps = 1e-6  # the z-rule stabilizer of pooling layers (rp.attribute's pool_eps default)
    stab = lambda z: z + eps * np.where(z >= 0, 1.0, -1.0)  # noqa: E731
    mu, sd = x.mean((2, 3), keepdims=True), np.sqrt(x.var((2, 3), keepdims=True) + 1e-5)
    y1 = (x - mu) / sd * gamma + beta
    # the bilinear matrix from torch itself (interpolating the unit vectors)
    eye_h = F.interpolate(torch.eye(4, dtype=torch.float64)[:, None, :, None].expand(4, 1, 4, 5)[:, :, :, :1]
                          .expand(4, 1, 4, 5).contiguous(), size=(7, 10), mode="bilinear")[:, 0, :, 0].numpy().T
    eye_w = F.interpolate(torch.eye(5, dtype=torch.float64)[:, None, None, :].expand(5, 1, 4, 5).contiguous(),
                          size=(7, 10), mode="bilinear")[:, 0, 0, :].numpy().T
    y2 = np.einsum("ih,nchw,jw->ncij", eye_h, y1, eye_w)
    R2 = (y2.reshape(2, -1) * w[0]).reshape(y2.shape)  # start s_c e_c through the Dense: z-rule, no bias
    R1 = y1 * np.einsum("ih,ncij,jw->nchw", eye_h, R2 / stab(y2), eye_w)
    R0 = (gamma * x / sd) * R1 / stab(y1)
    r = rp.attribute(net, x, "lrp.epsilon", target=0, epsilon=1e-12)
    np.testing.assert_allclose(r, R0, rtol=1e-7, atol=1e-12)


def test_properties_lrp_conserves_through_mul_groupnorm_upsample():
    """Without biases, LRP-0 conserves through the z-rule (resampling), the identity rule (norms) and
    the Mul (all relevance to the signal branch, none to the gate): sum R = s_c."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.f1, self.f2 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Linear(4, 2), nn.Linear(2, 4)
            self.gn, self.fc = nn.GroupNorm(2, 4, affine=False), nn.Linear(4 * 25, 3, bias=False)

        def forward(self, x):
            h = self.gn(F.relu(self.c(x)))
            g = torch.sigmoid(self.f2(F.relu(self.f1(h.mean((2, 3)))))).view(-1, 4, 1, 1)
            h = F.interpolate(h * g, scale_factor=2, mode="bilinear", align_corners=True)
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, (5, 5)), 1))

    m, x = seeded(M(), 3).double(), inputs(MIN)
    net, target = import_torch(m, x), np.array([0, 1, 2])
    r = rp.attribute(net, x, "lrp.z", target=target)
    scores = torch_out(m, x)[np.arange(3), target]
    # up to what the z-rule stabilizer (1e-6 sign(z)) of the two resampling layers absorbs where the
    # mixed-sign group-normalized values nearly cancel
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), scores, rtol=1e-4)
    # the gate branch gets nothing: only the conv path carries relevance; the Mul's rule alone
    mul = next(n for n in net.nodes if n.layer.kind == "Mul")
    assert mul.layer.signal_input((4, 8, 8), (4, 1, 1)) == 0 and mul.layer.signal_input((4, 1, 1), (4, 8, 8)) == 1


# -- the GPU code path (host-emulated device), save / load --------------------------------------------
def all_layers_net(dtype=np.float64):
    rng = np.random.default_rng(12)
    r = lambda *s: rng.standard_normal(s).astype(dtype)  # noqa: E731
    nodes = [rp.Node("c", rp.Conv2d(r(4, 3, 3, 3), r(4), padding=1), ("input",)),
             rp.Node("gn", rp.GroupNorm(2, r(4), r(4)), ("c",)),
             rp.Node("ln", rp.LayerNorm((4, 6, 6), r(4, 6, 6), r(4, 6, 6), lrp_rule="linear"), ("gn",)),
             rp.Node("gap", rp.GlobalAvgPool2d(), ("ln",)),
             rp.Node("sig", rp.Sigmoid(), ("gap",)),
             rp.Node("mul", rp.Mul(), ("ln", "sig")),
             rp.Node("up", rp.Upsample(scale_factor=1.5, mode="bilinear"), ("mul",)),
             rp.Node("upn", rp.Upsample(size=(9, 9)), ("mul",)),
             rp.Node("cat", rp.Concat(1), ("up", "upn")),
             rp.Node("amax", rp.AdaptiveMaxPool2d((4, 3)), ("cat",)),
             rp.Node("aavg", rp.AdaptiveAvgPool2d((2, 5)), ("amax",)),
             rp.Node("f", rp.Flatten(), ("aavg",)),
             rp.Node("d", rp.Dense(r(3, 80), r(3)), ("f",))]
    return rp.Graph(nodes, input_shape=(3, 6, 6))


@pytest.mark.parametrize("method,params", [("gradient", {}), ("integrated_gradients", {"steps": 4}),
                                           ("deeplift.rescale", {"baseline": 0.1}), ("lrp.epsilon", {})])
def test_reference_device_path_matches_host(method, params):
    net = all_layers_net()
    x = np.random.default_rng(1).standard_normal((3, 3, 6, 6))
    host = rp.attribute(net, x, method, target=1, **params)
    dev = fd.attribute_on_device(net, x, method, target=1, **params)
    np.testing.assert_allclose(dev, host, rtol=1e-12, atol=1e-14)


def test_reference_save_load_round_trip(tmp_path):
    net = all_layers_net(np.float32)
    path = tmp_path / "extra.npz"
    rp.save(net, str(path))
    back = rp.load(str(path))
    assert [repr(n.layer) for n in back.nodes] == [repr(n.layer) for n in net.nodes]
    x = np.random.default_rng(2).standard_normal((4, 3, 6, 6)).astype(np.float32)
    assert_blas_close(back(x), net(x))
    for method in ("gradient", "lrp.epsilon"):
        assert_blas_close(rp.attribute(back, x, method, target=2), rp.attribute(net, x, method, target=2))


# -- ONNX ------------------------------------------------------------------------------------------------
class OnnxNet(nn.Module):
    """SE gating (Mul of two computed tensors), LayerNorm, Upsample; the opset-17 export keeps them
    as Mul, LayerNormalization and Resize."""

    def __init__(self, mode, align_corners):
        super().__init__()
        self.c, self.f1, self.f2 = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 4), nn.Linear(4, 8)
        self.ln, self.fc = nn.LayerNorm([8, 6, 6]), nn.Linear(8 * 144, 5)
        self.mode, self.ac = mode, align_corners

    def forward(self, x):
        h = F.relu(self.c(x))
        g = torch.sigmoid(self.f2(F.relu(self.f1(h.mean((2, 3)))))).view(-1, 8, 1, 1)
        u = F.interpolate(self.ln(h * g), scale_factor=2, mode=self.mode, align_corners=self.ac)
        return self.fc(u.flatten(1))


@pytest.mark.parametrize("mode,ac", [("nearest", None), ("bilinear", False), ("bilinear", True)])
def test_reference_onnx_opset17_matches_onnxruntime_and_torch(mode, ac, tmp_path):
    m, x = seeded(OnnxNet(mode, ac), 7), inputs((3, 6, 6), n=2, dtype=np.float32)
    path = tmp_path / "m.onnx"
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.from_numpy(x),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    net = rp.from_onnx(path)
    kinds = [n.layer.kind for n in net.nodes]
    assert {"Mul", "LayerNorm", "Upsample"} <= set(kinds), kinds
    x3 = inputs((3, 6, 6), n=3, seed=4, dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_close(net(x3), sess.run(None, {"x": x3})[0], 1e-5)
    assert_close(net(x3), torch_out(m, x3), 1e-5)


# -- errors ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make,match", [
    (lambda: rp.AdaptiveAvgPool2d(0), "output_size must be >= 1"),
    (lambda: rp.AdaptiveMaxPool2d((2, 2, 2)), "int or a pair"),
    (lambda: rp.Upsample(), "exactly one of size and scale_factor"),
    (lambda: rp.Upsample(size=4, scale_factor=2), "exactly one of size and scale_factor"),
    (lambda: rp.Upsample(scale_factor=2, mode="bicubic"), "mode must be one of"),
    (lambda: rp.Upsample(scale_factor=2, align_corners=True), "needs mode='bilinear'"),
    (lambda: rp.Upsample(scale_factor=-1.0), "scale_factor must be > 0"),
    (lambda: rp.Upsample(scale_factor=2, mode="bilinear", align_corners=1), "align_corners must be a bool"),
    (lambda: rp.LayerNorm((4, 5), np.ones((5, 4))), "normalized_shape"),
    (lambda: rp.LayerNorm(4, eps=0.0), "eps must be a finite number > 0"),
    (lambda: rp.LayerNorm(4, lrp_rule="z"), "lrp_rule must be one of"),
    (lambda: rp.GroupNorm(3, np.ones(4)), "equal groups"),
    (lambda: rp.GroupNorm(2, np.ones(4), np.ones(3)), "bias must have weight's shape"),
    (lambda: rp.Mul(signal=2), "signal must be None, 0 or 1"),
])
def test_errors_bad_hyper_parameters(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_errors_shapes_are_checked_before_any_kernel():
    with pytest.raises(ValueError, match="trailing dims"):
        rp.Sequential(rp.LayerNorm(5), rp.Flatten()).infer_shapes((3, 4, 4))
    with pytest.raises(ValueError, match="broadcastable"):
        rp.Graph([rp.Node("a", rp.Identity(), ("input",)), rp.Node("p", rp.AvgPool2d(2), ("input",)),
                  rp.Node("m", rp.Mul(), ("a", "p"))]).infer_shapes((2, 4, 4))
    with pytest.raises(ValueError, match="equal groups"):
        rp.Sequential(rp.GroupNorm(2, np.ones(1))).infer_shapes((1, 3, 3))


@pytest.mark.parametrize("fn,match", [
    (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), "mode='bicubic' is not supported"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bilinear", antialias=True), "antialias"),
    (lambda x: F.interpolate(x, scale_factor=1.5, recompute_scale_factor=True), "recompute_scale_factor"),
    (lambda x: F.adaptive_max_pool2d(x, 2, return_indices=True)[0], "return_indices"),
    (lambda x: x * 2.0, "multiplying by"),
])
def test_errors_torch_unsupported_forms_name_the_op(fn, match):
    m = Alone(Fn(fn), fn(torch.zeros(1, 4, 7, 9)).numel()).eval()
    with pytest.raises(ValueError, match=match):
        rp.from_torch(m, torch.randn(2, 3, 7, 9))


def test_errors_load_refuses_bad_layernorm_arrays(tmp_path):
    """A file whose LayerNorm weight does not match normalized_shape is refused on load."""
    import json
    import zipfile

    path = tmp_path / "ln.npz"
    rp.save(rp.Graph([rp.Node("ln", rp.LayerNorm(4, np.ones(4), np.zeros(4)), ("input",))], input_shape=(3, 4)),
            str(path))
    with zipfile.ZipFile(path) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    header = json.loads(np.load(io.BytesIO(entries["__graph__.npy"])).item())
    header["nodes"][0]["hyper"]["normalized_shape"] = [5]
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(header)))
    entries["__graph__.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as z:
        for n, data in entries.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="normalized_shape"):
        rp.load(str(path))


def test_errors_onnx_resize_modes_outside_torchs_name_the_node():
    from onnx import TensorProto, helper, numpy_helper

    for attrs, match in (({"mode": "cubic"}, r"'rs' \(Resize\).*mode='cubic'"),
                         ({"mode": "nearest", "coordinate_transformation_mode": "half_pixel"},
                          r"'rs' \(Resize\).*asymmetric, floor"),
                         ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"},
                          r"'rs' \(Resize\).*tf_crop_and_resize")):
        nodes = [helper.make_node("Resize", ["x", "", "scales"], ["r"], name="rs", **attrs),
                 helper.make_node("Flatten", ["r"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 72])],
                              [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
        model_ = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        with pytest.raises(ValueError, match=match):
            rp.from_onnx(model_)


@pytest.mark.peers
def test_peers_captum_deeplift_mul_is_gradient_there():
    """Documents Captum 0.9: ``*`` has no module to hook, so its DeepLift takes the gradient at x
    through the product -- (x - x0) * grad f(x) on a net whose only nonlinearity is the product,
    which misses summation-to-delta; relprop's Shapley split keeps it."""

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.out = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 2)

        def forward(self, x):
            return self.out(self.a(x) * self.b(x))

    m = seeded(M(), 8).double()
    x, b = inputs((6,), n=4, seed=5), inputs((6,), n=4, seed=6)
    net, target = import_torch(m, x), np.array([0, 1, 0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        captum = DeepLift(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                       target=torch.as_tensor(target)).detach().numpy()
    assert_close(captum, (x - b) * torch_grad(m, x, target), 1e-10)
    r = rp.attribute(net, x, "deeplift.rescale", target=target, baseline=b)
    delta = deltas(m, x, b, target)
    np.testing.assert_allclose(r.sum(1), delta, rtol=1e-10)
    assert np.max(np.abs(captum.sum(1) - delta)) > 1e-3 * np.max(np.abs(delta))


def test_nearest_upsampling_indices_equal_torch_on_every_size_pair():
    """torch's nearest source indices (floor(i * n_in / n_out) from sizes; float32 floorf(i / s)
    from a scale factor) on every (n_in < 40, n_out < 80) pair and a few scale factors."""
    import torch

    from relprop.core.layers import _resize_matrix

    for n_in in range(1, 40):
        src = np.arange(n_in, dtype=np.float64)
        for n_out in range(1, 80):
            want = torch.nn.functional.interpolate(torch.from_numpy(src).reshape(1, 1, n_in), size=n_out,
                                                   mode="nearest").numpy().ravel()
            np.testing.assert_array_equal(_resize_matrix(n_in, n_out, "nearest", False, None) @ src, want)
        for sf in (0.7, 1.3, 1.5, 2.0, 2.2, 3.0):
            if int(n_in * sf) < 1:
                continue
            want = torch.nn.functional.interpolate(torch.from_numpy(src).reshape(1, 1, n_in), scale_factor=sf,
                                                   mode="nearest").numpy().ravel()
            np.testing.assert_array_equal(_resize_matrix(n_in, len(want), "nearest", False, sf) @ src, want)
