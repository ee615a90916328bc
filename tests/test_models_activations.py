"""ELU, GELU (exact and tanh), SiLU, Hardswish, Hardsigmoid, ReLU6 and Mish end to end: imported
from torch (module and functional forms, fx and torch.export) and from ONNX (TorchScript and
dynamo exporters, opsets 17 and 20), against torch, onnxruntime and Captum.

What each reference is:

* forward and gradient: torch itself (autograd), <= 1e-5 x max in float32, 1e-10 in float64.
  torch's float64 Hardsigmoid backward multiplies by the float32 constant ``1.0f / 6.0f``
  (autograd gives 0.16666667163 at z = 0 in float64), relprop by 1/6: that case compares to
  1e-7 relative in float64.
* integrated gradients: Captum's ``IntegratedGradients(method="gausslegendre")``, same steps, in
  float64 to 1e-7 (Captum casts its quadrature weights to float32).
* DeepLIFT rescale: Captum 0.9's ``DeepLift`` applies its Rescale rule (``nonlinear``) only to
  the module types in ``SUPPORTED_NON_LINEAR`` (an exact type lookup): of these activations
  only ``nn.ELU``. For GELU, SiLU, Hardswish, Hardsigmoid, ReLU6 (a ``Hardtanh`` subclass, so
  not matched) and Mish it backpropagates the plain gradient at x -- with only such
  nonlinearities its "DeepLift" is ``(x - x0) * grad f(x)``, shown below. relprop's Rescale is
  compared with Captum's own ``nonlinear`` rule registered for those types.
* derivatives: a float64 central finite difference of torch's function away from the kinks;
  at the kinks torch autograd's value exactly (ELU'(0) = alpha, ReLU6'(0) = ReLU6'(6) = 0,
  Hardsigmoid'(+-3) = 0, Hardswish'(-3) = 0, Hardswish'(3) = 1).
"""
from __future__ import annotations

import contextlib
import io
import json
import warnings
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import captum.attr._core.deep_lift as deep_lift_mod
from captum.attr import DeepLift, IntegratedGradients

import fake_device as fd
import relprop as rp
from tolerance import assert_blas_close  # noqa: E402

# name -> (torch module factory, functional form, relprop layer factory, kink points)
ACTS = {
    "elu": (lambda: nn.ELU(0.7), lambda x: F.elu(x, 0.7), lambda: rp.ELU(0.7), (0.0,)),
    "gelu": (nn.GELU, F.gelu, rp.GELU, ()),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
                  lambda: rp.GELU("tanh"), ()),
    "silu": (nn.SiLU, F.silu, rp.SiLU, ()),
    "hardswish": (nn.Hardswish, F.hardswish, rp.Hardswish, (-3.0, 3.0)),
    "hardsigmoid": (nn.Hardsigmoid, F.hardsigmoid, rp.Hardsigmoid, (-3.0, 3.0)),
    "relu6": (nn.ReLU6, F.relu6, rp.ReLU6, (0.0, 6.0)),
    "mish": (nn.Mish, F.mish, rp.Mish, ()),
}
NAMES = list(ACTS)
KIND = {"elu": "ELU", "gelu": "GELU", "gelu_tanh": "GELU", "silu": "SiLU", "hardswish": "Hardswish",
        "hardsigmoid": "Hardsigmoid", "relu6": "ReLU6", "mish": "Mish"}
MONOTONE = {"elu", "hardsigmoid", "relu6"}
TOL = {np.float32: 1e-5, np.float64: 1e-10}
IN_SHAPE = (2, 6, 6)


