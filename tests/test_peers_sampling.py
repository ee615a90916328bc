"""Sampling methods over baseline distributions (relprop.sampling): "deepshap" against Captum
DeepLiftShap, "gradient_shap" against Captum GradientShap with identical draws, completeness
(exact for deepshap, in expectation for expected_gradients), seeded reproducibility,
independence of internal batching, and parameter errors.

Tolerance for the peers: per sample, max|R_relprop - R_peer| <= 1e-4 * max|R_peer| in float32,
re-run in float64 on failure (``peer_models.assert_agree``).
"""
from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pytest
import torch

import captum.attr._core.deep_lift as deep_lift_mod
from captum.attr import DeepLiftShap, GradientShap

from peer_models import assert_agree, make_net, relprop_target, resolved_targets, rp, to_torch
from tolerance import assert_blas_close
from test_peers_captum import _maxpool2d_accumulating

import relprop.methods.sampling  # noqa: F401  (registers the methods until relprop/__init__ imports it)
from relprop.methods.sampling import sample_draws

pytestmark = pytest.mark.peers

N_BASELINES = 4


def _baselines(net, dtype, n=N_BASELINES):
    return net.baseline(seed=7, n=n, dtype=dtype)


def _scores(net, a):
    with torch.no_grad():
        return net.torch(torch.float64)(to_torch(a, torch.float64)).numpy()


# --------------------------------------------------------------------------------------------
# DeepSHAP vs Captum DeepLiftShap
# --------------------------------------------------------------------------------------------
def _captum_deepliftshap(net, x, b, target_kind, tdt):
    # same workarounds as test_peers_captum: Clone between activation and MaxPool (hook order),
    # accumulating max-unpool for overlapping pools
    model = net.torch(tdt, captum_deeplift=True)
    xt = to_torch(x, tdt, requires_grad=True)
    with torch.no_grad():
        tgt = torch.as_tensor(resolved_targets(target_kind, net, model(xt).numpy()))
    patch = {torch.nn.MaxPool2d: _maxpool2d_accumulating} if net.has_overlapping_maxpool else {}
    with warnings.catch_warnings(), mock.patch.dict(deep_lift_mod.SUPPORTED_NON_LINEAR, patch):
        warnings.simplefilter("ignore")
        r = DeepLiftShap(model).attribute(xt, baselines=to_torch(b, tdt), target=tgt)
    return r.detach().numpy()


@pytest.mark.parametrize("net_name,target_kind", [("vgg_relu", "none"), ("vgg_tanh", "array"), ("mlp", "int")])
def test_deepshap_vs_captum(net_name, target_kind):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        b = _baselines(net, npd)
        r_rp = rp().attribute(net.relprop(npd), x, "deepshap", target=target, baselines=b)
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        return r_rp, _captum_deepliftshap(net, x, b, target_kind, tdt)

    assert_agree(run, f"deepshap on {net_name}")


@pytest.mark.parametrize("net_name", ["vgg_relu", "vgg_tanh", "mlp"])
def test_deepshap_completeness_exact(net_name):
    """sum R = mean_b (s_c(x) - s_c(b)) (DeepLIFT's summation-to-delta, averaged)."""
    net = make_net(net_name)
    x = net.inputs(dtype=np.float64)
    b = _baselines(net, np.float64, n=5)
    r = rp().attribute(net.relprop(np.float64), x, "deepshap", baselines=b)
    fx, fb = _scores(net, x), _scores(net, b)
    c = fx.argmax(axis=1)
    want = fx[np.arange(len(x)), c] - fb[:, c].mean(axis=0)
    np.testing.assert_allclose(r.reshape(len(x), -1).sum(1), want, rtol=1e-9, atol=1e-12)


