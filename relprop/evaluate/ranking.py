"""Benchmarking attribution methods and rules: faithfulness and sanity metrics, one ranking.

Every method explains the same inputs once; pixel flipping (Bach et al. 2015; Samek et al. 2017),
sensitivity-n (Ancona et al. 2018), completeness and a cascading randomization (Adebayo et al.
2018) are measured on those explanations, and each method is ranked by each metric in that
metric's direction. ``relprop.evaluate.report.benchmark_report`` writes the report folder.
"""
from __future__ import annotations

import time

import numpy as np

from .table import Table, nan_stats

#: metric -> (True when higher is better, what it measures)
METRICS = {
    "aopc_morf": (True, "AOPC of the most-relevant-first pixel-flipping curve (Samek et al. 2017): the mean drop "
                        "of the target score as the most relevant patches are removed; higher is more faithful"),
    "aopc_lerf": (False, "AOPC of the least-relevant-first curve: removing the least relevant patches first should "
                         "barely change the score; lower is better"),
    "sensitivity_n": (True, "sensitivity-n (Ancona et al. 2018): Pearson correlation between the summed attributions "
                            "of random feature subsets and the score drop when they are removed, mean over the "
                            "subset sizes; higher is better"),
    "completeness": (False, "mean |sum R - what the method should sum to| / |s_c(x)|: conservation (s_c(x)) for "
                            "the LRP family (sum R - 1, not divided, when it starts from e_c: start='one_hot'), "
                            "completeness (s_c(x) - s_c(baseline), its own baseline) for IG and DeepLIFT; not "
                            "defined (NaN, ranked last) for methods without such a property; lower is better"),
    "randomization": (False, "mean similarity (spearman_abs) to the original explanation over a cascading "
                             "randomization (Adebayo et al. 2018); lower means the method depends on the model"),
}


class BenchmarkResult:
    """What :func:`benchmark` measured: ``table`` (method, metric, value, std over samples),
    ``per_sample`` {(method, metric): (N,)}, ``curves`` {(method, order): (N, steps + 1) scores},
    ``ranking()`` (rank of each method by each metric, 1 = best), ``seconds``."""

    def __init__(self, methods, metrics, per_sample, curves, params, seconds):
        self.methods, self.metrics, self.per_sample, self.curves = methods, metrics, per_sample, curves
        self.params, self.seconds = params, seconds

    @property
    def table(self):
        cols = {k: [] for k in ("method", "metric", "value", "std", "n_valid")}
        for m in self.methods:
            for met in self.metrics:
                for k, val in zip(cols, (m, met) + nan_stats(self.per_sample[(m, met)])):
                    cols[k].append(val)
        return Table(cols)

    def ranking(self):
        """One row per method: its rank by each metric (1 = best, in the metric's direction) and
        the mean rank; rows sorted by mean rank."""
        vals = {met: np.array([nan_stats(self.per_sample[(m, met)])[0] for m in self.methods]) for met in self.metrics}
        ranks = {}
        for met, v in vals.items():
            key = -v if METRICS[met][0] else v
            key = np.where(np.isnan(key), np.inf, key)
            order = np.argsort(key, kind="stable")
            r = np.empty(len(v), np.int64)
            r[order] = np.arange(1, len(v) + 1)
            ranks[met] = r
        mean = np.mean([ranks[m] for m in self.metrics], axis=0)
        idx = np.argsort(mean, kind="stable")
        cols = {"method": [self.methods[i] for i in idx]}
        for met in self.metrics:
            cols[f"rank_{met}"] = ranks[met][idx]
        cols["mean_rank"] = mean[idx]
        return Table(cols)

    def to_pandas(self):
        return self.table.to_pandas()


