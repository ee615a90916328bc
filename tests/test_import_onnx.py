"""rp.from_onnx: models exported from PyTorch and hand-built ONNX graphs import exactly; what
relprop cannot represent fails with a message naming the op, the node and what is supported.

Forward passes are compared with onnxruntime (a test dependency; the importer itself needs only
``onnx``) to 1e-5 relative to the output's scale (float32).
"""
from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

# onnx, onnxruntime, onnxscript (dynamo exporter) and torch are test dependencies: a missing one
# is a collection error, not a skip (as for the peer tests)
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

import relprop as rp
import torch_models as tm

RTOL = 1e-5
OPSET = 17
ZOO_ONNX = ["mlp", "vgg16", "resnet18", "resnet50_stack", "densenet_block", "functional", "activations"]


# -- helpers ---------------------------------------------------------------------------------
def run_ort(model_or_path, x):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    src = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def assert_close(y, ref, rtol=RTOL):
    assert y.shape == ref.shape
    err = np.max(np.abs(y.astype(np.float64) - ref)) / max(np.max(np.abs(ref)), 1e-30)
    assert err <= rtol, f"relative error {err:.3g} > {rtol}"


def export(model, x, path, dynamo=False, **kwargs):
    """torch.onnx.export into ``path``: the TorchScript exporter with a dynamic batch axis, or
    the dynamo exporter (fixed batch)."""
    xt = torch.from_numpy(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (xt,), str(path), dynamo=True, input_names=["x"], output_names=["y"],
                              verbose=False, **kwargs)
        else:
            kwargs.setdefault("dynamic_axes", {"x": {0: "batch"}, "y": {0: "batch"}})
            torch.onnx.export(model, (xt,), str(path), dynamo=False, input_names=["x"], output_names=["y"],
                              **kwargs)
    return path


def make_model(nodes, inits, in_shape, opset=OPSET, batch="N", name="g"):
    """A one-input one-output model: input ``x`` (batch, *in_shape) float32, output ``y``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    init = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    graph = helper.make_graph(nodes, name, [x], [y], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)  # fills in the output's shape (onnx.checker wants one)


def rand(rng, *shape, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(np.float32)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def check_against_ort(model, x, **kwargs):
    kwargs.setdefault("final_softmax", "keep")  # the whole model, a final Softmax included, against ORT
    net = rp.from_onnx(model, **kwargs)
    assert_close(net(x), run_ort(model, x))
    return net


# -- models exported from PyTorch ---------------------------------------------------------------
@pytest.mark.parametrize("name", ZOO_ONNX)
def test_import_torch_export_matches_onnxruntime(name, tmp_path):
    model = tm.build(name)
    path = export(model, tm.make_input(name, n=2), tmp_path / f"{name}.onnx")
    net = rp.from_onnx(path, final_softmax="keep")
    x = tm.make_input(name, n=3, seed=1)  # another batch size than exported: the batch axis is dynamic
    assert_close(net(x), run_ort(path, x))
    assert_close(net(x), model(torch.from_numpy(x)).numpy())


@pytest.mark.parametrize("name", ["activations", "resnet50_stack", "densenet_block"])
def test_import_dynamo_export_matches_onnxruntime(name, tmp_path):
    model = tm.build(name)
    x = tm.make_input(name, n=2)
    path = export(model, x, tmp_path / f"{name}.onnx", dynamo=True)
    net = rp.from_onnx(path, final_softmax="keep")
    assert_close(net(x), run_ort(path, x))


def test_dynamo_softplus_pattern_becomes_one_layer(tmp_path):
    """torch's softplus(beta, threshold) exports as Where(Greater(beta x, t), x, Softplus(beta x) / beta)."""
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Softplus(beta=2.0, threshold=3.0),
                                torch.nn.Linear(6, 3)).eval()
    x = (3 * np.random.default_rng(0).standard_normal((5, 4))).astype(np.float32)
    path = export(model, x, tmp_path / "sp.onnx", dynamo=True)
    net = rp.from_onnx(path)
    sp = [n.layer for n in net.nodes if n.layer.kind == "Softplus"]
    assert len(sp) == 1 and sp[0].beta == 2.0 and sp[0].threshold == 3.0
    assert_close(net(x), run_ort(path, x))


