"""Surrogate-model methods: KernelSHAP (Lundberg & Lee 2017) and LIME (Ribeiro et al. 2016),
with Captum 0.9.0's conventions.

Both explain one sample through ``F`` interpretable features: a ``feature_mask`` (integer ids
``0 .. F-1``, broadcastable to one sample) groups input elements into features. A coalition
``z in {0, 1}^F`` gives the input ``where(z[mask], x, baseline)``; the target's pre-softmax score
``s_c`` of every coalition is recorded and a weighted linear model ``s_c ~ a + z . phi`` is fitted.
Each input element's attribution is the coefficient ``phi`` of its feature (Captum's
``return_input_shape=True``).

``kernel_shap`` (Captum ``KernelShap``): the first two coalitions are all-ones and all-zeros,
the others draw ``k`` with ``p(k) ~ (F - 1) / (k (F - k))`` for ``k = 1 .. F-1`` and then a
uniformly random subset of size ``k``; this sampling already carries the Shapley kernel, so
every sample has weight 1 except the two end points, weighted ``INF_WEIGHT = 1e6`` (Captum's
stand-in for the infinite weight that enforces ``a = s_c(baseline)``, ``a + sum phi = s_c(x)``).
The fit is ordinary weighted least squares with an intercept (Captum's default
``SkLearnLinearRegression``). Efficiency ``sum phi = s_c(x) - s_c(baseline)`` therefore holds up
to ``O(residual / INF_WEIGHT)`` (exactly when the model is linear in ``z``).

``lime`` (Captum ``Lime`` with its default sampling and similarity): coalitions are
Bernoulli(1/2) per feature; each sample's weight is
``exp(-d^2 / (2 kernel_width^2))`` with ``d = 1 - cos(x, x_perturbed)`` on the flattened inputs
(Captum ``get_exp_kernel_similarity_function('cosine', kernel_width)``). DIFFERENCE from Captum:
Captum's default interpretable model is ``SkLearnLasso(alpha=0.01)`` (scikit-learn, not a
dependency here); relprop fits weighted least squares with an intercept and a small ridge
``LIME_RIDGE * sum(weights)`` on the coefficients (not the intercept), i.e. no L1 sparsity.
For a model that is linear in ``z`` both give ``phi_i = sum_{j in feature i} w_j (x_j - b_j)``
(Lasso only up to its shrinkage).

Coalitions are drawn per sample: sample ``r`` (its global index) draws from
``row_rng(seed, r, stream 3)`` (``relprop.methods.base``; ``seed=None``: a fresh seed per call),
so results do not depend on the batch a sample comes in. All perturbed inputs of a batch run
through the fused forward pass as large batches, built in chunks of bounded memory
(``relprop.core.execute.Budget.expand``).
"""
from __future__ import annotations

import numbers

import numpy as np

from ..core.checks import _check_baseline, _number
from .base import Method, forward_scores, register, resolve_target, row_rng

COALITION_STREAM = 3
INF_WEIGHT = 1e6            # Captum KernelShap's weight of the all-ones / all-zeros coalitions
LIME_RIDGE = 1e-8           # ridge on LIME's coefficients, relative to the total sample weight
COS_EPS = 1e-8              # torch CosineSimilarity's eps


# ---------------------------------------------------------------------------------------------
# Coalition sampling
# ---------------------------------------------------------------------------------------------
def shap_coalitions(rng, nfeat, samples):
    """(samples, F) binary coalitions as Captum's ``kernel_shap_perturb_generator``: all-ones,
    all-zeros, then size ``k ~ (F-1)/(k(F-k))``, k = 1..F-1, and a uniform subset of that size."""
    z = np.zeros((samples, nfeat), np.bool_)
    z[0] = True
    if samples <= 2 or nfeat < 2:
        if nfeat < 2 and samples > 2:  # F = 1: only the two end points exist; alternate them
            z[2::2] = True
        return z
    k = np.arange(1, nfeat)
    p = (nfeat - 1) / (k * (nfeat - k))
    sizes = rng.choice(k, size=samples - 2, p=p / p.sum())
    order = np.argsort(rng.random((samples - 2, nfeat)), axis=1)  # a uniform random permutation
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(nfeat)[None].repeat(samples - 2, 0), axis=1)
    z[2:] = ranks < sizes[:, None]
    return z


