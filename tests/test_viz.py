"""relprop.viz: heatmaps, overlays, grids, bar charts, PNG files and curves.

Expected colours come from plain formulas written here (blue-white-red interpolation, min-max
normalisation, BT.601 luma), from Zennit's own colormaps (``zennit.image.CMAPS``), from
``np.percentile``, from Pillow's text measurements and from Pillow reading the PNG back -- never
from relprop.viz itself.
"""
from __future__ import annotations

import doctest
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from relprop import viz

ROOT = Path(__file__).resolve().parents[1]
RED_END, BLUE_END, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _bwr_plain(t):
    """Blue-white-red by hand: t in [-1, 1] -> RGB floats (independent of viz's node tables)."""
    t = np.asarray(t, dtype=np.float64)
    pos = np.stack([np.full_like(t, 255.0), 255.0 * (1 - t), 255.0 * (1 - t)], axis=-1)
    neg = np.stack([255.0 * (1 + t), 255.0 * (1 + t), np.full_like(t, 255.0)], axis=-1)
    return np.where((t >= 0)[..., None], pos, neg)


def _is(img, colour):
    return np.all(img == np.array(colour, dtype=np.uint8), axis=-1)


# ------------------------------------------------------------------------------------------
# heatmap
# ------------------------------------------------------------------------------------------

def test_reference_heatmap_colours_follow_sign():
    rng = np.random.default_rng(0)
    R = rng.normal(size=(3, 16, 16))
    R[:, :4, :4] = 0.0  # a block whose channel sum is exactly zero
    img = viz.heatmap(R)
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    s = R.sum(0)
    r, g, b = (img[..., k].astype(int) for k in range(3))
    strong = np.abs(s) > 0.1 * np.abs(s).max()  # |t| > 0.1 -> at least 25 levels apart
    assert np.all((r - b)[(s > 0) & strong] >= 25)
    assert np.all((b - r)[(s < 0) & strong] >= 25)
    assert np.all(r[s > 0] == 255) and np.all(b[s < 0] == 255)
    assert np.all(_is(img[s == 0], WHITE)) and (s == 0).sum() == 16


def test_reference_heatmap_bwr_plain_formula_and_symmetric_ends():
    rng = np.random.default_rng(1)
    R = rng.normal(size=(12, 12))
    img = viz.heatmap(R, reduce="none")
    expected = _bwr_plain(R / np.abs(R).max())
    assert np.abs(img.astype(float) - expected).max() <= 0.5 + 1e-9  # one rounding step
    # the largest magnitude gets the end colour on its side
    i = np.unravel_index(np.abs(R).argmax(), R.shape)
    assert tuple(img[i]) == (RED_END if R[i] > 0 else BLUE_END)
    # and so does the opposite side for a map whose extremes are +-m
    R2 = np.array([[3.0, -3.0, 1.5, 0.0]])
    assert viz.heatmap(R2).tolist() == [[list(RED_END), list(BLUE_END), [255, 128, 128], list(WHITE)]]


@pytest.mark.parametrize("name", sorted(viz.CMAPS))
def test_peers_zennit_palettes(name):
    """Each colormap matches Zennit's palette of that name; Zennit puts its centre node at
    128/255 (not 0.5) and coldnhot's yellow at 212/255 (not 2/3 of the upper half), so colours
    may differ by a level (3 levels on coldnhot's steep red-yellow ramp)."""
    from zennit.image import CMAPS as ZCMAPS

    t = np.linspace(-1.0, 1.0, 2001)
    zen = np.rint(ZCMAPS[name]((t + 1.0) / 2.0) * 255.0)
    ours = viz.heatmap(t[None], cmap=name, clip=1.0, reduce="none")[0].astype(float)
    assert np.abs(zen - ours).max() <= (3 if name == "coldnhot" else 1)
    # the ends are exactly Zennit's first and last colours
    assert tuple(ours[0]) == tuple(np.rint(ZCMAPS[name](np.array([0.0]))[0] * 255))
    assert tuple(ours[-1]) == tuple(np.rint(ZCMAPS[name](np.array([1.0]))[0] * 255))


