"""Slow, plain-numpy reference for PatternNet and PatternAttribution (Kindermans et
al. 2018). Imports no relprop; networks are ``reference_numpy`` specs (dense, conv, relu, maxpool,
flatten, softmax), and layer keys are spec positions as strings (the node names of ``to_relprop``).

Everything is float64, per sample, with explicit loops, in the seed's notation:

* rows: a Dense layer contributes its input vector x, a Conv2d layer one patch per output position
  (C*kh*kw values in (c, i, j) order, zero where the window covers padding); y_o = w_o^T x (no bias)
* linear estimator (layer not followed by a ReLU):   a_o = cov[x, y_o] / (w_o^T cov[x, y_o])
* two-regime estimator (layer followed by a ReLU):   a+_o = (E+[x y_o] - E+[x] E[y_o]) / w_o^T(same),
  E+ over the rows with w_o^T x + b_o > 0, E over all rows; 0 where the unit is never active
* PatternNet: s^M = s_c e_c; at a linear layer s^{l-1} = A^T s^l with A the layer's explicit matrix built
  from the pattern kernel; at a ReLU s * [z > 0]; max pooling sends s to the window's first maximum
* PatternAttribution: the same with the kernel w ⊙ a+
"""
from __future__ import annotations

import numpy as np

import reference_numpy as refnp


def _pair(v):
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def patches(a, kh, kw, stride, padding):
    """(Ho*Wo, C*kh*kw) patches of one sample ``a`` (C, H, W), positions row-major, zero padding."""
    C, H, W = a.shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    out = np.zeros((Ho * Wo, C * kh * kw))
    for y in range(Ho):
        for x in range(Wo):
            for c in range(C):
                for i in range(kh):
                    for j in range(kw):
                        iy, ix = y * sh - ph + i, x * sw - pw + j
                        if 0 <= iy < H and 0 <= ix < W:
                            out[y * Wo + x, (c * kh + i) * kw + j] = a[c, iy, ix]
    return out, (Ho, Wo)


def _maxpool(a, layer):
    """Max pooling of one sample; returns (output, winner flat index per output)."""
    idx, out_shape = refnp.pool_windows(a.shape, layer[1], layer[2], layer[3])
    flat = a.ravel()
    out = np.empty(idx.shape[0])
    win = np.empty(idx.shape[0], np.int64)
    for j in range(idx.shape[0]):
        best = -np.inf
        for i in idx[j]:
            if i >= 0 and flat[i] > best:  # strict: the first maximum wins
                best, win[j] = flat[i], i
        out[j] = best
    return out.reshape(out_shape), win


def trace(spec, xi):
    """Forward pass of one sample; per layer (input, output, extra) with natural shapes.
    extra: conv -> its patches (rows, K); maxpool -> winners."""
    recs = []
    a = np.asarray(xi, np.float64)
    for layer in spec:
        kind = layer[0]
        extra = None
        if kind == "dense":
            w, b = layer[1], layer[2]
            out = w @ a.ravel() + (0 if b is None else b)
        elif kind == "conv":
            w, b = np.asarray(layer[1], np.float64), layer[2]
            rows, (Ho, Wo) = patches(a, w.shape[2], w.shape[3], layer[3], layer[4])
            out = (rows @ w.reshape(w.shape[0], -1).T + (0 if b is None else b)).T.reshape(w.shape[0], Ho, Wo)
            extra = rows
        elif kind == "relu":
            out = np.maximum(a, 0)
        elif kind == "maxpool":
            out, extra = _maxpool(a, layer)
        elif kind == "flatten":
            out = a.ravel()
        elif kind == "softmax":
            out = a  # explanations start from the pre-softmax score
        else:
            raise ValueError(f"reference_patterns: unsupported layer {kind}")
        recs.append((a, out, extra))
        a = out
    return recs


def estimator(spec, i):
    """'relu' when layer i is followed by a ReLU, else 'linear'."""
    return "relu" if i + 1 < len(spec) and spec[i + 1][0] == "relu" else "linear"


def fit_patterns(spec, X):
    """{str(i): (pattern of the weight's shape, estimator, per-unit counts)} for every dense/conv layer."""
    rows = {i: [] for i, layer in enumerate(spec) if layer[0] in ("dense", "conv")}
    zs = {i: [] for i in rows}
    for xi in np.asarray(X, np.float64):
        for i, (a, out, extra) in enumerate(trace(spec, xi)):
            if i in rows:
                if spec[i][0] == "dense":
                    rows[i].append(a.ravel()[None])
                    zs[i].append(out[None])
                else:
                    rows[i].append(extra)
                    zs[i].append(out.reshape(out.shape[0], -1).T)
    result = {}
    for i, layer_rows in rows.items():
        w = np.asarray(spec[i][1], np.float64)
        W = w.reshape(w.shape[0], -1)
        x = np.concatenate(layer_rows)
        z = np.concatenate(zs[i])
        y = x @ W.T
        est = estimator(spec, i)
        A = np.zeros_like(W)
        counts = np.zeros(W.shape[0], np.int64)
        for o in range(W.shape[0]):
            act = z[:, o] > 0 if est == "relu" else np.ones(len(x), bool)
            counts[o] = act.sum()
            if counts[o] == 0:
                continue
            cov = (x[act] * y[act, o:o + 1]).mean(axis=0) - x[act].mean(axis=0) * y[:, o].mean()
            den = W[o] @ cov
            A[o] = cov / den if den != 0 else 0.0
        result[str(i)] = (A.reshape(w.shape), est, counts)
    return result


def pattern_backward(spec, patterns, X, target, attribution, unit_start=False):
    """PatternNet (``attribution=False``) or PatternAttribution output for each sample of X, from
    ``patterns`` {str(i): array of the weight's shape}; ``target``: int array (N,) or None (argmax).
    ``unit_start``: start from e_c instead of s_c e_c (to show which one the library uses)."""
    X = np.asarray(X, np.float64)
    mats = {}
    out = []
    for n, xi in enumerate(X):
        recs = trace(spec, xi)
        score = recs[-1][1]
        c = int(np.argmax(score)) if target is None else int(target[n])
        s = np.zeros_like(score)
        s[c] = 1.0 if unit_start else score[c]
        for i in reversed(range(len(spec))):
            kind = spec[i][0]
            a, _, extra = recs[i]
            if kind in ("dense", "conv"):
                k = patterns[str(i)] * (np.asarray(spec[i][1], np.float64) if attribution else 1.0)
                if kind == "dense":
                    s = k.T @ s.ravel()
                else:
                    if i not in mats:
                        mats[i] = refnp.conv_matrix(k, a.shape, spec[i][3], spec[i][4])[0]
                    s = mats[i].T @ s.ravel()
                s = s.reshape(a.shape)
            elif kind == "relu":
                s = s * (a > 0)
            elif kind == "maxpool":
                g = np.zeros(a.size)
                np.add.at(g, extra, s.ravel())
                s = g.reshape(a.shape)
            elif kind == "flatten":
                s = s.reshape(a.shape)
        out.append(s)
    return np.stack(out)
