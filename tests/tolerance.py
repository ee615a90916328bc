"""What "the same result" means for floats that went through differently shaped BLAS calls.

OpenBLAS picks GEMM kernels by CPU (and ``OPENBLAS_CORETYPE``) and rounds a row differently
depending on which block it lands in, so a batch of N*K rows and a batch of N rows need not
agree bit for bit. What is guaranteed is agreement to a few ulps of the result's scale:
float64 to 1e-12 x max|R|, float32 to 1e-5 x max|R|.
"""
import numpy as np

SCALE_TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def assert_blas_close(actual, expected, tol=None):
    """``actual`` equals ``expected`` up to BLAS rounding, relative to max|expected|."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    t = SCALE_TOL[expected.dtype] if tol is None else tol
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    err = float(np.max(np.abs(actual.astype(np.float64) - expected))) if expected.size else 0.0
    assert err <= t * max(scale, np.finfo(expected.dtype).tiny), f"max abs diff {err:.3g} > {t:g} x max|R| {scale:.3g}"


def assert_close_per_sample(actual, expected, rtol, what="", floor=1e-30):
    """Per sample: max |actual - expected| <= rtol * max |expected| (scale at least ``floor``)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    for i in range(len(expected)):
        scale = max(float(np.abs(expected[i]).max()), floor)
        err = float(np.abs(actual[i] - expected[i]).max())
        assert err <= rtol * scale, f"{what} sample {i}: max|diff| {err:.3g} > {rtol:g} x {scale:.3g}"
