"""The ``.npy`` store's writes: page-aligned data, direct I/O where memory and file line up,
the page cache everywhere else, and the same bytes on disk either way.

The reference for every check is the array the chunks came from, compared with what numpy's own
``np.load`` reads back from the files.
"""
import errno
import json
import os

import numpy as np
import pytest

import relprop as rp
from relprop.core import dense_chain as DC
from relprop.core.execute import PAGE, page_aligned
from relprop.runner import stores

from runner_models import record_in_place


def _direct_io_works(folder):
    """Whether this file system takes an aligned O_DIRECT write (probed here, not by the store)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    p = folder / "probe.bin"
    p.write_bytes(bytes(2 * PAGE))
    try:
        fd = os.open(p, os.O_WRONLY | flag)
    except OSError:
        return False
    try:
        buf = page_aligned((PAGE,), np.uint8)
        buf[:] = 7
        return os.pwrite(fd, memoryview(buf), PAGE) == PAGE
    except OSError:
        return False
    finally:
        os.close(fd)
        p.unlink()


def _meta(n, rows, features=16):
    cols = {"attributions": [[features], "<f4"], "targets": [[], "<i8"], "scores": [[], "<f8"]}
    return {"format": stores.FORMAT, "store": "npy", "job": "test-job", "identity": {}, "n": n, "chunk_rows": rows,
            "columns": cols, "created": "2026-12-02T00:00:00Z"}


def _expected(n, features=16, seed=0):
    rng = np.random.default_rng(seed)
    return {"attributions": rng.standard_normal((n, features)).astype(np.float32),
            "targets": rng.integers(0, 10, n).astype(np.int64), "scores": rng.standard_normal(n)}


def _copy(a, shift):
    """``a`` in memory that starts ``shift`` bytes past a page."""
    raw = page_aligned((a.nbytes + PAGE,), np.uint8)
    out = raw[shift:shift + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _write_all(store, want, order, lined_up):
    """Put chunks ``order`` and commit them; chunk ``i``'s memory lines up with its place in the
    file (the same offset from a page: its whole pages can go by direct I/O) when ``lined_up(i)``,
    else sits 16 bytes off (the page cache only)."""
    for i in order:
        sl = store.chunk_slice(i)
        cols = {}
        for c, v in want.items():
            _, offset, row = store._files[c]
            shift = (offset + sl.start * row) % PAGE
            cols[c] = _copy(v[sl], shift if lined_up(i) else (shift + 16) % PAGE)
        store.put(i, cols)
    store.commit([(i, None) for i in order])


def _assert_files_hold(out, want):
    for c, v in want.items():
        got = np.load(out / f"{c}.npy", mmap_mode="r", allow_pickle=False)
        assert got.offset % PAGE == 0, (c, got.offset)
        np.testing.assert_array_equal(got, v, err_msg=c)


def test_page_aligned_arrays():
    for shape, dtype in (((5,), np.float64), ((3, 7, 2), np.float32), ((1000, 4), np.int64), ((1,), np.uint8)):
        a = page_aligned(shape, dtype)
        assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert a.ctypes.data % PAGE == 0


def test_header_pads_to_the_page_and_numpy_reads_it(tmp_path):
    n = 1000
    store, done = stores.prepare(tmp_path / "s", _meta(n, 300), overwrite=False)
    assert done == set()
    want = _expected(n)
    _write_all(store, want, range(store.chunks), lambda i: True)
    store.close()
    for c in want:
        p = tmp_path / "s" / f"{c}.npy"
        with open(p, "rb") as f:
            assert np.lib.format.read_magic(f) == (1, 0)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            assert f.tell() == PAGE  # the header, padded with spaces, ends at the page
        assert shape == want[c].shape and not fortran and dtype == want[c].dtype
        assert p.stat().st_size == PAGE + want[c].nbytes
    _assert_files_hold(tmp_path / "s", want)


@pytest.mark.parametrize("rows", [4096, 1000, 997])  # chunk starts on pages; inside pages; odd sizes
def test_direct_and_page_cache_writes_give_the_same_bytes(tmp_path, rows):
    """Chunks written in a shuffled order, half from memory lined up with their place in the
    file (direct I/O for their whole pages, the page cache for the partial pages at their ends)
    and half from memory that is not (the page cache only): the files hold exactly the source."""
    n = 3 * rows + rows // 2
    out = tmp_path / "s"
    store, _ = stores.prepare(out, _meta(n, rows, features=16 * 17), overwrite=False)  # 17 pages per 1024 rows
    want = _expected(n, features=16 * 17, seed=rows)
    order = [int(i) for i in np.random.default_rng(rows).permutation(store.chunks)]
    _write_all(store, want, order, lambda i: i % 2 == 0)
    direct = store.direct_bytes
    store.close()
    _assert_files_hold(out, want)
    if _direct_io_works(tmp_path):
        assert direct > 0  # the aligned chunks' whole pages went by direct I/O
        assert direct % PAGE == 0
    else:
        assert direct == 0


def test_a_job_writes_its_attributions_by_direct_io(tmp_path, monkeypatch):
    """A Dense-chain job: the kernel's results are page-aligned, so with chunks of a whole number
    of pages every byte of the attributions goes by direct I/O (where the file system has it),
    and the store equals one ``explain`` call."""
    seen = []
    close = stores.NpyStore.close

    def record(self):
        seen.append(getattr(self, "direct_bytes", None))
        close(self)

    monkeypatch.setattr(stores.NpyStore, "close", record)
    in_place = record_in_place(monkeypatch)
    rng = np.random.default_rng(3)
    net = rp.Sequential(rp.Dense(rng.normal(0, 0.3, (32, 16)), rng.normal(0, 0.1, 32)), rp.ReLU(),
                        rp.Dense(rng.normal(0, 0.3, (4, 32)), rng.normal(0, 0.1, 4)))
    x = rng.standard_normal((4 * 4096, 16)).astype(np.float32)
    ex = rp.Explainer(net, "lrp", rules=rp.composites.EpsilonPlusFlat())
    res = ex.map(x, out=tmp_path / "job", batch_size=4096, progress=False)
    e = ex.explain(x)
    np.testing.assert_allclose(np.asarray(res.attributions), e.attribution, rtol=0,
                               atol=1e-6 * np.abs(e.attribution).max())
    np.testing.assert_array_equal(np.asarray(res.targets), e.targets)
    assert in_place and all(in_place)  # every batch's result was written into its rows (no copy)
    assert e.attribution.ctypes.data % PAGE == 0
    if _direct_io_works(tmp_path):
        # attributions 4 x 256 KiB; targets, scores and error 4 x 32 KiB each (below DIRECT_MIN)
        assert seen[-1] == x.nbytes, seen
    else:
        assert seen[-1] == 0


def test_a_refused_direct_write_falls_back_to_the_page_cache(tmp_path, monkeypatch):
    """A file system that opens O_DIRECT files but refuses the write (EINVAL): the chunk goes
    through the page cache, the direct descriptor is dropped, the bytes are right."""
    n, rows = 3 * 1024, 1024
    store, _ = stores.prepare(tmp_path / "s", _meta(n, rows, features=64), overwrite=False)
    direct_fds = {fd for fd in store._direct.values() if fd is not None}
    real = os.pwrite
    refused = []

    def pwrite(fd, buf, pos):
        if fd in direct_fds:
            refused.append(fd)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, buf, pos)

    monkeypatch.setattr(os, "pwrite", pwrite)
    want = _expected(n, features=64)
    _write_all(store, want, range(store.chunks), lambda i: True)
    assert store.direct_bytes == 0 and "attributions" not in store._direct
    store.close()
    assert refused or not direct_fds
    _assert_files_hold(tmp_path / "s", want)


def test_a_short_direct_write_is_finished_through_the_page_cache(tmp_path, monkeypatch):
    """A direct write that stops inside a block (as a device may): the rest of the chunk goes
    through the page cache, the direct descriptor stays for the next chunks, the bytes are right."""
    n, rows = 2 * 1024, 1024
    store, _ = stores.prepare(tmp_path / "s", _meta(n, rows, features=64), overwrite=False)
    if store._direct.get("attributions") is None:
        pytest.skip("this file system opens no O_DIRECT files: there is no direct write to cut short")
    buffered = {store._direct[c]: store._files[c][0] for c in store._direct if store._direct[c] is not None}
    real = os.pwrite
    short = []

    def pwrite(fd, buf, pos):
        if fd in buffered and len(buf) > 3 * PAGE:  # whole blocks by direct I/O, 100 bytes more past them
            done = real(fd, buf[:3 * PAGE], pos) + real(buffered[fd], buf[3 * PAGE:3 * PAGE + 100], pos + 3 * PAGE)
            short.append(done)
            return done
        return real(fd, buf, pos)

    monkeypatch.setattr(os, "pwrite", pwrite)
    want = _expected(n, features=64)
    _write_all(store, want, range(store.chunks), lambda i: True)
    assert short == [3 * PAGE + 100] * store.chunks  # each chunk's body was cut short once
    assert store._direct.get("attributions") is not None and store.direct_bytes == sum(short)
    store.close()
    _assert_files_hold(tmp_path / "s", want)


def test_a_direct_write_error_is_raised(tmp_path, monkeypatch):
    """A disk error on the direct descriptor is the job's error (not a silent fallback)."""
    store, _ = stores.prepare(tmp_path / "s", _meta(2048, 1024, features=64), overwrite=False)
    direct_fds = {fd for fd in store._direct.values() if fd is not None}
    if not direct_fds:
        pytest.skip("this file system opens no O_DIRECT files: there is no direct descriptor to fail")
    real = os.pwrite

    def pwrite(fd, buf, pos):
        if fd in direct_fds:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, buf, pos)

    monkeypatch.setattr(os, "pwrite", pwrite)
    a = _expected(1024, features=64)
    with pytest.raises(OSError) as e:
        store.put(0, {c: _copy(v, 0) for c, v in a.items()})
    assert e.value.errno == errno.EIO
    store.close()


