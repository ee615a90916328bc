"""Properties of the model-parameter randomization study (Adebayo et al. 2018) and class sensitivity.

What is proved here, each from something independent of ``relprop.evaluate.randomization``:

- the forward reuse (``relprop.core.reuse.ForwardReuse``) changes no number: studies with
  ``reuse_forward=True`` and ``False`` agree for ten methods on a CNN with max pooling and on a
  graph with a branch (Add, Concat) and BatchNorm2d, in both modes -- and it really skips work:
  counting the layer ops' forward calls (``relprop.core.layers.OPS``) shows which nodes ran;
- the caller's model is never modified (weight bytes, ``plan.fingerprint``, layer objects);
- ``randomized_models`` replaces exactly the layers each mode promises, a draw depends only on
  (seed, layer), and the unchanged layers are shared with the original;
- ``reinitialized`` draws from the distributions it documents: ``init="torch"`` against torch's
  own ``reset_parameters()`` (two-sample Kolmogorov-Smirnov test), He normal by a chi-square test
  of the variance, Glorot uniform by its bound and a KS test;
- every similarity value equals a recomputation in this file: ``rp.attribute`` of each step's
  model, a numpy channel sum and max-normalization, ``skimage.metrics.structural_similarity``
  and ``scipy.stats.spearmanr`` per sample; the table, ``curve`` and ``to_pandas`` carry those
  numbers;
- class sensitivity compares the explanations of the two requested classes.

Conventions pinned here: SSIM uses each pair's own data range (Quantus 0.6's convention);
``layers[0] == "original"`` and the randomized layers follow top-down (reverse graph order);
``curve`` reports the population standard deviation over seeds (``np.std``, ddof 0).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from skimage.metrics import structural_similarity

import relprop as rp
from relprop.core import layers as core_layers
from relprop.core import plan, reuse
from relprop.evaluate import randomization as R
from tolerance import assert_blas_close  # noqa: E402

METHODS = {
    "gradient": "gradient",
    "guided_backprop": "guided_backprop",
    "deconvnet": "deconvnet",
    "ig": ("integrated_gradients", {"steps": 8}),
    "deeplift": "deeplift.rescale",
    "lrp.epsilon": "lrp.epsilon",
    "lrp.z_plus": "lrp.z_plus",
    "lrp.alpha_beta": "lrp.alpha_beta",
    "epsilon_plus_flat": ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}),
    "smoothgrad": ("smoothgrad", {"seed": 3, "samples": 4}),
}


# -- models -------------------------------------------------------------------------------------
def _w(rng, shape, scale, dt):
    return rng.normal(0.0, scale, shape).astype(dt)


def make_cnn(dt=np.float32, seed=0):
    """Conv-ReLU-MaxPool-Conv-ReLU-Flatten-Dense-ReLU-Dense on (1, 12, 12) inputs, 3 classes."""
    g = np.random.default_rng(seed)
    return rp.Sequential(
        rp.Conv2d(_w(g, (4, 1, 3, 3), 0.4, dt), _w(g, (4,), 0.1, dt), padding=1), rp.ReLU(), rp.MaxPool2d(2),
        rp.Conv2d(_w(g, (6, 4, 3, 3), 0.3, dt), _w(g, (6,), 0.1, dt), padding=1), rp.ReLU(), rp.Flatten(),
        rp.Dense(_w(g, (10, 216), 0.1, dt), _w(g, (10,), 0.1, dt)), rp.ReLU(),
        rp.Dense(_w(g, (3, 10), 0.4, dt), _w(g, (3,), 0.1, dt)))


def make_graph(dt=np.float32, seed=1):
    """A graph with BatchNorm2d, a branch joined by Add, a Concat skip and max pooling, on
    (2, 12, 12) inputs, 4 classes."""
    g = np.random.default_rng(seed)
    N = rp.Node
    nodes = [
        N("c1", rp.Conv2d(_w(g, (4, 2, 3, 3), 0.3, dt), _w(g, (4,), 0.1, dt), padding=1), ("input",)),
        N("bn1", rp.BatchNorm2d(1 + _w(g, (4,), 0.2, dt), _w(g, (4,), 0.1, dt), _w(g, (4,), 0.1, dt),
                                np.abs(1 + _w(g, (4,), 0.2, dt))), ("c1",)),
        N("r1", rp.ReLU(), ("bn1",)),
        N("ca", rp.Conv2d(_w(g, (4, 4, 3, 3), 0.3, dt), _w(g, (4,), 0.1, dt), padding=1), ("r1",)),
        N("ra", rp.ReLU(), ("ca",)),
        N("cb", rp.Conv2d(_w(g, (4, 4, 1, 1), 0.3, dt), _w(g, (4,), 0.1, dt)), ("r1",)),
        N("add", rp.Add(), ("ra", "cb")),
        N("cat", rp.Concat(1), ("add", "r1")),
        N("r2", rp.ReLU(), ("cat",)),
        N("mp", rp.MaxPool2d(2), ("r2",)),
        N("fl", rp.Flatten(), ("mp",)),
        N("d1", rp.Dense(_w(g, (12, 288), 0.1, dt), _w(g, (12,), 0.1, dt)), ("fl",)),
        N("r3", rp.ReLU(), ("d1",)),
        N("d2", rp.Dense(_w(g, (4, 12), 0.3, dt), _w(g, (4,), 0.1, dt)), ("r3",)),
    ]
    return rp.Graph(nodes, input_shape=(2, 12, 12))


MODELS = {"cnn": (make_cnn, (1, 12, 12)), "graph": (make_graph, (2, 12, 12))}


def inputs(which, n=5, dt=np.float32, seed=7):
    return np.random.default_rng(seed).normal(size=(n,) + MODELS[which][1]).astype(dt)


def weight_bytes(net):
    return [(n.name, a, getattr(n.layer, a).tobytes()) for n in net.nodes for a in n.layer.arrays]


def descendants(net, changed):
    """Nodes whose output depends on a node in ``changed`` (the nodes themselves included)."""
    out = set(changed)
    for n in net.nodes:
        if any(s in out for s in n.inputs):
            out.add(n.name)
    return out


# -- 1. the forward reuse changes nothing, and it skips work ---------------------------------------
@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("which", list(MODELS))
def test_forward_reuse_changes_no_value_or_map(which, mode):
    net, x = MODELS[which][0](), inputs(which)
    kw = dict(mode=mode, seeds=(0, 5), measures=("ssim", "spearman"), keep_maps=3)
    on = R.model_randomization(net, x, METHODS, reuse_forward=True, **kw)
    off = R.model_randomization(net, x, METHODS, reuse_forward=False, **kw)
    assert on.values.shape == off.values.shape == (len(METHODS), len(R.weight_layers(net)) + 1, 2, 2, len(x))
    for i, label in enumerate(on.methods):
        np.testing.assert_allclose(on.values[i], off.values[i], rtol=1e-6, atol=1e-6, equal_nan=True,
                                   err_msg=label)
        scale = float(np.abs(off.maps[i]).max())
        np.testing.assert_allclose(on.maps[i], off.maps[i], rtol=1e-6, atol=1e-6 * scale, err_msg=label)
    assert on.maps.dtype == np.float32
    hits, misses = on.reuse
    assert hits > 0 and misses > 0
    assert off.reuse == (0, 0)


@pytest.mark.parametrize("mode", R.MODES)
def test_forward_reuse_is_exact_in_float64(mode):
    net, x = make_graph(np.float64), inputs("graph", dt=np.float64)
    methods = {k: METHODS[k] for k in ("gradient", "deeplift", "lrp.z_plus", "epsilon_plus_flat")}
    kw = dict(mode=mode, seeds=(2,), measures=("ssim", "spearman_abs"), keep_maps=5)
    on = R.model_randomization(net, x, methods, reuse_forward=True, **kw)
    off = R.model_randomization(net, x, methods, reuse_forward=False, **kw)
    assert np.array_equal(on.values, off.values, equal_nan=True)
    assert np.array_equal(on.maps, off.maps)
    assert on.reuse[0] > 0


@pytest.mark.parametrize("max_memory", [0, 20_000, "2GB"])
def test_forward_reuse_under_a_memory_bound_and_in_small_batches(max_memory):
    """A bound on what the cache holds (entries beyond it are refused) and internal batches of 2
    rows (one pass key per batch) change no number either; keep_maps=0 keeps no maps."""
    net, x = make_graph(), inputs("graph")
    methods = {k: METHODS[k] for k in ("gradient", "lrp.alpha_beta", "ig")}
    kw = dict(mode="cascading", seeds=(1,), measures=("spearman",), batch_size=2, keep_maps=0)
    on = R.model_randomization(net, x, methods, max_memory=max_memory, **kw)
    off = R.model_randomization(net, x, methods, reuse_forward=False, **kw)
    np.testing.assert_allclose(on.values, off.values, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert on.maps is None and off.maps is None
    if max_memory == 0:
        assert on.reuse[0] == 0
    else:
        assert on.reuse[0] > 0
    cache = reuse.ForwardReuse(net, max_bytes=20_000)
    with cache.active():
        rp.attribute(net, x, "gradient", target=np.zeros(len(x), int))
    assert 0 < cache.bytes <= 20_000


class _CountingOp:
    """Wraps a layer op and records the node of every forward it runs."""

    def __init__(self, op, log):
        self._op, self._log = op, log

    def __getattr__(self, name):
        return getattr(self._op, name)

    def forward(self, fw, node, xs):
        self._log.append(node.name)
        return self._op.forward(fw, node, xs)


@pytest.fixture
def forward_log(monkeypatch):
    log = []
    for kind, op in list(core_layers.OPS.items()):
        monkeypatch.setitem(core_layers.OPS, kind, _CountingOp(op, log))
    return log


@pytest.mark.parametrize("method", ["gradient", "lrp.z_plus", "deeplift.rescale"])
@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("which", list(MODELS))
def test_forward_reuse_skips_the_nodes_below_the_randomized_layers(which, mode, method, forward_log):
    """Each step computes every node that depends on a randomized layer and, of the others, at
    most the nodes that feed a randomized layer directly; every other node -- all layers below
    the randomized ones that feed unchanged layers -- comes from the cache. The cache's hit and
    miss counters agree with the ops that ran."""
    net, x = MODELS[which][0](), inputs(which)
    T = np.argmax(rp.scores(net, x), axis=1)
    cache = reuse.ForwardReuse(net)
    forward_log.clear()
    with cache.active():
        rp.attribute(net, x, method, target=T)
        looked_up = list(forward_log)  # the original pass: every node not fused into its producer
        assert cache.hits == 0 and cache.misses == len(looked_up)
        changed = set()
        for name, model in R.randomized_models(net, mode=mode, seed=1):
            changed = (changed | {name}) if mode == "cascading" else {name}
            forward_log.clear()
            h0, m0 = cache.hits, cache.misses
            rp.attribute(model, x, method, target=T)
            ran = set(forward_log)
            below = descendants(net, changed)
            feeding = {s for c in changed for s in net.by_name[c].inputs} - {"input"}
            assert below & set(looked_up) <= ran, (name, below - ran)
            assert ran <= below | feeding, (name, ran - below - feeding)
            skipped = set(looked_up) - below - feeding
            assert not (ran & skipped)
            assert cache.hits - h0 == len(set(looked_up) - ran)
            assert cache.misses - m0 == len(ran)
            if skipped:
                assert cache.hits - h0 > 0


def test_forward_reuse_reuses_a_conv_that_feeds_a_randomized_batchnorm(forward_log):
    net, x = make_graph(), inputs("graph")
    T = np.argmax(rp.scores(net, x), axis=1)
    cache = reuse.ForwardReuse(net)
    with cache.active():
        rp.attribute(net, x, "gradient", target=T)
        model = dict(R.randomized_models(net, layers=["bn1"], mode="independent"))["bn1"]
        forward_log.clear()
        rp.attribute(model, x, "gradient", target=T)
    assert "c1" not in forward_log


# -- 2. the caller's model is never modified ------------------------------------------------------
@pytest.mark.parametrize("which", list(MODELS))
def test_the_callers_model_is_not_modified(which):
    net, x = MODELS[which][0](), inputs(which)
    before = weight_bytes(net)
    fp = plan.fingerprint(net)
    objs = [(n.layer, n.layer.version) for n in net.nodes]
    for mode in R.MODES:
        R.model_randomization(net, x, ["gradient", "lrp.epsilon"], mode=mode, seeds=(0, 1), init="he_normal")
        for _ in R.randomized_models(net, mode=mode, init="glorot_uniform"):
            pass
    R.class_sensitivity(net, x, ["gradient"])
    assert weight_bytes(net) == before
    assert [(n.layer, n.layer.version) for n in net.nodes] == objs
    assert all(a is b for (a, _), b in zip(objs, (n.layer for n in net.nodes)))
    assert plan.fingerprint(net) == fp


# -- 3. randomized_models ------------------------------------------------------------------------
def _differs(model, net):
    return [n.name for n, o in zip(model.nodes, net.nodes) if n.layer is not o.layer]


@pytest.mark.parametrize("which", list(MODELS))
def test_cascading_step_t_replaces_the_top_t_layers_and_keeps_earlier_draws(which):
    net = MODELS[which][0]()
    top_down = R.weight_layers(net)[::-1]
    steps = list(R.randomized_models(net, mode="cascading", seed=4))
    assert [name for name, _ in steps] == top_down
    for t, (name, model) in enumerate(steps, start=1):
        assert set(_differs(model, net)) == set(top_down[:t])
        assert [n.name for n in model.nodes] == [n.name for n in net.nodes]
        assert [n.inputs for n in model.nodes] == [n.inputs for n in net.nodes]
        assert model.input_shape == net.input_shape
        for n in model.nodes[:]:
            o = net.by_name[n.name].layer
            if n.name in top_down[:t]:
                assert type(n.layer) is type(o)
                assert any(not np.array_equal(getattr(n.layer, a), getattr(o, a)) for a in o.arrays)
            else:
                assert n.layer is o  # shared with the original
        if t > 1:
            prev = steps[t - 2][1]
            for earlier in top_down[: t - 1]:
                assert model.by_name[earlier].layer is prev.by_name[earlier].layer


@pytest.mark.parametrize("which", list(MODELS))
def test_independent_step_replaces_exactly_one_layer(which):
    net = MODELS[which][0]()
    steps = list(R.randomized_models(net, mode="independent", seed=4))
    assert [name for name, _ in steps] == R.weight_layers(net)[::-1]
    for name, model in steps:
        assert _differs(model, net) == [name]


@pytest.mark.parametrize("init", R.INITS)
def test_a_draw_depends_only_on_seed_and_layer(init):
    net = make_graph()
    casc = {s: dict(R.randomized_models(net, mode="cascading", seed=s, init=init)) for s in (0, 1)}
    ind = {s: dict(R.randomized_models(net, mode="independent", seed=s, init=init)) for s in (0, 1)}
    again = dict(R.randomized_models(net, mode="cascading", seed=0, init=init))
    for name in R.weight_layers(net):
        layer = net.by_name[name].layer
        arrays = layer.arrays
        a, b, c = casc[0][name].by_name[name].layer, ind[0][name].by_name[name].layer, again[name].by_name[name].layer
        ref = R.reinitialized(layer, R.layer_rng(0, name), init)
        for arr in arrays:
            assert np.array_equal(getattr(a, arr), getattr(b, arr)), (name, arr)
            assert np.array_equal(getattr(a, arr), getattr(c, arr))
            assert np.array_equal(getattr(a, arr), getattr(ref, arr))
        if layer.kind != "BatchNorm2d":  # BatchNorm resets to constants whatever the seed
            other = casc[1][name].by_name[name].layer
            assert not np.array_equal(a.weight, other.weight)
            assert not np.array_equal(ind[1][name].by_name[name].layer.weight, a.weight)


def test_layers_restricts_the_randomized_layers():
    net = make_graph()
    for mode in R.MODES:
        steps = list(R.randomized_models(net, layers=["d1", "c1", "bn1"], mode=mode))
        assert [n for n, _ in steps] == ["d1", "bn1", "c1"]  # top-down whatever the order given
        done = set()
        for name, model in steps:
            done = done | {name} if mode == "cascading" else {name}
            assert set(_differs(model, net)) == done
    assert [n for n, _ in R.randomized_models(net, layers="cb")] == ["cb"]
    res = R.model_randomization(net, inputs("graph"), ["gradient"], layers=("cb", "d2"), measures=("spearman",))
    assert res.layers == ["original", "d2", "cb"]
    assert res.values.shape[1] == 3


# -- 4. the distributions of reinitialized --------------------------------------------------------
DRAWS = 100


def _relprop_draws(layer, init, names=("weight", "bias")):
    got = {k: [] for k in names}
    for s in range(DRAWS):
        new = R.reinitialized(layer, R.layer_rng(s, "fc"), init)
        for k in names:
            got[k].append(np.asarray(getattr(new, k), np.float64).ravel())
    return {k: np.concatenate(v) for k, v in got.items()}


def _torch_module(kind):
    return torch.nn.Linear(30, 8) if kind == "Dense" else torch.nn.Conv2d(3, 5, 3)


def _relprop_layer(kind, dt=np.float32):
    if kind == "Dense":
        return rp.Dense(np.zeros((8, 30), dt), np.zeros(8, dt))
    return rp.Conv2d(np.zeros((5, 3, 3, 3), dt), np.zeros(5, dt), stride=2, padding=1)


@pytest.mark.parametrize("kind", ["Dense", "Conv2d"])
def test_torch_init_has_the_distribution_of_torch_reset_parameters(kind):
    fan_in = 30 if kind == "Dense" else 27
    layer = _relprop_layer(kind)
    ours = _relprop_draws(layer, "torch")
    mod = _torch_module(kind)
    torch.manual_seed(123)
    theirs = {"weight": [], "bias": []}
    for _ in range(DRAWS):
        mod.reset_parameters()
        theirs["weight"].append(mod.weight.detach().double().numpy().ravel())
        theirs["bias"].append(mod.bias.detach().double().numpy().ravel())
    bound = 1.0 / np.sqrt(fan_in)
    for k in ("weight", "bias"):
        t = np.concatenate(theirs[k])
        assert ours[k].size == t.size
        assert scipy.stats.ks_2samp(ours[k], t).pvalue > 1e-3, k
        # the exact support U(-1/sqrt(fan_in), 1/sqrt(fan_in)), reached up to sampling (float32 cast)
        assert np.abs(ours[k]).max() <= np.float32(bound)
        assert np.abs(ours[k]).max() > bound * (1 - 20.0 / ours[k].size)
        assert scipy.stats.kstest(ours[k], scipy.stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3, k


@pytest.mark.parametrize("kind", ["Dense", "Conv2d"])
def test_he_normal_has_std_sqrt_2_over_fan_in(kind):
    fan_in = 30 if kind == "Dense" else 27
    ours = _relprop_draws(_relprop_layer(kind, np.float64), "he_normal")
    w, n = ours["weight"], ours["weight"].size
    sigma2 = 2.0 / fan_in
    # sum w^2 / sigma^2 ~ chi2(n) for N(0, sigma^2) draws: two-sided test of the variance
    stat = float(np.sum(w ** 2) / sigma2)
    p = 2 * min(scipy.stats.chi2.cdf(stat, n), scipy.stats.chi2.sf(stat, n))
    assert p > 1e-3, (stat, n)
    assert abs(w.mean()) < 4 * np.sqrt(sigma2 / n)  # mean 0 within 4 standard errors
    assert scipy.stats.kstest(w, scipy.stats.norm(0, np.sqrt(sigma2)).cdf).pvalue > 1e-3
    assert np.all(ours["bias"] == 0)


@pytest.mark.parametrize("kind", ["Dense", "Conv2d"])
def test_glorot_uniform_has_the_glorot_bound(kind):
    fan_in, fan_out = (30, 8) if kind == "Dense" else (27, 45)
    ours = _relprop_draws(_relprop_layer(kind, np.float64), "glorot_uniform")
    w = ours["weight"]
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > bound * (1 - 20.0 / w.size)
    assert scipy.stats.kstest(w, scipy.stats.uniform(-bound, 2 * bound).cdf).pvalue > 1e-3
    assert np.all(ours["bias"] == 0)


@pytest.mark.parametrize("init", R.INITS)
@pytest.mark.parametrize("dt", [np.float32, np.float64])
def test_reinitialized_keeps_type_shape_dtype_and_hyper_parameters(init, dt):
    layer = _relprop_layer("Conv2d", dt)
    new = R.reinitialized(layer, np.random.default_rng(0), init)
    assert type(new) is rp.Conv2d and new is not layer
    assert new.weight.shape == layer.weight.shape and new.weight.dtype == dt and new.bias.dtype == dt
    assert (new.stride, new.padding) == (layer.stride, layer.padding)
    assert np.all(layer.weight == 0) and np.all(layer.bias == 0)  # the original is untouched


@pytest.mark.parametrize("init", R.INITS)
def test_batchnorm_is_reset_to_identity_statistics(init):
    g = np.random.default_rng(0)
    bn = rp.BatchNorm2d(g.normal(size=6), g.normal(size=6), g.normal(size=6), g.uniform(1, 2, 6), eps=1e-3)
    new = R.reinitialized(bn, np.random.default_rng(1), init)
    assert type(new) is rp.BatchNorm2d and new.eps == 1e-3
    for a, v in (("weight", 1), ("bias", 0), ("running_mean", 0), ("running_var", 1)):
        assert np.array_equal(getattr(new, a), np.full(6, v, np.float64)), a
        assert getattr(new, a).dtype == bn.weight.dtype
    # what torch's BatchNorm2d.reset_parameters() does
    tbn = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        for p in (tbn.weight, tbn.bias, tbn.running_mean, tbn.running_var):
            p.normal_()
    tbn.reset_parameters()
    for a in ("weight", "bias", "running_mean", "running_var"):
        assert np.array_equal(getattr(new, a), getattr(tbn, a).detach().double().numpy())


# -- 5. the values, against an independent recomputation ------------------------------------------
def _maps(R_, normalize="max"):
    """Channel sum, then per-sample division by max |R| (numpy, written out)."""
    m = np.asarray(R_, np.float64).sum(axis=1)
    out = np.empty_like(m)
    for i in range(len(m)):
        s = np.abs(m[i]).max()
        out[i] = m[i] / s if s > 0 else m[i]
        if normalize == "abs_max":
            out[i] = np.abs(out[i])
    return out


def _ssim(a, b):
    rng = float(max(a.max(), b.max()) - min(a.min(), b.min()))
    if rng == 0:
        return 1.0  # relprop's documented value for two equal constant maps
    return structural_similarity(a, b, data_range=rng)


def _spearman(a, b):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant maps: NaN, as relprop documents
        return scipy.stats.spearmanr(a.ravel(), b.ravel())[0]


MEASURE_REF = {"ssim": _ssim, "spearman": _spearman,
               "spearman_abs": lambda a, b: _spearman(np.abs(a), np.abs(b))}


def _expected(ref_maps, maps, measure):
    return np.array([MEASURE_REF[measure](a, b) for a, b in zip(ref_maps, maps)])


def test_step_zero_is_exactly_one():
    net, x = make_cnn(), inputs("cnn")
    res = R.model_randomization(net, x, ["gradient", "lrp.epsilon", "guided_backprop"], seeds=(0, 1, 2),
                                measures=("ssim", "spearman", "spearman_abs", "pearson"))
    assert res.layers[0] == "original"
    assert np.all(res.values[:, 0, :, 0] == 1.0)  # SSIM of a map with itself: exactly 1
    # the correlations: 1 up to the rounding of sum(x x) / (|x| |x|) (a few ulps)
    np.testing.assert_allclose(res.values[:, 0, :, 1:], 1.0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("mode", R.MODES)
def test_values_equal_an_independent_recomputation(mode):
    net, x = make_cnn(np.float64), inputs("cnn", n=4, dt=np.float64)
    methods = {"gradient": "gradient", "eps": ("lrp.epsilon", {})}
    seeds = (0, 3)
    measures = ("ssim", "spearman", "spearman_abs")
    res = R.model_randomization(net, x, methods, mode=mode, seeds=seeds, measures=measures, keep_maps=2)
    T = np.argmax(rp.scores(net, x), axis=1)
    top_down = R.weight_layers(net)[::-1]
    assert res.layers == ["original"] + top_down
    assert res.methods == list(methods) and res.seeds == list(seeds) and res.measures == list(measures)
    assert res.mode == mode
    assert res.values.shape == (2, len(top_down) + 1, 2, 3, 4)
    assert np.all(res.values[:, 1:].mean(axis=-1) < 0.99)  # randomizing changed every step's maps
    for i, (label, spec) in enumerate(methods.items()):
        m, p = (spec, {}) if isinstance(spec, str) else spec
        ref = _maps(rp.attribute(net, x, m, target=T, **p))
        for j, seed in enumerate(seeds):
            np.testing.assert_allclose(res.maps[i, 0, j], ref[:2].astype(np.float32), rtol=1e-6, atol=1e-7)
            for s, (name, model) in enumerate(R.randomized_models(net, mode=mode, seed=seed), start=1):
                assert name == top_down[s - 1]
                got = _maps(rp.attribute(model, x, m, target=T, **p))
                for q, meas in enumerate(measures):
                    np.testing.assert_allclose(res.values[i, s, j, q], _expected(ref, got, meas), rtol=1e-9,
                                               atol=1e-9, equal_nan=True, err_msg=f"{label} {name} {seed} {meas}")
                np.testing.assert_allclose(res.maps[i, s, j], got[:2].astype(np.float32), rtol=1e-6, atol=1e-7)


def _nan_mean_std_count(v):
    """numpy's NaN-aware mean and population std of the defined values, and their count."""
    v = np.asarray(v, np.float64)
    ok = v[~np.isnan(v)]
    if ok.size == 0:
        return np.nan, np.nan, 0
    return float(np.mean(ok)), float(np.std(ok)), int(ok.size)


