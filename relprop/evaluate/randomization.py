"""Sanity checks: model-parameter randomization and class sensitivity.

Adebayo et al. (2018, "Sanity checks for saliency maps", Sec. 3) ask whether an explanation
depends on what the model learned: re-initialize the weights layer by layer -- *cascading*
from the top layer down, or *independently* one layer at a time -- and measure how similar the
explanation of the randomized model stays to the original one. A method whose maps stay the
same (SSIM near 1) after the top layers are destroyed explains the input, not the model.
Class sensitivity (Gu et al. 2018; Sixt et al. 2020) compares the explanations of two classes
of the same input.

The study reuses work: every model in the sequence shares the unchanged layers' objects with
the original, and :class:`relprop.core.reuse.ForwardReuse` lets the forward pass of each
method reuse the original model's outputs of every node below the randomized layers.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..core import reuse
from ..core.graph import Graph, Node
from ..explainer import Explainer
from ..methods import METHODS
from ..runner.job import Progress, parse_memory
from . import similarity
from .table import Table, nan_stats as _nan_stats

MODES = ("cascading", "independent")
INITS = ("torch", "he_normal", "glorot_uniform")
NORMALIZE = ("max", "abs_max", "minmax", "none")
REDUCE = ("sum", "abs_sum", "none")


# -- re-initialization --------------------------------------------------------------------
def weight_layers(net):
    """Names of the nodes a randomization study re-initializes (Dense, Conv2d, BatchNorm2d), in
    graph order."""
    return [n.name for n in net.nodes if n.layer.kind in ("Dense", "Conv2d", "BatchNorm2d")]


def reinitialized(layer, rng, init="torch"):
    """A new layer of ``layer``'s type and shape with freshly initialized parameters.

    ``init="torch"`` draws as PyTorch's ``reset_parameters`` does: for Dense and Conv2d,
    ``W ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` (``kaiming_uniform_`` with ``a = sqrt(5)``) and
    ``b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; ``"he_normal"``: ``W ~ N(0, 2 / fan_in)``, ``b = 0``
    (He et al. 2015); ``"glorot_uniform"``: ``W ~ U(+-sqrt(6 / (fan_in + fan_out)))``, ``b = 0``
    (Glorot & Bengio 2010). ``fan_in = C kh kw`` (Conv2d; ``C / groups x`` the real taps for a grouped
    or dilated one, whose structural zeros stay zero) or the input width (Dense). BatchNorm2d
    is reset as torch does, whatever ``init``: scale 1, shift 0, running mean 0, variance 1.
    The draws are float64, cast to the layer's dtype; the caller's layer is not touched.
    """
    kind = layer.kind
    args = {k: getattr(layer, k) for k in layer.arrays + layer.hyper}
    if kind == "BatchNorm2d":
        c = layer.weight.shape[0]
        dt = layer.weight.dtype
        args.update(weight=np.ones(c, dt), bias=np.zeros(c, dt), running_mean=np.zeros(c, dt),
                    running_var=np.ones(c, dt))
        return type(layer)(**args)
    W = layer.weight
    o = W.shape[0]
    # a grouped / dilated convolution is stored dense with structural zeros: torch's fans are
    # those of its compact weight (in / groups x k_h x k_w taps), and the zeros stay zeros
    mask = layer.structure_mask() if hasattr(layer, "structure_mask") else None
    fan_in = int(mask[0].sum()) if mask is not None else int(np.prod(W.shape[1:]))
    fan_out = int(mask[:, 0].sum()) if mask is not None else o * int(np.prod(W.shape[2:]))
    if init == "torch":
        bound = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-bound, bound, W.shape)
        b = rng.uniform(-bound, bound, o)
    elif init == "he_normal":
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), W.shape)
        b = np.zeros(o)
    else:
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-bound, bound, W.shape)
        b = np.zeros(o)
    if mask is not None:
        w = np.where(mask, w, 0.0)
    bias_dt = layer.bias.dtype if layer.bias is not None else W.dtype
    args.update(weight=w.astype(W.dtype), bias=b.astype(bias_dt))
    return type(layer)(**args)


def layer_rng(seed, name):
    """The generator of one layer's draws: the same for a (seed, layer) pair in every mode, so
    cascading and independent studies randomize a layer identically."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def with_layers(net, replace):
    """A new model: ``net`` with the nodes named in ``replace`` given new layers; every other node
    keeps its layer object (the forward reuse keys on them)."""
    nodes = [Node(n.name, replace.get(n.name, n.layer), n.inputs) for n in net.nodes]
    return Graph(nodes, input_shape=net.input_shape)


def randomized_models(net, layers=None, mode="cascading", seed=0, init="torch"):
    """Yield ``(layer name, model)`` for each step of a randomization study, top layer first.

    Cascading: step ``t`` has the top ``t`` layers re-initialized (each keeps its draw in later
    steps); independent: only the ``t``-th layer from the top. ``net`` is never modified.
    ``init``: a name in ``INITS`` (:func:`reinitialized`) or a callable ``init(name, layer, rng)``
    returning the new layer (same kind and shapes), e.g. to reproduce another library's draws.
    """
    layers = _check_layers(net, layers)
    _check_choice("mode", mode, MODES)
    _check_init(init)
    seed = _check_seed(seed)
    done = {}
    for name in reversed(layers):
        new = _draw(net.by_name[name].layer, name, seed, init)
        if mode == "cascading":
            done[name] = new
            yield name, with_layers(net, done)
        else:
            yield name, with_layers(net, {name: new})


# -- preprocessing of maps ---------------------------------------------------------------------
def prepare_maps(R, *, reduce="sum", normalize="max"):
    """Attributions -> the maps the measures compare, float64.

    ``reduce`` (image attributions (N, C, H, W)): ``"sum"`` over channels (the signed
    relevance of a pixel), ``"abs_sum"`` (sum of ``|R|``), ``"none"`` (keep channels).
    ``normalize`` per sample: ``"max"`` (divide by ``max |R|``: maps in [-1, 1]), ``"abs_max"``
    (``|R| / max |R|``: in [0, 1], Quantus's default ``abs=True, normalise=True``), ``"minmax"``
    (``(R - min) / (max - min)``), ``"none"``. All-zero maps stay zero.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 4 and reduce != "none":
        R = R.sum(axis=1) if reduce == "sum" else np.abs(R).sum(axis=1)
    n = R.shape[0]
    flat = R.reshape(n, -1)
    axes = (slice(None),) + (None,) * (R.ndim - 1)
    if normalize in ("max", "abs_max"):
        m = np.abs(flat).max(axis=1)
        m = np.where(m > 0, m, 1.0)[axes]
        R = (np.abs(R) if normalize == "abs_max" else R) / m
    elif normalize == "minmax":
        lo, hi = flat.min(axis=1)[axes], flat.max(axis=1)[axes]
        span = np.where(hi > lo, hi - lo, 1.0)
        R = (R - lo) / span
    return R


def compare(measure, a, b):
    """``measure`` (a name in ``similarity.MEASURES``) of prepared maps, averaged over any axes
    beyond the sample (e.g. channels kept with ``reduce="none"``): (N,)."""
    fn = similarity.measure(measure)
    if measure in ("ssim", "hog_pearson"):
        if a.ndim < 3:
            raise ValueError(f"measure {measure!r} compares 2-D maps: it needs image attributions (N, C, H, W) or "
                             f"(N, H, W), got maps of shape {a.shape}; use 'spearman', 'pearson' or "
                             f"'topk_intersection' for tabular inputs")
        v = fn(a, b)
    else:
        v = fn(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))
    v = np.asarray(v, np.float64)
    return v.reshape(v.shape[0], -1).mean(axis=1) if v.ndim > 1 else v


# -- the study ---------------------------------------------------------------------------------
@dataclass
class RandomizationResult:
    """What :func:`model_randomization` measured.

    Attributes
    ----------
    values : float64 (methods, steps, seeds, measures, N): per-sample similarity of each step's
        explanation to the original's (step 0: the original model itself)
    methods, layers, seeds, measures : the axes' labels (``layers[0] == "original"``)
    mode : ``"cascading"`` or ``"independent"``
    maps : float32 (methods, steps, seeds, k, ...): prepared maps of the first ``keep_maps`` samples
        (for heatmap grids), or None
    seconds : wall time of the study
    reuse : (forward nodes reused, computed) while the study ran
    method_seconds : {method: seconds spent explaining with it (originals included)}
    original_seconds : {method: seconds of its explanation of the original model}
    """

    values: np.ndarray
    methods: list
    layers: list
    seeds: list
    measures: list
    mode: str
    maps: np.ndarray = None
    seconds: float = 0.0
    reuse: tuple = (0, 0)
    params: dict = field(default_factory=dict)
    method_seconds: dict = field(default_factory=dict)
    original_seconds: dict = field(default_factory=dict)

    @property
    def table(self):
        """One row per (method, step, layer, seed, measure): ``value`` is the mean over samples,
        ``std`` the standard deviation over samples, ``n_valid`` how many samples had a defined
        value (a correlation with an all-zero or constant map is NaN and left out of the mean)."""
        cols = {k: [] for k in ("method", "step", "layer", "seed", "measure", "value", "std", "n_valid")}
        for i, m in enumerate(self.methods):
            for s, layer in enumerate(self.layers):
                for j, seed in enumerate(self.seeds):
                    for q, meas in enumerate(self.measures):
                        v = self.values[i, s, j, q]
                        mean, std, ok = _nan_stats(v)
                        for k, val in zip(cols, (m, s, layer, seed, meas, mean, std, ok)):
                            cols[k].append(val)
        return Table(cols)

    def curve(self, method, measure):
        """(mean, std) over seeds of the sample-mean similarity at each step: the curve of a
        sanity-check plot with its band (undefined, NaN, sample values left out; NaN where none
        is defined)."""
        i, q = self.methods.index(method), self.measures.index(measure)
        v = self.values[i, :, :, q]
        ok = ~np.isnan(v)
        per_seed = np.where(ok.any(-1), np.nansum(v, -1) / np.maximum(ok.sum(-1), 1), np.nan)  # (steps, seeds)
        good = ~np.isnan(per_seed)
        n = np.maximum(good.sum(1), 1)
        mean = np.where(good.any(1), np.nansum(per_seed, 1) / n, np.nan)
        std = np.sqrt(np.where(good.any(1), np.nansum((per_seed - mean[:, None]) ** 2, 1) / n, np.nan))
        return mean, std

    def to_pandas(self):
        return self.table.to_pandas()


def model_randomization(net, x, methods, *, mode="cascading", seeds=(0,), measures=("ssim", "spearman_abs"),
                        target=None, layers=None, init="torch", reduce="sum", normalize="max", keep_maps=4,
                        backend=None, batch_size=None, reuse_forward=True, max_memory="auto", progress=False):
    """Model-parameter randomization test (Adebayo et al. 2018), cascading or independent.

    Parameters
    ----------
    net : relprop model (never modified)
    x : array (N, ...) of inputs
    methods : dict label -> method name or ``(method, params)``; or a list of method names
    mode : ``"cascading"`` (top layer down, each step adds a layer) or ``"independent"`` (one
        layer at a time)
    seeds : ints; each seed re-draws the randomized weights (``layer_rng``)
    measures : names in ``relprop.evaluate.MEASURES`` (``"ssim"``, ``"spearman"``,
        ``"spearman_abs"``, ``"pearson"``, ``"hog_pearson"``, ``"topk_intersection"``)
    target : None (the original model's argmax, kept for every step), int or int array (N,)
    layers : node names to randomize (default: every Dense, Conv2d and BatchNorm2d)
    init : how a layer is re-initialized: ``"torch"`` (default), ``"he_normal"``, ``"glorot_uniform"``
        (:func:`reinitialized`) or a callable ``init(name, layer, rng) -> new layer``
    reduce, normalize : how attributions become maps (:func:`prepare_maps`)
    keep_maps : how many samples' maps to keep for pictures
    backend, batch_size : as in ``relprop.attribute``
    reuse_forward : reuse the original model's forward outputs below the randomized layers
        (results are the same either way; it only saves time)
    max_memory : bound on what the forward reuse holds: bytes, a string like ``"2GB"``, or
        ``"auto"`` (half the memory available when the study starts, :func:`available_memory`;
        integrated gradients' path points on a VGG-sized model want several GB to be reused)
    progress : show a progress bar (tqdm when installed)

    Returns
    -------
    :class:`RandomizationResult` (``.table``, ``.to_pandas()``, ``.curve(method, measure)``)
    """

    specs = _check_methods(methods)
    _check_choice("mode", mode, MODES)
    _check_init(init)
    _check_choice("reduce", reduce, REDUCE)
    _check_choice("normalize", normalize, NORMALIZE)
    seeds = _check_seeds(seeds)
    measures = _check_measures(measures)
    layers = _check_layers(net, layers)
    if isinstance(keep_maps, bool) or not isinstance(keep_maps, (int, np.integer)) or keep_maps < 0:
        raise ValueError(f"keep_maps must be an int >= 0, got {keep_maps!r}")
    _check_measures_fit(measures, x)
    if isinstance(max_memory, str) and max_memory == "auto":
        budget = _auto_budget(x, backend)
    elif isinstance(max_memory, (int, np.integer)) and not isinstance(max_memory, (bool, np.bool_)):
        if max_memory < 0:
            raise ValueError(f"max_memory must be >= 0 bytes (0: no forward reuse) or a string like '2GB', got "
                             f"{max_memory}")
        budget = int(max_memory)
    else:
        budget = parse_memory(max_memory)
    t0 = time.perf_counter()
    explainers = {label: Explainer(net, m, backend=backend, batch_size=batch_size, **p) for label, (m, p) in specs.items()}
    first = next(iter(explainers.values()))
    T = _targets(first, x, target)
    cache = reuse.ForwardReuse(net, budget) if reuse_forward else None
    steps = len(layers) + 1
    N = len(T)
    kept = min(int(keep_maps), N)
    values = np.empty((len(specs), steps, len(seeds), len(measures), N))
    bar = Progress(len(specs) * (1 + len(seeds) * len(layers)), 0, progress, unit="explanation",
                   desc="randomization")
    try:
        study = _study(explainers, specs, x, T, net, layers, mode, seeds, init, measures, reduce, normalize, kept,
                       cache, bar, backend, batch_size, values)
    finally:
        bar.close()
        if cache is not None:
            cache.clear()
    maps, spent, originals_s = study
    return RandomizationResult(values, list(specs), ["original"] + list(reversed(layers)), list(seeds), list(measures),
                               mode, maps, time.perf_counter() - t0,
                               (cache.hits, cache.misses) if cache is not None else (0, 0),
                               dict(init=init if isinstance(init, str) else "callable", reduce=reduce,
                                    normalize=normalize, n=N, reuse_bytes=budget), spent, originals_s)


def _study(explainers, specs, x, T, net, layers, mode, seeds, init, measures, reduce, normalize, kept, cache, bar,
           backend, batch_size, values):
    """The loop of :func:`model_randomization` (arguments checked there); fills ``values``."""
    maps = None
    with (cache.active() if cache is not None else _nothing()):
        originals = {}
        spent = dict.fromkeys(specs, 0.0)
        for i, (label, ex) in enumerate(explainers.items()):
            t1 = time.perf_counter()
            originals[label] = prepare_maps(_host(ex.attribute(x, target=T)), reduce=reduce, normalize=normalize)
            spent[label] += time.perf_counter() - t1
            bar.update(1)
            for j in range(len(seeds)):
                for q, meas in enumerate(measures):
                    values[i, 0, j, q] = compare(meas, originals[label], originals[label])
        originals_s = dict(spent)
        steps = values.shape[1]
        if kept:
            shape = originals[next(iter(originals))][:kept].shape
            maps = np.empty((len(specs), steps, len(seeds)) + shape, np.float32)
            for i, label in enumerate(specs):
                maps[i, 0] = originals[label][:kept]
        for j, seed in enumerate(seeds):
            for s, (name, model) in enumerate(randomized_models(net, layers, mode, seed, init), start=1):
                if cache is not None:
                    cache.begin_step(model)
                for i, (label, (m, p)) in enumerate(specs.items()):
                    t1 = time.perf_counter()
                    ex = Explainer(model, m, backend=backend, batch_size=batch_size, **p)
                    R = prepare_maps(_host(ex.attribute(x, target=T)), reduce=reduce, normalize=normalize)
                    spent[label] += time.perf_counter() - t1
                    for q, meas in enumerate(measures):
                        values[i, s, j, q] = compare(meas, originals[label], R)
                    if kept:
                        maps[i, s, j] = R[:kept]
                    bar.update(1)
    return maps, spent, originals_s


def class_sensitivity(net, x, methods, *, classes="top2", target=None, seed=0, measures=("ssim", "spearman"),
                      reduce="sum", normalize="max", backend=None, batch_size=None):
    """Similarity between the explanations of two classes of the same input (Gu et al. 2018;
    Sixt et al. 2020, "When explanations lie", the random-logit test): a class-sensitive method
    gives dissimilar maps.

    ``classes``: ``"top2"`` (the two highest scores of each sample), ``"random"`` (``target``, or
    the argmax, against a class drawn uniformly among the others with
    ``np.random.default_rng(seed)``: Quantus's RandomLogit, with its own random stream), or an
    int array (N, 2). Both classes are explained in one forward pass (``targets=``). Returns a
    :class:`Table` with one row per (method, measure): ``value`` the mean over samples, ``std``
    over samples, ``n_valid``; the per-sample values in its ``per_sample`` attribute (methods,
    measures, N) and the class pairs in ``classes``.
    """
    specs = _check_methods(methods)
    measures = _check_measures(measures)
    _check_measures_fit(measures, x)
    _check_choice("reduce", reduce, REDUCE)
    _check_choice("normalize", normalize, NORMALIZE)
    _check_seed(seed)
    if target is not None and not (isinstance(classes, str) and classes == "random"):
        raise ValueError("target= goes with classes='random' (the explained class against a random other one); with "
                         "'top2' or an array of pairs, the classes are already given")
    exs = {label: Explainer(net, m, backend=backend, batch_size=batch_size, **p) for label, (m, p) in specs.items()}
    first = next(iter(exs.values()))
    n = len(x)
    if isinstance(classes, str):
        if classes not in ("top2", "random"):
            raise ValueError(f"classes must be 'top2', 'random' or an int array (N, 2), got {classes!r}")
        from ..core.execute import scores

        s = _host(scores(net, x, backend=backend, batch_size=batch_size))
        k = s.shape[1]
        if k < 2:
            raise ValueError(f"class sensitivity needs a model with >= 2 outputs, got {k}")
        if classes == "top2":
            C = np.argsort(-s, axis=1, kind="stable")[:, :2]
        else:
            first = np.argmax(s, axis=1) if target is None else _targets(first, x, target)
            if first.min() < 0 or first.max() >= k:
                raise ValueError(f"target must lie in 0..{k - 1}, got {target!r:.80}")
            other = np.random.default_rng(_check_seed(seed)).integers(0, k - 1, n)
            other = other + (other >= first)  # uniform over the k - 1 classes != first
            C = np.stack([first, other], axis=1)
    else:
        C = np.asarray(classes)
        if C.shape != (n, 2) or not np.issubdtype(C.dtype, np.integer):
            raise ValueError(f"classes must be 'top2', 'random' or an int array of shape ({n}, 2), got {C.shape} {C.dtype}")
    per = np.empty((len(specs), len(measures), n))
    cols = {k: [] for k in ("method", "measure", "value", "std", "n_valid")}
    for i, (label, ex) in enumerate(exs.items()):
        R = _host(ex.attribute(x, targets=C))  # (N, 2, ...)
        a = prepare_maps(R[:, 0], reduce=reduce, normalize=normalize)
        b = prepare_maps(R[:, 1], reduce=reduce, normalize=normalize)
        for q, meas in enumerate(measures):
            per[i, q] = compare(meas, a, b)
            mean, std, ok = _nan_stats(per[i, q])
            for k, v in zip(cols, (label, meas, mean, std, ok)):
                cols[k].append(v)
    t = Table(cols)
    t.per_sample = per
    t.classes = C
    t.pairs = classes if isinstance(classes, str) else "given"
    return t


# -- checks and small helpers ------------------------------------------------------------------
def _auto_budget(x, backend):
    """Half the memory available where the cached arrays live: the device's free memory when the
    study runs on a GPU (a quarter: the kernels need the rest), the host's otherwise."""
    from ..core import backend as B

    on_device = backend == "gpu" or (backend is None and B.is_device(B.kernels_for(x)))
    if on_device:
        try:
            import cupy

            return int(cupy.cuda.runtime.memGetInfo()[0]) // 4
        except Exception:  # noqa: BLE001 - no device to ask: be modest
            return 1 << 30
    return available_memory() // 2


def available_memory(default=4 << 30):
    """Bytes of memory available now (``MemAvailable`` of ``/proc/meminfo``; ``default`` where
    the system does not say)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return int(default)


def _check_init(init):
    if not callable(init):
        _check_choice("init", init, INITS)


def _draw(layer, name, seed, init):
    rng = layer_rng(seed, name)
    if not callable(init):
        return reinitialized(layer, rng, init)
    new = init(name, layer, rng)
    if type(new) is not type(layer) or any(getattr(new, a) is not None and np.shape(getattr(new, a)) != np.shape(getattr(layer, a))
                                           for a in layer.arrays):
        raise ValueError(f"init({name!r}, ...) must return a {type(layer).__name__} with the shapes of the layer it "
                         f"replaces, got {new!r:.80}")
    if new is layer:
        raise ValueError(f"init({name!r}, ...) returned the layer itself; return a new layer object (the caller's "
                         f"model is never modified)")
    return new


def _check_choice(what, value, valid):
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"{what} must be one of {list(valid)}, got {value!r}")


def _check_methods(methods):
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, (list, tuple)):
        if len(set(methods)) != len(methods) or not all(isinstance(m, str) for m in methods):
            raise TypeError(f"a list of methods must hold distinct method names, got {methods!r:.80}")
        methods = {m: m for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise TypeError(f"methods must be a non-empty dict label -> method or (method, params), or a list of method "
                        f"names, got {methods!r:.80}")
    specs = {}
    for label, spec in methods.items():
        if isinstance(spec, str):
            spec = (spec, {})
        if (not isinstance(spec, tuple) or len(spec) != 2 or not isinstance(spec[0], str)
                or not isinstance(spec[1], dict)):
            raise TypeError(f"methods[{label!r}] must be a method name or (method name, params dict), got {spec!r:.80}")
        if spec[0] not in METHODS:
            raise ValueError(f"methods[{label!r}]: unknown method {spec[0]!r}; see relprop.METHODS")
        specs[str(label)] = spec
    return specs


def _check_seed(seed, what="seed"):
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what} must be an int >= 0, got {seed!r}")
    return int(seed)


def _check_seeds(seeds):
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, (bool, np.bool_)):
        seeds = (seeds,)
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints >= 0, got {seeds!r}")
    seeds = list(seeds)
    for s in seeds:
        _check_seed(s, "seeds: each seed")
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints >= 0, got {seeds!r}")
    return seeds


_MIN_MAP = {"ssim": 7, "hog_pearson": 24}  # SSIM's 7x7 window; HOG's 3x3 blocks of 8x8-pixel cells


def _check_measures_fit(measures, x):
    """2-D measures need image attributions large enough for their window: refuse them for other
    inputs before any explanation."""
    shape = tuple(np.shape(x))
    for m in measures:
        if m not in _MIN_MAP:
            continue
        if len(shape) < 3:
            raise ValueError(f"measure {m!r} compares 2-D maps: it needs image inputs (N, C, H, W) or (N, H, W), got "
                             f"x of shape {shape}; use 'spearman', 'pearson' or 'topk_intersection' for "
                             f"tabular inputs")
        if min(shape[-2:]) < _MIN_MAP[m]:
            raise ValueError(f"measure {m!r} needs maps of at least {_MIN_MAP[m]}x{_MIN_MAP[m]} pixels, got "
                             f"{shape[-2]}x{shape[-1]}; use 'spearman' or 'pearson' for small maps")


def _check_measures(measures):
    if isinstance(measures, str):
        measures = (measures,)
    measures = list(measures)
    if not measures:
        raise ValueError("measures must name at least one measure")
    for m in measures:
        similarity.measure(m)  # raises with the valid names
    if len(set(measures)) != len(measures):
        raise ValueError(f"measures are given twice: {measures}")
    return measures


def _check_layers(net, layers):
    if not isinstance(net, Graph):
        raise TypeError(f"net must be a relprop model (rp.Sequential or rp.Graph), got {type(net).__name__}")
    valid = weight_layers(net)
    if layers is None:
        layers = valid
    else:
        layers = [layers] if isinstance(layers, str) else list(layers)
        bad = [n for n in layers if n not in valid]
        if bad or not layers:
            raise ValueError(f"layers must name weight layers of the model ({valid}), got {bad or layers}")
        layers = [n for n in valid if n in set(layers)]  # graph order
    if not layers:
        raise ValueError("the model has no weight layer (Dense, Conv2d, BatchNorm2d) to randomize")
    return layers


def _targets(ex, x, target):
    """The classes explained at every step: (N,) ints (the original model's argmax for None)."""
    if target is None:
        from ..core.execute import scores

        return np.argmax(_host(scores(ex.net, x, backend=ex.backend, batch_size=ex.batch_size)), axis=1)
    t = np.asarray(_host(target))
    n = len(x)
    if not np.issubdtype(t.dtype, np.integer) or t.ndim > 1 or (t.ndim == 1 and len(t) != n):
        raise ValueError(f"target must be None, an int or an int array: a target array must have shape ({n},), got "
                         f"{target!r:.80}")
    return np.broadcast_to(t, (n,)).astype(np.int64)


def _host(a):
    if hasattr(a, "get"):
        return a.get()
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False