@pytest.mark.parametrize("opset", [13, 17, 20])
@pytest.mark.parametrize("name", ["functional", "activations", "densenet_block"])
def test_import_opsets(name, opset, tmp_path):
    """densenet_block keeps BatchNormalization nodes (BN-ReLU-Conv): at opset 13 the check needs the
    inference BatchNormalization that onnx's reference evaluator lacks there."""
    path = export(tm.build(name), tm.make_input(name), tmp_path / "m.onnx", opset_version=opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    x = tm.make_input(name, n=2, seed=3)
    assert_close(rp.from_onnx(path, final_softmax="keep")(x), run_ort(path, x))


def test_flatten_via_shape_arithmetic(tmp_path):
    """x.view(x.size(0), -1) with a dynamic batch exports Shape -> Gather -> Unsqueeze -> Concat -> Reshape."""
    class ViewNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 3, 3)
            self.fc = torch.nn.Linear(3 * 4 * 4, 2)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    x = np.random.default_rng(1).standard_normal((2, 2, 6, 6)).astype(np.float32)
    path = export(ViewNet().eval(), x, tmp_path / "v.onnx")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Reshape"} <= ops
    net = rp.from_onnx(path)
    assert [n.layer.kind for n in net.nodes] == ["Conv2d", "ReLU", "Flatten", "Dense"]
    x5 = np.random.default_rng(2).standard_normal((5, 2, 6, 6)).astype(np.float32)
    assert_close(net(x5), run_ort(path, x5))


def test_float64_model_stays_float64(tmp_path):
    x = tm.make_input("mlp", n=3, dtype=np.float64)
    path = export(tm.build("mlp", dtype=torch.float64), x, tmp_path / "mlp64.onnx")
    net = rp.from_onnx(path)
    assert all(n.layer.weight.dtype == np.float64 for n in net.nodes if n.layer.linear)
    y = net(x)
    assert y.dtype == np.float64
    assert_close(y, run_ort(path, x), rtol=1e-12)


def test_accepts_model_proto_and_bytes(tmp_path):
    path = export(tm.build("mlp"), tm.make_input("mlp"), tmp_path / "mlp.onnx")
    x = tm.make_input("mlp", n=4)
    ref = rp.from_onnx(path)(x)
    proto = onnx.load(str(path))
    # exact: the same model whichever way it is passed, the same computation
    np.testing.assert_array_equal(rp.from_onnx(proto)(x), ref)
    np.testing.assert_array_equal(rp.from_onnx(proto.SerializeToString())(x), ref)


# -- attributions: from_onnx and from_torch give the same model ------------------------------
@pytest.mark.parametrize("name", ["mlp", "resnet18", "densenet_block", "activations"])
def test_attribution_equals_from_torch(name, tmp_path):
    """do_constant_folding=False keeps BatchNorm nodes, so rp.canonize folds them in both importers."""
    model = tm.build(name)
    x = tm.make_input(name, n=2)
    path = export(model, x, tmp_path / f"{name}.onnx", do_constant_folding=False)
    a = rp.from_onnx(path)
    b = rp.from_torch(model, x)
    for method in ("gradient", "lrp.epsilon"):
        ra, rb = rp.attribute(a, x, method), rp.attribute(b, x, method)
        assert ra.shape == x.shape and ra.dtype == x.dtype
        np.testing.assert_allclose(ra, rb, rtol=1e-5, atol=1e-6 * np.abs(rb).max())


# -- hand-built graphs -----------------------------------------------------------------------
@pytest.mark.parametrize("trans_b, alpha, beta, c_shape", [
    (0, 0.5, 2.0, (1, 4)), (1, 1.0, 1.0, (4,)), (1, -1.5, 0.25, ()), (0, 2.0, 1.0, None)])
def test_gemm_attributes(rng, trans_b, alpha, beta, c_shape):
    w = rand(rng, 4, 6) if trans_b else rand(rng, 6, 4)
    inits = {"B": w}
    ins = ["x", "B"]
    if c_shape is not None:
        inits["C"] = rand(rng, *c_shape)
        ins.append("C")
    node = helper.make_node("Gemm", ins, ["y"], name="fc", transB=trans_b, alpha=alpha, beta=beta)
    model = make_model([node], inits, [6])
    x = rand(rng, 3, 6)
    net = check_against_ort(model, x)
    expect = alpha * x @ (w.T if trans_b else w) + (beta * inits["C"] if c_shape is not None else 0)
    assert_close(net(x), expect.astype(np.float64))


