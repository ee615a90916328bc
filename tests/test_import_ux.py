"""What a new user meets when importing a model: the canonical PyTorch MNIST example imports
unchanged (torch and ONNX, opsets 17 and 20), a final softmax / log-softmax is stripped with one
``relprop.io.ImportNotice`` line (``final_softmax="strip" | "keep" | "refuse"``), an op the
importers do not map fails with ONE line naming the op, where it is and what to do,
``relprop.io.supported_ops()`` is read from the mapping tables, and z^B bounds accept inputs
that pass them by float32 rounding only, and name the offending values with every digit when not.

References are independent of relprop: torch's own forward (the logits computed by a separately
written forward), Captum's ``Saliency`` for the gradient, onnxruntime for ONNX models, and
``inspect`` for the source lines an error must point at.
"""
from __future__ import annotations

import copy
import inspect
import operator
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from captum.attr import Saliency
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import relprop as rp
import relprop.io
from relprop.io import ImportNotice

RTOL32 = 1e-5


# --------------------------------------------------------------------------------------------
# The canonical MNIST example (pytorch/examples, mnist/main.py), unchanged
# --------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        output = F.log_softmax(x, dim=1)
        return output


class NetLogits(nn.Module):
    """The same weights, written out again, returning the scores before the log-softmax."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        n = self.net
        h = F.max_pool2d(F.relu(n.conv2(F.relu(n.conv1(x)))), 2)
        return n.fc2(F.relu(n.fc1(torch.flatten(h, 1))))


@pytest.fixture(scope="module")
def mnist():
    torch.manual_seed(1)
    model = Net().eval()
    rng = np.random.default_rng(3)
    x = ((rng.uniform(0, 1, (4, 1, 28, 28)) - 0.1307) / 0.3081).astype(np.float32)  # as the example normalizes
    return model, x


def _logits(model, x, dtype=torch.float32):
    ref = NetLogits(copy.deepcopy(model)).to(dtype).eval()
    with torch.no_grad():
        return ref(torch.from_numpy(x).to(dtype)).numpy()


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _captum_saliency(model, x, target):
    """Captum's Saliency (abs=False: the signed gradient) of the logits, in float64."""
    ref = NetLogits(copy.deepcopy(model)).double().eval()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    return Saliency(ref).attribute(xt, target=torch.as_tensor(target), abs=False).detach().numpy()


def _check_mnist_import(net, model, x):
    kinds = [n.layer.kind for n in net.nodes if n.layer.kind != "Dropout"]  # (ONNX export drops them)
    assert kinds == ["Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Dense", "ReLU", "Dense"]
    logits = _logits(model, x)
    y = rp.forward(net, x)
    assert y.shape == (len(x), 10) and _rel(y, logits) <= RTOL32
    x64 = x.astype(np.float64)
    assert _rel(rp.forward(net, x64), _logits(model, x64, torch.float64)) <= 1e-12
    target = np.array([3, 0, 7, 9])
    g = rp.attribute(net, x64, "gradient", target=target)
    assert _rel(g, _captum_saliency(model, x, target)) <= 1e-10


def test_mnist_example_imports_unchanged_from_torch(mnist):
    model, x = mnist
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = rp.from_torch(model, torch.zeros(1, 1, 28, 28))
    notices = [w for w in caught if issubclass(w.category, ImportNotice)]
    assert len(notices) == 1 and len(caught) == 1
    msg = str(notices[0].message)
    assert "\n" not in msg and "log_softmax" in msg and "final_softmax=" in msg
    assert notices[0].filename == __file__  # points at the caller's line
    _check_mnist_import(net, model, x)


def _export(model, path, opset):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 28, 28),), str(path), dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path


@pytest.mark.parametrize("opset", [17, 20])
def test_mnist_example_imports_unchanged_from_onnx(mnist, opset, tmp_path):
    model, x = mnist
    path = _export(model, tmp_path / "mnist.onnx", opset)
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == opset and proto.graph.node[-1].op_type == "LogSoftmax"
    with pytest.warns(ImportNotice, match=r"LogSoftmax"):
        net = rp.from_onnx(path)
    _check_mnist_import(net, model, x)
    # the model onnxruntime runs ends in the log-softmax of exactly these logits
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    z = rp.forward(net, x).astype(np.float64)
    log_softmax = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
    assert _rel(log_softmax, y) <= 1e-5


