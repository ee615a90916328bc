"""pytest configuration for the relprop benchmark suite (bench/).

Not collected by the main test run: ``pyproject.toml`` sets ``testpaths = ["tests"]``; run the
benchmarks with ``python -m pytest bench ...`` (see bench/README.md).

Zennit imports ``torchvision.models.resnet`` at import time. The torchvision wheel in this
environment does not match the CPU torch build (``operator torchvision::nms does not exist``), so
when the real import fails we put a minimal stand-in module tree into ``sys.modules`` before
zennit is imported. Zennit only uses ``BasicBlock`` / ``Bottleneck`` for its ResNet canonizer,
which the benchmarks never use.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest


def install_torchvision_stub() -> bool:
    """Make ``import zennit`` work (``tests/torchvision_stub.py``). True when a stand-in is in use."""
    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import torchvision_stub

    return torchvision_stub.install()


TORCHVISION_STUBBED = install_torchvision_stub()

# Two cores on the reference machine: pin every library to the same thread count.
BENCH_THREADS = int(os.environ.get("RELPROP_BENCH_THREADS", "2"))


def pytest_configure(config):
    import torch

    torch.set_num_threads(BENCH_THREADS)
    config._relprop_bench_threads = BENCH_THREADS


def pytest_report_header(config):
    import torch

    return [
        f"relprop bench: torch threads={torch.get_num_threads()}, "
        f"torchvision stand-in={'yes' if TORCHVISION_STUBBED else 'no'}"
    ]


@pytest.fixture(scope="session")
def relprop_mod():
    """The relprop package, or skip the relprop side when it is not importable yet."""
    try:
        import relprop
    except Exception as exc:  # pragma: no cover - depends on the library's state
        pytest.skip(f"relprop not importable: {type(exc).__name__}: {exc}")
    if not hasattr(relprop, "attribute"):
        pytest.skip("relprop has no attribute() yet")
    return relprop


# ----------------------------------------------------------------------------------------------
# Extra context in the --benchmark-json file (read by bench/report.py)
# ----------------------------------------------------------------------------------------------
_SESSION = {"outcomes": [], "loadavg_start": None}


def pytest_sessionstart(session):
    try:
        _SESSION["loadavg_start"] = list(os.getloadavg())
    except OSError:  # pragma: no cover
        pass


def pytest_runtest_logreport(report):
    """Remember skipped/failed cases (e.g. relprop not importable, relprop errors) for the report."""
    if report.outcome == "passed":
        return
    msg = ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        msg = str(report.longrepr[2])
    elif report.outcome == "failed":
        crash = getattr(report.longrepr, "reprcrash", None)
        msg = crash.message if crash is not None else str(report.longrepr)[-2000:]
    _SESSION["outcomes"].append(
        {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome, "message": msg})


def _relprop_source_digest():
    """Short digest of relprop/ and kernels/ sources: tells which library state a run measured."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    n = 0
    for sub in ("relprop", "kernels"):
        for f in sorted((root / sub).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
            n += 1
    return f"{h.hexdigest()[:12]} ({n} files)"


def _blas_kernels():
    """The BLAS libraries loaded in this (benchmark) process with the kernel family each runs
    (threadpoolctl's ``architecture``: OpenBLAS ``Haswell`` = AVX2, ``SkylakeX`` = AVX-512), which
    ``OPENBLAS_CORETYPE`` can force."""
    try:
        from threadpoolctl import threadpool_info

        return [f"{p.get('internal_api')} {p.get('version')} {p.get('architecture')} "
                f"({p.get('num_threads')} threads, {os.path.basename(p.get('filepath', ''))})"
                for p in threadpool_info() if p.get("user_api") == "blas"]
    except Exception as exc:  # threadpoolctl missing: say so in the record
        return [f"unknown ({type(exc).__name__})"]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    import shlex

    import torch

    output_json["relprop_bench"] = {
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable)] + ["-m", "pytest"]
                            + list(config.invocation_params.args)),
        "cwd": str(config.invocation_params.dir),
        "torch_threads": torch.get_num_threads(),
        "env": {k: os.environ[k] for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                           "OPENBLAS_NUM_THREADS", "NUMBA_CACHE_DIR",
                                           "RELPROP_BENCH_THREADS", "RELPROP_BENCH_ROUNDS_W1",
                                           "RELPROP_BENCH_ROUNDS_W1_IG", "RELPROP_BENCH_ROUNDS_W2", "RELPROP_BENCH_ROUNDS_W2_CAPTUM",
                                           "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                if k in os.environ},
        "blas_kernels": _blas_kernels(),
        "loadavg_start": _SESSION["loadavg_start"],
        "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torchvision_stub": TORCHVISION_STUBBED,
        "relprop_source_sha256": _relprop_source_digest(),
        "outcomes": list(_SESSION["outcomes"]),
    }
