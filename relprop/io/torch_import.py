"""Import a PyTorch module into relprop's layer-graph IR (``rp.from_torch``).

The module is traced with ``torch.fx.symbolic_trace`` (falling back to ``torch.export`` when the
Python code cannot be traced symbolically) in eval mode, and every traced operation is mapped to
one IR node:

==========================================================  ====================================
PyTorch                                                     relprop
==========================================================  ====================================
nn.Linear, F.linear                                         Dense
nn.Conv2d, F.conv2d (any groups and dilation; padding       Conv2d (dense: block-diagonal,
'same' with odd dilated kernels, 'valid'; padding_mode      zero-dilated weight), after a Pad
reflect/replicate/circular)                                 for padding_mode != 'zeros'
nn.ConvTranspose2d, F.conv_transpose2d (any stride,         ZeroInsert2d + Conv2d (flipped,
padding, output_padding, groups, dilation)                  transposed weight; exact)
nn.BatchNorm1d/2d, F.batch_norm (running statistics)        BatchNorm2d (folded by ``rp.canonize``)
nn.ReLU, F.relu, torch.relu, x.relu()                       ReLU
nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.Softplus (+ functions) LeakyReLU, Tanh, Sigmoid, Softplus
nn.ELU, nn.GELU (approximate 'none' / 'tanh'), nn.SiLU,     ELU, GELU, SiLU, Hardswish,
nn.Hardswish, nn.Hardsigmoid, nn.ReLU6, nn.Mish (+ F.*)     Hardsigmoid, ReLU6, Mish
nn.Hardtanh(0, 6), F.hardtanh(x, 0, 6)                      ReLU6
nn.Softmax/LogSoftmax, F.softmax/log_softmax, x.softmax()   stripped (``final_softmax="strip"``),
over dim 1 / -1 of (N, C), as the last operation            or Softmax (``"keep"``, softmax only)
nn.MaxPool2d (dilation 1)                                   MaxPool2d
nn.AvgPool2d (count_include_pad=True, no divisor_override)  AvgPool2d
nn.AdaptiveAvgPool2d(1), x.mean((2, 3))                     GlobalAvgPool2d
nn.AdaptiveAvgPool2d(k) with k dividing H and W             AvgPool2d
nn.AdaptiveAvgPool2d(k), other k (uneven windows)           AdaptiveAvgPool2d
nn.AdaptiveMaxPool2d, F.adaptive_max_pool2d                 AdaptiveMaxPool2d
nn.Upsample / UpsamplingNearest2d / UpsamplingBilinear2d,   Upsample (nearest, bilinear)
F.interpolate (nearest, bilinear; no antialias)
nn.LayerNorm, F.layer_norm; nn.GroupNorm, F.group_norm      LayerNorm, GroupNorm
permute(0, 2, 3, 1), a chain of ops each read only by the   the chain channels first:
next, permute(0, 3, 1, 2) (ConvNeXt's CNBlock). In the      LayerNorm(axis=1), Conv2d 1x1
chain: LayerNorm(C), nn.Linear / F.linear on the last       (weight W[:, :, None, None]), the
axis, elementwise activations, Dropout, clone, * or + a     activation, a per-channel scale
constant of shape (C,)                                      (folded as below)
param * x, param of shape (C, 1, 1) or (1, C, 1, 1) on      folded into the Conv2d before it
(N, C, H, W) (ConvNeXt's layer scale)                       (else a depthwise 1x1 Conv2d)
a * b, torch.mul (two tensors, broadcast per sample)        Mul
nn.Flatten, torch.flatten(x, 1), view/reshape keeping N     Flatten / Reshape
nn.Dropout* (eval), F.dropout(training=False)               Dropout
nn.Identity, x.clone(), x.contiguous()                      (no node)
a + b, torch.add, x += y                                    Add
torch.cat(dim != 0)                                         Concat
torch.stack([...], -1).sum(-1)  (zennit.layer.Sum)          Add
==========================================================  ====================================

Between the two permutes each op maps its last-axis semantics onto the channel axis, exactly;
anything else there is refused in one line naming it, and a permute outside such a region is
refused. A per-channel scale (the layer scale, or a constant ``*`` / ``+`` in the channels-last
region) folds into the ``Conv2d`` before it when nothing else reads that convolution
(``W' = gamma W``, ``b' = gamma b + beta``), as a BatchNorm folds: the same values, gradient and
DeepLIFT; for LRP the folded layer's rule sees ``gamma W`` (LRP-0 unchanged, epsilon's stabilizer
rescaled by ``1 / |gamma|``; ``relprop.io.onnx_import.fold_channel_affines`` says more). A scale
that cannot fold is a depthwise 1x1 ``Conv2d`` (groups = C), which gets the Conv2d rule. So a
channels-first ``x * param`` (param (C, 1, 1)) right on the model input, with no convolution
before it, becomes a depthwise 1x1 ``Conv2d`` that reads x, and the composites treat it as the
first layer: ``EpsilonGammaBox`` puts its ZBox rule (with the bounds of x) on that scale and
gamma on the model's real first convolution, ``EpsilonPlusFlat`` its Flat rule likewise; fold
such a scale into the input normalization or the first convolution of the source model to keep
the first-layer rule there. The constant must be floating point (a bool or integer buffer is
refused). The composites map layer kinds, so the 1x1 ``Conv2d`` of a channels-last ``Linear``
gets their Conv2d rule (z+ in ``EpsilonPlusFlat``), where Zennit's composites give
``nn.Linear`` epsilon; pass
``rules=`` a list (one rule per Dense/Conv2d node) to choose per layer.

``ceil_mode=True`` pools are accepted only where they give the same output size as
``ceil_mode=False`` (then they are the same operation). Anything else raises a one-line
``ValueError`` naming the operation, the traced node, the module path, the source line (when
fx records it) and what to do; ``relprop.io.supported_ops()["torch"]`` lists what is mapped.
A reused module (one ``nn.ReLU`` applied twice) becomes one IR node per call.

A final softmax or log-softmax is stripped by default, with a one-line
``relprop.io.ImportNotice`` (a ``UserWarning``): every relprop method explains the pre-softmax
score ``s_c`` anyway, and the stripped graph's output is the logits. A softmax anywhere else is
refused.

After building, the graph and the module both run on ``example_input`` -- in float64 on both
sides, so that only a structural difference (not float32 rounding) can fail the comparison --
and a difference beyond ``atol + rtol * |y|`` raises (``check="raise"``) or warns
(``check="warn"``).
"""
from __future__ import annotations

import copy
import operator
import os
import re
import warnings

import numpy as np

from ..core import graph as G
from ..core.canonize import canonize as _canonize, importer_fold
from . import ImportNotice, apply_final_softmax, check_final_softmax
from .onnx_import import ChannelAffine, fold_channel_affines

SUPPORTED = (
    "nn.Linear, nn.Conv2d (any groups, dilation and padding_mode), nn.ConvTranspose2d, nn.BatchNorm1d/2d (with running "
    "statistics), ReLU, LeakyReLU, Tanh, Sigmoid, Softplus, ELU, GELU, SiLU, Hardswish, Hardsigmoid, ReLU6 "
    "(or Hardtanh(0, 6)), Mish, Softmax (last axis, last operation), nn.MaxPool2d "
    "(dilation=1), nn.AvgPool2d (count_include_pad=True), nn.AdaptiveAvgPool2d / AdaptiveMaxPool2d (any size), "
    "mean over (2, 3), nn.Upsample / F.interpolate (nearest, bilinear), LayerNorm, GroupNorm, "
    "permute(0, 2, 3, 1) - LayerNorm(C) / Linear / activations / * or + a (C,) constant - permute(0, 3, 1, 2) "
    "(ConvNeXt's block), a * b (two tensors), param * x with param (C, 1, 1) (ConvNeXt's layer scale), "
    "Flatten / flatten(x, 1) / view or reshape keeping the batch axis, Dropout, Identity, clone, + / torch.add, "
    "torch.cat, torch.stack summed over the stacked axis (zennit.layer.Sum)")