def lime_coalitions(rng, nfeat, samples):
    """(samples, F) Bernoulli(1/2) coalitions (Captum Lime's ``default_perturb_func``)."""
    return rng.random((samples, nfeat)) < 0.5


# ---------------------------------------------------------------------------------------------
# Evaluation and fit
# ---------------------------------------------------------------------------------------------
def coalition_scores(ctx, x, target, mask, z, baseline):
    """Scores ``s_c`` (N, S) of the inputs ``where(z[n, s][mask], x[n], baseline[n])`` for the
    coalitions ``z`` (N, S, F), evaluated as large batches in chunks of bounded memory (the
    perturbed inputs are built per chunk and not kept)."""
    n, s, _ = z.shape
    in_shape = x.shape[1:]
    b = np.broadcast_to(np.asarray(baseline, dtype=x.dtype), x.shape)
    m = np.broadcast_to(mask, in_shape)
    rows_per_chunk = ctx.expand_rows
    out = np.empty((n, s), np.float64)
    for r0 in range(0, n * s, rows_per_chunk):
        flat = np.arange(r0, min(r0 + rows_per_chunk, n * s))  # (sample, coalition), sample-major
        ii, jj = flat // s, flat % s
        keep = z[ii, jj][:, m]  # (rows,) + in_shape
        pts = np.where(keep, x[ii], b[ii])
        score = forward_scores(ctx, np.ascontiguousarray(pts))
        out[ii, jj] = score[np.arange(len(flat)), target[ii]]
    return out


def lime_similarity(graph_x, mask, z, baseline, kernel_width):
    """Captum's exponential cosine kernel between each sample and its perturbed copies:
    (N, S) weights ``exp(-(1 - cos)^2 / (2 kernel_width^2))``, computed without building the
    perturbed inputs (``x_p = b + z[mask] (x - b)``, all terms are sums over features)."""
    x = graph_x.reshape(graph_x.shape[0], -1).astype(np.float64)
    n, _, nfeat = z.shape
    b = np.broadcast_to(np.asarray(baseline, np.float64), graph_x.shape).reshape(n, -1)
    ids = np.broadcast_to(mask, graph_x.shape[1:]).reshape(-1)
    d = x - b

    def per_feat(v):  # (N, D) -> (N, F) sums over each feature's elements
        out = np.zeros((n, nfeat))
        for i in range(n):
            out[i] = np.bincount(ids, weights=v[i], minlength=nfeat)
        return out

    # x . x_p = x.b + sum_f z_f (x.d)_f ;  |x_p|^2 = b.b + sum_f z_f (2 b.d + d.d)_f
    xb = np.einsum("nd,nd->n", x, b)
    bb = np.einsum("nd,nd->n", b, b)
    xd_f = per_feat(x * d)
    q_f = per_feat(2 * b * d + d * d)
    zf = z.astype(np.float64)
    dot = xb[:, None] + np.einsum("nsf,nf->ns", zf, xd_f)
    pn2 = np.maximum(bb[:, None] + np.einsum("nsf,nf->ns", zf, q_f), 0.0)
    xn = np.sqrt(np.einsum("nd,nd->n", x, x))[:, None]
    cos = dot / (np.maximum(xn, COS_EPS) * np.maximum(np.sqrt(pn2), COS_EPS))
    dist = 1.0 - cos
    return np.exp(-(dist ** 2) / (2.0 * kernel_width ** 2))


