"""The building blocks of the CNN families users bring (issue 15), written here in torch because
torchvision is not importable: each block between a small stem and a GAP + Linear head, random
weights (``torch.manual_seed``; BatchNorm statistics and norm affines drawn too, so the folding
is exercised), eval mode, imported with ``rp.from_torch`` and from ONNX (opsets 17 and 20).

Blocks:

* ``mbv2``: MobileNetV2 inverted residual (Sandler et al. 2018, Fig. 4b / Table 1): 1x1 expand,
  BN, ReLU6, depthwise 3x3, BN, ReLU6, 1x1 project, BN, residual add;
* ``mbv3``: MobileNetV3 block (Howard et al. 2019, Fig. 4): as mbv2 with Hardswish and a
  squeeze-and-excitation gate (GAP, 1x1, ReLU, 1x1, Hardsigmoid) multiplied onto the depthwise
  output;
* ``effnet``: EfficientNet-B0 MBConv (Tan & Le 2019): SiLU, depthwise 3x3, SE with SiLU and a
  sigmoid gate, 1x1 project, residual;
* ``regnet``: RegNet X block (Radosavovic et al. 2020): 1x1, grouped 3x3 (groups=4), 1x1, BN and
  ReLU after each, residual, ReLU;
* ``convnext``: ConvNeXt-style block (Liu et al. 2022): depthwise 7x7, GroupNorm(1, C) (the
  channels-first stand-in for LayerNorm: the model has no ``permute``), 1x1 expand x4, GELU, 1x1
  project, residual;
* ``unet_nearest`` / ``unet_bilinear``: a U-Net step (Ronneberger et al. 2015) without
  ConvTranspose: conv, AvgPool 2x2, conv, Upsample x2 (nearest / bilinear), Concat with the skip,
  conv.

What each reference is:

* forward and gradient: torch (autograd), <= 1e-5 x max|torch| in float32, 1e-10 in float64;
  ONNX: onnxruntime on the TorchScript exporter's graph, <= 1e-5 (float32);
* integrated gradients: Captum ``IntegratedGradients(method="gausslegendre")``, same steps,
  float64, 1e-7 (Captum casts its quadrature weights to float32);
* DeepLIFT (rescale): Captum ``DeepLift`` on the blocks whose every nonlinearity has a Captum
  rule -- ReLU natively, ReLU6 with Captum's own ``nonlinear`` (Rescale) registered for it,
  since Captum 0.9 looks module types up exactly and ReLU6 subclasses Hardtanh. Captum cannot
  hook the SE ``*`` and GroupNorm: there it backpropagates the gradient at x, which misses
  summation-to-delta (shown below); on ``mbv3``, ``effnet`` and ``convnext`` relprop's
  summation-to-delta is asserted instead (relprop's Mul Shapley split and norm decomposition are
  checked against numpy formulas in test_models_layers_extra.py);
* LRP (``EpsilonPlusFlat`` and epsilon): Zennit 0.5.1 with ``SequentialMergeBatchNorm`` (relprop
  folds BatchNorm on import likewise), ``Pass`` on every activation (Zennit's ``Activation`` type
  holds ReLU6, Hardswish, Hardsigmoid, SiLU, GELU, Sigmoid), ``Norm`` on average pools and on the
  residual sum. Where Zennit cannot apply relprop's documented treatment, the Zennit reference
  model states it in torch, with the same forward values:

  - BatchNorm: Zennit 0.5.1's merge leaves running_var = 1 and the BN's eps behind, i.e. a scaling
    by (1 + eps)^-1/2 instead of the identity (a few 1e-6 relative on these blocks, shown in
    ``test_peers_zennit_merged_batchnorm_is_not_the_identity``); the reference moves eps into the
    running variance (same forward) so that Zennit's merge is exact, as relprop's fold is;
  - residual ``+``: ``zennit.layer.Sum`` over ``torch.stack`` so that Zennit's Norm rule hooks it;
  - SE ``*``: a functional op Zennit cannot hook; its plain backward would scale the relevance by
    the gate and send relevance into the gate branch. relprop gives all relevance to the signal,
    the gate held constant (Arras et al. 2017); in Zennit's relevance-as-gradient convention that
    is ``s + (s * g - s).detach()`` (identity backward to ``s``, none to ``g``). The plain Zennit
    result is shown to differ;
  - GroupNorm(1, C): Zennit 0.5.1's ``Pass`` cannot hook ``nn.GroupNorm`` (its hook returns three
    gradients where torch expects one); the reference uses the equal ``nn.LayerNorm((C, H, W))``
    (weights broadcast over H, W), which Pass hooks -- relprop's identity rule;
  - bilinear Upsample: relprop applies the z-rule (as on every linear resampling); Zennit's
    ``Norm`` is that rule for any module and is mapped onto ``nn.Upsample`` there. Nearest
    upsampling keeps Zennit's plain gradient (copies summed), which the z-rule equals.

  Independently of any peer, LRP-0 on bias-free versions of every block conserves the score
  (1e-8, with the pools' z-rule stabilizer at 1e-12).

* ONNX: every block imports at opsets 17 and 20 with the torch import's layer kinds (the
  ConvNeXt block's GroupNorm, exported by torch as Reshape - InstanceNormalization - Reshape -
  Mul - Add, imports as one GroupNorm node; tests/test_import_onnx_norms.py covers that fusion).
"""
from __future__ import annotations

