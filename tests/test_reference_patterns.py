"""PatternNet and PatternAttribution (Kindermans et al. 2018).

* the seed's toy problem: on x = a_s y + a_d eps the linear estimator recovers the signal direction
  a_s, which the filter w (w^T a_d = 0, w^T a_s = 1) is not;
* the two-regime estimator a+ and the linear one, Dense and Conv2d (im2col patches), against the
  independent numpy reference ``reference_patterns`` (float64: 1e-9 relative; float32 data: 1e-5);
* patternnet / pattern_attribution on small random dense and conv nets (max pooling, stride, padding)
  against the reference backward (float64: 1e-9 of max|ref|; float32: 1e-4);
* one pass over batches = one big batch (streaming), batch_size changes nothing beyond rounding;
* save/load round trip, patterns used with another model, bad input.
"""
import dataclasses

import numpy as np
import pytest

import reference_numpy as refnp
import reference_patterns as ref
from tolerance import SCALE_TOL, assert_blas_close


@pytest.fixture(scope="module")
def rp():
    import relprop
    return relprop


def _rel(a, b):
    return np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-300)


def _cos(u, v):
    u, v = np.ravel(u), np.ravel(v)
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


# --------------------------------------------------------------------------------------------------
# (1) the seed's toy problem: filter vs pattern
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 6])
def test_toy_linear_model_recovers_signal_direction(rp, dim):
    rng = np.random.default_rng(dim)
    if dim == 2:  # the seed's picture: signal along (1, 0), distractor along (1, 1)
        a_s, a_d = np.array([1.0, 0.0]), np.array([1.0, 1.0])
    else:
        a_s, a_d = rng.normal(size=dim), rng.normal(size=dim)
        a_d += 0.8 * np.linalg.norm(a_d) / np.linalg.norm(a_s) * a_s  # clearly not orthogonal
    # the optimal filter: w^T a_s = 1, w^T a_d = 0 (minimum norm)
    w = np.linalg.lstsq(np.stack([a_s, a_d]), np.array([1.0, 0.0]), rcond=None)[0]
    n = 50_000
    y, eps = rng.normal(size=n), rng.normal(size=n)
    x = np.outer(y, a_s) + np.outer(eps, a_d)
    assert np.allclose(x @ w, y)  # the filter extracts y exactly

    net = rp.Sequential(rp.Dense(w[None, :]))
    P = rp.fit_patterns(net, x, batch_size=8192)
    a = P["0"][0]
    assert P.estimators["0"] == "linear" and P.n_samples == n
    # statistical error of cov(x, y)/var(y) is ~ |a_d| / sqrt(n) ~ 0.005 per coordinate
    assert _cos(a, a_s) > 0.9995, "the pattern recovers the signal direction"
    assert np.max(np.abs(a - a_s)) < 0.03
    assert _cos(w, a_s) < 0.9, "the filter is not the signal direction"
    assert abs(w @ a - 1) < 1e-12  # normalization w^T a = 1
    # the estimator's defining property (seed: cov[x, y] = cov[S(x), y]): the residual x - a y
    # carries no linear information about y
    resid = x - np.outer(x @ w, a)
    assert np.max(np.abs((resid - resid.mean(0)).T @ (y - y.mean()))) / n < 1e-10

    # PatternNet returns the estimated signal a y, close to the true signal a_s y; the gradient
    # returns the filter w; PatternAttribution's (w ⊙ a) y sums to y on a linear model
    xs = x[:5]
    s = rp.attribute(net, xs, "patternnet", patterns=P, target=0)
    assert np.max(np.abs(s - np.outer(y[:5], a_s))) < 0.03 * np.max(np.abs(y[:5]))
    np.testing.assert_allclose(rp.attribute(net, xs, "gradient", target=0), np.tile(w, (5, 1)), atol=1e-12)
    r = rp.attribute(net, xs, "pattern_attribution", patterns=P, target=0)
    np.testing.assert_allclose(r, np.outer(y[:5], w * a), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.sum(axis=1), y[:5], rtol=1e-9)


