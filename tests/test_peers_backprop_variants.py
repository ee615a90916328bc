"""Guided backprop, DeconvNet and excitation backprop against Captum and Zennit on identical
weights (Zeiler & Fergus 2014; Springenberg et al. 2015; Zhang et al. 2016), plus the defining properties."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from captum.attr import Deconvolution, GuidedBackprop
from zennit.attribution import Gradient
from zennit.composites import DeconvNet as ZDeconvNet
from zennit.composites import ExcitationBackprop as ZExcitation
from zennit.composites import GuidedBackprop as ZGuided

from peer_models import assert_agree, make_net, relprop_target, resolved_targets, rp, to_torch

pytestmark = pytest.mark.peers

CASES = [("vgg_relu", "none"), ("vgg_relu", "array"), ("strided", "int"), ("mlp", "array"), ("vgg_tanh", "none")]


def _targets(net, model, xt, kind):
    with torch.no_grad():
        return torch.as_tensor(resolved_targets(kind, net, model(xt).numpy()))


@pytest.mark.parametrize("method,cls", [("guided_backprop", GuidedBackprop), ("deconvnet", Deconvolution)])
@pytest.mark.parametrize("net_name,target_kind", CASES)
def test_captum(method, cls, net_name, target_kind):
    net = make_net(net_name)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, method, target=relprop_target(target_kind, net))
        model = net.torch(tdt)
        xt = to_torch(x, tdt, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r_c = cls(model).attribute(xt, target=_targets(net, model, xt.detach(), target_kind))
        return r_rp, r_c.detach().numpy()

    assert_agree(run, f"{method} vs Captum on {net_name}")


def _zennit(net, composite, x, tdt, kind, scale_by_score):
    model = net.torch(tdt)
    xt = to_torch(x, tdt, requires_grad=True)
    with torch.no_grad():
        out = model(xt)
    t = torch.as_tensor(resolved_targets(kind, net, out.numpy()))
    onehot = torch.nn.functional.one_hot(t, out.shape[1]).to(tdt)
    with Gradient(model=model, composite=composite) as att:
        _, rel = att(xt, (lambda o: o * onehot) if scale_by_score else onehot)
    return rel.detach().numpy()


# Zennit's ExcitationBackprop composite maps no activation rule, so tanh/sigmoid units multiply
# by their derivative there; relprop passes relevance through activations as in all its LRP
# methods (excitation backprop is defined for ReLU nets, where both agree). Compared on ReLU nets.
ZENNIT_CASES = [(m, c, n, k) for m, c in [("guided_backprop", ZGuided), ("deconvnet", ZDeconvNet),
                                         ("excitation_backprop", ZExcitation)]
                for n, k in CASES if not (m == "excitation_backprop" and n == "vgg_tanh")]


@pytest.mark.parametrize("method,comp,net_name,target_kind", ZENNIT_CASES)
def test_zennit(method, comp, net_name, target_kind):
    net = make_net(net_name)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, method, target=relprop_target(target_kind, net))
        return r_rp, _zennit(net, comp(), x, tdt, target_kind, False)

    assert_agree(run, f"{method} vs Zennit on {net_name}")


def test_definitions_on_a_hand_net():
    """One hidden ReLU pair, target 0: the three ReLU rules differ exactly as defined."""
    W1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    W2 = np.array([[1.0, -1.0]])
    net = rp().Sequential(rp().Dense(W1), rp().ReLU(), rp().Dense(W2))
    x = np.array([[2.0, -3.0]])  # hidden z = [2, -3]: unit 2 is off
    np.testing.assert_allclose(rp().attribute(net, x, "gradient", target=0), [[1.0, 0.0]])
    np.testing.assert_allclose(rp().attribute(net, x, "guided_backprop", target=0), [[1.0, 0.0]])
    # DeconvNet ignores the forward mask: the negative weight's signal is clipped, not masked
    np.testing.assert_allclose(rp().attribute(net, x, "deconvnet", target=0), [[1.0, 0.0]])
    x2 = np.array([[2.0, 3.0]])  # both on: the gradient passes -1 to input 2, guided clips it
    np.testing.assert_allclose(rp().attribute(net, x2, "gradient", target=0), [[1.0, -1.0]])
    np.testing.assert_allclose(rp().attribute(net, x2, "guided_backprop", target=0), [[1.0, 0.0]])
    np.testing.assert_allclose(rp().attribute(net, x2, "deconvnet", target=0), [[1.0, 0.0]])


def test_excitation_backprop_is_a_probability_flow():
    """On nonnegative inputs and bias-free layers, z+ from e_c conserves total mass 1 and is >= 0."""
    rng = np.random.default_rng(1)
    net = rp().Sequential(rp().Dense(rng.normal(size=(8, 6))), rp().ReLU(), rp().Dense(rng.normal(size=(3, 8))))
    x = rng.uniform(0.1, 1.0, (5, 6))
    R = rp().attribute(net, x, "excitation_backprop", include_bias=False, epsilon=1e-12, target=1)
    np.testing.assert_allclose(R.sum(axis=1), 1.0, rtol=1e-9)
    assert np.all(R >= 0)
