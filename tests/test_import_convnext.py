"""ConvNeXt's block as torchvision writes it (Liu et al. 2022, Fig. 4; torchvision's ``CNBlock``),
imported from torch (``rp.from_torch``) and from ONNX (the TorchScript exporter, opsets 17 and 20)
(issue 15, "models users bring").

``CNBlock`` below is torchvision's (``torchvision.models.convnext.CNBlock``, with its ``Permute``
and ``StochasticDepth`` modules) written out, because torchvision is not importable here::

    y = dwconv7x7(x)                              # Conv2d(C, C, 7, padding=3, groups=C)
    y = permute(y, [0, 2, 3, 1])                  # N, H, W, C
    y = Linear(4C, C)(GELU(Linear(C, 4C)(LayerNorm(C, eps=1e-6)(y))))
    y = permute(y, [0, 3, 1, 2])
    out = stochastic_depth(layer_scale * y) + x   # layer_scale (C, 1, 1); the identity in eval

between a stem (Conv2d(3, C, 4, stride=4), ConvNeXt's patchify stem without its norm) and a
GAP + Linear head; random weights (``torch.manual_seed``), the LayerNorm affine drawn away from
(1, 0) and the layer scale from U(0.5, 1.5) (torchvision initializes it to 1e-6, which would
hide the residual branch).

What relprop builds (the representation under test): the channels-last region imports channels
first -- LayerNorm(C) as ``rp.LayerNorm(axis=1)``, each ``Linear`` as a 1x1 ``rp.Conv2d`` with
weight ``W[:, :, None, None]`` -- and the layer scale is folded into the last 1x1 convolution
(``W' = gamma W``, ``b' = gamma b``): no node of its own, like a folded BatchNorm. Where a scale
cannot fold (it follows an activation) it is a depthwise 1x1 ``rp.Conv2d`` (``AffineBlock``).

What each reference is:

* forward and gradient: torch (autograd), <= 1e-5 x max|torch| in float32, 1e-10 in float64;
  the folded weights: numpy from the torch parameters;
* ONNX: onnxruntime on the exported graph and torch, <= 1e-5 (float32); the same layer kinds
  as the torch import; the gradient = torch autograd;
* integrated gradients: Captum ``IntegratedGradients(method="gausslegendre")``, same steps,
  float64, 1e-7 (Captum casts its quadrature weights to float32);
* DeepLIFT (rescale): summation-to-delta (Captum cannot hook LayerNorm and the functional
  ``*``: tests/test_models_blocks.py shows its gradient fallback there);
* LRP: Zennit 0.5.1, ``Pass`` on GELU and on ``nn.LayerNorm`` (relprop's identity rule),
  ``Norm`` on the average pool and on the residual sum (``zennit.layer.Sum``). Where Zennit cannot
  apply relprop's documented treatment, the reference model states it in torch, with the same
  forward values:

  - the layer scale: Zennit cannot hook the functional ``gamma * y``; its plain backward scales
    the relevance by gamma (shown to differ). relprop folds gamma into the last Linear (a 1x1
    conv); the reference folds it into that ``nn.Linear`` likewise (``W' = gamma W``,
    ``b' = gamma b``) and multiplies by ones;
  - the channels-last ``nn.Linear``: Zennit's ``EpsilonPlusFlat`` gives ``nn.Linear`` epsilon,
    relprop's gives the 1x1 ``Conv2d`` it becomes z+ (the composite maps layer kinds). The
    reference maps the two block Linears to ``ZPlus`` (a subclass keyed in the layer map); with
    relprop's rules given per layer (epsilon on the two 1x1 convs) the plain Zennit composite is
    matched too, and LRP-epsilon on every layer matches Zennit's epsilon on every layer: the
    1x1 conv is the Linear for each rule.
"""
from __future__ import annotations

import dataclasses
import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop as rp
import torch_ref
from torch_ref import assert_close, export, import_torch, torch_out  # noqa: E402

TOL = {np.float32: 1e-5, np.float64: 1e-10}
N, C, HW, CLASSES = 2, 16, 32, 5
TARGET = np.array([1, 3])


# -- torchvision's modules, verbatim (torchvision.ops.misc.Permute, torchvision.ops.StochasticDepth) ----
class Permute(nn.Module):
    def __init__(self, dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return torch.permute(x, self.dims)


def stochastic_depth(input, p, mode, training=True):  # noqa: A002 - torchvision's signature
    if p < 0.0 or p > 1.0:
        raise ValueError(f"drop probability has to be between 0 and 1, but got {p}")
    if mode not in ["batch", "row"]:
        raise ValueError(f"mode has to be either 'batch' or 'row', but got {mode}")
    if not training or p == 0.0:
        return input
    survival_rate = 1.0 - p
    size = [input.shape[0]] + [1] * (input.ndim - 1) if mode == "row" else [1] * input.ndim
    noise = torch.empty(size, dtype=input.dtype, device=input.device).bernoulli_(survival_rate)
    if survival_rate > 0.0:
        noise.div_(survival_rate)
    return input * noise


class StochasticDepth(nn.Module):
    def __init__(self, p, mode):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, input):  # noqa: A002
        return stochastic_depth(input, self.p, self.mode, self.training)


