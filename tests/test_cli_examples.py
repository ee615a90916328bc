"""Every example that ``relprop --help`` and each subcommand's ``--help`` shows runs as written.

The examples are read from the parsers' help texts (lines ``  relprop ...``, with ``\\``
continuations), and each runs in a fresh folder that holds the files they name: ``model.npz``
and ``model.onnx`` (the same small CNN for 1x8x8 images, 6 classes), ``images.npy`` (pixels in
[-3, 3], inside EpsilonGammaBox's bounds), ``labels.npy``, ``tabular.npz`` with ``rows.npy``.
"""
from __future__ import annotations

import shlex

import numpy as np
import pytest

import relprop as rp
from relprop import cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("PIL")
pytest.importorskip("matplotlib")


def _help_texts():
    parser = cli.build_parser()
    texts = {"relprop": parser.format_help()}
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            texts[name] = sub.format_help()
    return texts


def _examples(text):
    out, cur = [], None
    for line in text.splitlines():
        s = line.strip()
        if cur is not None:
            cur += " " + s.rstrip("\\").strip()
            if not s.endswith("\\"):
                out.append(cur)
                cur = None
        elif line.startswith("  relprop ") and not s.startswith("relprop:"):
            if s.endswith("\\"):
                cur = s.rstrip("\\").strip()
            else:
                out.append(s)
    return out


EXAMPLES = sorted({(cmd, ex) for cmd, text in _help_texts().items() for ex in _examples(text)})


def test_every_subcommand_shows_examples():
    cmds = {cmd for cmd, _ in EXAMPLES}
    assert cmds == set(_help_texts()), set(_help_texts()) - cmds


def _onnx_cnn(path, w, b, W, B):
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in ((w, "w"), (b, "b"), (W, "W"), (B, "B"))]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "W", "B"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def example_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("example-files")
    rng = np.random.default_rng(4)
    w, b = rng.normal(0, .5, (4, 1, 3, 3)), rng.normal(0, .1, 4)
    W, B = rng.normal(0, .3, (6, 64)), rng.normal(0, .1, 6)
    rp.save(rp.Sequential(rp.Conv2d(w, b, padding=1), rp.ReLU(), rp.MaxPool2d(2), rp.Flatten(), rp.Dense(W, B)),
            d / "model.npz")
    _onnx_cnn(d / "model.onnx", w, b, W, B)
    np.save(d / "images.npy", np.clip(rng.normal(size=(20, 1, 8, 8)), -3, 3).astype(np.float32))
    np.save(d / "labels.npy", rng.integers(0, 6, 20))
    rp.save(rp.Sequential(rp.Dense(rng.normal(0, .5, (8, 6)), np.zeros(8)), rp.ReLU(),
                          rp.Dense(rng.normal(0, .5, (3, 8)), np.zeros(3))), d / "tabular.npz")
    np.save(d / "rows.npy", rng.normal(size=(70, 6)).astype(np.float32))
    return d


@pytest.mark.parametrize("cmd, example", EXAMPLES, ids=[f"{c}: {e[:60]}" for c, e in EXAMPLES])
def test_help_example_runs(cmd, example, example_files, tmp_path, monkeypatch, capsys):
    for f in example_files.iterdir():
        (tmp_path / f.name).symlink_to(f)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(example)[1:]
    code = cli.run(argv)
    err = capsys.readouterr().err
    assert code == 0, f"{example!r} exited {code}: {err}"
