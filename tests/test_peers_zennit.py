"""Peer agreement: relprop's LRP / Deep Taylor against Zennit 0.5.1.

relprop starts LRP from ``score_c * e_c``; Zennit's ``Gradient`` attributor is given the same
start signal through ``attr_output = one_hot(target) * output``.  Relevance passes unchanged
through activations (Zennit ``Pass``), AvgPool uses Zennit's ``Norm`` and MaxPool/Flatten use the
plain gradient -- exactly the layer map ``[(Activation, Pass()), (AvgPool, Norm()),
(Convolution, rule), (Linear, rule)]``.

Tolerance: per sample, max|R_relprop - R_zennit| <= 1e-4 * max|R_zennit| in float32; a failure is
re-run in float64 on both sides and the message says whether it is float32 noise or a real
difference (see ``peer_models.assert_agree``).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

# Peers are required: these imports are unconditional so a missing peer fails collection.
import zennit  # noqa: F401
from zennit.attribution import Gradient
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    NameLayerMapComposite,
    SpecialFirstLayerMapComposite,
)
from zennit import rules as zr
from zennit.types import Activation, AvgPool, Convolution

from peer_models import (
    TARGET_KINDS,
    assert_agree,
    make_net,
    mismatch,
    relprop_target,
    resolved_targets,
    rp,
    to_torch,
)

pytestmark = pytest.mark.peers

LINEAR_TYPES = (Convolution, torch.nn.Linear)

# (net, target kind) combinations every rule is checked on: all nets, all target kinds.
NET_TARGETS = [
    ("vgg_relu", "none"),
    ("vgg_relu", "array"),
    ("vgg_tanh", "int"),
    ("vgg_sigmoid", "array"),
    ("strided", "array"),
    ("mlp", "none"),
]


# --------------------------------------------------------------------------------------------
# Zennit driver
# --------------------------------------------------------------------------------------------
def zennit_lrp(net, x: np.ndarray, target_kind: str, composite, tdtype) -> np.ndarray:
    """Zennit relevance with start signal one_hot(target) * output (target's score on target)."""
    model = net.torch(tdtype)
    xt = to_torch(x, tdtype, requires_grad=True)
    with torch.no_grad():
        logits = model(xt).numpy()
    tgt = torch.as_tensor(resolved_targets(target_kind, net, logits))

    def attr_output(out):
        out = out.detach()
        return torch.nn.functional.one_hot(tgt, out.shape[1]).to(out.dtype) * out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=model, composite=composite) as attributor:
            _, relevance = attributor(xt, attr_output)
    return relevance.detach().numpy()


def _zparams(include_bias: bool):
    return None if include_bias else ["bias"]


def zero_safe(z: torch.Tensor) -> torch.Tensor:
    """LRP-0 denominator: z itself, with exact zeros mapped to inf so that R/z := 0 there."""
    return torch.where(z == 0, torch.full_like(z, float("inf")), z)


def base_map():
    return [(Activation, zr.Pass()), (AvgPool, zr.Norm())]


