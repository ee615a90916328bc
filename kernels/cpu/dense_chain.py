"""A chain of Dense layers (an MLP) run forward and backward tile by tile, in one kernel call.

For an MLP the engine's layer-by-layer passes are bound by memory, not arithmetic: each layer's
GEMM writes a full (N, O) array that the elementwise epilogue, the ratio of an LRP rule and the
next GEMM read again (on a 14-64-64-2 MLP the GEMMs took under half of the time). This kernel
takes ``tile`` rows at a time through the whole chain -- the forward pass, the start signal at the
score, and the backward pass of the gradient or of the layers' LRP rules, for each target -- so
every intermediate stays in the core's cache and memory sees x once and the result once.

The per-tile steps are the engine's own: the products are BLAS GEMMs (``np.dot``; the plan keeps
each tile's ``m*n*k`` within what OpenBLAS runs on the calling thread, so relprop's worker
threads and BLAS do not compete for the cores) and the elementwise steps are the compiled
kernels of ``elementwise`` (bias and activation, activation derivative, the rule's input
modifiers, its ratio, the modifier-weighted sum), called on the tile. Only the blocking of the
GEMMs differs from the layer-by-layer path (results agree to rounding).

Packed layout (``relprop.core.dense_chain`` builds it once per plan):

* ``wbuf``/``bbuf``: every layer's weight (O, K), then its transpose (K, O), and bias (O,),
  flattened (all GEMM operands row-major: OpenBLAS's small-matrix kernels take those, a
  transposed operand went through its packing path, 25% of the kernel's time); ``meta[l]`` =
  (K, O, weight offset, bias offset); ``acts[l]``: activation code after layer ``l`` (0 for the
  score layer).
* LRP: ``rbuf`` (floats) holds each rule's ``B`` (G*O, Mm*K), ``Wp`` transposed, ``coefs``, ``cz``, ``cp``,
  ``b`` and ``bias_g``; ``ibuf`` (ints) its input-modifier codes and group masks; ``rmeta[l]`` =
  (G, Mm, zmode, B off, Wp^T rows, Wp^T cols, Wp^T off, coefs off, cz off, cp off, b off, bias_g off,
  modes off, masks off, 1 when the layer's input is >= 0, 1 for the Flat rule (modifiers and ``B``
  all ones, no masks: its ratios do not depend on the input), the offset of its per-unit weights
  ``sum_g coef_g / stab(B 1 + bias_g)``, 1 for a plain epsilon step (one group, no masks, the
  layer's own z: the ratio is taken in the input's precision, the rows flattened when
  ``bias_g`` is 0), the offset of epsilon in ``rbuf``); ``reps[l]``: epsilon (float64, for the
  general ratio kernel).

Each thread copies the packed arrays into memory of its own first: every array view the tile
loop takes counts a reference on its array's record, and two threads counting on the same record
kept passing its cache line between the cores. The helpers are inlined (``inline="always"``),
which lets Numba drop the reference counts of the views they take. (Copying each tile of ``x``
as well cost more than it saved.)
"""
import numba as nb
import numpy as np

from .elementwise import act_backward, bias_act_rows, lrp_ratio_rows, stack_input_mods, stacked_mul_sum
from .threads import threaded

AVAILABLE = True  # the engine takes this kernel for Dense chains on this backend
SERIAL_GEMM_MNK = 2 * 4 * 65536 - 1  # m*n*k of a GEMM that OpenBLAS runs on the calling thread
# (it gives a GEMM about m*n*k / (65536 * 4) threads, SMP_THRESHOLD_MIN * GEMM_MULTITHREAD_THRESHOLD;
# measured on a 64-64 layer: 112-row tiles, 458,752, stay on the caller, 128 rows, 524,288, take a
# second thread and the kernel runs 2.4x slower with both of relprop's threads calling BLAS)

_bias_act = bias_act_rows.kernel
_act_bw = act_backward.kernel
_ratio = lrp_ratio_rows.kernel
_mods = stack_input_mods.kernel
_mulsum = stacked_mul_sum.kernel


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _mat(buf, off, rows, cols):
    return buf[off:off + rows * cols].reshape(rows, cols)


