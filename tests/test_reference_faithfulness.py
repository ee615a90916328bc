"""Reference checks of ``relprop.evaluate.faithfulness`` against plain-numpy loops written here
(one sample, one step at a time: the slow, obvious form of each definition) and closed forms on
a linear model.

The loops share nothing with the module but the model's forward pass (``rp.scores`` on one
sample), the documented random draws (``np.random.default_rng(seed)``) and scipy's Gaussian
filter for ``fill="blur"``. Models are float64 with random weights: a tiny CNN and an MLP.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

import relprop as rp
from relprop.evaluate import faithfulness as F

TOL = dict(rtol=1e-10, atol=1e-10)


def _cnn(seed=0):
    rng = np.random.default_rng(seed)
    return rp.Sequential(
        rp.Conv2d(rng.normal(size=(4, 3, 3, 3)) * 0.5, rng.normal(size=4) * 0.1, padding=1), rp.ReLU(),
        rp.MaxPool2d(2), rp.Flatten(), rp.Dense(rng.normal(size=(5, 64)) * 0.3, rng.normal(size=5) * 0.1))


def _mlp(seed=1):
    rng = np.random.default_rng(seed)
    return rp.Sequential(rp.Dense(rng.normal(size=(8, 6)), rng.normal(size=8) * 0.1), rp.ReLU(),
                         rp.Dense(rng.normal(size=(3, 8)), rng.normal(size=3) * 0.1))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    net = _cnn()
    x = rng.uniform(-1, 1, size=(3, 3, 8, 8))
    return net, x, rp.attribute(net, x, "gradient_x_input")


@pytest.fixture(scope="module")
def table():
    rng = np.random.default_rng(4)
    net = _mlp()
    x = rng.normal(size=(4, 6))
    return net, x, rp.attribute(net, x, "gradient_x_input")


# -- the plain loops ----------------------------------------------------------------------------
def _score(net, xi, c):
    return float(rp.scores(net, xi[None])[0, c])


def _argmax(net, x):
    return [int(np.argmax(rp.scores(net, x[i:i + 1])[0])) for i in range(len(x))]


def _patches(shape, p):
    """Per-sample list of patches, each a tuple of index slices over one sample (row-major)."""
    if len(shape) == 1:
        return [(slice(f, f + 1),) for f in range(shape[0])]
    _, h, w = shape
    return [(slice(None), slice(r, r + p), slice(c, c + p)) for r in range(0, h, p) for c in range(0, w, p)]


def _fill_image(fill, x, i, seed=0, sigma=1.0):
    xi = x[i]
    if isinstance(fill, str):
        if fill == "mean":
            return np.stack([np.full(xi.shape[1:], xi[c].mean()) for c in range(xi.shape[0])]) if xi.ndim == 3 \
                else np.full(xi.shape, xi.mean())
        if fill == "blur":
            return np.stack([gaussian_filter(xi[c], sigma, mode="reflect") for c in range(xi.shape[0])])
        if fill == "uniform":
            u = np.random.default_rng(seed).random(x.shape)[i]
            return xi.min() + (xi.max() - xi.min()) * u
        if fill == "black":
            return np.full(xi.shape, xi.min())
        if fill == "white":
            return np.full(xi.shape, xi.max())
    return np.broadcast_to(np.asarray(fill, np.float64), xi.shape)


def _loop_curves(net, x, a, counts_of, p, order, fill, targets, seed=0, sigma=1.0):
    out = []
    for i in range(len(x)):
        patches = _patches(x.shape[1:], p)
        sums = [float(a[i][sl].sum()) if a.shape == x.shape else float(a[i, 0][sl[1:]].sum()) for sl in patches]
        sign = -1 if order == "morf" else 1
        ranked = sorted(range(len(patches)), key=lambda q: (sign * sums[q], q))
        base = _fill_image(fill, x, i, seed, sigma)
        row = []
        for m in counts_of(len(patches)):
            xi = x[i].copy()
            for q in ranked[:m]:
                xi[patches[q]] = base[patches[q]]
            row.append(_score(net, xi, targets[i]))
        out.append(row)
    return np.array(out)


def _pf_counts(steps):
    """m_k = round(k * P / steps): the API contract's Python round (halves to even) of the exact value."""
    def counts(P):
        out = []
        for k in range(steps + 1):
            q = Fraction(k * P, steps)
            lo = math.floor(q)
            out.append(lo + (1 if q - lo > Fraction(1, 2) or (q - lo == Fraction(1, 2) and lo % 2 == 1) else 0))
        return out
    return counts