def test_reference_heatmap_percentile_clips_expected_fraction():
    rng = np.random.default_rng(2)
    # magnitudes 2 % apart: far more than one colour level (1/510 of the limit), so the pixels that
    # reach the end colour are exactly those at or beyond the limit
    mag = 1.02 ** rng.permutation(400)
    R = (mag * rng.choice([-1.0, 1.0], size=400)).reshape(20, 20)
    q = 90.0
    lim = np.percentile(np.abs(R), q)
    img = viz.heatmap(R, clip=("percentile", q), reduce="none")
    saturated = _is(img, RED_END) | _is(img, BLUE_END)
    assert np.array_equal(saturated, np.abs(R) >= lim)
    assert abs(saturated.mean() - (100 - q) / 100) <= 1 / 400
    # below the limit: the plain formula with L = lim
    below = np.abs(R) < lim
    assert np.abs(img[below].astype(float) - _bwr_plain(R[below] / lim)).max() <= 0.5 + 1e-9


def test_reference_heatmap_fixed_limit_and_shared():
    R = np.array([[4.0, 2.0, 1.0, -8.0]])
    img = viz.heatmap(R, clip=2.0)
    assert tuple(img[0, 0]) == RED_END and tuple(img[0, 1]) == RED_END and tuple(img[0, 3]) == BLUE_END
    assert tuple(img[0, 2]) == (255, 128, 128)  # 1 / 2 -> half way to red (127.5 rounds to even)
    batch = np.stack([np.array([[1.0, -0.5]]), np.array([[10.0, -5.0]])])  # (N, H, W)
    own = viz.heatmap(batch, reduce="none")
    assert np.array_equal(own[0], own[1])  # per-map limits: both scaled to their own max
    common = viz.heatmap(batch, reduce="none", shared=True)
    assert tuple(common[1, 0, 0]) == RED_END
    assert np.abs(common[0].astype(float) - _bwr_plain(batch[0] / 10.0)).max() <= 0.5 + 1e-9


def test_reference_heatmap_reduce_modes_and_batches():
    rng = np.random.default_rng(3)
    R = rng.normal(size=(2, 3, 8, 8))
    out = viz.heatmap(R)
    assert out.shape == (2, 8, 8, 3)
    for name, m in (("sum", R.sum(1)), ("abs_sum", np.abs(R).sum(1)), ("max_abs", np.abs(R).max(1))):
        got = viz.heatmap(R, reduce=name)
        for n in range(2):
            want = _bwr_plain(m[n] / np.abs(m[n]).max())
            assert np.abs(got[n].astype(float) - want).max() <= 0.5 + 1e-9, name
            assert np.array_equal(viz.heatmap(R[n], reduce=name), got[n])  # batch == per sample
    assert np.array_equal(viz.heatmap(R[:, :1], reduce="none"), viz.heatmap(R[:, 0], reduce="none"))
    assert viz.heatmap(np.zeros((5, 5))).tolist() == [[list(WHITE)] * 5] * 5  # all-zero map: white
    assert viz.heatmap(np.arange(-3, 3).reshape(2, 3)).dtype == np.uint8  # ints are fine


def test_reference_heatmap_torch_and_cupy_like_inputs():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    R = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    t = torch.tensor(R, requires_grad=True) * 1.0  # a non-leaf tensor in a graph: needs detach
    assert np.array_equal(viz.heatmap(t, cmap="coldnhot"), viz.heatmap(R, cmap="coldnhot"))
    img = rng.random((2, 3, 6, 6))
    assert np.array_equal(viz.overlay(torch.tensor(img), t, grey=True), viz.overlay(img, R, grey=True))
    bf = torch.tensor(R).to(torch.bfloat16)
    assert np.array_equal(viz.heatmap(bf), viz.heatmap(bf.float().numpy()))

    class FakeCupy:  # what matters of a CuPy array: its module and .get()
        __module__ = "cupy._core.core"

        def __init__(self, a):
            self._a = a

        def get(self):
            return self._a.copy()

    assert np.array_equal(viz.heatmap(FakeCupy(R)), viz.heatmap(R))


# ------------------------------------------------------------------------------------------
# overlay
# ------------------------------------------------------------------------------------------

