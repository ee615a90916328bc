"""Class activation maps: Grad-CAM, Grad-CAM++ and Guided Grad-CAM (Selvaraju et al. 2017, Eq. 1-2; Chattopadhay et al. 2018, Eq. 19).

All three read one layer ``A`` whose output is (N, K, h, w) (``layer=``: a node name, or an
int index into ``graph.nodes``, negative allowed; default: the last node before the score
with a 4-D output whose map is larger than 1 x 1 -- a GlobalAvgPool2d output (N, K, 1, 1)
would give a constant map -- or the last 4-D node when every map is 1 x 1)
and the gradient ``g = d s_c / dA`` of the target's pre-softmax score ``s_c``. They need one
forward pass (storing ``A`` and what the gradient traversal reads) and one backward pass
that stops at the layer (``engine.backward(..., collect={layer: None})``); Guided Grad-CAM
adds one guided-backprop traversal to the input from the same forward pass.

* ``"gradcam"`` = Captum ``LayerGradCam`` (Selvaraju et al. 2017, Eq. 1-2):
  ``w_k = mean_ij g_kij``, ``L = relu(sum_k w_k A_k)`` (relu only if ``relu_attributions``).
* ``"gradcam_pp"`` (Chattopadhay et al. 2018, Eq. 10, generalized) with the
  exponential-score closed form of the paper (Eq. 19 there): for ``Y = exp(s_c)`` and a
  piecewise-linear net the higher derivatives are powers of ``g``, so
  ``alpha_kij = g_kij^2 / (2 g_kij^2 + (sum_ab A_kab) g_kij^3)`` (0 where the denominator is
  0, in particular where ``g = 0``), ``w_k = sum_ij alpha_kij relu(g_kij)``,
  ``L = relu(sum_k w_k A_k)``. The common positive factor ``exp(s_c)`` of ``dY/dA`` is left
  out (it scales each sample's map by a constant and overflows for large scores), as in the
  authors' reference code and pytorch-grad-cam (which add no epsilon either here).
* ``"guided_gradcam"`` = Captum ``GuidedGradCam``: relprop ``"guided_backprop"`` times the
  upsampled Grad-CAM map (always with the ReLU, as Captum).

Upsampling to the input's (H, W) is torch's ``F.interpolate(size=(H, W))`` reproduced in
numpy -- ``"bilinear"`` (align_corners=False, the Grad-CAM paper's choice and the default
here) or ``"nearest"`` (Captum ``GuidedGradCam``'s default ``interpolate_mode``), i.e.
Captum's ``LayerAttribution.interpolate``. Captum's ``LayerGradCam`` returns (N, 1, h, w);
relprop returns x's shape, so the upsampled map of ``"gradcam"`` / ``"gradcam_pp"`` is
repeated over the C input channels (every channel holds the same map).
"""
from __future__ import annotations

import difflib
import numbers

import numpy as np

from ..core import engine
from .base import Method, onehot, register
from ..core.modes import GRAD
from ..core.plan import needs

INTERPOLATE_MODES = ("bilinear", "nearest")


# ---------------------------------------------------------------------------------------
# torch's F.interpolate (size given, align_corners=False) as two small matrices


def interp_matrix(n_in, n_out, mode, dtype=np.float64):
    """(n_out, n_in) matrix ``M`` with ``out = M @ in`` along one axis, as torch's CPU kernels
    index and weight: bilinear ``src = max(scale (d + 0.5) - 0.5, 0)``, ``i0 = floor(src)``,
    ``i1 = i0 + 1`` clamped, ``lambda = src - i0``; nearest ``min(floor(d * scale), n_in - 1)``
    (exact index rules for sizes equal / doubled); ``scale = n_in / n_out``."""
    dtype = np.dtype(dtype)
    d = np.arange(n_out)
    M = np.zeros((n_out, n_in), dtype)
    if mode == "nearest":
        if n_out == n_in:
            src = d
        elif n_out == 2 * n_in:
            src = d >> 1
        else:
            scale = np.float32(n_in) / np.float32(n_out)  # torch computes this index in float
            src = np.minimum(np.floor(d.astype(np.float32) * scale).astype(np.int64), n_in - 1)
        M[d, src] = 1
        return M
    scale = dtype.type(n_in) / dtype.type(n_out)
    src = np.maximum(scale * (d.astype(dtype) + dtype.type(0.5)) - dtype.type(0.5), 0).astype(dtype)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    off = (i0 < n_in - 1).astype(np.int64)
    lam1 = np.clip(src - i0.astype(dtype), 0, 1).astype(dtype)
    lam0 = (dtype.type(1) - lam1).astype(dtype)
    np.add.at(M, (d, i0), lam0)
    np.add.at(M, (d, i0 + off), lam1)
    return M


