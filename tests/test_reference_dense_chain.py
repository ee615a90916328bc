"""The fused MLP path: a chain of Dense layers run by one kernel call, tile by tile.

``relprop.core.dense_chain.run`` hands a model whose layers up to the score are Dense layers with
ReLU / Tanh / Sigmoid between them (Flatten / Reshape / Identity / Dropout allowed before the first)
to the kernel ``relprop.kernels.cpu.dense_chain`` for the gradient-mode and LRP traversals; it
returns None, and the layer-by-layer engine runs, for everything else. What is checked here:

1. ``test_reference_*`` / ``test_peers_*``: on identical weights the fused path equals torch
   autograd (gradient, gradient x input, saliency, integrated gradients, also Captum's IG) and
   Zennit 0.5.1 (LRP rules, composites, special first layers) -- float64 to 1e-10 x max|R| per
   sample, float32 to 1e-5 x the batch's max|R| (against the float64 peer) -- on inputs with negative entries
   and on inputs >= 0 (the kernel drops the x- terms of a first layer whose input is >= 0), for
   every way of giving targets; ``explain`` reports the scores of the model.
2. ``test_reference_fused_*``: the kernel was actually called (a spy on it and on ``run``), and it
   agrees with the engine (``dense_chain.ENABLED = False``) to 1e-12 x max|R| in float64 for batches
   that are not a multiple of the tile (1, 7, 121, 1000 rows) and for several ``batch_size=``; the
   internal batches follow ``Budget.chain`` counting every target's result.
3. ``test_reference_fallback_*``: the cases the kernel must leave to the engine do not call it,
   size their internal batches for the engine, and still give the engine's result.
4. ``test_reference_kernel_parts_*``: the kernel's tiles are independent: running its parts
   1, 2 or 5 ways gives the same bits.
5. ``test_errors_*``: out-of-range targets are refused with a clear ValueError (the API, and the
   kernel itself when called directly); read-only inputs work.

Expected values come from torch / Zennit / Captum (float64) or from the engine path, never from
the fused path itself.
"""
from __future__ import annotations

import importlib
import types
import warnings

import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from zennit import rules as zr
from zennit.composites import EpsilonPlusFlat as ZEpsilonPlusFlat
from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite
from zennit.types import Activation

import relprop as rp
import relprop.core.dense_chain as DC
import relprop.kernels.cpu as CPU
from peer_models import PeerNet, to_torch
from tolerance import assert_blas_close, assert_close_per_sample
from torch_ref import torch_grad, torch_out, zennit_relevance

# the kernel's module (``relprop.kernels.cpu.dense_chain`` as an attribute is the kernel function,
# which the package re-exports under the module's name)
KMOD = importlib.import_module("relprop.kernels.cpu.dense_chain")

TOL64 = 1e-10  # per sample, x max|R_reference|: float64 fused path vs a float64 peer
TOL32 = 1e-5  # float32 fused path vs the float64 peer
LIN = torch.nn.Linear

# positional arguments of the public kernel (see kernels/cpu/dense_chain.py)
A_X, A_RMETA, A_TARGETS, A_ARGMAX, A_TILE, A_SCORES, A_OUT = 0, 8, 10, 11, 13, 14, 15


