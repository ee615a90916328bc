"""A stand-in ``torchvision`` for zennit, shared by tests/conftest.py and bench/conftest.py.

Zennit 0.5.1 imports ``torchvision.models.resnet`` (for its ResNet canonizers) at import time.
The torchvision wheel in this environment does not match the CPU torch build, and importing it
raises (``RuntimeError: operator torchvision::nms does not exist``). ``install()`` then puts a
minimal module tree (``BasicBlock``/``Bottleneck`` classes only) into ``sys.modules`` before
zennit is imported; relprop itself never needs torchvision. Where the real torchvision imports,
nothing is replaced.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types


def install() -> bool:
    """Make ``import zennit`` work; True when the stand-in was installed (now or earlier)."""
    tv = sys.modules.get("torchvision")
    if tv is not None and getattr(tv, "__relprop_stub__", False):
        return True
    try:
        import torchvision.models.resnet  # noqa: F401

        return False
    except Exception:  # noqa: BLE001 - broken builds raise RuntimeError, not ImportError
        import torch

        _purge_torchvision_modules()
        _install_torchvision_stub(torch)
        return True


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