def from_torch(module, example_input, check="raise", rtol=1e-5, atol=None, canonize=True, final_softmax="strip"):
    """Convert a PyTorch module into a relprop graph and check it reproduces the module.

    Parameters
    ----------
    module : torch.nn.Module
        The model. It is traced in eval mode (the train/eval flags of its submodules are restored
        afterwards) with one tensor input and one tensor output.
    example_input : torch.Tensor or numpy.ndarray
        A batch ``(N, ...)`` used to trace shapes and to compare the two forward passes.
    check : {"raise", "warn"}
        What to do when the imported graph's output differs from the module's: raise a
        ``ValueError`` or emit a ``UserWarning`` (the graph is returned).
    rtol, atol : float
        The outputs agree when ``|y_relprop - y_torch| <= atol + rtol * |y_torch|`` everywhere
        (compared in float64). ``atol=None`` means ``rtol * max|y_torch|``.
    canonize : bool or str
        ``True`` (default) folds every BatchNorm that follows a Conv2d/Dense into it
        (:func:`relprop.canonize`, ``fold="after"``), as Zennit's ``SequentialMergeBatchNorm``
        does before LRP; ``"after_and_before"`` also folds a BatchNorm that comes before one
        (same forward pass, different LRP relevance: see :func:`relprop.canonize`); ``False``
        keeps every BatchNorm2d node.
    final_softmax : {"strip", "keep", "refuse"}
        What to do with a softmax / log-softmax over the classes that is the module's last
        operation. ``"strip"`` (default) drops it with a one-line ``relprop.io.ImportNotice``
        (the graph then outputs the logits; relprop explains the pre-softmax score ``s_c``
        either way); ``"keep"`` ends the graph with ``rp.Softmax`` (a log-softmax is refused:
        relprop has no LogSoftmax layer); ``"refuse"`` raises. The forward check compares the
        stripped graph with the module's pre-softmax values and, through the softmax, with its
        output.

    Returns
    -------
    relprop.Graph

    Examples
    --------
    >>> net = rp.from_torch(torch_model.eval(), torch.randn(2, 3, 32, 32))     # doctest: +SKIP
    >>> import warnings; warnings.filterwarnings("ignore", category=rp.io.ImportNotice)  # doctest: +SKIP
    >>> R = rp.attribute(net, x, "lrp", rules=rp.composites.EpsilonPlusFlat())  # doctest: +SKIP
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError("relprop.from_torch needs PyTorch: pip install torch "
                          "(relprop[test] pins torch==2.13.0)") from e
    if check not in ("raise", "warn"):
        raise ValueError(f"from_torch: check must be 'raise' or 'warn', got {check!r}")
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    if not (rtol >= 0) or (atol is not None and not atol >= 0):
        raise ValueError(f"from_torch: rtol and atol must be >= 0, got rtol={rtol!r}, atol={atol!r}")
    check_final_softmax(final_softmax, "from_torch")
    fold = importer_fold(canonize)
    x = _example_tensor(torch, module, example_input)

    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        with torch.no_grad():
            gm, exported = _trace(torch, module, x)
            conv = _Converter(torch, gm, x, exported, final_softmax, module=module)
            graph = conv.run()
            if fold is not None:
                graph = _canonize(graph, fold)
            _check_forward(torch, module, graph, x, check, rtol, atol, gm, conv.stripped)
            graph.input_shape = tuple(int(s) for s in x.shape[1:])
    finally:
        for m, training in modes.items():
            m.training = training
    if conv.stripped is not None:
        warnings.warn(ImportNotice(f"from_torch: {conv.stripped.describe()}"), stacklevel=3)
    return graph


# --------------------------------------------------------------------------------------------
# Tracing
# --------------------------------------------------------------------------------------------
def _example_tensor(torch, module, example_input):
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(np.asarray(example_input))
    if not torch.is_floating_point(x):
        raise TypeError(f"from_torch: example_input must be a floating-point batch, got dtype {x.dtype}")
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"from_torch: example_input must be a batch (N, ...) with N >= 1, got shape {tuple(x.shape)}")
    ref = next((p for p in list(module.parameters()) + list(module.buffers()) if torch.is_floating_point(p)), None)
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype)
    return x.detach()


def _trace(torch, module, x):
    """(GraphModule with shape metadata, exported?)."""
    try:
        from torch.fx.passes.shape_prop import ShapeProp

        gm = torch.fx.symbolic_trace(module)
        ShapeProp(gm).propagate(x)
        return gm, False
    except Exception as e_fx:  # noqa: BLE001 - data-dependent Python code: try torch.export
        try:
            return torch.export.export(module, (x,)).module(), True
        except Exception as e_ex:  # noqa: BLE001
            raise ValueError(
                f"from_torch: could not trace the module: torch.fx.symbolic_trace failed "
                f"({type(e_fx).__name__}: {e_fx}) and torch.export failed ({type(e_ex).__name__}: {e_ex})"
            ) from e_ex


# --------------------------------------------------------------------------------------------
# Values flowing through the conversion
# --------------------------------------------------------------------------------------------
_GATE_KINDS = ("Sigmoid", "Hardsigmoid", "Softmax", "Tanh")  # squashing ops that make the gate of a product


def _import_notice():
    from . import ImportNotice

    return ImportNotice


class _Tensor:
    """An IR tensor: the node that produces it and its full torch shape (batch axis first)."""

    def __init__(self, name, shape):
        self.name, self.shape = name, tuple(int(s) for s in shape)


class _Batch:
    """The batch size read symbolically (``x.size(0)``, ``x.shape[0]``)."""


class _Shape:
    """``x.shape`` / ``x.size()`` of an IR tensor."""

    def __init__(self, t):
        self.t = t

    def _items(self):
        return [_Batch()] + list(self.t.shape[1:])


class _Stack:
    """``torch.stack(tensors, dim)``: only summing it over ``dim`` is supported."""

    def __init__(self, tensors, dim):
        self.tensors, self.dim = tensors, dim


class _ChannelsLast:
    """The (N, H, W, C) view ``x.permute(0, 2, 3, 1)`` of an IR tensor ``t`` (N, C, H, W), made
    only inside a channels-last region ``permute(0, 2, 3, 1) -> ... -> permute(0, 3, 1, 2)``
    (``_Converter._channels_last``). The handlers that map an op over the last axis
    (layer_norm, linear, the elementwise activations, a multiply / add by a (C,) constant) read
    it and return another view; every other handler refuses it (``_Converter._tensor``)."""

    def __init__(self, t):
        self.t = t


#: what a channels-last region may hold (the error for anything else says it)
_REGION_OPS = ("layer_norm over the C channels, Linear over the last axis, elementwise activations, dropout / "
               "clone, and a multiply or add by a constant of shape (C,)")


class _Unsupported(Exception):
    """Raised by a handler: the message says what is wrong; the converter adds where and, unless
    the handler gives ``todo`` (what to do instead), the general advice ``_TODO``."""

    def __init__(self, msg, todo=None):
        super().__init__(msg)
        self.todo = todo


_TODO = ("rewrite that step with a mapped operation, or apply it outside the model; "
         "relprop.io.supported_ops()['torch'] lists the operations the importer maps")
_HEAD_KIND = {"softmax": "Softmax", "log_softmax": "LogSoftmax"}


def _one_line(msg):
    """Error messages are one line: a handler's text may quote values that print on several."""
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())


def _bind(names, args, kwargs, defaults):
    if len(args) > len(names):
        raise _Unsupported(f"takes at most {len(names)} arguments, got {len(args)}")
    b = dict(defaults)
    b.update(zip(names, args))
    for k, v in kwargs.items():
        if k not in names:
            raise _Unsupported(f"unexpected argument {k!r}")
        b[k] = v
    return b


