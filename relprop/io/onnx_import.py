"""Import an ONNX model into the relprop layer-graph IR: ``from_onnx(path_or_model)``.

The importer walks the ONNX graph once, in its (topological) node order. Every ONNX tensor is
either *static* (initializers, ``Constant`` nodes and everything computed from them alone, plus
shape arithmetic such as ``Shape -> Gather -> Unsqueeze -> Concat`` feeding a ``Reshape``) or a
*data* tensor, i.e. the output of a relprop node. Static tensors are folded with
``onnx.reference.ReferenceEvaluator``; data tensors become ``rp.Node`` objects. Shape arithmetic
may depend on the batch size, so static values are kept for two batch sizes (or the model's
fixed one) and a ``Reshape`` must keep the batch axis for both.

ConvNeXt's channels-last block (torch's export of ``permute(0, 2, 3, 1)``, LayerNorm, Linear,
activation, Linear, ``permute(0, 3, 1, 2)``) imports channels first: ``Transpose(perm=[0, 2, 3,
1])``, a chain of nodes each read only by the next, ``Transpose(perm=[0, 3, 1, 2])``, where
``LayerNormalization(axis=-1)`` becomes ``LayerNorm(axis=1)``, ``MatMul`` by a constant (C_in,
C_out) matrix a 1x1 ``Conv2d``, ``Add`` / ``Mul`` of a (C,) constant a per-channel scale (the
``Add`` after a ``MatMul``: its bias), and elementwise activations stay as they are
(:func:`_channels_last_regions`); anything else inside is refused in one line naming the node,
a lone ``Transpose`` too. ``Mul`` of (N, C, H, W) data by a (C, 1, 1) or (1, C, 1, 1) constant
(the layer scale) is a per-channel scale, and so is an ``Add`` of one that is not the bias of
the layer before (a BatchNorm exported as ``Mul`` + ``Add``); every per-channel scale folds into
the ``Conv`` before it when nothing else reads that convolution (:func:`fold_channel_affines`,
which says what that means for LRP), else it is a depthwise 1x1 ``Conv2d``. Until the end of
the import a scale is two vectors (:class:`ChannelAffine`): only one that cannot fold gets the
dense C x C weight of a depthwise convolution, and a refusal of that names its node.

Only the ``onnx`` package is needed at run time. Every import is verified: the relprop forward
pass is compared with ``ReferenceEvaluator`` on a probe input. A final ``Softmax`` /
``LogSoftmax`` is stripped by default with a one-line ``relprop.io.ImportNotice``
(``final_softmax=``); an op the importer does not map fails with one line naming the op type,
the node and what to do (``relprop.io.supported_ops()["onnx"]`` lists the op types).

A model file is data, never trusted to be small: only the ops in :data:`FOLDABLE` are evaluated
on constant inputs (control flow such as ``Loop``, ``If`` or ``Scan`` never is), each folded
tensor's size is predicted from its inputs and checked before it is computed, and the probe
input and every imported activation (at the probe's batch size) are checked too, all against
``max_elements`` and ``max_bytes`` (defaults :data:`MAX_ELEMENTS`, :data:`MAX_BYTES`). The
verification runs only the nodes the output depends on. A model given as bytes or a
``ModelProto`` may not reference external data: there is no directory to resolve it against.
"""
from __future__ import annotations

import math
import os
import warnings

import numpy as np

from ..core import budget
from ..core import graph as G
from . import ImportNotice, apply_final_softmax, check_final_softmax

MIN_OPSET = 11

# op type -> handler method; the keys are also the "supported" list in error messages
_HANDLERS = {
    "Gemm": "_gemm", "MatMul": "_matmul", "Conv": "_conv", "Pad": "_pad",
    "Relu": "_activation", "LeakyRelu": "_activation", "Sigmoid": "_activation",
    "Tanh": "_activation", "Softplus": "_activation",
    "Elu": "_activation", "Gelu": "_activation", "HardSwish": "_activation", "HardSigmoid": "_activation",
    "Mish": "_activation", "Clip": "_clip",
    "MaxPool": "_maxpool", "AveragePool": "_avgpool", "GlobalAveragePool": "_global_avgpool",
    "ReduceMean": "_reduce_mean", "Flatten": "_flatten", "Reshape": "_reshape",
    "Squeeze": "_squeeze", "Unsqueeze": "_squeeze",
    "Add": "_add", "Sum": "_add", "Concat": "_concat", "BatchNormalization": "_batchnorm",
    "Softmax": "_softmax", "LogSoftmax": "_softmax", "Dropout": "_dropout", "Identity": "_identity", "Cast": "_cast",
    "Shape": "_shape", "Size": "_shape",
}
_HANDLERS.update({"Mul": "_mul", "Resize": "_resize", "LayerNormalization": "_layernorm",
                  "ConvTranspose": "_conv_transpose", "InstanceNormalization": "_instancenorm",
                  "GroupNormalization": "_groupnormalization", "GlobalMaxPool": "_global_maxpool"})
SUPPORTED_OPS = tuple(sorted(_HANDLERS))

_FLOAT_TYPES = {1: np.float32, 11: np.float64}  # TensorProto.FLOAT, TensorProto.DOUBLE

#: default limits (``from_onnx(max_elements=, max_bytes=)``) on each folded constant tensor,
#: the verification probe input and each imported activation at the probe's batch size
MAX_ELEMENTS = 2**28
MAX_BYTES = 2**30

# ops evaluated on constant inputs, by how their output size follows from the inputs
_SAME_SIZE = {"Identity", "Cast", "CastLike", "Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Floor", "Ceil",
              "Round", "Sign", "Not", "Relu", "Sigmoid", "Tanh", "Clip", "Reshape", "Flatten", "Transpose",
              "Squeeze", "Unsqueeze", "Slice", "Split", "Concat", "ReduceSum", "ReduceMean", "ReduceProd",
              "ReduceMax", "ReduceMin", "ArgMax", "ArgMin"}  # at most the inputs' total
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Equal", "Less", "Greater",
              "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where"}
_GROWING = {"Constant", "ConstantOfShape", "Expand", "Tile", "Range", "Gather", "MatMul", "Gemm"}  # sized below
#: op types folded on constant inputs (shape arithmetic and weight preprocessing)
FOLDABLE = tuple(sorted(_SAME_SIZE | _BROADCAST | _GROWING))


def _import_onnx():
    try:
        import onnx
        import onnx.numpy_helper
        import onnx.reference
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("relprop.from_onnx needs the 'onnx' package: pip install onnx") from e
    return onnx


