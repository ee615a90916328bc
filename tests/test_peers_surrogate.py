"""relprop's "kernel_shap" and "lime" (``relprop.surrogate``): exactness properties that need
no peer, statistical agreement with Captum 0.9.0 ``KernelShap`` / ``Lime``, and parameter errors.

Peer agreement is statistical (the coalitions are random on both sides, drawn by different
generators): on the "mlp" net with 20 inputs grouped into 8 features, 2000 samples, both
relprop's and Captum's KernelSHAP lie within ``SHAP_TOL = 8%`` of max|phi| of the EXACT Shapley
values (enumerated over all 2^8 coalitions here; both observed at ~3-5%), and relprop vs Captum
correlate > 0.99 per sample.  LIME is compared with Captum ``Lime`` using a least-squares
interpretable model (``SkLearnLinearRegression``; relprop does not use Captum's default Lasso,
see the module doc): correlation > 0.98.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression
from captum.attr import KernelShap, Lime
from captum.attr._core.lime import get_exp_kernel_similarity_function
from peer_models import make_net, rp
from tolerance import assert_blas_close

import relprop.methods.surrogate as sur  # importing registers "kernel_shap" and "lime"
from relprop.core.plan import compiled
from relprop.methods.base import Context

pytestmark = pytest.mark.peers

SHAP_TOL = 0.08


def _linear(seed=0, f=12, k=4):
    rng = np.random.default_rng(seed)
    w, b = rng.standard_normal((k, f)), rng.standard_normal(k)
    x, x0 = rng.standard_normal((3, f)), rng.standard_normal((3, f))
    return rp().Sequential(rp().Dense(w, b)), w, x, x0, np.array([0, 2, 3])


def _group_sum(v, mask, nfeat):
    """Per sample: each element gets the sum of v over its feature's elements."""
    return np.stack([np.bincount(mask, weights=r, minlength=nfeat)[mask] for r in v])


# ---------------------------------------------------------------------------------------------
# Exactness without a peer
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
@pytest.mark.parametrize("grouped", [False, True])
def test_linear_model_is_recovered_exactly(method, grouped):
    """A linear model is linear in the coalition z: the fit is exact and phi_f is the Shapley
    value sum_{j in f} w_j (x_j - b_j) (LIME: up to its tiny ridge)."""
    net, w, x, x0, t = _linear()
    mask = np.arange(12) % 5 if grouped else None
    r = rp().attribute(net, x, method, target=t, baseline=x0, samples=300, seed=3, feature_mask=mask)
    expect = w[t] * (x - x0)
    if grouped:
        expect = _group_sum(expect, mask, 5)
    tol = 1e-9 if method == "kernel_shap" else 1e-5
    np.testing.assert_allclose(r, expect, rtol=0, atol=tol * np.abs(expect).max())


