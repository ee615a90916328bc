"""C10 benchmark: a CIFAR-10-shaped CNN (3x32x32; conv32-conv32-pool-conv64-conv64-pool-fc256-fc10,
He init, float32), batch 256: the small CNN users bring. The same methods, peers and timing
rules as W1 (``test_bench_w1.py``, whose runners this module reuses).
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import models as M
import test_bench_w1 as W

WORKLOAD = "C10"


@pytest.fixture(scope="module")
def c10():
    params = M.c10_params()
    x = M.c10_input()
    tm = M.c10_torch(params)
    # Captum IG: one path step of the whole batch per chunk (as W1's setting of 16 = its batch)
    return SimpleNamespace(params=params, x=x, torch=tm, target=M.torch_targets(tm, x), workload=WORKLOAD,
                           classes=M.C10_CLASSES, captum_internal_batch=M.C10_BATCH)


@pytest.fixture(scope="module")
def c10_rp(c10, relprop_mod):
    return M.c10_relprop(c10.params)


@pytest.mark.parametrize("method,peer,impl", W.CASES, ids=[f"{m}-{i}" for m, _, i in W.CASES])
def test_c10(benchmark, request, c10, method, peer, impl):
    if impl == "peer":
        W.run_peer(benchmark, c10, method, peer)
    else:
        rp = request.getfixturevalue("relprop_mod")
        W.run_relprop(benchmark, c10, rp, request.getfixturevalue("c10_rp"), method, peer)