def weighted_fit(z, y, w, ridge=0.0, name="surrogate"):
    """Weighted least squares ``y ~ a + z . phi`` per sample: z (N, S, F), y, w (N, S);
    returns phi (N, F). ``ridge`` (relative to the total weight) penalizes phi, not a."""
    n, s, nfeat = z.shape
    phi = np.empty((n, nfeat))
    for i in range(n):
        a = np.concatenate([np.ones((s, 1)), z[i].astype(np.float64)], axis=1)
        sw = np.sqrt(w[i])[:, None]
        aw, yw = a * sw, y[i] * sw[:, 0]
        if ridge > 0:
            lam = np.sqrt(ridge * w[i].sum())
            reg = np.zeros((nfeat, nfeat + 1))
            reg[:, 1:] = lam * np.eye(nfeat)
            aw = np.concatenate([aw, reg])
            yw = np.concatenate([yw, np.zeros(nfeat)])
        if not (np.all(np.isfinite(aw)) and np.all(np.isfinite(yw))):
            raise ValueError(f"method {name!r}: the surrogate's least-squares system is not finite: the coalition "
                             f"scores overflowed in the forward pass (rescale x or use float64)")
        coef = np.linalg.lstsq(aw, yw, rcond=None)[0]
        phi[i] = coef[1:]
    return phi


def _setup(ctx, x, target):
    return np.broadcast_to(np.asarray(resolve_target(ctx, x, target), dtype=np.int64).reshape(-1), (x.shape[0],))


def _coalitions(ctx, draw, n, nfeat, samples):
    """Each sample's coalitions (N, S, F) from its own generator (its global row index)."""
    return np.stack([draw(row_rng(ctx.seed, ctx.row0 + i, COALITION_STREAM), nfeat, samples) for i in range(n)])


def kernel_shap(ctx, x, target, feature_mask, samples, baseline, seed, patch=None):
    """KernelSHAP = Captum ``KernelShap.attribute(x, baselines=baseline, target=target,
    feature_mask=feature_mask, n_samples=samples)`` up to the random draws (see module doc)."""
    t = _setup(ctx, x, target)
    mask, nfeat = feature_mask
    z = _coalitions(ctx, shap_coalitions, x.shape[0], nfeat, samples)
    y = coalition_scores(ctx, x, t, mask, z, baseline)
    w = np.ones(z.shape[:2])
    full = z.all(axis=2) | ~z.any(axis=2)
    w[full] = INF_WEIGHT
    phi = weighted_fit(z, y, w, name="kernel_shap")
    return _expand(phi, mask, x)


def lime(ctx, x, target, feature_mask, samples, baseline, kernel_width, seed, patch=None):
    """LIME = Captum ``Lime(model).attribute(x, baselines=baseline, target=target,
    feature_mask=feature_mask, n_samples=samples)`` with
    ``similarity_func=get_exp_kernel_similarity_function('cosine', kernel_width)``, but a
    ridge-stabilized weighted least squares surrogate instead of Lasso (see module doc)."""
    t = _setup(ctx, x, target)
    mask, nfeat = feature_mask
    z = _coalitions(ctx, lime_coalitions, x.shape[0], nfeat, samples)
    y = coalition_scores(ctx, x, t, mask, z, baseline)
    w = lime_similarity(x, mask, z, baseline, kernel_width)
    phi = weighted_fit(z, y, w, ridge=LIME_RIDGE, name="lime")
    return _expand(phi, mask, x)


