"""Benchmark workloads, built with identical float32 weights for relprop and for PyTorch.

W1  VGG-16 variant for 64x64 Tiny-ImageNet inputs (the "modified" VGG-16 of sanity-check studies):
    input 3x64x64;
    conv3-64, conv3-64, maxpool, conv3-128, conv3-128, maxpool,
    conv3-256 x3, maxpool, conv3-512 x3, maxpool,          (10 conv layers, 3x3, stride 1, pad 1)
    FC-2048, FC-2048, FC-200;  ReLU after every hidden layer, no softmax.
    512 x 4 x 4 = 8192 features enter FC-2048. He (Kaiming normal, fan_in) init, biases 0 (as in the
    thesis). The thesis trained with BatchNorm; it is left out here (inference-time BN folds into the
    conv weights, so the attribution cost is that of the plain network). Batch of 16 images,
    standardized pixels ~ N(0, 1) clipped to [-3, 3] (so that EpsilonGammaBox(-3, 3) bounds hold).

W2  tabular MLP 14-64-64-2 (ReLU), He init, 100,000 rows of standardized N(0, 1) features.

Torch models use a separate ``nn.ReLU`` module per activation (Zennit/Captum hooks need modules).
``relprop`` is imported lazily, so the peer side works while the library is not importable.
"""
from __future__ import annotations

import numpy as np

# ----------------------------------------------------------------------------------------------
# Architecture descriptions (layer specs shared by both back ends)
# ----------------------------------------------------------------------------------------------
# ("conv", out_channels) | ("pool",) | ("flatten",) | ("dense", out_features); ReLU after every
# conv/dense except the last layer.
W1_SPEC = (
    ("conv", 64), ("conv", 64), ("pool",),
    ("conv", 128), ("conv", 128), ("pool",),
    ("conv", 256), ("conv", 256), ("conv", 256), ("pool",),
    ("conv", 512), ("conv", 512), ("conv", 512), ("pool",),
    ("flatten",),
    ("dense", 2048), ("dense", 2048), ("dense", 200),
)
W1_INPUT_SHAPE = (3, 64, 64)
W1_BATCH = 16
W1_CLASSES = 200

# A CIFAR-10-shaped CNN (the small CNN users bring): conv32-conv32-pool-conv64-conv64-pool-fc256-fc10
C10_SPEC = (
    ("conv", 32), ("conv", 32), ("pool",),
    ("conv", 64), ("conv", 64), ("pool",),
    ("flatten",),
    ("dense", 256), ("dense", 10),
)
C10_INPUT_SHAPE = (3, 32, 32)
C10_BATCH = 256
C10_CLASSES = 10

W2_SPEC = (("dense", 64), ("dense", 64), ("dense", 2))
W2_IN_FEATURES = 14
W2_ROWS = 100_000
W2_CLASSES = 2

SEED = 20240601


def _he_params(spec, in_shape, seed):
    """He-normal weights (std = sqrt(2 / fan_in)), zero biases, float32. Returns a list aligned
    with ``spec``: (weight, bias) for conv/dense, None otherwise."""
    rng = np.random.default_rng(seed)
    params = []
    c = in_shape[0]
    hw = in_shape[1:] if len(in_shape) == 3 else None
    feat = in_shape[0] if len(in_shape) == 1 else None
    for layer in spec:
        kind = layer[0]
        if kind == "conv":
            out = layer[1]
            fan_in = c * 3 * 3
            w = rng.standard_normal((out, c, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2.0 / fan_in))
            params.append((w, np.zeros(out, np.float32)))
            c = out
        elif kind == "pool":
            hw = (hw[0] // 2, hw[1] // 2)
            params.append(None)
        elif kind == "flatten":
            feat = c * hw[0] * hw[1]
            params.append(None)
        elif kind == "dense":
            out = layer[1]
            w = rng.standard_normal((out, feat), dtype=np.float32) * np.float32(np.sqrt(2.0 / feat))
            params.append((w, np.zeros(out, np.float32)))
            feat = out
        else:  # pragma: no cover
            raise ValueError(kind)
    return params


def _last_linear_index(spec):
    return max(i for i, layer in enumerate(spec) if layer[0] in ("conv", "dense"))


def _build_torch(spec, params):
    import torch

    last = _last_linear_index(spec)
    mods = []
    for i, (layer, p) in enumerate(zip(spec, params)):
        kind = layer[0]
        if kind == "conv":
            w, b = p
            m = torch.nn.Conv2d(w.shape[1], w.shape[0], 3, stride=1, padding=1)
        elif kind == "dense":
            w, b = p
            m = torch.nn.Linear(w.shape[1], w.shape[0])
        elif kind == "pool":
            mods.append(torch.nn.MaxPool2d(2))
            continue
        elif kind == "flatten":
            mods.append(torch.nn.Flatten())
            continue
        with torch.no_grad():
            m.weight.copy_(torch.from_numpy(w))
            m.bias.copy_(torch.from_numpy(b))
        mods.append(m)
        if i != last:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods).eval()
    for prm in model.parameters():
        prm.requires_grad_(False)  # attribution only needs input gradients
    return model


def _build_relprop(spec, params):
    import relprop as rp

    last = _last_linear_index(spec)
    layers = []
    for i, (layer, p) in enumerate(zip(spec, params)):
        kind = layer[0]
        if kind == "conv":
            layers.append(rp.Conv2d(p[0], p[1], stride=1, padding=1))
        elif kind == "dense":
            layers.append(rp.Dense(p[0], p[1]))
        elif kind == "pool":
            layers.append(rp.MaxPool2d(2))
            continue
        elif kind == "flatten":
            layers.append(rp.Flatten())
            continue
        if i != last:
            layers.append(rp.ReLU())
    return rp.Sequential(*layers)