# --------------------------------------------------------------------------------------------
# final_softmax: every torch spelling of a final softmax
# --------------------------------------------------------------------------------------------
HEADS = {
    "nn.Softmax(1)": ("softmax", lambda: nn.Softmax(dim=1)),
    "nn.Softmax(-1)": ("softmax", lambda: nn.Softmax(dim=-1)),
    "nn.LogSoftmax(1)": ("log_softmax", lambda: nn.LogSoftmax(dim=1)),
    "F.softmax": ("softmax", lambda: (lambda z: F.softmax(z, dim=1))),
    "F.log_softmax": ("log_softmax", lambda: (lambda z: F.log_softmax(z, dim=-1))),
    "torch.softmax": ("softmax", lambda: (lambda z: torch.softmax(z, -1))),
    "torch.log_softmax": ("log_softmax", lambda: (lambda z: torch.log_softmax(z, 1))),
    "x.softmax": ("softmax", lambda: (lambda z: z.softmax(1))),
    "x.log_softmax": ("log_softmax", lambda: (lambda z: z.log_softmax(dim=-1))),
}


class Head(nn.Module):
    def __init__(self, head):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)
        self.head = head if isinstance(head, nn.Module) else None
        self.fn = None if isinstance(head, nn.Module) else head

    def logits(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def forward(self, x):
        z = self.logits(x)
        return self.head(z) if self.head is not None else self.fn(z)


X6 = np.random.default_rng(5).standard_normal((5, 6)).astype(np.float32)


def _torch(f, x):
    with torch.no_grad():
        return f(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("head", list(HEADS))
def test_final_softmax_stripped_kept_or_refused(head):
    kind, make = HEADS[head]
    model = Head(make()).eval()
    with pytest.warns(ImportNotice, match=kind):
        net = rp.from_torch(model, X6)
    assert net.nodes[-1].layer.kind == "Dense"
    assert _rel(rp.forward(net, X6), _torch(model.logits, X6)) <= RTOL32
    if kind == "softmax":
        kept = rp.from_torch(model, X6, final_softmax="keep")
        assert kept.nodes[-1].layer.kind == "Softmax"
        assert _rel(rp.forward(kept, X6), _torch(model, X6)) <= RTOL32
        assert _rel(rp.scores(kept, X6), _torch(model.logits, X6)) <= RTOL32
    else:
        with pytest.raises(ValueError, match=r"final_softmax='keep' cannot keep the final log_softmax.*no LogSoftmax"):
            rp.from_torch(model, X6, final_softmax="keep")
    with pytest.raises(ValueError, match=rf"ends in a {kind}.*final_softmax='refuse'.*final_softmax='strip'"):
        rp.from_torch(model, X6, final_softmax="refuse")


def test_final_softmax_stripped_on_the_torch_export_path(monkeypatch):
    """When symbolic tracing fails, torch.export's aten.log_softmax is stripped the same way."""
    def no_fx(*args, **kwargs):
        raise torch.fx.proxy.TraceError("symbolic tracing disabled by the test")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_fx)
    model = Head(nn.LogSoftmax(dim=1)).eval()
    with pytest.warns(ImportNotice, match=r"log_softmax"):
        net = rp.from_torch(model, X6)
    assert _rel(rp.forward(net, X6), _torch(model.logits, X6)) <= RTOL32


def test_import_notice_is_a_user_warning_that_can_be_silenced():
    assert issubclass(ImportNotice, UserWarning)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would raise
        warnings.filterwarnings("ignore", category=relprop.io.ImportNotice)
        rp.from_torch(Head(nn.Softmax(dim=1)).eval(), X6)


class SoftmaxInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(F.softmax(self.fc1(x), dim=1))


def _line_of(cls, text):
    """file:line of the first source line of ``cls.forward`` containing ``text`` (via inspect)."""
    lines, start = inspect.getsourcelines(cls.forward)
    k = next(i for i, ln in enumerate(lines) if text in ln)
    return f"{inspect.getsourcefile(cls)}:{start + k}"


def test_errors_softmax_not_last_names_where():
    for option in ("strip", "keep", "refuse"):
        with pytest.raises(ValueError) as e:
            rp.from_torch(SoftmaxInside().eval(), X6, final_softmax=option)
        msg = str(e.value)
        assert "\n" not in msg and "not the model's last operation" in msg
        assert "torch.nn.functional.softmax" in msg and _line_of(SoftmaxInside, "F.softmax") in msg


@pytest.mark.parametrize("bad", ["strip ", "Keep", None, 1])
def test_errors_final_softmax_option(bad):
    with pytest.raises(ValueError, match=r"final_softmax must be one of 'strip', 'keep', 'refuse'"):
        rp.from_torch(Head(nn.Softmax(dim=1)).eval(), X6, final_softmax=bad)
    with pytest.raises(ValueError, match=r"final_softmax must be one of 'strip', 'keep', 'refuse'"):
        rp.from_onnx(_onnx_head("Softmax"), final_softmax=bad)


class SoftmaxOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return torch.softmax(self.conv(x), dim=1)


def test_errors_softmax_over_feature_maps():
    x = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match=r"softmax over dim=1 of a 4-d tensor.*\(N, classes\)"):
        rp.from_torch(SoftmaxOverChannels().eval(), x)


