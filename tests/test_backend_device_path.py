"""The GPU code path, checked on the CPU through a strict host-emulated device (``fake_device``).

Every method the GPU backend serves runs with device arrays end to end (no host array may meet
a device array, every kernel argument must be on the device) and must give the CPU's result:
the emulated device runs the same CPU kernels, so any difference is a plumbing bug. The same
matrix runs on a real GPU in ``test_gpu_parity.py``. Also: out-of-memory splitting, the
``backend=`` / ``allow_tf32=`` switches, torch tensors in and out, and the CPU-only methods'
error.
"""
import zlib

import numpy as np
import pytest

import fake_device as fd
import reference_numpy as ref
import relprop as rp
from relprop.core.plan import compiled
from relprop.core import composites as C
from test_models_ir import residual_net


@pytest.fixture(autouse=True)
def device():
    fd.install()
    yield
    fd.uninstall()
    fd.XP.limit = None


def _nets():
    rng = np.random.default_rng(5)
    yield "dense", ref.to_relprop(ref.random_dense_net(rng, [6, 9, 7, 4], act="tanh", softmax_last=True), rp), (6,)
    spec, shape = ref.random_conv_net(rng, pool="max", second_conv=True, n_out=4)
    yield "conv-max", ref.to_relprop(spec, rp), shape
    spec, shape = ref.random_conv_net(rng, pool="avg", stride=2, padding=1, act="sigmoid", n_out=4)
    yield "conv-avg-s2", ref.to_relprop(spec, rp), shape
    yield "residual", residual_net(), (3, 6, 6)
    yield "residual-softplus", residual_net(act="Softplus"), (3, 6, 6)


NETS = list(_nets())
IDS = [n[0] for n in NETS]

CASES = [
    ("gradient", {}), ("saliency", {}), ("gradient_x_input", {}), ("guided_backprop", {}), ("deconvnet", {}),
    ("rectgrad", {"q": 90.0}), ("excitation_backprop", {}),
    ("integrated_gradients", {"steps": 8}), ("integrated_gradients", {"steps": 5, "scheme": "riemann_trapezoid"}),
    ("deeplift.rescale", {"baseline": 0.1}), ("deeplift.reveal_cancel", {"conv_rule": "reveal_cancel"}),
    ("lrp.z", {}), ("lrp.epsilon", {"epsilon": 0.01}), ("lrp.gamma", {"gamma": 0.5}),
    ("lrp.alpha_beta", {"alpha": 2.0, "beta": 1.0}), ("lrp.z_plus", {}), ("lrp.flat", {}), ("lrp.w_square", {}),
    ("lrp", {"rules": C.EpsilonPlusFlat()}), ("lrp", {"rules": C.EpsilonAlpha2Beta1()}),
    ("lrp", {"rules": C.EpsilonGammaBox(low=-3.0, high=3.0)}), ("deep_taylor", {}),
]


PATTERN_METHODS = ("patternnet", "pattern_attribution")


def test_every_gpu_method_is_in_the_matrix():
    gpu = {name for name, m in rp.METHODS.items() if "gpu" in m.backends}
    assert {m for m, _ in CASES} | set(PATTERN_METHODS) | {"smoothgrad"} == gpu  # smoothgrad: test_smoothgrad_on_device