def test_without_o_direct_every_write_takes_the_page_cache(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    n, rows = 3 * 1024, 1024
    store, _ = stores.prepare(tmp_path / "s", _meta(n, rows, features=64), overwrite=False)
    assert all(fd is None for fd in store._direct.values())
    want = _expected(n, features=64)
    _write_all(store, want, range(store.chunks), lambda i: True)
    assert store.direct_bytes == 0
    store.close()
    _assert_files_hold(tmp_path / "s", want)


def test_a_store_from_before_the_padded_header_resumes(tmp_path):
    """A store whose files have numpy's own 128-byte header (as relprop wrote them before the
    padded header): its data start off a page, so page-aligned results (the kernel's) take the
    page cache, and the values are right."""
    n, rows = 2048, 512
    out = tmp_path / "s"
    meta = _meta(n, rows, features=64)
    store, _ = stores.prepare(out, meta, overwrite=False)
    store.close()
    for c, (shape, dtype) in meta["columns"].items():  # rewrite each file with numpy's header
        np.save(out / f"{c}.npy", np.zeros((n,) + tuple(shape), dtype))
    store = stores.open_store(out, json.loads((out / stores.META).read_text()), mode="r+")
    want = _expected(n, features=64)
    for i in range(store.chunks):  # from page-aligned memory, as the Dense-chain kernel's results
        sl = store.chunk_slice(i)
        store.put(i, {c: _copy(v[sl], 0) for c, v in want.items()})
    store.commit([(i, None) for i in range(store.chunks)])
    assert store.direct_bytes == 0
    store.close()
    for c, v in want.items():
        got = np.load(out / f"{c}.npy", mmap_mode="r")
        assert got.offset % PAGE != 0
        np.testing.assert_array_equal(got, v)


def test_dense_chain_results_are_written_in_place_and_page_aligned(monkeypatch):
    """The kernel writes each batch into the caller's output rows, which start on a page (so a
    dataset job's attributions can go to disk by direct I/O); a remainder the engine computes
    (below the kernel's ``MIN_ROWS``) is copied in, and all rows equal the engine's."""
    in_place = record_in_place(monkeypatch)
    rng = np.random.default_rng(0)
    net = rp.Sequential(rp.Dense(rng.normal(0, 0.3, (8, 5)), rng.normal(0, 0.1, 8)), rp.ReLU(),
                        rp.Dense(rng.normal(0, 0.3, (3, 8)), np.zeros(3)))
    x = rng.standard_normal((2 * DC.MIN_ROWS + 3, 5))
    for method in ("gradient", "gradient_x_input", "lrp.epsilon"):
        in_place.clear()
        ex = rp.Explainer(net, method, batch_size=DC.MIN_ROWS + 1)  # two kernel batches, then 1 row
        R = ex.attribute(x)
        assert in_place == [True, True, False], (method, in_place)
        assert R.ctypes.data % PAGE == 0, method
        with monkeypatch.context() as mp:
            mp.setattr(DC, "ENABLED", False)
            ref = rp.Explainer(net, method).attribute(x)
        np.testing.assert_allclose(R, ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max(), err_msg=method)
