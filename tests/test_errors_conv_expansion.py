"""Grouped, depthwise and dilated convolutions are stored dense (``Conv2d.from_compact``): an
expansion far beyond the compact layer is refused with one line naming the layer, both sizes
and what to do, before the dense weight or its im2col columns are allocated.

The limits (``relprop.core.budget.Budget.expansion`` / ``expansion_cols``, 512 MiB and 1 GiB)
apply only beyond ``graph.EXPANSION_RATIO`` (64x the compact layer); the columns are counted in
the dtype they are built in (float32 at shape inference, x's dtype in the methods, float64 in
``fit_patterns``). Expected values of the
allowed cases come from a plain numpy dilated convolution (a loop over the taps) and from torch.
"""
from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

import relprop as rp
from relprop.core import budget
from relprop.core import graph as G

RNG = np.random.default_rng(7)


def _peak_mib(fn):
    """(exception raised by fn, peak MiB numpy allocated meanwhile): numpy reports its buffers
    to tracemalloc, so this shows that a refusal allocated nothing of the dense size."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
    except ValueError as e:
        err = e
    else:
        err = None
    finally:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return err, peak


# ---- the dense weight ----------------------------------------------------------------------


def test_errors_dilated_from_compact_refused_before_allocating():
    """3x3 dilated by 64, 96 channels: 129x129 dense taps, 1849x the compact weight, 585 MiB."""
    w = RNG.normal(size=(96, 96, 3, 3)).astype(np.float32)
    err, peak = _peak_mib(lambda: rp.Conv2d.from_compact(w, dilation=64))
    assert err is not None, "a 585 MiB expansion of a 0.32 MiB weight was accepted"
    msg = str(err)
    assert "\n" not in msg
    for part in ("Conv2d.from_compact", "dilation=(64, 64)", "(96, 96, 3, 3)", "0.316 MiB", "(96, 96, 129, 129)",
                 "585 MiB", "1849x", "512 MiB", "smaller dilation", "expansion="):
        assert part in msg, (part, msg)
    assert peak < 8, f"the refusal allocated {peak:.1f} MiB"


def test_errors_depthwise_from_compact_refused():
    """A depthwise 5x5 of 3840 channels: 1.37 GiB dense, 3840x. (3840 is EfficientNet-B7's widest
    depthwise layer, a 3x3: 506 MiB dense, under the 512 MiB limit; its widest 5x5 has 2304.)"""
    w = RNG.normal(size=(3840, 1, 5, 5)).astype(np.float32)
    err, peak = _peak_mib(lambda: rp.Conv2d.from_compact(w, groups=3840))
    assert err is not None
    msg = str(err)
    for part in ("groups=3840", "(3840, 1, 5, 5)", "(3840, 3840, 5, 5)", "1.37 GiB", "3840x", "fewer channels"):
        assert part in msg, (part, msg)
    assert peak < 8, f"the refusal allocated {peak:.1f} MiB"


def test_errors_dense_weight_given_to_the_constructor():
    """A dense weight built by the caller: refused before the layer's private copies (and the
    structure mask) are made; also through a ConvTranspose2d, whose decomposition expands."""
    w = np.zeros((96, 96, 129, 129), np.float32)  # untouched pages: no real memory
    err, peak = _peak_mib(lambda: rp.Conv2d(w, dilation=64))
    assert err is not None and str(err).startswith("Conv2d: ") and "585 MiB" in str(err), err
    assert peak < 8, f"the refusal allocated {peak:.1f} MiB"
    with pytest.raises(ValueError, match=r"ConvTranspose2d: .*\(96, 96, 129, 129\) of 585 MiB \(1849x\)"):
        rp.ConvTranspose2d(RNG.normal(size=(96, 96, 3, 3)).astype(np.float32), dilation=64)


def test_errors_limit_counts_the_stored_dtype(monkeypatch):
    """float64 weights stay float64 (twice the bytes), anything else is stored as float32."""
    monkeypatch.setattr(budget, "BUDGET", budget.Budget(expansion=2**20))
    w = RNG.normal(size=(8, 8, 3, 3))
    rp.Conv2d.from_compact(w.astype(np.float32), dilation=24)   # 49x49 dense: 0.59 MiB in float32
    rp.Conv2d.from_compact(w.astype(np.float16), dilation=24)   # stored as float32 too
    with pytest.raises(ValueError, match=r"1\.17 MiB \(267x\), over relprop's limit of 1 MiB"):
        rp.Conv2d.from_compact(w, dilation=24)


def test_errors_only_beyond_the_ratio(monkeypatch):
    """Up to EXPANSION_RATIO (64x) nothing is refused, however small the budget: plain convs,
    ResNeXt's 32 groups, 64 groups, a 3x3 dilated by 11 (58.8x); a 3x3 dilated by 12 is 69.4x."""
    monkeypatch.setattr(budget, "BUDGET", budget.Budget(expansion=1, expansion_cols=1))
    assert G.EXPANSION_RATIO == 64
    rp.Conv2d(RNG.normal(size=(8, 8, 3, 3)))
    rp.Conv2d.from_compact(RNG.normal(size=(64, 2, 3, 3)), groups=32)
    rp.Conv2d.from_compact(RNG.normal(size=(64, 1, 3, 3)), groups=64)
    conv = rp.Conv2d.from_compact(RNG.normal(size=(2, 2, 3, 3)), dilation=11, padding=11)
    rp.forward(rp.Sequential(conv, rp.Flatten()), RNG.normal(size=(1, 2, 8, 8)))
    with pytest.raises(ValueError, match=r"\(69x\)"):
        rp.Conv2d.from_compact(RNG.normal(size=(2, 2, 3, 3)), dilation=12)