# --------------------------------------------------------------------------------------------
# models: peer_models.PeerNet builds the relprop and the torch network from one set of weights
# --------------------------------------------------------------------------------------------
def _mlp(name, sizes, acts, seed=0):
    """A He-initialised MLP ``sizes[0] -> ... -> sizes[-1]`` with activation ``acts[i]`` after
    hidden layer ``i`` (float32 weights, so float32 and float64 runs see the same numbers)."""
    rng = np.random.default_rng(1234 + seed)
    spec, params = [], []
    for i, (k, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        spec.append(("dense", k, o))
        params.append(((rng.standard_normal((o, k)) * np.sqrt(2.0 / k)).astype(np.float32),
                       (0.1 * rng.standard_normal(o)).astype(np.float32)))
        if i < len(sizes) - 2:
            spec.append(("act", acts[i]))
            params.append(None)
    return PeerNet(name, (sizes[0],), spec, params, sizes[-1])


NETS = {
    "relu": _mlp("relu", [14, 64, 64, 3], ("relu", "relu")),
    # a layer reading a sigmoid (>= 0) keeps the fused path for rules with x- terms
    "relu_sigmoid": _mlp("relu_sigmoid", [14, 64, 64, 3], ("relu", "sigmoid"), seed=1),
    # a layer reading a tanh (sign unknown): rules with x- terms fall back; the others stay fused
    "sigmoid_tanh": _mlp("sigmoid_tanh", [14, 48, 48, 4], ("sigmoid", "tanh"), seed=2),
}
_RP = {}  # one relprop model per net, so its compiled state is kept across the tests


def _rp_net(name):
    if name not in _RP:
        _RP[name] = NETS[name].relprop(np.float64)  # relprop casts the weights to x's dtype
    return _RP[name]


def _inputs(net, n=6, sign="signed", seed=0, dtype=np.float64):
    """Inputs in [-2.95, 2.95] (``PeerNet.inputs``), or their absolute values (``"nonneg"``)."""
    x = net.inputs(seed=seed, n=n, dtype=np.float64)
    if sign == "nonneg":
        x = np.abs(x)
        assert x.min() >= 0
    else:
        assert x.min() < 0
    return np.ascontiguousarray(x.astype(dtype))


def _targets(net, n, seed=0):
    return np.random.default_rng(77 + seed).integers(0, net.n_classes, n)


@pytest.fixture
def spy(monkeypatch):
    """Records every call of the Dense-chain kernel (its arguments, and copies of the targets,
    scores and results it wrote) and whether each
    ``dense_chain.run`` returned a result (True) or left the call to the engine (False)."""
    rec = types.SimpleNamespace(calls=[], written=[], runs=[], row_bytes=[])
    kernel, run, row_bytes = CPU.dense_chain, DC.run, DC.row_bytes

    def kernel_spy(*args):
        rec.calls.append(args)
        r = kernel(*args)
        # what the kernel wrote, before a method's post-processing changes its output in place
        rec.written.append(tuple(np.array(args[i]) for i in (A_TARGETS, A_SCORES, A_OUT)))
        return r

    def run_spy(*args, **kwargs):
        r = run(*args, **kwargs)
        rec.runs.append(r is not None)
        return r

    def row_bytes_spy(*args, **kwargs):
        r = row_bytes(*args, **kwargs)
        rec.row_bytes.append(r)
        return r

    # relprop looks them up at call time: ``k.dense_chain`` on the kernel module, ``dense_chain.run``
    # (the traversal) and ``dense_chain.row_bytes`` (the Explainer's internal batch size)
    monkeypatch.setattr(DC, "MIN_ROWS", 1)  # the kernel on every batch size, a handful of rows included
    monkeypatch.setattr(CPU, "dense_chain", kernel_spy)
    monkeypatch.setattr(DC, "run", run_spy)
    monkeypatch.setattr(DC, "row_bytes", row_bytes_spy)

    def reset():
        rec.calls.clear()
        rec.runs.clear()
        rec.row_bytes.clear()

    rec.reset = reset
    return rec


def _assert_fused(spy):
    assert spy.calls, "the Dense-chain kernel was not called"
    assert spy.runs and all(spy.runs), f"dense_chain.run left some batches to the engine: {spy.runs}"


def _assert_not_fused(spy):
    assert not spy.calls, f"the Dense-chain kernel was called {len(spy.calls)} times"
    assert not any(spy.runs), f"dense_chain.run returned a result: {spy.runs}"
    # and the internal batches were sized for the engine, not for the kernel's tiles (one decision)
    assert all(r is None for r in spy.row_bytes), f"batches sized for the Dense-chain kernel: {spy.row_bytes}"


def _engine(monkeypatch, spy, fn):
    """``fn()`` on the layer-by-layer engine (the fused path switched off), checked not to call the kernel."""
    n_calls = len(spy.calls)
    with monkeypatch.context() as mp:
        mp.setattr(DC, "ENABLED", False)
        out = fn()
    assert len(spy.calls) == n_calls, "the kernel ran with dense_chain.ENABLED = False"
    return out


def _check(actual, expected, dtype):
    """float64: per sample, max|diff| <= 1e-10 x max|expected|. float32: max|diff| <= 1e-5 x max|expected|
    over the batch (a sample whose relevance is small against its layers' -- positive and negative
    contributions cancelling -- keeps fewer digits in any float32 evaluation; Zennit's own float32
    relevance is off its float64 one by up to 3e-5 x that sample's max|R| on such draws)."""
    assert actual.dtype == np.dtype(dtype), actual.dtype
    a = np.asarray(actual, np.float64).reshape(actual.shape[0], -1)
    e = np.asarray(expected, np.float64).reshape(actual.shape[0], -1)
    if np.dtype(dtype) == np.float64:
        assert_close_per_sample(a, e, TOL64, floor=1e-300)
    else:
        assert_blas_close(a, e, TOL32)


# --------------------------------------------------------------------------------------------
# independent references: torch autograd, Captum, Zennit (float64)
# --------------------------------------------------------------------------------------------
def _torch_logits(net, x):
    return torch_out(net.torch(torch.float64), np.asarray(x, np.float64))


def _torch_ig(net, x, target, baseline, steps):
    """IG by autograd, Gauss-Legendre nodes and weights from numpy mapped to [0, 1]
    (Sundararajan et al. 2017, Eq. 3, as a quadrature)."""
    model = net.torch(torch.float64)
    x = np.asarray(x, np.float64)
    x0 = np.broadcast_to(np.asarray(baseline, np.float64), x.shape)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    acc = np.zeros_like(x)
    for a, w in zip(0.5 * (nodes + 1), 0.5 * weights):
        acc += w * torch_grad(model, x0 + a * (x - x0), target)
    return (x - x0) * acc


def _zero_safe(z):
    """LRP-0's denominator for Zennit: z itself, exact zeros mapped to inf (R/z := 0 there)."""
    return torch.where(z == 0, torch.full_like(z, float("inf")), z)


def _zennit(net, x, target, composite, tdtype=torch.float64, start="score"):
    """Zennit's relevance for the classes ``target`` (N,), from ``one_hot * output`` (``start="score"``)
    or ``one_hot`` (``start="one_hot"``)."""
    model = net.torch(tdtype)
    xt = to_torch(np.asarray(x, np.float64), tdtype, requires_grad=True)
    tg = torch.as_tensor(np.asarray(target, np.int64))
    with torch.no_grad():
        classes = model(xt).shape[1]
    one_hot = torch.nn.functional.one_hot(tg, classes).to(tdtype)
    attr_output = one_hot if start == "one_hot" else (lambda out: out.detach() * one_hot)
    return zennit_relevance(model, xt, composite, attr_output)


def _every_linear(rule):
    return lambda: LayerMapComposite([(Activation, zr.Pass()), (LIN, rule())])


def _first_linear(first, rest):
    return lambda: SpecialFirstLayerMapComposite(layer_map=[(Activation, zr.Pass()), (LIN, rest())],
                                                 first_map=[(LIN, first())])


# name: (relprop method, its parameters, the Zennit composite, which layers' rules read x-: True (all),
# "hidden" (those above the first) or False)
LRP_CASES = {
    "epsilon": ("lrp.epsilon", lambda: {}, _every_linear(lambda: zr.Epsilon(epsilon=1e-6)), False),
    "epsilon_0.25_no_bias": ("lrp.epsilon", lambda: {"epsilon": 0.25, "include_bias": False},
                             _every_linear(lambda: zr.Epsilon(epsilon=0.25, zero_params=["bias"])), False),
    "z": ("lrp.z", lambda: {}, _every_linear(lambda: zr.Epsilon(epsilon=_zero_safe)), False),
    "epsilon_one_hot_start": ("lrp.epsilon", lambda: {"start": "one_hot"},
                              _every_linear(lambda: zr.Epsilon(epsilon=1e-6)), False),
    "alpha2beta1": ("lrp.alpha_beta", lambda: {"alpha": 2.0, "beta": 1.0},
                    _every_linear(lambda: zr.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-6)), True),
    "alpha2beta1_no_bias": ("lrp.alpha_beta", lambda: {"alpha": 2.0, "beta": 1.0, "include_bias": False},
                            _every_linear(lambda: zr.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-6,
                                                               zero_params=["bias"])), True),
    "alpha1beta0": ("lrp.alpha_beta", lambda: {"alpha": 1.0, "beta": 0.0},
                    _every_linear(lambda: zr.AlphaBeta(alpha=1.0, beta=0.0, stabilizer=1e-6)), True),
    "z_plus": ("lrp.z_plus", lambda: {}, _every_linear(lambda: zr.ZPlus(stabilizer=1e-6)), True),
    "gamma": ("lrp.gamma", lambda: {}, _every_linear(lambda: zr.Gamma(gamma=0.25, stabilizer=1e-6)), True),
    "gamma_1_eps1e-3": ("lrp.gamma", lambda: {"gamma": 1.0, "epsilon": 1e-3},
                        _every_linear(lambda: zr.Gamma(gamma=1.0, stabilizer=1e-3)), True),
    "EpsilonPlusFlat": ("lrp", lambda: {"rules": rp.composites.EpsilonPlusFlat()}, ZEpsilonPlusFlat, False),
    "flat_first_epsilon": ("lrp", lambda: {"rules": [rp.rules.Flat(), rp.rules.Epsilon(), rp.rules.Epsilon()]},
                           _first_linear(lambda: zr.Flat(stabilizer=1e-6), lambda: zr.Epsilon(epsilon=1e-6)), False),
    "wsquare_first_epsilon": ("lrp", lambda: {"rules": [rp.rules.WSquare(), rp.rules.Epsilon(), rp.rules.Epsilon()]},
                              _first_linear(lambda: zr.WSquare(stabilizer=1e-6), lambda: zr.Epsilon(epsilon=1e-6)),
                              False),
    # Deep Taylor without bounds: w^2 first layer, z+ above, no bias anywhere (Montavon et al. 2017)
    "deep_taylor_wsquare": ("deep_taylor", lambda: {},
                            _first_linear(lambda: zr.WSquare(stabilizer=1e-6, zero_params=["bias"]),
                                          lambda: zr.ZPlus(stabilizer=1e-6, zero_params=["bias"])), "hidden"),
}


