"""Model-parameter randomization against Quantus 0.6's ``quantus.MPRT`` (Adebayo et al. 2018).

How Quantus 0.6 randomizes (``quantus/helpers/model/pytorch_model.py``,
``PyTorchModel.get_random_layer_generator``): it deep-copies the model, lists the modules that
have ``reset_parameters`` (Conv2d, Linear here) in ``named_modules()`` order, reversed for
``layer_order="top_down"``, and for each one calls ``torch.manual_seed(seed + 1)`` and
``module.reset_parameters()`` on the copy, yielding the same (mutated) copy at every step.
``"top_down"`` is cascading (earlier resets stay); ``"independent"`` reloads the original
``state_dict`` before each reset, and iterates bottom-up (graph order). Since the seed is reset
before every layer, a layer's draw depends only on (seed, its shape), the same in both orders.

relprop draws its own weights (``layer_rng``); to compare numbers, the test records the torch
weights Quantus's generator produces and hands relprop an ``init=`` callable that returns those
weights for each layer. relprop's cascading step keeps earlier draws, as Quantus's copy keeps
earlier resets; the test checks that a layer's recorded weights are the same at every step, so a
per-layer callable reproduces every one of Quantus's models.

How Quantus 0.6 compares (``quantus/metrics/randomisation/mprt.py``, ``Metric.explain_batch``):
every explanation -- ``a_batch`` (given or generated) and each randomized model's -- goes through
``normalise_func`` (``normalise_by_max``: division by max |a| over the *whole batch*, all axes)
and then ``abs``; ``similarity_func`` (default ``correlation_spearman``) compares the flattened
maps per sample. relprop's ``normalize="abs_max"`` divides by max |a| per sample: Spearman's rank
correlation is invariant to a positive scale per sample, so the values agree exactly; with
``reduce="sum"`` or ``"none"`` on single-channel inputs the maps are the same.

SSIM convention difference (documented, not compared): Quantus's ``similarity_func.ssim``
applies ``skimage.metrics.structural_similarity`` to the *flattened 1-D* maps (``a.reshape(N,
-1)``, a 7-sample window along the row-major pixel order), and after a per-batch normalization.
relprop's ``"ssim"`` is the 2-D SSIM of Wang et al. (2004) on each (H, W) map with a per-sample
normalization. Instead of Quantus's number, the test checks relprop's 2-D SSIM against
``skimage.metrics.structural_similarity`` on the 2-D maps that torch computes for the same
randomized models (data range: the pair's own range, as Quantus uses).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import quantus
import torch
from quantus.helpers.model.pytorch_model import PyTorchModel
from skimage.metrics import structural_similarity

import relprop as rp
from relprop.evaluate import randomization as R

SEED = 42  # Quantus's default MPRT seed (it seeds torch with seed + 1)
ORDERS = {"top_down": "cascading", "independent": "independent"}


def make_model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
        torch.nn.Linear(216, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    return m.float().eval()


def explain_func(model, inputs, targets, **kw):
    """The gradient of the target logit with respect to the input (Quantus's explain_func
    contract: numpy in, numpy out, shaped like the input)."""
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32).requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out[torch.arange(len(x)), torch.as_tensor(np.asarray(targets))].sum(), x)
    return g.detach().numpy()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """These models are tiny: torch's intra-op threads only add synchronization (10x slower on a
    busy 2-core machine). Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def setup():
    m = make_model()
    x = torch.randn(8, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        y = m(x).argmax(1).numpy()
    return m, x.numpy(), y


def record_quantus_models(m, order):
    """Iterate Quantus's own generator; per step: (layer name, {module name: (weight, bias)})."""
    steps = []
    for name, model in PyTorchModel(m, channel_first=True).get_random_layer_generator(order=order, seed=SEED):
        mods = dict(model.named_modules())
        steps.append((name, {k: (mods[k].weight.detach().numpy().copy(), mods[k].bias.detach().numpy().copy())
                             for k in mods if hasattr(mods[k], "reset_parameters")}))
    return steps


def torch_model_with(m, params):
    t = copy.deepcopy(m)
    mods = dict(t.named_modules())
    with torch.no_grad():
        for k, (w, b) in params.items():
            mods[k].weight.copy_(torch.as_tensor(w))
            mods[k].bias.copy_(torch.as_tensor(b))
    return t.eval()


def draws_per_layer(m, steps, order):
    """{layer: its Quantus draw}, after checking that every step holds the same draw of each reset
    layer and the original weights of the others (cascading keeps earlier resets; independent
    resets only the step's layer)."""
    original = {k: (mod.weight.detach().numpy(), mod.bias.detach().numpy())
                for k, mod in m.named_modules() if hasattr(mod, "reset_parameters")}
    draws, reset = {}, []
    for name, params in steps:
        draws[name] = params[name]
        reset = reset + [name] if order == "top_down" else [name]
        for k, (w, b) in params.items():
            if k in reset:
                assert np.array_equal(w, draws[k][0]) and np.array_equal(b, draws[k][1]), (name, k)
            else:
                assert np.array_equal(w, original[k][0]) and np.array_equal(b, original[k][1]), (name, k)
        assert not np.array_equal(params[name][0], original[name][0])
    return draws


def replay_init(draws):
    """An ``init=`` callable for relprop that returns Quantus's draw of the layer (relprop node
    names of ``rp.from_torch`` on an nn.Sequential are the torch module names)."""
    def init(name, layer, rng):
        w, b = draws[name]
        if layer.kind == "Conv2d":
            return rp.Conv2d(w, b, stride=layer.stride, padding=layer.padding)
        return rp.Dense(w, b)
    return init


def test_layer_order_and_names_map_onto_relprop(setup):
    m, x, _ = setup
    net = rp.from_torch(m, torch.as_tensor(x[:1]))
    torch_layers = [k for k, mod in m.named_modules() if hasattr(mod, "reset_parameters")]
    assert R.weight_layers(net) == torch_layers
    assert [n for n, _ in record_quantus_models(m, "top_down")] == torch_layers[::-1]
    assert [n for n, _ in record_quantus_models(m, "independent")] == torch_layers
    # a layer's draw depends on (seed, shape) only: the same in both of Quantus's orders
    a = draws_per_layer(m, record_quantus_models(m, "top_down"), "top_down")
    b = draws_per_layer(m, record_quantus_models(m, "independent"), "independent")
    for k in torch_layers:
        assert np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])


