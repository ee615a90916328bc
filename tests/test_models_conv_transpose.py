"""ConvTranspose2d (torch ``nn.ConvTranspose2d`` / ``F.conv_transpose2d``, ONNX ``ConvTranspose``).

relprop stores a transposed convolution as its exact decomposition (Dumoulin & Visin 2016, Sec.
4.5-4.7): a ``ZeroInsert2d`` node (``s - 1`` zeros between pixels, zero padding ``d (k - 1) - p``,
plus ``output_padding`` at the bottom/right; a negative pad crops) and a stride-1 ``Conv2d`` with
the spatially flipped, in/out-swapped weight. Every expected value comes from something that does
not use that decomposition: torch's own ``conv_transpose2d`` (forward, autograd), Captum 0.9
(IntegratedGradients, DeepLift), Zennit 0.5.1 (its rules run the module's own forward, and
``zennit.types.Convolution`` includes ConvTranspose2d), onnxruntime, and a plain-numpy scatter loop
written here for LRP-epsilon.

Models: ``single``: ConvTranspose2d -> ReLU -> Flatten -> Linear for several (k, s, p,
output_padding, groups, dilation); ``unet``: a U-Net decoder step (Ronneberger et al. 2015):
Conv -> ReLU -> MaxPool -> Conv -> ReLU -> ConvTranspose2d(stride 2) -> Concat with the skip ->
Conv -> ReLU -> global average pool -> Linear, as modules (``unet``) and as functions
(``unet_f``: ``F.conv_transpose2d`` with k=3, s=2, p=1, output_padding=1).
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from captum.attr import DeepLift, IntegratedGradients
from zennit import composites as zc
from zennit import rules as zr
from zennit.attribution import Gradient
from zennit.composites import LayerMapComposite
from zennit.types import Activation, AvgPool, Convolution

import relprop as rp
from tolerance import assert_blas_close  # noqa: E402

CLASSES, N = 4, 2
TOL = {np.float32: 1e-5, np.float64: 1e-10}
#: (kernel, stride, padding, output_padding, groups, dilation)
COMBOS = [(3, 2, 1, 1, 1, 1), (4, 2, 1, 0, 1, 1), (2, 2, 0, 0, 1, 1), (3, 1, 1, 0, 1, 1), (5, 3, 2, 2, 1, 1),
          (3, 2, 3, 1, 1, 1), (1, 1, 0, 0, 1, 1), (3, 2, 1, 1, 2, 1), (3, 2, 1, 0, 1, 2)]


def _close(r, ref, rtol, what=""):
    r, ref = np.asarray(r, np.float64), np.asarray(ref, np.float64)
    assert r.shape == ref.shape, (r.shape, ref.shape)
    for i in range(r.shape[0]):
        scale = max(np.abs(ref[i]).max(), 1e-300)
        err = np.abs(r[i] - ref[i]).max()
        assert err <= rtol * scale, f"{what}: sample {i}: max|diff| {err:.3g} > {rtol} * {scale:.3g}"


def _single(combo, dtype=torch.float64, seed=0):
    k, s, p, op, g, d = combo
    torch.manual_seed(seed)
    ct = nn.ConvTranspose2d(4, 6, k, s, p, op, groups=g, dilation=d)
    ho = (5 - 1) * s - 2 * p + d * (k - 1) + op + 1
    wo = (6 - 1) * s - 2 * p + d * (k - 1) + op + 1
    return nn.Sequential(ct, nn.ReLU(), nn.Flatten(), nn.Linear(6 * ho * wo, CLASSES)).to(dtype).eval()


def _single_input(dtype=np.float64, seed=1):
    return np.random.default_rng(seed).standard_normal((N, 4, 5, 6)).astype(dtype)


class UNetStep(nn.Module):
    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.enc, self.down = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.up_w = nn.Parameter(torch.randn(8, 6, 3, 3) * 0.3)
        self.up_b = nn.Parameter(torch.randn(6) * 0.1)
        self.dec = nn.Conv2d(12, 8, 3, padding=1)
        self.pool, self.gap, self.head = nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Linear(8, CLASSES)
        self.r1, self.r2, self.r3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        skip = self.r1(self.enc(x))
        h = self.r2(self.down(self.pool(skip)))
        if self.functional:
            u = F.conv_transpose2d(h, self.up_w, self.up_b, stride=2, padding=1, output_padding=1)
        else:
            u = self.up(h)
        y = self.r3(self.dec(torch.cat([u, skip], dim=1)))
        return self.head(torch.flatten(self.gap(y), 1))


def _unet(functional=False, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return UNetStep(functional).to(dtype).eval()


def _unet_input(dtype=np.float64, seed=1):
    return np.random.default_rng(seed).standard_normal((N, 3, 8, 8)).astype(dtype)


def _import(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rp.from_torch(model, x)


def _targets(model, x):
    with torch.no_grad():
        return (np.argmax(model(torch.from_numpy(x)).numpy(), axis=1) + 1) % CLASSES


MODELS = {"unet": (lambda dt=torch.float64: _unet(False, dt), _unet_input),
          "unet_f": (lambda dt=torch.float64: _unet(True, dt), _unet_input)}
MODELS.update({f"single_{'_'.join(map(str, c))}": (lambda dt=torch.float64, c=c: _single(c, dt), _single_input)
               for c in COMBOS})


def test_imports_structure():
    """ConvTranspose2d imports as ZeroInsert2d + a stride-1, unpadded Conv2d keeping the name."""
    model, x = _unet(), _unet_input()
    net = _import(model, x)
    kinds = {n.name: n.layer.kind for n in net.nodes}
    up = [n for n in net.nodes if n.layer.kind == "ZeroInsert2d"]
    assert len(up) == 1 and up[0].layer.stride == (2, 2) and up[0].layer.pads == (1, 1, 1, 1)
    conv = net.by_name[up[0].name[:-len(".zeros")]]
    assert kinds[conv.name] == "Conv2d" and conv.inputs == (up[0].name,)
    assert conv.layer.stride == (1, 1) and conv.layer.padding == (0, 0)
    w = model.up.weight.detach().numpy()
    np.testing.assert_array_equal(conv.layer.weight, w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_forward_and_gradient_torch(name):
    """Forward = torch (float64 1e-10, float32 1e-5 x max); gradient = torch autograd."""
    build, inp = MODELS[name]
    for tdt, npd in ((torch.float64, np.float64), (torch.float32, np.float32)):
        model, x = build(tdt), inp(npd)
        net = _import(model, x)
        xt = torch.from_numpy(x).requires_grad_(True)
        out = model(xt)
        _close(rp.forward(net, x), out.detach().numpy(), TOL[npd], f"{name} forward")
        tgt = _targets(model, x)
        out[np.arange(N), torch.from_numpy(tgt)].sum().backward()
        _close(rp.attribute(net, x, "gradient", target=tgt), xt.grad.numpy(), 10 * TOL[npd], f"{name} gradient")


@pytest.mark.parametrize("name", ["unet", "unet_f", "single_3_2_1_1_1_1", "single_5_3_2_2_1_1", "single_3_2_1_1_2_1"])
def test_peers_captum_integrated_gradients(name):
    build, inp = MODELS[name]
    model, x = build(), inp()
    net, tgt = _import(model, x), _targets(model, x)
    b = 0.3 * inp(seed=7)
    r = rp.attribute(net, x, "integrated_gradients", target=tgt, baseline=b, steps=16, scheme="gauss_legendre")
    ref = IntegratedGradients(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                               target=torch.from_numpy(tgt), n_steps=16, method="gausslegendre")
    _close(r, ref.detach().numpy(), 1e-7, f"{name} IG")


@pytest.mark.parametrize("name", ["single_3_2_1_1_1_1", "single_4_2_1_0_1_1", "single_3_2_1_0_1_2"])
def test_peers_captum_deeplift(name):
    """DeepLift (rescale): the transposed conv is linear, its multipliers are the gradient
    (no MaxPool here: Captum's rule differs where a ReLU feeds a MaxPool directly)."""
    build, inp = MODELS[name]
    model, x = build(), inp()
    net, tgt = _import(model, x), _targets(model, x)
    b = 0.3 * inp(seed=7)
    r = rp.attribute(net, x, "deeplift.rescale", target=tgt, baseline=b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DeepLift(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(b),
                                        target=torch.from_numpy(tgt))
    _close(r, ref.detach().numpy(), 1e-8, f"{name} DeepLift")


def _zennit(model, x, tgt, composite):
    xt = torch.from_numpy(x).requires_grad_(True)
    t = torch.as_tensor(tgt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Gradient(model=model, composite=composite) as attributor:
            _, rel = attributor(xt, lambda out: F.one_hot(t, out.shape[1]).to(out.dtype) * out.detach())
    return rel.detach().numpy()


def _zennit_epsilon():
    return LayerMapComposite([(Activation, zr.Pass()), (AvgPool, zr.Norm()),
                              (Convolution, zr.Epsilon(1e-6)), (nn.Linear, zr.Epsilon(1e-6))])


@pytest.mark.parametrize("name", ["unet", "single_3_2_1_1_1_1", "single_3_2_3_1_1_1", "single_3_2_1_1_2_1",
                                  "single_3_2_1_0_1_2"])
def test_peers_zennit_lrp_epsilon(name):
    """Zennit's Epsilon on the ConvTranspose2d module (its own forward) = relprop's epsilon rule
    on the stride-1 Conv2d of the decomposition: the same linear map, so the same z_ij. (Not
    ``unet_f``: Zennit hooks modules only, so it takes the plain gradient through the functional
    ``F.conv_transpose2d``.)"""
    build, inp = MODELS[name]
    model, x = build(), inp()
    net, tgt = _import(model, x), _targets(model, x)
    r = rp.attribute(net, x, "lrp.epsilon", target=tgt)
    _close(r, _zennit(model, x, tgt, _zennit_epsilon()), 1e-8, f"{name} epsilon")


@pytest.mark.parametrize("name", ["unet"])
def test_peers_zennit_epsilon_plus_flat(name):
    """EpsilonPlusFlat (Flat on the first conv, z+ on every conv incl. the transposed one)."""
    build, inp = MODELS[name]
    model, x = build(), inp()
    net, tgt = _import(model, x), _targets(model, x)
    r = rp.attribute(net, x, "lrp", target=tgt, rules=rp.composites.EpsilonPlusFlat())
    _close(r, _zennit(model, x, tgt, zc.EpsilonPlusFlat()), 1e-8, f"{name} EpsilonPlusFlat")


FIRST_COMPOSITES = {
    "EpsilonPlusFlat": (lambda: rp.composites.EpsilonPlusFlat(), lambda: zc.EpsilonPlusFlat()),
    "EpsilonAlpha2Beta1Flat": (lambda: rp.composites.EpsilonAlpha2Beta1Flat(), lambda: zc.EpsilonAlpha2Beta1Flat()),
    "EpsilonAlpha2Beta1": (lambda: rp.composites.EpsilonAlpha2Beta1(), lambda: zc.EpsilonAlpha2Beta1()),
    "EpsilonGammaBox": (lambda: rp.composites.EpsilonGammaBox(-4.0, 4.0),
                        lambda: zc.EpsilonGammaBox(torch.tensor(-4.0, dtype=torch.float64),
                                                   torch.tensor(4.0, dtype=torch.float64))),
}


@pytest.mark.parametrize("composite", sorted(FIRST_COMPOSITES))
@pytest.mark.parametrize("name", ["single_3_2_1_1_1_1", "single_3_1_1_0_1_1", "single_3_2_3_1_1_1",
                                  "single_3_2_1_0_1_2"])
def test_peers_zennit_first_layer_rules(name, composite):
    """The transposed conv as the first layer, where Flat (ones), WSquare or ZBox (bounds) meet
    it: relprop gives these value-free modifiers to the real input pixels only, not to the
    inserted or padded zeros of the decomposition (``linear._mask_inserted_zeros``), which is what
    Zennit's rules give on the ConvTranspose2d module; z+ / alpha-beta need no such care."""
    rp_comp, z_comp = FIRST_COMPOSITES[composite]
    build, inp = MODELS[name]
    model, x = build(), inp()
    net, tgt = _import(model, x), _targets(model, x)
    r = rp.attribute(net, x, "lrp", target=tgt, rules=rp_comp())
    _close(r, _zennit(model, x, tgt, z_comp()), 1e-8, f"{name} {composite}")


def _numpy_conv_transpose(x, w, b, s, p):
    """Plain scatter loop: z[n, o, i s - p + a, j s - p + c] += x[n, ci, i, j] w[ci, o, a, c] (+ b),
    and the contributions z_ij themselves (for the LRP check), groups = dilation = 1."""
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    ho, wo = (h - 1) * s - 2 * p + kh, (wd - 1) * s - 2 * p + kw
    contrib = np.zeros((n, c, h, wd, o, ho, wo))
    for i in range(h):
        for j in range(wd):
            for a in range(kh):
                for cc in range(kw):
                    r, q = i * s - p + a, j * s - p + cc
                    if 0 <= r < ho and 0 <= q < wo:
                        contrib[:, :, i, j, :, r, q] += x[:, :, i, j, None] * w[None, :, :, a, cc]
    z = contrib.sum(axis=(1, 2, 3)) + b[None, :, None, None]
    return z, contrib


def test_reference_numpy_lrp_epsilon_and_conservation():
    """LRP-epsilon through ConvTranspose2d -> Flatten -> Dense against a plain-numpy loop
    (R_i = sum_j z_ij / (z_j + eps sign z_j) R_j, Bach et al. 2015, Eq. 58), and conservation
    with zero biases (Montavon et al. 2019, Eq. 5: sum_i R_i = f(x) up to the stabilizer): no
    relevance is lost on the inserted zeros."""
    rng = np.random.default_rng(3)
    w, b = rng.standard_normal((3, 2, 3, 3)), 0.1 * rng.standard_normal(2)
    x = rng.standard_normal((N, 3, 4, 4))
    s, p, eps = 2, 1, 1e-6
    z, contrib = _numpy_conv_transpose(x, w, b, s, p)
    w2 = rng.standard_normal((CLASSES, z[0].size))
    b2 = 0.1 * rng.standard_normal(CLASSES)
    net = rp.Sequential(rp.ConvTranspose2d(w, b, s, p), rp.Flatten(), rp.Dense(w2, b2))
    tgt = np.array([1, 3])
    zf = z.reshape(N, -1)
    out = zf @ w2.T + b2
    stab = lambda v: v + eps * np.where(v >= 0, 1.0, -1.0)  # noqa: E731
    r_out = np.zeros_like(out)
    r_out[np.arange(N), tgt] = out[np.arange(N), tgt]
    r_z = (zf * ((r_out / stab(out)) @ w2)).reshape(z.shape)
    ref = (contrib * (r_z / stab(z))[:, None, None, None]).sum(axis=(4, 5, 6))
    _close(rp.attribute(net, x, "lrp.epsilon", target=tgt), ref, 1e-10, "numpy epsilon")
    net0 = rp.Sequential(rp.ConvTranspose2d(w, None, s, p), rp.Flatten(), rp.Dense(w2))
    r = rp.attribute(net0, x, "lrp.epsilon", target=tgt, epsilon=1e-12)  # eps 1e-6 absorbs ~1e-7 here
    scores = rp.scores(net0, x)[np.arange(N), tgt]
    np.testing.assert_allclose(r.reshape(N, -1).sum(axis=1), scores, rtol=1e-8)


def test_peers_onnx_forward():
    """ONNX opset-17 export (ConvTranspose nodes) -> rp.from_onnx: forward = onnxruntime."""
    ort = pytest.importorskip("onnxruntime")
    for name in ("unet", "unet_f", "single_5_3_2_2_1_1", "single_3_2_1_1_2_1"):
        build, inp = MODELS[name]
        model, x = build(torch.float32), inp(np.float32)
        f = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, torch.from_numpy(x), f, opset_version=17, dynamo=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # onnx.reference's ConvTranspose cannot run group > 1 (a reshape error inside the
            # evaluator): the import's self-check only warns there; onnxruntime is the reference
            net = rp.from_onnx(f.getvalue(), check="warn" if "_2_1" in name[-4:] else "raise")
        assert "ZeroInsert2d" in [n.layer.kind for n in net.nodes]
        sess = ort.InferenceSession(f.getvalue())
        ref = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        _close(rp.forward(net, x), ref, 1e-5, f"{name} onnx")


@pytest.mark.parametrize("method,params", [("gradient", {}), ("deeplift.rescale", {"baseline": 0.1}),
                                           ("lrp.epsilon", {}), ("lrp", {"rules": "flat"})])
def test_reference_device_path_matches_host(method, params):
    """The device code path (``tests/fake_device.py``: the kernels' device branch on host arrays)
    gives the host's numbers, the inserted-zero mask of Flat included."""
    import fake_device as fd

    model, x = _single((3, 2, 1, 1, 1, 1)), _single_input()
    net = _import(model, x)
    if params.get("rules") == "flat":
        params = {"rules": rp.composites.EpsilonPlusFlat()}
    host = rp.attribute(net, x, method, target=1, **params)
    dev = fd.attribute_on_device(net, x, method, target=1, **params)
    np.testing.assert_allclose(dev, host, rtol=1e-12, atol=1e-14)


def test_save_load_roundtrip(tmp_path):
    model, x = _unet(), _unet_input()
    net = _import(model, x)
    path = tmp_path / "unet.npz"
    rp.save(net, str(path))
    back = rp.load(str(path))
    assert [(n.name, n.layer.kind) for n in back.nodes] == [(n.name, n.layer.kind) for n in net.nodes]
    zi = [n.layer for n in back.nodes if n.layer.kind == "ZeroInsert2d"][0]
    assert zi.stride == (2, 2) and zi.pads == (1, 1, 1, 1)
    tgt = _targets(model, x)
    for method in ("gradient", "lrp.epsilon"):
        assert_blas_close(rp.attribute(back, x, method, target=tgt),
                          rp.attribute(net, x, method, target=tgt))


def test_errors_parameters():
    """Bad hyper-parameters fail in the constructor with what was given and what is expected."""
    w = np.zeros((4, 3, 3, 3))
    with pytest.raises(ValueError, match="output_padding must be smaller than stride or dilation"):
        rp.ConvTranspose2d(w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="groups=3 must be >= 1 and divide the 4 input channels"):
        rp.ConvTranspose2d(w, groups=3)
    with pytest.raises(ValueError, match="stride and dilation must be >= 1"):
        rp.ConvTranspose2d(w, stride=0)
    with pytest.raises(ValueError, match="padding and output_padding >= 0"):
        rp.ConvTranspose2d(w, padding=-1)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        rp.ConvTranspose2d(w, np.zeros(4))
    with pytest.raises(ValueError, match="weight must have 4 dimensions"):
        rp.ConvTranspose2d(np.zeros((4, 3, 3)))
    with pytest.raises(TypeError, match="stride must be an int"):
        rp.ConvTranspose2d(w, stride=1.5)
    with pytest.raises(ValueError, match="leaves no output"):
        rp.Sequential(rp.ConvTranspose2d(w, padding=5)).infer_shapes((4, 2, 2))
    with pytest.raises(ValueError, match=r"expects input \(C=4, H, W\)"):
        rp.ConvTranspose2d(w).out_shape((3, 5, 5))
    with pytest.raises(TypeError, match="pads must be 4 ints"):
        rp.ZeroInsert2d(2, (1, 1))


def test_errors_import():
    """What the importers refuse names the op: ONNX asymmetric pads; torch output_size."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "W")
    node = helper.make_node("ConvTranspose", ["x", "W"], ["y"], name="up", strides=[2, 2], pads=[1, 1, 0, 0])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(Exception, match="symmetric pads"):
        rp.from_onnx(m.SerializeToString())

    class WithOutputSize(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(2, 3, 3, stride=2)

        def forward(self, x):
            return self.up(x, output_size=[10, 10])

    with pytest.raises(Exception, match="exactly one input tensor"):
        _import(WithOutputSize().double(), np.zeros((1, 2, 4, 4)))
