"""Perturbation methods: occlusion (Zeiler & Fergus 2014), with Captum's conventions.

A hyperrectangular window slides over each sample with the given stride; every window
position gives one perturbed copy of the batch in which the window's features are replaced
by ``fill``. Each covered feature gets ``s_c(x) - s_c(x with the window filled)``, summed over
the windows covering it and divided by their number (Captum ``Occlusion`` exactly: window
starts ``k * stride`` for ``k = 0 .. ceil((D - w) / stride)``, the last window cut at the edge
when the stride does not divide ``D - w``). ``s_c`` is the target's pre-softmax score.

All perturbed copies run through the fused forward pass as large batches, built in chunks of
bounded memory (``relprop.core.execute.Budget.expand``).
"""
from __future__ import annotations

import itertools
import numbers

import numpy as np

from .base import Method, forward_scores, register, resolve_target


def window_grid(in_shape, window, stride):
    """Per dimension, the window start positions (Captum's ``shift_counts``) and each feature's
    coverage count; returns (starts per dim, coverage count array of ``in_shape``)."""
    starts, count = [], np.ones((), np.int64)
    for d, w, s in zip(in_shape, window, stride):
        k = int(np.ceil((d - w) / s)) + 1
        st = np.arange(k) * s
        starts.append(st)
        cover = np.zeros(d, np.int64)
        for a in st:
            cover[a:a + w] += 1
        count = np.multiply.outer(count, cover)
    return starts, count


def _windows(in_shape, window, stride):
    """Slices of every window position, in Captum's order (first dimension fastest; the order
    does not change the result)."""
    starts, _ = window_grid(in_shape, window, stride)
    for pos in itertools.product(*reversed(starts)):
        yield tuple(slice(int(a), int(a) + w) for a, w in zip(reversed(pos), window))


def occlusion_scores(ctx, x, cols, window, stride, fill):
    """Occlusion attributions for the classes ``cols`` (N, K) of each sample: (N, K, ...).

    One forward at ``x``, then all window positions as batches of (windows x N) rows
    (``ctx.expand_rows`` rows at most)."""
    n, kk = cols.shape
    in_shape = x.shape[1:]
    feat = (slice(None),)
    fillb = np.broadcast_to(np.asarray(fill, dtype=x.dtype), x.shape)
    rows = np.arange(n)[:, None]
    s0 = forward_scores(ctx, x)[rows, cols]  # (N, K)
    acc = np.zeros((n, kk) + in_shape, np.float64)
    per_chunk = max(1, ctx.expand_rows // n)
    wins = list(_windows(in_shape, window, stride))
    for w0 in range(0, len(wins), per_chunk):
        chunk = wins[w0:w0 + per_chunk]
        m = len(chunk)
        pts = np.empty((m,) + x.shape, x.dtype)
        pts[...] = x
        for j, sl in enumerate(chunk):
            pts[j][feat + sl] = fillb[feat + sl]
        score = forward_scores(ctx, pts.reshape((m * n,) + in_shape))
        diff = s0[None] - score.reshape(m, n, -1)[:, rows, cols]  # (m, N, K), in x's dtype (as Captum)
        expand = (slice(None), slice(None)) + (None,) * len(in_shape)
        for j, sl in enumerate(chunk):
            acc[(slice(None), slice(None)) + sl] += diff[j][expand]
    _, count = window_grid(in_shape, window, stride)
    return (acc / count).astype(x.dtype)


def occlusion(ctx, x, target, window, stride, fill):
    """Occlusion (Zeiler & Fergus 2014) = Captum ``Occlusion.attribute(x, sliding_window_shapes=
    window, strides=stride, baselines=fill, target=target)``: per feature, the mean over the
    windows covering it of ``s_c(x) - s_c(x with the window set to fill)``."""
    cols = np.asarray(resolve_target(ctx, x, target), dtype=np.int64).reshape(-1, 1)
    return occlusion_scores(ctx, x, cols, window, stride, fill)[:, 0]


def occlusion_multi(ctx, x, targets, window, stride, fill):
    """Occlusion for the classes ``targets`` (N, K) at once: (N, K, ...), every perturbed copy
    evaluated once for all K classes."""
    return occlusion_scores(ctx, x, np.asarray(targets, dtype=np.int64), window, stride, fill)


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _int_tuple(v, name, rank, in_shape):
    if _is_int(v):
        v = (int(v),) * rank
    elif isinstance(v, (tuple, list)) and all(_is_int(e) for e in v):
        v = tuple(int(e) for e in v)
    else:
        raise TypeError(f"occlusion: {name} must be an int or a tuple of {rank} ints (one per dimension of a sample "
                        f"{in_shape}), got {v!r}")
    if len(v) != rank:
        raise ValueError(f"occlusion: {name} must have {rank} entries (one per dimension of a sample {in_shape}, "
                         f"x is {rank + 1}-d with the batch first), got {v!r}")
    if any(e < 1 for e in v):
        raise ValueError(f"occlusion: every entry of {name} must be >= 1, got {v!r}")
    return v


def _check_fill(fill, x):
    from ..core.checks import _check_baseline

    return _check_baseline(fill, x, "occlusion: fill")


def _validate(graph, x, params):
    """Check window / stride / fill; returns them normalized (tuples of ints, float or array)."""
    if x is None:  # an Explainer being built: what does not depend on x
        if params["window"] is None:
            raise TypeError("method 'occlusion' needs window=: the occluding window's shape per sample")
        _check_fill(params["fill"], None)
        return params
    in_shape = x.shape[1:]
    rank = len(in_shape)
    if params["window"] is None:
        raise TypeError(f"method 'occlusion' needs window=: the occluding window's shape per sample, "
                        f"{rank} ints for samples of shape {in_shape} (e.g. {tuple(min(3, d) for d in in_shape)})")
    window = _int_tuple(params["window"], "window", rank, in_shape)
    stride = _int_tuple(params["stride"], "stride", rank, in_shape)
    if any(w > d for w, d in zip(window, in_shape)):
        raise ValueError(f"occlusion: window {window} exceeds the sample shape {in_shape} in some dimension")
    bad = [i for i, (w, s, d) in enumerate(zip(window, stride, in_shape)) if w < d and s > w]
    if bad:
        raise ValueError(f"occlusion: stride {stride} is larger than window {window} in dimension {bad[0]} "
                         f"(where the window is smaller than the sample, stride <= window is needed so every "
                         f"feature is covered, as in Captum)")
    return {"window": window, "stride": stride, "fill": _check_fill(params["fill"], x)}


register(Method("occlusion", "occlusion: mean score drop over the sliding windows covering each feature "
                "(Captum Occlusion)", {"window": None, "stride": 1, "fill": 0.0}, validate=_validate, run=occlusion,
                run_multi=occlusion_multi, per_sample=("fill",), family="perturbation"))
