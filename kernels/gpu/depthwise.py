"""Depthwise convolutions (groups = input = output channels; MobileNet, EfficientNet, ConvNeXt),
forward and gradient, CuPy.

Direct kernels (``depthwise.cu``): the forward runs one thread per output element summing its
taps, the gradient one thread per input-gradient element gathering from the outputs whose window
contains it (no atomics). ``taps`` (C, kh, kw) is the dense dilated kernel that
``relprop.core.graph.Conv2d`` stores, of which only the taps at multiples of the dilation
``(dh, dw)`` are read. Taps are summed in T in the CPU kernel's row-major order, so results
agree with ``relprop.kernels.cpu.depthwise`` to rounding; arguments and results as there.
"""
import numbers

from ._launch import check, float_dtype, index_scalars, launch, needs_int64, operand, out_buffer, write_back
from .conv import conv_out_shape


def _geometry(name, shape, taps, sh, sw, ph, pw, dh, dw, ho, wo):
    """The CPU kernel's checks: stride and dilation >= 1, padding >= 0, taps (C, kh, kw),
    (Ho, Wo) the window sweep of the padded (N, C, H, W) input ``shape``."""
    geom = {"sh": sh, "sw": sw, "ph": ph, "pw": pw, "dh": dh, "dw": dw, "ho": ho, "wo": wo}
    bad = {k: v for k, v in geom.items() if not isinstance(v, numbers.Integral)}
    check(not bad, f"{name}: the geometry must be integers, got {bad}")
    check(len(shape) == 4, f"{name}: the input must be (N, C, H, W), got shape {tuple(shape)}")
    check(taps.ndim == 3 and taps.shape[0] == shape[1],
          f"{name}: taps has shape {tuple(taps.shape)}, expected (C, kh, kw) with C = {shape[1]}")
    kh, kw = taps.shape[1], taps.shape[2]
    check(min(sh, sw, dh, dw) >= 1 and min(ph, pw) >= 0,
          f"{name}: stride {sh}x{sw} and dilation {dh}x{dw} must be >= 1, padding {ph}x{pw} >= 0")
    h, w = shape[2], shape[3]
    sweep = conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    check(min(kh, kw) >= 1 and (ho, wo) == sweep and min(sweep) >= 1,
          f"{name}: (Ho, Wo) = {(ho, wo)} must be the window sweep {sweep} of the {h}x{w} input "
          f"padded by {ph}x{pw} under the {kh}x{kw} kernel at stride {sh}x{sw}, at least 1x1")
    return kh, kw


def depthwise_conv(x, taps, sh, sw, ph, pw, dh, dw, ho, wo, out):
    """``out[c, n*Ho*Wo + y*Wo + q] = sum_(i, j) taps[c, i, j] xpad[n, c, y*sh + i, q*sw + j]``
    over the taps at multiples of the dilation; ``x`` (N, C, H, W), ``out`` (C, N*Ho*Wo) (the
    layout of a GEMM output, which the epilogues read). One thread per element of ``out``."""
    dt = float_dtype(out, "out")
    kh, kw = _geometry("depthwise_conv", x.shape, taps, sh, sw, ph, pw, dh, dw, ho, wo)
    n, c, h, w = x.shape
    check(tuple(out.shape) == (c, n * ho * wo),
          f"depthwise_conv: out has shape {tuple(out.shape)}, expected (C, N*Ho*Wo) = {(c, n * ho * wo)}")
    xb, tb, ob = operand(x, dt), operand(taps, dt), out_buffer(out, dt)
    big = needs_int64(xb.size, tb.size, ob.size)
    launch("depthwise", "depthwise_conv", dt, big, ob.size,
           (xb, tb, *index_scalars(big, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo), ob))
    write_back(out, ob)


def depthwise_conv_grad(g, taps, sh, sw, ph, pw, dh, dw, gin):
    """``gin = W^T g`` of :func:`depthwise_conv` (its exact adjoint): ``g`` (N, C, Ho, Wo), ``gin``
    (N, C, H, W), overwritten. One thread per element of ``gin``, gathering over its taps."""
    dt = float_dtype(gin, "gin")
    check(g.ndim == 4 and gin.ndim == 4 and tuple(g.shape[:2]) == tuple(gin.shape[:2]),
          f"depthwise_conv_grad: g {tuple(g.shape)} and gin {tuple(gin.shape)} must be (N, C, Ho, Wo) and "
          f"(N, C, H, W) with one N and C")
    n, c, ho, wo = g.shape
    h, w = gin.shape[2], gin.shape[3]
    kh, kw = _geometry("depthwise_conv_grad", gin.shape, taps, sh, sw, ph, pw, dh, dw, ho, wo)
    gb, tb, ob = operand(g, dt), operand(taps, dt), out_buffer(gin, dt)
    big = needs_int64(gb.size, tb.size, ob.size)
    launch("depthwise", "depthwise_conv_grad", dt, big, ob.size,
           (gb, tb, *index_scalars(big, n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo), ob))
    write_back(gin, ob)