class CNBlock(nn.Module):
    """torchvision.models.convnext.CNBlock (norm_layer = LayerNorm(eps=1e-6))."""

    def __init__(self, dim, layer_scale, stochastic_depth_prob, act=nn.GELU):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim, bias=True),
            Permute([0, 2, 3, 1]),
            nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(in_features=dim, out_features=4 * dim, bias=True),
            act(),
            nn.Linear(in_features=4 * dim, out_features=dim, bias=True),
            Permute([0, 3, 1, 2]),
        )
        self.layer_scale = nn.Parameter(torch.ones(dim, 1, 1) * layer_scale)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, input):  # noqa: A002
        result = self.layer_scale * self.block(input)
        result = self.stochastic_depth(result)
        result += input
        return result


class AffineBlock(nn.Module):
    """The region's other forms: a LayerNorm without affine followed by an explicit ``* w + b``
    with (C,) parameters (a per-channel affine map after a norm: nothing to fold into), a Linear
    and SiLU, and a layer scale after the activation (cannot fold either: depthwise 1x1 convs)."""

    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.w, self.b = nn.Parameter(torch.rand(dim) + 0.5), nn.Parameter(0.2 * torch.randn(dim))
        self.pw, self.act = nn.Linear(dim, dim), nn.SiLU()
        self.gamma = nn.Parameter(torch.rand(1, dim, 1, 1) + 0.5)

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1)) * self.w + self.b
        y = self.act(self.pw(y)).permute(0, 3, 1, 2)
        return x + self.gamma * y


class Net(nn.Module):
    def __init__(self, block, dim=C):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)  # registered first: Zennit's first layer
        self.block = block
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(dim, CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(self.gap(self.block(self.stem(x))), 1))


ACTS = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}


def build(kind="gelu", dtype=torch.float64):
    torch.manual_seed(sum(map(ord, kind)))
    block = AffineBlock(C) if kind == "affine" else CNBlock(C, 1e-6, 0.1, ACTS[kind])
    m = Net(block)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if kind != "affine":
            ln = block.block[2]
            ln.weight.copy_(1 + 0.3 * torch.randn(C, generator=g))
            ln.bias.copy_(0.2 * torch.randn(C, generator=g))
            block.layer_scale.copy_(0.5 + torch.rand(C, 1, 1, generator=g))
    return m.to(dtype).eval()


def inputs(dtype=np.float64, seed=0, n=N):
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(dtype)


def baseline(dtype=np.float64):
    return 0.3 * inputs(dtype, seed=7)


def torch_grad(m, x, target=TARGET):
    return torch_ref.torch_grad(m, x, target)


def kinds(net):
    return [n.layer.kind for n in net.nodes]


# -- the representation ---------------------------------------------------------------------------------
def test_imports_channels_first_with_the_layer_scale_folded():
    """The block becomes stem, the depthwise 7x7, LayerNorm(axis=1), two 1x1 convs around GELU, the
    Add; the layer scale is in the second 1x1 conv's weight and bias (numpy from the torch
    parameters), not a node of its own."""
    m, x = build(), inputs()
    net = import_torch(m, x)
    assert kinds(net) == ["Conv2d", "Conv2d", "LayerNorm", "Conv2d", "GELU", "Conv2d", "Add", "GlobalAvgPool2d",
                          "Flatten", "Dense"], kinds(net)
    stem, dw, ln, pw1, _, pw2 = (n.layer for n in net.nodes[:6])
    assert dw.groups == C and ln.axis == 1 and ln.normalized_shape == (C,)
    blk = m.block.block
    gamma = m.block.layer_scale.detach().numpy().reshape(C)
    np.testing.assert_array_equal(pw1.weight, blk[3].weight.detach().numpy()[:, :, None, None])
    np.testing.assert_array_equal(pw1.bias, blk[3].bias.detach().numpy())
    w2 = blk[5].weight.detach().numpy()
    np.testing.assert_allclose(pw2.weight, (gamma[:, None] * w2)[:, :, None, None], rtol=1e-15)
    np.testing.assert_allclose(pw2.bias, gamma * blk[5].bias.detach().numpy(), rtol=1e-15)
    np.testing.assert_array_equal(ln.weight, blk[2].weight.detach().numpy())