def test_pixel_flipping_rounds_a_half_to_even(images):
    """P = 16 patches (patch 2 on 8x8), steps = 32: k = 1 asks for 0.5 patches (0), k = 3 for 1.5 (2)."""
    net, x, a = images
    got = F.pixel_flipping(net, x, a, patch=2, steps=32)
    want = _loop_curves(net, x, a, _pf_counts(32), 2, "morf", 0.0, _argmax(net, x))
    np.testing.assert_allclose(got, want, **TOL)
    assert _pf_counts(32)(16)[1] == 0 and _pf_counts(32)(16)[3] == 2 and _pf_counts(32)(16)[5] == 2


# -- pixel flipping ---------------------------------------------------------------------------------
@pytest.mark.parametrize("patch,steps,order,fill", [
    (1, 7, "morf", 0.0), (2, 5, "lerf", "mean"), (2, 16, "morf", "uniform"), (4, 3, "morf", "blur"),
    (2, 6, "lerf", "black"), (1, 10, "morf", "white"),
])
def test_reference_pixel_flipping_images(images, patch, steps, order, fill):
    net, x, a = images
    got = F.pixel_flipping(net, x, a, patch=patch, steps=steps, order=order, fill=fill, seed=5, blur_sigma=0.8)
    want = _loop_curves(net, x, a, _pf_counts(steps), patch, order, fill, _argmax(net, x), seed=5, sigma=0.8)
    assert got.dtype == np.float64 and got.shape == (len(x), steps + 1)
    np.testing.assert_allclose(got, want, **TOL)


def test_reference_pixel_flipping_baseline_image_and_targets(images):
    net, x, a = images
    base = np.random.default_rng(9).normal(size=(3, 8, 8))
    t = np.array([4, 0, 2])
    got = F.pixel_flipping(net, x, a, t, patch=2, steps=4, fill=base)
    want = _loop_curves(net, x, a, _pf_counts(4), 2, "morf", base, t)
    np.testing.assert_allclose(got, want, **TOL)
    got = F.pixel_flipping(net, x, a, 1, patch=2, steps=4, fill=np.array([0.1, -0.2, 0.3]).reshape(3, 1, 1))
    want = _loop_curves(net, x, a, _pf_counts(4), 2, "morf", np.array([0.1, -0.2, 0.3]).reshape(3, 1, 1), [1] * 3)
    np.testing.assert_allclose(got, want, **TOL)


def test_reference_pixel_flipping_channel_summed_heatmap(images):
    net, x, a = images
    heat = a.sum(axis=1, keepdims=True)  # (N, 1, H, W) ranks like the full attributions
    np.testing.assert_allclose(F.pixel_flipping(net, x, heat, patch=2, steps=8),
                               F.pixel_flipping(net, x, a, patch=2, steps=8), **TOL)


def test_reference_pixel_flipping_ties_keep_index_order(images):
    net, x, _ = images
    a = np.zeros_like(x)
    a[:, :, :4, :] = 1.0  # the top half ties, the bottom half ties: index order decides inside each
    for order in ("morf", "lerf"):
        got = F.pixel_flipping(net, x, a, patch=2, steps=16, order=order)
        want = _loop_curves(net, x, a, _pf_counts(16), 2, order, 0.0, _argmax(net, x))
        np.testing.assert_allclose(got, want, **TOL)


def test_reference_pixel_flipping_tabular(table):
    net, x, a = table
    got = F.pixel_flipping(net, x, a, steps=6, order="lerf", fill="mean")
    want = _loop_curves(net, x, a, _pf_counts(6), 1, "lerf", "mean", _argmax(net, x))
    np.testing.assert_allclose(got, want, **TOL)


