"""The sanity-check literature's findings, reproduced on a CNN trained on real data in the test.

Adebayo et al. (2018, "Sanity checks for saliency maps", Figs. 2-4): after cascading
randomization of the top layers, guided backprop (and DeconvNet) maps stay similar to the
original ones, while the gradient, gradient x input, integrated gradients and DeepLIFT maps
change. Sixt et al. (2020, "When explanations lie", Sec. 5) and the thesis this project comes
from (Ch. 7): LRP's z+ / alpha1-beta0 rule stays much more similar under randomization than
LRP-epsilon, and guided backprop is barely class sensitive (Gu et al. 2018) while the gradient is.

The model is ``tests/mnist_models.py``'s CNN (conv8-pool-conv16-pool-fc64-fc10), trained with
torch on 20,000 MNIST images during the test (~6 s). The margins below were measured on test
images 0..15 (seeds 0 and 1) and are asserted on images 100..131, which were not used to pick
them. Measured on the development images (step 1 = the top layer randomized):

- signed Spearman at step 1: guided backprop 0.79, DeconvNet 0.56; gradient 0.03, gradient x
  input 0.06, IG 0.02, DeepLIFT 0.02 (margin 0.50; asserted > 0.30);
- SSIM of min-max scaled maps at step 1 (maps in [0, 1], as the thesis scales them): guided
  backprop 0.79, DeconvNet 0.55; the gradient family <= 0.37 (margins 0.42 and 0.18; asserted
  > 0.25 and > 0.10);
- SSIM of |R| / max|R| maps, mean over the 4 steps: z+ 0.92 (alpha1-beta0 identical: the same
  rule), LRP-epsilon 0.65 (margin 0.27; asserted > 0.15);
- class sensitivity (top-2 classes), SSIM of min-max scaled maps: guided backprop 0.75; gradient
  0.05, gradient x input 0.35, IG 0.39, DeepLIFT 0.39 (margin 0.35; asserted > 0.20).

On this shallow CNN guided backprop's SSIM after the top layer is 0.79, not 1 as on the deep
VGG-16 of the literature: its insensitivity grows with the layers below the randomized one
(Nie et al. 2018). The assertions are the orderings, with the margins above.
"""
from __future__ import annotations

import numpy as np
import pytest

import relprop as rp
from relprop import evaluate as ev

torch = pytest.importorskip("torch")
from mnist_models import trained_cnn  # noqa: E402

HELD_OUT = slice(100, 132)
GRADIENT_FAMILY = ("gradient", "gradient_x_input", "integrated_gradients", "deeplift")
METHODS = {
    "gradient": "gradient",
    "gradient_x_input": "gradient_x_input",
    "integrated_gradients": ("integrated_gradients", {"steps": 16}),
    "deeplift": "deeplift.rescale",
    "guided_backprop": "guided_backprop",
    "deconvnet": "deconvnet",
    "lrp.epsilon": ("lrp.epsilon", {"epsilon": 0.01}),
    "lrp.z_plus": ("lrp.z_plus", {}),
    "lrp.alpha1_beta0": ("lrp.alpha_beta", {"alpha": 1.0, "beta": 0.0}),
}


@pytest.fixture(scope="module")
def model():
    torch_model, x, _, y, name = trained_cnn()
    net = rp.from_torch(torch_model, torch.from_numpy(x[:4]))
    acc = float((np.argmax(rp.scores(net, x), 1) == y).mean())
    assert acc > (0.95 if name == "mnist" else 0.8), f"the CNN did not train: accuracy {acc:.3f} on {name}"
    return net, x[HELD_OUT]


@pytest.fixture(scope="module")
def studies(model):
    net, x = model
    signed = ev.model_randomization(net, x, METHODS, seeds=(0, 1), measures=("spearman", "ssim"), normalize="max")
    scaled = ev.model_randomization(net, x, METHODS, seeds=(0, 1), measures=("ssim",), normalize="minmax")
    absmax = ev.model_randomization(net, x, METHODS, seeds=(0, 1), measures=("ssim",), normalize="abs_max")
    return signed, scaled, absmax


def _at(res, method, measure, step):
    return res.curve(method, measure)[0][step]


def test_guided_backprop_and_deconvnet_stay_similar_while_the_gradient_family_changes(studies):
    signed, scaled, _ = studies
    assert signed.layers == ["original", "f2", "f1", "c2", "c1"]  # step 1: the top layer alone
    stay = {m: _at(signed, m, "spearman", 1) for m in ("guided_backprop", "deconvnet")}
    drop = {m: _at(signed, m, "spearman", 1) for m in GRADIENT_FAMILY}
    assert min(stay.values()) - max(drop.values()) > 0.30, (stay, drop)
    gbp = _at(scaled, "guided_backprop", "ssim", 1)
    drop_ssim = {m: _at(scaled, m, "ssim", 1) for m in GRADIENT_FAMILY}
    assert gbp - max(drop_ssim.values()) > 0.25, (gbp, drop_ssim)
    assert gbp > 0.6
    deconv = _at(scaled, "deconvnet", "ssim", 1)
    assert deconv - max(drop_ssim.values()) > 0.10, (deconv, drop_ssim)


def test_lrp_z_plus_and_alpha1_beta0_stay_much_more_similar_than_lrp_epsilon(studies):
    _, _, absmax = studies
    mean = {m: float(np.mean(absmax.curve(m, "ssim")[0][1:])) for m in ("lrp.z_plus", "lrp.alpha1_beta0",
                                                                          "lrp.epsilon")}
    assert min(mean["lrp.z_plus"], mean["lrp.alpha1_beta0"]) - mean["lrp.epsilon"] > 0.15, mean
    # alpha1-beta0 is z+ (Montavon et al. 2018, Eq. 8 with beta = 0): the same maps
    np.testing.assert_allclose(absmax.values[list(METHODS).index("lrp.z_plus")],
                               absmax.values[list(METHODS).index("lrp.alpha1_beta0")], atol=1e-6)


def test_the_gradient_family_is_class_sensitive_and_guided_backprop_is_not(model):
    net, x = model
    cs = ev.class_sensitivity(net, x, METHODS, measures=("ssim",), normalize="minmax")
    v = {r["method"]: r["value"] for r in cs.records()}
    assert v["guided_backprop"] - max(v[m] for m in GRADIENT_FAMILY) > 0.20, v
    assert v["gradient"] < 0.3, v
    assert (cs.classes[:, 0] != cs.classes[:, 1]).all()