def test_table_curve_and_pandas_carry_the_values():
    net, x = make_cnn(), inputs("cnn")
    methods = ["gradient", "lrp.epsilon"]
    seeds = (0, 1, 9)
    measures = ("ssim", "spearman_abs", "spearman")
    res = R.model_randomization(net, x, methods, mode="independent", seeds=seeds, measures=measures)
    # one undefined sample value (as a correlation with a constant map is): left out, counted
    res.values[0, 2, 1, 1, 0] = np.nan
    res.values[1, 3, 2, 2, :] = np.nan
    t = res.table
    M, S, J, Q, N = res.values.shape
    assert len(t) == M * S * J * Q
    assert t.columns[:7] == ["method", "step", "layer", "seed", "measure", "value", "std"]
    rows = 0
    for i, m in enumerate(methods):
        for s, layer in enumerate(["original"] + R.weight_layers(net)[::-1]):
            for j, seed in enumerate(seeds):
                for q, meas in enumerate(measures):
                    r = t.where(method=m, step=s, seed=seed, measure=meas)
                    assert len(r) == 1
                    assert r["layer"][0] == layer
                    mean, std, count = _nan_mean_std_count(res.values[i, s, j, q])
                    np.testing.assert_allclose([r["value"][0], r["std"][0]], [mean, std], rtol=1e-12, atol=1e-15,
                                               equal_nan=True)
                    if "n_valid" in t.columns:
                        assert r["n_valid"][0] == count
                    rows += 1
    assert rows == len(t)
    assert t.where(method="lrp.epsilon", step=3, seed=9, measure="spearman")["n_valid"][0] == 0
    for i, m in enumerate(methods):
        for q, meas in enumerate(measures):
            mean, std = res.curve(m, meas)
            per_seed = np.array([[_nan_mean_std_count(res.values[i, s, j, q])[0] for j in range(J)]
                                 for s in range(S)])
            exp = np.array([_nan_mean_std_count(row)[:2] for row in per_seed])
            np.testing.assert_allclose(mean, exp[:, 0], rtol=1e-12, equal_nan=True)
            np.testing.assert_allclose(std, exp[:, 1], rtol=1e-12, atol=1e-15, equal_nan=True)
            assert mean[0] == pytest.approx(1.0, abs=1e-15) and std[0] == pytest.approx(0.0, abs=1e-15)
    df = res.to_pandas()
    assert list(df.columns) == t.columns and len(df) == len(t)
    for c in t.columns:
        if t[c].dtype.kind == "f":
            np.testing.assert_array_equal(df[c].to_numpy(), t[c])
        else:
            assert df[c].tolist() == t[c].tolist(), c


