"""End-to-end example: train a small MLP on scikit-learn's bundled 8x8 digits (plain numpy,
a few seconds), explain its test predictions with several methods, print one heatmap and
save all attributions to ``relprop-demo/attributions.npz``."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import relprop as rp

SHADES = " .:-=+*#%@"


def _train(x, y, hidden=64, epochs=600, lr=0.5, seed=0):
    """Full-batch softmax regression through one ReLU layer, by hand (no framework)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, np.sqrt(2 / x.shape[1]), (hidden, x.shape[1]))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, np.sqrt(1 / hidden), (10, hidden))
    b2 = np.zeros(10)
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        h = np.maximum(x @ w1.T + b1, 0)
        z = h @ w2.T + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - onehot) / len(x)
        dh = (dz @ w2) * (h > 0)
        w2 -= lr * dz.T @ h
        b2 -= lr * dz.sum(0)
        w1 -= lr * dh.T @ x
        b1 -= lr * dh.sum(0)
    return w1, b1, w2, b2


def _heat(r):
    r = r.reshape(8, 8)
    m = np.abs(r).max() or 1.0
    rows = []
    for row in r:
        rows.append("".join(("+" if v > 0 else "-") + SHADES[min(9, int(abs(v) / m * 9.99))] for v in row))
    return rows


def main(out_dir="relprop-demo"):
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover
        raise SystemExit("the demo needs scikit-learn: pip install 'relprop[demo]'")
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    xtr, ytr, xte, yte = x[:1500], y[:1500], x[1500:], y[1500:]
    t0 = time.perf_counter()
    w1, b1, w2, b2 = _train(xtr.astype(np.float64), ytr)
    net = rp.Sequential(rp.Dense(w1, b1), rp.ReLU(), rp.Dense(w2, b2), rp.Softmax())
    acc = (net(xte).argmax(1) == yte).mean()
    print(f"trained a 64-64-10 MLP on sklearn digits in {time.perf_counter() - t0:.1f}s; test accuracy {acc:.3f}")

    methods = {
        "gradient_x_input": {},
        "integrated_gradients": {"steps": 32},
        "deeplift.rescale": {},
        "lrp.epsilon": {"epsilon": 1e-3},
        "lrp.z_plus": {},
        "EpsilonPlusFlat": {"rules": rp.composites.EpsilonPlusFlat()},
    }
    results = {}
    scores = net(xte)
    logit = rp.Sequential(*[n.layer for n in net.nodes[:-1]])(xte[:1])[0].max()
    for name, params in methods.items():
        method = "lrp" if "rules" in params else name
        t0 = time.perf_counter()
        r = rp.attribute(net, xte, method, **params)
        dt = time.perf_counter() - t0
        results[name] = r
        print(f"{name:22s} {len(xte)} digits in {dt * 1e3:7.1f} ms   sample 0: sum R = {r[0].sum():7.4f}"
              f" (logit {logit:.4f})")
    i = int(np.flatnonzero(scores.argmax(1) == yte)[0])
    print(f"\ndigit {yte[i]} predicted {scores[i].argmax()} (p={scores[i].max():.2f}); "
          "left: input, right: LRP-epsilon relevance (+ for, - against)")
    img = xte[i].reshape(8, 8)
    heat = _heat(results["lrp.epsilon"][i])
    for row, hrow in zip(img, heat):
        print("  " + "".join(SHADES[int(v * 9.99)] * 2 for v in row) + "    " + hrow)
    out = Path(out_dir)
    out.mkdir(exist_ok=True)
    np.savez(out / "attributions.npz", x=xte, y=yte, **{k.replace(".", "_"): v for k, v in results.items()})
    print(f"\nsaved {len(results)} attribution maps of {len(xte)} digits to {out / 'attributions.npz'}")


if __name__ == "__main__":
    main()