def _lrp_params():
    cases = []
    for case, (_, _, _, xneg) in LRP_CASES.items():
        # rules with x- terms stay fused behind a sigmoid (>= 0), the others behind a tanh too
        for net in ("relu", "relu_sigmoid" if xneg else "sigmoid_tanh"):
            for sign in ("signed", "nonneg"):
                for dtype in (np.float64, np.float32):
                    if dtype == np.float32 and (net != "relu" or case == "epsilon_one_hot_start"):
                        # ill-conditioned in float32 whoever computes it: behind a sigmoid/tanh Zennit's own
                        # float32 relevance is off its float64 one by up to 2e-4 x max|R| on these draws, and
                        # from e_c the relevance scales with 1 / s_c (a score of 0.02 here); their fused-vs-
                        # engine agreement is checked in test_reference_fused_equals_engine_on_every_net
                        continue
                    cases.append(pytest.param(case, net, sign, dtype,
                                              id=f"{case}-{net}-{sign}-{np.dtype(dtype).name}"))
    return cases


# --------------------------------------------------------------------------------------------
# 1. independent references
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("net_name", ["relu", "sigmoid_tanh", "relu_sigmoid"])
@pytest.mark.parametrize("method", ["gradient", "gradient_x_input", "saliency"])
def test_reference_gradient_family_matches_torch_autograd(spy, method, net_name, dtype):
    net = NETS[net_name]
    x = _inputs(net, n=9)
    t = _targets(net, len(x))
    g = torch_grad(net.torch(torch.float64), x, t)
    expected = {"gradient": g, "gradient_x_input": g * x, "saliency": np.abs(g)}[method]
    R = rp.attribute(_rp_net(net_name), x.astype(dtype), method, target=t)
    _assert_fused(spy)
    _check(R, expected, dtype)


@pytest.mark.peers
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("net_name", ["relu", "sigmoid_tanh"])
@pytest.mark.parametrize("baseline", ["zero", "array"])
def test_peers_integrated_gradients_match_torch_autograd_and_captum(spy, net_name, dtype, baseline):
    """Gauss-Legendre IG with 5 steps: every path point through the fused kernel (one batch of
    5 N rows), against the same quadrature by torch autograd and against Captum's IG."""
    net = NETS[net_name]
    x = _inputs(net, n=5)
    t = _targets(net, len(x))
    b = 0.0 if baseline == "zero" else np.random.default_rng(3).uniform(-0.5, 0.5, x.shape[1])
    ref = _torch_ig(net, x, t, b, steps=5)
    model = net.torch(torch.float64)
    xt = to_torch(x, torch.float64)
    bt = 0.0 if baseline == "zero" else to_torch(np.broadcast_to(b, x.shape), torch.float64)
    captum = IntegratedGradients(model).attribute(xt, baselines=bt, target=torch.as_tensor(t), n_steps=5,
                                                  method="gausslegendre").detach().numpy()
    # Captum casts its quadrature weights to float32 (``torch.tensor(step_sizes).float()``): ~1e-8 apart
    assert_close_per_sample(captum, ref, 1e-7, "Captum vs the autograd quadrature", floor=1e-300)
    R = rp.attribute(_rp_net(net_name), x.astype(dtype), "integrated_gradients", target=t, steps=5,
                     baseline=b if baseline == "zero" else b.astype(dtype))
    _assert_fused(spy)
    assert sum(c[A_X].shape[0] for c in spy.calls) == 5 * len(x)  # the 5 path points of every sample
    _check(R, ref, dtype)
    assert_close_per_sample(R, captum, 1e-7 if dtype == np.float64 else TOL32, "relprop vs Captum", floor=1e-300)


@pytest.mark.peers
@pytest.mark.parametrize("case,net_name,sign,dtype", _lrp_params())
def test_peers_lrp_rules_match_zennit(spy, case, net_name, sign, dtype):
    method, params, composite, xneg = LRP_CASES[case]
    net = NETS[net_name]
    x = _inputs(net, n=7, sign=sign)
    t = _targets(net, len(x))
    p = params()
    start = p.get("start", "score")
    ref = _zennit(net, x, t, composite(), start=start)
    R = rp.attribute(_rp_net(net_name), x.astype(dtype), method, target=t, **p)
    _assert_fused(spy)
    if xneg is True:
        # the kernel dropped the first layer's x- terms exactly when x >= 0 (rmeta[0, 14]: input >= 0)
        assert int(spy.calls[0][A_RMETA][0, 14]) == (sign == "nonneg")
    _check(R, ref, dtype)


@pytest.mark.peers
@pytest.mark.parametrize("method", ["gradient", "lrp.alpha_beta"])
@pytest.mark.parametrize("how", ["targets_list", "targets_array", "targets_all", "target_int", "target_array",
                                 "target_argmax"])
def test_peers_every_way_of_giving_targets(spy, method, how):
    """Several targets in one call, (N, K) arrays, one class, an array of classes and the argmax
    default: the fused result is the peer's for the classes asked for (argmax: of torch's logits)."""
    net = NETS["relu"]
    x = _inputs(net, n=8)
    n, c = len(x), net.n_classes
    kw = {"alpha": 2.0, "beta": 1.0} if method == "lrp.alpha_beta" else {}

    def ref_for(tcol):
        if method == "gradient":
            return torch_grad(net.torch(torch.float64), x, tcol)
        return _zennit(net, x, tcol, LRP_CASES["alpha2beta1"][2]())

    tk = np.random.default_rng(5).integers(0, c, (n, 2))
    call = {"targets_list": dict(targets=[2, 0]), "targets_array": dict(targets=tk),
            "targets_all": dict(targets="all"), "target_int": dict(target=1),
            "target_array": dict(target=tk[:, 0]), "target_argmax": {}}[how]
    R = rp.attribute(_rp_net("relu"), x, method, **kw, **call)
    _assert_fused(spy)
    if how.startswith("targets"):
        cols = {"targets_list": np.tile([2, 0], (n, 1)), "targets_array": tk,
                "targets_all": np.tile(np.arange(c), (n, 1))}[how]
        assert R.shape == (n, cols.shape[1]) + x.shape[1:]
        assert spy.calls[0][A_TARGETS].shape[1] == cols.shape[1]  # all K targets in one kernel call
        for j in range(cols.shape[1]):
            _check(R[:, j], ref_for(cols[:, j]), np.float64)
        return
    tcol = {"target_int": np.full(n, 1), "target_array": tk[:, 0],
            "target_argmax": _torch_logits(net, x).argmax(axis=1)}[how]
    if how == "target_argmax":
        assert bool(spy.calls[0][A_ARGMAX])  # the kernel chose the classes itself
        assert len(set(tcol.tolist())) > 1  # (the draw has more than one predicted class)
    assert R.shape == x.shape
    _check(R, ref_for(tcol), np.float64)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("method,kw", [("gradient", {}), ("lrp.epsilon", {}),
                                        ("lrp", {"rules": rp.composites.EpsilonPlusFlat()})],
                         ids=["gradient", "lrp.epsilon", "EpsilonPlusFlat"])