@threaded
@nb.njit(cache=True, nogil=True, error_model="numpy")
def dense_chain(x, wbuf, bbuf, meta, acts, lrp, rbuf, ibuf, rmeta, reps, targets, argmax, scale, tile,
                scores, out, part, parts):
    """Forward and backward of the Dense chain for rows ``x`` (N, F), one tile of rows at a time.

    ``targets`` (N, K) int64: the classes to explain (with ``argmax`` true, K = 1 and the kernel
    writes each row's first maximal score there, numpy's ``argmax``). ``scale``: start the
    backward pass from ``s_c e_c`` instead of ``e_c``. ``lrp``: the layers' rules (``rmeta``),
    else the gradient. Writes ``scores`` (N, C) and ``out`` (N, K, F).
    """
    n_, f_ = x.shape
    L = meta.shape[0]
    kk = targets.shape[1]
    c_ = meta[L - 1, 1]
    if meta[0, 0] != f_ or scores.shape[0] != n_ or scores.shape[1] != c_ or targets.shape[0] != n_ \
            or out.shape[0] != n_ or out.shape[1] != kk or out.shape[2] != f_ or (argmax and kk != 1):
        raise ValueError("dense_chain: x (N, F), targets (N, K), scores (N, C), out (N, K, F) do not fit the chain")
    tiles = (n_ + tile - 1) // tile
    t0, t1 = tiles * part // parts, tiles * (part + 1) // parts
    if t0 >= t1:
        return
    # this thread's own copies (see the module's docstring: no reference counting on shared records)
    wbuf, bbuf, meta, acts = wbuf.copy(), bbuf.copy(), meta.copy(), acts.copy()
    rbuf, ibuf, rmeta, reps = rbuf.copy(), ibuf.copy(), rmeta.copy(), reps.copy()
    acc = np.empty(tile, x.dtype)  # a Flat step's per-row sum
    zs = [np.empty((tile, meta[l, 1]), x.dtype) for l in range(L)]  # pre-activations (bias included)
    avs = [np.empty((tile, meta[l, 1]), x.dtype) for l in range(L)]  # activations
    sig = [np.empty((tile, meta[l, 0]), x.dtype) for l in range(L)]  # signal at each layer's input
    top = np.empty((tile, c_), x.dtype)  # start signal
    gz = np.empty((tile, max(meta[:, 1].max(), 1)), x.dtype)  # gradient at a pre-activation
    # LRP work buffers, sized for the widest layer
    wmk, wgo = 1, 1
    if lrp:
        for l in range(L):
            wmk = max(wmk, rmeta[l, 1] * meta[l, 0])
            wgo = max(wgo, rmeta[l, 0] * meta[l, 1])
    xsb = np.empty(tile * wmk, x.dtype)
    cb = np.empty(tile * wmk, x.dtype)
    sb = np.empty(tile * wgo, x.dtype)
    zgb = np.empty(tile * wgo, x.dtype)
    for t in range(t0, t1):
        i0 = t * tile
        i1 = min(n_, i0 + tile)
        m = i1 - i0
        # forward
        a = x[i0:i1]
        for l in range(L):
            k_, o_, wo, bo = meta[l, 0], meta[l, 1], meta[l, 2], meta[l, 3]
            z = zs[l][:m]
            np.dot(a, _mat(wbuf, wo + o_ * k_, k_, o_), z)  # W^T stored: both operands row-major
            _bias_act(z, bbuf[bo:bo + o_], acts[l], avs[l][:m], True, 0, 1)
            a = avs[l][:m]
        sc = zs[L - 1][:m]
        for i in range(m):  # (explicit loops: Numba's slice assignment is a generic n-d copy, 10x slower)
            for j in range(c_):
                scores[i0 + i, j] = sc[i, j]
        if argmax:
            for i in range(m):
                best = 0
                for j in range(1, c_):
                    if sc[i, best] != sc[i, best]:
                        break  # a NaN is the maximum (numpy)
                    if sc[i, j] > sc[i, best] or sc[i, j] != sc[i, j]:
                        best = j
                targets[i0 + i, 0] = best
        # backward, once per target
        for q in range(kk):
            r = top[:m]
            for i in range(m):
                for j in range(c_):
                    r[i, j] = 0.0
            for i in range(m):
                j = targets[i0 + i, q]
                if j < 0 or j >= c_:
                    raise ValueError("dense_chain: a target is not a class of the score layer")
                r[i, j] = sc[i, j] if scale else 1.0
            for l in range(L - 1, -1, -1):
                k_, o_, wo = meta[l, 0], meta[l, 1], meta[l, 2]
                W = _mat(wbuf, wo, o_, k_)
                gin = sig[l][:m]
                a = x[i0:i1] if l == 0 else avs[l - 1][:m]
                if not lrp:
                    if acts[l] != 0:
                        np.dot(_act_grad(r, zs[l][:m], avs[l][:m], acts[l], gz, m), W, gin)
                    else:
                        np.dot(r, W, gin)
                else:
                    _lrp_step(a, zs[l][:m], r, rbuf, ibuf, rmeta[l], reps[l], k_, o_, xsb, cb, sb, zgb, acc, m, gin)
                r = gin
            for i in range(m):
                for j in range(f_):
                    out[i0 + i, q, j] = r[i, j]


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _act_grad(g, z, a, act, buf, m):
    """``g * f'(z)`` (m, O) into the front of ``buf``, returned as a contiguous (m, O) array."""
    o_ = g.shape[1]
    gz = buf.ravel()[:m * o_].reshape(m, o_)
    _act_bw(g.ravel(), z.ravel(), a.ravel(), act, gz.ravel(), 0, 1)
    return gz


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _lrp_step(a, z, r, rbuf, ibuf, rm, eps, k_, o_, xsb, cb, sb, zgb, acc, m, rin):
    """One LRP rule step through a Dense layer for a tile: ``rin`` (m, K) from ``r`` (m, O)
    (``relprop.core.linear.lrp``'s Dense branch)."""
    g_, mm, zmode = rm[0], rm[1], rm[2]
    go = g_ * o_
    if rm[15] == 1:  # Flat: modifiers and weight map all ones, no masks -> R_in[i, :] = sum_o r[i, o] w[o]
        # w = sum_g coef_g / stab(B 1 + bias_g): the same for every row
        av = acc[:m]
        _rowdot(r, rbuf[rm[16]:rm[16] + o_], av)
        for i in range(m):
            v = av[i]
            for q in range(k_):
                rin[i, q] = v
        return
    B = _mat(rbuf, rm[3], go, mm * k_)
    s = _mat(sb, 0, m, go)
    if rm[17] == 1:  # epsilon: s = c r / (z + bias_g + eps sign(z + bias_g)), in the input's precision
        _eps_ratio(z, r, rbuf[rm[7]], rbuf[rm[18]], rbuf, rm[11], rm[19] == 1, s)
        c = _mat(cb, 0, m, k_)
        np.dot(s, B, c)
        _mulsum(a, c, 1, rin, 0, 1)
        return
    coefs = rbuf[rm[7]:rm[7] + g_]
    cz = rbuf[rm[8]:rm[8] + g_]
    cp = rbuf[rm[9]:rm[9] + g_]
    bvec = rbuf[rm[10]:rm[10] + o_]
    bias_g = rbuf[rm[11]:rm[11] + go]
    modes = ibuf[rm[12]:rm[12] + mm]
    masks = ibuf[rm[13]:rm[13] + g_]
    if mm == 1 and (modes[0] == 0 or (modes[0] == 1 and rm[14] == 1)):
        xs = a  # the input itself (x, or x+ of an input >= 0)
    else:
        xs = _mat(xsb, 0, m, mm * k_)
        _mods(a, modes, a, a, xs, 0, 1)
    if zmode == 1:  # den = B a + bias_g
        zg = _mat(zgb, 0, m, go)
        np.dot(xs, _mat(rbuf, rm[6], rm[4], rm[5]), zg)
    elif zmode == 2:  # den = cz z + cp W+ a + bias_g
        zg = _mat(zgb, 0, m, o_)
        np.dot(a, _mat(rbuf, rm[6], rm[4], rm[5]), zg)
    else:
        zg = s  # unread
    _ratio(zg, zmode, cz, cp, bvec, bias_g, z, r, coefs, masks, eps, s, 0, 1)
    c = _mat(cb, 0, m, mm * k_)
    np.dot(s, B, c)
    _mulsum(xs, c, mm, rin, 0, 1)


