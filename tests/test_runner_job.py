"""The dataset runner (``Explainer.map``): every store and source kind gives what one
``Explainer.explain`` call on the whole dataset gives; targets, chunking, the metadata, the
refuse-to-mix rule and bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

import relprop as rp
from relprop.runner import JobError, SourceError, StoreError, open_attributions, parse_memory

pytest.importorskip("zarr")

from runner_models import cnn, mlp, record_in_place  # noqa: E402


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    return rng.normal(size=(103, 14))  # float64: results comparable to 1e-12 across chunkings


def whole(ex, x, **kw):
    return ex.explain(x, **kw)


@pytest.mark.parametrize("store", ["npy", "zarr", "memory"])
@pytest.mark.parametrize("method,params", [("lrp.epsilon", {}), ("gradient", {}),
                                           ("integrated_gradients", {"steps": 8}),
                                           ("smoothgrad", {"samples": 3, "seed": 5}),
                                           ("occlusion", {"window": (2,)})])
def test_map_equals_one_explain_call(tmp_path, data, store, method, params):
    net = mlp()
    ex = rp.Explainer(net, method, **params)
    out = None if store == "memory" else tmp_path / ("a.zarr" if store == "zarr" else "a")
    res = ex.map(data, out=out, batch_size=17, progress=False)
    ref = whole(ex, data)
    np.testing.assert_allclose(np.asarray(res.attributions), ref.attribution, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(res.targets), ref.targets)
    np.testing.assert_allclose(np.asarray(res.scores), ref.scores, rtol=1e-12)
    if ref.error is None:
        assert res.error is None
    else:
        np.testing.assert_allclose(np.asarray(res.error), ref.error, atol=1e-10)
    assert res.complete and res.finished_rows().all()
    assert res.meta["chunk_rows"] == 17 and res.meta["n"] == 103
    if out is not None:
        again = open_attributions(out)
        np.testing.assert_array_equal(np.asarray(again.attributions), np.asarray(res.attributions))
        assert again.method == method


def test_conservation_error_column_is_what_the_method_promises(tmp_path, data):
    """lrp.zplus with a bias-free net conserves: sum R = s_c (Bach et al. 2015, eq. 2); IG's
    completeness error with many steps is small (Sundararajan et al. 2017, Prop. 1)."""
    rng = np.random.default_rng(3)
    net = rp.Sequential(rp.Dense(rng.uniform(0, 1, (8, 14)), np.zeros(8)), rp.ReLU(),
                        rp.Dense(rng.uniform(0, 1, (3, 8)), np.zeros(3)))
    x = np.abs(data)
    res = rp.Explainer(net, "lrp.z_plus").map(x, out=tmp_path / "z", batch_size=10, progress=False)
    s = np.asarray(res.scores)
    np.testing.assert_allclose(s, net(x)[np.arange(len(x)), np.asarray(res.targets)], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(res.error), np.asarray(res.attributions).sum(1) - s, atol=1e-12)
    # what is missing is what the stabilizer in the rule's denominators absorbs
    assert np.max(np.abs(res.error)) < 1e-6 * np.max(np.abs(s))
    assert res.meta["sums_to"] == "score"


@pytest.mark.parametrize("kind", ["class", "array", "label", "list", "all", "array2"])
def test_targets(tmp_path, data, kind):
    net = mlp()
    ex = rp.Explainer(net, "lrp.epsilon")
    n = len(data)
    labels = np.arange(n) % 3
    kw = {"class": dict(target=2), "array": dict(target=labels[::-1].copy()), "label": dict(target="label"),
          "list": dict(targets=[0, 2]), "all": dict(targets="all"),
          "array2": dict(targets=np.stack([labels, (labels + 1) % 3], 1))}[kind]
    res = ex.map(data, out=tmp_path / "t", batch_size=20, labels=labels, progress=False, **kw)
    call = dict(kw)
    if kind == "label":
        call = dict(target=labels)
    ref = ex.explain(data, **call)
    np.testing.assert_allclose(np.asarray(res.attributions), ref.attribution, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(res.targets), ref.targets)
    if kind in ("list", "all", "array2"):
        assert res.attributions.shape[:2] == (n, 2 if kind != "all" else 3)


def test_iterable_source_and_dataloader(tmp_path, data):
    torch = pytest.importorskip("torch")
    net = mlp()
    ex = rp.Explainer(net, "gradient")
    labels = np.arange(len(data)) % 3
    ds = torch.utils.data.TensorDataset(torch.from_numpy(data), torch.from_numpy(labels))
    loader = torch.utils.data.DataLoader(ds, batch_size=13, shuffle=False)
    res = ex.map(loader, out=tmp_path / "dl", target="label", batch_size=20, progress=False)
    ref = ex.explain(data, target=labels)
    np.testing.assert_allclose(np.asarray(res.attributions), ref.attribution, rtol=1e-12, atol=1e-12)
    assert res.meta["source"]["kind"].startswith("iterable")
    # a generator of bare x batches, its length given
    gen = (data[i:i + 9] for i in range(0, len(data), 9))
    res = ex.map(gen, out=tmp_path / "gen", batch_size=25, n=len(data), progress=False)
    np.testing.assert_allclose(np.asarray(res.attributions), ex.explain(data).attribution, rtol=1e-12, atol=1e-12)


def test_iterable_that_yields_the_wrong_number_of_samples(tmp_path, data):
    ex = rp.Explainer(mlp(), "gradient")
    with pytest.raises(SourceError, match="yielded 103 samples, n=110"):
        ex.map((data[i:i + 9] for i in range(0, 103, 9)), out=tmp_path / "g", n=110, batch_size=10, progress=False)
    with pytest.raises(SourceError, match="more than n=50"):
        ex.map((data[i:i + 9] for i in range(0, 103, 9)), out=tmp_path / "h", n=50, batch_size=10, progress=False)
    with pytest.raises(JobError, match="no length"):
        ex.map((data[i:i + 9] for i in range(0, 103, 9)), out=tmp_path / "k", progress=False)


def test_npy_memmap_and_zarr_sources(tmp_path, data):
    import zarr

    ex = rp.Explainer(mlp(), "lrp.epsilon")
    np.save(tmp_path / "x.npy", data)
    z = zarr.create_array(str(tmp_path / "x.zarr"), shape=data.shape, chunks=(10, 14), dtype="f8")
    z[:] = data
    ref = ex(data)
    for src in (tmp_path / "x.npy", str(tmp_path / "x.zarr"), z):
        res = ex.map(src, out=None, batch_size=30, progress=False)
        np.testing.assert_allclose(np.asarray(res.attributions), ref, rtol=1e-12, atol=1e-12)
    meta = ex.map(tmp_path / "x.npy", out=tmp_path / "o", batch_size=30, progress=False).meta
    assert meta["source"]["kind"] == "npy" and meta["source"]["path"].endswith("x.npy")


def test_store_is_plain_npy_files_with_metadata(tmp_path, data):
    net = mlp()
    ex = rp.Explainer(net, "lrp.epsilon", epsilon=0.01)
    ex.map(data.astype(np.float32), out=tmp_path / "s", progress=False)
    a = np.load(tmp_path / "s" / "attributions.npy", mmap_mode="r")
    assert a.dtype == np.float32 and a.shape == data.shape
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["identity"]["method"] == "lrp.epsilon"
    assert meta["identity"]["params"]["epsilon"] == 0.01
    assert meta["identity"]["model"] == rp.core.plan.fingerprint(net)
    assert meta["relprop"] == rp.__version__ and meta["identity"]["dtype"] == "<f4"
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["attributions.npy", "error.npy", "manifest",
                                                                "meta.json", "scores.npy", "targets.npy"]


def test_float32_results_within_blas_rounding(tmp_path):
    """A float32 job vs one call: chunk rows are whole internal batches, so GEMM shapes match
    except in each chunk's last batch; equal to 1e-5 x max|R|."""
    x = np.random.default_rng(2).normal(size=(300, 1, 8, 8)).astype(np.float32)
    ex = rp.Explainer(cnn(), "lrp", rules=rp.composites.EpsilonPlusFlat())
    res = ex.map(x, out=tmp_path / "f", batch_size=64, progress=False)
    ref = ex(x)
    assert np.max(np.abs(np.asarray(res.attributions) - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_samples_are_reshaped_only_by_unit_axes_or_flattening(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 8, 8))
    ex = rp.Explainer(cnn(), "gradient")
    res = ex.map(x, progress=False)  # (8, 8) -> (1, 8, 8)
    np.testing.assert_allclose(res.attributions, ex(x[:, None]), rtol=1e-12)
    res = rp.Explainer(mlp(d=64), "gradient").map(x, progress=False)  # (8, 8) -> (64,) for a Dense input
    assert res.attributions.shape == (20, 64)
    with pytest.raises(JobError, match="do not fit the model"):
        ex.map(np.zeros((4, 8, 8, 3)), progress=False)  # channels last: refused, never guessed
    with pytest.raises(JobError, match="do not fit the model"):
        rp.Explainer(mlp(d=14), "gradient").map(np.zeros((4, 15)), progress=False)


def test_rerun_continues_and_refuses_another_job(tmp_path, data):
    ex = rp.Explainer(mlp(), "lrp.epsilon", epsilon=1e-3)
    out = tmp_path / "job"
    first = ex.map(data, out=out, batch_size=20, progress=False)
    stamp = {p.name: p.read_text() for p in (out / "manifest").iterdir()}
    again = ex.map(data, out=out, batch_size=20, progress=False)  # nothing left: no chunk rewritten
    assert {p.name: p.read_text() for p in (out / "manifest").iterdir()} == stamp
    np.testing.assert_array_equal(np.asarray(again.attributions), np.asarray(first.attributions))
    for other, what in [(rp.Explainer(mlp(), "lrp.epsilon", epsilon=1e-2), "params"),
                        (rp.Explainer(mlp(seed=1), "lrp.epsilon", epsilon=1e-3), "model"),
                        (rp.Explainer(mlp(), "gradient"), "method")]:
        with pytest.raises(StoreError, match=f"another job \\({what}"):
            other.map(data, out=out, batch_size=20, progress=False)
    with pytest.raises(StoreError, match="another job \\(targets"):
        ex.map(data, out=out, batch_size=20, target=1, progress=False)
    with pytest.raises(StoreError, match="another job \\(source"):
        ex.map(data[:50], out=out, batch_size=20, progress=False)
    with pytest.raises(StoreError, match="another job \\(dtype"):
        ex.map(data.astype(np.float32), out=out, batch_size=20, progress=False)
    res = rp.Explainer(mlp(), "gradient").map(data, out=out, batch_size=20, overwrite=True, progress=False)
    assert res.method == "gradient" and res.complete


def test_random_method_seed_is_fixed_once_and_recorded(tmp_path, data):
    ex = rp.Explainer(mlp(), "expected_gradients", baselines=np.zeros((4, 14)), samples=4)  # seed=None
    res = ex.map(data, out=tmp_path / "r", batch_size=16, progress=False)
    seed = res.params["seed"]
    assert isinstance(seed, int)
    ref = rp.Explainer(mlp(), "expected_gradients", baselines=np.zeros((4, 14)), samples=4, seed=seed)(data)
    np.testing.assert_allclose(np.asarray(res.attributions), ref, rtol=1e-12, atol=1e-12)
    # a resumed run keeps the recorded seed: the job identity includes it, so a fresh seed would be refused
    again = ex.map(data, out=tmp_path / "r", batch_size=16, progress=False)
    assert again.params["seed"] == seed


def test_foreign_or_damaged_folders(tmp_path, data):
    ex = rp.Explainer(mlp(), "gradient")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match="not empty and holds no relprop store"):
        ex.map(data, out=tmp_path / "f", progress=False)
    assert (tmp_path / "f" / "holiday.jpg").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        ex.map(data, out=tmp_path / "file", progress=False)
    ex.map(data, out=tmp_path / "d", batch_size=30, progress=False)
    (tmp_path / "d" / "meta.json").write_text("{not json")
    with pytest.raises(StoreError, match="not readable relprop metadata"):
        ex.map(data, out=tmp_path / "d", batch_size=30, progress=False)
    ex.map(data, out=tmp_path / "e", batch_size=30, progress=False)
    with open(tmp_path / "e" / "scores.npy", "r+b") as f:
        f.truncate(100)
    with pytest.raises(StoreError, match="scores.npy is missing or damaged"):
        ex.map(data, out=tmp_path / "e", batch_size=30, progress=False)
    with pytest.raises(StoreError, match="no relprop attribution store"):
        open_attributions(tmp_path / "f")


