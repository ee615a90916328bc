"""``rp.from_torch``: the imported graph computes what the PyTorch module computes, or the import
fails with a message naming the operation, the traced node and what is supported.

Forward equality is checked on every model of the zoo (tests/torch_models.py) in float32 and
float64: max|y_relprop - y_torch| <= 1e-5 * max|y_torch| per sample. The gradient of imported
graphs is checked against torch autograd in float64 (it exercises Add, Concat, BatchNorm and
Reshape through the engine, not only the forward).
"""
from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import relprop as rp
import torch_models as tm

RTOL = 1e-5
DTYPES = [(np.float32, torch.float32), (np.float64, torch.float64)]


def _max_rel_diff(a, b):
    """Per-sample max|a - b| / max|b|, worst over the batch."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return float(np.max(np.max(np.abs(a - b), axis=1) / np.max(np.abs(b), axis=1)))


def _torch_forward(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _init(model, shape, seed=0):
    return tm.init_model(model, shape, seed)


# --------------------------------------------------------------------------------------------
# Forward equality on the zoo
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtypes", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("name", list(tm.ZOO))
def test_forward_matches_torch(name, dtypes):
    """relprop's output is within 1e-5 (relative to max|y|) of the exact output of the module.

    In float32 the exact output is the module run in float64 on the same float32 weights; the
    float32 torch output is then within 1e-5 plus torch's own float32 error (deep ResNets in
    float32 are off by ~5e-6 on both sides)."""
    npd, tdt = dtypes
    model = tm.build(name, dtype=tdt)
    exact = copy.deepcopy(model).double()
    x = tm.make_input(name, n=3, dtype=npd)
    net = rp.from_torch(model, x, final_softmax="keep")  # the whole module, its softmax head included
    # the traced batch and another batch size (the batch size is not baked in)
    for xb in (x, tm.make_input(name, n=5, seed=1, dtype=npd)):
        y = net(xb)
        assert y.dtype == npd
        y_exact = _torch_forward(exact, xb.astype(np.float64))
        assert _max_rel_diff(y, y_exact) <= RTOL
        y_torch = _torch_forward(model, xb)
        assert _max_rel_diff(y, y_torch) <= RTOL + _max_rel_diff(y_torch, y_exact)


@pytest.mark.parametrize("name", ["resnet18", "densenet_block", "mlp"])
def test_batchnorm_kept_or_folded(name):
    model = tm.build(name, dtype=torch.float64)
    x = tm.make_input(name, n=2, dtype=np.float64)
    n_bn = sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model.modules())
    kept = rp.from_torch(model, x, canonize=False)
    assert [n.layer.kind for n in kept.nodes].count("BatchNorm2d") == n_bn
    folded = rp.from_torch(model, x)  # canonize=True by default
    n_left = [n.layer.kind for n in folded.nodes].count("BatchNorm2d")
    if name == "densenet_block":
        # pre-activation BN (BN -> ReLU -> conv, BN after a concat) cannot be folded
        assert 0 < n_left < n_bn
    else:
        assert n_left == 0
    y = _torch_forward(model, x)
    assert _max_rel_diff(kept(x), y) <= 1e-12
    assert _max_rel_diff(folded(x), y) <= RTOL


@pytest.mark.parametrize("name", ["resnet18", "resnet18_sum", "densenet_block", "functional", "mlp", "vgg16"])
def test_gradient_matches_autograd(name):
    """The imported graph's input gradient equals torch autograd's (float64)."""
    model = tm.build(name, dtype=torch.float64)
    x = tm.make_input(name, n=2, dtype=np.float64)
    net = rp.from_torch(model, x)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)
    target = out.detach().argmax(1)
    (g,) = torch.autograd.grad(out[torch.arange(2), target].sum(), xt)
    r = rp.attribute(net, x, "gradient", target=target.numpy())
    assert _max_rel_diff(r, g.numpy()) <= 1e-10


def test_reused_module_and_functional_calls():
    """One nn.ReLU applied three times, F.relu, x.relu() and torch.relu: six separate ReLU nodes."""
    model = tm.build("functional")
    x = tm.make_input("functional")
    net = rp.from_torch(model, x)
    relus = [n.name for n in net.nodes if n.layer.kind == "ReLU"]
    assert len(relus) == 6 and len(set(relus)) == 6
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("Add") == 2 and "Flatten" in kinds and "AvgPool2d" in kinds
    assert "Identity" not in kinds  # nn.Identity adds no node


def test_residual_and_concat_nodes():
    for name, kind, count in [("resnet18", "Add", 8), ("resnet18_sum", "Add", 8), ("resnet50_stack", "Add", 4),
                              ("densenet_block", "Concat", 3)]:
        net = rp.from_torch(tm.build(name), tm.make_input(name))
        adds = [n for n in net.nodes if n.layer.kind == kind]
        assert len(adds) == count, name
        assert all(len(n.inputs) == 2 for n in adds)
        assert "GlobalAvgPool2d" in [n.layer.kind for n in net.nodes]


def test_activation_layers_and_softmax_head():
    net = rp.from_torch(tm.build("activations"), tm.make_input("activations"), final_softmax="keep")
    layers = {n.layer.kind: n.layer for n in net.nodes}
    assert layers["LeakyReLU"].negative_slope == pytest.approx(0.1)
    assert (layers["Softplus"].beta, layers["Softplus"].threshold) == (2.0, 10.0)
    assert {"Tanh", "Sigmoid", "Dropout", "GlobalAvgPool2d"} <= set(layers)
    assert net.nodes[-1].layer.kind == "Softmax"


def test_padding_same_valid_converted():
    model = tm.build("functional")
    net = rp.from_torch(model, tm.make_input("functional"))
    convs = {n.name: n.layer for n in net.nodes if n.layer.kind == "Conv2d"}
    assert convs["conv1"].padding == (1, 1) and convs["conv3"].padding == (0, 0)


def test_example_input_as_tensor_and_modes_restored():
    model = tm.build("mlp")
    model.train()
    model.drop.eval()  # a mixed state must come back as it was
    x = torch.from_numpy(tm.make_input("mlp"))
    net = rp.from_torch(model, x)
    assert model.training and model.fc1.training and not model.drop.training
    model.eval()
    assert _max_rel_diff(net(x.numpy()), _torch_forward(model, x.numpy())) <= RTOL


class _ShapeBranch(nn.Module):
    """Python control flow on the input's shape: symbolic_trace fails, torch.export handles it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if x.shape[-1] > 4:
            x = F.max_pool2d(x, 2)
        return self.fc(x.view(x.shape[0], -1))


