"""Convolutions users bring: grouped / depthwise, dilated, and reflect / replicate / circular
padded, imported from torch (and ONNX) and explained against independent implementations.

relprop computes a grouped conv as the dense conv with a block-diagonal weight and a dilated one
as the dense conv with zeros between the taps (``Conv2d.from_compact``); a padding mode other than
zeros becomes a ``Pad`` node before an unpadded Conv2d. Every expected value comes from torch
itself (forward, autograd), Captum 0.9 (IntegratedGradients, DeepLift) or Zennit 0.5.1 (LRP),
which run torch's own grouped / dilated / padded convolutions; onnxruntime for ONNX.

Models (float64 unless said otherwise; per-sample tolerance ``RTOL * max|R_peer|``):

* ``mobilenet``: a MobileNetV2 inverted residual (Sandler et al. 2018, Table 1): 1x1 expand,
  depthwise 3x3 (groups = channels) with ReLU6, 1x1 project, residual sum (``zennit.layer.Sum``
  over ``torch.stack`` so that Zennit applies its Norm rule there, as relprop does at Add);
* ``regnet``: a RegNet-style grouped 3x3 (Radosavovic et al. 2020; groups=4);
* ``depthwise_strided``: a depthwise 3x3 with stride 2 and dilation 2;
* ``dilated``: a dilated 3x3 (Yu & Koltun 2016; d=2);
* ``grouped_first`` / ``dilated_first``: the grouped / dilated conv is the first layer, so
  EpsilonPlusFlat's Flat rule meets it;
* ``pad_<mode>``: a 3x3 conv with ``padding_mode`` reflect / replicate / circular, first layer.
"""
from __future__ import annotations

import io
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

import captum.attr._core.deep_lift as deep_lift_mod
from captum.attr import DeepLift, IntegratedGradients
from zennit import composites as zc
from zennit.attribution import Gradient
from zennit.layer import Sum

import relprop as rp
from tolerance import assert_blas_close  # noqa: E402

RTOL = 1e-8  # float64 on both sides
N, CLASSES = 2, 5


class InvertedResidual(nn.Module):
    def __init__(self, c=8, t=4):
        super().__init__()
        self.expand, self.act1 = nn.Conv2d(c, c * t, 1), nn.ReLU6()
        self.dw, self.act2 = nn.Conv2d(c * t, c * t, 3, padding=1, groups=c * t), nn.ReLU6()
        self.project = nn.Conv2d(c * t, c, 1)
        self.sum = Sum()

    def forward(self, x):
        y = self.project(self.act2(self.dw(self.act1(self.expand(x)))))
        return self.sum(torch.stack([x, y], dim=-1))


def _head(c, hw):
    return [nn.Flatten(), nn.Linear(c * hw * hw, CLASSES)]


def _build(name, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    stem = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()]
    if name == "mobilenet":
        layers = stem + [InvertedResidual(8), nn.ReLU()] + _head(8, 8)
    elif name == "regnet":
        layers = stem + [nn.Conv2d(8, 16, 3, padding=1, groups=4), nn.ReLU()] + _head(16, 8)
    elif name == "depthwise_strided":  # the depthwise fast path with stride and dilation
        layers = stem + [nn.Conv2d(8, 8, 3, stride=2, padding=2, dilation=2, groups=8), nn.ReLU()] + _head(8, 4)
    elif name == "dilated":
        layers = stem + [nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.ReLU()] + _head(8, 8)
    elif name == "grouped_first":
        layers = [nn.Conv2d(3, 6, 3, padding=1, groups=3), nn.ReLU(),
                  nn.Conv2d(6, 8, 3, padding=1, groups=2), nn.ReLU()] + _head(8, 8)
    elif name == "dilated_first":
        layers = [nn.Conv2d(3, 8, 3, padding=2, dilation=2), nn.ReLU()] + _head(8, 8)
    elif name.startswith("pad_"):
        layers = [nn.Conv2d(3, 8, 3, padding=1, padding_mode=name[4:]), nn.ReLU(),
                  nn.Conv2d(8, 8, 3, padding=2, padding_mode=name[4:]), nn.ReLU()] + _head(8, 10)
    else:  # pragma: no cover
        raise KeyError(name)
    return nn.Sequential(*layers).to(dtype).eval()


