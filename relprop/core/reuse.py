"""Forward-pass reuse across models that share layers (model-parameter randomization).

A randomization study (Adebayo et al. 2018) explains the same inputs with a sequence of models
that differ from the original in a few layers: cascading randomization replaces the top ``t``
layers, independent randomization one layer. Every node whose ancestors are all unchanged
computes exactly what it computed for the original model, so its forward output and what it
stored on the tape can be reused.

:class:`ForwardReuse` keeps those per-node results. While it is active
(``with reuse.active(): ...``) the engine's forward pass looks each node up before computing
it. An entry is keyed by

- the content of the pass's input (a BLAKE2 digest of its bytes, shape and dtype: methods build
  their inputs afresh each call -- IG's path points, DeepLIFT's ``[x; baseline]`` -- so identity
  would never match),
- the node's *prefix signature*: a digest of the node's name, kind, layer identity and weight
  version, of the activation fused into its epilogue (computed with it), and of its inputs'
  signatures in order (so it covers every layer upstream and how they are wired),
- what the method asks the pass to keep (stored outputs, max-pool winners, ``W+ a`` products),
  the dtype, the backend and (on a GPU) whether TF32 GEMMs are allowed.

Entries are admitted for nodes whose prefix lies wholly in the ``base`` model (they recur in
every later step), and, between ``begin_step(graph)`` calls, for the nodes of that step's model
(they recur across the methods explained at that step), until ``max_bytes`` is reached;
then new entries are refused rather than evicting old ones (an LRU would evict each batch just
before the next step asks for it). Base entries name only layers of ``base``, which the cache holds,
so no layer id in them can be reused by a new layer while the cache lives; a step's entries
are dropped at the next step, while the step's model (and its layers) may still be referenced. Reused arrays are the same
objects the original pass produced; nothing in the engine writes into a forward output.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import weakref

import numpy as np

from . import backend
from .layers import fusable_activation

_ACTIVE = contextvars.ContextVar("relprop_forward_reuse", default=None)


def current():
    """The active :class:`ForwardReuse`, or None."""
    return _ACTIVE.get()


class ForwardReuse:
    """Per-node forward results of ``base`` (and of any model sharing its layers) for reuse.

    Parameters
    ----------
    base : relprop model whose layers later models share
    max_bytes : bound on the arrays held (outputs and tape entries); beyond it, new entries are
        not admitted (the computation then simply runs)
    """

    def __init__(self, base, max_bytes=2 << 30):
        self.base_layers = {id(n.layer): n.layer for n in base.nodes}
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.entries = {}
        self.hits = self.misses = 0
        self.step_entries, self._step_bytes, self._step_graph = {}, 0, None
        self._sigs = weakref.WeakKeyDictionary()  # graph -> (version, {node: (signature, in base?)})

    @contextlib.contextmanager
    def active(self):
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def clear(self):
        self.entries.clear()
        self.step_entries.clear()
        self._sigs.clear()
        self.bytes = self._step_bytes = 0

    def begin_step(self, graph):
        """Explanations of ``graph`` follow (one study step, several methods): admit its nodes too
        until the next step, so that methods with the same forward configuration share even the
        nodes above the randomized layers. Only passes on this very graph see those entries; the
        previous step's are dropped."""
        self.bytes -= self._step_bytes
        self.step_entries, self._step_bytes = {}, 0
        self._step_graph = weakref.ref(graph) if graph is not None else None

    # -- used by relprop.core.engine.forward ---------------------------------------------
    def begin(self, graph, x, keep, idx_nodes, plus, dtype, k):
        """The per-pass state (keys, signatures, whether ``graph`` is the current step's model),
        or None when nothing can be reused (a zero budget)."""
        if self.max_bytes <= 0:
            return None
        host = np.ascontiguousarray(backend.to_host(x))
        h = hashlib.blake2b(memoryview(host).cast("B"), digest_size=20)
        h.update(f"{host.dtype.str}{host.shape}".encode())
        cfg = (frozenset(keep), frozenset(idx_nodes), tuple(sorted((n, r.key) for n, r in plus.items())))
        tf32 = _tf32_state(k)
        step = self._step_graph is not None and self._step_graph() is graph
        return (h.digest(), cfg, np.dtype(dtype).str, k.name, tf32), self._signatures(graph), step

    def lookup(self, p, name):
        key, sigs, step = p
        sig, _ = sigs[name]
        got = self.entries.get((key, name, sig))
        if got is None and step:
            got = self.step_entries.get((key, name, sig))
        if got is None:
            self.misses += 1
        else:
            self.hits += 1
        return got

    def store(self, p, name, outs, tape_parts, skipped):
        key, sigs, step = p
        sig, in_base = sigs[name]
        if not in_base and not step:
            return
        size = sum(_nbytes(v) for v in outs.values()) + sum(_nbytes(v) for part in tape_parts.values()
                                                                for v in part.values())
        if self.bytes + size > self.max_bytes:
            return
        self.bytes += size
        if in_base:
            self.entries[(key, name, sig)] = (outs, tape_parts, skipped)
        else:
            self._step_bytes += size
            self.step_entries[(key, name, sig)] = (outs, tape_parts, skipped)

    def _signatures(self, graph):
        """{node: (signature, prefix wholly in base?)}: a signature digests the node's name, kind,
        layer identity and version, its fused activation's, and its inputs' signatures in order
        (a Merkle chain: the same layers wired differently differ)."""
        got = self._sigs.get(graph)
        if got is not None and got[0] == graph.version:
            return got[1]
        sigs = {"input": (b"input", True)}
        for node in graph.nodes:
            fused = fusable_activation(graph, node) if node.layer.linear else None  # computed with the node
            h = hashlib.blake2b(digest_size=16)
            parts = [node.name, node.layer.kind, id(node.layer), node.layer.version]
            if fused is not None:
                parts += [fused.name, fused.layer.kind, id(fused.layer), fused.layer.version]
            h.update(repr(parts).encode())
            in_base = id(node.layer) in self.base_layers and (fused is None or id(fused.layer) in self.base_layers)
            for src in node.inputs:
                h.update(sigs[src][0])
                in_base = in_base and sigs[src][1]
            sigs[node.name] = (h.digest(), in_base)
        self._sigs[graph] = (graph.version, sigs)
        return sigs


def _tf32_state(k):
    """Whether float32 GEMMs may use TF32 now (device kernels only; part of the key)."""
    if not backend.is_device(k) or not hasattr(k, "set_tf32"):
        return None
    prev = k.set_tf32(False)
    k.set_tf32(prev)
    return str(prev)


def _nbytes(v):
    return int(getattr(v, "nbytes", 0) or 0)
