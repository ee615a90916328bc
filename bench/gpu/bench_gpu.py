"""GPU speed of relprop (CuPy) against Zennit, Captum and torch autograd (torch CUDA), same weights.

    python3 bench/gpu/bench_gpu.py                 # on a GPU machine (bench/gpu/run.sh calls it)
    python3 bench/gpu/bench_gpu.py --dry-run       # here: numpy + torch CPU, tiny sizes

Workloads (weights built once in numpy by bench/models.py and copied into both models):

    W1     VGG-16 variant for Tiny-ImageNet, 3x64x64, batch 256: gradient, EpsilonPlusFlat, EpsilonGammaBox(-3, 3),
           EpsilonAlpha2Beta1 (Zennit), IG(64) (Captum IntegratedGradients, gausslegendre)
    VGG16  VGG-16 (configuration D, FC 4096-4096-1000), He init, 3x224x224, batch 64: the three composites
    R18    ResNet-18 (tests/torch_models.py, zennit Sum residuals) imported with rp.from_torch, 3x224x224,
           batch 64: gradient and two composites (Zennit with SequentialMergeBatchNorm)
    W2     tabular MLP 14-64-64-2, 1,000,000 rows in one call: EpsilonPlusFlat

Every (method, precision) pair times the peer, then relprop, on inputs already on the device:
warm-up calls (kernel compilation, cuBLAS/cuDNN heuristics, allocator pools), then the median of
``--reps`` calls, each timed with CUDA events (cupy.cuda.Event around relprop, torch.cuda.Event
around the peers) and a synchronize. Precision "fp32": TF32 off everywhere
(``torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False``, relprop's
default); "tf32": both on (relprop ``allow_tf32=True``). ``torch.backends.cudnn.benchmark = True``
(the peers get cuDNN's fastest algorithm for the fixed shapes).

relprop TFLOP/s counts nominal GEMM FLOPs (``gemm_flops``) and is compared with the measured
rate of one 8192^3 ``cupy.matmul`` (SGEMM with TF32 off; the TF32 rows with the TF32 GEMM).

``--dry-run`` runs exactly this code with numpy arrays for relprop (its CPU backend), torch on
the CPU, ``time.perf_counter`` instead of CUDA events, and tiny sizes.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
for p in (ROOT / "tests", ROOT / "bench", ROOT):  # ROOT first: relprop from this checkout
    sys.path.insert(0, str(p))


def _bench_conftest():
    """bench/conftest.py, loaded by path: its torchvision stand-in makes ``import zennit`` work
    where torchvision is broken (here); on the GPU image the real torchvision imports."""
    spec = importlib.util.spec_from_file_location("relprop_bench_conftest", ROOT / "bench" / "conftest.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TORCHVISION_STUBBED = _bench_conftest().TORCHVISION_STUBBED

import torch  # noqa: E402

import models as M  # noqa: E402  (bench/models.py)
import relprop as rp  # noqa: E402
from relprop.methods.lrp import rules_for  # noqa: E402

FULL = dict(w1_batch=256, ig_steps=64, captum_batch=1024, vgg_size=224, vgg_batch=64, r18_size=224,
            r18_batch=64, w2_rows=1_000_000, gemm_n=8192, reps=5, min_reps=3)
DRY = dict(w1_batch=2, ig_steps=4, captum_batch=4, vgg_size=32, vgg_batch=2, r18_size=32, r18_batch=2,
           w2_rows=2_000, gemm_n=512, reps=2, min_reps=2)
WARMUP_S = 0.5  # warm-up calls until this much time was spent (at least 1, at most 3)
PRECISIONS = ("fp32", "tf32")

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
VGG16_SPEC = tuple(("pool",) if c == "M" else ("conv", c) for c in VGG16_CFG) + (
    ("flatten",), ("dense", 4096), ("dense", 4096), ("dense", 1000))


# ------------------------------------------------------------------------------------------------
# Device: the only place that differs between the GPU run and the dry run
# ------------------------------------------------------------------------------------------------
class Device:
    """Arrays for relprop (``xp``: cupy or numpy), tensors for the peers (cuda or cpu), timers."""

    def __init__(self, dry):
        self.dry = dry
        if dry:
            self.xp, self.tdev = np, torch.device("cpu")
        else:
            import cupy

            self.xp, self.tdev = cupy, torch.device("cuda")
            cupy.cuda.Device(0).use()

    def put(self, a):
        """numpy -> relprop's array type (cupy on the GPU)."""
        return self.xp.asarray(a)

    def tput(self, a):
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.tdev)

    @staticmethod
    def host(a):
        """relprop result or torch tensor -> numpy."""
        if isinstance(a, torch.Tensor):
            return a.detach().cpu().numpy()
        return a.get() if hasattr(a, "get") else np.asarray(a)

    def sync(self):
        if not self.dry:
            self.xp.cuda.Device().synchronize()
            torch.cuda.synchronize()

    def time_call(self, fn, side):
        """(seconds, result) of one ``fn()``: CUDA events on the stream of the side's library
        (cupy for relprop, torch for the peers), waited for; perf_counter in the dry run."""
        if self.dry:
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out
        if side == "relprop":
            e0, e1 = self.xp.cuda.Event(), self.xp.cuda.Event()
            e0.record()
            out = fn()
            e1.record()
            e1.synchronize()
            return self.xp.cuda.get_elapsed_time(e0, e1) / 1e3, out
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        out = fn()
        e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) / 1e3, out

    def set_torch_tf32(self, on):
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on

    def free(self):
        """Return cached memory of both libraries between workloads."""
        gc.collect()
        rp.core.engine.release_scratch()
        if not self.dry:
            self.xp.get_default_memory_pool().free_all_blocks()
            torch.cuda.empty_cache()

    def describe(self):
        if self.dry:
            return {"name": f"CPU ({platform.processor() or platform.machine()}), dry run", "kind": "dryrun"}
        info = {}
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=30).stdout
            name, driver, mem, clk = [s.strip() for s in q.strip().splitlines()[0].split(",")]
            info.update(name=name, driver=driver, memory=mem, max_sm_clock=clk)
        except Exception as e:  # noqa: BLE001 - reported, not fatal
            info["nvidia_smi"] = f"failed: {type(e).__name__}: {e}"
        props = self.xp.cuda.runtime.getDeviceProperties(0)
        info.setdefault("name", props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"]))
        info.update(sms=int(props["multiProcessorCount"]), cuda_runtime=self.xp.cuda.runtime.runtimeGetVersion(),
                    cuda_driver_api=self.xp.cuda.runtime.driverGetVersion())
        m = re.search(r"\b([a-z]{1,2}\d{2,3}[a-z]?)\b", info["name"].lower())
        info["kind"] = m.group(1) if m else "gpu"
        return info


# ------------------------------------------------------------------------------------------------
# Timing with a time budget
# ------------------------------------------------------------------------------------------------
class Budget:
    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def left(self):
        return self.deadline - time.monotonic()


@dataclass
class Timing:
    median: float
    times: list
    warmup: list
    out: object = field(repr=False, default=None)


def measure(dev, fn, side, reps, min_reps, budget):
    """Warm-up, then the median of ``reps`` timed calls (fewer, down to ``min_reps``, when the
    time budget is short)."""
    warm = []
    while not warm or (sum(warm) < WARMUP_S and len(warm) < 3):
        t, out = dev.time_call(fn, side)
        warm.append(t)
    fit = int(budget.left() / max(warm[-1], 1e-9))
    n = max(min_reps, min(reps, fit))
    times = []
    for _ in range(n):
        t, out = dev.time_call(fn, side)
        times.append(t)
    return Timing(statistics.median(times), times, warm, out)


# ------------------------------------------------------------------------------------------------
# FLOPs
# ------------------------------------------------------------------------------------------------
def gemm_flops(net, in_shape, rules=None, passes=1):
    """Nominal GEMM FLOPs of one attribution of one input.

    A Dense/Conv2d layer with weight (O, K...) and P output positions does F = 2 P O K FLOPs
    per product. Counted per layer: the forward GEMM F, the backward GEMM F (W^T times the
    upper signal), and, for an LRP rule whose denominator is not the layer's own z
    (``not rule.uses_layer_z``: z+, gamma, alpha-beta, flat, w^2, z^B), one modified forward
    GEMM F; several terms stacked into one block are counted once, so this is a lower bound of
    the GEMM work done. ``rules=None``: a gradient (2F per layer); ``passes``: IG steps.
    """
    shapes = net.infer_shapes(in_shape)
    lin = net.linear_nodes()
    extra = [0] * len(lin) if rules is None else [0 if r.uses_layer_z else 1 for r in rules]
    total = 0
    for node, e in zip(lin, extra):
        w = node.layer.weight
        positions = int(np.prod(shapes[node.name][1:]))  # H*W for Conv2d, 1 for Dense
        total += 2 * positions * w.shape[0] * int(np.prod(w.shape[1:])) * (2 + e)
    return passes * total


# ------------------------------------------------------------------------------------------------
# Workloads and methods
# ------------------------------------------------------------------------------------------------
@dataclass
class Workload:
    name: str
    desc: str
    net: object  # relprop model
    model: object  # torch model on the device
    x: np.ndarray  # host input
    classes: int
    unit: str = "images"
    bn: bool = False  # Zennit needs SequentialMergeBatchNorm (BatchNorm in the torch model)
    methods: tuple = ()


def _vgg16(cfg):
    rng = np.random.default_rng(M.SEED + 7)
    shape = (3, cfg["vgg_size"], cfg["vgg_size"])
    params = M._he_params(VGG16_SPEC, shape, M.SEED + 6)
    x = np.clip(rng.standard_normal((cfg["vgg_batch"],) + shape, dtype=np.float32), -3.0, 3.0)
    return M._build_relprop(VGG16_SPEC, params), M._build_torch(VGG16_SPEC, params), x


def build(name, cfg, dev):
    """The workload ``name`` with identical weights on both sides."""
    if name == "W1":
        params = M.w1_params()
        x = M.w1_input(batch=cfg["w1_batch"])
        return Workload("W1", f"VGG-16 variant for Tiny-ImageNet, 3x64x64, batch {len(x)}", M.w1_relprop(params),
                        M.w1_torch(params).to(dev.tdev), x, M.W1_CLASSES,
                        methods=("gradient", "EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1"))
    if name == "W1-IG":
        params = M.w1_params()
        x = M.w1_input(batch=cfg["w1_batch"])
        return Workload("W1", f"VGG-16 variant for Tiny-ImageNet, 3x64x64, batch {len(x)}", M.w1_relprop(params),
                        M.w1_torch(params).to(dev.tdev), x, M.W1_CLASSES, methods=(f"IG{cfg['ig_steps']}",))
    if name == "VGG16":
        net, model, x = _vgg16(cfg)
        s = cfg["vgg_size"]
        return Workload("VGG16", f"VGG-16 (config D, FC 4096-4096-1000, He init), 3x{s}x{s}, batch {len(x)}",
                        net, model.to(dev.tdev), x, 1000,
                        methods=("EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1"))
    if name == "R18":
        import torch_models as TM  # tests/torch_models.py (needs zennit for the Sum residuals)

        s = cfg["r18_size"]
        model = TM.ResNet(TM.BasicBlock, [2, 2, 2, 2], widths=(64, 128, 256, 512), n_classes=1000, faithful=False)
        model = TM.init_model(model, (3, s, s), seed=0).float().eval()
        rng = np.random.default_rng(s)
        x = np.clip(rng.standard_normal((cfg["r18_batch"], 3, s, s)), -2.9, 2.9).astype(np.float32)
        net = rp.from_torch(model, x[:2])
        return Workload("R18", f"ResNet-18 (BasicBlock 64-128-256-512, zennit Sum residuals, BatchNorm folded by "
                        f"rp.from_torch), 3x{s}x{s}, batch {len(x)}", net, model.to(dev.tdev), x, 1000, bn=True,
                        methods=("gradient", "EpsilonPlusFlat", "EpsilonGammaBox"))
    if name == "W2":
        params = M.w2_params()
        x = M.w2_input(rows=cfg["w2_rows"])
        return Workload("W2", f"tabular MLP 14-64-64-2, {len(x):,} rows in one call", M.w2_relprop(params),
                        M.w2_torch(params).to(dev.tdev), x, M.W2_CLASSES, unit="rows", methods=("EpsilonPlusFlat",))
    raise ValueError(name)


def relprop_method(method):
    """(method string, kwargs) for rp.attribute; IG<n> -> integrated_gradients, steps=n."""
    if method == "gradient":
        return "gradient", {}
    if method.startswith("IG"):
        return "integrated_gradients", {"steps": int(method[2:])}
    comp = {"EpsilonPlusFlat": rp.composites.EpsilonPlusFlat, "EpsilonAlpha2Beta1": rp.composites.EpsilonAlpha2Beta1,
            "EpsilonGammaBox": lambda: rp.composites.EpsilonGammaBox(low=-3.0, high=3.0)}[method]
    return "lrp", {"rules": comp()}


@contextlib.contextmanager
def peer(w, method, xt, tt, cfg):
    """Yields (label, fn) for the peer of ``method``: fn() -> attribution tensor on the device."""
    if method == "gradient":
        def grad():
            xg = xt.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(w.model(xg).gather(1, tt[:, None]).sum(), xg)
            return g

        yield "torch autograd input-gradient", grad
    elif method.startswith("IG"):
        from captum.attr import IntegratedGradients

        ig, steps, ib = IntegratedGradients(w.model), int(method[2:]), cfg["captum_batch"]
        yield (f"Captum IG({steps}), gausslegendre, internal_batch_size={ib}",
               lambda: ig.attribute(xt, baselines=0.0, target=tt, n_steps=steps, method="gausslegendre",
                                    internal_batch_size=ib))
    else:
        from zennit import composites as zc
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm

        kw = {"canonizers": [SequentialMergeBatchNorm()]} if w.bn else {}
        comp = {"EpsilonPlusFlat": lambda: zc.EpsilonPlusFlat(**kw),
                "EpsilonAlpha2Beta1": lambda: zc.EpsilonAlpha2Beta1(**kw),
                "EpsilonGammaBox": lambda: zc.EpsilonGammaBox(low=-3.0, high=3.0, **kw)}[method]()
        onehot = torch.nn.functional.one_hot(tt, w.classes).to(xt.dtype)
        with Gradient(model=w.model, composite=comp) as att:
            yield f"Zennit {method}" + (" + SequentialMergeBatchNorm" if w.bn else ""), \
                lambda: att(xt, attr_output=lambda out: out * onehot)[1]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a - b))


