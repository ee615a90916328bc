"""The activations without a fused-epilogue code, as elementwise kernels, CuPy: LeakyReLU,
Softplus, ELU, GELU (exact and tanh; Hendrycks & Gimpel 2016), SiLU (Elfwing et al. 2018),
Hardswish, Hardsigmoid (Howard et al. 2019), ReLU6, Mish (Misra 2019), torch's formulas.

Codes and parameters are ``relprop.kernels.cpu.activations``' (``PARAM_ACT_CODES`` is that very
dict); the CUDA code is ``activations.cu``, the same formulas in the same operation order, each
value computed in double and rounded once to the output's dtype, so results agree with the CPU
kernels to the double math library's last bits before that rounding.
"""
import numbers

import numpy as np

from relprop.kernels.cpu.activations import PARAM_ACT_CODES

from ._launch import check, float_dtype, index_scalars, launch, needs_int64, operand, out_buffer, write_back
from ._launch import code as _int_arg

_N_CODES = len(PARAM_ACT_CODES)


def _check_args(name, code, p0, p1):
    check(isinstance(code, numbers.Integral) and 0 <= code < _N_CODES,
          f"{name}: code must be an integer in 0..{_N_CODES - 1} (PARAM_ACT_CODES), got {code!r}")
    for pname, p in (("p0", p0), ("p1", p1)):
        check(isinstance(p, numbers.Real), f"{name}: {pname} must be a real number, got {p!r}")


def param_act(z, code, p0, p1, out):
    """``out = f(z)`` (flat arrays of one size) for the activation ``code``."""
    dt = float_dtype(out, "out")
    _check_args("param_act", code, p0, p1)
    check(out.size == z.size, f"param_act: z has {z.size} elements, out {out.size}; they must have one size")
    zb, ob = operand(z, dt), out_buffer(out, dt)
    big = needs_int64(zb.size)
    launch("activations", "param_act", dt, big, zb.size,
           (zb, _int_arg(code), np.float64(p0), np.float64(p1), *index_scalars(big, zb.size), ob))
    write_back(out, ob)


def param_act_grad(g, z, code, p0, p1, out):
    """``out = g * f'(z)`` (flat arrays of one size): the chain rule through the activation."""
    dt = float_dtype(out, "out")
    _check_args("param_act_grad", code, p0, p1)
    check(z.size == g.size and out.size == g.size,
          f"param_act_grad: g, z and out must have one size, got {g.size}, {z.size} and {out.size} elements")
    gb, zb, ob = operand(g, dt), operand(z, dt), out_buffer(out, dt)
    big = needs_int64(gb.size)
    launch("activations", "param_act_grad", dt, big, gb.size,
           (gb, zb, _int_arg(code), np.float64(p0), np.float64(p1), *index_scalars(big, gb.size), ob))
    write_back(out, ob)