def test_reference_pixel_flipping_chunks_do_not_change_results(images):
    net, x, a = images
    whole = F.pixel_flipping(net, x, a, patch=2, steps=9, fill="uniform", seed=2)
    np.testing.assert_allclose(F.pixel_flipping(net, x, a, patch=2, steps=9, fill="uniform", seed=2, max_rows=4),
                               whole, **TOL)


def test_reference_perturbed_inputs_run_as_large_batches(images, monkeypatch):
    """All N * (steps + 1) perturbed inputs go through the forward pass together."""
    net, x, a = images
    calls = []
    real = F.scores

    def counting(net_, xb, *args, **kw):
        calls.append(len(xb))
        return real(net_, xb, *args, **kw)

    monkeypatch.setattr(F, "scores", counting)
    F.pixel_flipping(net, x, a, target=0, patch=1, steps=32)
    assert calls == [len(x) * 33]
    calls.clear()
    F.sensitivity_n(net, x, a, target=0, n=5, subsets=20)
    assert sorted(calls) == [len(x), len(x) * 20]
    calls.clear()
    F.pixel_flipping(net, x, a, target=0, steps=10, max_rows=8)
    assert max(calls) <= 8 and sum(calls) == len(x) * 11 and len(calls) == math.ceil(len(x) * 11 / 8)


# -- region perturbation, AOPC -------------------------------------------------------------------------
@pytest.mark.parametrize("patch,regions,order,fill", [
    (2, 16, "morf", "uniform"), (4, 4, "lerf", 0.0), (2, 9, "morf", "blur"), (1, 5, "lerf", "black"),
])
def test_reference_region_perturbation(images, patch, regions, order, fill):
    net, x, a = images
    got = F.region_perturbation(net, x, a, patch=patch, regions=regions, order=order, fill=fill, seed=11)
    want = _loop_curves(net, x, a, lambda P: range(regions + 1), patch, order, fill, _argmax(net, x), seed=11)
    assert got.shape == (len(x), regions + 1)
    np.testing.assert_allclose(got, want, **TOL)


def test_reference_aopc_is_eq12_mean_over_l_plus_1():
    curves = np.random.default_rng(0).normal(size=(5, 8))
    want = []
    for c in curves:
        L = len(c) - 1
        want.append(sum(c[0] - c[k] for k in range(L + 1)) / (L + 1))
    np.testing.assert_allclose(F.aopc(curves), want, **TOL)
    assert F.aopc(curves).dtype == np.float64


def test_reference_aopc_of_region_curves(images):
    net, x, a = images
    c = F.region_perturbation(net, x, a, patch=2, regions=8, fill=0.0)
    np.testing.assert_allclose(F.aopc(c), (c[:, :1] - c).sum(axis=1) / 9, **TOL)


# -- sensitivity-n ----------------------------------------------------------------------------------------
def _loop_sensitivity(net, x, a, n, subsets, fill, seed, features, targets):
    pix = features == "pixels" and x.ndim == 4
    nf = x.shape[2] * x.shape[3] if pix else x[0].size
    keys = np.random.default_rng([seed, 1]).random((len(x), subsets, nf))
    out = []
    for i in range(len(x)):
        base = _fill_image(fill, x, i, seed)
        s0 = _score(net, x[i], targets[i])
        att, drop = [], []
        for j in range(subsets):
            subset = np.argsort(keys[i, j])[:n]
            xi, total = x[i].copy(), 0.0
            for f in subset:
                if pix:
                    r, c = divmod(int(f), x.shape[3])
                    xi[:, r, c] = base[:, r, c]
                    total += a[i][:, r, c].sum()
                else:
                    ix = np.unravel_index(int(f), x.shape[1:])
                    xi[ix] = base[ix]
                    total += a[i][ix]
            att.append(total)
            drop.append(s0 - _score(net, xi, targets[i]))
        out.append(np.corrcoef(att, drop)[0, 1])
    return np.array(out)