@pytest.mark.parametrize("bad,err,match", [
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(batch_size=2.5), ValueError, "batch_size"),
    (dict(max_memory="lots"), ValueError, "max_memory"),
    (dict(max_memory=100), ValueError, "at least 1 MiB"),
    (dict(max_memory="1MB"), JobError, "too small"),
    (dict(target="labels"), ValueError, "'pred', 'label'"),
    (dict(target="label"), JobError, "needs labels"),
    (dict(target=7), ValueError, "out of range"),
    (dict(target=np.zeros(5, int)), ValueError, "shaped \\(103,\\)"),
    (dict(targets=[0, 9]), ValueError, "0..2"),
    (dict(target=1, targets=[0]), TypeError, "not both"),
    (dict(overwrite="yes"), TypeError, "overwrite"),
    (dict(dtype=np.int32), TypeError, "float32 or float64"),
    (dict(out=5), TypeError, "out must be a path"),
    (dict(n=7), JobError, "n=7"),
    (dict(labels=np.zeros(4, int)), SourceError, "labels"),
])
def test_bad_job_parameters_are_refused_before_anything_runs(tmp_path, data, bad, err, match):
    ex = rp.Explainer(mlp(), "gradient")
    kw = dict(out=tmp_path / "never", progress=False)
    kw.update(bad)
    with pytest.raises(err, match=match):
        ex.map(data, **kw)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("src,match", [("missing.npy", "does not exist"), (object(), "cannot read a dataset"),
                                       (np.zeros(5), "shaped \\(n_samples"), (np.zeros((0, 14)), "empty"),
                                       (np.array([["a"] * 14]), "numbers")])