def test_unfoldable_scales_are_depthwise_1x1_convs():
    """After a norm or an activation there is no convolution to fold into: ``* w + b`` becomes one
    depthwise 1x1 Conv2d (weight w, bias b: the add folds into the multiply's node), the layer
    scale after SiLU another (weight gamma, no bias)."""
    m, x = build("affine"), inputs()
    net = import_torch(m, x)
    assert kinds(net) == ["Conv2d", "Conv2d", "LayerNorm", "Conv2d", "Conv2d", "SiLU", "Conv2d", "Add",
                          "GlobalAvgPool2d", "Flatten", "Dense"], kinds(net)
    affine, scale = net.nodes[3].layer, net.nodes[6].layer
    for layer, g, b in ((affine, m.block.w, m.block.b), (scale, m.block.gamma, None)):
        assert layer.groups == C and layer.weight.shape == (C, C, 1, 1)
        np.testing.assert_array_equal(np.diagonal(layer.weight[:, :, 0, 0]), g.detach().numpy().reshape(C))
        np.testing.assert_array_equal(layer.bias, np.zeros(C) if b is None else b.detach().numpy())


# -- forward and gradient vs torch -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", [*ACTS, "affine"])
def test_reference_torch_forward_and_gradient(kind, dtype):
    m = build(kind, torch.float32 if dtype == np.float32 else torch.float64)
    x = inputs(dtype)
    net = import_torch(m, x)
    assert_close(rp.forward(net, x), torch_out(m, x), TOL[dtype], f"{kind} forward")
    assert_close(rp.attribute(net, x, "gradient", target=TARGET), torch_grad(m, x), TOL[dtype], f"{kind} gradient")


@pytest.mark.parametrize("kind", ["gelu", "affine"])
def test_reference_torch_export_fallback_imports_the_same(kind, monkeypatch):
    """When ``torch.fx.symbolic_trace`` fails the importer reads ``torch.export``'s aten graph
    (aten.permute, aten.linear, aten.layer_norm with its cudnn_enable flag, aten.mul): the same
    layers, forward = torch."""
    m, x = build(kind), inputs()
    want = kinds(import_torch(m, x))

    def no_fx(*a, **k):
        raise RuntimeError("symbolic tracing disabled by the test")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_fx)
    net = import_torch(m, x)
    assert kinds(net) == want
    assert_close(rp.forward(net, x), torch_out(m, x), 1e-10, f"{kind} via torch.export")


# -- ONNX ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("kind", [*ACTS, "affine"])
def test_reference_onnx_matches_onnxruntime_and_torch(kind, opset):
    """The TorchScript exporter writes the region as Transpose, LayerNormalization, MatMul + Add
    (each Linear), the activation (GELU: Erf arithmetic at opset 17, Gelu at 20), Transpose,
    then Mul by the (C, 1, 1) layer scale. relprop's import has the torch import's layer kinds,
    forward = onnxruntime = torch (float32), gradient = torch autograd, and the torch import's
    EpsilonPlusFlat relevance (which test_peers_zennit_epsilon_plus_flat checks against Zennit)."""
    m, x = build(kind, torch.float32), inputs(np.float32)
    data = export(m, x, opset)
    net = rp.from_onnx(data)
    via_torch = import_torch(m, x)
    assert kinds(net) == kinds(via_torch), (kinds(net), kinds(via_torch))
    x3 = inputs(np.float32, seed=4, n=3)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert_close(net(x3), sess.run(None, {"x": x3})[0], 1e-5, f"{kind} opset {opset} vs onnxruntime")
    assert_close(net(x3), torch_out(m, x3), 1e-5, f"{kind} opset {opset} vs torch")
    assert_close(rp.attribute(net, x, "gradient", target=TARGET), torch_grad(m, x), 1e-5,
                 f"{kind} opset {opset} gradient")
    rules = rp.composites.EpsilonPlusFlat()
    assert_close(rp.attribute(net, x, "lrp", target=TARGET, rules=rules),
                 rp.attribute(via_torch, x, "lrp", target=TARGET, rules=rules), 1e-5, f"{kind} opset {opset} LRP")


def test_reference_onnx_folds_the_layer_scale():
    """From ONNX too the layer scale is in the last 1x1 conv (numpy from the torch parameters)."""
    m, x = build(dtype=torch.float32), inputs(np.float32)
    net = rp.from_onnx(export(m, x, 17))
    pw2 = [n.layer for n in net.nodes if n.layer.kind == "Conv2d"][-1]
    gamma = m.block.layer_scale.detach().numpy().reshape(C).astype(np.float64)
    lin = m.block.block[5]
    np.testing.assert_allclose(pw2.weight, (gamma[:, None] * lin.weight.detach().numpy())[:, :, None, None],
                               rtol=1e-6)
    np.testing.assert_allclose(pw2.bias, gamma * lin.bias.detach().numpy(), rtol=1e-6)


