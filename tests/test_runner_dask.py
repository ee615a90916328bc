"""Dask: ``relprop.dask.attribute`` on a chunked dask array equals one Explainer call on the
whole array (random methods included: their draws depend on the sample's index, not its chunk),
and a dataset job run on a ``distributed`` cluster (``ex.map(..., scheduler=client)``, the
workers writing the store) writes the same store as one process, resumes computing only the
missing chunks, and names the chunk of a failing task."""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest

import relprop as rp
from relprop.runner import JobError, open_attributions

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
pytest.importorskip("zarr")
import relprop.dask as rdask  # noqa: E402  (our own module: an import error must fail, not skip)
from tolerance import assert_blas_close  # noqa: E402
import runner_models  # noqa: E402

N, D, C = 61, 14, 3


def mlp(seed=0, d=D):
    return runner_models.mlp(seed, d, 24, C)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).normal(size=(N, D))  # float64: chunkings comparable to 1e-12


@pytest.fixture(scope="module")
def x_npy(tmp_path_factory, x):
    p = tmp_path_factory.mktemp("data") / "x.npy"
    np.save(p, x)
    return str(p)


@pytest.fixture(scope="module")
def x_zarr(tmp_path_factory, x):
    import zarr

    p = tmp_path_factory.mktemp("data") / "x.zarr"
    zarr.create_array(str(p), shape=x.shape, chunks=(16, D), dtype=x.dtype)[:] = x
    return str(p)


@pytest.fixture(scope="module")
def cluster():
    """One cluster for the module (starting worker processes costs seconds on 2 cores)."""
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  silence_logs=logging.ERROR) as c:
        with distributed.Client(c, set_as_default=False) as client:
            yield c, client


def chunked(x):
    return da.from_array(x, chunks=((5, 20, 1, 35), (9, 5)))  # uneven, and split along features too


# -- relprop.dask.attribute -----------------------------------------------------------------------
METHODS = [("lrp.epsilon", {}), ("gradient_x_input", {}),
           ("smoothgrad", {"samples": 3, "seed": 7}),
           ("expected_gradients", {"baselines": np.random.default_rng(2).normal(size=(6, D)), "samples": 4,
                                   "seed": 3}),
           ("integrated_gradients", {"baseline": np.random.default_rng(3).normal(size=(N, D)), "steps": 6})]


@pytest.mark.parametrize("method,params", METHODS, ids=[m for m, _ in METHODS])
@pytest.mark.parametrize("how", ["argmax", "class", "array", "dask_array", "targets", "targets_array", "all"])
def test_attribute_equals_one_call(x, method, params, how):
    ex = rp.Explainer(mlp(), method, **params)
    t = np.random.default_rng(4).integers(0, C, N)
    T = np.random.default_rng(5).integers(0, C, (N, 2))
    kw = {"argmax": {}, "class": {"target": 2}, "array": {"target": t},
          "dask_array": {"target": da.from_array(t, chunks=11)}, "targets": {"targets": [2, 0]},
          "targets_array": {"targets": da.from_array(T, chunks=(30, 1))}, "all": {"targets": "all"}}[how]
    R = rdask.attribute(ex, chunked(x), **kw)
    ref_kw = {k: (np.asarray(v) if hasattr(v, "compute") else v) for k, v in kw.items()}
    ref = ex.attribute(x, **ref_kw)
    assert isinstance(R, da.Array) and R.shape == ref.shape and R.dtype == np.float64
    assert R.chunks[0] == (5, 20, 1, 35)
    np.testing.assert_allclose(R.compute(), ref, rtol=1e-12, atol=1e-12)


def test_attribute_from_a_model_float32_and_row_offset(x):
    """A model and a method name build the Explainer; float32 stays float32; ``row_offset`` is
    where x sits in a larger dataset (the random draws follow it)."""
    R = rdask.attribute(mlp(), chunked(x).astype(np.float32), "lrp.epsilon")
    assert R.dtype == np.float32
    np.testing.assert_allclose(R.compute(), rp.Explainer(mlp(), "lrp.epsilon")(x.astype(np.float32)), rtol=1e-5,
                               atol=1e-6)
    ex = rp.Explainer(mlp(), "smoothgrad", samples=3, seed=11)
    tail = rdask.attribute(ex, chunked(x)[20:], row_offset=20).compute()
    np.testing.assert_allclose(tail, ex(x)[20:], rtol=1e-12, atol=1e-12)


def test_attribute_seed_none_is_fixed_once(x):
    """seed=None: one seed for all chunks, kept in the graph (computing twice agrees)."""
    R = rdask.attribute(mlp(), chunked(x), "smoothgrad", samples=3)
    a, b = R.compute(), R.compute()
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)  # a fresh seed per compute would differ by O(1)