def test_torch_export_fallback():
    model = _init(_ShapeBranch(), (3, 8, 8))
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net = rp.from_torch(model, x)
    assert [n.layer.kind for n in net.nodes] == ["Conv2d", "ReLU", "MaxPool2d", "Flatten", "Dense"]
    assert _max_rel_diff(net(x), _torch_forward(model, x)) <= RTOL


# --------------------------------------------------------------------------------------------
# Clear errors
# --------------------------------------------------------------------------------------------
class _Wrap(nn.Module):
    """``head(body(x))`` with a small conv body; ``body`` is the module under test."""

    def __init__(self, body, flat):
        super().__init__()
        self.body = body
        self.fc = nn.Linear(flat, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x), 1))


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.conv(x))


def _sin(t):
    return torch.sin(t)


ERROR_CASES = {
    # grouped, dilated and reflect/replicate/circular convs are imported (tests/test_models_conv_variants.py)
    # ConvTranspose2d is imported (tests/test_models_conv_transpose.py)
    "pixel_shuffle": (lambda: nn.PixelShuffle(1), 3 * 8 * 8, r"PixelShuffle.*'body'.*not supported"),
    "same_even_kernel": (lambda: nn.Conv2d(3, 2, 2, padding="same"), 2 * 8 * 8, r"padding='same' with the even kernel"),
    "ceil_mode": (lambda: nn.MaxPool2d(3, 2, ceil_mode=True), 3 * 4 * 4, r"MaxPool2d.*'body'.*ceil_mode=True"),
    "maxpool_dilation": (lambda: nn.MaxPool2d(2, dilation=2), 3 * 3 * 3, r"MaxPool2d.*dilation"),
    "count_include_pad": (lambda: nn.AvgPool2d(3, 1, 1, count_include_pad=False), 3 * 8 * 8,
                          r"AvgPool2d.*count_include_pad=False"),
    "divisor_override": (lambda: nn.AvgPool2d(2, divisor_override=3), 3 * 4 * 4, r"divisor_override=3"),
    # uneven adaptive pooling windows are imported (tests/test_models_layers_extra.py)
    "selu": (lambda: nn.SELU(), 3 * 8 * 8, r"torch\.nn\..*SELU.*'body'.*not supported"),
    "sin": (lambda: _Fn(_sin), 2 * 8 * 8, r"torch\.sin.*node 'sin'.*not supported"),
    "batchnorm_batch_stats": (lambda: nn.BatchNorm2d(3, track_running_stats=False), 3 * 8 * 8,
                              r"BatchNorm2d.*batch statistics"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_unsupported_raises_clear_error(case):
    body, flat, match = ERROR_CASES[case]
    c_in = 3
    model = _Wrap(body(), flat).eval()
    x = torch.randn(2, c_in, 8, 8)
    with pytest.raises(ValueError, match=match):
        rp.from_torch(model, x)


class _SoftmaxInside(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(torch.softmax(self.fc1(x), dim=-1))


class _HardBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 2)

    def forward(self, x):
        return self.fc(x.view(2, 12))


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.fc(x)
        return y, F.relu(y)


class _AddConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) + 1.0


@pytest.mark.parametrize("model,shape,match", [
    (_SoftmaxInside(), (2, 4), r"Softmax at node 'softmax' is not the model's last operation"),
    (_HardBatch(), (2, 3, 4), r"Tensor\.view\(\).*does not keep the batch axis"),
    (_TwoOutputs(), (2, 4), r"must return one tensor"),
    (_AddConstant(), (2, 4), r"operator\.add.*adding 1\.0 is not supported"),
], ids=["softmax_inside", "hard_coded_batch", "two_outputs", "add_constant"])
def test_structure_errors(model, shape, match):
    with pytest.raises(ValueError, match=match):
        rp.from_torch(model.eval(), torch.randn(*shape))


def test_bad_arguments():
    model = tm.build("mlp")
    x = tm.make_input("mlp")
    with pytest.raises(ValueError, match="check must be 'raise' or 'warn'"):
        rp.from_torch(model, x, check="ignore")
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        rp.from_torch(lambda t: t, x)
    with pytest.raises(TypeError, match="floating-point"):
        rp.from_torch(model, x.astype(np.int64))


# --------------------------------------------------------------------------------------------
# The forward check: check="raise" / "warn"
# --------------------------------------------------------------------------------------------
class _InplaceAlias(nn.Module):
    """``relu_`` rewrites ``a`` in place before ``a`` is read again: eager torch computes
    2 * relu(a), the traced (functional) graph a + relu(a).  Only the forward check sees it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x):
        a = self.fc1(x)
        b = F.relu(a, inplace=True)
        return self.fc2(a + b)


def test_forward_check_raises_and_warns():
    model = _init(_InplaceAlias(), (6,))
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    with pytest.raises(ValueError, match=r"does not reproduce the module.*max \|difference\| = "):
        rp.from_torch(model, x)
    with pytest.warns(UserWarning, match=r"does not reproduce the module"):
        net = rp.from_torch(model, x, check="warn")
    assert isinstance(net, rp.Graph)


def test_torch_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install torch"):
        rp.from_torch(object(), np.zeros((1, 3), np.float32))


@pytest.mark.parametrize("name", ["resnet18", "resnet18_sum", "densenet_block", "functional", "activations", "mlp"])
def test_torch_export_path_on_zoo(name, monkeypatch):
    """The torch.export (aten-level) mapping gives the same graphs' outputs as the fx mapping."""
    def no_fx(*args, **kwargs):
        raise torch.fx.proxy.TraceError("symbolic tracing disabled by the test")

    monkeypatch.setattr(torch.fx, "symbolic_trace", no_fx)
    model = tm.build(name, dtype=torch.float64)
    x = tm.make_input(name, n=2, dtype=np.float64)
    net = rp.from_torch(model, x, final_softmax="keep")
    x2 = tm.make_input(name, n=3, seed=2, dtype=np.float64)
    assert _max_rel_diff(net(x2), _torch_forward(model, x2)) <= 1e-10


def test_ceil_mode_accepted_where_exact():
    """ceil_mode=True that does not change the output size is the same pooling: imported."""
    model = _init(_Wrap(nn.Sequential(nn.MaxPool2d(2, ceil_mode=True), nn.AvgPool2d(2, ceil_mode=True)), 3 * 2 * 2),
                  (3, 8, 8))
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net = rp.from_torch(model, x)
    assert [n.layer.kind for n in net.nodes] == ["MaxPool2d", "AvgPool2d", "Flatten", "Dense"]
