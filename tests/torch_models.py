"""Test model zoo for the importers (``rp.from_torch`` and ``rp.from_onnx``).

Every builder returns a float32 ``torch.nn.Module`` in eval mode with frozen parameters whose
weights come from a seeded numpy generator (He-normal conv/linear weights, small biases).
BatchNorm layers get random affine parameters and random running statistics -- calibrated on
random inputs first, then perturbed -- so that BN folding is really exercised while the
activations stay O(1) through deep stacks.

    >>> model = build("resnet18")                       # doctest: +SKIP
    >>> x = make_input("resnet18", n=2)                 # numpy float32, shape (2, 3, 32, 32)

``ZOO`` maps a model name to ``(builder, per-sample input shape)``.  Inputs from
``make_input`` lie inside ``[LOW, HIGH]`` (bounds for ZBox / EpsilonGammaBox).

Models:
    mlp               Linear/BatchNorm1d/ReLU/Dropout/Linear chain on (20,)
    vgg16             VGG-16 layer layout (13 convs in 5 stages, max pools, 3 dense) at 1/8 width, 32x32
    resnet18          torchvision-style ResNet-18 (BasicBlock, downsample branches, reused ``self.relu``
                      as torchvision does, ``out += identity``), 32x32
    resnet18_sum      same architecture, one ReLU module per use, residual via ``zennit.layer.Sum``
                      over ``torch.stack`` and a ``Clone`` between the stem ReLU and MaxPool -- the
                      variant Zennit's and Captum's hooks handle (peer tests)
    resnet50_stack    ResNet-50-style Bottleneck blocks (expansion 4, downsample), 32x32
    densenet_block    DenseNet-style dense block (BN-ReLU-Conv, torch.cat), transition, BN head
    functional        one ReLU module reused, F.relu, x.relu(), torch.relu, torch.add, torch.flatten,
                      x.view(x.size(0), -1), padding='same', AvgPool2d, Identity
    activations       LeakyReLU, Tanh, Sigmoid, Softplus, Softmax head, AdaptiveAvgPool2d(1), reshape
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOW, HIGH = -3.0, 3.0  # inputs from make_input lie strictly inside these bounds


# --------------------------------------------------------------------------------------------
# Small modules
# --------------------------------------------------------------------------------------------
class Clone(nn.Module):
    """Identity returning a new tensor.  Placed between an activation and a MaxPool2d it works
    around Captum 0.9's DeepLift hook-ordering bug (see tests/peer_models.py)."""

    def forward(self, x):
        return x.clone()


def _sum_module():
    from zennit.layer import Sum  # only the *_sum variants need zennit

    return Sum()


# --------------------------------------------------------------------------------------------
# MLP / VGG
# --------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, n_in=20, hidden=(32, 16), n_out=5):
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden[0])
        self.bn1 = nn.BatchNorm1d(hidden[0])
        self.relu1 = nn.ReLU()
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden[1], n_out)

    def forward(self, x):
        x = self.drop(self.relu1(self.bn1(self.fc1(x))))
        return self.fc3(self.relu2(self.fc2(x)))


VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_layers(width_div=8, n_classes=10, batch_norm=False):
    """VGG-16 (configuration D): 13 3x3 convs in five stages, each closed by a 2x2 max pool, then
    three dense layers; channel widths divided by ``width_div``; 32x32 input -> 1x1 after stage 5."""
    layers = []
    c = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.Conv2d(c, v // width_div, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v // width_div))
            layers.append(nn.ReLU())
            c = v // width_div
    hidden = 4096 // (8 * width_div)
    head = [nn.Flatten(), nn.Linear(c, hidden), nn.ReLU(), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(), nn.Linear(hidden, n_classes)]
    return nn.Sequential(nn.Sequential(*layers), nn.Sequential(*head))


# --------------------------------------------------------------------------------------------
# ResNets
# --------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """torchvision's BasicBlock.  ``faithful=True``: one ``self.relu`` applied twice and
    ``out += identity`` (as torchvision); ``faithful=False``: one ReLU per use and the residual
    summed by ``zennit.layer.Sum`` over ``torch.stack`` (modules registered in forward order, so
    Zennit's SequentialMergeBatchNorm finds every conv->bn pair)."""

    expansion = 1

    def __init__(self, c_in, planes, stride=1, faithful=True):
        super().__init__()
        self.faithful = faithful
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if faithful:
            self.relu = nn.ReLU(inplace=True)
        else:
            self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or c_in != planes:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))
        if not faithful:
            self.sum = _sum_module()
            self.relu2 = nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        if self.faithful:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            out += identity
            return self.relu(out)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.sum(torch.stack([out, identity], dim=-1))
        return self.relu2(out)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (1x1 -> 3x3 (stride) -> 1x1 x4), ``out = out + identity``."""

    expansion = 4

    def __init__(self, c_in, planes, stride=1, faithful=True):
        super().__init__()
        self.faithful = faithful
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))
        if not faithful:
            self.sum = _sum_module()
        self.relu3 = nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.faithful:
            out = out + identity
        else:
            out = self.sum(torch.stack([out, identity], dim=-1))
        return self.relu3(out)


class ResNet(nn.Module):
    """torchvision's ResNet layout (7x7/2 stem conv, BN, ReLU, 3x3/2 max pool, four stages,
    AdaptiveAvgPool2d(1), flatten, fc) with stage widths ``widths``."""

    def __init__(self, block, layers, widths=(8, 16, 32, 64), n_classes=10, faithful=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        if not faithful:
            self.clone = Clone()  # Captum DeepLift: activation directly before MaxPool
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        stages = []
        c = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(c, w, stride=2 if (i > 0 and j == 0) else 1, faithful=faithful))
                c = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = (stages + [nn.Identity()] * 4)[:4]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, n_classes)
        self.faithful = faithful

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        if not self.faithful:
            x = self.clone(x)
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# --------------------------------------------------------------------------------------------
# DenseNet-style block
# --------------------------------------------------------------------------------------------
class DenseLayer(nn.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3; output concatenated to the input (DenseNet-BC)."""

    def __init__(self, c_in, growth, bn_size=2):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        new = self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))
        return torch.cat([x, new], 1)


