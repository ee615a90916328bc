"""The CPU lowerings of stride-1 convolutions, shifted GEMMs (``relprop.kernels.cpu.shifted``)
and Winograd F(2x2, 3x3) and F(4x4, 3x3) (``relprop.kernels.cpu.winograd``; Lavin & Gray 2016), against
an independent numpy convolution, the im2col route, and whole models run each way."""
from __future__ import annotations

import numpy as np
import pytest

import relprop as rp
from relprop.core import linear
from relprop.core.backend import kernels_for

from tolerance import assert_blas_close

cpu = kernels_for(np.zeros(1))
needs_cblas = pytest.mark.skipif(not cpu.SHIFTED, reason="numpy's BLAS exports no CBLAS gemm (no shifted route)")


def numpy_conv(x, w, ph, pw):
    """z[n, o, y, x] = sum_{c,i,j} w[o, c, i, j] xpad[n, c, y + i, x + j] (stride 1), by einsum."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho, wo = h + 2 * ph - kh + 1, wd + 2 * pw - kw + 1
    z = np.zeros((n, o, ho, wo), np.result_type(x, w))
    for i in range(kh):
        for j in range(kw):
            z += np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i:i + ho, j:j + wo])
    return z


class _M:  # the plan's host cache, as conv_gemm uses it (no model: per-layer sharing is not exercised)
    graph = None

    def __init__(self):
        self.c = {}

    def host(self, key, build, node=None):
        if key not in self.c:
            self.c[key] = build()
        return self.c[key]


@needs_cblas
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("n,c,o,h,w,kh,kw,ph,pw", [
    (2, 3, 5, 7, 9, 3, 3, 1, 1), (3, 4, 2, 6, 6, 3, 3, 0, 0), (1, 2, 3, 8, 5, 5, 5, 2, 2),
    (2, 3, 4, 9, 7, 3, 1, 1, 0), (2, 1, 6, 5, 8, 1, 3, 0, 1), (4, 8, 8, 12, 12, 3, 3, 2, 1)])
def test_shifted_conv_equals_a_numpy_convolution(dtype, tol, n, c, o, h, w, kh, kw, ph, pw, monkeypatch):
    monkeypatch.setattr(linear, "WIDE_WASTE", np.inf)  # take the shifted route whatever the geometry
    monkeypatch.setattr(linear, "SHIFTED_MIN_CHANNELS", 1)  # and the channel count
    calls = []
    real = cpu.gemm_taps
    monkeypatch.setattr(cpu, "gemm_taps", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(kh * 7 + ph)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(o, c, kh, kw)).astype(dtype)
    got = linear.conv_gemm(cpu, _M(), x, wt.reshape(o, -1), ("t",), kh, kw, 1, 1, ph, pw)
    assert calls == ([1] if kh * kw > 1 else []), "the shifted route was not taken"
    ref = numpy_conv(x.astype(np.float64), wt.astype(np.float64), ph, pw)
    ho, wo = ref.shape[2:]
    got = got.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)
    assert np.max(np.abs(got - ref)) <= tol * np.max(np.abs(ref))
    # and the im2col route gives the same sums
    via_cols = linear.conv_gemm(cpu, _M(), x, wt.reshape(o, -1), None, kh, kw, 1, 1, ph, pw)
    assert_blas_close(via_cols.reshape(o, n, ho, wo).transpose(1, 0, 2, 3), got)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-6)])
@pytest.mark.parametrize("n,c,o,h,w,ph,pw", [(2, 16, 5, 7, 9, 1, 1), (3, 16, 4, 6, 6, 0, 0), (1, 20, 3, 5, 8, 2, 2),
                                             (2, 32, 8, 16, 16, 1, 1), (2, 16, 3, 4, 3, 1, 2), (1, 16, 2, 1, 1, 1, 1)])
def test_winograd_equals_a_numpy_convolution(dtype, tol, n, c, o, h, w, ph, pw, monkeypatch):
    """Odd and even output sizes (a last half tile), padding 0..2, in the two dtypes."""
    monkeypatch.setattr(cpu, "SHIFTED", False)
    monkeypatch.setattr(linear, "WINOGRAD_MIN_CHANNELS", 1)  # small test layers: take the route anyway
    monkeypatch.setattr(linear, "WINOGRAD4_MIN_CHANNELS", None)  # F(2x2) only
    rng = np.random.default_rng(h * 3 + ph)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(o, c, 3, 3)).astype(dtype)
    ref = numpy_conv(x.astype(np.float64), wt.astype(np.float64), ph, pw)
    _check_winograd(cpu.winograd_input, "winograd", x, wt, ph, pw, ref, tol, monkeypatch)


def _check_winograd(kernel, name, x, wt, ph, pw, ref, tol, monkeypatch):
    """The kernels themselves on any geometry (tiles, filter, input transform, GEMMs, output
    transform), and ``conv_gemm`` taking that route where ``winograd_route`` chooses it."""
    n, c, h, w = x.shape
    o, ho, wo = wt.shape[0], ref.shape[2], ref.shape[3]
    f4 = name == "winograd4"
    th, tw = (cpu.winograd4_tiles if f4 else cpu.winograd_tiles)(ho, wo)
    u = (cpu.winograd4_filter if f4 else cpu.winograd_filter)(wt.reshape(o, -1), c)
    v = np.empty((u.shape[0], c, n * th * tw), x.dtype)
    kernel(x, ph, pw, th, tw, v)
    out = np.empty((o, n * ho * wo), x.dtype)
    (cpu.winograd4_output if f4 else cpu.winograd_output)(np.matmul(u, v), n, th, tw, ho, wo, out)
    outs = [out]
    if linear.winograd_route(cpu, c, h, w, 3, 3, 1, 1, ph, pw) == name:
        calls = []
        monkeypatch.setattr(cpu, kernel.__name__, lambda *a: calls.append(1) or kernel(*a))
        outs.append(linear.conv_gemm(cpu, _M(), x, wt.reshape(o, -1), ("t",), 3, 3, 1, 1, ph, pw, winograd="f4"))
        assert calls, f"the {name} route was not taken"
    for got in outs:
        got = got.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)
        assert np.max(np.abs(got - ref)) <= tol * np.max(np.abs(ref))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("n,c,o,h,w,ph,pw", [(2, 8, 5, 7, 9, 1, 1), (3, 8, 4, 6, 6, 0, 0), (1, 12, 3, 5, 8, 2, 2),
                                             (2, 32, 8, 16, 16, 1, 1), (2, 8, 3, 4, 3, 1, 2), (1, 8, 2, 1, 1, 1, 1),
                                             (2, 8, 3, 10, 13, 1, 0), (1, 64, 16, 11, 12, 1, 1)])
def test_winograd4_equals_a_numpy_convolution(dtype, tol, n, c, o, h, w, ph, pw, monkeypatch):
    """F(4x4, 3x3): output sizes 1..16 with last tiles of 1, 2, 3 or 4 rows and columns, padding
    0..2, in the two dtypes (float32 rounding: its transforms' coefficients up to 8 and 1/24)."""
    monkeypatch.setattr(cpu, "SHIFTED", False)
    monkeypatch.setattr(linear, "WINOGRAD4_MIN_CHANNELS", 1)  # small test layers: take the route anyway
    rng = np.random.default_rng(h * 3 + ph + w)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(o, c, 3, 3)).astype(dtype)
    ref = numpy_conv(x.astype(np.float64), wt.astype(np.float64), ph, pw)
    _check_winograd(cpu.winograd4_input, "winograd4", x, wt, ph, pw, ref, tol, monkeypatch)


