"""Slow, plain-numpy reference for the relprop test suites.

Written independently of ``relprop``: nothing here imports the library (``to_relprop`` only receives the
module as an argument to build the same network).  Everything runs per sample in float64, with explicit
loops for convolution and pooling, and every linear layer turned into an explicit matrix, so that each
method reads as the papers' matrix formulas (Simonyan et al. 2014; Sundararajan et al. 2017; Shrikumar et al. 2017; Ancona et al. 2018, Table 1):

* forward:   n^m = W^m a^{m-1} + b^m,   a^m = f^m(n^m)                       (a^0 = p = x)
* gradient:  s^M = e_c,   s^{m-1} = (W^m)^T (f'(n^m) o s^m)                 (Eq. 9.12-9.13)
* LRP:       c(a^M) = n_c^M e_c,   c(a^{m-1}) = C(a^{m-1} | a^m) c(a^m)      (Eq. 9.18-9.20)
             with [C]_{ij} = contribution_ij / stabilized denominator_j (per rule, see ``lrp_matrix``)
* DeepLIFT:  q(Delta a^M) = e_c,  q(Delta a^{m-1}) = (W^m)^T (g^m o q(Delta a^m)),
             g^m = (f(n) - f(n_bar)) / (n - n_bar),   c^dl = q(Delta p) o (p - p_bar)   (Eq. 9.41-9.48)
* IG:        c^ig = (p - p_bar) o sum_k w_k grad s_c(p_bar + alpha_k (p - p_bar))       (Eq. 9.15)

A network is a list of layer tuples built with the helpers below (``dense``, ``conv``, ``maxpool`` ...);
the same list builds the relprop network with ``to_relprop``.  Softmax may only be last and is skipped by
all explanations (they start from its input, the pre-softmax score s_c).
"""
from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------------------------------
# network description
# --------------------------------------------------------------------------------------------------


def _pair(v):
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def dense(weight, bias=None):
    """Dense layer, weight (out, in) as torch.nn.Linear."""
    return ("dense", np.asarray(weight), None if bias is None else np.asarray(bias))


def conv(weight, bias=None, stride=1, padding=0):
    """Conv2d layer, weight (out, in, kh, kw), NCHW, zero padding."""
    return ("conv", np.asarray(weight), None if bias is None else np.asarray(bias), stride, padding)


def maxpool(kernel_size, stride=None, padding=0):
    return ("maxpool", kernel_size, stride, padding)


def avgpool(kernel_size, stride=None, padding=0):
    return ("avgpool", kernel_size, stride, padding)


def flatten():
    return ("flatten",)


def relu():
    return ("relu",)


def tanh():
    return ("tanh",)


def sigmoid():
    return ("sigmoid",)


def identity():
    return ("identity",)


def softmax():
    return ("softmax",)


def to_relprop(spec, rp):
    """Build the relprop ``Sequential`` equivalent to ``spec`` (``rp`` is the relprop module)."""
    layers = []
    for layer in spec:
        kind = layer[0]
        if kind == "dense":
            layers.append(rp.Dense(layer[1], layer[2]))
        elif kind == "conv":
            layers.append(rp.Conv2d(layer[1], layer[2], stride=layer[3], padding=layer[4]))
        elif kind == "maxpool":
            layers.append(rp.MaxPool2d(layer[1], stride=layer[2], padding=layer[3]))
        elif kind == "avgpool":
            layers.append(rp.AvgPool2d(layer[1], stride=layer[2], padding=layer[3]))
        else:
            layers.append({"flatten": rp.Flatten, "relu": rp.ReLU, "tanh": rp.Tanh, "sigmoid": rp.Sigmoid,
                           "identity": rp.Identity, "softmax": rp.Softmax}[kind]())
    return rp.Sequential(*layers)


def linear_layer_kinds(spec):
    """Kinds ('dense' / 'conv') of the Dense/Conv2d layers in graph order (one LRP rule each)."""
    return [layer[0] for layer in spec if layer[0] in ("dense", "conv")]


# --------------------------------------------------------------------------------------------------
# random networks (weights rounded to float32 so float32 and float64 runs see the same numbers)
# --------------------------------------------------------------------------------------------------


def _f32(a):
    return np.asarray(a, dtype=np.float64).astype(np.float32).astype(np.float64)


def random_dense_net(rng, sizes, act="relu", bias=True, softmax_last=False, scale=1.0):
    """Dense-act-Dense-...-Dense; ``sizes`` = [in, hidden..., out]."""
    spec = []
    for k in range(len(sizes) - 1):
        w = _f32(rng.normal(0, scale / np.sqrt(sizes[k]), (sizes[k + 1], sizes[k])))
        b = _f32(rng.normal(0, 0.3, sizes[k + 1])) if bias else None
        spec.append(dense(w, b))
        if k < len(sizes) - 2:
            spec.append((act,))
    if softmax_last:
        spec.append(softmax())
    return spec


