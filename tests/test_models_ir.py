"""Graph IR additions (Add, Concat, BatchNorm2d, GlobalAvgPool2d, Reshape, LeakyReLU, Softplus,
Dropout), canonization and the native file format.

References are independent of the kernels: central finite differences (gradient), the
closed-form DeepLIFT summation-to-delta and LRP conservation identities, plain numpy
forward passes, and byte-level file comparisons.
"""
import os
import zipfile

import numpy as np
import pytest

import relprop as rp

RNG = np.random.default_rng(7)


def _conv(o, c, k=3):
    return RNG.normal(0, np.sqrt(2 / (c * k * k)), (o, c, k, k))


def _bn(c):
    return rp.BatchNorm2d(RNG.uniform(0.5, 1.5, c), RNG.normal(0, 0.2, c), RNG.normal(0, 0.2, c), RNG.uniform(0.5, 1.5, c))


def residual_net(bias=True, act="ReLU"):
    """conv-bn-act, conv-bn, + skip, act, concat with the skip, pool, reshape, dense."""
    A = {"ReLU": rp.ReLU, "LeakyReLU": lambda: rp.LeakyReLU(0.1), "Softplus": lambda: rp.Softplus(2.0)}[act]
    b = (lambda c: RNG.normal(0, 0.1, c)) if bias else (lambda c: None)
    return rp.Graph([
        rp.Node("c1", rp.Conv2d(_conv(6, 3), b(6), padding=1), ("input",)),
        rp.Node("bn1", _bn(6), ("c1",)),
        rp.Node("a1", A(), ("bn1",)),
        rp.Node("c2", rp.Conv2d(_conv(6, 6), b(6), padding=1), ("a1",)),
        rp.Node("bn2", _bn(6), ("c2",)),
        rp.Node("add", rp.Add(), ("bn2", "a1")),
        rp.Node("a2", A(), ("add",)),
        rp.Node("cat", rp.Concat(axis=1), ("a2", "a1")),
        rp.Node("drop", rp.Dropout(0.3), ("cat",)),
        rp.Node("gap", rp.GlobalAvgPool2d(), ("drop",)),
        rp.Node("flat", rp.Reshape((-1,)), ("gap",)),
        rp.Node("fc", rp.Dense(RNG.normal(0, 0.4, (4, 12)), b(4)), ("flat",)),
    ])


def numpy_forward(g, x):
    """Plain numpy forward of the graph (independent of the kernels)."""
    vals = {"input": x}
    for node in g.nodes:
        L, ins = node.layer, [vals[i] for i in node.inputs]
        a = ins[0]
        if L.kind == "Conv2d":
            w, (p, _) = L.weight.astype(np.float64), L.padding
            ap = np.pad(a, ((0, 0), (0, 0), (p, p), (p, p)))
            n, c, h, wd = a.shape
            out = np.zeros((n, w.shape[0], h, wd))
            for i in range(3):
                for j in range(3):
                    out += np.einsum("oc,nchw->nohw", w[:, :, i, j], ap[:, :, i:i + h, j:j + wd])
            v = out + L.bias[None, :, None, None]
        elif L.kind == "Dense":
            v = a @ L.weight.T.astype(np.float64) + L.bias
        elif L.kind == "BatchNorm2d":
            sh = (1, -1) + (1,) * (a.ndim - 2)
            v = (a - L.running_mean.reshape(sh)) / np.sqrt(L.running_var.reshape(sh) + L.eps) * L.weight.reshape(sh) + L.bias.reshape(sh)
        elif L.kind == "ReLU":
            v = np.maximum(a, 0)
        elif L.kind == "LeakyReLU":
            v = np.where(a > 0, a, L.negative_slope * a)
        elif L.kind == "Softplus":
            v = np.log1p(np.exp(L.beta * a)) / L.beta
        elif L.kind == "Add":
            v = sum(ins)
        elif L.kind == "Concat":
            v = np.concatenate(ins, axis=L.axis)
        elif L.kind == "GlobalAvgPool2d":
            v = a.mean(axis=(2, 3), keepdims=True)
        elif L.kind == "Reshape":
            v = a.reshape((a.shape[0],) + L.shape)
        elif L.kind == "Dropout":
            v = a
        else:
            raise AssertionError(L.kind)
        vals[node.name] = v
    return vals[g.nodes[-1].name]


X = RNG.normal(size=(3, 3, 6, 6))


