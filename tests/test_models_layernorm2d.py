"""LayerNorm over the channel axis of (N, C, H, W) (``rp.LayerNorm(..., axis=1)``): ConvNeXt's
``permute(0, 2, 3, 1) -> LayerNorm(C) -> permute(0, 3, 1, 2)`` (Liu et al. 2022, Sec. 2.6;
torchvision's ``LayerNorm2d``) and torch's ONNX export of it, ``Transpose(0, 2, 3, 1) ->
LayerNormalization(axis=-1) -> Transpose(0, 3, 1, 2)``.

The ConvNeXt block is written in torchvision's ``LayerNorm2d`` form, its pointwise MLP as 1x1
convolutions (``Conv2d(C, 4C, 1) -> GELU -> Conv2d(4C, C, 1)``). ConvNeXt's own form (``nn.Linear``
on the last dim of the channels-last 4-D tensor, the layer scale) imports too, as 1x1 convolutions
with the scale folded in: tests/test_import_convnext.py.

Expected values come from torch (forward, autograd), Captum (integrated gradients),
onnxruntime (the ONNX export), and plain numpy loops (LRP's identity rule with EpsilonPlusFlat,
DeepLIFT's LayerNorm decomposition per pixel).
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop as rp
from tolerance import assert_blas_close  # noqa: E402
from tolerance import assert_close_per_sample  # noqa: E402

C, HW, CLASSES = 4, 6, 3


class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d, verbatim."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        x = x.permute(0, 3, 1, 2)
        return x


class ModuleLN(nn.Module):
    """The same with the ``nn.LayerNorm`` module called between the permutes (ConvNeXt's Block)."""

    def __init__(self, c, eps):
        super().__init__()
        self.norm = nn.LayerNorm(c, eps=eps)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Block(nn.Module):
    """ConvNeXt block (depthwise 7x7, channel LayerNorm, 1x1 MLP with GELU, residual) and a head."""

    def __init__(self, norm):
        super().__init__()
        self.dwconv = nn.Conv2d(C, C, 7, padding=3, groups=C)
        self.norm = norm
        self.pw1, self.act, self.pw2 = nn.Conv2d(C, 4 * C, 1), nn.GELU(), nn.Conv2d(4 * C, C, 1)
        self.fc = nn.Linear(C * HW * HW, CLASSES)

    def forward(self, x):
        y = x + self.pw2(self.act(self.pw1(self.norm(self.dwconv(x)))))
        return self.fc(torch.flatten(y, 1))


NORMS = {"layernorm2d": lambda: LayerNorm2d(C, eps=1e-6), "module": lambda: ModuleLN(C, 1e-6)}


def model(name, dtype=torch.float64):
    torch.manual_seed(sum(map(ord, name)))
    m = Block(NORMS[name]())
    ln = m.norm if isinstance(m.norm, nn.LayerNorm) else m.norm.norm
    with torch.no_grad():  # the affine away from (1, 0)
        ln.weight.copy_(1 + 0.3 * torch.randn(C))
        ln.bias.copy_(0.2 * torch.randn(C))
    return m.to(dtype).eval()


def inputs(n=3, seed=0, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal((n, C, HW, HW)).astype(dtype)


assert_close = assert_close_per_sample


def torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def channel_lns(net):
    return [n.layer for n in net.nodes if n.layer.kind == "LayerNorm"]


# -- import and forward ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(NORMS))
def test_reference_import_is_one_channels_first_layernorm(name):
    net = rp.from_torch(model(name), inputs())
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds == ["Conv2d", "LayerNorm", "Conv2d", "GELU", "Conv2d", "Add", "Flatten", "Dense"], kinds
    (ln,) = channel_lns(net)
    assert ln.axis == 1 and ln.normalized_shape == (C,) and ln.eps == 1e-6


@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("name", list(NORMS))
def test_reference_torch_forward(name, dtype, rtol):
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    m, x = model(name, tdt), inputs(dtype=dtype)
    net = rp.from_torch(m, x)
    assert_close(rp.forward(net, x), torch_out(m, x), rtol, "forward")


@pytest.mark.parametrize("name", list(NORMS))
def test_reference_gradient_is_autograd(name):
    m, x = model(name), inputs()
    net, target = rp.from_torch(m, x), np.array([0, 2, 1])
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    m(xt)[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    assert_close(rp.attribute(net, x, "gradient", target=target), xt.grad.numpy(), 1e-10, "gradient")


@pytest.mark.peers
def test_peers_captum_integrated_gradients():
    from captum.attr import IntegratedGradients

    m, x = model("layernorm2d"), inputs()
    net, target, b = rp.from_torch(m, x), np.array([2, 1, 0]), 0.2 * inputs(seed=1)
    r = rp.attribute(net, x, "integrated_gradients", target=target, baseline=b, steps=16, scheme="gauss_legendre")
    ref = IntegratedGradients(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                           target=torch.as_tensor(target), n_steps=16, method="gausslegendre")
    assert_close(r, ref.detach().numpy(), 1e-7, "integrated gradients")


# -- ONNX --------------------------------------------------------------------------------------------
def export(m, x, opset):
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.from_numpy(x),), f, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return f.getvalue()


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("name", list(NORMS))
def test_reference_onnx_export_matches_onnxruntime(name, opset):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    m, x = model(name, torch.float32), inputs(dtype=np.float32)
    data = export(m, x, opset)
    ops = [n.op_type for n in onnx.load_from_string(data).graph.node]
    assert ops.count("Transpose") == 2 and "LayerNormalization" in ops, ops  # the pattern under test
    net = rp.from_onnx(data)
    (ln,) = channel_lns(net)
    assert ln.axis == 1 and ln.normalized_shape == (C,)
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert_close(rp.forward(net, x), want, 1e-5, "vs onnxruntime")


def test_errors_onnx_lone_transpose_is_refused():
    pytest.importorskip("onnx")

    class M(nn.Module):
        def forward(self, x):
            return torch.flatten(x.permute(0, 2, 3, 1), 1)

    with pytest.raises(ValueError, match="Transpose") as e:
        rp.from_onnx(export(M().eval(), inputs(dtype=np.float32), 17))
    assert "\n" not in str(e.value)


# -- LRP and DeepLIFT against numpy --------------------------------------------------------------
def test_properties_lrp_conserves_through_the_block():
    """Without conv / linear biases LRP-epsilon conserves through the Add's shares, GELU (pass) and
    the LayerNorm's identity rule (its beta included): sum R = s_c to the stabilizer. With
    EpsilonPlusFlat, z+ on the 1x1 convolutions drops the relevance of outputs with no positive
    contribution (a property of z+, not of the norm): conserved to about 1% there."""
    m = model("layernorm2d")
    for mod in (m.dwconv, m.pw1, m.pw2, m.fc):
        mod.bias = None
    x = inputs()
    net, target = rp.from_torch(m, x, canonize=False), np.array([0, 1, 2])
    s = torch_out(m, x)[np.arange(3), target]
    r = rp.attribute(net, x, "lrp.epsilon", target=target, epsilon=1e-9)
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), s, rtol=1e-5)
    r = rp.attribute(net, x, "lrp", target=target, rules=rp.composites.EpsilonPlusFlat())
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), s, rtol=3e-2)


