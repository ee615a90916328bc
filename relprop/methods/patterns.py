"""PatternNet and PatternAttribution (Kindermans et al. 2018, "Learning how to explain neural networks: PatternNet and PatternAttribution", ICLR).

A linear neuron ``y = w^T x`` on data ``x = a_s y + a_d eps`` needs a *filter* ``w`` that
cancels the distractor (``w^T a_d = 0``, ``w^T a_s = 1``); the direction the signal varies
along is the *pattern* ``a_s``, which ``w`` is generally not. Patterns are estimated per
output unit of every Dense/Conv2d layer from data, over the rows ``x`` of the layer input
(Dense) or of its zero-padded im2col patches (Conv2d: one row per sample and output
position), with ``y = w^T x`` the unit's output without its bias:

* linear estimator (the layer is not followed by a ReLU, e.g. the last layer)::

      a = cov[x, y] / (w^T cov[x, y])                     (= cov[x, y] / var[y])

* two-regime estimator ``a+`` (the layer is followed by a ReLU; ``E+`` averages over the
  rows where the unit is active, ``w^T x + b > 0``, ``E`` over all rows)::

      a+ = (E+[x y] - E+[x] E[y]) / (w^T (E+[x y] - E+[x] E[y]))

Both satisfy ``w^T a = 1``; a unit whose denominator is 0 (e.g. never active) gets ``a = 0``.
``fit_patterns`` streams the data once and sums, per unit and in float64, ``n`` (rows),
``n+`` (active rows), ``sum y``, ``sum+ x`` and ``sum+ x y``; the expectations follow at the
end, so batching changes results only by float rounding.

The explanations are one gradient-type backward traversal (relprop.engine, GRAD mode) of a
*shadow* graph: the same nodes with every Dense/Conv2d weight swapped, run on the tape of the
ordinary forward pass (ReLU masks, max-pool winners)::

    start        s^M = s_c e_c                     (the target's pre-softmax score, as iNNvestigate)
    Dense/Conv2d s^{l-1} = A^T s^l                 patternnet: A = a (the pattern, weight-shaped)
                                                   pattern_attribution: A = w ⊙ a
    ReLU         s^{l-1} = s^l * [z^l > 0]         (gated by the forward activations)
    MaxPool2d    s goes to the window's winner

PatternAttribution is the Deep Taylor step with root ``x0 = x - a w^T x``, i.e.
``r^{l-1} = (w ⊙ a) r^l``; it returns ``r`` at the input (not multiplied by ``x``).

>>> P = rp.fit_patterns(net, x_train, batch_size=256)                    # doctest: +SKIP
>>> R = rp.attribute(net, x, "pattern_attribution", patterns=P)          # doctest: +SKIP
>>> P.save("patterns.npz"); P = rp.load_patterns("patterns.npz")          # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
import numbers
import types
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..core import backend, budget, engine
from ..core.checks import _check_model, _check_x
from ..core.graph import Conv2d, Dense, Graph, Node
from ..io.native import Archive, check_archive, write_archive
from .base import Method, register
from ..core.modes import GRAD
from ..core.plan import compiled, fingerprint

FORMAT, VERSION = "relprop-patterns", 1
ESTIMATORS = ("relu", "linear")
# layer kinds PatternNet is defined for (iNNvestigate: conv/dense, max pooling, reshapes)
SUPPORTED = ("Dense", "Conv2d", "ReLU", "MaxPool2d", "Flatten", "Reshape", "Identity", "Dropout", "Softmax")


# ---------------------------------------------------------------------------------------
# the fitted patterns

def _frozen_array(a, dtype):
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Patterns:
    """Signal directions of a model's Dense/Conv2d layers, from :func:`fit_patterns`.

    Attributes
    ----------
    patterns : mapping node name -> float64 array of the layer weight's shape (read-only)
    estimators : mapping node name -> ``"relu"`` (two-regime ``a+``) or ``"linear"``
    counts : mapping node name -> int64 (units,): rows each unit's estimate used (active rows
        for ``"relu"``, all rows for ``"linear"``; a Conv2d row is one patch)
    n_samples : number of input samples the statistics saw
    fingerprint : the fitted model's :func:`fingerprint`; using the patterns with another model
        is an error

    >>> P = rp.fit_patterns(net, x_train)          # doctest: +SKIP
    >>> P["0"].shape == net.nodes[0].layer.weight.shape   # doctest: +SKIP
    True
    """

    patterns: object
    estimators: object
    counts: object
    n_samples: int
    fingerprint: str

    def __post_init__(self):
        if not isinstance(self.patterns, Mapping):
            raise TypeError(f"Patterns: patterns must be a mapping node name -> array, "
                            f"got {type(self.patterns).__name__}")
        names = list(self.patterns)
        if set(self.estimators) != set(names) or set(self.counts) != set(names):
            raise ValueError("Patterns: patterns, estimators and counts must name the same layers")
        pats, ests, cnts = {}, {}, {}
        for name in names:
            a = np.asarray(self.patterns[name])
            if a.ndim not in (2, 4) or not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
                raise ValueError(f"Patterns: the pattern of layer {name!r} must be a finite float array of a Dense "
                                 f"(2-D) or Conv2d (4-D) weight's shape, got dtype {a.dtype}, shape {a.shape}")
            if self.estimators[name] not in ESTIMATORS:
                raise ValueError(f"Patterns: estimator of layer {name!r} must be one of {ESTIMATORS}, "
                                 f"got {self.estimators[name]!r}")
            c = np.asarray(self.counts[name])
            if c.shape != (a.shape[0],) or not np.issubdtype(c.dtype, np.integer) or np.any(c < 0):
                raise ValueError(f"Patterns: counts of layer {name!r} must be {a.shape[0]} non-negative ints, "
                                 f"got dtype {c.dtype}, shape {c.shape}")
            pats[name], ests[name], cnts[name] = _frozen_array(a, np.float64), str(self.estimators[name]), \
                _frozen_array(c, np.int64)
        if (not isinstance(self.n_samples, numbers.Integral) or isinstance(self.n_samples, (bool, np.bool_))
                or self.n_samples < 1):
            raise ValueError(f"Patterns: n_samples must be an int >= 1, got {self.n_samples!r}")
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise ValueError(f"Patterns: fingerprint must be a non-empty string, got {self.fingerprint!r}")
        h = hashlib.sha256()
        for name in names:
            h.update(json.dumps([name, ests[name], pats[name].shape]).encode())
            h.update(memoryview(pats[name]).cast("B"))
        set_ = object.__setattr__
        set_(self, "patterns", types.MappingProxyType(pats))
        set_(self, "estimators", types.MappingProxyType(ests))
        set_(self, "counts", types.MappingProxyType(cnts))
        set_(self, "n_samples", int(self.n_samples))
        set_(self, "_digest", h.hexdigest())

    def __getitem__(self, name):
        return self.patterns[name]

    def __reduce__(self):  # pickled as its fields (the read-only mappings are rebuilt)
        return Patterns, (dict(self.patterns), dict(self.estimators), dict(self.counts), self.n_samples,
                          self.fingerprint)

    def __repr__(self):
        layers = ", ".join(f"{n}: {self.estimators[n]} {tuple(a.shape)}" for n, a in self.patterns.items())
        return f"Patterns({layers}; n_samples={self.n_samples}, fingerprint={self.fingerprint[:12]})"

    def check_model(self, graph, where="patterns"):
        """Raise ``ValueError`` unless ``graph`` is the model these patterns were fitted on."""
        if fingerprint(graph) == self.fingerprint:
            return
        lin = {n.name: n.layer.weight.shape for n in graph.linear_nodes()}
        if set(lin) != set(self.patterns):
            why = (f"the model's Dense/Conv2d layers are {sorted(lin)}, the patterns are for "
                   f"{sorted(self.patterns)}")
        else:
            bad = [n for n in lin if tuple(lin[n]) != self.patterns[n].shape]
            why = (f"layer {bad[0]!r} has weight shape {tuple(lin[bad[0]])}, its pattern "
                   f"{self.patterns[bad[0]].shape}" if bad else
                   "the layer names and shapes match but the weights or the layer structure differ")
        raise ValueError(f"{where}: these patterns were fitted on a different model ({why}; model fingerprint "
                         f"{fingerprint(graph)[:12]}, patterns fitted on {self.fingerprint[:12]}); refit them with "
                         f"rp.fit_patterns(net, data)")

    # -- file ------------------------------------------------------------------------
    def save(self, path):
        """Write to ``path`` (exactly that name; ``.npz`` is customary): an npz archive with a JSON
        header ``__patterns__`` and arrays ``{i}.pattern`` / ``{i}.count``; no pickle."""
        names = list(self.patterns)
        header = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint, "n_samples": self.n_samples,
                  "layers": [{"name": n, "estimator": self.estimators[n], "shape": list(self.patterns[n].shape)}
                             for n in names]}
        arrays = {}
        for i, n in enumerate(names):
            arrays[f"{i}.pattern"] = self.patterns[n]
            arrays[f"{i}.count"] = self.counts[n]
        write_archive(path, "__patterns__", header, arrays)

    @classmethod
    def load(cls, path):
        """Read patterns written by :meth:`save`; a damaged or foreign file raises ``ValueError``."""
        check_archive(path, "load_patterns", "relprop patterns file")
        try:
            with Archive(path, "__patterns__") as f:  # bounded reads, like rp.load (no pickle)
                if "__patterns__" not in f.files:
                    raise ValueError("no __patterns__ header (a relprop model file? use rp.load)"
                                     if "__graph__" in f.files else "no __patterns__ header")
                header = json.loads(str(f["__patterns__"][()]))
                if not isinstance(header, dict) or header.get("format") != FORMAT:
                    raise ValueError(f"not a relprop patterns file (format {header.get('format')!r})"
                                     if isinstance(header, dict) else "the header is not a JSON object")
                if header.get("version") != VERSION:
                    raise ValueError(f"format version {header.get('version')!r} is not supported "
                                     f"(this relprop reads {VERSION})")
                pats, ests, cnts = {}, {}, {}
                for i, spec in enumerate(header["layers"]):
                    name = spec["name"]
                    a = f[f"{i}.pattern"]
                    if list(a.shape) != list(spec["shape"]):
                        raise ValueError(f"layer {name!r}: stored pattern shape {a.shape} != header {spec['shape']}")
                    pats[name], ests[name], cnts[name] = a, spec["estimator"], f[f"{i}.count"]
                return cls(pats, ests, cnts, header["n_samples"], header["fingerprint"])
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, EOFError, OSError, TypeError,
                AttributeError) as e:
            raise ValueError(f"load_patterns: {path} is not a readable relprop patterns file "
                             f"({type(e).__name__}: {e})") from None
        except ValueError as e:
            raise ValueError(f"load_patterns: {path}: {e}") from None


def load_patterns(path):
    """Read patterns written by ``Patterns.save`` (same as ``Patterns.load``)."""
    return Patterns.load(path)


# ---------------------------------------------------------------------------------------
# fitting

def check_supported(graph, where):
    """Refuse layer kinds PatternNet is not defined for, naming the first one."""
    for node in graph.nodes:
        kind = node.layer.kind
        if kind not in SUPPORTED:
            hint = (" (fold it into the neighbouring layer first with rp.canonize(net); one in front of a Dense/Conv2d "
                    "needs rp.canonize(net, fold='after_and_before'))") if kind == "BatchNorm2d" else ""
            raise ValueError(f"{where}: layer {node.name!r} ({kind}) is not supported{hint}; PatternNet and "
                             f"PatternAttribution are defined for networks of {', '.join(SUPPORTED[:4])} and "
                             f"reshapes ({', '.join(SUPPORTED[4:8])}), with an optional final Softmax")


def estimator_for(graph, node):
    """``"relu"`` when the layer's output goes (through Identity/Dropout only) to a ReLU alone,
    else ``"linear"``."""
    name = node.name
    while True:
        cons = graph.consumers_of(name)
        if len(cons) != 1:
            return "linear"
        kind = cons[0].layer.kind
        if kind == "ReLU":
            return "relu"
        if not cons[0].layer.identity:
            return "linear"
        name = cons[0].name


class _Stats:
    """float64 sums of one linear layer, per output unit: rows ``n``, rows in the estimator's
    regime ``cnt``, ``sum y`` (all rows), ``sum x`` and ``sum x y`` (regime rows)."""

    def __init__(self, node, relu):
        w = node.layer.weight
        self.node, self.relu = node, relu
        self.W = w.astype(np.float64).reshape(w.shape[0], -1)
        o, k = self.W.shape
        self.n = 0
        self.cnt = np.zeros(o, np.int64)
        self.sy = np.zeros(o)
        self.sx = np.zeros((o, k) if relu else k)  # linear: every row counts for every unit
        self.sxy = np.zeros((o, k))

    def add(self, kern, a, z):
        """Add a batch: layer input ``a`` and output ``z = W a + b`` from the forward pass."""
        if self.node.layer.kind == "Dense":
            x = a.reshape(a.shape[0], -1).astype(np.float64)
            self._rows(x, x @ self.W.T, z > 0 if self.relu else None)
            return
        o, c, kh, kw = self.node.layer.weight.shape
        (sh, sw), (ph, pw) = self.node.layer.stride, self.node.layer.padding
        n, _, ho, wo = z.shape
        p = ho * wo
        step = max(1, budget.BUDGET.patch // (c * kh * kw * p * 8))  # float64 patches per chunk
        for i0 in range(0, n, step):
            i1 = min(n, i0 + step)
            cols = np.empty((c * kh * kw, (i1 - i0) * p))
            kern.im2col(np.ascontiguousarray(a[i0:i1], dtype=np.float64), kh, kw, sh, sw, ph, pw, cols)
            x = cols.T  # one patch per row, sample-major
            zz = z[i0:i1].reshape(i1 - i0, o, p).transpose(0, 2, 1).reshape(-1, o)
            self._rows(x, x @ self.W.T, zz > 0 if self.relu else None)

    def _rows(self, x, y, active):
        """``x`` (rows, K) float64, ``y = x W^T`` (rows, O), ``active`` (rows, O) or None."""
        self.n += x.shape[0]
        self.sy += y.sum(axis=0)
        if active is None:
            self.cnt += x.shape[0]
            self.sx += x.sum(axis=0)
            self.sxy += y.T @ x
        else:
            m = active.astype(np.float64)
            self.cnt += active.sum(axis=0)
            self.sx += m.T @ x
            self.sxy += (m * y).T @ x

    def pattern(self):
        """The estimator's ``a`` per unit, in the weight's shape (0 where its denominator is 0)."""
        cnt = np.maximum(self.cnt, 1).astype(np.float64)[:, None]
        ex = np.broadcast_to(self.sx, self.sxy.shape) / cnt
        cov = self.sxy / cnt - ex * (self.sy / self.n)[:, None]
        den = np.einsum("ok,ok->o", self.W, cov)
        # a denominator at rounding level of its terms is zero (e.g. constant data): no signal direction
        scale = np.einsum("ok,ok->o", np.abs(self.W), np.abs(self.sxy / cnt) + np.abs(ex * (self.sy / self.n)[:, None]))
        ok = (np.abs(den) > 1e-9 * scale) & (self.cnt > 0)
        a = np.where(ok[:, None], cov / np.where(ok, den, 1)[:, None], 0.0).reshape(self.node.layer.weight.shape)
        # a grouped / dilated conv's unit reads only its group's channels at its taps: the pattern
        # lives on that receptive field (each component's estimate is its own, so restricting the
        # dense estimate to the taps is exact; den above sums over non-zero weights only)
        mask = self.node.layer.structure_mask() if self.node.layer.kind == "Conv2d" else None
        return a if mask is None else np.where(mask, a, 0.0)


def _check_batch_size(v):
    if not isinstance(v, numbers.Integral) or isinstance(v, (bool, np.bool_)):
        raise TypeError(f"fit_patterns: batch_size must be an int >= 1 (rows per forward pass), got {v!r}")
    if v < 1:
        raise ValueError(f"fit_patterns: batch_size must be an int >= 1 (rows per forward pass), got {v!r}")
    return int(v)


def _batches(data, batch_size):
    """(label, array) pieces of at most ``batch_size`` rows, from an array or an iterable of arrays."""
    if isinstance(data, np.ndarray):
        if data.ndim >= 1 and data.shape[0] == 0:
            raise ValueError(f"fit_patterns: data is empty (shape {data.shape}); patterns need at least one sample")
        if data.ndim < 2:
            yield "data", data  # _check_x names the rank problem
            return
        for i in range(0, data.shape[0], batch_size):
            yield f"data[{i}:{min(i + batch_size, data.shape[0])}]", data[i:i + batch_size]
        return
    if isinstance(data, (str, bytes, dict)) or not hasattr(data, "__iter__"):
        raise TypeError(f"fit_patterns: data must be a numpy array (N, ...) or an iterable of numpy batches, "
                        f"got {type(data).__name__}")
    for k, b in enumerate(data):
        if not isinstance(b, np.ndarray):
            hint = (" (yield the inputs only, e.g. `(x for x, _ in loader)`)" if isinstance(b, tuple) else
                    " (for one array of samples pass np.asarray(data))" if isinstance(b, (list, numbers.Number))
                    else "")
            raise TypeError(f"fit_patterns: batch {k} of data is a {type(b).__name__}, expected a numpy array "
                            f"(n, ...){hint}")
        if b.ndim < 2 or b.shape[0] <= batch_size:
            yield f"data batch {k}", b  # _check_x names a rank problem or an empty batch
            continue
        for i in range(0, b.shape[0], batch_size):
            yield f"data batch {k} rows {i}:{min(i + batch_size, b.shape[0])}", b[i:i + batch_size]


def fit_patterns(net, data, batch_size=256):
    """Estimate the signal direction (pattern) of every Dense/Conv2d layer from data, in one pass.

    Parameters
    ----------
    net : relprop model of Dense/Conv2d, ReLU, MaxPool2d and reshape layers (final Softmax allowed)
    data : numpy array (N, ...), or an iterable of numpy batches (n_i, ...) (e.g. a generator
        reading from disk: it is consumed once). float32 runs the forward pass in float32,
        float64 in float64; the statistics are float64 either way.
    batch_size : int, at most this many rows go through the model at once

    Returns
    -------
    Patterns
        per layer the two-regime ``a+`` (layers followed by a ReLU) or the linear estimator
        (others); see the module docstring for the formulas.

    Examples
    --------
    >>> P = rp.fit_patterns(net, x_train, batch_size=128)                     # doctest: +SKIP
    >>> R = rp.attribute(net, x, "pattern_attribution", patterns=P, target=3)  # doctest: +SKIP
    """
    _check_model(net)
    check_supported(net, "fit_patterns")
    batch_size = _check_batch_size(batch_size)
    lin = net.linear_nodes()
    if not lin:
        raise ValueError("fit_patterns: the model has no Dense/Conv2d layer, so it has no patterns")
    stats = {node.name: _Stats(node, estimator_for(net, node) == "relu") for node in lin}
    keep = {node.inputs[0] for node in lin} | {node.name for node in lin}
    n_seen, first, shapes = 0, None, None
    for label, batch in _batches(data, batch_size):
        xb, sh = _check_x(net, batch, name=label, scores=False)
        if first is None:
            first, shapes = xb.shape[1:], sh
            # _Stats.add builds every Conv2d's dense im2col patches, in float64, one sample at least
            net.check_columns(shapes, np.float64, depthwise=True, where="fit_patterns")
        elif xb.shape[1:] != first:
            raise ValueError(f"fit_patterns: {label} has per-sample shape {xb.shape[1:]}, earlier batches {first}")
        with backend.LOCK:
            kern = backend.kernels_for(xb)
            _, _, tape = engine.forward(compiled(net, xb.dtype), xb, keep, (), shapes)
            for node in lin:
                stats[node.name].add(kern, tape.out[node.inputs[0]], tape.out[node.name])
        n_seen += xb.shape[0]
    if n_seen < 2:
        raise ValueError(f"fit_patterns: data yielded {n_seen} sample(s); the patterns are covariances and need "
                         f"at least 2 (in practice thousands)")
    return Patterns({n: s.pattern() for n, s in stats.items()},
                    {n: "relu" if s.relu else "linear" for n, s in stats.items()},
                    {n: s.cnt for n, s in stats.items()}, n_seen, fingerprint(net))


# ---------------------------------------------------------------------------------------
# the methods

def shadow_graph(graph, patterns, method):
    """The model with every Dense/Conv2d weight replaced by its pattern ``a`` (patternnet) or by
    ``w ⊙ a`` (pattern_attribution), biases zero; same node names, so it runs on the original
    forward pass's tape. Built once per (model, patterns, method) and kept with the model's
    compiled state."""
    def build():
        nodes = []
        for node in graph.nodes:
            layer = node.layer
            if layer.linear:
                a = patterns.patterns[node.name]
                w = a if method == "patternnet" else layer.weight.astype(np.float64) * a
                layer = Dense(w) if layer.kind == "Dense" else Conv2d(w, None, layer.stride, layer.padding)
            nodes.append(Node(node.name, layer, node.inputs))
        return (Graph(nodes, input_shape=graph.input_shape),)

    return compiled(graph, np.float64).host(("patterns.shadow", method, patterns._digest), build)[0]


def _backward_model(method):
    def get(m, params):
        return compiled(shadow_graph(m.graph, params["patterns"], method), m.dtype)

    return get


def _validator(method):
    def validate(graph, x, params):
        p = params["patterns"]
        if p is None:
            raise TypeError(f"method {method!r} needs patterns=: the result of rp.fit_patterns(net, data) "
                            f"(or rp.load_patterns(path))")
        if not isinstance(p, Patterns):
            raise TypeError(f"{method}: patterns must be a Patterns object from rp.fit_patterns or "
                            f"rp.load_patterns, got {type(p).__name__}")
        check_supported(graph, method)
        p.check_model(graph, method)
        if x is not None:  # the shadow graph's plain Conv2d of a depthwise layer builds its dense columns
            graph.check_columns(graph.infer_shapes(tuple(x.shape[1:])), x.dtype, depthwise=True,
                                where=f"method {method!r}")
        shadow_graph(graph, p, method)  # built here, once, before any kernel runs
        return {"patterns": p}

    return validate


GPU = frozenset({"cpu", "gpu"})
register(Method("patternnet", "PatternNet (Kindermans et al. 2018): the score projected back along the fitted "
                "patterns, ReLU-gated", {"patterns": None}, validate=_validator("patternnet"), mode=GRAD,
                start="score", backward_model=_backward_model("patternnet"), backends=GPU, family="patterns"))
register(Method("pattern_attribution", "PatternAttribution (Kindermans et al. 2018): relevance r^{l-1} = "
                "(w ⊙ a+) r^l from s_c e_c, ReLU-gated", {"patterns": None}, validate=_validator("pattern_attribution"),
                mode=GRAD, start="score", backward_model=_backward_model("pattern_attribution"), backends=GPU,
                family="patterns"))
