"""Dense and Conv2d in the two passes: the numeric work of the linear layers.

* forward: ``W a + b`` with the following activation fused into the GEMM epilogue (Conv2d as
  im2col + one GEMM per chunk of samples; ``[W; W+]`` stacked when a rule wants ``W+ a``);
* gradient and DeepLIFT's linear rule: ``W^T g`` (stride-1 Conv2d as a forward convolution
  with the flipped, transposed weight);
* an LRP rule step: the rule compiled to one block matrix (``relprop.core.plan.rule_state``),
  one forward GEMM for the denominators (none for epsilon/z), one backward GEMM;
* DeepLIFT RevealCancel's positive/negative split through the layer.

A depthwise Conv2d (``groups`` = input = output channels, stored as the dense diagonal weight)
runs its plain forward and its gradient with the backend's depthwise kernels, one multiply-add per
tap and channel plane (:func:`depthwise_forward`, :func:`depthwise_grad`), instead of the dense GEMM, which would
do ``C`` times the work; the LRP rule steps keep the dense block matrices.

Scratch buffers for im2col columns and GEMM outputs are reused across chunks and calls.
"""
from __future__ import annotations

import numpy as np

from . import budget
from . import rules as R
from .modes import ZMode


_WORK = {}


def scratch(slot, shape, dtype, xp=np):
    """A reusable scratch buffer (im2col columns and GEMM inputs): fresh multi-MB arrays
    for every chunk cost a page fault per 4 KiB page, which showed up as much as im2col
    itself. Calls are serialized by backend.LOCK, so one buffer per slot is safe."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    key = (xp.__name__, slot)
    buf = _WORK.get(key)
    if buf is None or buf.nbytes < nbytes:
        _WORK.pop(key, None)  # free the old one first (device memory)
        buf = xp.empty(max(nbytes, 1), np.uint8)
        _WORK[key] = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def release_scratch():
    """Drop the cached scratch buffers (e.g. before retrying a smaller batch after a device OOM)."""
    _WORK.clear()


def conv_gemm(k, m, x, wmat, taps_key, kh, kw, sh, sw, ph, pw, slot="gemm", winograd="f2"):
    """``wmat @ im2col(x)``: (R, N*Ho*Wo) for ``x`` (N, C, H, W) and a weight (R, C*kh*kw).

    The lowering is chosen per call from the geometry and the backend: on the CPU a 3x3 stride-1
    window runs as Winograd F(4x4, 3x3) or F(2x2, 3x3) (``relprop.kernels.cpu.winograd``: 36 or 16
    GEMMs, 4x or 2.25x fewer multiplications; :func:`winograd_route`), other stride-1 windows as
    ``kh*kw`` shifted GEMMs over the padded input (``relprop.kernels.cpu.shifted``; no im2col copy),
    anything else as im2col + one GEMM; the transformed weights are derived once per model under
    ``taps_key``.
    All compute the same sums (to rounding). ``winograd``: ``"f4"`` allows F(4x4, 3x3) and F(2x2, 3x3),
    ``"f2"`` (forward passes) only F(2x2, 3x3): F(4x4)'s rounding (~5e-6 of the largest output in
    float32, vs ~3e-7) moves pre-activations across ReLU's kink and swaps near-tied MaxPool winners
    downstream, which changed W1's float32 gradient by 3% of its largest value; in the backward
    pass of the gradient it only adds its rounding (there is no mask after it). ``False`` where
    products with zero weights must stay exactly zero (LRP's backward: Winograd's transformed
    filters mix the taps, and a ratio blown up by a zero denominator would leak rounding onto
    inputs that get nothing)."""
    xp = k.xp
    n, c, h, w = x.shape
    route = winograd_route(k, c, h, w, kh, kw, sh, sw, ph, pw, f4=winograd == "f4") \
        if winograd and taps_key is not None and wmat.dtype == x.dtype else None
    if route is not None:
        f4 = route == "winograd4"
        ho, wo = k.conv_out_shape(h, w, 3, 3, 1, 1, ph, pw)
        th, tw = (k.winograd4_tiles if f4 else k.winograd_tiles)(ho, wo)
        filt = k.winograd4_filter if f4 else k.winograd_filter
        u = m.host((route,) + tuple(taps_key) + (np.dtype(x.dtype).str,), lambda: filt(wmat, c), _taps_node(m, taps_key))
        v = scratch("wino_v", (u.shape[0], c, n * th * tw), x.dtype, xp)
        (k.winograd4_input if f4 else k.winograd_input)(x, ph, pw, th, tw, v)
        mm = k.matmul(u, v, out=scratch("wino_m", (u.shape[0], wmat.shape[0], n * th * tw), x.dtype, xp))
        out = scratch(slot, (wmat.shape[0], n * ho * wo), x.dtype, xp)
        (k.winograd4_output if f4 else k.winograd_output)(mm, n, th, tw, ho, wo, out)
        return out
    if taps_key is not None and _shifted(k, c, h, w, kh, kw, sh, sw, ph, pw):
        hp, wp, ho, wo, tail = k.wide_geometry(h, w, kh, kw, ph, pw)
        xf = scratch("xflat", (c, n * hp * wp + tail), x.dtype, xp)
        k.pad_flat(x, ph, pw, xf)
        taps = m.host(("taps",) + tuple(taps_key) + (np.dtype(x.dtype).str,), lambda: k.taps(wmat, c, kh, kw),
                      _taps_node(m, taps_key))
        zw = scratch("wide", (wmat.shape[0], n * hp * wp), x.dtype, xp)
        k.gemm_taps(taps, xf, wp, kw, zw)
        out = scratch(slot, (wmat.shape[0], n * ho * wo), x.dtype, xp)
        k.crop_wide(zw, n, hp, wp, ho, wo, out)
        return out
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    cols = scratch("cols", (c * kh * kw, n * ho * wo), x.dtype, xp)
    k.im2col(x, kh, kw, sh, sw, ph, pw, cols)
    return k.matmul(wmat, cols, out=scratch(slot, (wmat.shape[0], n * ho * wo), x.dtype, xp))


def _taps_node(m, taps_key):
    """The node whose layer alone the transformed weights under ``taps_key`` (``(kind, node name,
    ...)``) derive from: they are shared by every model holding that layer (``Compiled.host``)."""
    graph = m.graph
    return None if graph is None else graph.by_name.get(taps_key[1])


WIDE_WASTE = 1.3  # measured: shifted GEMMs win up to about this much extra (padded-grid) work
# Winograd F(2x2, 3x3) for 3x3 stride-1 windows on maps of at most 16x16 outputs and >= 128 input
# channels (with 32-64 channels, a CIFAR-sized CNN, its transforms cost more than the small GEMMs
# save: 0.445 s vs 0.339 s for a batch of 256): measured on VGG layers (batch 16, float32) 16x16x256: 21 ms vs 26 (shifted), 8x8x512:
# 17 ms vs 32 (im2col); on larger maps its input transform costs more than the GEMMs it saves (with
# a staged input transform, 32x32 maps won 20% alone but lost 15% in W1's gradient as a whole)
WINOGRAD_MAX_OUTPUTS = 256
WINOGRAD_MIN_CHANNELS = 128
# Winograd F(4x4, 3x3) (36 GEMMs per 4x4 output tile: 4x fewer multiplications than the direct sum)
# from this many input channels on, wherever its tiles cost fewer multiplications than F(2x2)'s; only
# in the gradient's backward pass (see conv_gemm). Off (None) by default: measured in W1's gradient
# backward on the 2-core reference machine it saved 2% with OpenBLAS's Haswell kernels and lost 10-60%
# per layer with its SkylakeX (AVX-512) kernels, whose faster GEMMs leave its 2.25x larger transformed
# tiles the larger cost (bench/results/2026-12-02-cpu-winograd4.md)
WINOGRAD4_MIN_CHANNELS = None


def winograd_route(k, c, h, w, kh, kw, sh, sw, ph, pw, f4=True):
    """``"winograd4"`` (F(4x4, 3x3)), ``"winograd"`` (F(2x2, 3x3)) or None (shifted GEMMs / im2col)
    for a convolution of ``c`` input channels on an ``h x w`` map: from the geometry and the
    backend alone, so a layer takes the same route in every call. Only 3x3 stride-1 windows,
    only on backends with the Winograd kernels (the CPU); F(4x4) only with ``f4``."""
    if (kh, kw, sh, sw) != (3, 3, 1, 1) or not getattr(k, "WINOGRAD", False):
        return None
    ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
    if ho < 1 or wo < 1:
        return None
    t4 = 36 * ((ho + 3) // 4) * ((wo + 3) // 4)  # multiplications per channel pair
    t2 = 16 * ((ho + 1) // 2) * ((wo + 1) // 2)
    if f4 and WINOGRAD4_MIN_CHANNELS is not None and c >= WINOGRAD4_MIN_CHANNELS and t4 < t2 and t4 < 9 * ho * wo:
        return "winograd4"
    if c >= WINOGRAD_MIN_CHANNELS and ho * wo <= WINOGRAD_MAX_OUTPUTS and t2 < 9 * ho * wo:
        return "winograd"
    return None


# shifted GEMMs from this many input channels on: with fewer (an RGB first layer), each tap's GEMM has
# K = C, and im2col + one GEMM with K = C*kh*kw is faster (measured, 3x3 on 64x64 x16 and 32x32 x256:
# 2.0-3.1 ms vs 4.3-7.2 with 3 channels, about even with 8, shifted 2x faster from 16 on, with
# OpenBLAS's Haswell and SkylakeX kernels alike)
SHIFTED_MIN_CHANNELS = 8


def _shifted(k, c, h, w, kh, kw, sh, sw, ph, pw):
    """Whether :func:`conv_gemm` takes the shifted-GEMM route (when Winograd does not apply)."""
    return sh == 1 and sw == 1 and getattr(k, "SHIFTED", False) and kh * kw > 1 and c >= SHIFTED_MIN_CHANNELS \
        and _wide_waste(h, w, kh, kw, ph, pw) <= WIDE_WASTE


def _wide_waste(h, w, kh, kw, ph, pw):
    """Positions of the padded grid per valid output position (the shifted GEMMs compute all)."""
    hp, wp = h + 2 * ph, w + 2 * pw
    return hp * wp / max(1, (hp - kh + 1) * (wp - kw + 1))


def chunks(n, per_sample_bytes, cap=None):
    """Sample ranges whose work buffers take at most ``cap`` bytes (default: one im2col buffer,
    ``budget.BUDGET.cols``)."""
    cap = budget.BUDGET.cols if cap is None else cap
    step = max(1, int(cap // max(per_sample_bytes, 1)))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def conv_chunks(k, n, c, r, h, w, kh, kw, sh, sw, ph, pw, itemsize, winograd="f2", keyed=True, same_dtype=True):
    """:func:`chunks` for a :func:`conv_gemm` of ``c`` -> ``r`` channels on ``h x w`` maps, sized by
    the buffers of the lowering it will take: im2col columns within ``budget.BUDGET.cols`` (they
    are written and read once more by the GEMM: cache-sized chunks), Winograd's transformed input
    and output tiles within ``budget.BUDGET.work`` (their GEMMs run at BLAS speed only with
    thousands of tiles: one sample of a 64x64 map in F(4x4) has 256), likewise the shifted GEMMs'
    padded input and wide output."""
    route = winograd_route(k, c, h, w, kh, kw, sh, sw, ph, pw, f4=winograd == "f4") \
        if winograd and keyed and same_dtype else None  # as conv_gemm decides
    if route is not None:
        ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
        t, kk = ((ho + 3) // 4) * ((wo + 3) // 4), 36 if route == "winograd4" else 16
        if route == "winograd":
            t = ((ho + 1) // 2) * ((wo + 1) // 2)
        return chunks(n, kk * (c + r) * t * itemsize, budget.BUDGET.work)
    if keyed and _shifted(k, c, h, w, kh, kw, sh, sw, ph, pw):
        return chunks(n, (c + r) * (h + 2 * ph) * (w + 2 * pw) * itemsize, budget.BUDGET.work)
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    return chunks(n, c * kh * kw * ho * wo * itemsize)


def forward(k, m, node, xin, act, store_z, dtype, plus_rule=None):
    """Dense/Conv2d forward with bias and the following activation fused in the epilogue.
    Returns (z or None, a, the rule's second product or None) where z is kept only when
    ``store_z``; ``plus_rule``: the LRP rule whose ``W+ a`` or ``B a`` the same GEMM computes
    (``Compiled.stacked_plus``), for inputs >= 0."""
    W, b = m.params(k, node)
    xp = k.xp
    n = xin.shape[0]
    if node.layer.kind == "Dense":
        z = k.matmul(xin, W.T)
        a = xp.empty_like(z) if (store_z and act) else z
        k.bias_act_rows(z, b, act, a, store_z)
        return (z if (store_z or not act) else None), a, None
    o, c, kh, kw = W.shape
    (sh, sw), (ph, pw) = node.layer.stride, node.layer.padding
    h, w = xin.shape[2:]
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    p = ho * wo
    want_plus = plus_rule is not None
    Wm, summed = m.stacked_plus(k, node, plus_rule) if want_plus else (W.reshape(o, -1), False)
    taps_key = ("wplus", node.name, getattr(plus_rule, "key", None)) if want_plus else ("W", node.name)
    a = xp.empty((n, o, ho, wo), dtype)
    z = xp.empty_like(a) if (store_z and act) else a
    extra = Wm.shape[0] - (0 if summed else o)  # rows of the second product: O (W+ a) or G*O (B a)
    pz = xp.empty((n, extra, ho, wo), dtype) if want_plus else None
    zero = xp.zeros(extra, dtype) if want_plus else None
    taps = None if want_plus else depthwise_taps(k, m, node)
    blocks = None if want_plus or taps is not None else group_blocks(k, m, node)
    g = node.layer.groups
    for i0, i1 in conv_chunks(k, n, c // g if blocks is not None else c, Wm.shape[0] // (g if blocks is not None else 1),
                              h, w, kh, kw, sh, sw, ph, pw, a.itemsize, same_dtype=Wm.dtype == xin.dtype):
        if taps is not None:
            zg = depthwise_forward(k, xin[i0:i1], taps, node.layer, ho, wo)
        elif blocks is not None:
            zg = grouped_conv(k, m, node, xin[i0:i1], blocks[0], kh, kw, sh, sw, ph, pw, ("Wg", node.name))
        else:
            zg = conv_gemm(k, m, xin[i0:i1], Wm, taps_key, kh, kw, sh, sw, ph, pw)
        zw = zg[:o] + zg[o:2 * o] if summed else zg[:o]  # W a = W+ a + W- a when the blocks add up to W
        k.bias_act_from_gemm(zw, b, act, a[i0:i1].reshape(i1 - i0, o, p), z[i0:i1].reshape(i1 - i0, o, p),
                             store_z and act != 0)
        if want_plus:
            pc = pz[i0:i1].reshape(i1 - i0, extra, p)
            k.bias_act_from_gemm(zg[o:] if not summed else zg, zero, 0, pc, pc, False)
    return (z if (store_z or not act) else None), a, pz


def _pos_neg_state(k, m, node, dtype):
    """The block matrix ``B = [[W+, W-], [W-, W+]]`` over the stacked input ``[d+; d-]``:
    ``B @ [d+; d-]`` gives the positive and negative parts ``(W+ d+ + W- d-, W- d+ + W+ d-)``
    of ``W d``. It is alpha-beta's matrix (no bias), compiled and cached by plan.rule_state."""
    return m.rule(k, node, R.AlphaBeta(2.0, 1.0, epsilon=0.0, include_bias=False), False)[1]


def pos_neg_forward(k, m, node, da, dtype):
    """``(Delta x+, Delta x-)`` of a Dense/Conv2d layer for input differences ``da``
    (Shrikumar et al. 2017, Sec. 3.5.3: the sums of the positive and of the negative terms ``w_ji Delta a_i``)."""
    st = _pos_neg_state(k, m, node, dtype)
    xp = k.xp
    n = da.shape[0]
    d2 = da.reshape(n, -1)
    xs = xp.empty((n, 2 * d2.shape[1]), dtype)
    k.stack_input_mods(d2, st.modes, d2, d2, xs)
    o = node.layer.weight.shape[0]
    if node.layer.kind == "Dense":
        z = k.matmul(xs, st.B.T)
        return z[:, :o], z[:, o:]
    _, cin, kh, kw = node.layer.weight.shape
    (sh, sw), (ph, pw) = node.layer.stride, node.layer.padding
    h, w = da.shape[2:]
    ho, wo = k.conv_out_shape(h, w, kh, kw, sh, sw, ph, pw)
    p = ho * wo
    xs4 = xs.reshape(n, 2 * cin, h, w)
    z = xp.empty((n, 2 * o, ho, wo), dtype)
    for i0, i1 in chunks(n, 2 * cin * kh * kw * p * z.itemsize):
        cols = scratch("cols", (2 * cin * kh * kw, (i1 - i0) * p), dtype, xp)
        k.im2col(xs4[i0:i1], kh, kw, sh, sw, ph, pw, cols)
        zg = k.matmul(st.B, cols, out=scratch("gemm", (2 * o, (i1 - i0) * p), dtype, xp))
        z[i0:i1] = zg.reshape(2 * o, i1 - i0, ho, wo).transpose(1, 0, 2, 3)
    return z[:, :o], z[:, o:]


def reveal_cancel(k, m, node, tape, g, n):
    """Multipliers of a linear layer's inputs from the pair ``(m+, m-)`` at its output: input
    ``i`` takes ``m+`` through the terms ``w_ji Delta a_i > 0`` and ``m-`` through the others::

        m_i = [Da_i > 0] (W+^T m+ + W-^T m-) + [Da_i < 0] (W-^T m+ + W+^T m-)
              + [Da_i = 0] W^T (m+ + m-) / 2

    so that ``sum_i m_i Da_i = sum_j (m+_j Dx+_j + m-_j Dx-_j)``. ``B^T [m+; m-]`` gives both
    brackets in one backward GEMM; a selector stacked like ``[Da+; Da-]`` picks per input."""
    mp, mn = g
    a2 = tape.out[node.inputs[0]]
    da = a2[:n] - a2[n:]
    dtype = mp.dtype
    xp = k.xp
    st = _pos_neg_state(k, m, node, dtype)
    pos = (da > 0).astype(dtype) + dtype.type(0.5) * (da == 0)
    s = xp.concatenate([mp, mn], axis=1)
    sel = xp.concatenate([pos, 1 - pos], axis=1)  # (N, 2F) or (N, 2C, H, W): mode blocks are channel blocks
    if node.layer.kind == "Dense":
        out = xp.empty(da.shape, dtype)
        k.stacked_mul_sum(sel, k.matmul(s, st.B), 2, out)
        return out
    _, cin, kh, kw = node.layer.weight.shape
    h, w = da.shape[2:]
    go, p = s.shape[1], s.shape[2] * s.shape[3]
    Bt = st.Bt if stride1(node.layer) else st.B
    out = xp.empty(da.shape, dtype)
    for i0, i1 in chunks(n, max(2 * cin * kh * kw * p, go * kh * kw * h * w) * s.itemsize):
        transposed_conv(k, node.layer, xp.ascontiguousarray(s[i0:i1]), Bt, sel[i0:i1], 2, out[i0:i1])
    return out


def stride1(layer):
    """Backward of a stride-1 conv runs as a forward conv with the flipped, transposed
    weight (im2col + GEMM), much cheaper than the col2im scatter/gather."""
    kh, kw = layer.weight.shape[2:]
    return layer.stride == (1, 1) and layer.padding[0] <= kh - 1 and layer.padding[1] <= kw - 1


def transposed_conv(k, layer, s, Bt, xs, mods, out, m=None, taps_key=None, winograd="f2"):
    """``out = combine(xs, conv^T(s))`` for NCHW ``s`` (N, Co, Ho, Wo) and ``out`` (N, C, H, W);
    ``Bt`` is the flipped-transposed block weight (stride 1) or the plain block ``B`` (else).
    ``m, taps_key``: the model state and the plan key of ``Bt``, for the shifted-GEMM lowering
    of the stride-1 case (:func:`conv_gemm`)."""
    kh, kw = layer.weight.shape[2:]
    (sh, sw), (ph, pw) = layer.stride, layer.padding
    n, co, ho, wo = s.shape
    c, h, w = out.shape[1:]
    xp = k.xp
    ct = Bt.shape[0] if stride1(layer) else Bt.shape[1] // (kh * kw)
    if stride1(layer) and co <= 4 * ct:  # else (few input channels, e.g. the RGB layer) the
        # col2im route below unfolds ct*kh*kw rows instead of co*kh*kw: far less memory traffic
        cg = conv_gemm(k, m, s, Bt, taps_key if m is not None else None, kh, kw, 1, 1, kh - 1 - ph, kw - 1 - pw,
                       winograd=winograd)
        k.combine_from_gemm(cg, xs.reshape(n, -1, h * w), mods, out.reshape(n, c, h * w))
        return
    rows = scratch("rows", (co, n * ho * wo), s.dtype, xp)
    s3 = s.reshape(n, co, ho * wo)
    k.grad_to_rows(s3, s3, s3, 0, rows)
    B = _unflip(xp, Bt, co, kh, kw) if stride1(layer) else Bt
    ccols = k.matmul(B.T, rows, out=scratch("cols", (B.shape[1], n * ho * wo), s.dtype, xp))
    k.col2im_gather(ccols, kh, kw, sh, sw, ph, pw, out, xs.reshape(out.shape[0], -1, h, w), mods)


def _unflip(xp, Bt, rows, kh, kw):
    """Inverse of plan.flipped_transpose: (cin, rows*kh*kw) -> (rows, cin*kh*kw)."""
    cin = Bt.shape[0]
    B4 = Bt.reshape(cin, rows, kh, kw)[:, :, ::-1, ::-1]
    return xp.ascontiguousarray(B4.transpose(1, 0, 2, 3).reshape(rows, cin * kh * kw))


def depthwise_taps(k, m, node):
    """(C, kh, kw) per-channel kernels of a depthwise Conv2d (on ``k``'s device), else None."""
    L = node.layer
    o, c = L.weight.shape[:2]
    if L.kind != "Conv2d" or L.groups == 1 or L.groups != o or o != c:
        return None
    ch = np.arange(o)
    return m.on(k, ("depthwise", node.name), lambda: np.ascontiguousarray(L.weight[ch, ch], dtype=m.dtype), node)


def group_blocks(k, m, node):
    """(G, O/G, C/G*kh*kw) compact per-group weights of a grouped (not depthwise) Conv2d, and the
    (G, C/G, O/G*kh*kw) flipped-transposed ones of its stride-1 backward; None for other layers.
    Each group then runs as its own convolution (the FLOPs of the compact weight, where the dense
    block-diagonal GEMM does G times as many)."""
    L = node.layer
    if L.kind != "Conv2d" or L.groups == 1 or depthwise_taps(k, m, node) is not None:
        return None
    g = L.groups

    def build():
        from .plan import _HOST, flipped_transpose  # (plan imports nothing of this module; lazily all the same)

        W = m.params(_HOST, node)[0]
        o, c, kh, kw = W.shape
        og, cg = o // g, c // g
        fw = np.stack([W[i * og:(i + 1) * og, i * cg:(i + 1) * cg].reshape(og, -1) for i in range(g)])
        bw = np.stack([flipped_transpose(fw[i], og, cg, kh, kw) for i in range(g)])
        return np.ascontiguousarray(fw), np.ascontiguousarray(bw)

    return m.on(k, ("groups", node.name), build, node)


def grouped_conv(k, m, node, x, blocks, kh, kw, sh, sw, ph, pw, key, winograd="f2"):
    """``W x`` of a grouped Conv2d as (O, N*Ho*Wo) (conv_gemm's layout), one :func:`conv_gemm` per
    group on its channel slice of ``x`` with ``blocks`` (G, O/G, K) (its derived transforms kept
    under ``key + (group,)``)."""
    g, og = blocks.shape[0], blocks.shape[1]
    cg = x.shape[1] // g
    n = x.shape[0]
    ho, wo = k.conv_out_shape(x.shape[2], x.shape[3], kh, kw, sh, sw, ph, pw)
    out = scratch("grouped", (g * og, n * ho * wo), x.dtype, k.xp)
    for i in range(g):
        out[i * og:(i + 1) * og] = conv_gemm(k, m, x[:, i * cg:(i + 1) * cg], blocks[i], key + (i,), kh, kw, sh, sw,
                                             ph, pw, winograd=winograd)
    return out


def depthwise_forward(k, x, taps, layer, ho, wo):
    """``W x`` of a depthwise conv as (C, N*Ho*Wo) (conv_gemm's layout): the backend's
    ``depthwise_conv`` kernel (per channel plane, one multiply-add per tap of the dilated kernel)."""
    n, c = x.shape[:2]
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    out = k.xp.empty((c, n * ho * wo), x.dtype)
    k.depthwise_conv(x, taps, sh, sw, ph, pw, dh, dw, ho, wo, out)
    return out


def depthwise_grad(k, g, taps, layer, h, w):
    """``W^T g`` of a depthwise conv: the exact adjoint of :func:`depthwise_forward` (the
    backend's ``depthwise_conv_grad``)."""
    n, c = g.shape[:2]
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    gin = k.xp.empty((n, c, h, w), g.dtype)
    k.depthwise_conv_grad(g, taps, sh, sw, ph, pw, dh, dw, gin)
    return gin


def grad(k, m, node, g, in_shape):
    """``W^T g``: the gradient (and DeepLIFT linear rule) through Dense/Conv2d."""
    W, _ = m.params(k, node)
    if node.layer.kind == "Dense":
        return k.matmul(g, W)
    o, c, kh, kw = W.shape
    n, _, ho, wo = g.shape
    h, w = in_shape[2:]
    taps = depthwise_taps(k, m, node)
    if taps is not None:
        return depthwise_grad(k, g, taps, node.layer, h, w)
    blocks = group_blocks(k, m, node) if stride1(node.layer) else None
    if blocks is not None:  # per group: the stride-1 transposed convolution as a forward one
        (ph, pw), groups = node.layer.padding, node.layer.groups
        og, cg = o // groups, c // groups
        gin = k.xp.empty((n, c, h, w), g.dtype)
        for i0, i1 in conv_chunks(k, n, og, cg, ho, wo, kh, kw, 1, 1, kh - 1 - ph, kw - 1 - pw, g.itemsize, "f4"):
            z = grouped_conv(k, m, node, g[i0:i1], blocks[1], kh, kw, 1, 1, kh - 1 - ph, kw - 1 - pw, ("wtg", node.name),
                             winograd="f4")
            k.combine_from_gemm(z, gin[i0:i1].reshape(i1 - i0, c, h * w), 0, gin[i0:i1].reshape(i1 - i0, c, h * w))
        return gin
    if stride1(node.layer):
        Bt = m.weight_t(k, node)
    else:
        Bt = W.reshape(o, -1)
    gin = k.xp.empty((n, c, h, w), g.dtype)
    key = ("wt", node.name) if stride1(node.layer) else None
    if stride1(node.layer) and o <= 4 * c:  # transposed_conv's conv_gemm route: a stride-1 conv o -> c
        parts = conv_chunks(k, n, o, c, ho, wo, kh, kw, 1, 1, kh - 1 - node.layer.padding[0],
                            kw - 1 - node.layer.padding[1], g.itemsize, "f4", same_dtype=Bt.dtype == g.dtype)
    else:
        parts = chunks(n, o * kh * kw * h * w * g.itemsize)
    for i0, i1 in parts:
        transposed_conv(k, node.layer, g[i0:i1], Bt, gin[i0:i1], 0, gin[i0:i1], m, key, winograd="f4")
    return gin


def lrp(k, m, node, a, z, r, rule, pz=None, x_shape=None, nonneg=None):
    """One LRP rule step through Dense/Conv2d (see relprop.rules for the formula)."""
    dtype = r.dtype
    xp = k.xp
    n = r.shape[0]
    modes_needed = {t.mode for grp in rule.groups() for t in grp.terms}
    if R.XNEG not in modes_needed:
        nonneg = False
    elif nonneg is None:  # not known from the forward pass
        nonneg = bool(k.all_nonnegative(a.ravel()))
    host, st = m.rule(k, node, rule, nonneg)
    modes = host.modes  # read on the host for the decisions below
    mm = len(modes)
    a2 = a.reshape(n, -1)
    if mm == 1 and (modes[0] == R.X or (nonneg and modes[0] == R.XPOS)):
        xs = a2  # a >= 0: a+ is a itself
    else:
        low = high = a2
        if R.LOW in modes:
            low, high = (xp.ascontiguousarray(xp.broadcast_to(v, a.shape), dtype=dtype).reshape(n, -1)
                         for v in _zbox_bounds(xp, rule, a, node, (n,) + x_shape))
        xs = xp.empty((n, mm * a2.shape[1]), dtype)
        k.stack_input_mods(a2, st.modes, low, high, xs)
        _mask_inserted_zeros(xp, m, node, xs, modes, a)
    go = st.B.shape[0]
    if node.layer.kind == "Dense":
        s = xp.empty((n, go), dtype)
        zg = k.matmul(a2 if st.zmode == ZMode.PLUS else xs, st.Wp.T) if st.zmode != ZMode.LAYER_Z else s
        k.lrp_ratio_rows(zg, st.zmode, st.cz, st.cp, st.b, st.bias_g, z if z is not None else r, r,
                         st.coefs, st.masks, st.eps, s)
        c = k.matmul(s, st.B)
        out = xp.empty_like(a2)
        k.stacked_mul_sum(xs, c, mm, out)
        return out.reshape(a.shape)
    o, cin, kh, kw = node.layer.weight.shape
    (sh, sw), (ph, pw) = node.layer.stride, node.layer.padding
    _, _, ho, wo = r.shape
    p = ho * wo
    h, w = a.shape[2:]
    xs4 = xs.reshape(n, mm * cin, h, w)
    out = xp.empty(a.shape, dtype)
    zz = z if z is not None else r
    Bt = st.Bt if stride1(node.layer) else st.B
    per = max(mm * cin * kh * kw * p, go * kh * kw * h * w) * r.itemsize
    for i0, i1 in chunks(n, per):
        nc = i1 - i0
        s = xp.empty((nc, go, ho, wo), dtype)
        zmode = st.zmode
        zp = zz[i0:i1].reshape(nc, o, p)  # typed placeholder unless zmode 3
        if zmode == ZMode.PLUS and pz is not None and pz.shape[1] == o:  # W+ a came with the forward GEMM
            zmode, zp = int(ZMode.PLUS_STORED), pz[i0:i1].reshape(nc, o, p)
            zg = s.reshape(go, -1)
        elif zmode == ZMode.DIRECT and pz is not None and pz.shape[1] == go:  # B a came with the forward GEMM
            zmode, zp = int(ZMode.DIRECT_STORED), pz[i0:i1].reshape(nc, go, p)
            zg = s.reshape(go, -1)
        elif zmode == ZMode.DIRECT:
            cols = scratch("cols", (mm * cin * kh * kw, nc * p), dtype, xp)
            k.im2col(xs4[i0:i1], kh, kw, sh, sw, ph, pw, cols)
            zg = k.matmul(st.B, cols, out=scratch("gemm", (go, nc * p), dtype, xp))
        elif zmode == ZMode.PLUS:  # a >= 0: one GEMM with W+ gives every group's denominator
            cols = scratch("cols", (cin * kh * kw, nc * p), dtype, xp)
            k.im2col(a[i0:i1], kh, kw, sh, sw, ph, pw, cols)
            zg = k.matmul(st.Wp, cols, out=scratch("gemm", (o, nc * p), dtype, xp))
        else:
            zg = s.reshape(go, -1)  # typed placeholder, unread
        k.lrp_ratio(zg, zp, zmode, st.cz, st.cp, st.b, st.bias_g, zz[i0:i1].reshape(nc, o, p),
                    r[i0:i1].reshape(nc, o, p), st.coefs, st.masks, st.eps, s.reshape(nc, go, p))
        del zg
        key = ("rule-Bt", node.name, rule.key, bool(nonneg)) if stride1(node.layer) else None
        transposed_conv(k, node.layer, s, Bt, xs4[i0:i1], mm, out[i0:i1], m, key, winograd=False)
    return out


def _mask_inserted_zeros(xp, m, node, xs, modes, a):
    """Zero the value-free input modifiers (Flat/WSquare's ones, ZBox's bounds) at the inserted
    zeros when ``node`` is the Conv2d of a ConvTranspose2d (it reads a ZeroInsert2d): the
    transposed convolution has no input there, so these rules see only the real pixels -- what
    Zennit's Flat / WSquare / ZBox give on the ConvTranspose2d module itself. Modifiers of ``a``
    (x, x+, x-) are zero there already."""
    graph = getattr(m, "graph", None)
    src = None if graph is None else graph.by_name.get(node.inputs[0])
    if src is None or src.layer.kind != "ZeroInsert2d" or not any(int(md) in (int(R.ONES), int(R.LOW), int(R.HIGH))
                                                                  for md in modes):
        return
    layer, (h, w) = src.layer, a.shape[2:]
    t, b, l, r = layer.pads
    rows, cols = layer.sources((h - t - b - 1) // layer.stride[0] + 1, (w - l - r - 1) // layer.stride[1] + 1)
    real = np.broadcast_to((rows >= 0)[:, None] & (cols >= 0)[None, :], a.shape[1:]).reshape(-1)
    mask = xp.asarray(real.astype(xs.dtype))
    blocks = xs.reshape(xs.shape[0], len(modes), -1)
    for i, md in enumerate(modes):
        if int(md) in (int(R.ONES), int(R.LOW), int(R.HIGH)):
            blocks[:, i] *= mask


def _zbox_bounds(xp, rule, a, node, x_shape=None):
    """Bounds broadcast to the layer input ``a``; bounds given in the shape of x are reshaped
    when only reshapes separate x from the layer (an MLP starting with Flatten). Bounds with one
    row per sample (``relprop.methods.lrp`` cuts them to the batch) are repeated for the K
    targets' rows, sample-major as ``base._repeat_tape``. The methods check the bounds against
    x up front where x reaches the layer by copies; this check, with at least the same slack in
    ulps of a's dtype (and one more for the bound's own rounding to it), is the one for the others."""
    def fit(v):
        v = xp.asarray(v, dtype=a.dtype)
        try:
            return xp.broadcast_to(_per_target(v, a.ndim), a.shape)
        except ValueError:
            if x_shape is not None and int(np.prod(x_shape)) == a.size:
                return xp.broadcast_to(_per_target(v, len(x_shape)), x_shape).reshape(a.shape)
            raise ValueError(f"ZBox on layer {node.name!r}: bounds of shape {np.shape(v)} do not broadcast to "
                             f"its input {a.shape}") from None

    def _per_target(v, rank):
        if v.ndim == rank and 1 < v.shape[0] < a.shape[0] and a.shape[0] % v.shape[0] == 0:
            return xp.repeat(v, a.shape[0] // v.shape[0], axis=0)
        return v

    low, high = fit(rule.low), fit(rule.high)
    # ulps * eps * |v| >= ulps units in the last place of v (spacing(v) <= eps |v|), on any backend
    tol = a.dtype.type((R.BOUND_ULPS + 1) * np.finfo(a.dtype).eps)
    if bool((a < low - tol * xp.abs(low)).any()) or bool((a > high + tol * xp.abs(high)).any()):
        raise ValueError(
            f"ZBox on layer {node.name!r}: its input is not inside [low, high]; input range "
            f"[{float(a.min()):.4g}, {float(a.max()):.4g}], bounds [{float(low.min()):.4g}, {float(high.max()):.4g}]; "
            f"the layers before it compute that input from x, so the bounds must hold their output: give bounds "
            f"for it, or use the z^B rule on a layer that reads x (through reshapes, Pad or ZeroInsert2d only)"
        )
    return low, high
