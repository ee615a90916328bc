"""targets= (several classes from one forward pass) equals one call per target (up to BLAS rounding)."""
import numpy as np
import pytest

import relprop as rp
from tolerance import assert_blas_close

RNG = np.random.default_rng(5)


def _net():
    c = lambda o, i: RNG.normal(0, np.sqrt(2 / (9 * i)), (o, i, 3, 3))  # noqa: E731
    return rp.Graph([
        rp.Node("c1", rp.Conv2d(c(4, 3), RNG.normal(0, 0.1, 4), padding=1), ("input",)),
        rp.Node("r1", rp.ReLU(), ("c1",)),
        rp.Node("c2", rp.Conv2d(c(4, 4), RNG.normal(0, 0.1, 4), padding=1), ("r1",)),
        rp.Node("add", rp.Add(), ("c2", "r1")),
        rp.Node("r2", rp.ReLU(), ("add",)),
        rp.Node("mp", rp.MaxPool2d(2), ("r2",)),
        rp.Node("ap", rp.AvgPool2d(2), ("mp",)),
        rp.Node("fl", rp.Flatten(), ("ap",)),
        rp.Node("fc", rp.Dense(RNG.normal(0, 0.5, (6, 16)), RNG.normal(0, 0.1, 6)), ("fl",)),
    ])


NET = _net()
X = RNG.uniform(-1, 1, (3, 3, 8, 8))
CASES = [
    ("gradient", {}), ("saliency", {}), ("gradient_x_input", {}), ("guided_backprop", {}), ("deconvnet", {}),
    ("deeplift.rescale", {"baseline": 0.2}), ("lrp.epsilon", {"epsilon": 1e-3}), ("lrp.z_plus", {}),
    ("lrp.gamma", {}), ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    ("lrp", {"rules": rp.composites.EpsilonGammaBox(-1.0, 1.0)}), ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}),
    ("deep_taylor", {}), ("excitation_backprop", {}),
]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method,kw", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_equals_one_call_per_target(method, kw, dtype):
    x = X.astype(dtype)
    targets = [5, 0, 3]
    M = rp.attribute(NET, x, method, targets=targets, **kw)
    assert M.shape == (3, 3) + x.shape[1:] and M.dtype == dtype
    for j, t in enumerate(targets):
        assert_blas_close(M[:, j], rp.attribute(NET, x, method, target=t, **kw))


def test_all_targets_in_small_target_chunks(monkeypatch):
    full = rp.attribute(NET, X, "lrp.epsilon", targets="all")
    chunked = rp.attribute(NET, X, "lrp.epsilon", targets="all", batch_size=1)  # targets chunked one by one
    assert full.shape == (3, 6, 3, 8, 8)
    assert_blas_close(chunked, full)  # other GEMM shapes: equal up to BLAS rounding, not bit for bit


@pytest.mark.parametrize("kw,err,match", [
    ({"targets": [1], "target": 1}, TypeError, "either target"),
    ({"targets": [6]}, ValueError, "0..5"),
    ({"targets": []}, TypeError, "non-empty"),
    ({"targets": "some"}, ValueError, "'all'"),
    ({"targets": [0.5]}, TypeError, "class indices"),
])
def test_targets_errors(kw, err, match):
    with pytest.raises(err, match=match):
        rp.attribute(NET, X, "gradient", **kw)


@pytest.mark.parametrize("method,kw", [
    ("integrated_gradients", {"steps": 8}), ("smoothgrad", {"samples": 3, "seed": 1}), ("rectgrad", {}),
    ("expected_gradients", {"samples": 3, "seed": 2}), ("gradient_shap", {"samples": 3, "seed": 2}), ("deepshap", {}),
])
def test_per_target_methods_take_targets(method, kw):
    """Methods whose passes differ per target run once per target under targets=; same numbers."""
    if method in ("expected_gradients", "gradient_shap", "deepshap"):
        kw = dict(kw, baselines=np.zeros((2,) + X.shape[1:]))
    M = rp.attribute(NET, X, method, targets=[0, 1], **kw)
    assert M.shape == (3, 2) + X.shape[1:]
    for j in (0, 1):
        assert_blas_close(M[:, j], rp.attribute(NET, X, method, target=j, **kw))


def test_smoothgrad_refuses_bases_with_their_own_sampling():
    with pytest.raises(ValueError, match="base='expected_gradients' already averages over random draws"):
        rp.attribute(NET, X, "smoothgrad", base="expected_gradients", baselines=np.zeros((2,) + X.shape[1:]))