def random_conv_net(rng, in_ch=2, size=6, channels=3, pool="max", act="relu", bias=True, n_out=4,
                    kernel=3, stride=1, padding=1, pool_kernel=2, pool_stride=None, pool_padding=0,
                    second_conv=False, softmax_last=False):
    """Conv-act-[Conv-act]-Pool-Flatten-Dense (pool None: no pooling layer); returns (spec, input shape)."""
    spec = []
    c_in, h = in_ch, size
    n_convs = 2 if second_conv else 1
    for k in range(n_convs):
        w = _f32(rng.normal(0, 1.0 / np.sqrt(c_in * kernel * kernel), (channels, c_in, kernel, kernel)))
        b = _f32(rng.normal(0, 0.2, channels)) if bias else None
        spec.append(conv(w, b, stride=stride if k == 0 else 1, padding=padding))
        h = (h + 2 * padding - kernel) // (stride if k == 0 else 1) + 1
        c_in = channels
        spec.append((act,))
    if pool is not None:
        ps = pool_kernel if pool_stride is None else pool_stride
        spec.append((pool + "pool", pool_kernel, pool_stride, pool_padding))
        h = (h + 2 * pool_padding - pool_kernel) // ps + 1
    spec.append(flatten())
    n_in = c_in * h * h
    w = _f32(rng.normal(0, 1.0 / np.sqrt(n_in), (n_out, n_in)))
    b = _f32(rng.normal(0, 0.2, n_out)) if bias else None
    spec.append(dense(w, b))
    if softmax_last:
        spec.append(softmax())
    return spec, (in_ch, size, size)


# --------------------------------------------------------------------------------------------------
# compilation to per-sample operations on flat vectors (C order, like torch.flatten)
# --------------------------------------------------------------------------------------------------


def conv_matrix(weight, in_shape, stride, padding):
    """Explicit matrix of a zero-padded 2-D cross-correlation.

    n_{o,y,x} = sum_{c,ky,kx} w_{o,c,ky,kx} a_{c, y*s_h - p_h + ky, x*s_w - p_w + kx}  (out-of-range a = 0)

    Returns (M, conn, out_shape) with M[(o,y,x), (c,iy,ix)] the weight that joins input (c,iy,ix) to
    output (o,y,x) and conn the 0/1 connectivity (padded positions have no entry).
    """
    O, C, KH, KW = weight.shape
    _, H, W = in_shape
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    Ho = (H + 2 * ph - KH) // sh + 1
    Wo = (W + 2 * pw - KW) // sw + 1
    M = np.zeros((O * Ho * Wo, C * H * W))
    conn = np.zeros_like(M)
    for o in range(O):
        for y in range(Ho):
            for x in range(Wo):
                j = (o * Ho + y) * Wo + x
                for c in range(C):
                    for ky in range(KH):
                        iy = y * sh - ph + ky
                        if iy < 0 or iy >= H:
                            continue
                        for kx in range(KW):
                            ix = x * sw - pw + kx
                            if ix < 0 or ix >= W:
                                continue
                            i = (c * H + iy) * W + ix
                            M[j, i] += weight[o, c, ky, kx]
                            conn[j, i] = 1.0
    return M, conn, (O, Ho, Wo)


def pool_windows(in_shape, kernel_size, stride, padding):
    """Window index lists of a 2-D pooling: idx[j, k] = flat input index of the k-th window element of
    output j in row-major window order, or -1 where the window lies in the padding."""
    C, H, W = in_shape
    KH, KW = _pair(kernel_size)
    sh, sw = _pair(kernel_size if stride is None else stride)
    ph, pw = _pair(padding)
    Ho = (H + 2 * ph - KH) // sh + 1
    Wo = (W + 2 * pw - KW) // sw + 1
    idx = -np.ones((C * Ho * Wo, KH * KW), dtype=np.int64)
    for c in range(C):
        for y in range(Ho):
            for x in range(Wo):
                j = (c * Ho + y) * Wo + x
                for ky in range(KH):
                    for kx in range(KW):
                        iy, ix = y * sh - ph + ky, x * sw - pw + kx
                        if 0 <= iy < H and 0 <= ix < W:
                            idx[j, ky * KW + kx] = (c * H + iy) * W + ix
    return idx, (C, Ho, Wo)


_COMPILED = {}


def compile_net(spec, in_shape):
    """Memoized ``_compile_net`` (keyed on the spec object's identity and the input shape)."""
    key = (id(spec), tuple(in_shape))
    hit = _COMPILED.get(key)
    if hit is not None and hit[0] is spec:
        return hit[1]
    ops = _compile_net(spec, in_shape)
    if len(_COMPILED) > 256:
        _COMPILED.clear()
    _COMPILED[key] = (spec, ops)
    return ops


