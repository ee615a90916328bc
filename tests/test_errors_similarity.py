"""Bad input to relprop.evaluate.similarity: each is refused with a message naming the problem."""
from __future__ import annotations

import numpy as np
import pytest

from relprop.evaluate import similarity as sim

MAPS = np.random.default_rng(0).normal(size=(2, 12, 12))
ROWS = MAPS.reshape(2, -1)


@pytest.mark.parametrize("kw,match", [
    (dict(win_size=4), r"win_size must be an odd int >= 3.*got 4"),
    (dict(win_size=1), r"win_size.*got 1"),
    (dict(win_size=-3), r"win_size.*got -3"),
    (dict(win_size=5.0), r"win_size.*got 5\.0"),
    (dict(win_size=True), r"win_size.*got True"),
    (dict(win_size=13), r"12x12.*smaller than win_size=13"),
    (dict(data_range=0.0), r"data_range must be None or a finite number > 0, got 0\.0"),
    (dict(data_range=-1.0), r"data_range.*got -1\.0"),
    (dict(data_range=float("inf")), r"data_range.*got inf"),
    (dict(data_range="1"), r"data_range.*got '1'"),
    (dict(sigma=0.0), r"sigma must be a finite number > 0, got 0\.0"),
    (dict(sigma=float("nan")), r"sigma.*got nan"),
])
def test_errors_ssim_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        sim.ssim(MAPS, MAPS, **kw)


def test_errors_ssim_gaussian_weights_must_be_bool():
    with pytest.raises(TypeError, match="gaussian_weights must be a bool, got 'yes'"):
        sim.ssim(MAPS, MAPS, gaussian_weights="yes")


def test_errors_ssim_maps_smaller_than_window():
    with pytest.raises(ValueError, match=r"maps of 6x12 .*smaller than win_size=7"):
        sim.ssim(MAPS[:, :6], MAPS[:, :6])
    with pytest.raises(ValueError, match=r"maps of 12x2 .*smaller than win_size=3"):
        sim.ssim(MAPS[:, :, :2], MAPS[:, :, :2], win_size=3)
    # the default Gaussian window (win_size=None, sigma 1.5) is 11 wide
    with pytest.raises(ValueError, match=r"smaller than win_size=11"):
        sim.ssim(MAPS[:, :10, :10], MAPS[:, :10, :10], win_size=None, gaussian_weights=True)


@pytest.mark.parametrize("fn", [sim.ssim, sim.hog_pearson])
def test_errors_maps_need_two_dims(fn):
    with pytest.raises(ValueError, match=r"2-D maps shaped \(\.\.\., H, W\), got shape \(144,\)"):
        fn(ROWS[0], ROWS[0])


ALL = [sim.ssim, sim.spearman, sim.pearson, sim.topk_intersection, sim.hog_pearson]


@pytest.mark.parametrize("fn", ALL)
def test_errors_shape_mismatch(fn):
    big = np.zeros((2, 24, 24))
    with pytest.raises(ValueError, match=r"same shape, got a \(2, 24, 24\) and b \(2, 24, 25\)"):
        fn(big, np.zeros((2, 24, 25)))


@pytest.mark.parametrize("fn", ALL)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["a", "b"])
def test_errors_non_finite_values(fn, bad, which):
    x = np.random.default_rng(1).normal(size=(2, 24, 24))
    y = x.copy()
    (x if which == "a" else y)[1, 3, 4] = bad
    with pytest.raises(ValueError, match=rf"^{which} contains 1 non-finite value"):
        fn(x, y)


@pytest.mark.parametrize("fn", ALL)
def test_errors_non_numeric_arrays(fn):
    with pytest.raises(TypeError, match="a must be an array of real numbers, got dtype complex128"):
        fn(np.zeros((2, 24, 24), dtype=complex), np.zeros((2, 24, 24)))
    with pytest.raises(TypeError, match="b must be an array of real numbers, got dtype <U1"):
        fn(np.zeros((1, 2)), np.array([["a", "b"]]))


