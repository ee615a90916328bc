"""Turn a pytest-benchmark JSON file into bench/results/<YYYY-MM-DD>-cpu.md.

    .venv/bin/python bench/report.py /tmp/bench.json [more.json ...] [--out bench/results/2026-01-01-cpu.md]

Several JSON files (repeated runs of the same suite) are merged case by case, keeping for each
case the run with the lowest minimum time (the least disturbed one on a shared machine).

Throughput is items (images or rows) per second of the *best* round (min time): the machine is
shared, and the minimum is the round least disturbed by other processes. The per-case table also
gives the median-based figure. Ratio = relprop throughput / peer throughput (> 1: relprop faster).
If the output file already exists, its "## Time to first attribution" section (written by
bench/first_call.py) is kept.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import importlib.metadata as md
import io
import json
import os
import platform
import re
import sys
from contextlib import redirect_stdout
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
FIRST_CALL_MARK = "## Time to first attribution"

# Peer reference numbers quoted in the issue (same 2-core machine), items/s.
ISSUE_REF = {
    ("W1", "gradient"): 56.0,
    ("W1", "EpsilonPlusFlat"): 17.0,
    ("W1", "EpsilonGammaBox"): 8.3,
    ("W1", "EpsilonAlpha2Beta1"): 9.6,
    ("W1", "IG32"): 1.6,
    ("W2", "EpsilonPlusFlat"): 1.1e6,
    ("W2", "IG32"): 5.6e3,
}
METHOD_ORDER = ["gradient", "lrp.epsilon", "EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1", "IG32"]
METHOD_LABEL = {
    "gradient": "gradient",
    "lrp.epsilon": "lrp.epsilon (all layers)",
    "EpsilonPlusFlat": "EpsilonPlusFlat",
    "EpsilonGammaBox": "EpsilonGammaBox(-3, 3)",
    "EpsilonAlpha2Beta1": "EpsilonAlpha2Beta1",
    "IG32": "integrated gradients (32 steps)",
}


# ----------------------------------------------------------------------------------------------
# machine / versions
# ----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def cpu_flags_summary() -> str:
    try:
        txt = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:(.*)$", txt, re.M).group(1).split())
        return ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    except Exception:
        return ""


def pkg_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        pass
    try:
        mod = importlib.import_module(name)
        return getattr(mod, "__version__", "importable, no __version__")
    except Exception as exc:
        return f"not importable ({type(exc).__name__})"


def relprop_version() -> str:
    sys.path.insert(0, str(ROOT))
    try:
        import relprop

        v = getattr(relprop, "__version__", None)
        where = getattr(relprop, "__file__", None) or "namespace package (empty?)"
        try:
            inst = md.version("relprop")
        except md.PackageNotFoundError:
            inst = None
        return f"{v or inst or '?'} ({'installed ' + inst if inst else 'source tree'}: {os.path.relpath(where, ROOT) if where and os.path.isabs(where) else where})"
    except Exception as exc:
        return f"not importable ({type(exc).__name__}: {exc})"
    finally:
        sys.path.pop(0)


def blas_info() -> str:
    parts = []
    try:
        from threadpoolctl import threadpool_info

        for p in threadpool_info():
            parts.append(f"{p.get('internal_api')} {p.get('version')} ({p.get('user_api')}, "
                         f"{p.get('num_threads')} threads, {os.path.basename(p.get('filepath', ''))})")
    except Exception:
        pass
    try:
        import numpy as np

        cfg = np.show_config(mode="dicts")
        deps = cfg.get("Build Dependencies", {})
        for key in ("blas", "lapack"):
            d = deps.get(key, {})
            if d:
                parts.append(f"numpy {key}: {d.get('name')} {d.get('version')}")
        simd = cfg.get("SIMD Extensions", {})
        if simd:
            parts.append("numpy SIMD found: " + ", ".join(simd.get("found", []) or []))
    except Exception:
        try:
            import numpy as np

            buf = io.StringIO()
            with redirect_stdout(buf):
                np.show_config()
            parts.append(" ".join(buf.getvalue().split())[:400])
        except Exception:
            pass
    try:
        import torch

        cfg = torch.__config__.show()
        m = re.search(r"BLAS_INFO=(\w+)", cfg)
        parts.append(f"torch BLAS: {m.group(1) if m else '?'}; MKL={torch.backends.mkl.is_available()}, "
                     f"oneDNN={torch.backends.mkldnn.is_available()}")
    except Exception:
        pass
    return "; ".join(parts) or "unknown"


# ----------------------------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------------------------
def fmt_rate(v) -> str:
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_batch(b) -> str:
    return f"{b:,}" if isinstance(b, int) else str(b)


def merge_runs(datas):
    """Per case name keep the run with the lowest min time; annotate the run index (1-based)."""
    best = {}
    order = []
    for i, data in enumerate(datas, 1):
        for c in load_cases(data):
            c["run"] = i
            if c["name"] not in best:
                order.append(c["name"])
                best[c["name"]] = c
            elif c["min"] < best[c["name"]]["min"]:
                best[c["name"]] = c
    return [best[n] for n in order]


def load_cases(data):
    cases = []
    for b in data.get("benchmarks", []):
        ei = b.get("extra_info", {})
        if "workload" not in ei:
            continue
        st = b["stats"]
        items = ei["items"]
        cases.append({
            "name": b["name"], "group": b.get("group"), "workload": ei["workload"], "method": ei["method"],
            "impl": ei["impl"], "peer": ei.get("peer", ""), "unit": ei["unit"], "items": items,
            "batch": ei.get("batch"), "rounds": st["rounds"], "min": st["min"], "median": st["median"],
            "mean": st["mean"], "stddev": st["stddev"], "rate": items / st["min"],
            "rate_median": items / st["median"], "rel_err": ei.get("rel_err_vs_peer"),
            "ibs": ei.get("internal_batch_size"),
        })
    return cases


def summary_table(cases):
    lines = ["| workload | method | peer | peer batch | peer /s | issue ref peer /s | relprop batch | relprop /s | ratio relprop/peer | rel. err vs peer |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    keys = []
    for c in cases:
        k = (c["workload"], c["method"])
        if k not in keys:
            keys.append(k)
    keys.sort(key=lambda k: (k[0], METHOD_ORDER.index(k[1]) if k[1] in METHOD_ORDER else 99))
    for wl, meth in keys:
        group = [c for c in cases if c["workload"] == wl and c["method"] == meth]
        peers = [c for c in group if c["impl"] == "peer"]
        rps = [c for c in group if c["impl"] == "relprop"]
        best_peer = max(peers, key=lambda c: c["rate"]) if peers else None
        unit = group[0]["unit"]
        ref = ISSUE_REF.get((wl, meth))
        peer_cells = (f"{best_peer['peer']}", fmt_batch(best_peer["batch"]), f"{fmt_rate(best_peer['rate'])} {unit}/s") \
            if best_peer else (group[0]["peer"], "—", "—")
        if not rps:
            rps = [None]
        for rp in rps:
            if rp is None:
                rp_cells = ("—", "not measured", "—", "—")
            else:
                ratio = f"{rp['rate'] / best_peer['rate']:.2f}x" if best_peer else "—"
                err = f"{rp['rel_err']:.1e}" if rp["rel_err"] is not None else "—"
                rp_cells = (fmt_batch(rp["batch"]), f"{fmt_rate(rp['rate'])} {unit}/s", ratio, err)
            lines.append(f"| {wl} | {METHOD_LABEL.get(meth, meth)} | {peer_cells[0]} | {peer_cells[1]} | {peer_cells[2]} | "
                         f"{fmt_rate(ref) if ref else '—'} | {rp_cells[0]} | {rp_cells[1]} | {rp_cells[2]} | {rp_cells[3]} |")
    return "\n".join(lines)


def detail_table(cases):
    lines = ["| case | group | impl | batch | items | run | rounds | min s | median s | stddev s | /s (min) | /s (median) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cases:
        extra = f" (internal_batch_size={c['ibs']})" if c["ibs"] else ""
        lines.append(f"| `{c['name']}` | {c['group']} | {c['impl']}{extra} | {fmt_batch(c['batch'])} | {c['items']:,} | "
                     f"{c.get('run', 1)} | {c['rounds']} | {c['min']:.4f} | {c['median']:.4f} | {c['stddev']:.4f} | "
                     f"{fmt_rate(c['rate'])} | {fmt_rate(c['rate_median'])} |")
    return "\n".join(lines)


def build_report(datas, json_paths, command_override=None):
    data = datas[-1]
    rb = data.get("relprop_bench", {})
    cases = merge_runs(datas)
    when = data.get("datetime", _dt.datetime.now(_dt.timezone.utc).isoformat())
    json_path = " ".join(json_paths)
    cmd = command_override or rb.get("command") or "(unknown)"
    out = []
    out.append(f"# relprop CPU benchmark — {when[:10]}\n")
    out.append(f"Generated by `bench/report.py` from `{json_path}` (pytest-benchmark run at "
               + ", ".join(f"run {i}: {d.get('datetime', '?')[:19]}" for i, d in enumerate(datas, 1)) + ").\n")
    if len(datas) > 1:
        out.append(f"{len(datas)} runs of the suite merged: each case is reported from the run with its lowest "
                   "minimum time (column `run` in 'All cases').\n")
    out.append("## Command\n")
    out.append("```\n" + f"cd {rb.get('cwd', ROOT)}\n{cmd}\n.venv/bin/python bench/report.py {json_path}\n"
               ".venv/bin/python bench/first_call.py\n```\n")
    out.append("## Machine\n")
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {}) or {}
    out.append(f"- CPU: {cpu.get('brand_raw') or cpu_model()} ({os.cpu_count()} logical cores; "
               f"flags: {cpu_flags_summary()})")
    out.append(f"- RAM: {ram_gib()}")
    out.append(f"- OS: {platform.platform()}")
    out.append(f"- Threads: torch.set_num_threads({rb.get('torch_threads', '?')}); Numba/BLAS default "
               f"(= cores); env: {rb.get('env') or '{}'}")
    for i, d in enumerate(datas, 1):
        r = d.get("relprop_bench", {})
        la0, la1 = r.get("loadavg_start"), r.get("loadavg_end")
        if la0 or la1:
            f = lambda la: "/".join(f"{v:.2f}" for v in la) if la else "?"  # noqa: E731
            out.append(f"- Run {i}: load average (1/5/15 min) at start {f(la0)}, at end {f(la1)} — a load above "
                       f"the core count ({os.cpu_count()}) means other processes competed for the CPUs; "
                       f"relprop source digest {r.get('relprop_source_sha256', '?')}.")
    out.append("")
    out.append("## Versions\n")
    vers = [("python", platform.python_version())] + [(p, pkg_version(p)) for p in
                                                        ("numpy", "scipy", "numba", "llvmlite", "torch", "zennit",
                                                         "captum", "pytest-benchmark")]
    vers.append(("relprop", relprop_version()))
    for k, v in vers:
        out.append(f"- {k}: {v}")
    out.append(f"- BLAS: {blas_info()}")
    for i, d in enumerate(datas, 1):
        r = d.get("relprop_bench", {})
        if r.get("blas_kernels"):
            out.append(f"- Run {i} BLAS kernels (in the benchmark process): {'; '.join(r['blas_kernels'])}; "
                       f"OPENBLAS_CORETYPE={r.get('env', {}).get('OPENBLAS_CORETYPE', 'unset')}")
    if rb.get("torchvision_stub"):
        out.append("- torchvision: broken in this environment; a stand-in module (bench/conftest.py) "
                   "satisfies zennit's import")
    out.append("")
    out.append("## Results\n")
    out.append("Throughput = images (W1) or rows (W2) per second, from the best (minimum-time) round; "
               "one untimed warm-up round per case (Numba compilation for relprop). "
               "Ratio = relprop / best peer case of the group; > 1 means relprop is faster. "
               "`rel. err vs peer` = ||R_relprop − R_peer|| / ||R_peer|| on the same inputs and targets "
               "(W2 IG: on the 10,000 rows Captum attributed).\n")
    out.append("R18-64 / R18-224 = full-width ResNet-18 (zennit Sum residuals, BatchNorm folded), batch 8, "
               "imported with rp.from_torch (bench/test_bench_resnet.py).\n")
    out.append("W1 = VGG-16 variant for Tiny-ImageNet inputs (64x64x3, 10 conv3 layers, FC 2048-2048-200, "
               "He init, float32), batch 16. W2 = MLP 14-64-64-2 over 100,000 rows (float32).\n")
    out.append(summary_table(cases) + "\n")
    out.append("### All cases\n")
    out.append(detail_table(cases) + "\n")
    bad = [o for o in rb.get("outcomes", []) if o["outcome"] != "passed"]  # of the last run
    if bad:
        out.append("### Skipped / failed cases\n")
        for o in bad:
            msg = " ".join(str(o["message"]).split())[:300]
            out.append(f"- `{o['nodeid']}` ({o['when']}): **{o['outcome']}** — {msg}")
        out.append("")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="pytest-benchmark JSON file(s) (--benchmark-json=...)")
    ap.add_argument("--out", help="output markdown (default bench/results/<date of run>-cpu.md)")
    ap.add_argument("--command", help="override the recorded pytest command line")
    ap.add_argument("--notes", help="free text appended under 'Notes'")
    args = ap.parse_args(argv)
    datas = [json.loads(Path(p).read_text()) for p in args.json]
    date = datas[-1].get("datetime", "")[:10] or _dt.date.today().isoformat()
    out_path = Path(args.out) if args.out else RESULTS / f"{date}-cpu.md"
    text = build_report(datas, args.json, args.command)
    if args.notes:
        text += "\n## Notes\n\n" + args.notes.strip() + "\n"
    kept = ""
    if out_path.exists():
        old = out_path.read_text()
        if FIRST_CALL_MARK in old:
            kept = "\n" + old[old.index(FIRST_CALL_MARK):]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text + kept)
    print(f"wrote {out_path}")
    return out_path


if __name__ == "__main__":
    main()
