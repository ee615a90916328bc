"""``deep_taylor`` against Deep Taylor Decomposition as published (Montavon et al. 2017,
"Explaining nonlinear classification decisions with deep Taylor decomposition", Pattern
Recognition 65), written out here in plain numpy.

Every linear layer redistributes ``R_i = sum_j q_ij / sum_i' q_i'j R_j`` with the bias-free
``q_ij`` of the paper's rules (Sec. 4, Propositions 1-3; the same rules for deep networks in Sec. 5):

* w^2-rule (first layer, x in R^d):          q_ij = w_ij^2
* z^B-rule (first layer, l <= x <= h):       q_ij = x_i w_ij - l_i w_ij^+ - h_i w_ij^-
* z+-rule  (every other layer, x in R^d_+):  q_ij = x_i w_ij^+

relprop starts from ``s_c e_c`` (the target's score) and stabilizes a denominator as
``d + eps sign(d)``; ``epsilon=0`` is the paper's rule itself (a zero denominator passes zero).
On ReLU nets with non-positive biases and x >= 0 (the class the paper proves DTD consistent for,
Props. 1-3) the result must be conservative (sum_i R_i = f(x)) and positive.
"""
import numpy as np
import pytest

import relprop as rp
from reference_numpy import conv_matrix

TOL = 1e-10


# ---- networks: (kind, weight, bias, stride, padding) per linear layer, ReLU between them ------------

def _mlp(rng, bias):
    sizes = [7, 16, 12, 5]
    return [("dense", rng.normal(0, 1 / np.sqrt(a), (b, a)), _bias(rng, b, bias), None, None)
            for a, b in zip(sizes[:-1], sizes[1:])], (7,)


def _convnet(rng, bias):
    return [("conv", rng.normal(0, 0.4, (4, 2, 3, 3)), _bias(rng, 4, bias), 1, 1),
            ("conv", rng.normal(0, 0.3, (3, 4, 3, 3)), _bias(rng, 3, bias), 2, 0),
            ("dense", rng.normal(0.3, 0.5, (4, 3 * 2 * 2)), _bias(rng, 4, bias), None, None)], (2, 6, 6)


def _bias(rng, n, kind):
    b = rng.normal(0, 0.3, n)
    return -np.abs(b) if kind == "nonpositive" else b


def _relprop(layers):
    out = []
    for k, (kind, w, b, s, p) in enumerate(layers):
        if kind == "conv":
            out.append(rp.Conv2d(w, b, stride=s, padding=p))
        else:
            if k and layers[k - 1][0] == "conv":
                out.append(rp.Flatten())
            out.append(rp.Dense(w, b))
        if k < len(layers) - 1:
            out.append(rp.ReLU())
    return rp.Sequential(*out)


def _matrices(layers, in_shape):
    """Each linear layer as an explicit (out, in) matrix on flattened (C order) inputs."""
    mats, shape = [], in_shape
    for kind, w, b, s, p in layers:
        if kind == "conv":
            M, _, shape = conv_matrix(w, shape, s, p)
            mats.append((M, np.repeat(b, int(np.prod(shape[1:])))))
        else:
            mats.append((w, b))
            shape = (w.shape[0],)
    return mats


# ---- the paper's rules ----------------------------------------------------------------------------

def _stab(d, eps):
    if eps == 0:
        return np.where(d == 0, np.inf, d)  # nothing to redistribute
    return d + eps * np.where(d >= 0, 1.0, -1.0)


def deep_taylor_reference(layers, in_shape, x, target, low=None, high=None, eps=0.0):
    """R per sample: z^B (bounds given) or w^2 on the first layer, z+ on all others; no bias."""
    mats = _matrices(layers, in_shape)
    out = []
    for n in range(x.shape[0]):
        acts, a = [], x[n].reshape(-1)
        for k, (W, b) in enumerate(mats):
            acts.append(a)
            z = W @ a + b
            a = np.maximum(z, 0) if k < len(mats) - 1 else z
        R = np.zeros_like(a)
        R[target[n]] = a[target[n]]
        for k in reversed(range(len(mats))):
            W, xi = mats[k][0], acts[k]
            if k > 0:
                q = xi[:, None] * np.maximum(W, 0).T                        # z+-rule
            elif low is None:
                q = (W ** 2).T                                              # w^2-rule
            else:
                lo = np.broadcast_to(low, x.shape[1:]).reshape(-1)
                hi = np.broadcast_to(high, x.shape[1:]).reshape(-1)
                q = (xi[:, None] * W.T - lo[:, None] * np.maximum(W, 0).T
                     - hi[:, None] * np.minimum(W, 0).T)                    # z^B-rule
            R = q @ (R / _stab(q.sum(0), eps))
        out.append(R.reshape(x.shape[1:]))
    return np.stack(out)


