"""2-D max and average pooling, forward and backward (NCHW), CuPy.

The CUDA code is ``pool.cu``; arguments and results as in ``relprop.kernels.cpu.pool``.
The max-pool backward kernels get no window geometry (nor does the CPU signature), so they
scatter onto the zeroed ``out`` with atomic adds: bit-identical to the CPU where windows do
not overlap, equal up to the order of rounding where a pixel wins several windows.
"""
import numpy as np

from ._launch import (check, check_window, code, float_dtype, index_scalars, launch, needs_int64, operand,
                      out_buffer, write_back)
from .conv import conv_out_shape


def _sweep_shapes(x, kh, kw, sh, sw, ph, pw, out, name):
    """``out`` (N, C, Ho, Wo) is the window sweep of ``x`` (N, C, H, W) with this geometry."""
    check_window(name, kh, kw, sh, sw, ph, pw)
    n, c, h, w = x.shape
    check(tuple(out.shape) == (n, c, *conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)),
          f"{name}: x {tuple(x.shape)} and out {tuple(out.shape)} are not a {kh}x{kw} window sweep "
          f"(stride {sh}x{sw}, padding {ph}x{pw})")


def _winner_shapes(g, idx, out, name):
    check(out.ndim == 4 and tuple(g.shape[:2]) == tuple(out.shape[:2]) and tuple(idx.shape) == tuple(g.shape),
          f"{name}: g {tuple(g.shape)}, idx {tuple(idx.shape)} and out {tuple(out.shape)} do not match")


def maxpool_forward(x, kh, kw, sh, sw, ph, pw, out, idx):
    """``out[n, c, ho, wo] = max`` over the window (padding never wins), ``idx`` the flat
    ``h*W + w`` position of the first maximum in row-major window order (torch's choice)."""
    dt = float_dtype(out, "out")
    _sweep_shapes(x, kh, kw, sh, sw, ph, pw, out, "maxpool_forward")
    n, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    # padding < kernel: every window holds a pixel of x, so the winners are valid positions
    check(ph < kh and pw < kw and tuple(idx.shape) == tuple(out.shape) and (out.size == 0 or h * w > 0),
          f"maxpool_forward: padding {ph}x{pw} must be < kernel {kh}x{kw}; x {tuple(x.shape)}, "
          f"out {tuple(out.shape)}, idx {tuple(idx.shape)}")
    xb, ob, ib = operand(x, dt), out_buffer(out, dt), out_buffer(idx, np.int64)
    big = needs_int64(xb.size, ob.size)
    launch("pool", "maxpool_forward", dt, big, ob.size,
           (xb, *index_scalars(big, n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo), ob, ib))
    write_back(out, ob)
    write_back(idx, ib)


def maxpool_backward(g, idx, out):
    """Route ``g`` (N, C, Ho, Wo) to the window winners: ``out`` (N, C, H, W) = sum of the
    ``g`` of every window a pixel won (the gradient of max pooling)."""
    dt = float_dtype(out, "out")
    _winner_shapes(g, idx, out, "maxpool_backward")
    n, c, h, w = out.shape
    gb, ib, ob = operand(g, dt), operand(idx, np.int64), out_buffer(out, dt)
    ob.fill(0)
    big = needs_int64(gb.size, ob.size)
    launch("pool", "maxpool_backward", dt, big, gb.size,
           (gb, ib, *index_scalars(big, n * c, h * w, g.shape[2] * g.shape[3]), ob))
    write_back(out, ob)


def maxpool_rescale_backward(g, x, x0, y, y0, idx, idx0, eps, out):
    """DeepLIFT multiplier through max pooling, Captum's convention.

    The change of each window's max, ``y - y0``, is split as ``(max(y, y0) - y0)`` routed to
    the input's winner and ``(y - max(y, y0))`` routed to the baseline's winner, each times
    the upstream multiplier ``g``; the pixel's multiplier is that sum divided by
    ``x - x0``, or the plain max-pool gradient where ``|x - x0| < eps``. Three launches:
    route, divide, add the plain gradient.
    """
    dt = float_dtype(out, "out")
    _winner_shapes(g, idx, out, "maxpool_rescale_backward")
    n, c, h, w = out.shape
    gb, yb, y0b = (operand(v, dt) for v in (g, y, y0))
    xb, x0b = operand(x, dt), operand(x0, dt)
    ib, i0b = operand(idx, np.int64), operand(idx0, np.int64)
    check(tuple(x.shape) == tuple(x0.shape) == tuple(out.shape)
          and tuple(y.shape) == tuple(y0.shape) == tuple(idx0.shape) == tuple(g.shape),
          "maxpool_rescale_backward: x/x0 must match out, y/y0/idx0 must match g")
    ob = out_buffer(out, dt)
    ob.fill(0)
    big = needs_int64(gb.size, ob.size)
    planes = index_scalars(big, n * c, h * w, g.shape[2] * g.shape[3])
    launch("pool", "maxpool_rescale_route", dt, big, gb.size, (gb, yb, y0b, ib, i0b, *planes, ob))
    launch("pool", "maxpool_rescale_divide", dt, big, ob.size,
           (xb, x0b, np.float64(eps), *index_scalars(big, ob.size), ob))
    launch("pool", "maxpool_rescale_small", dt, big, gb.size, (gb, xb, x0b, ib, np.float64(eps), *planes, ob))
    write_back(out, ob)


def avgpool_forward(x, kh, kw, sh, sw, ph, pw, out):
    """Window mean with zero padding counted (torch's ``count_include_pad=True``)."""
    dt = float_dtype(out, "out")
    _sweep_shapes(x, kh, kw, sh, sw, ph, pw, out, "avgpool_forward")
    n, c, h, w = x.shape
    ho, wo = out.shape[2], out.shape[3]
    xb, ob = operand(x, dt), out_buffer(out, dt)
    big = needs_int64(xb.size, ob.size)
    launch("pool", "avgpool_forward", dt, big, ob.size,
           (xb, *index_scalars(big, n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo), ob))
    write_back(out, ob)


def avgpool_backward(g, kh, kw, sh, sw, ph, pw, x, mul_x, out):
    """Transpose of average pooling: ``out[n, c, h, w] = sum_windows g / (kh*kw)``.

    With ``mul_x`` the result is multiplied by ``x`` (N, C, H, W): the z-rule (Zennit's
    ``Norm``) redistribution ``R_in = x * pool^T(R / stab(z))``, fused.
    """
    dt = float_dtype(out, "out")
    _sweep_shapes(out, kh, kw, sh, sw, ph, pw, g, "avgpool_backward")
    n, c, h, w = out.shape
    ho, wo = g.shape[2], g.shape[3]
    gb, ob = operand(g, dt), out_buffer(out, dt)
    if mul_x:
        xb = ob if x is out else operand(x, dt)
        check(tuple(xb.shape) == tuple(ob.shape), f"avgpool_backward: x {tuple(x.shape)}, out {tuple(out.shape)}")
    else:
        xb = gb  # unread
    big = needs_int64(gb.size, ob.size)
    launch("pool", "avgpool_backward", dt, big, ob.size,
           (gb, *index_scalars(big, n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo), xb, code(bool(mul_x)), ob))
    write_back(out, ob)