class Net(nn.Module):
    """Conv(2->4, 3x3, pad 1) - act - Conv(4->4, 3x3, stride 2) - act - Linear(16->8) - act -
    Linear(8->3); one activation module per use (Captum hooks modules), or the functional form."""

    def __init__(self, name, functional=False):
        super().__init__()
        g = torch.Generator().manual_seed(sum(map(ord, name)))
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, stride=2)
        self.l1, self.l2 = nn.Linear(16, 8), nn.Linear(8, 3)
        with torch.no_grad():
            for layer in (self.c1, self.c2, self.l1, self.l2):
                fan_in = layer.weight[0].numel()
                # pre-activations of a few units: the kinks at -3, 0, 3 and 6 are all visited
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * (3.0 / fan_in) ** 0.5)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=g))
        make, fn = ACTS[name][:2]
        self.fn = fn if functional else None
        self.a1, self.a2, self.a3 = make(), make(), make()

    def act(self, i, v):
        return self.fn(v) if self.fn is not None else (self.a1, self.a2, self.a3)[i](v)

    def forward(self, x):
        x = self.act(1, self.c2(self.act(0, self.c1(x))))
        return self.l2(self.act(2, self.l1(torch.flatten(x, 1))))


def model(name, dtype=np.float64, functional=False):
    m = Net(name, functional).eval()
    return m.double() if dtype == np.float64 else m


def inputs(n=3, seed=0, dtype=np.float64):
    return (1.5 * np.random.default_rng(seed).standard_normal((n,) + IN_SHAPE)).astype(dtype)


def torch_out(m, x):
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def torch_grad(m, x, target):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    out = m(xt)
    out[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    return xt.grad.numpy()


def assert_close(actual, expected, rtol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(np.max(np.abs(expected))), 1e-30)
    err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    assert err <= rtol * scale, f"max abs diff {err:.3g} > {rtol:g} x max|expected| {scale:.3g}"


def import_torch(m, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the importer's notices are not under test here
        return rp.from_torch(m, x)


def grad_tol(name, dtype):
    return 1e-7 if name == "hardsigmoid" and dtype == np.float64 else TOL[dtype]


# -- torch import: forward and gradient ------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("form", ["module", "functional"])
@pytest.mark.parametrize("name", NAMES)
def test_reference_torch_forward_and_gradient(name, form, dtype):
    m = model(name, dtype, functional=form == "functional")
    x = inputs(dtype=dtype)
    net = import_torch(m, x)
    assert [n.layer.kind for n in net.nodes].count(KIND[name]) == 3
    y = net(x)
    assert y.dtype == dtype
    assert_close(y, torch_out(m, x), TOL[dtype])
    target = np.array([0, 2, 1])
    assert_close(rp.attribute(net, x, "gradient", target=target), torch_grad(m, x, target), grad_tol(name, dtype))


@pytest.mark.parametrize("name", NAMES)
def test_reference_torch_export_path(name, monkeypatch):
    """The torch.export (aten-level) mapping, as taken when symbolic tracing fails."""
    def no_fx(*args, **kwargs):
        raise torch.fx.proxy.TraceError("symbolic tracing disabled by the test")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_fx)
    m, x = model(name, functional=True), inputs()
    net = import_torch(m, x)
    assert [n.layer.kind for n in net.nodes].count(KIND[name]) == 3
    assert_close(net(x), torch_out(m, x), 1e-10)


def test_reference_gelu_approximate_attribute_imported():
    nets = [import_torch(model(n), inputs()) for n in ("gelu", "gelu_tanh")]
    assert [{nd.layer.approximate for nd in net.nodes if nd.layer.kind == "GELU"} for net in nets] == \
        [{"none"}, {"tanh"}]


# -- Captum: integrated gradients and DeepLIFT ---------------------------------------------------------
@pytest.mark.peers
@pytest.mark.parametrize("name", NAMES)
def test_peers_captum_integrated_gradients(name):
    m, x = model(name), inputs()
    net, target, b = import_torch(m, x), np.array([1, 0, 2]), inputs(seed=1) * 0.2
    r = rp.attribute(net, x, "integrated_gradients", target=target, baseline=b, steps=16, scheme="gauss_legendre")
    ref = IntegratedGradients(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                           target=torch.as_tensor(target), n_steps=16, method="gausslegendre")
    # Captum 0.9 casts the quadrature weights to float32 (``torch.tensor(step_sizes).float()``,
    # integrated_gradients.py): in float64 it agrees to float32 precision of the weights
    assert_close(r, ref.detach().numpy(), 1e-7)


def captum_deeplift(m, x, b, target, rescale_types=()):
    """Captum's DeepLift; ``rescale_types``: activation types given Captum's own Rescale rule."""
    patch = {t: deep_lift_mod.nonlinear for t in rescale_types}
    with warnings.catch_warnings(), pytest.MonkeyPatch.context() as mp:
        warnings.simplefilter("ignore")
        for t, rule in patch.items():
            mp.setitem(deep_lift_mod.SUPPORTED_NON_LINEAR, t, rule)
        r = DeepLift(m).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b), target=torch.as_tensor(target))
    return r.detach().numpy()