def run_workload(w, dev, cfg, budget, gemm, rows, log):
    xd, xt = dev.put(w.x), dev.tput(w.x)
    with torch.no_grad():
        tt = w.model(xt).argmax(1)
    t = dev.host(tt).astype(np.int64)
    in_shape = w.x.shape[1:]
    for method in w.methods:
        name, kw = relprop_method(method)
        rules = rules_for(w.net, "lrp", kw) if name == "lrp" else None
        steps = kw.get("steps", 1)
        flops = gemm_flops(w.net, in_shape, rules, passes=steps)
        for prec in PRECISIONS:
            row = dict(workload=w.name, method=method, precision=prec, batch=len(w.x), unit=w.unit,
                       gemm_gflop_per_item=flops / 1e9)
            rows.append(row)
            if budget.left() <= 0:
                row["skipped"] = "time budget used up"
                log(f"  {w.name} {method} {prec}: skipped (time budget)")
                continue
            tf32 = prec == "tf32"
            dev.set_torch_tf32(tf32)
            try:
                with peer(w, method, xt, tt, cfg) as (label, fn):
                    pt = measure(dev, fn, "peer", cfg["reps"], cfg["min_reps"], budget)
                row.update(peer=label, peer_s=pt.median, peer_times=pt.times, peer_warmup=pt.warmup)
                peer_out = dev.host(pt.out)
                del pt
                rt = measure(dev, lambda: rp.attribute(w.net, xd, name, target=t, allow_tf32=tf32, **kw),
                             "relprop", cfg["reps"], cfg["min_reps"], budget)
                r_out = dev.host(rt.out)
                assert r_out.shape == w.x.shape and np.isfinite(r_out).all()
                n = len(w.x)
                rate = gemm["tf32" if tf32 else "fp32"]
                row.update(relprop_s=rt.median, relprop_times=rt.times, relprop_warmup=rt.warmup,
                           relprop_per_s=n / rt.median, peer_per_s=n / row["peer_s"],
                           ratio=row["peer_s"] / rt.median, rel_err=rel_err(r_out, peer_out),
                           relprop_tflops=flops * n / rt.median / 1e12, gemm_fraction=flops * n / rt.median / rate)
                del rt, r_out, peer_out
                log(f"  {w.name} {method} {prec}: relprop {row['relprop_per_s']:.4g} {w.unit}/s, "
                    f"peer {row['peer_per_s']:.4g} {w.unit}/s, ratio {row['ratio']:.2f}x, "
                    f"{row['relprop_tflops']:.3g} TFLOP/s, rel. err {row['rel_err']:.1e}")
            except Exception as e:  # noqa: BLE001 - one failing case must not lose the others
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                log(f"  {w.name} {method} {prec}: ERROR {row['error']}")
            finally:
                dev.free()
    dev.set_torch_tf32(False)


