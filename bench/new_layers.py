"""Speed of the layers added for issue 15 against torch, each on its own shape (CPU).

    .venv/bin/python bench/new_layers.py [--out bench/results/FILE.md] [--max-load 1.5] [--wait-until HH:MM]

Model per case: the layer alone -> AdaptiveAvgPool2d(1) -> Flatten -> Linear(C, 10), float32,
batch 16 (the GELU / SiLU cases on the (64, 256, 16, 16) tensors the issue names, so batch 64),
imported with ``rp.from_torch``. Forward: ``rp.forward`` vs torch under ``no_grad``; gradient:
``rp.attribute(net, x, "gradient", target=0)`` vs autograd of logit 0 (both include their forward
pass). Best of 5 after one warm-up call, ``torch.set_num_threads(2)``.

The timing starts only once ``uptime``'s 1-minute load average is below ``--max-load`` (the machine
is shared); if it never is before ``--wait-until`` (UTC), it runs anyway and records the load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch
from torch import nn

import relprop as rp

REPEATS = 5
# label, input shape (N, C, H, W), layer factory
CASES = [
    ("depthwise 3x3", (16, 64, 32, 32), lambda: nn.Conv2d(64, 64, 3, padding=1, groups=64)),
    ("depthwise 7x7", (16, 128, 16, 16), lambda: nn.Conv2d(128, 128, 7, padding=3, groups=128)),
    ("grouped 3x3, groups=4", (16, 128, 16, 16), lambda: nn.Conv2d(128, 128, 3, padding=1, groups=4)),
    ("GELU (exact)", (64, 256, 16, 16), lambda: nn.GELU()),
    ("GELU (tanh)", (64, 256, 16, 16), lambda: nn.GELU(approximate="tanh")),
    ("SiLU", (64, 256, 16, 16), lambda: nn.SiLU()),
    ("GroupNorm(1, 128)", (16, 128, 16, 16), lambda: nn.GroupNorm(1, 128)),
    ("GroupNorm(32, 128)", (16, 128, 16, 16), lambda: nn.GroupNorm(32, 128)),
    ("LayerNorm((128, 16, 16))", (16, 128, 16, 16), lambda: nn.LayerNorm((128, 16, 16))),
    ("Upsample nearest x2", (16, 64, 16, 16), lambda: nn.Upsample(scale_factor=2)),
    ("Upsample bilinear x2", (16, 64, 16, 16), lambda: nn.Upsample(scale_factor=2, mode="bilinear")),
]


def load1():
    return os.getloadavg()[0]


def wait_quiet(max_load, until):
    """Poll the 1-minute load every 15 s until it is below ``max_load`` or ``until`` passes."""
    while True:
        now, load = dt.datetime.now(dt.timezone.utc), load1()
        if load < max_load or now >= until:
            return load
        print(f"# {now:%H:%M:%S} load {load:.2f} >= {max_load}, waiting", file=sys.stderr, flush=True)
        time.sleep(15)


def best(fn):
    fn()
    ts = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def machine():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "lscpu unavailable"
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    model = info.get("Model name", "?").strip()
    flags = set(info.get("Flags", "").split())
    keep = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                        "avx512_bf16", "amx_tile") if f in flags]
    tpc = info.get("Thread(s) per core", "?").strip()
    return (f"{os.cpu_count()} CPUs, lscpu model name \"{model}\", threads per core {tpc}; "
            f"flags: {', '.join(keep) or 'none listed'}")


def run_case(label, shape, make):
    torch.manual_seed(0)
    c = shape[1]
    model = nn.Sequential(make(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).eval()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    net = rp.from_torch(model, x)
    xt = torch.from_numpy(x)

    def t_fwd():
        with torch.no_grad():
            model(xt)

    def t_grad():
        xg = xt.clone().requires_grad_(True)
        model(xg)[:, 0].sum().backward()

    return [("forward", best(lambda: rp.forward(net, x)), best(t_fwd)),
            ("gradient", best(lambda: rp.attribute(net, x, "gradient", target=0)), best(t_grad))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="markdown file to write (default: print only)")
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--wait-until", default=None, help="UTC HH:MM after which to run regardless of the load")
    cli = sys.argv[1:] if argv is None else argv
    args = ap.parse_args(cli)
    torch.set_num_threads(2)
    now = dt.datetime.now(dt.timezone.utc)
    until = now
    if args.wait_until:
        h, m = map(int, args.wait_until.split(":"))
        until = now.replace(hour=h, minute=m, second=0, microsecond=0)
    load_start = wait_quiet(args.max_load, until)
    t_start = dt.datetime.now(dt.timezone.utc)
    rows = []
    for label, shape, make in CASES:
        for name, a, b in run_case(label, shape, make):
            rows.append(f"| {label} | {shape} | {name} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.1f} |")
            print(rows[-1], flush=True)
    load_end = load1()
    lines = [
        "# The issue-15 layers on the CPU: relprop vs torch (2026-12-02)", "",
        f"Command: `.venv/bin/python {' '.join(['bench/new_layers.py'] + list(cli))}`",
        f"(started {t_start:%H:%M:%S} UTC; `uptime` 1-minute load {load_start:.2f} at the start, {load_end:.2f} "
        f"at the end; limit {args.max_load}" + ("" if load_start < args.max_load else
                                                 ", NOT met: ran anyway at the deadline") + ").", "",
        f"Machine: {machine()}.", "",
        f"Versions: Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, relprop {rp.__version__} "
        "(working tree, uncommitted).", "",
        "Model per case: the layer alone -> AdaptiveAvgPool2d(1) -> Flatten -> Linear(C, 10), float32, "
        "imported with `rp.from_torch`; batch 16, except the GELU / SiLU cases, which use the "
        "(64, 256, 16, 16) tensors the issue names. Forward: `rp.forward` vs torch under `no_grad`; "
        "gradient: `rp.attribute(net, x, \"gradient\", target=0)` vs autograd of logit 0 (both include "
        "their forward pass). Best of 5 after one warm-up call. The head (GAP + Linear) is in both timings.", "",
        "| case | input (N, C, H, W) | pass | relprop ms | torch ms | relprop / torch |",
        "|---|---|---|---:|---:|---:|", *rows, ""]
    text = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
