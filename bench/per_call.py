"""Per-call overhead: the time of a 1-row call on a model whose weights are already derived.

    python bench/per_call.py [label]

Prints one line per case (median of 200 calls after 20 warm-up calls): ``rp.attribute`` (one
shot) and, where the installed relprop has it, ``rp.Explainer`` called on new 1-row batches.
Run it with two checkouts' interpreters to compare before/after on one machine.
"""
import sys
import time

import numpy as np

import relprop as rp

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import models as M  # noqa: E402


def median_call(fn, xs, warm=20, n=200):
    for i in range(warm):
        fn(xs[i % len(xs)])
    t = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(xs[i % len(xs)])
        t.append(time.perf_counter() - t0)
    return float(np.median(t))


def main():
    label = sys.argv[1] if len(sys.argv) > 1 else rp.__file__
    rng = np.random.default_rng(0)
    cases = []
    nets = {"W2 MLP 14-64-64-2": (M.w2_relprop(), (14,))}
    small = rp.Sequential(rp.Conv2d(rng.normal(0, 0.3, (8, 3, 3, 3)), padding=1), rp.ReLU(), rp.MaxPool2d(2),
                          rp.Flatten(), rp.Dense(rng.normal(0, 0.1, (10, 8 * 8 * 8))))
    nets["small CNN 3x16x16"] = (small, (3, 16, 16))
    for name, (net, shape) in nets.items():
        xs = [rng.normal(size=(1,) + shape).astype(np.float32) for _ in range(16)]
        for method, kw in (("gradient", {}), ("lrp", {"rules": rp.composites.EpsilonPlusFlat()})):
            t = median_call(lambda x: rp.attribute(net, x, method, target=0, **kw), xs)
            cases.append((name, method, "rp.attribute", t))
            if hasattr(rp, "Explainer"):
                ex = rp.Explainer(net, method, **kw)
                t = median_call(lambda x: ex(x, target=0), xs)
                cases.append((name, method, "Explainer", t))
    for name, method, how, t in cases:
        print(f"{label}\t{name}\t{method}\t{how}\t{t * 1e6:.0f} us")


if __name__ == "__main__":
    main()
