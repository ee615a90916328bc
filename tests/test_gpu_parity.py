"""The GPU backend (CuPy) on a real CUDA device gives the CPU backend's attributions.

Every method whose declaration lists the GPU (``rp.METHODS[m].backends``) runs with the parameter matrix of
``test_backend_device_path.CASES`` (the host-emulated twin of this file, which proves the
matrix covers every GPU method) on five nets, and the GPU result must match the CPU result on
the same numpy input to ``1e-4 x max|R_cpu|`` in float32 and ``1e-10 x max|R_cpu|`` in float64.
Also: torch CUDA tensors in and out, ``backend=`` switches, ``targets="all"``, TF32, and batch
splitting when the CuPy memory pool is capped.

Marked ``gpu``; every test skips when CuPy or a CUDA device is missing.
"""
import numpy as np
import pytest

import relprop as rp
from relprop.core import composites as C
from test_backend_device_path import CASES, NETS as DEVICE_NETS, PATTERN_METHODS

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cp():
    cupy = pytest.importorskip("cupy")
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError without a driver or device
        pytest.skip(f"no CUDA device: {type(e).__name__}: {e}")
    if n < 1:
        pytest.skip("no CUDA device")
    yield cupy
    rp.core.engine.release_scratch()
    cupy.get_default_memory_pool().free_all_blocks()


def vgg_net(seed=7):
    """VGG-ish 3x32x32 net: conv3-16 x2, pool, conv3-32 x2, pool, conv3-64, pool, FC 64, FC 10."""
    rng = np.random.default_rng(seed)

    def conv(ci, co):
        w = rng.normal(0, np.sqrt(2.0 / (ci * 9)), (co, ci, 3, 3)).astype(np.float32)
        return rp.Conv2d(w, rng.normal(0, 0.05, co).astype(np.float32), padding=1)

    def dense(fi, fo):
        w = rng.normal(0, np.sqrt(2.0 / fi), (fo, fi)).astype(np.float32)
        return rp.Dense(w, rng.normal(0, 0.05, fo).astype(np.float32))

    return rp.Sequential(
        conv(3, 16), rp.ReLU(), conv(16, 16), rp.ReLU(), rp.MaxPool2d(2),
        conv(16, 32), rp.ReLU(), conv(32, 32), rp.ReLU(), rp.MaxPool2d(2),
        conv(32, 64), rp.ReLU(), rp.MaxPool2d(2), rp.Flatten(),
        dense(64 * 4 * 4, 64), rp.ReLU(), dense(64, 10))


# the emulated-device matrix's nets (same weights) and a VGG-ish net
NETS = [n for n in DEVICE_NETS if n[0] != "residual-softplus"] + [("vgg", vgg_net(), (3, 32, 32))]
BY_NAME = {n[0]: n for n in NETS}
DTYPES = (np.float32, np.float64)