# -- Captum and summation-to-delta ---------------------------------------------------------------------------
@pytest.mark.peers
@pytest.mark.parametrize("kind", ["gelu", "affine"])
def test_peers_captum_integrated_gradients(kind):
    from captum.attr import IntegratedGradients

    m, x, b = build(kind), inputs(), baseline()
    net = import_torch(m, x)
    r = rp.attribute(net, x, "integrated_gradients", target=TARGET, baseline=b, steps=16, scheme="gauss_legendre")
    ref = IntegratedGradients(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                           target=torch.as_tensor(TARGET), n_steps=16, method="gausslegendre")
    assert_close(r, ref.detach().numpy(), 1e-7, f"{kind} IG")


@pytest.mark.parametrize("kind", ["gelu", "relu", "affine"])
def test_properties_deeplift_summation_to_delta(kind):
    m, x, b = build(kind), inputs(), baseline()
    r = rp.attribute(import_torch(m, x), x, "deeplift.rescale", target=TARGET, baseline=b)
    rows = np.arange(len(x))
    delta = torch_out(m, x)[rows, TARGET] - torch_out(m, b)[rows, TARGET]
    np.testing.assert_allclose(r.reshape(len(x), -1).sum(1), delta, rtol=1e-9, atol=1e-12)


# -- Zennit ------------------------------------------------------------------------------------------------------
class ChannelsLastLinear(nn.Linear):
    """The block's Linears in the Zennit reference: the type its layer map keys relprop's Conv2d rule on."""


class ZennitCNBlock(CNBlock):
    """The reference spelling of relprop's treatments (module docstring): the residual as
    ``zennit.layer.Sum`` over ``torch.stack``; the layer scale already folded into the last Linear."""

    def forward(self, input):  # noqa: A002
        result = self.layer_scale * self.block(input)
        return self.sum(torch.stack([self.stochastic_depth(result), input], dim=-1))


def zennit_model(m, fold_scale=True, linear_type=ChannelsLastLinear):
    from zennit.layer import Sum

    z = copy.deepcopy(m)
    blk = z.block
    blk.__class__ = ZennitCNBlock
    blk.sum = Sum()
    if fold_scale:
        with torch.no_grad():
            gamma = blk.layer_scale.reshape(C)
            blk.block[5].weight.mul_(gamma[:, None])
            blk.block[5].bias.mul_(gamma)
            blk.layer_scale.fill_(1.0)
    for i in (3, 5):
        blk.block[i].__class__ = linear_type
    return z.eval()


def zennit_lrp(m, x, composite):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    tgt = torch.as_tensor(TARGET)
    return torch_ref.zennit_relevance(m, xt, composite,
                                      lambda out: F.one_hot(tgt, out.shape[1]).to(out.dtype) * out.detach())


def zennit_epsilon_plus_flat(linear_rule="zplus"):
    from zennit import composites as zc
    from zennit import rules as zr

    extra = [(nn.LayerNorm, zr.Pass())]
    if linear_rule == "zplus":
        extra.append((ChannelsLastLinear, zr.ZPlus(stabilizer=1e-6)))
    return zc.EpsilonPlusFlat(layer_map=extra)


def per_layer_rules(net, block_linear):
    """relprop's EpsilonPlusFlat as a rule list, with ``block_linear`` on the block's two 1x1 convs."""
    rules = []
    for i, node in enumerate(net.linear_nodes()):
        lay = node.layer
        one_by_one = lay.kind == "Conv2d" and lay.weight.shape[2:] == (1, 1) and lay.groups == 1
        rules.append(rp.rules.Flat(1e-6) if i == 0 else block_linear if one_by_one else
                     rp.rules.ZPlus(1e-6) if lay.kind == "Conv2d" else rp.rules.Epsilon(1e-6))
    return rules


@pytest.mark.peers
@pytest.mark.parametrize("kind", [*ACTS])
def test_peers_zennit_epsilon_plus_flat(kind):
    """relprop's ``EpsilonPlusFlat`` (z+ on the 1x1 convs) = Zennit's with z+ keyed on the block's
    Linears, the layer scale folded in the reference as relprop folds it."""
    m, x = build(kind), inputs()
    r = rp.attribute(import_torch(m, x), x, "lrp", target=TARGET, rules=rp.composites.EpsilonPlusFlat())
    assert_close(r, zennit_lrp(zennit_model(m), x, zennit_epsilon_plus_flat()), 1e-8, f"{kind} EpsilonPlusFlat")