# ---- one sample's im2col columns -------------------------------------------------------------


def _dilated_net(c, d, h, classes=3):
    conv = rp.Conv2d.from_compact(RNG.normal(size=(c, c, 3, 3)).astype(np.float32), padding=d, dilation=d)
    return rp.Sequential(conv, rp.ReLU(), rp.Flatten(), rp.Dense(RNG.normal(size=(classes, c * h * h))))


def test_errors_huge_columns_in_a_small_model_refused_before_any_kernel():
    """A 17 MiB dense weight (allowed) whose columns on a 64x64 input would take 4.06 GiB per
    sample: forward and attribute refuse at the shape check, allocating nothing of that size."""
    net = _dilated_net(16, 64, 64)
    x = RNG.uniform(size=(2, 16, 64, 64)).astype(np.float32)
    for call in (lambda: rp.attribute(net, x, "lrp.epsilon"), lambda: rp.attribute(net, x, "gradient"),
                 lambda: rp.forward(net, x)):
        err, peak = _peak_mib(call)
        assert err is not None, "4 GiB of columns per sample were accepted"
        msg = str(err)
        for part in ("layer '0'", "64x64 input", "129x129", "4.06 GiB of im2col columns per sample", "1849x",
                     "1 GiB", "smaller input", "expansion_cols="):
            assert part in msg, (part, msg)
        assert "\n" not in msg
        assert peak < 64, f"the refusal allocated {peak:.1f} MiB"


def _depthwise_net(c=128, h=16):
    """Depthwise 3x3 (c groups, 128x its compact weight), ReLU, Dense: its dense im2col columns
    take c * 9 * h * h values per sample (16x16, 128 channels: 1.125 MiB in float32, 2.25 MiB
    in float64)."""
    conv = rp.Conv2d.from_compact(RNG.normal(size=(c, 1, 3, 3)), groups=c, padding=1)
    return rp.Sequential(conv, rp.ReLU(), rp.Flatten(), rp.Dense(RNG.normal(size=(3, c * h * h))))


