"""Dataset throughput end to end: samples/s of a whole job, reading from a ``.npy`` memory map
and writing a ``.npy`` store, including I/O.

    .venv/bin/python bench/dataset.py [--w1-n 256] [--mlp-n 1000000] [--repeat 2] [--out PATH]

Cases, each timed ``--repeat`` times alternating, best kept:

* ``relprop runner``: ``Explainer.map(npy path, out=folder)`` (attributions, targets, scores,
  conservation/completeness error).
* ``relprop bare``: ``Explainer.explain(x)`` on the whole array already in memory (no I/O): the
  engine's own throughput; the runner's overhead is ``bare / runner - 1``.
* ``Zennit loop`` / ``Captum loop``: the job as users write it today: a torch ``DataLoader``
  (batch 64 for W1, 1024 for the MLP; a map-style Dataset over the memory map, default collate,
  no workers: two cores) -> argmax -> attribution -> written into a preallocated ``.npy``
  memory map. ``(sliced)``: the same peer with batches sliced from the memory map directly
  (no DataLoader), its best case.

Workloads (``bench/models.py``): W1 (VGG-16 variant, 3x64x64, float32): EpsilonPlusFlat vs
Zennit, gradient vs Captum Saliency; MLP W2 (14-64-64-2): EpsilonPlusFlat vs Zennit, gradient
vs Captum Saliency, IG(32) vs Captum (Gauss-Legendre, the same rule). Writes
``bench/results/<date>-cpu-dataset.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import conftest  # noqa: E402,F401  (torchvision stand-in for zennit, before zennit is imported)
import models as M  # noqa: E402
import report as REP  # noqa: E402

import relprop as rp  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class NpyDataset:
    """A map-style torch Dataset over a .npy memory map (what a user writes for a DataLoader)."""

    def __init__(self, path):
        self.a = np.load(path, mmap_mode="r")

    def __len__(self):
        return len(self.a)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(np.array(self.a[i]))


def _batches(path, batch, loader):
    import torch

    if loader:
        yield from torch.utils.data.DataLoader(NpyDataset(path), batch_size=batch, shuffle=False, num_workers=0)
        return
    a = np.load(path, mmap_mode="r")
    for i in range(0, len(a), batch):
        yield torch.from_numpy(np.array(a[i:i + batch]))


def peer_loop(kind, model, path, out_path, batch, loader, method, n_out):
    """The whole job with a peer: read, predict, attribute, write."""
    import torch

    n = len(np.load(path, mmap_mode="r"))
    shape = np.load(path, mmap_mode="r").shape
    out = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=shape)
    i = 0
    if kind == "zennit":
        from zennit.attribution import Gradient

        comp = M.zennit_composite(method)
        with Gradient(model=model, composite=comp) as attributor:
            for xb in _batches(path, batch, loader):
                def start(o):
                    return o * torch.nn.functional.one_hot(o.argmax(1), n_out).to(o.dtype)
                _, rel = attributor(xb, attr_output=start)
                out[i:i + len(xb)] = rel.detach().numpy()
                i += len(xb)
    else:
        from captum.attr import IntegratedGradients, Saliency

        for xb in _batches(path, batch, loader):
            with torch.no_grad():
                t = model(xb).argmax(1)
            if method == "gradient":
                a = Saliency(model).attribute(xb, target=t, abs=False)
            else:
                a = IntegratedGradients(model).attribute(xb, baselines=0.0, target=t, n_steps=32,
                                                         method="gausslegendre")
            out[i:i + len(xb)] = a.detach().numpy()
            i += len(xb)
    out.flush()
    assert i == n
    return out


def relprop_explainer(net, method):
    if method == "EpsilonPlusFlat":
        return rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat())
    if method == "ig32":
        return rp.Explainer(net, "integrated_gradients", steps=32, baseline=0.0)
    return rp.Explainer(net, method)


def run_workload(name, net, model, x, method, peer, batch, repeat, tmp):
    path = tmp / f"{name}.npy"
    if not path.exists():
        np.save(path, x)
    n_out = int(np.asarray(rp.forward(net, x[:2])).shape[1])
    ex = relprop_explainer(net, method)
    ex.explain(x[: min(len(x), 64)])  # compile (Numba) and derive weights once, outside the timings
    cases = {}

    runs = iter(range(1000))

    def runner():  # a new store each time; the old ones are deleted outside the timings
        ex.map(path, out=tmp / f"store-{name}-{method}-{next(runs):03d}", progress=False)

    xin = np.load(path)

    def bare():
        ex.explain(xin)

    peer_method = {"EpsilonPlusFlat": "EpsilonPlusFlat", "gradient": "gradient", "ig32": "ig"}[method]
    fns = {"relprop runner": runner, "relprop bare": bare,
           f"{peer} loop": lambda: peer_loop(peer, model, path, tmp / "peer.npy", batch, True, peer_method, n_out),
           f"{peer} loop (sliced)": lambda: peer_loop(peer, model, path, tmp / "peer.npy", batch, False,
                                                      peer_method, n_out)}
    for _ in range(repeat):
        for label, fn in fns.items():
            t = _timed(fn)
            cases[label] = min(cases.get(label, np.inf), t)
            for old in sorted(tmp.glob(f"store-{name}-{method}-*"))[:-1]:
                shutil.rmtree(old)
    # agreement of the peer with relprop on what both computed (first rows)
    got = np.load(sorted(tmp.glob(f"store-{name}-{method}-*"))[-1] / "attributions.npy", mmap_mode="r")
    ref = np.load(tmp / "peer.npy", mmap_mode="r")
    k = min(len(x), 2000)
    agree = float(np.linalg.norm(got[:k] - ref[:k]) / max(np.linalg.norm(ref[:k]), 1e-30))
    rows = []
    best_peer = min(t for lab, t in cases.items() if lab.startswith(peer))
    for label, t in cases.items():
        rows.append({"workload": name, "method": method, "case": label, "n": len(x), "seconds": t,
                     "samples_per_s": len(x) / t})
    summary = {"workload": name, "method": method, "n": len(x), "peer": peer,
               "runner_s": cases["relprop runner"], "bare_s": cases["relprop bare"], "best_peer_s": best_peer,
               "runner_vs_best_peer": best_peer / cases["relprop runner"],
               "runner_overhead": cases["relprop runner"] / cases["relprop bare"] - 1, "agreement": agree}
    print(json.dumps(summary), flush=True)
    return rows, summary


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--w1-n", type=int, default=256)
    ap.add_argument("--mlp-n", type=int, default=1_000_000)
    ap.add_argument("--ig-n", type=int, default=100_000, help="MLP rows for IG(32) (Captum's loop over 1M rows "
                    "x 32 steps takes minutes)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--only", default="", help="comma list of workloads to run: w1, mlp")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(conftest.BENCH_THREADS)
    tmp = Path(tempfile.mkdtemp(prefix="relprop-bench-dataset-"))
    only = set(filter(None, args.only.split(",")))
    rows, summaries = [], []
    try:
        if not only or "w1" in only:
            params = M.w1_params()
            net, model = M.w1_relprop(params), M.w1_torch(params).eval()
            x = M.w1_input(args.w1_n)
            for method, peer in (("EpsilonPlusFlat", "zennit"), ("gradient", "captum")):
                r, s = run_workload("W1", net, model, x, method, peer, 64, args.repeat, tmp)
                rows += r
                summaries.append(s)
        if not only or "mlp" in only:
            params = M.w2_params()
            net, model = M.w2_relprop(params), M.w2_torch(params).eval()
            x = M.w2_input(args.mlp_n)
            for method, peer in (("EpsilonPlusFlat", "zennit"), ("gradient", "captum"), ("ig32", "captum")):
                xs = x[:args.ig_n] if method == "ig32" else x
                r, s = run_workload(f"MLP-{len(xs)}", net, model, xs, method, peer, 1024, args.repeat, tmp)
                rows += r
                summaries.append(s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    date = time.strftime("%Y-%m-%d", time.gmtime())
    tag = "" if not only else "-" + "-".join(sorted(only))
    out = Path(args.out) if args.out else HERE / "results" / f"{date}-cpu-dataset{tag}.md"
    command = "python bench/dataset.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = {"cpu": REP.cpu_model(), "flags": REP.cpu_flags_summary(), "ram": REP.ram_gib(),
               "python": platform.python_version(), "relprop": REP.relprop_version(), "blas": REP.blas_info(),
               "torch": REP.pkg_version("torch"), "zennit": REP.pkg_version("zennit"),
               "captum": REP.pkg_version("captum"), "threads": conftest.BENCH_THREADS,
               "RELPROP_NUM_THREADS": os.environ.get("RELPROP_NUM_THREADS", "(default)")}
    lines = [f"# Dataset throughput ({date}, CPU)", "", f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             "Whole jobs from a `.npy` memory map to a `.npy` store, I/O included; best of "
             f"{args.repeat} alternated runs. Ratio = best peer loop time / relprop runner time (>1: relprop "
             "faster). Overhead = runner / bare engine - 1.", "",
             "| workload | method | n | runner samples/s | bare samples/s | best peer loop samples/s | ratio vs best "
             "peer | runner overhead | agreement |", "|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        n = s["n"]
        lines.append(f"| {s['workload']} | {s['method']} | {n:,} | {n / s['runner_s']:,.0f} | {n / s['bare_s']:,.0f} | "
                     f"{n / s['best_peer_s']:,.0f} ({s['peer']}) | {s['runner_vs_best_peer']:.2f}x | "
                     f"{100 * s['runner_overhead']:+.1f}% | {s['agreement']:.1e} |")
    lines += ["", "| workload | method | case | seconds | samples/s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['method']} | {r['case']} | {r['seconds']:.3f} | {r['samples_per_s']:,.0f} |")
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "command": command, "summary": summaries,
                                                    "cases": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