@pytest.mark.peers
def test_peers_zennit_linear_rule_on_the_1x1_convs():
    """Zennit's plain ``EpsilonPlusFlat`` (epsilon on every ``nn.Linear``) = relprop with epsilon
    given to the two 1x1 convs: the conv relprop imports is the Linear for that rule too."""
    m, x = build(), inputs()
    net = import_torch(m, x)
    r = rp.attribute(net, x, "lrp", target=TARGET, rules=per_layer_rules(net, rp.rules.Epsilon(1e-6)))
    ref = zennit_lrp(zennit_model(m, linear_type=nn.Linear), x, zennit_epsilon_plus_flat(linear_rule="epsilon"))
    assert_close(r, ref, 1e-8, "EpsilonPlusFlat, epsilon on the Linears")


@pytest.mark.peers
def test_peers_zennit_epsilon_everywhere():
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.types import Convolution

    m, x = build(), inputs()
    r = rp.attribute(import_torch(m, x), x, "lrp.epsilon", target=TARGET, epsilon=1e-6)
    composite = zc.LayerMapComposite([(nn.LayerNorm, zr.Pass())] + zc.layer_map_base() +
                                     [(Convolution, zr.Epsilon(1e-6)), (nn.Linear, zr.Epsilon(1e-6))])
    assert_close(r, zennit_lrp(zennit_model(m, linear_type=nn.Linear), x, composite), 1e-8, "epsilon")


@pytest.mark.peers
def test_peers_zennit_unfolded_layer_scale_differs():
    """Documents why the reference folds the layer scale: plain Zennit backpropagates the functional
    ``gamma * y`` as a gradient, scaling the relevance of channel c by gamma_c (here 0.5 to 1.5),
    which is not a relevance rule; relprop's fold passes it on as folding a BatchNorm would."""
    m, x = build(), inputs()
    r = rp.attribute(import_torch(m, x), x, "lrp", target=TARGET, rules=rp.composites.EpsilonPlusFlat())
    plain = zennit_lrp(zennit_model(m, fold_scale=False), x, zennit_epsilon_plus_flat())
    assert np.max(np.abs(plain - r)) > 1e-3 * np.max(np.abs(r))