@pytest.mark.parametrize("fn", [sim.spearman, sim.pearson, sim.topk_intersection])
def test_errors_rows_need_batch_axis(fn):
    with pytest.raises(ValueError, match=r"batches shaped \(N, \.\.\.\).*got shape \(5,\).*a\[None\]"):
        fn(np.arange(5.0), np.arange(5.0))


@pytest.mark.parametrize("fn", [sim.spearman, sim.pearson])
def test_errors_correlation_needs_two_features(fn):
    with pytest.raises(ValueError, match=r"at least 2 feature\(s\), got shape \(3, 1\)"):
        fn(np.ones((3, 1)), np.ones((3, 1)))


def test_errors_spearman_absolute_must_be_bool():
    with pytest.raises(TypeError, match="absolute must be a bool, got 1"):
        sim.spearman(ROWS, ROWS, absolute=1)


@pytest.mark.parametrize("k,match", [
    (0, r"k as a count must be in \[1, 144\].*got 0"),
    (145, r"k as a count must be in \[1, 144\].*got 145"),
    (0.0, r"k as a fraction must be in \(0, 1\], got 0\.0"),
    (1.5, r"k as a fraction must be in \(0, 1\], got 1\.5"),
    (float("nan"), r"k as a fraction.*got nan"),
    (True, r"k must be an int count or a float fraction in \(0, 1\], got True"),
    ("10", r"k must be an int count.*got '10'"),
    (None, r"k must be an int count.*got None"),
])
def test_errors_topk_k(k, match):
    with pytest.raises(ValueError, match=match):
        sim.topk_intersection(ROWS, ROWS, k=k)


def test_errors_topk_needs_a_feature():
    with pytest.raises(ValueError, match=r"at least 1 feature\(s\), got shape \(2, 0\)"):
        sim.topk_intersection(np.zeros((2, 0)), np.zeros((2, 0)))


@pytest.mark.parametrize("kw,match", [
    (dict(orientations=0), r"orientations must be a positive int, got 0"),
    (dict(orientations=9.0), r"orientations must be a positive int, got 9\.0"),
    (dict(pixels_per_cell=8), r"pixels_per_cell must be a pair of positive ints, got 8"),
    (dict(pixels_per_cell=(8, 0)), r"pixels_per_cell must be a pair.*got \(8, 0\)"),
    (dict(cells_per_block=(1, 2, 3)), r"cells_per_block must be a pair.*got \(1, 2, 3\)"),
])
def test_errors_hog_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        sim.hog_pearson(np.zeros((1, 24, 24)), np.zeros((1, 24, 24)), **kw)


def test_errors_hog_maps_smaller_than_a_block():
    with pytest.raises(ValueError, match=r"maps of 12x12 .*smaller than one HOG block .*\(24x24\)"):
        sim.hog_pearson(MAPS, MAPS)


def test_errors_hog_without_skimage(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_skimage(name, *args, **kwargs):
        if name == "skimage" or name.startswith("skimage."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_skimage)
    with pytest.raises(ImportError, match="pip install scikit-image"):
        sim.hog_pearson(np.zeros((1, 24, 24)), np.zeros((1, 24, 24)))


@pytest.mark.parametrize("name", ["ssim", "hog_pearson"])
def test_errors_registry_map_measures_need_a_batch_of_maps(name):
    with pytest.raises(ValueError, match=rf"MEASURES\['{name}'\] .*\(N, H, W\).*got shape \(24, 24\)"):
        sim.MEASURES[name](np.zeros((24, 24)), np.zeros((24, 24)))


@pytest.mark.parametrize("name", ["SSIM", "kendall", "", None, 3])
def test_errors_unknown_measure_lists_valid_names(name):
    with pytest.raises(ValueError, match=r"unknown similarity measure .*valid names: hog_pearson, pearson, "
                                         r"spearman, spearman_abs, ssim, topk_intersection"):
        sim.measure(name)