# --------------------------------------------------------------------------------------------
# Rule table: one entry per (rule, parameters)
#   method:  relprop method string (None: only reachable through rules=[...])
#   params:  relprop keyword parameters for the method string (include_bias added if has_bias)
#   rp:      (net, include_bias, np_dtype) -> relprop rule object
#   zen:     (net, include_bias, torch_dtype) -> zennit hook
#   first_only: the rule is put on the first linear layer only, every other layer gets the
#               default Epsilon (ZBox: its bounds only make sense in input space)
# --------------------------------------------------------------------------------------------
RULES = {
    "epsilon": dict(
        method="lrp.epsilon", params={},
        rp=lambda n, ib, d: rp().rules.Epsilon(include_bias=ib),
        zen=lambda n, ib, d: zr.Epsilon(epsilon=1e-6, zero_params=_zparams(ib)),
    ),
    "epsilon_0.25": dict(
        method="lrp.epsilon", params={"epsilon": 0.25},
        rp=lambda n, ib, d: rp().rules.Epsilon(epsilon=0.25, include_bias=ib),
        zen=lambda n, ib, d: zr.Epsilon(epsilon=0.25, zero_params=_zparams(ib)),
    ),
    "z": dict(
        method="lrp.z", params={},
        rp=lambda n, ib, d: rp().rules.Z(include_bias=ib),
        zen=lambda n, ib, d: zr.Epsilon(epsilon=zero_safe, zero_params=_zparams(ib)),
    ),
    "gamma": dict(
        method="lrp.gamma", params={},
        rp=lambda n, ib, d: rp().rules.Gamma(include_bias=ib),
        zen=lambda n, ib, d: zr.Gamma(gamma=0.25, stabilizer=1e-6, zero_params=_zparams(ib)),
    ),
    "gamma_1.0_eps1e-3": dict(
        method="lrp.gamma", params={"gamma": 1.0, "epsilon": 1e-3},
        rp=lambda n, ib, d: rp().rules.Gamma(gamma=1.0, epsilon=1e-3, include_bias=ib),
        zen=lambda n, ib, d: zr.Gamma(gamma=1.0, stabilizer=1e-3, zero_params=_zparams(ib)),
    ),
    "alpha1beta0": dict(
        method="lrp.alpha_beta", params={},
        rp=lambda n, ib, d: rp().rules.AlphaBeta(include_bias=ib),
        zen=lambda n, ib, d: zr.AlphaBeta(alpha=1.0, beta=0.0, stabilizer=1e-6, zero_params=_zparams(ib)),
    ),
    "alpha2beta1": dict(
        method="lrp.alpha_beta", params={"alpha": 2.0, "beta": 1.0},
        rp=lambda n, ib, d: rp().rules.AlphaBeta(alpha=2.0, beta=1.0, include_bias=ib),
        zen=lambda n, ib, d: zr.AlphaBeta(alpha=2.0, beta=1.0, stabilizer=1e-6, zero_params=_zparams(ib)),
    ),
    "zplus": dict(
        method="lrp.z_plus", params={},
        rp=lambda n, ib, d: rp().rules.ZPlus(include_bias=ib),
        zen=lambda n, ib, d: zr.ZPlus(stabilizer=1e-6, zero_params=_zparams(ib)),
    ),
    "zplus_eps1e-2": dict(
        method="lrp.z_plus", params={"epsilon": 1e-2},
        rp=lambda n, ib, d: rp().rules.ZPlus(epsilon=1e-2, include_bias=ib),
        zen=lambda n, ib, d: zr.ZPlus(stabilizer=1e-2, zero_params=_zparams(ib)),
    ),
    "flat": dict(
        method=None, has_bias=False,
        rp=lambda n, ib, d: rp().rules.Flat(),
        zen=lambda n, ib, d: zr.Flat(stabilizer=1e-6),
    ),
    "wsquare": dict(
        method=None,
        rp=lambda n, ib, d: rp().rules.WSquare(include_bias=ib),
        zen=lambda n, ib, d: zr.WSquare(stabilizer=1e-6, zero_params=_zparams(ib)),
    ),
    "zbox_first": dict(
        method=None, has_bias=False, first_only=True,
        rp=lambda n, ib, d: rp().rules.ZBox(*n.bounds(d)),
        zen=lambda n, ib, d: zr.ZBox(*n.torch_bounds(d), stabilizer=1e-6),
    ),
}


def _rule_cases():
    cases = []
    for rule, spec in RULES.items():
        biases = (True, False) if spec.get("has_bias", True) else (True,)
        apis = ("method", "rules") if spec["method"] else ("rules",)
        for net_name, tkind in NET_TARGETS:
            for ib in biases:
                for api in apis:
                    cases.append(pytest.param(
                        rule, net_name, tkind, ib, api,
                        id=f"{rule}-{net_name}-target_{tkind}-bias_{ib}-{api}",
                    ))
    return cases


