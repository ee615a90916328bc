"""Checks of what users pass, shared by the public API and the methods' validators.

Each says what was received, where, and what was expected; all run before any kernel.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import backend
from .graph import Graph
from .rules import BOUND_ULPS, bound_slack

def _check_model(net):
    if not isinstance(net, Graph):
        raise TypeError(f"net must be a relprop model (rp.Sequential or rp.Graph), got {type(net).__name__}")


def _check_x(net, x, name="x", scores=True, finite=True):
    """Validate the batch; returns (x as a contiguous float array, per-node shapes). ``finite``
    False: the caller checked already that every entry is finite (a dataset job's reader)."""
    xp = backend.kernels_for(x).xp
    if not np.issubdtype(x.dtype, np.floating) or x.dtype.itemsize not in (4, 8):
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {x.dtype}"
                        + (" (cast it with x.astype(np.float32))" if np.issubdtype(x.dtype, np.floating) else ""))
    rank = net.input_rank()
    if x.ndim < 2 or (rank is not None and x.ndim != rank + 1):
        want = f"{rank + 1} dimensions (N, ...)" if rank is not None else "at least 2 dimensions (N, ...)"
        raise ValueError(f"{name} must have {want} with the batch first, got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {x.shape})")
    if net.input_shape is not None and tuple(x.shape[1:]) != net.input_shape:
        raise ValueError(f"{name} must be shaped (N,) + {net.input_shape} for this model, got {x.shape}")
    shapes = net.infer_shapes(x.shape[1:])
    if x.dtype.itemsize > 4:  # infer_shapes checked the dense im2col columns in float32; float64 ones take twice
        net.check_columns(shapes, x.dtype, depthwise=False)
    if scores and len(shapes[net.score_node]) != 1:
        raise ValueError(f"the model's output must be (N, classes) scores, got per-sample shape {shapes[net.score_node]}")
    if not x.dtype.isnative:  # e.g. big-endian '>f8': same width, native byte order
        x = x.astype(x.dtype.newbyteorder("="))
    x = xp.ascontiguousarray(x)
    if finite and not bool(xp.isfinite(x).all()):
        bad = backend.to_host(xp.argwhere(~xp.isfinite(x))[0])
        raise ValueError(f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")
    return x, shapes


def _check_targets(targets, n, classes):
    """Several classes per sample: ``"all"`` or a list of K classes -> int64 (K,); an int array
    (n, K) -> int64 (n, K)."""
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets must be a list of class indices or 'all', got {targets!r}")
        return np.arange(classes, dtype=np.int64)
    tk = np.asarray(targets)
    if tk.size == 0 or tk.ndim not in (1, 2) or not np.issubdtype(tk.dtype, np.integer):
        raise TypeError(f"targets must be a non-empty list of class indices, 'all', or an int array (N, K), "
                        f"got {targets!r:.80}")
    if tk.min() < 0 or tk.max() >= classes:
        raise ValueError(f"targets must lie in 0..{classes - 1} for a model with {classes} outputs, got {targets!r:.80}")
    if tk.ndim == 2 and tk.shape[0] != n:
        raise ValueError(f"a targets array must have one row per sample, shape ({n}, K), got {tk.shape}")
    return tk.astype(np.int64)


def _check_target(target, n, classes):
    if target is None:
        return None
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target must be None, an int or an int array of shape ({n},), got {target!r}")
    if isinstance(target, numbers.Integral):
        t = int(target)
        if not 0 <= t < classes:
            raise ValueError(f"target {t} is out of range for a model with {classes} outputs (expected 0..{classes - 1})")
        return np.full(n, t, dtype=np.int64)
    t = np.asarray(target)
    if not np.issubdtype(t.dtype, np.integer):
        raise TypeError(f"target must be None, an int or an int array of shape ({n},), got dtype {t.dtype}")
    if t.shape != (n,):
        raise ValueError(f"target array must have shape ({n},) (one class per sample), got {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= classes):
        raise ValueError(f"target values must lie in 0..{classes - 1} for a model with {classes} outputs, "
                         f"got min {t.min()}, max {t.max()}")
    return t.astype(np.int64)


def _number(v, name, low=None, integer=False):
    ok = isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
    if integer:
        ok = isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
    if not ok or not np.isfinite(v):
        raise TypeError(f"{name} must be a finite {'integer' if integer else 'number'}, got {v!r}")
    if low is not None and v < low:
        raise ValueError(f"{name} must be >= {low}, got {v!r}")
    return int(v) if integer else v


def _check_baseline(b, x, name="baseline"):
    """A finite number, or a finite real array broadcastable to ``x``; returned as float/array.
    Shared by every parameter of that kind (baselines, occlusion fill, surrogate baselines).
    On the GPU the array may be a host (numpy) or a device array. ``x`` None (an Explainer
    being built, no input yet): what does not depend on x is checked."""
    if isinstance(b, numbers.Real) and not isinstance(b, (bool, np.bool_)):
        if not np.isfinite(b):
            raise ValueError(f"{name} must be finite, got {b!r}")
        if x is not None:
            _check_fits(b, x.dtype, name)
        return float(b)
    if x is None:
        if isinstance(b, np.ndarray) and (b.dtype == np.bool_ or not (np.issubdtype(b.dtype, np.floating)
                                                                         or np.issubdtype(b.dtype, np.integer))):
            raise TypeError(f"{name} must be a real numeric array, got dtype {b.dtype}")
        if not isinstance(b, np.ndarray) and type(b).__module__.split(".")[0] not in ("cupy", "torch"):
            raise TypeError(f"{name} must be a number or an array broadcastable to x, got {type(b).__name__}")
        if isinstance(b, np.ndarray) and not np.all(np.isfinite(b)):
            raise ValueError(f"{name} contains NaN or Inf")
        return b
    if not isinstance(b, np.ndarray) and backend.is_device(backend.kernels_for(x)):
        try:
            same = backend.kernels_for(b) is backend.kernels_for(x)
        except TypeError:
            same = False
        if same:
            _check_baseline(backend.to_host(b), x, name)
            return b
    if not isinstance(b, np.ndarray):
        raise TypeError(f"{name} must be a number or a numpy array broadcastable to x {x.shape}, got {type(b).__name__}")
    if not (np.issubdtype(b.dtype, np.floating) or np.issubdtype(b.dtype, np.integer)) or b.dtype == np.bool_:
        raise TypeError(f"{name} must be a real numeric array, got dtype {b.dtype}")
    try:
        if np.broadcast_shapes(b.shape, x.shape) != x.shape:
            raise ValueError
    except ValueError:
        raise ValueError(f"{name} of shape {b.shape} does not broadcast to x of shape {x.shape}") from None
    if not np.all(np.isfinite(b)):
        raise ValueError(f"{name} contains NaN or Inf")
    _check_fits(b, x.dtype, name)
    return b


def _check_seed(name, v):
    """None, or the non-negative int a random method draws from (numpy.random.SeedSequence)."""
    if v is not None and (not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_))):
        raise TypeError(f"{name}: seed must be None or an int, got {v!r}")
    if v is not None and v < 0:
        raise ValueError(f"{name}: seed must be a non-negative int (numpy.random.SeedSequence), got {v!r}")
    return None if v is None else int(v)