def test_lime_binary_features_scalar_baseline():
    """LIME's coefficients on binary features: w_i (x_i - b) for a scalar baseline too."""
    net, w, x, _, t = _linear(seed=1)
    r = rp().attribute(net, x, "lime", target=t, baseline=0.25, samples=400, seed=0, kernel_width=2.0)
    np.testing.assert_allclose(r, w[t] * (x - 0.25), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_shap_efficiency(dtype):
    """sum phi = s_c(x) - s_c(baseline): Captum's 1e6 weight on the all-ones / all-zeros
    coalitions pins the intercept and the full sum only up to ~ samples * residual / 1e6 (Captum's
    own semantics, not an exact constraint; observed ~2e-5 relative here, exact for linear models):
    tolerance samples / INF_WEIGHT * max|delta|."""
    net_ = make_net("mlp")
    net, x, x0, t = net_.relprop(dtype), net_.inputs(dtype=dtype), net_.baseline(dtype=dtype), net_.targets()
    r = rp().attribute(net, x, "kernel_shap", target=t, baseline=x0, samples=400, seed=0)
    assert r.dtype == dtype and r.shape == x.shape
    rows = np.arange(3)
    delta = rp().forward(net, x)[rows, t].astype(np.float64) - rp().forward(net, x0)[rows, t]
    np.testing.assert_allclose(r.astype(np.float64).sum(axis=1), delta, rtol=0,
                               atol=400 / sur.INF_WEIGHT * np.abs(delta).max())


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_seed_reproducible(method):
    net_ = make_net("vgg_relu")
    net, x = net_.relprop(), net_.inputs()
    a = rp().attribute(net, x, method, patch=4, samples=64, seed=7)
    b = rp().attribute(net, x, method, patch=4, samples=64, seed=7)
    c = rp().attribute(net, x, method, patch=4, samples=64, seed=8)
    np.testing.assert_array_equal(a, b)  # the same call twice: same shapes, same code path
    assert not np.array_equal(a, c)
    # patch features: constant over each 4x4 patch and all channels
    blocks = a.reshape(3, 3, 4, 4, 4, 4)
    assert np.all(blocks == blocks[:, :1, :, :1, :, :1])


def test_target_none_is_argmax():
    net_ = make_net("mlp")
    net, x = net_.relprop(), net_.inputs()
    t = rp().forward(net, x).argmax(axis=1)
    # exact: target=None only picks the column; the computation is the same
    np.testing.assert_array_equal(rp().attribute(net, x, "kernel_shap", samples=50, seed=1),
                                  rp().attribute(net, x, "kernel_shap", target=t, samples=50, seed=1))


def test_chunking_does_not_change_scores():
    net_ = make_net("strided")
    net, x = net_.relprop(np.float64), net_.inputs(dtype=np.float64)
    shapes = net.infer_shapes(x.shape[1:])
    mask = sur.patch_mask(x.shape[1:], 5)
    nfeat = int(mask.max()) + 1
    z = np.random.default_rng(0).random((3, 10, nfeat)) < 0.5
    one, huge = (Context(compiled(net, x.dtype), shapes, expand_rows=r) for r in (1, 2**40))
    args = (x, net_.targets(), mask, z, 0.1)
    assert_blas_close(sur.coalition_scores(one, *args), sur.coalition_scores(huge, *args))


def test_shap_coalition_sizes_follow_the_shapley_kernel():
    """Sizes k = 1..F-1 drawn with p(k) ~ (F-1)/(k(F-k)); first two rows all-ones / all-zeros."""
    f, s = 6, 60000
    z = sur.shap_coalitions(np.random.default_rng(0), f, s)
    assert z[0].all() and not z[1].any()
    k = np.arange(1, f)
    p = 1 / (k * (f - k))
    freq = np.bincount(z[2:].sum(axis=1), minlength=f + 1)[1:f] / (s - 2)
    np.testing.assert_allclose(freq, p / p.sum(), atol=0.01)


# ---------------------------------------------------------------------------------------------
# Statistical agreement with Captum
# ---------------------------------------------------------------------------------------------
MASK8 = np.arange(20) % 8


def _exact_shapley(net, x, x0, t, mask, nfeat):
    zs = np.array(list(itertools.product([False, True], repeat=nfeat)))
    code = zs @ (1 << np.arange(nfeat))
    out = []
    for i in range(x.shape[0]):
        v = np.empty(len(zs))
        v[code] = rp().forward(net, np.where(zs[:, mask], x[i], x0[i]))[:, t[i]]
        phi = np.zeros(nfeat)
        for c in range(len(zs)):
            s = c.bit_count()
            if s == nfeat:
                continue
            wgt = math.factorial(s) * math.factorial(nfeat - s - 1) / math.factorial(nfeat)
            for f in range(nfeat):
                if not c >> f & 1:
                    phi[f] += wgt * (v[c | 1 << f] - v[c])
        out.append(phi[mask])
    return np.stack(out)


@pytest.fixture(scope="module")
def mlp64():
    n = make_net("mlp")
    return n, n.relprop(np.float64), n.inputs(dtype=np.float64), n.baseline(dtype=np.float64), n.targets()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_kernel_shap_agrees_with_captum_and_exact_shapley(mlp64):
    n, net, x, x0, t = mlp64
    exact = _exact_shapley(net, x, x0, t, MASK8, 8)
    torch.manual_seed(0)
    rc = KernelShap(n.torch(torch.float64)).attribute(
        torch.from_numpy(x), baselines=torch.from_numpy(x0), target=torch.from_numpy(t),
        feature_mask=torch.from_numpy(MASK8)[None], n_samples=2000, perturbations_per_eval=500).numpy()
    rr = rp().attribute(net, x, "kernel_shap", target=t, baseline=x0, samples=2000, seed=0, feature_mask=MASK8)
    for i in range(3):
        scale = np.abs(exact[i]).max()
        assert np.abs(rr[i] - exact[i]).max() <= SHAP_TOL * scale, ("relprop vs exact", i)
        assert np.abs(rc[i] - exact[i]).max() <= SHAP_TOL * scale, ("captum vs exact", i)
        assert np.corrcoef(rr[i], rc[i])[0, 1] > 0.99


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lime_agrees_with_captum_least_squares_lime(mlp64):
    n, net, x, x0, t = mlp64
    torch.manual_seed(0)
    lime = Lime(n.torch(torch.float64), interpretable_model=SkLearnLinearRegression(),
                similarity_func=get_exp_kernel_similarity_function("cosine", 0.75))
    rc = lime.attribute(torch.from_numpy(x), baselines=torch.from_numpy(x0), target=torch.from_numpy(t),
                        feature_mask=torch.from_numpy(MASK8)[None], n_samples=2000,
                        perturbations_per_eval=500).numpy()
    rr = rp().attribute(net, x, "lime", target=t, baseline=x0, samples=2000, seed=0, feature_mask=MASK8)
    for i in range(3):
        assert np.corrcoef(rr[i], rc[i])[0, 1] > 0.98
        assert np.abs(rr[i] - rc[i]).max() <= 0.15 * np.abs(rc[i]).max()


def test_lime_similarity_matches_captum_kernel():
    """relprop's closed-form cosine kernel equals Captum's on explicit perturbed inputs."""
    rng = np.random.default_rng(0)
    x, b = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    mask = sur.patch_mask((3, 4, 4), 2)
    z = rng.random((2, 5, 4)) < 0.5
    z[0, 0] = False  # a perturbed input equal to the baseline
    ours = sur.lime_similarity(x, mask, z, b, 0.75)
    fn = get_exp_kernel_similarity_function("cosine", 0.75)
    for i in range(2):
        for j in range(5):
            xp = np.where(z[i, j][np.broadcast_to(mask, (3, 4, 4))], x[i], b[i])
            ref = fn(torch.from_numpy(x[i]).double(), torch.from_numpy(xp).double(), None)
            assert ours[i, j] == pytest.approx(ref, rel=1e-5, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------
BAD = [
    ({"samples": 1}, ValueError, "samples"),
    ({"samples": 2.5}, TypeError, "samples"),
    ({"feature_mask": np.arange(7)}, ValueError, "feature_mask"),
    ({"feature_mask": np.arange(20) + 1}, ValueError, "feature_mask"),
    ({"feature_mask": np.arange(20) * 2}, ValueError, "feature_mask"),
    ({"feature_mask": np.arange(20) - 1}, ValueError, "feature_mask"),
    ({"feature_mask": np.zeros(20)}, TypeError, "feature_mask"),
    ({"feature_mask": [0] * 20}, TypeError, "feature_mask"),
    ({"baseline": np.zeros(7)}, ValueError, "baseline"),
    ({"baseline": float("nan")}, ValueError, "baseline"),
    ({"baseline": "zero"}, TypeError, "baseline"),
    ({"patch": 2}, ValueError, "patch"),
    ({"seed": -1}, TypeError, "seed"),
]


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
@pytest.mark.parametrize("kw,exc,word", BAD)
def test_bad_params(method, kw, exc, word):
    n = make_net("mlp")
    with pytest.raises(exc, match=word):
        rp().attribute(n.relprop(), n.inputs(), method, **kw)


@pytest.mark.parametrize("kw", [0, -0.5, float("inf")])
def test_bad_kernel_width(kw):
    n = make_net("mlp")
    with pytest.raises(ValueError, match="kernel_width"):
        rp().attribute(n.relprop(), n.inputs(), "lime", kernel_width=kw)
    with pytest.raises(TypeError, match="kernel_width"):
        rp().attribute(n.relprop(), n.inputs(), "lime", kernel_width="wide")


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_images_need_a_mask_or_patch(method):
    n = make_net("vgg_relu")
    with pytest.raises(TypeError, match="feature_mask"):
        rp().attribute(n.relprop(), n.inputs(), method)
    with pytest.raises(TypeError, match="patch"):
        rp().attribute(n.relprop(), n.inputs(), method, patch=4, feature_mask=np.zeros((1, 16, 16), np.int64))
    with pytest.raises(ValueError, match="patch"):
        rp().attribute(n.relprop(), n.inputs(), method, patch=0)
    with pytest.raises(ValueError, match="feature_mask"):
        rp().attribute(n.relprop(), n.inputs(), method, feature_mask=np.zeros((2, 16, 16), np.int64))
    # a channel mask (3, 1, 1) broadcasts over the sample: 3 features
    r = rp().attribute(n.relprop(), n.inputs(), method, feature_mask=np.arange(3).reshape(3, 1, 1), samples=16, seed=0)
    assert np.all(r == r[:, :, :1, :1])
