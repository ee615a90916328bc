"""Pictures of attributions: heatmaps, overlays, labelled grids, bar charts and curves.

Like Zennit's ``zennit.image``, this module needs numpy only to be imported. :func:`heatmap` and
:func:`overlay` are plain numpy; :func:`grid`, :func:`bars` and :func:`save_png` draw with Pillow
(``pip install relprop[images]``), imported when called; :func:`curves` is the one function that
needs axes and imports matplotlib when called, drawing on a ``matplotlib.figure.Figure`` with its
own Agg canvas so that pyplot's global state (backend, open figures) is left untouched.

Every function takes numpy arrays, CuPy arrays (copied to the host with ``.get()``) and torch
tensors (``.detach().cpu().numpy()``); neither torch nor CuPy is imported here.

Heatmaps use diverging colormaps centred at zero (Bach et al. 2015, "On Pixel-Wise Explanations
for Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation", PLoS ONE 10(7), Fig. 1:
positive relevance red, negative blue). A value ``r`` is mapped to ``t = clip(r / L, -1, 1)``
with the limit ``L`` chosen by ``clip=``; ``t = -1``, ``0`` and ``+1`` are the colormap's first,
centre and last colours, and colours in between are linear interpolations of the map's nodes.

>>> import numpy as np
>>> from relprop import viz
>>> viz.heatmap(np.array([[2.0, 0.0, -1.0]])).tolist()
[[[255, 0, 0], [255, 255, 255], [128, 128, 255]]]
"""
from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

__all__ = ["CMAPS", "heatmap", "overlay", "grid", "bars", "save_png", "curves"]

# Colormaps as node tables: (position in [-1, 1], (r, g, b) in 0..255), linearly interpolated in
# between. The palettes are Zennit's (zennit.image.CMAPS, written in its colour-map language)
# with one deliberate difference: Zennit puts the centre node at index 0x80 of 0..255, i.e. at
# 128/255 = 0.502 of the range, so zero relevance is not exactly its centre colour; here the
# centre node is at exactly 0, so R == 0 is exactly white for "bwr".
CMAPS = {
    # blue - white - red (Zennit "bwr": '00f,80:fff,f00')
    "bwr": ((-1.0, (0, 0, 255)), (0.0, (255, 255, 255)), (1.0, (255, 0, 0))),
    # cyan - blue - black - red - yellow - white (Zennit "coldnhot": '0ff,00f,80:000,f00,ff0,fff');
    # black at zero, so zero relevance is dark here
    "coldnhot": ((-1.0, (0, 255, 255)), (-0.5, (0, 0, 255)), (0.0, (0, 0, 0)),
                 (1.0 / 3.0, (255, 0, 0)), (2.0 / 3.0, (255, 255, 0)), (1.0, (255, 255, 255))),
    # blue - light grey - red at brightness 0xd0 (Zennit "seismic": '0000d0,80:d0d0d0,d00000')
    "seismic": ((-1.0, (0, 0, 208)), (0.0, (208, 208, 208)), (1.0, (208, 0, 0))),
    # the French flag's blue - white - red (Zennit "france": '0055a4,80:fff,ef4135')
    "france": ((-1.0, (0, 85, 164)), (0.0, (255, 255, 255)), (1.0, (239, 65, 53))),
    # cyan - light grey - magenta (Zennit "coolio": '00d0d0,80:d0d0d0,d000d0')
    "coolio": ((-1.0, (0, 208, 208)), (0.0, (208, 208, 208)), (1.0, (208, 0, 208))),
    # green - light grey - magenta (Zennit "coleus": '00d000,80:d0d0d0,d000d0')
    "coleus": ((-1.0, (0, 208, 0)), (0.0, (208, 208, 208)), (1.0, (208, 0, 208))),
}

_REDUCE = ("sum", "abs_sum", "max_abs", "none")
_HEATMAP_KW = ("cmap", "clip", "reduce", "shared")
# Bars: positive red, negative blue (matplotlib's tab:red / tab:blue, readable on white)
_RED = (214, 39, 40)
_BLUE = (31, 119, 180)
_LABEL_PAD = 4   # pixels between a label and the margin's edges (grid)
_BAR_PAD = 8     # outer margin and column gaps of bars()


# --------------------------------------------------------------------------------------------
# input conversion and checks
# --------------------------------------------------------------------------------------------

def _as_numpy(a, name):
    """A host numpy view/copy of ``a`` (numpy, CuPy, torch, or anything ``np.asarray`` takes)."""
    if isinstance(a, np.ndarray):
        return a
    root = type(a).__module__.split(".")[0]
    if root == "torch" or (hasattr(a, "detach") and hasattr(a, "cpu") and hasattr(a, "numpy")):
        t = a.detach().cpu()
        if str(t.dtype) in ("torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"):
            t = t.float()  # numpy has no such dtype; .numpy() would raise
        return t.numpy()
    if root == "cupy":
        return a.get()
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as e:
        raise TypeError(f"{name} must be an array (numpy, CuPy, torch) or a nested list of numbers; "
                        f"got {type(a).__name__} that numpy cannot convert ({e})") from None
    return arr


