"""The public entry points: ``attribute`` and ``forward``, with all input validation.

Everything a user passes is checked here, once, before any kernel runs; the message says
what was received, where, and what was expected.
"""
from __future__ import annotations

import difflib

import numpy as np

from .core import backend, engine
from .core import composites as C
from .core import rules as R
from .core.checks import (_check_baseline, _check_bounds, _check_model, _check_target, _check_x, _number,
                          _reads_input_directly)
from .methods._legacy import IG_SCHEMES, METHODS, rules_for

# Internal batches: as many rows as keep the stored activations near CACHE_BUDGET (cache-
# resident elementwise passes; measured on the 100k-row MLP, EpsilonPlusFlat: 63 ms at 4 MiB,
# 99 ms at 16 MiB, 87 ms at 1 MiB; gradient 34 ms vs 50 ms for one 768 MiB
# pieces), but at least MIN_ROWS (GEMMs stay large on conv nets) and at most BATCH_BUDGET.
CACHE_BUDGET = 4 * 2**20
MIN_ROWS = 32
BATCH_BUDGET = 768 * 2**20
# on the GPU: large batches fill the device; an out-of-memory error halves the batch and retries
GPU_BATCH_BUDGET = 4 * 2**30

# methods that run on the GPU (CuPy) backend; the others say so before any kernel runs
GPU_METHODS = frozenset({
    "gradient", "saliency", "gradient_x_input", "guided_backprop", "deconvnet", "rectgrad", "excitation_backprop",
    "integrated_gradients", "deeplift.rescale", "deeplift.reveal_cancel", "lrp", "deep_taylor", "lrp.z",
    "lrp.epsilon", "lrp.gamma", "lrp.alpha_beta", "lrp.z_plus", "lrp.flat", "lrp.w_square",
    "patternnet", "pattern_attribution",
})


def _check_params(method, params):
    spec = METHODS[method]
    unknown = [k for k in params if k not in spec.params]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, list(spec.params), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        known = ", ".join(spec.params) or "none"
        raise TypeError(f"method {method!r} got an unknown parameter {k!r}{hint} (its parameters: {known})")
    return {**spec.params, **params}


def _to_backend(x, which):
    """``x`` as an array of the chosen backend, and the function that turns results back
    into ``x``'s own type. ``which``: None (x's own backend), ``"cpu"`` or ``"gpu"``.
    Torch tensors travel through DLPack (zero-copy for CUDA tensors)."""
    if which not in (None, "cpu", "gpu"):
        raise ValueError(f"backend must be None, 'cpu' or 'gpu', got {which!r}")
    back = _same
    mod = type(x).__module__
    if mod.startswith("torch"):
        import torch

        t = x.detach()
        if t.is_cuda:
            cp = _cupy("a torch CUDA tensor")
            x, back = cp.from_dlpack(t.contiguous()), torch.from_dlpack
        else:
            x, back = t.contiguous().numpy(), torch.from_numpy
    if which == "gpu" and isinstance(x, np.ndarray):
        cp = _cupy("backend='gpu'")
        x, inner = cp.asarray(x), back
        back = lambda r: inner(r.get())  # noqa: E731
    elif which == "cpu" and backend.is_device(backend.kernels_for(x)):
        cp = _cupy("a CuPy array")
        x, inner = backend.to_host(x), back
        back = lambda r: inner(cp.asarray(r))  # noqa: E731
    return x, back


def _same(r):
    return r


def _cupy(what):
    try:
        import cupy
    except ImportError:
        raise ImportError(f"relprop: {what} needs CuPy (pip install 'relprop[gpu]')") from None
    return cupy


def _check_gpu_method(method, x, base=None):
    if backend.is_device(backend.kernels_for(x)) and method not in GPU_METHODS:
        what = f"smoothgrad around {method!r}" if base else repr(method)
        raise NotImplementedError(
            f"method {what} runs on the CPU backend only in this version; pass a numpy array or backend='cpu' "
            f"(GPU methods: {', '.join(sorted(GPU_METHODS))})")