def test_winograd_routes_follow_the_multiplication_count(monkeypatch):
    """F(4x4) where its 6x6 tiles need fewer multiplications than F(2x2)'s 4x4 tiles and the
    direct sum (and the layer has enough channels); F(2x2) on small maps; neither for other
    windows, strides, or without the CPU kernels."""
    monkeypatch.setattr(linear, "WINOGRAD4_MIN_CHANNELS", 64)
    route = lambda c, h, ph=1, k=3, s=1: linear.winograd_route(cpu, c, h, h, k, k, s, s, ph, ph)  # noqa: E731
    assert route(64, 64) == route(512, 8) == route(256, 14) == route(512, 7) == "winograd4"
    # forward passes (f4=False): F(2x2) on maps of <= 16x16 outputs with >= 128 channels only
    assert linear.winograd_route(cpu, 512, 8, 8, 3, 3, 1, 1, 1, 1, f4=False) == "winograd"
    assert linear.winograd_route(cpu, 64, 64, 64, 3, 3, 1, 1, 1, 1, f4=False) is None
    assert route(512, 2) == "winograd"  # one 6x6 tile for 2x2 outputs: 36 > 16 multiplications per pair
    assert route(512, 1) is None  # a 1x1 output: 9 multiplications direct, 16 with F(2x2)
    assert route(32, 32) is None  # too few channels: the transforms cost more than the GEMMs save
    assert route(512, 8, k=5) is None and route(512, 8, s=2) is None
    monkeypatch.setattr(cpu, "WINOGRAD", False)
    assert route(512, 8) is None
    monkeypatch.setattr(cpu, "WINOGRAD", True)
    monkeypatch.setattr(linear, "WINOGRAD4_MIN_CHANNELS", None)  # the default: F(4x4) off
    assert route(64, 64) is None and route(512, 8) == "winograd"