def _compile_net(spec, in_shape):
    """Turn ``spec`` into a list of per-sample ops on flat vectors.

    Dense, Conv2d and AvgPool2d become {'op': 'linear', 'M': (out, in), 'b': (out,) or None, 'conn': 0/1,
    'kind': 'dense'|'conv'|'avgpool'}; MaxPool2d becomes {'op': 'maxpool', 'idx': windows};
    activations {'op': name}; Flatten and Identity disappear (identity on flat vectors); Softmax is dropped.
    """
    ops = []
    shape = tuple(in_shape)
    for pos, layer in enumerate(spec):
        kind = layer[0]
        if kind == "dense":
            w, b = np.asarray(layer[1], np.float64), layer[2]
            ops.append({"op": "linear", "kind": "dense", "M": w, "conn": np.ones_like(w),
                        "b": None if b is None else np.asarray(b, np.float64)})
            shape = (w.shape[0],)
        elif kind == "conv":
            w, b = np.asarray(layer[1], np.float64), layer[2]
            M, conn, shape = conv_matrix(w, shape, layer[3], layer[4])
            bb = None if b is None else np.repeat(np.asarray(b, np.float64), shape[1] * shape[2])
            ops.append({"op": "linear", "kind": "conv", "M": M, "conn": conn, "b": bb})
        elif kind == "avgpool":
            idx, out_shape = pool_windows(shape, layer[1], layer[2], layer[3])
            kh, kw = _pair(layer[1])
            M = np.zeros((idx.shape[0], int(np.prod(shape))))
            for j in range(idx.shape[0]):
                for i in idx[j]:
                    if i >= 0:
                        M[j, i] += 1.0 / (kh * kw)      # count_include_pad=True: always divide by kh*kw
            ops.append({"op": "linear", "kind": "avgpool", "M": M, "conn": (M != 0).astype(float), "b": None})
            shape = out_shape
        elif kind == "maxpool":
            idx, shape = pool_windows(shape, layer[1], layer[2], layer[3])
            ops.append({"op": "maxpool", "idx": idx})
        elif kind == "flatten":
            shape = (int(np.prod(shape)),)
        elif kind in ("relu", "tanh", "sigmoid"):
            ops.append({"op": kind})
        elif kind == "identity":
            pass
        elif kind == "softmax":
            if pos != len(spec) - 1:
                raise ValueError("reference: softmax must be last")
        else:
            raise ValueError(f"reference: unknown layer {kind}")
    return ops


def _act(name, z):
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "tanh":
        return np.tanh(z)
    return 1.0 / (1.0 + np.exp(-z))


def _act_grad(name, z):
    if name == "relu":
        return (z > 0).astype(np.float64)          # torch: relu'(0) = 0
    if name == "tanh":
        return 1.0 - np.tanh(z) ** 2
    s = 1.0 / (1.0 + np.exp(-z))
    return s * (1.0 - s)


def _maxpool_fwd(idx, a):
    """o_j = max over window (padding = -inf); returns (o, winner) with the FIRST maximum as winner."""
    vals = np.where(idx >= 0, a[np.maximum(idx, 0)], -np.inf)
    k = np.argmax(vals, axis=1)
    win = idx[np.arange(idx.shape[0]), k]
    return vals[np.arange(idx.shape[0]), k], win


def _trace(ops, a):
    """Forward pass on one flat sample; returns the list of op inputs and the final output."""
    inputs = []
    for op in ops:
        inputs.append(a)
        if op["op"] == "linear":
            a = op["M"] @ a + (0.0 if op["b"] is None else op["b"])
        elif op["op"] == "maxpool":
            a = _maxpool_fwd(op["idx"], a)[0]
        else:
            a = _act(op["op"], a)
    return inputs, a


def _flat(x):
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1)


def scores(spec, x):
    """Pre-softmax scores s(x), shape (N, classes)."""
    ops = compile_net(spec, np.shape(x)[1:])
    return np.stack([_trace(ops, xi)[1] for xi in _flat(x)])


def forward(spec, x):
    """Network output (softmax applied if the last layer is Softmax)."""
    s = scores(spec, x)
    if spec[-1][0] == "softmax":
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return s


def resolve_target(spec, x, target):
    """None -> argmax of the output per sample; int -> same for all; array -> as given."""
    n = np.shape(x)[0]
    if target is None:
        return np.argmax(scores(spec, x), axis=1)
    return np.broadcast_to(np.asarray(target, dtype=np.int64), (n,)).copy()


# --------------------------------------------------------------------------------------------------
# gradient family
# --------------------------------------------------------------------------------------------------


def _backward_gradient(ops, inputs, g):
    """s^{m-1} = (W^m)^T (f'(n^m) o s^m); max pooling routes s to the (first) window winner."""
    for op, a in zip(reversed(ops), reversed(inputs)):
        if op["op"] == "linear":
            g = op["M"].T @ g
        elif op["op"] == "maxpool":
            _, win = _maxpool_fwd(op["idx"], a)
            gi = np.zeros_like(a)
            np.add.at(gi, win, g)
            g = gi
        else:
            g = _act_grad(op["op"], a) * g
    return g