@pytest.mark.peers
@pytest.mark.parametrize("name", NAMES)
def test_peers_captum_deeplift_rescale(name):
    """relprop's Rescale = Captum's Rescale: natively for ELU, with Captum's ``nonlinear`` rule
    registered for the types Captum 0.9 does not know; summation to delta holds."""
    m, x = model(name), inputs()
    net, target, b = import_torch(m, x), np.array([2, 1, 0]), inputs(seed=2) * 0.3
    r = rp.attribute(net, x, "deeplift.rescale", target=target, baseline=b)
    act_type = type(m.a1)
    native = act_type in deep_lift_mod.SUPPORTED_NON_LINEAR
    assert native == (name == "elu")
    assert_close(r, captum_deeplift(m, x, b, target, () if native else (act_type,)), 1e-9)
    rows = np.arange(len(x))
    delta = torch_out(m, x)[rows, target] - torch_out(m, b)[rows, target]
    np.testing.assert_allclose(r.reshape(len(x), -1).sum(1), delta, rtol=1e-9, atol=1e-12)


@pytest.mark.peers
@pytest.mark.parametrize("name", [n for n in NAMES if n != "elu"])
def test_peers_captum_deeplift_unknown_activation_is_gradient(name):
    """Documents Captum 0.9: an activation type it does not know gets the plain gradient at x, so
    on these nets (no other nonlinearity) its DeepLift is (x - x0) * grad f(x), not Rescale."""
    m, x = model(name), inputs()
    net, target, b = import_torch(m, x), np.array([0, 1, 2]), inputs(seed=3) * 0.3
    captum = captum_deeplift(m, x, b, target)
    assert_close(captum, (x - b) * torch_grad(m, x, target), 1e-10)
    rescale = rp.attribute(net, x, "deeplift.rescale", target=target, baseline=b)
    assert np.max(np.abs(rescale - captum)) > 1e-3 * np.max(np.abs(captum))  # the rules really differ


@pytest.mark.parametrize("name", NAMES)
def test_properties_reveal_cancel_only_on_monotone(name):
    """RevealCancel (at the Dense-fed activation) applies to the monotone activations only; the
    others keep Rescale. Both sum to the output difference."""
    m, x = model(name), inputs()
    net, target, b = import_torch(m, x), np.array([1, 1, 0]), inputs(seed=4) * 0.3
    assert all(nd.layer.activation == (name in MONOTONE) for nd in net.nodes if nd.layer.kind == KIND[name])
    rc = rp.attribute(net, x, "deeplift.reveal_cancel", target=target, baseline=b)
    rs = rp.attribute(net, x, "deeplift.rescale", target=target, baseline=b)
    rows = np.arange(len(x))
    delta = torch_out(m, x)[rows, target] - torch_out(m, b)[rows, target]
    np.testing.assert_allclose(rc.reshape(len(x), -1).sum(1), delta, rtol=1e-9, atol=1e-12)
    if name in MONOTONE:
        assert not np.allclose(rc, rs, rtol=1e-6, atol=0)
    else:
        np.testing.assert_allclose(rc, rs, rtol=1e-12, atol=0)


def test_properties_elu_monotone_only_for_nonnegative_alpha():
    assert [rp.ELU(a).activation for a in (1.0, 0.0, -0.5)] == [True, True, False]