@pytest.mark.parametrize("how", ["argmax", "targets"])
def test_reference_explain_reports_the_model_scores(monkeypatch, spy, method, kw, how, dtype):
    """``explain`` keeps the scores of the kernel's forward pass: they are ``rp.scores`` (and
    torch's logits) at the explained classes, and its argmax is torch's."""
    net = NETS["relu"]
    x = _inputs(net, n=130).astype(dtype)  # two tiles of the gradient kernel
    logits = _torch_logits(net, x)
    call = {} if how == "argmax" else {"targets": [2, 0, 1]}
    e = rp.Explainer(_rp_net("relu"), method, **kw).explain(x, **call)
    _assert_fused(spy)
    s_all = rp.scores(_rp_net("relu"), x)
    assert s_all.dtype == np.dtype(dtype)
    assert_blas_close(s_all, logits.astype(dtype), 1e-12 if dtype == np.float64 else TOL32)
    if how == "argmax":
        np.testing.assert_array_equal(e.targets, logits.argmax(axis=1))
        expected = s_all[np.arange(len(x)), e.targets]
    else:
        np.testing.assert_array_equal(e.targets, np.tile([2, 0, 1], (len(x), 1)))
        expected = s_all[np.arange(len(x))[:, None], e.targets]
    assert e.scores.shape == expected.shape
    assert_blas_close(e.scores, expected)
    # the attribution is the one of the classes reported (the kernel's own argmax included)
    engine = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net("relu"), x, method, **kw, **(
        {"target": e.targets} if how == "argmax" else {"targets": e.targets})))
    assert_blas_close(e.attribution, engine)


@pytest.mark.parametrize("model", ["flatten_dropout_softmax", "reshape_identity", "no_activation", "from_torch"])
def test_reference_structural_variants_are_fused_and_match_torch(spy, model):
    """What may sit around the chain: Flatten / Reshape / Identity / Dropout before the first
    Dense, Dropout between layers, a Softmax after the score, no activation between two Dense
    layers, and a model imported from torch -- fused, and torch autograd's gradient."""
    net = NETS["relu"]
    (W1, b1), (W2, b2), (W3, b3) = [p for p in net.params if p is not None]
    rng = np.random.default_rng(8)
    x = rng.standard_normal((11, 2, 7))
    L = {k: torch.nn.Linear(*v.shape[::-1]).double() for k, v in (("1", W1), ("2", W2), ("3", W3))}
    for (k, lin), (W, b) in zip(L.items(), ((W1, b1), (W2, b2), (W3, b3))):
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.astype(np.float64)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float64)))
    D = lambda W, b: rp.Dense(W.astype(np.float64), b.astype(np.float64))  # noqa: E731
    if model == "flatten_dropout_softmax":
        net_rp = rp.Sequential(rp.Flatten(), rp.Dropout(0.3), D(W1, b1), rp.ReLU(), rp.Dropout(0.3), D(W2, b2),
                               rp.ReLU(), D(W3, b3), rp.Softmax())
        tm = torch.nn.Sequential(torch.nn.Flatten(), L["1"], torch.nn.ReLU(), L["2"], torch.nn.ReLU(), L["3"])
    elif model == "reshape_identity":
        net_rp = rp.Sequential(rp.Reshape((14,)), rp.Identity(), D(W1, b1), rp.Tanh(), D(W2, b2), rp.Sigmoid(),
                               D(W3, b3))
        tm = torch.nn.Sequential(torch.nn.Flatten(), L["1"], torch.nn.Tanh(), L["2"], torch.nn.Sigmoid(), L["3"])
    elif model == "no_activation":
        net_rp = rp.Sequential(rp.Flatten(), D(W1, b1), D(W2, b2), rp.ReLU(), D(W3, b3))
        tm = torch.nn.Sequential(torch.nn.Flatten(), L["1"], L["2"], torch.nn.ReLU(), L["3"])
    else:
        tm = torch.nn.Sequential(torch.nn.Flatten(), L["1"], torch.nn.ReLU(), torch.nn.Dropout(0.2), L["2"],
                                 torch.nn.Sigmoid(), L["3"]).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net_rp = rp.from_torch(tm, torch.from_numpy(x[:1]))
    t = _targets(net, len(x))
    R = rp.attribute(net_rp, x, "gradient", target=t)
    _assert_fused(spy)
    assert R.shape == x.shape
    _check(R, torch_grad(tm.eval(), x, t), np.float64)
    spy.reset()
    R = rp.attribute(net_rp, x, "gradient_x_input", targets=[0, 2])
    _assert_fused(spy)
    for j, c in enumerate((0, 2)):
        _check(R[:, j], torch_grad(tm, x, np.full(len(x), c)) * x, np.float64)


# --------------------------------------------------------------------------------------------
# 2. the fused path is taken, and agrees with the engine
# --------------------------------------------------------------------------------------------
AGREE_CASES = {
    "gradient": ("gradient", {}, "signed"),
    "gradient_x_input": ("gradient_x_input", {}, "signed"),
    "lrp.epsilon": ("lrp.epsilon", {}, "signed"),
    "alpha2beta1": ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}, "signed"),
    "z_plus_nonneg": ("lrp.z_plus", {}, "nonneg"),
    "gamma_nonneg": ("lrp.gamma", {}, "nonneg"),
    "EpsilonPlusFlat": ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}, "signed"),
}