def gradient(spec, x, target=None):
    """d s_c / d x  (s^M = e_c, Eq. 9.12-9.13)."""
    x = np.asarray(x, dtype=np.float64)
    ops = compile_net(spec, x.shape[1:])
    t = resolve_target(spec, x, target)
    out = []
    for xi, c in zip(_flat(x), t):
        inputs, s = _trace(ops, xi)
        out.append(_backward_gradient(ops, inputs, np.eye(s.size)[c]))
    return np.stack(out).reshape(x.shape)


def saliency(spec, x, target=None):
    """|d s_c / d x| (Simonyan et al. 2014; Ancona et al. 2018, Eq. 11)."""
    return np.abs(gradient(spec, x, target))


def gradient_x_input(spec, x, target=None):
    """x o d s_c / d x (Shrikumar et al. 2016; Ancona et al. 2018, Eq. 12)."""
    return np.asarray(x, np.float64) * gradient(spec, x, target)


# --------------------------------------------------------------------------------------------------
# integrated gradients
# --------------------------------------------------------------------------------------------------


def ig_alphas_weights(scheme, steps):
    """Quadrature points alpha_k and weights w_k on [0, 1].

    riemann_left  alpha_k = k/T,           w_k = 1/T        (k = 0..T-1, as Captum)
    riemann_right alpha_k = (k+1)/T,       w_k = 1/T
    riemann_middle alpha_k = (k+1/2)/T,    w_k = 1/T
    riemann_trapezoid alpha_k = k/(T-1),   w_k = 1/(T-1), halved at both ends (the trapezoid rule; Captum 0.9
                      uses 1/T, so its weights sum to (T-1)/T -- relprop keeps the exact rule)
    gauss_legendre  Gauss-Legendre nodes/weights mapped from [-1, 1] to [0, 1]
    uniform (the plain textbook rule)  alpha_t = t/(T-1),  w_t = 1/T
    """
    T = int(steps)
    if scheme == "riemann_left":
        return np.arange(T) / T, np.full(T, 1.0 / T)
    if scheme == "riemann_right":
        return np.arange(1, T + 1) / T, np.full(T, 1.0 / T)
    if scheme == "riemann_middle":
        return (np.arange(T) + 0.5) / T, np.full(T, 1.0 / T)
    if scheme == "riemann_trapezoid":
        w = np.full(T, 1.0 / (T - 1))
        w[0] /= 2
        w[-1] /= 2
        return np.linspace(0.0, 1.0, T), w
    if scheme == "gauss_legendre":
        nodes, weights = np.polynomial.legendre.leggauss(T)
        return 0.5 * (1.0 + nodes), 0.5 * weights
    if scheme == "uniform":
        return np.arange(T) / (T - 1), np.full(T, 1.0 / T)
    raise ValueError(scheme)


def integrated_gradients(spec, x, target=None, baseline=0.0, steps=50, scheme="gauss_legendre"):
    """c^ig(p) = (p - p_bar) o sum_k w_k d s_c/d p~ |_{p~ = p_bar + alpha_k (p - p_bar)}.

    The target is resolved once at x (the class is fixed along the path).
    """
    x = np.asarray(x, dtype=np.float64)
    xb = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    t = resolve_target(spec, x, target)
    alphas, weights = ig_alphas_weights(scheme, steps)
    acc = np.zeros_like(x)
    for a, w in zip(alphas, weights):
        acc += w * gradient(spec, xb + a * (x - xb), t)
    return (x - xb) * acc


# --------------------------------------------------------------------------------------------------
# DeepLIFT rescale
# --------------------------------------------------------------------------------------------------


def _rescale(name, a, ab, q, eps):
    """The Rescale rule at an activation: ``q (f(n) - f(n_bar)) / (n - n_bar)``, ``f'(n) q`` where that is ~0/0."""
    dz = a - ab
    small = np.abs(dz) < eps
    ratio = (_act(name, a) - _act(name, ab)) / np.where(small, 1.0, dz)
    return np.where(small, _act_grad(name, a), ratio) * q


def _maxpool_rescale(idx, a, ab, q, eps):
    """Captum's DeepLIFT rule at max pooling (see ``deeplift_rescale``): the multipliers at the pool input."""
    o, win = _maxpool_fwd(idx, a)
    ob, winb = _maxpool_fwd(idx, ab)
    m = np.maximum(o, ob)
    u = np.zeros_like(a)
    np.add.at(u, win, q * (m - ob))
    np.add.at(u, winb, q * (o - m))
    plain = np.zeros_like(a)
    np.add.at(plain, win, q)
    d = a - ab
    small = np.abs(d) < eps
    return np.where(small, plain, u / np.where(small, 1.0, d))