import copy
import warnings
from unittest import mock

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import captum.attr._core.deep_lift as deep_lift_mod
from captum.attr import DeepLift, IntegratedGradients

import relprop as rp
import torch_ref
from torch_ref import assert_close, export, import_torch, torch_out  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-10}
N, C, HW, CLASSES = 2, 8, 8, 5
TARGET = np.array([1, 3])


# -- the blocks ---------------------------------------------------------------------------------------
class Base(nn.Module):
    """``mode``: "plain" (what users write) or "zennit" (the Zennit reference's spelling of
    relprop's Add / Mul treatments, same forward values)."""

    mode = "plain"

    def add(self, a, b):
        if self.mode == "zennit":
            return self.sum(torch.stack([a, b], dim=-1))
        return a + b

    def gate(self, s, g):
        if self.mode == "zennit":
            return s + (s * g - s).detach()
        return s * g

    def head(self, h):
        return self.fc(torch.flatten(self.gap(h), 1))


def _sum():
    from zennit.layer import Sum

    return Sum()


class MBV2(Base):
    def __init__(self, t=3):
        super().__init__()
        e = C * t
        self.stem, self.stem_bn, self.stem_act = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU6()
        self.expand, self.bn1, self.act1 = nn.Conv2d(C, e, 1), nn.BatchNorm2d(e), nn.ReLU6()
        self.dw, self.bn2, self.act2 = nn.Conv2d(e, e, 3, padding=1, groups=e), nn.BatchNorm2d(e), nn.ReLU6()
        self.project, self.bn3 = nn.Conv2d(e, C, 1), nn.BatchNorm2d(C)
        self.sum, self.gap, self.fc = _sum(), nn.AdaptiveAvgPool2d(1), nn.Linear(C, CLASSES)

    def forward(self, x):
        x = self.stem_act(self.stem_bn(self.stem(x)))
        y = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        return self.head(self.add(x, self.bn3(self.project(y))))


