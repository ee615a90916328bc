"""``Explainer``: a method compiled for a model, and ``Explanation``: what one call returns.

``rp.Explainer(net, method, **params)`` checks the method and its parameters once and keeps
what the (model, method, parameters, dtype, backend) needs across calls: the model's derived
weights for each dtype (``relprop.core.plan.Compiled``: rule states, stacked and transposed
weights, device copies), the method's declaration (``relprop.methods.base.Method``) and its
validated parameters. ``ex(x, target=...)`` returns the attributions; ``ex.explain(x, ...)``
returns an :class:`Explanation` with the targets used, their scores and the conservation /
completeness error where the method defines one. ``rp.attribute`` is a one-shot Explainer.

An Explainer can be pickled (e.g. to send it to Dask workers): it travels as the model, the
method name and the parameters; the receiving process derives the weights again.
"""
from __future__ import annotations

import copy
import difflib
import numbers
from dataclasses import dataclass

import numpy as np

from .core import backend as B
from .core import engine
from .core import rules as R
from .core.checks import (_check_model, _check_seed, _check_target, _check_targets, _check_x,
                          _reads_input_directly)
from .core import budget, dense_chain
from .core.execute import check_batch_size, page_aligned, row_bytes, run_batches, to_backend
from .core.plan import DEEPLIFT, compiled
from .methods import METHODS
from .methods import smoothgrad as SG
from .methods.base import Context, run_targets, sums_to as _sums_to


@dataclass
class Explanation:
    """The result of :meth:`Explainer.explain`.

    Attributes
    ----------
    attribution : array (N, ...) for ``target=``, (N, K, ...) for ``targets=``
    targets : int array (N,) or (N, K): the classes explained (the argmax where none was given)
    scores : array of the shape of ``targets``: the model's score ``s_c(x)`` of each target
    method : str
    params : dict: the parameters the method ran with (defaults filled in, the seed drawn
        when ``seed=None``)
    sums_to : ``"score"`` (conservation, ``sum R = s_c(x)``), ``"one"`` (conservation from the
        unit start ``e_c``, ``sum R = 1``: the LRP family with ``start="one_hot"``), ``"delta"``
        (completeness, ``sum R = s_c(x) - s_c(baseline)``) or None
    error : array of the shape of ``targets``, or None: ``sum R`` minus what it should sum to
        (None when the method defines no such property)
    """

    attribution: object
    targets: np.ndarray
    scores: np.ndarray
    method: str
    params: dict
    sums_to: str = None
    error: np.ndarray = None

    def __repr__(self):
        err = "" if self.error is None else f", max |error| {float(np.max(np.abs(self.error))):.3g}"
        return (f"Explanation({self.method}, attribution {tuple(self.attribution.shape)} "
                f"{self.attribution.dtype}, targets {tuple(self.targets.shape)}{err})")