@pytest.mark.parametrize("method", PATTERN_METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pattern_methods_on_device(method, dtype):
    name, net, shape = NETS[1]
    fd.uninstall()
    pats = rp.fit_patterns(net, _x(shape, n=200, seed=4), batch_size=64)
    fd.install()
    x = _x(shape, dtype=dtype)
    host = rp.attribute(net, x, method, target=2, patterns=pats)
    dev = rp.attribute(net, fd.to_device(x), method, target=2, patterns=pats)
    assert isinstance(dev, fd.DeviceArray)
    _close(dev.view(np.ndarray), host, dtype)
    multi = rp.attribute(net, x, method, targets="all", patterns=pats)
    _close(multi[:, 2], host, dtype)
    dmulti = rp.attribute(net, fd.to_device(x), method, targets="all", patterns=pats)
    _close(dmulti.view(np.ndarray), multi, dtype)


def _x(shape, n=5, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(dtype)


def _close(a, b, dtype):
    tol = (1e-5 if dtype == np.float32 else 1e-12) * max(np.abs(b).max(), 1e-30)
    np.testing.assert_allclose(a, b, rtol=0, atol=tol)


@pytest.mark.parametrize("name,net,shape", NETS, ids=IDS)
@pytest.mark.parametrize("method,params", CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_device_matches_cpu(name, net, shape, method, params):
    dtype = np.float64 if zlib.crc32((name + method).encode()) % 2 else np.float32
    x = _x(shape, dtype=dtype)
    target = np.arange(5) % 4
    host = rp.attribute(net, x, method, target=target, **params)
    dev = rp.attribute(net, fd.to_device(x), method, target=target, **params)
    assert isinstance(dev, fd.DeviceArray) and dev.dtype == dtype and dev.shape == x.shape
    _close(dev.view(np.ndarray), host, dtype)


@pytest.mark.parametrize("method,params", [("gradient", {}), ("deeplift.reveal_cancel", {}), ("lrp.epsilon", {}),
                                           ("lrp", {"rules": C.EpsilonPlusFlat()})])
def test_multi_target_on_device(method, params):
    name, net, shape = NETS[3]
    x = _x(shape)
    host = rp.attribute(net, x, method, targets="all", **params)
    dev = rp.attribute(net, fd.to_device(x), method, targets=[0, 1, 2, 3], **params)
    assert isinstance(dev, fd.DeviceArray) and dev.shape == (5, 4) + shape
    _close(dev.view(np.ndarray), host, np.float32)


def test_device_baselines_and_targets():
    """Baselines and per-sample targets given as device arrays (as CuPy users would)."""
    name, net, shape = NETS[1]
    x = _x(shape)
    base = _x(shape, seed=1) * 0.1
    t = np.array([3, 2, 1, 0, 3])
    host = rp.attribute(net, x, "integrated_gradients", target=t, baseline=base, steps=6)
    dev = rp.attribute(net, fd.to_device(x), "integrated_gradients", target=t, baseline=fd.to_device(base), steps=6)
    _close(dev.view(np.ndarray), host, np.float32)


@pytest.mark.parametrize("kind", ["mean", "squared", "var"])
def test_smoothgrad_on_device(kind):
    name, net, shape = NETS[1]
    x = _x(shape)
    host = rp.attribute(net, x, "smoothgrad", base="lrp.epsilon", samples=4, sigma=0.2, kind=kind, seed=3)
    dev = rp.attribute(net, fd.to_device(x), "smoothgrad", base="lrp.epsilon", samples=4, sigma=0.2, kind=kind, seed=3)
    assert isinstance(dev, fd.DeviceArray)
    _close(dev.view(np.ndarray), host, np.float32)


def test_forward_on_device():
    name, net, shape = NETS[0]
    x = _x(shape, dtype=np.float64)
    out = rp.forward(net, fd.to_device(x))
    assert isinstance(out, fd.DeviceArray)
    np.testing.assert_allclose(out.view(np.ndarray), rp.forward(net, x), rtol=1e-13)


def test_weights_move_to_the_device_once():
    name, net, shape = NETS[1]
    x = fd.to_device(_x(shape))
    rp.attribute(net, x, "lrp.epsilon", target=0)
    dev = compiled(net, np.float32)._dev  # the device copies of the model's derived weights
    keys = set(dev)
    assert keys and all(isinstance(v, (fd.DeviceArray, tuple)) or hasattr(v, "B") for v in dev.values())
    ids = {k: id(v) for k, v in dev.items()}
    rp.attribute(net, x, "lrp.epsilon", target=1)
    assert set(dev) == keys and {k: id(v) for k, v in dev.items()} == ids  # nothing copied again


def test_out_of_memory_splits_the_batch():
    """An allocation failure halves the batch and retries; results are unchanged and the batch
    size that fitted is remembered for the next call."""
    spec, shape = ref.random_conv_net(np.random.default_rng(9), pool="max", second_conv=True, n_out=4)
    net = ref.to_relprop(spec, rp)  # a fresh model: no remembered batch size
    x = _x(shape, n=64)
    host = rp.attribute(net, x, "lrp.epsilon", target=1)
    rp.core.engine.release_scratch()  # no cached scratch buffers: allocations happen
    per_sample = 4 * int(np.prod(shape)) * 3 * 8  # a few activations' worth per row
    fd.XP.limit = 16 * per_sample
    freed = fd.kernels.freed[0]
    dev = rp.attribute(net, fd.to_device(x), "lrp.epsilon", target=1)
    _close(dev.view(np.ndarray), host, np.float32)
    assert fd.kernels.freed[0] > freed
    fitted = list(compiled(net, np.float32).fit_step.values())
    assert fitted and min(fitted) < 64


def test_out_of_memory_for_one_sample_says_so():
    name, net, shape = NETS[1]
    fd.XP.limit = 8
    with pytest.raises(MemoryError, match=r"one sample of shape \(2, 6, 6\) does not fit"):
        rp.attribute(net, fd.to_device(_x(shape)), "gradient", target=0)


CPU_ONLY = {"occlusion": {"window": 1}, "kernel_shap": {}, "gradcam": {}, "deepshap": {"baselines": np.zeros((1, 2, 6, 6))},
            "rap": {}}


@pytest.mark.parametrize("method", sorted(CPU_ONLY))
def test_cpu_only_methods_say_so(method):
    name, net, shape = NETS[1]
    kw = CPU_ONLY[method]
    with pytest.raises(NotImplementedError, match=f"{method}.*CPU backend only"):
        rp.attribute(net, fd.to_device(_x(shape)), method, target=0, **kw)
    with pytest.raises(NotImplementedError, match="smoothgrad around"):
        rp.attribute(net, fd.to_device(_x(shape)), "smoothgrad", base=method, target=0, **kw)


def test_tf32_switch_is_scoped():
    name, net, shape = NETS[1]
    seen = []
    orig = fd.kernels.im2col

    def spy(*a):
        seen.append(fd.kernels.tf32[0])
        return orig(*a)

    fd.kernels.im2col = spy
    try:
        rp.attribute(net, fd.to_device(_x(shape)), "gradient", target=0, allow_tf32=True)
        assert seen and all(seen)
        seen.clear()
        rp.attribute(net, fd.to_device(_x(shape)), "gradient", target=0)
        assert seen and not any(seen)
    finally:
        fd.kernels.im2col = orig
    assert fd.kernels.tf32[0] is False
    with pytest.raises(TypeError, match="allow_tf32 must be True or False"):
        rp.attribute(net, _x(shape), "gradient", allow_tf32="yes")


def test_backend_switch_errors(monkeypatch):
    name, net, shape = NETS[0]
    with pytest.raises(ValueError, match="backend must be None, 'cpu' or 'gpu'"):
        rp.attribute(net, _x(shape), "gradient", backend="cuda")
    monkeypatch.setitem(__import__("sys").modules, "cupy", None)
    with pytest.raises(ImportError, match=r"backend='gpu' needs CuPy \(pip install 'relprop\[gpu\]'\)"):
        rp.attribute(net, _x(shape), "gradient", backend="gpu")


def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch")
    name, net, shape = NETS[0]
    x = _x(shape)
    t = torch.from_numpy(x.copy()).requires_grad_(True)
    out = rp.attribute(net, t, "lrp.epsilon", target=1)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    # exact: the tensor is converted to the same numpy array, then the same computation
    np.testing.assert_array_equal(out.numpy(), rp.attribute(net, x, "lrp.epsilon", target=1))
    y = rp.forward(net, t)
    assert isinstance(y, torch.Tensor)
