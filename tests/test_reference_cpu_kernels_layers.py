"""The CPU kernels of the activation layers (``param_act``, ``param_act_grad``) and of depthwise
convolutions (``depthwise_conv``, ``depthwise_conv_grad``) against torch (float64 autograd; float32
for the rounding bound), over the values and geometries where such kernels go wrong: the kinks,
huge and subnormal-producing inputs, strides, dilations, padding wider than the kernel reach."""
from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relprop.core.backend import kernels_for

cpu = kernels_for(np.zeros(1))

TORCH = {
    "LeakyReLU": (lambda z: F.leaky_relu(z, 0.1), 0.1, 0.0),
    "Softplus": (lambda z: F.softplus(z, 2.0, 10.0), 2.0, 10.0),
    "ELU": (lambda z: F.elu(z, 0.7), 0.7, 0.0),
    "GELU": (lambda z: F.gelu(z), 0.0, 0.0),
    "GELU_tanh": (lambda z: F.gelu(z, approximate="tanh"), 0.0, 0.0),
    "SiLU": (F.silu, 0.0, 0.0),
    "Hardswish": (F.hardswish, 0.0, 0.0),
    "Hardsigmoid": (F.hardsigmoid, 0.0, 0.0),
    "ReLU6": (F.relu6, 0.0, 0.0),
    "Mish": (F.mish, 0.0, 0.0),
}
SPECIAL = [0.0, -0.0, 3.0, -3.0, 6.0, 1e-9, -1e-9, 0.5, -0.5, 20.0, -20.0, 88.0, -88.0, 1e4, -1e4, 1e30, -1e30,
           -707.9, -708.5, -740.0, -800.0, 1e-310, -1e-310]


def _inputs(dtype):
    z = np.random.default_rng(0).normal(0, 4, 5000)
    return np.concatenate([np.array(SPECIAL), z, np.linspace(-30, 30, 3001)]).astype(dtype)


def _mp(name, p0, p1):
    """(f, f') of an activation in mpmath at 40 digits: the reference, independent of both torch's
    float64 kernels (whose GELU loses digits for z << 0) and relprop's forms."""
    mp = mpmath.mp
    k, c = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")
    sp = lambda u: mpmath.log1p(mpmath.exp(u))  # noqa: E731
    forms = {
        "LeakyReLU": (lambda z: z if z > 0 else z * p0, lambda z: 1 if z > 0 else p0),
        "Softplus": (lambda z: z if z * p0 > p1 else sp(z * p0) / p0, lambda z: 1 if z * p0 > p1 else 1 / (1 + mpmath.exp(-z * p0))),
        "ELU": (lambda z: z if z > 0 else p0 * mpmath.expm1(z), lambda z: 1 if z > 0 else p0 * mpmath.exp(z)),
        "GELU": (lambda z: z * mpmath.erfc(-z / mpmath.sqrt(2)) / 2, None),
        "GELU_tanh": (lambda z: z / (1 + mpmath.exp(-2 * k * (z + c * z ** 3))), None),  # = z (1 + tanh u) / 2
        "SiLU": (lambda z: z / (1 + mpmath.exp(-z)), None),
        "Hardswish": (lambda z: z * min(max(z + 3, 0), 6) / 6, lambda z: 0 if z <= -3 else (z / 3 + mpmath.mpf(1) / 2 if z < 3 else 1)),
        "Hardsigmoid": (lambda z: min(max(z + 3, 0), 6) / 6, lambda z: mpmath.mpf(1) / 6 if -3 < z < 3 else 0),
        "ReLU6": (lambda z: min(max(z, 0), 6), lambda z: 1 if 0 < z < 6 else 0),
        "Mish": (lambda z: z * mpmath.tanh(sp(z)), None),
    }
    f, df = forms[name]
    return f, df or (lambda z: mpmath.diff(f, z))


def _reference(name, z, p0, p1):
    mpmath.mp.dps = 40
    f, df = _mp(name, mpmath.mpf(p0), mpmath.mpf(p1))
    zs = [mpmath.mpf(float(v)) for v in z]
    return np.array([float(f(v)) for v in zs]), np.array([float(df(v)) for v in zs])


