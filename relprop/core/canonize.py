"""Canonization: fold BatchNorm into an adjacent linear layer.

Done once when a model is loaded (the importers call it); the forward output is unchanged up
to rounding, and so are gradients and DeepLIFT (a fold is exact linear algebra). LRP is not
invariant: a rule sees other inputs and weights. The default folds what Zennit's
``SequentialMergeBatchNorm`` merges, so LRP results compare with Zennit's canonized models; a
BatchNorm that is not folded stays as a node of its own, and LRP passes relevance through it
unchanged (Zennit's composites map BatchNorm to ``Pass``).
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
    return Conv2d(w.astype(dt), b.astype(dt), L.stride, L.padding, L.groups, L.dilation)


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
    return Conv2d(w.astype(dt), b.astype(dt), L.stride, L.padding, L.groups, L.dilation)


FOLDS = ("after", "after_and_before")


def importer_fold(canonize):
    """The importers' ``canonize=`` argument as a ``fold`` (None: keep the BatchNorm nodes)."""
    if isinstance(canonize, (bool, np.bool_)):
        return "after" if canonize else None
    if isinstance(canonize, str) and canonize in FOLDS:
        return canonize
    raise ValueError(f"canonize must be True, False or one of {FOLDS}, got {canonize!r}")


def canonize(graph, fold="after"):
    """A new graph with BatchNorm2d nodes merged into their neighbouring Dense/Conv2d.

    Parameters
    ----------
    graph : relprop.Graph
    fold : {"after", "after_and_before"}
        ``"after"`` (default, Zennit's ``SequentialMergeBatchNorm``): a BN right after a linear
        layer that feeds only it, ``BN(W a + b)``, becomes that layer with ``W' = s W`` and
        ``b' = s b + t`` (``s``, ``t`` the BN's scale and shift). LRP then explains the BN's
        output as the layer's output, exactly as Zennit does on a canonized model.

        ``"after_and_before"`` also folds a BN whose only consumer is a linear layer,
        ``W BN(a) + b`` -> ``W' = W diag(s)``, ``b' = b + W t``, where that is exact (Dense;
        Conv2d without padding). The forward pass is the same, but LRP is not: the rule
        now sees the BN's input ``a`` with weights ``w_ij s_i`` and the shift in the bias
        (with ``include_bias`` the bias takes its share of relevance; z+ and alpha-beta split
        ``w_ij s_i a_i`` by sign instead of ``w_ij (s_i a_i + t_i)``), while with ``"after"``
        the BN node stays, the rule sees its output and relevance passes through it. Zennit
        has no such merge, so results then differ from Zennit's.

    A merged layer keeps the linear layer's name; references to a folded BN are redirected
    to it. BatchNorms that cannot be folded stay as nodes.

    Examples
    --------
    >>> net = rp.canonize(net)                                # doctest: +SKIP
    >>> net = rp.canonize(net, fold="after_and_before")       # doctest: +SKIP
    """
    if not isinstance(fold, str) or fold not in FOLDS:
        raise ValueError(f"canonize: fold must be one of {FOLDS}, got {fold!r}")
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
            if fold == "after_and_before" and len(cons) == 1 and g.by_name[cons[0]].layer.linear:
                nxt = g.by_name[cons[0]]
                layer = _fold_before(node, nxt)
                if layer is not None:
                    merged = Node(nxt.name, layer, node.inputs)
                    nodes = [merged if n.name == nxt.name else n for n in nodes if n.name != node.name]
                    changed = True
                    break
    return Graph(nodes, input_shape=graph.input_shape)
