"""The float-sensitive tests once more, under another OpenBLAS kernel (``OPENBLAS_CORETYPE``).

OpenBLAS picks its GEMM kernels by CPU and rounds a row differently depending on the block it
lands in, so a test that expects bit equality between results computed through differently
shaped GEMMs (N*K rows vs N rows, chunked vs whole batches, other internal batch sizes) passes
on one CPU and fails on another (issue 10, item 4). CI runs on one kind of CPU, so this test
re-runs the tests that compare such results in fresh interpreters with two other kernels
forced (checked with threadpoolctl) and requires them to pass there too. What those tests may
assume is in ``tolerance.py``.
"""
import json
import os
import platform
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests comparing relprop with relprop through differently shaped GEMMs: whole files where
# most tests do, single tests from files whose bulk is peer agreement (slow, already loose).
FLOAT_SENSITIVE = [
    "tests/test_properties_multitarget.py",      # targets= vs one call per target; target chunks
    "tests/test_reference_reveal_cancel.py",     # multi-target; a large batch vs its tail
    "tests/test_reference_rap.py",               # batch vs one sample at a time; internal chunks
    "tests/test_reference_patterns.py",          # fits over other batch sizes / streams; multi-target
    "tests/test_properties_lrp.py",              # batch equals one sample at a time
    "tests/test_properties_contract.py::test_independent_of_batch_size",          # every method, 3 batch sizes
    "tests/test_properties_contract.py::test_targets_equal_one_call_per_target",  # every method, multi-target
    "tests/test_peers_occlusion.py::test_chunking_does_not_change_the_result",
    "tests/test_peers_occlusion.py::test_multi_target_helper_matches_single_target_calls",
    "tests/test_peers_occlusion.py::test_per_sample_fill_survives_internal_batches_and_targets_all",
    "tests/test_peers_surrogate.py::test_chunking_does_not_change_scores",
    "tests/test_peers_sampling.py::test_independent_of_internal_batching",
    "tests/test_peers_sampling.py::test_expected_gradients_matches_explicit_draws_and_gradient_shap",
    "tests/test_peers_smoothgrad.py::test_seeded_and_batched_as_one_batch",
    "tests/test_peers_cam.py::test_multi_helper_matches_single_calls",
    # the host-emulated device path batches differently from the CPU path
    "tests/test_backend_device_path.py::test_multi_target_on_device",
    "tests/test_backend_device_path.py::test_out_of_memory_splits_the_batch",
    "tests/test_backend_device_path.py::test_device_baselines_and_targets",
]

# (kernel, CPU flags it needs, names threadpoolctl may report for it), in order of preference:
# SSE-only kernels run on any x86-64 CPU and block their GEMMs unlike the AVX2/AVX-512 kernels
# CI machines pick. OpenBLAS builds without DYNAMIC_OLDER run Prescott's kernel for Katmai,
# Core2 and Penryn too and report it by the first of those names, "Katmai". AVX-512 kernels
# are left out (not every CPU that runs this suite has AVX-512). Flags as /proc/cpuinfo names
# them (SSE3 is "pni").
KERNELS = [("Prescott", {"pni"}, {"Prescott", "Katmai"}), ("Nehalem", {"sse4_2"}, {"Nehalem"}),
           ("Haswell", {"avx2", "fma"}, {"Haswell"}), ("Sandybridge", {"avx"}, {"Sandybridge"})]
RERUNS = 2  # how many other kernels the tests run under

_ARCH = ("import json, numpy; from threadpoolctl import threadpool_info; print(json.dumps(sorted("
         "{i.get('architecture') for i in threadpool_info() if i['internal_api'] == 'openblas'})))")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _other_kernels():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401  (loads numpy's BLAS, so threadpoolctl sees it)

    archs = {i.get("architecture") for i in threadpoolctl.threadpool_info() if i["internal_api"] == "openblas"}
    if not archs:
        pytest.skip("numpy does not use OpenBLAS here: OPENBLAS_CORETYPE has nothing to switch")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip(f"the alternative kernels named here are x86-64 ones; this is {platform.machine()}")
    current = {a.lower() for a in archs if a}
    flags = _cpu_flags()
    others = [(name, shown) for name, needs, shown in KERNELS
              if not current & {a.lower() for a in shown} and needs <= flags][:RERUNS]
    if not others:
        pytest.skip(f"no other OpenBLAS kernel this CPU can run (current {sorted(archs)})")
    return others, archs


def test_float_sensitive_tests_pass_under_other_blas_kernels():
    if os.environ.get("RELPROP_PORTABILITY_RERUN"):
        pytest.skip("already the re-run")
    kernels, current = _other_kernels()
    envs = []
    for kernel, shown in kernels:
        env = dict(os.environ, OPENBLAS_CORETYPE=kernel, RELPROP_PORTABILITY_RERUN="1")
        got = subprocess.run([sys.executable, "-c", _ARCH], capture_output=True, text=True, env=env, timeout=120)
        assert got.returncode == 0, got.stderr
        chosen = set(json.loads(got.stdout))
        if not chosen or not chosen <= shown:
            pytest.skip(f"this OpenBLAS ignores OPENBLAS_CORETYPE={kernel} (it chose {sorted(chosen)})")
        envs.append((kernel, env))
    for kernel, env in envs:
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FLOAT_SENSITIVE],
                             cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, (f"float-sensitive tests fail under OPENBLAS_CORETYPE={kernel} (this run: "
                                     f"{sorted(current)}); compare with tests/tolerance.py, not bit for bit:\n"
                                     f"{run.stdout[-6000:]}\n{run.stderr[-2000:]}")
