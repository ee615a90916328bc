"""SmoothGrad benchmark (issue 3): W1 (batch 16) and W2 (10,000 rows), 16 noisy samples each.

relprop: attribute(..., "smoothgrad", base="gradient", samples=16, sigma=0.15) -- the 16 copies
of the batch run as one batch. Peer: Captum NoiseTunnel(Saliency(abs=False)), nt_samples=16,
nt_samples_batch_size=16 (W1) / 4 (W2), stdevs = 0.15 * the batch's value range.
"""
from __future__ import annotations

import numpy as np
import pytest

import models as M

SAMPLES = 16


@pytest.fixture(scope="module", params=["W1", "W2"])
def wl(request, relprop_mod):
    if request.param == "W1":
        params = M.w1_params()
        x, tm, net, unit = M.w1_input(), M.w1_torch(params), M.w1_relprop(params), "images"
    else:
        params = M.w2_params()
        x, tm, net, unit = M.w2_input(rows=10_000), M.w2_torch(params), M.w2_relprop(params), "rows"
    return request.param, x, tm, net, unit, M.torch_targets(tm, x), relprop_mod


@pytest.mark.parametrize("impl", ["peer", "relprop"])
def test_smoothgrad(benchmark, wl, impl):
    name, x, tm, net, unit, t, rp = wl
    benchmark.group = f"{name} smoothgrad(16)"
    benchmark.extra_info.update(workload=name, method="smoothgrad16", impl=impl, items=len(x), unit=unit,
                                batch=len(x), rounds=2,
                                peer="Captum NoiseTunnel(Saliency), nt_samples=16")
    if impl == "peer":
        import torch
        from captum.attr import NoiseTunnel, Saliency

        nt = NoiseTunnel(Saliency(tm))
        sd = float(0.15 * (x.max() - x.min()))
        bs = 16 if name == "W1" else 4

        def run():
            return nt.attribute(torch.from_numpy(x), nt_type="smoothgrad", nt_samples=SAMPLES, stdevs=sd,
                                nt_samples_batch_size=bs, target=torch.from_numpy(t), abs=False).numpy()
    else:
        def run():
            return rp.attribute(net, x, "smoothgrad", base="gradient", samples=SAMPLES, sigma=0.15, seed=0, target=t)
    out = benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)
    assert out.shape == x.shape and np.isfinite(out).all()