@pytest.mark.parametrize("reduce", R.REDUCE)
@pytest.mark.parametrize("normalize", R.NORMALIZE)
def test_prepare_maps_matches_numpy(reduce, normalize):
    g = np.random.default_rng(3)
    A = g.normal(size=(3, 2, 5, 6)).astype(np.float32)
    A[2] = 0  # an all-zero sample stays zero
    got = R.prepare_maps(A, reduce=reduce, normalize=normalize)
    for i in range(3):
        m = A[i].astype(np.float64)
        m = {"sum": m.sum(0), "abs_sum": np.abs(m).sum(0), "none": m}[reduce]
        if normalize in ("max", "abs_max") and np.abs(m).max() > 0:
            m = m / np.abs(m).max()
            m = np.abs(m) if normalize == "abs_max" else m
        elif normalize == "minmax" and m.max() > m.min():
            m = (m - m.min()) / (m.max() - m.min())
        elif normalize == "minmax":
            m = m - m.min()
        np.testing.assert_allclose(got[i], m, rtol=1e-12, atol=1e-15)
    assert got.dtype == np.float64


def test_an_int_target_is_accepted():
    net, x = make_cnn(), inputs("cnn")
    res = R.model_randomization(net, x, ["gradient"], target=1, measures=("spearman",))
    ref = R.model_randomization(net, x, ["gradient"], target=np.ones(len(x), int), measures=("spearman",))
    np.testing.assert_allclose(res.values, ref.values, rtol=1e-12, atol=1e-12)