def test_winograd_buffers_are_checked():
    x = np.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match="winograd_input"):
        cpu.winograd_input(x, 1, 1, 2, 2, np.empty((16, 3, 7)))
    with pytest.raises(ValueError, match="winograd_output"):
        cpu.winograd_output(np.empty((16, 5, 8)), 2, 2, 2, 5, 4, np.empty((5, 40)))
    with pytest.raises(ValueError, match="winograd4_input"):
        cpu.winograd4_input(x, 1, 1, 1, 1, np.empty((16, 3, 2)))
    with pytest.raises(ValueError, match="winograd4_output"):
        cpu.winograd4_output(np.empty((36, 5, 2)), 2, 1, 1, 5, 4, np.empty((5, 40)))


@needs_cblas
def test_small_maps_take_im2col(monkeypatch):
    """On an 8x8 map a 3x3 window's padded grid holds 1.56 positions per output: im2col is used."""
    def boom(*a):
        raise AssertionError("shifted GEMMs used")

    monkeypatch.setattr(cpu, "gemm_taps", boom)
    monkeypatch.setattr(cpu, "WINOGRAD", False)
    x = np.ones((2, 8, 8, 8))
    linear.conv_gemm(cpu, _M(), x, np.ones((3, 72)), ("t",), 3, 3, 1, 1, 1, 1)
    with pytest.raises(AssertionError, match="shifted"):
        linear.conv_gemm(cpu, _M(), np.ones((2, 8, 32, 32)), np.ones((3, 72)), ("t",), 3, 3, 1, 1, 1, 1)


@needs_cblas
def test_few_input_channels_take_im2col(monkeypatch):
    """An RGB first layer (3 channels): im2col + one GEMM (K = 27), not 9 shifted GEMMs with K = 3;
    from SHIFTED_MIN_CHANNELS on the shifted route."""
    taken = []
    for fn in ("gemm_taps", "im2col"):
        real = getattr(cpu, fn)
        monkeypatch.setattr(cpu, fn, (lambda real, fn: lambda *a: taken.append(fn) or real(*a))(real, fn))
    for c, want in ((3, "im2col"), (linear.SHIFTED_MIN_CHANNELS, "gemm_taps")):
        taken.clear()
        linear.conv_gemm(cpu, _M(), np.ones((2, c, 32, 32)), np.ones((4, c * 9)), ("t",), 3, 3, 1, 1, 1, 1)
        assert set(taken) == {want}, (c, taken)


@needs_cblas
def test_buffers_are_checked():
    x = np.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match="pad_flat"):
        cpu.pad_flat(x, 1, 1, np.empty((3, 10)))
    with pytest.raises(ValueError, match="crop_wide"):
        cpu.crop_wide(np.empty((3, 72)), 2, 6, 6, 4, 4, np.empty((3, 31)))
    taps = cpu.taps(np.ones((5, 27)), 3, 3, 3)
    xf = np.zeros((3, 72))  # no tail: the last shifted views would read past the end
    with pytest.raises(ValueError, match="past the end"):
        cpu.gemm_taps(taps, xf, 6, 3, np.empty((5, 72)))
    with pytest.raises(ValueError, match="one dtype"):
        cpu.gemm_taps(taps.astype(np.float32), np.zeros((3, 86)), 6, 3, np.empty((5, 72)))


def _cnn(dtype):
    rng = np.random.default_rng(0)
    return rp.Sequential(
        rp.Conv2d(rng.normal(0, 0.3, (8, 3, 3, 3)), rng.normal(0, 0.1, 8), padding=1), rp.ReLU(),
        rp.Conv2d(rng.normal(0, 0.2, (8, 8, 3, 3)), rng.normal(0, 0.1, 8), padding=1), rp.ReLU(), rp.MaxPool2d(2),
        rp.Conv2d(rng.normal(0, 0.2, (16, 8, 5, 5)), rng.normal(0, 0.1, 16), padding=2), rp.ReLU(),
        rp.Conv2d(rng.normal(0, 0.1, (16, 16, 3, 3)), rng.normal(0, 0.1, 16), padding=1), rp.ReLU(),
        rp.Flatten(), rp.Dense(rng.normal(0, 0.05, (10, 16 * 16 * 16)), rng.normal(0, 0.1, 10)))