def _real_array(a, name):
    """``a`` as a real-valued (int or float) numpy array, or a TypeError naming ``name``."""
    arr = _as_numpy(a, name)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must hold real numbers (int or float); got dtype {arr.dtype}")
    return arr


def _check_finite(arr, name):
    """Raise a ValueError naming the first NaN/inf of ``arr`` and how many there are."""
    if arr.dtype.kind != "f":
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        n = int(bad.sum())
        raise ValueError(f"{name} has {n} non-finite value{'s' if n > 1 else ''} (NaN or inf): the first is "
                         f"{float(arr[first])} at index {first} of an array shaped {arr.shape}")


def _check_int(v, name, lo):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        raise ValueError(f"{name} must be an int >= {lo}; got {v!r}")
    return int(v)


def _check_unit(v, name):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (0.0 <= float(v) <= 1.0):
        raise ValueError(f"{name} must be a number in [0, 1]; got {v!r}")
    return float(v)


def _check_labels(labels, n, name, what):
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
        raise TypeError(f"{name} must be a list of {n} strings (one per {what}); got {type(labels).__name__}")
    labels = [str(s) for s in labels]
    if len(labels) != n:
        entries = "1 entry" if len(labels) == 1 else f"{len(labels)} entries"
        there = f"is 1 {what}" if n == 1 else f"are {n} {what}s"
        raise ValueError(f"{name} has {entries}, but there {there}")
    return labels


def _pil(caller):
    """Pillow's Image, ImageDraw and ImageFont, or an ImportError saying how to install it."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as e:
        raise ImportError(f"relprop.viz.{caller} needs Pillow: pip install relprop[images] "
                          f"(or pip install pillow)") from e
    return Image, ImageDraw, ImageFont


def _font(ImageFont, font_size):
    """Pillow's built-in default font, optionally at ``font_size`` (Pillow >= 10.1)."""
    if font_size is None:
        return ImageFont.load_default()
    _check_int(font_size, "font_size", 1)
    try:
        return ImageFont.load_default(size=font_size)
    except TypeError:
        raise ValueError("font_size needs Pillow >= 10.1 (ImageFont.load_default(size=...)); "
                         "upgrade Pillow or leave font_size=None") from None


def _text_size(draw, text, font):
    """(left, top, width, height) of ``text``'s ink box when drawn at the origin."""
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font)
    return left, top, right - left, bottom - top


def _draw_text(draw, xy, text, font, fill):
    """Draw ``text`` so that its ink box starts exactly at ``xy``."""
    left, top, _, _ = _text_size(draw, text, font)
    draw.multiline_text((xy[0] - left, xy[1] - top), text, font=font, fill=fill)


# --------------------------------------------------------------------------------------------
# heatmap / overlay (numpy only)
# --------------------------------------------------------------------------------------------

def _cmap_nodes(cmap):
    if not isinstance(cmap, str) or cmap not in CMAPS:
        raise ValueError(f"unknown cmap {cmap!r}; valid colormaps: {', '.join(sorted(CMAPS))}")
    pos = np.array([p for p, _ in CMAPS[cmap]], dtype=np.float64)
    rgb = np.array([c for _, c in CMAPS[cmap]], dtype=np.float64)
    return pos, rgb


def _parse_clip(clip):
    """("symmetric", None) | ("percentile", q) | ("fixed", L), or a ValueError."""
    if isinstance(clip, str):
        if clip == "symmetric":
            return "symmetric", None
    elif isinstance(clip, (tuple, list)):
        if (len(clip) == 2 and clip[0] == "percentile" and isinstance(clip[1], numbers.Real)
                and not isinstance(clip[1], bool) and 0.0 < float(clip[1]) <= 100.0):
            return "percentile", float(clip[1])
    elif isinstance(clip, numbers.Real) and not isinstance(clip, bool):
        if math.isfinite(float(clip)) and float(clip) > 0.0:
            return "fixed", float(clip)
    raise ValueError(f"clip must be 'symmetric' (limit max|R|), ('percentile', q) with 0 < q <= 100 "
                     f"(limit: the q-th percentile of |R|) or a finite float > 0 (a fixed limit); got {clip!r}")


def _reduce_maps(arr, reduce):
    """(maps (N, H, W) float64, batched) from R's array following ``reduce``."""
    if not isinstance(reduce, str) or reduce not in _REDUCE:
        raise ValueError(f"unknown reduce {reduce!r}; valid: {', '.join(repr(r) for r in _REDUCE)}")
    shape = arr.shape
    if any(s == 0 for s in shape):
        raise ValueError(f"R is empty (shape {shape})")
    a = arr.astype(np.float64, copy=False)
    if reduce == "none":
        if a.ndim == 2:
            return a[None], False
        if a.ndim == 3:
            return a, True
        if a.ndim == 4 and shape[1] == 1:
            return a[:, 0], True
        raise ValueError(f"with reduce='none', R must be (H, W), a batch (N, H, W) or (N, 1, H, W); got shape "
                         f"{shape} (use reduce='sum', 'abs_sum' or 'max_abs' to reduce a channel axis)")
    if a.ndim == 2:
        return a[None], False  # already one value per pixel: nothing to reduce
    if a.ndim not in (3, 4):
        raise ValueError(f"R must be (H, W), (C, H, W) or a batch (N, C, H, W) (or (N, H, W) with "
                         f"reduce='none'); got shape {shape}")
    c = a if a.ndim == 4 else a[None]
    with np.errstate(over="ignore"):  # an overflowing sum is reported by heatmap's finiteness check
        if reduce == "sum":
            maps = c.sum(axis=1)
        elif reduce == "abs_sum":
            maps = np.abs(c).sum(axis=1)
        else:
            # Simonyan et al. 2014, "Deep Inside Convolutional Networks", Sec. 3.1: M_ij = max_c |w_h(i,j,c)|
            maps = np.abs(c).max(axis=1)
    return maps, a.ndim == 4