def test_reference_lrp_identity_rule_numpy():
    """conv 3x3 (no padding; the first layer: Flat) -> channel LayerNorm (identity) -> Dense
    (epsilon), the EpsilonPlusFlat relevance written out in numpy loops."""
    rng = np.random.default_rng(7)
    cin, h = 3, 5
    ho = h - 2
    wc, bc = rng.standard_normal((C, cin, 3, 3)), rng.standard_normal(C)
    gamma, beta = 1 + 0.3 * rng.standard_normal(C), 0.2 * rng.standard_normal(C)
    wd = rng.standard_normal((2, C * ho * ho))
    net = rp.Sequential(rp.Conv2d(wc, bc, padding=0), rp.LayerNorm((C,), gamma, beta, eps=1e-6, axis=1),
                        rp.Flatten(), rp.Dense(wd, np.zeros(2)))
    x = rng.standard_normal((2, cin, h, h))
    want = np.zeros_like(x)
    for n in range(2):
        z = np.zeros((C, ho, ho))
        for o in range(C):
            for i in range(ho):
                for j in range(ho):
                    z[o, i, j] = (wc[o] * x[n, :, i:i + 3, j:j + 3]).sum() + bc[o]
        y = np.zeros_like(z)
        for i in range(ho):
            for j in range(ho):
                v = z[:, i, j]
                y[:, i, j] = (v - v.mean()) / np.sqrt(v.var() + 1e-6) * gamma + beta
        s = float(wd[1] @ y.ravel())
        r_y = (y.ravel() * wd[1] * s / (s + 1e-6 * np.sign(s))).reshape(y.shape)  # epsilon rule, output s_c
        r_z = r_y  # identity rule through the LayerNorm
        for o in range(C):  # flat: each output's relevance spread evenly over its 27 inputs
            for i in range(ho):
                for j in range(ho):
                    want[n, :, i:i + 3, j:j + 3] += r_z[o, i, j] / (cin * 9 + 1e-6)
    r = rp.attribute(net, x, "lrp", target=1, rules=rp.composites.EpsilonPlusFlat())
    np.testing.assert_allclose(r, want, rtol=1e-8, atol=1e-12)


