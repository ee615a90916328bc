"""Shared pytest configuration for the relprop test suite.

Peer tests (``tests/test_peers_*.py``) compare relprop against Zennit and Captum.  Those peers
are *required* in CI (the ``test`` extra installs them): the peer modules import torch, zennit
and captum unconditionally, so a missing peer is a collection error (a failure), never a skip.

Zennit 0.5.1 imports ``torchvision.models.resnet`` (for its ResNet canonizers) at import time.
The installed torchvision has no build matching torch 2.13 here, and importing it raises
(``RuntimeError: operator torchvision::nms does not exist``).  Before any test module imports
zennit we therefore put a minimal stand-in (``torchvision_stub.py``, shared with bench/) into
``sys.modules`` -- but only when the real
torchvision cannot be imported.  relprop itself never needs torchvision.
"""
from __future__ import annotations

import random
import sys

import numpy as np
import pytest

import torchvision_stub

SEED = 20240611


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
    torchvision_stub.install()


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
