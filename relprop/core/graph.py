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

from . import budget


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


#: a grouped / dilated Conv2d whose dense weight is more than this many times its compact one is
#: held to ``relprop.core.budget.BUDGET.expansion`` (the dense weight) and ``.expansion_cols``
#: (one sample's dense im2col columns); up to this ratio (a plain convolution, ResNeXt's 32
#: groups, 64 groups, a 3x3 kernel dilated by up to 11: 58.8x; dilated by 12 it is 69.4x) the
#: layer is never refused
EXPANSION_RATIO = 64


def _size(nbytes):
    return f"{nbytes / 2**30:.3g} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.3g} MiB"


def _expansion(shape, groups, dilation):
    """(dense weight elements, compact weight elements, compact shape) of a Conv2d whose dense
    weight has ``shape`` (out, in, kh, kw): the compact one has ``in / groups`` channels and
    the taps ``(k - 1) / d + 1`` of the dilated kernel."""
    o, c, kh, kw = (int(v) for v in shape)
    g, (dh, dw) = max(int(groups), 1), dilation
    compact = (o, c // g, (kh - 1) // max(dh, 1) + 1, (kw - 1) // max(dw, 1) + 1)
    return o * c * kh * kw, int(np.prod(compact)), compact


def _check_expansion(where, shape, groups, dilation, itemsize):
    """Refuse, before it is allocated, a dense weight of ``shape`` that is over EXPANSION_RATIO
    times the compact weight of the grouped / dilated convolution and over the budget."""
    dense, compact, cshape = _expansion(shape, groups, dilation)
    limit = budget.BUDGET.expansion
    if dense <= EXPANSION_RATIO * compact or dense * itemsize <= limit:
        return
    raise ValueError(
        f"{where}: groups={groups}, dilation={tuple(dilation)} expand the compact weight {cshape} "
        f"({_size(compact * itemsize)}) to a dense weight {tuple(int(v) for v in shape)} of "
        f"{_size(dense * itemsize)} ({dense / compact:.0f}x), over relprop's limit of {_size(limit)} for an expanded "
        f"convolution (it computes grouped and dilated convolutions with the dense weight, and each rule derives "
        f"copies of it); use a smaller dilation or fewer channels per group, or raise the limit "
        f"(relprop.core.budget.BUDGET = dataclasses.replace(relprop.core.budget.BUDGET, expansion=<bytes>))")


def _itemsize(dtype):
    """Bytes per weight as the layer stores it (float64 stays, anything else is float32)."""
    dtype = np.dtype(dtype)
    return 8 if dtype.kind == "f" and dtype.itemsize == 8 else 4


class Conv2d(Layer):
    """2-D convolution (NCHW, zero padding); ``weight`` (out, in, kh, kw), ``bias`` (out,).

    ``groups`` and ``dilation`` declare structural zeros of a *dense* weight: a grouped
    convolution is exactly a dense one whose weight is block-diagonal over the groups, and a
    kernel of taps ``k`` dilated by ``d`` is exactly a dense ``(k - 1) d + 1`` kernel with zeros
    between the taps. The layer always computes with the dense weight (build it from torch's
    compact layout with :meth:`from_compact`); the constructor checks that the weight is zero
    off the structure, and :meth:`structure_mask` gives the rules that do not read the weight's
    values (Flat) the taps the convolution actually has.

    The dense weight costs ``in / groups`` times the compact one per group block and the dilated
    kernel's area over its taps: beyond ``EXPANSION_RATIO`` (64x) the dense weight may take at
    most ``relprop.core.budget.BUDGET.expansion`` (512 MiB) and one sample's dense im2col
    columns at most ``BUDGET.expansion_cols`` (1 GiB); such a layer is refused before anything
    is allocated (at construction, resp. when the input shape is known), naming both sizes."""

    kind = "Conv2d"
    input_rank = 3
    linear = True
    arrays = ("weight", "bias")
    hyper = ("stride", "padding", "groups", "dilation")

    def __init__(self, weight, bias=None, stride=1, padding=0, groups=1, dilation=1):
        shape = np.shape(weight)
        if len(shape) == 4:  # before the private copies of a dense weight
            g, d = _int(groups, "groups", "Conv2d"), _pair(dilation, "dilation", "Conv2d")
            if g >= 1 and min(d) >= 1 and (g, d) != (1, (1, 1)):
                dtype = weight.dtype if hasattr(weight, "dtype") else np.asarray(weight).dtype
                _check_expansion("Conv2d", shape, g, d, _itemsize(dtype))
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
        self.groups = _int(groups, "groups", "Conv2d")
        self.dilation = _pair(dilation, "dilation", "Conv2d")
        if self.groups < 1 or min(self.dilation) < 1:
            raise ValueError(f"Conv2d: groups and dilation must be >= 1, got groups={self.groups}, "
                             f"dilation={self.dilation}")
        self._check_structure(self.weight.shape)
        mask = self.structure_mask()
        if mask is not None and np.any(self.weight[~mask] != 0):
            raise ValueError(f"Conv2d: groups={self.groups}, dilation={self.dilation} declare zeros that the weight "
                             f"{self.weight.shape} does not have (build it with Conv2d.from_compact)")

    def _check_structure(self, shape):
        o, c, kh, kw = shape
        g, (dh, dw) = self.groups, self.dilation
        if o % g or c % g:
            raise ValueError(f"Conv2d: groups={g} must divide the output and input channels, got weight {tuple(shape)}")
        if (kh - 1) % dh or (kw - 1) % dw:
            raise ValueError(f"Conv2d: a kernel dilated by {self.dilation} has (k - 1) * d + 1 rows and columns, "
                             f"got weight {tuple(shape)}")

    def structure_mask(self):
        """Boolean (out, in, kh, kw) mask of the weights the grouped / dilated convolution has
        (True), or None for a plain dense convolution."""
        if self.groups == 1 and self.dilation == (1, 1):
            return None
        o, c, kh, kw = self.weight.shape
        g, (dh, dw) = self.groups, self.dilation
        blocks = np.arange(o)[:, None] // (o // g) == np.arange(c)[None, :] // (c // g)
        taps = (np.arange(kh)[:, None] % dh == 0) & (np.arange(kw)[None, :] % dw == 0)
        return blocks[:, :, None, None] & taps[None, None]

    @classmethod
    def from_compact(cls, weight, bias=None, stride=1, padding=0, groups=1, dilation=1):
        """The layer of torch's ``conv2d(x, weight, bias, stride, padding, dilation, groups)``:
        ``weight`` (out, in / groups, k_h, k_w) is expanded to the dense, block-diagonal,
        zero-dilated (out, in, (k_h - 1) d_h + 1, (k_w - 1) d_w + 1) weight. The expansion
        multiplies the convolution's work by ``in / groups`` per group block and by the
        dilated kernel's area over the taps' (a dedicated kernel is left for later)."""
        w = np.asarray(weight)
        if w.ndim != 4:
            raise ValueError(f"Conv2d.from_compact: weight must have 4 dimensions, got shape {w.shape}")
        g = _int(groups, "groups", "Conv2d")
        dh, dw = _pair(dilation, "dilation", "Conv2d")
        if g < 1 or dh < 1 or dw < 1:
            raise ValueError(f"Conv2d.from_compact: groups and dilation must be >= 1, got {groups}, {dilation}")
        o, cg, kh, kw = w.shape
        if o % g:
            raise ValueError(f"Conv2d.from_compact: groups={g} must divide the {o} output channels")
        _check_expansion("Conv2d.from_compact", (o, cg * g, (kh - 1) * dh + 1, (kw - 1) * dw + 1), g, (dh, dw),
                         _itemsize(w.dtype))
        dense = np.zeros((o, cg * g, (kh - 1) * dh + 1, (kw - 1) * dw + 1), w.dtype)
        og = o // g
        for i in range(g):
            dense[i * og:(i + 1) * og, i * cg:(i + 1) * cg, ::dh, ::dw] = w[i * og:(i + 1) * og]
        return cls(dense, bias, stride, padding, g, (dh, dw))

    def __repr__(self):
        o, c, kh, kw = self.weight.shape
        extra = (f", groups={self.groups}" if self.groups != 1 else "") + \
            (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
        return f"Conv2d({c} -> {o}, {kh}x{kw}, stride={self.stride}, padding={self.padding}{extra})"

    def out_shape(self, in_shape):
        self._check_structure(self.weight.shape)  # a loaded file's declared shapes, too
        o, c, kh, kw = self.weight.shape
        if len(in_shape) != 3 or in_shape[0] != c:
            raise ValueError(f"expects input (C={c}, H, W), got per-sample shape {tuple(in_shape)}")
        h, w = in_shape[1:]
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"kernel {kh}x{kw} does not fit input {h}x{w} with padding {self.padding}")
        if not self.depthwise:  # its plain forward and gradient run tap by tap (linear.depthwise_forward)
            self.check_columns(in_shape)
        return (o, ho, wo)

    @property
    def depthwise(self):
        """One input channel per group, as many groups as channels in and out (MobileNet's)."""
        o, c = self.weight.shape[:2]
        return self.groups > 1 and self.groups == o == c

    def check_columns(self, in_shape, dtype=np.float32):
        """Refuse an expanded layer (over ``EXPANSION_RATIO`` times its compact weight) whose dense
        im2col columns for one sample of ``in_shape`` (C, H, W), in ``dtype`` (float32 at shape
        inference, where the dtype is not known yet; the methods check again in x's dtype:
        float64 columns take 8 bytes a value), exceed ``relprop.core.budget.BUDGET.expansion_cols``:
        the internal batches (``linear.chunks``) hold at least one sample, so nothing else bounds
        that buffer. Depthwise layers skip the columns in their plain forward and gradient (the
        tap-by-tap shortcut), so :meth:`Graph.check_columns` checks them for the methods that
        build the columns anyway (the LRP rules, RAP, PatternNet / PatternAttribution and
        ``fit_patterns``)."""
        o, c, kh, kw = self.weight.shape
        dense, compact, _ = _expansion(self.weight.shape, self.groups, self.dilation)
        if dense <= EXPANSION_RATIO * compact:
            return
        item = np.dtype(dtype).itemsize
        h, w = in_shape[1:]
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        cols = c * kh * kw * max(ho, 0) * max(wo, 0) * item
        limit = budget.BUDGET.expansion_cols
        if cols > limit:
            raise ValueError(
                f"on a {h}x{w} input the dense {kh}x{kw} kernel of this groups={self.groups}, dilation={self.dilation} "
                f"convolution needs {_size(cols)} of im2col columns per sample ({np.dtype(dtype).name}, "
                f"{dense / compact:.0f}x what its {_size(cols * compact // dense)} of taps read), over relprop's limit "
                f"of {_size(limit)} for an expanded convolution; use a smaller input, dilation or fewer channels per "
                f"group, or raise the limit (relprop.core.budget.BUDGET = dataclasses.replace("
                f"relprop.core.budget.BUDGET, expansion_cols=<bytes>))")


#: Pad's modes and numpy's names for them (torch: padding_mode / F.pad; ONNX Pad: constant,
#: reflect, edge, wrap)
PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class Pad(Layer):
    """Spatial padding of (N, C, H, W) inputs by ``pads = (top, bottom, left, right)``:
    ``"constant"`` (``value``), ``"reflect"`` (mirror without the edge, as torch), ``"replicate"``
    (the edge repeated) or ``"circular"`` (wrap-around). Every padded value is a copy of one
    input pixel (or the constant), so all backward modes send the signal of each padded
    position back to its source pixel (the adjoint, a scatter-add); a constant has no source."""

    kind = "Pad"
    input_rank = 3
    hyper = ("pads", "mode", "value")

    def __init__(self, pads, mode="constant", value=0.0):
        if isinstance(pads, (str, bytes)) or not hasattr(pads, "__len__") or len(pads) != 4:
            raise TypeError(f"Pad: pads must be 4 ints (top, bottom, left, right), got {pads!r}")
        self.pads = tuple(_int(p, "pads", "Pad") for p in pads)
        if min(self.pads) < 0:
            raise ValueError(f"Pad: pads must be >= 0, got {self.pads}")
        if not isinstance(mode, str) or mode not in PAD_MODES:
            raise ValueError(f"Pad: mode must be one of {list(PAD_MODES)}, got {mode!r}")
        self.mode = mode
        self.value = _number(value, "value", "Pad")
        if mode != "constant" and self.value != 0:
            raise ValueError(f"Pad: value applies to mode='constant' only, got value={value!r} with mode={mode!r}")

    def __repr__(self):
        return f"Pad({self.pads}, mode={self.mode!r}" + (f", value={self.value}" if self.value else "") + ")"

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (C, H, W), got per-sample shape {tuple(in_shape)}")
        c, h, w = in_shape
        t, b, l, r = self.pads
        if self.mode == "reflect" and (max(t, b) >= h or max(l, r) >= w):
            raise ValueError(f"reflect padding {self.pads} must be smaller than the input {h}x{w} (as torch)")
        if self.mode == "circular" and (max(t, b) > h or max(l, r) > w):
            raise ValueError(f"circular padding {self.pads} must be at most the input {h}x{w} (as torch)")
        return (c, h + t + b, w + l + r)

    def sources(self, h, w):
        """Source row and column of every padded position (-1: the constant)."""
        t, b, l, r = self.pads
        np_mode = PAD_MODES[self.mode]
        if np_mode == "constant":
            return (np.pad(np.arange(h), (t, b), constant_values=-1), np.pad(np.arange(w), (l, r), constant_values=-1))
        return np.pad(np.arange(h), (t, b), mode=np_mode), np.pad(np.arange(w), (l, r), mode=np_mode)


class ZeroInsert2d(Layer):
    """Zero insertion of (N, C, H, W) inputs: ``stride - 1`` zeros between neighbouring pixels
    (``(H - 1) s_h + 1`` rows), then ``pads = (top, bottom, left, right)`` rows/columns of zeros
    (a negative pad crops). It is the first half of :class:`ConvTranspose2d`'s decomposition;
    every output is a copy of one input pixel or a zero, so every backward mode takes the exact
    adjoint (the signal at each copy goes back to its source; inserted zeros have none)."""

    kind = "ZeroInsert2d"
    input_rank = 3
    hyper = ("stride", "pads")

    def __init__(self, stride, pads=(0, 0, 0, 0)):
        self.stride = _pair(stride, "stride", "ZeroInsert2d")
        if min(self.stride) < 1:
            raise ValueError(f"ZeroInsert2d: stride must be >= 1, got {self.stride}")
        if isinstance(pads, (str, bytes)) or not hasattr(pads, "__len__") or len(pads) != 4:
            raise TypeError(f"ZeroInsert2d: pads must be 4 ints (top, bottom, left, right), got {pads!r}")
        self.pads = tuple(_int(p, "pads", "ZeroInsert2d") for p in pads)

    def __repr__(self):
        return f"ZeroInsert2d(stride={self.stride}, pads={self.pads})"

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (C, H, W), got per-sample shape {tuple(in_shape)}")
        c, h, w = in_shape
        t, b, l, r = self.pads
        ho, wo = (h - 1) * self.stride[0] + 1 + t + b, (w - 1) * self.stride[1] + 1 + l + r
        if ho < 1 or wo < 1:
            raise ValueError(f"pads {self.pads} crop the zero-inserted input {h}x{w} to nothing (a ConvTranspose2d "
                             f"whose padding leaves no output)")
        return (c, ho, wo)

    def sources(self, h, w):
        """Source row and column of every output position (-1: an inserted or padded zero)."""
        def axis(n, s, lo, hi):
            d = np.full((n - 1) * s + 1, -1, np.int64)
            d[::s] = np.arange(n)
            d = np.concatenate([np.full(max(lo, 0), -1, np.int64), d[max(-lo, 0):], np.full(max(hi, 0), -1, np.int64)])
            return d[:len(d) + hi] if hi < 0 else d

        t, b, l, r = self.pads
        return axis(h, self.stride[0], t, b), axis(w, self.stride[1], l, r)


class ConvTranspose2d(Layer):
    """Transposed 2-D convolution (torch ``nn.ConvTranspose2d``, ONNX ``ConvTranspose``);
    ``weight`` (in, out / groups, kh, kw) in torch's layout, ``bias`` (out,). The output is
    ``(H - 1) s - 2 p + d (k - 1) + output_padding + 1`` per axis.

    It is the adjoint of the Conv2d with the same weight (Dumoulin & Visin 2016, "A guide to
    convolution arithmetic", Sec. 4.5-4.7 and relationship 14): exactly a zero insertion of
    ``s - 1`` zeros between input pixels, zero padding by ``d (k - 1) - p`` (``+
    output_padding`` at the bottom/right), then a stride-1 Conv2d with the spatially flipped,
    in/out-swapped weight. A graph stores it as that pair (:meth:`decompose`: a
    :class:`ZeroInsert2d` node ``<name>.zeros`` and a :class:`Conv2d` node ``<name>``), so the
    gradient, DeepLIFT and every LRP rule of Conv2d apply unchanged to the same linear map."""

    kind = "ConvTranspose2d"
    input_rank = 3
    arrays = ("weight", "bias")
    hyper = ("stride", "padding", "output_padding", "groups", "dilation")

    def __init__(self, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        self.weight = _weight(weight, "weight", "ConvTranspose2d", 4)
        self.groups = _int(groups, "groups", "ConvTranspose2d")
        if self.groups < 1 or self.weight.shape[0] % self.groups:
            raise ValueError(f"ConvTranspose2d: groups={groups} must be >= 1 and divide the {self.weight.shape[0]} "
                             f"input channels of weight {self.weight.shape}")
        out = self.weight.shape[1] * self.groups
        self.bias = _weight(bias, "bias", "ConvTranspose2d", 1)
        if self.bias is None:
            self.bias = np.zeros(out, self.weight.dtype)
        if self.bias.shape != (out,):
            raise ValueError(f"ConvTranspose2d: bias must have shape ({out},) to match weight {self.weight.shape} "
                             f"and groups={self.groups}, got {self.bias.shape}")
        self.stride = _pair(stride, "stride", "ConvTranspose2d")
        self.padding = _pair(padding, "padding", "ConvTranspose2d")
        self.output_padding = _pair(output_padding, "output_padding", "ConvTranspose2d")
        self.dilation = _pair(dilation, "dilation", "ConvTranspose2d")
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0 or min(self.output_padding) < 0:
            raise ValueError(f"ConvTranspose2d: stride and dilation must be >= 1, padding and output_padding >= 0, "
                             f"got stride={self.stride}, dilation={self.dilation}, padding={self.padding}, "
                             f"output_padding={self.output_padding}")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if op >= max(s, d):  # torch's rule: more would add rows no input reaches
                raise ValueError(f"ConvTranspose2d: output_padding must be smaller than stride or dilation, got "
                                 f"output_padding={self.output_padding}, stride={self.stride}, "
                                 f"dilation={self.dilation}")
        c, og, kh, kw = self.weight.shape  # the dense weight of the Conv2d of decompose(), checked now
        _check_expansion("ConvTranspose2d", (og * self.groups, c, (kh - 1) * self.dilation[0] + 1,
                                             (kw - 1) * self.dilation[1] + 1), self.groups, self.dilation,
                         self.weight.dtype.itemsize)

    def __repr__(self):
        c, og, kh, kw = self.weight.shape
        extra = (f", output_padding={self.output_padding}" if self.output_padding != (0, 0) else "") + \
            (f", groups={self.groups}" if self.groups != 1 else "") + \
            (f", dilation={self.dilation}" if self.dilation != (1, 1) else "")
        return (f"ConvTranspose2d({c} -> {og * self.groups}, {kh}x{kw}, stride={self.stride}, "
                f"padding={self.padding}{extra})")

    def out_shape(self, in_shape):
        c, og, kh, kw = self.weight.shape
        if len(in_shape) != 3 or in_shape[0] != c:
            raise ValueError(f"expects input (C={c}, H, W), got per-sample shape {tuple(in_shape)}")
        size = [(n - 1) * s - 2 * p + d * (k - 1) + op + 1 for n, s, p, d, k, op in
                zip(in_shape[1:], self.stride, self.padding, self.dilation, (kh, kw), self.output_padding)]
        if min(size) < 1:
            raise ValueError(f"padding {self.padding} leaves no output for input {tuple(in_shape[1:])}")
        return (og * self.groups,) + tuple(size)

    def decompose(self):
        """``(ZeroInsert2d, Conv2d)`` computing exactly this layer (see the class docstring):
        the Conv2d's compact weight is ``w[g]^T`` flipped in both spatial axes per group."""
        c, og, kh, kw = self.weight.shape
        g, ig = self.groups, c // self.groups
        wc = self.weight.reshape(g, ig, og, kh, kw).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
        conv = Conv2d.from_compact(np.ascontiguousarray(wc.reshape(g * og, ig, kh, kw)), self.bias, 1, 0, g,
                                   self.dilation)
        q = [d * (k - 1) - p for d, k, p in zip(self.dilation, (kh, kw), self.padding)]
        zeros = ZeroInsert2d(self.stride, (q[0], q[0] + self.output_padding[0], q[1], q[1] + self.output_padding[1]))
        return zeros, conv


def _expand_transposed(nodes):
    """Nodes with every ConvTranspose2d replaced by its ``<name>.zeros`` -> ``<name>`` pair."""
    out = []
    for n in nodes:
        if isinstance(n.layer, ConvTranspose2d):
            zeros, conv = n.layer.decompose()
            out += [Node(n.name + ".zeros", zeros, n.inputs), Node(n.name, conv, (n.name + ".zeros",))]
        else:
            out.append(n)
    return out


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


# -- adaptive pooling, upsampling, normalization, elementwise product (issue 15). Forward,
# gradient, LRP and DeepLIFT in ``relprop.core.layers`` (AdaptivePool, Resample, Norm, Mul).
def _adaptive_bounds(n_in, n_out):
    """torch's adaptive pooling windows along one axis: ``[floor(i n_in / n_out), ceil((i + 1)
    n_in / n_out))`` for ``i < n_out`` (``aten/src/ATen/native/AdaptivePooling.h``)."""
    return [((i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)) for i in range(n_out)]


class _AdaptivePool2d(Layer):
    input_rank = 3
    hyper = ("output_size",)

    def __init__(self, output_size):
        self.output_size = _pair(output_size, "output_size", self.kind)
        if min(self.output_size) < 1:
            raise ValueError(f"{self.kind}: output_size must be >= 1, got {self.output_size}")

    def __repr__(self):
        return f"{self.kind}({self.output_size})"

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (C, H, W), got per-sample shape {tuple(in_shape)}")
        return (in_shape[0],) + self.output_size


class AdaptiveAvgPool2d(_AdaptivePool2d):
    """Mean over torch's adaptive windows (``torch.nn.AdaptiveAvgPool2d``, any output size,
    also larger than the input: windows then overlap or repeat pixels)."""

    kind = "AdaptiveAvgPool2d"


class AdaptiveMaxPool2d(_AdaptivePool2d):
    """Max over torch's adaptive windows (``torch.nn.AdaptiveMaxPool2d``); the winner of a
    tie is the first pixel in row-major order, as torch's CPU kernel."""

    kind = "AdaptiveMaxPool2d"


#: Upsample's ``mode`` values (``torch.nn.Upsample``)
UPSAMPLE_MODES = ("nearest", "bilinear")


class Upsample(Layer):
    """Resize of (N, C, H, W) to ``size`` or by ``scale_factor`` (``torch.nn.Upsample`` /
    ``F.interpolate`` with ``recompute_scale_factor`` unset): ``mode="nearest"`` reads source
    pixel ``min(floor(i s), H - 1)``; ``"bilinear"`` interpolates at ``(i + 1/2) s - 1/2``
    (clamped at 0), or at ``i (H - 1) / (Ho - 1)`` with ``align_corners=True``; ``s = 1 /
    scale_factor`` when a factor is given, ``H / Ho`` otherwise. Exactly one of ``size`` and
    ``scale_factor``. Both modes are linear maps, separable over H and W."""

    kind = "Upsample"
    input_rank = 3
    hyper = ("size", "scale_factor", "mode", "align_corners")

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=False):
        if (size is None) == (scale_factor is None):
            raise ValueError(f"Upsample: give exactly one of size and scale_factor, got size={size!r}, "
                             f"scale_factor={scale_factor!r}")
        if not isinstance(mode, str) or mode not in UPSAMPLE_MODES:
            raise ValueError(f"Upsample: mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
        if not isinstance(align_corners, (bool, np.bool_)):
            raise TypeError(f"Upsample: align_corners must be a bool, got {align_corners!r}")
        if mode == "nearest" and align_corners:
            raise ValueError("Upsample: align_corners=True needs mode='bilinear' (torch refuses it for 'nearest')")
        self.size = None if size is None else _pair(size, "size", "Upsample")
        if self.size is not None and min(self.size) < 1:
            raise ValueError(f"Upsample: size must be >= 1, got {self.size}")
        if scale_factor is None:
            self.scale_factor = None
        else:
            sf = (scale_factor, scale_factor) if not isinstance(scale_factor, (tuple, list)) else tuple(scale_factor)
            if len(sf) != 2:
                raise ValueError(f"Upsample: scale_factor must be a number or a pair, got {scale_factor!r}")
            self.scale_factor = tuple(_number(_real(s, "scale_factor", "Upsample"), "scale_factor", "Upsample")
                                      for s in sf)
            if min(self.scale_factor) <= 0:
                raise ValueError(f"Upsample: scale_factor must be > 0, got {scale_factor!r}")
        self.mode, self.align_corners = mode, bool(align_corners)

    def __repr__(self):
        what = f"size={self.size}" if self.size is not None else f"scale_factor={self.scale_factor}"
        return f"Upsample({what}, mode={self.mode!r}, align_corners={self.align_corners})"

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"expects input (C, H, W), got per-sample shape {tuple(in_shape)}")
        if self.size is not None:
            return (in_shape[0],) + self.size
        ho, wo = (int(math.floor(n * s)) for n, s in zip(in_shape[1:], self.scale_factor))
        if ho < 1 or wo < 1 or max(ho, wo) > MAX_INDEX:
            raise ValueError(f"scale_factor {self.scale_factor} gives output {ho}x{wo} for input {in_shape[1:]}")
        return (in_shape[0], ho, wo)


#: the LRP treatments of LayerNorm / GroupNorm (``relprop.core.layers.Norm``)
NORM_LRP_RULES = ("identity", "linear")


def _lrp_rule(v, layer):
    if not isinstance(v, str) or v not in NORM_LRP_RULES:
        raise ValueError(f"{layer}: lrp_rule must be one of {NORM_LRP_RULES}, got {v!r}")
    return v


def _eps(v, layer):
    eps = _number(_real(v, "eps", layer), "eps", layer)
    if eps <= 0:
        raise ValueError(f"{layer}: eps must be a finite number > 0, got {v!r}")
    return eps


class LayerNorm(Layer):
    """``y = (x - mean) / sqrt(var + eps) * weight + bias``, mean and (biased) variance over the
    trailing ``normalized_shape`` dims of each sample (Ba et al. 2016; ``torch.nn.LayerNorm``);
    ``weight``/``bias`` of shape ``normalized_shape`` (ones/zeros when None). ``lrp_rule``:
    ``"identity"`` passes relevance through (Zennit's Pass; Ali et al. 2022, Sec. 3.3, for the
    normalization) or ``"linear"`` (mean and std as constants, the z-rule on the affine map).
    ``axis``: ``None`` (default) normalizes the trailing dims; ``1`` normalizes the channel axis
    of (N, C, ...) at every position, ``normalized_shape`` then ``(C,)`` -- ConvNeXt's
    ``permute(0, 2, 3, 1) -> LayerNorm(C) -> permute(0, 3, 1, 2)`` (Liu et al. 2022, Sec. 2.6;
    torchvision's ``LayerNorm2d``)."""

    kind = "LayerNorm"
    arrays = ("weight", "bias")
    hyper = ("normalized_shape", "eps", "lrp_rule", "axis")

    def __init__(self, normalized_shape, weight=None, bias=None, eps=1e-5, lrp_rule="identity", axis=None):
        if isinstance(normalized_shape, (int, np.integer)) and not isinstance(normalized_shape, (bool, np.bool_)):
            normalized_shape = (normalized_shape,)
        if isinstance(normalized_shape, (str, bytes)) or not hasattr(normalized_shape, "__iter__"):
            raise TypeError(f"LayerNorm: normalized_shape must be an int or a tuple of ints, got {normalized_shape!r}")
        self.normalized_shape = tuple(_int(s, "normalized_shape", "LayerNorm") for s in normalized_shape)
        if not 1 <= len(self.normalized_shape) <= 8 or min(self.normalized_shape) < 1:
            raise ValueError(f"LayerNorm: normalized_shape must be 1 to 8 sizes >= 1, got {self.normalized_shape}")
        nd = len(self.normalized_shape)
        self.weight = _weight(weight, "weight", "LayerNorm", nd)
        self.bias = _weight(bias, "bias", "LayerNorm", nd)
        if self.weight is None:
            self.weight = np.ones(self.normalized_shape, np.float32 if self.bias is None else self.bias.dtype)
        if self.bias is None:
            self.bias = np.zeros(self.weight.shape, self.weight.dtype)
        if self.bias.shape != self.weight.shape:
            raise ValueError(f"LayerNorm: bias must have weight's shape {self.weight.shape}, got {self.bias.shape}")
        # the file loader builds layers on one-element placeholders first: a one-element weight
        # is checked against normalized_shape in out_shape instead
        if self.weight.shape != self.normalized_shape and self.weight.size > 1:
            raise ValueError(f"LayerNorm: weight and bias must have shape normalized_shape {self.normalized_shape}, "
                             f"got {self.weight.shape}")
        self.eps = _eps(eps, "LayerNorm")
        self.lrp_rule = _lrp_rule(lrp_rule, "LayerNorm")
        if axis is not None and (not isinstance(axis, (int, np.integer)) or isinstance(axis, (bool, np.bool_))
                                 or axis != 1):
            raise ValueError(f"LayerNorm: axis must be None (the trailing dims) or 1 (channels first), got {axis!r}")
        if axis is not None and len(self.normalized_shape) != 1:
            raise ValueError(f"LayerNorm: axis=1 normalizes one axis, so normalized_shape must be (C,), "
                             f"got {self.normalized_shape}")
        self.axis = None if axis is None else 1

    def __repr__(self):
        where = "" if self.axis is None else f", axis={self.axis}"
        return f"LayerNorm({self.normalized_shape}, eps={self.eps}, lrp_rule={self.lrp_rule!r}{where})"

    def out_shape(self, in_shape):
        nd = len(self.normalized_shape)
        if self.axis == 1 and (len(in_shape) < 1 or (in_shape[0],) != self.normalized_shape):
            raise ValueError(f"axis=1 with normalized_shape {self.normalized_shape} expects "
                             f"(C={self.normalized_shape[0]}, ...), got per-sample shape {tuple(in_shape)}")
        if self.axis == 1:
            self._check_arrays()
            return in_shape
        if len(in_shape) < nd or tuple(in_shape[len(in_shape) - nd:]) != self.normalized_shape:
            raise ValueError(f"normalized_shape {self.normalized_shape} must be the trailing dims of the input, "
                             f"got per-sample shape {tuple(in_shape)}")
        self._check_arrays()
        return in_shape

    def _check_arrays(self):
        if tuple(self.weight.shape) != self.normalized_shape or tuple(self.bias.shape) != self.normalized_shape:
            raise ValueError(f"weight and bias must have shape {self.normalized_shape}, got {tuple(self.weight.shape)} "
                             f"and {tuple(self.bias.shape)}")


class GroupNorm(Layer):
    """``y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]``, mean and (biased) variance over
    each group of ``C / num_groups`` channels and all positions of a sample (Wu & He 2018;
    ``torch.nn.GroupNorm``); ``weight``, ``bias`` (C,). ``lrp_rule`` as for :class:`LayerNorm`."""

    kind = "GroupNorm"
    arrays = ("weight", "bias")
    hyper = ("num_groups", "eps", "lrp_rule")

    def __init__(self, num_groups, weight, bias=None, eps=1e-5, lrp_rule="identity"):
        self.num_groups = _int(num_groups, "num_groups", "GroupNorm")
        if self.num_groups < 1:
            raise ValueError(f"GroupNorm: num_groups must be >= 1, got {num_groups!r}")
        self.weight = _weight(weight, "weight", "GroupNorm", 1)
        if self.weight is None:
            raise ValueError("GroupNorm: weight (C,) is required (np.ones(C) for no affine transform)")
        self.bias = _weight(bias, "bias", "GroupNorm", 1)
        if self.bias is None:
            self.bias = np.zeros(self.weight.shape, self.weight.dtype)
        if self.bias.shape != self.weight.shape:
            raise ValueError(f"GroupNorm: bias must have weight's shape {self.weight.shape}, got {self.bias.shape}")
        c = self.weight.shape[0]
        if c > 1 and c % self.num_groups:  # one element: a file loader's placeholder, checked in out_shape
            raise ValueError(f"GroupNorm: the {c} channels must split into num_groups={self.num_groups} equal groups")
        self.eps = _eps(eps, "GroupNorm")
        self.lrp_rule = _lrp_rule(lrp_rule, "GroupNorm")

    def __repr__(self):
        return f"GroupNorm({self.num_groups}, {self.weight.shape[0]}, eps={self.eps}, lrp_rule={self.lrp_rule!r})"

    def out_shape(self, in_shape):
        c = self.weight.shape[0]
        if len(in_shape) < 1 or in_shape[0] != c:
            raise ValueError(f"expects (C={c}, ...), got per-sample shape {tuple(in_shape)}")
        if c % self.num_groups:
            raise ValueError(f"the {c} channels must split into num_groups={self.num_groups} equal groups")
        return in_shape


class Mul(Layer):
    """Elementwise product of two inputs with numpy broadcasting of the per-sample shapes (same
    rank), e.g. squeeze-and-excitation ``x * gate``, gate (C, 1, 1) (Hu et al. 2018). LRP sends
    all relevance to the ``signal`` input and none to the other (the gate, held constant; Arras
    et al. 2017 for LSTM gates): ``signal=None`` picks the input of the output's shape (input 0
    when both are)."""

    kind = "Mul"
    n_inputs = 2
    hyper = ("signal",)

    def __init__(self, signal=None):
        if signal is not None and (isinstance(signal, (bool, np.bool_)) or signal not in (0, 1)):
            raise ValueError(f"Mul: signal must be None, 0 or 1 (the input that receives relevance), got {signal!r}")
        self.signal = None if signal is None else int(signal)

    def __repr__(self):
        return f"Mul(signal={self.signal})"

    def out_shape(self, a, b):
        if len(a) != len(b) or any(p != q and 1 not in (p, q) for p, q in zip(a, b)):
            raise ValueError(f"inputs must have one rank and broadcastable sizes (equal, or 1), got {tuple(a)} "
                             f"and {tuple(b)}")
        return tuple(max(p, q) for p, q in zip(a, b))

    def signal_input(self, a, b):
        """The index of the input that receives LRP relevance, for per-sample shapes ``a``, ``b``."""
        if self.signal is not None:
            return self.signal
        out = self.out_shape(a, b)
        return 1 if tuple(b) == out and tuple(a) != out else 0


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
        self.nodes = _expand_transposed(self.nodes)  # stored as zero insertion + Conv2d (ConvTranspose2d)
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

    def check_columns(self, shapes, dtype, depthwise=True, where=None):
        """:meth:`Conv2d.check_columns` in ``dtype`` for every Conv2d node, on its input shape in
        ``shapes`` (from :meth:`infer_shapes`): the layers :meth:`infer_shapes` checked in float32
        (again, for float64 columns) and, with ``depthwise=True``, the depthwise layers it leaves
        out (a method that builds their dense columns: LRP, RAP, the pattern methods). The error
        names the layer, prefixed by ``where`` (e.g. ``"method 'rap'"``) when given."""
        for node in self.nodes:
            layer = node.layer
            if layer.kind != "Conv2d" or (layer.depthwise and not depthwise):
                continue
            try:
                layer.check_columns(shapes[node.inputs[0]], dtype)
            except ValueError as e:
                head = f"{where}, layer" if where else "layer"
                raise ValueError(f"{head} {node.name!r} ({layer!r}): {e}") from None

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