# -- 6. class sensitivity -------------------------------------------------------------------------
def test_class_sensitivity_top2_compares_the_two_highest_classes():
    net, x = make_graph(np.float64), inputs("graph", n=6, dt=np.float64)
    methods = ["gradient", "lrp.epsilon"]
    t = R.class_sensitivity(net, x, methods, measures=("ssim", "spearman"))
    s = rp.scores(net, x)
    top2 = np.array([np.argsort(-row, kind="stable")[:2] for row in s])
    assert np.array_equal(t.classes, top2)
    assert np.all(s[np.arange(len(x)), top2[:, 0]] >= s[np.arange(len(x)), top2[:, 1]])
    assert t.per_sample.shape == (2, 2, 6)
    assert len(t) == 4 and t.columns[:4] == ["method", "measure", "value", "std"]
    for i, m in enumerate(methods):
        a = _maps(rp.attribute(net, x, m, target=top2[:, 0]))
        b = _maps(rp.attribute(net, x, m, target=top2[:, 1]))
        for q, meas in enumerate(("ssim", "spearman")):
            exp = _expected(a, b, meas)
            np.testing.assert_allclose(t.per_sample[i, q], exp, rtol=1e-9, atol=1e-9, equal_nan=True)
            r = t.where(method=m, measure=meas)
            assert r["value"][0] == pytest.approx(np.mean(exp), rel=1e-9)
            assert r["std"][0] == pytest.approx(np.std(exp), rel=1e-9, abs=1e-12)
            assert np.all(exp < 1 - 1e-6)  # different classes, different maps


