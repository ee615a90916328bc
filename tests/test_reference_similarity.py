"""Similarity measures of relprop.evaluate.similarity against independent implementations.

References: ``skimage.metrics.structural_similarity`` and ``skimage.feature.hog`` called per map in
a loop, ``scipy.stats.spearmanr`` / ``pearsonr`` per row, a plain-Python set intersection for
top-k, and Quantus 0.6's ``similarity_func`` on the same inputs.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
from scipy.ndimage import uniform_filter
from skimage.feature import hog
from skimage.metrics import structural_similarity

from relprop.evaluate import similarity as sim

RNG_SEED = 1234


def _own_range(x, y):
    """Quantus 0.6's per-pair data range, written out independently."""
    return float(max(x.max(), y.max()) - min(x.min(), y.min()))


def _skimage_ssim_stack(a, b, **kw):
    """skimage SSIM per 2-D map of a (..., H, W) stack, one call per map."""
    data_range = kw.pop("data_range", None)
    lead = a.shape[:-2]
    fa = a.reshape((-1,) + a.shape[-2:]).astype(np.float64)
    fb = b.reshape((-1,) + b.shape[-2:]).astype(np.float64)
    out = []
    for x, y in zip(fa, fb):
        r = _own_range(x, y) if data_range is None else data_range
        out.append(structural_similarity(x, y, data_range=r, **kw))
    return np.array(out, dtype=np.float64).reshape(lead)


def _correlated_pair(rng, shape, noise=1.0):
    a = rng.normal(size=shape)
    return a, a + noise * rng.normal(size=shape)


# --------------------------------------------------------------------------------------------
# SSIM
# --------------------------------------------------------------------------------------------