@pytest.mark.parametrize("batch_size", [None, 50])
@pytest.mark.parametrize("n", [1, 7, 121, 1000])
@pytest.mark.parametrize("case", list(AGREE_CASES))
def test_reference_fused_equals_engine_across_tiles(monkeypatch, spy, case, n, batch_size):
    method, kw, sign = AGREE_CASES[case]
    net = NETS["relu"]
    x = _inputs(net, n=n, sign=sign, seed=n)
    t = _targets(net, n, seed=n)
    fused = rp.attribute(_rp_net("relu"), x, method, target=t, batch_size=batch_size, **kw)
    _assert_fused(spy)
    rows = [c[A_X].shape[0] for c in spy.calls]
    assert sum(rows) == n, rows
    assert max(rows) <= (batch_size or n), rows
    tile = int(spy.calls[0][A_TILE])
    assert DC.MIN_TILE <= tile <= DC.MAX_TILE and tile % 8 == 0
    if batch_size is None and n > 100:  # one call over several tiles, the last one partial
        assert len(rows) == 1 and n > tile and n % tile != 0, (n, tile)
    engine = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net("relu"), x, method, target=t,
                                                              batch_size=batch_size, **kw))
    assert_blas_close(fused, engine)  # float64: 1e-12 x max|R|


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("net_name", list(NETS))
@pytest.mark.parametrize("case", list(AGREE_CASES))
def test_reference_fused_equals_engine_on_every_net(monkeypatch, spy, case, net_name, dtype):
    """All targets at once on 1000 rows (over the 32768-element threshold, so the kernel's tiles are
    split over relprop's threads), every net, both dtypes; where the rule reads x- behind a tanh the
    kernel must not run and the result is the engine's anyway.

    float32: the epsilon rules (eps = 1e-6) behind a sigmoid / tanh divide by pre-activations near 0
    for the classes not predicted, where float32 keeps no 5 digits whoever evaluates them (engine and
    kernel are both ~2e-3 x max|R| off the float64 result there): the fused float32 result must then
    be no further from the float64 one than 4 x the engine's float32 result is (else 1e-5 x max|R|)."""
    method, kw, sign = AGREE_CASES[case]
    net = NETS[net_name]
    x = _inputs(net, n=1000, sign=sign, seed=3, dtype=dtype)
    fused = rp.attribute(_rp_net(net_name), x, method, targets="all", **kw)
    expect_fused = not (net_name == "sigmoid_tanh" and method in ("lrp.alpha_beta", "lrp.z_plus", "lrp.gamma"))
    (_assert_fused if expect_fused else _assert_not_fused)(spy)
    engine = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net(net_name), x, method, targets="all", **kw))
    assert fused.shape == (1000, net.n_classes, 14)
    if dtype == np.float64:
        assert_blas_close(fused, engine)  # 1e-12 x max|R|
        return
    truth = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net(net_name), x.astype(np.float64), method,
                                                             targets="all", **kw))
    scale = np.abs(truth).max()
    err_fused, err_engine = np.abs(fused - truth).max() / scale, np.abs(engine - truth).max() / scale
    assert err_fused <= max(TOL32, 4 * err_engine), (err_fused, err_engine)


@pytest.mark.parametrize("batch_size", [1, 3, 64, 333])
def test_reference_fused_equals_engine_for_any_batch_size(monkeypatch, spy, batch_size):
    net = NETS["relu"]
    n = 7 if batch_size in (1, 3) else 1000
    x = _inputs(net, n=n, seed=11)
    for method, kw in (("gradient", {}), ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0})):
        spy.reset()
        fused = rp.attribute(_rp_net("relu"), x, method, targets=[0, 1], batch_size=batch_size, **kw)
        _assert_fused(spy)
        assert [c[A_X].shape[0] for c in spy.calls] == [min(batch_size, n - i) for i in range(0, n, batch_size)]
        whole = rp.attribute(_rp_net("relu"), x, method, targets=[0, 1], **kw)  # one internal batch
        engine = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net("relu"), x, method, targets=[0, 1],
                                                                  batch_size=batch_size, **kw))
        assert_blas_close(fused, engine)
        assert_blas_close(whole, engine)


def test_reference_fused_internal_batches_fit_the_chain_budget(monkeypatch, spy):
    """With the kernel, an internal batch holds only the inputs, scores and results (the tiles keep
    the rest): its rows follow ``Budget.chain``, counting every target's result row, and the
    batches' results and scores are stitched together as one call's."""
    from relprop.core import budget

    chain_bytes = 64 * 2**10
    monkeypatch.setattr(budget, "BUDGET", budget.Budget(chain=chain_bytes))  # (the policy tests may swap)
    net = NETS["relu"]
    x = _inputs(net, n=1000, seed=4)
    for call, k in (({}, 1), ({"targets": "all"}, 3)):
        spy.reset()
        e = rp.Explainer(_rp_net("relu"), "gradient_x_input").explain(x, **call)
        _assert_fused(spy)
        per_row = [r for r in spy.row_bytes if r is not None]
        assert per_row, "the internal batch size was not taken for the Dense-chain kernel"
        assert per_row[0] >= ((1 + k) * x.shape[1] + net.n_classes) * x.itemsize  # input, K results, scores
        rows = [c[A_X].shape[0] for c in spy.calls]
        assert sum(rows) == len(x) and len(rows) > 1, rows
        assert max(rows) * per_row[0] <= chain_bytes, (rows, per_row)
        engine = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net("relu"), x, "gradient_x_input", **call))
        assert_blas_close(e.attribution, engine)
        s = rp.scores(_rp_net("relu"), x)
        rows_idx = np.arange(len(x))[:, None] if k > 1 else np.arange(len(x))
        assert_blas_close(e.scores, s[rows_idx, e.targets])