def _input(name, dtype=np.float64, seed=1):
    return np.random.default_rng(seed).standard_normal((N, 3, 8, 8)).astype(dtype)


NAMES = ["mobilenet", "depthwise_strided", "regnet", "dilated", "grouped_first", "dilated_first", "pad_reflect", "pad_replicate",
         "pad_circular"]


def _close(r, ref, rtol=RTOL, what=""):
    r, ref = np.asarray(r, np.float64), np.asarray(ref, np.float64)
    assert r.shape == ref.shape, (r.shape, ref.shape)
    for i in range(r.shape[0]):
        scale = max(np.abs(ref[i]).max(), 1e-300)
        err = np.abs(r[i] - ref[i]).max()
        assert err <= rtol * scale, f"{what}: sample {i}: max|diff| {err:.3g} > {rtol} * {scale:.3g}"


def _targets(model, x):
    with torch.no_grad():
        return (np.argmax(model(torch.from_numpy(x)).numpy(), axis=1) + 1) % CLASSES


def test_imports_structure():
    """Grouped / dilated convs import as one dense Conv2d that records groups and dilation;
    padding modes as Pad + unpadded Conv2d."""
    x = _input("x")
    net = rp.from_torch(_build("mobilenet"), x)
    dw = [n.layer for n in net.nodes if n.layer.kind == "Conv2d" and n.layer.groups > 1]
    assert len(dw) == 1 and dw[0].groups == 32 and dw[0].weight.shape == (32, 32, 3, 3)
    assert [n.layer.kind for n in net.nodes].count("Add") == 1
    mask = dw[0].structure_mask()
    assert mask.sum() == 32 * 9 and np.all(dw[0].weight[~mask] == 0)
    d = [n.layer for n in rp.from_torch(_build("dilated"), x).nodes if n.layer.kind == "Conv2d"][1]
    assert d.dilation == (2, 2) and d.weight.shape[2:] == (5, 5) and d.structure_mask()[0, 0].sum() == 9
    p = rp.from_torch(_build("pad_reflect"), x).nodes
    assert p[0].layer.kind == "Pad" and p[0].layer.pads == (1, 1, 1, 1) and p[0].layer.mode == "reflect"
    assert p[1].layer.kind == "Conv2d" and p[1].layer.padding == (0, 0)


@pytest.mark.parametrize("name", NAMES)
def test_reference_forward_and_gradient_torch(name):
    """Forward = torch (float64 1e-10, float32 1e-5); gradient = torch autograd."""
    for tdt, npd, tol in ((torch.float64, np.float64, 1e-10), (torch.float32, np.float32, 1e-5)):
        model, x = _build(name, tdt), _input(name, npd)
        net = rp.from_torch(model, x)
        xt = torch.from_numpy(x).requires_grad_(True)
        out = model(xt)
        _close(rp.forward(net, x), out.detach().numpy(), tol, f"{name} forward")
        tgt = _targets(model, x)
        out[np.arange(N), torch.from_numpy(tgt)].sum().backward()
        _close(rp.attribute(net, x, "gradient", target=tgt), xt.grad.numpy(), 10 * tol, f"{name} gradient")


@pytest.mark.parametrize("name", NAMES)
def test_peers_captum_integrated_gradients(name):
    model, x = _build(name), _input(name)
    net, tgt = rp.from_torch(model, x), _targets(_build(name), x)
    b = 0.3 * _input(name, seed=7)
    r = rp.attribute(net, x, "integrated_gradients", target=tgt, baseline=b, steps=16, scheme="gauss_legendre")
    ref = IntegratedGradients(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                               target=torch.from_numpy(tgt), n_steps=16, method="gausslegendre")
    _close(r, ref.detach().numpy(), 1e-8, f"{name} IG")


@pytest.mark.parametrize("name", NAMES)
def test_peers_captum_deeplift(name):
    """DeepLift (rescale). Captum has no ReLU6 rule of its own; its generic ``nonlinear``
    (the rescale multiplier) is registered for it, which is the rule relprop applies."""
    model, x = _build(name), _input(name)
    net, tgt = rp.from_torch(model, x), _targets(model, x)
    b = 0.3 * _input(name, seed=7)
    r = rp.attribute(net, x, "deeplift.rescale", target=tgt, baseline=b)
    with warnings.catch_warnings(), mock.patch.dict(deep_lift_mod.SUPPORTED_NON_LINEAR,
                                                    {nn.ReLU6: deep_lift_mod.nonlinear}):
        warnings.simplefilter("ignore")
        ref = DeepLift(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                        target=torch.from_numpy(tgt))
    _close(r, ref.detach().numpy(), 1e-8, f"{name} DeepLift")