def _pair(v):
    if isinstance(v, (list, tuple)):
        if len(v) == 1:
            return int(v[0]), int(v[0])
        if len(v) != 2:
            raise _Unsupported(f"expects an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


# --------------------------------------------------------------------------------------------
# The converter
# --------------------------------------------------------------------------------------------
class _Head:
    """A softmax / log-softmax node of the IR: what it was in torch and where, for the decision
    taken in ``_Converter._finish`` (strip, keep or refuse it)."""

    def __init__(self, kind, what, where, source_input):
        self.kind, self.what, self.where, self.source_input = kind, what, where, source_input

    def describe(self):
        return (f"stripped the final {self.kind} ({self.what}{self.where}): the graph outputs the logits, which "
                "relprop explains anyway; final_softmax='keep' or 'refuse' changes this, "
                "warnings.filterwarnings('ignore', category=relprop.io.ImportNotice) silences it")


class _Converter:
    def __init__(self, torch, gm, x, exported, final_softmax="strip", module=None):
        self.final_softmax = final_softmax
        self.module = module  # traced again, with stack traces, only to locate a node in a message
        self._stacks = None
        self.heads = {}  # IR node name -> _Head, for every softmax / log-softmax
        self.stripped = None  # the _Head removed from the end of the graph
        self.torch = torch
        self.gm = gm
        self.batch = int(x.shape[0])
        self.exported = exported
        self.modules = dict(gm.named_modules())
        self.nodes = []
        self.names = {"input"}
        self.env = {}
        self.functions, self.methods = _function_tables(torch)
        self.module_ops = _module_table(torch)
        self.scales = {}  # IR node name of a per-channel scale (_emit_scale) -> its fx node, folded in _finish

    # -- driver --------------------------------------------------------------------------------
    def run(self):
        out = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                if any(isinstance(v, _Tensor) and v.name == "input" for v in self.env.values()):
                    raise ValueError(f"from_torch: the module takes more than one input (placeholder {n.name!r}); "
                                     "relprop models have exactly one")
                self.env[n] = _Tensor("input", self._shape(n))
            elif n.op == "get_attr":
                self.env[n] = _fetch_attr(self.gm, n.target)
            elif n.op == "output":
                out = self._arg(n.args[0])
                if isinstance(out, (tuple, list)) and len(out) == 1:
                    out = out[0]
                if not isinstance(out, _Tensor):
                    raise ValueError(f"from_torch: the module must return one tensor, got {type(out).__name__} "
                                     f"({_describe_value(out)}); relprop models have exactly one output")
            elif n.op == "call_module" and self.exported and not n.users:
                continue  # torch.export's guard checks
            else:
                try:
                    self.env[n] = self._convert(n)
                except _Unsupported as e:
                    raise self._node_error(n, e) from None
        return self._finish(out)

    def _node_error(self, n, e):
        """The one-line ValueError for fx node ``n`` and the ``_Unsupported`` ``e``."""
        return ValueError(_one_line(f"from_torch: {self._what(n)} at node {n.name!r}{self._where(n)}{self._source(n)}: "
                                    f"{e}; {e.todo or _TODO}"))

    def _scale_error(self, name, e):
        """``fold_channel_affines`` could not build the per-channel scale ``name``: name its op."""
        return self._node_error(self.scales[name], _Unsupported(e.what, todo=e.todo))

    def _finish(self, out):
        if out.name == "input":
            self._emit("output", G.Identity(), [out], out.shape)
        # keep only what the output depends on, in topological order
        by_name = {nd.name: nd for nd in self.nodes}
        keep, todo = set(), [out.name if out.name != "input" else self.nodes[-1].name]
        while todo:
            name = todo.pop()
            if name in keep or name == "input":
                continue
            keep.add(name)
            todo.extend(by_name[name].inputs)
        nodes = fold_channel_affines([nd for nd in self.nodes if nd.name in keep], self._scale_error)
        for nd in nodes[:-1]:
            head = self.heads.get(nd.name)
            if head is not None:
                raise ValueError(_one_line(
                    f"from_torch: {_HEAD_KIND[head.kind]} at node {nd.name!r} is not the model's last operation "
                    f"({head.what}{head.where}); relprop supports a softmax only as the last operation (explanations "
                    "start from its input): move it out of the model or to its end"))
        head = self.heads.get(nodes[-1].name)
        if head is not None:
            nodes = self._final_softmax(nodes, head)
        return G.Graph(nodes)

    def _final_softmax(self, nodes, head):
        """The nodes with the final softmax / log-softmax stripped, kept or refused (``final_softmax``)."""
        where = f"{head.what}{head.where}"
        if self.final_softmax == "refuse":
            raise ValueError(_one_line(
                f"from_torch: the model ends in a {head.kind} ({where}) and final_softmax='refuse'; pass "
                "final_softmax='strip' to import the logits it is applied to (relprop explains the pre-softmax "
                "score s_c either way)"))
        if self.final_softmax == "keep" and head.kind == "log_softmax":
            raise ValueError(_one_line(
                f"from_torch: final_softmax='keep' cannot keep the final log_softmax ({where}): relprop has no "
                "LogSoftmax layer; pass final_softmax='strip' (the graph then outputs the logits, which every "
                "method explains anyway) or end the model in a softmax"))
        if self.final_softmax == "keep":
            return nodes
        if nodes[-1].inputs[0] == "input":
            raise ValueError(f"from_torch: the model is only a {head.kind} ({where}); there are no layers left to "
                             "import after stripping it")
        self.stripped = head
        return nodes[:-1]

    def _emit(self, base, layer, inputs, shape):
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        self.nodes.append(G.Node(name, layer, tuple(t.name for t in inputs)))
        return _Tensor(name, shape)

    # -- descriptions ----------------------------------------------------------------------------
    def _what(self, n):
        if n.op == "call_module":
            mod = self.modules[n.target]
            cls = type(mod)
            mod_name = "torch.nn" if cls.__module__.startswith("torch.nn.modules") else cls.__module__
            return f"{mod_name}.{cls.__qualname__}"
        if n.op == "call_method":
            return f"Tensor.{n.target}()"
        return _func_name(n.target)

    def _where(self, n):
        if n.op == "call_module":
            return f" (module {n.target!r})"
        stack = n.meta.get("nn_module_stack")
        if stack:
            path = list(stack.values())[-1][0]
            return f" (inside module {path!r})" if path else ""
        return ""

    def _source(self, n):
        """`` in file:line (function)`` of the user's code that made node ``n`` (from fx's recorded stack
        trace: the innermost frame outside the torch package), or "" when fx has none.
        torch.export records it; symbolic_trace does not, so the module is traced once more
        with ``record_stack_traces`` (a message is being written: the cost does not matter)."""
        stack = n.meta.get("stack_trace")
        if stack is None and not self.exported and self.module is not None:
            if self._stacks is None:
                self._stacks = {}
                try:
                    tracer = self.torch.fx.Tracer()
                    tracer.record_stack_traces = True
                    self._stacks = {m.name: m.meta.get("stack_trace") for m in tracer.trace(self.module).nodes}
                except Exception:  # noqa: BLE001 - the location is a courtesy
                    pass
            stack = self._stacks.get(n.name)
        return _source_line(self.torch, stack)

    def _base_name(self, n):
        if n.op == "call_module":
            return str(n.target)
        return n.name

    # -- values ----------------------------------------------------------------------------------
    def _shape(self, n):
        meta = n.meta.get("tensor_meta")
        if meta is not None and hasattr(meta, "shape"):
            return tuple(meta.shape)
        val = n.meta.get("val")
        if val is not None and hasattr(val, "shape"):
            return tuple(int(s) for s in val.shape)
        raise _Unsupported("its output shape is unknown (not a single tensor)")

    def _arg(self, a):
        fx = self.torch.fx
        if isinstance(a, fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._arg(v) for v in a)
        if isinstance(a, dict):
            return {k: self._arg(v) for k, v in a.items()}
        return a

    def _tensor(self, v, what="input"):
        if isinstance(v, _Tensor):
            return v
        if isinstance(v, _ChannelsLast):
            raise _Unsupported(f"its {what} is the channels-last view permute(0, 2, 3, 1) of {v.t.name!r}: between "
                               "permute(0, 2, 3, 1) and permute(0, 3, 1, 2) relprop maps only " + _REGION_OPS,
                               todo="move this op out of the permuted region (before the first permute or after "
                                    "the second)")
        if isinstance(v, _Stack):
            raise _Unsupported("a torch.stack result is used by it; relprop supports torch.stack only when summed "
                               "over the stacked axis (zennit.layer.Sum)")
        if isinstance(v, self.torch.Tensor):
            raise _Unsupported(f"its {what} is a constant tensor (parameter or buffer), not computed from the model input")
        raise _Unsupported(f"its {what} must be a tensor computed from the model input, got {_describe_value(v)}")

    def _const(self, v, what):
        if isinstance(v, self.torch.Tensor):
            half = v.dtype in (self.torch.float16, self.torch.bfloat16)  # numpy has no bfloat16
            return v.detach().cpu().float().numpy() if half else v.detach().cpu().numpy()
        if v is None:
            return None
        raise _Unsupported(f"its {what} must be a parameter or buffer of the module, got {_describe_value(v)}")

    # -- dispatch --------------------------------------------------------------------------------
    def _permute_dims(self, n):
        """The dims of ``n`` if it is a permute (``x.permute``, ``torch.permute``, aten), else None."""
        torch = self.torch
        if n.op == "call_method" and n.target == "permute":
            dims = n.kwargs.get("dims", n.args[1:])
        elif n.op == "call_function" and n.target in (torch.permute, getattr(torch.ops.aten.permute, "default", None)):
            dims = n.kwargs.get("dims", n.args[1] if len(n.args) > 1 else None)
        else:
            return None
        if isinstance(dims, (tuple, list)) and len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = dims[0]
        if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) for d in dims) or len(dims) != 4:
            return None
        return tuple(d % 4 for d in dims)

    def _channels_last(self, n):
        """The channels-last region of ConvNeXt's block (Liu et al. 2022, Fig. 4; torchvision's
        ``CNBlock``): ``permute(0, 2, 3, 1)``, a chain of ops each read only by the next, then
        ``permute(0, 3, 1, 2)``. The first permute gives a ``_ChannelsLast`` view of its
        (N, C, H, W) input; the ops of the chain read views and emit channels-first layers
        (``op_layer_norm``: LayerNorm(axis=1); ``op_linear``: a 1x1 Conv2d; ``_activation``: the
        activation; ``op_mul`` / ``op_add`` with a (C,) constant: a per-channel scale), any other
        op there is refused in one line (``_tensor``); the second permute returns the tensor.
        None for every other node, so a lone permute (no permute back, or a branch) stays refused
        as unsupported."""
        dims = self._permute_dims(n)
        if dims is None or not n.args or not isinstance(n.args[0], self.torch.fx.Node):
            return None
        src = self.env.get(n.args[0])
        if dims == (0, 3, 1, 2) and isinstance(src, _ChannelsLast):
            return src.t
        if dims != (0, 2, 3, 1) or not isinstance(src, _Tensor) or len(src.shape) != 4:
            return None
        cur = n
        for _ in range(len(self.gm.graph.nodes)):  # the chain, each node read only by the next
            if len(cur.users) != 1:
                return None
            (nxt,) = cur.users
            reads = []
            self.torch.fx.node.map_arg((nxt.args, nxt.kwargs), lambda a: reads.append(a is cur))
            if nxt.op == "output" or sum(reads) != 1:  # y + y reads it twice: no chain
                return None
            if self._permute_dims(nxt) is not None:
                return _ChannelsLast(src) if self._permute_dims(nxt) == (0, 3, 1, 2) and nxt.args[0] is cur else None
            cur = nxt
        return None  # pragma: no cover - a chain is shorter than the graph

    def _convert(self, n):
        out_shape = lambda: self._shape(n)  # noqa: E731 - shape only when a handler needs it
        fused = self._channels_last(n)
        if fused is not None:
            return fused
        if n.op == "call_module":
            mod = self.modules[n.target]
            entry = self.module_ops.get(type(mod))
            if entry is None:
                self._region_hint(n)
                raise _Unsupported("this module type is not supported")
            op, params = entry
            if len(n.args) != 1 or n.kwargs:
                raise _Unsupported("modules must be called with exactly one input tensor")
            b = dict(params(mod))
            b["input"] = self._arg(n.args[0])
        elif n.op == "call_method":
            entry = self.methods.get(n.target)
            if entry is None:
                self._region_hint(n)
                raise _Unsupported("this tensor method is not supported")
            op, names, defaults = entry
            args = [self._arg(a) for a in n.args]
            kwargs = {k: self._arg(v) for k, v in n.kwargs.items()}
            if op == "permute":  # x.permute(0, 2, 3, 1) or x.permute((0, 2, 3, 1))
                dims = args[1:] if not (len(args) == 2 and isinstance(args[1], (tuple, list))) else list(args[1])
                args, kwargs = [args[0], kwargs.pop("dims", dims)], kwargs
            if op == "reshape":  # x.view(a, b, ...) or x.view((a, b, ...))
                shape = args[1:] if not (len(args) == 2 and isinstance(args[1], (tuple, list))) else list(args[1])
                shape = kwargs.pop("size", kwargs.pop("shape", shape))
                if kwargs:
                    raise _Unsupported(f"unexpected arguments {sorted(kwargs)}")
                args, kwargs = [args[0], shape], {}
            b = _bind(names, args, kwargs, defaults)
        elif n.op == "call_function":
            entry = self.functions.get(n.target)
            if entry is None:
                self._region_hint(n)
                raise _Unsupported("this function is not supported")
            op, names, defaults = entry
            b = _bind(names, [self._arg(a) for a in n.args], {k: self._arg(v) for k, v in n.kwargs.items()}, defaults)
        else:  # pragma: no cover - fx has no other node kinds
            raise _Unsupported(f"fx node kind {n.op!r}")
        return getattr(self, "op_" + op)(n, b, out_shape)

    def _region_hint(self, n):
        """An unmapped op reading a channels-last view: say what the region may hold instead."""
        for a in n.all_input_nodes:
            v = self.env.get(a)
            if isinstance(v, _ChannelsLast):
                self._tensor(v)

    # -- handlers: one per operation family (b: bound arguments, shape(): traced output shape) ----
    def op_linear(self, n, b, shape):
        if isinstance(b["input"], _ChannelsLast):  # Linear over C at every pixel: a 1x1 convolution (exact)
            x = b["input"].t
            w, bias = self._const(b["weight"], "weight"), self._const(b.get("bias"), "bias")
            if w.ndim != 2 or w.shape[1] != x.shape[1]:
                raise _Unsupported(f"a linear map with weight {w.shape} after permute(0, 2, 3, 1) of {x.shape}: it "
                                   f"must read the {x.shape[1]} channels (weight (out, {x.shape[1]}))")
            layer = self._layer(G.Conv2d, w[:, :, None, None], bias)
            return _ChannelsLast(self._emit(self._base_name(n), layer, [x], (x.shape[0], w.shape[0]) + x.shape[2:]))
        x = self._tensor(b["input"])
        if len(x.shape) != 2:
            raise _Unsupported(f"input of shape {x.shape}: relprop's Dense takes (N, features) inputs")
        w, bias = self._const(b["weight"], "weight"), self._const(b.get("bias"), "bias")
        return self._emit(self._base_name(n), G.Dense(w, bias), [x], shape())

    def op_conv2d(self, n, b, shape):
        x = self._tensor(b["input"])
        if len(x.shape) != 4:
            raise _Unsupported(f"input of shape {x.shape}: relprop's Conv2d takes batched (N, C, H, W) inputs")
        w, bias = self._const(b["weight"], "weight"), self._const(b.get("bias"), "bias")
        mode = b.get("padding_mode", "zeros")
        if mode not in ("zeros", "reflect", "replicate", "circular"):
            raise _Unsupported(f"padding_mode={mode!r} is not supported (zeros, reflect, replicate, circular)")
        dilation = _pair(b["dilation"])
        # grouped / dilated: the exactly equivalent dense block-diagonal, zero-dilated weight
        # (Conv2d.from_compact); groups and dilation stay recorded in the layer
        try:
            dense = G.Conv2d.from_compact(w, bias, groups=int(b["groups"]), dilation=dilation)
        except ValueError as e:  # e.g. a dense expansion over the budget: its message says what to do
            msg, _, todo = str(e).partition("; use ")
            raise _Unsupported(msg, todo=f"use {todo}" if todo else None) from None
        padding = b["padding"]
        if isinstance(padding, str):
            if padding == "valid":
                padding = (0, 0)
            elif padding == "same":
                kh, kw = dense.weight.shape[2:]  # the dilated extent (k - 1) d + 1
                if kh % 2 == 0 or kw % 2 == 0:
                    raise _Unsupported(f"padding='same' with the even kernel {kh}x{kw} pads asymmetrically, which "
                                       "relprop's Conv2d cannot express; use an odd kernel or explicit padding")
                padding = ((kh - 1) // 2, (kw - 1) // 2)
            else:
                raise _Unsupported(f"padding={padding!r}")
        padding = _pair(padding)
        if mode != "zeros" and padding != (0, 0):  # torch pads first, then convolves unpadded
            ph, pw = padding
            shp = (x.shape[0], x.shape[1], x.shape[2] + 2 * ph, x.shape[3] + 2 * pw)
            x = self._emit(self._base_name(n) + "_pad", G.Pad((ph, ph, pw, pw), mode), [x], shp)
            padding = (0, 0)
        layer = G.Conv2d(dense.weight, dense.bias, stride=_pair(b["stride"]), padding=padding,
                         groups=dense.groups, dilation=dense.dilation)
        return self._emit(self._base_name(n), layer, [x], shape())

    def op_conv_transpose2d(self, n, b, shape):
        x = self._tensor(b["input"])
        if len(x.shape) != 4:
            raise _Unsupported(f"input of shape {x.shape}: relprop's ConvTranspose2d takes batched (N, C, H, W) inputs")
        w, bias = self._const(b["weight"], "weight"), self._const(b.get("bias"), "bias")
        # stored as zero insertion + a stride-1 Conv2d with the flipped weight (G.ConvTranspose2d)
        layer = self._layer(G.ConvTranspose2d, w, bias, _pair(b["stride"]), _pair(b["padding"]),
                            _pair(b["output_padding"]), int(b["groups"]), _pair(b["dilation"]))
        return self._emit(self._base_name(n), layer, [x], shape())

    def op_batch_norm(self, n, b, shape):
        x = self._tensor(b["input"])
        if b.get("training"):
            raise _Unsupported("it normalizes with batch statistics (training mode, or track_running_stats=False); "
                               "relprop supports inference batch norm with running statistics")
        mean, var = self._const(b["running_mean"], "running_mean"), self._const(b["running_var"], "running_var")
        if mean is None or var is None:
            raise _Unsupported("it has no running statistics (track_running_stats=False)")
        if len(x.shape) not in (2, 4):
            raise _Unsupported(f"input of shape {x.shape}: relprop's BatchNorm2d takes (N, C) or (N, C, H, W)")
        w, bias = self._const(b.get("weight"), "weight"), self._const(b.get("bias"), "bias")
        c = mean.shape[0]
        w = np.ones(c, mean.dtype) if w is None else w
        bias = np.zeros(c, mean.dtype) if bias is None else bias
        t = self._emit(self._base_name(n), G.BatchNorm2d(w, bias, mean, var, eps=float(b["eps"])), [x], shape())
        return (t, None, None) if b.get("_tuple") else t

    def _activation(self, n, b, shape, layer):
        if isinstance(b["input"], _ChannelsLast) and layer.kind != "Softmax":  # elementwise: any layout
            x = b["input"].t
            return _ChannelsLast(self._emit(self._base_name(n), layer, [x], x.shape))
        x = self._tensor(b["input"])
        return self._emit(self._base_name(n), layer, [x], shape())

    def op_relu(self, n, b, shape):
        return self._activation(n, b, shape, G.ReLU())

    def op_leaky_relu(self, n, b, shape):
        return self._activation(n, b, shape, G.LeakyReLU(float(b["negative_slope"])))

    def op_tanh(self, n, b, shape):
        return self._activation(n, b, shape, G.Tanh())

    def op_sigmoid(self, n, b, shape):
        return self._activation(n, b, shape, G.Sigmoid())

    def op_softplus(self, n, b, shape):
        return self._activation(n, b, shape, G.Softplus(float(b["beta"]), float(b["threshold"])))

    def op_elu(self, n, b, shape):
        # aten.elu's scale / input_scale (SELU, CELU decompositions) are not ELU's
        if float(b.get("scale", 1.0)) != 1.0 or float(b.get("input_scale", 1.0)) != 1.0:
            raise _Unsupported(f"elu with scale={b.get('scale')}, input_scale={b.get('input_scale')} (SELU/CELU); "
                               "relprop's ELU has scale = input_scale = 1")
        return self._activation(n, b, shape, self._layer(G.ELU, float(b["alpha"])))

    def op_gelu(self, n, b, shape):
        return self._activation(n, b, shape, self._layer(G.GELU, b.get("approximate", "none")))

    def op_silu(self, n, b, shape):
        return self._activation(n, b, shape, G.SiLU())

    def op_hardswish(self, n, b, shape):
        return self._activation(n, b, shape, G.Hardswish())

    def op_hardsigmoid(self, n, b, shape):
        return self._activation(n, b, shape, G.Hardsigmoid())

    def op_relu6(self, n, b, shape):
        return self._activation(n, b, shape, G.ReLU6())

    def op_hardtanh(self, n, b, shape):
        lo, hi = float(b["min_val"]), float(b["max_val"])
        if (lo, hi) != (0.0, 6.0):
            raise _Unsupported(f"hardtanh(min_val={lo}, max_val={hi}); relprop maps hardtanh only as ReLU6 "
                               "(min_val=0, max_val=6)")
        return self._activation(n, b, shape, G.ReLU6())

    def op_mish(self, n, b, shape):
        return self._activation(n, b, shape, G.Mish())

    @staticmethod
    def _layer(cls, *args):
        """``cls(*args)``, a refused parameter reported as an unsupported argument."""
        try:
            return cls(*args)
        except (TypeError, ValueError) as e:
            raise _Unsupported(str(e)) from None

    def op_softmax(self, n, b, shape, kind="softmax"):
        x = self._tensor(b["input"])
        dim = b.get("dim")
        if dim is None and len(x.shape) == 2:
            dim = 1  # torch's implicit dim for a 2-d input (F.softmax without dim, deprecated)
        if dim is None or len(x.shape) != 2 or int(dim) not in (-1, 1):
            raise _Unsupported(f"{kind} over dim={dim} of a {len(x.shape)}-d tensor; relprop supports a softmax over "
                               "the class axis (dim=1 or -1) of (N, classes) scores only, as the last operation",
                               todo="flatten the scores to (N, classes) first, or apply the softmax outside the model")
        if b.get("dtype") is not None or b.get("half_to_float"):
            raise _Unsupported(f"{kind} with a dtype argument", todo="drop the dtype argument (or strip the softmax)")
        t = self._activation(n, b, shape, G.Softmax())
        self.heads[t.name] = _Head(kind, self._what(n), self._where(n) + self._source(n),
                                   n.all_input_nodes[0] if n.all_input_nodes else None)
        return t

    def op_log_softmax(self, n, b, shape):
        return self.op_softmax(n, b, shape, "log_softmax")

    def _pool_args(self, b, x, what):
        if len(x.shape) != 4:
            raise _Unsupported(f"input of shape {x.shape}: relprop's {what} takes batched (N, C, H, W) inputs")
        k = _pair(b["kernel_size"])
        s = k if b.get("stride") in (None, [], ()) else _pair(b["stride"])
        p = _pair(b.get("padding", 0))
        if b.get("ceil_mode"):
            h, w = x.shape[2:]
            floor = [(d + 2 * pp - kk) // ss + 1 for d, pp, kk, ss in zip((h, w), p, k, s)]
            ceil = [-(-(d + 2 * pp - kk) // ss) + 1 for d, pp, kk, ss in zip((h, w), p, k, s)]
            # torch drops a last window that would start in the right padding
            ceil = [c - 1 if (c - 1) * ss >= d + pp else c for c, d, pp, ss in zip(ceil, (h, w), p, s)]
            if floor != ceil:
                raise _Unsupported(f"ceil_mode=True on a {h}x{w} input changes the output size ({floor} -> {ceil}); "
                                   "relprop pools use ceil_mode=False")
        return k, s, p

    def op_max_pool2d(self, n, b, shape):
        x = self._tensor(b["input"])
        if _pair(b.get("dilation", 1)) != (1, 1):
            raise _Unsupported(f"dilation={b['dilation']} is not supported (only dilation=1)")
        if b.get("return_indices"):
            raise _Unsupported("return_indices=True is not supported")
        k, s, p = self._pool_args(b, x, "MaxPool2d")
        return self._emit(self._base_name(n), G.MaxPool2d(k, s, p), [x], shape())

    def op_avg_pool2d(self, n, b, shape):
        x = self._tensor(b["input"])
        if b.get("divisor_override") is not None:
            raise _Unsupported(f"divisor_override={b['divisor_override']} is not supported")
        k, s, p = self._pool_args(b, x, "AvgPool2d")
        if not b.get("count_include_pad", True) and p != (0, 0):
            raise _Unsupported("count_include_pad=False with padding is not supported (relprop's AvgPool2d counts "
                               "the zero padding, as torch's default)")
        return self._emit(self._base_name(n), G.AvgPool2d(k, s, p), [x], shape())

    def op_adaptive_avg_pool2d(self, n, b, shape):
        x = self._tensor(b["input"])
        if len(x.shape) != 4:
            raise _Unsupported(f"input of shape {x.shape}: relprop takes batched (N, C, H, W) inputs")
        h, w = x.shape[2:]
        size = b["output_size"]
        size = (size, size) if not isinstance(size, (list, tuple)) else tuple(size)
        oh, ow = (h if size[0] is None else int(size[0])), (w if size[-1] is None else int(size[-1]))
        if (oh, ow) == (1, 1):
            return self._emit(self._base_name(n), G.GlobalAvgPool2d(), [x], shape())
        if (oh, ow) == (h, w):
            return x
        if h % oh or w % ow:  # uneven windows: torch's adaptive windows, as they are
            return self._emit(self._base_name(n), G.AdaptiveAvgPool2d((oh, ow)), [x], shape())
        k = (h // oh, w // ow)
        return self._emit(self._base_name(n), G.AvgPool2d(k, k, 0), [x], shape())

    def _output_size(self, b, x, what):
        if len(x.shape) != 4:
            raise _Unsupported(f"input of shape {x.shape}: relprop's {what} takes batched (N, C, H, W) inputs")
        size = b["output_size"]
        size = (size, size) if not isinstance(size, (list, tuple)) else tuple(size)
        if len(size) != 2:
            raise _Unsupported(f"output_size={b['output_size']!r}: expected an int or a pair")
        return tuple(d if s is None else int(s) for s, d in zip(size, x.shape[2:]))

    def op_adaptive_max_pool2d(self, n, b, shape):
        x = self._tensor(b["input"])
        if b.get("return_indices"):
            raise _Unsupported("return_indices=True is not supported", todo="use return_indices=False")
        size = self._output_size(b, x, "AdaptiveMaxPool2d")
        return self._emit(self._base_name(n), self._layer(G.AdaptiveMaxPool2d, size), [x], shape())

    def op_interpolate(self, n, b, shape):
        x = self._tensor(b["input"])
        if len(x.shape) != 4:
            raise _Unsupported(f"input of shape {x.shape}: relprop's Upsample takes batched (N, C, H, W) inputs")
        mode = b.get("mode", "nearest")
        if mode not in G.UPSAMPLE_MODES:
            raise _Unsupported(f"mode={mode!r} is not supported (relprop's Upsample: {', '.join(G.UPSAMPLE_MODES)})")
        if b.get("antialias"):
            raise _Unsupported("antialias=True is not supported")
        if b.get("recompute_scale_factor") and b.get("scale_factor") is not None:
            raise _Unsupported("recompute_scale_factor=True is not supported", todo="pass size=... instead")
        size, sf = b.get("size"), b.get("scale_factor")
        if size is not None:
            size, sf = _pair(size), None
        return self._emit(self._base_name(n), self._layer(G.Upsample, size, sf, mode, bool(b.get("align_corners"))),
                          [x], shape())

    def op_layer_norm(self, n, b, shape):
        channels_last = isinstance(b["input"], _ChannelsLast)  # ConvNeXt's region (_channels_last)
        x = b["input"].t if channels_last else self._tensor(b["input"])
        ns = b["normalized_shape"]
        ns = (int(ns),) if isinstance(ns, int) else tuple(int(s) for s in ns)
        if channels_last and ns != (x.shape[1],):
            raise _Unsupported(f"after permute(0, 2, 3, 1) of {x.shape} relprop maps a layer_norm over the "
                               f"{x.shape[1]} channels only, got normalized_shape={ns}")
        w, bias = self._const(b.get("weight"), "weight"), self._const(b.get("bias"), "bias")
        if w is None:
            w = np.ones(ns, np.float32 if bias is None else bias.dtype)
        if channels_last:
            layer = self._layer(G.LayerNorm, ns, w, bias, float(b["eps"]), "identity", 1)
        else:
            layer = self._layer(G.LayerNorm, ns, w, bias, float(b["eps"]))
        try:
            layer.out_shape(x.shape[1:])
        except ValueError as e:
            raise _Unsupported(str(e)) from None
        if channels_last:
            return _ChannelsLast(self._emit(self._base_name(n), layer, [x], x.shape))
        return self._emit(self._base_name(n), layer, [x], shape())

    def op_group_norm(self, n, b, shape):
        x = self._tensor(b["input"])
        if len(x.shape) < 2:
            raise _Unsupported(f"input of shape {x.shape}: GroupNorm takes (N, C, ...) inputs")
        c = x.shape[1]
        w, bias = self._const(b.get("weight"), "weight"), self._const(b.get("bias"), "bias")
        if w is None:
            w = np.ones(c, np.float32 if bias is None else bias.dtype)
        layer = self._layer(G.GroupNorm, int(b["num_groups"]), w, bias, float(b["eps"]))
        try:
            layer.out_shape(x.shape[1:])
        except ValueError as e:
            raise _Unsupported(str(e)) from None
        return self._emit(self._base_name(n), layer, [x], shape())

    def op_mul(self, n, b, shape):
        a, o = b["input"], b["other"]
        scale = self._channel_constant(n, a, o, "multiplying by")
        if scale is not None:
            return scale
        if not isinstance(a, _Tensor) or not isinstance(o, _Tensor):
            const = o if isinstance(a, _Tensor) else a
            raise _Unsupported(f"multiplying by {_describe_value(const)} is not supported; relprop's Mul multiplies "
                               "two tensors computed from the input, and a constant factor is mapped only as a "
                               "per-channel scale (a parameter of shape (C, 1, 1) or (1, C, 1, 1) on (N, C, H, W), "
                               "ConvNeXt's layer scale)", todo="fold constant factors into a layer's weights")
        if len(a.shape) != len(o.shape) or a.shape[0] != o.shape[0]:
            raise _Unsupported(f"product of shapes {a.shape} and {o.shape}; relprop's Mul needs one rank and one batch "
                               "size (broadcasting over the other axes)")
        signal = None
        if a.shape == o.shape:  # both full-shape (a gated convolution): the gate is the squashed input
            gates = [self._kind_of(t) in _GATE_KINDS for t in (a, o)]
            if gates[0] != gates[1]:
                signal = 1 if gates[0] else 0
            else:
                warnings.warn(f"{self._what(n)} at node {n.name!r}: a product of two inputs of the same shape, neither "
                              f"of them a sigmoid-type gate; LRP gives all relevance to the first ({a.name!r}): pass "
                              f"rp.Mul(signal=...) in your own graph to choose", _import_notice(), stacklevel=2)
        layer = G.Mul(signal=signal)
        try:
            layer.out_shape(a.shape[1:], o.shape[1:])
        except ValueError as e:
            raise _Unsupported(str(e)) from None
        return self._emit(self._base_name(n), layer, [a, o], shape())

    def _channel_constant(self, n, a, o, verb):
        """``a * o`` / ``a + o`` as a per-channel affine map, or None when neither operand is a
        channels-last view and no constant is a channels-first per-channel factor:

        * channels-last (inside ``permute(0, 2, 3, 1) ... permute(0, 3, 1, 2)``): a constant
          tensor that broadcasts over the last axis, of shape (C,) (or (1, ..., 1, C));
        * channels-first ``(N, C, H, W)`` times a parameter of shape (C, 1, 1) or (1, C, 1, 1):
          ConvNeXt's layer scale ``gamma * y`` (Liu et al. 2022, Sec. 2.1, after Touvron et al.
          2021's LayerScale).

        The result is ``_emit_scale``'s per-channel scale node, which ``_finish`` folds into
        the preceding convolution where it can (see there)."""
        if not isinstance(a, _ChannelsLast) and not isinstance(o, _ChannelsLast):
            # channels first: only a layer-scale parameter multiplying a 4-d tensor
            x, const = (a, o) if isinstance(a, _Tensor) else (o, a)
            if verb != "multiplying by" or not isinstance(x, _Tensor) or len(x.shape) != 4 \
                    or not isinstance(const, self.torch.Tensor):
                return None
            c = x.shape[1]
            if tuple(const.shape) not in ((c, 1, 1), (1, c, 1, 1)):
                return None
            return self._emit_scale(n, x, self._float_const(const, "factor", verb).reshape(c), None)
        view, const = (a, o) if isinstance(a, _ChannelsLast) else (o, a)
        x = view.t
        c = x.shape[1]
        if not isinstance(const, self.torch.Tensor) or not 1 <= const.ndim <= 4 \
                or tuple(const.shape) != (1,) * (const.ndim - 1) + (c,):
            raise _Unsupported(f"{verb} {_describe_value(const)} after permute(0, 2, 3, 1) of {x.shape}: relprop maps "
                               f"only a constant of shape ({c},) over the last axis here (between the permutes: "
                               f"{_REGION_OPS})", todo="move this op out of the permuted region, or make the constant "
                                                       f"a parameter of shape ({c},)")
        v = self._float_const(const, "constant", verb).reshape(c)
        if verb == "adding":
            return _ChannelsLast(self._emit_scale(n, x, None, v))
        return _ChannelsLast(self._emit_scale(n, x, v, None))

    def _float_const(self, const, what, verb):
        """A per-channel constant as a numpy float array; a bool, integer or complex tensor (a mask
        buffer, say) is refused: its product or sum would be computed in another dtype."""
        if not const.is_floating_point():
            raise _Unsupported(f"{verb} a per-channel {what} of shape {tuple(const.shape)} and dtype {const.dtype}: "
                               "relprop maps a per-channel constant only with a floating-point dtype",
                               todo="make it a floating-point parameter or buffer (e.g. register it with .float())")
        return self._const(const, what)

    def _emit_scale(self, n, x, gamma, beta):
        """The per-channel affine map ``y[c] = gamma[c] x[c] + beta[c]`` of (N, C, H, W): a pending
        ``ChannelAffine`` (two vectors; ``_finish`` folds it into the convolution before it or
        builds its depthwise 1x1 Conv2d, and names ``n`` when that is refused)."""
        c = x.shape[1]
        dt = (gamma if gamma is not None else beta).dtype
        gamma = np.ones(c) if gamma is None else np.asarray(gamma, np.float64)
        beta = np.zeros(c) if beta is None else np.asarray(beta, np.float64)
        t = self._emit(self._base_name(n), ChannelAffine(gamma, beta, dt), [x], x.shape)
        self.scales[t.name] = n
        return t

    def _kind_of(self, t):
        """The layer kind of the node that produced IR tensor ``t`` (None for the graph input)."""
        for node in reversed(self.nodes):
            if node.name == t.name:
                return node.layer.kind
        return None

    def op_mean(self, n, b, shape):
        x = self._tensor(b["input"])
        dims = b.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        nd = len(x.shape)
        if nd != 4 or sorted(d % nd for d in dims) != [2, 3] or b.get("dtype") is not None:
            raise _Unsupported(f"mean over dim={b.get('dim')} of a {nd}-d tensor; relprop supports the mean over the "
                               "spatial axes (2, 3) of an (N, C, H, W) tensor (global average pooling)")
        base = self._base_name(n)
        t = self._emit(base, G.GlobalAvgPool2d(), [x], x.shape[:2] + (1, 1))
        return t if b.get("keepdim") else self._emit(base + "_flat", G.Flatten(), [t], x.shape[:2])

    def op_flatten(self, n, b, shape):
        x = self._tensor(b["input"])
        nd = len(x.shape)
        start, end = int(b["start_dim"]) % nd, int(b["end_dim"]) % nd
        if start == 0:
            raise _Unsupported(f"start_dim={b['start_dim']} flattens the batch axis; use torch.flatten(x, 1)")
        if start >= end:
            return x
        out = shape()
        layer = G.Flatten() if end == nd - 1 and start == 1 else G.Reshape(out[1:])
        return self._emit(self._base_name(n), layer, [x], out)

    def op_reshape(self, n, b, shape):
        x = self._tensor(b["input"])
        sizes = b["shape"]
        sizes = list(sizes._items() if isinstance(sizes, _Shape) else sizes)
        per_sample = int(np.prod(x.shape[1:]))
        if not sizes:
            raise _Unsupported("reshape to a scalar")
        if any(isinstance(s, _Batch) for s in sizes[1:]):
            raise _Unsupported(f"the batch size is moved away from axis 0 (shape {_describe_value(sizes)})")
        if not all(isinstance(s, (int, _Batch)) for s in sizes):
            raise _Unsupported(f"target shape {_describe_value(sizes)} is not made of ints and x.size(0)")
        first, rest = sizes[0], [int(s) for s in sizes[1:]]
        keeps_batch = isinstance(first, _Batch) or (
            first == -1 and -1 not in rest and int(np.prod(rest)) == per_sample) or (
            self.exported and first == self.batch)  # torch.export specializes the batch size
        if not keeps_batch:
            raise _Unsupported(f"target shape {_describe_value(sizes)} does not keep the batch axis; write "
                               "x.view(x.size(0), ...) or x.view(-1, <per-sample sizes>)")
        out = shape()
        if tuple(out[1:]) == x.shape[1:]:
            return x
        layer = G.Flatten() if len(out) == 2 else G.Reshape(out[1:])
        return self._emit(self._base_name(n), layer, [x], out)

    def op_permute(self, n, b, shape):
        """Reached only by a permute outside a channels-last region (``_channels_last`` maps those)."""
        dims = b.get("dims")
        dims = tuple(dims) if isinstance(dims, (list, tuple)) else dims
        raise _Unsupported(f"permute{dims} is not supported on its own: relprop maps a permute only as "
                           "permute(0, 2, 3, 1) of an (N, C, H, W) tensor, then a chain of ops each read only by the "
                           f"next ({_REGION_OPS}), then permute(0, 3, 1, 2) (ConvNeXt's block)",
                           todo="keep the tensor channels first, or close the region with permute(0, 3, 1, 2)")

    def op_dropout(self, n, b, shape):
        view = isinstance(b["input"], _ChannelsLast)  # elementwise in eval mode: any layout
        x = b["input"].t if view else self._tensor(b["input"])
        if b.get("training") or b.get("train"):
            raise _Unsupported("dropout with training=True is random; call it with training=self.training "
                               "(or use nn.Dropout) so that it is the identity in eval mode")
        t = self._emit(self._base_name(n), G.Dropout(float(b.get("p", 0.5))), [x], x.shape)
        return _ChannelsLast(t) if view else t

    def op_identity(self, n, b, shape):
        return b["input"] if isinstance(b["input"], _ChannelsLast) else self._tensor(b["input"])

    def op_add(self, n, b, shape):
        a, o = b["input"], b["other"]
        if b.get("alpha", 1) != 1:
            raise _Unsupported(f"alpha={b['alpha']} is not supported (only a plain sum)")
        if isinstance(a, _ChannelsLast) or isinstance(o, _ChannelsLast):
            return self._channel_constant(n, a, o, "adding")
        if not isinstance(a, _Tensor) or not isinstance(o, _Tensor):
            const = o if isinstance(a, _Tensor) else a
            raise _Unsupported(f"adding {_describe_value(const)} is not supported; relprop's Add sums tensors "
                               "computed from the input (put constant offsets into a layer's bias)")
        if a.shape != o.shape:
            raise _Unsupported(f"broadcasting add of shapes {a.shape} and {o.shape}; relprop's Add needs one shape")
        return self._emit(self._base_name(n), G.Add(), [a, o], a.shape)

    def op_cat(self, n, b, shape):
        ts = [self._tensor(t) for t in b["tensors"]]
        nd = len(ts[0].shape)
        dim = int(b["dim"]) % nd
        if dim == 0:
            raise _Unsupported("concatenation along the batch axis (dim=0)")
        if len(ts) == 1:
            return ts[0]
        return self._emit(self._base_name(n), G.Concat(axis=dim), ts, shape())

    def op_stack(self, n, b, shape):
        ts = [self._tensor(t) for t in b["tensors"]]
        return _Stack(ts, int(b["dim"]) % (len(ts[0].shape) + 1))

    def op_sum(self, n, b, shape):
        s, dims = b["input"], b.get("dim")
        dims = [dims] if isinstance(dims, int) else list(dims or [])
        if isinstance(s, _Stack) and len(dims) == 1 and not b.get("keepdim") and b.get("dtype") is None \
                and int(dims[0]) % (len(s.tensors[0].shape) + 1) == s.dim:
            if any(t.shape != s.tensors[0].shape for t in s.tensors):  # pragma: no cover - torch.stack checks
                raise _Unsupported("stacked tensors of different shapes")
            if len(s.tensors) == 1:
                return s.tensors[0]
            return self._emit(self._base_name(n), G.Add(), s.tensors, s.tensors[0].shape)
        self._tensor(s)
        raise _Unsupported("summing over tensor axes is not supported; relprop supports sum only over the stacked "
                           "axis of torch.stack (zennit.layer.Sum)")

    def op_size(self, n, b, shape):
        t = self._tensor(b["input"])
        dim = b.get("dim")
        if dim is None:
            return _Shape(t)
        d = int(dim) % len(t.shape)
        return _Batch() if d == 0 else t.shape[d]

    def op_getattr(self, n, b, shape):
        t, attr = b["input"], b["name"]
        if isinstance(t, _Tensor) and attr == "shape":
            return _Shape(t)
        if isinstance(t, _Tensor) and attr == "ndim":
            return len(t.shape)
        raise _Unsupported(f"reading attribute {attr!r} of {_describe_value(t)}")

    def op_getitem(self, n, b, shape):
        obj, idx = b["input"], b["index"]
        if isinstance(obj, _Shape):
            if not isinstance(idx, (int, slice)):
                raise _Unsupported(f"indexing a shape with {idx!r}")
            return obj._items()[idx]
        if isinstance(obj, (tuple, list)):
            return obj[idx]
        self._tensor(obj)
        raise _Unsupported(f"indexing a tensor with {idx!r} is not supported")


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _source_line(torch, stack_trace):
    if not stack_trace:
        return ""
    torch_dir = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
    user = [m for m in _FRAME.finditer(stack_trace) if not os.path.abspath(m.group(1)).startswith(torch_dir)]
    if not user:
        return ""
    path, line, func = user[-1].groups()
    return f" in {path}:{line} ({func})"


def _fetch_attr(gm, target):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _func_name(f):
    if isinstance(f, str):
        return f
    mod = getattr(f, "__module__", None) or ""
    name = getattr(f, "__name__", None) or str(f)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch._ops") or type(f).__name__ == "OpOverload":
        return str(f)
    if mod in ("torch._C._nn", "torch._C._VariableFunctions", "torch._C") or mod.startswith("torch.nn.functional"):
        mod = "torch.nn.functional" if mod in ("torch._C._nn",) or mod.startswith("torch.nn.functional") else "torch"
    if name == "fn" and mod == "torch.nn.functional":  # boolean_dispatch wrappers (max_pool2d, ...)
        name = "max_pool2d"
    return f"{mod}.{name}" if mod else name


def _describe_value(v):
    if isinstance(v, _Tensor):
        return f"tensor {v.name!r}"
    if isinstance(v, _ChannelsLast):
        return f"the channels-last view permute(0, 2, 3, 1) of tensor {v.t.name!r}"
    if isinstance(v, _Batch):
        return "x.size(0)"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_describe_value(u) for u in v) + ")"
    if hasattr(v, "shape") and hasattr(v, "dtype"):
        return f"a constant tensor of shape {tuple(v.shape)}"
    return repr(v)


# --------------------------------------------------------------------------------------------
# Tables: torch targets -> (operation, argument names, defaults)
# --------------------------------------------------------------------------------------------
_SIGS = {
    "linear": (("input", "weight", "bias"), {"bias": None}),
    "conv_transpose2d": (("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"),
                         {"bias": None, "stride": 1, "padding": 0, "output_padding": 0, "groups": 1, "dilation": 1}),
    "conv2d": (("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
               {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1}),
    "relu": (("input", "inplace"), {}),
    "leaky_relu": (("input", "negative_slope", "inplace"), {"negative_slope": 0.01}),
    "tanh": (("input",), {}),
    "sigmoid": (("input",), {}),
    "softplus": (("input", "beta", "threshold"), {"beta": 1.0, "threshold": 20.0}),
    "elu": (("input", "alpha", "inplace"), {"alpha": 1.0}),
    "gelu": (("input", "approximate"), {"approximate": "none"}),
    "silu": (("input", "inplace"), {}),
    "hardswish": (("input", "inplace"), {}),
    "hardsigmoid": (("input", "inplace"), {}),
    "relu6": (("input", "inplace"), {}),
    "hardtanh": (("input", "min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0}),
    "mish": (("input", "inplace"), {}),
    "softmax": (("input", "dim", "dtype"), {"dim": None}),
    "log_softmax": (("input", "dim", "dtype"), {"dim": None}),
    "max_pool2d": (("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                   {"stride": None, "padding": 0, "dilation": 1}),
    "avg_pool2d": (("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                    "divisor_override"), {"stride": None, "padding": 0, "count_include_pad": True}),
    "adaptive_avg_pool2d": (("input", "output_size"), {}),
    "adaptive_max_pool2d": (("input", "output_size", "return_indices"), {"return_indices": False}),
    "interpolate": (("input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor", "antialias"),
                    {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
                     "recompute_scale_factor": None, "antialias": False}),
    "layer_norm": (("input", "normalized_shape", "weight", "bias", "eps"), {"weight": None, "bias": None, "eps": 1e-5}),
    "group_norm": (("input", "num_groups", "weight", "bias", "eps"), {"weight": None, "bias": None, "eps": 1e-5}),
    "mul": (("input", "other"), {}),
    "mean": (("input", "dim", "keepdim", "dtype"), {"keepdim": False}),
    "flatten": (("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1}),
    "reshape": (("input", "shape"), {}),
    "permute": (("input", "dims"), {}),
    "dropout": (("input", "p", "training", "inplace"), {"p": 0.5, "training": True}),
    "identity": (("input", "memory_format"), {}),
    "add": (("input", "other", "alpha"), {"alpha": 1}),
    "cat": (("tensors", "dim"), {"dim": 0}),
    "stack": (("tensors", "dim"), {"dim": 0}),
    "sum": (("input", "dim", "keepdim", "dtype"), {"dim": None, "keepdim": False}),
    "size": (("input", "dim"), {}),
    "getattr": (("input", "name"), {}),
    "getitem": (("input", "index"), {}),
}


def _function_tables(torch):
    F = torch.nn.functional
    aten = torch.ops.aten
    funcs, methods = {}, {}

    def reg(op, targets, names=None, defaults=None):
        sig_names, sig_defaults = _SIGS[op]
        entry = (op, names or sig_names, sig_defaults if defaults is None else defaults)
        for t in targets:
            if t is not None:
                funcs[t] = entry

    def aten_op(name, overload="default"):
        packet = getattr(aten, name, None)
        return getattr(packet, overload, None) if packet is not None else None

    reg("linear", [F.linear, aten_op("linear")])
    reg("conv2d", [F.conv2d, torch.conv2d, aten_op("conv2d"), aten_op("conv2d", "padding")])
    reg("conv_transpose2d", [F.conv_transpose2d, torch.conv_transpose2d, aten_op("conv_transpose2d", "input")])
    funcs[F.batch_norm] = ("batch_norm", ("input", "running_mean", "running_var", "weight", "bias", "training",
                                          "momentum", "eps"),
                           {"weight": None, "bias": None, "training": False, "eps": 1e-5})
    bn_aten = ("batch_norm", ("input", "weight", "bias", "running_mean", "running_var", "training", "momentum",
                              "eps", "cudnn_enabled"), {"eps": 1e-5})
    for t in (torch.batch_norm, aten_op("batch_norm")):
        if t is not None:
            funcs[t] = bn_aten
    legit = aten_op("_native_batch_norm_legit_no_training")
    if legit is not None:
        funcs[legit] = ("batch_norm", ("input", "weight", "bias", "running_mean", "running_var", "momentum", "eps"),
                        {"eps": 1e-5, "_tuple": True})
    reg("relu", [F.relu, torch.relu, torch.relu_, F.relu_, aten_op("relu"), aten_op("relu_")])
    reg("leaky_relu", [F.leaky_relu, aten_op("leaky_relu")])
    reg("tanh", [torch.tanh, F.tanh, aten_op("tanh")])
    reg("sigmoid", [torch.sigmoid, F.sigmoid, aten_op("sigmoid")])
    reg("softplus", [F.softplus, aten_op("softplus")])
    reg("elu", [F.elu, getattr(F, "elu_", None)])
    reg("elu", [aten_op("elu"), aten_op("elu_")], ("input", "alpha", "scale", "input_scale"))
    reg("gelu", [F.gelu, aten_op("gelu")])
    reg("silu", [F.silu, aten_op("silu"), aten_op("silu_")])
    reg("hardswish", [F.hardswish, aten_op("hardswish"), aten_op("hardswish_")])
    reg("hardsigmoid", [F.hardsigmoid, aten_op("hardsigmoid"), aten_op("hardsigmoid_")])
    reg("relu6", [F.relu6, aten_op("relu6"), aten_op("relu6_")])
    reg("hardtanh", [F.hardtanh, getattr(F, "hardtanh_", None), aten_op("hardtanh"), aten_op("hardtanh_")])
    reg("mish", [F.mish, aten_op("mish"), aten_op("mish_")])
    reg("softmax", [torch.softmax, aten_op("softmax", "int")])
    funcs[F.softmax] = ("softmax", ("input", "dim", "_stacklevel", "dtype"), {"dim": None})
    reg("log_softmax", [torch.log_softmax, aten_op("log_softmax", "int")])
    funcs[F.log_softmax] = ("log_softmax", ("input", "dim", "_stacklevel", "dtype"), {"dim": None})
    for op, t in (("softmax", aten_op("_softmax")), ("log_softmax", aten_op("_log_softmax"))):
        if t is not None:
            funcs[t] = (op, ("input", "dim", "half_to_float"), {"half_to_float": False})
    reg("max_pool2d", [F.max_pool2d, torch.max_pool2d, aten_op("max_pool2d")])
    reg("avg_pool2d", [F.avg_pool2d, aten_op("avg_pool2d")])
    reg("adaptive_avg_pool2d", [F.adaptive_avg_pool2d, aten_op("adaptive_avg_pool2d"),
                                aten_op("_adaptive_avg_pool2d")])
    reg("adaptive_max_pool2d", [F.adaptive_max_pool2d, getattr(F, "adaptive_max_pool2d_with_indices", None)])
    reg("interpolate", [F.interpolate, getattr(F, "upsample", None)])
    reg("layer_norm", [F.layer_norm])
    reg("layer_norm", [aten_op("layer_norm")], ("input", "normalized_shape", "weight", "bias", "eps", "cudnn_enable"))
    reg("group_norm", [F.group_norm, aten_op("group_norm")])
    reg("mul", [operator.mul, operator.imul, torch.mul, aten_op("mul", "Tensor")])
    reg("mean", [torch.mean, aten_op("mean", "dim")])
    reg("flatten", [torch.flatten, aten_op("flatten", "using_ints")])
    reg("reshape", [torch.reshape, aten_op("reshape"), aten_op("view"), aten_op("_unsafe_view")])
    reg("permute", [torch.permute, aten_op("permute")])  # only a channels-last region (_channels_last)
    reg("dropout", [F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout])
    reg("dropout", [aten_op("dropout")], ("input", "p", "training"))
    reg("identity", [torch.clone, aten_op("clone"), aten_op("alias")])
    # in-place ops (x += y, relu_) map to their functional forms; the forward check catches a
    # mutated tensor that is read again
    reg("add", [operator.add, operator.iadd, torch.add, aten_op("add", "Tensor"), aten_op("add_", "Tensor")])
    reg("cat", [torch.cat, torch.concat, getattr(torch, "concatenate", None), aten_op("cat")])
    reg("stack", [torch.stack, aten_op("stack")])
    reg("sum", [torch.sum, aten_op("sum", "dim_IntList")])
    reg("getattr", [getattr])
    reg("getitem", [operator.getitem])

    def method(op, names, *targets):
        sig_names, sig_defaults = _SIGS[op]
        for t in targets:
            methods[t] = (op, names or sig_names, sig_defaults)

    method("relu", ("input",), "relu", "relu_")
    method("tanh", ("input",), "tanh", "tanh_")
    method("sigmoid", ("input",), "sigmoid", "sigmoid_")
    method("softmax", None, "softmax")
    method("log_softmax", None, "log_softmax")
    method("mean", None, "mean")
    method("flatten", None, "flatten")
    method("reshape", None, "view", "reshape")
    method("permute", None, "permute")
    method("identity", None, "clone", "contiguous")
    method("add", None, "add", "add_", "__add__", "__iadd__")
    method("sum", None, "sum")
    method("mul", None, "mul", "mul_", "__mul__", "__imul__")
    method("size", None, "size")
    return funcs, methods


def _module_table(torch):
    nn = torch.nn

    def conv(m):
        return {"weight": m.weight, "bias": m.bias, "stride": m.stride, "padding": m.padding,
                "dilation": m.dilation, "groups": m.groups, "padding_mode": m.padding_mode}

    def bn(m):
        return {"weight": m.weight if m.affine else None, "bias": m.bias if m.affine else None,
                "running_mean": m.running_mean, "running_var": m.running_var, "eps": m.eps,
                "training": m.training or m.running_mean is None}

    def pool(m, *extra):
        d = {"kernel_size": m.kernel_size, "stride": m.stride, "padding": m.padding, "ceil_mode": m.ceil_mode}
        d.update({k: getattr(m, k) for k in extra})
        return d

    def flatten(m):
        return {"start_dim": m.start_dim, "end_dim": m.end_dim}

    table = {
        nn.Linear: ("linear", lambda m: {"weight": m.weight, "bias": m.bias}),
        nn.Conv2d: ("conv2d", conv),
        nn.ConvTranspose2d: ("conv_transpose2d", lambda m: {
            "weight": m.weight, "bias": m.bias, "stride": m.stride, "padding": m.padding,
            "output_padding": m.output_padding, "groups": m.groups, "dilation": m.dilation}),
        nn.BatchNorm1d: ("batch_norm", bn),
        nn.BatchNorm2d: ("batch_norm", bn),
        nn.ReLU: ("relu", lambda m: {}),
        nn.LeakyReLU: ("leaky_relu", lambda m: {"negative_slope": m.negative_slope}),
        nn.Tanh: ("tanh", lambda m: {}),
        nn.Sigmoid: ("sigmoid", lambda m: {}),
        nn.Softplus: ("softplus", lambda m: {"beta": m.beta, "threshold": m.threshold}),
        nn.ELU: ("elu", lambda m: {"alpha": m.alpha}),
        nn.GELU: ("gelu", lambda m: {"approximate": m.approximate}),
        nn.SiLU: ("silu", lambda m: {}),
        nn.Hardswish: ("hardswish", lambda m: {}),
        nn.Hardsigmoid: ("hardsigmoid", lambda m: {}),
        nn.ReLU6: ("relu6", lambda m: {}),
        nn.Hardtanh: ("hardtanh", lambda m: {"min_val": m.min_val, "max_val": m.max_val}),
        nn.Mish: ("mish", lambda m: {}),
        nn.Softmax: ("softmax", lambda m: {"dim": m.dim}),
        nn.LogSoftmax: ("log_softmax", lambda m: {"dim": m.dim}),
        nn.MaxPool2d: ("max_pool2d", lambda m: pool(m, "dilation", "return_indices")),
        nn.AvgPool2d: ("avg_pool2d", lambda m: pool(m, "count_include_pad", "divisor_override")),
        nn.AdaptiveAvgPool2d: ("adaptive_avg_pool2d", lambda m: {"output_size": m.output_size}),
        nn.AdaptiveMaxPool2d: ("adaptive_max_pool2d", lambda m: {"output_size": m.output_size,
                                                                 "return_indices": m.return_indices}),
        nn.LayerNorm: ("layer_norm", lambda m: {"normalized_shape": m.normalized_shape, "weight": m.weight,
                                                "bias": m.bias, "eps": m.eps}),
        nn.GroupNorm: ("group_norm", lambda m: {"num_groups": m.num_groups, "weight": m.weight, "bias": m.bias,
                                                "eps": m.eps}),
        nn.Flatten: ("flatten", flatten),
        nn.Identity: ("identity", lambda m: {}),
    }
    for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout):
        table[cls] = ("dropout", lambda m: {"p": m.p, "training": m.training})
    for cls in (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d):  # the last two: subclasses
        table[cls] = ("interpolate", lambda m: {"size": m.size, "scale_factor": m.scale_factor, "mode": m.mode,
                                                "align_corners": True if isinstance(m, nn.UpsamplingBilinear2d)
                                                else m.align_corners,
                                                "recompute_scale_factor": m.recompute_scale_factor})
    return table


def supported_torch_ops():
    """The names of what the mapping tables convert (``relprop.io.supported_ops()["torch"]``):
    module classes, functions and tensor methods, as the import errors name them; the ``aten``
    overloads (the same ops as ``torch.export`` records them) are left out."""
    import torch

    funcs, methods = _function_tables(torch)
    names = set()
    for cls in _module_table(torch):
        mod = "torch.nn" if cls.__module__.startswith("torch.nn.modules") else cls.__module__
        names.add(f"{mod}.{cls.__qualname__}")
    for f in funcs:
        if isinstance(f, torch._ops.OpOverload) or type(f).__name__ == "OpOverload":
            continue
        names.add(_func_name(f))
    names.update(f"Tensor.{m}()" for m in methods)
    return sorted(names)


# --------------------------------------------------------------------------------------------
# The forward check
# --------------------------------------------------------------------------------------------
def _check_forward(torch, module, graph, x, check, rtol, atol, gm=None, stripped=None):
    """Run the module and the graph on ``x`` (float64 on both sides where possible) and compare.
    With a final softmax ``stripped``, the graph's logits are compared with the traced module's
    values at the softmax input (a softmax hides a shift of the scores, which the explanations
    see) and, through the softmax, with the module's output."""
    try:
        ref = copy.deepcopy(module).to(device="cpu", dtype=torch.float64).eval()
        xr = x.detach().to(device="cpu", dtype=torch.float64)
        y_ref = ref(xr)
    except Exception:  # noqa: BLE001 - a module that cannot run in float64: compare in its own dtype
        xr = x
        y_ref = module(x)
    if not isinstance(y_ref, torch.Tensor):
        raise ValueError(f"from_torch: the module returned {type(y_ref).__name__}; relprop models return one tensor")
    y_ref = y_ref.detach().cpu().double().numpy()
    y_rp = np.asarray(graph(xr.cpu().numpy()), dtype=np.float64)
    if stripped is None:
        problem = _mismatch(y_rp, y_ref, rtol, atol, "output")
    else:
        logits = _values_at(torch, gm, xr, stripped.source_input)
        problem = None if logits is None else _mismatch(y_rp, logits, rtol, atol, "logits (before the stripped "
                                                                                  f"{stripped.kind})")
        problem = problem or _mismatch(apply_final_softmax(y_rp, stripped.kind), y_ref, rtol, atol,
                                       f"output through the stripped {stripped.kind}")
    if problem is None:
        return
    msg = (f"from_torch: the imported graph does not reproduce the module on example_input: {problem}. "
           "The module may use an operation whose semantics relprop does not capture (e.g. in-place ops on a "
           "tensor used twice, or Python control flow that depends on the input)")
    if check == "raise":
        raise ValueError(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def _mismatch(y_rp, y_ref, rtol, atol, what):
    """None when ``|y_rp - y_ref| <= atol + rtol |y_ref|`` everywhere, else what differs."""
    if y_rp.shape != y_ref.shape:
        return f"{what} shape {y_rp.shape} differs from the module's {y_ref.shape}"
    scale = float(np.max(np.abs(y_ref))) if y_ref.size else 0.0
    a = rtol * scale if atol is None else atol
    diff = np.abs(y_rp - y_ref)
    bad = ~(diff <= a + rtol * np.abs(y_ref))
    if not np.any(bad):
        return None
    return (f"{what}: max |difference| = "
            f"{float(np.nanmax(diff)) if np.any(np.isfinite(diff)) else float('nan'):.3e} at {np.count_nonzero(bad)} "
            f"of {bad.size} values (max |value| = {scale:.3e}, rtol={rtol}, atol={a:.3e})")


def _values_at(torch, gm, xr, fx_node):
    """The traced module's value at ``fx_node`` for input ``xr`` (an fx Interpreter run on a
    copy in ``xr``'s dtype), or None when it cannot be computed (then only the output is
    compared)."""
    if gm is None or fx_node is None:
        return None
    name = fx_node.name

    class Grab(torch.fx.Interpreter):
        value = None

        def run_node(self, n):
            r = super().run_node(n)
            if n.name == name:
                self.value = r
            return r

    try:
        with warnings.catch_warnings():  # torch's own deprecation notices on copying an exported module
            warnings.simplefilter("ignore", FutureWarning)
            it = Grab(copy.deepcopy(gm).to(device="cpu", dtype=xr.dtype))
        it.run(xr)
    except Exception:  # noqa: BLE001 - a graph the interpreter cannot rerun: the output check remains
        return None
    v = it.value
    return v.detach().cpu().double().numpy() if isinstance(v, torch.Tensor) else None


__all__ = ["from_torch", "supported_torch_ops", "SUPPORTED"]
