"""Slowdown under a competing process: W1 input gradient (batch 16), relprop and torch, alone and
while one other process spins on a core (the two-core reference machine then has one free core).

    .venv/bin/python bench/contention.py [--out bench/results/<date>-cpu-contention.md]

Best of 4 calls each after a warm-up; the ratio busy / alone is the slowdown.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import conftest  # noqa: E402,F401  (thread pinning, torchvision stand-in)
import models as M  # noqa: E402
import report as REP  # noqa: E402

import relprop as rp  # noqa: E402


def best(f, k=4):
    f()
    b = float("inf")
    for _ in range(k):
        s = time.perf_counter()
        f()
        b = min(b, time.perf_counter() - s)
    return b


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(conftest.BENCH_THREADS)
    net, x = M.w1_relprop(), M.w1_input()
    model = M.w1_torch().eval()
    t = rp.forward(net, x).argmax(1)
    ex = rp.Explainer(net, "gradient")
    xt, tt = torch.from_numpy(x), torch.from_numpy(t)

    def torch_grad():
        xx = xt.clone().requires_grad_(True)
        model(xx).gather(1, tt[:, None]).sum().backward()

    cases = {"relprop": lambda: ex(x, target=t), "torch": torch_grad}
    alone = {k: best(f) for k, f in cases.items()}
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    try:
        busy = {k: best(f) for k, f in cases.items()}
    finally:
        hog.kill()
    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = Path(args.out) if args.out else HERE / "results" / f"{date}-cpu-contention.md"
    lines = [f"# Slowdown under a competing process ({date}, CPU)", "", "Command: `python bench/contention.py`", "",
             f"Machine: {REP.cpu_model()}, {REP.blas_info()}, torch {REP.pkg_version('torch')}, "
             f"threads {conftest.BENCH_THREADS}", "",
             "W1 input gradient, batch 16, best of 4; busy = while one other process spins on a core.", "",
             "| impl | alone s | busy s | slowdown |", "|---|---|---|---|"]
    for k in cases:
        lines.append(f"| {k} | {alone[k]:.3f} | {busy[k]:.3f} | {busy[k] / alone[k]:.2f}x |")
        print(f"{k}: alone {alone[k]:.3f} s, busy {busy[k]:.3f} s, slowdown {busy[k] / alone[k]:.2f}x")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