def test_deepshap_is_mean_of_deeplift():
    """One baseline at a time through deeplift.rescale, averaged = deepshap (pairs in one batch)."""
    net = make_net("vgg_relu")
    model, x = net.relprop(np.float64), net.inputs(dtype=np.float64)
    b = _baselines(net, np.float64, n=3)
    t = net.targets()
    r = rp().attribute(model, x, "deepshap", baselines=b, target=t)
    ref = np.mean([rp().attribute(model, x, "deeplift.rescale", baseline=bb[None], target=t) for bb in b], axis=0)
    np.testing.assert_allclose(r, ref, rtol=1e-10, atol=1e-14)
    # a single baseline is plain DeepLIFT
    r1 = rp().attribute(model, x, "deepshap", baselines=b[:1], target=t)
    np.testing.assert_allclose(r1, rp().attribute(model, x, "deeplift.rescale", baseline=b[:1], target=t),
                               rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------------------------
# GradientSHAP vs Captum GradientShap (identical draws)
# --------------------------------------------------------------------------------------------
SAMPLES, STDEVS, SEED = 5, 0.3, 13


def _captum_gradientshap(net, x, b, target_kind, tdt, samples, stdevs, seed):
    """Captum GradientShap with relprop's draws patched into its random calls: baseline indices
    (np.random.choice), path positions (np.random.uniform) and input noise (torch.normal), all
    flattened sample-major as Captum lays out its n * samples rows."""
    n = x.shape[0]
    idx, alpha, noise = sample_draws(seed, n, samples, b.shape[0], x.shape[1:], stdevs)
    noise_t = (torch.zeros((n * samples,) + x.shape[1:], dtype=tdt) if noise is None
               else torch.as_tensor(noise.astype(x.dtype).reshape((n * samples,) + x.shape[1:]), dtype=tdt))
    model = net.torch(tdt)
    xt = to_torch(x, tdt, requires_grad=True)
    with torch.no_grad():
        tgt = torch.as_tensor(resolved_targets(target_kind, net, model(xt).numpy()))
    calls = []

    def choice(a, size):
        calls.append("choice")
        assert a == b.shape[0] and size == n * samples
        return idx.reshape(-1)

    def uniform(low, high, size):
        calls.append("uniform")
        assert (low, high, size) == (0.0, 1.0, n * samples)
        return alpha.reshape(-1)

    def normal(mean, std):
        calls.append("normal")
        assert tuple(std.shape) == tuple(noise_t.shape)
        return noise_t

    with warnings.catch_warnings(), mock.patch("numpy.random.choice", choice), \
            mock.patch("numpy.random.uniform", uniform), mock.patch("torch.normal", normal):
        warnings.simplefilter("ignore")
        r = GradientShap(model).attribute(xt, baselines=to_torch(b, tdt), n_samples=samples,
                                          stdevs=float(stdevs), target=tgt)
    assert sorted(calls) == ["choice", "normal", "uniform"], calls
    return r.detach().numpy()


@pytest.mark.parametrize("stdevs", [0.0, STDEVS])
@pytest.mark.parametrize("net_name,target_kind", [("vgg_relu", "array"), ("vgg_tanh", "none"), ("mlp", "int")])
def test_gradient_shap_vs_captum(net_name, target_kind, stdevs):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        b = _baselines(net, npd, n=6)
        r_rp = rp().attribute(net.relprop(npd), x, "gradient_shap", target=target, baselines=b,
                              samples=SAMPLES, stdevs=stdevs, seed=SEED)
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        return r_rp, _captum_gradientshap(net, x, b, target_kind, tdt, SAMPLES, stdevs, SEED)

    assert_agree(run, f"gradient_shap stdevs={stdevs} on {net_name}")


# --------------------------------------------------------------------------------------------
# Expected Gradients
# --------------------------------------------------------------------------------------------
def _eg_reference(net, x, b, samples, seed, target):
    """Explicit reference from the documented draws: per draw j, Z_j = grad(b_j + a_j (x - b_j)) * (x - b_j)."""
    n = x.shape[0]
    idx, alpha, _ = sample_draws(seed, n, samples, b.shape[0])
    bj = b[idx.reshape(-1)]
    xr = np.repeat(x, samples, axis=0)
    pts = bj + alpha.reshape((-1,) + (1,) * (x.ndim - 1)) * (xr - bj)
    g = rp().attribute(net.relprop(np.float64), pts, "gradient", target=np.repeat(target, samples))
    return (g * (xr - bj)).reshape((n, samples) + x.shape[1:])


def test_expected_gradients_matches_explicit_draws_and_gradient_shap():
    net = make_net("vgg_tanh")
    model, x = net.relprop(np.float64), net.inputs(dtype=np.float64)
    b = _baselines(net, np.float64, n=5)
    fx = _scores(net, x)
    r = rp().attribute(model, x, "expected_gradients", baselines=b, samples=7, seed=4)
    ref = _eg_reference(net, x, b, 7, 4, fx.argmax(1)).mean(axis=1)
    np.testing.assert_allclose(r, ref, rtol=1e-10, atol=1e-14)
    # gradient_shap with stdevs=0 draws the same (idx, alpha) stream: the same attribution
    g = rp().attribute(model, x, "gradient_shap", baselines=b, samples=7, seed=4, stdevs=0.0)
    np.testing.assert_array_equal(r, g)  # exact: stdevs=0 runs expected_gradients' code on the same points


def test_expected_gradients_completeness_in_expectation():
    """sum R is the mean of S i.i.d. draws Z_j = sum_i grad_i(b_j + a_j (x - b_j)) (x - b_j)_i with
    E[Z] = s_c(x) - mean_b s_c(b) (fundamental theorem of calculus along each path, uniform b).
    Tolerance: 5 standard errors (std(Z_j) / sqrt(S), estimated from the draws themselves);
    with a fixed seed the test is deterministic. The error also shrinks from S=20 to S=3000."""
    net = make_net("mlp")
    x = net.inputs(dtype=np.float64, n=4)
    b = _baselines(net, np.float64, n=16)
    fx, fb = _scores(net, x), _scores(net, b)
    c = fx.argmax(axis=1)
    want = fx[np.arange(len(x)), c] - fb[:, c].mean(axis=0)
    model = net.relprop(np.float64)
    big, small = 3000, 20
    r = rp().attribute(model, x, "expected_gradients", baselines=b, samples=big, seed=1)
    got = r.reshape(len(x), -1).sum(1)
    z = _eg_reference(net, x, b, big, 1, c).reshape(len(x), big, -1).sum(-1)
    np.testing.assert_allclose(got, z.mean(1), rtol=1e-9, atol=1e-12)
    se = z.std(axis=1, ddof=1) / np.sqrt(big)
    assert np.all(np.abs(got - want) <= 5 * se + 1e-12), (got, want, se)
    err_big = np.abs(got - want).mean()
    errs_small = [np.abs(rp().attribute(model, x, "expected_gradients", baselines=b, samples=small, seed=s)
                         .reshape(len(x), -1).sum(1) - want).mean() for s in range(5)]
    assert err_big < np.mean(errs_small), (err_big, errs_small)


# --------------------------------------------------------------------------------------------
# reproducibility, batching
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,kw", [("expected_gradients", {"samples": 6}),
                                       ("gradient_shap", {"samples": 4, "stdevs": 0.2})])
