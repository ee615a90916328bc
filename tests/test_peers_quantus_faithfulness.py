"""Peer agreement: ``relprop.evaluate.faithfulness`` against Quantus 0.6 on one float32 torch
CNN (Conv2d-ReLU-MaxPool-Flatten-Linear, eval mode) imported with ``rp.from_torch`` (identical
weights), the same inputs, attributions (``a_batch``) and deterministic baselines.

Quantus calls the torch model, relprop its own forward pass: agreement to ~1e-5 (float32).
The mappings asserted here (documented in the module's docstrings):

* ``PixelFlipping`` = ``pixel_flipping(patch=1, steps=H*W/q)[:, 1:]`` (raw scores, no
  unperturbed column; ``features_in_step = C * q`` removes q whole pixels per step);
* ``RegionPerturbation`` = ``curves[:, :1] - curves[:, 1:]`` (drops, no column 0);
* ``SensitivityN`` = per-step Pearson correlation *across the batch* of the step's attribution
  and the cumulative drop of the pixel-flipping curve (not Ancona's random subsets);
* ``Completeness`` = ``completeness(...) == 0`` (booleans, exact float equality);
* ``InputInvariance`` = ``input_invariance(...)`` ~ 0 (booleans; Quantus's default shift skips
  each sample's first element, so the test passes it a shift of every element);
* ``Continuity`` = ``continuity(path=<Quantus's translations>, pairs="first", input_norm=2)``.

Attributions are gradient x input plus a little noise: exact ties (dead ReLUs give many zeros)
would be broken differently by Quantus's unstable ``argsort``, which is no convention to match.
"""
from __future__ import annotations

import numpy as np
import pytest
import quantus
import scipy.stats
import torch
from quantus.functions.perturb_func import batched_translation
from quantus.helpers.model.pytorch_model import PyTorchModel

import relprop as rp
from relprop.evaluate import faithfulness as F

pytestmark = pytest.mark.peers

C, H, W, N = 2, 8, 8, 8
QKW = dict(disable_warnings=True, display_progressbar=False, normalise=False, abs=False)
TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Conv2d(C, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                torch.nn.Flatten(), torch.nn.Linear(36, 5)).eval()
    net = rp.from_torch(model, torch.zeros(1, C, H, W))
    x = np.random.default_rng(0).uniform(0, 1, (N, C, H, W)).astype(np.float32)
    y = np.asarray(rp.scores(net, x)).argmax(axis=1)
    a = np.asarray(rp.attribute(net, x, "gradient_x_input", target=y))
    a = (a + 1e-3 * np.random.default_rng(1).normal(size=a.shape)).astype(np.float32)
    return model, net, x, y, a


def _call(metric, model, x, y, **kw):
    return np.asarray(metric(model=model, x_batch=x, y_batch=y, channel_first=True, device="cpu", **kw), np.float64)


def test_peers_torch_import_is_the_same_model(case):
    model, net, x, _, _ = case
    with torch.no_grad():
        np.testing.assert_allclose(rp.scores(net, x), model(torch.from_numpy(x)).numpy(), **TOL)