def test_constant_gemm_with_trans_a_feeds_matmul_and_bias(rng):
    """Gemm on constants (transA=1) is folded; MatMul + Add(bias, .) becomes one Dense."""
    a, b, bias = rand(rng, 3, 4), rand(rng, 3, 6), rand(rng, 6)
    nodes = [helper.make_node("Gemm", ["A", "Bw"], ["W"], transA=1, alpha=2.0),
             helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Add", ["bias", "h"], ["y"], name="add_bias")]
    model = make_model(nodes, {"A": a, "Bw": b, "bias": bias}, [4])
    x = rand(rng, 5, 4)
    net = check_against_ort(model, x)
    assert [n.layer.kind for n in net.nodes] == ["Dense"]
    np.testing.assert_allclose(net.nodes[0].layer.weight, (2.0 * a.T @ b).T, rtol=1e-6)
    np.testing.assert_allclose(net.nodes[0].layer.bias, bias)


def test_matmul_without_bias(rng):
    w = rand(rng, 5, 3)
    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": w}, [5])
    net = check_against_ort(model, rand(rng, 2, 5))
    assert net.nodes[0].layer.kind == "Dense" and not np.any(net.nodes[0].layer.bias)


def test_conv_bias_add_folds_per_channel(rng):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "b"], ["s"]),
             helper.make_node("Flatten", ["s"], ["y"])]
    model = make_model(nodes, {"W": rand(rng, 4, 2, 3, 3), "b": rand(rng, 1, 4, 1, 1)}, [2, 6, 6])
    net = check_against_ort(model, rand(rng, 2, 2, 6, 6))
    assert [n.layer.kind for n in net.nodes] == ["Conv2d", "Flatten"]


@pytest.mark.parametrize("include_pad, pads", [(1, [1, 1, 1, 1]), (0, [0, 0, 0, 0]), (1, [0, 0, 1, 1])])
def test_average_pool(rng, include_pad, pads):
    nodes = [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=pads,
                              count_include_pad=include_pad),
             helper.make_node("Flatten", ["p"], ["y"])]
    model = make_model(nodes, {}, [2, 7, 7])
    net = check_against_ort(model, rand(rng, 2, 2, 7, 7))
    assert net.nodes[0].layer.kind == "AvgPool2d"


def test_conv_bn_activations_global_pool(rng):
    """Conv -> BatchNormalization -> LeakyRelu -> Softplus -> GlobalAveragePool -> Flatten -> Gemm -> Softmax."""
    c = 4
    nodes = [helper.make_node("Conv", ["x", "W", "Wb"], ["c"], name="conv", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "bb", "m", "v"], ["bn"], name="bn", epsilon=1e-3),
             helper.make_node("LeakyRelu", ["bn"], ["lr"], alpha=0.2),
             helper.make_node("Softplus", ["lr"], ["sp"]),
             helper.make_node("GlobalAveragePool", ["sp"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "Wd", "bd"], ["z"], transB=1),
             helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
    inits = {"W": rand(rng, c, 3, 3, 3), "Wb": rand(rng, c), "s": rng.uniform(0.5, 1.5, c).astype(np.float32),
             "bb": rand(rng, c), "m": rand(rng, c), "v": rng.uniform(0.5, 2, c).astype(np.float32),
             "Wd": rand(rng, 3, c), "bd": rand(rng, 3)}
    model = make_model(nodes, inits, [3, 9, 9])
    x = rand(rng, 2, 3, 9, 9)
    raw = check_against_ort(model, x, canonize=False)
    assert [n.layer.kind for n in raw.nodes] == ["Conv2d", "BatchNorm2d", "LeakyReLU", "Softplus",
                                                 "GlobalAvgPool2d", "Flatten", "Dense", "Softmax"]
    assert raw.nodes[1].layer.eps == pytest.approx(1e-3)
    folded = check_against_ort(model, x)
    assert "BatchNorm2d" not in [n.layer.kind for n in folded.nodes]
    for method in ("gradient", "lrp.epsilon"):  # an attribution runs on the imported graph
        R = rp.attribute(folded, x, method)
        assert R.shape == x.shape and np.all(np.isfinite(R))


def test_batchnorm_on_features_and_dropout_identity(rng):
    nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["bn"]),
             helper.make_node("Dropout", ["bn", "ratio"], ["d"]),
             helper.make_node("Identity", ["d"], ["i"]),
             helper.make_node("Gemm", ["i", "W"], ["y"], transB=1)]
    inits = {"s": rand(rng, 5), "b": rand(rng, 5), "m": rand(rng, 5), "v": rng.uniform(0.5, 2, 5).astype(np.float32),
             "ratio": np.array(0.3, np.float32), "W": rand(rng, 2, 5)}
    model = make_model(nodes, inits, [5], opset=13)
    raw = check_against_ort(model, rand(rng, 4, 5), canonize=False)
    assert [n.layer.kind for n in raw.nodes] == ["BatchNorm2d", "Dropout", "Dense"]
    assert raw.nodes[1].layer.p == pytest.approx(0.3)
    check_against_ort(model, rand(rng, 4, 5))