def gemm_rates(dev, n, budget):
    """Measured n^3 matmul rate (FLOP/s) of the array library, TF32 off and on."""
    from relprop.core import backend as B

    rng = np.random.default_rng(0)
    a = dev.put(rng.standard_normal((n, n), dtype=np.float32))
    b = dev.put(rng.standard_normal((n, n), dtype=np.float32))
    k = B.kernels_for(a)
    out = {}
    for prec in PRECISIONS:
        with B.tf32(k, prec == "tf32"):
            t = measure(dev, lambda: dev.xp.matmul(a, b), "relprop", 10, 3, budget)
        out[prec] = 2 * n ** 3 / t.median
    return out


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------
def _version(mod):
    try:
        return importlib.metadata.version(mod)
    except importlib.metadata.PackageNotFoundError:
        m = sys.modules.get(mod)
        return getattr(m, "__version__", "not installed")


def versions(dev):
    v = {"python": platform.python_version(), "relprop": f"{rp.__version__} ({Path(rp.__file__).parent})",
         "numpy": np.__version__, "numba": _version("numba"),
         "torch": f"{torch.__version__} (CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()})",
         "zennit": _version("zennit"), "captum": _version("captum")}
    v["cupy"] = "not used (dry run)" if dev.dry else dev.xp.__version__
    if TORCHVISION_STUBBED:
        v["torchvision"] = "broken here; bench/conftest.py's stand-in satisfies zennit's import"
    return v


