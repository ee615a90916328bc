"""The z^B rule (Montavon et al. 2017) on a first Conv2d that reads x through a Pad (or the
ZeroInsert2d of a ConvTranspose2d): bounds given for x follow x through the copies -- a copied
pixel keeps its bounds, a constant Pad value c gets l = h = c -- and are checked before any kernel.

Expected values: a plain numpy z^B formula on the padded input,
``R_i = sum_j (x_i w_ij - l_i w_ij+ - h_i w_ij-) / sum_i (...) R_j`` (Montavon et al. 2017,
Sec. 4.3), written here with loops over the taps and ``np.pad`` (not relprop's kernels), and
Zennit 0.5.1, whose ZBox runs the conv's own forward (its ``padding_mode``) on the bounds.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import relprop as rp
from relprop.core import budget
from relprop.core import engine

RNG = np.random.default_rng(11)
C, H, W, O, K = 2, 5, 6, 3, 4
PADS = (1, 2, 2, 1)  # top, bottom, left, right
NP_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# ---- the numpy reference ---------------------------------------------------------------------


def _pad(a, mode, pads=PADS):
    """np.pad of the last two axes; constant pads with 0."""
    t, b, l, r = pads
    width = [(0, 0)] * (a.ndim - 2) + [(t, b), (l, r)]
    return np.pad(a, width, mode=NP_MODES[mode])


def _pad_adjoint(rp_, mode, h, w, pads=PADS):
    """The transpose of :func:`_pad`: each padded position's value added to its source pixel
    (constant positions have none), from np.pad of the pixel indices."""
    t, b, l, r = pads
    idx = np.arange(h * w).reshape(h, w)
    src = np.pad(idx, ((t, b), (l, r)), constant_values=-1) if mode == "constant" else \
        np.pad(idx, ((t, b), (l, r)), mode=NP_MODES[mode])
    out = np.zeros(rp_.shape[:-2] + (h * w,))
    flat = rp_.reshape(rp_.shape[:-2] + (-1,))
    keep = src.reshape(-1) >= 0
    for i in np.flatnonzero(keep):
        out[..., src.reshape(-1)[i]] += flat[..., i]
    return out.reshape(rp_.shape[:-2] + (h, w))


def _conv(x, w):
    """Valid cross-correlation, stride 1: a loop over the taps."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    ho, wo = h - kh + 1, wd - kw + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j], x[:, :, i:i + ho, j:j + wo])
    return out


def _conv_t(s, w, h, wd):
    """The transpose of :func:`_conv` onto an (h, wd) input."""
    n, o, ho, wo = s.shape
    out = np.zeros((n, w.shape[1], h, wd))
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            out[:, :, i:i + ho, j:j + wo] += np.einsum("oc,nohw->nchw", w[:, :, i, j], s)
    return out


def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def reference(x, low, high, mode, params, target, eps_box=1e-6, eps_dense=1e-6):
    """LRP of Pad -> Conv2d (z^B) -> ReLU -> Flatten -> Dense (epsilon, with bias), started
    from s_c e_c; ``low``/``high`` broadcast to x (a row per sample allowed)."""
    wc, bc, v, c = params
    n = x.shape[0]
    lo, hi = (np.broadcast_to(np.asarray(b, np.float64), x.shape) for b in (low, high))
    xp, lp, hp = _pad(x, mode), _pad(lo, mode), _pad(hi, mode)  # constant: l = h = x = 0 there
    z1 = _conv(xp, wc) + bc[None, :, None, None]
    a1 = np.maximum(z1, 0).reshape(n, -1)
    z2 = a1 @ v.T + c
    r2 = np.zeros_like(z2)
    r2[np.arange(n), target] = z2[np.arange(n), target]
    r1 = (a1 * ((r2 / _stab(z2, eps_dense)) @ v)).reshape(z1.shape)  # the ReLU passes relevance
    wp, wn = np.maximum(wc, 0), np.minimum(wc, 0)
    zb = _conv(xp, wc) - _conv(lp, wp) - _conv(hp, wn)  # the bias terms b - b+ - b- cancel
    s = r1 / _stab(zb, eps_box)
    hh, ww = xp.shape[2:]
    r_pad = xp * _conv_t(s, wc, hh, ww) - lp * _conv_t(s, wp, hh, ww) - hp * _conv_t(s, wn, hh, ww)
    return _pad_adjoint(r_pad, mode, x.shape[2], x.shape[3])


