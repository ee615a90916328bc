"""The CPU lowerings of stride-1 convolutions, shifted GEMMs (``relprop.kernels.cpu.shifted``)
and Winograd F(2x2, 3x3) (``relprop.kernels.cpu.winograd``; Lavin & Gray 2016), against an
independent numpy convolution, the im2col route, and whole models run each way."""
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
    rng = np.random.default_rng(kh * 7 + ph)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(o, c, kh, kw)).astype(dtype)
    got = linear.conv_gemm(cpu, _M(), x, wt.reshape(o, -1), ("t",), kh, kw, 1, 1, ph, pw)
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
    rng = np.random.default_rng(h * 3 + ph)
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(o, c, 3, 3)).astype(dtype)
    calls = []
    real = cpu.winograd_input
    monkeypatch.setattr(cpu, "winograd_input", lambda *a: calls.append(1) or real(*a))
    got = linear.conv_gemm(cpu, _M(), x, wt.reshape(o, -1), ("t",), 3, 3, 1, 1, ph, pw)
    assert calls, "the Winograd route was not taken"
    ref = numpy_conv(x.astype(np.float64), wt.astype(np.float64), ph, pw)
    ho, wo = ref.shape[2:]
    got = got.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)
    assert np.max(np.abs(got - ref)) <= tol * np.max(np.abs(ref))


def test_winograd_buffers_are_checked():
    x = np.ones((2, 3, 4, 4))
    with pytest.raises(ValueError, match="winograd_input"):
        cpu.winograd_input(x, 1, 1, 2, 2, np.empty((16, 3, 7)))
    with pytest.raises(ValueError, match="winograd_output"):
        cpu.winograd_output(np.empty((16, 5, 8)), 2, 2, 2, 5, 4, np.empty((5, 40)))


@needs_cblas
def test_small_maps_take_im2col(monkeypatch):
    """On an 8x8 map a 3x3 window's padded grid holds 1.56 positions per output: im2col is used."""
    def boom(*a):
        raise AssertionError("shifted GEMMs used")

    monkeypatch.setattr(cpu, "gemm_taps", boom)
    monkeypatch.setattr(cpu, "WINOGRAD", False)
    x = np.ones((2, 4, 8, 8))
    linear.conv_gemm(cpu, _M(), x, np.ones((3, 36)), ("t",), 3, 3, 1, 1, 1, 1)
    with pytest.raises(AssertionError, match="shifted"):
        linear.conv_gemm(cpu, _M(), np.ones((2, 4, 32, 32)), np.ones((3, 36)), ("t",), 3, 3, 1, 1, 1, 1)


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
                                       ("deeplift.rescale", {}), ("integrated_gradients", {"steps": 4})])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_models_give_the_same_attributions_both_ways(method, kw, dtype, monkeypatch):
    x = np.random.default_rng(1).uniform(-2, 2, size=(5, 3, 32, 32)).astype(dtype)
    net = _cnn(dtype)
    t = rp.forward(net, x.astype(np.float64)).argmax(1)  # one target for all routes (no argmax flips)
    monkeypatch.setattr(linear, "WINOGRAD_MIN_CHANNELS", 16)  # the test net's 16-channel 16x16 layer takes it
    taken = []
    for fn in ("gemm_taps", "winograd_input", "im2col"):
        real = getattr(cpu, fn)
        monkeypatch.setattr(cpu, fn, (lambda real, fn: lambda *a: taken.append(fn) or real(*a))(real, fn))
    res = {}
    routes = {"shifted+winograd": (True, True), "shifted": (True, False), "im2col": (False, False)}
    if not cpu.SHIFTED:
        routes = {"winograd": (False, True), "im2col": (False, False)}
    for route, (shifted, winograd) in routes.items():
        monkeypatch.setattr(cpu, "SHIFTED", shifted)
        monkeypatch.setattr(cpu, "WINOGRAD", winograd)
        taken.clear()
        res[route] = rp.attribute(_cnn(dtype), x, method, target=t, **kw)
        assert ("gemm_taps" in taken) == shifted and ("winograd_input" in taken) == winograd, (route, set(taken))
    off = res.pop("im2col")
    for route, on in res.items():
        if dtype == np.float64:
            assert np.max(np.abs(on - off)) <= 1e-10 * np.max(np.abs(off)), route
        else:
            assert_blas_close(on, off)


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