def _fmt(v, unit=""):
    return "—" if v is None else f"{v:,.4g}{unit}" if v < 1e4 else f"{v:,.0f}{unit}"


def report(meta, rows, gemm):
    L = [f"# relprop GPU benchmark — {meta['date']} ({meta['machine']['name']})", "",
         "Generated by `bench/gpu/bench_gpu.py`" + (" in **dry-run mode** (CPU, tiny sizes: the numbers say "
                                                   "nothing about speed)" if meta["dry_run"] else "") + ".", "",
         "## Command", "", "```", meta["command"], "```", "",
         "## Machine", ""]
    L += [f"- {k}: {v}" for k, v in meta["machine"].items()]
    L += ["", "## Versions", ""] + [f"- {k}: {v}" for k, v in meta["versions"].items()]
    if meta.get("tests"):
        L += ["", "## GPU tests", "", f"`{meta['tests']['command']}` (exit code {meta['tests']['rc']}):", "",
              "```", meta["tests"]["summary"], "```"]
    L += ["", "## Results", "",
          f"Throughput from the median of {meta['reps']} timed calls (fewer where the `reps` column says so: time "
          "budget) after warm-up, CUDA events + synchronize, inputs and weights already on the device, outputs "
          "left there. Targets: argmax of the torch forward, passed to both sides. Ratio = relprop / peer "
          "throughput (> 1: relprop faster). `rel. err` = ||R_relprop − R_peer|| / ||R_peer||. "
          "Precision fp32: TF32 off in torch (matmul and cuDNN) and relprop; tf32: on in both "
          "(relprop `allow_tf32=True`). `torch.backends.cudnn.benchmark = True`.", "",
          f"Measured GEMM rate ({meta['gemm_n']}³ `matmul`, float32): TF32 off {gemm['fp32'] / 1e12:.3g} TFLOP/s, "
          f"TF32 on {gemm['tf32'] / 1e12:.3g} TFLOP/s. relprop TFLOP/s = nominal GEMM FLOPs (one forward, one "
          "backward and, for rules that need it, one modified forward GEMM per Dense/Conv2d layer; IG: per step) "
          "/ time; `% GEMM` = that over the measured rate of the same precision.", ""]
    L += [f"- {w}: {d}" for w, d in meta["workloads"].items()]
    L += ["", "| workload | method | precision | batch | relprop | peer | peer | ratio relprop/peer | "
          "relprop TFLOP/s | % GEMM | rel. err vs peer | reps |", "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['workload']} | {r['method']} | {r['precision']} | {r['batch']:,} |"
        if "relprop_s" not in r:
            why = r.get("error") or r.get("skipped")
            L.append(head + f" — | {r.get('peer', '—')} | — | — | — | — | — | {why} |")
            continue
        u = r["unit"]
        L.append(head + f" {_fmt(r['relprop_per_s'])} {u}/s | {r['peer']} | {_fmt(r['peer_per_s'])} {u}/s | "
                 f"{r['ratio']:.2f}x | {r['relprop_tflops']:.3g} | {100 * r['gemm_fraction']:.0f}% | "
                 f"{r['rel_err']:.1e} | {len(r['relprop_times'])}/{len(r['peer_times'])} |")
    L += ["", f"Wall time of the benchmark: {meta['wall_s']:.0f} s"
          + ("." if meta["complete"] else " so far (**incomplete**: the run stopped before the last workload)."), ""]
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU (numpy + torch CPU), tiny sizes")
    ap.add_argument("--only", default="", help="comma list of workloads (W1, VGG16, R18, W2, W1-IG)")
    ap.add_argument("--reps", type=int, default=None, help="timed calls per case (median)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting cases after this many seconds")
    ap.add_argument("--out-dir", default=None, help="default: bench/results (GPU), /tmp/relprop-gpu-dryrun (dry)")
    ap.add_argument("--tests-log", default=None, help="pytest output to quote in the report")
    ap.add_argument("--tests-rc", default=None)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    cfg = dict(DRY if args.dry_run else FULL)
    if args.reps:
        cfg["reps"] = args.reps
        cfg["min_reps"] = min(cfg["min_reps"], args.reps)
    t_start = time.monotonic()
    budget = Budget(args.budget_s)
    dev = Device(args.dry_run)
    torch.backends.cudnn.benchmark = True
    dev.set_torch_tf32(False)

    def log(msg):
        print(f"[bench_gpu +{time.monotonic() - t_start:5.0f}s] {msg}", flush=True)

    machine = dev.describe()
    log(f"device: {machine.get('name')}; budget {args.budget_s:.0f} s; reps {cfg['reps']}")
    gemm = gemm_rates(dev, cfg["gemm_n"], budget)
    dev.free()
    log(f"GEMM {cfg['gemm_n']}^3: fp32 {gemm['fp32'] / 1e12:.3g} TFLOP/s, tf32 {gemm['tf32'] / 1e12:.3g} TFLOP/s")
    order = ["W1", "VGG16", "R18", "W2", "W1-IG"]  # IG last: the slowest case
    if args.only:
        order = [o for o in order if o in args.only.split(",")]
    rows, descs = [], {}
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    out_dir = Path(args.out_dir or ("/tmp/relprop-gpu-dryrun" if args.dry_run else ROOT / "bench" / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{date}-gpu-{machine['kind']}"
    cmd = " ".join(shlex.quote(a) for a in ["python3", os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    if os.environ.get("RELPROP_GPU_BENCH_COMMAND"):
        cmd = f"{os.environ['RELPROP_GPU_BENCH_COMMAND']}   # which ran: {cmd}"
    meta = dict(date=date, dry_run=args.dry_run, command=cmd, machine=machine, versions=versions(dev),
                reps=cfg["reps"], gemm_n=cfg["gemm_n"], workloads=descs, config=cfg)
    if args.tests_log and Path(args.tests_log).exists():
        lines = [ln for ln in Path(args.tests_log).read_text(errors="replace").splitlines() if ln.strip()]
        summary = [ln for ln in lines if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
        meta["tests"] = dict(command="python3 -m pytest -m gpu tests -q", rc=args.tests_rc,
                             summary="\n".join((summary or lines)[-1:]))

    def write(final):
        """The report so far (after every workload: a run cut short still leaves one)."""
        meta["wall_s"] = time.monotonic() - t_start
        meta["complete"] = final
        files = [out_dir / f"{stem}.md", out_dir / f"{stem}.json"]
        files[0].write_text(report(meta, rows, gemm))
        files[1].write_text(json.dumps(dict(meta=meta, gemm=gemm, rows=rows), indent=1, default=str))
        if os.environ.get("OUT"):
            for f in files:
                shutil.copy(f, Path(os.environ["OUT"]) / f.name)
        return files

    for name in order:
        if budget.left() <= 0:
            log(f"{name}: skipped (time budget)")
            rows.append(dict(workload=name, method="all", precision="—", batch=0, unit="",
                             skipped="time budget used up"))
            continue
        log(f"{name}: building")
        try:
            w = build(name, cfg, dev)
        except Exception as e:  # noqa: BLE001 - reported; the other workloads still run
            rows.append(dict(workload=name, method="all", precision="—", batch=0, unit="",
                             error=f"building the workload failed: {type(e).__name__}: {e}"[:500]))
            log(f"{name}: ERROR {rows[-1]['error']}")
            continue
        descs[w.name] = w.desc
        log(f"{name}: {w.desc}")
        run_workload(w, dev, cfg, budget, gemm, rows, log)
        del w
        dev.free()
        write(final=False)
    files = write(final=True)
    log(f"wrote {files[0]} and {files[1]}" + (" (copied to $OUT)" if os.environ.get("OUT") else ""))
    failed = [r for r in rows if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