def _case(net, bias, seed=3):
    rng = np.random.default_rng(seed)
    layers, in_shape = (_mlp if net == "mlp" else _convnet)(rng, bias)
    x = np.abs(rng.normal(0, 1, (10,) + in_shape))
    low = -rng.uniform(0, 1, in_shape)
    high = x.max(axis=0) + rng.uniform(0, 1, in_shape)
    return layers, in_shape, x, low, high


def _scores_and_targets(model, x):
    y = model(x)
    t = y.argmax(1)
    return y[np.arange(len(x)), t], t


def _positive(model, x):
    """The samples whose top score is positive (the paper's f(x) > 0), their scores and targets."""
    f, t = _scores_and_targets(model, x)
    keep = f > 1e-3
    assert keep.sum() >= 3  # the draw has enough of them
    return x[keep], f[keep], t[keep]


@pytest.mark.parametrize("eps", [0.0, 1e-6], ids=["eps0", "eps_default"])
@pytest.mark.parametrize("first", ["w_square", "zbox"])
@pytest.mark.parametrize("bias", ["nonpositive", "signed"])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_deep_taylor_matches_the_papers_rules(net, bias, first, eps):
    layers, in_shape, x, low, high = _case(net, bias)
    model = _relprop(layers)
    _, t = _scores_and_targets(model, x)
    bounds = {"low": low, "high": high} if first == "zbox" else {}
    R = rp.attribute(model, x, "deep_taylor", target=t, epsilon=eps, **bounds)
    ref = deep_taylor_reference(layers, in_shape, x, t, eps=eps, **bounds)
    assert np.abs(R - ref).max() <= TOL * np.abs(ref).max()


@pytest.mark.parametrize("first", ["w_square", "zbox"])
@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_deep_taylor_is_consistent(net, first):
    """Props. 1-3: on ReLU nets with b <= 0 and x >= 0, sum_i R_i = f(x) and R_i >= 0."""
    layers, in_shape, x, low, high = _case(net, "nonpositive")
    model = _relprop(layers)
    x, f, t = _positive(model, x)
    bounds = {"low": low, "high": high} if first == "zbox" else {}
    R = rp.attribute(model, x, "deep_taylor", target=t, epsilon=0.0, **bounds)
    sums = R.reshape(len(x), -1).sum(1)
    assert np.abs(sums - f).max() <= TOL * f.max()
    assert R.min() >= 0
    # the default stabilizer only takes eps / denominator off: conservative to ~1e-6
    R = rp.attribute(model, x, "deep_taylor", target=t, **bounds)
    assert np.abs(R.reshape(len(x), -1).sum(1) - f).max() <= 1e-4 * f.max()


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_z_plus_layers_are_consistent(net):
    """Prop. 2 layer by layer: the z+ part of the net (all but the first layer) on its input
    a = ReLU(W1 x + b1) >= 0 conserves f and gives R >= 0 to every unit."""
    layers, in_shape, x, _, _ = _case(net, "nonpositive")
    head = _relprop(layers[:1])
    a = np.maximum(head(x), 0)
    if layers[1][0] == "dense" and a.ndim > 2:
        a = a.reshape(len(a), -1)
    top = _relprop(layers[1:])
    a, f, t = _positive(top, a)
    R = rp.attribute(top, a, "lrp", target=t, rules=[rp.rules.ZPlus(0.0, include_bias=False)] * (len(layers) - 1))
    assert np.abs(R.reshape(len(a), -1).sum(1) - f).max() <= TOL * f.max()
    assert R.min() >= 0