@pytest.mark.parametrize("method", ["lrp.epsilon", "rap", "patternnet", "pattern_attribution"])
def test_errors_depthwise_columns_refused_for_the_methods_that_build_them(method, monkeypatch):
    """Depthwise layers run their forward and gradient tap by tap (no dense columns), so the
    gradient runs; the methods that build the dense columns are refused, naming the method:
    LRP (its rules), RAP (its contractions), PatternNet / PatternAttribution (the pattern
    graph's plain convolution)."""
    net = _depthwise_net()
    x = RNG.uniform(size=(2, 128, 16, 16)).astype(np.float32)
    params = {"patterns": rp.fit_patterns(net, RNG.uniform(size=(4, 128, 16, 16)))} if "pattern" in method else {}
    monkeypatch.setattr(budget, "BUDGET", budget.Budget(expansion_cols=2**20))
    assert np.isfinite(rp.attribute(net, x, "gradient")).all()
    with pytest.raises(ValueError, match=rf"method '{method}', layer '0' .*1\.12 MiB of im2col columns per sample "
                                         r"\(float32, 128x .*limit of 1 MiB") as info:
        rp.attribute(net, x, method, **params)
    assert "\n" not in str(info.value)


def test_errors_fit_patterns_counts_its_float64_patches(monkeypatch):
    """fit_patterns builds every Conv2d's im2col patches in float64, whatever the data's dtype:
    float32 data whose float32 columns would fit is refused at their float64 size."""
    net = _depthwise_net()
    monkeypatch.setattr(budget, "BUDGET", budget.Budget(expansion_cols=2 * 2**20))
    data = RNG.uniform(size=(4, 128, 16, 16)).astype(np.float32)
    rp.attribute(net, data, "lrp.epsilon")  # 1.125 MiB of float32 columns: under the limit
    with pytest.raises(ValueError, match=r"fit_patterns, layer '0' .*2\.25 MiB of im2col columns per sample "
                                         r"\(float64, 128x .*limit of 2 MiB"):
        rp.fit_patterns(net, data)


def test_errors_columns_counted_in_the_input_dtype(monkeypatch):
    """The same layers and limit: float32 inputs pass where float64 inputs, whose columns take
    8 bytes a value, are refused; for a depthwise layer in the LRP check, for a dilated one
    (3x3 dilated by 16, 121x; 21.5 MiB of float32 columns per sample on 36x36) at the input
    check of every method."""
    monkeypatch.setattr(budget, "BUDGET", budget.Budget(expansion_cols=2 * 2**20))
    net = _depthwise_net()
    x = RNG.uniform(size=(2, 128, 16, 16))
    rp.attribute(net, x.astype(np.float32), "lrp.epsilon")
    with pytest.raises(ValueError, match=r"method 'lrp.epsilon', layer '0' .*2\.25 MiB of im2col columns per "
                                         r"sample \(float64, "):
        rp.attribute(net, x, "lrp.epsilon")

    monkeypatch.setattr(budget, "BUDGET", budget.Budget(expansion_cols=32 * 2**20))
    net = _dilated_net(4, 16, 36)
    x = RNG.uniform(size=(2, 4, 36, 36))
    for method in ("gradient", "lrp.epsilon"):
        assert np.isfinite(rp.attribute(net, x.astype(np.float32), method)).all()
        with pytest.raises(ValueError, match=r"layer '0' .*43\.1 MiB of im2col columns per sample \(float64, 121x"):
            rp.attribute(net, x, method)
    with pytest.raises(ValueError, match=r"43\.1 MiB .*\(float64, 121x"):
        rp.forward(net, x)


# ---- a large but allowed expansion computes the dilated convolution -----------------------


