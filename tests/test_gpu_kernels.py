"""The CuPy kernels (``relprop.kernels.gpu``) against their Numba twins (``relprop.kernels.cpu``).

Every GPU kernel runs on the same random inputs as the CPU kernel of the same name, float32
and float64, awkward geometries (odd sizes, stride 2 and 3, padding, overlapping windows,
batch 1 and 7), with the 32-bit and the 64-bit index instantiations; outputs must agree to
1e-5 (float32) / 1e-12 (float64) relative to the output's largest magnitude, max-pool winners
exactly. The parametrized activations (values in double rounded once on both sides) agree to
one float32 ulp / 32 float64 ulps (see ``act_close``). Skipped without CuPy or a CUDA device.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from relprop.kernels import cpu

pytestmark = pytest.mark.gpu

DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# (N, C, H, W, kh, kw, sh, sw, ph, pw)
CONV_GEOMS = [
    (1, 3, 7, 9, 3, 3, 1, 1, 1, 1),
    (7, 2, 11, 8, 3, 2, 2, 2, 1, 0),
    (7, 4, 9, 9, 5, 5, 2, 1, 2, 2),
    (1, 1, 5, 6, 1, 1, 2, 2, 0, 0),
    (2, 3, 13, 5, 4, 3, 3, 2, 1, 1),
]
# pooling: padding at most half the window (torch's rule), so no window is all padding
POOL_GEOMS = [
    (1, 3, 7, 9, 3, 3, 2, 2, 1, 1),
    (7, 2, 11, 8, 2, 2, 2, 2, 0, 0),
    (7, 4, 9, 9, 3, 2, 1, 2, 1, 0),
    (2, 3, 13, 5, 5, 3, 3, 2, 2, 1),
]


@pytest.fixture(scope="module", params=["int32", "int64"])
def gpu(request):
    """The GPU kernel package; ``int64`` forces the 64-bit index instantiations."""
    cp = pytest.importorskip("cupy")
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy without a driver raises CUDARuntimeError
        pytest.skip(f"no CUDA device: {e}")
    if count < 1:
        pytest.skip("no CUDA device")
    from relprop.kernels import gpu as k
    from relprop.kernels.gpu import _launch

    mp = pytest.MonkeyPatch()
    if request.param == "int64":
        mp.setattr(_launch, "INT_LIMIT", 0)
    yield SimpleNamespace(k=k, cp=cp)
    mp.undo()


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


class Same:
    """An argument that is the very array passed as argument ``i`` (aliasing, as the engine does)."""

    def __init__(self, i):
        self.i = i


def close(got, want, dtype):
    rtol = RTOL[np.dtype(dtype)]
    scale = np.nanmax(np.abs(want)) if want.size and np.isfinite(want).any() else 1.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(float(scale), 1e-30), equal_nan=True)


def run_both(gpu, name, args, outs, dtype):
    """Call ``cpu.<name>`` on numpy copies of ``args`` and ``gpu.<name>`` on device copies;
    compare the return values and the arrays at positions ``outs``."""
    ca = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    ga = [gpu.cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    for i, a in enumerate(args):
        if isinstance(a, Same):
            ca[i], ga[i] = ca[a.i], ga[a.i]
    want = getattr(cpu, name)(*ca)
    got = getattr(gpu.k, name)(*ga)
    assert got == want and type(got) is type(want)
    for i in outs:
        w, g = ca[i], gpu.cp.asnumpy(ga[i])
        assert g.shape == w.shape and g.dtype == w.dtype
        if w.dtype.kind in "iu":
            np.testing.assert_array_equal(g, w)
        else:
            close(g, w, dtype)
    return ca, ga


def rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def nan_like(shape, dtype):
    """Output arrays start as NaN: an element a kernel forgets to write shows up."""
    return np.full(shape, np.nan, dtype)


def sigmoid(z):
    return (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(z.dtype)


def act_pair(rng, shape, dtype, act):
    """(z, a = f(z)) for an activation code."""
    z = rand(rng, shape, dtype)
    a = [z, np.maximum(z, 0), np.tanh(z), sigmoid(z)][act].astype(dtype)
    return z, a


# ---------------------------------------------------------------------------------------
# conv


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", CONV_GEOMS)
def test_gpu_im2col(gpu, rng, geom, dtype):
    n, c, h, w, kh, kw, sh, sw, ph, pw = geom
    ho, wo = cpu.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    assert gpu.k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw) == (ho, wo)
    run_both(gpu, "im2col", [rand(rng, (n, c, h, w), dtype), kh, kw, sh, sw, ph, pw,
                             nan_like((c * kh * kw, n * ho * wo), dtype)], [7], dtype)


@pytest.mark.parametrize("mods", [0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", CONV_GEOMS)
def test_gpu_col2im_gather(gpu, rng, geom, dtype, mods):
    n, c, h, w, kh, kw, sh, sw, ph, pw = geom
    ho, wo = cpu.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    ct = c * max(mods, 1)
    cols = rand(rng, (ct * kh * kw, n * ho * wo), dtype)
    out = nan_like((n, c, h, w), dtype)
    xs = rand(rng, (n, ct, h, w), dtype) if mods else Same(7)  # the engine passes out when unread
    run_both(gpu, "col2im_gather", [cols, kh, kw, sh, sw, ph, pw, out, xs, mods], [7], dtype)


# ---------------------------------------------------------------------------------------
# elementwise


@pytest.mark.parametrize("store_z", [False, True])
@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7])
def test_gpu_bias_act_from_gemm(gpu, rng, n, dtype, act, store_z):
    o, p = 5, 13
    zg = rand(rng, (2 * o, n * p), dtype)  # the engine's stacked [W; W+] GEMM: rows [:o] are z
    bias = rand(rng, (o,), dtype)
    ca, ga = [], []
    for side in ("cpu", "gpu"):
        xp = np if side == "cpu" else gpu.cp
        zgs = xp.asarray(zg)[:o]
        a, z = xp.asarray(nan_like((n, o, p), dtype)), xp.asarray(nan_like((n, o, p), dtype))
        k = cpu if side == "cpu" else gpu.k
        k.bias_act_from_gemm(zgs, xp.asarray(bias), act, a, z if store_z else a, store_z)
        (ca if side == "cpu" else ga).extend([a, z])
    for w, g in zip(ca, ga):
        close(gpu.cp.asnumpy(g), w, dtype)


@pytest.mark.parametrize("alias", [False, True])
@pytest.mark.parametrize("store_z", [False, True])
@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_bias_act_rows(gpu, rng, dtype, act, store_z, alias):
    n, o = 7, 11
    a_out = Same(0) if alias else nan_like((n, o), dtype)
    run_both(gpu, "bias_act_rows", [rand(rng, (n, o), dtype), rand(rng, (o,), dtype), act, a_out, store_z],
             [0] if alias else [0, 3], dtype)


@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_act_backward(gpu, rng, dtype, act):
    z, a = act_pair(rng, (1001,), dtype, act)
    z[::7] = 0  # ReLU's derivative at 0 is 0
    run_both(gpu, "act_backward", [rand(rng, (1001,), dtype), z, a, act, nan_like((1001,), dtype)], [4], dtype)


@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_act_rescale_backward(gpu, rng, dtype, act):
    m = 777
    z, a = act_pair(rng, (m,), dtype, act)
    z0, a0 = act_pair(rng, (m,), dtype, act)
    z0[::5], a0[::5] = z[::5], a[::5]  # |z - z0| < eps: the plain derivative
    run_both(gpu, "act_rescale_backward", [rand(rng, (m,), dtype), z, z0, a, a0, act, 1e-10, nan_like((m,), dtype)],
             [7], dtype)


def _rule_params(rng, g, o, dtype, masks):
    return dict(
        cz=rand(rng, (g,), dtype), cp=np.abs(rand(rng, (g,), dtype)), bvec=rand(rng, (o,), dtype),
        bias_g=rand(rng, (g * o,), dtype), coefs=np.array([1.5, -0.5, 2.0][:g], dtype),
        masks=np.array(masks, np.int64),
    )


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.25])
@pytest.mark.parametrize("zmode", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("masks", [[0], [1, 2], [0, 1]])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_lrp_ratio(gpu, rng, dtype, masks, zmode, eps):
    n, o, p = 7, 5, 9
    g = len(masks)
    prm = _rule_params(rng, g, o, dtype, masks)
    zorig, r = rand(rng, (n, o, p), dtype), rand(rng, (n, o, p), dtype)
    zorig[:, :, ::4] = 0  # masks see z == 0; with bias_g = 0 below, zmode 0 sees den == 0
    prm["bias_g"][::3] = 0
    s = nan_like((n, g * o, p), dtype)
    # unread zg: the engine passes s as a 2-D placeholder
    zg = rand(rng, (g * o if zmode == 1 else o, n * p), dtype) if zmode in (1, 2) else nan_like((g * o, n * p), dtype)
    zp = rand(rng, (n, o, p), dtype) if zmode == 3 else rand(rng, (n, g * o, p), dtype) if zmode == 4 else Same(7)
    run_both(gpu, "lrp_ratio", [zg, zp, zmode, prm["cz"], prm["cp"], prm["bvec"], prm["bias_g"], zorig, r,
                                prm["coefs"], prm["masks"], eps, s], [12], dtype)


@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.25])
@pytest.mark.parametrize("zmode", [0, 1, 2])
@pytest.mark.parametrize("masks", [[0], [1, 2], [0, 1]])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_lrp_ratio_rows(gpu, rng, dtype, masks, zmode, eps):
    n, o = 7, 13
    g = len(masks)
    prm = _rule_params(rng, g, o, dtype, masks)
    zorig, r = rand(rng, (n, o), dtype), rand(rng, (n, o), dtype)
    zorig[:, ::4] = 0
    prm["bias_g"][::3] = 0
    s = nan_like((n, g * o), dtype)
    zg = rand(rng, (n, g * o if zmode == 1 else o), dtype) if zmode else Same(11)
    run_both(gpu, "lrp_ratio_rows", [zg, zmode, prm["cz"], prm["cp"], prm["bvec"], prm["bias_g"], zorig, r,
                                     prm["coefs"], prm["masks"], eps, s], [11], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_lrp_ratio_takes_host_or_device_parameters(gpu, rng, dtype):
    n, o, p, g = 2, 3, 5, 2
    prm = _rule_params(rng, g, o, dtype, [1, 2])
    zorig, r = rand(rng, (n, o, p), dtype), rand(rng, (n, o, p), dtype)
    zg = rand(rng, (o, n * p), dtype)
    want = np.empty((n, g * o, p), dtype)
    cpu.lrp_ratio(zg, zorig, 2, prm["cz"], prm["cp"], prm["bvec"], prm["bias_g"], zorig, r, prm["coefs"],
                  prm["masks"], 1e-3, want)
    cp = gpu.cp
    for put in (lambda v: v, cp.asarray):  # numpy parameter vectors, then device ones
        s = cp.full((n, g * o, p), cp.nan, dtype)
        gpu.k.lrp_ratio(cp.asarray(zg), cp.asarray(zorig), 2, put(prm["cz"]), put(prm["cp"]), put(prm["bvec"]),
                        put(prm["bias_g"]), cp.asarray(zorig), cp.asarray(r), put(prm["coefs"]),
                        put(prm["masks"]), 1e-3, s)
        close(cp.asnumpy(s), want, dtype)


@pytest.mark.parametrize("mods", [0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7])
def test_gpu_combine_from_gemm(gpu, rng, n, dtype, mods):
    c, p = 4, 15
    ct = c * max(mods, 1)
    xs = rand(rng, (n, ct, p), dtype) if mods else Same(3)
    run_both(gpu, "combine_from_gemm", [rand(rng, (ct, n * p), dtype), xs, mods, nan_like((n, c, p), dtype)],
             [3], dtype)


@pytest.mark.parametrize("act", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7])
def test_gpu_grad_to_rows(gpu, rng, n, dtype, act):
    o, p = 6, 11
    z, a = act_pair(rng, (n, o, p), dtype, act)
    if act == 0:  # the engine's plain transpose passes g three times
        args = [rand(rng, (n, o, p), dtype), Same(0), Same(0), 0, nan_like((o, n * p), dtype)]
    else:
        args = [rand(rng, (n, o, p), dtype), z, a, act, nan_like((o, n * p), dtype)]
    run_both(gpu, "grad_to_rows", args, [4], dtype)


@pytest.mark.parametrize("mods", [1, 2, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_stacked_mul_sum(gpu, rng, dtype, mods):
    n, f = 7, 29
    run_both(gpu, "stacked_mul_sum", [rand(rng, (n, mods * f), dtype), rand(rng, (n, mods * f), dtype), mods,
                                      nan_like((n, f), dtype)], [3], dtype)


@pytest.mark.parametrize("modes", [[0], [1, 2], [3], [0, 4, 5], [5, 3, 1, 2, 0, 4]])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_stack_input_mods(gpu, rng, dtype, modes):
    n, f = 7, 23
    x = rand(rng, (n, f), dtype)
    x[:, ::5] = 0
    low, high = x - 1, x + 2
    run_both(gpu, "stack_input_mods", [x, np.array(modes, np.int64), low, high,
                                       nan_like((n, len(modes) * f), dtype)], [4], dtype)


def test_gpu_stack_input_mods_unread_bounds(gpu, rng):
    # without modes 4/5 the engine passes x itself as the bounds
    x = rand(rng, (3, 4), np.float32)
    run_both(gpu, "stack_input_mods", [x, np.array([1, 2], np.int64), Same(0), Same(0),
                                       nan_like((3, 8), np.float32)], [4], np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_all_nonnegative(gpu, rng, dtype):
    x = np.abs(rand(rng, (10007,), dtype))
    cases = [x, np.zeros(0, dtype), np.array([-0.0, 0.0, np.nan], dtype)]
    for i in (0, 5000, 10006):
        y = x.copy()
        y[i] = -1e-30 if dtype == np.float64 else -1e-3
        cases.append(y)
    for v in cases:
        run_both(gpu, "all_nonnegative", [v], [], dtype)


# ---------------------------------------------------------------------------------------
# pool


def _pool_out(geom, dtype):
    n, c, h, w, kh, kw, sh, sw, ph, pw = geom
    ho, wo = cpu.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    return nan_like((n, c, ho, wo), dtype), np.full((n, c, ho, wo), -7, np.int64)


@pytest.mark.parametrize("data", ["normal", "ties", "nan"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_GEOMS)
def test_gpu_maxpool_forward(gpu, rng, geom, dtype, data):
    n, c, h, w, kh, kw, sh, sw, ph, pw = geom
    x = rand(rng, (n, c, h, w), dtype)
    if data == "ties":  # the first maximum in window order wins
        x = np.round(x).astype(dtype)
    elif data == "nan":  # a NaN beats numbers, the first NaN is kept
        x.reshape(-1)[::11] = np.nan
    out, idx = _pool_out(geom, dtype)
    run_both(gpu, "maxpool_forward", [x, kh, kw, sh, sw, ph, pw, out, idx], [7, 8], dtype)


def _winners(x, geom):
    n, c, h, w, kh, kw, sh, sw, ph, pw = geom
    y, idx = _pool_out(geom, x.dtype)
    cpu.maxpool_forward(x, kh, kw, sh, sw, ph, pw, y, idx)
    return y, idx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_GEOMS)
def test_gpu_maxpool_backward(gpu, rng, geom, dtype):
    x = np.round(2 * rand(rng, geom[:4], dtype)).astype(dtype)  # ties: one pixel wins several windows
    y, idx = _winners(x, geom)
    run_both(gpu, "maxpool_backward", [rand(rng, y.shape, dtype), idx, nan_like(x.shape, dtype)], [2], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_GEOMS)
def test_gpu_maxpool_rescale_backward(gpu, rng, geom, dtype):
    x, x0 = rand(rng, geom[:4], dtype), rand(rng, geom[:4], dtype)
    x0.reshape(-1)[::3] = x.reshape(-1)[::3]  # |x - x0| < eps: the plain gradient there
    y, idx = _winners(x, geom)
    y0, idx0 = _winners(x0, geom)
    run_both(gpu, "maxpool_rescale_backward", [rand(rng, y.shape, dtype), x, x0, y, y0, idx, idx0, 1e-10,
                                               nan_like(x.shape, dtype)], [8], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_GEOMS)
def test_gpu_avgpool_forward(gpu, rng, geom, dtype):
    n, c, h, w, kh, kw, sh, sw, ph, pw = geom
    out, _ = _pool_out(geom, dtype)
    run_both(gpu, "avgpool_forward", [rand(rng, (n, c, h, w), dtype), kh, kw, sh, sw, ph, pw, out], [7], dtype)


@pytest.mark.parametrize("mul_x", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", POOL_GEOMS)
def test_gpu_avgpool_backward(gpu, rng, geom, dtype, mul_x):
    n, c, h, w, kh, kw, sh, sw, ph, pw = geom
    g, _ = _pool_out(geom, dtype)
    g = rand(rng, g.shape, dtype)
    x = rand(rng, (n, c, h, w), dtype) if mul_x else Same(9)  # the engine passes out when x is unread
    run_both(gpu, "avgpool_backward", [g, kh, kw, sh, sw, ph, pw, x, mul_x, nan_like((n, c, h, w), dtype)],
             [9], dtype)


# ---------------------------------------------------------------------------------------
# operands that are not C-contiguous device arrays


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_strided_operands_and_outputs(gpu, rng, dtype):
    cp = gpu.cp
    n, c, h, w, kh, kw, sh, sw, ph, pw = CONV_GEOMS[1]
    ho, wo = cpu.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    x = rand(rng, (n, c, w, h), dtype).transpose(0, 1, 3, 2)  # a strided input
    want = np.empty((c * kh * kw, n * ho * wo), dtype)
    cpu.im2col(x, kh, kw, sh, sw, ph, pw, want)
    cols_f = cp.full((n * ho * wo, c * kh * kw), cp.nan, dtype).T  # a strided output: written through
    gpu.k.im2col(cp.asarray(x), kh, kw, sh, sw, ph, pw, cols_f)
    close(cp.asnumpy(cols_f), want, dtype)
    # a flat output that is a view with a step, and host (numpy) inputs
    g, z = rand(rng, (50,), dtype), rand(rng, (50,), dtype)
    want = np.empty(50, dtype)
    cpu.act_backward(g, z, z, 1, want)
    buf = cp.full(100, cp.nan, dtype)
    gpu.k.act_backward(g, z, z, 1, buf[::2])
    close(cp.asnumpy(buf[::2]), want, dtype)
    assert bool(cp.isnan(buf[1::2]).all())


def test_gpu_rejects_integer_outputs(gpu):
    cp = gpu.cp
    with pytest.raises(TypeError, match="float32 or float64"):
        gpu.k.act_backward(cp.zeros(3), cp.zeros(3), cp.zeros(3), 0, cp.zeros(3, cp.int32))


# ---------------------------------------------------------------------------------------
# parametrized activations (param_act, param_act_grad)

# (code name, p0, p1): the layer parameters a code reads (torch's defaults and others)
PARAM_ACTS = [
    ("LeakyReLU", 0.01, 0.0), ("LeakyReLU", 0.2, 0.0),
    ("Softplus", 1.0, 20.0), ("Softplus", 2.0, 5.0), ("Softplus", 0.5, 3.0),
    ("ELU", 1.0, 0.0), ("ELU", 0.7, 0.0),
    ("GELU", 0.0, 0.0), ("GELU_tanh", 0.0, 0.0), ("SiLU", 0.0, 0.0), ("Hardswish", 0.0, 0.0),
    ("Hardsigmoid", 0.0, 0.0), ("ReLU6", 0.0, 0.0), ("Mish", 0.0, 0.0),
]
# the kinks (0, +-3, 6; Softplus' thresholds 20 = 20/1, 2.5 = 5/2, 6 = 3/0.5), the saturated and
# the overflow-prone ends (+-20, +-40 for the sigmoids, +-100 and +-1e3 the clips in the GELUs,
# +-800 past exp's double range, +-1e4, +-1e30), tiny values, and a NaN (kept, as the CPU's max/min
# keep it)
PARAM_ACT_Z = [0.0, -0.0, 3.0, -3.0, 6.0, -6.0, 20.0, -20.0, 2.5, 1e4, -1e4, 1e30, -1e30, 40.0, -40.0,
               100.0, -100.0, 1e3, -1e3, 800.0, -800.0, 1.0, -1.0, 0.5, -0.5, 1e-7, -1e-7, np.nan]
PARAM_ACT_Z64 = [1e300, -1e300, 1e-300, -1e-300]  # float64 only


def _param_act_z(rng, dtype):
    z = PARAM_ACT_Z + (PARAM_ACT_Z64 if dtype == np.float64 else [])
    # and many ordinary values, spread over the curved part of every activation
    return np.concatenate([np.array(z), 4 * rng.standard_normal(2000), rng.uniform(-8, 8, 2000)]).astype(dtype)


def act_close(got, want, g, dtype, what):
    """GPU vs CPU for values each side computes in double and rounds once to ``dtype``.

    The two double results differ by a few units in the last place of the double math
    functions (CUDA's libm, the host's, and the CPU kernel's own vectorized ``exp``, ~1 ulp, all
    differ; the basic operations are IEEE on both sides, without FMA), far less than a float32
    ulp, so their float32 roundings are at most one float32 ulp apart: ``|got - want| <=
    2^-23 |want|``. Where a derivative sums terms of opposite sign
    (GELU', Mish' near their zeros) the double difference is relative to the terms (|terms| <~ 1.1,
    times |g|), not to the result: the absolute ``4e-15 |g|`` (~18 double ulps of 1). float64: 32 ulps
    (CUDA's erfc alone is within 5, composed with a few more roundings) plus the same absolute term.
    The float32 floor 2^-126: a GPU flushes subnormal float32 results to zero (CuPy's -ftz=true).
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    gmag = np.abs(np.asarray(g, np.float64))
    if np.dtype(dtype) == np.float32:
        bound = 2.0 ** -23 * np.abs(want) + 4e-15 * gmag + 2.0 ** -126
    else:
        bound = 32 * 2.0 ** -52 * np.abs(want) + 4e-15 * gmag + 1e-300
    with np.errstate(invalid="ignore"):
        ok = (got == want) | (np.isnan(got) & np.isnan(want)) | (np.abs(got - want) <= bound)
    assert ok.all(), (f"{what}: {int((~ok).sum())} values differ, e.g. got {got[~ok][:5]}, "
                      f"want {want[~ok][:5]}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", PARAM_ACTS, ids=lambda a: f"{a[0]}-{a[1]}-{a[2]}")
def test_gpu_param_act(gpu, rng, act, dtype):
    kind, p0, p1 = act
    code = cpu.PARAM_ACT_CODES[kind]
    z = _param_act_z(rng, dtype)
    g = rand(rng, z.shape, dtype)
    ca, ga = np.full(z.shape, np.nan, dtype), gpu.cp.full(z.shape, np.nan, dtype)
    cpu.param_act(z, code, p0, p1, ca)
    assert gpu.k.param_act(gpu.cp.asarray(z), code, p0, p1, ga) is None
    act_close(gpu.cp.asnumpy(ga), ca, np.zeros_like(z), dtype, f"param_act {kind}")
    cg, gg = np.full(z.shape, np.nan, dtype), gpu.cp.full(z.shape, np.nan, dtype)
    cpu.param_act_grad(g, z, code, p0, p1, cg)
    assert gpu.k.param_act_grad(gpu.cp.asarray(g), gpu.cp.asarray(z), code, p0, p1, gg) is None
    act_close(gpu.cp.asnumpy(gg), cg, g, dtype, f"param_act_grad {kind}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_param_act_operands(gpu, rng, dtype):
    # a strided output, host (numpy) inputs and (N, C, H, W) arrays of one size are all "flat"
    cp = gpu.cp
    z, g = rand(rng, (2, 3, 4, 5), dtype), rand(rng, (2, 3, 4, 5), dtype)
    code = cpu.PARAM_ACT_CODES["GELU"]
    want, wgrad = np.empty(z.size, dtype), np.empty(z.size, dtype)
    cpu.param_act(z.ravel(), code, 0.0, 0.0, want)
    cpu.param_act_grad(g.ravel(), z.ravel(), code, 0.0, 0.0, wgrad)
    buf = cp.full(2 * z.size, cp.nan, dtype)
    gpu.k.param_act(z, code, 0.0, 0.0, buf[::2])
    act_close(cp.asnumpy(buf[::2]), want, np.zeros(z.size), dtype, "param_act strided out")
    assert bool(cp.isnan(buf[1::2]).all())
    out = cp.full(z.shape, cp.nan, dtype)
    gpu.k.param_act_grad(cp.asarray(g), z, np.int64(code), np.float32(0), 0, out)
    act_close(cp.asnumpy(out).ravel(), wgrad, g.ravel(), dtype, "param_act_grad 4-D")


def test_gpu_param_act_codes_are_the_cpus(gpu):
    assert gpu.k.PARAM_ACT_CODES == cpu.PARAM_ACT_CODES
    assert sorted(cpu.PARAM_ACT_CODES.values()) == list(range(10))


def test_gpu_errors_param_act(gpu):
    cp = gpu.cp
    z, out = cp.zeros(5), cp.zeros(5)
    for bad in (10, -1, 1.5, "GELU", None):
        with pytest.raises(ValueError, match=r"param_act: code must be an integer in 0\.\.9"):
            gpu.k.param_act(z, bad, 0.0, 0.0, out)
        with pytest.raises(ValueError, match=r"param_act_grad: code must be an integer in 0\.\.9"):
            gpu.k.param_act_grad(z, z, bad, 0.0, 0.0, out)
    for code in (10, -1):  # the CPU kernels refuse these too
        with pytest.raises(ValueError, match="code in 0..9"):
            cpu.param_act(np.zeros(5), code, 0.0, 0.0, np.zeros(5))
    with pytest.raises(ValueError, match="p0 must be a real number"):
        gpu.k.param_act(z, 0, "0.01", 0.0, out)
    with pytest.raises(ValueError, match="p1 must be a real number"):
        gpu.k.param_act_grad(z, z, 1, 1.0, None, out)
    with pytest.raises(ValueError, match="z has 5 elements, out 6"):
        gpu.k.param_act(z, 0, 0.0, 0.0, cp.zeros(6))
    with pytest.raises(ValueError, match="g, z and out must have one size, got 5, 4 and 5"):
        gpu.k.param_act_grad(z, cp.zeros(4), 0, 0.0, 0.0, out)
    with pytest.raises(ValueError, match="got 5, 5 and 4"):
        gpu.k.param_act_grad(z, z, 0, 0.0, 0.0, cp.zeros(4))
    with pytest.raises(ValueError, match="one size"):  # as the CPU kernels
        cpu.param_act_grad(np.zeros(5), np.zeros(4), 0, 0.0, 0.0, np.zeros(5))
    with pytest.raises(TypeError, match="float32 or float64"):
        gpu.k.param_act(z, 0, 0.0, 0.0, cp.zeros(5, cp.int32))


# ---------------------------------------------------------------------------------------
# depthwise convolutions

# (N, C, H, W, kh, kw, sh, sw, ph, pw, dh, dw); (kh, kw) the undilated kernel, the dense dilated
# one is ((kh - 1) dh + 1, (kw - 1) dw + 1)
DW_GEOMS = [
    (1, 3, 7, 9, 3, 3, 1, 1, 1, 1, 1, 1),
    (2, 4, 11, 8, 5, 5, 2, 2, 2, 2, 1, 1),
    (3, 2, 13, 10, 7, 7, 3, 3, 3, 3, 1, 1),
    (2, 3, 12, 9, 3, 3, 1, 1, 2, 2, 2, 2),
    (1, 5, 15, 11, 5, 3, 2, 1, 0, 3, 2, 1),
    (2, 2, 9, 14, 3, 5, 3, 2, 1, 0, 1, 2),
    (1, 1, 6, 5, 7, 7, 1, 1, 3, 3, 1, 1),  # kernel larger than the image: the padding makes it fit
    (3, 2, 10, 10, 3, 3, 2, 2, 0, 0, 2, 2),
    (1, 2, 16, 15, 7, 7, 2, 3, 3, 2, 2, 2),
    (7, 3, 8, 5, 3, 3, 3, 1, 2, 0, 1, 1),  # stride larger than kernel minus padding: skipped rows
]


def _dw_setup(rng, geom, dtype):
    """(x, dense dilated taps, (sh, sw, ph, pw, dh, dw), (ho, wo)); the taps between the
    multiples of the dilation are NaN: a kernel that reads them fails."""
    n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw = geom
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    taps = np.full((c, ekh, ekw), np.nan, dtype)
    taps[:, ::dh, ::dw] = rand(rng, (c, kh, kw), dtype)
    ho, wo = cpu.conv_out_shape(h, w, ekh, ekw, sh, sw, ph, pw)
    assert ho >= 1 and wo >= 1
    return rand(rng, (n, c, h, w), dtype), taps, (sh, sw, ph, pw, dh, dw), (ho, wo)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", DW_GEOMS)
def test_gpu_depthwise_conv(gpu, rng, geom, dtype):
    x, taps, prm, (ho, wo) = _dw_setup(rng, geom, dtype)
    n, c = x.shape[:2]
    run_both(gpu, "depthwise_conv", [x, taps, *prm, ho, wo, nan_like((c, n * ho * wo), dtype)], [10], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geom", DW_GEOMS)
def test_gpu_depthwise_conv_grad(gpu, rng, geom, dtype):
    x, taps, prm, (ho, wo) = _dw_setup(rng, geom, dtype)
    n, c = x.shape[:2]
    run_both(gpu, "depthwise_conv_grad", [rand(rng, (n, c, ho, wo), dtype), taps, *prm, nan_like(x.shape, dtype)],
             [8], dtype)


@pytest.mark.parametrize("geom", DW_GEOMS[1::3])
def test_gpu_depthwise_conv_grad_is_the_adjoint(gpu, rng, geom):
    # <W x, g> = <x, W^T g> on the GPU kernels alone (float64): the gather indexes the same taps
    cp = gpu.cp
    x, taps, prm, (ho, wo) = _dw_setup(rng, geom, np.float64)
    n, c = x.shape[:2]
    g = rand(rng, (n, c, ho, wo), np.float64)
    out, gin = cp.full((c, n * ho * wo), cp.nan), cp.full(x.shape, cp.nan)
    gpu.k.depthwise_conv(cp.asarray(x), cp.asarray(taps), *prm, ho, wo, out)
    gpu.k.depthwise_conv_grad(cp.asarray(g), cp.asarray(taps), *prm, gin)
    lhs = float((cp.asnumpy(out).reshape(c, n, ho, wo).transpose(1, 0, 2, 3) * g).sum())
    rhs = float((x * cp.asnumpy(gin)).sum())
    assert abs(lhs - rhs) <= 1e-12 * (np.abs(x).sum() * np.nanmax(np.abs(taps)) * np.abs(g).max())


@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_depthwise_strided_operands(gpu, rng, dtype):
    # a transposed (strided) input and output, host taps
    cp = gpu.cp
    x, taps, prm, (ho, wo) = _dw_setup(rng, DW_GEOMS[4], dtype)
    n, c = x.shape[:2]
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    want = np.empty((c, n * ho * wo), dtype)
    cpu.depthwise_conv(x, taps, *prm, ho, wo, want)
    out = cp.full((n * ho * wo, c), cp.nan, dtype).T
    gpu.k.depthwise_conv(cp.asarray(xt), taps, *prm, ho, wo, out)
    close(cp.asnumpy(out), want, dtype)
    g = rand(rng, (n, c, ho, wo), dtype)
    wgin = np.empty(x.shape, dtype)
    cpu.depthwise_conv_grad(g, taps, *prm, wgin)
    gin = cp.full((n, c, x.shape[3], x.shape[2]), cp.nan, dtype).transpose(0, 1, 3, 2)
    g_view = cp.asarray(g[:, :, ::-1])[:, :, ::-1]  # g again, as a view with a negative row stride
    gpu.k.depthwise_conv_grad(g_view, taps, *prm, gin)
    close(cp.asnumpy(gin), wgin, dtype)


def _dw_error_cases():
    """(label, forward?, argument overrides, message): each bad argument of the geometry in turn;
    ``cpu`` marks the ones the CPU kernel refuses with ValueError as well."""
    return [
        ("stride 0", True, dict(sh=0), "stride 0x1 and dilation 1x1 must be >= 1", True),
        ("dilation 0", True, dict(dw=0), "stride 1x1 and dilation 1x0 must be >= 1", True),
        ("padding -1", False, dict(ph=-1), r"padding -1x0 >= 0", True),
        ("taps channels", True, dict(taps=(4, 3, 3)), r"taps has shape \(4, 3, 3\), expected \(C, kh, kw\) with C = 3",
         True),
        ("taps 2-D", False, dict(taps=(3, 3)), r"taps has shape \(3, 3\)", False),
        ("ho", True, dict(ho=6), r"\(Ho, Wo\) = \(6, 7\) must be the window sweep \(7, 7\)", True),
        ("wo", True, dict(wo=8), r"\(Ho, Wo\) = \(7, 8\) must be the window sweep \(7, 7\)", True),
        ("float stride", True, dict(sw=1.0), "the geometry must be integers", False),
        ("out", True, dict(out=(3, 48)), r"out has shape \(3, 48\), expected \(C, N\*Ho\*Wo\) = \(3, 49\)", True),
        ("x 3-D", True, dict(x=(3, 7, 9)), r"the input must be \(N, C, H, W\)", False),
        ("g channels", False, dict(g=(1, 2, 7, 7)), "must be .* with one N and C", True),
        ("g size", False, dict(g=(1, 3, 6, 7)), r"\(Ho, Wo\) = \(6, 7\) must be the window sweep \(7, 7\)", True),
    ]


@pytest.mark.parametrize("case", _dw_error_cases(), ids=lambda c: c[0])
def test_gpu_errors_depthwise(gpu, case):
    label, forward, over, msg, cpu_refuses = case
    cp = gpu.cp
    a = dict(x=(1, 3, 7, 9), taps=(3, 3, 3), sh=1, sw=1, ph=1, pw=0, dh=1, dw=1, ho=7, wo=7, out=(3, 49),
             g=(1, 3, 7, 7))
    a.update(over)
    arr = {k: np.zeros(a[k]) for k in ("x", "taps", "out", "g")}
    geo = [a[k] for k in ("sh", "sw", "ph", "pw", "dh", "dw")]
    for side, xp, k in (("gpu", cp, gpu.k), ("cpu", np, cpu)):
        if side == "cpu" and not cpu_refuses:
            continue
        v = {name: xp.asarray(arr[name]) for name in arr}
        with pytest.raises(ValueError, match=msg if side == "gpu" else None):
            if forward:
                k.depthwise_conv(v["x"], v["taps"], *geo, a["ho"], a["wo"], v["out"])
            else:
                k.depthwise_conv_grad(v["g"], v["taps"], *geo, xp.zeros((1, 3, 7, 9)))


def test_gpu_errors_depthwise_dtype(gpu):
    cp = gpu.cp
    with pytest.raises(TypeError, match="float32 or float64"):
        gpu.k.depthwise_conv(cp.zeros((1, 1, 3, 3)), cp.zeros((1, 1, 1)), 1, 1, 0, 0, 1, 1, 3, 3,
                             cp.zeros((1, 9), cp.int64))
    with pytest.raises(TypeError, match="float32 or float64"):
        gpu.k.depthwise_conv_grad(cp.zeros((1, 1, 3, 3)), cp.zeros((1, 1, 1)), 1, 1, 0, 0, 1, 1,
                                  cp.zeros((1, 1, 3, 3), cp.int32))


# ---------------------------------------------------------------------------------------
# the two packages


# CPU lowerings the GPU backend does not offer: the engine uses them only where the backend's
# SHIFTED / WINOGRAD flag is true (relprop.core.linear), and the GPU's are false
CPU_ONLY = {"pad_flat", "crop_wide", "gemm_taps", "taps", "wide_geometry", "winograd_filter", "winograd_input",
            "winograd_output", "winograd_tiles", "winograd4_filter", "winograd4_input", "winograd4_output",
            "winograd4_tiles", "DENSE_CHAIN", "dense_chain"}
GPU_ONLY = {"free_memory", "set_tf32"}  # device memory and TF32 (relprop.core.backend calls them when present)


def _params(f):
    """Parameter names of a kernel; a threaded CPU kernel's compiled function has ``part, parts`` last."""
    import inspect

    if hasattr(f, "kernel"):
        names = list(inspect.signature(f.kernel.py_func).parameters)
        assert names[-2:] == ["part", "parts"]
        return names[:-2]
    return list(inspect.signature(getattr(f, "py_func", f)).parameters)


def test_gpu_exports_match_cpu(gpu):
    k = gpu.k
    for mod in (cpu, k):
        assert len(mod.__all__) == len(set(mod.__all__))
        assert all(hasattr(mod, name) for name in mod.__all__)
    assert set(cpu.__all__) - CPU_ONLY == set(k.__all__) - GPU_ONLY, (
        f"only on the CPU: {sorted(set(cpu.__all__) - CPU_ONLY - set(k.__all__))}, "
        f"only on the GPU: {sorted(set(k.__all__) - GPU_ONLY - set(cpu.__all__))}")
    assert CPU_ONLY <= set(cpu.__all__) and not CPU_ONLY & set(k.__all__)
    assert k.SHIFTED is False and k.WINOGRAD is False
    for name in sorted(set(cpu.__all__) - CPU_ONLY - {"xp", "name", "OOM"}):
        c, g = getattr(cpu, name), getattr(k, name)
        if callable(c):
            assert _params(c) == _params(g), f"{name}: CPU {_params(c)}, GPU {_params(g)}"
        else:
            assert type(c) is type(g), name
    for name in ("depthwise_conv", "depthwise_conv_grad", "param_act", "param_act_grad", "PARAM_ACT_CODES"):
        assert name in k.__all__