# --------------------------------------------------------------------------------------------------
# (2) the estimators against the reference formula
# --------------------------------------------------------------------------------------------------


def _dense_spec(rng):
    return refnp.random_dense_net(rng, [6, 7, 5, 4], softmax_last=True), (6,)


def _conv_spec(rng):
    return refnp.random_conv_net(rng, in_ch=2, size=6, channels=3, n_out=4, softmax_last=True)


def _conv2_spec(rng):  # stride 2, padding 1, a second conv, overlapping padded pooling
    return refnp.random_conv_net(rng, in_ch=2, size=7, channels=3, n_out=3, stride=2, padding=1,
                                 second_conv=True, pool_kernel=2, pool_stride=1, pool_padding=1)


NETS = {"dense": _dense_spec, "conv": _conv_spec, "conv_stride_pad": _conv2_spec}


def _data(rng, shape, n, dtype=np.float64):
    # not centered, so E[y] != 0 and E+[x] != E[x]: every term of the formula matters
    return (rng.normal(0.3, 1.0, (n,) + shape)).astype(dtype)


def test_two_regime_estimator_matches_formula(rp):
    rng = np.random.default_rng(1)
    spec, shape = _dense_spec(rng)
    X = _data(rng, shape, 500)
    net = refnp.to_relprop(spec, rp)
    P = rp.fit_patterns(net, X, batch_size=128)
    want = ref.fit_patterns(spec, X)
    assert set(P.patterns) == set(want) == {"0", "2", "4"}
    for name, (A, est, counts) in want.items():
        assert P.estimators[name] == est
        np.testing.assert_array_equal(P.counts[name], counts)  # integers of z > 0; min|z| > 4e-6 x max|z| here
        assert _rel(P[name], A) < 1e-9, name
        W = net.by_name[name].layer.weight.astype(np.float64)
        np.testing.assert_allclose(np.einsum("oi,oi->o", W, P[name])[counts > 0], 1, rtol=1e-9)
    assert [P.estimators[k] for k in ("0", "2", "4")] == ["relu", "relu", "linear"]
    # a unit that never fires gets a = 0 (count 0) and the methods stay finite
    w1, b1 = net.nodes[0].layer.weight, net.nodes[0].layer.bias.copy()
    b1[3] = -1e3
    dead = rp.Sequential(rp.Dense(w1, b1), *[nd.layer for nd in net.nodes[1:]])
    D = rp.fit_patterns(dead, X)
    assert D.counts["0"][3] == 0 and not np.any(D["0"][3])
    assert np.all(np.isfinite(rp.attribute(dead, X[:3], "pattern_attribution", patterns=D)))
    # the positive regime changes the estimate: a+ is not the linear estimator of the same layer
    lin = rp.fit_patterns(rp.Sequential(net.nodes[0].layer), X)
    assert lin.estimators["0"] == "linear" and _rel(lin["0"], P["0"]) > 0.05


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("net_name", ["conv", "conv_stride_pad"])
def test_conv_patterns_over_patches(rp, net_name, dtype):
    rng = np.random.default_rng(2)
    spec, shape = NETS[net_name](rng)
    X = _data(rng, shape, 120, dtype)
    P = rp.fit_patterns(refnp.to_relprop(spec, rp), X, batch_size=50)
    for name, (A, est, counts) in ref.fit_patterns(spec, X).items():
        assert P.estimators[name] == est and P[name].shape == A.shape
        np.testing.assert_array_equal(P.counts[name], counts)  # integers of z > 0; min|z| > 1e-5 x max|z| here
        assert _rel(P[name], A) < (1e-9 if dtype == np.float64 else 1e-5), name


