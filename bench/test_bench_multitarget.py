"""Multi-target benchmark (issue 3): all 200 classes of W1 for 4 images.

relprop: one call with ``targets="all"`` (one forward pass, the 200 backward passes batched).
Peers do the same the way their APIs allow: one attribution per class (Zennit EpsilonPlusFlat;
Captum Saliency = plain gradient, compared with relprop "gradient").
Groups "W1x200 <method>"; 1 timed round each (the peers take tens of seconds).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import models as M

IMAGES = 4
WORKLOAD = "W1x200"


@pytest.fixture(scope="module")
def mt(relprop_mod):
    params = M.w1_params()
    x = M.w1_input()[:IMAGES]
    return SimpleNamespace(x=x, torch=M.w1_torch(params), net=M.w1_relprop(params), rp=relprop_mod)


def _info(benchmark, method, impl, peer):
    benchmark.group = f"{WORKLOAD} {method}"
    benchmark.extra_info.update(workload=WORKLOAD, method=method, impl=impl, peer=peer,
                                items=IMAGES * M.W1_CLASSES, unit="image-classes", batch=IMAGES, rounds=1)


def _peer(mt, method):
    import torch

    x, model = mt.x, mt.torch
    out = np.empty((IMAGES, M.W1_CLASSES) + x.shape[1:], np.float32)
    if method == "gradient":
        from captum.attr import Saliency

        sal = Saliency(model)
        for c in range(M.W1_CLASSES):
            out[:, c] = sal.attribute(torch.from_numpy(x), target=c, abs=False).numpy()
        return out
    from zennit.attribution import Gradient

    with Gradient(model=model, composite=M.zennit_composite("EpsilonPlusFlat")) as att:
        for c in range(M.W1_CLASSES):
            out[:, c] = M.zennit_lrp(att, x, np.full(IMAGES, c), M.W1_CLASSES)
    return out


PEER = {}
CASES = [("gradient", "Captum Saliency, one call per class"), ("EpsilonPlusFlat", "Zennit EpsilonPlusFlat, one call per class")]


@pytest.mark.parametrize("method,peer", CASES, ids=[m for m, _ in CASES])
@pytest.mark.parametrize("impl", ["peer", "relprop"])
def test_multitarget(benchmark, mt, method, peer, impl):
    _info(benchmark, method, impl, peer)
    if impl == "peer":
        out = benchmark.pedantic(lambda: _peer(mt, method), rounds=1, iterations=1, warmup_rounds=0)
        PEER[method] = out
    else:
        rp = mt.rp
        kw = {"rules": rp.composites.EpsilonPlusFlat()} if method == "EpsilonPlusFlat" else {}
        name = "lrp" if kw else "gradient"
        rp.attribute(mt.net, mt.x[:1], name, targets=[0, 1], **kw)  # compile
        out = benchmark.pedantic(lambda: rp.attribute(mt.net, mt.x, name, targets="all", **kw), rounds=1,
                                 iterations=1, warmup_rounds=0)
        if method in PEER:
            benchmark.extra_info["rel_err_vs_peer"] = M.rel_err(out, PEER[method])
    assert out.shape == (IMAGES, M.W1_CLASSES) + mt.x.shape[1:]