@pytest.mark.parametrize("name", sorted(TORCH))
def test_reference_param_act_matches_mpmath(name):
    """float64: values and gradients within a few ulps of the 40-digit mpmath value (gradients:
    plus 4e-16 absolute, where f' is a difference of terms near 1); float32: each value the
    float64 value rounded once, within one float32 ulp of mpmath's."""
    _, p0, p1 = TORCH[name]
    z = _inputs(np.float64)[::4]  # mpmath is slow: every 4th point, all the special ones
    z = np.concatenate([np.array(SPECIAL), z])
    f_ref, d_ref = _reference(name, z, p0, p1)
    code = cpu.PARAM_ACT_CODES[name]
    out, og = np.empty_like(z), np.empty_like(z)
    cpu.param_act(z, code, p0, p1, out)
    cpu.param_act_grad(np.ones_like(z), z, code, p0, p1, og)
    # a few ulps times the problem's condition number |z f'(z) / f(z)| (the rounding of z itself:
    # up to z^2 in the Gaussian tails of GELU), nothing below the normal range (1e-300: a subnormal
    # intermediate has few significant bits)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.nan_to_num(np.abs(z * d_ref / f_ref), nan=1.0, posinf=1.0)
    tol_f = (4 + 2 * kappa) * np.spacing(np.abs(f_ref)) + 1e-300
    tol_d = (8 + 2 * (2 + z * z)) * np.spacing(np.abs(d_ref)) + 4e-16 + 1e-300
    assert np.all(np.abs(out - f_ref) <= tol_f), (name, z[np.argmax(np.abs(out - f_ref) / tol_f)])
    assert np.all(np.abs(og - d_ref) <= tol_d), (name, z[np.argmax(np.abs(og - d_ref) / tol_d)])
    z32 = z.astype(np.float32)
    f32, _ = _reference(name, z32.astype(np.float64), p0, p1)
    out32 = np.empty_like(z32)
    cpu.param_act(z32, code, p0, p1, out32)
    ulp32 = np.spacing(np.abs(f32).astype(np.float32)).astype(np.float64)
    small = np.abs(f32) < np.finfo(np.float32).tiny  # float32 subnormal results: their own spacing
    assert np.all((np.abs(out32 - f32) <= ulp32 + 1e-45) | small), \
        (name, z32[np.argmax(np.abs(out32 - f32) / ulp32)])


@pytest.mark.parametrize("name", sorted(TORCH))
def test_peers_param_act_matches_torch_float32(name):
    """What a user compares: torch's float32 forward and autograd gradient, to 1e-6 relative
    (torch's own float32 kernels are a few ulps from the exact values)."""
    f, p0, p1 = TORCH[name]
    z = _inputs(np.float32)
    z = z[np.abs(z) < 1e4]
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    y = f(zt)
    y.sum().backward()
    code = cpu.PARAM_ACT_CODES[name]
    out, og = np.empty_like(z), np.empty_like(z)
    cpu.param_act(z, code, p0, p1, out)
    cpu.param_act_grad(np.ones_like(z), z, code, p0, p1, og)
    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(og, zt.grad.numpy(), rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("name", sorted(TORCH))
def test_reference_param_act_infinities_and_nan(name):
    """+-inf give the limits torch's float64 formulas give (NaN only where torch's is NaN too), NaN
    stays NaN; float32 as float64."""
    f, p0, p1 = TORCH[name]
    for dtype in (np.float64, np.float32):
        z = np.array([np.inf, -np.inf, np.nan], dtype)
        out = np.empty_like(z)
        cpu.param_act(z, cpu.PARAM_ACT_CODES[name], p0, p1, out)
        want = f(torch.from_numpy(z.astype(np.float64))).numpy()
        np.testing.assert_array_equal(out, want.astype(dtype), err_msg=name)


def test_reference_exp_near_the_subnormal_range():
    """The vectorized exp between -745 and -700 (normal and subnormal results) within 2 ulps of the
    40-digit value (1 subnormal step below the normal range)."""
    from relprop.kernels.cpu import activations as A

    u = np.linspace(-745.0, -700.0, 2001)
    e = np.empty_like(u)
    A._exp_nonpos(u, np.empty(u.size, np.int64), e, False)
    mpmath.mp.dps = 40
    ref = np.array([float(mpmath.exp(mpmath.mpf(float(v)))) for v in u])
    tol = np.maximum(2 * np.spacing(ref), 5e-324)
    assert np.all(np.abs(e - ref) <= tol), float(u[np.argmax(np.abs(e - ref) / tol)])


def test_errors_param_act():
    z = np.zeros(4)
    with pytest.raises(ValueError, match="param_act"):
        cpu.param_act(z, 10, 0.0, 0.0, np.empty(4))
    with pytest.raises(ValueError, match="param_act_grad"):
        cpu.param_act_grad(z, z, 3, 0.0, 0.0, np.empty(3))


GEOMETRIES = [  # (N, C, H, W, k, stride, padding, dilation)
    (2, 3, 9, 11, 3, 1, 1, 1), (2, 4, 16, 16, 3, 2, 1, 1), (1, 5, 11, 8, 5, 3, 2, 1), (3, 2, 20, 17, 3, 1, 2, 2),
    (2, 3, 12, 12, 7, 1, 3, 1), (1, 2, 7, 7, 3, 2, 0, 2), (2, 2, 6, 5, 3, 1, 3, 1), (1, 1, 1, 1, 1, 1, 0, 1)]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-6)])