def test_seeded_reproducible(method, kw):
    net = make_net("vgg_relu")
    model, x = net.relprop(np.float32), net.inputs()
    b = _baselines(net, np.float32)
    a = rp().attribute(model, x, method, baselines=b, seed=5, **kw)
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, rp().attribute(model, x, method, baselines=b, seed=5, **kw))  # same call
    assert not np.array_equal(a, rp().attribute(model, x, method, baselines=b, seed=6, **kw))


@pytest.mark.parametrize("method,kw", [("expected_gradients", {"samples": 3, "seed": 2}),
                                       ("gradient_shap", {"samples": 3, "stdevs": 0.5, "seed": 2}),
                                       ("deepshap", {})])
def test_independent_of_internal_batching(method, kw, monkeypatch):
    """rp.attribute may split x into internal batches; every row keeps its own draws, and the
    method's own chunking of the evaluation points does not change the result."""
    import relprop.core.budget as budget
    from relprop.core.budget import Budget

    net = make_net("mlp")
    model, x = net.relprop(np.float64), net.inputs(dtype=np.float64, n=7)
    b = _baselines(net, np.float64, n=3)
    whole = rp().attribute(model, x, method, baselines=b, **kw)
    split = rp().attribute(model, x, method, baselines=b, batch_size=2, **kw)  # internal batches of 2 rows
    assert_blas_close(split, whole)  # other batch shapes: equal up to BLAS rounding
    monkeypatch.setattr(budget, "BUDGET", Budget(expand=1))  # one evaluation point per pass
    assert_blas_close(rp().attribute(model, x, method, baselines=b, **kw), whole)
    # draws follow the sample's global index: a row explained alone (with its row_offset) is the same
    assert_blas_close(rp().attribute(model, x[3:4], method, baselines=b, row_offset=3, **kw), whole[3:4])