@pytest.mark.parametrize("rule,net_name,target_kind,include_bias,api", _rule_cases())
def test_rule_on_every_linear_layer(rule, net_name, target_kind, include_bias, api):
    spec = RULES[rule]
    net = make_net(net_name)
    target = relprop_target(target_kind, net)
    has_bias = spec.get("has_bias", True)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        if spec.get("first_only"):
            rp_rules = [spec["rp"](net, include_bias, npd)] + [
                rp().rules.Epsilon() for _ in range(net.n_linear - 1)]
        else:
            rp_rules = [spec["rp"](net, include_bias, npd) for _ in range(net.n_linear)]
        if api == "method":
            params = dict(spec["params"])
            if has_bias:
                params["include_bias"] = include_bias
            r_rp = rp().attribute(net.relprop(npd), x, spec["method"], target=target, **params)
        else:
            r_rp = rp().attribute(net.relprop(npd), x, "lrp", target=target, rules=rp_rules)

        names = net.linear_module_names()
        if spec.get("first_only"):
            name_map = [((names[0],), spec["zen"](net, include_bias, tdt))]
            name_map += [((nm,), zr.Epsilon(epsilon=1e-6)) for nm in names[1:]]
            composite = NameLayerMapComposite(name_map=name_map, layer_map=base_map())
        else:
            hook = spec["zen"](net, include_bias, tdt)
            composite = LayerMapComposite(base_map() + [(Convolution, hook), (torch.nn.Linear, hook)])
        r_z = zennit_lrp(net, x, target_kind, composite, tdt)
        assert r_rp.shape == x.shape and r_rp.dtype == x.dtype
        return r_rp, r_z

    assert_agree(run, f"LRP rule {rule} (include_bias={include_bias}, api={api}) on {net_name}")


@pytest.mark.parametrize("include_bias", [True, False])
@pytest.mark.parametrize("net_name", ["vgg_relu", "strided", "mlp"])
def test_lrp_z_exact_zero_denominators(net_name, include_bias):
    """lrp.z where z == 0 exactly (zero input block / all-zero sample; with include_bias=False the
    first layer's z is then exactly 0 while the relevance arriving there is not): the ratio is 0,
    as Zennit's Epsilon with a stabilizer mapping exact zeros to inf."""
    net = make_net(net_name)

    def run(npd, tdt):
        x = net.inputs(dtype=npd).copy()
        if net.is_image:
            x[0, :, 2:11, 3:12] = 0.0
        else:
            x[0, :12] = 0.0
        x[1] = 0.0
        r_rp = rp().attribute(net.relprop(npd), x, "lrp.z", target=None, include_bias=include_bias)
        assert np.all(np.isfinite(r_rp))
        hook = zr.Epsilon(epsilon=zero_safe, zero_params=_zparams(include_bias))
        comp = LayerMapComposite(base_map() + [(LINEAR_TYPES, hook)])
        return r_rp, zennit_lrp(net, x, "none", comp, tdt)

    assert_agree(run, f"lrp.z with exact zero denominators (include_bias={include_bias}) on {net_name}")


# --------------------------------------------------------------------------------------------
# Composites
# --------------------------------------------------------------------------------------------
def _composite_pair(name: str, net, npd, tdt, params: dict):
    """(relprop composite object, zennit composite) for a composite name and its parameters."""
    C = rp().composites
    if name == "EpsilonGammaBox":
        low, high = net.bounds(npd)
        tlow, thigh = net.torch_bounds(tdt)
        return C.EpsilonGammaBox(low, high, **params), EpsilonGammaBox(tlow, thigh, **params)
    return getattr(C, name)(**params), {
        "EpsilonPlus": EpsilonPlus,
        "EpsilonPlusFlat": EpsilonPlusFlat,
        "EpsilonAlpha2Beta1": EpsilonAlpha2Beta1,
        "EpsilonAlpha2Beta1Flat": EpsilonAlpha2Beta1Flat,
    }[name](**params)


COMPOSITES = ["EpsilonPlus", "EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1", "EpsilonAlpha2Beta1Flat"]

# Parameter sets.  "custom" keeps the stabilizer at its default; "stabilizer" changes it, which
# in Zennit also changes the Norm rule on AvgPool (layer_map_base(stabilizer)).
COMPOSITE_PARAMS = {
    "default": {},
    "custom": {"epsilon": 0.05},
    "stabilizer": {"stabilizer": 1e-3},
}


def _composite_cases():
    cases = []
    for comp in COMPOSITES:
        for i, (net_name, tkind) in enumerate(NET_TARGETS):
            for pname in ("default", "custom"):
                cases.append(pytest.param(comp, pname, net_name, tkind, id=f"{comp}-{pname}-{net_name}-target_{tkind}"))
        cases.append(pytest.param(comp, "stabilizer", "vgg_relu", "array", id=f"{comp}-stabilizer-vgg_relu-target_array"))
    # gamma parameter of EpsilonGammaBox
    cases.append(pytest.param("EpsilonGammaBox", "gamma", "vgg_relu", "none", id="EpsilonGammaBox-gamma-vgg_relu-target_none"))
    cases.append(pytest.param("EpsilonGammaBox", "gamma", "strided", "int", id="EpsilonGammaBox-gamma-strided-target_int"))
    return cases