def _limits(maps, mode, value, shared):
    """The symmetric limit L per map (N,), or one shared by all maps."""
    mag = np.abs(maps)
    if mode == "fixed":
        return np.full(maps.shape[0], value)
    axes = None if shared else (1, 2)
    if mode == "symmetric":
        lim = mag.max(axis=axes)
    else:
        lim = np.percentile(mag, value, axis=axes)
    return np.broadcast_to(np.asarray(lim, dtype=np.float64), (maps.shape[0],))


def _colorize(t, cmap):
    """uint8 RGB of ``t`` in [-1, 1] under ``cmap``'s node table (linear interpolation)."""
    pos, rgb = _cmap_nodes(cmap)
    flat = t.ravel()
    out = np.empty(flat.shape + (3,), dtype=np.float64)
    for ch in range(3):
        out[:, ch] = np.interp(flat, pos, rgb[:, ch])
    return np.rint(out).astype(np.uint8).reshape(t.shape + (3,))


def heatmap(R, *, cmap="bwr", clip="symmetric", reduce="sum", shared=False):
    """Colour an attribution with a diverging colormap centred at zero.

    Each value ``r`` becomes ``t = clip(r / L, -1, 1)`` and ``t`` is looked up in the colormap
    (``t = -1``: its first colour, ``0``: its centre, ``+1``: its last). With ``"bwr"``,
    ``R > 0`` is red, ``R < 0`` blue and ``R == 0`` exactly white (Bach et al. 2015, PLoS ONE
    10(7), Fig. 1).

    Parameters
    ----------
    R : array (H, W), (C, H, W), or a batch (N, C, H, W); (N, H, W) with ``reduce="none"``.
        numpy, CuPy or torch; int or float, finite.
    cmap : str
        One of ``CMAPS``: ``"bwr"`` (blue-white-red), ``"coldnhot"`` (cyan-blue-black-red-yellow-
        white; black at zero), ``"seismic"``, ``"france"``, ``"coolio"``, ``"coleus"``
        (Zennit's palettes with the centre exactly at zero).
    clip : ``"symmetric"``, ``("percentile", q)`` or float
        The limit ``L``: ``"symmetric"``: ``max|R|`` (the largest magnitude gets the end colour);
        ``("percentile", q)``, ``0 < q <= 100``: ``np.percentile(|R|, q)`` (values beyond it
        saturate, so a few large values do not wash out the rest); a float > 0: that fixed limit
        (comparable colours across maps). A zero limit (an all-zero map) colours every pixel by
        its sign alone.
    reduce : ``"sum"``, ``"abs_sum"``, ``"max_abs"`` or ``"none"``
        How the channel axis becomes one value per pixel: the signed sum (keeps the sign: the
        usual choice for LRP, whose relevance sums over channels), the sum of magnitudes, the
        largest magnitude (Simonyan et al. 2014, Sec. 3.1, saliency maps), or ``"none"`` for maps
        that have no channel axis (then a 3-D ``R`` is a batch (N, H, W)). ``"abs_sum"`` and
        ``"max_abs"`` are non-negative, so they use only the colormap's upper half.
    shared : bool
        For a batch: one limit for all maps (colours comparable across samples) instead of one
        per map.

    Returns
    -------
    uint8 array (H, W, 3), or (N, H, W, 3) for a batch.

    Examples
    --------
    >>> import numpy as np
    >>> from relprop.viz import heatmap
    >>> heatmap(np.array([[1.0, 0.0, -1.0]])).tolist()
    [[[255, 0, 0], [255, 255, 255], [0, 0, 255]]]
    >>> heatmap(np.zeros((4, 3, 8, 8))).shape          # (N, C, H, W): channels summed
    (4, 8, 8, 3)
    """
    _cmap_nodes(cmap)
    mode, value = _parse_clip(clip)
    if not isinstance(shared, (bool, np.bool_)):
        raise ValueError(f"shared must be True or False; got {shared!r}")
    arr = _real_array(R, "R")
    _check_finite(arr, "R")
    maps, batched = _reduce_maps(arr, reduce)
    _check_finite(maps, "R reduced over channels")  # sums of huge finite values can overflow
    lim = _limits(maps, mode, value, bool(shared))[:, None, None]
    safe = np.where(lim > 0, lim, 1.0)
    with np.errstate(over="ignore"):  # a tiny fixed limit overflows r / L to inf, which clips to +-1
        t = np.where(lim > 0, np.clip(maps / safe, -1.0, 1.0), np.sign(maps))
    rgb = _colorize(t, cmap)
    return rgb if batched else rgb[0]