@pytest.mark.parametrize("baseline,pixels_per_step", [(0.0, 1), ("black", 1), (0.0, 4)])
def test_peers_pixel_flipping(case, baseline, pixels_per_step):
    model, net, x, y, a = case
    heat = a.sum(axis=1, keepdims=True)
    q = _call(quantus.PixelFlipping(features_in_step=C * pixels_per_step, perturb_baseline=baseline, **QKW),
              model, x, y, a_batch=heat, softmax=False)
    mine = F.pixel_flipping(net, x, heat, y, patch=1, steps=H * W // pixels_per_step, fill=baseline)
    assert q.shape == (N, H * W // pixels_per_step)
    np.testing.assert_allclose(mine[:, 1:], q, **TOL)


@pytest.mark.parametrize("baseline,patch,regions,order", [
    (0.0, 2, 10, "morf"), ("black", 2, 16, "lerf"), ("white", 4, 4, "morf"),
])
def test_peers_region_perturbation(case, baseline, patch, regions, order):
    model, net, x, y, a = case
    q = _call(quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, order=order,
                                         perturb_baseline=baseline, **QKW), model, x, y, a_batch=a, softmax=False)
    curves = F.region_perturbation(net, x, a, y, patch=patch, regions=regions, order=order, fill=baseline)
    assert q.shape == (N, regions)
    np.testing.assert_allclose(curves[:, :1] - curves[:, 1:], q, rtol=1e-5, atol=1e-5)


def test_peers_sensitivity_n_maps_to_pixel_flipping_correlation(case):
    model, net, x, y, a = case
    heat = a.sum(axis=1, keepdims=True)
    q = _call(quantus.SensitivityN(features_in_step=C, n_max_percentage=0.8, perturb_baseline=0.0,
                                   return_aggregate=False, **QKW), model, x, y, a_batch=heat, softmax=False)
    curves = F.pixel_flipping(net, x, heat, y, patch=1, steps=H * W, fill=0.0)
    ranked = -np.sort(-heat.reshape(N, -1).astype(np.float64), axis=1)
    want = [scipy.stats.pearsonr(ranked[:, k], curves[:, 0] - curves[:, k + 1])[0] for k in range(len(q))]
    assert len(q) == int(0.8 * H * W // C)  # Quantus's count mixes pixels and values per step
    np.testing.assert_allclose(q, want, rtol=0, atol=1e-4)


def test_peers_completeness_is_exact_equality(case):
    model, net, x, y, a = case
    drops = []

    def keep(d):  # Quantus's own s(x) - s(baseline), the right side of its comparison
        drops.append(np.asarray(d, np.float64))
        return d

    q = _call(quantus.Completeness(perturb_baseline=0.0, output_func=keep, **QKW), model, x, y, a_batch=a)
    err = F.completeness(net, x, a, y, baseline=0.0)
    np.testing.assert_allclose(err, a.reshape(N, -1).sum(axis=1) - drops[0], rtol=0, atol=1e-5)
    assert not q.any() and np.all(np.abs(err) > 1e-4)
    # attributions whose sum is exactly Quantus's drop: Quantus says True, the error is ~0
    exact = np.zeros_like(a)
    exact[:, 0, 0, 0] = drops[0].astype(np.float32)
    q = _call(quantus.Completeness(perturb_baseline="black", **QKW), model, x, y, a_batch=exact)
    assert not q.any()  # "black" is each sample's minimum, not 0
    q = _call(quantus.Completeness(perturb_baseline=0.0, **QKW), model, x, y, a_batch=exact)
    assert q.all()
    np.testing.assert_allclose(F.completeness(net, x, exact, y, baseline=0.0), 0.0, atol=1e-5)
    mins = x.reshape(N, -1).min(axis=1)
    np.testing.assert_allclose(F.completeness(net, x, a, y, baseline="black"),
                               F.completeness(net, x, a, y, baseline=np.broadcast_to(mins[:, None, None, None],
                                                                                      x.shape).copy()), atol=1e-12)


def _explainer(method):
    def explain(model, inputs, targets, **kw):
        net = rp.from_torch(model, torch.zeros(1, C, H, W))  # Quantus passes its (shifted) torch model
        return np.asarray(rp.attribute(net, np.ascontiguousarray(inputs, np.float32), method,
                                       target=np.asarray(targets, np.int64)))
    return explain


def _shift_all(arr, indices, indexed_axes, input_shift, **kw):
    return arr + input_shift


def test_peers_input_invariance(case):
    model, net, x, y, _ = case
    shifted = PyTorchModel(model, channel_first=True).add_mean_shift_to_first_layer(-1, (1, C, H, W))
    with torch.no_grad():
        np.testing.assert_allclose(rp.scores(F.shifted_model(net, -1.0, x.shape[1:]), x - 1),
                                   shifted(torch.from_numpy(x - 1)).numpy(), **TOL)
    for method, invariant in (("gradient", True), ("gradient_x_input", False)):
        a = np.asarray(rp.attribute(net, x, method, target=y))
        q = quantus.InputInvariance(input_shift=-1, perturb_func=_shift_all, **QKW)(
            model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True, explain_func=_explainer(method),
            device="cpu")
        mine = F.input_invariance(net, x, method, shift=-1.0, target=y)
        assert list(q) == [invariant] * N
        assert np.all(mine < 1e-5) if invariant else np.all(mine > 1e-2)


def test_peers_continuity(case):
    model, net, x, y, _ = case
    steps = 4
    q = _call(quantus.Continuity(nr_steps=steps, **QKW), model, x, y, explain_func=_explainer("gradient_x_input"))
    dx = (2 * W + 1) // steps
    path = np.stack([batched_translation(x, "black", -W + k * dx, direction="x") for k in range(1, steps + 1)], axis=1)
    mine = F.continuity(net, x, "gradient_x_input", path=path, pairs="first", input_norm=2, target=y)
    np.testing.assert_allclose(mine, q, rtol=1e-5)
