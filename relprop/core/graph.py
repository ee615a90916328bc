"""The layer-graph IR: layers (weights and hyper-parameters) wired into a graph of named nodes.

A :class:`Graph` is a list of :class:`Node` in topological order; each node names the nodes
it reads. ``Sequential`` builds a chain. The graph validates weights once, infers shapes for a
given input and runs the plain forward pass (``net(x)``). It holds the model only: what is
derived from the weights (casts, rule matrices, device copies) lives in the compiled plan
(``relprop.core.plan.Compiled``), tied to the weights' version.

Weights are immutable: a layer keeps a private, read-only copy of every array it is given
(``layer.weight.setflags(write=True)`` is refused). Assigning a new array (``layer.weight =
w``) validates and copies it and bumps the layer's ``version``, so plans built before see
that they are stale and derive the weights again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

class Act(IntEnum):
    """Activation codes shared with the kernels (``kernels/cpu/elementwise.py``)."""

    IDENTITY = 0
    RELU = 1
    TANH = 2
    SIGMOID = 3


# layer kind -> activation code (plain ints: the kernels take int64 arguments)
ACT_CODES = {"Identity": int(Act.IDENTITY), "ReLU": int(Act.RELU), "Tanh": int(Act.TANH), "Sigmoid": int(Act.SIGMOID)}


#: largest size, stride, padding or axis a layer accepts: kernel index arithmetic stays far from
#: overflow (the CUDA kernels index small arrays with 32-bit ints)
MAX_INDEX = 2**31 - 1


def _int(v, what, layer):
    """``v`` as a Python int (numpy ints accepted; bools, floats and strings refused)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{layer}: {what} must be an int, got {v!r} ({type(v).__name__})")
    v = int(v)  # a Python int: shapes computed from it cannot wrap around
    if abs(v) > MAX_INDEX:
        raise ValueError(f"{layer}: {what} must be at most {MAX_INDEX} in magnitude, got {v}")
    return v


def _pair(v, what, layer):
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        v = (v, v)
    try:
        a, b = v
    except (TypeError, ValueError):
        raise TypeError(f"{layer}: {what} must be an int or a pair of ints, got {v!r}") from None
    return _int(a, what, layer), _int(b, what, layer)