def from_onnx(path_or_model, check="raise", canonize=True, max_elements=MAX_ELEMENTS, max_bytes=MAX_BYTES,
              final_softmax="strip"):
    """Build a relprop model from an ONNX model.

    Parameters
    ----------
    path_or_model : str, os.PathLike, bytes or onnx.ModelProto
        The model file (or its serialized bytes) or an already loaded model. It must have one
        float input ``(N, ...)`` with the batch first and one output.
    check : {"raise", "warn"}
        The imported forward pass is compared with ``onnx.reference.ReferenceEvaluator`` on a
        probe input (rtol 1e-4, atol 1e-5 of the output's scale). ``"raise"`` raises
        ``ValueError`` on a mismatch, ``"warn"`` warns. The check always runs: an import
        never silently yields a different model.
    canonize : bool or str
        ``True`` (default) folds every BatchNorm that follows a Conv/Dense layer into it after
        importing (``rp.canonize``, ``fold="after"``, Zennit's merge); ``"after_and_before"``
        also folds a BatchNorm that comes before one (same forward pass, different LRP
        relevance: see ``rp.canonize``); ``False`` keeps every BatchNorm node.
    max_elements, max_bytes : int
        Limits on every constant tensor the import computes (only the ops in ``FOLDABLE`` are
        folded, with their size checked before they run), on the probe input and on every
        activation at the probe's batch size. Defaults ``MAX_ELEMENTS`` (2**28) and
        ``MAX_BYTES`` (1 GiB); raise them for larger models.
    final_softmax : {"strip", "keep", "refuse"}
        What to do with a ``Softmax`` / ``LogSoftmax`` over the classes that is the model's
        last op. ``"strip"`` (default) drops it with a one-line ``relprop.io.ImportNotice``
        (the graph then outputs the logits; relprop explains the pre-softmax score ``s_c``
        either way); ``"keep"`` ends the graph with ``rp.Softmax`` (``LogSoftmax`` is
        refused: relprop has no LogSoftmax layer); ``"refuse"`` raises. The check then
        compares the logits with the reference evaluator's softmax input and, through the
        softmax, with its output.

    Returns
    -------
    relprop.Graph

    Raises
    ------
    ValueError
        Unreadable or invalid model, an op or attribute relprop cannot represent (the message
        names the op type, the node and what to do, in one line; ``relprop.io.supported_ops()``
        lists the op types), a tensor over the size limits (the
        message names the node and the size), external data in a model given as bytes or a
        ``ModelProto``, or a failed forward check.

    Examples
    --------
    >>> net = rp.from_onnx("model.onnx")                      # doctest: +SKIP
    >>> R = rp.attribute(net, x, "lrp.epsilon")               # doctest: +SKIP
    """
    if check not in ("raise", "warn"):
        raise ValueError(f"check must be 'raise' or 'warn', got {check!r}")
    for name, v in (("max_elements", max_elements), ("max_bytes", max_bytes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise TypeError(f"from_onnx: {name} must be an int >= 1, got {v!r}")
    check_final_softmax(final_softmax, "from_onnx")

    from ..core.canonize import canonize as _canonize, importer_fold  # the package's function (rp.canonize)

    fold = importer_fold(canonize)
    onnx = _import_onnx()
    model = _load(onnx, path_or_model)
    importer = _Importer(onnx, model, int(max_elements), int(max_bytes), final_softmax=final_softmax)
    net = importer.build()
    raw = net
    if fold is not None:
        net = _canonize(net, fold)
    _verify(model, importer, net, raw if fold is not None else None, check)
    net.input_shape = tuple(int(s) for s in importer.in_shape)
    if importer.stripped is not None:
        warnings.warn(ImportNotice(f"from_onnx: {importer.stripped}: the graph outputs the logits, which relprop "
                                   "explains anyway; final_softmax='keep' or 'refuse' changes this, "
                                   "warnings.filterwarnings('ignore', category=relprop.io.ImportNotice) silences it"),
                      stacklevel=3)
    return net


# -- loading ----------------------------------------------------------------------------------
def _load(onnx, src):
    if isinstance(src, onnx.ModelProto):
        model = src
        where = "the given ModelProto"
    elif isinstance(src, (bytes, bytearray)):
        where = "the given bytes"
        try:
            model = onnx.load_from_string(bytes(src))
        except Exception as e:  # protobuf raises DecodeError and friends
            raise ValueError(f"could not parse {where} as an ONNX model: {e}") from None
    elif isinstance(src, (str, os.PathLike)):
        where = f"{os.fspath(src)!r}"
        if not os.path.isfile(src):
            raise FileNotFoundError(f"no ONNX file at {where}")
        try:
            model = onnx.load(src)
        except Exception as e:
            raise ValueError(f"could not read an ONNX model from {where}: {type(e).__name__}: {e}") from None
    else:
        raise TypeError(f"from_onnx expects a file path, bytes or an onnx.ModelProto, got {type(src).__name__}")
    if not isinstance(src, (str, os.PathLike)):
        external = _external_tensors(onnx, model)
        if external:
            raise ValueError(f"{where} references external data (tensor {external[0]!r}"
                             f"{f' and {len(external) - 1} more' if len(external) > 1 else ''}); relprop does not "
                             "resolve it against the current directory: pass the model's file path (its external "
                             "data is read next to it) or load the data into the proto first "
                             "(onnx.load_external_data_for_model)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ValueError(f"{where} is not a valid ONNX model (onnx.checker): {e}") from None
    return model


def _external_tensors(onnx, model):
    """Names of the tensors anywhere in ``model`` (initializers, attributes, subgraphs,
    functions) whose data lives in an external file."""
    found = []

    def tensor(t):
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            found.append(t.name or "<unnamed>")

    def nodes(ns):
        for n in ns:
            for a in n.attribute:
                for t in [a.t] * a.HasField("t") + list(a.tensors):
                    tensor(t)
                for st in [a.sparse_tensor] * a.HasField("sparse_tensor") + list(a.sparse_tensors):
                    tensor(st.values)
                    tensor(st.indices)
                for g in [a.g] * a.HasField("g") + list(a.graphs):
                    graph(g)

    def graph(g):
        for t in g.initializer:
            tensor(t)
        for st in g.sparse_initializer:
            tensor(st.values)
            tensor(st.indices)
        nodes(g.node)

    graph(model.graph)
    for f in model.functions:
        nodes(f.node)
    return found


def _elements(shape):
    return math.prod(int(d) for d in shape)


def _broadcast(*shapes):
    """numpy's broadcast of ``shapes`` in Python ints (no array is made, any size works)."""
    nd = max((len(s) for s in shapes), default=0)
    out = []
    for ax in range(nd):
        sizes = {s[ax - nd + len(s)] for s in shapes if ax - nd + len(s) >= 0} - {1}
        if len(sizes) > 1:
            raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def _fold_size(node, ins, attrs):
    """(elements, bytes per element) of the largest output of ``node`` on constant inputs
    ``ins`` (arrays), computed before the op runs; shapes in Python ints."""
    op = node.op_type
    shapes = [tuple(int(d) for d in a.shape) for a in ins]
    item = ins[0].dtype.itemsize if ins else 8  # the data input; shapes, indices and axes come after it
    if op in _SAME_SIZE:
        n = sum(_elements(sh) for sh in shapes) if op == "Concat" else _elements(shapes[0])
        if op in ("Cast", "CastLike"):
            to = attrs.get("to")
            item = ins[1].dtype.itemsize if op == "CastLike" else 8 if to is None else \
                np.dtype(_onnx_np_dtype(to)).itemsize
        return n, item
    if op in _BROADCAST:
        return _elements(_broadcast(*shapes)), max(a.dtype.itemsize for a in ins)
    if op == "Constant":  # a dense or sparse tensor (its dims), or a list or scalar attribute
        value = next(iter(attrs.values()), None)
        if hasattr(value, "dims"):
            return _elements(value.dims), 8
        return (len(value) if isinstance(value, (list, tuple)) else 1), 8
    if op == "ConstantOfShape":
        value = attrs.get("value")
        item = 4 if value is None else np.dtype(_onnx_np_dtype(value.data_type)).itemsize
        return _elements(ins[0].reshape(-1)), item
    if op == "Expand":
        return _elements(_broadcast(shapes[0], tuple(int(d) for d in ins[1].reshape(-1)))), item
    if op == "Tile":
        reps = [int(r) for r in ins[1].reshape(-1)]
        return _elements(shapes[0]) * math.prod(max(r, 0) for r in reps), item
    if op == "Range":
        start, limit, delta = (float(a) for a in ins)
        return max(math.ceil((limit - start) / delta), 0) if delta else 0, item
    if op == "Gather":
        axis = int(attrs.get("axis", 0)) % max(len(shapes[0]), 1)
        return _elements(shapes[0][:axis] + shapes[1] + shapes[0][axis + 1:]), item
    if op in ("MatMul", "Gemm"):
        a, b = shapes[0], shapes[1]
        if op == "Gemm":
            m = a[1] if attrs.get("transA", 0) else a[0]
            n = b[0] if attrs.get("transB", 0) else b[1]
            return m * n, item
        a, b = (a if len(a) > 1 else (1,) + a), (b if len(b) > 1 else b + (1,))
        return _elements(_broadcast(a[:-2], b[:-2])) * a[-2] * b[-1], item
    raise AssertionError(op)  # pragma: no cover - FOLDABLE is the union of the sets above


def _onnx_np_dtype(elem_type):
    import onnx.helper

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type)


def _size(n):
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n} bytes" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024


# -- per-channel affine maps (also used by the torch importer) ----------------------------------
class ChannelAffine:
    """A per-channel affine map ``y[:, c] = gamma[c] x[:, c] + beta[c]`` of (N, C, H, W) data while
    an import runs: the (C,) vectors ``gamma`` and ``beta`` in float64 and the ``dtype`` its layer
    will have. It stands for ConvNeXt's layer scale (Liu et al. 2022, Sec. 2.1, after Touvron et
    al. 2021's LayerScale) and for a constant multiply / add over the channels (``Linear``'s bias
    in a channels-last region, a BatchNorm exported as ``Mul`` + ``Add``). Never part of a
    finished graph: :func:`fold_channel_affines` folds it into the convolution before it or
    builds its depthwise 1x1 ``Conv2d`` (:func:`channel_affine_layer`), so the dense C x C
    weight of that convolution exists only where the map cannot fold."""

    kind = "ChannelAffine"  # read by the importers' checks of the layer before (never a Graph's)
    linear = False

    def __init__(self, gamma, beta, dtype):
        self.gamma, self.beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
        self.dtype = np.dtype(dtype)

    @property
    def channels(self):
        return self.gamma.shape[0]

    def then(self, gamma, beta):
        """This map followed by ``gamma * y + beta``: one map ``(gamma g, gamma b + beta)``."""
        gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
        return ChannelAffine(gamma * self.gamma, gamma * self.beta + beta, self.dtype)

    def __repr__(self):
        return f"ChannelAffine({self.channels})"


def channel_affine_layer(gamma, beta, dtype, why=None):
    """``y[:, c] = gamma[c] x[:, c] + beta[c]`` on (N, C, H, W) as relprop layer: a depthwise 1x1
    ``Conv2d`` (groups = C, weight ``gamma``, bias ``beta``), exact in value. Its dense weight
    is C x C (``Conv2d`` computes with the dense weight): over ``EXPANSION_RATIO`` channels and
    ``relprop.core.budget.BUDGET.expansion`` bytes it is refused with a ValueError whose advice
    fits a per-channel scale (:class:`AffineTooLarge`; ``why``: why it did not fold, for that message)."""
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    c = gamma.shape[0]
    item = G._itemsize(dtype)
    limit = budget.BUDGET.expansion
    if c > G.EXPANSION_RATIO and c * c * item > limit:
        raise AffineTooLarge(
            f"this per-channel scale / shift of {c} channels does not fold into a convolution"
            f"{f' ({why})' if why else ''} and would be a "
            f"depthwise 1x1 Conv2d with a dense ({c}, {c}, 1, 1) weight of {G._size(c * c * item)} ({c}x its "
            f"{G._size(c * item)} of factors), over relprop's limit of {G._size(limit)} for an expanded convolution",
            "put it right after a convolution (or Linear over the channels) that nothing else reads, where it "
            "folds into that layer's weights, or raise the limit (relprop.core.budget.BUDGET = "
            "dataclasses.replace(relprop.core.budget.BUDGET, expansion=<bytes>))")
    return G.Conv2d.from_compact(gamma.reshape(c, 1, 1, 1).astype(dtype), beta.astype(dtype), groups=c)


class AffineTooLarge(ValueError):
    """:func:`channel_affine_layer` refused a dense weight: ``what`` is wrong, ``todo`` what to do."""

    def __init__(self, what, todo):
        super().__init__(f"{what}; {todo}")
        self.what, self.todo = what, todo


def scaled_conv(layer, gamma, beta):
    """``gamma * conv(x) + beta`` per output channel as one ``Conv2d``: ``W' = gamma W``,
    ``b' = gamma b + beta`` (computed in float64, stored in the layer's dtype; the structural
    zeros of a grouped / dilated weight stay zero)."""
    dt = layer.weight.dtype
    gamma, beta = np.asarray(gamma, np.float64), np.asarray(beta, np.float64)
    w = layer.weight.astype(np.float64) * gamma[:, None, None, None]
    b = layer.bias.astype(np.float64) * gamma + beta
    return G.Conv2d(w.astype(dt), b.astype(dt), layer.stride, layer.padding, layer.groups, layer.dilation)


def fold_channel_affines(nodes, error=None):
    """``nodes`` (topological, the last one the output) with every :class:`ChannelAffine` layer
    folded into the layer it reads when nothing else reads that layer and the map is not the
    output: into a ``Conv2d`` (:func:`scaled_conv`), or into another pending map (composed,
    :meth:`ChannelAffine.then`), so a chain of maps folds step by step. A map that cannot fold
    becomes its depthwise 1x1 ``Conv2d`` (:func:`channel_affine_layer`); when that is refused,
    ``error(node name, AffineTooLarge)`` gives the exception to raise (the importer's message
    naming its source op), else the ValueError propagates. The nodes that read a folded node
    read the layer it folded into instead.

    What the fold means for the explanations: the values, the gradient and DeepLIFT's
    multipliers are those of the model (the fold is exact linear algebra, up to rounding). For
    LRP it is what folding a BatchNorm into the layer before it is (``rp.canonize``, Zennit's
    ``SequentialMergeBatchNorm``): the folded convolution's rule sees ``z'_j = gamma_j z_j``.
    With LRP-0 that changes nothing: a bias-free diagonal layer passes its relevance unchanged
    under the z-rule, ``R(z_j) = gamma_j z_j / (gamma_j z_j) R_j`` (LRP-0 and LRP-epsilon: Bach
    et al. 2015; Montavon et al. 2019), so the pair and the fold give
    ``R_i = sum_j a_i w_ij / z_j R_j`` alike. With epsilon the fold applies the stabilizer once,
    to ``gamma_j z_j``: ``a_i w_ij / (z_j + sign(z_j) eps / |gamma_j|)``, the stabilizer's scale
    changed by ``1 / |gamma_j|`` (the unfolded pair applies eps to ``z_j`` and again, a
    negligible ``gamma_j z_j / (gamma_j z_j + eps)``, at the diagonal layer). Sign-splitting
    rules (z+, alpha-beta, gamma, flat) see ``gamma W``: a negative ``gamma_j`` swaps which
    contributions to output j count as positive, as a negative BatchNorm scale does; the
    unfolded diagonal layer under z+ would drop output j's relevance wherever ``gamma_j z_j <=
    0``. A ``beta`` becomes part of the convolution's bias (the bias absorbs relevance as every
    bias does)."""
    readers = {}
    for nd in nodes:
        for i in nd.inputs:
            readers[i] = readers.get(i, 0) + 1
    rename, by_name, out, why = {}, {}, [], {}
    for k, nd in enumerate(nodes):
        inputs = tuple(rename.get(i, i) for i in nd.inputs)
        layer = nd.layer
        src = by_name.get(inputs[0]) if len(inputs) == 1 else None
        if isinstance(layer, ChannelAffine):
            if k == len(nodes) - 1:
                why[nd.name] = "it is the model's output"
            elif src is None:
                why[nd.name] = "it reads the model input"
            elif readers.get(src.name, 0) != 1:
                why[nd.name] = f"{src.name!r} before it has {readers.get(src.name, 0)} readers"
            elif isinstance(src.layer, ChannelAffine):
                src.layer = src.layer.then(layer.gamma, layer.beta)
            elif src.layer.kind == "Conv2d":
                src.layer = scaled_conv(src.layer, layer.gamma, layer.beta)
            else:
                why[nd.name] = f"it follows {src.name!r}, a {src.layer.kind}"
            if nd.name not in why:
                rename[nd.name] = src.name
                readers[src.name] = readers.get(nd.name, 0)
                continue
        new = nd if inputs == tuple(nd.inputs) else G.Node(nd.name, nd.layer, inputs)
        by_name[new.name] = new
        out.append(new)
    for i, nd in enumerate(out):  # the maps left: depthwise 1x1 convolutions
        if isinstance(nd.layer, ChannelAffine):
            try:
                layer = channel_affine_layer(nd.layer.gamma, nd.layer.beta, nd.layer.dtype, why.get(nd.name))
            except AffineTooLarge as e:
                if error is None:
                    raise
                raise error(nd.name, e) from None
            out[i] = G.Node(nd.name, layer, nd.inputs)
    return out


# -- the importer ------------------------------------------------------------------------------
class _Data:
    """A data tensor: produced by relprop node ``node`` with per-sample ``shape``."""

    __slots__ = ("node", "shape")

    def __init__(self, node, shape):
        self.node, self.shape = node, tuple(int(s) for s in shape)


class _Static(dict):
    """A folded tensor: batch size -> numpy array (identical values when batch-independent)."""

    def single(self):
        vals = list(self.values())
        first = vals[0]
        for v in vals[1:]:
            if v.shape != first.shape or not np.array_equal(v, first):
                return None
        return first


class _Importer:
    def __init__(self, onnx, model, max_elements=MAX_ELEMENTS, max_bytes=MAX_BYTES, final_softmax="strip"):
        self.final_softmax = final_softmax
        self.stripped = None  # "stripped the final <op> <node>" when final_softmax="strip" removed one
        self.stripped_kind = None  # "softmax" / "log_softmax"
        self.onnx = onnx
        self.max_elements, self.max_bytes = max_elements, max_bytes
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
        if self.opset is None or self.opset < MIN_OPSET:
            raise ValueError(f"ONNX model uses default-domain opset {self.opset}; relprop imports opset "
                             f"{MIN_OPSET} or newer (re-export, e.g. torch.onnx.export(..., opset_version=17))")
        inits = {}
        for t in g.initializer:
            try:
                inits[t.name] = onnx.numpy_helper.to_array(t)
            except Exception as e:  # malformed tensor data (sizes, types)
                raise ValueError(f"initializer {t.name!r} is not readable: {type(e).__name__}: {e}") from None
        inputs = [v for v in g.input if v.name not in inits]
        if len(inputs) != 1:
            raise ValueError(f"relprop imports models with exactly one data input, this one has {len(inputs)}: "
                             f"{[v.name for v in inputs]}")
        if len(g.output) != 1:
            raise ValueError(f"relprop imports models with exactly one output, this one has {len(g.output)}: "
                             f"{[v.name for v in g.output]}")
        self.input_name = inputs[0].name
        self.output_name = g.output[0].name
        self.dtype, self.in_shape, self.batch = self._input_signature(inputs[0])
        self.probe_batch = self.batch or 2
        self._check_size(f"model input {self.input_name!r}: the verification probe",
                         (self.probe_batch,) + self.in_shape, np.dtype(self.dtype).itemsize)
        # static values are evaluated for these batch sizes; a fixed batch gives one
        self.batches = (self.batch,) if self.batch is not None else (2, 3)
        self.static = {name: _Static({b: a for b in self.batches}) for name, a in inits.items()}
        self.data = {self.input_name: _Data("input", self.in_shape)}
        self.nodes = []
        self.by_name = {}
        self.score_tensor = None  # the input of a final Softmax
        self.origin = {}  # relprop node -> the ONNX tensor it produced (moves along sole-use aliases)
        self.names = {"input"}
        self.onnx_nodes = _fuse_activations(onnx, _fuse_softplus(onnx, _fuse_groupnorm(onnx, list(g.node), inits),
                                                                 inits), inits)
        # id of an ONNX node inside a channels-last region -> (role, the region's first Transpose)
        self.region = _channels_last_regions(onnx, self.onnx_nodes, inits, self.output_name)
        self.affine_nodes = {}  # relprop node of a pending ChannelAffine -> its ONNX node (folded in build())
        self.consumers = {}
        for n in self.onnx_nodes:
            for i in n.input:
                if i and n.op_type not in ("Shape", "Size"):  # shape readers do not read values
                    self.consumers[i] = self.consumers.get(i, 0) + 1
        self.consumers[self.output_name] = self.consumers.get(self.output_name, 0) + 1

    def _input_signature(self, vi):
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type not in _FLOAT_TYPES:
            raise ValueError(f"model input {vi.name!r} must be a float32 or float64 tensor, got {vi.type}")
        dims = list(t.shape.dim)
        if len(dims) < 2:
            raise ValueError(f"model input {vi.name!r} must be (N, ...) with the batch first, got rank {len(dims)}")
        shape = []
        for i, d in enumerate(dims[1:], start=1):
            if not d.HasField("dim_value"):
                raise ValueError(f"model input {vi.name!r}: dimension {i} is symbolic ({d.dim_param!r}); relprop needs "
                                 "fixed per-sample dimensions (only the batch axis may be dynamic)")
            if d.dim_value < 1:
                raise ValueError(f"model input {vi.name!r}: dimension {i} is {d.dim_value}; sizes must be >= 1")
            shape.append(int(d.dim_value))
        batch = dims[0].dim_value if dims[0].HasField("dim_value") else None
        if batch is not None and batch < 1:
            raise ValueError(f"model input {vi.name!r}: the batch dimension is {batch}; it must be >= 1 or symbolic")
        return _FLOAT_TYPES[t.elem_type], tuple(shape), batch

    def _check_size(self, what, shape, itemsize):
        """Raise ValueError unless a tensor of ``shape`` is within the element and byte limits."""
        n = _elements(shape)
        if n > self.max_elements or n * itemsize > self.max_bytes:
            raise ValueError(f"{what} of shape {tuple(shape)} would hold {n} elements ({_size(n * itemsize)}), more "
                             f"than the limits max_elements={self.max_elements}, max_bytes={self.max_bytes} "
                             f"({_size(self.max_bytes)}); pass larger limits to from_onnx for a model this large")

    # -- walking ------------------------------------------------------------------------------
    def build(self):
        needed = self._needed()
        for node in self.onnx_nodes:
            if id(node) not in needed:
                continue
            ins = [i for i in node.input if i]
            if all(i in self.static for i in ins) and node.op_type not in ("Shape", "Size"):
                self._fold(node)
                continue
            for i in ins:
                if i not in self.static and i not in self.data:  # pragma: no cover - checker guarantees
                    raise ValueError(f"ONNX node {self._label(node)}: input {i!r} is not defined")
            role = self.region.get(id(node))
            if role is not None:  # inside Transpose(0, 2, 3, 1) ... Transpose(0, 3, 1, 2)
                handler = _REGION_HANDLERS[role[0]]
            elif node.domain == "relprop":  # a pattern fused by _fuse_groupnorm, _fuse_softplus, _fuse_activations
                handler = "_groupnorm_pattern" if node.op_type == "GroupNorm" else "_activation"
            else:
                handler = _HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                dom = f" (domain {node.domain!r})" if node.domain not in ("", "ai.onnx") else ""
                raise ValueError(f"ONNX node {self._label(node)}: op type {node.op_type!r}{dom} is not supported by "
                                 "relprop's importer; replace that layer in the source model by a mapped one and "
                                 "re-export, or apply it outside the model; relprop.io.supported_ops()['onnx'] lists "
                                 "the op types the importer maps")
            getattr(self, handler)(node)
        out = self.output_name
        if out in self.static:
            raise ValueError(f"the model output {out!r} does not depend on the input")
        if self.data[out].node == "input":
            raise ValueError("the model output is its input: there are no layers to import")
        if len(self.data[out].shape) != 1:
            raise ValueError(f"the model output {out!r} has per-sample shape {self.data[out].shape}; relprop "
                             "explains (N, classes) scores (end the model with a Flatten or a dense layer)")
        return G.Graph(fold_channel_affines(self._prune(self.data[out].node),
                                            lambda name, e: self._error(self.affine_nodes[name], str(e))))

    def _needed(self):
        """ids of the ONNX nodes the graph output depends on (dead branches are skipped)."""
        return _needed_ids(self.onnx_nodes, [self.output_name])

    def _prune(self, out):
        """The relprop nodes ``out`` depends on, in order (drops e.g. layers read only by Shape)."""
        keep, stack = set(), [out]
        while stack:
            name = stack.pop()
            if name in keep or name == "input":
                continue
            keep.add(name)
            stack.extend(self.by_name[name].inputs)
        return [n for n in self.nodes if n.name in keep]

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _label(node):
        if node.name:
            return f"{node.name!r} ({node.op_type})"
        return f"<unnamed> ({node.op_type}) producing {node.output[0]!r}"

    def _error(self, node, msg):
        return ValueError(f"ONNX node {self._label(node)}: {msg}")

    def _attrs(self, node):
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def _check_attrs(self, node, attrs, allowed):
        extra = sorted(set(attrs) - set(allowed))
        if extra:
            raise self._error(node, f"attribute(s) {extra} are not supported; supported: {sorted(allowed)}")

    def _const(self, node, name, what):
        """A batch-independent static input (initializer, Constant or folded) as an array."""
        if name not in self.static:
            raise self._error(node, f"{what} (input {name!r}) must be a constant (initializer or Constant), "
                                    "but it is computed from the model input")
        v = self.static[name].single()
        if v is None:
            raise self._error(node, f"{what} (input {name!r}) depends on the batch size")
        return v

    def _weight(self, a):
        return np.asarray(a, dtype=self.dtype) if np.issubdtype(np.asarray(a).dtype, np.floating) else a

    def _data(self, node, name, what="input"):
        if name not in self.data:
            raise self._error(node, f"{what} {name!r} must be computed from the model input, got a constant")
        return self.data[name]

    def _add_layer(self, node, layer, inputs, shape=None):
        """Append a relprop node for ``node``'s first output; ``shape`` defaults to out_shape."""
        base = node.name or f"{node.op_type}_{len(self.nodes)}"
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        if shape is None:
            try:
                shape = layer.out_shape(*(self.data[i].shape for i in inputs))
            except ValueError as e:
                raise self._error(node, str(e)) from None
        try:
            self._check_size("its output at the probe's batch size", (self.probe_batch,) + tuple(shape),
                             np.dtype(self.dtype).itemsize)
        except ValueError as e:
            raise self._error(node, str(e)) from None
        new = G.Node(name, layer, tuple(self.data[i].node for i in inputs))
        self.nodes.append(new)
        self.by_name[name] = new
        self.origin[name] = node.output[0]
        self.data[node.output[0]] = _Data(name, shape)

    def _make(self, node, cls, *args, **kwargs):
        try:
            return cls(*args, **kwargs)
        except (ValueError, TypeError) as e:
            raise self._error(node, str(e)) from None

    def _alias(self, node, src):
        d = self.data[node.output[0]] = self.data[src]
        if self.origin.get(d.node) == src and self.consumers.get(src, 0) == 1:
            self.origin[d.node] = node.output[0]

    def _unused_extra_outputs(self, node, what):
        for o in node.output[1:]:
            if o and self.consumers.get(o):
                raise self._error(node, f"its output {o!r} ({what}) is used; relprop only imports the first output")

    def _fold(self, node):
        """Evaluate an op on static inputs once per batch size: only the ops in FOLDABLE, each
        after checking the size of its result."""
        from onnx.reference import ReferenceEvaluator

        if node.op_type not in FOLDABLE or node.domain not in ("", "ai.onnx"):
            raise self._error(node, f"op {node.op_type!r} on constant inputs is not evaluated at import (relprop "
                                    f"folds only {', '.join(FOLDABLE)}; control flow such as Loop, If or Scan never "
                                    "runs)")
        ins = [i for i in node.input if i]
        attrs = self._attrs(node)
        outs = {}
        for b in self.batches:
            args = [np.asarray(self.static[i][b]) for i in ins]
            try:
                n, item = _fold_size(node, args, attrs)
            except Exception as e:  # inputs that do not fit the op (shapes, types)
                raise self._error(node, f"could not fold this op on constant inputs: {type(e).__name__}: {e}") from None
            self._check_fold(node, n, item)
            try:
                ev = ReferenceEvaluator(node, opsets={"": self.opset})
                outs[b] = [np.asarray(v) for v in ev.run(None, dict(zip(ins, args)))]
            except Exception as e:
                raise self._error(node, f"could not fold this op on constant inputs: {type(e).__name__}: {e}") from None
            for v in outs[b]:
                self._check_fold(node, v.size, v.dtype.itemsize)
        for k, o in enumerate(node.output):
            if o:
                self.static[o] = _Static({b: outs[b][k] for b in self.batches})

    def _check_fold(self, node, n, itemsize):
        if n > self.max_elements or n * itemsize > self.max_bytes:
            raise self._error(node, f"folding this {node.op_type} on constant inputs would make a tensor of {n} "
                                    f"elements ({_size(n * itemsize)}), more than the limits max_elements="
                                    f"{self.max_elements}, max_bytes={self.max_bytes} ({_size(self.max_bytes)}) "
                                    "(from_onnx keywords)")

    # -- pads ---------------------------------------------------------------------------------
    def _padding(self, node, attrs, in_hw, kernel, strides, ceil_mode=0):
        """Symmetric (ph, pw) equivalent to the node's pads/auto_pad, or a clear error."""
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            pads = list(attrs.get("pads", [0, 0, 0, 0]))
        elif auto == "VALID":
            pads = [0, 0, 0, 0]
        elif auto in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0, 0, 0, 0]
            for ax in range(2):
                n, k, s = in_hw[ax], kernel[ax], strides[ax]
                total = max((-(-n // s) - 1) * s + k - n, 0)
                small, big = total // 2, total - total // 2
                pads[ax], pads[ax + 2] = (small, big) if auto == "SAME_UPPER" else (big, small)
        else:
            raise self._error(node, f"auto_pad={auto!r} is not supported (NOTSET, VALID, SAME_UPPER, SAME_LOWER)")
        if len(pads) != 4:
            raise self._error(node, f"expected 4 pads for a 2-D op, got {pads}")
        out = []
        for ax in range(2):
            lo, hi = pads[ax], pads[ax + 2]
            n, k, s = in_hw[ax], kernel[ax], strides[ax]
            size = (n + lo + hi - k) // s + 1
            if ceil_mode:
                csize = -(-(n + lo + hi - k) // s) + 1
                if (csize - 1) * s >= n + lo:  # ONNX/torch drop a last window starting in the end padding
                    csize -= 1
                if csize != size:
                    raise self._error(node, f"ceil_mode=1 changes the output size on spatial axis {ax} "
                                            f"({csize} instead of {size}); relprop supports floor mode only "
                                            "(ceil_mode=1 is accepted where both agree)")
            # with (lo, lo) padding the windows start at the same places; equal counts => same windows
            if lo != hi and (n + 2 * lo - k) // s + 1 != size:
                raise self._error(node, f"asymmetric pads {pads} (begin {lo}, end {hi} on spatial axis {ax}) "
                                        "cannot be expressed as relprop's symmetric padding")
            out.append(lo)
        return tuple(out)

    def _window(self, node, attrs, x, kernel=None):
        kernel = list(attrs.get("kernel_shape", kernel if kernel is not None else []))
        if len(x.shape) != 3 or len(kernel) != 2:
            raise self._error(node, f"only 2-D ops on (N, C, H, W) tensors are supported, got per-sample input "
                                    f"{x.shape} and kernel {kernel}")
        strides = list(attrs.get("strides", [1, 1]))
        dil = list(attrs.get("dilations", [1, 1]))
        if any(d != 1 for d in dil):
            raise self._error(node, f"dilations={dil} are not supported; relprop supports dilation 1 only")
        return kernel, strides

    # -- op handlers ----------------------------------------------------------------------------
    def _gemm(self, node):
        a = self._attrs(node)
        self._check_attrs(node, a, {"alpha", "beta", "transA", "transB"})
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        A, B = node.input[0], node.input[1]
        C = node.input[2] if len(node.input) > 2 and node.input[2] else None
        x = self._data(node, A, "input A")
        if a.get("transA", 0):
            raise self._error(node, "transA=1 on the data input would move the batch axis; relprop supports "
                                    "Y = alpha * X @ op(B) + beta * C with X (N, K) the data and B, C constants "
                                    "(transB, alpha, beta are applied exactly)")
        if len(x.shape) != 1:
            raise self._error(node, f"input A must be (N, K), got per-sample shape {x.shape}")
        w = self._const(node, B, "B (weight)").astype(np.float64)
        if w.ndim != 2:
            raise self._error(node, f"B must be a matrix, got shape {w.shape}")
        w = w if a.get("transB", 0) else w.T            # (out, in), like torch.nn.Linear
        bias = np.zeros(w.shape[0])
        if C is not None:
            bias = self._channel_bias(node, self._const(node, C, "C (bias)"), (w.shape[0],)) * beta
        self._add_layer(node, self._make(node, G.Dense, self._weight(alpha * w), self._weight(bias)), [A])

    def _matmul(self, node):
        A, B = node.input
        if A not in self.data:
            raise self._error(node, "only X @ W with X computed from the model input and W constant is supported")
        x = self.data[A]
        w = self._const(node, B, "B (weight)")
        if len(x.shape) != 1 or w.ndim != 2:
            raise self._error(node, f"only (N, K) @ (K, M) is supported, got per-sample input {x.shape} and "
                                    f"weight {w.shape}")
        self._add_layer(node, self._make(node, G.Dense, self._weight(w.T), None), [A])

    def _conv(self, node):
        a = self._attrs(node)
        self._check_attrs(node, a, {"auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"})
        X = node.input[0]
        x = self._data(node, X)
        w = self._const(node, node.input[1], "W (weight)")
        b = self._const(node, node.input[2], "B (bias)") if len(node.input) > 2 and node.input[2] else None
        if w.ndim != 4:
            raise self._error(node, f"only 2-D convolutions are supported, got weight shape {w.shape}")
        # group / dilations: the exactly equivalent dense block-diagonal, zero-dilated weight
        # (Conv2d.from_compact), with groups and dilation recorded in the layer
        dil = tuple(int(d) for d in a.get("dilations", [1, 1]))
        kernel, strides = self._window(node, {k: v for k, v in a.items() if k != "dilations"}, x, w.shape[2:])
        if tuple(kernel) != w.shape[2:]:
            raise self._error(node, f"kernel_shape {kernel} does not match the weight {w.shape}")
        if len(dil) != 2:
            raise self._error(node, f"expected 2 dilations for a 2-D convolution, got {list(dil)}")
        dense = self._make(node, G.Conv2d.from_compact, self._weight(w), None if b is None else self._weight(b),
                           groups=int(a.get("group", 1)), dilation=dil)
        if dense.weight.shape[1] != x.shape[0]:
            raise self._error(node, f"weight {w.shape} with group={a.get('group', 1)} reads {dense.weight.shape[1]} "
                                    f"channels, the input has {x.shape[0]}")
        pad = self._padding(node, a, x.shape[1:], dense.weight.shape[2:], strides)
        layer = self._make(node, G.Conv2d, dense.weight, dense.bias, stride=tuple(strides), padding=pad,
                           groups=dense.groups, dilation=dense.dilation)
        self._add_layer(node, layer, [X])

    def _conv_transpose(self, node):
        """ONNX ConvTranspose (2-D; explicit symmetric pads, output_padding, group, dilations):
        ``G.ConvTranspose2d``, stored as zero insertion + a stride-1 Conv2d (exact)."""
        a = self._attrs(node)
        self._check_attrs(node, a, {"auto_pad", "dilations", "group", "kernel_shape", "output_padding", "pads",
                                    "strides"})
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto not in ("NOTSET", ""):
            raise self._error(node, f"auto_pad={auto!r} is not supported for ConvTranspose; export with explicit pads")
        X = node.input[0]
        x = self._data(node, X)
        w = self._const(node, node.input[1], "W (weight)")
        b = self._const(node, node.input[2], "B (bias)") if len(node.input) > 2 and node.input[2] else None
        if w.ndim != 4 or len(x.shape) != 3:
            raise self._error(node, f"only 2-D transposed convolutions on (N, C, H, W) are supported, got weight "
                                    f"{w.shape} and per-sample input {x.shape}")
        if tuple(a.get("kernel_shape", w.shape[2:])) != w.shape[2:]:
            raise self._error(node, f"kernel_shape {list(a['kernel_shape'])} does not match the weight {w.shape}")
        pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
            raise self._error(node, f"pads={pads}: relprop's ConvTranspose2d takes 4 symmetric pads (begin = end)")
        layer = self._make(node, G.ConvTranspose2d, self._weight(w), None if b is None else self._weight(b),
                           tuple(int(v) for v in a.get("strides", [1, 1])), (pads[0], pads[1]),
                           tuple(int(v) for v in a.get("output_padding", [0, 0])), int(a.get("group", 1)),
                           tuple(int(v) for v in a.get("dilations", [1, 1])))
        self._add_layer(node, layer, [X])

    def _pad(self, node):
        """ONNX Pad on (N, C, H, W) data, H and W only: constant (value from the third input),
        reflect, edge (relprop's replicate) and wrap (circular); non-negative pads."""
        a = self._attrs(node)
        self._check_attrs(node, a, {"mode", "pads", "value"})
        x = self._data(node, node.input[0])
        mode = a.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
        if mode not in modes:
            raise self._error(node, f"mode={mode!r} is not supported ({', '.join(modes)})")
        if len(node.input) > 1 and node.input[1]:
            pads = [int(p) for p in np.asarray(self._const(node, node.input[1], "pads")).ravel()]
        else:  # opset < 11: an attribute
            pads = [int(p) for p in a.get("pads", [])]
        value = float(a.get("value", 0.0))
        if len(node.input) > 2 and node.input[2]:
            value = float(np.asarray(self._const(node, node.input[2], "constant_value")).ravel()[0])
        if len(node.input) > 3 and node.input[3]:
            raise self._error(node, "the axes input is not supported; give pads for all 4 axes")
        if len(x.shape) != 3 or len(pads) != 8:
            raise self._error(node, f"only (N, C, H, W) data with 8 pads is supported, got per-sample input {x.shape} "
                                    f"and pads {pads}")
        if any(pads[i] for i in (0, 1, 4, 5)):
            raise self._error(node, f"pads {pads} pad the batch or channel axis; relprop pads H and W only")
        if min(pads) < 0:
            raise self._error(node, f"negative pads {pads} (cropping) are not supported")
        layer = self._make(node, G.Pad, (pads[2], pads[6], pads[3], pads[7]), modes[mode],
                           value if mode == "constant" else 0.0)
        self._add_layer(node, layer, [node.input[0]])

    def _pool(self, node, cls, allowed):
        a = self._attrs(node)
        self._check_attrs(node, a, allowed)
        X = node.input[0]
        x = self._data(node, X)
        kernel, strides = self._window(node, a, x)
        pad = self._padding(node, a, x.shape[1:], kernel, strides, a.get("ceil_mode", 0))
        self._add_layer(node, self._make(node, cls, tuple(kernel), tuple(strides), pad), [X])
        return a, pad

    def _maxpool(self, node):
        self._unused_extra_outputs(node, "Indices")
        self._pool(node, G.MaxPool2d, {"auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                                       "storage_order", "strides"})

    def _avgpool(self, node):
        a = self._attrs(node)
        if not a.get("count_include_pad", 0):
            auto = a.get("auto_pad", b"NOTSET")
            if any(a.get("pads", [])) or auto in (b"SAME_UPPER", b"SAME_LOWER", "SAME_UPPER", "SAME_LOWER"):
                raise self._error(node, "count_include_pad=0 with non-zero padding is not supported; relprop's "
                                        "AvgPool2d divides by the full window (count_include_pad=1)")
        self._pool(node, G.AvgPool2d, {"auto_pad", "ceil_mode", "count_include_pad", "dilations",
                                       "kernel_shape", "pads", "strides"})

    def _global_avgpool(self, node):
        x = self._data(node, node.input[0])
        if len(x.shape) != 3:
            raise self._error(node, f"only (N, C, H, W) input is supported, got per-sample shape {x.shape}")
        self._add_layer(node, G.GlobalAvgPool2d(), [node.input[0]], (x.shape[0], 1, 1))

    def _global_maxpool(self, node):
        """``GlobalMaxPool`` of (N, C, H, W): torch's adaptive max pool to 1 x 1 (the max over H, W)."""
        x = self._data(node, node.input[0])
        if len(x.shape) != 3:
            raise self._error(node, f"only (N, C, H, W) input is supported, got per-sample shape {x.shape}")
        self._add_layer(node, G.AdaptiveMaxPool2d((1, 1)), [node.input[0]], (x.shape[0], 1, 1))

    def _reduce_mean(self, node):
        a = self._attrs(node)
        x = self._data(node, node.input[0])
        axes = a.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self._const(node, node.input[1], "axes").tolist()
        rank = len(x.shape) + 1
        axes = sorted(int(ax) % rank for ax in (axes or []))
        if rank != 4 or axes != [2, 3] or a.get("noop_with_empty_axes", 0):
            raise self._error(node, f"only the spatial mean of (N, C, H, W) (axes [2, 3], as global average "
                                    f"pooling) is supported, got axes {axes} on a rank-{rank} tensor")
        c = x.shape[0]
        if a.get("keepdims", 1):
            self._add_layer(node, G.GlobalAvgPool2d(), [node.input[0]], (c, 1, 1))
        else:  # a private tensor name for the pooled (C, 1, 1) result, then flatten to (C,)
            tmp = node.output[0] + "/pooled"
            pooled = self.onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [tmp], name=node.name)
            self._add_layer(pooled, G.GlobalAvgPool2d(), [node.input[0]], (c, 1, 1))
            self._add_layer(node, G.Flatten(), [tmp], (c,))

    def _flatten(self, node):
        a = self._attrs(node)
        x = self._data(node, node.input[0])
        rank = len(x.shape) + 1
        axis = a.get("axis", 1)
        if axis % rank != 1:
            raise self._error(node, f"Flatten with axis={axis} would merge the batch axis; only axis=1 is supported")
        if len(x.shape) == 1:
            return self._alias(node, node.input[0])
        self._add_layer(node, G.Flatten(), [node.input[0]], (math.prod(x.shape),))

    def _reshape_to(self, node, targets):
        """Add a layer for a per-sample reshape given the full target shape per batch size."""
        X = node.input[0]
        x = self.data[X]
        shapes = {tuple(t) for t in targets.values()}
        if len(shapes) != 1:
            raise self._error(node, "the target shape changes with the batch size in a way that does not keep "
                                    "the batch axis")
        new = shapes.pop()
        if new == x.shape:
            return self._alias(node, X)
        if len(new) == 1:
            return self._add_layer(node, G.Flatten(), [X], new)
        self._add_layer(node, self._make(node, G.Reshape, new), [X], new)

    def _reshape(self, node):
        a = self._attrs(node)
        X = node.input[0]
        x = self._data(node, X)
        if node.input[1] not in self.static:
            raise self._error(node, "the target shape must be a constant or computed from shapes only")
        targets = {}
        for b, t in self.static[node.input[1]].items():
            full = (b,) + x.shape
            t = [int(v) for v in np.asarray(t).reshape(-1)]
            if a.get("allowzero", 0) and 0 in t:
                raise self._error(node, f"allowzero=1 with a 0 in the target shape {t} is not supported")
            t = [full[i] if v == 0 and i < len(full) else v for i, v in enumerate(t)]
            if t.count(-1) == 1:
                rest = math.prod(v for v in t if v != -1)
                t[t.index(-1)] = math.prod(full) // rest if rest else 0
            if math.prod(t) != math.prod(full) or t[0] != b:
                raise self._error(node, f"reshaping {full} to {t} does not keep the batch axis; relprop supports "
                                        "per-sample reshapes (N, ...) -> (N, ...)")
            targets[b] = t[1:]
        self._reshape_to(node, targets)

    def _squeeze(self, node):
        a = self._attrs(node)
        X = node.input[0]
        x = self._data(node, X)
        axes = a.get("axes")
        if len(node.input) > 1 and node.input[1]:
            axes = self._const(node, node.input[1], "axes").tolist()
        full = [None] + list(x.shape)  # None marks the batch axis
        if node.op_type == "Squeeze":
            if axes is None:
                axes = [i for i, d in enumerate(full) if d == 1]
            axes = {int(ax) % len(full) for ax in axes}
            new = [d for i, d in enumerate(full) if i not in axes]
        else:
            rank = len(full) + len(axes)
            new = list(full)
            for ax in sorted(int(ax) % rank for ax in axes):
                new.insert(ax, 1)
        if not new or new[0] is not None:
            raise self._error(node, f"axes {axes} touch the batch axis; only per-sample axes are supported")
        self._reshape_to(node, {0: new[1:]})

    def _add(self, node):
        ins = [i for i in node.input if i]
        data = [i for i in ins if i in self.data]
        consts = [i for i in ins if i in self.static]
        if len(ins) == 1:
            return self._alias(node, ins[0])
        if not consts:
            shapes = {self.data[i].shape for i in data}
            if len(shapes) != 1:
                raise self._error(node, f"adding tensors of different shapes {sorted(shapes)} (broadcasting) is "
                                        "not supported; inputs must have identical shapes")
            return self._add_layer(node, G.Add(), data, shapes.pop())
        if len(data) != 1 or len(consts) != 1:
            raise self._error(node, "a constant can only be added to a single tensor (as a bias)")
        src, c = data[0], self._const(node, consts[0], "the added constant")
        x = self.data[src]
        if not np.any(c) and np.broadcast_shapes(c.shape, (1,) + x.shape) == (1,) + x.shape:
            return self._alias(node, src)
        prev = self.by_name.get(x.node)
        foldable = prev is not None and prev.layer.kind in ("Dense", "Conv2d", "ChannelAffine")
        sole = foldable and self.origin.get(prev.name) == src and self.consumers.get(src, 0) == 1
        if sole:
            return self._fold_bias(node, src, self._channel_bias(node, c, x.shape))
        if self._per_channel(x, c):  # a BatchNorm's shift exported as Add: a per-channel affine map
            self._check_float(node, c, "the added constant")
            return self._add_affine(node, src, np.ones(x.shape[0]), np.asarray(c, np.float64).reshape(-1))
        if not foldable:
            raise self._error(node, "adding a constant is supported only as the bias of the preceding "
                                    "Gemm/MatMul/Conv or, on (N, C, H, W) data, as a per-channel constant of shape "
                                    "(C, 1, 1) or (1, C, 1, 1); here it follows "
                                    f"{'the model input' if prev is None else prev.layer.kind}")
        raise self._error(node, f"cannot fold the constant into {prev.name!r} as a bias: its output {src!r} "
                                "is also used elsewhere")

    @staticmethod
    def _per_channel(x, c):
        """True when the constant ``c`` is one value per channel of (N, C, H, W) data ``x``, shaped
        (C, 1, 1) or (1, C, 1, 1) (torch's export of a (C, 1, 1) parameter)."""
        return len(x.shape) == 3 and tuple(np.shape(c)) in ((x.shape[0], 1, 1), (1, x.shape[0], 1, 1))

    def _check_float(self, node, c, what):
        if not np.issubdtype(np.asarray(c).dtype, np.floating):
            raise self._error(node, f"{what} has dtype {np.asarray(c).dtype}; relprop maps a per-channel constant "
                                    "only as floating-point numbers (cast the initializer to the model's float type)")

    def _fold_bias(self, node, src, bias):
        """The per-channel ``bias`` added to the layer that produced ``src`` (a Dense, Conv2d or
        pending :class:`ChannelAffine`, read by this node alone: the caller checked); ``node``'s
        output becomes an alias of ``src``."""
        prev = self.by_name[self.data[src].node]
        layer = prev.layer
        if layer.kind == "ChannelAffine":
            prev.layer = layer.then(np.ones(layer.channels), bias)
        else:
            new_bias = self._weight(layer.bias.astype(np.float64) + bias)
            if layer.kind == "Dense":
                prev.layer = self._make(node, G.Dense, layer.weight, new_bias)
            else:
                prev.layer = self._make(node, G.Conv2d, layer.weight, new_bias, layer.stride, layer.padding,
                                        layer.groups, layer.dilation)
        self._alias(node, src)  # moves the origin on: a further constant Add folds as well

    def _channel_bias(self, node, c, shape):
        """A constant broadcast onto (1, *shape) as a per-channel (axis 1) vector, or an error."""
        full = (1,) + tuple(shape)
        c = np.asarray(c, dtype=np.float64)
        try:
            if np.broadcast_shapes(c.shape, full) != full:
                raise ValueError
        except ValueError:
            raise self._error(node, f"constant of shape {c.shape} does not broadcast per sample onto "
                                    f"{full[1:]} as a bias") from None
        per = np.broadcast_to(c, full)[0].reshape(shape[0], -1)
        if not np.all(per == per[:, :1]):
            raise self._error(node, f"constant of shape {c.shape} varies within a channel; only per-channel "
                                    "biases can be folded into the preceding layer")
        return per[:, 0].copy()

    def _concat(self, node):
        a = self._attrs(node)
        ins = [i for i in node.input if i]
        if any(i not in self.data for i in ins):
            raise self._error(node, "concatenating a constant with computed tensors is not supported")
        shapes = [self.data[i].shape for i in ins]
        rank = len(shapes[0]) + 1
        axis = int(a["axis"]) % rank
        if axis == 0:
            raise self._error(node, "concatenation along the batch axis (axis 0) is not supported")
        if len(ins) == 1:
            return self._alias(node, ins[0])
        k = axis - 1
        if any(len(s) != rank - 1 or s[:k] + s[k + 1:] != shapes[0][:k] + shapes[0][k + 1:] for s in shapes):
            raise self._error(node, f"input shapes {shapes} do not agree off axis {axis}")
        out = list(shapes[0])
        out[k] = sum(s[k] for s in shapes)
        self._add_layer(node, self._make(node, G.Concat, axis), ins, tuple(out))

    def _mul(self, node):
        """``Mul`` of two computed tensors (squeeze-and-excitation gating): relprop's Mul. ``Mul``
        of (N, C, H, W) data by a constant of shape (C, 1, 1) or (1, C, 1, 1) (ConvNeXt's layer
        scale, as torch exports ``gamma * y``): a per-channel scale (:meth:`_add_affine`)."""
        ins = list(node.input)
        data = [i for i in ins if i in self.data]
        if len(ins) == 2 and len(data) == 1:
            x = self.data[data[0]]
            c = self._const(node, ins[1] if ins[0] == data[0] else ins[0], "the factor")
            if self._per_channel(x, c):
                self._check_float(node, c, "the factor")
                return self._add_affine(node, data[0], np.asarray(c, np.float64).reshape(-1), np.zeros(x.shape[0]))
        if any(i not in self.data for i in ins):
            raise self._error(node, "multiplying by a constant is not supported (fold the factor into the weights of "
                                    "a layer), except a per-channel layer scale of shape (C, 1, 1) or (1, C, 1, 1) on "
                                    "(N, C, H, W) data; relprop's Mul multiplies two tensors computed from the input")
        a, b = (self.data[i].shape for i in ins)
        if len(a) != len(b):
            raise self._error(node, f"product of per-sample shapes {a} and {b}: relprop's Mul needs one rank")
        self._add_layer(node, G.Mul(), ins)

    def _resize(self, node):
        """``Resize`` as torch exports ``F.interpolate``: nearest (asymmetric, floor) or linear
        (half_pixel / pytorch_half_pixel, or align_corners) over H and W of (N, C, H, W)."""
        a = self._attrs(node)
        self._check_attrs(node, a, {"mode", "coordinate_transformation_mode", "nearest_mode", "cubic_coeff_a",
                                    "exclude_outside", "extrapolation_value", "antialias"})
        dec = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in a.items()}
        mode, ctm = dec.get("mode", "nearest"), dec.get("coordinate_transformation_mode", "half_pixel")
        if dec.get("antialias", 0) or dec.get("exclude_outside", 0):
            raise self._error(node, "antialias / exclude_outside are not supported")
        X = node.input[0]
        x = self._data(node, X)
        if len(x.shape) != 3:
            raise self._error(node, f"only (N, C, H, W) input is supported, got per-sample {x.shape}")
        scales = self._const(node, node.input[2], "scales") if len(node.input) > 2 and node.input[2] else None
        sizes = self._const(node, node.input[3], "sizes") if len(node.input) > 3 and node.input[3] else None
        scales = None if scales is not None and np.asarray(scales).size == 0 else scales
        if sizes is not None:
            sizes = [int(s) for s in np.asarray(sizes).ravel()]
            if len(sizes) != 4 or sizes[1] != x.shape[0]:
                raise self._error(node, f"sizes {sizes} must resize only H and W of (N, C, H, W)")
            size, factor = tuple(sizes[2:]), None
        elif scales is not None:
            sc = [float(s) for s in np.asarray(scales).ravel()]
            if len(sc) != 4 or sc[:2] != [1.0, 1.0]:
                raise self._error(node, f"scales {sc} must resize only H and W of (N, C, H, W)")
            size, factor = None, tuple(sc[2:])
        else:
            raise self._error(node, "neither scales nor sizes is given")
        if mode == "nearest":
            if ctm != "asymmetric" or dec.get("nearest_mode", "round_prefer_floor") != "floor":
                raise self._error(node, f"nearest mode with coordinate_transformation_mode={ctm!r}, nearest_mode="
                                        f"{dec.get('nearest_mode', 'round_prefer_floor')!r}: relprop supports torch's "
                                        "nearest (asymmetric, floor)")
            align = False
        elif mode == "linear":
            if ctm not in ("half_pixel", "pytorch_half_pixel", "align_corners"):
                raise self._error(node, f"linear mode with coordinate_transformation_mode={ctm!r} is not supported "
                                        "(half_pixel, pytorch_half_pixel, align_corners)")
            align = ctm == "align_corners"
        else:
            raise self._error(node, f"mode={mode!r} is not supported (nearest, linear)")
        layer = self._make(node, G.Upsample, size, factor, "nearest" if mode == "nearest" else "bilinear", align)
        out = layer.out_shape(x.shape)
        if ctm == "pytorch_half_pixel" and min(out[1:]) == 1:  # it reads pixel 0 there, torch (H - 1) / 2
            raise self._error(node, "pytorch_half_pixel with an output size of 1 is not supported")
        self._add_layer(node, layer, [X], out)

    def _layernorm(self, node):
        """``LayerNormalization`` (opset 17) over the axes from ``axis`` on: relprop's LayerNorm."""
        a = self._attrs(node)
        self._check_attrs(node, a, {"axis", "epsilon", "stash_type"})
        self._unused_extra_outputs(node, "mean / inverse std")
        X = node.input[0]
        x = self._data(node, X)
        rank = len(x.shape) + 1
        axis = int(a.get("axis", -1)) % rank
        if axis == 0:
            raise self._error(node, "normalizing over the batch axis (axis 0) is not supported")
        ns = tuple(x.shape[axis - 1:])
        try:
            scale = np.broadcast_to(self._const(node, node.input[1], "Scale"), ns)
            bias = (np.broadcast_to(self._const(node, node.input[2], "B"), ns)
                    if len(node.input) > 2 and node.input[2] else None)
        except ValueError:
            raise self._error(node, f"Scale / B do not broadcast to the normalized shape {ns}") from None
        layer = self._make(node, G.LayerNorm, ns, self._weight(scale),
                           None if bias is None else self._weight(bias), float(a.get("epsilon", 1e-5)))
        self._add_layer(node, layer, [X], x.shape)

    # -- the channels-last region (_channels_last_regions) ---------------------------------------
    def _region_error(self, node, msg):
        first = self.region[id(node)][1]
        return self._error(node, f"{msg}; it is inside the channels-last region that Transpose(perm=[0, 2, 3, 1]) "
                                 f"{self._label(first)} opens and Transpose(perm=[0, 3, 1, 2]) closes, where relprop "
                                 f"maps only {_REGION_OPS}; move it out of the transposed region in the source model "
                                 "and re-export")

    def _region_begin(self, node):
        """``Transpose(perm=[0, 2, 3, 1])`` opening a region: the region's ops read the (N, C, H, W)
        tensor itself, channels first, and map their last-axis semantics onto axis 1."""
        x = self._data(node, node.input[0])
        if len(x.shape) != 3:
            raise self._region_error(node, f"it must transpose an (N, C, H, W) tensor, got per-sample shape {x.shape}")
        self._alias(node, node.input[0])

    def _region_end(self, node):
        """``Transpose(perm=[0, 3, 1, 2])`` closing a region: the tensor is channels first already."""
        self._data(node, node.input[0])
        self._alias(node, node.input[0])

    def _region_unsupported(self, node):
        raise self._region_error(node, self.region[id(node)][2])

    def _layernorm_channels(self, node):
        """``LayerNormalization(axis=-1)`` inside a region (ConvNeXt's ``permute(0, 2, 3, 1) ->
        LayerNorm(C) -> permute(0, 3, 1, 2)``; torchvision's ``LayerNorm2d``): relprop's
        LayerNorm over axis 1 (``axis=1``)."""
        a = self._attrs(node)
        self._check_attrs(node, a, {"axis", "epsilon", "stash_type"})
        self._unused_extra_outputs(node, "mean / inverse std")
        X = node.input[0]
        x = self._data(node, X)
        ns = (x.shape[0],)
        try:
            scale = np.broadcast_to(self._const(node, node.input[1], "Scale"), ns)
            bias = (np.broadcast_to(self._const(node, node.input[2], "B"), ns)
                    if len(node.input) > 2 and node.input[2] else None)
        except ValueError:
            raise self._error(node, f"Scale / B do not broadcast to the {ns[0]} channels") from None
        layer = self._make(node, G.LayerNorm, ns, self._weight(scale), None if bias is None else self._weight(bias),
                           float(a.get("epsilon", 1e-5)), "identity", 1)
        self._add_layer(node, layer, [X], x.shape)

    def _region_matmul(self, node):
        """``MatMul(x, W)`` with ``W`` (C_in, C_out) constant inside a region (torch's Linear on the
        channels-last tensor): a 1x1 Conv2d with weight ``W^T[:, :, None, None]`` (exact); the
        bias ``Add`` that follows folds into it (``_region_affine``, :func:`fold_channel_affines`)."""
        X = node.input[0]
        x = self._data(node, X)
        w = self._const(node, node.input[1], "B (weight)")
        if w.ndim != 2 or w.shape[0] != x.shape[0]:
            raise self._region_error(node, f"its weight {w.shape} must be ({x.shape[0]}, C_out) to map the "
                                           f"{x.shape[0]} channels")
        layer = self._make(node, G.Conv2d, self._weight(np.ascontiguousarray(w.T)[:, :, None, None]), None)
        self._add_layer(node, layer, [X], (w.shape[1],) + x.shape[1:])

    def _region_affine(self, node):
        """``Mul`` / ``Add`` of a constant of shape (C,) (broadcast over the last axis) inside a
        region: a per-channel affine map (:func:`channel_affine_layer`)."""
        (X,) = [i for i in node.input if i in self.data]
        c_name = node.input[1] if node.input[0] == X else node.input[0]
        x = self.data[X]
        c = self._const(node, c_name, "the constant")
        self._check_float(node, c, "the constant")
        c = np.asarray(c, dtype=np.float64)
        C = x.shape[0]
        if not 1 <= c.ndim <= 4 or c.shape != (1,) * (c.ndim - 1) + (C,):
            raise self._region_error(node, f"its constant has shape {c.shape}; relprop maps a constant of shape ({C},) "
                                           "over the last axis here")
        c = c.reshape(C)
        if node.op_type == "Mul":
            self._add_affine(node, X, c, np.zeros(C))
        else:
            self._add_affine(node, X, np.ones(C), c)

    def _add_affine(self, node, X, gamma, beta):
        """A per-channel affine map of (N, C, H, W) data ``X``: a pure shift added at once to the
        bias of the layer before when nothing else reads it (the bias ``Add`` of a region's
        ``MatMul``: the region guarantees that), else a pending :class:`ChannelAffine` (two
        vectors), which the end of the import folds into the convolution before it where it can
        or builds as a depthwise 1x1 Conv2d (:func:`fold_channel_affines`, which documents what
        the fold means for LRP; a refusal then names this node)."""
        x = self.data[X]
        prev = self.by_name.get(x.node)
        if not np.any(gamma != 1) and prev is not None and prev.layer.kind in ("Conv2d", "ChannelAffine") \
                and self.origin.get(prev.name) == X and self.consumers.get(X, 0) == 1:
            return self._fold_bias(node, X, beta)
        self._add_layer(node, ChannelAffine(gamma, beta, self.dtype), [X], x.shape)
        self.affine_nodes[self.data[node.output[0]].node] = node

    def _norm_vector(self, node, name, n, what):
        """A constant per-channel (or per-group) vector of ``n`` entries, as float64."""
        v = np.asarray(self._const(node, name, what), dtype=np.float64)
        if v.ndim != 1 or v.shape[0] != n:
            raise self._error(node, f"{what} (input {name!r}) must have shape ({n},), got {v.shape}")
        return v

    def _instancenorm(self, node):
        """``InstanceNormalization`` of (N, C, ...): mean and variance per sample and channel, i.e.
        relprop's GroupNorm with one group per channel (Ulyanov et al. 2016; Wu & He 2018, Sec. 3.1)."""
        a = self._attrs(node)
        self._check_attrs(node, a, {"epsilon"})
        X = node.input[0]
        x = self._data(node, X)
        if len(x.shape) < 2:
            raise self._error(node, f"needs (N, C, D1, ...) input, got per-sample shape {x.shape}")
        c = x.shape[0]
        scale = self._norm_vector(node, node.input[1], c, "scale")
        bias = self._norm_vector(node, node.input[2], c, "B")
        layer = self._make(node, G.GroupNorm, c, self._weight(scale), self._weight(bias), float(a.get("epsilon", 1e-5)))
        self._add_layer(node, layer, [X], x.shape)

    def _groupnormalization(self, node):
        """``GroupNormalization`` (Wu & He 2018, Eq. 1): from opset 21 ``scale`` and ``bias`` are
        per channel (C,); opset 18's (deprecated there) are per group (num_groups,), repeated over
        each group's C / num_groups channels as its reference function does."""
        a = self._attrs(node)
        self._check_attrs(node, a, {"epsilon", "num_groups", "stash_type"})
        X = node.input[0]
        x = self._data(node, X)
        if len(x.shape) < 2:
            raise self._error(node, f"needs (N, C, D1, ...) input, got per-sample shape {x.shape}")
        c, groups = x.shape[0], int(a.get("num_groups", 0))
        if groups < 1 or c % groups:
            raise self._error(node, f"num_groups={groups} must be >= 1 and divide the {c} channels")
        n = c if self.opset >= 21 else groups
        scale = self._norm_vector(node, node.input[1], n, f"scale (opset {self.opset})")
        bias = self._norm_vector(node, node.input[2], n, f"bias (opset {self.opset})")
        if n != c:
            scale, bias = np.repeat(scale, c // groups), np.repeat(bias, c // groups)
        layer = self._make(node, G.GroupNorm, groups, self._weight(scale), self._weight(bias),
                           float(a.get("epsilon", 1e-5)))
        self._add_layer(node, layer, [X], x.shape)

    def _target(self, node, name, src_shape, what):
        """The per-sample shape a Reshape target ``name`` gives a (N, *src_shape) tensor, checked
        to keep the batch axis and to be the same for every batch size."""
        if name not in self.static:
            raise self._error(node, f"{what} (input {name!r}) must be a constant or computed from shapes only")
        out = set()
        for b, t in self.static[name].items():
            full = (b,) + tuple(src_shape)
            t = [int(v) for v in np.asarray(t).reshape(-1)]
            t = [full[i] if v == 0 and i < len(full) else v for i, v in enumerate(t)]
            if t.count(-1) == 1:
                rest = math.prod(v for v in t if v != -1)
                t[t.index(-1)] = math.prod(full) // rest if rest else 0
            if math.prod(t) != math.prod(full) or not t or t[0] != b:
                raise self._error(node, f"{what} reshapes {full} to {t}, which does not keep the batch axis")
            out.add(tuple(t[1:]))
        if len(out) != 1:
            raise self._error(node, f"{what} changes with the batch size")
        return out.pop()

    def _groupnorm_pattern(self, node):
        """torch's export of ``nn.GroupNorm(G, C)`` (fused by :func:`_fuse_groupnorm`):
        ``Reshape(N, G, -1) -> InstanceNormalization(s, B) -> Reshape(N, C, ...) [-> Mul(w)]
        [-> Add(b)]``, i.e. GroupNorm with ``weight[c] = s[g] w[c]``, ``bias[c] = B[g] w[c] + b[c]``
        for channel c of group g (Wu & He 2018, Eq. 1 with the affine maps composed)."""
        a = self._attrs(node)
        what = "the GroupNorm pattern Reshape - InstanceNormalization - Reshape - Mul - Add"
        X, t1, s_name, b_name, t2, w_name, bias_name = node.input
        x = self._data(node, X)
        c = x.shape[0] if x.shape else 0
        grouped = self._target(node, t1, x.shape, f"{what}: the first Reshape")
        if len(x.shape) < 1 or len(grouped) < 2:
            raise self._error(node, f"{what}: the first Reshape must give (N, G, ...) from (N, C, ...), got per-sample "
                                    f"{x.shape} -> {grouped}")
        groups = grouped[0]
        s = np.asarray(self._const(node, s_name, f"{what}: InstanceNormalization scale"), dtype=np.float64)
        B = np.asarray(self._const(node, b_name, f"{what}: InstanceNormalization B"), dtype=np.float64)
        if s.shape != (groups,) or B.shape != (groups,):
            raise self._error(node, f"{what}: the first Reshape makes {groups} groups but InstanceNormalization's "
                                    f"scale / B have shapes {s.shape} / {B.shape} (expected ({groups},))")
        if c % groups:
            raise self._error(node, f"{what}: {groups} groups do not split the {c} channels of {x.shape} equally")
        back = self._target(node, t2, grouped, f"{what}: the second Reshape")
        if back != x.shape:
            raise self._error(node, f"{what}: the second Reshape gives per-sample {back}, not the input's {x.shape}")
        w = self._channel_factor(node, w_name, x.shape, f"{what}: the Mul's constant") if w_name else np.ones(c)
        b = self._channel_factor(node, bias_name, x.shape, f"{what}: the Add's constant") if bias_name else np.zeros(c)
        sc, Bc = np.repeat(s, c // groups), np.repeat(B, c // groups)
        layer = self._make(node, G.GroupNorm, groups, self._weight(sc * w), self._weight(Bc * w + b),
                           float(a.get("epsilon", 1e-5)))
        self._add_layer(node, layer, [X], x.shape)

    def _channel_factor(self, node, name, shape, what):
        """A constant that broadcasts onto (1, *shape) and is constant within each channel -> (C,)."""
        v = np.asarray(self._const(node, name, what), dtype=np.float64)
        full = (1,) + tuple(shape)
        try:
            ok = np.broadcast_shapes(v.shape, full) == full
        except ValueError:
            ok = False
        per = np.broadcast_to(v, full)[0].reshape(shape[0], -1) if ok else None
        if per is None or not np.all(per == per[:, :1]):
            raise self._error(node, f"{what} (shape {v.shape}) must be one value per channel of {tuple(shape)}")
        return per[:, 0].copy()

    def _batchnorm(self, node):
        a = self._attrs(node)
        self._check_attrs(node, a, {"epsilon", "momentum", "training_mode", "spatial"})
        if a.get("training_mode", 0) or a.get("spatial", 1) != 1:
            raise self._error(node, "only inference-mode, spatial BatchNormalization is supported")
        self._unused_extra_outputs(node, "training statistics")
        X = node.input[0]
        x = self._data(node, X)
        if len(x.shape) not in (1, 3):
            raise self._error(node, f"only (N, C) or (N, C, H, W) input is supported, got per-sample {x.shape}")
        scale, bias, mean, var = (self._weight(self._const(node, n, w)) for n, w in
                                  zip(node.input[1:5], ("scale", "B", "input_mean", "input_var")))
        layer = self._make(node, G.BatchNorm2d, scale, bias, mean, var, eps=float(a.get("epsilon", 1e-5)))
        self._add_layer(node, layer, [X], x.shape)

    def _activation(self, node):
        a = self._attrs(node)
        X = node.input[0]
        self._data(node, X)
        op = node.op_type
        if op == "LeakyRelu":
            layer = self._make(node, G.LeakyReLU, negative_slope=float(a.get("alpha", 0.01)))
        elif op == "Softplus":
            beta = float(a.get("beta", 1.0)) if node.domain == "relprop" else 1.0
            # ONNX Softplus has no threshold; torch's 20 changes it by < 2e-9 (log1p(exp(-20)))
            threshold = float(a.get("threshold", 20.0)) if node.domain == "relprop" else 20.0
            layer = self._make(node, G.Softplus, beta=beta, threshold=threshold)
        elif op == "Elu":
            layer = self._make(node, G.ELU, alpha=float(a.get("alpha", 1.0)))
        elif op == "Gelu":  # opset 20, or a decomposed GELU fused by _fuse_activations
            approx = a.get("approximate", "none")
            layer = self._make(node, G.GELU, approx.decode() if isinstance(approx, bytes) else approx)
        elif op == "HardSigmoid":
            alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
            # torch exports hardsigmoid as alpha = float32(1/6), beta = 0.5 (the default)
            if abs(alpha - 1 / 6) > 1e-7 or beta != 0.5:
                raise self._error(node, f"HardSigmoid with alpha={alpha}, beta={beta} is not supported; relprop's "
                                        "Hardsigmoid is torch's relu6(x + 3) / 6 (alpha=1/6, beta=0.5)")
            layer = G.Hardsigmoid()
        else:
            layer = {"Relu": G.ReLU, "Sigmoid": G.Sigmoid, "Tanh": G.Tanh, "HardSwish": G.Hardswish, "Mish": G.Mish,
                     "SiLU": G.SiLU}[op]()
        self._add_layer(node, layer, [X])

    def _clip(self, node):
        """Clip(x, 0, 6) is ReLU6 (how torch exports relu6 / hardtanh(0, 6)); Clip(x, 0) is ReLU."""
        X = node.input[0]
        self._data(node, X)
        bounds = []
        for k, what in ((1, "min"), (2, "max")):
            name = node.input[k] if len(node.input) > k else ""
            if not name:  # an absent bound: no clipping on that side
                bounds.append(None)
                continue
            v = np.asarray(self._const(node, name, what))
            if v.size != 1:
                raise self._error(node, f"Clip's {what} must be a scalar, got shape {v.shape}")
            bounds.append(float(v.reshape(-1)[0]))
        if bounds == [0.0, 6.0]:
            layer = G.ReLU6()
        elif bounds == [0.0, None]:
            layer = G.ReLU()
        else:
            raise self._error(node, f"Clip with min={bounds[0]}, max={bounds[1]} is not supported; relprop maps "
                                    "Clip(x, 0, 6) to ReLU6 and Clip(x, 0) to ReLU only")
        self._add_layer(node, layer, [X])

    def _softmax(self, node):
        a = self._attrs(node)
        x = self._data(node, node.input[0])
        op = node.op_type
        axis = int(a.get("axis", -1 if self.opset >= 13 else 1))
        if len(x.shape) != 1 or axis % 2 != 1:
            raise self._error(node, f"only a {op} over the classes of (N, classes) scores is supported, got "
                                    f"per-sample shape {x.shape} and axis {axis}; flatten the scores to (N, classes) "
                                    "first, or apply it outside the model")
        if node.output[0] != self.output_name:
            raise self._error(node, f"{op} must be the model's last op (relprop explains its input scores); move it "
                                    "out of the model or to its end")
        if self.final_softmax == "refuse":
            raise self._error(node, f"the model ends in a {op} and final_softmax='refuse'; pass final_softmax='strip' "
                                    "to import the logits it is applied to (relprop explains the pre-softmax score "
                                    "s_c either way)")
        if self.final_softmax == "keep" and op == "LogSoftmax":
            raise self._error(node, "final_softmax='keep' cannot keep a LogSoftmax: relprop has no LogSoftmax layer; "
                                    "pass final_softmax='strip' (the graph then outputs the logits, which every method "
                                    "explains anyway) or end the model in a Softmax")
        self.score_tensor = node.input[0]
        if self.final_softmax == "keep":
            self._add_layer(node, G.Softmax(), [node.input[0]])
            return
        if node.input[0] == self.input_name:
            raise self._error(node, f"the model is only a {op}; there are no layers left to import after stripping it")
        self._alias(node, node.input[0])
        self.stripped = f"stripped the final {op} node {self._label(node)}"
        self.stripped_kind = "log_softmax" if op == "LogSoftmax" else "softmax"

    def _dropout(self, node):
        a = self._attrs(node)
        self._unused_extra_outputs(node, "mask")
        ratio = float(a.get("ratio", 0.5))
        if len(node.input) > 1 and node.input[1]:
            ratio = float(self._const(node, node.input[1], "ratio"))
        if len(node.input) > 2 and node.input[2] and bool(self._const(node, node.input[2], "training_mode")):
            raise self._error(node, "training_mode=True is not supported (inference only)")
        X = node.input[0]
        self._data(node, X)
        self._add_layer(node, self._make(node, G.Dropout, p=ratio), [X])

    def _identity(self, node):
        self._data(node, node.input[0])
        self._alias(node, node.input[0])

    def _cast(self, node):
        to = self._attrs(node).get("to")
        if _FLOAT_TYPES.get(to) is not self.dtype:
            raise self._error(node, f"casting the data to ONNX type {to} is not supported (only a no-op cast to "
                                    "the model's float type)")
        self._alias(node, node.input[0])

    def _shape(self, node):
        a = self._attrs(node)
        x = self._data(node, node.input[0])
        vals = {}
        for b in self.batches:
            full = np.array((b,) + x.shape, dtype=np.int64)
            if node.op_type == "Size":
                vals[b] = np.array(np.prod(full), dtype=np.int64)
            else:
                start, end = a.get("start", 0), a.get("end", len(full))
                vals[b] = full[slice(start, end)]
        self.static[node.output[0]] = _Static(vals)


# -- pattern fusion ------------------------------------------------------------------------------
def _fuse_softplus(onnx, nodes, inits):
    """Replace torch's exported softplus(beta, threshold) patterns by one relprop-domain Softplus.

    Legacy export: Div(Softplus(Mul(x, beta)), beta). Dynamo export additionally wraps it in
    Where(Greater(beta*x, threshold), x, ...) (beta = 1: Mul/Div omitted). The intermediate
    nodes become dead and are skipped unless something else reads them.
    """
    producer = {o: n for n in nodes for o in n.output if o}
    consts = dict(inits)
    for n in nodes:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)

    def scalar(name):
        v = consts.get(name)
        return float(v) if v is not None and np.asarray(v).size == 1 else None

    def scaled(u):  # u = Mul(x, beta) -> (x, beta)
        m = producer.get(u)
        if m is None or m.op_type != "Mul" or m.domain not in ("", "ai.onnx"):
            return None
        for x, b in (m.input, m.input[::-1]):
            if scalar(b) is not None and scalar(b) > 0 and x not in consts:
                return x, scalar(b)
        return None

    fused_from = {}  # output of a fused Div -> (x, beta, u)

    def softplus_of(s):  # s = Softplus(x) or Div(Softplus(Mul(x, b)), b) -> (x, beta, u)
        if s in fused_from:
            return fused_from[s]
        p = producer.get(s)
        if p is None:
            return None
        if p.op_type == "Softplus" and p.domain in ("", "ai.onnx"):
            return p.input[0], 1.0, p.input[0]
        if p.op_type == "Div" and p.domain in ("", "ai.onnx") and scalar(p.input[1]) is not None:
            q = producer.get(p.input[0])
            if q is not None and q.op_type == "Softplus" and q.domain in ("", "ai.onnx"):
                xs = scaled(q.input[0])
                if xs is not None and xs[1] == scalar(p.input[1]):
                    return xs[0], xs[1], q.input[0]
        return None

    out = []
    for n in nodes:
        fused = None
        if n.op_type == "Div":
            sp = softplus_of(n.output[0])
            if sp is not None and sp[1] != 1.0:
                fused = (sp[0], sp[1], 20.0)
                fused_from[n.output[0]] = sp
        elif n.op_type == "Where" and len(n.input) == 3:
            cond, x, s = n.input
            g, sp = producer.get(cond), softplus_of(s)
            if g is not None and g.op_type == "Greater" and sp is not None and sp[0] == x:
                thr = scalar(g.input[1])
                if thr is not None and g.input[0] == sp[2]:
                    fused = (x, sp[1], thr)
        if fused is None:
            out.append(n)
            continue
        x, beta, thr = fused
        new = onnx.helper.make_node("Softplus", [x], [n.output[0]], name=n.name, domain="relprop",
                                    beta=beta, threshold=thr)
        out.append(new)
        producer[n.output[0]] = new
    return out


def _fuse_groupnorm(onnx, nodes, inits):
    """Replace torch's export of ``nn.GroupNorm`` (TorchScript and dynamo exporters, opsets 17-20)
    by one relprop-domain ``GroupNorm`` node:
    ``Reshape(x, t1) -> InstanceNormalization(scale, B) -> Reshape(t2) [-> Mul(w)] [-> Add(b)]``,
    each intermediate read only by the next, ``w`` and ``b`` not computed from the model input.
    The match is structural; ``_Importer._groupnorm_pattern`` checks the shapes and constants
    (``t1`` = (N, G, ...), ``t2`` = x's shape, per-channel ``w`` / ``b``) and names the mismatch
    in one line. The inputs of the fused node: ``x, t1, scale, B, t2, w or "", b or ""``.
    """
    producer = {o: n for n in nodes for o in n.output if o}
    uses = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    # tensors computed from the model input (Shape / Size read shapes only, not values)
    produced = set(producer)
    dynamic = {i for n in nodes for i in n.input if i and i not in produced and i not in inits}
    for n in nodes:
        if n.op_type not in ("Shape", "Size") and any(i in dynamic for i in n.input):
            dynamic.update(o for o in n.output if o)

    def op(name, t):
        p = producer.get(name)
        return p if p is not None and p.op_type == t and p.domain in ("", "ai.onnx") else None

    def copies_zeros(r):  # allowzero=1 reads a 0 in the target literally: left to the Reshape handler
        return not any(a.name == "allowzero" and onnx.helper.get_attribute_value(a) for a in r.attribute)

    def sole_reader(name, t):  # the single node reading ``name``, if it is an op of type t
        if uses.get(name, 0) != 1:
            return None
        readers = [n for n in nodes if name in n.input and n.op_type == t and n.domain in ("", "ai.onnx")]
        return readers[0] if len(readers) == 1 else None

    def const_operand(n, x):  # the other input of a binary node reading x, if not data
        if len(n.input) != 2 or list(n.input).count(x) != 1:
            return None
        other = n.input[1] if n.input[0] == x else n.input[0]
        return other if other not in dynamic else None

    replace = {}  # id of the last matched node -> fused node
    for inorm in nodes:
        if inorm.op_type != "InstanceNormalization" or inorm.domain not in ("", "ai.onnx") or len(inorm.input) != 3:
            continue
        r1 = op(inorm.input[0], "Reshape")
        if r1 is None or uses.get(inorm.input[0], 0) != 1 or r1.input[0] not in dynamic or not copies_zeros(r1):
            continue
        r2 = sole_reader(inorm.output[0], "Reshape")
        if r2 is None or r2.input[0] != inorm.output[0] or not copies_zeros(r2):
            continue
        last, w, b = r2, "", ""
        mul = sole_reader(r2.output[0], "Mul")
        if mul is not None and const_operand(mul, r2.output[0]) is not None:
            last, w = mul, const_operand(mul, r2.output[0])
        add = sole_reader(last.output[0], "Add")
        if add is not None and const_operand(add, last.output[0]) is not None:
            last, b = add, const_operand(add, last.output[0])
        eps = [a for a in inorm.attribute if a.name == "epsilon"]
        new = onnx.helper.make_node("GroupNorm", [r1.input[0], r1.input[1], inorm.input[1], inorm.input[2],
                                                  r2.input[1], w, b], [last.output[0]], name=inorm.name,
                                    domain="relprop")
        new.attribute.extend(eps)
        replace[id(last)] = new
    return [replace.get(id(n), n) for n in nodes]


#: what a channels-last region may hold (the error for anything else says it)
_REGION_OPS = ("LayerNormalization over the last axis, MatMul by a constant (C_in, C_out) matrix, Add / Mul of a "
               "constant of shape (C,), elementwise activations, Identity, Dropout and Cast")
_REGION_ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Elu", "Gelu", "HardSwish", "HardSigmoid",
                       "Mish", "Clip", "Identity", "Dropout", "Cast"}
_REGION_FUSED = {"Gelu", "SiLU", "Mish", "Softplus"}  # relprop-domain activations (_fuse_activations, _fuse_softplus)
_REGION_HANDLERS = {"begin": "_region_begin", "end": "_region_end", "layernorm": "_layernorm_channels",
                    "matmul": "_region_matmul", "affine": "_region_affine", "unsupported": "_region_unsupported"}


def _channels_last_regions(onnx, nodes, inits, output):
    """The channels-last regions of torch's export of ConvNeXt's block (Liu et al. 2022, Fig. 4;
    torchvision's ``CNBlock``): ``Transpose(perm=[0, 2, 3, 1])``, a chain of nodes each read
    only by the next (among the nodes the output depends on: patterns fused before leave their
    dead parts behind), then ``Transpose(perm=[0, 3, 1, 2])``. Returns ``{id(node): (role,
    first Transpose[, why])}`` for every node of every region; the importer imports the region
    channels first (``_Importer._region_*``): LayerNormalization(axis=-1) as LayerNorm(axis=1),
    ``MatMul(x, W)`` (torch's Linear; the TorchScript exporter writes it as MatMul + Add(bias)
    at opsets 17 and 20) as a 1x1 Conv2d, ``Add`` / ``Mul`` of a (C,) constant as a per-channel
    affine map, elementwise activations as they are (GELU is Erf arithmetic at opset 17, fused
    into one node by :func:`_fuse_activations` before, and ``Gelu`` at 20). Any other node of a
    region gets the role ``"unsupported"`` and fails in one line naming it. A lone ``Transpose``
    belongs to no region and stays unsupported."""
    live = _needed_ids(nodes, [output])
    nodes = [n for n in nodes if id(n) in live]
    producer = {o: n for n in nodes for o in n.output if o}
    readers = {}
    for n in nodes:
        for i in n.input:
            if i:
                readers.setdefault(i, []).append(n)
    produced = set(producer)
    dynamic = {i for n in nodes for i in n.input if i and i not in produced and i not in inits}
    for n in nodes:
        if n.op_type not in ("Shape", "Size") and any(i in dynamic for i in n.input):
            dynamic.update(o for o in n.output if o)

    def standard(n):
        return n.domain in ("", "ai.onnx")

    def perm(n):
        if n.op_type != "Transpose" or not standard(n):
            return None
        p = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "perm"), None)
        return None if p is None else tuple(int(v) for v in p)

    def role(n, cur):
        """(role[, why]) of node ``n`` reading the region's tensor ``cur``."""
        others = [i for i in n.input if i and i != cur]
        data_others = [i for i in others if i in dynamic]
        extra = [o for o in n.output[1:] if o and o in readers]
        if extra:
            return "unsupported", f"its extra output {extra[0]!r} is used"
        if n.domain == "relprop" and n.op_type in _REGION_FUSED and not data_others:
            return ("elementwise",)
        if not standard(n):
            return "unsupported", f"op type {n.op_type!r} (domain {n.domain!r}) is not supported"
        if n.op_type == "LayerNormalization" and n.input[0] == cur and not data_others:
            axis = next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), -1)
            if int(axis) in (-1, 3):
                return ("layernorm",)
            return "unsupported", f"it normalizes from axis {axis}, not over the last axis (the channels)"
        if n.op_type == "MatMul" and n.input[0] == cur and not data_others:
            return ("matmul",)
        if n.op_type in ("Add", "Mul") and len(n.input) == 2 and len(others) == 1 and not data_others:
            return ("affine",)
        if n.op_type in _REGION_ELEMENTWISE and not data_others:
            return ("elementwise",)
        if data_others:
            return "unsupported", f"it combines the region's tensor with {data_others[0]!r}, computed from the input"
        return "unsupported", f"op type {n.op_type!r} is not supported there"

    regions = {}
    for first in nodes:
        if perm(first) != (0, 2, 3, 1) or first.input[0] not in dynamic:
            continue
        cur, chain = first.output[0], []
        while cur != output and len(readers.get(cur, [])) == 1 and list(readers[cur][0].input).count(cur) == 1:
            nxt = readers[cur][0]
            if perm(nxt) is not None:
                if perm(nxt) == (0, 3, 1, 2):
                    regions[id(first)] = ("begin", first)
                    for n, r in chain:
                        regions[id(n)] = (r[0], first) + tuple(r[1:])
                    regions[id(nxt)] = ("end", first)
                break
            chain.append((nxt, role(nxt, cur)))
            cur = nxt.output[0]
    # elementwise ops import with their own handlers (any layout): only the others are dispatched
    return {k: v for k, v in regions.items() if v[0] != "elementwise"}