def test_reference_tile_limit_of_a_wide_layer(monkeypatch, spy):
    """The widest square layer the tiles take (255 x 255: 8 rows keep every GEMM's m*n*k within
    ``SERIAL_GEMM_MNK``) is fused, with 8-row tiles; one unit wider (256 x 256) the engine runs."""
    rng = np.random.default_rng(21)
    for width, fused in ((255, True), (256, False)):
        spy.reset()
        W1, W2, W3 = (rng.standard_normal(s) / np.sqrt(s[1]) for s in ((width, 10), (width, width), (3, width)))
        net_rp = rp.Sequential(rp.Dense(W1, np.zeros(width)), rp.ReLU(), rp.Dense(W2, 0.1 * np.ones(width)),
                               rp.ReLU(), rp.Dense(W3, np.zeros(3)))
        x = rng.standard_normal((21, 10))
        R = rp.attribute(net_rp, x, "gradient", target=1)
        if fused:
            _assert_fused(spy)
            assert int(spy.calls[0][A_TILE]) == 8
        else:
            _assert_not_fused(spy)
        tm = torch.nn.Sequential(torch.nn.Linear(10, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                                 torch.nn.ReLU(), torch.nn.Linear(width, 3)).double()
        with torch.no_grad():
            for lin, nd in zip(tm[::2], net_rp.linear_nodes()):
                lin.weight.copy_(torch.from_numpy(np.array(nd.layer.weight)))
                lin.bias.copy_(torch.from_numpy(np.array(nd.layer.bias)))
        _check(R, torch_grad(tm, x, np.full(len(x), 1)), np.float64)


# --------------------------------------------------------------------------------------------
# 3. what the kernel must leave to the engine
# --------------------------------------------------------------------------------------------
def _conv_model():
    rng = np.random.default_rng(4)
    return rp.Sequential(rp.Conv2d(rng.standard_normal((3, 2, 3, 3)) / 4, 0.1 * rng.standard_normal(3), padding=1),
                         rp.ReLU(), rp.Flatten(), rp.Dense(rng.standard_normal((3, 3 * 4 * 4)) / 7, np.zeros(3))), \
        rng.standard_normal((5, 2, 4, 4))


def _skip_model():
    (W1, b1), (W2, b2), (W3, b3) = [p for p in NETS["relu"].params if p is not None]
    f = lambda a: np.asarray(a, np.float64)  # noqa: E731
    g = rp.Graph([rp.Node("d1", rp.Dense(f(W1), f(b1)), ("input",)), rp.Node("r1", rp.ReLU(), ("d1",)),
                  rp.Node("d2", rp.Dense(f(W2), f(b2)), ("r1",)), rp.Node("add", rp.Add(), ("d2", "r1")),
                  rp.Node("r2", rp.ReLU(), ("add",)), rp.Node("d3", rp.Dense(f(W3), f(b3)), ("r2",))])
    return g, _inputs(NETS["relu"], n=5)


def _wide_model():
    rng = np.random.default_rng(6)
    return rp.Sequential(rp.Dense(rng.standard_normal((2048, 14)) / 4, np.zeros(2048)), rp.ReLU(),
                         rp.Dense(rng.standard_normal((2048, 2048)) / 45, np.zeros(2048)), rp.ReLU(),
                         rp.Dense(rng.standard_normal((3, 2048)) / 45, np.zeros(3))), rng.standard_normal((3, 14))


def _activation_after_dropout_model():
    (W1, b1), (W2, b2), (W3, b3) = [p for p in NETS["relu"].params if p is not None]
    return rp.Sequential(rp.Dense(W1, b1), rp.Dropout(0.1), rp.ReLU(), rp.Dense(W2, b2), rp.ReLU(),
                         rp.Dense(W3, b3)), _inputs(NETS["relu"], n=4)


def _activation_on_the_score_model():
    """Dense -> ReLU -> Dense -> Sigmoid: the score is the sigmoid's output, beyond the last Dense."""
    (W1, b1), (W2, b2), (W3, b3) = [p for p in NETS["relu"].params if p is not None]
    return rp.Sequential(rp.Dense(W1, b1), rp.ReLU(), rp.Dense(W2, b2), rp.ReLU(), rp.Dense(W3, b3),
                         rp.Sigmoid()), _inputs(NETS["relu"], n=4)


def _mlp_model(name, sign="signed"):
    return lambda: (_rp_net(name), _inputs(NETS[name], n=6, sign=sign))


FALLBACKS = {
    "guided_backprop": (_mlp_model("relu"), "guided_backprop", {}),
    "deconvnet": (_mlp_model("relu"), "deconvnet", {}),
    "rectgrad": (_mlp_model("relu"), "rectgrad", {"q": 50.0}),
    "deeplift.rescale": (_mlp_model("relu"), "deeplift.rescale", {}),
    "zbox_first_layer": (_mlp_model("relu"), "lrp", {"rules": [rp.rules.ZBox(-3.0, 3.0), rp.rules.Epsilon(),
                                                               rp.rules.Epsilon()]}),
    "deep_taylor_zbox": (_mlp_model("relu"), "deep_taylor", {"low": -3.0, "high": 3.0}),
    "alpha_beta_after_tanh": (_mlp_model("sigmoid_tanh"), "lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}),
    "z_plus_after_tanh_nonneg_x": (_mlp_model("sigmoid_tanh", "nonneg"), "lrp.z_plus", {}),
    "gamma_after_tanh": (_mlp_model("sigmoid_tanh"), "lrp.gamma", {}),
    "alpha_beta_without_activation": (lambda: (rp.Sequential(rp.Dense(np.eye(14)[:9] - 0.05, np.zeros(9)),
                                                             rp.Dense(np.ones((3, 9)) * 0.1, np.zeros(3))),
                                               _inputs(NETS["relu"], n=4)), "lrp.alpha_beta", {}),
    "activation_not_right_after_dense": (_activation_after_dropout_model, "gradient", {}),
    "activation_on_the_score": (_activation_on_the_score_model, "gradient", {}),
    "conv2d": (_conv_model, "gradient", {}),
    "conv2d_lrp": (_conv_model, "lrp.epsilon", {}),
    "skip_connection": (_skip_model, "gradient", {}),
    "skip_connection_lrp": (_skip_model, "lrp", {"rules": rp.composites.EpsilonPlusFlat()}),
    "layer_too_wide_for_tiles": (_wide_model, "gradient", {}),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_reference_fallback_runs_the_engine(monkeypatch, spy, case):
    build, method, kw = FALLBACKS[case]
    net_rp, x = build()
    R = rp.attribute(net_rp, x, method, **kw)
    _assert_not_fused(spy)
    engine = _engine(monkeypatch, spy, lambda: rp.attribute(net_rp, x, method, **kw))
    assert_blas_close(R, engine)


@pytest.mark.peers
@pytest.mark.parametrize("case", ["alpha_beta_after_tanh", "gamma_after_tanh", "deep_taylor_zbox"])
def test_peers_fallback_still_matches_zennit(spy, case):
    build, method, kw = FALLBACKS[case]
    net_rp, x = build()
    net = NETS["sigmoid_tanh" if "tanh" in case else "relu"]
    comp = {"alpha_beta_after_tanh": LRP_CASES["alpha2beta1"][2],
            "gamma_after_tanh": LRP_CASES["gamma"][2],
            "deep_taylor_zbox": _first_linear(
                lambda: zr.ZBox(torch.tensor(-3.0, dtype=torch.float64), torch.tensor(3.0, dtype=torch.float64),
                                stabilizer=1e-6),
                lambda: zr.ZPlus(stabilizer=1e-6, zero_params=["bias"]))}[case]
    t = _targets(net, len(x))
    R = rp.attribute(net_rp, x, method, target=t, **kw)
    _assert_not_fused(spy)
    _check(R, _zennit(net, x, t, comp()), np.float64)


def test_reference_fallback_on_a_device_backend(monkeypatch, spy):
    """On a device (the host-emulated one of tests/fake_device.py) the engine's device path runs."""
    import fake_device

    calls = []
    wrapped = fake_device.kernels.dense_chain
    monkeypatch.setattr(fake_device.kernels, "dense_chain", lambda *a: calls.append(a) or wrapped(*a))
    x = _inputs(NETS["relu"], n=6)
    for method, kw in (("gradient", {}), ("lrp.epsilon", {})):
        R = fake_device.attribute_on_device(_rp_net("relu"), x, method, target=1, **kw)
        assert not calls
        _assert_not_fused(spy)
        engine = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net("relu"), x, method, target=1, **kw))
        assert_blas_close(np.asarray(R), engine)


def test_reference_fallback_under_forward_reuse(monkeypatch, spy):
    """A forward-reuse cache (randomization studies) keeps the engine, whose passes it serves."""
    from relprop.core.reuse import ForwardReuse

    x = _inputs(NETS["relu"], n=6)
    with ForwardReuse(_rp_net("relu")).active():
        R = rp.attribute(_rp_net("relu"), x, "gradient", target=0)
    _assert_not_fused(spy)
    engine = _engine(monkeypatch, spy, lambda: rp.attribute(_rp_net("relu"), x, "gradient", target=0))
    assert_blas_close(R, engine)


# --------------------------------------------------------------------------------------------
# 4. the kernel's parts are independent
# --------------------------------------------------------------------------------------------
def _run_parts(args, parts):
    """The kernel's parts 0..parts-1 one after another, on fresh outputs (NaN: unwritten rows show)."""
    a = list(args)
    a[A_TARGETS] = np.zeros_like(args[A_TARGETS]) if args[A_ARGMAX] else args[A_TARGETS].copy()
    a[A_SCORES] = np.full_like(args[A_SCORES], np.nan)
    a[A_OUT] = np.full_like(args[A_OUT], np.nan)
    for part in range(parts):
        KMOD.dense_chain.kernel(*a, part, parts)
    return a[A_TARGETS], a[A_SCORES], a[A_OUT]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("method,kw,sign,call", [
    ("gradient", {}, "signed", {}),
    ("gradient_x_input", {}, "signed", {"targets": "all"}),
    ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}, "signed", {"targets": [1, 2]}),
    ("lrp.z_plus", {}, "nonneg", {}),
    ("lrp", {"rules": rp.composites.EpsilonPlusFlat()}, "signed", {"target": 2}),
], ids=["gradient-argmax", "gradient_x_input-all", "alpha2beta1-two", "z_plus-nonneg-argmax", "EpsilonPlusFlat"])
def test_reference_kernel_parts_give_identical_bits(spy, method, kw, sign, call, dtype):
    net = NETS["relu_sigmoid"]
    x = _inputs(net, n=1000, sign=sign, seed=9, dtype=dtype)
    R = rp.attribute(_rp_net("relu_sigmoid"), x, method, **kw, **call)
    _assert_fused(spy)
    assert len(spy.calls) == 1
    args = spy.calls[0]
    tiles = -(-args[A_X].shape[0] // int(args[A_TILE]))
    assert tiles >= 5, tiles  # every part of the 5-way split has a tile
    t1, s1, o1 = _run_parts(args, 1)
    assert not np.isnan(o1).any() and not np.isnan(s1).any()
    for parts in (2, 5):
        tp, sp, op = _run_parts(args, parts)
        np.testing.assert_array_equal(tp, t1)
        np.testing.assert_array_equal(sp, s1)
        np.testing.assert_array_equal(op, o1)
    # the call the API made (split over relprop's threads when large) wrote the same bits
    np.testing.assert_array_equal(spy.written[0][2], o1)
    np.testing.assert_array_equal(spy.written[0][1], s1)
    assert R.size == o1.size


# --------------------------------------------------------------------------------------------
# 5. bad input, read-only input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon"])
def test_errors_target_out_of_range(spy, method):
    net_rp, x = _rp_net("relu"), _inputs(NETS["relu"], n=4)
    with pytest.raises(ValueError, match=r"target 3 is out of range for a model with 3 outputs \(expected 0\.\.2\)"):
        rp.attribute(net_rp, x, method, target=3)
    with pytest.raises(ValueError, match=r"target values must lie in 0\.\.2 .*got min -1, max 1"):
        rp.attribute(net_rp, x, method, target=np.array([0, 1, -1, 0]))
    with pytest.raises(ValueError, match=r"targets must lie in 0\.\.2 for a model with 3 outputs"):
        rp.attribute(net_rp, x, method, targets=[0, 3])
    with pytest.raises(ValueError, match=r"targets must lie in 0\.\.2"):
        rp.attribute(net_rp, x, method, targets=np.array([[0, 1]] * 3 + [[5, 0]]))
    assert not spy.calls  # refused before any kernel ran


@pytest.mark.parametrize("bad", [3, -1])
@pytest.mark.parametrize("mode", ["gradient", "lrp.alpha_beta"])
def test_errors_kernel_refuses_a_bad_target(spy, mode, bad):
    """Called directly with a class the score layer does not have, the kernel raises ValueError
    (no out-of-bounds write), through the public function -- whose last tiles run on relprop's
    worker thread where there are two CPUs (the result has over 32768 elements) -- and through
    its compiled parts alike."""
    n = 2400
    x = _inputs(NETS["relu"], n=n)
    rp.attribute(_rp_net("relu"), x, mode, target=np.arange(n) % 3)
    _assert_fused(spy)
    args = list(spy.calls[0])
    tg = args[A_TARGETS].copy()
    tg[n - 5, 0] = bad  # in the last tile
    args[A_TARGETS] = tg
    with pytest.raises(ValueError, match="a target is not a class of the score layer"):
        KMOD.dense_chain(*args)
    with pytest.raises(ValueError, match="a target is not a class of the score layer"):
        KMOD.dense_chain.kernel(*args, 0, 1)
    bad_out = list(args)
    bad_out[A_OUT] = np.empty((n, 2, 14), args[A_OUT].dtype)  # K does not fit the targets
    with pytest.raises(ValueError, match="do not fit the chain"):
        KMOD.dense_chain(*bad_out)


@pytest.mark.parametrize("kind", ["setflags", "memmap"])
@pytest.mark.parametrize("method,kw", [("gradient", {}), ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}),
                                        ("lrp.z_plus", {})])