def test_residual_sum_concat_and_reshape(rng):
    """Add of two branches, Sum, Concat on a negative axis, Reshape to (C, H*W) and back to flat."""
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "W2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "ra"], ["s"]),
             helper.make_node("Sum", ["s", "a", "ra"], ["s3"]),
             helper.make_node("Tanh", ["s3"], ["t"]),
             helper.make_node("Sigmoid", ["s3"], ["g"]),
             helper.make_node("Concat", ["t", "g"], ["cat"], axis=-3),
             helper.make_node("Reshape", ["cat", "shape"], ["r"]),
             helper.make_node("Flatten", ["r"], ["y"])]
    inits = {"W1": rand(rng, 3, 2, 3, 3), "W2": rand(rng, 3, 3, 3, 3), "shape": np.array([0, 6, -1], np.int64)}
    model = make_model(nodes, inits, [2, 4, 4])
    net = check_against_ort(model, rand(rng, 3, 2, 4, 4))
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("Add") == 2 and "Concat" in kinds and "Reshape" in kinds


def test_asymmetric_and_same_padding_mapped_exactly(rng):
    """pads (0, 0, 1, 1) with a 2x2/2 kernel on 8x8 never reads the end padding; SAME_UPPER 3x3/1 is (1, 1)."""
    nodes = [helper.make_node("Conv", ["x", "W1"], ["a"], strides=[2, 2], pads=[0, 0, 1, 1]),
             helper.make_node("Conv", ["a", "W2"], ["b"], auto_pad="SAME_UPPER"),
             helper.make_node("MaxPool", ["b"], ["p"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1),
             helper.make_node("Flatten", ["p"], ["y"])]
    model = make_model(nodes, {"W1": rand(rng, 3, 2, 2, 2), "W2": rand(rng, 3, 3, 3, 3)}, [2, 8, 8])
    net = check_against_ort(model, rand(rng, 2, 2, 8, 8))
    assert [n.layer.padding for n in net.nodes[:3]] == [(0, 0), (1, 1), (0, 0)]


def test_fixed_batch_and_dead_branches(rng):
    """A fixed batch dimension is fine (the relprop model takes any batch); unused outputs are skipped."""
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Erf", ["x"], ["dead"]),  # unsupported, but nothing reads it
             helper.make_node("MatMul", ["r", "W"], ["y"])]
    model = make_model(nodes, {"W": rand(rng, 4, 2)}, [4], batch=3)
    net = check_against_ort(model, rand(rng, 3, 4))
    assert net(rand(rng, 7, 4)).shape == (7, 2)


# -- errors ----------------------------------------------------------------------------------
def conv_model(rng, hw=9, **attrs):
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="myconv", **attrs),
             helper.make_node("Flatten", ["c"], ["y"])]
    return make_model(nodes, {"W": rand(rng, 4, 2 // attrs.get("group", 1), 3, 3)}, [2, hw, hw])


@pytest.mark.parametrize("attrs, match", [
    # group and dilations are imported (tests/test_models_conv_variants.py)
    ({"pads": [0, 0, 2, 2]}, r"'myconv' \(Conv\).*asymmetric pads"),
    ({"auto_pad": "SAME_UPPER", "strides": [2, 2], "hw": 8}, r"'myconv' \(Conv\).*asymmetric pads"),
])
def test_errors_conv_attributes(rng, attrs, match):
    with pytest.raises(ValueError, match=match):
        rp.from_onnx(conv_model(rng, **attrs))


def test_errors_ceil_mode_maxpool(rng):
    node = helper.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)
    with pytest.raises(ValueError, match=r"'pool' \(MaxPool\).*ceil_mode=1.*floor mode"):
        rp.from_onnx(make_model([node], {}, [2, 7, 7]))


def test_errors_avgpool_count_include_pad(rng):
    node = helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"'ap' \(AveragePool\).*count_include_pad=0"):
        rp.from_onnx(make_model([node], {}, [2, 7, 7]))


@pytest.mark.parametrize("op, opset", [("Erf", 17), ("Selu", 20)])
def test_errors_unsupported_op(rng, op, opset):
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node(op, ["h"], ["y"], name="act")]
    model = make_model(nodes, {"W": rand(rng, 4, 3)}, [4], opset=opset)
    with pytest.raises(ValueError, match=rf"'act' \({op}\).*not supported.*relprop\.io\.supported_ops\(\)"):
        rp.from_onnx(model)