def test_attribute_on_the_cluster(cluster, x):
    """The lazy result computed by worker processes (the Explainer pickled to them)."""
    _, client = cluster
    ex = rp.Explainer(mlp(), "expected_gradients", baselines=x[:5], samples=3, seed=2)
    R = rdask.attribute(ex, chunked(x), targets=[1, 2])
    np.testing.assert_allclose(client.compute(R).result(), ex(x, targets=[1, 2]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad,kw,err,match", [
    ("int", {}, TypeError, "float32 or float64"),
    ("numpy", {}, TypeError, "dask array"),
    ("shape", {}, ValueError, "do not fit the model"),
    ("ok", {"target": 3}, ValueError, r"0\.\.2"),
    ("ok", {"target": np.zeros(4, np.int64)}, ValueError, r"shaped \(61,\)"),
    ("ok", {"targets": [0, 5]}, ValueError, r"0\.\.2"),
    ("ok", {"target": 1, "targets": [0]}, TypeError, "not both"),
    ("ok", {"method": "gradient"}, TypeError, "carries its method"),
])
def test_errors_attribute(x, bad, kw, err, match):
    xs = {"int": da.from_array((x * 10).astype(np.int32), chunks=10), "numpy": x,
          "shape": da.from_array(np.zeros((N, D + 1)), chunks=10), "ok": chunked(x)}[bad]
    with pytest.raises(err, match=match):
        rdask.attribute(rp.Explainer(mlp(), "gradient"), xs, **kw)


# -- dataset jobs on the cluster ----------------------------------------------------------------------
def columns(path):
    res = open_attributions(path)
    return {c: np.asarray(getattr(res, c)) for c in ("attributions", "targets", "scores", "error")
            if getattr(res, c) is not None}


def assert_same_store(a, b):
    ca, cb = columns(a), columns(b)
    assert ca.keys() == cb.keys()
    for c in ca:  # the same chunks through the same code; workers may run BLAS with other thread counts
        if np.issubdtype(ca[c].dtype, np.integer):
            np.testing.assert_array_equal(ca[c], cb[c], err_msg=c)
        else:
            assert_blas_close(ca[c], cb[c])
    assert open_attributions(a).meta["job"] == open_attributions(b).meta["job"]


@pytest.mark.parametrize("method,params,store,sched,data", [
    ("lrp.epsilon", {}, "zarr", "client", "npy"),
    ("integrated_gradients", {"steps": 5}, "npy", "address", "npy"),
    ("smoothgrad", {"samples": 3, "seed": None}, "zarr", "client", "npy"),
    ("expected_gradients", {"samples": 3, "seed": None}, "npy", "client", "zarr"),
])
def test_cluster_store_equals_single_process(cluster, tmp_path, x, x_npy, x_zarr, method, params, store, sched,
                                             data):
    c, client = cluster
    if method == "expected_gradients":
        params = {**params, "baselines": x[:4]}
    ex = rp.Explainer(mlp(), method, **params)
    ext = ".zarr" if store == "zarr" else ""
    a, b = tmp_path / f"a{ext}", tmp_path / f"b{ext}"
    src = x_npy if data == "npy" else x_zarr
    res = ex.map(src, out=a, scheduler=client if sched == "client" else c.scheduler_address, batch_size=13,
                 progress=False)
    assert res.complete and res.meta["n"] == N and res.meta["chunk_rows"] == 13
    manifests = sorted((a / "manifest").iterdir())
    assert len(manifests) == 5 and all(json.loads(f.read_text())["worker"] for f in manifests)
    if params.get("seed", 0) is None:  # the seed drawn once for the job, recorded, shared by the workers
        seed = res.params["seed"]
        assert isinstance(seed, int)
        ex = rp.Explainer(mlp(), method, **{**params, "seed": seed})
    ex.map(src, out=b, batch_size=13, progress=False)
    assert_same_store(a, b)


def test_cluster_idx_source(cluster, tmp_path):
    """IDX images (uint8, 4x4, memory-mapped) travel as their file and give the local store."""
    _, client = cluster
    pixels = np.random.default_rng(7).integers(0, 256, (N, 4, 4), dtype=np.uint8)
    f = tmp_path / "t-images-idx3-ubyte"
    f.write_bytes(np.array([0x0803, N, 4, 4], ">i4").tobytes() + pixels.tobytes())
    ex = rp.Explainer(mlp(d=16), "lrp.epsilon")
    a = ex.map(str(f), out=tmp_path / "a", scheduler=client, batch_size=16, progress=False)
    ex.map(str(f), out=tmp_path / "b", batch_size=16, progress=False)
    assert a.attributions.shape == (N, 16)  # as the model reads the samples
    assert_same_store(tmp_path / "a", tmp_path / "b")


