"""The noise wrapper (SmoothGrad, SmoothGrad^2, VarGrad) against Captum's NoiseTunnel with the
same noise, and its own properties (seeded reproducibility, batch = one batch of copies)."""
from __future__ import annotations

import warnings
from unittest import mock

import numpy as np
import pytest
import torch
from captum.attr import InputXGradient, NoiseTunnel, Saliency

from tolerance import assert_blas_close
from peer_models import assert_agree, make_net, relprop_target, resolved_targets, rp, to_torch

pytestmark = pytest.mark.peers

KINDS = {"mean": "smoothgrad", "squared": "smoothgrad_sq", "var": "vargrad"}
SAMPLES, SIGMA, SEED = 6, 0.15, 11


def relprop_noise(x, samples, sigma, seed, row_offset=0):
    """The noise relprop documents: N(0, (sigma * range_i)^2) for sample i, drawn from
    default_rng(SeedSequence(seed, spawn_key=(1, row_offset + i))), copies sample-major."""
    n = x.shape[0]
    scale = sigma * (x.reshape(n, -1).max(axis=1) - x.reshape(n, -1).min(axis=1))
    draws = np.stack([np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, row_offset + i)))
                      .standard_normal((samples,) + x.shape[1:]) for i in range(n)])
    noise = draws * scale.reshape((n, 1) + (1,) * (x.ndim - 1))
    return noise.astype(x.dtype).reshape((n * samples,) + x.shape[1:])


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("base,cls", [("gradient", Saliency), ("gradient_x_input", InputXGradient)])
@pytest.mark.parametrize("net_name,target_kind", [("vgg_relu", "array"), ("mlp", "none"), ("vgg_tanh", "int")])
def test_noise_tunnel(kind, base, cls, net_name, target_kind):
    net = make_net(net_name)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd), x, "smoothgrad", base=base, samples=SAMPLES, sigma=SIGMA,
                              kind=kind, seed=SEED, target=relprop_target(target_kind, net))
        model = net.torch(tdt)
        xt = to_torch(x, tdt, requires_grad=True)
        with torch.no_grad():
            t = torch.as_tensor(resolved_targets(target_kind, net, model(xt).numpy()))
        noise = torch.as_tensor(relprop_noise(x, SAMPLES, SIGMA, SEED), dtype=tdt)
        kwargs = {"abs": False} if cls is Saliency else {}
        with warnings.catch_warnings(), mock.patch("torch.normal", lambda mean, std: noise):
            warnings.simplefilter("ignore")
            r_c = NoiseTunnel(cls(model)).attribute(xt, nt_type=KINDS[kind], nt_samples=SAMPLES, stdevs=1.0,
                                                    target=t, **kwargs)
        return r_rp, r_c.detach().numpy()

    assert_agree(run, f"smoothgrad kind={kind} base={base} on {net_name}")


def test_seeded_and_batched_as_one_batch():
    net = make_net("vgg_relu")
    model = net.relprop(np.float64)
    x = net.inputs(dtype=np.float64)
    kw = dict(base="lrp.epsilon", epsilon=1e-3, samples=5, sigma=0.2, seed=3, target=0)
    a = rp().attribute(model, x, "smoothgrad", kind="var", **kw)
    np.testing.assert_array_equal(a, rp().attribute(model, x, "smoothgrad", kind="var", **kw))  # the same call
    # reference: the base method on the explicit noisy copies, reduced in numpy
    copies = np.repeat(x, 5, axis=0) + relprop_noise(x, 5, 0.2, 3)
    base = rp().attribute(model, copies, "lrp.epsilon", epsilon=1e-3, target=0).reshape((x.shape[0], 5) + x.shape[1:])
    np.testing.assert_allclose(a, base.var(axis=1), rtol=1e-10, atol=1e-14)
    m = rp().attribute(model, x, "smoothgrad", kind="mean", **kw)
    np.testing.assert_allclose(m, base.mean(axis=1), rtol=1e-10, atol=1e-14)
    # per-sample noise: a sample's result does not depend on its batch or the internal batch size (to
    # BLAS rounding: other batch sizes are other GEMM shapes)
    for bs in (1, 3):
        assert_blas_close(rp().attribute(model, x, "smoothgrad", kind="mean", batch_size=bs, **kw), m)
    assert_blas_close(rp().attribute(model, x[2:4], "smoothgrad", kind="mean", row_offset=2, **kw), m[2:4])


@pytest.mark.parametrize("bad,err,match", [
    ({"samples": 0}, ValueError, "samples"), ({"sigma": 0.0}, ValueError, "sigma"), ({"sigma": -1.0}, ValueError, "sigma"),
    ({"kind": "median"}, ValueError, "kind"), ({"base": "lrp.epsilonn"}, ValueError, "did you mean 'lrp.epsilon'"),
    ({"seed": 1.5}, TypeError, "seed"), ({"epsilom": 1e-3, "base": "lrp.epsilon"}, TypeError, "epsilom"),
])
def test_smoothgrad_errors(bad, err, match):
    net = make_net("mlp")
    with pytest.raises(err, match=match):
        rp().attribute(net.relprop(np.float64), net.inputs(dtype=np.float64), "smoothgrad", **bad)
