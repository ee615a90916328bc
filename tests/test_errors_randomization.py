"""Bad parameters of the randomization sanity checks give clear errors before any work is done.

Every case checks the exception type, a part of the message that names the parameter and what
was expected, and -- by counting the forward calls of every layer op
(``relprop.core.layers.OPS``) and the calls of ``Explainer.attribute`` -- that the error came
before any explanation (for pure parameter errors: before any forward pass at all).
"""
from __future__ import annotations

import numpy as np
import pytest

import relprop as rp
from relprop.core import layers as core_layers
from relprop.evaluate import randomization as R


def make_cnn(dt=np.float32):
    g = np.random.default_rng(0)
    return rp.Sequential(
        rp.Conv2d(g.normal(0, 0.4, (4, 1, 3, 3)).astype(dt), g.normal(0, 0.1, 4).astype(dt), padding=1), rp.ReLU(),
        rp.MaxPool2d(2), rp.Flatten(), rp.Dense(g.normal(0, 0.2, (3, 144)).astype(dt), np.zeros(3, dt)))


def make_tabular():
    g = np.random.default_rng(1)
    return rp.Sequential(rp.Dense(g.normal(size=(6, 5)).astype(np.float32)), rp.ReLU(),
                         rp.Dense(g.normal(size=(3, 6)).astype(np.float32)))


NET = make_cnn()
X = np.random.default_rng(2).normal(size=(3, 1, 12, 12)).astype(np.float32)
XT = np.random.default_rng(3).normal(size=(4, 5)).astype(np.float32)


class _Counting:
    def __init__(self, op, counter):
        self._op, self._counter = op, counter

    def __getattr__(self, name):
        return getattr(self._op, name)

    def forward(self, fw, node, xs):
        self._counter["forward"] += 1
        return self._op.forward(fw, node, xs)


@pytest.fixture
def work(monkeypatch):
    """Counts of the forward op calls and of the explanations computed (completed
    ``Explainer.attribute`` calls)."""
    counter = {"forward": 0, "attribute": 0}
    for kind, op in list(core_layers.OPS.items()):
        monkeypatch.setitem(core_layers.OPS, kind, _Counting(op, counter))
    orig = rp.Explainer.attribute

    def attribute(self, *a, **k):
        out = orig(self, *a, **k)
        counter["attribute"] += 1  # an explanation was computed (a call refused by its checks is not)
        return out

    monkeypatch.setattr(rp.Explainer, "attribute", attribute)
    return counter