def _expand(phi, mask, x):
    m = np.broadcast_to(mask, x.shape[1:])
    return np.ascontiguousarray(phi[:, m].astype(x.dtype))


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def patch_mask(in_shape, patch):
    """Square ``patch`` x ``patch`` features over (H, W), shared by all channels: (1, H, W) ids."""
    _, h, w = in_shape
    nw = -(-w // patch)
    hh, ww = np.meshgrid(np.arange(h) // patch, np.arange(w) // patch, indexing="ij")
    return (hh * nw + ww)[None].astype(np.int64)


def _mask(name, x, params):
    in_shape = x.shape[1:]
    fm, patch = params.get("feature_mask"), params.get("patch")
    if fm is not None and patch is not None:
        raise TypeError(f"{name}: give either feature_mask= or patch=, not both")
    if patch is not None:
        if not _is_int(patch) or patch < 1:
            raise ValueError(f"{name}: patch must be an int >= 1 (the side of square patches), got {patch!r}")
        if len(in_shape) != 3:
            raise ValueError(f"{name}: patch= needs image samples (C, H, W), got samples of shape {in_shape}")
        fm = patch_mask(in_shape, int(patch))
    elif fm is None:
        if len(in_shape) != 1:
            raise TypeError(f"{name}: samples of shape {in_shape} need feature_mask= (integer feature ids "
                            f"broadcastable to {in_shape}) or patch= (square patch size for images); the default "
                            f"of one feature per element applies only to tabular x of shape (N, F)")
        fm = np.arange(in_shape[0])
    if not isinstance(fm, np.ndarray):
        raise TypeError(f"{name}: feature_mask must be an integer numpy array, got {type(fm).__name__}")
    if not np.issubdtype(fm.dtype, np.integer) or fm.dtype == np.bool_:
        raise TypeError(f"{name}: feature_mask must hold integer feature ids, got dtype {fm.dtype}")
    try:
        ok = fm.ndim <= len(in_shape) and np.broadcast_shapes(fm.shape, in_shape) == in_shape
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: feature_mask of shape {fm.shape} does not broadcast to one sample {in_shape}")
    if fm.size == 0:
        raise ValueError(f"{name}: feature_mask is empty")
    ids = np.unique(fm)
    if ids[0] != 0 or ids[-1] != len(ids) - 1:
        raise ValueError(f"{name}: feature_mask ids must be exactly 0 .. F-1 (each used), got ids "
                         f"{ids[:5].tolist()}{'...' if len(ids) > 5 else ''} (min {ids[0]}, max {ids[-1]}, "
                         f"{len(ids)} distinct)")
    return np.ascontiguousarray(fm.astype(np.int64)), len(ids)


def _baseline(name, b, x):
    return _check_baseline(b, x, f"{name}: baseline")


def _common(name, x, params):
    s = _number(params["samples"], f"{name}: samples", 2, integer=True)
    seed = params["seed"]
    if seed is not None and not (_is_int(seed) and seed >= 0):
        raise TypeError(f"{name}: seed must be None or a non-negative int, got {seed!r}")
    out = dict(params)
    if x is None:  # an Explainer being built: what does not depend on x
        _baseline(name, params["baseline"], None)
        return out
    out["feature_mask"] = _mask(name, x, params)
    out["patch"] = None
    out["samples"] = int(s)
    out["baseline"] = _baseline(name, params["baseline"], x)
    return out


def _validate_shap(graph, x, params):
    return _common("kernel_shap", x, params)


def _validate_lime(graph, x, params):
    out = _common("lime", x, params)
    kw = params["kernel_width"]
    if not isinstance(kw, numbers.Real) or isinstance(kw, (bool, np.bool_)):
        raise TypeError(f"lime: kernel_width must be a positive number, got {kw!r}")
    if not (np.isfinite(kw) and kw >= 1e-6):
        raise ValueError(f"lime: kernel_width must be finite and >= 1e-6 (the cosine distance is at most 2, so "
                         f"smaller widths give every perturbed sample a weight of 0), got {kw!r}")
    out["kernel_width"] = float(kw)
    return out


register(Method("kernel_shap", "KernelSHAP: Shapley-kernel weighted linear surrogate over feature coalitions "
                "(Captum KernelShap)", {"feature_mask": None, "samples": 256, "baseline": 0.0, "seed": None,
                                        "patch": None},
                validate=_validate_shap, run=kernel_shap, random=True, per_sample=("baseline",), family="surrogate"))
register(Method("lime", "LIME: cosine-kernel weighted linear surrogate over feature coalitions (Captum Lime, "
                "least squares instead of Lasso)", {"feature_mask": None, "samples": 256, "baseline": 0.0,
                                                    "kernel_width": 0.75, "seed": None, "patch": None},
                validate=_validate_lime, run=lime, random=True, per_sample=("baseline",), family="surrogate"))