def _minmax_uint8(img):
    f = img.astype(np.float64)
    return np.rint((f - f.min()) / (f.max() - f.min()) * 255).astype(np.uint8)


def test_reference_overlay_alpha_ends():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 10, 12)) * 7 + 3  # any range
    R = rng.normal(size=(3, 10, 12))
    colour = np.moveaxis(_minmax_uint8(x), 0, -1)
    assert np.array_equal(viz.overlay(x, R, alpha=0.0), colour)
    luma = colour.astype(float) @ np.array([0.299, 0.587, 0.114])
    grey = viz.overlay(x, R, alpha=0.0, grey=True)
    assert np.all(grey[..., 0] == grey[..., 1]) and np.all(grey[..., 1] == grey[..., 2])
    assert np.abs(grey[..., 0].astype(float) - luma).max() <= 0.5 + 1e-9
    assert np.array_equal(viz.overlay(x, R, alpha=1.0, cmap="seismic"), viz.heatmap(R, cmap="seismic"))
    half = viz.overlay(x, R, alpha=0.5)
    want = 0.5 * colour.astype(float) + 0.5 * viz.heatmap(R).astype(float)
    assert np.abs(half.astype(float) - want).max() <= 0.5 + 1e-9
    # (H, W, C) gives the same as (C, H, W); uint8 images are used as they are
    assert np.array_equal(viz.overlay(np.moveaxis(x, 0, -1), R, alpha=0.3), viz.overlay(x, R, alpha=0.3))
    u8 = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    assert np.array_equal(viz.overlay(u8, R, alpha=0.0), u8)


def test_reference_overlay_batch_and_grey_inputs():
    rng = np.random.default_rng(6)
    x = rng.random((4, 1, 9, 9))
    R = rng.normal(size=(4, 1, 9, 9))
    out = viz.overlay(x, R, alpha=0.0)
    assert out.shape == (4, 9, 9, 3)
    for n in range(4):
        g = _minmax_uint8(x[n, 0])
        assert np.array_equal(out[n], np.repeat(g[..., None], 3, axis=-1))  # per-image normalisation
    assert np.array_equal(viz.overlay(x[:, 0], R, alpha=0.4), viz.overlay(x, R, alpha=0.4))  # (N, H, W)
    const = viz.overlay(np.ones((9, 9)), R[0], alpha=0.0)
    assert np.all(const == 128)  # a constant image has no range: mid grey


# ------------------------------------------------------------------------------------------
# grid
# ------------------------------------------------------------------------------------------

def _measure(s):
    font = ImageFont.load_default()
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox((0, 0), s, font=font)
    return right - left, bottom - top


def test_reference_grid_size_placement_and_scale():
    rng = np.random.default_rng(7)
    tiles = rng.integers(0, 256, size=(5, 7, 9, 3), dtype=np.uint8)
    g = viz.grid(tiles, cols=3, pad=2, scale=3)
    h, w = 7 * 3, 9 * 3
    assert g.shape == (2 + 2 * (h + 2), 2 + 3 * (w + 2), 3)
    for n in range(5):
        i, j = divmod(n, 3)
        y, x = 2 + i * (h + 2), 2 + j * (w + 2)
        assert np.array_equal(g[y:y + h, x:x + w], np.kron(tiles[n], np.ones((3, 3, 1), dtype=np.uint8)))
    # the empty sixth cell and the pads are background
    assert np.all(g[2 + h + 2:, 2 + 2 * (w + 2):2 + 2 * (w + 2) + w] == 255)
    assert np.all(g[:2] == 255) and np.all(g[:, :2] == 255)
    # a 5-D array and a nested list carry their layout; default for a flat list: ceil(sqrt(N)) columns
    five = viz.grid(tiles[:4].reshape(2, 2, 7, 9, 3), pad=1, bg=0)
    assert five.shape == (1 + 2 * 8, 1 + 2 * 10, 3)
    assert np.array_equal(five, viz.grid([[tiles[0], tiles[1]], [tiles[2], tiles[3]]], pad=1, bg=0))
    assert viz.grid(list(tiles), pad=0).shape == (2 * 7, 3 * 9, 3)