def test_file_sources_travel_as_their_path(tmp_path, x, x_npy, x_zarr):
    """A .npy/zarr path or a whole memory map goes to the workers as its file's name (a
    memmap would pickle as its whole contents); a view of one travels as data."""
    import pickle

    from relprop.runner.sources import ArraySource, as_source

    import zarr

    opened = [ArraySource(np.load(x_npy, mmap_mode="r")), ArraySource(zarr.open_array(x_zarr, mode="r"))]
    for src in [as_source(x_npy), as_source(x_zarr)] + opened:
        moving = rdask._Reopen.of(src)
        assert moving is not None and len(pickle.dumps(moving)) < 1000
        xs, _ = pickle.loads(pickle.dumps(moving)).open().read(7, 19)
        np.testing.assert_array_equal(xs, x[7:19])
    assert rdask._Reopen.of(ArraySource(np.load(x_npy, mmap_mode="r")[1:])) is None


def test_cluster_in_memory_source_and_labels(cluster, tmp_path, x):
    """An in-memory array (scattered once) with target='label'."""
    _, client = cluster
    ex = rp.Explainer(mlp(), "gradient")
    y = np.random.default_rng(6).integers(0, C, N)
    res = ex.map(x, out=tmp_path / "a", labels=y, target="label", scheduler=client, batch_size=20, progress=False)
    np.testing.assert_array_equal(np.asarray(res.targets), y)
    np.testing.assert_allclose(np.asarray(res.attributions), ex(x, target=y), rtol=1e-12, atol=1e-12)


def test_cluster_resume_computes_only_missing_chunks(cluster, tmp_path, x_npy):
    _, client = cluster
    ex = rp.Explainer(mlp(), "smoothgrad", samples=2, seed=5)
    ref, out = tmp_path / "ref", tmp_path / "out"
    ex.map(x_npy, out=ref, batch_size=10, progress=False)
    ex.map(x_npy, out=out, batch_size=10, progress=False)  # a single-process run, then "killed":
    missing = {1, 4}
    for i in missing:
        (out / "manifest" / f"{i:08d}.json").unlink()
    a = np.load(out / "attributions.npy", mmap_mode="r+")
    a[10:20] = 0  # what a killed run may leave; the resumed job must overwrite it
    a[40:50] = 0
    a.flush()
    del a
    before = {f.name: f.read_bytes() for f in (out / "manifest").iterdir()}
    res = ex.map(x_npy, out=out, batch_size=10, scheduler=client, progress=False)
    assert res.complete
    after = {f.name: json.loads(f.read_text()) for f in (out / "manifest").iterdir()}
    assert len(after) == 7
    computed = {int(name[:-5]) for name, info in after.items() if "worker" in info}
    assert computed == missing  # the others were not touched
    assert all((out / "manifest" / name).read_bytes() == data for name, data in before.items())
    assert_same_store(out, ref)


def test_cluster_task_error_names_the_chunk(cluster, tmp_path, x):
    _, client = cluster
    bad = x.copy()
    bad[33, 2] = np.nan  # chunk 3 of chunks of 10
    with pytest.raises(JobError, match="NaN") as e:
        rp.Explainer(mlp(), "gradient").map(bad, out=tmp_path / "a", batch_size=10, scheduler=client,
                                            progress=False)
    assert "chunk 3 (rows 30..39)" in "\n".join(getattr(e.value, "__notes__", []))
    # the chunks that finished are recorded; a rerun on clean data does the rest
    done = {int(f.stem) for f in (tmp_path / "a" / "manifest").glob("*.json")}
    assert 3 not in done


def test_errors_cluster_needs_random_access(cluster, tmp_path, x):
    _, client = cluster
    with pytest.raises(JobError, match="random-access source"):
        rp.Explainer(mlp(), "gradient").map(iter([x[:30], x[30:]]), n=N, out=tmp_path / "a", scheduler=client,
                                            progress=False)


def test_errors_cluster_bad_scheduler_and_missing_dask(tmp_path, x, monkeypatch):
    ex = rp.Explainer(mlp(), "gradient")
    with pytest.raises(TypeError, match="scheduler must be a distributed.Client"):
        ex.map(x, out=tmp_path / "a", scheduler=42, progress=False)
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'relprop\[dask\]'"):
        ex.map(x, out=tmp_path / "a", scheduler="tcp://127.0.0.1:1", progress=False)
