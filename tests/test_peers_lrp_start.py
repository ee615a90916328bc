"""Comparable numbers: the calls that give identical results in relprop and Zennit 0.5.1, and in
relprop and Captum 0.9.0, on identical weights.

* LRP's starting signal: relprop's ``start="one_hot"`` (``R = e_c``) is Zennit's
  ``attributor(x, one_hot)``; the default ``start="score"`` (``R = s_c e_c``) is
  ``attributor(x, lambda out: out * one_hot)``. ``Explanation.sums_to`` is ``"one"`` for the
  former and its ``error`` is ``sum R - 1``.
* Captum: ``gradient`` is ``Saliency(abs=False)``, ``saliency`` is ``Saliency()``,
  ``integrated_gradients`` with its defaults is ``IntegratedGradients`` with its defaults
  (Gauss-Legendre, 50 steps, zero baseline), ``deeplift.rescale`` is ``DeepLift`` -- except
  where a ReLU module feeds a MaxPool2d directly: Captum 0.9.0's hooks then apply the ReLU's
  rescale multiplier to the plain max-pool gradient (see ``peer_models.PeerNet.torch``), its
  attributions stop summing to ``f(x) - f(x0)``; an identity that returns a new tensor between
  the two (``x.clone()``) gives Captum the DeepLIFT rule relprop computes.

Tolerance as the other peer tests (``peer_models.assert_agree``): per sample max|diff| <= 1e-4 x
max|R_peer| in float32, decided in float64 when float32 cannot resolve it.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

# Peers are required: these imports are unconditional so a missing peer fails collection.
from captum.attr import DeepLift, IntegratedGradients, Saliency
from zennit import rules as zr
from torch_ref import zennit_relevance
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat, LayerMapComposite, SpecialFirstLayerMapComposite
from zennit.types import Activation, AvgPool, Convolution

from peer_models import assert_agree, make_net, relprop_target, resolved_targets, rp, to_torch

pytestmark = pytest.mark.peers

LINEAR = (Convolution, torch.nn.Linear)


def _base():
    return [(Activation, zr.Pass()), (AvgPool, zr.Norm())]


def _one_hot(net, model, xt, target_kind):
    with torch.no_grad():
        logits = model(xt).numpy()
    t = torch.as_tensor(resolved_targets(target_kind, net, logits))
    return torch.nn.functional.one_hot(t, logits.shape[1]).to(xt.dtype)


def zennit(net, x, target_kind, composite, tdt, start):
    """Zennit's relevance from ``attributor(x, one_hot)`` (start "one_hot") or
    ``attributor(x, lambda out: out * one_hot)`` (start "score")."""
    model = net.torch(tdt)
    xt = to_torch(x, tdt, requires_grad=True)
    one_hot = _one_hot(net, model, xt.detach(), target_kind)
    attr_output = one_hot if start == "one_hot" else (lambda out: out.detach() * one_hot)
    return zennit_relevance(model, xt, composite, attr_output)


# (relprop method, its parameters(net, npd), the Zennit composite(net, tdt))
CASES = {
    "lrp.epsilon": ("lrp.epsilon", lambda n, d: {},
                    lambda n, t: LayerMapComposite(_base() + [(LINEAR, zr.Epsilon(epsilon=1e-6))])),
    "lrp.z_plus": ("lrp.z_plus", lambda n, d: {},
                   lambda n, t: LayerMapComposite(_base() + [(LINEAR, zr.ZPlus(stabilizer=1e-6))])),
    "lrp.alpha_beta": ("lrp.alpha_beta", lambda n, d: {"alpha": 2.0, "beta": 1.0},
                       lambda n, t: LayerMapComposite(
                           _base() + [(LINEAR, zr.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-6))])),
    "EpsilonPlusFlat": ("lrp", lambda n, d: {"rules": rp().composites.EpsilonPlusFlat()},
                        lambda n, t: EpsilonPlusFlat()),
    "EpsilonGammaBox": ("lrp", lambda n, d: {"rules": rp().composites.EpsilonGammaBox(*n.bounds(d))},
                        lambda n, t: EpsilonGammaBox(*n.torch_bounds(t))),
    "deep_taylor": ("deep_taylor", lambda n, d: dict(zip(("low", "high"), n.bounds(d))),
                    lambda n, t: SpecialFirstLayerMapComposite(
                        layer_map=_base() + [(LINEAR, zr.ZPlus(stabilizer=1e-6, zero_params=["bias"]))],
                        first_map=[(LINEAR, zr.ZBox(*n.torch_bounds(t), stabilizer=1e-6))])),
}
NETS = [("vgg_relu", "none"), ("strided", "array"), ("mlp", "int")]


@pytest.mark.parametrize("net_name,target_kind", NETS)
@pytest.mark.parametrize("case", list(CASES))
def test_peers_start_one_hot_is_zennit_attributor_with_one_hot(case, net_name, target_kind):
    method, params, composite = CASES[case]
    net = make_net(net_name)
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, method, target=target, start="one_hot", **params(net, npd))
        return r_rp, zennit(net, x, target_kind, composite(net, tdt), tdt, "one_hot")

    assert_agree(run, f"{case} start='one_hot' on {net_name}")


@pytest.mark.parametrize("case", ["lrp.epsilon", "EpsilonPlusFlat", "deep_taylor"])
def test_peers_start_score_is_zennit_attributor_with_score_times_one_hot(case):
    method, params, composite = CASES[case]
    net = make_net("vgg_relu")
    target = relprop_target("array", net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, method, target=target, **params(net, npd))  # start="score"
        return r_rp, zennit(net, x, "array", composite(net, tdt), tdt, "score")

    assert_agree(run, f"{case} start='score' on vgg_relu")


def test_explanation_with_one_hot_sums_to_one():
    """``sums_to == "one"``, ``error == sum R - 1`` (summed here), and with the bias-free LRP-0
    rule on a ReLU network relevance is conserved exactly: the error is rounding."""
    net = make_net("mlp")
    x = net.inputs(dtype=np.float64)
    m = net.relprop(np.float64)
    e = rp().Explainer(m, "lrp.z", include_bias=False, start="one_hot").explain(x, targets=[0, 3])
    assert e.sums_to == "one"
    total = e.attribution.reshape(len(x), 2, -1).sum(axis=2)
    np.testing.assert_allclose(e.error, total - 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(e.error, 0.0, atol=1e-9)
    s = rp().Explainer(m, "lrp.z", include_bias=False).explain(x, targets=[0, 3])
    assert s.sums_to == "score"
    np.testing.assert_allclose(s.error, s.attribution.reshape(len(x), 2, -1).sum(axis=2) - s.scores, atol=1e-12)


def test_dataset_job_records_what_one_hot_sums_to():
    net = make_net("mlp")
    x = net.inputs(dtype=np.float64)
    ex = rp().Explainer(net.relprop(np.float64), "lrp.epsilon", start="one_hot")
    res = ex.map(x, progress=False)
    assert res.meta["sums_to"] == "one"
    np.testing.assert_allclose(res.error, res.attributions.reshape(len(x), -1).sum(axis=1) - 1.0, atol=1e-12)


def test_excitation_backprop_starts_from_one_hot_as_lrp_z_plus():
    """Excitation backprop is the z+ rule from ``e_c`` (it has no ``start=``): the LRP family's
    ``lrp.z_plus`` with ``start="one_hot"`` gives its numbers."""
    net = make_net("vgg_relu")
    x = net.inputs(dtype=np.float64)
    m = net.relprop(np.float64)
    eb = rp().attribute(m, x, "excitation_backprop", target=2)
    np.testing.assert_allclose(rp().attribute(m, x, "lrp.z_plus", target=2, start="one_hot"), eb,
                               rtol=1e-12, atol=1e-14 * np.abs(eb).max())
    with pytest.raises(TypeError, match=r"unknown parameter 'start'"):
        rp().attribute(m, x, "excitation_backprop", start="score")


@pytest.mark.parametrize("bad", ["onehot", "unit", 1.0, None])
def test_errors_start_parameter(bad):
    net = make_net("mlp")
    with pytest.raises(ValueError, match=r"start must be 'score' .* or 'one_hot' .*got"):
        rp().Explainer(net.relprop(), "lrp.epsilon", start=bad)


# --------------------------------------------------------------------------------------------
# Captum: the calls that agree
# --------------------------------------------------------------------------------------------
def _captum(net, cls, x, target_kind, tdt, clone=False, **kwargs):
    model = net.torch(tdt, captum_deeplift=clone)
    xt = to_torch(x, tdt, requires_grad=True)
    with torch.no_grad():
        t = torch.as_tensor(resolved_targets(target_kind, net, model(xt).numpy()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(model).attribute(xt, target=t, **kwargs).detach().numpy()


CAPTUM = {  # relprop method (default parameters) -> Captum call (default parameters but abs)
    "gradient": lambda net, x, tk, tdt: _captum(net, Saliency, x, tk, tdt, abs=False),
    "saliency": lambda net, x, tk, tdt: _captum(net, Saliency, x, tk, tdt),
    "integrated_gradients": lambda net, x, tk, tdt: _captum(net, IntegratedGradients, x, tk, tdt),
    # a ReLU feeds a MaxPool2d directly in vgg_relu: Clone between them (see the module docstring)
    "deeplift.rescale": lambda net, x, tk, tdt: _captum(net, DeepLift, x, tk, tdt, clone=True),
}


@pytest.mark.parametrize("method", list(CAPTUM))
@pytest.mark.parametrize("net_name,target_kind", [("vgg_relu", "array"), ("mlp", "none")])
def test_peers_captum_calls_that_agree(method, net_name, target_kind):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        return rp().attribute(net.relprop(npd), x, method, target=target), CAPTUM[method](net, x, target_kind, tdt)

    assert_agree(run, f"{method} vs Captum defaults on {net_name}")


def test_peers_captum_deeplift_relu_into_maxpool_issue():
    """Captum 0.9.0's DeepLift on a ReLU module that feeds a MaxPool2d directly does not sum to
    f(x) - f(x0) (its hook ordering issue); relprop's ``deeplift.rescale`` does, and equals
    Captum's result once a clone separates the two modules."""
    net = make_net("vgg_relu")
    x = net.inputs(dtype=np.float64)
    model = net.torch(torch.float64)
    with torch.no_grad():
        logits = model(to_torch(x, torch.float64)).numpy()
        base = model(torch.zeros((1,) + x.shape[1:], dtype=torch.float64)).numpy()
    t = resolved_targets("none", net, logits)
    delta = logits[np.arange(len(x)), t] - base[0, t]
    plain = _captum(net, DeepLift, x, "none", torch.float64)
    cloned = _captum(net, DeepLift, x, "none", torch.float64, clone=True)
    R = rp().attribute(net.relprop(np.float64), x, "deeplift.rescale", target=t)
    np.testing.assert_allclose(R.reshape(len(x), -1).sum(1), delta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cloned.reshape(len(x), -1).sum(1), delta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(R, cloned, rtol=1e-9, atol=1e-12 * np.abs(cloned).max())
    leak = np.abs(plain.reshape(len(x), -1).sum(1) - delta)
    assert np.all(leak > 1e-4 * np.abs(delta)), "Captum's ReLU->MaxPool DeepLift issue no longer reproduces"
    assert np.max(np.abs(plain - R)) > 1e-2 * np.abs(R).max()
