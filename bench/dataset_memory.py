"""Peak resident memory of a dataset job against its ``max_memory``.

    .venv/bin/python bench/dataset_memory.py [--n 1000000] [--out PATH]

Each case runs in a fresh process: import relprop, build the model, one warm-up call (Numba
compiled, weights derived) -> the fixed overhead (resident memory then); then
``Explainer.map(x.npy, out=folder, max_memory=M)`` over ``n`` rows -> the peak resident memory
(``VmHWM`` of the process). The job's own memory is peak - overhead; it must stay under M. Writes
``bench/results/<date>-cpu-dataset-memory.md``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, sys, time
import numpy as np
import relprop as rp
path, out, features, hidden, method, mem = sys.argv[1:7]
features, hidden = int(features), int(hidden)
rng = np.random.default_rng(0)
net = rp.Sequential(rp.Dense(rng.normal(0, (2 / features) ** 0.5, (hidden, features)), np.zeros(hidden)), rp.ReLU(),
                    rp.Dense(rng.normal(0, (2 / hidden) ** 0.5, (hidden, hidden)), np.zeros(hidden)), rp.ReLU(),
                    rp.Dense(rng.normal(0, (1 / hidden) ** 0.5, (10, hidden)), np.zeros(10)))
ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat()) if method == "EpsilonPlusFlat" else \
    rp.Explainer(net, method)
ex.explain(rng.normal(size=(64, features)).astype(np.float32))
def status(key):  # this process's own counters (ru_maxrss would include the parent's RSS at fork)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
base_peak = status("VmHWM")
t0 = time.perf_counter()
res = ex.map(path, out=out, max_memory=mem, progress=False)
t = time.perf_counter() - t0
peak = status("VmHWM")
print(json.dumps({"overhead": base, "overhead_peak": base_peak, "peak": peak, "seconds": t,
                  "chunk_rows": res.meta["chunk_rows"], "n": res.n}))
"""


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="relprop-bench-mem-"))
    cases = [(14, 64, "EpsilonPlusFlat", "64MB"), (14, 64, "EpsilonPlusFlat", "2GB"),
             (256, 256, "EpsilonPlusFlat", "256MB"), (256, 256, "EpsilonPlusFlat", "1GB"),
             (14, 64, "integrated_gradients", "512MB")]
    rows = []
    try:
        for features, hidden, method, mem in cases:
            path = tmp / f"x{features}.npy"
            if not path.exists():
                x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(args.n, features))
                rng = np.random.default_rng(1)
                for i in range(0, args.n, 100_000):
                    x[i:i + 100_000] = rng.normal(size=(min(100_000, args.n - i), features))
                x.flush()
                del x
            shutil.rmtree(tmp / "store", ignore_errors=True)
            r = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tmp / "store"), str(features), str(hidden),
                                method, mem], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"case {features}-{hidden} {method} {mem} failed:\n{r.stderr[-3000:]}")
            d = json.loads(r.stdout.strip().splitlines()[-1])
            from relprop.runner import parse_memory

            d.update(features=features, hidden=hidden, method=method, max_memory=mem,
                     max_memory_bytes=parse_memory(mem), data_bytes=args.n * features * 4)
            d["job"] = d["peak"] - d["overhead"]
            print(json.dumps(d), flush=True)
            rows.append(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    sys.path.insert(0, str(HERE))
    import report as REP

    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = Path(args.out) if args.out else HERE / "results" / f"{date}-cpu-dataset-memory.md"
    mib = 2**20
    lines = [f"# Dataset job memory ({date}, CPU)", "",
             f"Command: `python bench/dataset_memory.py {' '.join(argv if argv is not None else sys.argv[1:])}`", "",
             f"Machine: {REP.cpu_model()}, {REP.ram_gib()}, relprop {REP.relprop_version()}, {REP.blas_info()}", "",
             "Fixed overhead = resident memory after import, model and one warm-up call (interpreter, numpy, "
             "Numba and the compiled kernels, BLAS buffers). Job = peak resident memory (VmHWM) - overhead.",
             "", "| model | method | rows | input on disk | max_memory | chunk rows | fixed overhead | peak RSS | "
             "job (peak - overhead) | job / max_memory | seconds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in rows:
        lines.append(f"| MLP {d['features']}-{d['hidden']}-{d['hidden']}-10 | {d['method']} | {d['n']:,} | "
                     f"{d['data_bytes'] / mib:,.0f} MiB | {d['max_memory']} | {d['chunk_rows']:,} | "
                     f"{d['overhead'] / mib:,.0f} MiB | {d['peak'] / mib:,.0f} MiB | {d['job'] / mib:,.0f} MiB | "
                     f"{d['job'] / d['max_memory_bytes']:.2f} | {d['seconds']:.1f} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