def _ssim_cases():
    rng = np.random.default_rng(RNG_SEED)
    cases = []
    for i in range(24):
        win = [3, 5, 7, 11][i % 4]
        gaussian = bool((i // 4) % 2)
        h = int(rng.integers(win, win + 14))
        w = int(rng.integers(win, win + 14))
        lead = [(), (3,), (2, 3)][i % 3]
        explicit = i % 5 in (1, 3)
        cases.append((lead + (h, w), win, gaussian, explicit, i))
    # the extremes: maps exactly one window wide, and odd/even sides
    cases += [((4, 3, 3), 3, False, False, 100), ((2, 11, 11), 11, True, True, 101),
              ((2, 8, 9), 7, True, False, 102), ((2, 10, 12), 5, False, True, 103)]
    return cases


@pytest.mark.parametrize("shape,win,gaussian,explicit,seed", _ssim_cases())
def test_reference_ssim_matches_skimage_per_map(shape, win, gaussian, explicit, seed):
    rng = np.random.default_rng(seed)
    a, b = _correlated_pair(rng, shape, noise=float(rng.uniform(0.2, 2.0)))
    kw = dict(win_size=win, gaussian_weights=gaussian, sigma=float(rng.uniform(0.8, 2.0)))
    if explicit:
        kw["data_range"] = float(rng.uniform(0.5, 10.0))
    got = sim.ssim(a, b, **kw)
    want = _skimage_ssim_stack(a, b, **kw)
    assert got.shape == shape[:-2] and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_reference_ssim_single_map_is_0d():
    rng = np.random.default_rng(1)
    a, b = _correlated_pair(rng, (16, 13))
    got = sim.ssim(a, b)
    assert isinstance(got, np.ndarray) and got.shape == ()
    np.testing.assert_allclose(got, structural_similarity(a, b, data_range=_own_range(a, b)), atol=1e-9)


@pytest.mark.parametrize("gaussian", [False, True])
def test_reference_ssim_win_size_none_is_skimage_default(gaussian):
    rng = np.random.default_rng(2)
    a, b = _correlated_pair(rng, (3, 15, 14))
    got = sim.ssim(a, b, win_size=None, gaussian_weights=gaussian, data_range=4.0)
    want = [structural_similarity(x, y, data_range=4.0, gaussian_weights=gaussian) for x, y in zip(a, b)]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_reference_ssim_float32_input_is_computed_in_float64():
    rng = np.random.default_rng(3)
    a, b = (v.astype(np.float32) for v in _correlated_pair(rng, (4, 12, 12)))
    want = _skimage_ssim_stack(a.astype(np.float64), b.astype(np.float64), win_size=5, data_range=3.0)
    np.testing.assert_allclose(sim.ssim(a, b, win_size=5, data_range=3.0), want, atol=1e-9)


def test_reference_ssim_constant_maps():
    const = np.full((9, 10), 0.7)
    # constant but different maps have a positive own range: computed as skimage does
    a = np.stack([const, const, np.zeros((9, 10))])
    b = np.stack([const + 2.0, -const, np.ones((9, 10))])
    np.testing.assert_allclose(sim.ssim(a, b), _skimage_ssim_stack(a, b, win_size=7), atol=1e-9)
    np.testing.assert_allclose(sim.ssim(a, b, data_range=1.0),
                               _skimage_ssim_stack(a, b, win_size=7, data_range=1.0), atol=1e-9)
    # identical constants: own range 0 -> defined as 1 (skimage gives NaN for the zero map)
    same = np.stack([const, np.zeros((9, 10)), np.full((9, 10), -3.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sim.ssim(same, same.copy())
    np.testing.assert_array_equal(got, [1.0, 1.0, 1.0])
    # ... which is skimage's value for identical constant maps with any positive range
    np.testing.assert_allclose(_skimage_ssim_stack(same, same, win_size=7, data_range=1.0), 1.0, atol=1e-12)


def test_reference_ssim_range_is_per_pair():
    rng = np.random.default_rng(4)
    a, b = _correlated_pair(rng, (2, 12, 12))
    a[1] *= 1000.0  # a very different range in the second pair only
    b[1] *= 1000.0
    np.testing.assert_allclose(sim.ssim(a, b), _skimage_ssim_stack(a, b, win_size=7), atol=1e-9)
    np.testing.assert_allclose(sim.ssim(a, b)[0], sim.ssim(a[:1], b[:1])[0], atol=1e-12)


def test_reference_ssim_identical_maps_is_one():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 2, 11, 12))
    np.testing.assert_allclose(sim.ssim(a, a.copy(), gaussian_weights=True), 1.0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# correlations
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 2), (6, 40), (4, 3, 5, 5)])
@pytest.mark.parametrize("ties", [False, True])
def test_reference_pearson_and_spearman_match_scipy_per_row(shape, ties):
    rng = np.random.default_rng(6)
    a, b = _correlated_pair(rng, shape, noise=0.8)
    if ties:  # few distinct values: many tied ranks (and signed ties for the |.| version)
        a, b = np.round(a * 2) / 2, np.round(b * 2) / 2
        for row in range(shape[0]):  # keep every row non-constant
            a.reshape(shape[0], -1)[row, :2] = [-1.5, 1.0]
            b.reshape(shape[0], -1)[row, :2] = [2.0, -0.5]
    fa, fb = a.reshape(shape[0], -1), b.reshape(shape[0], -1)
    want_p = [scipy.stats.pearsonr(x, y)[0] for x, y in zip(fa, fb)]
    want_s = [scipy.stats.spearmanr(x, y)[0] for x, y in zip(fa, fb)]
    want_sa = [scipy.stats.spearmanr(np.abs(x), np.abs(y))[0] for x, y in zip(fa, fb)]
    got_p, got_s, got_sa = sim.pearson(a, b), sim.spearman(a, b), sim.spearman(a, b, absolute=True)
    for got in (got_p, got_s, got_sa):
        assert got.shape == (shape[0],) and got.dtype == np.float64
    np.testing.assert_allclose(got_p, want_p, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got_sa, want_sa, rtol=0, atol=1e-10)


def test_reference_correlations_of_constant_rows_are_nan_without_warnings():
    rng = np.random.default_rng(7)
    a, b = _correlated_pair(rng, (4, 30))
    a[1] = 0.1  # constant a (its float mean is not exactly 0.1)
    b[2] = 0.0  # constant b
    a_abs = a.copy()
    a_abs[3] = np.where(np.arange(30) % 2, 1.0, -1.0)  # constant only in magnitude
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = sim.pearson(a, b)
        s = sim.spearman(a, b)
        sa = sim.spearman(a_abs, b, absolute=True)
        s_signed = sim.spearman(a_abs, b)
    np.testing.assert_array_equal(np.isnan(p), [False, True, True, False])
    np.testing.assert_array_equal(np.isnan(s), [False, True, True, False])
    np.testing.assert_array_equal(np.isnan(sa), [False, True, True, True])
    assert np.isfinite(s_signed[3])
    # scipy agrees (it warns; the values are what we compare)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(scipy.stats.pearsonr(a[1], b[1])[0])
        assert np.isnan(scipy.stats.spearmanr(a[2], b[2])[0])
    np.testing.assert_allclose(p[[0, 3]], [scipy.stats.pearsonr(a[i], b[i])[0] for i in (0, 3)], atol=1e-10)


def test_reference_pearson_is_scale_robust():
    rng = np.random.default_rng(8)
    a, b = _correlated_pair(rng, (3, 50))
    want = [scipy.stats.pearsonr(x, y)[0] for x, y in zip(a, b)]
    # squares of 1e-200 underflow and of 1e200 overflow in float64 without rescaling
    for scale in (1e-200, 1e200):
        np.testing.assert_allclose(sim.pearson(a * scale, b * scale), want, atol=1e-10)
    np.testing.assert_allclose(sim.pearson(a, a), 1.0, atol=1e-12)
    np.testing.assert_allclose(sim.pearson(a, -a), -1.0, atol=1e-12)


# --------------------------------------------------------------------------------------------
# top-k intersection
# --------------------------------------------------------------------------------------------


def _topk_reference(a_row, b_row, count):
    """Plain-Python top-k by |value|; sorted() is stable, so ties go to the lower index."""
    top_a = sorted(range(len(a_row)), key=lambda i: -abs(float(a_row[i])))[:count]
    top_b = sorted(range(len(b_row)), key=lambda i: -abs(float(b_row[i])))[:count]
    return len(set(top_a) & set(top_b)) / count


@pytest.mark.parametrize("k,count", [(1, 1), (7, 7), (0.1, 6), (0.29, 17), (0.5, 30), (1.0, 60),
                                     (0.001, 1)])
@pytest.mark.parametrize("ties", [False, True])
def test_reference_topk_intersection_matches_set_intersection(k, count, ties):
    rng = np.random.default_rng(9)
    a, b = _correlated_pair(rng, (6, 3, 4, 5), noise=0.7)  # 60 features per sample
    if ties:  # ties in magnitude across signs and values
        a, b = np.round(a), np.round(b)
    got = sim.topk_intersection(a, b, k=k)
    want = [_topk_reference(x, y, count) for x, y in zip(a.reshape(6, -1), b.reshape(6, -1))]
    assert got.shape == (6,) and got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


def test_reference_topk_intersection_extremes():
    rng = np.random.default_rng(10)
    a = rng.normal(size=(4, 20))
    np.testing.assert_array_equal(sim.topk_intersection(a, a * -3.0, k=5), 1.0)  # sign-blind
    np.testing.assert_array_equal(sim.topk_intersection(a, rng.normal(size=(4, 20)), k=1.0), 1.0)
    # disjoint supports
    x = np.zeros((1, 10))
    y = np.zeros((1, 10))
    x[0, :3], y[0, 5:8] = 1.0, 1.0
    np.testing.assert_array_equal(sim.topk_intersection(x, y, k=3), [0.0])


# --------------------------------------------------------------------------------------------
# HOG
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,ppc,cpb,orient", [((3, 28, 28), (8, 8), (3, 3), 9),
                                                  ((2, 2, 20, 17), (4, 4), (2, 2), 6)])