# --------------------------------------------------------------------------------------------
# Unsupported ops: one line, the op, where, what to do
# --------------------------------------------------------------------------------------------
class Shrink(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.body = nn.Sequential(nn.ReLU(), nn.Hardshrink())
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(self.conv(x)), 1))


class Sine(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.fc(x)
        return torch.sin(h)


class CumSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x).cumsum(1)


def _assert_one_line_error(msg, *parts):
    assert "\n" not in msg, msg
    for p in parts:
        assert p in msg, (p, msg)
    assert "relprop.io.supported_ops()" in msg
    assert len(msg) < 500, msg  # not the list of everything supported
    assert "torch.nn.AvgPool2d" not in msg and "BatchNormalization" not in msg


def test_errors_unsupported_torch_ops_are_one_line():
    x8 = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError) as e:
        rp.from_torch(Shrink().eval(), x8)
    _assert_one_line_error(str(e.value), "torch.nn.Hardshrink", "node 'body_1'", "(module 'body.1')",
                           _line_of(Shrink, "self.body("))
    with pytest.raises(ValueError) as e:
        rp.from_torch(Sine().eval(), X6)
    _assert_one_line_error(str(e.value), "torch.sin", "node 'sin'", _line_of(Sine, "torch.sin"))
    with pytest.raises(ValueError) as e:
        rp.from_torch(CumSum().eval(), X6)
    _assert_one_line_error(str(e.value), "Tensor.cumsum()", "node 'cumsum'", _line_of(CumSum, "cumsum"))


def test_errors_unsupported_torch_op_on_the_export_path(monkeypatch):
    """torch.export records the source line itself; the message names it as well."""
    def no_fx(*args, **kwargs):
        raise torch.fx.proxy.TraceError("symbolic tracing disabled by the test")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_fx)
    with pytest.raises(ValueError) as e:
        rp.from_torch(Sine().eval(), X6)
    _assert_one_line_error(str(e.value), "aten.sin", _line_of(Sine, "torch.sin"))


# --------------------------------------------------------------------------------------------
# ONNX: final Softmax / LogSoftmax, and the unsupported-op line
# --------------------------------------------------------------------------------------------
W1 = np.random.default_rng(11).standard_normal((6, 8)).astype(np.float32)
W2 = np.random.default_rng(12).standard_normal((8, 4)).astype(np.float32)


