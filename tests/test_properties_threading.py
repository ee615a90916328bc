"""relprop changes no process-wide Numba state and runs beside other Numba parallel code.

Each check runs in a fresh interpreter (Numba chooses its threading layer once per process),
with ``NUMBA_THREADING_LAYER`` removed from the environment so Numba's own default applies.
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(code, timeout=240, **env):
    e = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    e.update(env)
    e["PYTHONPATH"] = os.pathsep.join([HERE] + [p for p in [e.get("PYTHONPATH")] if p])
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       timeout=timeout, env=e)
    assert p.returncode == 0, f"exit status {p.returncode} (negative: killed by that signal)\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_import_and_attribute_leave_numba_config_alone():
    out = _run("""
        import numba
        before = numba.config.THREADING_LAYER
        import numpy as np
        import relprop as rp
        assert numba.config.THREADING_LAYER == before, (before, numba.config.THREADING_LAYER)
        net = rp.Sequential(rp.Conv2d(np.ones((4, 2, 3, 3)) / 9), rp.ReLU(), rp.MaxPool2d(2), rp.Flatten(),
                            rp.Dense(np.ones((3, 144)) / 144))
        rp.attribute(net, np.random.default_rng(0).normal(size=(300, 2, 14, 14)), "lrp.epsilon")
        assert numba.config.THREADING_LAYER == before
        try:  # relprop's kernels never started a Numba threading layer
            numba.threading_layer()
        except ValueError:
            print("no layer")
    """)
    assert "no layer" in out


def test_beside_another_numba_parallel_function_in_threads():
    """Another library's ``parallel=True`` function loops in one Python thread while relprop runs
    in two others: nothing aborts (two callers inside ``workqueue`` at once abort the process),
    and relprop's results equal those computed alone (same shapes and code path: bit for bit)."""
    out = _run("""
        import threading
        import numba
        import numpy as np

        @numba.njit(parallel=True)
        def other(a):
            s = 0.0
            for i in numba.prange(a.size):
                s += np.sin(a[i])
            return s

        import relprop as rp
        rng = np.random.default_rng(0)
        net = rp.Sequential(rp.Conv2d(rng.normal(size=(8, 3, 3, 3)), rng.normal(size=8), padding=1), rp.ReLU(),
                            rp.MaxPool2d(2), rp.Flatten(), rp.Dense(rng.normal(size=(5, 8 * 8 * 8))))
        x = rng.normal(size=(64, 3, 16, 16))
        want = {m: rp.attribute(net, x, m, target=1) for m in ("gradient", "lrp.epsilon")}
        a = rng.normal(size=200_000)
        s0 = other(a)
        errors, stop = [], threading.Event()

        def other_loop():
            while not stop.is_set():
                if abs(other(a) - s0) > 1e-6 * a.size:
                    errors.append("other changed")

        def relprop_loop():
            try:
                for _ in range(15):
                    for m, w in want.items():
                        if not np.array_equal(rp.attribute(net, x, m, target=1), w):
                            errors.append(m)
            except Exception as e:
                errors.append(repr(e))

        t0 = threading.Thread(target=other_loop)
        ts = [threading.Thread(target=relprop_loop) for _ in range(2)]
        t0.start()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.set()
        t0.join()
        assert not errors, errors
        print("ok", numba.threading_layer())
    """)
    assert out.startswith("ok")


def test_kernels_are_serial_nogil_and_split_over_relprop_threads():
    """No kernel is compiled with parallel=True (that would enter Numba's threading layer); each
    releases the GIL so relprop's pool runs its parts at the same time; all stay cache=True."""
    from relprop.kernels import cpu

    # not Numba kernels: constants, geometry, and the shifted-GEMM driver (BLAS calls through ctypes)
    python_level = ("xp", "name", "OOM", "conv_out_shape", "SHIFTED", "gemm_taps", "taps", "wide_geometry",
                    "WINOGRAD", "winograd_filter", "winograd_tiles", "winograd4_filter",
                    "winograd4_tiles", "PARAM_ACT_CODES", "DENSE_CHAIN",
                    "matmul")  # (BLAS through ctypes, its blocks on relprop's threads: relprop.kernels.cpu.blas)
    names = [n for n in cpu.__all__ if n not in python_level]
    for n in names:
        f = getattr(cpu, n)
        k = getattr(f, "kernel", f)
        assert k.targetoptions.get("parallel") in (None, False), n
        assert k.targetoptions.get("nogil") is True or n == "all_nonnegative", n
        assert k._cache.__class__.__name__ == "FunctionCache", n  # cache=True


def test_any_number_of_parts_gives_the_same_bits(monkeypatch):
    """Each outer iteration writes its own outputs: 1, 2 or 7 parts give identical arrays."""
    from relprop.kernels import cpu

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 9, 8))
    res = []
    for parts in (1, 2, 7):
        cols = np.empty((4 * 3 * 3, 3 * 7 * 6))
        cpu.im2col.kernel(x, 3, 3, 1, 1, 0, 0, cols, 0, 1) if parts == 1 else [
            cpu.im2col.kernel(x, 3, 3, 1, 1, 0, 0, cols, i, parts) for i in range(parts)]
        out = np.empty((3, 4, 4, 4))
        idx = np.empty((3, 4, 4, 4), np.int64)
        for i in range(parts):
            cpu.maxpool_forward.kernel(x, 2, 2, 2, 2, 0, 0, out, idx, i, parts)
        res.append((cols, out, idx))
    for cols, out, idx in res[1:]:
        np.testing.assert_array_equal(cols, res[0][0])
        np.testing.assert_array_equal(out, res[0][1])
        np.testing.assert_array_equal(idx, res[0][2])


def test_thread_count_from_environment(monkeypatch):
    from relprop.kernels.cpu import threads

    monkeypatch.setenv("RELPROP_NUM_THREADS", "3")
    assert threads.num_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("RELPROP_NUM_THREADS", bad)
        with pytest.raises(ValueError, match="RELPROP_NUM_THREADS must be a positive integer"):
            threads.num_threads()


def test_fork_child_gets_its_own_pool():
    """A forked child (multiprocessing's fork start method, Dask workers) must not wait on the
    parent's pool threads, which do not exist in the child."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    _run("""
        import os
        import numpy as np
        import relprop as rp
        net = rp.Sequential(rp.Dense(np.ones((64, 64)) / 64), rp.ReLU(), rp.Dense(np.ones((3, 64))))
        x = np.random.default_rng(0).normal(size=(2000, 64))
        want = rp.attribute(net, x, "gradient", target=0)   # parent pool started
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(rp.attribute(net, x, "gradient", target=0), want)
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    """, timeout=120, RELPROP_NUM_THREADS="2")