def test_bad_sources(tmp_path, src, match):
    ex = rp.Explainer(mlp(), "gradient")
    if isinstance(src, str):
        src = tmp_path / src
    with pytest.raises(SourceError, match=match):
        ex.map(src, progress=False)


def test_non_finite_input_named_by_row(tmp_path, data):
    bad = data.copy()
    bad[57, 3] = np.nan
    with pytest.raises(JobError, match="rows 40..59: sample 17"):
        rp.Explainer(mlp(), "gradient").map(bad, out=tmp_path / "nan", batch_size=20, progress=False)
    res = open_attributions(tmp_path / "nan")  # the chunks before it are finished and kept
    assert not res.complete and res.finished_rows()[:40].all() and not res.finished_rows()[40:].any()


def test_memory_strings():
    assert parse_memory("2GB") == 2 * 2**30
    assert parse_memory("512 MiB") == 512 * 2**20
    assert parse_memory("1.5g") == int(1.5 * 2**30)
    assert parse_memory(3 * 2**20) == 3 * 2**20


def test_auto_chunks_follow_max_memory(tmp_path):
    ex = rp.Explainer(cnn(), "gradient")
    x = np.zeros((200000, 1, 8, 8), np.float32)
    assert ex.map(x[:1], progress=False).meta["chunk_rows"] == 1
    a = rp.runner.job.plan_job(ex, x, None, max_memory="20MB")[2]["chunk_rows"]
    b = rp.runner.job.plan_job(ex, x, None, max_memory="40MB")[2]["chunk_rows"]
    assert 1 < a < b < 200000