def upsample(cam, size, mode):
    """(N, h, w) maps -> (N, H, W), as ``F.interpolate(cam[:, None], size, mode=mode)``."""
    h, w = cam.shape[1:]
    H, W = size
    if (h, w) == (H, W):
        return cam
    Mh = interp_matrix(h, H, mode, cam.dtype)
    Mw = interp_matrix(w, W, mode, cam.dtype)
    return np.matmul(np.matmul(Mh, cam), Mw.T)


# ---------------------------------------------------------------------------------------
# the maps


def gradcam_map(A, g, relu=True):
    """Grad-CAM at the layer: ``relu(sum_k mean_ij(g_k) A_k)`` (N, h, w) (Selvaraju et al. 2017, Eq. 1-2)."""
    w = g.mean(axis=(2, 3))
    cam = np.einsum("nk,nkhw->nhw", w, A)
    return np.maximum(cam, 0) if relu else cam


def gradcam_pp_map(A, g, relu=True):
    """Grad-CAM++ at the layer (exp-score closed form, see the module docstring)."""
    g2 = g * g
    den = 2 * g2 + A.sum(axis=(2, 3), keepdims=True) * (g2 * g)
    nz = den != 0
    alpha = np.zeros_like(g)
    np.divide(g2, den, out=alpha, where=nz)
    w = (alpha * np.maximum(g, 0)).sum(axis=(2, 3))
    cam = np.einsum("nk,nkhw->nhw", w, A)
    return np.maximum(cam, 0) if relu else cam


def _forward(ctx, x, layer):
    keep, idx = needs(ctx.graph, GRAD)
    keep.add(layer)
    return engine.forward(ctx.m, x, keep, idx, ctx.shapes)


def _layer_grad(ctx, tape, start, layer):
    col = {layer: None}
    engine.backward(ctx.m, tape, start, GRAD, collect=col)
    return tape.out[layer], col[layer]


def _start(score, target):
    return onehot(score, score.argmax(axis=1) if target is None else target, False)


def _spread(cam, x, mode):
    """Upsample (N, h, w) to x's (H, W) and repeat over x's channels: x's shape and dtype."""
    up = upsample(cam, x.shape[2:], mode).astype(x.dtype, copy=False)
    return np.ascontiguousarray(np.broadcast_to(up[:, None], x.shape))


def gradcam(ctx, x, target, layer, relu_attributions, interpolate):
    """Grad-CAM (Captum ``LayerGradCam`` + ``LayerAttribution.interpolate``), repeated over channels."""
    score, _, tape = _forward(ctx, x, layer)
    A, g = _layer_grad(ctx, tape, _start(score, target), layer)
    return _spread(gradcam_map(A, g, relu_attributions), x, interpolate)


def gradcam_pp(ctx, x, target, layer, relu_attributions, interpolate):
    """Grad-CAM++ (Chattopadhyay et al. 2018, exp-score closed form), repeated over channels."""
    score, _, tape = _forward(ctx, x, layer)
    A, g = _layer_grad(ctx, tape, _start(score, target), layer)
    return _spread(gradcam_pp_map(A, g, relu_attributions), x, interpolate)


def guided_gradcam(ctx, x, target, layer, interpolate):
    """Guided Grad-CAM (Captum ``GuidedGradCam``): guided backprop times the upsampled Grad-CAM
    map (with ReLU); one forward, one plain backward to the layer, one guided backward."""
    score, _, tape = _forward(ctx, x, layer)
    start = _start(score, target)
    A, g = _layer_grad(ctx, tape, start.copy(), layer)
    gb = engine.backward(ctx.m, tape, start, GRAD, relu="guided")
    up = upsample(gradcam_map(A, g, True), x.shape[2:], interpolate).astype(x.dtype, copy=False)
    return (gb * up[:, None]).astype(x.dtype, copy=False)


def multi(cam_map, guided=False):
    """``run_multi`` of a CAM method: ``cam_map(A, g, relu)`` the class map from the layer's
    activations and gradients; ``guided``: times guided backprop (Guided Grad-CAM)."""
    def run(ctx, x, targets, **params):
        return _multi(ctx, x, targets, cam_map, guided, params)

    run.__doc__ = f"{cam_map.__name__} for the targets (N, K) from one forward pass"
    return run


def _multi(ctx, x, targets, cam_map, guided, params):
    """Attributions for the classes ``targets`` (N, K) from ONE forward pass: (N, K, C, H, W)
    (one collecting backward, plus one guided backward for guided_gradcam, per class)."""
    layer, mode = params["layer"], params["interpolate"]
    score, _, tape = _forward(ctx, x, layer)
    n = x.shape[0]
    out = np.empty((n, targets.shape[1]) + x.shape[1:], x.dtype)
    for j in range(targets.shape[1]):
        start = onehot(score, targets[:, j], False)
        A, g = _layer_grad(ctx, tape, start.copy(), layer)
        if guided:
            gb = engine.backward(ctx.m, tape, start, GRAD, relu="guided")
            up = upsample(cam_map(A, g, True), x.shape[2:], mode).astype(x.dtype, copy=False)
            out[:, j] = gb * up[:, None]
        else:
            out[:, j] = _spread(cam_map(A, g, params["relu_attributions"]), x, mode)
    return out