# -- errors ----------------------------------------------------------------------------------------------------
class Region(nn.Module):
    """permute(0, 2, 3, 1) -> LayerNorm(C) -> ``inner`` -> permute(0, 3, 1, 2) on the stem's output."""

    def __init__(self, inner):
        super().__init__()
        self.stem, self.norm, self.inner = nn.Conv2d(3, C, 4, stride=4), nn.LayerNorm(C), inner
        self.fc = nn.Linear(C, CLASSES)

    def forward(self, x):
        y = self.inner(self.norm(self.stem(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
        return self.fc(y.mean((2, 3)))


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


@pytest.mark.parametrize("fn,op", [
    (lambda y: F.softmax(y, -1), "softmax"),
    (lambda y: torch.cumsum(y, -1), "cumsum"),
    (lambda y: y.exp(), "Tensor.exp()"),
    (lambda y: y * 2.0, "multiplying by 2.0"),
])
def test_errors_unsupported_op_in_the_region_is_one_line(fn, op):
    """An op between the permutes that relprop cannot map channels first: one line naming the op
    and what the region may hold."""
    with pytest.raises(ValueError) as e:
        rp.from_torch(Region(Fn(fn)).eval(), inputs(np.float32))
    msg = str(e.value)
    assert "\n" not in msg and op in msg and "permute(0, 2, 3, 1)" in msg, msg


def test_errors_onnx_unsupported_op_in_the_region_is_one_line():
    m = Region(Fn(lambda y: F.softmax(y, -1))).eval()
    with pytest.raises(ValueError) as e:
        rp.from_onnx(export(m, inputs(np.float32), 17))
    msg = str(e.value)
    assert "\n" not in msg and "(Softmax)" in msg and "channels-last region" in msg, msg


def test_errors_lone_permute_is_still_refused():
    """A permute with no permute back (or read twice) is no region: refused in one line."""

    class NoBack(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, CLASSES)

        def forward(self, x):
            return torch.flatten(self.fc(x.permute(0, 2, 3, 1)), 1)

    class Twice(nn.Module):
        def forward(self, x):
            y = x.permute(0, 2, 3, 1)
            return torch.flatten((y + y).permute(0, 3, 1, 2), 1)

    for m in (NoBack(), Twice()):
        with pytest.raises(ValueError, match=r"permute.*not supported") as e:
            rp.from_torch(m.eval(), inputs(np.float32))
        assert "\n" not in str(e.value)
        with pytest.raises(ValueError, match="Transpose") as e:
            rp.from_onnx(export(m.eval(), inputs(np.float32), 17))
        assert "\n" not in str(e.value)


def test_errors_constant_factors_outside_a_layer_scale_stay_refused():
    """Channels first, only a (C, 1, 1) / (1, C, 1, 1) parameter is a layer scale; a Python number
    or a spatial map stays refused (one line)."""

    class Times(nn.Module):
        def __init__(self, factor):
            super().__init__()
            self.stem, self.factor = nn.Conv2d(3, C, 4, stride=4), factor
            self.fc = nn.Linear(C, CLASSES)

        def forward(self, x):
            return self.fc((self.stem(x) * self.factor).mean((2, 3)))

    for factor in (2.0, nn.Parameter(torch.ones(C, 8, 8))):
        with pytest.raises(ValueError, match="multiplying by") as e:
            rp.from_torch(Times(factor).eval(), inputs(np.float32))
        assert "\n" not in str(e.value)


# -- per-channel maps: folded at once or kept as vectors until they fold ---------------------------------------
def _small_expansion(monkeypatch, nbytes=32 * 2**10):
    """A dense-expansion limit of 32 KiB: a 128-channel depthwise 1x1 (64 KiB dense in float32,
    128x its factors) is refused, a 32-channel one (ratio 32 < EXPANSION_RATIO) never is."""
    from relprop.core import budget

    monkeypatch.setattr(budget, "BUDGET", dataclasses.replace(budget.BUDGET, expansion=nbytes))


def _check_onnx(m, x, what):
    """from_onnx (opset 17) = onnxruntime = torch, and the torch import's layer kinds."""
    data = export(m, x, 17)
    net = rp.from_onnx(data)
    x3 = inputs(np.float32, seed=4, n=3)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert_close(net(x3), sess.run(None, {"x": x3})[0], 1e-5, f"{what} vs onnxruntime")
    assert_close(net(x3), torch_out(m, x3), 1e-5, f"{what} vs torch")
    return net


def test_reference_onnx_linear_bias_folds_under_a_small_expansion_limit(monkeypatch):
    """A block of width 32 (Linear(32, 128)): ONNX writes each Linear as MatMul + Add(bias); the
    bias folds into the MatMul's 1x1 conv at once, so the limit that would refuse a 128-channel
    depthwise 1x1 conv never sees one: from_onnx imports what from_torch imports (same kinds,
    forward = onnxruntime = torch)."""
    _small_expansion(monkeypatch)
    torch.manual_seed(3)
    m = Net(CNBlock(32, 0.7, 0.0), dim=32).float().eval()
    x = inputs(np.float32)
    via_torch = import_torch(m, x)
    net = _check_onnx(m, x, "width 32")
    assert kinds(net) == kinds(via_torch) == ["Conv2d", "Conv2d", "LayerNorm", "Conv2d", "GELU", "Conv2d", "Add",
                                              "GlobalAvgPool2d", "Flatten", "Dense"], kinds(net)
    assert_close(rp.forward(via_torch, x), torch_out(m, x), 1e-5, "width 32 from torch")


class _ScaleAfterSiLU(nn.Module):
    """stem (128 channels), SiLU, a layer scale (1, 128, 1, 1): nothing to fold into."""

    def __init__(self, dim=128):
        super().__init__()
        self.stem, self.act = nn.Conv2d(3, dim, 4, stride=4), nn.SiLU()
        self.gamma = nn.Parameter(torch.rand(1, dim, 1, 1) + 0.5)
        self.fc = nn.Linear(dim, CLASSES)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.gamma * self.act(self.stem(x)), 1), 1))


def test_errors_unfoldable_scale_over_the_limit_names_its_op(monkeypatch):
    """A scale that cannot fold becomes a depthwise 1x1 conv; over the limit both importers
    refuse it in one line naming the op (torch: the fx node, ONNX: the Mul node) and saying
    what to do for a per-channel scale."""
    torch.manual_seed(5)
    m, x = _ScaleAfterSiLU().float().eval(), inputs(np.float32)
    data = export(m, x, 17)
    _small_expansion(monkeypatch)
    for imp, where in ((lambda: import_torch(m, x), r"from_torch: operator\.mul at node 'mul'"),
                       (lambda: rp.from_onnx(data), r"ONNX node '/Mul' \(Mul\)")):
        want = (where + r".*: this per-channel scale / shift of 128 channels does not fold into a convolution "
                r"\(it follows '[^']*', a SiLU\) and would be a depthwise 1x1 Conv2d with a dense "
                r"\(128, 128, 1, 1\) weight of 0\.0625 MiB")
        with pytest.raises(ValueError, match=want) as e:
            imp()
        msg = str(e.value)
        assert "\n" not in msg and "limit of 0.0312 MiB" in msg and "right after a convolution" in msg, msg
        assert "expansion=<bytes>" in msg, msg