# (kwargs of model_randomization, exception, message part)
BAD_STUDY = {
    "methods empty list": (dict(methods=[]), TypeError, r"methods must be a non-empty dict"),
    "methods empty dict": (dict(methods={}), TypeError, r"methods must be a non-empty dict"),
    "methods not a container": (dict(methods=3), TypeError, r"methods must be a non-empty dict.*got 3"),
    "methods unknown": (dict(methods=["gradient", "nope"]), ValueError, r"methods\['nope'\]: unknown method 'nope'"),
    "method spec not a pair": (dict(methods={"a": ("gradient", 3)}), TypeError,
                               r"methods\['a'\] must be a method name or \(method name, params dict\)"),
    "method bad param value": (dict(methods={"ig": ("integrated_gradients", {"steps": 0})}), ValueError,
                               r"steps must be >= 1, got 0"),
    "method unknown param": (dict(methods={"g": ("gradient", {"bogus": 1})}), TypeError,
                             r"unknown parameter 'bogus'"),
    "mode": (dict(mode="top_down"), ValueError, r"mode must be one of \['cascading', 'independent'\], got 'top_down'"),
    "mode not a string": (dict(mode=1), ValueError, r"mode must be one of"),
    "seeds bool": (dict(seeds=True), ValueError, r"seeds must be a non-empty sequence of distinct ints"),
    "seeds duplicate": (dict(seeds=(0, 0)), ValueError, r"seeds must be a non-empty sequence of distinct ints"),
    "seeds empty": (dict(seeds=()), ValueError, r"seeds must be a non-empty sequence of distinct ints"),
    "seeds strings": (dict(seeds="ab"), ValueError, r"seeds must be a non-empty sequence"),
    "seeds None": (dict(seeds=None), ValueError, r"seeds must be a non-empty sequence"),
    "measures unknown": (dict(measures=("ssim", "nope")), ValueError,
                         r"unknown similarity measure 'nope'; valid names"),
    "measures empty": (dict(measures=()), ValueError, r"measures must name at least one measure"),
    "layers not weight layers": (dict(layers=["1"]), ValueError, r"layers must name weight layers of the model.*'1'"),
    "layers unknown": (dict(layers="zz"), ValueError, r"layers must name weight layers.*'zz'"),
    "layers empty": (dict(layers=[]), ValueError, r"layers must name weight layers"),
    "keep_maps negative": (dict(keep_maps=-1), ValueError, r"keep_maps must be an int >= 0, got -1"),
    "keep_maps bool": (dict(keep_maps=True), ValueError, r"keep_maps must be an int >= 0, got True"),
    "keep_maps float": (dict(keep_maps=2.0), ValueError, r"keep_maps must be an int >= 0, got 2.0"),
    "init unknown": (dict(init="uniform"), ValueError,
                     r"init must be one of \['torch', 'he_normal', 'glorot_uniform'\], got 'uniform'"),
    "init not callable": (dict(init=3), ValueError, r"init must be one of .*got 3"),
    "reduce": (dict(reduce="mean"), ValueError, r"reduce must be one of \['sum', 'abs_sum', 'none'\], got 'mean'"),
    "normalize": (dict(normalize="l2"), ValueError,
                  r"normalize must be one of \['max', 'abs_max', 'minmax', 'none'\], got 'l2'"),
    "max_memory": (dict(max_memory="lots"), ValueError, r"max_memory must look like '2GB'"),
    "target wrong length": (dict(target=np.array([0, 1])), ValueError, r"target array must have shape \(3,\)"),
}


@pytest.mark.parametrize("case", list(BAD_STUDY))
def test_errors_model_randomization_bad_parameter(case, work):
    kw, exc, match = BAD_STUDY[case]
    kw = dict(kw)
    methods = kw.pop("methods", ["gradient"])
    with pytest.raises(exc, match=match):
        R.model_randomization(NET, X, methods, **kw)
    assert work == {"forward": 0, "attribute": 0}, case


def test_errors_model_randomization_bad_model(work):
    with pytest.raises(TypeError, match=r"net must be a relprop model \(rp.Sequential or rp.Graph\), got str"):
        R.model_randomization("net", X, ["gradient"])
    with pytest.raises(ValueError, match=r"the model has no weight layer"):
        R.model_randomization(rp.Sequential(rp.Flatten(), rp.ReLU()), X, ["gradient"])
    assert work == {"forward": 0, "attribute": 0}


@pytest.mark.parametrize("measure", ["ssim", "hog_pearson"])
def test_errors_2d_measure_on_tabular_attributions(measure):
    with pytest.raises(ValueError, match=rf"measure '{measure}' compares 2-D maps.*\(4, 5\).*tabular"):
        R.model_randomization(make_tabular(), XT, ["gradient"], measures=("spearman", measure))
    with pytest.raises(ValueError, match=rf"measure '{measure}' compares 2-D maps.*tabular"):
        R.class_sensitivity(make_tabular(), XT, ["gradient"], measures=(measure,))


@pytest.mark.parametrize("fn", ["model_randomization", "class_sensitivity"])
def test_errors_2d_measure_on_tabular_is_refused_before_any_explanation(fn, work):
    with pytest.raises(ValueError, match=r"compares 2-D maps"):
        getattr(R, fn)(make_tabular(), XT, ["gradient"], measures=("ssim",))
    assert work["attribute"] == 0


@pytest.mark.parametrize("seeds", [(0, True), (0, 1.5)], ids=["bool-in-seq", "float-in-seq"])
def test_errors_seeds_with_a_bad_entry(seeds, work):
    with pytest.raises((TypeError, ValueError), match=r"seeds"):
        R.model_randomization(NET, X, ["gradient"], seeds=seeds)
    assert work["forward"] == 0