# --------------------------------------------------------------------------------------------------
# (3) the methods against the reference backward
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("method", ["patternnet", "pattern_attribution"])
@pytest.mark.parametrize("net_name", list(NETS))
def test_methods_against_reference(rp, net_name, method, dtype):
    rng = np.random.default_rng(3)
    spec, shape = NETS[net_name](rng)
    net = refnp.to_relprop(spec, rp)
    P = rp.fit_patterns(net, _data(rng, shape, 150), batch_size=64)
    pats = {k: np.asarray(v) for k, v in P.patterns.items()}
    x = _data(rng, shape, 5, dtype)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    classes = spec[-2][1].shape[0] if spec[-1][0] == "softmax" else spec[-1][1].shape[0]
    for target in (None, 1, rng.integers(0, classes, 5)):
        got = rp.attribute(net, x, method, patterns=P, target=target)
        assert got.shape == x.shape and got.dtype == x.dtype
        t = None if target is None else np.broadcast_to(target, (5,))
        want = ref.pattern_backward(spec, pats, x, t, method == "pattern_attribution")
        assert _rel(got, want) < tol, (target, _rel(got, want))


def test_start_signal_is_the_score(rp):
    """The backward starts from s_c e_c (iNNvestigate's head mapping; the seed's s^M = y), not e_c:
    the maps scale with the target's score (and flip sign where it is negative)."""
    rng = np.random.default_rng(4)
    spec, shape = _dense_spec(rng)
    net = refnp.to_relprop(spec, rp)
    P = rp.fit_patterns(net, _data(rng, shape, 100))
    pats = {k: np.asarray(v) for k, v in P.patterns.items()}
    x = _data(rng, shape, 6)
    t = np.full(6, 2)
    s = refnp.scores(spec, x)[:, 2]
    assert np.min(np.abs(s - 1)) > 0.1
    for method in ("patternnet", "pattern_attribution"):
        got = rp.attribute(net, x, method, patterns=P, target=2)
        unit = ref.pattern_backward(spec, pats, x, t, method == "pattern_attribution", unit_start=True)
        assert _rel(got, unit * s[:, None]) < 1e-9
        assert _rel(got, unit) > 0.1


# --------------------------------------------------------------------------------------------------
# (4) streaming
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net_name", ["dense", "conv"])
def test_one_pass_over_batches_equals_one_big_batch(rp, net_name):
    rng = np.random.default_rng(5)
    spec, shape = NETS[net_name](rng)
    net = refnp.to_relprop(spec, rp)
    X = _data(rng, shape, 230)
    full = rp.fit_patterns(net, X, batch_size=len(X))
    seen = []

    def stream():  # a generator, consumed once
        for b in np.array_split(X, 7):
            seen.append(len(b))
            yield b

    fits = [rp.fit_patterns(net, stream(), batch_size=1000),
            rp.fit_patterns(net, [X[:37], X[37:200], X[200:]], batch_size=16),
            rp.fit_patterns(net, X, batch_size=1),
            rp.fit_patterns(net, X, batch_size=29)]
    assert sum(seen) == len(X)
    for P in fits:
        assert P.n_samples == len(X) and P.fingerprint == full.fingerprint
        for name in full.patterns:
            # integer counts of z > 0; here min|z| > 6e-6 x max|z|, far above any batch-size rounding
            np.testing.assert_array_equal(P.counts[name], full.counts[name])
            assert _rel(P[name], full[name]) < 1e-11
    # float32 data: the forward runs in float32; batch size still changes nothing beyond rounding
    X32 = X.astype(np.float32)
    a, b = rp.fit_patterns(net, X32, batch_size=230), rp.fit_patterns(net, X32, batch_size=13)
    for name in full.patterns:
        assert_blas_close(a[name], b[name], tol=SCALE_TOL[np.dtype(np.float32)])  # float32 GEMMs of other shapes
        assert _rel(a[name], full[name]) < 1e-5


# --------------------------------------------------------------------------------------------------
# (5) save / load, other models
# --------------------------------------------------------------------------------------------------


def _small_conv(rp, seed=6):
    rng = np.random.default_rng(seed)
    spec, shape = _conv_spec(rng)
    net = refnp.to_relprop(spec, rp)
    return net, rp.fit_patterns(net, _data(rng, shape, 60).astype(np.float32)), _data(rng, shape, 3, np.float32)


