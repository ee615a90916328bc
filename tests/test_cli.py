"""The command line (``relprop explain``, ``relprop info``, ``--help``): a store written by
``relprop explain`` equals what the Python API computes, for native, ONNX and torch model
files and for composites, rules, method parameters and targets; every failure is one line
``relprop: error: ...`` with exit status 1 (the job) or 2 (the command line), leaves nothing a
rerun would trust, and a rerun after an interruption resumes."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

import relprop as rp

import runner_models
from runner_models import cnn
from tolerance import assert_blas_close
from relprop import cli
from relprop.cli import main, parse_value
from relprop.runner import open_attributions
from relprop.runner import job as runner_job


def mlp(seed=0, d=6, h=8, c=3):
    return runner_models.mlp(seed, d, h, c)


@pytest.fixture
def files(tmp_path):
    """A native model, float64 data (comparable to 1e-12 across chunkings) and labels."""
    rng = np.random.default_rng(1)
    net = mlp()
    rp.save(net, tmp_path / "model.npz")
    x = rng.normal(size=(40, 6))
    y = rng.integers(0, 3, 40)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return {"dir": tmp_path, "net": net, "x": x, "y": y, "model": str(tmp_path / "model.npz"),
            "data": str(tmp_path / "x.npy"), "labels": str(tmp_path / "y.npy")}


def cli_run(*argv):
    """The exit status of ``relprop argv`` run in this process."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if not line.startswith("relprop: ") or "error" in line]
    assert len(err) == 1 and err[0].startswith("relprop: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def assert_store_equals(out, ref):
    res = open_attributions(out)
    assert res.complete
    np.testing.assert_allclose(np.asarray(res.attributions), ref.attribution, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(res.targets), ref.targets)
    np.testing.assert_allclose(np.asarray(res.scores), ref.scores, rtol=1e-10)
    return res


# -- explain: the store equals the API ----------------------------------------------------------
def test_explain_composite_equals_api(files, capsys):
    out = files["dir"] / "attr"
    assert cli_run("explain", files["model"], files["data"], "--composite", "EpsilonPlusFlat", "--out", out,
                   "--batch-size", "16", "--no-progress") == 0
    ex = rp.Explainer(files["net"], "lrp", rules=rp.composites.EpsilonPlusFlat())
    res = assert_store_equals(out, ex.explain(files["x"]))
    mem = ex.map(files["x"], batch_size=16, progress=False)
    assert_blas_close(np.asarray(res.attributions), mem.attributions)
    line = capsys.readouterr().out.strip()
    assert line.startswith("relprop: 40 samples (40 computed) in ") and "samples/s" in line and "'" + str(out) in line


@pytest.mark.parametrize("argv,method,params", [
    (["--rule", "Epsilon", "--rule-param", "epsilon=0.1"], "lrp.epsilon", {"epsilon": 0.1}),
    (["--rule", "z_plus"], "lrp.z_plus", {}),
    (["--method", "lrp.gamma", "--param", "gamma=0.5", "--param", "include_bias=false"], "lrp.gamma",
     {"gamma": 0.5, "include_bias": False}),
    (["-m", "smoothgrad", "-p", "base=lrp.epsilon", "-p", "samples=3", "-p", "seed=7", "-p", "epsilon=0.01"],
     "smoothgrad", {"base": "lrp.epsilon", "samples": 3, "seed": 7, "epsilon": 0.01}),
])
def test_explain_rule_and_params_equal_api(files, argv, method, params):
    out = files["dir"] / "attr"
    assert cli_run("explain", files["model"], files["data"], *argv, "--out", out, "--no-progress") == 0
    assert_store_equals(out, rp.Explainer(files["net"], method, **params).explain(files["x"]))


def test_explain_targets_and_label(files):
    out = files["dir"] / "ig"
    assert cli_run("explain", files["model"], files["data"], "--method", "integrated_gradients", "--param",
                   "steps=8", "--targets", "0,2", "--out", out, "--no-progress", "--batch-size", "7") == 0
    ex = rp.Explainer(files["net"], "integrated_gradients", steps=8)
    assert_store_equals(out, ex.explain(files["x"], targets=[0, 2]))
    out = files["dir"] / "label.zarr"
    assert cli_run("explain", files["model"], files["data"], "--rule", "Epsilon", "--target", "label", "--labels",
                   files["labels"], "--out", out, "--no-progress", "--dtype", "float32") == 0
    res = open_attributions(out)
    np.testing.assert_array_equal(np.asarray(res.targets), files["y"])
    ref = rp.Explainer(files["net"], "lrp.epsilon").explain(files["x"].astype(np.float32), target=files["y"])
    np.testing.assert_allclose(np.asarray(res.attributions), ref.attribution, rtol=1e-5, atol=1e-6)


def test_explain_composite_params_on_a_cnn(tmp_path):
    net = cnn()
    rp.save(net, tmp_path / "cnn.npz")
    x = np.random.default_rng(2).uniform(-2, 2, (12, 1, 8, 8))
    np.save(tmp_path / "img.npy", x)
    assert cli_run("explain", tmp_path / "cnn.npz", tmp_path / "img.npy", "--composite", "epsilon_gamma_box",
                   "--composite-param", "low=-3", "--composite-param", "high=3", "--composite-param", "gamma=0.5",
                   "--target", "1", "--out", tmp_path / "o", "--no-progress") == 0
    ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonGammaBox(-3, 3, gamma=0.5))
    assert_store_equals(tmp_path / "o", ex.explain(x, target=1))


