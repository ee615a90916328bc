"""Peer agreement on a ResNet-18 imported with ``rp.from_torch``: residual additions, BatchNorm
folding and global average pooling against Zennit 0.5.1 and Captum 0.9.0.

The model is ``torch_models.build("resnet18_sum")``: torchvision's ResNet-18 layout at small
width (32x32 input) with random BatchNorm statistics, one ReLU module per use, the residual sum
done by ``zennit.layer.Sum`` (so Zennit's composites apply their ``Norm`` rule to it, as relprop
does at ``Add``) and a ``Clone`` between the stem ReLU and MaxPool (Captum DeepLift's
activation->MaxPool hook bug, see peer_models.PeerNet.torch).

* Zennit: BatchNorm merged by ``SequentialMergeBatchNorm`` (relprop: ``rp.canonize`` inside
  ``from_torch``); start signal ``one_hot(target) * output`` (relprop starts LRP from score_c * e_c).
  Zennit 0.5.1's merge resets the BatchNorm's statistics and affine parameters but keeps its
  ``eps``, so the "identity" BatchNorm left behind computes ``x / sqrt(1 + eps)``: the merged
  ResNet's activations shrink by ~5e-6 per BatchNorm and relevance differs from the exact merge by
  ~1e-4 of max|R| after 20 of them (also in float64).  Zennit fixed this upstream by making the
  leftover BatchNorm exactly the identity (chr5tphr/zennit#240, closing #234: ``running_var = eps
  = 0.5``); ``ExactSequentialMergeBatchNorm`` below does the same on 0.5.1.
* Captum: IntegratedGradients (Gauss-Legendre) and DeepLift (rescale) on the unmodified module;
  DeepLift's max-unpool is made accumulating for the overlapping stem MaxPool (3, stride 2), as
  in test_peers_captum.py.

Tolerance: per sample max|R_relprop - R_peer| <= 1e-4 * max|R_peer| in float32; a failure is
re-run in float64 on both sides (``peer_models.assert_agree``), never loosened.
"""
from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pytest
import torch

import captum.attr._core.deep_lift as deep_lift_mod
from captum.attr import DeepLift, IntegratedGradients
from zennit import composites as zc
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm

import torch_models as tm
from peer_models import assert_agree, rp, to_torch

pytestmark = pytest.mark.peers

NAME = "resnet18_sum"
N = 2
# per-channel ZBox bounds; make_input keeps inputs inside [-2.95, 2.95]
LOW = np.array([-3.0, -3.1, -3.3]).reshape(1, 3, 1, 1)
HIGH = np.array([3.0, 3.2, 3.4]).reshape(1, 3, 1, 1)


def _model(tdt):
    return tm.build(NAME, dtype=tdt)


def _input(npd):
    return tm.make_input(NAME, n=N, dtype=npd)


def _targets(kind, model, x):
    """Explicit per-sample targets for both sides (None -> argmax of the logits)."""
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    if kind == "none":
        return np.argmax(logits, axis=1).astype(np.int64)
    return (np.argmax(logits, axis=1) + 3) % logits.shape[1]  # not the argmax


def _relprop_target(kind, tgt):
    return None if kind == "none" else tgt


def test_imported_resnet_structure():
    """The import folds every BatchNorm and keeps the eight residual additions."""
    net = rp().from_torch(_model(torch.float32), _input(np.float32))
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("Add") == 8 and "BatchNorm2d" not in kinds
    assert kinds.count("Conv2d") == 20 and kinds.count("Dense") == 1
    assert "GlobalAvgPool2d" in kinds and "MaxPool2d" in kinds


# --------------------------------------------------------------------------------------------
# Zennit composites
# --------------------------------------------------------------------------------------------
class ExactSequentialMergeBatchNorm(SequentialMergeBatchNorm):
    """Zennit's SequentialMergeBatchNorm whose leftover BatchNorm is exactly the identity
    (``(x - 0) / sqrt(0.5 + 0.5) * 1 + 0``), as upstream zennit#240; ``eps`` restored on remove."""

    def register(self, linears, batch_norm):
        self.eps = batch_norm.eps
        super().register(linears, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 0.5)
        batch_norm.eps = 0.5

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.eps


@pytest.mark.parametrize("canonizer,exact", [(SequentialMergeBatchNorm, False),
                                             (ExactSequentialMergeBatchNorm, True)])
def test_zennit_batchnorm_merge_forward(canonizer, exact):
    """Why the exact merge: Zennit 0.5.1's merged ResNet computes a slightly different function."""
    model, x = _model(torch.float64), torch.from_numpy(_input(np.float64))
    with torch.no_grad():
        y = model(x)
        handles = [h for c in [canonizer()] for h in c.apply(model)]
        y_merged = model(x)
        for h in handles:
            h.remove()
        assert torch.equal(model(x), y)  # parameters (and eps) restored
    rel = float((y_merged - y).abs().max() / y.abs().max())
    assert (rel < 1e-12) if exact else (rel > 1e-6)


COMPOSITES = {
    "EpsilonPlusFlat": (
        lambda npd: rp().composites.EpsilonPlusFlat(),
        lambda tdt: zc.EpsilonPlusFlat(canonizers=[ExactSequentialMergeBatchNorm()]),
    ),
    "EpsilonGammaBox": (
        lambda npd: rp().composites.EpsilonGammaBox(LOW.astype(npd), HIGH.astype(npd)),
        lambda tdt: zc.EpsilonGammaBox(low=torch.as_tensor(LOW, dtype=tdt), high=torch.as_tensor(HIGH, dtype=tdt),
                                       canonizers=[ExactSequentialMergeBatchNorm()]),
    ),
    "EpsilonAlpha2Beta1": (
        lambda npd: rp().composites.EpsilonAlpha2Beta1(),
        lambda tdt: zc.EpsilonAlpha2Beta1(canonizers=[ExactSequentialMergeBatchNorm()]),
    ),
}