def _check_method_name(method, names):
    if not isinstance(method, str) or method not in names:
        close = difflib.get_close_matches(str(method), list(names), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {method!r}{hint} (available: {', '.join(names)})")


def _check_param_names(method, params, extra=""):
    unknown = [k for k in params if k not in method.params]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(method.params), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(method.params) or "none"
        raise TypeError(f"method {method.name!r} got an unknown parameter {k!r}{hint} (its parameters: {known}){extra}")


class Explainer:
    """A method compiled for a model.

    Parameters
    ----------
    net : relprop model (``rp.Sequential`` / ``rp.Graph``)
    method : str, one of ``rp.METHODS``
    batch_size : None / ``"auto"`` (rows per internal batch chosen from the memory budget of
        ``relprop.core.execute.Budget``) or an int >= 1. Results do not depend on it.
    backend : None (run where ``x`` lives), ``"cpu"`` or ``"gpu"``
    allow_tf32 : let float32 GEMMs on the GPU use TF32 tensor cores (results then agree with
        fp32 to ~1e-3 x max|R|). Off by default.
    **params : the method's parameters (``rp.METHODS[method].params`` lists them with defaults)

    Examples
    --------
    >>> ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat())   # doctest: +SKIP
    >>> R = ex(x)                                   # (N, ...) for each sample's argmax   # doctest: +SKIP
    >>> e = ex.explain(x, targets=[0, 3])           # Explanation, attribution (N, 2, ...) # doctest: +SKIP
    """

    def __init__(self, net, method, *, batch_size=None, backend=None, allow_tf32=False, **params):
        _check_model(net)
        _check_method_name(method, METHODS)
        if backend not in (None, "cpu", "gpu"):
            raise ValueError(f"backend must be None, 'cpu' or 'gpu', got {backend!r}")
        if not isinstance(allow_tf32, (bool, np.bool_)):
            raise TypeError(f"allow_tf32 must be True or False, got {allow_tf32!r}")
        self.net = net
        self.method = METHODS[method]
        self.batch_size = check_batch_size(batch_size)
        self.backend = backend
        self.allow_tf32 = bool(allow_tf32)
        self.base = None
        if self.method.wrapper:
            own = {k: params.pop(k) for k in list(params) if k in self.method.params}
            self.own = {**self.method.params, **own}
            extra = self.own.pop("base_params")
            if extra is None:
                extra = {}
            if not isinstance(extra, dict):
                raise TypeError(f"smoothgrad: base_params must be a dict of the base method's parameters, got "
                                f"{type(extra).__name__}")
            both = sorted(set(extra) & set(params))
            if both:
                raise TypeError(f"smoothgrad: {both[0]!r} given both as a keyword and in base_params")
            params = {**params, **extra}
            base = self.own["base"]
            names = [n for n, mm in METHODS.items() if not mm.wrapper]
            if base in METHODS and METHODS[base].averages_noise:
                raise ValueError(f"smoothgrad: base={base!r} already averages over random draws (noise included "
                                 f"for gradient_shap); use its own samples= (and stdevs=) instead of wrapping it")
            _check_method_name(base, names)
            self.base = METHODS[base]
            SG.check(self.own)
            _check_seed("smoothgrad", self.own["seed"])
            _check_param_names(self.base, params, f" (smoothgrad's own parameters: {', '.join(self.method.params)})")
            self.params = {**self.base.params, **params}
        else:
            _check_param_names(self.method, params)
            self.params = {**self.method.params, **params}
        # the parameter values that do not depend on the input, checked now (again, with x, per call)
        if self.runs.validate is not None:
            self.runs.validate(net, None, dict(self.params))
        if self.runs.random:
            _check_seed(self.runs.name, self.params.get("seed"))
        self._compiled = {}

    # -- pickling: the model, the method's name and the parameters ----------------------
    def __getstate__(self):
        st = dict(self.__dict__)
        st["method"] = self.method.name
        st["base"] = None if self.base is None else self.base.name
        st["_compiled"] = {}
        return st

    def __setstate__(self, st):
        st["method"] = METHODS[st["method"]]
        st["base"] = None if st["base"] is None else METHODS[st["base"]]
        self.__dict__.update(st)

    def __repr__(self):
        name = self.method.name if self.base is None else f"smoothgrad({self.base.name})"
        return f"Explainer({name}, {len(self.net.nodes)} nodes)"

    @property
    def configured_seed(self):
        """The seed given for the random draws (smoothgrad's own for smoothgrad), or None."""
        return self.own["seed"] if self.base is not None else self.params.get("seed")

    @property
    def sums_to(self):
        """What ``sum R`` should equal for this method and parameters (``Explanation.sums_to``):
        ``"score"``, ``"one"``, ``"delta"`` or None (None under smoothgrad)."""
        return None if self.base is not None else _sums_to(self.method, self.params)

    @property
    def runs(self):
        """The declaration of the method that runs per copy (the base of smoothgrad)."""
        return self.base or self.method

    # -- dataset jobs -----------------------------------------------------------------------
    def map(self, source, out=None, *, target=None, targets=None, batch_size="auto", max_memory="2GB",
            progress=True, overwrite=False, dtype=None, n=None, labels=None, scheduler=None, **source_options):
        """Explain a whole dataset, streaming it through the kernels chunk by chunk.

        Parameters
        ----------
        source : a numpy array (or memory map), a path to a ``.npy`` file, a zarr array or
            ``.zarr`` path, IDX files (``*-idx3-ubyte[.gz]``, the MNIST family), a folder of
            images (one sub-folder per class), or any iterable of batches ``x`` / ``(x, y)``
            (numpy or torch; a torch ``DataLoader`` works unchanged, without shuffling)
        out : None (results in memory), a folder (``.npy`` files, memory-mappable) or a path
            ending in ``.zarr`` (chunked, compressed). Resumable: a rerun of the same job
            continues where a killed one stopped; another job's store is refused unless
            ``overwrite=True``.
        target : ``"pred"``/None (each sample's argmax), ``"label"`` (the source's labels),
            a class index, or an int array (n,); ``targets=``: several classes (a list,
            ``"all"`` or an int array (n, K)), giving attributions (n, K, ...)
        batch_size : samples per chunk (the unit of reading, writing and resuming), or
            ``"auto"``: from ``max_memory`` (bytes or ``"2GB"``), which bounds what the job
            holds besides the interpreter and the model
        progress : a progress bar with samples/s and ETA (plain lines when not on a terminal)
        dtype : float32 (default; float64 for a float64 source) or float64
        n : the number of samples of an iterable without a length
        labels : int array (n,) or a labels file, for ``target="label"`` on an array source
        scheduler : a ``dask.distributed`` Client or its address (``"tcp://host:port"``): the
            chunks run on the cluster's workers, which write the store (a path all of them see)
        **source_options : for images and IDX files (``size=``, ``mode=``, ``mean=``,
            ``std=``, ``scale=``; see :mod:`relprop.runner.images`)

        Returns
        -------
        :class:`relprop.runner.Attributions`: the store's ``attributions``, ``targets``,
        ``scores``, ``error`` (``sum R`` minus what the method sums to, when it defines it) and
        ``meta`` (method, parameters, model fingerprint, relprop version, source, dtype)

        Examples
        --------
        >>> ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat())      # doctest: +SKIP
        >>> res = ex.map("images.npy", out="attr/", target="pred")                    # doctest: +SKIP
        >>> res.attributions.shape, res.error.max()                                   # doctest: +SKIP
        """
        from .runner.job import run_job

        return run_job(self, source, out, target=target, targets=targets, batch_size=batch_size,
                       max_memory=max_memory, progress=progress, overwrite=overwrite, dtype=dtype, n=n,
                       labels=labels, scheduler=scheduler, **source_options)

    def with_seed(self, seed=None):
        """This Explainer with the random method's seed fixed (``seed``, or a fresh one when the
        seed is None): what a dataset job runs with, so all its chunks share one seed. Returns
        ``self`` for methods that draw no random numbers."""
        if not (self.method.random or self.runs.random):
            return self
        cur = self.configured_seed
        if seed is None:
            seed = cur if cur is not None else int(np.random.SeedSequence().entropy)
        _check_seed(self.runs.name, seed)
        new = copy.copy(self)
        new._compiled = self._compiled
        if self.base is not None:
            new.own = {**self.own, "seed": int(seed)}
        else:
            new.params = {**self.params, "seed": int(seed)}
        return new

    def for_rows(self, start, stop, n, ndim):
        """This Explainer for rows ``start:stop`` of a dataset of ``n`` samples of rank ``ndim``
        (batch axis included): the method's per-sample array parameters that hold one row per
        sample of the dataset (e.g. a baseline per sample) cut to those rows. The derived
        weights are shared."""
        keys = [k for k in self.runs.per_sample
                if getattr(self.params.get(k), "ndim", None) == ndim and self.params[k].shape[0] == n and n > 1]
        if not keys:
            return self
        new = copy.copy(self)
        new._compiled = self._compiled
        new.params = {**self.params, **{k: self.params[k][start:stop] for k in keys}}
        return new

    def job_params(self):
        """The parameters identifying this Explainer's results (those of smoothgrad and its base)."""
        if self.base is None:
            return dict(self.params)
        return {**self.own, "base_params": dict(self.params)}

    # -- calls ----------------------------------------------------------------------------
    def __call__(self, x, target=None, targets=None, row_offset=0):
        return self.attribute(x, target=target, targets=targets, row_offset=row_offset)

    def attribute(self, x, target=None, targets=None, row_offset=0):
        """Attributions of ``x`` (N, ...): same shape and dtype (and array type) as ``x`` for
        ``target=`` (None: each sample's argmax, an int, or an int array (N,)); (N, K, ...)
        for ``targets=`` (a list of K classes, ``"all"``, or an int array (N, K)).
        ``row_offset``: the global index of x's first row (random methods draw per sample
        from ``seed`` and that index, so a dataset explained in chunks equals one call)."""
        return self._call(x, target, targets, row_offset, explain=False)

    def explain(self, x, target=None, targets=None, row_offset=0):
        """Like :meth:`attribute`, returning an :class:`Explanation`."""
        return self._call(x, target, targets, row_offset, explain=True)

    def _call(self, x, target, targets, row_offset, explain, checked=False, out=None):
        """``attribute`` / ``explain``; ``checked``: every entry of ``x`` is known to be finite
        (a dataset job's reader thread looked), so it is not looked at again; ``out``: a C-order
        numpy array (N, K, ...) of ``x``'s dtype the results are written into (a dataset job's
        in-memory column), else None."""
        if targets is not None and target is not None:
            raise TypeError("give either target= (one class per sample) or targets= (several classes), not both")
        if isinstance(row_offset, (bool, np.bool_)) or not isinstance(row_offset, numbers.Integral):
            raise TypeError(f"row_offset must be an int >= 0 (the global index of x's first row), got {row_offset!r}")
        if row_offset < 0:
            raise ValueError(f"row_offset must be >= 0 (the global index of x's first row), got {row_offset}")
        x, back = to_backend(x, self.backend)
        k = B.kernels_for(x)
        self._check_backend(k)
        x, shapes = _check_x(self.net, x, finite=not checked)
        n = x.shape[0]
        classes = shapes[self.net.score_node][0]
        T, single = self._targets(target, targets, n, classes)
        p = self._validated(x)
        seed = self._seed()
        m = self._compiled.get(x.dtype)
        if m is None or m.version != self.net.version:
            m = self._compiled[x.dtype] = compiled(self.net, x.dtype)
        kk = 1 if T is None else T.shape[1]
        step, per, chain = self._engine_rows(m, p, k, shapes, x.itemsize, kk, n)
        step = self.batch_size or step
        # the Dense-chain kernel writes each batch's result into its rows of the output (no copy)
        dest = page_aligned((n, kk) + x.shape[1:], x.dtype) if chain else None
        if out is not None:
            if not (isinstance(out, np.ndarray) and isinstance(x, np.ndarray) and out.shape == (n, kk) + x.shape[1:]
                    and out.dtype == x.dtype and out.flags.c_contiguous and out.flags.writeable):
                raise ValueError(f"out must be a writable C-order numpy array {(n, kk) + x.shape[1:]} of {x.dtype}, "
                                 f"got {type(out).__name__} {getattr(out, 'shape', '')} {getattr(out, 'dtype', '')}")
            dest = out
        expand = budget.BUDGET.expand_rows(per)
        per_sample = self.runs.per_sample

        # a traversal's forward pass yields the scores explain() reports: kept, not recomputed
        keep_scores = explain and self.base is None and self.method.mode is not None
        scores = []

        def batch(sl, st):
            ctx = Context(m, shapes, int(row_offset) + sl.start, seed, max(st, 1), expand,
                          dest=None if dest is None else dest[sl])
            tb = None if T is None else T[sl]
            r = self._run(ctx, x[sl], tb, _slice(p, per_sample, x, sl))
            if keep_scores:
                scores.append((sl, ctx.score, ctx.picked))
            return r

        # overflow shows up as a non-finite result, which raises below, naming where: no numpy warnings
        with B.tf32(k, self.allow_tf32), B.LOCK, np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = run_batches(m, x, step, (self.runs.name, "multi" if not single else "one"), batch, dest)
            total = _row_totals(k, out) if explain and self.sums_to is not None else None
            # finite totals (float64 sums) mean finite entries; otherwise (or without totals) look at each
            if not (total is not None and bool(k.xp.isfinite(total).all())) and not bool(k.xp.isfinite(out).all()):
                self._nonfinite(m, x, shapes, out)
            if not explain:
                return back(out[:, 0] if single else out)
            score = picked = None
            if keep_scores and sum(sl.stop - sl.start for sl, _, _ in scores) == n:  # (no retried batch)
                parts = sorted(scores, key=lambda t: t[0].start)
                score = k.xp.concatenate([sc for _, sc, _ in parts]) if len(parts) > 1 else parts[0][1]
                if T is None and all(pk is not None for _, _, pk in parts):  # the argmax the traversal took
                    picked = k.xp.concatenate([pk for _, _, pk in parts]) if len(parts) > 1 else parts[0][2]
            return self._explanation(m, x, shapes, out, T if picked is None else picked, single, p, seed, back,
                                     step, score, total)

    def _engine_rows(self, m, p, k, shapes, itemsize, targets, n):
        """(rows of one internal batch, bytes per row it holds, whether the Dense-chain kernel
        runs it) for compiled model ``m`` on kernels ``k`` and a call of ``n`` rows: the memory
        policy's rows for all node outputs, or, for an MLP's traversal run in tiles by the
        Dense-chain kernel, for its inputs, scores and ``targets`` results -- at least the kernel's
        ``MIN_ROWS``, so every batch takes it."""
        per = row_bytes(shapes, itemsize) * (2 if self.runs.mode == DEEPLIFT else 1)
        if self.base is None and self.runs.mode is not None and n >= dense_chain.MIN_ROWS:
            chain = dense_chain.row_bytes(m, self.runs, p, k, shapes, itemsize, targets)
            if chain is not None:
                return max(dense_chain.MIN_ROWS, budget.BUDGET.rows(chain, False, chain=True)), chain, True
        return budget.BUDGET.rows(per, B.is_device(k)), per, False

    def with_batch_size(self, batch_size):
        """This Explainer with another internal batch size (the derived weights shared)."""
        new = copy.copy(self)
        new._compiled = self._compiled
        new.batch_size = check_batch_size(batch_size)
        return new

    def _run(self, ctx, x, T, p):
        if self.base is not None:
            own = self.own
            return SG.smoothgrad(ctx, x, T, self.base, p, own["samples"], float(own["sigma"]), own["kind"], ctx.seed)
        return run_targets(ctx, x, T, self.method, p)

    def _check_backend(self, k):
        if B.is_device(k):
            for mm, what in ((None if self.base else self.method, None), (self.base, "smoothgrad around")):
                if mm is not None and "gpu" not in mm.backends:
                    gpu = sorted(n for n, d in METHODS.items() if "gpu" in d.backends)
                    name = f"{what} {mm.name!r}" if what else repr(mm.name)
                    raise NotImplementedError(
                        f"method {name} runs on the CPU backend only in this version; pass a numpy array or "
                        f"backend='cpu' (GPU methods: {', '.join(gpu)})")

    def _targets(self, target, targets, n, classes):
        """(targets (N, K) int64 or None for the argmax, True when the call was ``target=``)."""
        if targets is None:
            t = _check_target(target, n, classes)
            return (None if t is None else t[:, None]), True
        tk = _check_targets(targets, n, classes)
        if tk.ndim == 2:
            return tk, False
        return np.ascontiguousarray(np.broadcast_to(tk, (n, len(tk)))), False

    def _validated(self, x):
        mm = self.runs
        p = dict(self.params)
        if mm.validate is not None:
            p = mm.validate(self.net, x, p)
        if self.base is not None:
            for node, rule in zip(self.net.linear_nodes(), p.get("rules") or ()):
                if isinstance(rule, R.ZBox) and _reads_input_directly(self.net, node):
                    raise ValueError(f"smoothgrad: the base method's z^B rule on layer {node.name!r} needs its input "
                                     f"inside [low, high], but the noisy copies x + noise leave any box that holds x; "
                                     f"use a composite without a z^B input layer (e.g. EpsilonPlusFlat) under "
                                     f"smoothgrad")
        return p

    def _seed(self):
        """The seed of this call's random draws (drawn fresh when the method's seed is None)."""
        seed = self.configured_seed
        if not (self.method.random or self.runs.random):
            return None
        return int(np.random.SeedSequence().entropy) if seed is None else int(seed)

    def _nonfinite(self, m, x, shapes, out):
        """Raise, naming the first layer whose forward output is not finite (or the backward pass),
        from one forward pass of the first sample whose attribution is not finite."""
        xp = B.kernels_for(x).xp
        bad = int(B.to_host(xp.argwhere(~(xp.isfinite(out.reshape(out.shape[0], -1)).all(axis=1)))[0, 0]))
        keep = {nd.name for nd in self.net.nodes}
        _, _, tape = engine.forward(m, x[bad:bad + 1], keep, (), shapes)
        where = "in the backward pass (the relevance or multipliers overflowed the dtype)"
        for nd in self.net.nodes:
            a = tape.out.get(nd.name)
            if a is not None and not bool(xp.isfinite(a).all()):
                where = f"at layer {nd.name!r} ({nd.layer.kind}) in the forward pass"
                break
        raise ValueError(f"method {self.method.name!r}: the attribution of sample {bad} is not finite; it became "
                         f"Inf/NaN {where} (x range [{float(x.min()):.3g}, {float(x.max()):.3g}] in {x.dtype}); "
                         f"rescale x or use float64")

    def _scores(self, m, x, shapes, step):
        """Score rows (N, classes) of ``x`` in internal batches (the execution layer's)."""
        return run_batches(m, x, step, ("scores",),
                           lambda sl, st: engine.forward(m, x[sl], (self.net.score_node,), (), shapes)[0])

    def _explanation(self, m, x, shapes, out, T, single, p, seed, back, step, score=None, total=None):
        xp = B.kernels_for(x).xp
        ctx = Context(m, shapes, rows=step)
        if score is None:
            score = self._scores(m, x, shapes, step)
        if T is None:
            T = score.argmax(axis=1)[:, None]
        T = xp.asarray(T)
        rows = xp.arange(x.shape[0])[:, None]
        s = score.reshape(-1).take(rows * score.shape[1] + T)  # score[rows, T], one flat gather
        mm = self.method if self.base is None else None
        sums_to = self.sums_to
        error = None
        if sums_to is not None:
            ref = s
            if sums_to == "one":  # the start e_c carries relevance 1
                ref = xp.ones_like(s)
            elif sums_to == "delta":
                ref = s - self._baseline_scores(ctx, x, p, mm)[rows, T]
            if total is None:
                total = _row_totals(B.kernels_for(x), out)
            error = B.to_host(total - ref)
        if self.base is None:
            params = dict(self.params)
            if "seed" in params and seed is not None:
                params["seed"] = seed
        else:  # smoothgrad's own parameters, the base's beside them
            params = {**self.own, "seed": seed, "base_params": dict(self.params)}
        pick = (lambda a: a[:, 0]) if single else (lambda a: a)
        return Explanation(back(pick(out)), B.to_host(pick(T)), B.to_host(pick(s)), self.method.name, params, sums_to,
                           None if error is None else pick(error))

    def _baseline_scores(self, ctx, x, p, mm):
        """The scores the completeness reference subtracts: at the baseline (broadcast to x), or
        the mean over the baselines of a distribution."""
        xp = B.kernels_for(x).xp
        b = p[mm.baseline_param]
        if mm.baseline_param == "baselines":
            sc = self._scores(ctx.m, xp.ascontiguousarray(xp.asarray(b, dtype=x.dtype)), ctx.shapes, ctx.rows)
            return xp.broadcast_to(sc.astype(np.float64).mean(axis=0), (x.shape[0], sc.shape[1]))
        x0 = xp.ascontiguousarray(xp.broadcast_to(xp.asarray(b, dtype=x.dtype), x.shape))
        return self._scores(ctx.m, x0, ctx.shapes, ctx.rows)


def _row_totals(k, out):
    """``sum R`` per sample and target of results ``out`` (N, K, ...), accumulated in float64 in
    one pass (the backend's ``row_sums``): (N, K)."""
    flat = k.xp.ascontiguousarray(out.reshape(out.shape[0] * out.shape[1], -1))
    total = k.xp.empty(flat.shape[0], np.float64)
    k.row_sums(flat, total)
    return total.reshape(out.shape[:2])


def _slice(p, names, x, sl):
    """Per-batch slices of array parameters that follow the batch axis (baselines, fills)."""
    out = dict(p)
    for key in names:
        b = p.get(key)
        if hasattr(b, "ndim") and b.ndim == x.ndim and b.shape[0] == x.shape[0] and x.shape[0] > 1:
            out[key] = b[sl]
    return out