@pytest.mark.parametrize("geom", GEOMETRIES)
def test_reference_depthwise_matches_torch(dtype, tol, geom):
    n, c, h, w, k, s, p, d = geom
    rng = np.random.default_rng(sum(geom))
    x = rng.normal(size=(n, c, h, w)).astype(dtype)
    wt = rng.normal(size=(c, 1, k, k)).astype(dtype)
    kd = (k - 1) * d + 1
    taps = np.zeros((c, kd, kd), dtype)
    taps[:, ::d, ::d] = wt[:, 0]  # the dense dilated kernel relprop stores (zeros between the taps)
    ho, wo = (h + 2 * p - kd) // s + 1, (w + 2 * p - kd) // s + 1
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    y = F.conv2d(xt, torch.from_numpy(wt), stride=s, padding=p, dilation=d, groups=c)
    gy = rng.normal(size=tuple(y.shape)).astype(dtype)
    y.backward(torch.from_numpy(gy))
    out = np.empty((c, n * ho * wo), dtype)
    cpu.depthwise_conv(x, taps, s, s, p, p, d, d, ho, wo, out)
    gin = np.full(x.shape, np.nan, dtype)
    cpu.depthwise_conv_grad(gy, taps, s, s, p, p, d, d, gin)
    got = out.reshape(c, n, ho, wo).transpose(1, 0, 2, 3)
    yt = y.detach().numpy()
    assert np.max(np.abs(got - yt)) <= tol * np.max(np.abs(yt))
    gt = xt.grad.numpy()
    assert np.max(np.abs(gin - gt)) <= tol * max(np.max(np.abs(gt)), 1e-30)


def test_errors_depthwise():
    x, taps = np.zeros((2, 3, 8, 8)), np.zeros((3, 3, 3))
    with pytest.raises(ValueError, match="depthwise"):
        cpu.depthwise_conv(x, taps, 1, 1, 1, 1, 1, 1, 7, 8, np.empty((3, 2 * 7 * 8)))  # wrong Ho
    with pytest.raises(ValueError, match="depthwise"):
        cpu.depthwise_conv(x, np.zeros((4, 3, 3)), 1, 1, 1, 1, 1, 1, 8, 8, np.empty((3, 128)))  # taps' C
    with pytest.raises(ValueError, match="depthwise_conv_grad"):
        cpu.depthwise_conv_grad(np.zeros((2, 3, 8, 8)), taps, 1, 1, 1, 1, 1, 1, np.empty((2, 4, 8, 8)))
    with pytest.raises(ValueError, match="depthwise"):
        cpu.depthwise_conv(x, taps, 0, 1, 1, 1, 1, 1, 8, 8, np.empty((3, 128)))  # stride 0


def numpy_col2im(cols, kh, kw, sh, sw, ph, pw, shape):
    """The transpose of im2col by strided numpy adds onto the padded grid (float64)."""
    n, c, h, w = shape
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    cc = cols.astype(np.float64).reshape(c, kh, kw, n, ho, wo)
    for i in range(kh):
        for j in range(kw):
            out[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] += cc[:, i, j].transpose(1, 0, 2, 3)
    return out[:, :, ph:ph + h, pw:pw + w]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-14), (np.float32, 1e-6)])
@pytest.mark.parametrize("n,c,h,w,k,s,p", [(2, 3, 9, 11, 3, 1, 1), (2, 3, 16, 16, 7, 2, 3), (1, 2, 10, 7, 5, 3, 2),
                                           (2, 2, 6, 6, 3, 2, 0), (1, 3, 5, 5, 5, 1, 4), (2, 1, 8, 8, 1, 2, 0)])
def test_reference_col2im_matches_numpy(dtype, tol, n, c, h, w, k, s, p):
    """col2im (the gradient's fold of a strided or few-channel convolution: the RGB stem's
    backward) against a numpy fold, float64 sums in both."""
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    cols = np.random.default_rng(k * 10 + s).normal(size=(c * k * k, n * ho * wo)).astype(dtype)
    out = np.full((n, c, h, w), np.nan, dtype)
    cpu.col2im_gather(cols, k, k, s, s, p, p, out, out, 0)
    ref = numpy_col2im(cols, k, k, s, s, p, p, (n, c, h, w))
    assert np.max(np.abs(out - ref)) <= tol * np.max(np.abs(ref))