def _params():
    ho, wo = H + PADS[0] + PADS[1] - 2, W + PADS[2] + PADS[3] - 2
    return (RNG.normal(size=(O, C, 3, 3)), RNG.normal(size=O) * 0.1, RNG.normal(size=(K, O * ho * wo)),
            RNG.normal(size=K) * 0.1)


def _net(mode, params):
    wc, bc, v, c = params
    return rp.Sequential(rp.Pad(PADS, mode), rp.Conv2d(wc, bc), rp.ReLU(), rp.Flatten(), rp.Dense(v, c))


def _x(n=3):
    return RNG.uniform(0.2, 0.9, size=(n, C, H, W))


def _bounds(kind, x):
    if kind == "scalar":
        return 0.0, 1.0
    if kind == "per_channel":
        return x.min(axis=(0, 2, 3), keepdims=True) - 0.05, x.max(axis=(0, 2, 3), keepdims=True) + 0.1
    lo = x.min(axis=0) - RNG.uniform(0, 0.2, size=x.shape[1:])  # distinct per pixel: the mapping shows
    hi = x.max(axis=0) + RNG.uniform(0, 0.2, size=x.shape[1:])
    return (lo[None], hi[None]) if kind == "per_pixel" else (lo, hi)  # (1, C, H, W) or (C, H, W)


def _close(r, ref, rtol=1e-9):
    r, ref = np.asarray(r, np.float64), np.asarray(ref, np.float64)
    assert r.shape == ref.shape, (r.shape, ref.shape)
    for i in range(r.shape[0]):
        scale = max(np.abs(ref[i]).max(), 1e-300)
        err = np.abs(r[i] - ref[i]).max()
        assert err <= rtol * scale, f"sample {i}: max|diff| {err:.3g} > {rtol} * {scale:.3g}"


@pytest.mark.parametrize("kind", ["scalar", "per_channel", "per_pixel", "per_pixel_3d"])
@pytest.mark.parametrize("mode", sorted(NP_MODES))
def test_reference_zbox_behind_pad_equals_numpy(mode, kind):
    params = _params()
    net, x = _net(mode, params), _x()
    low, high = _bounds(kind, x)
    target = np.array([0, 3, 1])
    r = rp.attribute(net, x, "lrp", target=target, rules=[rp.rules.ZBox(low, high), rp.rules.Epsilon(1e-6)])
    _close(r, reference(x, low, high, mode, params, target))
    # EpsilonGammaBox puts the same z^B on its first Conv2d (and epsilon on the Dense)
    r2 = rp.attribute(net, x, "lrp", target=target, rules=rp.composites.EpsilonGammaBox(low, high))
    _close(r2, reference(x, low, high, mode, params, target))


@pytest.mark.parametrize("mode", sorted(NP_MODES))
def test_reference_bounds_in_the_padded_shape(mode):
    """Bounds given for the layer's own (padded) input are taken as they are: the copies of the
    x-shaped bounds give the same relevance as the x-shaped bounds."""
    params = _params()
    net, x = _net(mode, params), _x()
    low, high = _bounds("per_pixel", x)
    target = np.array([2, 2, 0])
    r = rp.attribute(net, x, "deep_taylor", target=target, low=_pad(low, mode), high=_pad(high, mode))
    r_x = rp.attribute(net, x, "deep_taylor", target=target, low=low, high=high)
    np.testing.assert_allclose(r, r_x, rtol=1e-12, atol=1e-15)


def test_reference_zero_pad_layer_equals_conv_padding():
    """Pad(constant 0) + Conv2d equals Conv2d(padding=p) under z^B with scalar bounds that hold
    0 inside (-1, 2): Conv2d's im2col pads the bounds with zeros, so must the Pad."""
    wc = RNG.normal(size=(O, C, 3, 3))
    v = RNG.normal(size=(K, O * H * W))
    x = _x()
    padded = rp.Sequential(rp.Pad((1, 1, 1, 1)), rp.Conv2d(wc), rp.ReLU(), rp.Flatten(), rp.Dense(v))
    own = rp.Sequential(rp.Conv2d(wc, padding=1), rp.ReLU(), rp.Flatten(), rp.Dense(v))
    for kw in ({"low": -1.0, "high": 2.0}, {"low": np.full((C, H, W), -1.0), "high": np.full((1, C, 1, 1), 2.0)}):
        np.testing.assert_allclose(rp.attribute(padded, x, "deep_taylor", **kw), rp.attribute(own, x, "deep_taylor", **kw),
                                   rtol=1e-10, atol=1e-14)