# Quantus (abs, normalise) <-> relprop (normalize, measure, reduce); reduce is moot on one channel
CONVENTIONS = {
    "abs": (True, "abs_max", "spearman", "none"),  # Quantus's default
    "abs-sum": (True, "abs_max", "spearman", "sum"),
    "abs-via-measure": (True, "max", "spearman_abs", "sum"),
    "signed": (False, "max", "spearman", "none"),
}


@pytest.mark.parametrize("convention", list(CONVENTIONS))
@pytest.mark.parametrize("given_a_batch", [False, True], ids=["a_batch=None", "a_batch=given"])
@pytest.mark.parametrize("order", list(ORDERS))
def test_spearman_per_layer_per_sample_equals_quantus_mprt(setup, order, given_a_batch, convention):
    m, x, y = setup
    q_abs, normalize, measure, reduce = CONVENTIONS[convention]
    metric = quantus.MPRT(layer_order=order, seed=SEED, abs=q_abs, normalise=True, disable_warnings=True,
                          display_progressbar=False)
    a_batch = explain_func(m, x, y) if given_a_batch else None
    scores = metric(model=m, x_batch=x, y_batch=y, a_batch=a_batch, explain_func=explain_func, batch_size=len(x))

    draws = draws_per_layer(m, record_quantus_models(m, order), order)
    net = rp.from_torch(m, torch.as_tensor(x[:1]))
    res = R.model_randomization(net, x, {"gradient": "gradient"}, mode=ORDERS[order], seeds=(SEED,),
                                measures=(measure,), normalize=normalize, reduce=reduce, init=replay_init(draws),
                                target=y)
    assert set(scores) == set(res.layers)  # "original" and every layer name
    for s, layer in enumerate(res.layers):
        q = np.asarray(scores[layer], np.float64)
        assert q.shape == (len(x),)
        assert not np.any(np.isnan(q))
        np.testing.assert_allclose(res.values[0, s, 0, 0], q, rtol=0, atol=1e-5, err_msg=f"{order} {layer}")
    assert np.all(np.abs(np.asarray(scores[res.layers[-1]])) < 0.9)  # the randomized maps did change