@pytest.mark.parametrize("act", ["ReLU", "LeakyReLU", "Softplus"])
def test_forward_matches_numpy(act):
    g = residual_net(act=act)
    np.testing.assert_allclose(g(X), numpy_forward(g, X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g(X.astype(np.float32)), numpy_forward(g, X), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("act", ["ReLU", "LeakyReLU", "Softplus"])
@pytest.mark.parametrize("canon", [False, True])
def test_gradient_matches_finite_differences(act, canon):
    g = residual_net(act=act)
    g = rp.canonize(g) if canon else g
    G = rp.attribute(g, X, "gradient", target=2)
    h = 1e-6
    for idx in [(0, 0, 0, 0), (1, 2, 3, 4), (2, 1, 5, 5), (0, 2, 2, 3)]:
        xp, xm = X.copy(), X.copy()
        xp[idx] += h
        xm[idx] -= h
        fd = (numpy_forward(g, xp)[idx[0], 2] - numpy_forward(g, xm)[idx[0], 2]) / (2 * h)
        assert abs(fd - G[idx]) < 1e-6 * max(1, abs(fd)), (idx, fd, G[idx])


@pytest.mark.parametrize("act", ["ReLU", "LeakyReLU", "Softplus"])
def test_deeplift_sums_to_delta(act):
    g = rp.canonize(residual_net(act=act))
    base = RNG.normal(size=X.shape) * 0.3
    R = rp.attribute(g, X, "deeplift.rescale", baseline=base, target=1)
    delta = numpy_forward(g, X)[:, 1] - numpy_forward(g, base)[:, 1]
    np.testing.assert_allclose(R.reshape(3, -1).sum(1), delta, rtol=1e-9, atol=1e-10)


def test_lrp_conserves_through_add_and_concat():
    """Bias-free net, z-rule (include_bias=False) everywhere: relevance is conserved layer by
    layer, so the input relevance sums to the target score (up to the 1e-6 stabilizers)."""
    g = rp.canonize(residual_net(bias=False))
    # canonization turns BN shifts into biases: drop them to get an exactly conservative net
    nodes = []
    for n in g.nodes:
        L = n.layer
        if L.kind in ("Conv2d", "Dense"):
            L = rp.Conv2d(L.weight, None, L.stride, L.padding) if L.kind == "Conv2d" else rp.Dense(L.weight)
        nodes.append(rp.Node(n.name, L, n.inputs))
    g = rp.Graph(nodes)
    R = rp.attribute(g, X, "lrp.epsilon", epsilon=1e-12, target=0)
    score = numpy_forward(g, X)[:, 0]
    # Add and GlobalAvgPool use Zennit's fixed 1e-6 stabilizer: a relative loss of ~1e-6 / z
    np.testing.assert_allclose(R.reshape(3, -1).sum(1), score, rtol=2e-5)


def test_add_splits_relevance_in_proportion():
    """R at an Add goes to each input in proportion to its value (Zennit's Norm on Sum)."""
    w = np.eye(2)
    g = rp.Graph([
        rp.Node("a", rp.Dense(w), ("input",)),
        rp.Node("b", rp.Dense(3 * w), ("input",)),
        rp.Node("s", rp.Add(), ("a", "b")),
        rp.Node("out", rp.Dense(np.array([[1.0, 0.0], [0.0, 1.0]])), ("s",)),
    ])
    x = np.array([[1.0, 2.0]])
    R = rp.attribute(g, x, "lrp.z", include_bias=False, target=1)
    # score 8 = 2 (via a) + 6 (via b), both from x_2; the Add's 1e-6 stabilizer keeps
    # 8 * 1e-6 / 8 of it
    np.testing.assert_allclose(R, [[0.0, 8.0 * 8.0 / (8.0 + 1e-6)]], rtol=1e-12)
    Rb = rp.attribute(rp.Graph(g.nodes[:3]), x, "lrp.z", include_bias=False, target=1)
    np.testing.assert_allclose(Rb, [[0.0, 8.0 * 8.0 / (8.0 + 1e-6)]], rtol=1e-12)


def test_canonize_folds_and_keeps_output():
    g = residual_net()
    c = rp.canonize(g)
    kinds = [n.layer.kind for n in c.nodes]
    assert "BatchNorm2d" not in kinds
    assert [n.name for n in c.nodes][:3] == ["c1", "a1", "c2"]  # merged layers keep their names
    np.testing.assert_allclose(c(X), g(X), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(c(X.astype(np.float32)), g(X), rtol=1e-5, atol=1e-5)


def test_canonize_before_linear_and_unfoldable():
    """fold="after_and_before" also folds a BN in front of a linear layer where exact; the
    default (Zennit's merge) keeps it."""
    bn = _bn(4)
    dense_after = rp.Sequential(rp.Flatten(), bn_1d := rp.BatchNorm2d(bn.weight, bn.bias, bn.running_mean, bn.running_var),
                                rp.Dense(RNG.normal(size=(3, 4)), RNG.normal(size=3)))
    x = RNG.normal(size=(5, 4))
    assert [n.layer.kind for n in rp.canonize(dense_after).nodes] == ["Flatten", "BatchNorm2d", "Dense"]
    c = rp.canonize(dense_after, fold="after_and_before")
    assert [n.layer.kind for n in c.nodes] == ["Flatten", "Dense"] and bn_1d is not None
    np.testing.assert_allclose(c(x), dense_after(x), rtol=1e-12)
    padded = rp.Sequential(_bn(3), rp.Conv2d(_conv(2, 3), padding=1), rp.Flatten(), rp.Dense(RNG.normal(size=(2, 72))))
    c = rp.canonize(padded, fold="after_and_before")  # BN before a padded conv is not exactly foldable: it stays
    assert c.nodes[0].layer.kind == "BatchNorm2d"
    np.testing.assert_allclose(c(X), padded(X), rtol=1e-12)
    unpadded = rp.Sequential(_bn(3), rp.Conv2d(_conv(2, 3)), rp.Flatten(), rp.Dense(RNG.normal(size=(2, 32))))
    assert [n.layer.kind for n in rp.canonize(unpadded).nodes][0] == "BatchNorm2d"
    c = rp.canonize(unpadded, fold="after_and_before")
    assert [n.layer.kind for n in c.nodes][0] == "Conv2d"
    np.testing.assert_allclose(c(X), unpadded(X), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fold", ["before", None, True])
def test_canonize_refuses_an_unknown_fold(fold):
    with pytest.raises(ValueError, match="after_and_before"):
        rp.canonize(residual_net(), fold=fold)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    g = residual_net()
    g32 = rp.Graph([rp.Node(n.name, n.layer, n.inputs) for n in g.nodes])
    p = tmp_path / "model.npz"
    rp.save(g32, p)
    h = rp.load(p)
    assert [(n.name, n.layer.kind, n.inputs) for n in h.nodes] == [(n.name, n.layer.kind, n.inputs) for n in g.nodes]
    for a, b in zip(g.nodes, h.nodes):
        for name in a.layer.arrays:
            x, y = getattr(a.layer, name), getattr(b.layer, name)
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
        for name in a.layer.hyper:
            assert getattr(a.layer, name) == getattr(b.layer, name)
    assert np.array_equal(h(X), g(X))
    assert np.array_equal(rp.attribute(h, X, "lrp.epsilon"), rp.attribute(g, X, "lrp.epsilon"))


def test_load_rejects_damaged_files(tmp_path):
    g = residual_net()
    p = tmp_path / "m.npz"
    rp.save(g, p)
    data = p.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable relprop model"):
        rp.load(tmp_path / "trunc.npz")
    (tmp_path / "garbage.npz").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable relprop model"):
        rp.load(tmp_path / "garbage.npz")
    np.savez(tmp_path / "foreign.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="readable relprop model"):
        rp.load(tmp_path / "foreign.npz")
    # a future format version is refused with a message saying so
    with zipfile.ZipFile(p) as z:
        hdr = np.load(z.open("__graph__.npy"))
    np.savez(tmp_path / "v9.npz", __graph__=np.array(str(hdr[()]).replace('"version": 1', '"version": 9')))
    with pytest.raises(ValueError, match="version 9"):
        rp.load(tmp_path / "v9.npz")
    with pytest.raises(FileNotFoundError):
        rp.load(os.fspath(tmp_path / "missing.npz"))


def test_ir_errors():
    with pytest.raises(ValueError, match="one shape"):
        rp.Graph([rp.Node("a", rp.Dense(np.ones((2, 3)))), rp.Node("b", rp.Dense(np.ones((4, 3)))),
                  rp.Node("s", rp.Add(), ("a", "b"))]).infer_shapes((3,))
    with pytest.raises(ValueError, match="two or more inputs"):
        rp.Graph([rp.Node("s", rp.Add(), ("input",))])
    with pytest.raises(ValueError, match="not defined before"):
        rp.Graph([rp.Node("s", rp.ReLU(), ("nope",))])
    with pytest.raises(ValueError, match="cannot reshape"):
        rp.Sequential(rp.Reshape((5,)), rp.Dense(np.ones((2, 5)))).infer_shapes((6,))
    with pytest.raises(ValueError, match="axis"):
        rp.Concat(axis=0)
    with pytest.raises(ValueError, match="running_var"):
        rp.BatchNorm2d(np.ones(2), np.ones(2), np.ones(2), -np.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        rp.BatchNorm2d(np.ones(2), np.ones(2), np.array([np.nan, 1.0]), np.ones(2))


def test_forward_accepts_any_output_shape_but_attribute_needs_scores():
    net = rp.Sequential(rp.Conv2d(_conv(2, 3), padding=1))
    y = net(X)
    assert y.shape == (3, 2, 6, 6)
    np.testing.assert_allclose(y, numpy_forward(net, X), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(N, classes\)"):
        rp.attribute(net, X, "gradient")
