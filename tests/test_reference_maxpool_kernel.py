"""The CPU max-pool forward kernel against torch's ``max_pool2d(return_indices=True)``: values and
winner positions, for the 2x2 / stride-2 fast path and the general path, with exact ties (torch
and relprop take the first maximum in row-major window order) and NaNs (a NaN wins its window)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relprop.core.backend import kernels_for

cpu = kernels_for(np.zeros(1))


def run(x, k, s, p):
    ho = (x.shape[2] + 2 * p - k) // s + 1
    wo = (x.shape[3] + 2 * p - k) // s + 1
    out = np.empty(x.shape[:2] + (ho, wo), x.dtype)
    idx = np.empty(out.shape, np.int64)
    cpu.maxpool_forward(x, k, k, s, s, p, p, out, idx)
    return out, idx


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 2, 7, 9), (3, 64, 32, 32), (1, 1, 2, 2), (2, 4, 5, 4)])
@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_reference_maxpool_matches_torch(dtype, shape, k, s, p):
    if shape[2] + 2 * p < k or shape[3] + 2 * p < k:
        pytest.skip("window larger than the padded map")
    rng = np.random.default_rng(sum(shape) + k)
    x = rng.integers(-3, 4, size=shape).astype(dtype)  # small integers: many exact ties
    x.flat[rng.choice(x.size, size=max(1, x.size // 50), replace=False)] = np.nan
    out, idx = run(x, k, s, p)
    want, want_idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, return_indices=True)
    np.testing.assert_array_equal(out, want.numpy())  # NaN == NaN here
    np.testing.assert_array_equal(idx, want_idx.numpy())


def test_reference_maxpool_several_nans_in_a_window():
    """Of several NaNs in one window the last (row-major) wins, as in torch; a NaN beats +inf."""
    x = np.array([[[[np.nan, 1.0, 2.0, np.inf], [3.0, np.nan, np.nan, 0.0], [-np.inf, -np.inf, 5.0, 5.0],
                    [-np.inf, -np.inf, 5.0, 4.0]]]], np.float32)
    for k, s, p in ((2, 2, 0), (3, 1, 1), (2, 1, 0)):
        out, idx = run(x, k, s, p)
        want, want_idx = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, return_indices=True)
        np.testing.assert_array_equal(out, want.numpy())
        np.testing.assert_array_equal(idx, want_idx.numpy())
