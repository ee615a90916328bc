"""A full model-parameter randomization study on W1: relprop against Captum/Zennit + Quantus MPRT.

    .venv/bin/python bench/sanity_study.py [--seeds 5] [--timed-seeds 1] [--peer-layers 2] [--out PATH]

The study (Adebayo et al. 2018): W1 (VGG-16 variant, 13 weight layers), 16 images, cascading
*and* independent randomization of every weight layer, ``--seeds`` seeds, 8 methods: gradient,
gradient x input, IG (32 steps), DeepLIFT (rescale), guided backprop, DeconvNet, LRP-epsilon,
LRP z+; SSIM and Spearman(|R|) of each randomized explanation against the original one.

relprop: ``relprop.evaluate.model_randomization`` (both modes), timed over ``--timed-seeds``
seeds with every layer; each further seed repeats the same work (the same layers, shapes and
reuse pattern), so the full study's time is extrapolated linearly in the seeds (the original
explanations are computed once and not multiplied). ``--timed-seeds 5`` runs it in full.

Peers: the same study written as users write it today: ``quantus.MPRT`` (layer_order
``top_down`` and ``independent``, ``similarity_func=quantus.ssim`` (wrapped: Quantus 0.6 MPRT crashes on its own batched ssim, a list))
with an ``explain_func`` calling Captum (Saliency, InputXGradient, IntegratedGradients
(n_steps=32, Gauss-Legendre, internal batch 16), DeepLift, GuidedBackprop, Deconvolution) or
Zennit (Epsilon on every layer; EpsilonPlus = z+ on every layer). Quantus explains every
randomized model in full, so its time per randomized layer is constant: it is timed on the top
``--peer-layers`` layers of each mode (one seed) and extrapolated to 13 layers x seeds; the
original explanations per MPRT call are counted once per (method, mode, seed), as Quantus
computes them. Both sides run in this process, torch on 2 threads.

Writes ``bench/results/<date>-cpu-sanity.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import conftest  # noqa: E402,F401  (torchvision stand-in for zennit, before zennit/quantus import it)
import models as M  # noqa: E402
import report as REP  # noqa: E402

import relprop as rp  # noqa: E402
from relprop import evaluate as ev  # noqa: E402

METHODS = {
    "gradient": ("gradient", {}),
    "gradient_x_input": ("gradient_x_input", {}),
    "integrated_gradients": ("integrated_gradients", {"steps": 32}),
    "deeplift": ("deeplift.rescale", {}),
    "guided_backprop": ("guided_backprop", {}),
    "deconvnet": ("deconvnet", {}),
    "lrp.epsilon": ("lrp.epsilon", {"epsilon": 1e-6}),
    "lrp.z_plus": ("lrp.z_plus", {}),
}


def peer_explain_funcs(n_out):
    """explain_func(model, inputs, targets, **kw) -> numpy for each method, with Captum / Zennit."""
    import captum.attr as ca
    import torch
    from zennit.attribution import Gradient
    from zennit.composites import LayerMapComposite, layer_map_base
    from zennit.rules import ZPlus
    from zennit.types import Linear

    def captum(cls, **kw):
        def f(model, inputs, targets, **_):
            x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32).requires_grad_(True)
            t = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
            a = cls(model).attribute(x, target=t, **kw)
            return a.detach().numpy()
        return f

    def zennit(make):
        def f(model, inputs, targets, **_):
            x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
            with Gradient(model=model, composite=make()) as attributor:
                return M.zennit_lrp(attributor, x.numpy(), np.asarray(targets, np.int64), n_out)
        return f

    return {
        "gradient": captum(ca.Saliency, abs=False),
        "gradient_x_input": captum(ca.InputXGradient),
        "integrated_gradients": captum(ca.IntegratedGradients, n_steps=32, method="gausslegendre",
                                       internal_batch_size=16),
        "deeplift": captum(ca.DeepLift),
        "guided_backprop": captum(ca.GuidedBackprop),
        "deconvnet": captum(ca.Deconvolution),
        "lrp.epsilon": zennit(M.zennit_epsilon_composite),
        "lrp.z_plus": zennit(lambda: LayerMapComposite(layer_map=layer_map_base() + [(Linear, ZPlus())])),
    }


def time_peer(model, x, y, layers_timed, funcs):
    """{(method, order): (seconds, layers)} of Quantus MPRT (SSIM) stopped after the top
    ``layers_timed`` layers of its own generator (Quantus explains every randomized model in full,
    so each further layer costs the same)."""
    import itertools

    import quantus
    from quantus.helpers.model import pytorch_model as qpm

    full = qpm.PyTorchModel.get_random_layer_generator

    def limited(self, order="top_down", seed=42):
        yield from itertools.islice(full(self, order=order, seed=seed), layers_timed)

    out = {}
    qpm.PyTorchModel.get_random_layer_generator = limited
    try:
        for label, f in funcs.items():
            for order in ("top_down", "independent"):
                metric = quantus.MPRT(similarity_func=_ssim, layer_order=order, seed=0, abs=True,
                                      normalise=True, disable_warnings=True, display_progressbar=False)
                t0 = time.perf_counter()
                scores = metric(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=f,
                                explain_func_kwargs={}, batch_size=len(x), channel_first=True, device="cpu")
                out[(label, order)] = (time.perf_counter() - t0, len([k for k in scores if k != "original"]))
                print(f"peer {label} {order}: {out[(label, order)][0]:.1f} s for {out[(label, order)][1]} layers",
                      flush=True)
    finally:
        qpm.PyTorchModel.get_random_layer_generator = full
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--timed-seeds", type=int, default=1)
    ap.add_argument("--peer-layers", type=int, default=2)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(conftest.BENCH_THREADS)
    net = M.w1_relprop()
    model = M.w1_torch().eval()
    x = M.w1_input()[:args.images]
    y = M.torch_targets(model, x) if hasattr(M, "torch_targets") else np.argmax(rp.scores(net, x), 1)
    y = np.asarray(y, np.int64)
    layers = ev.weight_layers(net)
    measures = ("ssim", "spearman_abs")

    # warm-up (Numba compilation, first-touch of the plans) on 2 images, all methods, one step
    ev.model_randomization(net, x[:2], METHODS, layers=layers[-1:], measures=measures, target=y[:2])

    timed = list(range(args.timed_seeds))
    rel = {}
    for mode in ("cascading", "independent"):
        t0 = time.perf_counter()
        res = ev.model_randomization(net, x, METHODS, mode=mode, seeds=timed, measures=measures, target=y,
                                     normalize="abs_max", reduce="sum", keep_maps=0)
        rel[mode] = (time.perf_counter() - t0, res.reuse, res)
        print(f"relprop {mode}: {rel[mode][0]:.1f} s for {len(timed)} seed(s), reuse {res.reuse}", flush=True)
    # the originals (computed once per study) from a 1-layer run's share: time them alone
    t0 = time.perf_counter()
    for label, (m, p) in METHODS.items():
        rp.attribute(net, x, m, target=y, **p)
    originals = time.perf_counter() - t0
    rel_total = sum(v[0] - originals for v in rel.values()) * args.seeds / len(timed) + 2 * originals

    funcs = peer_explain_funcs(M.W1_CLASSES)
    peer = time_peer(model, x, y, args.peer_layers, funcs)
    n_layers = len(layers)
    per_method = {}
    peer_total = 0.0
    for label in METHODS:
        # one MPRT call = the original explained twice (general_preprocess, then again before the first
        # layer) + one full explanation per randomized layer; one call per (mode, measure, seed)
        t_orig = _peer_original(funcs[label], model, x, y)
        tot = 0.0
        for order in ("top_down", "independent"):
            secs, k = peer[(label, order)]
            per_layer = max(secs - 2 * t_orig, 0.0) / max(k, 1)
            tot += args.seeds * (2 * t_orig + n_layers * per_layer)
        per_method[label] = (t_orig, tot)
        peer_total += tot
    peer_total_2 = peer_total * len(measures)  # Quantus takes one similarity_func per call
    machine = {"cpu": REP.cpu_model(), "flags": REP.cpu_flags_summary(), "ram": REP.ram_gib(),
               "python": platform.python_version(), "relprop": REP.relprop_version(), "blas": REP.blas_info(),
               "torch": REP.pkg_version("torch"), "zennit": REP.pkg_version("zennit"),
               "captum": REP.pkg_version("captum"), "quantus": REP.pkg_version("quantus"),
               "threads": conftest.BENCH_THREADS}
    command = "python bench/sanity_study.py " + " ".join(argv if argv is not None else sys.argv[1:])
    date = time.strftime("%Y-%m-%d", time.gmtime())
    out = Path(args.out) if args.out else HERE / "results" / f"{date}-cpu-sanity.md"
    record = {"machine": machine, "command": command, "seeds": args.seeds, "timed_seeds": len(timed),
              "peer_layers": args.peer_layers, "images": len(x), "layers": n_layers,
              "relprop_seconds_timed": {k: v[0] for k, v in rel.items()}, "relprop_reuse": {k: v[1] for k, v in rel.items()},
              "relprop_originals_seconds": originals, "relprop_total_seconds": rel_total,
              "relprop_method_seconds_timed": {k: v[2].method_seconds for k, v in rel.items()},
              "relprop_reuse_bytes": rel["cascading"][2].params.get("reuse_bytes"),
              "peer_timed": {"|".join(k): v for k, v in peer.items()}, "peer_per_method_seconds": per_method,
              "peer_total_seconds_one_call_per_mode": peer_total,
              "peer_total_seconds_one_call_per_measure": peer_total_2,
              "ratio_one_call_per_mode": peer_total / rel_total, "ratio_one_call_per_measure": peer_total_2 / rel_total}
    out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [f"# Sanity-check study on W1: relprop vs Captum/Zennit + Quantus MPRT ({date})", "",
             f"Command: `{command}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), "",
             f"Study: W1, {len(x)} images, {n_layers} weight layers, cascading + independent, {args.seeds} seeds, "
             f"8 methods (IG 32 steps), SSIM and Spearman(|R|).", "",
             f"relprop timed over {len(timed)} seed(s) with all layers "
             f"(cascading {rel['cascading'][0]:.1f} s, independent {rel['independent'][0]:.1f} s; forward nodes "
             f"reused/computed: cascading {rel['cascading'][1]}, independent {rel['independent'][1]}); originals "
             f"{originals:.1f} s; forward-reuse budget {rel['cascading'][2].params.get('reuse_bytes', 0) / 2**30:.1f} GiB "
             f"(max_memory='auto'); full study extrapolated to {args.seeds} seeds: **{rel_total:.0f} s**.", "",
             f"Peers: Quantus MPRT (SSIM) timed on the top {args.peer_layers} layers per (method, mode), "
             f"extrapolated to {n_layers} layers x {args.seeds} seeds: **{peer_total_2:.0f} s** with one MPRT call "
             f"per measure (Quantus takes one similarity_func per call: how the study is written with it), "
             f"{peer_total:.0f} s if both measures came from one call per mode (a lower bound).", "",
             f"**Ratio (peer time / relprop time): {peer_total_2 / rel_total:.2f}x** as written with Quantus, "
             f"{peer_total / rel_total:.2f}x against the lower bound (target >= 10x).", "",
             "| method | peer: one original explanation (s) | peer: study, one call per mode (s, extrapolated) |",
             "|---|---|---|"]
    lines += [f"| {k} | {v[0]:.2f} | {v[1]:.0f} |" for k, v in per_method.items()]
    lines += ["", "relprop, seconds per method in the timed studies (both modes, originals included; the extrapolation "
              "counts each mode's original explanation once):", "",
              "| method | relprop seconds (timed) | relprop, study extrapolated (s) | peer / relprop, lower bound |",
              "|---|---|---|---|"]
    for label in METHODS:
        t = sum(v[2].method_seconds[label] for v in rel.values())
        orig = sum(v[2].original_seconds[label] for v in rel.values())  # once per mode, not per seed
        full = orig + (t - orig) * args.seeds / len(timed)
        lines.append(f"| {label} | {t:.1f} | {full:.0f} | {per_method[label][1] / full:.2f}x |")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _ssim(a, b, batched=False, **kw):
    """quantus.ssim, returning an array: in Quantus 0.6 its batched form returns a list, on which
    MPRT calls ``.tolist()`` (AttributeError) -- MPRT cannot use quantus.ssim unwrapped."""
    import quantus

    return np.asarray(quantus.ssim(a, b, batched=batched, **kw))


def _peer_original(f, model, x, y):
    t0 = time.perf_counter()
    f(model, x, y)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