def _image_layout(img, hw, n):
    """``img`` as (N, H, W, C) with C in {1, 3}, matched against the heatmap's (H, W) and batch."""
    H, W = hw
    s = img.shape
    if n is None:
        if img.ndim == 2 and s == (H, W):
            return img[None, :, :, None]
        if img.ndim == 3:
            if s[1:] == (H, W) and s[0] in (1, 3):
                return np.moveaxis(img, 0, -1)[None]
            if s[:2] == (H, W) and s[2] in (1, 3):
                return img[None]
        raise ValueError(f"image shaped {s} does not match the heatmap's {H}x{W} pixels: expected (H, W), "
                         f"(C, H, W) or (H, W, C) with C in {{1, 3}} and (H, W) = ({H}, {W})")
    if img.ndim == 3 and s == (n, H, W):
        return img[..., None]
    if img.ndim == 4 and s[0] == n:
        if s[2:] == (H, W) and s[1] in (1, 3):
            return np.moveaxis(img, 1, -1)
        if s[1:3] == (H, W) and s[3] in (1, 3):
            return img
    raise ValueError(f"image shaped {s} does not match the batch of {n} heatmaps of {H}x{W} pixels: expected "
                     f"(N, H, W), (N, C, H, W) or (N, H, W, C) with N = {n}, C in {{1, 3}}, (H, W) = ({H}, {W})")


def _normalise_image(img):
    """uint8 (N, H, W, C): uint8 as is, anything else min-max scaled per image to 0..255."""
    if img.dtype == np.uint8:
        return img
    f = img.astype(np.float64)
    lo = f.min(axis=(1, 2, 3), keepdims=True)
    hi = f.max(axis=(1, 2, 3), keepdims=True)
    span = hi - lo
    # a constant image has no range to stretch: show it as mid grey rather than divide by zero
    scaled = np.where(span > 0, (f - lo) / np.where(span > 0, span, 1.0), 0.5)
    return np.rint(scaled * 255.0).astype(np.uint8)


def overlay(image, R, *, alpha=0.5, grey=False, **heatmap_kw):
    """Blend the heatmap of ``R`` over the input image.

    ``out = (1 - alpha) * image + alpha * heatmap(R, **heatmap_kw)``, rounded to uint8, where
    ``image`` is the input as uint8 RGB: uint8 images are used as they are, any other dtype is
    min-max scaled per image to 0..255 (a constant image becomes mid grey, 128), and with
    ``grey=True`` it is converted to luma ``0.299 r + 0.587 g + 0.114 b`` (ITU-R BT.601) so the
    heatmap's colours stand out.

    Parameters
    ----------
    image : array (H, W), (C, H, W) or (H, W, C) with C in {1, 3}; for a batch of heatmaps
        (N, H, W), (N, C, H, W) or (N, H, W, C). Any real dtype, finite; numpy, CuPy or torch.
        Its layout is found by matching the heatmap's (H, W); a shape that fits both layouts
        (e.g. 3 x 3 x 3) is read channels first.
    R : the attribution, as for :func:`heatmap`.
    alpha : float in [0, 1]
        The heatmap's weight: 0 gives the image, 1 the heatmap.
    grey : bool
        Convert the image to greyscale before blending.
    **heatmap_kw
        ``cmap``, ``clip``, ``reduce``, ``shared``: passed to :func:`heatmap`.

    Returns
    -------
    uint8 array (H, W, 3), or (N, H, W, 3) for a batch.

    Examples
    --------
    >>> import numpy as np
    >>> from relprop.viz import overlay
    >>> x = np.random.default_rng(0).random((3, 8, 8))
    >>> overlay(x, x - 0.5, alpha=0.6, grey=True).shape
    (8, 8, 3)
    """
    unknown = sorted(set(heatmap_kw) - set(_HEATMAP_KW))
    if unknown:
        raise TypeError(f"overlay() got unexpected keyword argument(s) {', '.join(unknown)}; besides image, R, "
                        f"alpha and grey it takes heatmap's {', '.join(_HEATMAP_KW)}")
    alpha = _check_unit(alpha, "alpha")
    if not isinstance(grey, (bool, np.bool_)):
        raise ValueError(f"grey must be True or False; got {grey!r}")
    heat = heatmap(R, **heatmap_kw)
    batched = heat.ndim == 4
    heat_b = heat if batched else heat[None]
    img = _real_array(image, "image")
    _check_finite(img, "image")
    if any(s == 0 for s in img.shape):
        raise ValueError(f"image is empty (shape {img.shape})")
    img = _normalise_image(_image_layout(img, heat_b.shape[1:3], heat_b.shape[0] if batched else None))
    if img.shape[-1] == 1:
        rgb = np.repeat(img, 3, axis=-1)
    else:
        rgb = img
    if grey and img.shape[-1] == 3:
        luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        rgb = np.repeat(np.rint(luma).astype(np.uint8)[..., None], 3, axis=-1)
    out = np.rint((1.0 - alpha) * rgb.astype(np.float64) + alpha * heat_b.astype(np.float64))
    out = np.clip(out, 0, 255).astype(np.uint8)
    return out if batched else out[0]