def _check_fits(v, dtype, name):
    """A finite value that overflows ``dtype`` (e.g. 1e39 with float32 inputs) is refused."""
    with np.errstate(over="ignore"):
        cast = np.asarray(v, dtype=np.float64).astype(dtype)
    if not np.all(np.isfinite(cast)):
        big = float(np.max(np.abs(np.asarray(v, dtype=np.float64))))
        raise ValueError(f"{name} holds values (|v| up to {big:.3g}) that overflow the input's dtype {np.dtype(dtype)} "
                         f"(largest {float(np.finfo(dtype).max):.3g}); cast x to float64 or rescale")


def _check_bounds(low, high, x, where):
    for nm, v in (("low", low), ("high", high)):
        try:
            if np.broadcast_shapes(np.shape(v), x.shape) != x.shape:
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}: {nm} of shape {np.shape(v)} does not broadcast to x of shape {x.shape}") from None
    x = backend.to_host(x)  # validation on the host (one copy on the GPU)
    lo, hi = (np.broadcast_to(np.asarray(backend.to_host(v), np.float64), x.shape) for v in (low, high))
    for nm, v in (("low", lo), ("high", hi)):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{where}: {nm} contains NaN or Inf")
        _check_fits(v, x.dtype, f"{where}: {nm}")
    # x may pass a bound by the rounding between the bound in one precision and x in another
    # (bounds computed as (0 - mean) / std in float64, inputs normalized in float32): a few ulps
    # of the bound in x's dtype (rules.bound_slack; float64 inputs at float64's resolution)
    slack_lo, slack_hi = (bound_slack(v, x.dtype).astype(np.float64) for v in (lo, hi))
    below, above = x < lo - slack_lo, x > hi + slack_hi
    if np.any(below) or np.any(above):
        raise ValueError(f"{where}: x is not inside the bounds [low, high]: {_outside(x, lo, hi, below, above)}; "
                         f"the z^B rule needs low <= x <= high (up to {BOUND_ULPS} {_ulp_name(x.dtype)} ulps of the "
                         f"bound){_float32_hint(x, lo, hi)}")