def test_explain_onnx_model(files):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    d0, d1 = files["net"].nodes[0].layer, files["net"].nodes[2].layer
    inits = [numpy_helper.from_array(np.asarray(a, np.float32), n) for a, n in
             ((d0.weight, "W1"), (d0.bias, "b1"), (d1.weight, "W2"), (d1.bias, "b2"))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = files["dir"] / "model.onnx"
    onnx.save(model, path)
    out = files["dir"] / "o"
    assert cli_run("explain", path, files["data"], "--method", "gradient_x_input", "--out", out,
                   "--no-progress") == 0
    assert_store_equals(out, rp.Explainer(rp.from_onnx(str(path)), "gradient_x_input").explain(files["x"]))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script is deprecated in favour of export
def test_explain_torch_files(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(3 * 16, 4)).double().eval()
    x = np.random.default_rng(3).normal(size=(10, 1, 4, 4))
    np.save(tmp_path / "x.npy", x)
    torch.jit.script(m).save(str(tmp_path / "m.pt"))
    torch.export.save(torch.export.export(m, (torch.as_tensor(x[:2]),)), str(tmp_path / "m.pt2"))
    torch.save(m, tmp_path / "pickled.pth")
    ref = rp.Explainer(rp.from_torch(m, x[:2]), "gradient").explain(x)
    for name in ("m.pt", "m.pt2"):
        out = tmp_path / f"o_{name}"
        assert cli_run("explain", tmp_path / name, tmp_path / "x.npy", "-m", "gradient", "-o", out,
                       "--no-progress") == 0, capsys.readouterr().err
        assert_store_equals(out, ref)
    capsys.readouterr()
    assert cli_run("explain", tmp_path / "pickled.pth", tmp_path / "x.npy", "-m", "gradient", "-o",
                   tmp_path / "p") == 1
    assert "torch.save file" in one_error_line(capsys)
    assert not (tmp_path / "p").exists()


def test_explain_image_folder_options(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(4)
    for c in ("cat", "dog"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    net = cnn()
    rp.save(net, tmp_path / "cnn.npz")
    assert cli_run("explain", tmp_path / "cnn.npz", tmp_path / "imgs", "--rule", "Epsilon", "--size", "8,8",
                   "--mode", "L", "--mean", "0.5", "--std", "0.25", "--target", "label", "--out", tmp_path / "o",
                   "--no-progress") == 0
    src = rp.runner.as_source(str(tmp_path / "imgs"), size=(8, 8), mode="L", mean=0.5, std=0.25)
    x, y = src.read(0, src.n)
    res = open_attributions(tmp_path / "o")
    np.testing.assert_array_equal(np.asarray(res.targets), y)
    ref = rp.Explainer(net, "lrp.epsilon").explain(x.astype(np.float32), target=y)
    np.testing.assert_allclose(np.asarray(res.attributions), ref.attribution, rtol=1e-5, atol=1e-6)


# -- errors ---------------------------------------------------------------------------------------
def _bad(files):
    d = files["dir"]
    (d / "text.npz").write_text("not a model\n")
    (d / "text.npy").write_text("not an array\n")
    np.save(d / "wide.npy", np.zeros((5, 7)))
    return d


@pytest.mark.parametrize("argv,code,says", [
    (["explain", "{d}/missing.npz", "{data}", "-m", "gradient"], 1, "model file not found"),
    (["explain", "{d}/text.npz", "{data}", "-m", "gradient"], 1, "not a readable relprop model file"),
    (["explain", "{data}", "{data}", "-m", "gradient"], 1, "unknown format '.npy'"),
    (["explain", "{model}", "{d}/missing.npy", "-m", "gradient"], 1, "does not exist"),
    (["explain", "{model}", "{d}/text.npy", "-m", "gradient"], 1, "not a readable .npy array"),
    (["explain", "{model}", "{d}/wide.npy", "-m", "gradient"], 1, "samples shaped (7,) do not fit the model"),
    (["explain", "{model}", "{data}", "-m", "lrp.epsilom"], 2, "did you mean 'lrp.epsilon'?"),
    (["explain", "{model}", "{data}", "-m", "lrp.epsilon", "-p", "epsilon"], 2, "expected KEY=VALUE"),
    (["explain", "{model}", "{data}", "-m", "lrp.epsilon", "-p", "eps=1"], 2, "did you mean 'epsilon'?"),
    (["explain", "{model}", "{data}", "-m", "lrp.epsilon", "-p", "epsilon=-1"], 2, "epsilon must be"),
    (["explain", "{model}", "{data}", "-m", "lrp"], 2, "--composite NAME"),
    (["explain", "{model}", "{data}", "-m", "gradient", "--rule", "Epsilon"], 2, "not of 'gradient'"),
    (["explain", "{model}", "{data}", "--composite", "EpsilonPlusFlt"], 2, "did you mean 'EpsilonPlusFlat'?"),
    (["explain", "{model}", "{data}", "--composite", "EpsilonGammaBox"], 2, "--composite-param low=..."),
    (["explain", "{model}", "{data}", "--composite", "EpsilonGammaBox", "-p", "low=-3"], 2,
     "--composite-param low="),
    (["explain", "{model}", "{data}", "--rule", "Gamma", "--rule-param", "gama=1"], 2, "did you mean 'gamma'?"),
    (["explain", "{model}", "{data}", "-m", "gradient", "--target", "first"], 2, "--target must be"),
    (["explain", "{model}", "{data}", "-m", "gradient", "--batch-size", "0"], 2, "--batch-size"),
    (["explain", "{model}", "{data}", "-m", "gradient", "--max-memory", "lots"], 2, "--max-memory"),
    (["explain", "{model}", "{data}", "-m", "gradient", "--target", "label"], 1, "--labels"),
    (["explain", "{model}", "{data}", "-m", "gradient", "--targets", "0,9"], 1, "0..2"),
    (["explain", "{model}", "-m", "gradient"], 2, "the following arguments are required"),
    (["explain", "{model}", "{data}", "-m", "gradient", "--size", "3"], 2, "--size"),
    (["explane"], 2, "invalid choice"),
])
def test_errors_are_one_line(files, capsys, argv, code, says):
    d = _bad(files)
    out = d / "out"
    argv = [a.format(d=d, data=files["data"], model=files["model"]) for a in argv]
    if argv[0] == "explain" and len(argv) > 2:
        argv += ["--out", str(out)]
    assert cli_run(*argv) == code
    line = one_error_line(capsys)
    assert says in line, line
    assert not out.exists()


def test_another_jobs_store_is_refused_then_overwritten(files, capsys):
    out = files["dir"] / "o"
    args = ["explain", files["model"], files["data"], "--out", out, "--no-progress"]
    assert cli_run(*args, "-m", "gradient") == 0
    assert cli_run(*args, "-m", "lrp.epsilon") == 1
    assert "holds the results of another job" in one_error_line(capsys)
    assert open_attributions(out).method == "gradient"  # untouched
    assert cli_run(*args, "-m", "lrp.epsilon", "--overwrite") == 0
    assert_store_equals(out, rp.Explainer(files["net"], "lrp.epsilon").explain(files["x"]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder(files, capsys):
    ro = files["dir"] / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert cli_run("explain", files["model"], files["data"], "-m", "gradient", "--out", ro / "o") == 1
        assert "Permission denied" in one_error_line(capsys)
    finally:
        ro.chmod(0o700)
    assert not (ro / "o").exists()


def test_output_that_cannot_be_created(files, capsys):
    """The stand-in for disk errors that runs as root too: OUT below a regular file."""
    (files["dir"] / "file").write_text("x")
    assert cli_run("explain", files["model"], files["data"], "-m", "gradient", "--out",
                   files["dir"] / "file" / "o") == 1
    assert "Not a directory" in one_error_line(capsys)


def test_disk_full(files, capsys, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = files["dir"] / "o"
    args = ["explain", files["model"], files["data"], "-m", "gradient", "--out", out, "--no-progress"]
    with monkeypatch.context() as mp:
        mp.setattr(os, "posix_fallocate", full)
        assert cli_run(*args) == 1
    line = one_error_line(capsys)
    assert "No space left on device" in line and "the disk is full" in line
    assert not out.exists()  # laid out, never described: removed, so the rerun starts clean
    assert cli_run(*args) == 0
    assert_store_equals(out, rp.Explainer(files["net"], "gradient").explain(files["x"]))


def test_interrupt_then_resume(files, capsys, monkeypatch):
    out = files["dir"] / "o"
    args = ["explain", files["model"], files["data"], "--rule", "Epsilon", "--out", out, "--batch-size", "8",
            "--no-progress"]
    compute = runner_job.Chunk.compute
    calls = []

    def ctrl_c(self, x, y, sl, **kw):
        calls.append(sl)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return compute(self, x, y, sl, **kw)

    with monkeypatch.context() as mp:
        mp.setattr(runner_job.Chunk, "compute", ctrl_c)
        assert cli_run(*args) == 130
    line = one_error_line(capsys)
    assert "interrupted" in line and "resume" in line
    part = open_attributions(out)
    assert not part.complete and part.finished_rows().sum() == 16
    assert cli_run(*args) == 0
    assert "(24 computed, 16 from an earlier run)" in capsys.readouterr().out
    assert_store_equals(out, rp.Explainer(files["net"], "lrp.epsilon").explain(files["x"]))


def test_debug_shows_the_exception(files, monkeypatch):
    (files["dir"] / "text.npz").write_text("not a model\n")
    out = ["--out", str(files["dir"] / "o")]
    with pytest.raises(ValueError, match="not a readable relprop model"):
        main(["explain", str(files["dir"] / "text.npz"), files["data"], "-m", "gradient", *out, "--debug"])
    monkeypatch.setenv("RELPROP_DEBUG", "1")
    with pytest.raises(cli.UsageError, match="did you mean"):
        main(["explain", files["model"], files["data"], "-m", "gradiant", *out])


# -- parameter values -----------------------------------------------------------------------------
@pytest.mark.parametrize("text,value", [
    ("1e-3", 1e-3), ("3", 3), ("-2", -2), ("true", True), ("False", False), ("none", None), ("inf", float("inf")),
    ("3,3", [3, 3]), ("[2, 0.5]", [2, 0.5]), ("3,", [3]), ("[]", []), ("lrp.epsilon", "lrp.epsilon"),
    ("'3'", "3"), ("bilinear", "bilinear"),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_parse_value_reads_npy(tmp_path):
    np.save(tmp_path / "b.npy", np.arange(6.0))
    np.testing.assert_array_equal(parse_value(f"@{tmp_path / 'b.npy'}"), np.arange(6.0))


# -- info, help -----------------------------------------------------------------------------------
def test_info(capsys):
    assert cli_run("info") == 0
    text = capsys.readouterr().out
    assert text.startswith(f"relprop {rp.__version__} ")
    for label in ("Python:", "numpy:", "numba:", "CPU threads:", "BLAS:", "GPU:", "Numba cache:", "extras:"):
        assert label in text


@pytest.mark.parametrize("argv", [["--help"], ["explain", "--help"]])
def test_help_shows_an_example(capsys, argv):
    assert cli_run(*argv) == 0
    text = capsys.readouterr().out
    assert "Example" in text and "relprop explain model.npz images.npy" in text


# -- as a program ---------------------------------------------------------------------------------
def test_subprocess_exit_status(files):
    def relprop(*argv):
        return subprocess.run([sys.executable, "-m", "relprop", *map(str, argv)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "RELPROP_DEBUG": ""})

    out = files["dir"] / "o"
    ok = relprop("explain", files["model"], files["data"], "--rule", "Epsilon", "--out", out)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("relprop: 40 samples") and "Traceback" not in ok.stderr
    failed = relprop("explain", files["model"], files["data"], "-m", "gradient", "--out", out)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("relprop: error: output")
    usage = relprop("explain", files["model"], files["data"], "-m", "lrp.epsilon", "-p", "epsilon")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    assert usage.stderr.strip().splitlines() == [usage.stderr.strip()]
