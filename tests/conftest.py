"""Shared pytest configuration for the relprop test suite.

Peer tests (``tests/test_peers_*.py``) compare relprop against Zennit and Captum.  Those peers
are *required* in CI (the ``test`` extra installs them): the peer modules import torch, zennit
and captum unconditionally, so a missing peer is a collection error (a failure), never a skip.

Zennit 0.5.1 imports ``torchvision.models.resnet`` (for its ResNet canonizers) at import time.
The installed torchvision has no build matching torch 2.13 here, and importing it raises
(``RuntimeError: operator torchvision::nms does not exist``).  Before any test module imports
zennit we therefore put a minimal stand-in ``torchvision`` / ``torchvision.models`` /
``torchvision.models.resnet`` module tree into ``sys.modules`` -- but only when the real
torchvision cannot be imported.  relprop itself never needs torchvision.
"""
from __future__ import annotations

import random
import importlib.machinery
import sys
import types

import numpy as np
import pytest

SEED = 20240611


def _purge_torchvision_modules() -> None:
    """Drop half-initialised ``torchvision*`` entries a failed import leaves behind."""
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def _install_torchvision_stub(torch) -> None:
    """Install a minimal stand-in for the parts of torchvision zennit imports."""
    tv = types.ModuleType("torchvision")
    tv.__doc__ = "relprop test stand-in: the real torchvision could not be imported"
    tv.__path__ = []  # mark as a package so submodule imports resolve via sys.modules
    tv.__version__ = "0.0.0+relprop-test-stub"
    tv.__relprop_stub__ = True
    models = types.ModuleType("torchvision.models")
    models.__path__ = []
    resnet = types.ModuleType("torchvision.models.resnet")
    # a spec keeps importlib.util.find_spec (used by torch.onnx's dynamo exporter) from complaining
    for mod in (tv, models, resnet):
        mod.__spec__ = importlib.machinery.ModuleSpec(mod.__name__, None, is_package=mod is not resnet)

    class BasicBlock(torch.nn.Module):
        """Stand-in for torchvision.models.resnet.BasicBlock (never instantiated by relprop tests)."""

        expansion = 1

    class Bottleneck(torch.nn.Module):
        """Stand-in for torchvision.models.resnet.Bottleneck (never instantiated by relprop tests)."""

        expansion = 4

    BasicBlock.__module__ = Bottleneck.__module__ = "torchvision.models.resnet"
    resnet.BasicBlock = BasicBlock
    resnet.Bottleneck = Bottleneck
    models.resnet = resnet
    tv.models = models
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.models"] = models
    sys.modules["torchvision.models.resnet"] = resnet


def _prepare_torch() -> None:
    """Configure torch (if importable) and make zennit importable.

    If torch itself is missing we do nothing here: the peer test modules import torch/zennit/
    captum at module level, so they fail (collection error) rather than skip, while the rest of
    the suite (which does not need torch) still runs.
    """
    try:
        import torch
    except Exception:  # noqa: BLE001 - absence is reported by the peer modules themselves
        return
    torch.set_num_threads(2)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (e.g. conftest imported twice); harmless
        pass
    torch.manual_seed(SEED)
    if "torchvision" in sys.modules and getattr(sys.modules["torchvision"], "__relprop_stub__", False):
        return
    try:
        import torchvision.models.resnet  # noqa: F401
    except Exception:  # noqa: BLE001 - broken builds raise RuntimeError, not ImportError
        _purge_torchvision_modules()
        _install_torchvision_stub(torch)


_prepare_torch()


def pytest_collection_modifyitems(config, items):
    """Every test collected from a ``test_peers_*`` module carries the ``peers`` marker."""
    for item in items:
        if item.path.name.startswith("test_peers_"):
            item.add_marker(pytest.mark.peers)


@pytest.fixture(autouse=True)
def _seed_rngs():
    """Seed the global RNGs before every test (tests use explicit Generators where it matters)."""
    random.seed(SEED)
    np.random.seed(SEED % (2**32))
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(SEED)
    yield
