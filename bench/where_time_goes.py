"""Where relprop's time goes on a workload: cProfile of repeated attribute() calls, grouped into
Numba kernels, BLAS GEMMs (the self time of the engine functions that call np.matmul) and the
rest (Python, numpy glue). Prints a Markdown table.

    .venv/bin/python bench/where_time_goes.py W2 EpsilonPlusFlat
    .venv/bin/python bench/where_time_goes.py W1 EpsilonPlusFlat
"""
from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models as M  # noqa: E402

GEMM_CALLERS = ("_linear_forward", "_linear_lrp", "_transposed_conv", "_linear_grad")


def main(workload="W2", method="EpsilonPlusFlat", calls=5):
    import relprop as rp

    if workload == "W1":
        net, x = M.w1_relprop(), M.w1_input()
    else:
        net, x = M.w2_relprop(), M.w2_input()
    kw = {"EpsilonPlusFlat": ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}),
          "lrp.epsilon": ("lrp.epsilon", {}), "gradient": ("gradient", {})}[method]
    rp.attribute(net, x, kw[0], **kw[1])  # compile
    t0 = time.perf_counter()
    for _ in range(calls):
        rp.attribute(net, x, kw[0], **kw[1])
    wall = (time.perf_counter() - t0) / calls
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        rp.attribute(net, x, kw[0], **kw[1])
    prof.disable()
    st = pstats.Stats(prof).stats
    rows, total = {}, 0.0
    for (fn, _, name), (_, _, tt, _, _) in st.items():
        total += tt
        if "/kernels/cpu/" in fn:
            key = f"kernel {name}"
        elif name in GEMM_CALLERS:
            key = f"BLAS GEMM (in {name})"
        else:
            key = "Python / numpy glue"
        rows[key] = rows.get(key, 0.0) + tt
    print(f"{workload} {method}, {len(x)} items per call, {wall * 1e3:.1f} ms per call unprofiled\n")
    print("| where | ms per call | share |\n|---|---:|---:|")
    for key, tt in sorted(rows.items(), key=lambda kv: -kv[1]):
        print(f"| {key} | {tt / calls * 1e3:.1f} | {tt / total:.0%} |")


if __name__ == "__main__":
    main(*sys.argv[1:3])