def test_save_load_round_trip(rp, tmp_path):
    net, P, x = _small_conv(rp)
    path = tmp_path / "patterns.npz"
    P.save(path)
    Q = rp.load_patterns(path)
    assert type(Q) is type(P) and Q.n_samples == P.n_samples and Q.fingerprint == P.fingerprint
    assert dict(Q.estimators) == dict(P.estimators)
    for name in P.patterns:  # exact: loaded copies of the same arrays, then the same computation
        np.testing.assert_array_equal(Q[name], P[name])
        np.testing.assert_array_equal(Q.counts[name], P.counts[name])
        assert Q[name].dtype == np.float64
    for method in ("patternnet", "pattern_attribution"):
        np.testing.assert_array_equal(rp.attribute(net, x, method, patterns=Q),
                                      rp.attribute(net, x, method, patterns=P))
    assert type(rp.methods.patterns.Patterns.load(path)) is type(P)
    # a model saved and reloaded is the same model
    rp.save(net, tmp_path / "model.npz")
    net2 = rp.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(rp.attribute(net2, x, "patternnet", patterns=Q),
                                  rp.attribute(net, x, "patternnet", patterns=P))
    # frozen: no field, mapping or array can change under a cached shadow graph
    with pytest.raises(dataclasses.FrozenInstanceError):
        P.n_samples = 1
    with pytest.raises(TypeError):
        P.patterns["0"] = np.zeros(3)
    with pytest.raises(ValueError):
        P["0"][...] = 0


def test_patterns_of_another_model_are_refused(rp):
    net, P, x = _small_conv(rp)
    other, _, _ = _small_conv(rp, seed=7)  # same structure and names, other weights
    with pytest.raises(ValueError, match="fitted on a different model.*weights"):
        rp.attribute(other, x, "pattern_attribution", patterns=P)
    dense = refnp.to_relprop(_dense_spec(np.random.default_rng(0))[0], rp)
    with pytest.raises(ValueError, match="different model.*Dense/Conv2d layers are"):
        rp.attribute(dense, np.zeros((1, 6), np.float32), "patternnet", patterns=P)
    renamed = rp.Graph([rp.Node(f"n{nd.name}", nd.layer, tuple("input" if i == "input" else f"n{i}"
                                                                   for i in nd.inputs)) for nd in net.nodes])
    with pytest.raises(ValueError, match="different model"):
        rp.attribute(renamed, x, "patternnet", patterns=P)
    with pytest.raises(ValueError, match="different model"):  # canonize/any weight change needs a refit
        rp.attribute(rp.Sequential(*[nd.layer for nd in net.nodes[:-1]], rp.Identity()), x, "patternnet",
                     patterns=P)


def test_load_refuses_foreign_files(rp, tmp_path):
    net, _, _ = _small_conv(rp)
    rp.save(net, tmp_path / "model.npz")
    with pytest.raises(ValueError, match="relprop model file"):
        rp.load_patterns(tmp_path / "model.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not an npz"):
        rp.load_patterns(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError):
        rp.load_patterns(tmp_path / "missing.npz")


# --------------------------------------------------------------------------------------------------
# (6) bad input
# --------------------------------------------------------------------------------------------------


def test_attribute_errors(rp):
    net, P, x = _small_conv(rp)
    with pytest.raises(TypeError, match="needs patterns="):
        rp.attribute(net, x, "patternnet")
    with pytest.raises(TypeError, match="must be a Patterns object"):
        rp.attribute(net, x, "pattern_attribution", patterns={"0": P["0"]})
    with pytest.raises(TypeError, match="unknown parameter"):
        rp.attribute(net, x, "patternnet", patterns=P, epsilon=1e-3)
    with pytest.raises(ValueError, match="targets must lie in"):
        rp.attribute(net, x, "patternnet", patterns=P, targets=[0, 99])


@pytest.mark.parametrize("method", ["patternnet", "pattern_attribution"])
def test_multi_target_equals_single_calls(method, rp):
    rng = np.random.default_rng(21)
    spec, shape = refnp.random_conv_net(rng, pool="max", n_out=4)
    net = refnp.to_relprop(spec, rp)
    P = rp.fit_patterns(net, rng.normal(size=(120,) + shape), batch_size=50)
    x = rng.normal(size=(3,) + shape)
    M = rp.attribute(net, x, method, patterns=P, targets="all")
    for k in range(4):
        assert_blas_close(M[:, k], rp.attribute(net, x, method, patterns=P, target=k))


