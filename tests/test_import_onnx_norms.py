"""ONNX import of the normalizations torch and the ONNX standard write, as relprop's GroupNorm
(Wu & He 2018, Eq. 1), and of GlobalMaxPool as AdaptiveMaxPool2d((1, 1)).

* torch's exporter (TorchScript, opsets 17 and 20; dynamo alike) writes ``nn.GroupNorm(G, C)`` as
  Reshape(N, G, -1) - InstanceNormalization(ones(G), zeros(G)) - Reshape(N, C, H, W) - Mul(w) -
  Add(b), and ``nn.InstanceNorm2d(affine=True)`` as one InstanceNormalization(w, b): each must
  import as exactly one GroupNorm node whose forward equals onnxruntime and torch and whose
  gradient equals torch autograd (float32, 1e-5 of the per-sample max).
* ONNX ``GroupNormalization`` (opset 21, per-channel scale / bias; opset 18's per-group form is
  refused by onnx's checker, hence by the import) and ``GlobalMaxPool``: against onnxruntime and
  a plain numpy formula.
* near misses of the torch pattern fail in one line naming what does not fit.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import relprop as rp
from tolerance import assert_close_per_sample  # noqa: E402

C, HW, CLASSES = 4, 5, 3


class Net(nn.Module):
    """conv stem -> norm -> flatten -> linear; the norm's affine drawn away from (1, 0)."""

    def __init__(self, norm):
        super().__init__()
        self.conv, self.norm, self.fc = nn.Conv2d(3, C, 3, padding=1), norm, nn.Linear(C * HW * HW, CLASSES)
        if getattr(norm, "weight", None) is not None:
            with torch.no_grad():
                norm.weight.copy_(1 + 0.3 * torch.randn(C))
                norm.bias.copy_(0.2 * torch.randn(C))

    def forward(self, x):
        return self.fc(self.norm(self.conv(x)).flatten(1))


NORMS = {f"group{g}_{'affine' if affine else 'plain'}": (lambda g=g, affine=affine: nn.GroupNorm(g, C, affine=affine))
         for g in (1, 2, C) for affine in (True, False)}
NORMS["instance_affine"] = lambda: nn.InstanceNorm2d(C, affine=True)
GROUPS = {name: (C if name.startswith("instance") else int(name[5])) for name in NORMS}


def build(name):
    torch.manual_seed(sum(map(ord, name)))
    return Net(NORMS[name]()).eval()


def inputs(n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, HW, HW)).astype(np.float32)


