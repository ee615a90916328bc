"""How much of a CNN call OpenBLAS's spinning worker threads cost, and what would win it back.

OpenBLAS's workers spin for 2^OPENBLAS_THREAD_TIMEOUT cycles (default 2^28, ~0.1 s) after each
GEMM before they sleep. relprop's passes on a CNN alternate GEMMs with its own kernels every few
milliseconds, so on a small machine a spinning worker holds a core that relprop's kernel threads
want. This script times W1's ``attribute`` (EpsilonPlusFlat and gradient, 16 images, best of
``--calls``) in a fresh process for each configuration:

* ``default``: as a user runs it;
* ``timeout4``: ``OPENBLAS_THREAD_TIMEOUT=4`` (the workers sleep at once; OpenBLAS reads it when it
  loads, so relprop cannot set it inside a user's process);
* ``relprop1``: ``RELPROP_NUM_THREADS=1`` (relprop's kernels on the calling thread only);
* ``blas1``: ``OPENBLAS_NUM_THREADS=1`` (single-threaded GEMMs, relprop's kernels on two threads);
* ``blas1+split`` (an experiment, not a relprop feature): ``blas1`` with the engine's 2-D and 3-D
  ``matmul`` calls and the shifted-GEMM taps split across relprop's own threads by columns (the
  design a private single-threaded BLAS for relprop would allow).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/blas_spin.py --out bench/results/<date>-cpu-blas-spin.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CONFIGS = {
    "default": ({}, False),
    "timeout4": ({"OPENBLAS_THREAD_TIMEOUT": "4"}, False),
    "relprop1": ({"RELPROP_NUM_THREADS": "1"}, False),
    "blas1": ({"OPENBLAS_NUM_THREADS": "1"}, False),
    "blas1+split": ({"OPENBLAS_NUM_THREADS": "1"}, True),
}

CHILD = r'''
import json, sys, time, types
sys.path.insert(0, %(here)r)
import numpy as np
import models as M
import relprop as rp

if %(split)r:  # the experiment: GEMMs split across relprop's threads by columns
    from relprop.core import backend as B
    from relprop.kernels.cpu import shifted as S, threads as TH
    import relprop.kernels.cpu as KC

    def _run_parts(fn, n):
        pool, threads = TH._pool()
        futs = [pool.submit(fn, i, threads) for i in range(1, threads)]
        fn(0, threads)
        for f in futs:
            f.result()

    plain_taps = S.gemm_taps

    def gemm_taps(wtaps, xf, wp, kw, zw):
        t_, r, c = wtaps.shape
        length, s, item = zw.shape[1], xf.shape[1], zw.itemsize
        if TH._pool()[0] is None or length < 4096:
            return plain_taps(wtaps, xf, wp, kw, zw)
        f = S._GEMM[zw.dtype.str]

        def part(i, n):
            a, b = length * i // n, length * (i + 1) // n
            for t in range(t_):
                off = (t // kw) * wp + t %% kw
                f(S._ROW_MAJOR, S._NO_TRANS, S._NO_TRANS, r, b - a, c, 1.0, wtaps[t].ctypes.data, c,
                  xf.ctypes.data + (off + a) * item, s, 0.0 if t == 0 else 1.0, zw.ctypes.data + a * item, length)

        _run_parts(part, 0)

    def matmul(a, b, out=None):
        if TH._pool()[0] is not None and a.ndim == 3 and b.ndim == 3 and a.shape[0] >= 2:
            out = np.empty((a.shape[0], a.shape[1], b.shape[2]), np.result_type(a, b)) if out is None else out

            def part3(i, n):
                lo, hi = a.shape[0] * i // n, a.shape[0] * (i + 1) // n
                np.matmul(a[lo:hi], b[lo:hi], out=out[lo:hi])

            _run_parts(part3, 0)
            return out
        if TH._pool()[0] is None or a.ndim != 2 or b.ndim != 2 or b.shape[1] < 256 \
                or a.shape[0] * a.shape[1] * b.shape[1] < 1 << 20:
            return np.matmul(a, b, out=out)
        out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b)) if out is None else out

        def part(i, n):
            lo, hi = b.shape[1] * i // n, b.shape[1] * (i + 1) // n
            np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])

        _run_parts(part, 0)
        return out

    class _NumpyWithSplitMatmul(types.ModuleType):
        def __getattr__(self, name):
            return getattr(np, name)

    proxy = _NumpyWithSplitMatmul("numpy")
    proxy.matmul = matmul
    S.gemm_taps = KC.gemm_taps = gemm_taps
    B.kernels_for(np.zeros(1, np.float32)).xp = proxy
    B.is_device = lambda k: False

net, x = M.w1_relprop(), M.w1_input()
out = {}
for name, (method, kw) in (("EpsilonPlusFlat", ("lrp", {"rules": rp.composites.EpsilonPlusFlat()})),
                           ("gradient", ("gradient", {}))):
    ex = rp.Explainer(net, method, **kw)
    ref = ex.attribute(x)
    ts = []
    for _ in range(%(calls)d):
        t0 = time.perf_counter()
        r = ex.attribute(x)
        ts.append(time.perf_counter() - t0)
    out[name] = {"best_s": min(ts), "median_s": float(np.median(ts)), "same_as_first": float(np.abs(r - ref).max())}
print(json.dumps(out))
'''


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2, help="each configuration this many times, alternating")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    import report as REP

    best = {}
    for _ in range(args.rounds):
        for cfg, (env, split) in CONFIGS.items():
            code = CHILD % {"here": str(HERE), "split": split, "calls": args.calls}
            res = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                                 text=True, check=True)
            got = json.loads(res.stdout.strip().splitlines()[-1])
            for m, v in got.items():
                key = (cfg, m)
                if key not in best or v["best_s"] < best[key]["best_s"]:
                    best[key] = v
            print(cfg, {m: round(v["best_s"], 3) for m, v in got.items()}, flush=True)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = Path(args.out) if args.out else HERE / "results" / f"{date}-cpu-blas-spin.md"
    command = "python bench/blas_spin.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# OpenBLAS's spinning workers on W1 ({date}, CPU)", "", f"Command: `{command}`", "",
             f"Machine: {REP.cpu_model()}, {REP.cpu_flags_summary()}, relprop {REP.relprop_version()}, "
             f"blas {REP.blas_info()}", "",
             f"W1 (VGG-16 variant, 16 images of 3x64x64, float32) `Explainer.attribute`, best of {args.calls} calls, "
             f"best of {args.rounds} fresh processes per configuration (see the script's docstring).", "",
             "| configuration | EpsilonPlusFlat s | gradient s | vs default (EPF / gradient) |", "|---|---|---|---|"]
    for cfg in CONFIGS:
        e, g = best[(cfg, "EpsilonPlusFlat")]["best_s"], best[(cfg, "gradient")]["best_s"]
        e0, g0 = best[("default", "EpsilonPlusFlat")]["best_s"], best[("default", "gradient")]["best_s"]
        lines.append(f"| {cfg} | {e:.3f} | {g:.3f} | {e0 / e:.2f}x / {g0 / g:.2f}x |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": command, "results": {
        f"{c}/{m}": v for (c, m), v in best.items()}}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