def test_reference_grid_label_margins():
    tiles = np.full((6, 28, 28, 3), 200, dtype=np.uint8)
    rows_l, cols_l = ["lrp.epsilon", "gradient"], ["0", "1", "2"]
    g = viz.grid(tiles, row_labels=rows_l, col_labels=cols_l, pad=2, scale=2)
    left = max(_measure(s)[0] for s in rows_l) + 8
    top = max(_measure(s)[1] for s in cols_l) + 8
    cell_w = max(56, max(_measure(s)[0] for s in cols_l) + 8)
    cell_h = max(56, max(_measure(s)[1] for s in rows_l))
    assert g.shape == (top + 2 + 2 * (cell_h + 2), left + 2 + 3 * (cell_w + 2), 3)
    assert (g[top:, :left] < 128).any(axis=-1).sum() > 20  # row labels: dark text in the left margin
    assert (g[:top, left:] < 128).any(axis=-1).sum() > 5  # column labels in the top margin
    assert np.all(viz.grid(tiles, rows=2, pad=2, scale=2)[:, :2] == 255)  # no labels, no margin
    # a column label wider than the tiles widens its columns
    wide = viz.grid(tiles[:2], col_labels=["integrated_gradients", "x"])
    cw = max(28, _measure("integrated_gradients")[0] + 8)
    assert wide.shape[1] == 2 + 2 * (cw + 2)
    # a dark background gets light text
    dark = viz.grid(tiles[:2], row_labels=["a"], bg=0)
    assert (dark[:, :_measure("a")[0] + 8] > 128).any()


# ------------------------------------------------------------------------------------------
# bars
# ------------------------------------------------------------------------------------------

def _red(img):
    return (img[..., 0].astype(int) - img[..., 2] > 100)


def _blue(img):
    return (img[..., 2].astype(int) - img[..., 0] > 100)


def test_reference_bars_colours_and_order():
    img = viz.bars(np.array([5.0, -1.0]), ["pos", "neg"], width=400)
    assert img.dtype == np.uint8 and img.shape[1] == 400
    red_y, blue_y = np.nonzero(_red(img).any(1))[0], np.nonzero(_blue(img).any(1))[0]
    assert red_y.size and blue_y.size and red_y.max() < blue_y.min()  # sorted: |5| above |-1|
    red_x, blue_x = np.nonzero(_red(img).any(0))[0], np.nonzero(_blue(img).any(0))[0]
    assert blue_x.max() < red_x.min()  # negative bar left of the zero axis, positive right
    assert red_x.size > 3 * blue_x.size  # length proportional to the value (5 : 1)
    flipped = viz.bars(np.array([1.0, -5.0]), ["pos", "neg"], width=400)
    assert np.nonzero(_blue(flipped).any(1))[0].max() < np.nonzero(_red(flipped).any(1))[0].min()
    unsorted = viz.bars(np.array([1.0, -5.0]), sort=False, width=400)
    assert np.nonzero(_red(unsorted).any(1))[0].max() < np.nonzero(_blue(unsorted).any(1))[0].min()
    only_pos = viz.bars(np.abs(np.random.default_rng(8).normal(size=10)) + 0.1)
    assert _red(only_pos).any() and not _blue(only_pos).any()
    # top keeps the largest |values|; a title adds rows of text above the bars
    small = viz.bars(np.array([0.1, -3.0, 0.2, 2.0]), top=2)
    assert _red(small).any() and _blue(small).any()
    assert small.shape[0] < viz.bars(np.array([0.1, -3.0, 0.2, 2.0])).shape[0]
    titled = viz.bars(np.array([0.1, -3.0]), title="lrp.epsilon")
    assert titled.shape[0] > viz.bars(np.array([0.1, -3.0])).shape[0]
    assert (titled[:8 + _measure("lrp.epsilon")[1]] < 128).any()


# ------------------------------------------------------------------------------------------
# save_png / curves
# ------------------------------------------------------------------------------------------