def test_class_sensitivity_with_explicit_classes():
    net, x = make_cnn(np.float64), inputs("cnn", n=4, dt=np.float64)
    C = np.array([[0, 1], [2, 0], [1, 2], [1, 1]])
    t = R.class_sensitivity(net, x, {"g": "gradient"}, classes=C, measures=("spearman", "ssim"),
                            normalize="abs_max")
    assert np.array_equal(t.classes, C)
    a = _maps(rp.attribute(net, x, "gradient", target=C[:, 0]), "abs_max")
    b = _maps(rp.attribute(net, x, "gradient", target=C[:, 1]), "abs_max")
    for q, meas in enumerate(("spearman", "ssim")):
        np.testing.assert_allclose(t.per_sample[0, q], _expected(a, b, meas), rtol=1e-9, atol=1e-9,
                                   equal_nan=True)
    assert t.per_sample[0, 0, 3] == pytest.approx(1.0) and t.per_sample[0, 1, 3] == pytest.approx(1.0)


# -- 7. an init callable --------------------------------------------------------------------------
def test_an_init_callable_is_used():
    net, x = make_cnn(), inputs("cnn")
    calls = []

    def init(name, layer, rng):
        calls.append((name, layer, rng))
        assert isinstance(rng, np.random.Generator)
        if layer.kind == "Dense":
            return rp.Dense(np.full(layer.weight.shape, 0.01, np.float32), np.zeros(layer.weight.shape[0], np.float32))
        return rp.Conv2d(np.full(layer.weight.shape, 0.02, np.float32), None, layer.stride, layer.padding)

    steps = list(R.randomized_models(net, mode="independent", seed=2, init=init))
    assert [c[0] for c in calls] == R.weight_layers(net)[::-1]
    assert all(c[1] is net.by_name[c[0]].layer for c in calls)
    for (name, model), (_, _, rng) in zip(steps, calls):
        new = model.by_name[name].layer
        assert np.all(new.weight == (0.01 if new.kind == "Dense" else 0.02))
        # the generator handed over is layer_rng(seed, name), fresh (this init draws nothing)
        assert rng.bit_generator.state == R.layer_rng(2, name).bit_generator.state
    calls.clear()
    res = R.model_randomization(net, x, ["gradient"], mode="cascading", init=init, measures=("spearman",),
                                keep_maps=len(x))
    assert len(calls) == len(R.weight_layers(net))
    # the last cascading step is the model with every weight layer replaced, built here by hand
    layers = [init(n.name, n.layer, R.layer_rng(0, n.name)) if n.layer.linear else n.layer for n in net.nodes]
    by_hand = rp.Sequential(*layers)
    T = np.argmax(rp.scores(net, x), axis=1)
    expected = _maps(rp.attribute(by_hand, x, "gradient", target=T))
    np.testing.assert_allclose(res.maps[0, -1, 0], expected.astype(np.float32), rtol=1e-5, atol=1e-6)
    orig = _maps(rp.attribute(net, x, "gradient", target=T))
    np.testing.assert_allclose(res.values[0, -1, 0, 0], _expected(orig, expected, "spearman"), rtol=1e-5,
                               atol=1e-6)