def test_resume_after_changing_max_memory_takes_the_stores_chunks(tmp_path, data):
    ex = rp.Explainer(mlp(), "lrp.epsilon")
    x = np.random.default_rng(5).normal(size=(30000, 14))
    res = ex.map(x, out=tmp_path / "m2", max_memory="20MB", batch_size="auto", progress=False)
    rows = res.meta["chunk_rows"]
    assert 1 < rows < 10000
    keep = sorted((tmp_path / "m2" / "manifest").iterdir())
    for p in keep[1:3]:
        p.unlink()  # two chunks "not finished"
    again = ex.map(x, out=tmp_path / "m2", max_memory="2GB", progress=False)  # auto: the store's chunks
    assert again.meta["chunk_rows"] == rows and again.complete
    np.testing.assert_allclose(np.asarray(again.attributions), ex(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(StoreError, match=f"pass batch_size={rows}"):
        ex.map(x, out=tmp_path / "m2", batch_size=rows + 1, progress=False)


def test_scores_are_the_models_scores(tmp_path):
    """The stored scores are s_c(x) of the model's forward pass, also where the traversal's own
    forward pass supplied them (DeepLIFT's [x; x0] batch, alpha-beta's [W+; W-] forward, several
    targets)."""
    x = np.random.default_rng(4).normal(size=(50, 1, 8, 8))
    net = cnn()
    s = rp.forward(net, x)
    for method, kw, t in [("deeplift.rescale", {}, None), ("lrp", {"rules": rp.composites.EpsilonAlpha2Beta1()}, None),
                          ("gradient", {}, [1, 4]), ("integrated_gradients", {"steps": 4}, None)]:
        res = rp.Explainer(net, method, **kw).map(x, targets=t, batch_size=16, progress=False)
        T = np.asarray(res.targets)
        want = s[np.arange(50)[:, None], T] if t is not None else s[np.arange(50), T]
        np.testing.assert_allclose(np.asarray(res.scores), want, rtol=1e-12, atol=1e-12, err_msg=method)
        if t is None:
            np.testing.assert_array_equal(T, s.argmax(1))


def test_parameters_inside_rules_are_part_of_the_job(tmp_path):
    x = np.random.default_rng(4).uniform(-2, 2, size=(30, 1, 8, 8))
    lo = np.full((1, 8, 8), -3.0)
    ex = rp.Explainer(cnn(), "lrp", rules=[rp.rules.ZBox(lo, -lo), rp.rules.Epsilon()])
    ex.map(x, out=tmp_path / "zb", progress=False)
    lo2 = lo.copy()
    lo2[0, 0, 0] = -4.0
    other = rp.Explainer(cnn(), "lrp", rules=[rp.rules.ZBox(lo2, -lo), rp.rules.Epsilon()])
    with pytest.raises(StoreError, match="another job \\(params"):
        other.map(x, out=tmp_path / "zb", progress=False)
    eps = rp.Explainer(cnn(), "lrp", rules=rp.composites.EpsilonPlusFlat())
    eps.map(x, out=tmp_path / "c", progress=False)
    with pytest.raises(StoreError, match="another job \\(params"):
        rp.Explainer(cnn(), "lrp", rules=rp.composites.EpsilonPlusFlat(stabilizer=1e-3)).map(
            x, out=tmp_path / "c", progress=False)
    with pytest.raises(StoreError, match="another job \\(allow_tf32"):
        rp.Explainer(cnn(), "lrp", rules=rp.composites.EpsilonPlusFlat(), allow_tf32=True).map(
            x, out=tmp_path / "c", progress=False)


def test_never_deletes_what_is_not_a_relprop_store(tmp_path, data):
    ex = rp.Explainer(mlp(), "gradient")
    mine = tmp_path / "results"
    mine.mkdir()
    np.save(mine / "targets.npy", np.arange(3))  # a user's file named like a store column
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="deletes only its own stores"):
            ex.map(data, out=mine, overwrite=overwrite, progress=False)
    assert (mine / "targets.npy").exists()


def test_a_failing_writer_stops_the_job_with_its_error(tmp_path, data, monkeypatch):
    """A disk error in the writer thread ends the job with that error (no hang), and the
    chunks written before it stay recorded."""
    import errno

    from relprop.runner import stores

    real = stores.NpyStore._put

    def put(self, name, sl, a):
        if sl.start >= 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, name, sl, a)

    monkeypatch.setattr(stores.NpyStore, "_put", put)
    with pytest.raises(OSError, match="No space left"):
        rp.Explainer(mlp(), "gradient").map(data, out=tmp_path / "full", batch_size=10, progress=False)
    assert open_attributions(tmp_path / "full").finished_rows().sum() == 40


