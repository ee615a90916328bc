"""``relprop info``: what relprop runs on in this environment.

Versions (relprop, Python, numpy, scipy, numba), the CPU kernels' thread count, the BLAS
numpy uses, the GPU (through CuPy, when installed), where Numba caches the compiled kernels,
and which optional extras are installed. Read-only: the extras' versions come from package
metadata without importing them; only CuPy (to name the GPU) and threadpoolctl (to read the
BLAS threads) are imported, and only when installed. No library's settings are changed.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import sys
from pathlib import Path

#: optional packages reported by distribution name (what ``pip install`` takes)
EXTRAS = ("torch", "onnx", "onnxruntime", "zarr", "dask", "distributed", "Pillow", "tqdm")


def collect():
    """``[(label, value), ...]``, the rows ``relprop info`` prints. Never raises: a part that
    cannot be read says why in its value."""
    import numba
    import numpy as np
    import scipy

    from . import __version__

    rows = [("relprop", f"{__version__} ({Path(__file__).resolve().parent})"),
            ("Python", f"{platform.python_version()} ({platform.python_implementation()}, {sys.platform})"),
            ("numpy", np.__version__), ("scipy", scipy.__version__), ("numba", numba.__version__)]
    for label, part in (("CPU threads", cpu_threads), ("BLAS", blas), ("relprop's GEMMs", gemms), ("GPU", gpu),
                        ("Numba cache", numba_cache),
                        ("extras", extras)):
        try:
            value = part()
        except Exception as e:  # noqa: BLE001 - a report must not fail on one unreadable part
            value = f"unknown ({type(e).__name__}: {e})"
        rows.append((label, value))
    return rows


def format_rows(rows):
    """The report as text: ``relprop <version>`` first, then ``label: value`` lines."""
    width = max(len(label) for label, _ in rows[1:])
    lines = [f"relprop {rows[0][1]}"]
    lines += [f"{label + ':':<{width + 1}} {value}" for label, value in rows[1:]]
    return "\n".join(lines)


def cpu_threads():
    """relprop's own kernel threads (``relprop.kernels.cpu.threads``), and where the number comes from."""
    from .kernels.cpu import threads

    env = os.environ.get("RELPROP_NUM_THREADS")
    try:
        n = threads.num_threads()
    except ValueError as e:
        return f"invalid: {e}"
    where = "RELPROP_NUM_THREADS" if env else "the CPUs this process may use; set RELPROP_NUM_THREADS to change"
    return f"{n} ({where})"


def blas():
    """The BLAS numpy was built with and, when threadpoolctl is installed, the BLAS libraries
    loaded in this process with their thread counts."""
    import numpy as np

    built = "unknown"
    try:
        dep = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        built = f"{dep.get('name', '?')} {dep.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older numpy: no machine-readable build config
        pass
    text = f"{built} (numpy's build)"
    if importlib.util.find_spec("threadpoolctl") is None:
        return text + "; install threadpoolctl to see the BLAS threads"
    from threadpoolctl import threadpool_info

    libs = [f"{d.get('internal_api', '?')} {d.get('version') or ''} ({d.get('threading_layer', '?')}, "
            f"{d.get('num_threads')} threads)" for d in threadpool_info() if d.get("user_api") == "blas"]
    return text + "; loaded: " + (", ".join(" ".join(s.split()) for s in libs) or "none")


def gemms():
    """Where relprop's CPU GEMMs run (``relprop.kernels.cpu.blas``): its private single-threaded
    copy of numpy's OpenBLAS (made at the first call that needs it), or numpy's BLAS."""
    from .kernels.cpu import blas as B

    if not B.enabled():
        return "numpy's BLAS (RELPROP_PRIVATE_BLAS=0)"
    if B._numpy_openblas() is None:
        return "numpy's BLAS (numpy is not built on scipy-openblas: no private copy)"
    p = B._private()  # (made here if it is not yet: the first GEMM would make it)
    if p is None:
        return f"numpy's BLAS (no private copy could be made in {B.cache_dir()})"
    return (f"a private single-threaded copy of numpy's OpenBLAS ({p[0]._name}), in column blocks on relprop's "
            f"threads")


def gpu():
    """The CUDA devices CuPy sees, or why there are none."""
    if importlib.util.find_spec("cupy") is None:
        return "none (CuPy is not installed: pip install 'relprop[gpu]')"
    dist = _cupy_distribution()
    try:
        import cupy

        rt = cupy.cuda.runtime
        count = rt.getDeviceCount()
        if count == 0:
            return f"none (CuPy {cupy.__version__} sees no CUDA device)"
        devices = []
        for i in range(count):
            p = rt.getDeviceProperties(i)
            name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
            devices.append(f"{i}: {name}, {p['totalGlobalMem'] / 2**30:.0f} GiB, compute {p['major']}.{p['minor']}")
        return f"{'; '.join(devices)} (CuPy {cupy.__version__}{', ' + dist if dist else ''})"
    except Exception as e:  # noqa: BLE001 - no driver, no device, a broken CUDA install
        return f"none (CuPy is installed but no GPU is usable: {type(e).__name__}: {' '.join(str(e).split())})"


def _cupy_distribution():
    for d in md.distributions():
        name = d.metadata.get("Name") or ""
        if name.lower().startswith("cupy"):
            return f"{name} {d.version}"
    return None


def numba_cache():
    """Where Numba keeps the compiled CPU kernels: ``NUMBA_CACHE_DIR``, else ``__pycache__``
    next to the kernel sources, else (that folder not writable) Numba's user-wide cache."""
    import numba

    from .kernels import cpu

    src = Path(cpu.__file__).resolve().parent
    if numba.config.CACHE_DIR:
        where, how = Path(numba.config.CACHE_DIR), "NUMBA_CACHE_DIR"
    elif os.access(src / "__pycache__", os.W_OK) or (not (src / "__pycache__").exists() and os.access(src, os.W_OK)):
        where, how = src / "__pycache__", "next to the kernel sources"
    else:
        from numba.misc.appdirs import AppDirs

        where, how = Path(AppDirs(appname="numba", appauthor=False).user_cache_dir), "user-wide; sources read-only"
    files = len(list(where.rglob("*.nbi"))) if where.is_dir() else 0
    return f"{where} ({how}; {files} cached kernel signatures)"


def extras():
    """The optional packages installed, with versions, and those missing."""
    have, missing = [], []
    for name in EXTRAS:
        try:
            have.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            missing.append(name)
    return ", ".join(have) + (f"; not installed: {', '.join(missing)}" if missing else "") if have else \
        f"none installed ({', '.join(missing)})"


def main():
    print(format_rows(collect()))
