"""The IR holds the model only; derived state is tied to it (issue: compiled plan, stale weights).

* plans keep no model alive (the registry of compiled state refers to models weakly);
* replacing a layer, reassigning a weight or a hyper-parameter reaches every Explainer and
  ``net(x)``; reassignments go through the constructor's checks;
* weights are immutable: no flag on any view makes them writable again.
"""
import gc
import weakref

import numpy as np
import pytest

import relprop as rp
from relprop.core import plan
from tolerance import assert_blas_close

RNG = np.random.default_rng(8)
X = RNG.normal(size=(4, 6))


def _net(scale=1.0):
    r = np.random.default_rng(1)
    return rp.Sequential(rp.Dense(r.normal(size=(8, 6))), rp.ReLU(), rp.Dense(r.normal(size=(3, 8)) * scale,
                                                                              r.normal(size=3)))


def test_compiled_state_keeps_no_model_alive():
    refs = []
    for _ in range(5):
        net = _net()
        rp.attribute(net, X, "lrp.epsilon")
        ex = rp.Explainer(net, "gradient")
        ex(X)
        refs.append(weakref.ref(net))
        del net, ex
    gc.collect()
    assert sum(r() is not None for r in refs) == 0
    assert not any(id(r) in plan._COMPILED for r in refs)


@pytest.mark.parametrize("method", ["lrp.z_plus", "lrp.epsilon", "gradient", "deeplift.rescale", "rap"])
def test_replaced_layer_reaches_explainers_and_forward(method):
    net = _net()
    ex = rp.Explainer(net, method)
    before, y0 = ex(X, target=0), net(X)
    old = net.nodes[2].layer
    net.nodes[2].layer = rp.Dense(old.weight * 3, old.bias * 3)
    fresh = _net(3.0)
    fresh.nodes[2].layer.bias = old.bias * 3
    assert_blas_close(net(X), fresh(X))
    assert not np.allclose(net(X), y0)
    assert_blas_close(ex(X, target=0), rp.attribute(fresh, X, method, target=0))
    assert not np.allclose(ex(X, target=0), before)


def test_weights_are_immutable():
    layer = _net().nodes[0].layer
    for view in (layer.weight, layer.weight.base, layer.weight[:2]):
        if isinstance(view, np.ndarray):
            with pytest.raises(ValueError):
                view.setflags(write=True)
    with pytest.raises(ValueError):
        layer.weight[0, 0] = 1.0


@pytest.mark.parametrize("make,attr,value,err", [
    (lambda: rp.Conv2d(np.ones((2, 1, 3, 3))), "stride", (0, 0), ValueError),
    (lambda: rp.Conv2d(np.ones((2, 1, 3, 3))), "padding", "same", TypeError),
    (lambda: rp.MaxPool2d(2), "stride", -1, ValueError),
    (lambda: rp.Softplus(), "beta", -1.0, ValueError),
    (lambda: rp.BatchNorm2d(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)), "running_var", -np.ones(2), ValueError),
    (lambda: rp.Dense(np.ones((3, 2))), "bias", np.ones(1), ValueError),
    (lambda: rp.Dense(np.ones((3, 2))), "weight", np.ones((4, 2)), ValueError),
    (lambda: rp.Dense(np.ones((3, 2))), "weight", np.full((3, 2), np.nan), ValueError),
])
def test_reassignment_goes_through_the_constructors_checks(make, attr, value, err):
    layer = make()
    before = getattr(layer, attr)
    with pytest.raises(err):
        setattr(layer, attr, value)
    assert np.array_equal(np.asarray(getattr(layer, attr)), np.asarray(before)) and layer.version == 0


def test_a_valid_reassignment_is_normalized_and_versioned():
    c = rp.Conv2d(np.ones((2, 1, 3, 3)))
    c.stride = 2
    assert c.stride == (2, 2) and c.version == 1
    d = rp.Dense(np.ones((3, 2)))
    d.weight = np.full((3, 2), 2, np.int64)
    assert d.weight.dtype == np.float32 and not d.weight.flags.writeable and d.version == 1


def _conv_net(seed=3):
    r = np.random.default_rng(seed)
    return rp.Sequential(rp.Conv2d(r.normal(size=(4, 2, 3, 3)), r.normal(size=4), padding=1), rp.ReLU(),
                         rp.Conv2d(r.normal(size=(130, 4, 3, 3)) * 0.3, r.normal(size=130), padding=1), rp.ReLU(),
                         rp.Conv2d(r.normal(size=(5, 130, 3, 3)) * 0.1, r.normal(size=5), padding=1), rp.ReLU(),
                         rp.Flatten(), rp.Dense(r.normal(size=(3, 5 * 6 * 6)) * 0.1))


@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon", "lrp.z_plus"])
def test_models_sharing_layer_objects_share_derived_state_and_nothing_goes_stale(method):
    """Derived per-layer state (weights in the dtype, flipped/transposed and Winograd-transformed
    filters, rule states) is shared by models holding the same layer object under the same name
    (plan._LAYER_STATE), and keyed by the layer's version: a reassigned weight is derived again."""
    a = _conv_net()
    x = np.random.default_rng(0).normal(size=(2, 2, 6, 6))
    rp.attribute(a, x, method, target=0)
    b = rp.Graph([rp.Node(n.name, n.layer, n.inputs) for n in a.nodes])  # the same layer objects
    version, cache = plan._LAYER_STATE[a.nodes[2].layer]
    n0 = len(cache)
    assert_blas_close(rp.attribute(b, x, method, target=0), rp.attribute(a, x, method, target=0))
    assert len(plan._LAYER_STATE[a.nodes[2].layer][1]) == n0  # b derived nothing again for that layer
    # a new weight on the shared layer reaches both models, derived afresh
    layer = a.nodes[4].layer
    layer.weight = layer.weight * -2.0
    fresh = _conv_net()
    fresh.nodes[4].layer.weight = fresh.nodes[4].layer.weight * -2.0
    want = rp.attribute(fresh, x, method, target=0)
    assert_blas_close(rp.attribute(a, x, method, target=0), want)
    assert_blas_close(rp.attribute(b, x, method, target=0), want)
    assert plan._LAYER_STATE[layer][0] == layer.version  # the old version's state was dropped
