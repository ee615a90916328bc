"""relprop's GEMMs (``relprop.kernels.cpu.blas``): a private single-threaded copy of numpy's
OpenBLAS, large products cut into column blocks over relprop's threads.

References: products in float64 by numpy (another library instance, other blocking), to the
rounding of the operands' dtype; numpy's thread settings read through threadpoolctl.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import threadpoolctl

from relprop.kernels.cpu import blas

RNG = np.random.default_rng(11)


def _ref(a, b):
    return np.matmul(np.asarray(a, np.float64), np.asarray(b, np.float64))


def _close(got, a, b):
    ref = _ref(a, b)
    if a.size == 0 or b.size == 0:
        np.testing.assert_array_equal(got, ref)  # zeros (k = 0) or an empty result
        return
    k = a.shape[-1]
    eps = np.finfo(got.dtype).eps
    scale = np.abs(a).max() * np.abs(b).max() * max(k, 1)  # |sum| <= k max|a| max|b|
    np.testing.assert_allclose(got, ref, rtol=0, atol=4 * eps * scale)


def _op(shape, dtype, layout):
    """A (rows, cols) operand: C order, a transposed C array (F order), or a column slice of a
    wider C array (row stride larger than its width)."""
    r, c = shape
    if layout == "C":
        return RNG.standard_normal((r, c)).astype(dtype)
    if layout == "F":
        return RNG.standard_normal((c, r)).astype(dtype).T
    return RNG.standard_normal((r, c + 37)).astype(dtype)[:, 5:5 + c]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mkn", [(3, 5, 7), (64, 576, 4096), (16, 2048, 2048), (200, 64, 129), (1, 10, 300),
                                 (300, 1, 5), (8, 300, 1), (7, 0, 9), (0, 4, 300)])
@pytest.mark.parametrize("la,lb", [("C", "C"), ("F", "C"), ("C", "F"), ("F", "F"), ("S", "S")])
def test_reference_matmul_equals_the_product(dtype, mkn, la, lb):
    m, k, n = mkn
    a, b = _op((m, k), dtype, la), _op((k, n), dtype, lb)
    got = blas.matmul(a, b)
    assert got.shape == (m, n) and got.dtype == dtype
    _close(got, a, b)
    out = np.full((m, n + 3), np.nan, dtype)[:, 1:1 + n]  # into rows of a wider array, columns around untouched
    r = blas.matmul(a, b, out=out)
    assert r is out
    _close(out, a, b)
    assert np.isnan(out.base[:, 0]).all() and np.isnan(out.base[:, -2:]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reference_stacked_matmul(dtype):
    a = RNG.standard_normal((16, 64, 300)).astype(dtype)
    b = RNG.standard_normal((16, 300, 500)).astype(dtype)
    got = blas.matmul(a, b)
    for i in range(16):
        _close(got[i], a[i], b[i])
    out = np.empty((16, 64, 500), dtype)
    assert blas.matmul(a, b, out=out) is out
    np.testing.assert_array_equal(out, got)  # the same call on the same operands: the same bits


def test_errors_a_read_only_or_empty_stack_goes_to_numpy(tmp_path):
    """A read-only ``out`` (a flag, or a read-only memory map) gets numpy's error, never a write;
    an empty stack gets numpy's empty result."""
    a = RNG.standard_normal((64, 300)).astype(np.float32)
    b = RNG.standard_normal((300, 5000)).astype(np.float32)
    out = np.zeros((64, 5000), np.float32)
    out.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        blas.matmul(a, b, out=out)
    assert not out.any()
    np.save(tmp_path / "o.npy", np.zeros((64, 5000), np.float32))
    mm = np.load(tmp_path / "o.npy", mmap_mode="r")
    with pytest.raises(ValueError, match="read-only"):
        blas.matmul(a, b, out=mm)
    e = blas.matmul(np.zeros((0, 3, 4), np.float32), np.zeros((0, 4, 5), np.float32))
    assert e.shape == (0, 3, 5)