def benchmark(net, x, methods, *, target=None, metrics=("aopc_morf", "aopc_lerf", "sensitivity_n", "completeness"),
              patch=None, steps=20, fill=0.0, n_sizes=None, subsets=50, seeds=(0,), seed=0, backend=None,
              batch_size=None, progress=False, check_only=False):
    """Rank methods and rules by faithfulness and sanity metrics on the same inputs.

    Parameters
    ----------
    net : relprop model
    x : array (N, ...) (images (N, C, H, W) or tabular (N, F))
    methods : as in :func:`relprop.evaluate.model_randomization`
    target : None (argmax), int or int array (N,)
    metrics : names in ``METRICS``
    patch : pixel-flipping patch side (default: 1 for tabular data, else the largest of 4, 2, 1 that
        divides H and W)
    steps : pixel-flipping steps; fill : what removed patches become (see ``pixel_flipping``)
    n_sizes : sensitivity-n subset sizes (default: 1%, 5%, 10% and 25% of the features, at least 1)
    subsets : random subsets per size; seed : their seed
    seeds : randomization seeds (metric ``"randomization"``)
    check_only : validate every parameter and return None without explaining anything

    Returns
    -------
    :class:`BenchmarkResult`
    """
    from ..runner.job import Progress
    from . import faithfulness as F
    from .randomization import _check_methods, _check_seeds, _host, _targets, model_randomization

    specs = _check_methods(methods)
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = list(metrics)
    bad = [m for m in metrics if m not in METRICS]
    if bad or not metrics or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be distinct names in {list(METRICS)}, got {bad or metrics}")
    t0 = time.perf_counter()
    x, _ = F._inputs(net, x)
    image = x.ndim == 4
    # every parameter checked before the first explanation
    if patch is None:
        patch = next((p for p in (4, 2, 1) if x.shape[-1] % p == 0 and x.shape[-2] % p == 0), 1) if image else 1
    F._layout(x, patch, "benchmark")
    steps = F._int(steps, "steps", low=1)
    subsets = F._int(subsets, "subsets", low=2)
    seed = F._int(seed, "seed", low=0)
    F._baseline(fill, x, seed, 1.0)
    seeds = _check_seeds(seeds)
    feats = (x.shape[2] * x.shape[3]) if image else int(np.prod(x.shape[1:]))
    if n_sizes is None:
        n_sizes = sorted({max(1, int(round(f * feats))) for f in (0.01, 0.05, 0.1, 0.25)})
    n_sizes = [F._int(k, "n_sizes: each size", low=1, high=feats) for k in np.atleast_1d(n_sizes).tolist()]
    if not n_sizes:
        raise ValueError("n_sizes must name at least one subset size")
    from ..explainer import Explainer

    exs = {label: Explainer(net, m, backend=backend, batch_size=batch_size, **p) for label, (m, p) in specs.items()}
    if check_only:
        return None
    T = _targets(next(iter(exs.values())), x, target)
    per, curves = {}, {}
    bar = Progress(len(specs), 0, progress, unit="method", desc="benchmark")
    try:
        for label, ex in exs.items():
            e = ex.explain(x, target=T)
            R = _host(e.attribution)
            for order in ("morf", "lerf"):
                if f"aopc_{order}" in metrics:
                    c = F.pixel_flipping(net, x, R, T, patch=patch, fill=fill, order=order, steps=steps, seed=seed,
                                         backend=backend)
                    curves[(label, order)] = c
                    per[(label, f"aopc_{order}")] = F.aopc(c)
            if "sensitivity_n" in metrics:
                sn = np.stack([F.sensitivity_n(net, x, R, T, n=k, subsets=subsets, fill=fill, seed=seed, backend=backend)
                               for k in n_sizes])
                per[(label, "sensitivity_n")] = np.array([nan_stats(c)[0] for c in sn.T])
            if "completeness" in metrics:
                # the method's own property, with its own baseline: NaN where it has none (e.g. the gradient)
                if e.error is None:
                    per[(label, "completeness")] = np.full(len(x), np.nan)
                else:
                    # relative to what the relevance sums to: s_c, or 1 from the unit start e_c
                    ref = 1.0 if e.sums_to == "one" else np.maximum(np.abs(_host(e.scores)), 1e-12)
                    per[(label, "completeness")] = np.abs(_host(e.error)) / ref
            bar.update(1)
    finally:
        bar.close()
    if "randomization" in metrics:
        res = model_randomization(net, x, specs, mode="cascading", seeds=seeds, measures=("spearman_abs",), target=T,
                                  keep_maps=0, backend=backend, batch_size=batch_size, progress=progress)
        for i, label in enumerate(res.methods):
            per[(label, "randomization")] = res.values[i, 1:, :, 0].mean(axis=(0, 1))
    params = dict(patch=patch, steps=steps, fill=fill if np.isscalar(fill) else "array", n_sizes=list(n_sizes),
                  subsets=subsets, seeds=list(seeds), seed=seed, n=len(x))
    return BenchmarkResult(list(specs), metrics, per, curves, params, time.perf_counter() - t0)