def _float32_hint(x, lo, hi):
    """For float64 x outside its bounds by float64 ulps but inside them with float32's slack:
    the bounds (or x) went through float32 on the way (e.g. ``(0 - mean) / std`` computed in
    float32, or ``low = x.min()`` of a float32 copy), which the float64 slack no longer absorbs."""
    if x.dtype != np.float64:
        return ""
    s_lo, s_hi = (bound_slack(v, np.float32).astype(np.float64) for v in (lo, hi))
    if np.any(x < lo - s_lo) or np.any(x > hi + s_hi):
        return ""
    return (f"; x is inside them up to {BOUND_ULPS} float32 ulps: the bounds look rounded to float32: pass them as "
            "float64 or cast x to float32")


def _ulp_name(dtype):
    """The dtype whose ulps bound_slack counts for inputs of ``dtype``."""
    return "float64" if np.dtype(dtype) == np.float64 else "float32"


def _outside(x, lo, hi, below, above, show=3):
    """The first ``show`` entries of x outside [lo, hi]: sample, feature index, value and bound,
    with every digit (``repr``), and how many there are in all."""
    bad = below | above
    where = np.argwhere(bad)
    parts = []
    for idx in where[:show]:
        idx = tuple(int(i) for i in idx)
        v = float(x[idx])
        bound, nm, op = (float(lo[idx]), "low", "<") if below[idx] else (float(hi[idx]), "high", ">")
        by = f"by {abs(v - bound):.3g}"
        if bound != 0:
            ulp = float(np.spacing(np.asarray(abs(bound), np.float64 if _ulp_name(x.dtype) == "float64" else np.float32)))
            by += f", {abs(v - bound) / ulp:.3g} {_ulp_name(x.dtype)} ulps of the bound"
        parts.append(f"sample {idx[0]}, feature {idx[1:] if len(idx) > 2 else idx[1]}: x = {v!r} {op} {nm} = "
                     f"{bound!r} ({by})")
    more = len(where) - len(parts)
    return "; ".join(parts) + (f"; and {more} more of {x.size} values outside ({x.dtype})" if more else
                               f" ({x.dtype} x)")


def _reads_input_directly(net, node):
    """True when only reshapes (Flatten, Reshape, Identity, Dropout) lie between x and ``node``:
    then z^B bounds given in x's shape can be checked (and reshaped) up front."""
    src = node.inputs[0]
    while src != "input":
        prev = net.by_name[src]
        if not prev.layer.passes_values:
            return False
        src = prev.inputs[0]
    return True