def deeplift_rescale(spec, x, target=None, baseline=0.0, eps=1e-10):
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017; Ancona et al. 2018, Eq. 17-18; Captum conventions).

    q(Delta n^M) = e_c (start at the pre-softmax score);
    linear rule at Dense/Conv2d/AvgPool2d:  q(Delta a_i^{m-1}) = sum_j w_{j,i} q(Delta n_j^m);
    rescale at ReLU/Tanh/Sigmoid:  q(Delta n_j) = q(Delta a_j) * (f(n_j) - f(n_bar_j)) / (n_j - n_bar_j),
        falling back to f'(n_j) q(Delta a_j) where |n_j - n_bar_j| < 1e-10;
    max pooling (Captum's rule): with o, o_bar the pooled outputs, M = max(o, o_bar),
        u = route_x(q o (M - o_bar)) + route_xbar(q o (o - M))      (route_x: to the argmax of the x window,
        route_xbar: to the argmax of the baseline window), q(Delta a_i) = u_i / Delta a_i,
        falling back to route_x(q)_i where |Delta a_i| < 1e-10;
    c^dl(Delta p) = q(Delta p) o (p - p_bar).
    """
    x = np.asarray(x, dtype=np.float64)
    xb = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    ops = compile_net(spec, x.shape[1:])
    t = resolve_target(spec, x, target)
    out = []
    for xi, xbi, c in zip(_flat(x), _flat(xb), t):
        ins, s = _trace(ops, xi)
        insb, _ = _trace(ops, xbi)
        q = np.eye(s.size)[c]
        for op, a, ab in zip(reversed(ops), reversed(ins), reversed(insb)):
            if op["op"] == "linear":
                q = op["M"].T @ q
            elif op["op"] == "maxpool":
                q = _maxpool_rescale(op["idx"], a, ab, q, eps)
            else:
                q = _rescale(op["op"], a, ab, q, eps)
        out.append(q * (xi - xbi))
    return np.stack(out).reshape(x.shape)


# --------------------------------------------------------------------------------------------------
# LRP
# --------------------------------------------------------------------------------------------------


def rule(name, **params):
    """A reference rule: ('z' | 'epsilon' | 'gamma' | 'alpha_beta' | 'z_plus' | 'flat' | 'w_square' |
    'z_box', params) with relprop's defaults filled in."""
    defaults = {
        "z": {"include_bias": True},
        "epsilon": {"epsilon": 1e-6, "include_bias": True},
        "gamma": {"gamma": 0.25, "epsilon": 1e-6, "include_bias": True},
        "alpha_beta": {"alpha": 1.0, "beta": 0.0, "epsilon": 1e-6, "include_bias": True},
        "z_plus": {"epsilon": 1e-6, "include_bias": True},
        "flat": {"epsilon": 1e-6},
        "w_square": {"epsilon": 1e-6, "include_bias": True},
        "z_box": {"epsilon": 1e-6},
    }[name]
    unknown = set(params) - set(defaults) - ({"low", "high"} if name == "z_box" else set())
    if unknown:
        raise TypeError(f"reference rule {name}: unknown {unknown}")
    return (name, {**defaults, **params})


def stabilize(z, eps):
    """Zennit's stabilizer: z + eps * sign(z), with sign(0) = +1."""
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _safe_div(num, den):
    """num / den, and 0 where den == 0 exactly (LRP-0's convention)."""
    return np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))