# -- derivatives: finite differences, kinks, extreme inputs -----------------------------------------------
def elementwise_net(name, k, dtype):
    """x (N, k) -> f(x) summed: the gradient for target 0 is f'(x) elementwise."""
    return rp.Sequential(rp.Dense(np.eye(k, dtype=dtype)), ACTS[name][2](), rp.Dense(np.ones((1, k), dtype)))


def torch_derivative(name, z):
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    ACTS[name][1](zt).sum().backward()
    return zt.grad.numpy()


@pytest.mark.parametrize("name", NAMES)
def test_reference_derivative_central_difference(name):
    z = np.linspace(-8, 8, 321) + 0.013  # away from the kinks (at least 1e-3 off each)
    assert all(np.min(np.abs(z - k)) > 1e-3 for k in ACTS[name][3])
    h = 1e-6
    zt = torch.from_numpy(np.stack([z + h, z - h]))
    with torch.no_grad():
        fp, fm = ACTS[name][1](zt).numpy()
    fd_ = (fp - fm) / (2 * h)
    got = rp.attribute(elementwise_net(name, z.size, np.float64), z[None], "gradient", target=0)[0]
    np.testing.assert_allclose(got, fd_, rtol=0, atol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_reference_kinks_match_torch_autograd(name, dtype):
    z = np.array(sorted({0.0, *ACTS[name][3]} | {k + d for k in ACTS[name][3] for d in (-0.5, 0.5)}), dtype)
    got = rp.attribute(elementwise_net(name, z.size, dtype), z[None], "gradient", target=0)[0]
    want = torch_derivative(name, z)
    if name == "hardsigmoid" and dtype == np.float64:  # torch's float32 1/6 (module docstring)
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)
        kinks = np.isin(z, ACTS[name][3])
        np.testing.assert_array_equal(got[kinks], want[kinks])
    else:  # elementwise libm results (numpy vs torch) may differ in the last ulp away from the kinks
        kinks = np.isin(z, ACTS[name][3])
        np.testing.assert_array_equal(got[kinks], want[kinks])
        np.testing.assert_allclose(got, want, rtol=4 * np.finfo(dtype).eps, atol=4 * np.finfo(dtype).tiny)


@pytest.mark.parametrize("name", NAMES)
def test_errors_extreme_inputs_stay_finite(name):
    """|z| = 1e4 in float32: forward, gradient, DeepLIFT and IG are finite, with no overflow, invalid
    operation or division by zero on the way (underflow to 0 is the intended saturation), and
    forward and gradient equal torch's."""
    z = np.array([-1e4, -1e3, -50.0, 50.0, 1e3, 1e4], np.float32)
    net = elementwise_net(name, z.size, np.float32)
    x = z[None]
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        warnings.simplefilter("error")
        y = net(x)
        g = rp.attribute(net, x, "gradient", target=0)
        dl = rp.attribute(net, x, "deeplift.rescale", target=0, baseline=0.0)
        ig = rp.attribute(net, x, "integrated_gradients", target=0, steps=8)
    for r in (y, g, dl, ig):
        assert np.all(np.isfinite(r))
    with torch.no_grad():
        want = ACTS[name][1](torch.from_numpy(z)).numpy()
    assert_close(y[0, 0], want.sum(), 1e-6)
    np.testing.assert_allclose(g[0], torch_derivative(name, z), rtol=1e-6, atol=1e-6)


# -- the GPU code path (host-emulated device) ----------------------------------------------------------------
def all_acts_net(dtype=np.float64):
    """Dense(6->6) - act, for every activation in turn, then Dense(6->3)."""
    rng = np.random.default_rng(11)
    layers = []
    for name in NAMES:
        layers += [rp.Dense((1.5 * rng.standard_normal((6, 6))).astype(dtype), rng.standard_normal(6).astype(dtype)),
                   ACTS[name][2]()]
    return rp.Sequential(*layers, rp.Dense(rng.standard_normal((3, 6)).astype(dtype)))


@pytest.mark.parametrize("method,params", [("gradient", {}), ("integrated_gradients", {"steps": 6}),
                                           ("deeplift.rescale", {"baseline": 0.1}),
                                           ("deeplift.reveal_cancel", {"baseline": 0.1}), ("lrp.epsilon", {})])