def _fuse_activations(onnx, nodes, inits):
    """Replace the decomposed forms torch exports for SiLU, Mish and GELU by one relprop-domain
    node each (ONNX has no SiLU op, Mish only from opset 18 and Gelu only from opset 20):

    * SiLU: ``Mul(x, Sigmoid(x))`` (every opset, both exporters);
    * Mish: ``Mul(x, Tanh(Softplus(x)))`` (the TorchScript exporter);
    * GELU exact: ``0.5 * x * (1 + Erf(x / sqrt 2))`` (``Div`` by sqrt 2 or ``Mul`` by 1/sqrt 2);
    * GELU tanh: ``0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))``, ``x^3`` as
      ``Pow(x, 3)`` or ``x * (x * x)``.

    Products match in any order and grouping of their ``Mul`` factors (each inner ``Mul`` read
    only there); constants must equal the formula's to float32 precision. The matched nodes
    become dead and are skipped unless something else reads them (then they import on their
    own, or the import names the op it cannot map, e.g. ``Erf``).
    """
    producer = {o: n for n in nodes for o in n.output if o}
    consts = dict(inits)
    for n in nodes:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    uses = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1

    def scalar(name):
        v = consts.get(name)
        return float(np.asarray(v).reshape(-1)[0]) if v is not None and np.asarray(v).size == 1 else None

    def close(v, ref):
        return v is not None and abs(v - ref) <= 1e-6 * abs(ref)

    def op(name, *types):
        p = producer.get(name)
        return p if p is not None and p.op_type in types and p.domain in ("", "ai.onnx") else None

    def product(name, top=False):
        """``name`` as ``coefficient * prod(factors)`` over Mul/Div/Pow nodes read only there."""
        if scalar(name) is not None:
            return scalar(name), []
        p = op(name, "Mul", "Div", "Pow")
        if p is None or (not top and uses.get(name, 0) != 1):
            return 1.0, [name]
        if p.op_type == "Mul":
            (c1, f1), (c2, f2) = product(p.input[0]), product(p.input[1])
            return c1 * c2, f1 + f2
        d = scalar(p.input[1])
        if p.op_type == "Div" and d:
            c1, f1 = product(p.input[0])
            return c1 / d, f1
        if p.op_type == "Pow" and d in (2.0, 3.0):
            c1, f1 = product(p.input[0])
            return c1 ** d, f1 * int(d)
        return 1.0, [name]

    def one_plus(name):  # Add(1, v) or Add(v, 1) -> v
        p = op(name, "Add")
        if p is not None:
            for one, v in (p.input, p.input[::-1]):
                if close(scalar(one), 1.0):
                    return v
        return None

    def gelu(x, a):  # a = 1 + erf(x / sqrt 2) or 1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)) -> approximate
        v = one_plus(a)
        if op(v, "Erf") is not None:
            c, f = product(op(v, "Erf").input[0], top=True)
            return "none" if close(c, 1 / math.sqrt(2)) and f == [x] else None
        if op(v, "Tanh") is not None:
            c, f = product(op(v, "Tanh").input[0], top=True)
            inner = op(f[0], "Add") if len(f) == 1 and close(c, math.sqrt(2 / math.pi)) else None
            if inner is not None:
                for lin, cube in (inner.input, inner.input[::-1]):
                    c3, f3 = product(cube, top=True)
                    if lin == x and close(c3, 0.044715) and f3 == [x, x, x]:
                        return "tanh"
        return None

    def match(n):  # the final Mul of a pattern -> (op type, x, attributes) or None
        coef, fs = product(n.output[0], top=True)
        if len(fs) != 2:
            return None
        for x, other in (fs, fs[::-1]):
            if x in consts:
                continue
            s = op(other, "Sigmoid")
            if close(coef, 1.0) and s is not None and s.input[0] == x:
                return "SiLU", x, {}
            t = op(other, "Tanh")
            sp = op(t.input[0], "Softplus") if t is not None else None
            if close(coef, 1.0) and sp is not None and sp.input[0] == x:
                return "Mish", x, {}
            if close(coef, 0.5):
                approx = gelu(x, other)
                if approx is not None:
                    return "Gelu", x, {"approximate": approx}
        return None

    out = []
    for n in nodes:
        m = match(n) if n.op_type == "Mul" and n.domain in ("", "ai.onnx") else None
        if m is None:
            out.append(n)
            continue
        kind, x, attrs = m
        new = onnx.helper.make_node(kind, [x], [n.output[0]], name=n.name, domain="relprop", **attrs)
        out.append(new)
        producer[n.output[0]] = new
    return out