def lrp_matrix(r, W, b, conn, a, low=None, high=None):
    """C(a | n) with [C]_{ij} = contribution_ij / denominator_j, so that R_in = C R_out.

    W: (out, in) weights, b: (out,) bias or None, conn: connectivity (1 where weight w_ji exists), a: input.
    Write x+ = max(a, 0), x- = min(a, 0), W+ = max(W, 0), W- = min(W, 0), b' = b if include_bias else 0,
    stab(z) = z + eps sign(z) (sign(0) = +1).  Zennit's rule definitions, written out:

    Z (LRP-0, Eq. 9.27):      C_ij = w_ji a_i / (sum_k w_jk a_k + b'_j), and 0 where that sum is exactly 0
    Epsilon (Eq. 9.28, 15):   C_ij = w_ji a_i / stab(sum_k w_jk a_k + b'_j)
    ZPlus:                    C_ij = (w+_ji x+_i + w-_ji x-_i) / stab(sum_k (w+_jk x+_k + w-_jk x-_k) + b'+_j)
    AlphaBeta:                C_ij = alpha (w+_ji x+_i + w-_ji x-_i) / stab(W+x+ + W-x- + b'+)_j
                                   - beta  (w-_ji x+_i + w+_ji x-_i) / stab(W-x+ + W+x- + b'-)_j
    Gamma (generalized, 5 terms; G+ = W + gamma W+, G- = W + gamma W-, mask from n = W a + b, always with bias):
                              C_ij = [n_j > 0] (G+_ji x+_i + G-_ji x-_i) / stab(G+ x+ + G- x- + (b' + gamma b'+))_j
                                   + [n_j < 0] (G-_ji x+_i + G+_ji x-_i) / stab(G- x+ + G+ x- + (b' + gamma b'-))_j
    Flat:                     C_ij = conn_ji / stab(sum_k conn_jk)
    WSquare:                  C_ij = w_ji^2 / stab(sum_k w_jk^2 + b'_j^2)
    ZBox (l, h bounds; the bias cancels between the three terms):
                              C_ij = (w_ji a_i - w+_ji l_i - w-_ji h_i) / stab(sum_k w_jk a_k - w+_jk l_k - w-_jk h_k)
    """
    name, p = r
    nb = np.zeros(W.shape[0]) if b is None else b
    bb = nb if p.get("include_bias", True) else np.zeros_like(nb)
    xp, xn = np.maximum(a, 0.0), np.minimum(a, 0.0)
    Wp, Wn = np.maximum(W, 0.0), np.minimum(W, 0.0)
    if name == "z":
        return (W * a[None, :]).T * _safe_div(1.0, W @ a + bb)[None, :]
    if name == "epsilon":
        return (W * a[None, :]).T / stabilize(W @ a + bb, p["epsilon"])[None, :]
    if name == "z_plus" or (name == "alpha_beta"):
        pos = Wp * xp[None, :] + Wn * xn[None, :]
        C = p.get("alpha", 1.0) * pos.T / stabilize(pos.sum(1) + np.maximum(bb, 0), p["epsilon"])[None, :]
        if name == "alpha_beta":
            neg = Wn * xp[None, :] + Wp * xn[None, :]
            C = C - p["beta"] * neg.T / stabilize(neg.sum(1) + np.minimum(bb, 0), p["epsilon"])[None, :]
        return C
    if name == "gamma":
        g = p["gamma"]
        Gp, Gn = W + g * Wp, W + g * Wn
        n = W @ a + nb
        up = Gp * xp[None, :] + Gn * xn[None, :]
        dn = Gn * xp[None, :] + Gp * xn[None, :]
        Dp = up.sum(1) + bb + g * np.maximum(bb, 0)
        Dn = dn.sum(1) + bb + g * np.minimum(bb, 0)
        return (up.T * ((n > 0) / stabilize(Dp, p["epsilon"]))[None, :]
                + dn.T * ((n < 0) / stabilize(Dn, p["epsilon"]))[None, :])
    if name == "flat":
        return conn.T / stabilize(conn.sum(1), p["epsilon"])[None, :]
    if name == "w_square":
        return (W ** 2).T / stabilize((W ** 2).sum(1) + bb ** 2, p["epsilon"])[None, :]
    if name == "z_box":
        num = W * a[None, :] - Wp * low[None, :] - Wn * high[None, :]
        return num.T / stabilize(num.sum(1), p["epsilon"])[None, :]
    raise ValueError(name)


def norm_matrix(M, a, eps=1e-6):
    """AvgPool (Zennit's Norm rule): C_ij = a_i m_ji / stab(sum_k m_jk a_k)."""
    return (M * a[None, :]).T / stabilize(M @ a, eps)[None, :]


def maxpool_matrix(idx, a):
    """MaxPool: C_ij = 1 if i is the (first) winner of window j, else 0 (relevance routed like the gradient)."""
    _, win = _maxpool_fwd(idx, a)
    C = np.zeros((a.size, idx.shape[0]))
    np.add.at(C, (win, np.arange(idx.shape[0])), 1.0)
    return C


def lrp(spec, x, rules, target=None, low=None, high=None, pool_eps=1e-6):
    """LRP with one rule per Dense/Conv2d layer in graph order (``rules``: list of ``rule(...)`` tuples).

    c(a^M) = s_c e_c;  c(a^{m-1}) = C(a^{m-1}|a^m) c(a^m) at Dense/Conv2d (``lrp_matrix``), AvgPool
    (``norm_matrix``), MaxPool (``maxpool_matrix``); relevance passes unchanged through ReLU/Tanh/Sigmoid.
    ``low``/``high``: ZBox bounds, broadcastable to x (each z_box rule may also carry its own).
    ``pool_eps``: stabilizer of the AvgPool z-rule (a composite's ``stabilizer``, as in Zennit).
    """
    x = np.asarray(x, dtype=np.float64)
    ops = compile_net(spec, x.shape[1:])
    n_lin = sum(1 for op in ops if op["op"] == "linear" and op["kind"] != "avgpool")
    if len(rules) != n_lin:
        raise ValueError("reference: one rule per Dense/Conv2d layer")
    t = resolve_target(spec, x, target)
    out = []
    for n, (xi, c) in enumerate(zip(_flat(x), t)):
        inputs, s = _trace(ops, xi)
        R = np.eye(s.size)[c] * s[c]
        k = n_lin
        for op, a in zip(reversed(ops), reversed(inputs)):
            if op["op"] == "linear" and op["kind"] == "avgpool":
                R = norm_matrix(op["M"], a, pool_eps) @ R
            elif op["op"] == "linear":
                k -= 1
                r = rules[k]
                lo = hi = None
                if r[0] == "z_box":
                    lo_ = r[1].get("low", low)
                    hi_ = r[1].get("high", high)
                    lo = np.broadcast_to(np.asarray(lo_, np.float64), x.shape)[n].reshape(-1)
                    hi = np.broadcast_to(np.asarray(hi_, np.float64), x.shape)[n].reshape(-1)
                R = lrp_matrix(r, op["M"], op["b"], op["conn"], a, lo, hi) @ R
            elif op["op"] == "maxpool":
                R = maxpool_matrix(op["idx"], a) @ R
            # activations: relevance passes unchanged
        out.append(R)
    return np.stack(out).reshape(x.shape)