def test_reference_device_path_matches_host(method, params):
    net = all_acts_net()
    x = np.random.default_rng(1).standard_normal((4, 6)) * 2
    host = rp.attribute(net, x, method, target=1, **params)
    dev = fd.attribute_on_device(net, x, method, target=1, **params)
    np.testing.assert_allclose(dev, host, rtol=1e-12, atol=1e-14)


# -- save / load ---------------------------------------------------------------------------------------
def test_reference_save_load_round_trip(tmp_path):
    net = all_acts_net(np.float32)
    path = tmp_path / "acts.npz"
    rp.save(net, str(path))
    back = rp.load(str(path))
    assert [repr(n.layer) for n in back.nodes] == [repr(n.layer) for n in net.nodes]
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    assert_blas_close(back(x), net(x))


def test_errors_load_refuses_bad_hyper_parameter(tmp_path):
    path = tmp_path / "g.npz"
    rp.save(rp.Sequential(rp.Dense(np.eye(3)), rp.GELU("tanh"), rp.Dense(np.ones((2, 3)))), str(path))
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(str(arrays["__graph__"]))
    header["nodes"][1]["hyper"]["approximate"] = "cubic"
    arrays["__graph__"] = np.array(json.dumps(header))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    assert zipfile.is_zipfile(path)
    with pytest.raises(ValueError, match=r"GELU.*approximate must be one of \('none', 'tanh'\), got 'cubic'"):
        rp.load(str(path))


# -- bad parameters ----------------------------------------------------------------------------------
def test_errors_bad_parameters():
    with pytest.raises(TypeError, match=r"ELU: alpha must be a finite number, got '1' \(str\)"):
        rp.ELU("1")
    with pytest.raises(TypeError, match=r"ELU: alpha must be a finite number, got True"):
        rp.ELU(True)
    with pytest.raises(ValueError, match=r"ELU: alpha must be a finite number, got inf"):
        rp.ELU(float("inf"))
    with pytest.raises(ValueError, match=r"GELU: approximate must be one of \('none', 'tanh'\), got 'erf'"):
        rp.GELU("erf")
    with pytest.raises(TypeError, match=r"GELU: approximate must be one of .*got None \(NoneType\)"):
        rp.GELU(None)
    layer = rp.GELU()
    with pytest.raises(ValueError, match="approximate must be one of"):
        layer.approximate = "sigmoid"
    assert layer.approximate == "none" and layer.version == 0
    layer.approximate = "tanh"
    assert layer.version == 1


def test_errors_torch_hardtanh_other_than_relu6():
    m = nn.Sequential(nn.Linear(4, 3), nn.Hardtanh(-1.0, 1.0)).eval()
    with pytest.raises(ValueError, match=r"Hardtanh.*hardtanh\(min_val=-1.0, max_val=1.0\).*only as ReLU6"):
        rp.from_torch(m, np.zeros((2, 4), np.float32))
    net = import_torch(nn.Sequential(nn.Linear(4, 3), nn.Hardtanh(0.0, 6.0)).eval(), np.zeros((2, 4), np.float32))
    assert [n.layer.kind for n in net.nodes] == ["Dense", "ReLU6"]


