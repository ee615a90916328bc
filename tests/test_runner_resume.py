"""Kill -9 a dataset job at several points (while it creates the store, while a chunk computes,
in the middle of writing a chunk, between a chunk's data and its manifest entry), rerun the
same job, and the store equals an uninterrupted run's; chunks finished before the kill are not
computed again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import relprop as rp
from relprop.runner import open_attributions

from tolerance import assert_blas_close

ROWS = 40  # samples per chunk
N = 400    # 10 chunks

CHILD = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import relprop as rp
    from relprop.runner import job, stores

    mode, model, data, out, sig = sys.argv[1:6]

    def stop_here(what):
        with open(sig + ".tmp", "w") as f:
            f.write(what)
        os.replace(sig + ".tmp", sig)
        time.sleep(120)  # the test kills us here

    if mode == "creating":  # the first column file exists, the others and meta.json not yet
        orig_create = stores.NpyStore.create.__func__
        def create(cls, out_, meta):
            real = os.replace
            calls = []
            def replace(a, b):
                real(a, b)
                calls.append(b)
                if len(calls) == 1:
                    stop_here("creating")
            os.replace = replace
            try:
                return orig_create(cls, out_, meta)
            finally:
                os.replace = real
        stores.NpyStore.create = classmethod(create)
    elif mode == "computing":  # chunk 3 is being computed
        orig = job.Chunk.compute
        def compute(self, x, y, sl, **kw):
            if sl.start == 3 * %(rows)d:
                stop_here("computing")
            return orig(self, x, y, sl, **kw)
        job.Chunk.compute = compute
    elif mode in ("writing", "writing-zarr"):  # half of chunk 4's attributions are on disk
        cls = stores.ZarrStore if mode == "writing-zarr" else stores.NpyStore
        orig = cls._put
        def put(self, name, sl, a):
            if sl.start == 4 * %(rows)d and name == "attributions":
                if cls is stores.NpyStore:
                    h = len(a) // 2
                    orig(self, name, slice(sl.start, sl.start + h), a[:h])
                else:
                    orig(self, name, sl, a)  # zarr: the whole chunk file, then stop before the other columns
                stop_here("writing")
            return orig(self, name, sl, a)
        cls._put = put
    elif mode == "before-manifest":  # chunk 5's data are synced, its manifest entry not written
        orig = stores.atomic_write
        def atomic(path, data_, **kw):
            if str(path).endswith("%%08d.json" %% 5):
                stop_here("before-manifest")
            return orig(path, data_, **kw)
        stores.atomic_write = atomic
    net = rp.load(model)
    ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat())
    ex.map(np.load(data, mmap_mode="r"), out=out, batch_size=%(rows)d, progress=False)
    print("finished")
""" % {"rows": ROWS})


def _net():
    rng = np.random.default_rng(0)
    return rp.Sequential(rp.Conv2d(rng.normal(0, 0.4, (4, 1, 3, 3)), rng.normal(0, 0.1, 4), stride=1, padding=1),
                         rp.ReLU(), rp.MaxPool2d(2), rp.Flatten(),
                         rp.Dense(rng.normal(0, 0.3, (5, 64)), rng.normal(0, 0.1, 5)))


@pytest.fixture(scope="module")
def job_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    rp.save(_net(), d / "model.npz")
    np.save(d / "x.npy", np.random.default_rng(1).normal(size=(N, 1, 8, 8)))
    (d / "child.py").write_text(CHILD)
    ref = {}
    for kind, name in (("npy", "ref"), ("zarr", "ref.zarr")):
        ex = rp.Explainer(rp.load(d / "model.npz"), "lrp", rules=rp.composites.EpsilonPlusFlat())
        res = ex.map(np.load(d / "x.npy"), out=d / name, batch_size=ROWS, progress=False)
        ref[kind] = {c: np.array(getattr(res, c)) for c in ("attributions", "targets", "scores", "error")}
    return d, ref


def _kill_at(d, mode, out):
    sig = out.parent / f"{out.name}.{mode}.sig"
    assert not sig.exists()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, str(d / "child.py"), mode, str(d / "model.npz"), str(d / "x.npy"),
                          str(out), str(sig)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    t0 = time.time()
    while not sig.exists():
        if p.poll() is not None:
            raise AssertionError(f"the job ended before the kill point: {p.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > 240:
            p.kill()
            raise AssertionError("the job did not reach the kill point in 240 s")
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL
    return sig.read_text()


def _manifest(out):
    m = out / "manifest"
    return {p.name: json.loads(p.read_text()) for p in m.iterdir()} if m.exists() else {}


@pytest.mark.parametrize("mode,store,finished_before", [
    ("creating", "npy", 0), ("computing", "npy", 3), ("writing", "npy", 4), ("writing-zarr", "zarr", 4),
    ("before-manifest", "npy", 5)])
def test_killed_job_resumes_to_the_uninterrupted_result(job_files, tmp_path, mode, store, finished_before):
    d, ref = job_files
    out = tmp_path / ("job.zarr" if store == "zarr" else "job")
    assert _kill_at(d, mode, out) == mode.split("-zarr")[0]
    before = _manifest(out)
    # what the killed run leaves: only whole chunks are recorded, and they hold the right values
    assert len(before) <= finished_before
    if (out / "meta.json").exists():
        part = open_attributions(out)
        done = part.finished_rows()
        assert done.sum() == len(before) * ROWS and not part.complete
        assert_blas_close(np.asarray(part.attributions)[done], ref[store]["attributions"][done])
    else:
        assert mode == "creating" and not before
    # rerun the same job: it continues and ends equal to the uninterrupted run
    ex = rp.Explainer(rp.load(d / "model.npz"), "lrp", rules=rp.composites.EpsilonPlusFlat())
    res = ex.map(d / "x.npy", out=out, batch_size=ROWS, progress=False)
    assert res.complete
    for c, want in ref[store].items():  # computed in another process: equal to BLAS rounding, targets exactly
        got = np.asarray(getattr(res, c))
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got, want, err_msg=c)
        else:
            assert_blas_close(got, want)
    after = _manifest(out)
    assert len(after) == N // ROWS
    for name, info in before.items():  # finished chunks were not computed again
        assert after[name] == info
    runs = {info["run"] for info in after.values()}
    assert len(runs) == (2 if before else 1)


def test_a_kill_leaves_nothing_a_rerun_of_another_job_would_trust(job_files, tmp_path):
    """After a kill, a different job on the same output is refused, and overwrite=True starts
    over cleanly."""
    d, ref = job_files
    out = tmp_path / "job"
    _kill_at(d, "computing", out)
    other = rp.Explainer(rp.load(d / "model.npz"), "gradient")
    with pytest.raises(ValueError, match="another job"):
        other.map(d / "x.npy", out=out, batch_size=ROWS, progress=False)
    res = other.map(d / "x.npy", out=out, batch_size=ROWS, overwrite=True, progress=False)
    assert res.complete and res.method == "gradient"
    np.testing.assert_allclose(np.asarray(res.attributions), other(np.load(d / "x.npy")), rtol=1e-12, atol=1e-15)