@pytest.mark.parametrize("method,kw", [("gradient", {}), ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}),
                                       ("lrp", {"rules": rp.composites.EpsilonGammaBox(low=-3.0, high=3.0)}),
                                       ("deeplift.rescale", {"baseline": "noise"}), ("integrated_gradients", {"steps": 4})])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_models_give_the_same_attributions_both_ways(method, kw, dtype, monkeypatch):
    """Every route gives the attributions of the im2col route. DeepLIFT runs from a random
    baseline: from the zero image, the reference activations are constant across the map, every
    MaxPool window of the reference is a tie, and which element wins depends on each lowering's
    rounding (Winograd's differs by position in the tile) -- a different, equally valid choice."""
    x = np.random.default_rng(1).uniform(-2, 2, size=(5, 3, 32, 32)).astype(dtype)
    if kw.get("baseline") == "noise":
        kw = {"baseline": np.random.default_rng(2).uniform(-0.5, 0.5, size=x.shape[1:]).astype(dtype)}
    net = _cnn(dtype)
    t = rp.forward(net, x.astype(np.float64)).argmax(1)  # one target for all routes (no argmax flips)
    taken = []
    for fn in ("gemm_taps", "winograd_input", "winograd4_input", "im2col"):
        real = getattr(cpu, fn)
        monkeypatch.setattr(cpu, fn, (lambda real, fn: lambda *a: taken.append(fn) or real(*a))(real, fn))
    res = {}
    # (shifted, F(2x2) from 16 channels on, F(4x4) from 8 channels on): in the backward pass the test
    # net's 8-channel 32x32 layer and 16-channel 16x16 layer take F(4x4); or its 16-channel layer F(2x2)
    # (forward passes: F(2x2) only)
    routes = {"shifted+winograd4": (True, 10 ** 9, 8), "shifted+winograd": (True, 16, None),
              "shifted": (True, None, None), "im2col": (False, None, None)}
    if not cpu.SHIFTED:
        routes = {"winograd4": (False, 10 ** 9, 8), "winograd": (False, 16, None), "im2col": (False, None, None)}
    for route, (shifted, min2, min4) in routes.items():
        monkeypatch.setattr(cpu, "SHIFTED", shifted)
        monkeypatch.setattr(cpu, "WINOGRAD", min2 is not None)
        monkeypatch.setattr(linear, "WINOGRAD_MIN_CHANNELS", min2 or 16)
        monkeypatch.setattr(linear, "WINOGRAD4_MIN_CHANNELS", min4)
        taken.clear()
        res[route] = rp.attribute(_cnn(dtype), x, method, target=t, **kw)
        assert ("gemm_taps" in taken) == shifted, (route, set(taken))
        # F(4x4) runs only in the backward of gradient-type methods (LRP's backward: no Winograd)
        assert ("winograd_input" in taken) == (min2 == 16), (route, set(taken))
        assert ("winograd4_input" in taken) == (min4 == 8 and method != "lrp"), (route, set(taken))
    off = res.pop("im2col")
    for route, on in res.items():
        if dtype == np.float64:
            assert np.max(np.abs(on - off)) <= 1e-10 * np.max(np.abs(off)), route
        else:  # F(4x4)'s transforms round more than a GEMM: the issue's bound, 1e-4 x max|R|
            assert_blas_close(on, off, 1e-4 if "winograd4" in route else None)


@pytest.mark.parametrize("rule", [rp.rules.ZPlus(include_bias=False), rp.rules.AlphaBeta(1.0, 0.0)])
def test_lrp_backward_keeps_exact_zeros_on_sparse_maps(rule, monkeypatch):
    """A zero weight contributes exactly nothing: where a z+ denominator is zero the ratio is
    R / epsilon (~1e4 x R), and a lowering that mixes taps (Winograd's G g G^T) would leak its
    rounding onto inputs the rule gives nothing. float32 stays at float32 rounding of the
    float64 result; the relevance sum is unchanged."""
    monkeypatch.setattr(linear, "WINOGRAD_MIN_CHANNELS", 1)  # Winograd eligible for this 16-channel layer
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (16, 16, 3, 3))
    w[:, 0, :, 0] = -np.abs(w[:, 0, :, 0])  # outputs right of the input column see it through negative weights only
    net = rp.Sequential(rp.Conv2d(w, np.abs(rng.normal(0, 0.1, 16)) + 0.1, padding=1), rp.ReLU(), rp.Flatten(),
                        rp.Dense(np.abs(rng.normal(0, 0.1, (4, 16 * 12 * 12))), np.zeros(4)))
    x = np.zeros((3, 16, 12, 12))
    x[:, 0, :, 5] = rng.uniform(0.5, 1.0, (3, 12))
    rules = [rule, rp.rules.Epsilon()]
    ref = rp.attribute(net, x, "lrp", rules=rules, target=0)
    got = rp.attribute(net, x.astype(np.float32), "lrp", rules=rules, target=0)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))