def test_errors_negative_seed(work):
    with pytest.raises(ValueError, match=r"seeds"):
        R.model_randomization(NET, X, ["gradient"], seeds=(-1,))
    assert work["attribute"] == 0


@pytest.mark.parametrize("seed", [True, 1.5, -1])
def test_errors_randomized_models_bad_seed(seed):
    with pytest.raises((TypeError, ValueError), match=r"seed"):
        list(R.randomized_models(NET, seed=seed))


def test_errors_negative_max_memory():
    with pytest.raises(ValueError, match=r"max_memory"):
        R.model_randomization(NET, X, ["gradient"], max_memory=-5)


def test_errors_randomized_models_bad_parameter():
    with pytest.raises(ValueError, match=r"mode must be one of \['cascading', 'independent'\], got 'bottom_up'"):
        list(R.randomized_models(NET, mode="bottom_up"))
    with pytest.raises(ValueError, match=r"init must be one of .*got 'zeros'"):
        list(R.randomized_models(NET, init="zeros"))
    with pytest.raises(ValueError, match=r"layers must name weight layers of the model \(\['0', '4'\]\)"):
        list(R.randomized_models(NET, layers=["2"]))
    with pytest.raises(TypeError, match=r"net must be a relprop model"):
        list(R.randomized_models(object()))


# (kwargs of class_sensitivity, exception, message part)
BAD_CLASSES = {
    "classes string": (dict(classes="top3"), ValueError,
                       r"classes must be 'top2', 'random' or an int array \(N, 2\), got 'top3'"),
    "classes shape": (dict(classes=np.zeros((3, 3), int)), ValueError,
                      r"classes must be 'top2', 'random' or an int array of shape \(3, 2\), got \(3, 3\)"),
    "classes rows": (dict(classes=np.zeros((2, 2), int)), ValueError, r"of shape \(3, 2\), got \(2, 2\)"),
    "classes 1-d": (dict(classes=np.array([0, 1])), ValueError, r"of shape \(3, 2\), got \(2,\)"),
    "classes float": (dict(classes=np.zeros((3, 2))), ValueError, r"int array of shape \(3, 2\), got \(3, 2\) float64"),
    "methods empty": (dict(methods=[]), TypeError, r"methods must be a non-empty dict"),
    "methods unknown": (dict(methods=["nope"]), ValueError, r"unknown method 'nope'"),
    "method bad param": (dict(methods={"ig": ("integrated_gradients", {"steps": -2})}), ValueError, r"steps"),
    "measures unknown": (dict(measures=("zz",)), ValueError, r"unknown similarity measure 'zz'"),
    "measures empty": (dict(measures=[]), ValueError, r"measures must name at least one measure"),
    "reduce": (dict(reduce="max"), ValueError, r"reduce must be one of"),
    "normalize": (dict(normalize="zscore"), ValueError, r"normalize must be one of"),
}


@pytest.mark.parametrize("case", list(BAD_CLASSES))
def test_errors_class_sensitivity_bad_parameter(case, work):
    kw, exc, match = BAD_CLASSES[case]
    kw = dict(kw)
    methods = kw.pop("methods", ["gradient"])
    with pytest.raises(exc, match=match):
        R.class_sensitivity(NET, X, methods, **kw)
    assert work == {"forward": 0, "attribute": 0}, case


@pytest.mark.parametrize("bad", [7, -1])
def test_errors_class_sensitivity_class_out_of_range(bad, work):
    with pytest.raises(ValueError, match=r"targets must lie in 0\.\.2 for a model with 3 outputs"):
        R.class_sensitivity(NET, X, ["gradient"], classes=np.array([[0, 1], [1, bad], [2, 0]]))
    assert work["forward"] == 0


def test_errors_class_sensitivity_needs_two_outputs(work):
    one = rp.Sequential(rp.Flatten(), rp.Dense(np.ones((1, 144), np.float32)))
    with pytest.raises(ValueError, match=r"class sensitivity needs a model with >= 2 outputs, got 1"):
        R.class_sensitivity(one, X, ["gradient"])
    assert work["attribute"] == 0