def test_reference_scale_on_a_convolution_read_twice_stays_a_depthwise_conv():
    """``y = stem(x); gamma * y + y``: the stem has two readers, so the layer scale cannot fold;
    it is a depthwise 1x1 Conv2d from torch and from ONNX, forward and gradient = torch."""

    class TwoReaders(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, C, 4, stride=4)
            self.gamma = nn.Parameter(torch.rand(C, 1, 1) + 0.5)
            self.fc = nn.Linear(C, CLASSES)

        def forward(self, x):
            y = self.stem(x)
            return self.fc((self.gamma * y + y).mean((2, 3)))

    torch.manual_seed(6)
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        m = TwoReaders().to(dtype).eval()
        x = inputs(np.float64 if dtype == torch.float64 else np.float32)
        net = import_torch(m, x)
        assert kinds(net)[:3] == ["Conv2d", "Conv2d", "Add"], kinds(net)
        scale = net.nodes[1].layer
        assert scale.groups == C and scale.weight.shape == (C, C, 1, 1)
        np.testing.assert_array_equal(np.diagonal(scale.weight[:, :, 0, 0]),
                                      m.gamma.detach().numpy().reshape(C))
        assert_close(rp.forward(net, x), torch_out(m, x), tol, "two readers forward")
        assert_close(rp.attribute(net, x, "gradient", target=TARGET), torch_grad(m, x), tol, "two readers gradient")
    net = _check_onnx(m, x, "two readers")
    assert kinds(net)[:3] == ["Conv2d", "Conv2d", "Add"], kinds(net)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_reference_region_linears_without_bias(dtype):
    """CNBlock with ``bias=False`` Linears (ONNX: a MatMul and no Add): the 1x1 convs have zero
    bias, the layer scale folds into the second; forward and gradient = torch, ONNX =
    onnxruntime = torch."""
    m = build(dtype=torch.float32 if dtype == np.float32 else torch.float64)
    blk = m.block.block
    for i in (3, 5):
        lin = blk[i]
        blk[i] = nn.Linear(lin.in_features, lin.out_features, bias=False).to(lin.weight.dtype)
        with torch.no_grad():
            blk[i].weight.copy_(lin.weight)
    m.eval()
    x = inputs(dtype)
    net = import_torch(m, x)
    assert kinds(net) == ["Conv2d", "Conv2d", "LayerNorm", "Conv2d", "GELU", "Conv2d", "Add", "GlobalAvgPool2d",
                          "Flatten", "Dense"], kinds(net)
    np.testing.assert_array_equal(net.nodes[3].layer.bias, 0)
    np.testing.assert_array_equal(net.nodes[5].layer.bias, 0)
    assert_close(rp.forward(net, x), torch_out(m, x), TOL[dtype], "bias-free forward")
    assert_close(rp.attribute(net, x, "gradient", target=TARGET), torch_grad(m, x), TOL[dtype], "bias-free gradient")
    if dtype == np.float32:
        assert kinds(_check_onnx(m, x, "bias-free")) == kinds(net)


def test_errors_bool_layer_scale_buffer_is_refused():
    """A (C, 1, 1) bool buffer as the factor (a channel mask): refused in one line naming its
    dtype, not imported in some other dtype."""

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.fc = nn.Conv2d(3, C, 4, stride=4), nn.Linear(C, CLASSES)
            self.register_buffer("mask", torch.arange(C).reshape(C, 1, 1) % 2 == 0)

        def forward(self, x):
            return self.fc((self.stem(x) * self.mask).mean((2, 3)))

    with pytest.raises(ValueError, match=r"from_torch: .*dtype torch\.bool.*floating-point") as e:
        rp.from_torch(Masked().eval(), inputs(np.float32))
    assert "\n" not in str(e.value)