def test_a_shuffling_dataloader_is_refused(tmp_path, data):
    torch = pytest.importorskip("torch")
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(data)), batch_size=8,
                                         shuffle=True)
    with pytest.raises(SourceError, match="shuffle=False"):
        rp.Explainer(mlp(), "gradient").map(loader, out=tmp_path / "s", progress=False)


def test_plain_progress_lines(tmp_path, data, capsys):
    rp.Explainer(mlp(), "gradient").map(data, out=tmp_path / "p", batch_size=20)
    err = capsys.readouterr().err
    assert "103/103 samples (100.0%)" in err and "samples/s" in err
    rp.Explainer(mlp(), "gradient").map(data, out=tmp_path / "p", batch_size=20)
    assert "nothing left to compute" in capsys.readouterr().err


def test_an_iterable_that_refills_its_array_gives_each_batch_its_own_results(tmp_path, data):
    """A generator that yields one array, refilled for each batch (as some loaders do): every chunk
    is computed on the rows it had when it was read and checked, not on what the generator wrote
    there later while the chunk waited in the reader's queue."""
    buf = np.empty((10, data.shape[1]))

    def refilling():
        for i in range(0, len(data), 10):
            part = data[i:i + 10]
            buf[:len(part)] = part
            yield buf[:len(part)]
        buf[:] = np.nan  # after the last batch too: a chunk still queued would see NaN

    ex = rp.Explainer(mlp(), "gradient")
    res = ex.map(refilling(), out=tmp_path / "o", n=len(data), batch_size=10, progress=False)
    np.testing.assert_allclose(np.asarray(res.attributions), ex.attribute(data), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("model,call", [("mlp", {}), ("mlp", {"targets": [0, 2]}), ("cnn", {})])
def test_an_in_memory_job_writes_results_into_its_columns(monkeypatch, model, call):
    """``out=None``: each chunk's attributions are computed straight into the in-memory column
    (no copy of the results; checked by recording what ``run_batches`` found), and the columns
    equal one ``explain`` call -- for a Dense chain (the fused kernel), several targets, and a
    CNN (the engine's batches, copied into the column rows)."""
    seen = record_in_place(monkeypatch)
    rng = np.random.default_rng(8)
    if model == "mlp":
        net, x = mlp(), rng.normal(size=(700, 14))
    else:
        net, x = cnn(), rng.normal(size=(40, 1, 8, 8))
    ex = rp.Explainer(net, "lrp.epsilon")
    res = ex.map(x, batch_size=300 if model == "mlp" else 16, progress=False, **call)
    in_job = list(seen)
    e = ex.explain(x, **call)
    np.testing.assert_allclose(np.asarray(res.attributions), e.attribution, rtol=1e-12,
                               atol=1e-12 * np.abs(e.attribution).max())
    np.testing.assert_array_equal(np.asarray(res.targets), e.targets)
    if model == "mlp":  # chunks of 300, 300, 100 rows: the kernel, the kernel, the engine (below MIN_ROWS)
        assert in_job == [True, True, False], in_job
    else:
        assert in_job and not any(in_job)  # the engine's results, copied once into the column


def test_errors_explainer_out_rows_must_fit():
    ex = rp.Explainer(mlp(), "gradient")
    x = np.random.default_rng(0).normal(size=(5, 14))
    with pytest.raises(ValueError, match="out must be a writable C-order numpy array"):
        ex._call(x, None, None, 0, explain=False, out=np.empty((5, 14)))  # (N, K, ...) expected
    out = np.empty((5, 1, 14))
    R = ex._call(x, None, None, 0, explain=False, out=out)
    np.testing.assert_allclose(out[:, 0], ex.attribute(x), rtol=1e-12)
    assert np.shares_memory(R, out)