@pytest.mark.parametrize("n,features,fill,max_rows", [
    (5, "pixels", 0.0, None), (12, "elements", "mean", 7), (1, "pixels", "uniform", 13),
])
def test_reference_sensitivity_n_images(images, n, features, fill, max_rows):
    net, x, a = images
    got = F.sensitivity_n(net, x, a, n=n, subsets=25, fill=fill, features=features, seed=3, max_rows=max_rows)
    want = _loop_sensitivity(net, x, a, n, 25, fill, 3, features, _argmax(net, x))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_reference_sensitivity_n_tabular(table):
    net, x, a = table
    got = F.sensitivity_n(net, x, a, target=2, n=3, subsets=30, seed=8)
    want = _loop_sensitivity(net, x, a, 3, 30, 0.0, 8, "pixels", [2] * len(x))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


def test_reference_sensitivity_n_is_nan_when_every_subset_is_everything(table):
    net, x, a = table
    assert np.all(np.isnan(F.sensitivity_n(net, x, a, n=6, subsets=4)))


# -- closed forms on a linear model s(x) = W x + b -----------------------------------------------------
@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(21)
    W, b = rng.normal(size=(4, 2 * 4 * 4)), rng.normal(size=4)
    net = rp.Sequential(rp.Flatten(), rp.Dense(W, b))
    x = rng.normal(size=(5, 2, 4, 4))
    t = np.array([0, 1, 2, 3, 1])
    R = W[t].reshape(x.shape) * x  # gradient x input, exactly
    return net, x, t, R


def test_reference_linear_sensitivity_n_is_one(linear):
    net, x, t, R = linear
    for features in ("pixels", "elements"):
        np.testing.assert_allclose(F.sensitivity_n(net, x, R, t, n=4, subsets=20, features=features), 1.0,
                                   rtol=0, atol=1e-12)


def test_reference_linear_completeness_is_zero(linear):
    net, x, t, R = linear
    np.testing.assert_allclose(F.completeness(net, x, R, t), 0.0, atol=1e-12)
    s = rp.scores(net, x)[np.arange(len(x)), t]
    # LRP's conservation: sum R - s(x) = -b_c here
    np.testing.assert_allclose(F.completeness(net, x, R, t, baseline=None), -net.nodes[1].layer.bias[t], atol=1e-12)
    # a baseline image: sum R - (s(x) - s(x0)) = W x0 (as R does not account for it)
    x0 = np.full(x.shape[1:], 0.25)
    s0 = rp.scores(net, np.broadcast_to(x0, x.shape).copy())[np.arange(len(x)), t]
    want = R.reshape(len(x), -1).sum(1) - (s - s0)
    np.testing.assert_allclose(F.completeness(net, x, R, t, baseline=x0), want, atol=1e-12)


def test_reference_linear_pixel_flipping_drops_by_removed_relevance(linear):
    net, x, t, R = linear
    curves = F.pixel_flipping(net, x, R, t, patch=2, steps=4, fill=0.0)
    sums = R.reshape(5, 2, 2, 2, 2, 2).sum(axis=(1, 3, 5)).reshape(5, 4)
    removed = np.concatenate([np.zeros((5, 1)), np.cumsum(-np.sort(-sums, axis=1), axis=1)], axis=1)
    np.testing.assert_allclose(curves[:, :1] - curves, removed, atol=1e-12)


