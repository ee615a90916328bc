"""ResNet-18 benchmark (issue 4): full-width ResNet-18 (BasicBlock, widths 64-128-256-512,
1000 classes, random BatchNorm statistics) at 64x64 and 224x224, batch 8, imported with
``rp.from_torch`` (BatchNorm folded by ``rp.canonize``).

    peer                                              relprop
    torch input gradient (autograd)                   attribute(net, x, "gradient")
    Zennit EpsilonPlusFlat + SequentialMergeBatchNorm attribute(net, x, "lrp", rules=EpsilonPlusFlat())
    Zennit EpsilonGammaBox(-3, 3) + merge BN          attribute(net, x, "lrp", rules=EpsilonGammaBox(-3, 3))

The model is the test zoo's ResNet (tests/torch_models.py) with ``zennit.layer.Sum`` residuals,
so Zennit's composites see the additions. Groups "R18-<size> <method>", peer first.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import models as M

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

ROUNDS = int(os.environ.get("RELPROP_BENCH_ROUNDS_R18", "3"))
BATCH = 8
SIZES = (64, 224)
METHODS = [
    ("gradient", "torch input-gradient"),
    ("EpsilonPlusFlat", "Zennit EpsilonPlusFlat"),
    ("EpsilonGammaBox", "Zennit EpsilonGammaBox(-3,3)"),
]
PEER_OUT: dict = {}


@pytest.fixture(scope="module", params=SIZES, ids=[f"{s}px" for s in SIZES])
def r18(request, relprop_mod):
    import torch
    import torch_models as TM

    size = request.param
    model = TM.ResNet(TM.BasicBlock, [2, 2, 2, 2], widths=(64, 128, 256, 512), n_classes=1000, faithful=False)
    model = TM.init_model(model, (3, size, size), seed=0).float().eval()
    rng = np.random.default_rng(size)
    x = np.clip(rng.standard_normal((BATCH, 3, size, size)), -2.9, 2.9).astype(np.float32)
    net = relprop_mod.from_torch(model, x[:2])
    with torch.no_grad():
        target = model(torch.from_numpy(x)).argmax(1).numpy()
    return SimpleNamespace(size=size, model=model, net=net, x=x, target=target, rp=relprop_mod)


def _info(benchmark, r, method, impl, peer):
    wl = f"R18-{r.size}"
    benchmark.group = f"{wl} {method}"
    benchmark.extra_info.update(workload=wl, method=method, impl=impl, peer=peer, items=BATCH, unit="images",
                                batch=BATCH, rounds=ROUNDS)


def _zennit(method):
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat

    if method == "EpsilonPlusFlat":
        return EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    return EpsilonGammaBox(low=-3.0, high=3.0, canonizers=[SequentialMergeBatchNorm()])


CASES = [(m, p, impl) for m, p in METHODS for impl in ("peer", "relprop")]


@pytest.mark.parametrize("method,peer,impl", CASES, ids=[f"{m}-{i}" for m, _, i in CASES])
def test_r18(benchmark, r18, method, peer, impl):
    r = r18
    _info(benchmark, r, method, impl, peer)
    key = (r.size, method)
    if impl == "peer":
        if method == "gradient":
            out = benchmark.pedantic(lambda: M.torch_input_gradient(r.model, r.x, r.target), rounds=ROUNDS,
                                     iterations=1, warmup_rounds=1)
        else:
            from zennit.attribution import Gradient

            with Gradient(model=r.model, composite=_zennit(method)) as att:
                out = benchmark.pedantic(lambda: M.zennit_lrp(att, r.x, r.target, 1000), rounds=ROUNDS,
                                         iterations=1, warmup_rounds=1)
        PEER_OUT[key] = out
    else:
        rp = r.rp
        kw = {} if method == "gradient" else {
            "rules": rp.composites.EpsilonPlusFlat() if method == "EpsilonPlusFlat"
            else rp.composites.EpsilonGammaBox(low=-3.0, high=3.0)}
        name = "gradient" if method == "gradient" else "lrp"
        out = benchmark.pedantic(lambda: rp.attribute(r.net, r.x, name, target=r.target, **kw), rounds=ROUNDS,
                                 iterations=1, warmup_rounds=1)
        if key in PEER_OUT:
            benchmark.extra_info["rel_err_vs_peer"] = M.rel_err(out, PEER_OUT[key])
    assert out.shape == r.x.shape and np.isfinite(out).all()
