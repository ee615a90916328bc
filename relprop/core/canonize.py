"""Canonization: fold BatchNorm into the adjacent linear layer (Zennit's MergeBatchNorm).

Done once when a model is loaded; the forward output is unchanged up to rounding. A
BatchNorm that cannot be folded exactly stays in the graph as a node of its own (LRP passes
relevance through it, as Zennit's composites do for BatchNorm).
"""
from __future__ import annotations

import numpy as np

from .graph import Conv2d, Dense, Graph, Node


def _fold_after(lin, bn):
    """``BN(W a + b)`` as one layer: ``W' = scale * W``, ``b' = scale * b + shift``."""
    scale, shift = bn.layer.scale_shift
    L = lin.layer
    dt = L.weight.dtype
    w = L.weight.astype(np.float64) * scale.reshape((-1,) + (1,) * (L.weight.ndim - 1))
    b = L.bias.astype(np.float64) * scale + shift
    if L.kind == "Dense":
        return Dense(w.astype(dt), b.astype(dt))
    return Conv2d(w.astype(dt), b.astype(dt), L.stride, L.padding)


def _fold_before(bn, lin):
    """``W BN(a) + b`` as one layer (exact for Dense, and for Conv2d without padding, where
    no zero-padded border would see the BN shift)."""
    scale, shift = bn.layer.scale_shift
    L = lin.layer
    dt = L.weight.dtype
    W = L.weight.astype(np.float64)
    if L.kind == "Dense":
        if W.shape[1] != scale.shape[0]:
            return None  # BN over channels of a flattened map: not a per-feature scale
        return Dense((W * scale[None, :]).astype(dt), (L.bias + W @ shift).astype(dt))
    if L.padding != (0, 0):
        return None
    w = W * scale[None, :, None, None]
    b = L.bias + (W * shift[None, :, None, None]).sum(axis=(1, 2, 3))
    return Conv2d(w.astype(dt), b.astype(dt), L.stride, L.padding)


def canonize(graph):
    """A new graph with every foldable BatchNorm2d merged into its neighbouring Dense/Conv2d.

    A BN right after a linear layer that feeds only it is folded into that layer; otherwise
    a BN whose only consumer is a linear layer is folded into it when exact (Dense; Conv2d
    without padding). A merged layer keeps the linear layer's name; references to a folded
    BN are redirected to it.
    """
    nodes = [Node(n.name, n.layer, tuple(n.inputs)) for n in graph.nodes]
    changed = True
    while changed:
        changed = False
        g = Graph(nodes)
        for node in g.nodes:
            if node.layer.kind != "BatchNorm2d":
                continue
            src = node.inputs[0]
            prev = g.by_name.get(src)
            if prev is not None and prev.layer.linear and g.consumers.get(src) == [node.name]:
                # the merged layer keeps the linear layer's name, placed where the BN was
                merged = Node(prev.name, _fold_after(prev, node), prev.inputs)
                nodes = [merged if n.name == node.name else n for n in nodes if n.name != prev.name]
                nodes = [Node(n.name, n.layer, tuple(prev.name if i == node.name else i for i in n.inputs))
                         for n in nodes]
                changed = True
                break
            cons = g.consumers.get(node.name, [])
            if len(cons) == 1 and g.by_name[cons[0]].layer.linear:
                nxt = g.by_name[cons[0]]
                layer = _fold_before(node, nxt)
                if layer is not None:
                    merged = Node(nxt.name, layer, node.inputs)
                    nodes = [merged if n.name == nxt.name else n for n in nodes if n.name != node.name]
                    changed = True
                    break
    return Graph(nodes, input_shape=graph.input_shape)