def test_errors_private_blas_setting(monkeypatch):
    for v in ("0", "1", " 1 "):
        monkeypatch.setenv("RELPROP_PRIVATE_BLAS", v)
        assert blas.enabled() is (v.strip() == "1")
    monkeypatch.setenv("RELPROP_PRIVATE_BLAS", "off")
    with pytest.raises(ValueError, match="RELPROP_PRIVATE_BLAS must be 1 .* or 0"):
        blas.enabled()


def test_a_cached_copy_someone_else_could_write_is_made_again(tmp_path, monkeypatch):
    """A file of the copy's name and size that others may write (or another user owns) is not
    loaded: the copy is made again from numpy's file."""
    src = blas._numpy_openblas()
    if src is None:
        pytest.skip("numpy's BLAS is not a scipy-openblas build here: there is nothing to copy")
    monkeypatch.setenv("RELPROP_CACHE_DIR", str(tmp_path))
    dest = blas._private_copy(src)
    assert dest.read_bytes()[:4096] == open(src, "rb").read(4096) and not dest.stat().st_mode & 0o022
    dest.write_bytes(b"\0" * os.path.getsize(src))  # a planted file of the right size...
    dest.chmod(0o666)  # ...that others may write
    again = blas._private_copy(src)
    assert again == dest and again.read_bytes()[:4096] == open(src, "rb").read(4096)
    assert not again.stat().st_mode & 0o022


def test_reference_inputs_blas_cannot_read_go_to_numpy():
    """Other dtypes, mixed dtypes, strided columns, an output that overlaps an input, shapes that
    do not fit (numpy's own error): the results and errors are numpy's."""
    a = RNG.standard_normal((40, 30))
    b = RNG.standard_normal((30, 50))
    np.testing.assert_array_equal(blas.matmul(a.astype(np.int64), b.astype(np.int64)),
                                  np.matmul(a.astype(np.int64), b.astype(np.int64)))
    np.testing.assert_allclose(blas.matmul(a.astype(np.float32), b), np.matmul(a.astype(np.float32), b))
    np.testing.assert_allclose(blas.matmul(a[:, ::2], b[::2]), np.matmul(a[:, ::2], b[::2]))
    sq = RNG.standard_normal((30, 30))
    want = np.matmul(sq, sq)
    np.testing.assert_allclose(blas.matmul(sq, sq, out=sq), want)  # out is an input: numpy copies first
    with pytest.raises(ValueError, match="mismatch|shape"):
        blas.matmul(a, a)


def test_a_large_product_is_cut_into_column_blocks_on_relprop_threads(monkeypatch):
    if blas.private_gemm(np.float32) is None:
        pytest.skip("numpy's BLAS is not a scipy-openblas build here: no private copy, numpy.matmul runs")
    calls = []
    real = blas._gemm2
    monkeypatch.setattr(blas, "_gemm2", lambda g, a, b, out: (calls.append(b.shape[1]), real(g, a, b, out))[1])
    from relprop.kernels.cpu import threads

    a, b = RNG.standard_normal((64, 576)).astype(np.float32), RNG.standard_normal((576, 4096)).astype(np.float32)
    _close(blas.matmul(a, b), a, b)
    assert sorted(calls) == [512] * blas.PARTS  # PARTS blocks whatever the number of threads
    assert threads._pool()[1] >= 1
    calls.clear()
    small_b = RNG.standard_normal((576, 40)).astype(np.float32)
    _close(blas.matmul(a, small_b), a, small_b)
    assert calls == [40]  # small: one call on the calling thread


CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import threadpoolctl
    numpy_blas = lambda: [i for i in threadpoolctl.threadpool_info() if "numpy.libs" in i["filepath"]]
    before = numpy_blas()
    import relprop as rp
    from relprop.kernels.cpu import blas
    maps = lambda: open("/proc/self/maps").read()
    loaded_at_import = "private-openblas" in maps()
    rng = np.random.default_rng(0)
    net = rp.Sequential(rp.Conv2d(rng.normal(0, 0.3, (8, 3, 3, 3)), np.zeros(8), padding=1), rp.ReLU(),
                        rp.MaxPool2d(2), rp.Flatten(), rp.Dense(rng.normal(0, 0.1, (5, 8 * 16 * 16)), np.zeros(5)))
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    R = rp.attribute(net, x, "gradient", target=1)
    with threadpoolctl.threadpool_limits(limits=2):  # a user's limit on every BLAS in the process
        R2 = rp.attribute(net, x, "gradient", target=1)
    p = blas._private()
    print(json.dumps({"loaded_at_import": loaded_at_import, "private": p is not None,
                      "private_threads": None if p is None else p[3](), "mapped": "private-openblas" in maps(),
                      "numpy_before": [i["num_threads"] for i in before],
                      "numpy_after": [i["num_threads"] for i in numpy_blas()],
                      "R": R.ravel()[::97].tolist(), "same_after_limit": float(abs(R - R2).max())}))
""")


def _child(env):
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_private_copy_leaves_numpys_blas_alone_and_matches_it(tmp_path):
    """In a fresh process: importing relprop loads no BLAS copy; the first GEMM does, into
    ``RELPROP_CACHE_DIR``, with one thread; numpy's OpenBLAS keeps its thread count (under a
    user's threadpoolctl limit too, which changes nothing relprop computes); one relprop thread
    gives the same bits as two; the attributions equal those of a process where the private
    copy is off (numpy's BLAS, its threads), to rounding."""
    on = _child({"RELPROP_CACHE_DIR": str(tmp_path / "cache")})
    off = _child({"RELPROP_PRIVATE_BLAS": "0"})
    one = _child({"RELPROP_CACHE_DIR": str(tmp_path / "cache"), "RELPROP_NUM_THREADS": "1"})
    assert not on["loaded_at_import"] and not off["private"] and not off["mapped"]
    assert on["numpy_after"] == on["numpy_before"] and off["numpy_after"] == off["numpy_before"]
    # where numpy's wheel bundles scipy-openblas (as this project's CI installs it), the copy is made
    assert on["private"] == (blas._numpy_openblas() is not None)
    if on["private"]:
        assert on["mapped"] and on["private_threads"] == 1
        assert list((tmp_path / "cache").glob("private-openblas-*.so"))
    assert on["same_after_limit"] == 0.0
    assert one["R"] == on["R"]  # the same bits on one thread: the blocks do not depend on the threads
    np.testing.assert_allclose(on["R"], off["R"], rtol=0, atol=1e-5 * max(map(abs, off["R"])))


def test_a_cache_that_cannot_be_made_falls_back_to_numpys_blas(tmp_path):
    """``RELPROP_CACHE_DIR`` below a regular file (no folder can be made there, for root too):
    no private copy, numpy's BLAS computes, the attributions are those of the private copy's."""
    (tmp_path / "file").write_text("x")
    res = _child({"RELPROP_CACHE_DIR": str(tmp_path / "file" / "cache")})
    assert not res["private"] and not res["mapped"]
    ref = _child({"RELPROP_CACHE_DIR": str(tmp_path / "cache")})
    np.testing.assert_allclose(res["R"], ref["R"], rtol=0, atol=1e-5 * max(map(abs, ref["R"])))


def test_a_forked_child_computes_products(tmp_path):
    """relprop's threads and the private copy's state are per process: a child made by fork
    (multiprocessing's default on Linux) computes the same products."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    a, b = RNG.standard_normal((64, 300)).astype(np.float32), RNG.standard_normal((300, 5000)).astype(np.float32)
    here = blas.matmul(a, b)
    with mp.get_context("fork").Pool(1) as pool:
        there = pool.apply(blas.matmul, (a, b))
    np.testing.assert_array_equal(there, here)  # the same library and call on the same CPU