@pytest.mark.parametrize("composite,param_set,net_name,target_kind", _composite_cases())
def test_composite(composite, param_set, net_name, target_kind):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)
    params = {"gamma": {"gamma": 0.5, "epsilon": 1e-3}}.get(param_set, COMPOSITE_PARAMS.get(param_set))

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        rp_comp, z_comp = _composite_pair(composite, net, npd, tdt, params)
        r_rp = rp().attribute(net.relprop(npd), x, "lrp", target=target, rules=rp_comp)
        r_z = zennit_lrp(net, x, target_kind, z_comp, tdt)
        return r_rp, r_z

    assert_agree(run, f"composite {composite}({params}) on {net_name}")


# --------------------------------------------------------------------------------------------
# Deep Taylor: ZPlus everywhere but the first linear layer (WSquare, or ZBox with bounds)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bounded", [False, True], ids=["wsquare_first", "zbox_first"])
@pytest.mark.parametrize("epsilon", [None, 1e-3], ids=["eps_default", "eps_1e-3"])
@pytest.mark.parametrize("net_name,target_kind", [("vgg_relu", "none"), ("strided", "array"), ("mlp", "int")])
def test_deep_taylor(net_name, target_kind, bounded, epsilon):
    """Zennit 0.5.1 has no Deep Taylor composite; its rules keep the bias by default (``ZPlus``:
    ``+ b+`` in the denominator, ``WSquare``: ``+ b^2``), while relprop's ``deep_taylor`` is the
    published, bias-free method (Montavon et al. 2017). The Zennit counterpart is therefore
    ``ZPlus``/``WSquare`` with ``zero_params=["bias"]`` (``ZBox``'s bias terms cancel anyway)."""
    net = make_net(net_name)
    target = relprop_target(target_kind, net)
    stab = 1e-6 if epsilon is None else epsilon

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        params = {} if epsilon is None else {"epsilon": epsilon}
        if bounded:
            low, high = net.bounds(npd)
            params.update(low=low, high=high)
            first = zr.ZBox(*net.torch_bounds(tdt), stabilizer=stab)
        else:
            first = zr.WSquare(stabilizer=stab, zero_params=["bias"])
        r_rp = rp().attribute(net.relprop(npd), x, "deep_taylor", target=target, **params)
        comp = SpecialFirstLayerMapComposite(
            layer_map=base_map() + [(LINEAR_TYPES, zr.ZPlus(stabilizer=stab, zero_params=["bias"]))],
            first_map=[(LINEAR_TYPES, first)],
        )
        return r_rp, zennit_lrp(net, x, target_kind, comp, tdt)

    assert_agree(run, f"deep_taylor(bounded={bounded}, epsilon={epsilon}) on {net_name}")


# --------------------------------------------------------------------------------------------
# Mixed rule lists (method="lrp", rules=[one rule per Dense/Conv2d, graph order])
# --------------------------------------------------------------------------------------------
def _rule_list(kind: str, net, npd, tdt):
    """(relprop rule list, zennit hooks) -- same rules in the same order."""
    R = rp().rules
    low, high = net.bounds(npd)
    tlow, thigh = net.torch_bounds(tdt)
    if kind == "zbox_gamma_ab_eps_z":  # 5 linear layers (vgg / strided has 4)
        pairs = [
            (R.ZBox(low, high), zr.ZBox(tlow, thigh)),
            (R.Gamma(gamma=0.5), zr.Gamma(gamma=0.5)),
            (R.AlphaBeta(alpha=2.0, beta=1.0), zr.AlphaBeta(alpha=2.0, beta=1.0)),
            (R.Epsilon(epsilon=0.01), zr.Epsilon(epsilon=0.01)),
            (R.Z(), zr.Epsilon(epsilon=zero_safe)),
        ]
    elif kind == "nobias_mix":
        pairs = [
            (R.WSquare(include_bias=False), zr.WSquare(zero_params=["bias"])),
            (R.Gamma(include_bias=False), zr.Gamma(zero_params=["bias"])),
            (R.AlphaBeta(include_bias=False), zr.AlphaBeta(alpha=1.0, beta=0.0, zero_params=["bias"])),
            (R.ZPlus(), zr.ZPlus()),
            (R.Epsilon(include_bias=False), zr.Epsilon(zero_params=["bias"])),
        ]
    elif kind == "flat_zplus_eps":
        pairs = [
            (R.Flat(), zr.Flat()),
            (R.ZPlus(epsilon=1e-4), zr.ZPlus(stabilizer=1e-4)),
            (R.Gamma(gamma=0.1, epsilon=1e-5), zr.Gamma(gamma=0.1, stabilizer=1e-5)),
            (R.Epsilon(epsilon=1e-3), zr.Epsilon(epsilon=1e-3)),
            (R.Epsilon(), zr.Epsilon()),
        ]
    else:  # pragma: no cover
        raise ValueError(kind)
    n = net.n_linear
    pairs = pairs[:n - 1] + [pairs[-1]]  # keep first rules, always end with the last one
    return [p[0] for p in pairs], [p[1] for p in pairs]