def layernorm_deeplift_numpy(gz, z, z0, gamma, eps):
    """DeepLIFT multiplier of a LayerNorm over one vector (rows of z), plain loops: y_i =
    gamma_i c_i s + beta_i, split by the linear rule (c = x - mean), the Shapley product split of
    c_i * s and the Rescale of s = (var + eps)^-1/2 with Dvar = mean((c + c0) Dc)."""
    n, m = z.shape
    out = np.zeros_like(z)
    for r in range(n):
        c, c0 = z[r] - z[r].mean(), z0[r] - z0[r].mean()
        var, var0 = (c ** 2).mean(), (c0 ** 2).mean()
        s, s0 = 1 / np.sqrt(var + eps), 1 / np.sqrt(var0 + eps)
        k = (s - s0) / (var - var0)
        for i in range(m):
            for j in range(m):
                dc_dx = (1.0 if i == j else 0.0) - 1.0 / m
                dvar_dx = sum((c[t] + c0[t]) / m * ((1.0 if t == j else 0.0) - 1.0 / m) for t in range(m))
                dy = gamma[i] * ((s + s0) / 2 * dc_dx + (c[i] + c0[i]) / 2 * k * dvar_dx)
                out[r, j] += gz[r, i] * dy
    return out


def test_reference_deeplift_per_pixel_numpy():
    """channel LayerNorm -> Dense: the DeepLIFT attribution is, at each pixel, the LayerNorm
    decomposition of that pixel's channel vector times (x - x0)."""
    rng = np.random.default_rng(8)
    h = 3
    gamma, beta, wd = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal((1, C * h * h))
    net = rp.Sequential(rp.LayerNorm((C,), gamma, beta, axis=1), rp.Flatten(), rp.Dense(wd))
    x, x0 = rng.standard_normal((2, C, h, h)), 0.3 * rng.standard_normal((2, C, h, h))
    g = np.broadcast_to(wd.reshape(C, h, h), (2, C, h, h))
    want = np.zeros_like(x)
    for i in range(h):
        for j in range(h):
            mult = layernorm_deeplift_numpy(g[:, :, i, j], x[:, :, i, j], x0[:, :, i, j], gamma, 1e-5)
            want[:, :, i, j] = mult * (x - x0)[:, :, i, j]
    r = rp.attribute(net, x, "deeplift.rescale", target=0, baseline=x0)
    np.testing.assert_allclose(r, want, rtol=1e-9, atol=1e-12)


def test_properties_deeplift_summation_to_delta():
    m, x = model("module"), inputs()
    net, target, b = rp.from_torch(m, x), np.array([0, 2, 1]), 0.3 * inputs(seed=3)
    r = rp.attribute(net, x, "deeplift.rescale", target=target, baseline=b)
    rows = np.arange(3)
    delta = torch_out(m, x)[rows, target] - torch_out(m, b)[rows, target]
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), delta, rtol=1e-8, atol=1e-10)


