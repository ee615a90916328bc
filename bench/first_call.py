"""Time to first attribution in a fresh Python process, with a cold and with a warm Numba cache.

    .venv/bin/python bench/first_call.py [--out bench/results/<date>-cpu.md] [--case W1:lrp.epsilon ...]

For each case a new empty NUMBA_CACHE_DIR is made; the child process
    python -c 'import relprop; build the net; relprop.attribute(...)'
is run twice with that directory: first with the cache empty ("cold": every kernel is compiled),
then again ("warm": kernels compiled with cache=True are loaded from disk). The child reports
its own breakdown (import, build, first attribute call, a second call for the steady state);
the parent measures the whole process wall time (interpreter start to exit). Results are printed
and written as the "## Time to first attribution" section of the results file (replacing an
older such section).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MARK = "## Time to first attribution"

DEFAULT_CASES = ["W2:lrp.epsilon", "W1:gradient", "W1:lrp.epsilon", "W1:EpsilonPlusFlat", "C10:gradient",
                 "C10:EpsilonPlusFlat"]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import relprop as rp
t_import = time.perf_counter() - t0
sys.path.insert(0, {bench!r})
import models as M
workload, method, batch = {workload!r}, {method!r}, {batch!r}
if workload == "W1":
    params = M.w1_params(); x = M.w1_input(batch)
elif workload == "C10":
    params = M.c10_params(); x = M.c10_input(batch)
else:
    params = M.w2_params(); x = M.w2_input(batch)
t1 = time.perf_counter()
net = {{"W1": M.w1_relprop, "C10": M.c10_relprop}}.get(workload, M.w2_relprop)(params)
kw = {{}}
name = method
if method in ("EpsilonPlusFlat", "EpsilonAlpha2Beta1"):
    name, kw = "lrp", {{"rules": getattr(rp.composites, method)()}}
elif method == "EpsilonGammaBox":
    name, kw = "lrp", {{"rules": rp.composites.EpsilonGammaBox(low=-3.0, high=3.0)}}
elif method == "IG32":
    name, kw = "integrated_gradients", {{"steps": 32}}
t_build = time.perf_counter() - t1
t2 = time.perf_counter()
R = rp.attribute(net, x, name, **kw)
t_first = time.perf_counter() - t2
t3 = time.perf_counter()
R = rp.attribute(net, x, name, **kw)
t_second = time.perf_counter() - t3
assert R.shape == x.shape and np.isfinite(R).all()
print("FIRSTCALL_JSON " + json.dumps(dict(import_s=t_import, build_s=t_build, first_s=t_first,
                                          second_s=t_second, to_first_s=t_import + t_build + t_first)))
"""


def run_child(workload, method, batch, cache_dir, timeout):
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = cache_dir
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    code = CHILD.format(bench=str(HERE), workload=workload, method=method, batch=batch)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), env=env, capture_output=True, text=True,
                       timeout=timeout)
    wall = time.perf_counter() - t0
    for line in p.stdout.splitlines():
        if line.startswith("FIRSTCALL_JSON "):
            d = json.loads(line.split(" ", 1)[1])
            d["process_wall_s"] = wall
            d["ok"] = True
            return d
    return {"ok": False, "process_wall_s": wall, "rc": p.returncode,
            "error": (p.stderr or p.stdout).strip().splitlines()[-1:] or ["(no output)"],
            "stderr_tail": (p.stderr or "")[-3000:]}


def count_cache_files(d):
    return sum(len(files) for _, _, files in os.walk(d))


def default_out():
    today = _dt.datetime.now(_dt.timezone.utc).date().isoformat()
    p = HERE / "results" / f"{today}-cpu.md"
    if p.exists():
        return p
    existing = sorted((HERE / "results").glob("*-cpu.md"))
    return existing[-1] if existing else p


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", action="append", help="WORKLOAD:METHOD, e.g. W1:lrp.epsilon (repeatable); "
                    f"default {DEFAULT_CASES}")
    ap.add_argument("--batch-w1", type=int, default=1, help="images in the first call (default 1)")
    ap.add_argument("--batch-w2", type=int, default=1, help="rows in the first call (default 1)")
    ap.add_argument("--out", help="results markdown to update (default: today's bench/results/*-cpu.md)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    cases = args.case or DEFAULT_CASES

    rows = []
    for case in cases:
        workload, method = case.split(":", 1)
        batch = args.batch_w2 if workload == "W2" else args.batch_w1
        with tempfile.TemporaryDirectory(prefix="relprop-numba-cache-") as cache:
            cold = run_child(workload, method, batch, cache, args.timeout)
            n_cached = count_cache_files(cache)
            warm = run_child(workload, method, batch, cache, args.timeout)
        rows.append((workload, method, batch, cold, warm, n_cached))
        for label, r in (("cold", cold), ("warm", warm)):
            if r["ok"]:
                print(f"{workload} {method:<20} batch {batch:<3} {label}: first attribution {r['to_first_s']:7.2f} s "
                      f"after interpreter start (import {r['import_s']:.2f} s, build {r['build_s']:.2f} s, "
                      f"first call {r['first_s']:.2f} s, second call {r['second_s']:.3f} s; "
                      f"process wall {r['process_wall_s']:.2f} s)", flush=True)
            else:
                print(f"{workload} {method} {label}: FAILED rc={r['rc']}: {r['error']}\n{r['stderr_tail']}",
                      flush=True)
        print(f"    numba cache files written by the cold run: {n_cached}", flush=True)

    lines = [MARK, "",
             f"`.venv/bin/python bench/first_call.py` ({_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}). "
             "Fresh process per run; NUMBA_CACHE_DIR = a new empty temp dir for the cold run, the same dir "
             "again for the warm run. 'to first' = import relprop + build net + first attribute() call, "
             "measured inside the child; 'process' = whole child wall time incl. interpreter start "
             "and weight generation; 'second call' = the same attribute() call again (steady state).", "",
             "| workload | method | batch | cold: to first s | cold: first call s | warm: to first s | "
             "warm: first call s | import s (cold/warm) | second call s | process s (cold/warm) | cache files |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for workload, method, batch, cold, warm, n in rows:
        def g(r, k, f="{:.2f}"):
            return f.format(r[k]) if r.get("ok") else "FAILED"
        lines.append(f"| {workload} | {method} | {batch} | {g(cold, 'to_first_s')} | {g(cold, 'first_s')} | "
                     f"{g(warm, 'to_first_s')} | {g(warm, 'first_s')} | {g(cold, 'import_s')}/{g(warm, 'import_s')} | "
                     f"{g(warm, 'second_s', '{:.3f}')} | {cold['process_wall_s']:.1f}/{warm['process_wall_s']:.1f} | {n} |")
    fails = [(w, m, lab, r) for w, m, _, c, wa, _ in rows for lab, r in (("cold", c), ("warm", wa)) if not r["ok"]]
    if fails:
        lines += ["", "Failures:", ""]
        for w, m, lab, r in fails:
            lines.append(f"- {w} {m} ({lab}): rc={r['rc']}: `{' '.join(r['error'])}`")
    section = "\n".join(lines) + "\n"

    if not args.no_write:
        out = Path(args.out) if args.out else default_out()
        old = out.read_text() if out.exists() else "# relprop CPU benchmark\n\n"
        if MARK in old:
            old = old[:old.index(MARK)]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(old.rstrip("\n") + "\n\n" + section)
        print(f"updated {out}")
    return rows


if __name__ == "__main__":
    main()
