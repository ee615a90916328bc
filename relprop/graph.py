"""The layer-graph IR: layers (weights and hyper-parameters) wired into a graph of named nodes.

A :class:`Graph` is a list of :class:`Node` in topological order; each node names the nodes
it reads. ``Sequential`` builds a chain. The graph validates weights once, infers shapes for a
given input, runs the plain forward pass (``net(x)``) and holds a per-model cache of derived
weights (dtype casts, rule-transformed weight blocks) so they are computed once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# activation codes shared with the kernels
ACT_CODES = {"Identity": 0, "ReLU": 1, "Tanh": 2, "Sigmoid": 3}


def _pair(v, what, layer):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    try:
        a, b = (int(u) for u in v)
    except (TypeError, ValueError):
        raise TypeError(f"{layer}: {what} must be an int or a pair of ints, got {v!r}") from None
    return a, b


def _weight(arr, name, layer, ndim):
    if arr is None:
        return None
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"{layer}: {name} must be a real numeric array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{layer}: {name} must have {ndim} dimensions, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{layer}: {name} contains NaN or Inf")
    dtype = np.float64 if a.dtype == np.float64 else np.float32
    return np.array(a, dtype=dtype, copy=True)


class Layer:
    """Base class of the IR's layer types. ``kind`` names the layer family."""

    kind = "Layer"
    linear = False

    def __repr__(self):
        return f"{type(self).__name__}()"

    def out_shape(self, in_shape):  # shape without the batch axis
        return in_shape


class Dense(Layer):
    """Fully connected layer ``z = W a + b``; ``weight`` (out, in), ``bias`` (out,)."""

    kind = "Dense"
    linear = True

    def __init__(self, weight, bias=None):
        self.weight = _weight(weight, "weight", "Dense", 2)
        self.bias = _weight(bias, "bias", "Dense", 1)
        out = self.weight.shape[0]
        if self.bias is None:
            self.bias = np.zeros(out, self.weight.dtype)
        if self.bias.shape != (out,):
            raise ValueError(f"Dense: bias must have shape ({out},) to match weight {self.weight.shape}, got {self.bias.shape}")

    def __repr__(self):
        return f"Dense({self.weight.shape[1]} -> {self.weight.shape[0]})"

    def out_shape(self, in_shape):
        if len(in_shape) != 1 or in_shape[0] != self.weight.shape[1]:
            raise ValueError(f"expects input features ({self.weight.shape[1]},), got per-sample shape {tuple(in_shape)}")
        return (self.weight.shape[0],)


class Conv2d(Layer):
    """2-D convolution (NCHW, zero padding); ``weight`` (out, in, kh, kw), ``bias`` (out,)."""

    kind = "Conv2d"
    linear = True

    def __init__(self, weight, bias=None, stride=1, padding=0):
        self.weight = _weight(weight, "weight", "Conv2d", 4)
        self.bias = _weight(bias, "bias", "Conv2d", 1)
        out = self.weight.shape[0]
        if self.bias is None:
            self.bias = np.zeros(out, self.weight.dtype)
        if self.bias.shape != (out,):
            raise ValueError(f"Conv2d: bias must have shape ({out},) to match weight {self.weight.shape}, got {self.bias.shape}")
        self.stride = _pair(stride, "stride", "Conv2d")
        self.padding = _pair(padding, "padding", "Conv2d")
        if min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: stride must be >= 1 and padding >= 0, got {self.stride}, {self.padding}")

    def __repr__(self):
        o, c, kh, kw = self.weight.shape
        return f"Conv2d({c} -> {o}, {kh}x{kw}, stride={self.stride}, padding={self.padding})"

    def out_shape(self, in_shape):
        o, c, kh, kw = self.weight.shape
        if len(in_shape) != 3 or in_shape[0] != c:
            raise ValueError(f"expects input (C={c}, H, W), got per-sample shape {tuple(in_shape)}")
        h, w = in_shape[1:]
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"kernel {kh}x{kw} does not fit input {h}x{w} with padding {self.padding}")
        return (o, ho, wo)


class _Pool2d(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = _pair(kernel_size, "kernel_size", self.kind)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", self.kind)
        self.padding = _pair(padding, "padding", self.kind)
        if min(self.kernel_size) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"{self.kind}: kernel_size and stride must be >= 1, padding >= 0")
        if self.padding[0] * 2 > self.kernel_size[0] or self.padding[1] * 2 > self.kernel_size[1]:
            raise ValueError(f"{self.kind}: padding must be at most half the kernel size, got {self.padding}")

    def __repr__(self):
        return f"{self.kind}({self.kernel_size}, stride={self.stride}, padding={self.padding})"

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (C, H, W), got per-sample shape {tuple(in_shape)}")
        c, h, w = in_shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"window {kh}x{kw} does not fit input {h}x{w}")
        return (c, ho, wo)