def test_reference_save_png_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    for shape in ((5, 7, 3), (5, 7), (5, 7, 4)):
        a = rng.integers(0, 256, size=shape, dtype=np.uint8)
        p = viz.save_png(a, tmp_path / f"a{len(shape)}.png")
        assert p == os.fspath(tmp_path / f"a{len(shape)}.png")
        with Image.open(p) as im:
            assert im.format == "PNG"
            assert np.array_equal(np.asarray(im), a)


def test_reference_curves_image_png_and_no_pyplot_state(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figs = matplotlib.get_backend(), plt.get_fignums()
    x = np.linspace(0, 1, 11)
    runs = np.stack([1 - x ** k for k in (1, 2, 3)])
    img = viz.curves(x, [runs.mean(0), 0.5 * runs.mean(0)], band=[runs.std(0), 0.5 * runs.std(0)],
                     labels=["a", "b"], xlabel="fraction", ylabel="score", title="deletion",
                     path=tmp_path / "c.png", figsize=(5, 3), dpi=80)
    assert img.shape == (240, 400, 3) and img.dtype == np.uint8
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # lines, bands, text: not blank
    assert (img < 200).any(axis=-1).mean() > 0.005
    with Image.open(tmp_path / "c.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), img)
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figs
    assert viz.curves(x, runs[0]).shape == (400, 600, 3)  # one curve, default size


def test_reference_import_is_light_and_curves_skip_pyplot():
    """relprop.viz imports neither Pillow, matplotlib, torch nor CuPy; curves() never imports pyplot."""
    code = textwrap.dedent("""
        import sys, numpy as np
        import relprop.viz as v
        v.heatmap(np.ones((2, 3, 4)))
        v.overlay(np.ones((3, 4, 4)), np.ones((4, 4)))
        print(sorted(m for m in ("PIL", "matplotlib", "torch", "cupy") if m in sys.modules))
        v.curves(np.arange(3.0), np.arange(3.0))
        print("matplotlib.pyplot" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "False"]


def test_reference_docstring_examples():
    res = doctest.testmod(viz, optionflags=doctest.ELLIPSIS)
    assert res.failed == 0 and res.attempted >= 10


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------

def test_errors_heatmap():
    R = np.zeros((3, 4, 4))
    with pytest.raises(ValueError, match=r"unknown cmap 'jet'; valid colormaps: bwr, coldnhot, coleus"):
        viz.heatmap(R, cmap="jet")
    for bad in ("max", ("percentile", 0), ("percentile", 101), ("pct", 99), -1.0, 0.0, float("nan"), True):
        with pytest.raises(ValueError, match="clip must be 'symmetric'"):
            viz.heatmap(R, clip=bad)
    with pytest.raises(ValueError, match="unknown reduce 'mean'"):
        viz.heatmap(R, reduce="mean")
    with pytest.raises(ValueError, match=r"R must be \(H, W\), \(C, H, W\).*got shape \(4,\)"):
        viz.heatmap(np.zeros(4))
    with pytest.raises(ValueError, match=r"with reduce='none'.*got shape \(2, 3, 4, 4\)"):
        viz.heatmap(np.zeros((2, 3, 4, 4)), reduce="none")
    bad = np.zeros((2, 3, 4, 4))
    bad[1, 2, 0, 3] = np.nan
    bad[1, 2, 1, 1] = np.inf
    with pytest.raises(ValueError, match=r"R has 2 non-finite values.*nan at index \(1, 2, 0, 3\)"):
        viz.heatmap(bad)
    with pytest.raises(TypeError, match="real numbers.*bool"):
        viz.heatmap(np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="R is empty"):
        viz.heatmap(np.zeros((0, 4)))
    with pytest.raises(ValueError, match="shared must be True or False"):
        viz.heatmap(R, shared="yes")
    with pytest.raises(ValueError, match="reduced over channels has 1 non-finite"):
        viz.heatmap(np.full((2, 1, 1), 1e308))  # finite values whose sum overflows


def test_errors_overlay():
    R = np.zeros((4, 5))
    with pytest.raises(ValueError, match=r"image shaped \(3, 5, 4\) does not match the heatmap's 4x5"):
        viz.overlay(np.zeros((3, 5, 4)), R)
    with pytest.raises(ValueError, match=r"does not match the batch of 2 heatmaps"):
        viz.overlay(np.zeros((3, 3, 4, 5)), np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match=r"alpha must be a number in \[0, 1\]; got 1.5"):
        viz.overlay(np.zeros((4, 5)), R, alpha=1.5)
    with pytest.raises(TypeError, match="unexpected keyword argument.*colormap"):
        viz.overlay(np.zeros((4, 5)), R, colormap="bwr")
    img = np.zeros((4, 5))
    img[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"image has 1 non-finite value.*index \(2, 3\)"):
        viz.overlay(img, R)


def test_errors_grid_bars_save():
    t = np.zeros((4, 4, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"all images must have one size.*row 0, column 1 is 5x4"):
        viz.grid([t, np.zeros((5, 4, 3), dtype=np.uint8)])
    with pytest.raises(TypeError, match=r"images\[0\] must be uint8.*float64"):
        viz.grid([np.zeros((4, 4, 3))])
    with pytest.raises(ValueError, match="row_labels has 3 entries, but there are 2 rows"):
        viz.grid([t] * 4, rows=2, row_labels=["a", "b", "c"])
    with pytest.raises(TypeError, match="col_labels must be a list"):
        viz.grid([t] * 2, col_labels="ab")
    with pytest.raises(ValueError, match="cannot hold 5 images"):
        viz.grid([t] * 5, rows=2, cols=2)
    with pytest.raises(ValueError, match="scale must be an int >= 1; got 1.5"):
        viz.grid([t], scale=1.5)
    with pytest.raises(ValueError, match="bg must be an int 0..255"):
        viz.grid([t], bg=300)
    with pytest.raises(ValueError, match=r"one sample's attribution \(F,\).*\(2, 3\)"):
        viz.bars(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="names has 1 entry, but there are 2 features"):
        viz.bars(np.zeros(2), ["a"])
    with pytest.raises(ValueError, match="width=100 leaves no room"):
        viz.bars(np.zeros(2), ["a very long feature name indeed", "b"], width=100)
    with pytest.raises(ValueError, match=r"values has 1 non-finite value.*index \(1,\)"):
        viz.bars(np.array([1.0, np.nan]))
    with pytest.raises(TypeError, match="img must be uint8"):
        viz.save_png(np.zeros((4, 4, 3)), "x.png")
    with pytest.raises(FileNotFoundError, match="folder .*no_such_dir.* does not exist"):
        viz.save_png(t, Path("/tmp/no_such_dir_relprop_viz/x.png"))


def test_errors_curves(tmp_path):
    x = np.arange(5.0)
    with pytest.raises(ValueError, match=r"ys must be \(T,\) or \(K, T\) with T = len\(x\) = 5"):
        viz.curves(x, np.zeros(4))
    with pytest.raises(ValueError, match="band must have the shape of ys"):
        viz.curves(x, np.zeros((2, 5)), band=np.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"band holds half-widths and must be >= 0"):
        viz.curves(x, np.zeros(5), band=-np.ones(5))
    with pytest.raises(ValueError, match="labels has 1 entry, but there are 2 curves"):
        viz.curves(x, np.zeros((2, 5)), labels=["a"])
    with pytest.raises(FileNotFoundError, match="curves: folder"):
        viz.curves(x, np.zeros(5), path=tmp_path / "missing" / "c.png")


def test_errors_missing_pillow_and_matplotlib(monkeypatch):
    for mod in ("PIL", "PIL.Image", "PIL.ImageDraw", "PIL.ImageFont"):
        monkeypatch.setitem(sys.modules, mod, None)
    t = np.zeros((4, 4, 3), dtype=np.uint8)
    for call in (lambda: viz.grid([t]), lambda: viz.bars(np.ones(3)), lambda: viz.save_png(t, "x.png")):
        with pytest.raises(ImportError, match=r"needs Pillow: pip install relprop\[images\]"):
            call()
    assert viz.heatmap(np.ones((2, 2))).shape == (2, 2, 3)  # numpy-only functions still work
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match="needs matplotlib: pip install matplotlib"):
        viz.curves(np.arange(3.0), np.arange(3.0))
