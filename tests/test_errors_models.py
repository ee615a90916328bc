"""Bad input around models, rules and files: clear errors before any kernel, no silent casts."""
import numpy as np
import pytest

import relprop as rp

RNG = np.random.default_rng(3)


def _mlp():
    return rp.Sequential(rp.Flatten(), rp.Dense(RNG.normal(size=(5, 32))), rp.ReLU(), rp.Dense(RNG.normal(size=(3, 5))))


X = RNG.uniform(0.1, 0.9, (4, 2, 4, 4))


def test_zbox_bounds_in_x_shape_reach_a_dense_first_layer_behind_flatten():
    net = _mlp()
    low, high = np.zeros((1, 2, 4, 4)), np.ones((1, 2, 4, 4))
    R = rp.attribute(net, X, "deep_taylor", low=low, high=high)
    flat = rp.Sequential(*[n.layer for n in net.nodes[1:]])
    R_flat = rp.attribute(flat, X.reshape(4, -1), "deep_taylor", low=low.reshape(1, -1), high=high.reshape(1, -1))
    np.testing.assert_allclose(R.reshape(4, -1), R_flat, rtol=1e-12)
    with pytest.raises(ValueError, match="not inside the bounds"):
        rp.attribute(net, X, "deep_taylor", low=low, high=np.full((1, 2, 4, 4), 0.5))


def test_save_load_with_any_file_name(tmp_path):
    net = _mlp()
    p = tmp_path / "model.rp"
    rp.save(net, p)
    assert p.exists()
    assert np.array_equal(rp.load(p)(X), net(X))  # exact: the same weights, the same computation


def test_composite_must_cover_every_layer_type_with_rule_objects():
    C = rp.composites.Composite
    with pytest.raises(ValueError, match="no rule for Dense"):
        rp.attribute(_mlp(), X, "lrp", rules=C({"Conv2d": rp.rules.ZPlus()}))
    with pytest.raises(TypeError, match="rule instance"):
        rp.attribute(_mlp(), X, "lrp", rules=C({"Dense": "epsilon"}))
    with pytest.raises(TypeError, match="rule instance"):
        rp.attribute(_mlp(), X, "lrp", rules=C({"Dense": rp.rules.Epsilon()}, first=rp.rules.Flat))


def test_non_native_and_odd_float_dtypes():
    net = _mlp()
    R_be = rp.attribute(net, X.astype(">f8"), "lrp.epsilon")
    assert R_be.dtype == np.float64
    np.testing.assert_array_equal(R_be, rp.attribute(net, X, "lrp.epsilon"))  # exact: converted to native order first
    for dt in (np.float16, np.longdouble):
        with pytest.raises(TypeError, match="float32 or float64"):
            rp.attribute(net, X.astype(dt), "gradient")
    with pytest.raises(TypeError, match="baseline must be a real numeric array"):
        rp.attribute(net, X, "integrated_gradients", baseline=np.array(["a"]))


def test_weights_are_read_only_so_cached_rule_blocks_stay_valid():
    net = _mlp()
    with pytest.raises(ValueError, match="read-only"):
        net.nodes[1].layer.weight[:] = 0


def test_layer_hyper_parameters_are_checked():
    with pytest.raises(ValueError, match="Dropout"):
        rp.Dropout(p=5)
    with pytest.raises(ValueError, match="threshold"):
        rp.Softplus(threshold=np.nan)
    with pytest.raises(ValueError, match="eps"):
        rp.BatchNorm2d(np.ones(2), np.ones(2), np.ones(2), np.ones(2), eps="a")


def test_damaged_header_is_a_value_error(tmp_path):
    p = tmp_path / "m.npz"
    np.savez(p, __graph__=np.array("[1, 2, 3]"))
    with pytest.raises(ValueError, match="not a relprop model"):
        rp.load(p)


def test_imported_models_check_the_input_shape(tmp_path):
    import torch  # the test extra installs it
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 3)).eval()
    net = rp.from_torch(module, X.astype(np.float32))
    assert net.input_shape == (2, 4, 4)
    with pytest.raises(ValueError, match=r"\(2, 4, 4\)"):
        rp.attribute(net, X.reshape(4, 32), "gradient")
    p = tmp_path / "m.npz"
    rp.save(net, p)
    assert rp.load(p).input_shape == (2, 4, 4)
    assert rp.canonize(net).input_shape == (2, 4, 4)