# -- input invariance --------------------------------------------------------------------------------------
def test_reference_input_invariance_gradient_and_gradient_x_input(images):
    net, x, _ = images
    before = [(n.layer, n.layer.weight.copy() if n.layer.linear else None, n.layer.bias.copy() if n.layer.linear
               else None) for n in net.nodes]
    # padding=1 convolution: a constant shift does not reach the padded borders -> refused;
    # an unpadded one absorbs it
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    net0 = rp.Sequential(rp.Conv2d(w, b), rp.ReLU(), rp.Flatten(), rp.Dense(rng.normal(size=(3, 144)), np.zeros(3)))
    g = F.input_invariance(net0, x, "gradient", shift=-1.0)
    assert g.dtype == np.float64 and g.shape == (len(x),)
    np.testing.assert_allclose(g, 0.0, atol=1e-10)
    gx = F.input_invariance(net0, x, "gradient_x_input", shift=-1.0)
    assert np.all(gx > 1e-2)
    # the independent value: a hand-built shifted model and the formula
    t = _argmax(net0, x)
    net_s = rp.Sequential(rp.Conv2d(w, b - w.sum(axis=(1, 2, 3)) * -1.0), rp.ReLU(), rp.Flatten(), net0.nodes[3].layer)
    r1 = rp.attribute(net0, x, "gradient_x_input", target=np.array(t))
    r2 = rp.attribute(net_s, x - 1.0, "gradient_x_input", target=np.array(t))
    want = np.abs(r1 - r2).reshape(3, -1).max(1) / np.abs(r1).reshape(3, -1).max(1)
    np.testing.assert_allclose(gx, want, rtol=1e-9)
    for (layer, wt, bs), n in zip(before, net.nodes):  # the caller's models are unchanged
        assert n.layer is layer
        if wt is not None:
            np.testing.assert_array_equal(n.layer.weight, wt)
            np.testing.assert_array_equal(n.layer.bias, bs)


def test_reference_shifted_model_computes_the_same_function(table):
    net, x, _ = table
    shift = np.linspace(-1, 1, 6)
    net2 = F.shifted_model(net, shift, x.shape[1:])
    np.testing.assert_allclose(rp.scores(net2, x + shift), rp.scores(net, x), rtol=1e-12, atol=1e-12)
    assert net2 is not net and net2.nodes[0].layer is not net.nodes[0].layer
    assert net2.nodes[2].layer is net.nodes[2].layer
    np.testing.assert_allclose(F.input_invariance(net, x, "gradient", shift=shift), 0.0, atol=1e-12)
    ig = F.input_invariance(net, x, "integrated_gradients", shift=shift, steps=8)
    assert np.all(ig > 1e-3)  # a fixed zero baseline does not follow the shift (Kindermans et al.)


# -- continuity ----------------------------------------------------------------------------------------------
def _loop_continuity(net, x, pts, method, pairs, p, targets):
    out = []
    for i in range(len(x)):
        path = [x[i]] + [pts[i, k] for k in range(pts.shape[1])]
        R = [rp.attribute(net, q[None], method, target=targets[i])[0] for q in path]
        T = len(path)
        if pairs == "consecutive":
            pp = [(k, k + 1) for k in range(T - 1)]
        elif pairs == "first":
            pp = [(0, k) for k in range(1, T)]
        else:
            pp = [(u, v) for u in range(T) for v in range(u + 1, T)]
        vals = [np.abs(R[u] - R[v]).sum() / np.linalg.norm((path[u] - path[v]).ravel(), ord=p)
                for u, v in pp if np.any(path[u] != path[v])]
        out.append(max(vals))
    return np.array(out)


@pytest.mark.parametrize("pairs,p", [("consecutive", 2), ("first", 2), ("all", 1)])
def test_reference_continuity_array_path(images, pairs, p):
    net, x, _ = images
    pts = x[:, None] + 0.05 * np.random.default_rng(2).normal(size=(3, 4) + x.shape[1:])
    pts[:, 2] = pts[:, 1]  # a repeated point: the pair is skipped
    got = F.continuity(net, x, "gradient_x_input", path=pts, pairs=pairs, input_norm=p)
    want = _loop_continuity(net, x, pts, "gradient_x_input", pairs, p, _argmax(net, x))
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_reference_continuity_translation_path(images):
    net, x, _ = images
    pts = np.zeros((3, 3) + x.shape[1:])
    for k in range(1, 4):
        pts[:, k - 1, ..., k:] = x[..., :-k]
    want = _loop_continuity(net, x, pts, "gradient", "consecutive", 2, [1, 1, 1])
    np.testing.assert_allclose(F.continuity(net, x, "gradient", path=3, target=1), want, rtol=1e-10)
    np.testing.assert_allclose(F.continuity(net, x, "gradient", path=lambda z: pts, target=1), want, rtol=1e-10)