class SEBlock(Base):
    """MobileNetV3 (``act=Hardswish, gate=Hardsigmoid, squeeze=ReLU``) or EfficientNet-B0 MBConv
    (``act=SiLU, gate=Sigmoid, squeeze=SiLU``)."""

    def __init__(self, act, squeeze, gate, t=3, r=4):
        super().__init__()
        e = C * t
        self.stem, self.stem_bn, self.stem_act = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), act()
        self.expand, self.bn1, self.act1 = nn.Conv2d(C, e, 1), nn.BatchNorm2d(e), act()
        self.dw, self.bn2, self.act2 = nn.Conv2d(e, e, 3, padding=1, groups=e), nn.BatchNorm2d(e), act()
        self.se_pool, self.se1, self.se_act = nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, e // r, 1), squeeze()
        self.se2, self.se_gate = nn.Conv2d(e // r, e, 1), gate()
        self.project, self.bn3 = nn.Conv2d(e, C, 1), nn.BatchNorm2d(C)
        self.sum, self.gap, self.fc = _sum(), nn.AdaptiveAvgPool2d(1), nn.Linear(C, CLASSES)

    def forward(self, x):
        x = self.stem_act(self.stem_bn(self.stem(x)))
        h = self.act2(self.bn2(self.dw(self.act1(self.bn1(self.expand(x))))))
        g = self.se_gate(self.se2(self.se_act(self.se1(self.se_pool(h)))))
        return self.head(self.add(x, self.bn3(self.project(self.gate(h, g)))))


class RegNet(Base):
    def __init__(self, w=16, groups=4):
        super().__init__()
        self.stem, self.stem_bn, self.stem_act = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU()
        self.a, self.bn1, self.act1 = nn.Conv2d(C, w, 1), nn.BatchNorm2d(w), nn.ReLU()
        self.b, self.bn2, self.act2 = nn.Conv2d(w, w, 3, padding=1, groups=groups), nn.BatchNorm2d(w), nn.ReLU()
        self.c, self.bn3 = nn.Conv2d(w, C, 1), nn.BatchNorm2d(C)
        self.sum, self.out_act = _sum(), nn.ReLU()
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(C, CLASSES)

    def forward(self, x):
        x = self.stem_act(self.stem_bn(self.stem(x)))
        y = self.bn3(self.c(self.act2(self.bn2(self.b(self.act1(self.bn1(self.a(x))))))))
        return self.head(self.out_act(self.add(x, y)))


class ConvNeXt(Base):
    def __init__(self, t=4):
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.dw, self.norm = nn.Conv2d(C, C, 7, padding=3, groups=C), nn.GroupNorm(1, C)
        self.pw1, self.act, self.pw2 = nn.Conv2d(C, t * C, 1), nn.GELU(), nn.Conv2d(t * C, C, 1)
        self.sum, self.gap, self.fc = _sum(), nn.AdaptiveAvgPool2d(1), nn.Linear(C, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.add(x, self.pw2(self.act(self.pw1(self.norm(self.dw(x)))))))


class UNet(Base):
    def __init__(self, up_mode):
        super().__init__()
        self.e1, self.bn1, self.r1 = nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU()
        self.down = nn.AvgPool2d(2)
        self.e2, self.r2 = nn.Conv2d(C, 2 * C, 3, padding=1), nn.ReLU()
        self.up = nn.Upsample(scale_factor=2, mode=up_mode)
        self.d, self.r3 = nn.Conv2d(3 * C, C, 3, padding=1), nn.ReLU()
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(C, CLASSES)

    def forward(self, x):
        s = self.r1(self.bn1(self.e1(x)))
        u = self.up(self.r2(self.e2(self.down(s))))
        return self.head(self.r3(self.d(torch.cat([u, s], 1))))


BLOCKS = {
    "mbv2": MBV2,
    "mbv3": lambda: SEBlock(nn.Hardswish, nn.ReLU, nn.Hardsigmoid),
    "effnet": lambda: SEBlock(nn.SiLU, nn.SiLU, nn.Sigmoid),
    "regnet": RegNet,
    "convnext": ConvNeXt,
    "unet_nearest": lambda: UNet("nearest"),
    "unet_bilinear": lambda: UNet("bilinear"),
}
NAMES = list(BLOCKS)
# every nonlinearity has a Captum DeepLift rule (ReLU6 via Captum's own ``nonlinear``)
CAPTUM_DEEPLIFT = ["mbv2", "regnet", "unet_nearest", "unet_bilinear"]


def build(name, dtype=torch.float64):
    torch.manual_seed(sum(map(ord, name)))
    m = BLOCKS[name]()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and norm affines
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                mod.weight.copy_(1 + 0.3 * torch.randn(mod.weight.shape, generator=g))
                mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.copy_(0.2 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))
    return m.to(dtype).eval()