def test_an_init_callable_with_a_wrong_return_gives_a_clear_error():
    net = make_cnn()

    def wrong_shape(name, layer, rng):
        return rp.Dense(np.zeros((2, 2), np.float32)) if layer.kind == "Dense" else layer

    with pytest.raises(ValueError, match=r"init\('8', \.\.\.\) must return a Dense with the shapes"):
        list(R.randomized_models(net, init=wrong_shape))

    def wrong_type(name, layer, rng):
        return rp.ReLU()

    with pytest.raises(ValueError, match=r"must return a Dense"):
        list(R.randomized_models(net, init=wrong_type))

    def itself(name, layer, rng):
        return layer

    with pytest.raises(ValueError, match=r"returned the layer itself"):
        list(R.randomized_models(net, init=itself))
    with pytest.raises(ValueError, match=r"must return a Dense with the shapes"):
        R.model_randomization(net, inputs("cnn"), ["gradient"], init=wrong_shape, measures=("spearman",))


def test_forward_reuse_keys_on_the_wiring_not_just_the_layers():
    """Two models holding the same layer objects under the same names but wired differently
    (Concat(a, b) vs Concat(b, a)) must not share entries: the signature chains the inputs' own
    signatures in order (relprop.core.reuse)."""
    from relprop.core import reuse

    rng = np.random.default_rng(11)
    la, lb = rp.Dense(rng.normal(size=(3, 4)), rng.normal(size=3)), rp.Dense(rng.normal(size=(2, 4)), rng.normal(size=2))
    head, cat, relu = rp.Dense(rng.normal(size=(3, 5)), rng.normal(size=3)), rp.Concat(), rp.ReLU()

    def wired(order):  # every layer object shared; only the order of the Concat's inputs differs
        return rp.Graph([rp.Node("a", la, ("input",)), rp.Node("b", lb, ("input",)), rp.Node("c", cat, order),
                         rp.Node("r", relu, ("c",)), rp.Node("h", head, ("r",))])
    g1, g2 = wired(("a", "b")), wired(("b", "a"))
    x = rng.normal(size=(4, 4))
    want = rp.attribute(g2, x, "gradient", target=0)
    cache = reuse.ForwardReuse(g1)
    with cache.active():
        rp.attribute(g1, x, "gradient", target=0)
        got = rp.attribute(g2, x, "gradient", target=0)
    assert_blas_close(got, want)
    assert not np.allclose(want, rp.attribute(g1, x, "gradient", target=0))  # the wiring matters here