# -- verification ---------------------------------------------------------------------------------
def _verify(model, importer, net, raw, check):
    """Compare the relprop forward with ReferenceEvaluator on a probe input (and the scores
    before a final Softmax, which hides shifts of the scores)."""
    b = importer.probe_batch
    x = np.random.default_rng(0).standard_normal((b,) + importer.in_shape).astype(importer.dtype)
    names = [importer.output_name] + ([importer.score_tensor] if importer.score_tensor else [])
    try:
        ref_model = _pruned(model, names)
        refs = [np.asarray(r) for r in _reference(ref_model, importer.opset).run(names, {importer.input_name: x})]
    except Exception as e:
        _report(check, f"could not run onnx.reference.ReferenceEvaluator to verify the import: "
                       f"{type(e).__name__}: {e}")
        return
    kind = importer.stripped_kind
    if kind is not None:  # the graph ends at the logits: they, and their softmax against the model's output
        checks = [(f"output through the stripped {kind}", lambda m: apply_final_softmax(m(x), kind), refs[0]),
                  ("scores before the stripped softmax", lambda m: m(x), refs[1])]
    else:
        checks = [("output", lambda m: m(x), refs[0])]
        if importer.score_tensor:
            checks.append(("scores before the Softmax", lambda m: G.Graph(m.nodes[:-1])(x), refs[1]))
    for what, run, ref in checks:
        problem = _compare(run(net), ref)
        if problem and raw is not None and what == "output" and not _compare(raw(x), ref):
            problem += " (the import itself agrees; rp.canonize changed the output)"
        if problem:
            _report(check, f"imported model disagrees with the ONNX reference evaluator on a probe input "
                           f"({what}): {problem}")
            return


