"""Grouped (not depthwise) convolutions run one convolution per group with its compact weight in
the forward and gradient passes (``relprop.core.linear.grouped_conv``), and the dense
block-diagonal GEMM everywhere else (LRP's rule steps): both ways give torch's numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import relprop as rp
from relprop.core import linear

from tolerance import assert_blas_close

CASES = [  # (N, C, O, H, k, stride, padding, dilation, groups)
    (3, 16, 16, 9, 3, 1, 1, 1, 4), (3, 12, 24, 10, 3, 2, 1, 1, 3), (2, 8, 8, 12, 5, 1, 2, 2, 2),
    (2, 16, 32, 8, 1, 1, 0, 1, 8), (2, 32, 64, 6, 3, 1, 1, 1, 2)]


def _model(case, dtype):
    n, c, o, h, k, s, p, d, g = case
    torch.manual_seed(sum(case))
    m = torch.nn.Sequential(torch.nn.Conv2d(c, o, k, s, p, d, g), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.LazyLinear(5)).to(dtype)
    x = torch.randn(n, c, h, h, dtype=dtype)
    m(x)
    return m, x


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("case", CASES)
def test_reference_grouped_forward_and_gradient_match_torch(case, dtype, tol, monkeypatch):
    m, x = _model(case, dtype)
    net = rp.from_torch(m, x)
    calls = []
    real = linear.grouped_conv
    monkeypatch.setattr(linear, "grouped_conv", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    xt = x.clone().requires_grad_(True)
    y = m(xt)
    y[:, 2].sum().backward()
    got_y = rp.forward(net, x.numpy())
    got_g = rp.attribute(net, x.numpy(), "gradient", target=2)
    assert len(calls) >= 2 if case[5] == 1 else len(calls) >= 1, calls  # forward, and the stride-1 backward
    ref_y, ref_g = y.detach().numpy(), xt.grad.numpy()
    assert np.max(np.abs(got_y - ref_y)) <= tol * np.max(np.abs(ref_y))
    assert np.max(np.abs(got_g - ref_g)) <= tol * np.max(np.abs(ref_g))


@pytest.mark.parametrize("method,kw", [("gradient", {}), ("integrated_gradients", {"steps": 4}),
                                       ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}), ("deeplift.rescale", {})])
def test_reference_grouped_path_equals_the_dense_gemm(method, kw, monkeypatch):
    """The same attributions with the per-group path switched off (dense block-diagonal GEMMs)."""
    m, x = _model(CASES[0], torch.float64)
    net = rp.from_torch(m, x)
    xn = x.numpy()
    on = rp.attribute(net, xn, method, target=1, **kw)
    monkeypatch.setattr(linear, "group_blocks", lambda *a: None)
    off = rp.attribute(rp.from_torch(m, x), xn, method, target=1, **kw)
    assert_blas_close(on, off)
