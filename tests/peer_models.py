"""Shared helpers for the peer-agreement tests (relprop vs Zennit / Captum / torch autograd).

A *net spec* is a list of layer tuples.  From one spec and one seed we build the same random
network twice -- as a ``relprop.Sequential`` and as a ``torch.nn.Sequential`` -- with identical,
He-initialised float32 weights and small random biases.  Every torch activation is a separate
module instance (Captum's DeepLift and Zennit's hooks need that).

relprop is imported lazily so that the peer modules collect even while the library is being
written; a missing relprop then fails the tests at run time.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# --------------------------------------------------------------------------------------------
# Net specs
# --------------------------------------------------------------------------------------------
# ("conv", c_in, c_out, (kh, kw), stride, padding) | ("dense", n_in, n_out)
# ("act", "relu"|"tanh"|"sigmoid") | ("maxpool", k, stride, padding) | ("avgpool", k, stride, padding)
# ("flatten",)


def _vgg(act: str) -> list[tuple]:
    # (3,16,16) -conv-> (8,16,16) -conv-> (8,16,16) -max2-> (8,8,8) -conv-> (16,8,8) -avg2-> (16,4,4)
    return [
        ("conv", 3, 8, (3, 3), 1, 1), ("act", act),
        ("conv", 8, 8, (3, 3), 1, 1), ("act", act),
        ("maxpool", 2, None, 0),
        ("conv", 8, 16, (3, 3), 1, 1), ("act", act),
        ("avgpool", 2, None, 0),
        ("flatten",),
        ("dense", 16 * 4 * 4, 32), ("act", act),
        ("dense", 32, 10),
    ]


# Strides, asymmetric padding, non-square kernels, overlapping/padded pools.
# (3,17,15) -conv k3 s2 p(1,0)-> (6,9,7) -conv k(3,2) s1 p(1,1)-> (8,9,8)
# -max k3 s2 p1-> (8,5,4) -avg k2 s1 p1 (count_include_pad)-> (8,6,5) -> 240
_STRIDED = [
    ("conv", 3, 6, (3, 3), 2, (1, 0)), ("act", "relu"),
    ("conv", 6, 8, (3, 2), 1, (1, 1)), ("act", "relu"),
    ("maxpool", 3, 2, 1),
    ("avgpool", 2, 1, 1),
    ("flatten",),
    ("dense", 8 * 6 * 5, 12), ("act", "relu"),
    ("dense", 12, 7),
]

_MLP = [
    ("dense", 20, 32), ("act", "relu"),
    ("dense", 32, 16), ("act", "relu"),
    ("dense", 16, 5),
]

SPECS: dict[str, tuple[tuple[int, ...], list[tuple]]] = {
    "vgg_relu": ((3, 16, 16), _vgg("relu")),
    "vgg_tanh": ((3, 16, 16), _vgg("tanh")),
    "vgg_sigmoid": ((3, 16, 16), _vgg("sigmoid")),
    "strided": ((3, 17, 15), _STRIDED),
    "mlp": ((20,), _MLP),
}

# Per-channel ZBox / EpsilonGammaBox bounds (inputs are generated inside them).
IMG_LOW = np.array([-3.0, -2.5, -3.2], dtype=np.float64).reshape(1, 3, 1, 1)
IMG_HIGH = np.array([3.0, 2.8, 2.6], dtype=np.float64).reshape(1, 3, 1, 1)
MLP_LOW = -3.0
MLP_HIGH = 3.0

N_SAMPLES = 3


def rp():
    """The relprop module (imported on first use)."""
    return importlib.import_module("relprop")


@dataclass
class PeerNet:
    """One random network, with its parameters as numpy float32 arrays."""

    name: str
    input_shape: tuple[int, ...]
    spec: list[tuple]
    params: list[tuple[np.ndarray, np.ndarray] | None]  # one entry per spec layer
    n_classes: int

    @property
    def n_linear(self) -> int:
        return sum(1 for layer in self.spec if layer[0] in ("conv", "dense"))

    @property
    def has_overlapping_maxpool(self) -> bool:
        """A MaxPool2d whose stride is smaller than its kernel (an input can win several windows)."""
        return any(layer[0] == "maxpool" and layer[2] is not None and layer[2] < layer[1] for layer in self.spec)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    # ---- bounds ---------------------------------------------------------------------------
    def bounds(self, dtype=np.float32):
        """(low, high) for ZBox: per-channel (1,C,1,1) arrays for images, scalars for the MLP."""
        if self.is_image:
            return IMG_LOW.astype(dtype), IMG_HIGH.astype(dtype)
        return dtype(MLP_LOW), dtype(MLP_HIGH)

    def torch_bounds(self, dtype=torch.float32):
        low, high = self.bounds(np.float64)
        return torch.as_tensor(low, dtype=dtype), torch.as_tensor(high, dtype=dtype)

    # ---- inputs ---------------------------------------------------------------------------
    def inputs(self, seed: int = 0, n: int = N_SAMPLES, dtype=np.float32) -> np.ndarray:
        """Standard-normal inputs (scaled by 1.2), pulled strictly inside the ZBox bounds."""
        rng = np.random.default_rng(1000 + seed)
        x = 1.2 * rng.standard_normal((n,) + self.input_shape)
        low, high = self.bounds(np.float64)
        margin = 0.05
        x = np.clip(x, np.asarray(low) + margin, np.asarray(high) - margin)
        return np.ascontiguousarray(x.astype(np.float32).astype(dtype))

    def baseline(self, seed: int = 0, n: int = N_SAMPLES, dtype=np.float32) -> np.ndarray:
        """A random per-sample baseline (different from the inputs)."""
        rng = np.random.default_rng(5000 + seed)
        b = 0.5 * rng.standard_normal((n,) + self.input_shape)
        return np.ascontiguousarray(b.astype(np.float32).astype(dtype))

    def targets(self, seed: int = 0, n: int = N_SAMPLES) -> np.ndarray:
        rng = np.random.default_rng(9000 + seed)
        return rng.integers(0, self.n_classes, size=n).astype(np.int64)

    # ---- builders -------------------------------------------------------------------------
    def relprop(self, dtype=np.float32, softmax: bool = False):
        """The relprop network (weights cast to ``dtype``; relprop promotes to float64 itself
        when x is float64, passing float64 weights makes the float64 reference exact)."""
        r = rp()
        layers = []
        for layer, p in zip(self.spec, self.params):
            kind = layer[0]
            if kind == "conv":
                _, _, _, _, stride, padding = layer
                layers.append(r.Conv2d(p[0].astype(dtype), p[1].astype(dtype), stride=stride, padding=padding))
            elif kind == "dense":
                layers.append(r.Dense(p[0].astype(dtype), p[1].astype(dtype)))
            elif kind == "act":
                layers.append({"relu": r.ReLU, "tanh": r.Tanh, "sigmoid": r.Sigmoid}[layer[1]]())
            elif kind == "maxpool":
                layers.append(r.MaxPool2d(layer[1], stride=layer[2], padding=layer[3]))
            elif kind == "avgpool":
                layers.append(r.AvgPool2d(layer[1], stride=layer[2], padding=layer[3]))
            elif kind == "flatten":
                layers.append(r.Flatten())
            else:  # pragma: no cover
                raise ValueError(kind)
        if softmax:
            layers.append(r.Softmax())
        return r.Sequential(*layers)

    def torch(self, dtype=torch.float32, captum_deeplift: bool = False) -> torch.nn.Sequential:
        """The torch network: fresh modules (no activation reuse), eval mode, no grads on params.

        ``captum_deeplift=True`` inserts a ``Clone`` module between an activation and a MaxPool2d
        that directly follows it.  Mathematically a no-op, it works around a Captum 0.9.0 hook
        ordering bug: Captum's tensor hooks capture the activation's ``grad_output`` *before*
        the MaxPool hook rewrites that gradient, so the activation's rescale rule is applied to
        the plain max-pool gradient instead of Captum's own DeepLIFT maxpool multiplier and the
        attributions stop summing to f(x) - f(x0).  (Module indices then no longer match
        ``linear_module_names``; only Captum DeepLift uses this.)
        """
        mods: list[torch.nn.Module] = []
        for i, (layer, p) in enumerate(zip(self.spec, self.params)):
            if captum_deeplift and layer[0] == "maxpool" and i > 0 and self.spec[i - 1][0] == "act":
                mods.append(Clone())
            kind = layer[0]
            if kind == "conv":
                _, cin, cout, k, stride, padding = layer
                m = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=True)
            elif kind == "dense":
                m = torch.nn.Linear(layer[1], layer[2], bias=True)
            elif kind == "act":
                m = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid}[layer[1]]()
            elif kind == "maxpool":
                m = torch.nn.MaxPool2d(layer[1], stride=layer[2], padding=layer[3])
            elif kind == "avgpool":
                m = torch.nn.AvgPool2d(layer[1], stride=layer[2], padding=layer[3], count_include_pad=True)
            elif kind == "flatten":
                m = torch.nn.Flatten()
            else:  # pragma: no cover
                raise ValueError(kind)
            if p is not None:
                with torch.no_grad():
                    m.weight.copy_(torch.from_numpy(p[0].astype(np.float64)))
                    m.bias.copy_(torch.from_numpy(p[1].astype(np.float64)))
            mods.append(m)
        net = torch.nn.Sequential(*mods).to(dtype).eval()
        for prm in net.parameters():
            prm.requires_grad_(False)
        return net

    def linear_module_names(self) -> list[str]:
        """Names (``nn.Sequential`` indices) of the Conv2d/Linear modules, in graph order."""
        return [str(i) for i, layer in enumerate(self.spec) if layer[0] in ("conv", "dense")]


class Clone(torch.nn.Module):
    """Identity that returns a new tensor (see ``PeerNet.torch(captum_deeplift=True)``)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t.clone()