def _needed_ids(nodes, outputs):
    """ids of the ONNX ``nodes`` that the tensors ``outputs`` depend on."""
    producer = {o: n for n in nodes for o in n.output if o}
    needed, stack = set(), list(outputs)
    while stack:
        n = producer.get(stack.pop())
        if n is None or id(n) in needed:
            continue
        needed.add(id(n))
        stack.extend(i for i in n.input if i)
    return needed


def _pruned(model, names):
    """``model`` with only the nodes ``names`` depend on (ReferenceEvaluator runs every node,
    and the import checked only these)."""
    nodes = list(model.graph.node)
    needed = _needed_ids(nodes, names)
    if len(needed) == len(nodes):
        return model
    import onnx

    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    del pruned.graph.node[:]
    pruned.graph.node.extend(n for n in nodes if id(n) in needed)
    return pruned


def _reference(model, opset):
    """ReferenceEvaluator for ``model``. onnx's BatchNormalization for opsets 9-13 applies the
    default ``momentum`` attribute as if training (it mixes in the batch statistics), so those
    opsets get the inference formula of the spec instead."""
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    class BatchNormalization(OpRun):
        op_domain = ""

        def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, spatial=None,  # noqa: ARG002
                 training_mode=None):  # noqa: ARG002
            shape = (-1,) + (1,) * (x.ndim - 2)
            y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + epsilon) * scale.reshape(shape)
            return ((y + bias.reshape(shape)).astype(x.dtype),)

    return ReferenceEvaluator(model, new_ops=[BatchNormalization] if opset < 14 else None)


def _compare(y, ref):
    if y.shape != ref.shape:
        return f"output shape {y.shape} vs {ref.shape}"
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    err = np.abs(y.astype(np.float64) - ref)
    bad = err > 1e-4 * np.abs(ref) + 1e-5 * max(scale, 1e-30)
    if np.any(bad) or not np.all(np.isfinite(y)):
        return f"max abs difference {float(np.max(err)):.3g} at output scale {scale:.3g}"
    return ""


def _report(check, msg):
    if check == "raise":
        raise ValueError(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=3)