def _bad_fits(rp):
    net = refnp.to_relprop(_dense_spec(np.random.default_rng(0))[0], rp)
    X = np.random.default_rng(1).normal(size=(20, 6))

    def ragged():
        yield X[:5]
        yield np.zeros((5, 2, 3))

    conv_only = rp.Sequential(rp.Conv2d(np.ones((2, 1, 3, 3))), rp.ReLU(), rp.Flatten())
    return [
        (net, X, {"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        (net, X, {"batch_size": 2.5}, TypeError, "batch_size must be an int"),
        (net, X, {"batch_size": True}, TypeError, "batch_size must be an int"),
        (net, X[:0], {}, ValueError, "data is empty"),
        (net, [], {}, ValueError, "yielded 0 sample"),
        (net, iter([X[:3], X[:0]]), {}, ValueError, "empty batch"),
        (net, X[:, :5], {}, ValueError, r"expects input features \(6,\)"),
        (net, ragged(), {}, ValueError, "data batch 1"),
        (net, np.where(np.arange(6) == 2, np.nan, X), {}, ValueError, "NaN or Inf"),
        (net, X.astype(np.int64), {}, TypeError, "float32 or float64"),
        (net, X[0], {}, ValueError, "dimensions"),
        (net, 3, {}, TypeError, "numpy array .* or an iterable"),
        (net, "data.npy", {}, TypeError, "or an iterable"),
        (net, [(X, np.zeros(20))], {}, TypeError, "yield the inputs only"),
        (net, X.tolist(), {}, TypeError, r"pass np.asarray\(data\)"),
        (conv_only, iter([np.ones((2, 1, 5, 5)), np.ones((2, 1, 6, 6))]), {}, ValueError, "earlier batches"),
        (rp.Sequential(rp.Dense(np.ones((3, 6))), rp.Tanh(), rp.Dense(np.ones((2, 3)))), X, {}, ValueError,
         r"layer '1' \(Tanh\) is not supported"),
        (rp.Sequential(rp.Conv2d(np.ones((2, 1, 3, 3))), rp.BatchNorm2d(np.ones(2), np.zeros(2), np.zeros(2),
                                                                          np.ones(2))), X, {}, ValueError,
         "rp.canonize"),
        (rp.Sequential(rp.ReLU()), X, {}, ValueError, "no Dense/Conv2d layer"),
        ("net", X, {}, TypeError, "relprop model"),
    ]


def test_fit_errors(rp):
    for net, data, kw, exc, match in _bad_fits(rp):
        with pytest.raises(exc, match=match):
            rp.fit_patterns(net, data, **kw)


def test_unsupported_model_refused_by_attribute(rp):
    net, P, x = _small_conv(rp)
    tanh = rp.Sequential(*[rp.Tanh() if nd.layer.kind == "ReLU" else nd.layer for nd in net.nodes])
    with pytest.raises(ValueError, match=r"\(Tanh\) is not supported"):
        rp.attribute(tanh, x, "patternnet", patterns=P)


def test_fit_needs_two_samples_and_ignores_rounding_level_denominators(rp):
    rng = np.random.default_rng(8)
    spec, shape = refnp.random_conv_net(rng, pool="max", n_out=3)
    net = refnp.to_relprop(spec, rp)
    with pytest.raises(ValueError, match=r"yielded 1 sample\(s\).*at least 2"):
        rp.fit_patterns(net, rng.normal(size=(1,) + shape))
    dense = refnp.to_relprop(refnp.random_dense_net(rng, [5, 6, 3]), rp)
    const = np.broadcast_to(rng.normal(size=(1, 5)), (50, 5)).copy()  # no variance: no signal direction
    P = rp.fit_patterns(dense, const, batch_size=16)
    assert all(np.all(P.patterns[name] == 0) for name in P.patterns)