def zennit_lrp(model, x, tgt, composite):
    xt = to_torch(x, next(model.parameters()).dtype, requires_grad=True)
    t = torch.as_tensor(tgt)

    def attr_output(out):
        out = out.detach()
        return torch.nn.functional.one_hot(t, out.shape[1]).to(out.dtype) * out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(xt, attr_output)
    return relevance.detach().numpy()


@pytest.mark.parametrize("target_kind", ["none", "array"])
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_zennit_composite(composite, target_kind):
    rp_comp, zen_comp = COMPOSITES[composite]

    def run(npd, tdt):
        model, x = _model(tdt), _input(npd)
        tgt = _targets(target_kind, model, x)
        net = rp().from_torch(model, x)
        r_rp = rp().attribute(net, x, "lrp", rules=rp_comp(npd), target=_relprop_target(target_kind, tgt))
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        return r_rp, zennit_lrp(model, x, tgt, zen_comp(tdt))

    assert_agree(run, f"{composite} on imported ResNet-18 (target {target_kind})")


# --------------------------------------------------------------------------------------------
# Captum: Integrated Gradients and DeepLift
# --------------------------------------------------------------------------------------------
def _accumulating_max_unpool2d(t, indices, kernel_size, stride, padding, output_size):
    """``F.max_unpool2d`` that sums values routed to one input position (Captum 0.9's DeepLift
    overwrites them when max-pool windows overlap; see test_peers_captum.py)."""
    n, c = t.shape[:2]
    out = torch.zeros((n, c, int(output_size[-2]) * int(output_size[-1])), dtype=t.dtype)
    out.scatter_add_(2, indices.reshape(n, c, -1), t.reshape(n, c, -1))
    return out.reshape(n, c, int(output_size[-2]), int(output_size[-1]))


def _maxpool2d_accumulating(module, inputs, outputs, grad_input, grad_output, eps=1e-10):
    return deep_lift_mod.maxpool(module, torch.nn.functional.max_pool2d, _accumulating_max_unpool2d,
                                 inputs, outputs, grad_input, grad_output, eps=eps)


def _baseline(kind, npd):
    if kind == "zero":
        return 0.0
    rng = np.random.default_rng(77)
    return (0.5 * rng.standard_normal((N,) + tm.input_shape(NAME))).astype(np.float32).astype(npd)


def _captum(cls, model, x, tgt, baseline, **kwargs):
    tdt = next(model.parameters()).dtype
    xt = to_torch(x, tdt, requires_grad=True)
    b = baseline if np.isscalar(baseline) else to_torch(baseline, tdt)
    patch = {torch.nn.MaxPool2d: _maxpool2d_accumulating} if cls is DeepLift else {}
    with warnings.catch_warnings(), mock.patch.dict(deep_lift_mod.SUPPORTED_NON_LINEAR, patch):
        warnings.simplefilter("ignore")
        r = cls(model).attribute(xt, baselines=b, target=torch.as_tensor(tgt), **kwargs)
    return r.detach().numpy()


@pytest.mark.parametrize("baseline", ["zero", "random"])
def test_captum_integrated_gradients(baseline):
    steps = 16

    def run(npd, tdt):
        model, x = _model(tdt), _input(npd)
        tgt = _targets("array", model, x)
        b = _baseline(baseline, npd)
        net = rp().from_torch(model, x)
        r_rp = rp().attribute(net, x, "integrated_gradients", target=tgt, baseline=b, steps=steps,
                              scheme="gauss_legendre")
        return r_rp, _captum(IntegratedGradients, model, x, tgt, b, n_steps=steps, method="gausslegendre")

    assert_agree(run, f"integrated_gradients on imported ResNet-18 (baseline {baseline})")


@pytest.mark.parametrize("baseline", ["zero", "random"])
@pytest.mark.parametrize("target_kind", ["none", "array"])
def test_captum_deeplift(target_kind, baseline):
    def run(npd, tdt):
        model, x = _model(tdt), _input(npd)
        tgt = _targets(target_kind, model, x)
        b = _baseline(baseline, npd)
        net = rp().from_torch(model, x)
        r_rp = rp().attribute(net, x, "deeplift.rescale", target=_relprop_target(target_kind, tgt), baseline=b)
        return r_rp, _captum(DeepLift, model, x, tgt, b)

    assert_agree(run, f"deeplift.rescale on imported ResNet-18 (target {target_kind}, baseline {baseline})")


def test_deeplift_completeness():
    """Summation-to-delta on the imported ResNet: sum R = f_c(x) - f_c(x0) (float64)."""
    model, x = _model(torch.float64), _input(np.float64)
    net = rp().from_torch(model, x)
    b = _baseline("random", np.float64)
    tgt = _targets("array", model, x)
    r = rp().attribute(net, x, "deeplift.rescale", target=tgt, baseline=b)
    with torch.no_grad():
        f = model(torch.from_numpy(x)).numpy()[np.arange(N), tgt]
        f0 = model(torch.from_numpy(b)).numpy()[np.arange(N), tgt]
    np.testing.assert_allclose(r.reshape(N, -1).sum(1), f - f0, rtol=1e-9, atol=1e-9)