def test_noise_draws_follow_documented_stream():
    """gradient_shap = mean over draws of grad(b + a (x~ - b)) * (x~ - b), x~ = x + stdevs * noise,
    with (idx, alpha, noise) = sample_draws(seed, ...)."""
    net = make_net("mlp")
    model, x = net.relprop(np.float64), net.inputs(dtype=np.float64)
    b = _baselines(net, np.float64, n=5)
    n, s, sd = x.shape[0], 6, 0.4
    r = rp().attribute(model, x, "gradient_shap", baselines=b, samples=s, stdevs=sd, seed=9, target=1)
    idx, alpha, noise = sample_draws(9, n, s, b.shape[0], x.shape[1:], sd)
    xn = (x[:, None] + noise).reshape((n * s,) + x.shape[1:])
    bj = b[idx.reshape(-1)]
    pts = bj + alpha.reshape(-1, 1) * (xn - bj)
    g = rp().attribute(model, pts, "gradient", target=1)
    np.testing.assert_allclose(r, (g * (xn - bj)).reshape((n, s) + x.shape[1:]).mean(1), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def _bad_cases():
    good = np.zeros((3, 20))
    return [
        ("deepshap", {}, TypeError, "needs baselines"),
        ("expected_gradients", {}, TypeError, "needs baselines"),
        ("deepshap", {"baselines": 0.0}, TypeError, "numpy array"),
        ("gradient_shap", {"baselines": [[0.0] * 20]}, TypeError, "numpy array"),
        ("deepshap", {"baselines": np.zeros((3, 20), np.int64)}, TypeError, "float array"),
        ("deepshap", {"baselines": np.zeros(20)}, ValueError, r"shape \(B,\)"),
        ("expected_gradients", {"baselines": np.zeros((3, 21))}, ValueError, r"shape \(B,\)"),
        ("gradient_shap", {"baselines": np.zeros((0, 20))}, ValueError, "empty"),
        ("deepshap", {"baselines": np.full((2, 20), np.nan)}, ValueError, "NaN or Inf"),
        ("expected_gradients", {"baselines": good, "samples": 0}, ValueError, "samples"),
        ("expected_gradients", {"baselines": good, "samples": 2.0}, TypeError, "samples"),
        ("gradient_shap", {"baselines": good, "samples": True}, TypeError, "samples"),
        ("gradient_shap", {"baselines": good, "stdevs": -0.1}, ValueError, "stdevs"),
        ("gradient_shap", {"baselines": good, "stdevs": float("inf")}, ValueError, "stdevs"),
        ("gradient_shap", {"baselines": good, "stdevs": "0.1"}, TypeError, "stdevs"),
        ("expected_gradients", {"baselines": good, "seed": 1.5}, TypeError, "seed"),
        ("gradient_shap", {"baselines": good, "seed": -1}, ValueError, "seed"),
        ("expected_gradients", {"baselines": good, "stdevs": 0.1}, TypeError, "stdevs"),  # not a parameter
        ("deepshap", {"baselines": good, "samples": 3}, TypeError, "samples"),
        ("deepshap", {"baseline": good}, TypeError, "did you mean 'baselines'"),
    ]


@pytest.mark.parametrize("method,params,err,match", _bad_cases())
def test_errors(method, params, err, match):
    net = make_net("mlp")
    with pytest.raises(err, match=match):
        rp().attribute(net.relprop(np.float64), net.inputs(dtype=np.float64), method, **params)