def test_forward_reuse_step_entries_serve_only_their_own_model():
    """Entries admitted for a study step's model (``begin_step``) are not seen by another model,
    even one whose new layers could take the freed ids of the step's layers."""
    from relprop.core import reuse
    from relprop.evaluate.randomization import randomized_models

    rng = np.random.default_rng(12)
    net = rp.Sequential(rp.Dense(rng.normal(size=(6, 4)), rng.normal(size=6)), rp.ReLU(),
                        rp.Dense(rng.normal(size=(3, 6)), rng.normal(size=3)))
    x = rng.normal(size=(5, 4))
    cache = reuse.ForwardReuse(net)
    models = [m for _, m in randomized_models(net, mode="independent", seed=0)]
    other = [m for _, m in randomized_models(net, mode="independent", seed=1)]
    with cache.active():
        cache.begin_step(models[0])
        rp.attribute(models[0], x, "gradient", target=0)
        assert cache.step_entries
        got = rp.attribute(other[0], x, "gradient", target=0)
    assert_blas_close(got, rp.attribute(other[0], x, "gradient", target=0))


def test_grouped_and_dilated_convolutions_randomize_as_torch_with_their_zeros_kept():
    """A depthwise / grouped / dilated Conv2d (stored dense with structural zeros) is re-drawn with
    torch's fans of the compact weight, and its zeros stay zero (the layer's own check)."""
    import torch

    from relprop.evaluate.randomization import layer_rng, reinitialized

    for groups, dil in ((8, 1), (2, 1), (1, 2)):
        m = torch.nn.Conv2d(8, 8, 3, padding=2, groups=groups, dilation=dil)
        layer = rp.Conv2d.from_compact(m.weight.detach().numpy(), m.bias.detach().numpy(), 1, 2, groups, dil)
        new = reinitialized(layer, layer_rng(0, "c"), "torch")
        mask = layer.structure_mask()
        assert (new.weight[~mask] == 0).all()
        bound = 1 / np.sqrt(m.weight[0].numel())  # torch: 1 / sqrt(in / groups * k * k)
        assert np.abs(new.weight[mask]).max() <= bound and np.abs(new.weight[mask]).max() > 0.8 * bound
    x = np.random.default_rng(0).normal(size=(2, 8, 6, 6))
    net = rp.Sequential(layer, rp.ReLU(), rp.Flatten(), rp.Dense(np.random.default_rng(1).normal(size=(3, 8 * 6 * 6))))
    res = R.model_randomization(net, x, ["gradient"], measures=("spearman",))
    assert res.values.shape[1] == 3