def test_reference_hog_pearson_matches_skimage_hog_and_corrcoef(shape, ppc, cpb, orient):
    rng = np.random.default_rng(11)
    a = rng.normal(size=shape)
    b = uniform_filter(a, size=3, axes=(-2, -1)) + 0.3 * rng.normal(size=shape)
    got = sim.hog_pearson(a, b, orientations=orient, pixels_per_cell=ppc, cells_per_block=cpb)
    kw = dict(orientations=orient, pixels_per_cell=ppc, cells_per_block=cpb)
    want = [np.corrcoef(hog(x, **kw), hog(y, **kw))[0, 1]
            for x, y in zip(a.reshape((-1,) + shape[-2:]), b.reshape((-1,) + shape[-2:]))]
    assert got.shape == shape[:-2]
    np.testing.assert_allclose(got.ravel(), want, rtol=0, atol=1e-10)


def test_reference_hog_pearson_of_constant_map_is_nan():
    rng = np.random.default_rng(12)
    a = rng.normal(size=(2, 24, 24))
    b = a.copy()
    b[1] = 5.0  # zero gradients: an all-zero descriptor
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sim.hog_pearson(a, b)
    np.testing.assert_allclose(got[0], 1.0, atol=1e-12)
    assert np.isnan(got[1])


# --------------------------------------------------------------------------------------------
# registry and array types
# --------------------------------------------------------------------------------------------


def test_reference_measures_registry_returns_per_sample_float64():
    rng = np.random.default_rng(13)
    a, b = _correlated_pair(rng, (3, 24, 24))
    assert set(sim.MEASURES) == {"ssim", "spearman", "spearman_abs", "pearson", "hog_pearson",
                                 "topk_intersection"}
    fa, fb = a.reshape(3, -1), b.reshape(3, -1)
    want = {
        "ssim": _skimage_ssim_stack(a, b, win_size=7),
        "spearman": [scipy.stats.spearmanr(x, y)[0] for x, y in zip(fa, fb)],
        "spearman_abs": [scipy.stats.spearmanr(np.abs(x), np.abs(y))[0] for x, y in zip(fa, fb)],
        "pearson": [scipy.stats.pearsonr(x, y)[0] for x, y in zip(fa, fb)],
        "hog_pearson": [np.corrcoef(hog(x), hog(y))[0, 1] for x, y in zip(a, b)],
        "topk_intersection": [_topk_reference(x, y, 58) for x, y in zip(fa, fb)],  # 10% of 576
    }
    for name, fn in sim.MEASURES.items():
        assert sim.measure(name) is fn
        got = fn(a, b)
        assert got.shape == (3,) and got.dtype == np.float64, name
        np.testing.assert_allclose(got, want[name], rtol=0, atol=1e-9, err_msg=name)


