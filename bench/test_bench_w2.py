"""W2 benchmark: tabular MLP 14-64-64-2 (ReLU) over 100,000 standardized rows.

Each case attributes a fixed set of rows, processed in chunks of ``batch`` rows (a Python loop
over chunks is part of the timed call). Groups "W2 <method>" hold the peer and relprop cases:

    method           peer                                            relprop
    gradient         torch autograd, batch 10,000 and 100,000        batch 10,000 and 100,000
    lrp.epsilon      Zennit Epsilon (all layers), batch 10,000       batch 10,000 and 100,000
    EpsilonPlusFlat  Zennit EpsilonPlusFlat, batch 10,000            batch 10,000 and 100,000
    IG32             Captum IG n_steps=32 (gausslegendre), batch     batch 10,000 and 100,000
                     1,000 unchunked internally (32,000 rows per
                     pass), on the first 10,000 rows only -- Captum
                     runs at ~5k rows/s, 100,000 rows would take ~20 s
                     per round

(The conv-only composites EpsilonGammaBox / EpsilonAlpha2Beta1 reduce to Epsilon on an MLP and
are not repeated here.) Throughput = rows attributed / seconds. One untimed warm-up round each.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

import models as M

ROUNDS = int(os.environ.get("RELPROP_BENCH_ROUNDS_W2", "5"))
ROUNDS_CAPTUM = int(os.environ.get("RELPROP_BENCH_ROUNDS_W2_CAPTUM", "3"))
IG_STEPS = 32
WORKLOAD = "W2"
ROWS = M.W2_ROWS
CAPTUM_ROWS = 10_000
CAPTUM_BATCH = 1_000

PEERS = {
    "gradient": "torch input-gradient",
    "lrp.epsilon": "Zennit Epsilon (all layers)",
    "EpsilonPlusFlat": "Zennit EpsilonPlusFlat",
    "IG32": "Captum IG(32)",
}
# (method, impl, batch, rows), peer cases first within each method
CASES = [
    ("gradient", "peer", 10_000, ROWS),
    ("gradient", "peer", 100_000, ROWS),
    ("gradient", "relprop", 10_000, ROWS),
    ("gradient", "relprop", 100_000, ROWS),
    ("lrp.epsilon", "peer", 10_000, ROWS),
    ("lrp.epsilon", "relprop", 10_000, ROWS),
    ("lrp.epsilon", "relprop", 100_000, ROWS),
    ("EpsilonPlusFlat", "peer", 10_000, ROWS),
    ("EpsilonPlusFlat", "relprop", 10_000, ROWS),
    ("EpsilonPlusFlat", "relprop", 100_000, ROWS),
    ("IG32", "peer", CAPTUM_BATCH, CAPTUM_ROWS),
    ("IG32", "relprop", 10_000, ROWS),
    ("IG32", "relprop", 100_000, ROWS),
]
PEER_OUT: dict = {}  # method -> peer attribution of its rows (last timed round)


@pytest.fixture(scope="module")
def w2():
    params = M.w2_params()
    x = M.w2_input()
    tm = M.w2_torch(params)
    return SimpleNamespace(params=params, x=x, torch=tm, target=M.torch_targets(tm, x, chunk=10_000))


@pytest.fixture(scope="module")
def w2_rp(w2, relprop_mod):
    return M.w2_relprop(w2.params)


def _chunked(fn, x, t, batch):
    out = np.empty_like(x)
    for i in range(0, len(x), batch):
        out[i:i + batch] = fn(x[i:i + batch], t[i:i + batch])
    return out


@pytest.mark.parametrize(
    "method,impl,batch,rows", CASES, ids=[f"{m}-{i}-b{b}" for m, i, b, _ in CASES])
def test_w2(benchmark, request, w2, method, impl, batch, rows):
    x, t = w2.x[:rows], w2.target[:rows]
    rounds = ROUNDS_CAPTUM if (impl == "peer" and method == "IG32") else ROUNDS
    benchmark.group = f"{WORKLOAD} {method}"
    benchmark.extra_info.update(
        workload=WORKLOAD, method=method, impl=impl, peer=PEERS[method], items=int(rows),
        unit="rows", batch=int(batch), rounds=rounds)

    if impl == "peer":
        model = w2.torch
        if method == "gradient":
            fn = lambda xb, tb: M.torch_input_gradient(model, xb, tb)  # noqa: E731
            out = benchmark.pedantic(_chunked, args=(fn, x, t, batch), rounds=rounds, warmup_rounds=1)
        elif method == "IG32":
            from captum.attr import IntegratedGradients

            ig = IntegratedGradients(model)
            fn = lambda xb, tb: M.captum_ig(ig, xb, tb, IG_STEPS, None)  # noqa: E731
            out = benchmark.pedantic(_chunked, args=(fn, x, t, batch), rounds=rounds, warmup_rounds=1)
        else:
            from zennit.attribution import Gradient

            with Gradient(model=model, composite=M.zennit_composite(method)) as attributor:
                fn = lambda xb, tb: M.zennit_lrp(attributor, xb, tb, M.W2_CLASSES)  # noqa: E731
                out = benchmark.pedantic(_chunked, args=(fn, x, t, batch), rounds=rounds, warmup_rounds=1)
        assert np.isfinite(out).all()
        if batch == 10_000 or method not in PEER_OUT:
            PEER_OUT[method] = out
        return

    rp = request.getfixturevalue("relprop_mod")
    net = request.getfixturevalue("w2_rp")
    if method == "gradient":
        name, kw = "gradient", {}
    elif method == "lrp.epsilon":
        name, kw = "lrp.epsilon", {}
    elif method == "EpsilonPlusFlat":
        name, kw = "lrp", {"rules": rp.composites.EpsilonPlusFlat()}
    elif method == "IG32":
        name, kw = "integrated_gradients", {"steps": IG_STEPS}
    fn = lambda xb, tb: rp.attribute(net, xb, name, target=tb, **kw)  # noqa: E731
    out = benchmark.pedantic(_chunked, args=(fn, x, t, batch), rounds=rounds, warmup_rounds=1)
    assert np.isfinite(out).all()
    if method in PEER_OUT:
        ref = PEER_OUT[method]
        benchmark.extra_info["rel_err_vs_peer"] = M.rel_err(out[:len(ref)], ref)