# --------------------------------------------------------------------------------------------
# grid / bars / save_png (Pillow)
# --------------------------------------------------------------------------------------------

def _tile(t, where):
    """One tile as uint8 (H, W, 3)."""
    if t is None:
        return None
    a = _as_numpy(t, where)
    if a.dtype != np.uint8:
        raise TypeError(f"{where} must be uint8 (e.g. from heatmap or overlay); got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{where} must be an image (H, W, 3) or (H, W); got shape {a.shape}")
    return a


def _grid_cells(images, rows, cols, row_labels, col_labels):
    """(tiles as a rows x cols list of lists with None for empty cells, rows, cols)."""
    if rows is not None:
        rows = _check_int(rows, "rows", 1)
    if cols is not None:
        cols = _check_int(cols, "cols", 1)
    nested = None
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images is empty")
        if all(isinstance(r, (list, tuple)) for r in images):
            nested = [[_tile(t, f"images[{i}][{j}]") for j, t in enumerate(r)] for i, r in enumerate(images)]
        else:
            flat = [_tile(t, f"images[{i}]") for i, t in enumerate(images)]
    else:
        a = _as_numpy(images, "images")
        if a.ndim == 5:
            nested = [[_tile(a[i, j], f"images[{i}, {j}]") for j in range(a.shape[1])] for i in range(a.shape[0])]
        elif a.ndim == 4:
            flat = [_tile(a[i], f"images[{i}]") for i in range(a.shape[0])]
        elif a.ndim == 3 and a.shape[-1] == 3:
            flat = [_tile(a, "images")]
        else:
            raise ValueError(f"images must be a list of (H, W, 3) uint8 images, an array (N, H, W, 3) or "
                             f"(rows, cols, H, W, 3), or a list of rows (lists); got an array shaped {a.shape}")
        if (nested is None and not flat) or (nested is not None and not nested):
            raise ValueError(f"images is empty (shape {a.shape})")
    if nested is not None:
        r_n, c_n = len(nested), max(len(r) for r in nested)
        if c_n == 0:
            raise ValueError("images holds only empty rows")
        if (rows is not None and rows != r_n) or (cols is not None and cols != c_n):
            raise ValueError(f"images is laid out as {r_n} rows x {c_n} columns, but rows={rows}, cols={cols} "
                             f"were given (leave them None for a nested list or a 5-D array)")
        cells = [r + [None] * (c_n - len(r)) for r in nested]
        return cells, r_n, c_n
    n = len(flat)
    if rows is None and cols is None:
        if col_labels is not None and not isinstance(col_labels, (str, bytes)) and hasattr(col_labels, "__len__"):
            cols = max(len(col_labels), 1)
        elif row_labels is not None and not isinstance(row_labels, (str, bytes)) and hasattr(row_labels, "__len__"):
            cols = math.ceil(n / max(len(row_labels), 1))
        else:
            cols = math.ceil(math.sqrt(n))
    if rows is None:
        rows = math.ceil(n / cols)
    elif cols is None:
        cols = math.ceil(n / rows)
    if rows * cols < n:
        raise ValueError(f"rows={rows} x cols={cols} = {rows * cols} cells cannot hold {n} images")
    flat = flat + [None] * (rows * cols - n)
    return [flat[i * cols:(i + 1) * cols] for i in range(rows)], rows, cols


def _check_bg(bg):
    if isinstance(bg, numbers.Integral) and not isinstance(bg, bool) and 0 <= bg <= 255:
        return (int(bg),) * 3
    if (isinstance(bg, (tuple, list)) and len(bg) == 3
            and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v <= 255 for v in bg)):
        return tuple(int(v) for v in bg)
    raise ValueError(f"bg must be an int 0..255 (grey) or an (r, g, b) tuple of ints 0..255; got {bg!r}")