# ----------------------------------------------------------------------------------------------
# W1
# ----------------------------------------------------------------------------------------------
def w1_params(seed=SEED):
    return _he_params(W1_SPEC, W1_INPUT_SHAPE, seed)


def w1_input(batch=W1_BATCH, seed=SEED + 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch,) + W1_INPUT_SHAPE, dtype=np.float32)
    return np.clip(x, -3.0, 3.0)


def w1_torch(params=None):
    return _build_torch(W1_SPEC, w1_params() if params is None else params)


def w1_relprop(params=None):
    return _build_relprop(W1_SPEC, w1_params() if params is None else params)


# ----------------------------------------------------------------------------------------------
# C10 (CIFAR-10-shaped CNN)
# ----------------------------------------------------------------------------------------------
def c10_params(seed=SEED + 4):
    return _he_params(C10_SPEC, C10_INPUT_SHAPE, seed)


def c10_input(batch=C10_BATCH, seed=SEED + 5):
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal((batch,) + C10_INPUT_SHAPE, dtype=np.float32), -3.0, 3.0)


def c10_torch(params=None):
    return _build_torch(C10_SPEC, c10_params() if params is None else params)


def c10_relprop(params=None):
    return _build_relprop(C10_SPEC, c10_params() if params is None else params)


# ----------------------------------------------------------------------------------------------
# W2
# ----------------------------------------------------------------------------------------------
def w2_params(seed=SEED + 2):
    return _he_params(W2_SPEC, (W2_IN_FEATURES,), seed)


def w2_input(rows=W2_ROWS, seed=SEED + 3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, W2_IN_FEATURES), dtype=np.float32)


def w2_torch(params=None):
    return _build_torch(W2_SPEC, w2_params() if params is None else params)


def w2_relprop(params=None):
    return _build_relprop(W2_SPEC, w2_params() if params is None else params)


# ----------------------------------------------------------------------------------------------
# Peer runners (PyTorch / Zennit / Captum); each returns a numpy array shaped like x
# ----------------------------------------------------------------------------------------------
def torch_targets(model, x, chunk=None):
    """argmax class per sample (int64 numpy), computed with the torch model in chunks."""
    import torch

    chunk = chunk or len(x)
    out = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            out.append(model(torch.from_numpy(x[i:i + chunk])).argmax(1).numpy())
    return np.concatenate(out).astype(np.int64)


def torch_input_gradient(model, x, target):
    """Plain input gradient d s_c / dx with torch autograd (one forward + one backward)."""
    import torch

    xt = torch.from_numpy(x).requires_grad_(True)
    y = model(xt)
    (g,) = torch.autograd.grad(y.gather(1, torch.from_numpy(target)[:, None]).sum(), xt)
    return g.numpy()


def zennit_epsilon_composite(epsilon=1e-6):
    """Zennit Epsilon on every Linear/Conv (ReLU -> Pass, AvgPool -> Norm as in Zennit's base map)."""
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.types import Linear

    return LayerMapComposite(layer_map=layer_map_base() + [(Linear, Epsilon(epsilon=epsilon))])


def zennit_composite(name, batch=None, low=-3.0, high=3.0, shape=None):
    import torch
    from zennit import composites as zc

    if name == "lrp.epsilon":
        return zennit_epsilon_composite()
    if name == "EpsilonPlusFlat":
        return zc.EpsilonPlusFlat()
    if name == "EpsilonAlpha2Beta1":
        return zc.EpsilonAlpha2Beta1()
    if name == "EpsilonGammaBox":
        shape = (batch,) + (W1_INPUT_SHAPE if shape is None else tuple(shape))
        return zc.EpsilonGammaBox(low=torch.full(shape, low), high=torch.full(shape, high))
    raise ValueError(name)


def zennit_lrp(attributor, x, target, n_out):
    """One Zennit attribution: start signal score_c * e_c (the target's logit on its unit)."""
    import torch

    xt = torch.from_numpy(x)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(target), n_out).to(xt.dtype)
    _, rel = attributor(xt, attr_output=lambda out: out * onehot)
    return rel.numpy()


def captum_ig(ig, x, target, steps=32, internal_batch_size=None):
    import torch

    a = ig.attribute(torch.from_numpy(x), baselines=0.0, target=torch.from_numpy(target),
                     n_steps=steps, method="gausslegendre", internal_batch_size=internal_batch_size)
    return a.detach().numpy()


def rel_err(a, b):
    """||a - b|| / ||b|| in float64 (agreement of relprop with its peer)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a - b))


def conv_param_count(spec=W1_SPEC):
    """(number of conv layers, number of dense layers) -- sanity check of the W1 layout (10 conv, 3 dense)."""
    return (sum(1 for s in spec if s[0] == "conv"), sum(1 for s in spec if s[0] == "dense"))


if __name__ == "__main__":  # quick self-check: torch forward of both workloads
    import torch

    print("W1 conv/dense layers:", conv_param_count(W1_SPEC))
    m = w1_torch()
    x = w1_input()
    with torch.no_grad():
        y = m(torch.from_numpy(x))
    print("W1 out", tuple(y.shape), "logit std", float(y.std()))
    m2 = w2_torch()
    with torch.no_grad():
        y2 = m2(torch.from_numpy(w2_input(1000)))
    print("W2 out", tuple(y2.shape), "logit std", float(y2.std()))