@nb.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _rowdot(r, w, out):
    """``out[i] = sum_o r[i, o] w[o]`` in the input's precision, each row's sum vectorized
    (``reassoc``: summed in SIMD lanes, as BLAS sums; NaN and Inf keep their meaning). Not a BLAS
    GEMV: OpenBLAS would split a GEMV of a large tile over its own threads, which relprop's
    threads already occupy."""
    m, o_ = r.shape
    for i in range(m):
        acc = r[i, 0] * w[0]
        for j in range(1, o_):
            acc += r[i, j] * w[j]
        out[i] = acc


@nb.njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _eps_ratio(z, r, cf, eps, rbuf, boff, nobias, s):
    """``s = cf r / (den + eps sign(den))``, ``den = z + bias_g`` (sign(0) = +1), for (m, O)
    tiles; over the flattened tile when ``bias_g`` is 0 (a loop of m*O, not m loops of O: the
    score layer has two units)."""
    m, o_ = z.shape
    if nobias:
        zf, rf, sf = z.ravel(), r.ravel(), s.ravel()
        for i in range(m * o_):
            den = zf[i]
            sf[i] = cf * rf[i] / (den + eps if den >= 0 else den - eps)
        return
    for i in range(m):
        for o in range(o_):
            den = z[i, o] + rbuf[boff + o]
            s[i, o] = cf * r[i, o] / (den + eps if den >= 0 else den - eps)
