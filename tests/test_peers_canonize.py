"""Peer agreement: BatchNorm canonization (``rp.canonize`` inside ``rp.from_torch``) against
Zennit 0.5.1's ``SequentialMergeBatchNorm``.

Zennit merges a BatchNorm only into the linear layer right before it; a BatchNorm in front of
a linear layer stays, and its composites pass relevance through it (``Pass``). relprop's
default (``fold="after"``) does the same, so LRP agrees. ``fold="after_and_before"`` (opt-in)
also folds the BatchNorm in front of a Conv2d/Dense: the forward pass and the gradient stay
the same, LRP does not (the rule then sees the BatchNorm's input).

Tolerance: per sample max|R_relprop - R_zennit| <= 1e-4 * max|R_zennit| in float32
(``peer_models.assert_agree``).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from zennit import composites as zc
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm

from peer_models import assert_agree, mismatch, rp, to_torch

pytestmark = pytest.mark.peers


def _bn(c, g):
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1, generator=g)
        bn.running_var.uniform_(0.3, 2.0, generator=g)
        bn.weight.uniform_(0.5, 2.0, generator=g)
        bn.bias.uniform_(-1, 1, generator=g)
    return bn


def probe(name, dtype):
    """``bn_conv``: BN -> Conv -> ReLU -> Dense (the BN is in front of the conv);
    ``conv_bn_bn_conv``: Conv -> BN -> ReLU -> BN -> Conv -> ReLU -> Dense (one BN after, one before)."""
    g = torch.Generator().manual_seed(7)
    torch.manual_seed(7)
    if name == "bn_conv":
        layers = [_bn(3, g), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)]
    else:
        layers = [nn.Conv2d(3, 4, 3, padding=1), _bn(4, g), nn.ReLU(), _bn(4, g), nn.Conv2d(4, 4, 3), nn.ReLU(),
                  nn.Flatten(), nn.Linear(4 * 4 * 4, 5)]
    return nn.Sequential(*layers).eval().to(dtype)


def _input(dtype):
    return np.random.default_rng(3).normal(size=(3, 3, 6, 6)).astype(dtype)


COMPOSITES = {
    "EpsilonPlus": (lambda: rp().composites.EpsilonPlus(), lambda: zc.EpsilonPlus(canonizers=[SequentialMergeBatchNorm()])),
    "EpsilonAlpha2Beta1": (lambda: rp().composites.EpsilonAlpha2Beta1(),
                           lambda: zc.EpsilonAlpha2Beta1(canonizers=[SequentialMergeBatchNorm()])),
}


def zennit_lrp(model, x, target, composite):
    xt = to_torch(x, next(model.parameters()).dtype, requires_grad=True)
    t = torch.as_tensor(target)

    def attr_output(out):
        out = out.detach()
        return nn.functional.one_hot(t, out.shape[1]).to(out.dtype) * out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(xt, attr_output)
    return relevance.detach().numpy()


def _run(name, composite, canonize):
    rp_comp, z_comp = COMPOSITES[composite]

    def run(npd, tdt):
        model, x = probe(name, tdt), _input(npd)
        net = rp().from_torch(model, x, canonize=canonize)
        target = np.argmax(net(x), axis=1)
        r_rp = rp().attribute(net, x, "lrp", target=target, rules=rp_comp())
        return r_rp, zennit_lrp(model, x, target, z_comp())

    return run


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
@pytest.mark.parametrize("name", ["bn_conv", "conv_bn_bn_conv"])
def test_default_canonization_agrees_with_zennit(name, composite):
    kinds = [n.layer.kind for n in rp().from_torch(probe(name, torch.float32), _input(np.float32)).nodes]
    assert kinds.count("BatchNorm2d") == 1  # the BN in front of a conv stays (Zennit keeps it too)
    assert_agree(_run(name, composite, True), f"{composite} on {name} (canonize=True)")


@pytest.mark.parametrize("name", ["bn_conv", "conv_bn_bn_conv"])
def test_folding_before_keeps_forward_and_gradient_but_not_lrp(name):
    model, x = probe(name, torch.float64), _input(np.float64)
    kept = rp().from_torch(model, x, canonize=False)
    both = rp().from_torch(model, x, canonize="after_and_before")
    assert "BatchNorm2d" not in [n.layer.kind for n in both.nodes]
    assert [n.layer.kind for n in rp().canonize(kept, fold="after_and_before").nodes] == \
        [n.layer.kind for n in both.nodes]
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(both(x), y, rtol=1e-10, atol=1e-12 * np.abs(y).max())
    t = np.argmax(y, axis=1)
    g_kept, g_both = (rp().attribute(n, x, "gradient", target=t) for n in (kept, both))
    np.testing.assert_allclose(g_both, g_kept, rtol=1e-9, atol=1e-12 * np.abs(g_kept).max())
    # LRP differs from Zennit's (and from the default) once the BN in front of the conv is folded
    r_both = rp().attribute(both, x, "lrp", target=t, rules=rp().composites.EpsilonPlus())
    r_zen = zennit_lrp(model, x, t, zc.EpsilonPlus(canonizers=[SequentialMergeBatchNorm()]))
    assert not mismatch(r_both, r_zen, 1e-2)[0]


def test_importers_refuse_an_unknown_canonize():
    model, x = probe("bn_conv", torch.float32), _input(np.float32)
    with pytest.raises(ValueError, match="after_and_before"):
        rp().from_torch(model, x, canonize="before")