def composite_rules(spec, name, epsilon=1e-6, stabilizer=1e-6, gamma=0.25, low=None, high=None):
    """Rule list of a Zennit composite ("first" = first Dense/Conv2d, or first Conv2d for ZBox)."""
    kinds = linear_layer_kinds(spec)
    rules = []
    first_conv = kinds.index("conv") if "conv" in kinds else None
    for k, kind in enumerate(kinds):
        if kind == "dense":
            r = rule("epsilon", epsilon=epsilon)
        elif name in ("EpsilonPlus", "EpsilonPlusFlat"):
            r = rule("z_plus", epsilon=stabilizer)
        elif name in ("EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat"):
            r = rule("alpha_beta", alpha=2.0, beta=1.0, epsilon=stabilizer)
        elif name == "EpsilonGammaBox":
            r = rule("gamma", gamma=gamma, epsilon=stabilizer)
        else:
            raise ValueError(name)
        if name.endswith("Flat") and k == 0:
            r = rule("flat", epsilon=stabilizer)
        if name == "EpsilonGammaBox" and k == first_conv:
            r = rule("z_box", epsilon=stabilizer, low=low, high=high)
        rules.append(r)
    return rules


def deep_taylor_rules(spec, low=None, high=None, epsilon=1e-6):
    """deep_taylor: ZPlus everywhere but the first Dense/Conv2d, which gets WSquare (no bounds) or ZBox;
    no bias in any denominator (Montavon et al. 2017; ZBox's bias terms cancel)."""
    n = len(linear_layer_kinds(spec))
    first = (rule("w_square", epsilon=epsilon, include_bias=False) if low is None
             else rule("z_box", epsilon=epsilon, low=low, high=high))
    return [first] + [rule("z_plus", epsilon=epsilon, include_bias=False) for _ in range(n - 1)]


def min_abs_preactivation(spec, x, baseline=None):
    """Smallest |input| of any ReLU/Tanh/Sigmoid and |score| (x and, if given, baseline): how close a sample
    lies to a kink or a zero denominator; tests use it to skip numerically ill-posed draws."""
    x = np.asarray(x, dtype=np.float64)
    ops = compile_net(spec, x.shape[1:])
    m = np.inf
    pts = [x] if baseline is None else [x, np.broadcast_to(np.asarray(baseline, np.float64), x.shape)]
    for xx in pts:
        for xi in _flat(xx):
            ins, s = _trace(ops, xi)
            for op, a in zip(ops, ins):
                if op["op"] in ("relu", "tanh", "sigmoid") and a.size:
                    m = min(m, np.min(np.abs(a)))
            m = min(m, np.min(np.abs(s)))
    return m


def min_abs_denominator(spec, x, rules):
    """Smallest |denominator| among the unstabilized LRP denominators the rules use (per sample)."""
    x = np.asarray(x, dtype=np.float64)
    ops = compile_net(spec, x.shape[1:])
    m = np.inf
    for xi in _flat(x):
        ins, _ = _trace(ops, xi)
        k = 0
        for op, a in zip(ops, ins):
            if op["op"] != "linear":
                continue
            if op["kind"] == "avgpool":
                z = op["M"] @ a
            else:
                name, p = rules[k]
                k += 1
                W = op["M"]
                bb = (op["b"] if op["b"] is not None and p.get("include_bias", True) else 0.0)
                if name in ("z", "epsilon"):
                    z = W @ a + bb
                elif name in ("flat", "w_square", "z_box"):
                    continue
                else:
                    g = p.get("gamma", 0.0)
                    Wp, Wn = W + g * np.maximum(W, 0), W + g * np.minimum(W, 0)
                    if name != "gamma":
                        Wp, Wn = np.maximum(W, 0), np.minimum(W, 0)
                    xp, xn = np.maximum(a, 0), np.minimum(a, 0)
                    z = np.concatenate([Wp @ xp + Wn @ xn + np.maximum(bb, 0), Wn @ xp + Wp @ xn + np.minimum(bb, 0)])
            z = z[z != 0]          # exact zeros: dead inputs, which carry no relevance
            if z.size:
                m = min(m, np.min(np.abs(z)))
    return m