class MaxPool2d(_Pool2d):
    """Max pooling; relevance and gradient go to the window's winner."""

    kind = "MaxPool2d"


class AvgPool2d(_Pool2d):
    """Average pooling (zero padding counted, as torch's default)."""

    kind = "AvgPool2d"


class Flatten(Layer):
    """Flatten all but the batch axis (C order, as ``torch.flatten(x, 1)``)."""

    kind = "Flatten"

    def out_shape(self, in_shape):
        return (int(np.prod(in_shape)),)


class ReLU(Layer):
    kind = "ReLU"


class Tanh(Layer):
    kind = "Tanh"


class Sigmoid(Layer):
    kind = "Sigmoid"


class Identity(Layer):
    kind = "Identity"


class Softmax(Layer):
    """Softmax over the last axis; last layer only. Explanations start from its input score."""

    kind = "Softmax"

    def out_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"expects (classes,) scores, got per-sample shape {tuple(in_shape)}")
        return in_shape


ACTIVATIONS = ("ReLU", "Tanh", "Sigmoid", "Identity")


@dataclass
class Node:
    """A layer placed in the graph: ``name``, the ``layer``, and the names of its inputs."""

    name: str
    layer: Layer
    inputs: tuple = ("input",)


@dataclass
class Graph:
    """A model: nodes in topological order, reading the graph input ``"input"``.

    The last node is the output. The IR keeps one input per node for now; residual
    ``Add``/``Concat`` nodes take several (the models issue).
    """

    nodes: list
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        seen = {"input"}
        for i, node in enumerate(self.nodes):
            if not isinstance(node.layer, Layer):
                raise TypeError(f"node {node.name!r}: expected a relprop layer, got {type(node.layer).__name__}")
            if node.name in seen:
                raise ValueError(f"node name {node.name!r} is used twice")
            for src in node.inputs:
                if src not in seen:
                    raise ValueError(f"node {node.name!r} reads {src!r}, which is not defined before it")
            if len(node.inputs) != 1:
                raise ValueError(f"node {node.name!r}: {node.layer.kind} takes exactly one input")
            if node.layer.kind == "Softmax" and i != len(self.nodes) - 1:
                raise ValueError(f"Softmax (node {node.name!r}) must be the last layer")
            seen.add(node.name)
        if not self.nodes:
            raise ValueError("a model needs at least one layer")
        consumers = {}
        for node in self.nodes:
            for src in node.inputs:
                consumers.setdefault(src, []).append(node.name)
        self.consumers = consumers
        self.by_name = {n.name: n for n in self.nodes}

    # -- structure -------------------------------------------------------------------
    @property
    def output(self):
        return self.nodes[-1].name

    @property
    def score_node(self):
        """The node whose output is the score vector explanations start from."""
        last = self.nodes[-1]
        return last.inputs[0] if last.layer.kind == "Softmax" else last.name

    def linear_nodes(self):
        """Dense and Conv2d nodes in graph order (the layers an LRP rule list addresses)."""
        return [n for n in self.nodes if n.layer.linear]

    def infer_shapes(self, in_shape):
        """Per-sample output shape of every node for a per-sample input shape."""
        shapes = {"input": tuple(int(s) for s in in_shape)}
        for node in self.nodes:
            try:
                shapes[node.name] = tuple(node.layer.out_shape(shapes[node.inputs[0]]))
            except ValueError as e:
                raise ValueError(f"layer {node.name!r} ({node.layer!r}): {e}") from None
        return shapes

    def input_rank(self):
        first = self.nodes[0].layer
        if first.kind == "Conv2d":
            return 3
        if first.kind == "Dense":
            return 1
        return None

    # -- weights ----------------------------------------------------------------------
    def params(self, node, dtype):
        """(weight, bias) of ``node`` in ``dtype``, cast once and cached."""
        key = ("params", node.name, np.dtype(dtype).str)
        got = self.cache.get(key)
        if got is None:
            layer = node.layer
            got = (np.ascontiguousarray(layer.weight, dtype=dtype), np.ascontiguousarray(layer.bias, dtype=dtype))
            self.cache[key] = got
        return got

    # -- forward ----------------------------------------------------------------------
    def __call__(self, x):
        from . import api

        return api.forward(self, x)

    def __repr__(self):
        lines = [f"  {n.name}: {n.layer!r}" for n in self.nodes]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


class Sequential(Graph):
    """A chain of layers: node ``"i"`` reads node ``"i-1"`` (the first reads the input)."""

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        nodes = []
        prev = "input"
        for i, layer in enumerate(layers):
            nodes.append(Node(str(i), layer, (prev,)))
            prev = str(i)
        super().__init__(nodes)