def make_net(name: str, seed: int = 0) -> PeerNet:
    """Random network ``name`` (a key of SPECS): He-normal float32 weights, biases N(0, 0.1^2)."""
    input_shape, spec = SPECS[name]
    rng = np.random.default_rng(_stable_seed(name, seed))
    params: list[tuple[np.ndarray, np.ndarray] | None] = []
    n_classes = None
    for layer in spec:
        if layer[0] == "conv":
            _, cin, cout, (kh, kw), _, _ = layer
            fan_in = cin * kh * kw
            w = rng.standard_normal((cout, cin, kh, kw)) * np.sqrt(2.0 / fan_in)
            b = 0.1 * rng.standard_normal(cout)
            params.append((w.astype(np.float32), b.astype(np.float32)))
        elif layer[0] == "dense":
            _, nin, nout = layer
            w = rng.standard_normal((nout, nin)) * np.sqrt(2.0 / nin)
            b = 0.1 * rng.standard_normal(nout)
            params.append((w.astype(np.float32), b.astype(np.float32)))
            n_classes = nout
        else:
            params.append(None)
    return PeerNet(name, input_shape, spec, params, n_classes)


def _stable_seed(name: str, seed: int) -> int:
    return (sum((i + 1) * ord(c) for i, c in enumerate(name)) * 7919 + seed) % (2**31)