def test_errors_gemm_trans_a_on_data(rng):
    node = helper.make_node("Gemm", ["x", "W"], ["y"], name="fc", transA=1)
    with pytest.raises(ValueError, match=r"'fc' \(Gemm\).*transA=1.*batch axis"):
        rp.from_onnx(make_model([node], {"W": rand(rng, 3, 4)}, [3]))


@pytest.mark.parametrize("nodes, inits, shape, match", [
    ([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "c"], ["y"], name="a")],
     {"c": np.ones(3, np.float32)}, [3], r"'a' \(Add\).*bias.*ReLU"),
    ([helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
      helper.make_node("Add", ["m", "c"], ["s"]), helper.make_node("Add", ["s", "r"], ["y"], name="a2")],
     {"W": np.ones((3, 3), np.float32), "c": np.ones(3, np.float32)}, [3], r"also used elsewhere"),
    ([helper.make_node("Softmax", ["x"], ["s"], name="sm"), helper.make_node("Relu", ["s"], ["y"])],
     {}, [3], r"'sm' \(Softmax\).*last op"),
    ([helper.make_node("Reshape", ["x", "shape"], ["y"], name="rs")],
     {"shape": np.array([-1], np.int64)}, [3], r"'rs' \(Reshape\).*batch axis"),
    ([helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=2)], {}, [2, 3, 3], r"'fl' \(Flatten\).*axis=2"),
    ([helper.make_node("Mul", ["x", "c"], ["y"], name="scale")], {"c": np.float32(2.0)}, [3],
     r"'scale' \(Mul\).*not supported"),
    ([helper.make_node("Abs", ["x"], ["y"])], {}, [3], r"<unnamed> \(Abs\) producing 'y'.*not supported"),
])
def test_errors_unrepresentable_graphs(nodes, inits, shape, match):
    with pytest.raises(ValueError, match=match):
        rp.from_onnx(make_model(nodes, inits, shape))


def test_errors_model_signature(rng):
    x1 = helper.make_tensor_value_info("x1", TensorProto.FLOAT, ["N", 3])
    x2 = helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])
    g = helper.make_graph([helper.make_node("Add", ["x1", "x2"], ["y"])], "two", [x1, x2], [y])
    with pytest.raises(ValueError, match="exactly one data input"):
        rp.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]))
    sym = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "sym", [sym], [y])
    with pytest.raises(ValueError, match="symbolic"):
        rp.from_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)]))


def test_errors_corrupted_and_invalid_files(tmp_path, rng):
    path = export(tm.build("mlp"), tm.make_input("mlp"), tmp_path / "mlp.onnx")
    data = path.read_bytes()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(data[: len(data) // 3] + b"\xff\xfe garbage")
    with pytest.raises(ValueError, match="could not read an ONNX model"):
        rp.from_onnx(bad)
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        rp.from_onnx(tmp_path / "missing.onnx")
    broken = make_model([helper.make_node("Relu", ["nowhere"], ["y"])], {}, [3])
    with pytest.raises(ValueError, match="not a valid ONNX model"):
        rp.from_onnx(broken)
    with pytest.raises(TypeError, match="file path, bytes or an onnx.ModelProto"):
        rp.from_onnx(42)
    with pytest.raises(ValueError, match="check must be"):
        rp.from_onnx(path, check="maybe")


def test_check_raises_or_warns_on_forward_mismatch(rng, monkeypatch):
    from onnx.reference import ReferenceEvaluator

    model = make_model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": rand(rng, 4, 2)}, [4])
    run = ReferenceEvaluator.run
    monkeypatch.setattr(ReferenceEvaluator, "run", lambda self, *a, **k: [r + 1.0 for r in run(self, *a, **k)])
    with pytest.raises(ValueError, match="disagrees with the ONNX reference evaluator"):
        rp.from_onnx(model)
    with pytest.warns(RuntimeWarning, match="disagrees"):
        net = rp.from_onnx(model, check="warn")
    assert net.nodes[0].layer.kind == "Dense"
    with pytest.raises(ValueError, match="check must be"):
        rp.from_onnx(model, check=None)  # the forward check cannot be switched off


def test_missing_onnx_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match="pip install onnx"):
        rp.from_onnx("model.onnx")