def _onnx_head(op, axis=-1, opset=17, head=True, middle=None):
    """x (N, 6) -> MatMul -> Relu -> MatMul -> [op]; ``middle`` puts an op between the layers."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1")]
    if middle is not None:
        nodes.append(helper.make_node(middle, ["h"], ["m"], name="mid"))
    nodes += [helper.make_node("Relu", ["m" if middle else "h"], ["r"], name="relu"),
              helper.make_node("MatMul", ["r", "W2"], ["z" if head else "y"], name="fc2")]
    if head:
        nodes.append(helper.make_node(op, ["z"], ["y"], name="head", axis=axis))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(W2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("op, axis, opset", [("Softmax", -1, 17), ("Softmax", 1, 20), ("LogSoftmax", 1, 17),
                                             ("LogSoftmax", -1, 20)])
def test_onnx_final_softmax_stripped_kept_or_refused(op, axis, opset):
    model = _onnx_head(op, axis, opset)
    logits = _ort(_onnx_head(op, axis, opset, head=False), X6)
    with pytest.warns(ImportNotice, match=rf"stripped the final {op} node 'head'"):
        net = rp.from_onnx(model)
    assert net.nodes[-1].layer.kind == "Dense" and _rel(rp.forward(net, X6), logits) <= RTOL32
    if op == "Softmax":
        kept = rp.from_onnx(model, final_softmax="keep")
        assert kept.nodes[-1].layer.kind == "Softmax" and _rel(rp.forward(kept, X6), _ort(model, X6)) <= RTOL32
    else:
        with pytest.raises(ValueError, match=r"'head' \(LogSoftmax\).*cannot keep a LogSoftmax.*no LogSoftmax layer"):
            rp.from_onnx(model, final_softmax="keep")
    with pytest.raises(ValueError, match=rf"'head' \({op}\).*final_softmax='refuse'"):
        rp.from_onnx(model, final_softmax="refuse")


def test_errors_onnx_softmax_not_last():
    with pytest.raises(ValueError, match=r"'mid' \(Softmax\): Softmax must be the model's last op.*move it"):
        rp.from_onnx(_onnx_head("Softmax", head=False, middle="Softmax"))


def test_errors_unsupported_onnx_op_is_one_line():
    with pytest.raises(ValueError) as e:
        rp.from_onnx(_onnx_head("Softmax", middle="Erf"))
    _assert_one_line_error(str(e.value), "ONNX node 'mid' (Erf)", "op type 'Erf'", "re-export")


# --------------------------------------------------------------------------------------------
# supported_ops(): read from the mapping tables
# --------------------------------------------------------------------------------------------
def test_supported_ops_lists_real_objects_sorted():
    ops = relprop.io.supported_ops()
    assert set(ops) == {"torch", "onnx"}
    for key in ("torch", "onnx"):
        assert ops[key] == sorted(set(ops[key])) and len(ops[key]) > 10
    assert {"torch.nn.Conv2d", "torch.nn.LogSoftmax", "torch.nn.functional.log_softmax", "Tensor.view()",
            "operator.add"} <= set(ops["torch"])
    assert {"Conv", "Gemm", "Softmax", "LogSoftmax"} <= set(ops["onnx"])
    assert not any(name.startswith("aten.") for name in ops["torch"])
    # every torch entry names a real object (what the import errors call it)
    namespaces = {"torch.nn.functional": F, "torch.nn": nn, "torch": torch, "operator": operator,
                  "builtins": __builtins__ if isinstance(__builtins__, dict) else vars(__builtins__)}
    for name in ops["torch"]:
        if name.startswith("Tensor."):
            assert hasattr(torch.Tensor, name[len("Tensor."):-2]), name
            continue
        mod, _, attr = name.rpartition(".")
        ns = namespaces[mod]
        assert (attr in ns) if isinstance(ns, dict) else hasattr(ns, attr), name
    # every ONNX entry is an op type of the ONNX standard
    schemas = {s.name for s in onnx.defs.get_all_schemas()}
    assert set(ops["onnx"]) <= schemas


def test_supported_ops_follow_the_tables(monkeypatch):
    """Derived from the mapping tables, not a hard-coded list: a new entry shows up."""
    import relprop.io.onnx_import as oi
    import relprop.io.torch_import as ti

    monkeypatch.setitem(oi._HANDLERS, "Hardmax", "_identity")
    real = ti._module_table

    def more(torch_):
        table = dict(real(torch_))
        table[nn.Hardshrink] = ("identity", lambda m: {})
        return table

    monkeypatch.setattr(ti, "_module_table", more)
    ops = relprop.io.supported_ops()
    assert "Hardmax" in ops["onnx"] and "torch.nn.Hardshrink" in ops["torch"]


# --------------------------------------------------------------------------------------------
# z^B bounds (ZBox, EpsilonGammaBox, deep_taylor): float32 rounding of the bound is accepted
# --------------------------------------------------------------------------------------------
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
LOW = ((0.0 - MEAN) / STD).reshape(1, 3, 1, 1)   # the bounds of [0, 1] images, in float64
HIGH = ((1.0 - MEAN) / STD).reshape(1, 3, 1, 1)


def _box_net():
    r = np.random.default_rng(2)
    return rp.Sequential(rp.Conv2d(r.normal(0, 0.3, (4, 3, 3, 3)), r.normal(0, 0.1, 4), padding=1), rp.ReLU(),
                         rp.Flatten(), rp.Dense(r.normal(0, 0.3, (3, 4 * 5 * 5)), r.normal(0, 0.1, 3)))


def _normalized_images():
    """[0, 1] images with black and white pixels, normalized in float32 by torch (as a
    torchvision Normalize would): they land on the bounds up to float32 rounding."""
    img = np.random.default_rng(4).uniform(0, 1, (3, 3, 5, 5)).astype(np.float32)
    img[0, :, 0, :] = 0.0
    img[1, :, :, 2] = 1.0
    img[2] = 1.0
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((torch.from_numpy(img) - mean) / std).numpy()


@pytest.mark.parametrize("how", ["EpsilonGammaBox", "deep_taylor", "zbox_rule_list"])
def test_zbox_accepts_inputs_at_the_bounds_up_to_float32_rounding(how):
    net, x = _box_net(), _normalized_images()
    assert np.any(x < LOW) or np.any(x > HIGH)  # the case: outside the exact bounds by rounding

    def run(xx, low, high):
        if how == "EpsilonGammaBox":
            return rp.attribute(net, xx, "lrp", target=1, rules=rp.composites.EpsilonGammaBox(low, high))
        if how == "deep_taylor":
            return rp.attribute(net, xx, "deep_taylor", target=1, low=low, high=high)
        return rp.attribute(net, xx, "lrp", target=1, rules=[rp.rules.ZBox(low, high), rp.rules.Epsilon()])

    R = run(x, LOW, HIGH)
    # the rounding changes R by rounding only: x clipped into the exact box gives the same R
    clipped = np.clip(x.astype(np.float64), LOW, HIGH)
    R_clip = run(clipped, LOW, HIGH)
    assert np.all(np.isfinite(R)) and _rel(R, R_clip) <= 1e-5
    # float64 inputs exactly at the float64 bounds, bounds given in float32: accepted too
    run(clipped, LOW.astype(np.float32), HIGH.astype(np.float32))


def test_errors_zbox_bounds_name_the_values_with_every_digit():
    net, x = _box_net(), _normalized_images()
    x = x.copy()
    x[1, 2, 3, 4] = np.float32(HIGH[0, 2, 0, 0] + 0.01)
    with pytest.raises(ValueError) as e:
        rp.attribute(net, x, "lrp", target=0, rules=rp.composites.EpsilonGammaBox(LOW, HIGH))
    msg = str(e.value)
    assert "\n" not in msg
    assert "sample 1, feature (2, 3, 4)" in msg
    assert f"x = {float(x[1, 2, 3, 4])!r} > high = {float(HIGH[0, 2, 0, 0])!r}" in msg


def test_errors_zbox_bounds_beyond_a_few_ulps_refused():
    """Past the float32 rounding (here 16 float32 ulps below the bound) x is outside."""
    net = rp.Sequential(rp.Dense(np.ones((2, 3))), rp.ReLU(), rp.Dense(np.ones((2, 2))))
    low = np.float64(-2.1179039301310043)
    x = np.zeros((2, 3), np.float32)
    x[0, 1] = np.float32(low)
    for _ in range(16):
        x[0, 1] = np.nextafter(x[0, 1], np.float32(-np.inf))
    with pytest.raises(ValueError, match=r"sample 0, feature 1: x = -2\.11.* < low = -2\.1179039301310043"):
        rp.attribute(net, x, "lrp", target=0, rules=[rp.rules.ZBox(low, 3.0), rp.rules.Epsilon()])
    x[0, 1] = np.float32(low)  # within rounding: accepted
    rp.attribute(net, x, "lrp", target=0, rules=[rp.rules.ZBox(low, 3.0), rp.rules.Epsilon()])