def _x(shape, n=6, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(dtype)


def _classes(net, shape):
    return net.infer_shapes(shape)[net.score_node][0]


def _close(gpu, cpu, dtype, rel=None):
    """max |gpu - cpu| <= rel * max |cpu| (the issue's tolerance by default)."""
    rel = rel if rel is not None else (1e-4 if np.dtype(dtype) == np.float32 else 1e-10)
    scale = max(float(np.abs(cpu).max()), 1e-30)
    err = float(np.abs(np.asarray(gpu, np.float64) - cpu).max())
    assert err <= rel * scale, f"max abs diff {err:.3g} > {rel:g} x max|R_cpu| ({scale:.3g})"


MATRIX = [(ni, ci) for ni in range(len(NETS)) for ci in range(len(CASES))]


@pytest.mark.parametrize("ni,ci", MATRIX, ids=[f"{NETS[ni][0]}-{CASES[ci][0]}-{ci}" for ni, ci in MATRIX])
def test_gpu_matches_cpu(cp, ni, ci):
    _, net, shape = NETS[ni]
    method, params = CASES[ci]
    dtype = DTYPES[(ni + ci) % 2]  # every method meets both dtypes across the nets
    x = _x(shape, dtype=dtype)
    target = np.arange(len(x)) % _classes(net, shape)
    host = rp.attribute(net, x, method, target=target, **params)
    dev = rp.attribute(net, cp.asarray(x), method, target=target, **params)
    assert isinstance(dev, cp.ndarray) and dev.dtype == dtype and dev.shape == x.shape
    _close(cp.asnumpy(dev), host, dtype)


_PATTERNS = {}


def _patterns(net_name):
    """Patterns fitted on the CPU, once per net (fitting dominates these tests' time)."""
    if net_name not in _PATTERNS:
        _, net, shape = BY_NAME[net_name]
        _PATTERNS[net_name] = rp.fit_patterns(net, _x(shape, n=64, seed=4), batch_size=64)
    return _PATTERNS[net_name]


@pytest.mark.parametrize("method", PATTERN_METHODS)
@pytest.mark.parametrize("net_name", ["conv-max", "vgg"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_pattern_methods_match_cpu(cp, method, net_name, dtype):
    """Patterns fitted on the CPU, attributions on both backends (one target and all)."""
    _, net, shape = BY_NAME[net_name]
    pats = _patterns(net_name)
    x = _x(shape, dtype=dtype)
    host = rp.attribute(net, x, method, target=2, patterns=pats)
    dev = rp.attribute(net, cp.asarray(x), method, target=2, patterns=pats)
    assert isinstance(dev, cp.ndarray) and dev.dtype == dtype
    _close(cp.asnumpy(dev), host, dtype)
    multi = rp.attribute(net, x, method, targets="all", patterns=pats)
    dmulti = rp.attribute(net, cp.asarray(x), method, targets="all", patterns=pats)
    assert dmulti.shape == multi.shape
    _close(cp.asnumpy(dmulti), multi, dtype)


MULTI = [("gradient", {}), ("deeplift.reveal_cancel", {}), ("lrp.epsilon", {}), ("deep_taylor", {}),
         ("lrp", {"rules": C.EpsilonPlusFlat()}), ("lrp", {"rules": C.EpsilonGammaBox(low=-3.0, high=3.0)})]


@pytest.mark.parametrize("net_name", ["residual", "vgg"])
@pytest.mark.parametrize("method,params", MULTI, ids=[f"{m}-{i}" for i, (m, _) in enumerate(MULTI)])
def test_all_targets_match_cpu(cp, net_name, method, params):
    _, net, shape = BY_NAME[net_name]
    x = _x(shape, n=4)
    host = rp.attribute(net, x, method, targets="all", **params)
    dev = rp.attribute(net, cp.asarray(x), method, targets="all", **params)
    assert isinstance(dev, cp.ndarray) and dev.shape == (4, _classes(net, shape)) + shape
    _close(cp.asnumpy(dev), host, np.float32)


def test_torch_cuda_tensor_in_and_out(cp):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA")
    _, net, shape = BY_NAME["vgg"]
    x = _x(shape)
    host = rp.attribute(net, x, "lrp", target=3, rules=C.EpsilonPlusFlat())
    t = torch.from_numpy(x).cuda().requires_grad_(True)
    out = rp.attribute(net, t, "lrp", target=3, rules=C.EpsilonPlusFlat())
    assert isinstance(out, torch.Tensor) and out.is_cuda and out.dtype == torch.float32
    assert tuple(out.shape) == x.shape
    _close(out.cpu().numpy(), host, np.float32)
    y = rp.forward(net, t)
    assert isinstance(y, torch.Tensor) and y.is_cuda
    _close(y.cpu().numpy(), rp.forward(net, x), np.float32)


def test_backend_switches(cp):
    _, net, shape = BY_NAME["conv-max"]
    x = _x(shape, dtype=np.float64)
    host = rp.attribute(net, x, "lrp.epsilon", target=1)
    on_gpu = rp.attribute(net, x, "lrp.epsilon", target=1, backend="gpu")
    assert type(on_gpu) is np.ndarray and on_gpu.dtype == np.float64
    _close(on_gpu, host, np.float64)
    on_cpu = rp.attribute(net, cp.asarray(x), "lrp.epsilon", target=1, backend="cpu")
    assert isinstance(on_cpu, cp.ndarray)
    np.testing.assert_array_equal(cp.asnumpy(on_cpu), host)  # exact: the same CPU computation on a host copy


@pytest.mark.parametrize("method,params", [("gradient", {}), ("lrp.epsilon", {}),
                                           ("lrp", {"rules": C.EpsilonPlusFlat()})])
def test_tf32_close_to_fp32_and_scoped(cp, method, params):
    from cupy._core import _routines_linalg as linalg

    _, net, shape = BY_NAME["vgg"]
    xd = cp.asarray(_x(shape, n=32))
    before = linalg.get_compute_type(np.float32)
    fp32 = cp.asnumpy(rp.attribute(net, xd, method, target=1, **params))
    tf32 = cp.asnumpy(rp.attribute(net, xd, method, target=1, allow_tf32=True, **params))
    assert linalg.get_compute_type(np.float32) == before
    _close(tf32, fp32, np.float32, rel=1e-2)


_POOLS = []  # capped pools stay alive: arrays allocated from them (device caches) may outlive a test


def _capped(cp, limit, fn):
    """``fn()`` with every new device allocation taken from a fresh CuPy pool capped at ``limit``
    bytes (the default pool's cached fragments cannot serve them)."""
    pool = cp.cuda.MemoryPool()
    pool.set_limit(size=limit)  # size 0 would mean no limit
    _POOLS.append(pool)
    rp.core.engine.release_scratch()
    try:
        with cp.cuda.using_allocator(pool.malloc):
            return fn()
    finally:
        rp.core.engine.release_scratch()  # no scratch buffer from the capped pool lives on
        pool.set_limit(size=0)


def test_capped_memory_pool_splits_the_batch(cp):
    """An out-of-memory error halves the batch until it fits; the result is the CPU's and the
    fitted batch size is remembered."""
    net, shape, n = vgg_net(seed=11), (3, 32, 32), 256  # a fresh net: no remembered batch size
    x = _x(shape, n=n, seed=2)
    host = rp.attribute(net, x, "lrp.epsilon", target=1)
    xd = cp.asarray(x)
    rp.attribute(net, xd[:1], "lrp.epsilon", target=1)  # weights and kernels on the device first
    # the whole batch needs ~300 MB (activations + im2col columns); 48 MB fit a few dozen rows
    dev = _capped(cp, 48 * 2**20, lambda: rp.attribute(net, xd, "lrp.epsilon", target=1))
    _close(cp.asnumpy(dev), host, np.float32)
    fitted = list(rp.core.plan.compiled(net, x.dtype).fit_step.values())
    assert fitted and 1 <= min(fitted) < n


def test_capped_memory_pool_one_sample_says_so(cp):
    rng = np.random.default_rng(3)
    net = rp.Sequential(rp.Conv2d(rng.normal(0, 0.2, (64, 3, 3, 3)), padding=1), rp.ReLU(), rp.GlobalAvgPool2d(),
                        rp.Reshape((-1,)), rp.Dense(rng.normal(0, 0.1, (4, 64))))
    xd = cp.asarray(_x((3, 256, 256), n=2))
    # 2 MB: the input checks need ~0.4 MB, one sample's im2col columns and activations > 20 MB
    with pytest.raises(MemoryError, match=r"one sample of shape \(3, 256, 256\) does not fit"):
        _capped(cp, 2 * 2**20, lambda: rp.attribute(net, xd, "gradient", target=0))