def _check_method_params(net, method, p, x):
    """Method-specific parameter checks; returns the parameters to pass on."""
    if METHODS[method].validate is not None:
        return METHODS[method].validate(net, x, p)
    if method == "integrated_gradients":
        _check_baseline(p["baseline"], x)
        _number(p["steps"], "steps", 1, integer=True)
        if p["scheme"] not in IG_SCHEMES:
            close = difflib.get_close_matches(str(p["scheme"]), IG_SCHEMES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown integrated_gradients scheme {p['scheme']!r}{hint} (one of {', '.join(IG_SCHEMES)})")
        if p["scheme"] in ("uniform", "riemann_trapezoid") and p["steps"] < 2:
            raise ValueError(f"scheme {p['scheme']!r} needs steps >= 2, got {p['steps']}")
    elif method == "deeplift.rescale":
        _check_baseline(p["baseline"], x)
    elif method == "deeplift.reveal_cancel":
        _check_baseline(p["baseline"], x)
        if p["conv_rule"] not in ("rescale", "reveal_cancel"):
            raise ValueError(f"deeplift.reveal_cancel: conv_rule must be 'rescale' or 'reveal_cancel' (the rule at "
                             f"nonlinearities after Conv2d layers), got {p['conv_rule']!r}")
    elif method == "rectgrad":
        _number(p["q"], "q")
        if not 0 <= p["q"] <= 100:
            raise ValueError(f"rectgrad: q is a percentile and must lie in [0, 100], got {p['q']!r}")
    elif method == "lrp":
        rules = p["rules"]
        nlin = len(net.linear_nodes())
        if rules is None:
            raise TypeError("method 'lrp' needs rules=: a composite (rp.composites.*) or a list of rules, one per Dense/Conv2d layer")
        if not isinstance(rules, C.Composite):
            if not isinstance(rules, (list, tuple)):
                raise TypeError(f"rules must be a composite or a list of rules, got {type(rules).__name__}")
            if len(rules) != nlin:
                raise ValueError(f"rules has {len(rules)} entries but the model has {nlin} Dense/Conv2d layers (one rule each)")
            for i, r in enumerate(rules):
                if not isinstance(r, R.Rule):
                    raise TypeError(f"rules[{i}] must be a rule from rp.rules, got {type(r).__name__}")
    elif method == "deep_taylor":
        if (p["low"] is None) != (p["high"] is None):
            raise ValueError("deep_taylor: give both low and high (z^B first layer) or neither (w^2 first layer)")
    elif method.startswith("lrp.") or method == "excitation_backprop":
        if method == "excitation_backprop":
            R.ZPlus(p["epsilon"], p["include_bias"])  # validates epsilon and include_bias
    if method.startswith("lrp") or method == "deep_taylor":
        try:
            rules = rules_for(net, method, {k: v for k, v in p.items()})
        except TypeError as e:
            raise TypeError(f"method {method!r}: {e}") from None
        lin = net.linear_nodes()
        if len(rules) != len(lin):  # pragma: no cover - rules_for returns one per layer
            raise ValueError(f"expected {len(lin)} rules, got {len(rules)}")
        for node, rule in zip(lin, rules):
            if not isinstance(rule, R.Rule):
                raise TypeError(f"the rule for layer {node.name!r} ({node.layer.kind}) must be a rule instance from "
                                f"rp.rules (e.g. rp.rules.Epsilon()), got {rule!r}")
            if isinstance(rule, R.ZBox) and _reads_input_directly(net, node):
                _check_bounds(rule.low, rule.high, x, f"ZBox rule on layer {node.name!r}")
        if method == "lrp" or method == "deep_taylor":
            out = {"rules": rules}
            if isinstance(p.get("rules"), C.Composite):
                out["pool_eps"] = p["rules"].stabilizer
            return out
        return p
    return p


def attribute(net, x, method, target=None, targets=None, backend=None, allow_tf32=False, **params):
    """Attribute the target score of ``net`` at ``x`` to the input features.

    Parameters
    ----------
    net : relprop model (``rp.Sequential``)
    x : array (N, ...), float32 or float64: numpy (CPU), CuPy or a torch tensor (CUDA: GPU); float64 runs in
        float64 end to end
    method : str
        ``"gradient"``, ``"saliency"``, ``"gradient_x_input"``, ``"integrated_gradients"``,
        ``"deeplift.rescale"``, ``"deeplift.reveal_cancel"`` (``conv_rule=``), ``"lrp.z"``, ``"lrp.epsilon"``, ``"lrp.gamma"``,
        ``"lrp.alpha_beta"``, ``"lrp.z_plus"``, ``"lrp"`` (``rules=``), ``"deep_taylor"``,
        ``"guided_backprop"``, ``"deconvnet"``, ``"excitation_backprop"``, ``"occlusion"``,
        ``"deepshap"``, ``"expected_gradients"``, ``"gradient_shap"``, ``"gradcam"``, ``"gradcam_pp"``,
        ``"guided_gradcam"``, ``"rectgrad"``, ``"kernel_shap"``, ``"lime"``, ``"lrp.flat"``, ``"lrp.w_square"``,
        ``"rap"``, ``"patternnet"``, ``"pattern_attribution"`` (``patterns=`` from ``rp.fit_patterns``), or ``"smoothgrad"``
        (``base=`` any of these, ``samples``, ``sigma``, ``kind``, ``seed``; see ``_smoothgrad``).
    target : None (each sample's argmax), int, or int array (N,)
    targets : None, a list of K class indices, or ``"all"``: returns (N, K, ...) attributions
        from one forward pass per batch (the K backward passes run batched). Not with
        ``integrated_gradients`` or ``smoothgrad`` (their passes differ per target).
    backend : None (run where ``x`` lives: numpy -> CPU, CuPy or torch CUDA tensor -> GPU),
        ``"cpu"`` or ``"gpu"`` (copy ``x`` there; the result comes back as ``x``'s type)
    allow_tf32 : let float32 GEMMs on the GPU use TF32 tensor cores (faster; attributions
        then agree with fp32 to ~1e-3 x max|R| instead of ~1e-6). Off by default.
    **params : the method's parameters (see ``relprop.METHODS[method].params``)

    Returns
    -------
    array of ``x``'s type (numpy, CuPy or torch), same shape and dtype as ``x``.

    Examples
    --------
    >>> R = rp.attribute(net, x, "lrp.epsilon", epsilon=1e-3)            # doctest: +SKIP
    >>> R = rp.attribute(net, x, "lrp", rules=rp.composites.EpsilonPlusFlat())  # doctest: +SKIP
    """
    _check_model(net)
    which = backend
    from .core import backend as B

    if not isinstance(allow_tf32, (bool, np.bool_)):
        raise TypeError(f"allow_tf32 must be True or False, got {allow_tf32!r}")
    if targets is not None and target is not None:
        raise TypeError("give either target= (one class per sample) or targets= (several classes), not both")
    x, back = _to_backend(x, which)
    k = B.kernels_for(x)
    if method == "smoothgrad":
        if targets is not None:
            raise TypeError("targets= is not supported with smoothgrad; call it once per target")
        with B.tf32(k, allow_tf32):
            return back(_smoothgrad(net, x, target, params))
    _check_method_name(method)
    _check_gpu_method(method, x)
    p = _check_params(method, params)
    x, shapes = _check_x(net, x)
    classes = shapes[net.score_node][0]
    t = _check_target(target, x.shape[0], classes)
    p = _check_method_params(net, method, p, x)
    with B.tf32(k, allow_tf32):
        if targets is not None:
            return back(_multi(net, method, x, targets, classes, shapes, p))
        with B.LOCK:
            return back(_run_chunked(net, method, x, t, shapes, p))


def _multi(net, method, x, targets, classes, shapes, p):
    from .methods._legacy import multi_target

    from .methods._legacy import MULTI

    if not (method in MULTI or method.startswith("lrp") or method in (
            "deep_taylor", "occlusion", "gradcam", "gradcam_pp", "guided_gradcam", "patternnet", "pattern_attribution")):
        raise TypeError(f"targets= is not supported with {method}; "
                        "call it once per target")
    if isinstance(targets, str):
        if targets != "all":
            raise ValueError(f"targets must be a list of class indices or 'all', got {targets!r}")
        tk = np.arange(classes)
    else:
        tk = np.asarray(targets)
        if tk.ndim != 1 or tk.size == 0 or not np.issubdtype(tk.dtype, np.integer):
            raise TypeError(f"targets must be a non-empty list of class indices or 'all', got {targets!r}")
        if tk.min() < 0 or tk.max() >= classes:
            raise ValueError(f"targets must lie in 0..{classes - 1} for a model with {classes} outputs, got {targets!r}")
    step = _batch_step(shapes, x.itemsize, method, p, x)
    with backend.LOCK:
        return _chunked(net, x, step, (method, "multi"), lambda sl, st: multi_target(
            net, x[sl], tk, shapes, method, _slice_params(p, x, sl), max(st, 1)))


def _check_method_name(method, allowed=None):
    names = list(METHODS) + ["smoothgrad"] if allowed is None else allowed
    if not isinstance(method, str) or method not in names:
        close = difflib.get_close_matches(str(method), names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {method!r}{hint} (available: {', '.join(names)})")


def _run_chunked(net, method, x, t, shapes, p):
    """Run a validated method over ``x`` in internal batches (bounded memory)."""
    run = _run_rules if method in ("lrp", "deep_taylor") else METHODS[method].run
    step = _batch_step(shapes, x.itemsize, method, p, x)
    return _chunked(net, x, step, (method,), lambda sl, st: run(
        net, x[sl], None if t is None else t[sl], shapes, **_slice_params(p, x, sl)))


def _chunked(net, x, step, key, fn):
    """``fn(slice, step)`` over ``x`` in batches of ``step`` rows, results concatenated.

    On the GPU an out-of-memory error frees the cached memory, halves the batch and retries
    that batch; the batch size that fitted is remembered for the model and input shape, and
    when even one sample does not fit the error says so."""
    k = backend.kernels_for(x)
    n = x.shape[0]
    memo = ("fit_step", k.name, tuple(x.shape[1:]), x.dtype.str) + tuple(key)
    step = min(step, net.cache.get(memo, step))
    outs, i = [], 0
    while i < n:
        sl = slice(i, min(n, i + step))
        try:
            outs.append(fn(sl, step))
        except k.OOM as e:
            engine.release_scratch()
            backend.free_memory(k)
            if step == 1:
                raise MemoryError(f"relprop: one sample of shape {tuple(x.shape[1:])} does not fit in {k.name} memory "
                                  f"for this method ({e})") from e
            step = max(1, (sl.stop - sl.start) // 2)
            net.cache[memo] = step
            continue
        i = sl.stop
    if len(outs) == 1:
        return outs[0]
    return k.xp.concatenate(outs)


SMOOTHGRAD_PARAMS = {"base": "gradient", "samples": 32, "sigma": 0.15, "kind": "mean", "seed": None}
SMOOTHGRAD_KINDS = ("mean", "squared", "var")


def _smoothgrad(net, x, target, params):
    """SmoothGrad / SmoothGrad^2 / VarGrad around any method (seed 001 section 4.4).

    Each sample gets ``samples`` noisy copies ``x + N(0, (sigma * (max x - min x))^2)`` (sigma
    relative to that sample's value range, as in Smilkov et al.); the base method runs on all
    copies of the batch as one batch, and the copies' attributions are averaged (``mean``),
    averaged squared (``squared``) or their variance taken (``var``). ``target=None`` takes the
    argmax at the clean input for every copy. ``seed`` fixes the noise.
    """
    own = {k: params.pop(k) for k in list(params) if k in SMOOTHGRAD_PARAMS}
    sp = {**SMOOTHGRAD_PARAMS, **own}
    base = sp["base"]
    if base in ("expected_gradients", "gradient_shap"):
        raise ValueError(f"smoothgrad: base={base!r} already averages over random draws (noise included for "
                         f"gradient_shap); use its own samples= (and stdevs=) instead of wrapping it")
    _check_method_name(base, list(METHODS))
    _check_gpu_method(base, x, base=True)
    _number(sp["samples"], "samples", 1, integer=True)
    _number(sp["sigma"], "sigma")
    if not sp["sigma"] > 0:
        raise ValueError(f"sigma must be > 0 (noise level relative to each sample's value range), got {sp['sigma']!r}")
    if sp["kind"] not in SMOOTHGRAD_KINDS:
        raise ValueError(f"kind must be one of {', '.join(SMOOTHGRAD_KINDS)}, got {sp['kind']!r}")
    if sp["seed"] is not None and not isinstance(sp["seed"], (int, np.integer)):
        raise TypeError(f"seed must be None or an int, got {sp['seed']!r}")
    try:
        p = _check_params(base, params)
    except TypeError as e:
        raise TypeError(f"smoothgrad: {e} (smoothgrad's own parameters: {', '.join(SMOOTHGRAD_PARAMS)})") from None
    x, shapes = _check_x(net, x)
    n, s = x.shape[0], int(sp["samples"])
    classes = shapes[net.score_node][0]
    t = _check_target(target, n, classes)
    p = _check_method_params(net, base, p, x)
    with backend.LOCK:
        if t is None:
            t = engine.forward(net, x, (net.score_node,), (), shapes)[0].argmax(axis=1)
        xp = backend.kernels_for(x).xp
        rng = np.random.default_rng(sp["seed"])  # host draws: the same noise on every backend
        scale = sp["sigma"] * (x.reshape(n, -1).max(axis=1) - x.reshape(n, -1).min(axis=1))
        noise = xp.asarray(rng.standard_normal((n, s) + x.shape[1:])) * scale.reshape((n, 1) + (1,) * (x.ndim - 1))
        xn = (x[:, None] + noise).astype(x.dtype).reshape((n * s,) + x.shape[1:])
        pn = dict(p)
        for key in PER_SAMPLE_PARAMS:
            b = p.get(key)
            if hasattr(b, "ndim") and b.ndim == x.ndim and b.shape[0] == n and n > 1:
                pn[key] = xp.repeat(b, s, axis=0)
        a = _run_chunked(net, base, xn, xp.repeat(xp.asarray(t), s), shapes, pn).reshape((n, s) + x.shape[1:])
        a64 = a.astype(np.float64)
        if sp["kind"] == "mean":
            out = a64.mean(axis=1)
        elif sp["kind"] == "squared":
            out = (a64 ** 2).mean(axis=1)
        else:
            out = a64.var(axis=1)
        return out.astype(x.dtype)


def _run_rules(net, x, t, shapes, rules, pool_eps=engine.POOL_STABILIZER):
    from .methods._legacy import lrp

    return lrp(net, x, t, shapes, rules, pool_eps)


def _slice_params(p, x, sl):
    """Per-batch slices of array parameters that follow the batch axis (baselines)."""
    out = dict(p)
    for key in PER_SAMPLE_PARAMS:
        b = p.get(key)
        if hasattr(b, "ndim") and b.ndim == x.ndim and b.shape[0] == x.shape[0] and x.shape[0] > 1:
            out[key] = b[sl]
    return out


# array parameters that may carry one entry per sample (sliced with the batch)
PER_SAMPLE_PARAMS = ("baseline", "fill")


def _batch_step(shapes, itemsize, method, p, x=None):
    per = max(1, sum(int(np.prod(s)) for s in shapes.values()) * itemsize)
    if method.startswith("deeplift."):
        per *= 2
    if x is not None and backend.is_device(backend.kernels_for(x)):
        return max(1, GPU_BATCH_BUDGET // per)
    return max(1, min(max(CACHE_BUDGET // per, MIN_ROWS), BATCH_BUDGET // per))


def forward(net, x, backend=None):
    """The model's output for ``x`` (softmax applied when the last layer is Softmax), as ``x``'s
    array type; ``backend`` as in ``attribute``."""
    from .core import backend as B

    _check_model(net)
    x, back = _to_backend(x, backend)
    x, shapes = _check_x(net, x, scores=False)
    with B.LOCK:
        step = _batch_step(shapes, x.itemsize, "forward", {}, x)
        return back(_chunked(net, x, step, ("forward",), lambda sl, st: engine.forward(net, x[sl], (), (), shapes)[1]))