@pytest.mark.parametrize("kind", ["zbox_gamma_ab_eps_z", "nobias_mix", "flat_zplus_eps"])
@pytest.mark.parametrize("net_name,target_kind", [("vgg_relu", "array"), ("strided", "none"), ("mlp", "array")])
def test_rule_list(kind, net_name, target_kind):
    net = make_net(net_name)
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        rp_rules, z_hooks = _rule_list(kind, net, npd, tdt)
        assert len(rp_rules) == net.n_linear
        r_rp = rp().attribute(net.relprop(npd), x, "lrp", target=target, rules=rp_rules)
        name_map = [((nm,), hook) for nm, hook in zip(net.linear_module_names(), z_hooks)]
        comp = NameLayerMapComposite(name_map=name_map, layer_map=base_map())
        return r_rp, zennit_lrp(net, x, target_kind, comp, tdt)

    assert_agree(run, f"rule list {kind} on {net_name}")


# --------------------------------------------------------------------------------------------
# Softmax head: explanations start from the Softmax INPUT (the logit), so a relprop net with a
# trailing Softmax must give exactly what Zennit gives on the logit network.
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,zhook", [
    ("lrp.epsilon", lambda: zr.Epsilon()),
    ("lrp.z_plus", lambda: zr.ZPlus()),
], ids=["epsilon", "zplus"])
@pytest.mark.parametrize("target_kind", ["none", "array"])
def test_softmax_head_is_ignored(method, zhook, target_kind):
    net = make_net("vgg_relu")
    target = relprop_target(target_kind, net)

    def run(npd, tdt):
        x = net.inputs(dtype=npd)
        r_rp = rp().attribute(net.relprop(npd, softmax=True), x, method, target=target)
        hook = zhook()
        comp = LayerMapComposite(base_map() + [(LINEAR_TYPES, hook)])
        return r_rp, zennit_lrp(net, x, target_kind, comp, tdt)

    assert_agree(run, f"{method} with Softmax head")


# --------------------------------------------------------------------------------------------
# Sanity: the two builds of every net compute the same function (else nothing above means much)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("net_name", ["vgg_relu", "vgg_tanh", "vgg_sigmoid", "strided", "mlp"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_forward_matches_torch(net_name, dtype):
    net = make_net(net_name)
    x = net.inputs(dtype=dtype)
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    y_rp = np.asarray(net.relprop(dtype)(x))
    with torch.no_grad():
        y_t = net.torch(tdt)(to_torch(x, tdt)).numpy()
    assert y_rp.dtype == dtype
    ok, report = mismatch(y_rp, y_t, rtol=1e-5)
    assert ok, f"forward of {net_name} differs from torch\n{report}"
    # Softmax head: forward applies it
    y_sm = np.asarray(net.relprop(dtype, softmax=True)(x))
    ok, report = mismatch(y_sm, torch.softmax(torch.as_tensor(y_t), 1).numpy(), rtol=1e-5)
    assert ok, f"softmax forward of {net_name} differs from torch\n{report}"


def test_target_kinds_are_all_covered():
    kinds = {t for _, t in NET_TARGETS}
    assert kinds == set(TARGET_KINDS)