def zennit_model(m):
    """The Zennit reference spelling (see the module docstring): Sum, the constant-gate Mul and
    GroupNorm(1, C) as the equal LayerNorm((C, H, W))."""
    z = copy.deepcopy(m)
    z.mode = "zennit"
    with torch.no_grad():
        for bn in z.modules():
            if isinstance(bn, nn.BatchNorm2d):
                # Zennit 0.5.1's merge leaves the BatchNorm as running_var = 1 with its eps, i.e. x /
                # sqrt(1 + eps), not the identity (5e-6 per BatchNorm at eps = 1e-5): move eps into
                # the variance (same forward, var + eps unchanged) so that the merged BN is exact.
                bn.running_var.add_(bn.eps)
                bn.eps = 0.0
    if isinstance(z, ConvNeXt):
        gn = z.norm
        ln = nn.LayerNorm((C, HW, HW), eps=gn.eps).to(gn.weight.dtype)
        with torch.no_grad():
            ln.weight.copy_(gn.weight[:, None, None].expand(C, HW, HW))
            ln.bias.copy_(gn.bias[:, None, None].expand(C, HW, HW))
        z.norm = ln  # same key: keeps the module order the canonizer and first-layer search read
    return z.eval()


def inputs(dtype=np.float64, seed=0, n=N):
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(dtype)


def baseline(dtype=np.float64):
    return 0.3 * inputs(dtype, seed=7)



def torch_grad(m, x, target=TARGET):
    return torch_ref.torch_grad(m, x, target)


ONNX_CASES = [(name, opset) for name in NAMES for opset in (17, 20)]


@pytest.mark.parametrize("name,opset", ONNX_CASES)
def test_reference_onnx_matches_onnxruntime_and_torch(name, opset):
    """The TorchScript exporter's graph: the same layer kinds as the torch import (the exporter
    folds BatchNorm, relprop's torch import does too); relprop's forward = onnxruntime = torch
    (float32), the imported net's gradient = torch autograd, and its EpsilonPlusFlat relevance
    that of the torch import (which test_peers_zennit_lrp checks against Zennit)."""
    m, x = build(name, torch.float32), inputs(np.float32)
    data = export(m, x, opset)
    net = rp.from_onnx(data)
    via_torch = import_torch(m, x)
    assert sorted(n.layer.kind for n in net.nodes) == sorted(n.layer.kind for n in via_torch.nodes)
    x3 = inputs(np.float32, seed=4, n=3)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert_close(net(x3), sess.run(None, {"x": x3})[0], 1e-5, f"{name} opset {opset} vs onnxruntime")
    assert_close(net(x3), torch_out(m, x3), 1e-5, f"{name} opset {opset} vs torch")
    assert_close(rp.attribute(net, x, "gradient", target=TARGET), torch_grad(m, x), 1e-5,
                 f"{name} opset {opset} gradient")
    assert_close(relprop_lrp(net, x, "EpsilonPlusFlat"), relprop_lrp(via_torch, x, "EpsilonPlusFlat"), 1e-5,
                 f"{name} opset {opset} EpsilonPlusFlat")


# -- Captum ----------------------------------------------------------------------------------------------------
@pytest.mark.peers
@pytest.mark.parametrize("name", NAMES)
def test_peers_captum_integrated_gradients(name):
    m, x, b = build(name), inputs(), baseline()
    net = import_torch(m, x)
    r = rp.attribute(net, x, "integrated_gradients", target=TARGET, baseline=b, steps=16, scheme="gauss_legendre")
    ref = IntegratedGradients(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                           target=torch.as_tensor(TARGET), n_steps=16, method="gausslegendre")
    assert_close(r, ref.detach().numpy(), 1e-7, f"{name} IG")