def _numpy_dilated_conv(x, w, d, p):
    """Plain dilated convolution (cross-correlation, zero padding p, stride 1): a loop over the
    compact taps, out[n, o] += w[o, c, i, j] * x_padded[n, c, i d + y, j d + x]."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ho, wo = h + 2 * p - d * (kh - 1), wd + 2 * p - d * (kw - 1)
    out = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * d:i * d + ho, j * d:j * d + wo]
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j], patch)
    return out


def _numpy_dilated_conv_adjoint(g, w, d, p, h, wd):
    """The transpose of :func:`_numpy_dilated_conv` (each tap adds its weighted gradient back)."""
    n, o, ho, wo = g.shape
    c = w.shape[1]
    gp = np.zeros((n, c, h + 2 * p, wd + 2 * p))
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            gp[:, :, i * d:i * d + ho, j * d:j * d + wo] += np.einsum("oc,nohw->nchw", w[:, :, i, j], g)
    return gp[:, :, p:p + h, p:p + wd]


def test_reference_large_allowed_dilation_equals_numpy():
    """3x3 dilated by 16 (121x the compact weight, 22 MiB of columns per sample: subject to the
    limits and under them): forward, gradient and LRP-0 equal a plain numpy dilated conv."""
    c, d, h = 4, 16, 36
    w = RNG.normal(size=(c, c, 3, 3))
    v = RNG.normal(size=(1, c * h * h))
    net = rp.Sequential(rp.Conv2d.from_compact(w, padding=d, dilation=d), rp.Flatten(), rp.Dense(v))
    x = RNG.uniform(0.5, 1.5, size=(2, c, h, h))
    z = _numpy_dilated_conv(x, w, d, d)
    np.testing.assert_allclose(rp.forward(net, x)[:, 0], z.reshape(2, -1) @ v[0], rtol=1e-10)
    conv_only = rp.Sequential(net.nodes[0].layer, rp.Flatten())
    np.testing.assert_allclose(rp.forward(conv_only, x), z.reshape(2, -1), rtol=1e-10, atol=1e-12)
    grad = _numpy_dilated_conv_adjoint(np.broadcast_to(v.reshape(1, c, h, h), z.shape), w, d, d, h, h)
    np.testing.assert_allclose(rp.attribute(net, x, "gradient", target=0), grad, rtol=1e-9, atol=1e-12)
    # a linear model: LRP-0 without bias is x * gradient
    r = rp.attribute(net, x, "lrp.z", target=0, include_bias=False)
    np.testing.assert_allclose(r, x * grad, rtol=1e-7, atol=1e-9 * np.abs(x * grad).max())


# ---- from torch ----------------------------------------------------------------------------


def _from_torch(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rp.from_torch(model, x)


def test_errors_from_torch_dilation_64():
    """nn.Conv2d(..., dilation=64): the dense weight refused at import naming the module; with
    fewer channels the weight fits and the columns for the example's 64x64 input are refused."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(96, 96, 3, dilation=64, padding=64), nn.ReLU()).eval()
    with pytest.raises(ValueError) as info:
        _from_torch(model, torch.zeros(1, 96, 130, 130))
    msg = str(info.value)
    for part in ("from_torch", "torch.nn.Conv2d", "module '0'", "(96, 96, 129, 129)", "585 MiB", "1849x",
                 "smaller dilation", "expansion="):
        assert part in msg, (part, msg)
    assert "\n" not in msg
    small = nn.Sequential(nn.Conv2d(16, 16, 3, dilation=64, padding=64), nn.ReLU()).eval()
    with pytest.raises(ValueError, match=r"129x129 kernel .* needs 4\.06 GiB of im2col columns per sample"):
        _from_torch(small, torch.zeros(1, 16, 64, 64))


def test_peers_from_torch_large_allowed_dilation():
    """nn.Conv2d(4, 6, 3, dilation=16, groups=2) under the limits: imports and equals torch."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, dilation=16, padding=16, groups=2), nn.Flatten()).double().eval()
    x = RNG.normal(size=(2, 4, 36, 36))
    net = _from_torch(model, torch.from_numpy(x))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(rp.forward(net, x), ref, rtol=1e-10, atol=1e-12)