def test_reference_per_sample_bounds_across_internal_batches(monkeypatch):
    """Bounds with a row per sample (x -+ a margin) over several internal batches (4 rows each)
    and for several targets in one backward pass (the rows repeated per target): each sample
    gets its own box."""
    params = _params()
    net, x = _net("reflect", params), _x(10)
    low, high = x - RNG.uniform(0, 0.3, x.shape), x + RNG.uniform(0, 0.3, x.shape)
    target = RNG.integers(0, K, 10)
    with monkeypatch.context() as m:
        m.setattr(budget, "BUDGET", budget.Budget(cache=1, min_rows=4))
        r = rp.attribute(net, x, "deep_taylor", target=target, low=low, high=high)
    # deep_taylor: z+ without bias on the Dense (Montavon et al. 2017)
    wc, bc, v, c = params
    ref = reference(x, low, high, "reflect", (wc, bc, np.maximum(v, 0), np.zeros(K)), target)
    assert np.abs(ref).max() > 0
    # (z+ on the Dense sees z2 = a1 v+ without bias while the start is the real score s_c)
    scale = _score(net, x, target) / _score_plus(params, x, target)
    _close(r, ref * scale[:, None, None, None])
    many = rp.attribute(net, x, "deep_taylor", targets=[1, 3], low=low, high=high)
    for k, t in enumerate([1, 3]):
        tt = np.full(10, t)
        ref_t = reference(x, low, high, "reflect", (wc, bc, np.maximum(v, 0), np.zeros(K)), tt)
        _close(many[:, k], ref_t * (_score(net, x, tt) / _score_plus(params, x, tt))[:, None, None, None])


def _score(net, x, target):
    return rp.scores(net, x)[np.arange(len(x)), target]


def _score_plus(params, x, target):
    wc, bc, v, c = params
    a1 = np.maximum(_conv(_pad(x, "reflect"), wc) + bc[None, :, None, None], 0).reshape(len(x), -1)
    return (a1 @ np.maximum(v, 0).T)[np.arange(len(x)), target]


# ---- Zennit: the conv's own padding_mode, ConvTranspose2d ----------------------------------


def _zennit(model, x, tgt, composite):
    import torch
    import torch.nn.functional as F
    from torch_ref import zennit_relevance

    xt = torch.from_numpy(x).requires_grad_(True)
    t = torch.as_tensor(tgt)
    return zennit_relevance(model, xt, composite, lambda out: F.one_hot(t, out.shape[1]).to(out.dtype) * out.detach())


def _import(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rp.from_torch(model, x)


@pytest.mark.parametrize("first", ["reflect", "replicate", "circular", "transposed"])
def test_peers_zennit_zbox_per_pixel_bounds(first):
    """EpsilonGammaBox with per-pixel bounds (1, C, H, W) on a first conv with
    ``padding_mode`` (imported as Pad + Conv2d) or a first ConvTranspose2d (ZeroInsert2d +
    Conv2d): Zennit runs the module's forward on the bounds, i.e. pads them the same way."""
    torch = pytest.importorskip("torch")
    zc = pytest.importorskip("zennit.composites")
    nn = torch.nn
    torch.manual_seed(3)
    if first == "transposed":
        head = nn.ConvTranspose2d(C, 4, 3, stride=2, padding=1)
        hw = (2 * H - 1, 2 * W - 1)
    else:
        head = nn.Conv2d(C, 4, 3, padding=1, padding_mode=first)
        hw = (H, W)
    model = nn.Sequential(head, nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * hw[0] * hw[1], K)).double().eval()
    x = _x()
    low, high = _bounds("per_pixel", x)
    with torch.no_grad():
        tgt = model(torch.from_numpy(x)).numpy().argmin(axis=1)
    net = _import(model, x)
    r = rp.attribute(net, x, "lrp", target=tgt, rules=rp.composites.EpsilonGammaBox(low, high))
    ref = _zennit(model, x, tgt, zc.EpsilonGammaBox(torch.from_numpy(low), torch.from_numpy(high)))
    _close(r, ref, 1e-8)