def _zennit(model, x, tgt, composite):
    xt = torch.from_numpy(x).requires_grad_(True)
    t = torch.as_tensor(tgt)

    def start(out):
        out = out.detach()
        return nn.functional.one_hot(t, out.shape[1]).to(out.dtype) * out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=model, composite=composite) as attributor:
            _, rel = attributor(xt, start)
    return rel.detach().numpy()


COMPOSITES = {
    "EpsilonPlusFlat": (lambda: rp.composites.EpsilonPlusFlat(), lambda: zc.EpsilonPlusFlat()),
    "EpsilonPlus": (lambda: rp.composites.EpsilonPlus(), lambda: zc.EpsilonPlus()),
    "EpsilonAlpha2Beta1Flat": (lambda: rp.composites.EpsilonAlpha2Beta1Flat(),
                               lambda: zc.EpsilonAlpha2Beta1Flat()),
}


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
@pytest.mark.parametrize("name", NAMES)
def test_peers_zennit_lrp(name, composite):
    """LRP composites vs Zennit, which runs torch's grouped / dilated / padded convs with its rules:
    the dense expansion gives the same relevance, Flat included (relprop's Flat keeps to the
    conv's taps, the structure mask, as Zennit's ones-weight grouped / dilated conv does)."""
    rp_comp, z_comp = COMPOSITES[composite]
    model, x = _build(name), _input(name)
    net, tgt = rp.from_torch(model, x), _targets(model, x)
    r = rp.attribute(net, x, "lrp", target=tgt, rules=rp_comp())
    _close(r, _zennit(model, x, tgt, z_comp()), 1e-8, f"{name} {composite}")