def test_reference_measures_registry_averages_maps_of_a_sample():
    rng = np.random.default_rng(17)
    a, b = _correlated_pair(rng, (2, 3, 24, 24))
    want_ssim = _skimage_ssim_stack(a, b, win_size=7).mean(axis=1)
    want_hog = np.array([[np.corrcoef(hog(x), hog(y))[0, 1] for x, y in zip(sa, sb)]
                         for sa, sb in zip(a, b)]).mean(axis=1)
    np.testing.assert_allclose(sim.MEASURES["ssim"](a, b), want_ssim, atol=1e-9)
    np.testing.assert_allclose(sim.MEASURES["hog_pearson"](a, b), want_hog, atol=1e-10)


def test_reference_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(14)
    a, b = (v.astype(np.float32) for v in _correlated_pair(rng, (2, 12, 12)))
    ta, tb = torch.from_numpy(a).requires_grad_(True), torch.from_numpy(b)
    np.testing.assert_allclose(sim.ssim(ta, tb, win_size=5), sim.ssim(a, b, win_size=5), atol=1e-12)
    np.testing.assert_allclose(sim.spearman(ta, tb), sim.spearman(a, b), atol=1e-12)
    np.testing.assert_allclose(sim.pearson(ta.bfloat16(), tb.bfloat16()),
                               sim.pearson(ta.bfloat16().float().detach().numpy(),
                                           tb.bfloat16().float().numpy()), atol=1e-12)
    np.testing.assert_array_equal(sim.topk_intersection(ta, tb, k=9), sim.topk_intersection(a, b, k=9))


# --------------------------------------------------------------------------------------------
# Quantus 0.6
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quantus_sim():
    # conftest.py has installed the torchvision stand-in Quantus' import chain needs
    return pytest.importorskip("quantus.functions.similarity_func")


def test_reference_quantus_ssim_matches(quantus_sim):
    rng = np.random.default_rng(15)
    a, b = _correlated_pair(rng, (4, 14, 15), noise=0.5)
    want = quantus_sim.ssim(a, b, batched=True)  # per-pair range, win_size None -> 7
    np.testing.assert_allclose(sim.ssim(a, b), want, atol=1e-9)
    np.testing.assert_allclose(sim.ssim(a, b, win_size=5), quantus_sim.ssim(a, b, batched=True, win_size=5),
                               atol=1e-9)
    # convention difference: Quantus returns skimage's 0/0 for identical all-zero maps, we return 1
    zero = np.zeros((1, 9, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(quantus_sim.ssim(zero, zero, batched=True)[0])
    np.testing.assert_array_equal(sim.ssim(zero, zero), [1.0])


def test_reference_quantus_correlations_match(quantus_sim):
    rng = np.random.default_rng(16)
    a, b = _correlated_pair(rng, (5, 64), noise=0.9)
    a, b = np.round(a * 3), np.round(b * 3)  # with ties
    np.testing.assert_allclose(sim.spearman(a, b), quantus_sim.correlation_spearman(a, b, batched=True),
                               atol=1e-10)
    np.testing.assert_allclose(sim.pearson(a, b), quantus_sim.correlation_pearson(a, b, batched=True),
                               atol=1e-10)
    np.testing.assert_allclose(sim.spearman(a[:1], b[:1]),
                               quantus_sim.correlation_spearman(a[:1], b[:1], batched=True), atol=1e-10)
    # a constant row: NaN for that sample in both
    a[2] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus_sim.correlation_spearman(a, b, batched=True)
        qp = quantus_sim.correlation_pearson(a, b, batched=True)
    got = sim.spearman(a, b)
    np.testing.assert_array_equal(np.isnan(got), [False, False, True, False, False])
    np.testing.assert_allclose(got, q, atol=1e-10)  # NaN in the same place
    np.testing.assert_allclose(sim.pearson(a, b), qp, atol=1e-10)
    # convention difference: scipy's 2-D spearmanr checks only the first two stacked rows for
    # constancy and then returns a bare float NaN, on which Quantus' batched path fails
    a[0] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AttributeError):
            quantus_sim.correlation_spearman(a, b, batched=True)
    np.testing.assert_array_equal(np.isnan(sim.spearman(a, b)), [True, False, True, False, False])