def captum_deeplift(m, x, b, rescale_types=(nn.ReLU6,)):
    """Captum's DeepLift, with Captum's own Rescale rule (``nonlinear``) registered for
    ``rescale_types`` (Captum 0.9 matches module types exactly)."""
    with warnings.catch_warnings(), mock.patch.dict(deep_lift_mod.SUPPORTED_NON_LINEAR,
                                                    {t: deep_lift_mod.nonlinear for t in rescale_types}):
        warnings.simplefilter("ignore")
        ref = DeepLift(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                    target=torch.as_tensor(TARGET))
    return ref.detach().numpy()


def deltas(m, x, b):
    rows = np.arange(len(x))
    return torch_out(m, x)[rows, TARGET] - torch_out(m, b)[rows, TARGET]


@pytest.mark.peers
@pytest.mark.parametrize("name", CAPTUM_DEEPLIFT)
def test_peers_captum_deeplift(name):
    m, x, b = build(name), inputs(), baseline()
    net = import_torch(m, x)
    r = rp.attribute(net, x, "deeplift.rescale", target=TARGET, baseline=b)
    assert_close(r, captum_deeplift(m, x, b), 1e-8, f"{name} DeepLift")


@pytest.mark.parametrize("name", NAMES)
def test_properties_deeplift_summation_to_delta(name):
    m, x, b = build(name), inputs(), baseline()
    r = rp.attribute(import_torch(m, x), x, "deeplift.rescale", target=TARGET, baseline=b)
    np.testing.assert_allclose(r.reshape(len(x), -1).sum(1), deltas(m, x, b), rtol=1e-9, atol=1e-12)


@pytest.mark.peers
@pytest.mark.parametrize("name", ["mbv3", "effnet", "convnext"])
def test_peers_captum_deeplift_falls_back_to_the_gradient(name):
    """Documents Captum 0.9 on the SE ``*`` and GroupNorm (no hook: the gradient at x there), with
    its Rescale registered for every activation type: its DeepLift misses summation-to-delta (by
    more than 1e-3 of the delta through GroupNorm; by 1e-6 to 1e-4 through the SE gates, which
    vary little between x and the baseline here), where relprop's (above) meets it to 1e-9."""
    m, x, b = build(name), inputs(), baseline()
    acts = (nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU)
    captum = captum_deeplift(m, x, b, acts)
    delta = deltas(m, x, b)
    miss = np.max(np.abs(captum.reshape(len(x), -1).sum(1) - delta)) / np.max(np.abs(delta))
    assert miss > {"mbv3": 1e-6, "effnet": 1e-6, "convnext": 1e-3}[name], miss


# -- Zennit ------------------------------------------------------------------------------------------------------
def zennit_composite(kind, extra=()):
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.types import Convolution

    canon = [SequentialMergeBatchNorm()]
    extra = [(nn.LayerNorm, zr.Pass()), *extra]
    if kind == "EpsilonPlusFlat":
        return zc.EpsilonPlusFlat(layer_map=extra, canonizers=canon)
    return zc.LayerMapComposite(extra + zc.layer_map_base() + [(Convolution, zr.Epsilon(1e-6)),
                                                               (nn.Linear, zr.Epsilon(1e-6))], canonizers=canon)


def zennit_lrp(m, x, composite):
    from zennit.attribution import Gradient

    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    tgt = torch.as_tensor(TARGET)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=m, composite=composite) as attributor:
            _, rel = attributor(xt, lambda out: F.one_hot(tgt, out.shape[1]).to(out.dtype) * out.detach())
    return rel.detach().numpy()


def relprop_lrp(net, x, kind):
    if kind == "EpsilonPlusFlat":
        return rp.attribute(net, x, "lrp", target=TARGET, rules=rp.composites.EpsilonPlusFlat())
    return rp.attribute(net, x, "lrp.epsilon", target=TARGET, epsilon=1e-6)