@pytest.mark.parametrize("order", list(ORDERS))
def test_ssim_2d_equals_skimage_on_the_maps_of_quantus_models(setup, order):
    """relprop's 2-D SSIM of the |gradient| / max maps, against skimage on the 2-D maps torch
    computes for each of Quantus's randomized models (see the module docstring for why Quantus's own
    1-D SSIM is not the reference)."""
    m, x, y = setup
    steps = record_quantus_models(m, order)
    draws = draws_per_layer(m, steps, order)
    net = rp.from_torch(m, torch.as_tensor(x[:1]))
    res = R.model_randomization(net, x, ["gradient"], mode=ORDERS[order], seeds=(SEED,),
                                measures=("ssim", "spearman_abs"), normalize="abs_max", init=replay_init(draws),
                                target=y)

    def maps(model):
        g = np.abs(explain_func(model, x, y)[:, 0].astype(np.float64))
        return g / g.reshape(len(g), -1).max(axis=1)[:, None, None]

    ref = maps(m)
    by_layer = dict(steps)
    for s, layer in enumerate(res.layers):
        got = ref if layer == "original" else maps(torch_model_with(m, by_layer[layer]))
        exp = []
        for a, b in zip(ref, got):
            rng = float(max(a.max(), b.max()) - min(a.min(), b.min()))
            exp.append(structural_similarity(a, b, data_range=rng))
        np.testing.assert_allclose(res.values[0, s, 0, 0], exp, rtol=0, atol=1e-5, err_msg=f"{order} {layer}")


@pytest.mark.parametrize("quantus_seed", [42, 7])
def test_class_sensitivity_equals_quantus_random_logit(setup, quantus_seed):
    """quantus.RandomLogit (Sixt et al. 2020): the similarity between the explanation of the label
    and of a random other class. Its off-classes come from ``np.random.seed(seed)`` then
    ``randint(0, C - 1, N)`` over each sample's classes without the label; relprop's
    ``classes="random"`` draws from its own stream, so the test hands relprop Quantus's pairs
    (recomputed here with Quantus's recipe) as ``classes=``. Spearman is invariant to Quantus's
    per-batch max normalization, so the values must agree exactly."""
    m, x, y = setup
    net = rp.from_torch(m, torch.from_numpy(x[:2]))
    n, k = len(x), 5
    metric = quantus.RandomLogit(similarity_func=quantus.similarity_func.correlation_spearman, num_classes=k,
                                 seed=quantus_seed, abs=False, normalise=True, disable_warnings=True)
    got_q = np.asarray(metric(model=m, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func,
                              channel_first=True, device="cpu", batch_size=n))
    np.random.seed(quantus_seed)
    off_idx = np.random.randint(0, k - 1, n)
    others = np.array([[c for c in range(k) if c != yy] for yy in y])
    pairs = np.stack([y, others[np.arange(n), off_idx]], axis=1)
    t = R.class_sensitivity(net, x, {"gradient": "gradient"}, classes=pairs, measures=("spearman",), normalize="max")
    np.testing.assert_allclose(t.per_sample[0, 0], got_q, rtol=0, atol=1e-6)
    # classes="random" draws other classes uniformly, never the target itself
    r = R.class_sensitivity(net, x, {"gradient": "gradient"}, classes="random", target=y, seed=3,
                            measures=("spearman",))
    assert (r.classes[:, 0] == y).all() and (r.classes[:, 1] != y).all()
    assert r.classes[:, 1].min() >= 0 and r.classes[:, 1].max() < k