# --------------------------------------------------------------------------------------------
# Targets and comparison
# --------------------------------------------------------------------------------------------
TARGET_KINDS = ("none", "int", "array")


def relprop_target(kind: str, net: PeerNet, seed: int = 0):
    """The ``target=`` argument handed to relprop for a target kind."""
    if kind == "none":
        return None
    if kind == "int":
        return int(net.targets(seed)[0])
    if kind == "array":
        return net.targets(seed)
    raise ValueError(kind)


def resolved_targets(kind: str, net: PeerNet, logits: np.ndarray, seed: int = 0) -> np.ndarray:
    """The per-sample class indices the peers must explain (None -> argmax of the logits)."""
    n = logits.shape[0]
    if kind == "none":
        return np.argmax(logits, axis=1).astype(np.int64)
    if kind == "int":
        return np.full(n, int(net.targets(seed)[0]), dtype=np.int64)
    return net.targets(seed)[:n]


RTOL = 1e-4  # max abs diff <= RTOL * max|R|, per sample


def mismatch(actual: np.ndarray, expected: np.ndarray, rtol: float = RTOL) -> tuple[bool, str]:
    """Per sample: max|actual - expected| <= rtol * max(|expected|).  Returns (ok, report)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        return False, f"shape {actual.shape} != peer shape {expected.shape}"
    a = actual.reshape(actual.shape[0], -1).astype(np.float64)
    e = expected.reshape(expected.shape[0], -1).astype(np.float64)
    lines = []
    ok = True
    if not np.all(np.isfinite(a)):
        ok = False
        lines.append(f"relprop result has {np.count_nonzero(~np.isfinite(a))} non-finite entries")
    if not np.all(np.isfinite(e)):
        ok = False
        lines.append(f"peer result has {np.count_nonzero(~np.isfinite(e))} non-finite entries")
    for i in range(a.shape[0]):
        scale = np.max(np.abs(e[i])) if e.shape[1] else 0.0
        diff = np.max(np.abs(a[i] - e[i])) if e.shape[1] else 0.0
        tol = rtol * scale
        bad = not (diff <= tol)
        ok &= not bad
        worst = int(np.argmax(np.abs(a[i] - e[i]))) if e.shape[1] else -1
        lines.append(
            f"  sample {i}: max|diff|={diff:.3e}  tol={tol:.3e}  max|R_peer|={scale:.3e}  "
            f"sum R relprop={a[i].sum():.6g} peer={e[i].sum():.6g}  worst flat idx {worst}"
            + ("  <-- FAIL" if bad else "")
        )
    return ok, "\n".join(lines)


class Float32Conditioning(UserWarning):
    """A comparison was decided in float64 because float32 cannot resolve it at the tolerance."""


NOISY_FRACTION = 0.1  # peer's own float32 error above this fraction of the tolerance = "noisy"
NOISE_FACTOR = 10.0   # relprop float32 may be at most this many times less accurate than the peer


def _per_sample_maxabs(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.max(np.abs(a.reshape(a.shape[0], -1)), axis=1)


def assert_agree(run, label: str, rtol: float = RTOL) -> None:
    """``run(np_dtype, torch_dtype) -> (R_relprop, R_peer)``.

    1. Compare in float32: per sample max|R_relprop - R_peer| <= rtol * max|R_peer|.  Done if so.
    2. Otherwise re-run both sides in float64 and compare with the *same* tolerance.
       * float64 disagrees  -> real convention difference / bug: FAIL.
       * float64 agrees, and the peer's own float32 result is off its float64 result by more than
         NOISY_FRACTION of the tolerance (the problem is ill-conditioned in float32: e.g. LRP
         denominators without bias close to 0, DeepLIFT rescale ratios with z ~ z0) -> the float64
         comparison decides; relprop's float32 result must still be within
         NOISE_FACTOR * (peer's own float32 error) + tol of the float64 truth.  A
         ``Float32Conditioning`` warning records the case.
       * float64 agrees but the peer is accurate in float32 -> relprop's float32 path is worse
         than float32 warrants: FAIL.
    The tolerance itself is never loosened.
    """
    r_rp, r_peer = run(np.float32, torch.float32)
    assert r_rp.dtype == np.float32, f"{label}: relprop returned {r_rp.dtype} for float32 input"
    ok, report = mismatch(r_rp, r_peer, rtol)
    if ok:
        return
    try:
        r_rp64, r_peer64 = run(np.float64, torch.float64)
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        raise AssertionError(f"{label}: relprop disagrees with the peer (float32)\n{report}\n"
                             f"float64 re-run raised {type(exc).__name__}: {exc}") from exc
    assert r_rp64.dtype == np.float64, f"{label}: relprop returned {r_rp64.dtype} for float64 input"
    ok64, report64 = mismatch(r_rp64, r_peer64, rtol)
    scale = _per_sample_maxabs(r_peer64)
    peer_err32 = _per_sample_maxabs(r_peer.astype(np.float64) - r_peer64)
    rp_err32 = _per_sample_maxabs(r_rp.astype(np.float64) - r_peer64)
    noisy = bool(np.any(peer_err32 > NOISY_FRACTION * rtol * scale))
    within = bool(np.all(rp_err32 <= NOISE_FACTOR * peer_err32 + rtol * scale))
    err_lines = "\n".join(
        f"  sample {i}: |relprop32 - peer64|={a:.3e}  |peer32 - peer64|={b:.3e}  tol={rtol * s:.3e}"
        for i, (a, b, s) in enumerate(zip(rp_err32, peer_err32, scale)))
    if ok64 and noisy and within:
        warnings.warn(Float32Conditioning(
            f"{label}: float32 results differ by rounding amplification only (peer's own float32 error "
            f"up to {np.max(peer_err32 / np.maximum(rtol * scale, 1e-300)):.2f} x tol, relprop's "
            f"{np.max(rp_err32 / np.maximum(rtol * scale, 1e-300)):.2f} x tol); agreement "
            f"established in float64"), stacklevel=2)
        return
    if not ok64:
        verdict = "float64 re-run DISAGREES too -> real convention difference / bug"
    elif not noisy:
        verdict = ("float64 agrees but the peer is accurate in float32 -> relprop's float32 path "
                   "loses precision (bug)")
    else:
        verdict = (f"float64 agrees, float32 ill-conditioned, but relprop's float32 error exceeds "
                   f"{NOISE_FACTOR} x the peer's own float32 error")
    raise AssertionError(
        f"{label}: relprop disagrees with the peer (float32)\n{report}\nfloat64 re-run:\n{report64}\n"
        f"float32 errors against the float64 peer:\n{err_lines}\nverdict: {verdict}")


def to_torch(x: np.ndarray, dtype, requires_grad: bool = False) -> torch.Tensor:
    t = torch.tensor(np.asarray(x), dtype=dtype)
    if requires_grad:
        t.requires_grad_(True)
    return t
