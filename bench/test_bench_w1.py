"""W1 benchmark: VGG-16 variant for Tiny-ImageNet inputs (64x64x3, 10 conv + FC 2048-2048-200), batch 16.

relprop and its peer run side by side in one process; each workload/method is one
pytest-benchmark group ("W1 <method>") with the peer case first, then relprop.

    peer                                  relprop
    torch input gradient (autograd)       attribute(net, x, "gradient")
    Zennit Epsilon on every layer         attribute(net, x, "lrp.epsilon")
    Zennit EpsilonPlusFlat                attribute(net, x, "lrp", rules=composites.EpsilonPlusFlat())
    Zennit EpsilonGammaBox(-3, 3)         attribute(net, x, "lrp", rules=composites.EpsilonGammaBox(-3, 3))
    Zennit EpsilonAlpha2Beta1             attribute(net, x, "lrp", rules=composites.EpsilonAlpha2Beta1())
    Captum IntegratedGradients n_steps=32 attribute(net, x, "integrated_gradients", steps=32)
      (gausslegendre, internal_batch_size=16: one IG step of the whole batch per chunk; the fastest
       setting measured on the 2-core box -- 16 > 64 > 128 > 256 > unchunked 512)

Targets are the argmax classes of the torch forward pass, passed explicitly to both sides.
Every case gets one untimed warm-up round (Numba compilation for relprop, allocator/oneDNN
warm-up for torch); for IG(32) the warm-up is the same call on 2 images (Numba compiles per
dtype/rank, not per shape), and IG is timed over 2 rounds, to keep the suite near 15 minutes. ``extra_info`` carries what report.py needs (items per call, unit, peer name)
and, for relprop, ``rel_err_vs_peer`` = ||R_relprop - R_peer|| / ||R_peer|| of the last round.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

import models as M

ROUNDS = int(os.environ.get("RELPROP_BENCH_ROUNDS_W1", "3"))
ROUNDS_IG = int(os.environ.get("RELPROP_BENCH_ROUNDS_W1_IG", "2"))  # IG(32) is ~30 s+ per round
WARMUP_IG_IMAGES = 2  # IG warm-up on 2 images: Numba compiles per dtype/rank, not per shape
IG_STEPS = 32
CAPTUM_INTERNAL_BATCH = 16
WORKLOAD = "W1"

# (method key, peer label)
METHODS = [
    ("gradient", "torch input-gradient"),
    ("lrp.epsilon", "Zennit Epsilon (all layers)"),
    ("EpsilonPlusFlat", "Zennit EpsilonPlusFlat"),
    ("EpsilonGammaBox", "Zennit EpsilonGammaBox(-3,3)"),
    ("EpsilonAlpha2Beta1", "Zennit EpsilonAlpha2Beta1"),
    ("IG32", "Captum IG(32)"),
]
PEER_OUT: dict = {}  # method -> peer attribution of the last timed round (for the agreement check)


@pytest.fixture(scope="module")
def w1():
    params = M.w1_params()
    x = M.w1_input()
    tm = M.w1_torch(params)
    return SimpleNamespace(params=params, x=x, torch=tm, target=M.torch_targets(tm, x), workload=WORKLOAD,
                           classes=M.W1_CLASSES)


@pytest.fixture(scope="module")
def w1_rp(w1, relprop_mod):
    return M.w1_relprop(w1.params)


def _info(benchmark, method, impl, peer, x, workload=WORKLOAD):
    benchmark.group = f"{workload} {method}"
    benchmark.extra_info.update(
        workload=workload, method=method, impl=impl, peer=peer, items=int(len(x)),
        unit="images", batch=int(len(x)), rounds=ROUNDS_IG if method == "IG32" else ROUNDS)


def _pedantic(benchmark, method, fn, warmup_small=None):
    """Time ``fn()``. Warm-up: one full untimed call, except for IG(32) where ``warmup_small()``
    (the same call on 2 images) is run instead to keep the suite within its time budget."""
    if method == "IG32":
        warmup_small()
        return benchmark.pedantic(fn, rounds=ROUNDS_IG, iterations=1, warmup_rounds=0)
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


# Interleaved: peer then relprop for each method, so both sides of a group are timed close together.
CASES = [(m, p, impl) for m, p in METHODS for impl in ("peer", "relprop")]


@pytest.mark.parametrize("method,peer,impl", CASES, ids=[f"{m}-{i}" for m, _, i in CASES])
def test_w1(benchmark, request, w1, method, peer, impl):
    if impl == "peer":
        run_peer(benchmark, w1, method, peer)
    else:
        rp = request.getfixturevalue("relprop_mod")
        run_relprop(benchmark, w1, rp, request.getfixturevalue("w1_rp"), method, peer)


def run_peer(benchmark, w1, method, peer):
    x, t, model = w1.x, w1.target, w1.torch
    _info(benchmark, method, "peer", peer, x, w1.workload)
    if method == "gradient":
        out = _pedantic(benchmark, method, lambda: M.torch_input_gradient(model, x, t))
    elif method == "IG32":
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(model)
        ib = getattr(w1, "captum_internal_batch", CAPTUM_INTERNAL_BATCH)
        benchmark.extra_info["internal_batch_size"] = ib
        n = WARMUP_IG_IMAGES
        out = _pedantic(benchmark, method, lambda: M.captum_ig(ig, x, t, IG_STEPS, ib),
                        lambda: M.captum_ig(ig, x[:n], t[:n], IG_STEPS, ib))
    else:
        from zennit.attribution import Gradient

        comp = M.zennit_composite(method, batch=len(x), low=-3.0, high=3.0, shape=x.shape[1:])
        with Gradient(model=model, composite=comp) as attributor:
            out = _pedantic(benchmark, method, lambda: M.zennit_lrp(attributor, x, t, w1.classes))
    assert out.shape == x.shape and np.isfinite(out).all()
    PEER_OUT[method] = out


def relprop_call(rp, method):
    """(method string, kwargs) for relprop.attribute."""
    if method == "gradient":
        return "gradient", {}
    if method == "lrp.epsilon":
        return "lrp.epsilon", {}
    if method == "EpsilonPlusFlat":
        return "lrp", {"rules": rp.composites.EpsilonPlusFlat()}
    if method == "EpsilonGammaBox":
        return "lrp", {"rules": rp.composites.EpsilonGammaBox(low=-3.0, high=3.0)}
    if method == "EpsilonAlpha2Beta1":
        return "lrp", {"rules": rp.composites.EpsilonAlpha2Beta1()}
    if method == "IG32":
        return "integrated_gradients", {"steps": IG_STEPS}
    raise ValueError(method)


def run_relprop(benchmark, w1, rp, w1_rp, method, peer):
    x, t = w1.x, w1.target
    name, kw = relprop_call(rp, method)
    _info(benchmark, method, "relprop", peer, x, w1.workload)
    n = WARMUP_IG_IMAGES
    out = _pedantic(benchmark, method, lambda: rp.attribute(w1_rp, x, name, target=t, **kw),
                    lambda: rp.attribute(w1_rp, x[:n], name, target=t[:n], **kw))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.isfinite(out).all()
    if method in PEER_OUT:
        benchmark.extra_info["rel_err_vs_peer"] = M.rel_err(out, PEER_OUT[method])