def test_reference_flat_keeps_to_the_taps():
    """Flat on a depthwise / dilated first layer spreads relevance only over the pixels the
    convolution reads: a plain-numpy loop over the compact (torch-layout) weight."""
    rng = np.random.default_rng(3)
    for groups, dil in ((3, 1), (1, 2)):
        w = rng.standard_normal((3, 3 // groups, 3, 3))
        layer = rp.Conv2d.from_compact(w, None, padding=2 if dil == 2 else 1, groups=groups, dilation=dil)
        net = rp.Sequential(layer, rp.Flatten())
        x = rng.standard_normal((1, 3, 5, 5))
        r = rp.attribute(net, x, "lrp", target=12, rules=[rp.rules.Flat()])
        # R_out is one-hot on output 12 = (channel 0, row 2, col 2) times its score
        score = rp.forward(net, x)[0, 12]
        p = 2 if dil == 2 else 1
        taps = [(c, 2 - p + i * dil, 2 - p + j * dil) for c in range(3 // groups) for i in range(3) for j in range(3)]
        inside = [(c, h, v) for c, h, v in taps if 0 <= h < 5 and 0 <= v < 5]
        ref = np.zeros((3, 5, 5))
        denom = len(inside) + 1e-6
        for c, h, v in inside:
            ref[c, h, v] += score / denom
        np.testing.assert_allclose(r[0], ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular", "constant"])
def test_reference_pad_adjoint_numpy(mode):
    """Pad's backward is the exact adjoint of np.pad: <pad(x), g> = <x, pad^T(g)> for every
    mode, and the gradient of a Pad-only model equals a plain-numpy scatter-add loop."""
    rng = np.random.default_rng(5)
    pads = (2, 1, 0, 3)
    net = rp.Sequential(rp.Pad(pads, mode, value=0.5 if mode == "constant" else 0.0), rp.Flatten())
    x = rng.standard_normal((1, 2, 4, 5))
    np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap", "constant": "constant"}[mode]
    kw = {"constant_values": 0.5} if mode == "constant" else {}
    y = np.pad(x, ((0, 0), (0, 0), (2, 1), (0, 3)), mode=np_mode, **kw)
    np.testing.assert_array_equal(rp.forward(net, x), y.reshape(1, -1))
    # scatter-add of every padded position onto its source: the sources of np.pad of indices
    hi = np.pad(np.arange(4), (2, 1), mode=np_mode) if mode != "constant" else np.pad(np.arange(4), (2, 1),
                                                                                      constant_values=-1)
    wi = np.pad(np.arange(5), (0, 3), mode=np_mode) if mode != "constant" else np.pad(np.arange(5), (0, 3),
                                                                                      constant_values=-1)
    for t in (0, 17, 40):
        ref = np.zeros_like(x)
        c, rem = divmod(t, y.shape[2] * y.shape[3])
        h, v = divmod(rem, y.shape[3])
        if hi[h] >= 0 and wi[v] >= 0:
            ref[0, c, hi[h], wi[v]] += 1.0
        np.testing.assert_array_equal(rp.attribute(net, x, "gradient", target=t), ref)


def test_reference_pad_lrp_conserves():
    """LRP through a reflect / replicate / circular Pad conserves relevance (the adjoint moves it
    to the source pixels, none is lost): epsilon-0 on a bias-free conv."""
    rng = np.random.default_rng(6)
    for mode in ("reflect", "replicate", "circular"):
        net = rp.Sequential(rp.Pad((1, 1, 1, 1), mode), rp.Conv2d(rng.standard_normal((4, 2, 3, 3)), None),
                            rp.Flatten())
        x = rng.standard_normal((2, 2, 5, 5))
        r = rp.attribute(net, x, "lrp.epsilon", target=3, epsilon=0.0)
        np.testing.assert_allclose(r.reshape(2, -1).sum(1), rp.forward(net, x)[:, 3], rtol=1e-9)


def test_peers_onnx_forward():
    """ONNX (opset 17) export of grouped, depthwise, dilated, reflect / replicate padded convs:
    relprop's forward = onnxruntime. torch exports circular padding as Slice + Concat, which
    stays refused with a one-line message; ONNX ``Pad(mode='wrap')`` (opset 19) maps to it."""
    ort = pytest.importorskip("onnxruntime")
    for name in ("mobilenet_plain", "regnet", "dilated", "pad_reflect", "pad_replicate"):
        model = _build(name) if name != "mobilenet_plain" else _plain_mobilenet()
        model = model.float()
        x = _input(name, np.float32)
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.from_numpy(x), f, opset_version=17, dynamo=False)
        net = rp.from_onnx(f.getvalue())
        s = ort.InferenceSession(f.getvalue())
        ref = s.run(None, {s.get_inputs()[0].name: x})[0]
        _close(rp.forward(net, x), ref, 1e-5, f"{name} onnx")
        kinds = [n.layer.kind for n in net.nodes]
        assert ("Pad" in kinds) == name.startswith("pad_")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f = io.BytesIO()
        torch.onnx.export(_build("pad_circular").float(), torch.from_numpy(_input("x", np.float32)), f,
                          opset_version=17, dynamo=False)
    with pytest.raises(ValueError, match="Slice") as e:
        rp.from_onnx(f.getvalue())
    assert "\n" not in str(e.value)


def test_peers_onnx_pad_wrap_and_group():
    """A hand-built opset-19 graph: Pad(wrap) -> Conv(group=2, dilations=2) against onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(8)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="wrap"),
             helper.make_node("Conv", ["p", "w", "b"], ["c"], group=2, dilations=[2, 2], kernel_shape=[3, 3]),
             helper.make_node("Flatten", ["c"], ["y"], axis=1)]
    inits = [numpy_helper.from_array(np.array([0, 0, 2, 1, 0, 0, 2, 3], np.int64), "pads"),
             numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 144])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    data = m.SerializeToString()
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    try:
        s = ort.InferenceSession(data)
    except Exception as e:  # pragma: no cover - an onnxruntime without opset 19
        pytest.skip(f"onnxruntime cannot run opset 19: {e}")
    ref = s.run(None, {"x": x})[0]
    net = rp.from_onnx(data)
    assert net.nodes[0].layer.mode == "circular" and net.nodes[1].layer.groups == 2
    _close(rp.forward(net, x), ref, 1e-5, "onnx wrap + group")


def _plain_mobilenet():
    """The inverted residual with a plain ``+`` (the ONNX exporter does not know zennit's Sum)."""
    class Block(InvertedResidual):
        def forward(self, x):
            return x + self.project(self.act2(self.dw(self.act1(self.expand(x)))))

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8), nn.ReLU(), *_head(8, 8)).eval()


def test_save_load_keeps_structure(tmp_path):
    """save/load keeps groups, dilation and Pad, and the loaded model explains identically."""
    for name in ("mobilenet", "dilated", "pad_circular"):
        model, x = _build(name), _input(name)
        net = rp.from_torch(model, x)
        path = tmp_path / f"{name}.npz"
        rp.save(net, path)
        back = rp.load(path)
        for a, b in zip(net.nodes, back.nodes):
            assert a.layer.kind == b.layer.kind
            for h in a.layer.hyper:
                assert getattr(a.layer, h) == getattr(b.layer, h), (name, h)
        tgt = _targets(model, x)
        for method, kw in (("gradient", {}), ("lrp", {"rules": rp.composites.EpsilonPlusFlat()})):
            assert_blas_close(rp.attribute(back, x, method, target=tgt, **kw),
                              rp.attribute(net, x, method, target=tgt, **kw))


def test_errors_conv_variants():
    """Clear one-line errors for what stays unsupported or inconsistent."""
    with pytest.raises(ValueError, match="PixelShuffle"):  # ConvTranspose2d: test_models_conv_transpose.py
        rp.from_torch(nn.Sequential(nn.PixelShuffle(1)).eval(), _input("x"))
    with pytest.raises(ValueError, match="declare zeros"):
        rp.Conv2d(np.ones((4, 4, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        rp.Conv2d(np.zeros((4, 4, 3, 3)), groups=3)
    with pytest.raises(ValueError, match=r"\(k - 1\) \* d \+ 1"):
        rp.Conv2d(np.zeros((4, 4, 4, 4)), dilation=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        rp.Pad((1, 1, 1, 1), "symmetric")
    with pytest.raises(ValueError, match="reflect padding"):
        rp.Sequential(rp.Pad((3, 0, 0, 0), "reflect"), rp.Flatten()).infer_shapes((1, 3, 3))
    with pytest.raises(TypeError, match="pads must be 4 ints"):
        rp.Pad((1, 1))
    with pytest.raises(ValueError, match="value applies to mode='constant'"):
        rp.Pad((1, 1, 1, 1), "reflect", value=1.0)


def test_reference_patterns_of_a_grouped_conv():
    """PatternNet's pattern of a grouped conv lives on each unit's group (Kindermans et al. 2018,
    Eq. 7 per receptive field): fitted on the grouped layer, it equals the pattern fitted on a
    separate dense conv that sees only that group's channels, and is zero across groups."""
    rng = np.random.default_rng(9)
    groups, cg, og = 2, 2, 3
    w = rng.standard_normal((groups * og, cg, 3, 3))
    data = rng.standard_normal((96, groups * cg, 6, 6))
    grouped = rp.Sequential(rp.Conv2d.from_compact(w, None, padding=1, groups=groups), rp.ReLU(), rp.Flatten())
    a = rp.fit_patterns(grouped, data).patterns["0"]
    for g in range(groups):
        part = rp.Sequential(rp.Conv2d(w[g * og:(g + 1) * og], None, padding=1), rp.ReLU(), rp.Flatten())
        ref = rp.fit_patterns(part, data[:, g * cg:(g + 1) * cg]).patterns["0"]
        np.testing.assert_allclose(a[g * og:(g + 1) * og, g * cg:(g + 1) * cg], ref, rtol=1e-9, atol=1e-12)
    assert np.all(a[~grouped.nodes[0].layer.structure_mask()] == 0)


def test_reference_depthwise_path_matches_dense_gemm(monkeypatch):
    """The depthwise multiply-add path (forward, gradient) gives the dense block-diagonal GEMM's
    numbers: the same layer with groups=1 recorded (a plain dense conv with zeros) as reference."""
    from relprop.core import linear

    calls = []
    for fn in ("depthwise_forward", "depthwise_grad"):
        orig = getattr(linear, fn)
        monkeypatch.setattr(linear, fn, lambda *a, _f=orig, _n=fn: (calls.append(_n), _f(*a))[1])
    rng = np.random.default_rng(11)
    for stride, dil, pad in ((1, 1, 1), (2, 2, 2), (1, 3, 0)):
        dw = rp.Conv2d.from_compact(rng.standard_normal((6, 1, 3, 3)), rng.standard_normal(6), stride, pad, 6, dil)
        dense = rp.Conv2d(dw.weight, dw.bias, stride, pad)
        x = rng.standard_normal((3, 6, 9, 9))
        nets = [rp.Sequential(layer, rp.ReLU(), rp.Flatten()) for layer in (dw, dense)]
        np.testing.assert_allclose(rp.forward(nets[0], x), rp.forward(nets[1], x), rtol=1e-12, atol=1e-12)
        for t in (0, 5):
            np.testing.assert_allclose(rp.attribute(nets[0], x, "gradient", target=t),
                                       rp.attribute(nets[1], x, "gradient", target=t), rtol=1e-12, atol=1e-12)
    assert calls.count("depthwise_forward") == 3 * 3 and calls.count("depthwise_grad") == 3 * 2  # dw nets only


def test_reference_batchnorm_folds_into_grouped_conv():
    """BatchNorm after a depthwise conv folds into it (rp.canonize keeps groups); torch's forward."""
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(8)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8), bn, nn.ReLU6(),
                          *_head(8, 8)).double().eval()
    x = _input("x")
    net = rp.from_torch(model, x)
    kinds = [n.layer.kind for n in net.nodes]
    assert "BatchNorm2d" not in kinds and net.nodes[1].layer.groups == 8
    with torch.no_grad():
        _close(rp.forward(net, x), model(torch.from_numpy(x)).numpy(), 1e-10, "bn folded")


def test_errors_hostile_conv_structure(tmp_path):
    """A file whose groups do not fit the declared weight, or whose weight breaks the declared
    group structure, is refused with a message naming the node."""
    from relprop.io.native import write_archive

    def archive(groups, w):
        nodes = [{"name": "c", "kind": "Conv2d", "inputs": ["input"], "arrays": ["weight", "bias"],
                  "hyper": {"stride": [1, 1], "padding": [0, 0], "groups": groups, "dilation": [1, 1]}},
                 {"name": "f", "kind": "Flatten", "inputs": ["c"], "arrays": [], "hyper": {}}]
        path = tmp_path / f"m{groups}.npz"
        write_archive(path, "__graph__", {"format": "relprop-model", "version": 1, "nodes": nodes,
                                          "input_shape": None}, {"0.weight": w, "0.bias": np.zeros(4)})
        return path

    with pytest.raises(ValueError, match="groups=3 must divide"):
        rp.load(archive(3, np.zeros((4, 4, 3, 3))))
    with pytest.raises(ValueError, match="declare zeros"):
        rp.load(archive(2, np.ones((4, 4, 3, 3))))
    with pytest.raises(ValueError, match="groups"):
        rp.load(archive(0, np.zeros((4, 4, 3, 3))))
    ok = rp.load(archive(2, rp.Conv2d.from_compact(np.ones((4, 2, 3, 3)), groups=2).weight))
    assert ok.nodes[0].layer.groups == 2


@pytest.mark.parametrize("name", ["mobilenet", "grouped_first", "dilated_first", "pad_reflect"])
@pytest.mark.parametrize("rule", ["w_square", "flat"])
def test_peers_zennit_value_free_rules_everywhere(name, rule):
    """WSquare (w^2 of a structural zero is zero) and Flat (ones only on the taps) on every
    layer, grouped / dilated ones included, vs Zennit's rule on torch's own convolutions."""
    from zennit import rules as zr
    from zennit.composites import LayerMapComposite
    from zennit.types import Activation, Linear

    model, x = _build(name), _input(name)
    net, tgt = rp.from_torch(model, x), _targets(model, x)
    z_rule = zr.WSquare() if rule == "w_square" else zr.Flat()
    comp = LayerMapComposite(layer_map=[(Activation, zr.Pass()), (Sum, zr.Norm()), (Linear, z_rule)])
    r = rp.attribute(net, x, f"lrp.{rule}", target=tgt)
    _close(r, _zennit(model, x, tgt, comp), 1e-8, f"{name} lrp.{rule}")