@pytest.mark.peers
@pytest.mark.parametrize("kind", ["EpsilonPlusFlat", "epsilon"])
@pytest.mark.parametrize("name", NAMES)
def test_peers_zennit_lrp(name, kind):
    from zennit import rules as zr

    m, x = build(name), inputs()
    r = relprop_lrp(import_torch(m, x), x, kind)
    extra = [(nn.Upsample, zr.Norm())] if name == "unet_bilinear" else []
    ref = zennit_lrp(zennit_model(m), x, zennit_composite(kind, extra))
    assert_close(r, ref, 1e-8, f"{name} {kind}")


@pytest.mark.peers
def test_peers_zennit_merged_batchnorm_is_not_the_identity():
    """Documents Zennit 0.5.1's ``MergeBatchNorm``: the BatchNorm it leaves behind has running_var 1
    and its own eps, so it scales by (1 + eps)^-1/2 (1 - 5e-6 at eps = 1e-5) instead of passing
    values through; with three BatchNorms in the residual branch of mbv2 the relevance moves by a
    few 1e-6 relative. relprop's fold is exact; the reference above removes the scaling."""
    from zennit.canonizers import SequentialMergeBatchNorm

    m, x = build("mbv2"), inputs()
    bn = copy.deepcopy(m.bn1)
    canon = SequentialMergeBatchNorm()
    assert len(canon.apply(nn.Sequential(copy.deepcopy(m.expand), bn))) == 1  # merged into the copy
    z = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(1, 1, 7, 1).expand(1, bn.num_features, 7, 1)
    with torch.no_grad():
        np.testing.assert_allclose(bn(z).numpy(), z.numpy() / np.sqrt(1 + bn.eps), rtol=1e-14)
    zmodel = copy.deepcopy(m)
    zmodel.mode = "zennit"
    plain = zennit_lrp(zmodel, x, zennit_composite("EpsilonPlusFlat"))
    r = relprop_lrp(import_torch(m, x), x, "EpsilonPlusFlat")
    err = np.max(np.abs(plain - r)) / np.max(np.abs(r))
    assert 1e-7 < err < 1e-4, err


@pytest.mark.peers
@pytest.mark.parametrize("name", ["mbv3", "effnet"])
def test_peers_zennit_plain_mul_differs(name):
    """Documents why the reference spells the SE gate out: plain Zennit backpropagates the product's
    gradient (relevance scaled by the gate, and relevance into the gate branch), which is not the
    literature's treatment relprop applies."""
    m, x = build(name), inputs()
    r = relprop_lrp(import_torch(m, x), x, "epsilon")
    z = zennit_model(m)
    z.gate = lambda s, g: s * g  # only the Mul spelled plainly; Sum, BatchNorm as in the reference
    plain = zennit_lrp(z, x, zennit_composite("epsilon"))
    assert np.max(np.abs(plain - r)) > 1e-3 * np.max(np.abs(r))


def bias_free(m):
    """Every conv / linear bias zero and BatchNorm centred (running mean 0, shift 0): the folded net
    has no biases, so LRP-0 must conserve the score exactly (up to the pools' stabilizer)."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)) and mod.bias is not None:
                mod.bias.zero_()
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.bias.zero_()
    return m


@pytest.mark.parametrize("name", NAMES)
def test_properties_lrp_conserves_without_biases(name):
    """Independent of any peer: LRP-0 on the bias-free block conserves, sum_i R_i = s_c, through
    the residual Add (z-rule), the norms (identity), the resampling and pools (z-rule), the concat,
    and the SE Mul -- all relevance to the signal, none lost to (or created by) the gate."""
    m, x = bias_free(build(name)), inputs()
    # the composite's stabilizer is the z-rule's on the pools / resampling: at Zennit's 1e-6 it
    # absorbs ~1e-5 of these small scores; at 1e-12 what remains is rounding
    z = rp.rules.Epsilon(1e-12)
    rules = rp.composites.Composite({"Conv2d": z, "Dense": z}, stabilizer=1e-12)
    r = rp.attribute(import_torch(m, x), x, "lrp", target=TARGET, rules=rules)
    scores = torch_out(m, x)[np.arange(len(x)), TARGET]
    np.testing.assert_allclose(r.reshape(len(x), -1).sum(1), scores, rtol=1e-8)