def test_errors_read_only_inputs_work(tmp_path, spy, kind, method, kw):
    x = _inputs(NETS["relu"], n=150, sign="nonneg" if method == "lrp.z_plus" else "signed")
    expected = rp.attribute(_rp_net("relu"), x, method, targets=[0, 2], **kw)
    if kind == "setflags":
        xr = x.copy()
        xr.setflags(write=False)
    else:
        path = tmp_path / "x.npy"
        np.save(path, x)
        xr = np.load(path, mmap_mode="r")
        assert isinstance(xr, np.memmap)
    assert not xr.flags.writeable
    spy.reset()
    R = rp.attribute(_rp_net("relu"), xr, method, targets=[0, 2], **kw)
    _assert_fused(spy)
    assert_blas_close(R, expected)
    e = rp.Explainer(_rp_net("relu"), method, **kw).explain(xr)
    assert_blas_close(e.attribution, rp.attribute(_rp_net("relu"), x, method, **kw))


def test_reference_small_batches_take_the_engine(monkeypatch):
    """Below ``MIN_ROWS`` rows the engine runs (no first compile of the kernel for a few rows), from
    ``MIN_ROWS`` on the kernel; both give the engine's result."""
    calls = []
    kernel = CPU.dense_chain
    monkeypatch.setattr(CPU, "dense_chain", lambda *a: (calls.append(a[0].shape[0]), kernel(*a))[1])
    net = _rp_net("relu")
    for n, fused in ((7, False), (DC.MIN_ROWS - 1, False), (DC.MIN_ROWS, True)):
        x = _inputs(NETS["relu"], n=n)
        calls.clear()
        got = rp.attribute(net, x, "lrp.epsilon")
        assert bool(calls) == fused, (n, calls)
        with monkeypatch.context() as mp:
            mp.setattr(DC, "ENABLED", False)
            ref = rp.attribute(net, x, "lrp.epsilon")
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