# -- ONNX ------------------------------------------------------------------------------------------
def run_ort(path, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def export(m, x, path, opset, dynamo):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        kw = {} if dynamo else {"dynamic_axes": {"x": {0: "batch"}, "y": {0: "batch"}}}
        torch.onnx.export(m, (torch.from_numpy(x),), str(path), dynamo=dynamo, opset_version=opset,
                          input_names=["x"], output_names=["y"], **kw)
    return path


# (exporter, opset): the TorchScript exporter decomposes GELU (opset < 20), SiLU and Mish; the
# dynamo exporter decomposes GELU at 17 with Pow(x, 3) and keeps Mish (opset 18: no opset-17 Mish)
EXPORTS = [("torchscript", 17), ("torchscript", 20), ("dynamo", 17), ("dynamo", 20)]


@pytest.mark.parametrize("exporter,opset", EXPORTS, ids=[f"{e}{o}" for e, o in EXPORTS])
@pytest.mark.parametrize("name", NAMES)
def test_reference_onnx_export_matches_onnxruntime_and_torch(name, exporter, opset, tmp_path):
    m, x = model(name, np.float32), inputs(n=2, dtype=np.float32)
    path = export(m, x, tmp_path / "m.onnx", opset, exporter == "dynamo")
    net = rp.from_onnx(path)
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count(KIND[name]) == 3, kinds  # every decomposed pattern became one layer
    assert len(kinds) == 8, kinds  # conv, act, conv, act, flatten, dense, act, dense: no leftovers
    x2 = x if exporter == "dynamo" else inputs(n=3, seed=5, dtype=np.float32)  # dynamo: fixed batch
    assert_close(net(x2), run_ort(path, x2), 1e-5)
    assert_close(net(x2), torch_out(m, x2), 1e-5)
    if name.startswith("gelu"):
        assert {n.layer.approximate for n in net.nodes if n.layer.kind == "GELU"} == \
            {"tanh" if name == "gelu_tanh" else "none"}


def onnx_model(nodes, inits, opset=17):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = dict(inits, W=np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32) * 2)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["z"])] + nodes, "g", [x], [y],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model_ = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model_.ir_version = 8
    return onnx.shape_inference.infer_shapes(model_)


def test_reference_onnx_hand_built_patterns(tmp_path):
    """Other spellings of the patterns: Erf of Mul(x, 1/sqrt 2) with the 0.5 first, Sigmoid*x with
    x second, Clip(x, 0) without max as ReLU."""
    cases = {
        "GELU": ([helper.make_node("Mul", ["z", "r2"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
                  helper.make_node("Add", ["one", "e"], ["a"]), helper.make_node("Mul", ["half", "z"], ["hz"]),
                  helper.make_node("Mul", ["hz", "a"], ["y"])],
                 {"r2": 2 ** -0.5, "one": 1.0, "half": 0.5}),
        "SiLU": ([helper.make_node("Sigmoid", ["z"], ["s"]), helper.make_node("Mul", ["s", "z"], ["y"])], {}),
        "ReLU": ([helper.make_node("Clip", ["z", "lo"], ["y"])], {"lo": 0.0}),
        "ReLU6": ([helper.make_node("Clip", ["z", "lo", "hi"], ["y"])], {"lo": 0.0, "hi": 6.0}),
        "Mish": ([helper.make_node("Mish", ["z"], ["y"])], {}),
    }
    x = np.random.default_rng(3).standard_normal((4, 4)).astype(np.float32)
    for kind, (nodes, inits) in cases.items():
        m = onnx_model(nodes, inits, opset=18 if kind == "Mish" else 17)
        path = tmp_path / f"{kind}.onnx"
        onnx.save(m, str(path))
        net = rp.from_onnx(path)
        assert [n.layer.kind for n in net.nodes] == ["Dense", kind]
        assert_close(net(x), run_ort(path, x), 1e-5)


def test_errors_onnx_unmapped_forms_name_the_op(tmp_path):
    bad = {
        r"HardSigmoid with alpha=0.2, beta=0.5 is not supported": (
            [helper.make_node("HardSigmoid", ["z"], ["y"])], {}),
        r"Clip with min=-1.0, max=1.0 is not supported": (
            [helper.make_node("Clip", ["z", "lo", "hi"], ["y"])], {"lo": -1.0, "hi": 1.0}),
        # 0.5 z (1 + erf(z / 2)) is not GELU: not fused, so its first op is refused by name
        r"op type 'Div' is not supported": (
            [helper.make_node("Div", ["z", "two"], ["u"]), helper.make_node("Erf", ["u"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["z", "a"], ["p"]),
             helper.make_node("Mul", ["p", "half"], ["y"])], {"two": 2.0, "one": 1.0, "half": 0.5}),
    }
    for msg, (nodes, inits) in bad.items():
        with pytest.raises(ValueError, match=msg):
            rp.from_onnx(onnx_model(nodes, inits))