def min_abs_delta_preactivation(spec, x, baseline):
    """Smallest |n - n_bar| at any ReLU/Tanh/Sigmoid input between x and the baseline (DeepLIFT's rescale
    ratio loses precision as it approaches 0/0)."""
    x = np.asarray(x, dtype=np.float64)
    xb = np.broadcast_to(np.asarray(baseline, np.float64), x.shape)
    ops = compile_net(spec, x.shape[1:])
    m = np.inf
    for xi, xbi in zip(_flat(x), _flat(xb)):
        ins, _ = _trace(ops, xi)
        insb, _ = _trace(ops, xbi)
        for op, a, ab in zip(ops, ins, insb):
            if op["op"] in ("relu", "tanh", "sigmoid") and a.size:
                m = min(m, np.min(np.abs(a - ab)))
    return m


def deeplift_reveal_cancel(spec, x, target=None, baseline=0.0, conv_rule="rescale", eps=1e-10):
    """DeepLIFT with the RevealCancel rule (Shrikumar et al. 2017, Sec. 3.5.3), per sample.

    At an activation y = f(n) right after a Dense layer (and a Conv2d layer when
    ``conv_rule == "reveal_cancel"``), with the layer's contribution matrix C_ji = M_ji Delta a_i:
        Dn+_j = sum_i max(C_ji, 0),   Dn-_j = sum_i min(C_ji, 0),
        Dy+ = (f(nb + Dn+) - f(nb)) / 2 + (f(n) - f(nb + Dn-)) / 2,
        Dy- = (f(nb + Dn-) - f(nb)) / 2 + (f(n) - f(nb + Dn+)) / 2,
        q+ = q Dy+ / Dn+,  q- = q Dy- / Dn-   (limits (f'(nb) + f'(nb + Dn-+)) / 2 q where |Dn+-| < eps);
    the linear layer below then gives input i the multiplier
        sum_j M_ji (q+_j if C_ji > 0, q-_j if C_ji < 0, (q+_j + q-_j) / 2 if C_ji = 0).
    Everything else is ``deeplift_rescale``.
    """
    x = np.asarray(x, dtype=np.float64)
    xb = np.broadcast_to(np.asarray(baseline, dtype=np.float64), x.shape)
    ops = compile_net(spec, x.shape[1:])
    t = resolve_target(spec, x, target)
    kinds = ("dense", "conv") if conv_rule == "reveal_cancel" else ("dense",)
    rc = [i > 0 and op["op"] in ("relu", "tanh", "sigmoid") and ops[i - 1]["op"] == "linear"
          and ops[i - 1]["kind"] in kinds for i, op in enumerate(ops)]
    out = []
    for xi, xbi, c in zip(_flat(x), _flat(xb), t):
        ins, s = _trace(ops, xi)
        insb, _ = _trace(ops, xbi)
        q = np.eye(s.size)[c]
        pair = None
        for pos in reversed(range(len(ops))):
            op, a, ab = ops[pos], ins[pos], insb[pos]
            if op["op"] == "linear" and pair is not None:
                C = op["M"] * (a - ab)[None, :]
                qp, qn = pair
                pick = np.where(C > 0, qp[:, None], np.where(C < 0, qn[:, None], 0.5 * (qp + qn)[:, None]))
                q = (op["M"] * pick).sum(axis=0)
                pair = None
            elif op["op"] == "linear":
                q = op["M"].T @ q
            elif op["op"] == "maxpool":
                q = _maxpool_rescale(op["idx"], a, ab, q, eps)
            elif rc[pos]:
                lin = ops[pos - 1]
                C = lin["M"] * (ins[pos - 1] - insb[pos - 1])[None, :]
                dp, dn = np.maximum(C, 0).sum(axis=1), np.minimum(C, 0).sum(axis=1)
                f = lambda v: _act(op["op"], v)  # noqa: E731
                dyp = 0.5 * (f(ab + dp) - f(ab)) + 0.5 * (f(a) - f(ab + dn))
                dyn = 0.5 * (f(ab + dn) - f(ab)) + 0.5 * (f(a) - f(ab + dp))
                g0 = _act_grad(op["op"], ab)

                def mult(dy, d, other):
                    small = np.abs(d) < eps
                    return q * np.where(small, 0.5 * (g0 + _act_grad(op["op"], ab + other)), dy / np.where(small, 1, d))

                pair = (mult(dyp, dp, dn), mult(dyn, dn, dp))
            else:
                q = _rescale(op["op"], a, ab, q, eps)
        out.append(q * (xi - xbi))
    return np.stack(out).reshape(x.shape)