# ---------------------------------------------------------------------------------------
# validation


def _ancestors(graph, name):
    seen, todo = set(), [name]
    while todo:
        cur = todo.pop()
        if cur in seen or cur == "input":
            continue
        seen.add(cur)
        todo.extend(graph.by_name[cur].inputs)
    return seen


def _describe(graph, name, shapes):
    return f"{name!r} ({graph.by_name[name].layer.kind}, output (N, {', '.join(map(str, shapes[name]))}))"


def resolve_layer(graph, layer, shapes, method):
    """The node name a ``layer=`` value designates, checked: known, reaching the score, 4-D."""
    above = _ancestors(graph, graph.score_node)
    names = [nd.name for nd in graph.nodes]
    cands = [nm for nm in names if nm in above and len(shapes[nm]) == 3]
    where = (f"; layers with an (N, C, H, W) output: {', '.join(_describe(graph, c, shapes) for c in cands)}"
             if cands else "")
    if layer is None:
        if not cands:
            raise ValueError(f"{method}: the model has no layer with an (N, C, H, W) output before its score "
                             f"(CAM methods need a convolutional feature map; layer output shapes: "
                             f"{', '.join(_describe(graph, nm, shapes) for nm in names)})")
        spatial = [c for c in cands if shapes[c][1:] != (1, 1)]
        return (spatial or cands)[-1]
    if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, (str, numbers.Integral)):
        raise TypeError(f"{method}: layer must be a node name (str) or an int index into the model's "
                        f"{len(names)} nodes, got {layer!r}")
    if isinstance(layer, str):
        if layer not in graph.by_name:
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"{method}: unknown layer {layer!r}{hint} (node names: {', '.join(names)}){where}")
        name = layer
    else:
        i = int(layer)
        if not -len(names) <= i < len(names):
            raise ValueError(f"{method}: layer index {i} is out of range for a model with {len(names)} nodes "
                             f"(expected {-len(names)}..{len(names) - 1}){where}")
        name = names[i]
    if len(shapes[name]) != 3:
        raise ValueError(f"{method}: layer {_describe(graph, name, shapes)} does not have an (N, C, H, W) "
                         f"output; CAM methods need a convolutional feature map{where}")
    if name not in above:
        raise ValueError(f"{method}: layer {name!r} does not feed the score node {graph.score_node!r}, so the "
                         f"score has no gradient there{where}")
    return name


def _validator(method):
    def validate(graph, x, params):
        out = dict(params)
        mode = params["interpolate"]
        if not isinstance(mode, str) or mode not in INTERPOLATE_MODES:
            close = difflib.get_close_matches(str(mode), INTERPOLATE_MODES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{method}: unknown interpolate {mode!r}{hint} (one of {', '.join(INTERPOLATE_MODES)}; "
                             f"torch F.interpolate semantics, align_corners=False)")
        if "relu_attributions" in params and not isinstance(params["relu_attributions"], (bool, np.bool_)):
            raise TypeError(f"{method}: relu_attributions must be True or False, got {params['relu_attributions']!r}")
        if x is None:  # an Explainer being built: a named layer must exist
            layer = params["layer"]
            if isinstance(layer, str) and layer not in graph.by_name:
                close = difflib.get_close_matches(layer, list(graph.by_name), n=3)
                hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"{method}: unknown layer {layer!r}{hint}")
            return out
        if x.ndim != 4:
            raise ValueError(f"{method}: x must be an image batch (N, C, H, W) (the map is upsampled to H x W), "
                             f"got shape {x.shape}")
        shapes = graph.infer_shapes(x.shape[1:])
        out["layer"] = resolve_layer(graph, params["layer"], shapes, method)
        return out

    return validate


_CAM_PARAMS = {"layer": None, "relu_attributions": True, "interpolate": "bilinear"}

register(Method("gradcam", "Grad-CAM (Captum LayerGradCam, upsampled to the input, repeated over its channels)",
                dict(_CAM_PARAMS), validate=_validator("gradcam"), run=gradcam, run_multi=multi(gradcam_map),
                family="cam"))
register(Method("gradcam_pp", "Grad-CAM++ (exp-score closed form, upsampled to the input, repeated over its "
                "channels)", dict(_CAM_PARAMS), validate=_validator("gradcam_pp"), run=gradcam_pp,
                run_multi=multi(gradcam_pp_map), family="cam"))
register(Method("guided_gradcam", "Guided Grad-CAM (Captum GuidedGradCam): guided backprop times the upsampled "
                "Grad-CAM map", {"layer": None, "interpolate": "bilinear"}, validate=_validator("guided_gradcam"),
                run=guided_gradcam, run_multi=multi(gradcam_map, guided=True), family="cam"))