class DenseNetBlock(nn.Module):
    def __init__(self, c0=8, growth=4, n_layers=3, n_classes=6):
        super().__init__()
        self.conv0 = nn.Conv2d(3, c0, 3, padding=1, bias=False)
        self.norm0 = nn.BatchNorm2d(c0)
        self.relu0 = nn.ReLU()
        self.pool0 = nn.MaxPool2d(2)
        c = c0
        layers = []
        for _ in range(n_layers):
            layers.append(DenseLayer(c, growth))
            c += growth
        self.block = nn.Sequential(*layers)
        # transition: BN-ReLU-Conv1x1-AvgPool
        self.norm_t = nn.BatchNorm2d(c)
        self.relu_t = nn.ReLU()
        self.conv_t = nn.Conv2d(c, c // 2, 1, bias=False)
        self.pool_t = nn.AvgPool2d(2)
        self.norm5 = nn.BatchNorm2d(c // 2)
        self.relu5 = nn.ReLU()
        self.pool5 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c // 2, n_classes)

    def forward(self, x):
        x = self.pool0(self.relu0(self.norm0(self.conv0(x))))
        x = self.block(x)
        x = self.pool_t(self.conv_t(self.relu_t(self.norm_t(x))))
        x = self.pool5(self.relu5(self.norm5(x)))
        return self.classifier(torch.flatten(x, 1))


# --------------------------------------------------------------------------------------------
# Functional-style nets (what tracing must untangle)
# --------------------------------------------------------------------------------------------
class Functional(nn.Module):
    """One ReLU module applied three times, plus F.relu, x.relu(), torch.relu, torch.add,
    torch.flatten, x.view(x.size(0), -1), Identity and padding='same'/'valid'."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding="same")
        self.act = nn.ReLU()  # reused
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 8, 3, padding="valid")
        self.pool = nn.AvgPool2d(2)
        self.ident = nn.Identity()
        self.fc1 = nn.Linear(8 * 5 * 5, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 4)

    def forward(self, x):
        a = self.act(self.conv1(x))
        b = F.relu(self.conv2(a))
        c = torch.add(a, b)
        c = self.act(self.conv3(c)).relu()  # second use of self.act; x.relu()
        c = self.ident(self.pool(c))
        h = self.act(self.fc1(torch.flatten(c, 1)))  # third use
        h = torch.relu(self.fc2(h)) + h
        h = h.view(h.size(0), -1)
        return self.fc3(h)


class Activations(nn.Module):
    """LeakyReLU, Tanh, Sigmoid, Softplus, Dropout, AdaptiveAvgPool2d(1), reshape, Softmax head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.lrelu = nn.LeakyReLU(0.1)
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.softplus = nn.Softplus(beta=2.0, threshold=10.0)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 12)
        self.tanh = nn.Tanh()
        self.drop = nn.Dropout(0.2)
        self.fc2 = nn.Linear(12, 12)
        self.fc3 = nn.Linear(12, 5)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        x = self.softplus(self.conv2(self.lrelu(self.conv1(x))))
        x = self.gap(x).reshape(x.shape[0], -1)
        x = self.drop(self.tanh(self.fc1(x)))
        x = torch.sigmoid(self.fc2(x))
        return self.softmax(self.fc3(x))


# --------------------------------------------------------------------------------------------
# Initialisation
# --------------------------------------------------------------------------------------------
def _stable_seed(name: str, seed: int) -> int:
    return (sum((i + 1) * ord(c) for i, c in enumerate(name)) * 7919 + seed) % (2**31)


@torch.no_grad()
def init_model(model: nn.Module, input_shape, seed: int = 0) -> nn.Module:
    """Seeded He-normal weights, N(0, 0.1^2) biases, random BN affine parameters and running
    statistics (calibrated on random inputs, then perturbed).  Returns ``model`` in eval mode,
    float32, with ``requires_grad=False`` on every parameter."""
    rng = np.random.default_rng(seed)

    def put(t, a):
        t.copy_(torch.from_numpy(np.asarray(a, dtype=np.float64)).to(t.dtype))

    bns = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            put(m.weight, rng.standard_normal(m.weight.shape) * np.sqrt(2.0 / fan_in))
            if m.bias is not None:
                put(m.bias, 0.1 * rng.standard_normal(m.bias.shape))
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            put(m.weight, rng.uniform(0.5, 1.5, m.weight.shape))
            put(m.bias, 0.2 * rng.standard_normal(m.bias.shape))
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
            bns.append(m)
    model.float()
    if bns:
        model.train()
        model(torch.from_numpy(rng.standard_normal((64,) + tuple(input_shape)).astype(np.float32)))
        for m in bns:
            n = m.running_mean.shape[0]
            put(m.running_mean, m.running_mean.double().numpy() + 0.1 * rng.standard_normal(n))
            put(m.running_var, m.running_var.double().numpy() * rng.uniform(0.6, 1.6, n))
            m.momentum = 0.1
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
IMG = (3, 32, 32)

ZOO = {
    "mlp": (lambda: MLP(), (20,)),
    "vgg16": (lambda: vgg16_layers(), IMG),
    "resnet18": (lambda: ResNet(BasicBlock, [2, 2, 2, 2], faithful=True), IMG),
    "resnet18_sum": (lambda: ResNet(BasicBlock, [2, 2, 2, 2], faithful=False), IMG),
    "resnet50_stack": (lambda: ResNet(Bottleneck, [2, 1, 1], widths=(8, 8, 16), faithful=True), IMG),
    "densenet_block": (lambda: DenseNetBlock(), (3, 16, 16)),
    "functional": (lambda: Functional(), (3, 12, 12)),
    "activations": (lambda: Activations(), (3, 10, 10)),
}


def input_shape(name: str) -> tuple:
    """Per-sample input shape of zoo model ``name``."""
    return ZOO[name][1]


def build(name: str, seed: int = 0, dtype=torch.float32) -> nn.Module:
    """Zoo model ``name`` with seeded random weights, eval mode, frozen, in ``dtype``."""
    builder, shape = ZOO[name]
    model = init_model(builder(), shape, _stable_seed(name, seed))
    return model.to(dtype)


def make_input(name: str, n: int = 2, seed: int = 0, dtype=np.float32) -> np.ndarray:
    """Standard-normal inputs for ``name`` clipped to ``[LOW + 0.05, HIGH - 0.05]``."""
    rng = np.random.default_rng(1000 + _stable_seed(name, seed))
    x = np.clip(rng.standard_normal((n,) + tuple(input_shape(name))), LOW + 0.05, HIGH - 0.05)
    return np.ascontiguousarray(x.astype(np.float32).astype(dtype))


__all__ = ["ZOO", "LOW", "HIGH", "build", "make_input", "input_shape", "init_model", "Clone",
           "MLP", "vgg16_layers", "BasicBlock", "Bottleneck", "ResNet", "DenseNetBlock",
           "Functional", "Activations"]