def export(m, x, opset, dynamo=False):
    f = io.BytesIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(m, (torch.from_numpy(x),), None, dynamo=True, opset_version=opset,
                                     input_names=["x"], output_names=["y"],
                                     dynamic_shapes={"x": {0: torch.export.Dim("b")}})
            return prog.model_proto.SerializeToString()
        torch.onnx.export(m, (torch.from_numpy(x),), f, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
    return f.getvalue()


assert_close = assert_close_per_sample


def ort_run(data, x):
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def torch_grad(m, x, target):
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    m(xt)[torch.arange(len(x)), torch.as_tensor(target)].sum().backward()
    return xt.grad.numpy()


def check_torch_import(m, data, groups):
    net = rp.from_onnx(data)
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds == ["Conv2d", "GroupNorm", "Flatten", "Dense"], kinds
    assert net.nodes[1].layer.num_groups == groups
    x = inputs(3, seed=4)
    with torch.no_grad():
        want = m(torch.from_numpy(x)).numpy()
    assert_close(net(x), ort_run(data, x), 1e-5, "vs onnxruntime")
    assert_close(net(x), want, 1e-5, "vs torch")
    target = [0, 2, 1]
    assert_close(rp.attribute(net, x, "gradient", target=target), torch_grad(m, x, target), 1e-5, "gradient")


# -- torch's exports ---------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("name", list(NORMS))
def test_reference_torch_export_is_one_groupnorm(name, opset):
    m = build(name)
    check_torch_import(m, export(m, inputs(), opset), GROUPS[name])


def test_reference_dynamo_export_is_one_groupnorm():
    pytest.importorskip("onnxscript")
    m = build("group2_affine")
    check_torch_import(m, export(m, inputs(), 18, dynamo=True), 2)


# -- hand-built models -------------------------------------------------------------------------------
def model(nodes, inits, opset, out_shape=("N", C * 9)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10 if opset >= 21 else 8)


def numpy_groupnorm(x, groups, weight, bias, eps):
    """(x - mean) / sqrt(var + eps) * weight + bias over groups of C / groups channels (Wu & He 2018)."""
    n = len(x)
    g = x.astype(np.float64).reshape(n, groups, -1)
    y = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
    return y * weight.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


HX = np.random.default_rng(3).standard_normal((2, C, 3, 3)).astype(np.float32)


def test_reference_groupnormalization_opset21():
    w = np.array([1.5, 0.5, -1.0, 2.0], np.float32)
    b = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
    m = model([helper.make_node("GroupNormalization", ["x", "w", "b"], ["n"], num_groups=2, epsilon=1e-3),
               helper.make_node("Flatten", ["n"], ["y"])], {"w": w, "b": b}, 21)
    data = m.SerializeToString()
    net = rp.from_onnx(data)
    assert [n.layer.kind for n in net.nodes] == ["GroupNorm", "Flatten"] and net.nodes[0].layer.num_groups == 2
    want = numpy_groupnorm(HX, 2, w, b, 1e-3).reshape(2, -1)
    assert_close(net(HX), want, 1e-5, "vs numpy")
    assert_close(net(HX), ort_run(data, HX), 1e-5, "vs onnxruntime")


def test_errors_groupnormalization_opset18_refused_by_checker():
    """opset 18's per-group GroupNormalization is deprecated: onnx's checker refuses it."""
    m = model([helper.make_node("GroupNormalization", ["x", "w", "b"], ["n"], num_groups=2),
               helper.make_node("Flatten", ["n"], ["y"])], {"w": np.ones(2, np.float32), "b": np.zeros(2, np.float32)},
              18)
    with pytest.raises(ValueError, match="not a valid ONNX model") as e:
        rp.from_onnx(m)
    assert "\n" not in str(e.value).split("onnx.checker")[0]


def test_reference_global_maxpool():
    m = model([helper.make_node("GlobalMaxPool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])], {}, 17,
              ("N", C))
    data = m.SerializeToString()
    net = rp.from_onnx(data)
    assert [n.layer.kind for n in net.nodes] == ["AdaptiveMaxPool2d", "Flatten"]
    assert net.nodes[0].layer.output_size == (1, 1)
    assert_close(net(HX), HX.max(axis=(2, 3)), 1e-7, "vs numpy")
    assert_close(net(HX), ort_run(data, HX), 1e-7, "vs onnxruntime")


def torch_pattern(groups=2, scale_size=2, back=None, w=None):
    """The TorchScript exporter's GroupNorm spelling, by hand, with knobs for near misses."""
    w = np.array([1.5, 0.5, -1.0, 2.0], np.float32).reshape(C, 1, 1) if w is None else w
    inits = {"t1": np.array([0, groups, -1], np.int64), "s": np.ones(scale_size, np.float32),
             "B": np.zeros(scale_size, np.float32), "w": w,
             "b": np.array([0.1, -0.2, 0.3, 0.0], np.float32).reshape(C, 1, 1)}
    nodes = [helper.make_node("Reshape", ["x", "t1"], ["r1"]),
             helper.make_node("InstanceNormalization", ["r1", "s", "B"], ["i"], name="inorm", epsilon=1e-5)]
    if back is None:
        nodes.append(helper.make_node("Shape", ["x"], ["t2"]))
    else:
        inits["t2"] = np.array(back, np.int64)
    nodes += [helper.make_node("Reshape", ["i", "t2"], ["r2"]), helper.make_node("Mul", ["r2", "w"], ["m"]),
              helper.make_node("Add", ["m", "b"], ["a"]), helper.make_node("Flatten", ["a"], ["y"])]
    return model(nodes, inits, 17), inits


def test_reference_hand_built_pattern():
    """Control for the near misses below: the pattern as torch writes it imports as one GroupNorm."""
    m, inits = torch_pattern()
    net = rp.from_onnx(m)
    assert [n.layer.kind for n in net.nodes] == ["GroupNorm", "Flatten"]
    want = numpy_groupnorm(HX, 2, inits["w"].ravel(), inits["b"].ravel(), 1e-5).reshape(2, -1)
    assert_close(net(HX), want, 1e-5, "vs numpy")
    assert_close(net(HX), ort_run(m.SerializeToString(), HX), 1e-5, "vs onnxruntime")


@pytest.mark.parametrize("kwargs,match", [
    ({"groups": 4, "scale_size": 2}, r"makes 4 groups but InstanceNormalization's scale / B have shapes \(2,\)"),
    ({"back": [0, C, -1]}, r"the second Reshape gives per-sample \(4, 9\), not the input's \(4, 3, 3\)"),
    ({"w": np.random.default_rng(0).standard_normal((C, 3, 3)).astype(np.float32)},
     r"the Mul's constant \(shape \(4, 3, 3\)\) must be one value per channel"),
], ids=["group_count", "reshape_back", "mul_not_per_channel"])
def test_errors_near_miss_pattern_in_one_line(kwargs, match):
    m, _ = torch_pattern(**kwargs)
    with pytest.raises(ValueError, match=r"ONNX node 'inorm' \(GroupNorm\): the GroupNorm pattern .*" + match) as e:
        rp.from_onnx(m)
    assert "\n" not in str(e.value)