@pytest.mark.parametrize("dtype,targets", [(np.float64, None), (np.float32, [0, 1, 2])])
def test_reference_wide_inputs_keep_batches_the_kernel_takes(monkeypatch, dtype, targets):
    """A 784-input MLP (an MNIST MLP's first layer fits the tiles) in float64, or with three targets:
    the internal batches sized for the kernel's inputs and results are still at least ``MIN_ROWS``
    rows, so the kernel runs them (only a remainder below ``MIN_ROWS`` takes the engine), and the
    result is the engine's."""
    calls = []
    kernel = CPU.dense_chain
    monkeypatch.setattr(CPU, "dense_chain", lambda *a: (calls.append(a[0].shape[0]), kernel(*a))[1])
    peer = _mlp("wide", [784, 32, 32, 10], ("relu", "relu"), seed=5)
    net = peer.relprop(np.float64)
    n = 3 * DC.MIN_ROWS + 40
    x = np.ascontiguousarray(peer.inputs(seed=3, n=n, dtype=np.float64).astype(dtype))
    got = rp.attribute(net, x, "lrp.epsilon", targets=targets)
    assert calls and min(calls) >= DC.MIN_ROWS and sum(calls) >= n - DC.MIN_ROWS, calls
    with monkeypatch.context() as mp:
        mp.setattr(DC, "ENABLED", False)
        ref = rp.attribute(net, x, "lrp.epsilon", targets=targets)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(got, ref, rtol=0, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("n,max_memory", [(70_000, "2GB"), (20_000, "24MB")])
def test_reference_runner_chunks_are_one_kernel_batch(monkeypatch, n, max_memory):
    """A dataset job on an MLP: each chunk runs as one internal batch of the Dense-chain kernel
    (its per-row working set counted in the chunk size, so a smaller ``max_memory`` gives smaller
    chunks), and the stored attributions, targets and scores equal one ``explain`` call."""
    from relprop.runner import job

    calls = []
    kernel = CPU.dense_chain
    monkeypatch.setattr(CPU, "dense_chain", lambda *a: (calls.append(a[0].shape[0]), kernel(*a))[1])
    net = _rp_net("relu")
    x = _inputs(NETS["relu"], n=n, seed=9)
    ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat())
    res = ex.map(x, max_memory=max_memory, progress=False)
    rows = res.meta["chunk_rows"]
    chunks = [min(rows, n - i) for i in range(0, n, rows)]
    assert rows <= job.MAX_CHUNK_ROWS and len(chunks) > 1
    assert sorted(calls) == sorted(c for c in chunks if c >= DC.MIN_ROWS), (calls, chunks)
    e = ex.explain(x)
    np.testing.assert_allclose(np.asarray(res.attributions), e.attribution, rtol=0,
                               atol=1e-12 * np.abs(e.attribution).max())
    np.testing.assert_array_equal(np.asarray(res.targets), e.targets)
    np.testing.assert_allclose(np.asarray(res.scores), e.scores, rtol=1e-12, atol=0)


def test_reference_runner_resume_takes_the_stores_chunks_as_kernel_batches(tmp_path, monkeypatch):
    """An MLP job stopped after two chunks and resumed with another ``max_memory`` continues with the
    store's chunk size, each chunk still one kernel batch, and ends equal to one ``explain`` call."""
    from relprop.runner import job

    calls = []
    kernel = CPU.dense_chain
    monkeypatch.setattr(CPU, "dense_chain", lambda *a: (calls.append(a[0].shape[0]), kernel(*a))[1])
    net = _rp_net("relu")
    x = _inputs(NETS["relu"], n=20_000, seed=11)
    ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat())
    compute = job.Chunk.compute
    seen = []

    def stop_after_two(self, *a, **kw):
        seen.append(1)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return compute(self, *a, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(job.Chunk, "compute", stop_after_two)
        with pytest.raises(KeyboardInterrupt):
            ex.map(x, out=tmp_path / "s", max_memory="8MB", progress=False)
    rows = rp.open_attributions(tmp_path / "s").meta["chunk_rows"]
    assert DC.MIN_ROWS <= rows < 20_000
    calls.clear()
    res = ex.map(x, out=tmp_path / "s", max_memory="2MB", progress=False)  # would plan smaller chunks
    assert res.complete and res.meta["chunk_rows"] == rows
    assert calls and max(calls) == rows and all(c == rows for c in calls[:-1]), calls
    e = ex.explain(x)
    np.testing.assert_allclose(np.asarray(res.attributions), e.attribution, rtol=0,
                               atol=1e-12 * np.abs(e.attribution).max())


def test_errors_runner_nan_in_a_chunk_keeps_the_chunks_before(tmp_path):
    """A NaN in chunk 3 of an MLP job (its chunks prepared by the reader thread): the job stops with
    a message naming chunk 3's rows, and chunks 0..2 are finished in the store."""
    from relprop.runner.job import JobError

    net = _rp_net("relu")
    x = _inputs(NETS["relu"], n=20_000, seed=12)
    ex = rp.Explainer(net, "lrp.epsilon")
    plan = ex.map(x[:20_000], out=tmp_path / "probe", max_memory="8MB", progress=False)
    rows = plan.meta["chunk_rows"]
    assert DC.MIN_ROWS <= rows and 20_000 // rows >= 5
    bad = x.copy()
    bad[3 * rows + 7, 2] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(JobError, match=f"rows {3 * rows}\\.\\.{4 * rows - 1}"):
        ex.map(str(tmp_path / "bad.npy"), out=tmp_path / "o", max_memory="8MB", progress=False)
    part = rp.open_attributions(tmp_path / "o")
    assert part.finished_rows()[:3 * rows].all() and not part.finished_rows()[3 * rows:].any()


def test_reference_a_tiny_epsilon_keeps_the_general_ratio(monkeypatch, spy):
    """An epsilon that float32 cannot hold (1e-46 rounds to 0): the fused kernel takes the general
    ratio (epsilon in float64), as the engine does, so an all-zero input row (zero relevance over a
    zero denominator in the first layer, no bias) stays finite and equals the engine's result."""
    rng = np.random.default_rng(4)
    net = rp.Sequential(rp.Dense(rng.normal(0, 0.5, (6, 5)), np.zeros(6)), rp.ReLU(),
                        rp.Dense(rng.normal(0, 0.5, (3, 6)), np.zeros(3)))
    x = rng.standard_normal((300, 5)).astype(np.float32)
    x[::7] = 0.0
    R = rp.attribute(net, x, "lrp.epsilon", epsilon=1e-46)
    _assert_fused(spy)
    assert np.isfinite(R).all()
    engine = _engine(monkeypatch, spy, lambda: rp.attribute(net, x, "lrp.epsilon", epsilon=1e-46))
    np.testing.assert_allclose(R, engine, rtol=0, atol=1e-5 * np.abs(engine).max())
    assert (R[::7] == 0).all()