# -- ONNX: a per-channel Add on (N, C, H, W) data (a BatchNorm exported as Mul + Add) -------------------------
def _onnx_model(nodes, inits, c=4, hw=6):
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CLASSES])
    head = [helper.make_node("GlobalAveragePool", [nodes[-1].output[0]], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"],
                                                                         transB=1)]
    rng = np.random.default_rng(21)
    inits = {**inits, "fc_w": rng.standard_normal((CLASSES, c)).astype(np.float32),
             "fc_b": rng.standard_normal(CLASSES).astype(np.float32)}
    g = helper.make_graph(nodes + head, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _onnx_cases():
    from onnx import helper

    rng = np.random.default_rng(22)
    c = 4
    scale = (rng.uniform(0.5, 1.5, (1, c, 1, 1))).astype(np.float32)
    shift = rng.standard_normal((c, 1, 1)).astype(np.float32)
    w = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    conv = helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1])
    relu = helper.make_node("Relu", ["x"], ["h"])
    return {
        # Relu, then a BatchNorm as Mul + Add: one depthwise 1x1 conv (the shift folds into the scale's bias)
        "bn_after_relu": ([relu, helper.make_node("Mul", ["h", "s"], ["m"]),
                           helper.make_node("Add", ["m", "b"], ["a"])], {"s": scale, "b": shift}, ["ReLU", "Conv2d"]),
        # Relu, then the Add alone: a depthwise 1x1 conv with unit weight and the shift as bias
        "add_after_relu": ([relu, helper.make_node("Add", ["h", "b"], ["a"])], {"b": shift}, ["ReLU", "Conv2d"]),
        # a conv read by nothing else: the Add (shape (1, C, 1, 1)) is its bias, the Mul folds too
        "conv_then_add_mul": ([conv, helper.make_node("Add", ["h", "b"], ["a0"]),
                               helper.make_node("Mul", ["a0", "s"], ["a"])],
                              {"w": w, "b": shift.reshape(1, c, 1, 1), "s": scale}, ["Conv2d"]),
        # a conv read twice: the Add cannot be its bias, it is a depthwise 1x1 conv; the sum reads both
        "conv_read_twice": ([conv, helper.make_node("Add", ["h", "b"], ["a0"]),
                             helper.make_node("Add", ["a0", "h"], ["a"])], {"w": w, "b": shift},
                            ["Conv2d", "Conv2d", "Add"]),
    }


@pytest.mark.parametrize("case", ["bn_after_relu", "add_after_relu", "conv_then_add_mul", "conv_read_twice"])
def test_reference_onnx_channel_add_matches_onnxruntime(case):
    """``Add`` of a (C, 1, 1) / (1, C, 1, 1) initializer to (N, C, H, W) data maps like ``Mul``
    by one: the bias of a conv read by nothing else, else a per-channel affine map (a depthwise
    1x1 Conv2d where it cannot fold). Forward = onnxruntime; the folded weights = numpy from the
    initializers."""
    nodes, inits, want = _onnx_cases()[case]
    data = _onnx_model(nodes, inits)
    net = rp.from_onnx(data)
    assert kinds(net)[:len(want)] == want and kinds(net)[len(want):] == ["GlobalAvgPool2d", "Flatten", "Dense"], \
        kinds(net)
    x = np.random.default_rng(23).standard_normal((3, 4, 6, 6)).astype(np.float32)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert_close(net(x), sess.run(None, {"x": x})[0], 1e-5, f"{case} vs onnxruntime")
    layer = net.nodes[1 if want[0] == "ReLU" else 0].layer
    shift = inits["b"].reshape(-1)
    scale = inits["s"].reshape(-1) if "s" in inits else np.ones(4)
    if want[0] == "ReLU":  # the depthwise 1x1 conv: weight = scale, bias = shift
        np.testing.assert_array_equal(np.diagonal(layer.weight[:, :, 0, 0]), scale)
        np.testing.assert_array_equal(layer.bias, shift)
    elif case == "conv_then_add_mul":  # (W x + shift) * scale
        np.testing.assert_allclose(layer.weight, inits["w"] * scale[:, None, None, None], rtol=1e-6)
        np.testing.assert_allclose(layer.bias, shift * scale, rtol=1e-6)
    else:  # the conv as it is, the shift a depthwise 1x1 conv with unit weight
        np.testing.assert_array_equal(layer.weight, inits["w"])
        np.testing.assert_array_equal(net.nodes[1].layer.bias, shift)
        np.testing.assert_array_equal(np.diagonal(net.nodes[1].layer.weight[:, :, 0, 0]), 1)


def test_errors_onnx_channel_add_of_another_shape_stays_refused():
    """Only a per-channel constant (C, 1, 1) / (1, C, 1, 1) is mapped after a non-linear layer:
    a spatial (C, H, W) map stays refused in one line."""
    from onnx import helper

    c = np.random.default_rng(24).standard_normal((4, 6, 6)).astype(np.float32)
    data = _onnx_model([helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"], name="sp")],
                       {"b": c})
    with pytest.raises(ValueError, match=r"'sp' \(Add\).*bias.*\(C, 1, 1\).*follows ReLU") as e:
        rp.from_onnx(data)
    assert "\n" not in str(e.value)