def grid(images, *, rows=None, cols=None, row_labels=None, col_labels=None, pad=2, scale=1, bg=255,
         font_size=None):
    """Tile images into one labelled picture (e.g. methods x samples).

    Geometry (all in pixels): a tile is ``(H * scale, W * scale)``; a column is as wide as its
    tiles or, if wider, the widest column label plus ``2 * 4``; a row is as tall as its tiles or
    the tallest row label. Row labels sit right-aligned in a left margin as wide as the widest
    row label plus ``2 * 4``; column labels are centred in a top margin as tall as the tallest
    column label plus ``2 * 4`` (no margin without labels). Tiles are centred in their cells,
    with ``pad`` pixels between cells and around them::

        width  = left_margin + pad + cols * (cell_width + pad)
        height = top_margin + pad + rows * (cell_height + pad)

    Labels are drawn with Pillow's default font (``ImageFont.load_default()``), black on a light
    ``bg`` and white on a dark one.

    Parameters
    ----------
    images : a list of uint8 images (H, W, 3) or (H, W) (None: an empty cell), a list of rows
        (lists of images), or an array (N, H, W, 3) or (rows, cols, H, W, 3). All of one size.
    rows, cols : int >= 1 or None
        For a flat list: the layout, filled row by row. Defaults: ``cols = len(col_labels)``,
        else ``ceil(N / len(row_labels))``, else ``ceil(sqrt(N))``; ``rows = ceil(N / cols)``.
        Nested lists and 5-D arrays carry their own layout.
    row_labels, col_labels : list of str or None
        One per row / column.
    pad : int >= 0
    scale : int >= 1
        Upsamples each tile by this factor (nearest neighbour), so that small maps (MNIST's
        28 x 28) stay readable next to their labels.
    bg : int 0..255 or (r, g, b)
        Background colour.
    font_size : int or None
        Size of the default font (Pillow >= 10.1); None: Pillow's default.

    Returns
    -------
    uint8 array (height, width, 3).

    Examples
    --------
    >>> import numpy as np
    >>> from relprop.viz import grid, heatmap
    >>> maps = heatmap(np.random.default_rng(0).normal(size=(6, 28, 28)), reduce="none")
    >>> grid(maps, rows=2, pad=2, scale=2).shape    # 3 columns: 2 + 3 * (56 + 2)
    (118, 176, 3)
    """
    Image, ImageDraw, ImageFont = _pil("grid")
    pad = _check_int(pad, "pad", 0)
    scale = _check_int(scale, "scale", 1)
    bg = _check_bg(bg)
    cells, rows, cols = _grid_cells(images, rows, cols, row_labels, col_labels)
    row_labels = _check_labels(row_labels, rows, "row_labels", "row")
    col_labels = _check_labels(col_labels, cols, "col_labels", "column")
    tiles = [(i, j, t) for i, r in enumerate(cells) for j, t in enumerate(r) if t is not None]
    if not tiles:
        raise ValueError("images holds no image (only None cells)")
    h, w = tiles[0][2].shape[:2]
    for i, j, t in tiles:
        if t.shape[:2] != (h, w):
            raise ValueError(f"all images must have one size; the one at row {i}, column {j} is "
                             f"{t.shape[0]}x{t.shape[1]}, the first is {h}x{w}")
    font = _font(ImageFont, font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    th, tw = h * scale, w * scale
    cw, ch, left, top = tw, th, 0, 0
    if row_labels is not None:
        sizes = [_text_size(measure, s, font) for s in row_labels]
        left = max(s[2] for s in sizes) + 2 * _LABEL_PAD
        ch = max(ch, max(s[3] for s in sizes))
    if col_labels is not None:
        sizes = [_text_size(measure, s, font) for s in col_labels]
        top = max(s[3] for s in sizes) + 2 * _LABEL_PAD
        cw = max(cw, max(s[2] for s in sizes) + 2 * _LABEL_PAD)
    width = left + pad + cols * (cw + pad)
    height = top + pad + rows * (ch + pad)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = bg
    for i, j, t in tiles:
        if scale > 1:
            t = np.repeat(np.repeat(t, scale, axis=0), scale, axis=1)
        y = top + pad + i * (ch + pad) + (ch - th) // 2
        x = left + pad + j * (cw + pad) + (cw - tw) // 2
        canvas[y:y + th, x:x + tw] = t
    if row_labels is None and col_labels is None:
        return canvas
    pic = Image.fromarray(canvas)
    draw = ImageDraw.Draw(pic)
    ink = (0, 0, 0) if sum(bg) >= 3 * 128 else (255, 255, 255)
    for i, s in enumerate(row_labels or ()):
        _, _, sw, sh = _text_size(draw, s, font)
        _draw_text(draw, (left - _LABEL_PAD - sw, top + pad + i * (ch + pad) + (ch - sh) // 2), s, font, ink)
    for j, s in enumerate(col_labels or ()):
        _, _, sw, sh = _text_size(draw, s, font)
        _draw_text(draw, (left + pad + j * (cw + pad) + (cw - sw) // 2, (top - sh) // 2), s, font, ink)
    return np.array(pic)


def bars(values, names=None, *, title=None, sort=True, top=None, width=600, font_size=None):
    """Horizontal bar chart of one sample's tabular attribution.

    One row per feature: its name, a bar from the zero axis (red for positive, blue for negative,
    length proportional to the value, so the bars span the chart from the most negative to the
    most positive value) and the value as text.

    Parameters
    ----------
    values : array (F,) (or (1, F)), finite; numpy, CuPy or torch
    names : list of F str, or None (``"x0"``, ``"x1"``, ...)
    title : str or None
    sort : bool
        Order the rows by ``|value|``, largest first (ties keep their order); else as given.
    top : int >= 1 or None
        Keep only the first ``top`` rows (after sorting).
    width : int
        Image width in pixels; must leave room for the names and values.
    font_size : int or None
        Size of Pillow's default font (Pillow >= 10.1); None: Pillow's default.

    Returns
    -------
    uint8 array (height, width, 3); the height follows from the number of rows.

    Examples
    --------
    >>> import numpy as np
    >>> from relprop.viz import bars
    >>> img = bars(np.array([0.5, -1.2, 0.1]), ["age", "income", "height"], title="lrp.epsilon")
    >>> img.shape[1], img.dtype
    (600, dtype('uint8'))
    """
    Image, ImageDraw, ImageFont = _pil("bars")
    v = _real_array(values, "values")
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be one sample's attribution (F,) with F >= 1; got shape {v.shape} "
                         f"(for a batch, pass one row: values[i])")
    _check_finite(v, "values")
    v = v.astype(np.float64)
    if names is None:
        names = [f"x{i}" for i in range(v.size)]
    names = _check_labels(names, v.size, "names", "feature")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a str or None; got {type(title).__name__}")
    if not isinstance(sort, (bool, np.bool_)):
        raise ValueError(f"sort must be True or False; got {sort!r}")
    order = np.argsort(-np.abs(v), kind="stable") if sort else np.arange(v.size)
    if top is not None:
        order = order[:_check_int(top, "top", 1)]
    width = _check_int(width, "width", 1)
    font = _font(ImageFont, font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [f"{v[k]:+.3g}" for k in order]
    shown = [names[k] for k in order]
    name_w = max(_text_size(measure, s, font)[2] for s in shown)
    val_w = max(_text_size(measure, s, font)[2] for s in texts)
    text_h = max(_text_size(measure, s, font)[3] for s in shown + texts + ["Ag"])
    row_h = text_h + 8
    x0 = _BAR_PAD + name_w + _BAR_PAD
    x1 = width - _BAR_PAD - val_w - _BAR_PAD
    min_w = x0 + 40 + (width - x1)
    if x1 - x0 < 40:
        raise ValueError(f"width={width} leaves no room for the bars next to the names and values "
                         f"(needs at least {min_w} pixels)")
    title_h = (_text_size(measure, title, font)[3] + _BAR_PAD) if title else 0
    y0 = _BAR_PAD + title_h
    height = y0 + len(order) * row_h + _BAR_PAD
    pic = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(pic)
    if title:
        tw = _text_size(draw, title, font)[2]
        _draw_text(draw, (max((width - tw) // 2, 0), _BAR_PAD), title, font, (0, 0, 0))
    shown_v = v[order]
    neg = float(max(-shown_v.min(), 0.0))
    pos = float(max(shown_v.max(), 0.0))
    span = pos + neg
    zero = x0 + ((x1 - x0) * neg / span if span > 0 else (x1 - x0) / 2)
    for r, (k, name, text) in enumerate(zip(order, shown, texts)):
        y = y0 + r * row_h
        sh = _text_size(draw, name, font)[3]
        _draw_text(draw, (x0 - _BAR_PAD - _text_size(draw, name, font)[2], y + (row_h - sh) // 2), name, font,
                   (0, 0, 0))
        _draw_text(draw, (x1 + _BAR_PAD, y + (row_h - _text_size(draw, text, font)[3]) // 2), text, font,
                   (0, 0, 0))
        if v[k] != 0 and span > 0:
            # at least one pixel, so that the sign of a tiny value stays visible
            length = max(abs(v[k]) / span * (x1 - x0), 1.0)
            a, b = (zero, zero + length) if v[k] > 0 else (zero - length, zero)
            draw.rectangle([round(a), y + 2, max(round(b) - 1, round(a)), y + row_h - 3],
                           fill=_RED if v[k] > 0 else _BLUE)
    draw.line([(round(zero), y0), (round(zero), y0 + len(order) * row_h - 1)], fill=(128, 128, 128))
    return np.array(pic)


def _png_path(path, caller):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{caller}: path must be a str or os.PathLike; got {type(path).__name__}")
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"{caller}: path {str(p)!r} is a folder; give a file name such as "
                                f"{str(p / 'heatmap.png')!r}")
    parent = p.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{caller}: folder {str(parent)!r} does not exist (create it first, e.g. "
                                f"os.makedirs({str(parent)!r}))")
    return p


def save_png(img, path):
    """Write a uint8 image to a PNG file with Pillow.

    Parameters
    ----------
    img : uint8 array (H, W), (H, W, 3) or (H, W, 4); numpy, CuPy or torch
    path : str or os.PathLike
        The file (written as PNG whatever its suffix); its folder must exist.

    Returns
    -------
    str : ``path``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from relprop.viz import heatmap, save_png
    >>> out = save_png(heatmap(np.eye(4) - 0.5), os.path.join(tempfile.mkdtemp(), "h.png"))
    >>> out.endswith("h.png")
    True
    """
    Image, _, _ = _pil("save_png")
    a = _as_numpy(img, "img")
    if a.dtype != np.uint8:
        raise TypeError(f"img must be uint8 (e.g. from heatmap or overlay); got dtype {a.dtype}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise ValueError(f"img must be (H, W), (H, W, 3) or (H, W, 4); got shape {a.shape}")
    p = _png_path(path, "save_png")
    Image.fromarray(np.ascontiguousarray(a)).save(p, format="PNG")
    return os.fspath(path)


# --------------------------------------------------------------------------------------------
# curves (matplotlib, lazily)
# --------------------------------------------------------------------------------------------

def _curve_rows(a, name, t, gaps=False):
    if isinstance(a, (list, tuple)) and any(np.ndim(r) == 1 for r in a):
        rows = [_real_array(r, f"{name}[{k}]") for k, r in enumerate(a)]
        for k, r in enumerate(rows):
            if r.ndim != 1 or r.shape[0] != t:
                raise ValueError(f"{name}[{k}] must be a curve of {t} values (one per x); got shape {r.shape}")
        arr = np.stack(rows) if rows else np.empty((0, t))
    else:
        a = _real_array(a, name)
        arr = a[None] if a.ndim == 1 else a
        if arr.ndim != 2 or arr.shape[1] != t:
            raise ValueError(f"{name} must be (T,) or (K, T) with T = len(x) = {t}; got shape {a.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} holds no curve")
    _check_finite(np.where(np.isnan(arr), 0, arr) if gaps else arr, name)
    return arr.astype(np.float64)


def curves(x, ys, *, band=None, labels=None, xlabel=None, ylabel=None, title=None, path=None,
           figsize=(6.0, 4.0), dpi=100, xticklabels=None, ylim=None):
    """Line plot of one or more curves with optional shaded bands (e.g. mean +- std over seeds).

    Draws on a ``matplotlib.figure.Figure`` with its own Agg canvas: pyplot is not imported, the
    backend is not changed and no figure is registered, so this is safe inside notebooks and
    GUI sessions. Needs matplotlib (``pip install matplotlib``).

    Parameters
    ----------
    x : array (T,), finite
    ys : array (T,) or (K, T), or a list of K arrays (T,): the curves (e.g. means over seeds); NaN
        (an undefined value, e.g. the correlation with an all-zero map) leaves a gap, inf is an error
    band : None or like ``ys``, >= 0
        Half-widths: the area ``ys - band .. ys + band`` is shaded in each curve's colour (e.g.
        the standard deviation over seeds).
    labels : list of K str or None
        Legend entries.
    xlabel, ylabel, title : str or None
    path : str, os.PathLike or None
        Also write the image there as PNG (its folder must exist).
    figsize : (width, height) in inches, > 0
    dpi : int >= 1
    xticklabels : None or T str: a label under each x (e.g. the randomized layer of each step)
    ylim : None or (low, high)

    Returns
    -------
    uint8 array (round(height * dpi), round(width * dpi), 3).

    Examples
    --------
    >>> import numpy as np
    >>> from relprop.viz import curves
    >>> x = np.linspace(0, 1, 11)
    >>> runs = np.stack([1 - x ** k for k in (1, 2, 3)])
    >>> curves(x, runs.mean(0), band=runs.std(0), labels=["deletion"], xlabel="fraction removed",
    ...        ylabel="score").shape
    (400, 600, 3)
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as e:
        raise ImportError("relprop.viz.curves needs matplotlib: pip install matplotlib") from e
    xs = _real_array(x, "x")
    if xs.ndim != 1 or xs.size == 0:
        raise ValueError(f"x must be a 1-D array (T,) with T >= 1; got shape {xs.shape}")
    _check_finite(xs, "x")
    t = xs.shape[0]
    Y = _curve_rows(ys, "ys", t, gaps=True)
    B = None
    if band is not None:
        B = _curve_rows(band, "band", t, gaps=True)
        if B.shape != Y.shape:
            raise ValueError(f"band must have the shape of ys {Y.shape}; got {B.shape}")
        if (np.nan_to_num(B) < 0).any():
            k = tuple(int(i) for i in np.argwhere(np.nan_to_num(B) < 0)[0])
            raise ValueError(f"band holds half-widths and must be >= 0; band{list(k)} = {float(B[k])}")
    labels = _check_labels(labels, Y.shape[0], "labels", "curve")
    for name, s in (("xlabel", xlabel), ("ylabel", ylabel), ("title", title)):
        if s is not None and not isinstance(s, str):
            raise TypeError(f"{name} must be a str or None; got {type(s).__name__}")
    if (not isinstance(figsize, (tuple, list)) or len(figsize) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0
                       for v in figsize)):
        raise ValueError(f"figsize must be (width, height) in inches, both > 0; got {figsize!r}")
    dpi = _check_int(dpi, "dpi", 1)
    xticklabels = _check_labels(xticklabels, t, "xticklabels", "x value")
    if ylim is not None and (len(ylim) != 2 or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in ylim)
                             or ylim[0] >= ylim[1]):
        raise ValueError(f"ylim must be (low, high) with low < high; got {ylim!r}")
    if path is not None:
        _pil("curves")
        _png_path(path, "curves")  # fail before drawing, not after
    fig = Figure(figsize=tuple(float(v) for v in figsize), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for k in range(Y.shape[0]):
        (line,) = ax.plot(xs, Y[k], label=None if labels is None else labels[k])
        if B is not None:
            ax.fill_between(xs, Y[k] - B[k], Y[k] + B[k], color=line.get_color(), alpha=0.25, linewidth=0)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if xticklabels is not None:
        ax.set_xticks(xs)
        ax.set_xticklabels(xticklabels, rotation=45 if max(len(s) for s in xticklabels) > 4 else 0, ha="right",
                           fontsize="small")
    if ylim is not None:
        ax.set_ylim(*ylim)
    if labels is not None:
        ax.legend(fontsize="small", ncol=2 if len(labels) > 5 else 1)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    canvas.draw()
    img = np.array(canvas.buffer_rgba())[..., :3]
    if path is not None:
        save_png(img, path)
    return img