def _number(v, what, layer, err=ValueError):
    """``v`` as a finite Python float (ints and numpy numbers accepted; bools refused, as ``err``)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise err(f"{layer}: {what} must be a finite number, got {v!r} ({type(v).__name__})")
    try:
        f = float(v)
    except OverflowError:
        f = math.inf
    if not math.isfinite(f):
        raise err(f"{layer}: {what} must be a finite number, got {v!r}")
    return f


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
    dtype = np.float64 if a.dtype.kind == "f" and a.dtype.itemsize == 8 else np.float32
    # a private copy in an immutable bytes buffer: no flag of any view can make it writable again
    return np.frombuffer(np.ascontiguousarray(a, dtype=dtype).tobytes(), dtype).reshape(a.shape)




class Layer:
    """Base class of the IR's layer types. ``kind`` names the layer family; ``n_inputs`` is
    the number of inputs (None: two or more); ``hyper`` lists the constructor arguments that
    are not arrays (used by save/load).

    Traits the engine, the checks and the methods read instead of lists of kinds:
    ``input_rank`` (the per-sample rank the layer reads, None: any), ``passes_values`` (values
    pass unchanged, only the shape may change: Flatten, Reshape, Identity, Dropout),
    ``identity`` (values and shape unchanged: Identity, Dropout), ``activation`` (an
    elementwise monotone nonlinearity: DeepLIFT's RevealCancel applies to it)."""

    kind = "Layer"
    linear = False
    n_inputs = 1
    hyper = ()
    arrays = ()
    version = 0
    input_rank = None
    passes_values = False
    identity = False
    activation = False

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        init = cls.__dict__.get("__init__")
        if init is not None:
            def built(self, *a, _init=init, **k):
                _init(self, *a, **k)
                object.__setattr__(self, "_built", True)

            built.__doc__, built.__wrapped__ = init.__doc__, init
            cls.__init__ = built

    def __setattr__(self, name, value):
        if self.__dict__.get("_built") and (name in self.arrays or name in self.hyper):
            # after construction: the constructor checks the new value with the others
            args = {k: self.__dict__[k] for k in self.arrays + self.hyper}
            args[name] = value
            probe = type(self)(**args)
            new, old = probe.__dict__[name], self.__dict__[name]
            if name in self.arrays and new is not None and old is not None and new.shape != old.shape:
                raise ValueError(f"{self.kind}: a new {name} must keep the shape {old.shape}, got {new.shape} "
                                 f"(build a new layer for another shape)")
            object.__setattr__(self, name, new)
            object.__setattr__(self, "version", self.version + 1)  # derived state is stale
            return
        object.__setattr__(self, name, value)

    def __repr__(self):
        return f"{type(self).__name__}()"

    def out_shape(self, in_shape):  # shape without the batch axis
        return in_shape


class Dense(Layer):
    """Fully connected layer ``z = W a + b``; ``weight`` (out, in), ``bias`` (out,)."""

    kind = "Dense"
    input_rank = 1
    linear = True
    arrays = ("weight", "bias")

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
    input_rank = 3
    linear = True
    arrays = ("weight", "bias")
    hyper = ("stride", "padding")

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
    hyper = ("kernel_size", "stride", "padding")

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
    input_rank = 3


class AvgPool2d(_Pool2d):
    """Average pooling (zero padding counted, as torch's default)."""

    kind = "AvgPool2d"
    input_rank = 3


class Flatten(Layer):
    """Flatten all but the batch axis (C order, as ``torch.flatten(x, 1)``)."""

    kind = "Flatten"
    passes_values = True

    def out_shape(self, in_shape):
        return (math.prod(in_shape),)


class ReLU(Layer):
    kind = "ReLU"
    activation = True


class Tanh(Layer):
    kind = "Tanh"
    activation = True


class Sigmoid(Layer):
    kind = "Sigmoid"
    activation = True


class Identity(Layer):
    kind = "Identity"
    passes_values = identity = True


class Softmax(Layer):
    """Softmax over the last axis; last layer only. Explanations start from its input score."""

    kind = "Softmax"

    def out_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ValueError(f"expects (classes,) scores, got per-sample shape {tuple(in_shape)}")
        return in_shape


class LeakyReLU(Layer):
    """``max(z, 0) + negative_slope * min(z, 0)``."""

    kind = "LeakyReLU"
    activation = True
    hyper = ("negative_slope",)

    def __init__(self, negative_slope=0.01):
        self.negative_slope = _number(negative_slope, "negative_slope", "LeakyReLU", TypeError)

    def __repr__(self):
        return f"LeakyReLU({self.negative_slope})"


class Softplus(Layer):
    """``log(1 + exp(beta z)) / beta``, linear above ``threshold`` (torch's semantics)."""

    kind = "Softplus"
    activation = True
    hyper = ("beta", "threshold")

    def __init__(self, beta=1.0, threshold=20.0):
        self.beta, self.threshold = _number(beta, "beta", "Softplus"), _number(threshold, "threshold", "Softplus")
        if self.beta <= 0:
            raise ValueError(f"Softplus: beta must be a finite number > 0, got {beta!r}")

    def __repr__(self):
        return f"Softplus(beta={self.beta}, threshold={self.threshold})"


# -- further elementwise activations (torch's definitions; forward, derivative and DeepLIFT
# rescale in ``relprop.core.layers.ParamActivation``). ``activation`` (the RevealCancel trait) is
# set only on the monotone ones: RevealCancel splits the output difference into the parts caused
# by the positive and by the negative input differences (Shrikumar et al. 2017, Sec. 3.5.3),
# which presumes that a positive input difference cannot lower the output. GELU, SiLU, Mish and
# Hardswish dip below zero before rising, so they keep the Rescale rule under RevealCancel.
def _real(v, what, layer):
    """``v`` unchanged when it is a real number (bools refused), else a TypeError."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{layer}: {what} must be a finite number, got {v!r} ({type(v).__name__})")
    return v


class ELU(Layer):
    """``z`` for ``z > 0``, ``alpha (exp(z) - 1)`` otherwise (Clevert et al. 2016;
    ``torch.nn.ELU``). Monotone (RevealCancel applies) when ``alpha >= 0``."""

    kind = "ELU"
    hyper = ("alpha",)

    def __init__(self, alpha=1.0):
        self.alpha = _number(_real(alpha, "alpha", "ELU"), "alpha", "ELU")

    @property
    def activation(self):
        # alpha < 0 makes the negative branch decreasing: not monotone
        return self.alpha >= 0

    def __repr__(self):
        return f"ELU(alpha={self.alpha})"


#: GELU's ``approximate`` values (torch.nn.GELU)
GELU_APPROXIMATIONS = ("none", "tanh")


class GELU(Layer):
    """``z Phi(z)``, ``Phi`` the standard normal CDF (Hendrycks & Gimpel 2016, Sec. 2); with
    ``approximate="tanh"`` the form ``z/2 (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3)))`` of the
    same paper (Sec. 2), as ``torch.nn.GELU(approximate=...)``. Not monotone (minimum near
    ``z = -0.75``): ``activation`` is False, RevealCancel keeps the Rescale rule here."""

    kind = "GELU"
    hyper = ("approximate",)

    def __init__(self, approximate="none"):
        if not isinstance(approximate, str):
            raise TypeError(f"GELU: approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r} "
                            f"({type(approximate).__name__})")
        if approximate not in GELU_APPROXIMATIONS:
            raise ValueError(f"GELU: approximate must be one of {GELU_APPROXIMATIONS}, got {approximate!r}")
        self.approximate = approximate

    def __repr__(self):
        return f"GELU(approximate={self.approximate!r})"


class SiLU(Layer):
    """``z sigmoid(z)`` (SiLU, Elfwing et al. 2018; Swish with beta = 1, Ramachandran et al.
    2017; ``torch.nn.SiLU``). Not monotone (minimum near ``z = -1.28``): no RevealCancel."""

    kind = "SiLU"


#: Swish (Ramachandran et al. 2017) with beta = 1 is SiLU
Swish = SiLU


class Hardswish(Layer):
    """``z relu6(z + 3) / 6`` (h-swish, Howard et al. 2019, Sec. 5.2; ``torch.nn.Hardswish``).
    Not monotone (minimum at ``z = -1.5``): no RevealCancel."""

    kind = "Hardswish"


class Hardsigmoid(Layer):
    """``relu6(z + 3) / 6`` (Howard et al. 2019, Sec. 5.2; ``torch.nn.Hardsigmoid``). Monotone."""

    kind = "Hardsigmoid"
    activation = True


class ReLU6(Layer):
    """``min(max(z, 0), 6)`` (Krizhevsky 2010; Howard et al. 2017; ``torch.nn.ReLU6``). Monotone."""

    kind = "ReLU6"
    activation = True


class Mish(Layer):
    """``z tanh(softplus(z))`` (Misra 2019; ``torch.nn.Mish``). Not monotone (minimum
    near ``z = -1.19``): no RevealCancel."""

    kind = "Mish"


class Dropout(Layer):
    """Identity at inference (kept so imported graphs keep their node names)."""

    kind = "Dropout"
    passes_values = identity = True
    hyper = ("p",)

    def __init__(self, p=0.5):
        self.p = _number(p, "p", "Dropout")
        if not 0 <= self.p < 1:
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")


class BatchNorm2d(Layer):
    """Inference batch norm over channels: ``y = (x - mean) / sqrt(var + eps) * weight + bias``
    on (N, C, H, W) or (N, C) inputs. ``rp.canonize`` folds it into an adjacent linear layer."""

    kind = "BatchNorm2d"
    arrays = ("weight", "bias", "running_mean", "running_var")
    hyper = ("eps",)

    def __init__(self, weight, bias, running_mean, running_var, eps=1e-5):
        self.weight = _weight(weight, "weight", "BatchNorm2d", 1)
        c = self.weight.shape[0]
        self.bias = _weight(bias, "bias", "BatchNorm2d", 1)
        self.running_mean = _weight(running_mean, "running_mean", "BatchNorm2d", 1)
        self.running_var = _weight(running_var, "running_var", "BatchNorm2d", 1)
        for nm in ("bias", "running_mean", "running_var"):
            if getattr(self, nm).shape != (c,):
                raise ValueError(f"BatchNorm2d: {nm} must have shape ({c},), got {getattr(self, nm).shape}")
        if np.any(self.running_var < 0):
            raise ValueError("BatchNorm2d: running_var must be >= 0")
        self.eps = _number(eps, "eps", "BatchNorm2d")
        if self.eps < 0:
            raise ValueError(f"BatchNorm2d: eps must be a finite number >= 0, got {eps!r}")
        if np.any(self.running_var + self.eps <= 0):
            raise ValueError("BatchNorm2d: running_var + eps must be > 0")

    @property
    def scale_shift(self):
        """(scale, shift) in float64 with ``y = scale * x + shift`` per channel."""
        scale = self.weight.astype(np.float64) / np.sqrt(self.running_var.astype(np.float64) + self.eps)
        return scale, self.bias.astype(np.float64) - self.running_mean.astype(np.float64) * scale

    def __repr__(self):
        return f"BatchNorm2d({self.weight.shape[0]})"

    def out_shape(self, in_shape):
        c = self.weight.shape[0]
        if len(in_shape) not in (1, 3) or in_shape[0] != c:
            raise ValueError(f"expects (C={c}, H, W) or (C={c},), got per-sample shape {tuple(in_shape)}")
        return in_shape


class GlobalAvgPool2d(Layer):
    """Mean over H and W: (N, C, H, W) -> (N, C, 1, 1), as AdaptiveAvgPool2d(1)."""

    kind = "GlobalAvgPool2d"
    input_rank = 3

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (C, H, W), got per-sample shape {tuple(in_shape)}")
        return (in_shape[0], 1, 1)


class Reshape(Layer):
    """Reshape every sample to ``shape`` (the batch axis is kept; one -1 allowed)."""

    kind = "Reshape"
    passes_values = True
    hyper = ("shape",)

    def __init__(self, shape):
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
            raise TypeError(f"Reshape: shape must be a tuple of ints, got {shape!r}")
        self.shape = tuple(_int(s, "shape", "Reshape") for s in shape)
        if sum(1 for s in self.shape if s == -1) > 1 or any(s < -1 or s == 0 for s in self.shape):
            raise ValueError(f"Reshape: shape may hold positive sizes and at most one -1, got {self.shape}")

    def __repr__(self):
        return f"Reshape({self.shape})"

    def out_shape(self, in_shape):
        size = math.prod(in_shape)
        known = math.prod(s for s in self.shape if s != -1)
        if -1 in self.shape:
            if size % known:
                raise ValueError(f"cannot reshape per-sample shape {tuple(in_shape)} to {self.shape}")
            return tuple(size // known if s == -1 else s for s in self.shape)
        if known != size:
            raise ValueError(f"cannot reshape per-sample shape {tuple(in_shape)} ({size} values) to {self.shape}")
        return self.shape


class Add(Layer):
    """Sum of two or more inputs of one shape (residual connections)."""

    kind = "Add"
    n_inputs = None

    def out_shape(self, *in_shapes):
        if any(s != in_shapes[0] for s in in_shapes):
            raise ValueError(f"inputs must have one shape, got {[tuple(s) for s in in_shapes]}")
        return in_shapes[0]


class Concat(Layer):
    """Concatenation of two or more inputs along ``axis`` (counting the batch axis as 0)."""

    kind = "Concat"
    n_inputs = None
    hyper = ("axis",)

    def __init__(self, axis=1):
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) or axis == 0 \
                or abs(axis) > 64:
            raise ValueError(f"Concat: axis must be a non-zero int (0 is the batch axis), got {axis!r}")
        self.axis = int(axis)

    def __repr__(self):
        return f"Concat(axis={self.axis})"

    def sample_axis(self, ndim):
        """The axis in per-sample shapes of ``ndim`` dimensions."""
        ax = self.axis - 1 if self.axis > 0 else ndim + self.axis
        if not 0 <= ax < ndim:
            raise ValueError(f"Concat: axis {self.axis} is out of range for inputs with {ndim + 1} dimensions")
        return ax

    def out_shape(self, *in_shapes):
        nd = len(in_shapes[0])
        ax = self.sample_axis(nd)
        for s in in_shapes:
            if len(s) != nd or any(a != b for i, (a, b) in enumerate(zip(s, in_shapes[0])) if i != ax):
                raise ValueError(f"inputs must match except along axis {self.axis}, got {[tuple(s) for s in in_shapes]}")
        out = list(in_shapes[0])
        out[ax] = sum(s[ax] for s in in_shapes)
        return tuple(out)


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
    #: per-sample input shape, when known (importers record it); inputs are checked against it
    input_shape: tuple = field(default=None, compare=False)

    def __post_init__(self):
        if self.input_shape is not None:
            self.input_shape = tuple(int(s) for s in self.input_shape)
        self.nodes = [n if isinstance(n, Node) else Node(*n) for n in self.nodes]
        for n in self.nodes:
            n.inputs = (n.inputs,) if isinstance(n.inputs, str) else tuple(n.inputs)
        seen = {"input"}
        for i, node in enumerate(self.nodes):
            if not isinstance(node.layer, Layer):
                raise TypeError(f"node {node.name!r}: expected a relprop layer, got {type(node.layer).__name__}")
            if node.name in seen:
                raise ValueError(f"node name {node.name!r} is used twice")
            for src in node.inputs:
                if src not in seen:
                    raise ValueError(f"node {node.name!r} reads {src!r}, which is not defined before it")
            n_in = node.layer.n_inputs
            if (n_in is None and len(node.inputs) < 2) or (n_in is not None and len(node.inputs) != n_in):
                want = "two or more inputs" if n_in is None else f"exactly {n_in} input"
                raise ValueError(f"node {node.name!r}: {node.layer.kind} takes {want}, got {len(node.inputs)}")
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
                shapes[node.name] = tuple(node.layer.out_shape(*(shapes[s] for s in node.inputs)))
            except ValueError as e:
                raise ValueError(f"layer {node.name!r} ({node.layer!r}): {e}") from None
        return shapes

    def input_rank(self):
        """Per-sample rank the graph input must have, when the first reader fixes it."""
        for node in self.consumers_of("input"):
            if node.layer.input_rank is not None:
                return node.layer.input_rank
        return None

    def consumers_of(self, name):
        return [self.by_name[c] for c in self.consumers.get(name, [])]

    @property
    def version(self):
        """Changes whenever a layer, its weights or its hyper-parameters are replaced."""
        return tuple((id(n.layer), n.layer.version) for n in self.nodes)

    def __hash__(self):  # identity: a model is one object (plans are kept per model)
        return id(self)

    def __eq__(self, other):
        return self is other

    # -- forward ----------------------------------------------------------------------
    def __call__(self, x, backend=None):
        """The model's output for ``x``: ``relprop.forward(self, x)``."""
        from .execute import forward

        return forward(self, x, backend=backend)

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