# ---- errors ----------------------------------------------------------------------------------


def _no_kernel(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("a kernel ran before the bounds were refused")

    monkeypatch.setattr(engine, "forward", boom)


def test_errors_bounds_fit_neither_x_nor_the_padded_input(monkeypatch):
    net, x = _net("reflect", _params()), _x()
    _no_kernel(monkeypatch)
    with pytest.raises(ValueError, match=r"ZBox rule on layer '1': low of shape \(1, 2, 4, 4\) broadcasts neither to "
                                         r"x \(3, 2, 5, 6\) nor to the layer's input \(3, 2, 8, 9\) \(x after '0' "
                                         r"\(Pad\(\(1, 2, 2, 1\), mode='reflect'\)\)\)"):
        rp.attribute(net, x, "deep_taylor", low=np.zeros((1, C, 4, 4)), high=1.0)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_errors_x_outside_the_bounds_behind_a_pad(monkeypatch, mode):
    net, x = _net(mode, _params()), _x()
    low, high = _bounds("per_pixel", x)
    high = high.copy()
    high[0, 1, 2, 3] = x[2, 1, 2, 3] - 0.01
    _no_kernel(monkeypatch)
    with pytest.raises(ValueError, match=r"x is not inside the bounds \[low, high\]: sample \d, feature \(1, 2, 3\)"):
        rp.attribute(net, x, "lrp", rules=rp.composites.EpsilonGammaBox(low, high))


def test_errors_padded_shape_bounds_checked_on_the_padded_values(monkeypatch):
    """Bounds in the padded shape are checked against what the layer reads: the constant 0 of
    the padding is not inside low = 0.1."""
    net, x = _net("constant", _params()), _x()
    _no_kernel(monkeypatch)
    with pytest.raises(ValueError, match=r"ZBox rule on layer '1' \(its input: x after '0' \(Pad.*\)\): x is not "
                                         r"inside the bounds \[low, high\]: sample 0, feature \(0, 0, 0\): x = 0\.0 < "
                                         r"low = 0\.1"):
        rp.attribute(net, x, "deep_taylor", low=np.full((1, C, 8, 9), 0.1), high=1.0)


def test_errors_bounds_of_x_behind_a_layer_that_changes_values(monkeypatch):
    """Behind a MaxPool2d the bounds of x cannot be carried: bounds in x's shape are refused up
    front; scalar bounds are the layer input's and are checked when it runs."""
    wc = RNG.normal(size=(O, C, 3, 3))
    net = rp.Sequential(rp.MaxPool2d(2), rp.Conv2d(wc, padding=1), rp.ReLU(), rp.Flatten(), rp.Dense(RNG.normal(size=(K, O * 4 * 4))))
    x = RNG.uniform(0.2, 0.9, size=(2, C, 8, 8))
    with monkeypatch.context() as m:
        _no_kernel(m)
        with pytest.raises(ValueError, match=r"low of shape \(1, 2, 8, 8\) does not broadcast to the layer's input "
                                             r"\(2, 2, 4, 4\); '0' \(MaxPool2d\) lie between x and this layer"):
            rp.attribute(net, x, "deep_taylor", low=np.zeros((1, C, 8, 8)), high=1.0)
    assert np.isfinite(rp.attribute(net, x, "deep_taylor", low=0.0, high=1.0)).all()
    with pytest.raises(ValueError, match=r"ZBox on layer '1': its input is not inside \[low, high\].*the layers before "
                                         r"it compute that input from x"):
        rp.attribute(net, x, "deep_taylor", low=0.5, high=1.0)


# ---- the slack of the bounds check is in ulps of x's dtype ----------------------------------


def _direct_net():
    return rp.Sequential(rp.Conv2d(RNG.normal(size=(O, C, 3, 3)), padding=1), rp.ReLU(), rp.Flatten(),
                         rp.Dense(RNG.normal(size=(K, O * H * W))))


@pytest.mark.parametrize("make", [_direct_net, lambda: _net("reflect", _params())], ids=["direct", "pad"])
def test_errors_float64_bounds_slack_in_float64_ulps(make):
    """high = 0.75 (exact in both dtypes). float64 x: 2 float64 ulps above pass, 1 float32 ulp
    above is refused; float32 x: 4 float32 ulps above pass, 5 are refused. The accepted inputs
    also pass the engine's own check of the layer input."""
    net = make()
    high = 0.75
    u32, u64 = float(np.spacing(np.float32(high))), float(np.spacing(np.float64(high)))
    x = RNG.uniform(0.2, 0.7, size=(2, C, H, W))
    x64 = x.copy()
    x64[1, 0, 2, 2] = high + 2 * u64
    assert np.isfinite(rp.attribute(net, x64, "deep_taylor", low=0.0, high=high)).all()
    x64[1, 0, 2, 2] = high + u32
    with pytest.raises(ValueError, match=r"x = 0\.7500000596046448 > high = 0\.75 \(by 5\.96e-08, 5\.37e\+08 float64 "
                                         r"ulps of the bound\).*up to 4 float64 ulps of the bound"):
        rp.attribute(net, x64, "deep_taylor", low=0.0, high=high)
    x32 = x.astype(np.float32)
    x32[1, 0, 2, 2] = np.float32(high + 4 * u32)
    assert np.isfinite(rp.attribute(net, x32, "deep_taylor", low=0.0, high=high)).all()
    x32[1, 0, 2, 2] = np.float32(high + 5 * u32)
    with pytest.raises(ValueError, match=r"5 float32 ulps of the bound\).*up to 4 float32 ulps of the bound"):
        rp.attribute(net, x32, "deep_taylor", low=0.0, high=high)
    # a low bound, too, and float64 bounds that are not float32 numbers
    low = 0.1
    x64 = x.copy()
    x64[0, 1, 0, 0] = low - 3 * float(np.spacing(low))
    assert np.isfinite(rp.attribute(net, x64, "deep_taylor", low=low, high=1.0)).all()
    x64[0, 1, 0, 0] = low - 6 * float(np.spacing(low))
    with pytest.raises(ValueError, match=r"< low = 0\.1 .*6 float64 ulps"):
        rp.attribute(net, x64, "deep_taylor", low=low, high=1.0)


@pytest.mark.parametrize("make", [_direct_net, lambda: _net("reflect", _params())], ids=["direct", "pad"])
def test_errors_float64_x_with_float32_rounded_bounds_says_so(make):
    """ImageNet's blue low bound (0 - 0.406) / 0.225 computed in float64 for x and rounded to float32
    for the bound: the black pixel lies below the float32 bound by a fraction of a float32 ulp,
    millions of float64 ulps. Refused (float64 x gets float64 slack), and the message says the
    bound looks rounded to float32 and what to do; an x outside by more than float32's slack
    gets no such hint."""
    net = make()
    low64 = (0 - 0.406) / 0.225
    low32 = float(np.float32(low64))
    assert low32 > low64  # the float32 bound is above the float64 pixel: x < low by rounding alone
    x = RNG.uniform(-1.0, 1.0, size=(2, C, H, W))
    x[0, 1, 1, 1] = low64
    assert np.isfinite(rp.attribute(net, x, "deep_taylor", low=low64, high=1.0)).all()
    hint = "the bounds look rounded to float32: pass them as float64 or cast x to float32"
    with pytest.raises(ValueError, match=r"up to 4 float64 ulps of the bound\); x is inside them up to 4 float32 "
                                         r"ulps: the bounds look rounded to float32: pass them as float64 or cast x "
                                         r"to float32") as info:
        rp.attribute(net, x, "deep_taylor", low=low32, high=1.0)
    assert "\n" not in str(info.value)
    assert np.isfinite(rp.attribute(net, x.astype(np.float32), "deep_taylor", low=low32, high=1.0)).all()
    x[0, 1, 1, 1] = low32 - 8 * float(np.spacing(np.float32(abs(low32))))
    with pytest.raises(ValueError, match="x is not inside the bounds") as info:
        rp.attribute(net, x, "deep_taylor", low=low32, high=1.0)
    assert hint not in str(info.value)