def test_reference_lrp_linear_rule_numpy():
    """``lrp_rule="linear"``: mean and std held constant, z-rule on the affine map, per pixel."""
    rng = np.random.default_rng(9)
    gamma, beta, wd = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal((1, C * 4))
    net = rp.Sequential(rp.LayerNorm((C,), gamma, beta, lrp_rule="linear", axis=1), rp.Flatten(), rp.Dense(wd))
    x = rng.standard_normal((2, C, 2, 2))
    mu, sd = x.mean(1, keepdims=True), np.sqrt(x.var(1, keepdims=True) + 1e-5)
    g, b = gamma.reshape(1, C, 1, 1), beta.reshape(1, C, 1, 1)
    y = (x - mu) / sd * g + b
    r_y = y * wd.reshape(1, C, 2, 2)  # z-rule of the Dense (no bias), epsilon 1e-12
    stab = lambda z: z + 1e-6 * np.where(z >= 0, 1.0, -1.0)  # noqa: E731 - the pool stabilizer
    want = (g * x / sd) * r_y / stab(y)
    r = rp.attribute(net, x, "lrp.epsilon", target=0, epsilon=1e-12)
    np.testing.assert_allclose(r, want, rtol=1e-7, atol=1e-12)


# -- save / load, errors -------------------------------------------------------------------------
def test_reference_save_load_round_trip(tmp_path):
    m, x = model("layernorm2d"), inputs()
    net = rp.from_torch(m, x)
    path = tmp_path / "convnext_block.npz"
    rp.save(net, str(path))
    back = rp.load(str(path))
    (ln,) = channel_lns(back)
    assert ln.axis == 1
    assert_blas_close(rp.forward(back, x), rp.forward(net, x))
    assert_blas_close(rp.attribute(back, x, "gradient", target=0),
                      rp.attribute(net, x, "gradient", target=0))


def test_reference_file_without_axis_loads_as_trailing_layernorm(tmp_path):
    """Files written before ``axis`` existed carry no such hyper-parameter: trailing dims."""
    from relprop.io import native

    path = tmp_path / "old.npz"
    node = {"name": "ln", "kind": "LayerNorm", "inputs": ["input"], "arrays": ["weight", "bias"],
            "hyper": {"normalized_shape": [4], "eps": 1e-5, "lrp_rule": "identity"}}
    native.write_archive(str(path), "__graph__", {"format": "relprop-model", "version": 1, "nodes": [node],
                                                  "input_shape": [3, 4]},
                         {"0.weight": np.ones(4), "0.bias": np.zeros(4)})
    assert rp.load(str(path)).nodes[0].layer.axis is None


def test_errors_load_refuses_a_bad_axis(tmp_path):
    from relprop.io import native

    path = tmp_path / "bad.npz"
    node = {"name": "ln", "kind": "LayerNorm", "inputs": ["input"], "arrays": ["weight", "bias"],
            "hyper": {"normalized_shape": [3], "eps": 1e-5, "lrp_rule": "identity", "axis": 2}}
    native.write_archive(str(path), "__graph__", {"format": "relprop-model", "version": 1, "nodes": [node],
                                                  "input_shape": [3, 4]},
                         {"0.weight": np.ones(3), "0.bias": np.zeros(3)})
    with pytest.raises(ValueError, match="axis must be None"):
        rp.load(str(path))


def test_errors_lone_permute_is_refused_in_one_line():
    class M(nn.Module):
        def forward(self, x):
            return torch.flatten(x.permute(0, 2, 3, 1), 1)

    class Half(nn.Module):  # permute and layer_norm, no permute back
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(C)

        def forward(self, x):
            return torch.flatten(self.norm(x.permute(0, 2, 3, 1)), 1)

    for m in (M(), Half()):
        with pytest.raises(ValueError, match="permute.*not supported") as e:
            rp.from_torch(m.eval(), inputs())
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"normalized_shape": (C,), "axis": 2}, "axis must be None"),
    ({"normalized_shape": (C,), "axis": True}, "axis must be None"),
    ({"normalized_shape": (C,), "axis": np.ones(2)}, "axis must be None"),
    ({"normalized_shape": (C, 2), "weight": np.ones((C, 2)), "axis": 1}, r"normalized_shape must be \(C,\)"),
])
def test_errors_bad_axis(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rp.LayerNorm(**kwargs)


def test_errors_channels_first_shape_is_checked():
    with pytest.raises(ValueError, match=r"axis=1 .* expects \(C=4"):
        rp.LayerNorm((C,), axis=1).out_shape((5, 2, 2))
