"""relprop: a compiled-kernel relevance engine.

>>> import relprop as rp
>>> net = rp.Sequential(rp.Dense(w1, b1), rp.ReLU(), rp.Dense(w2, b2))   # doctest: +SKIP
>>> R = rp.attribute(net, x, "lrp.epsilon")                                # doctest: +SKIP
"""
from .core import composites, rules
from .api import attribute, forward, scores
from .explainer import Explainer, Explanation
from .core.graph import (
    Add,
    AvgPool2d,
    BatchNorm2d,
    Concat,
    Dropout,
    GlobalAvgPool2d,
    LeakyReLU,
    Reshape,
    Softplus,
    ELU,
    GELU,
    SiLU,
    Swish,
    Hardswish,
    Hardsigmoid,
    ReLU6,
    Mish,
    Pad,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    Upsample,
    LayerNorm,
    GroupNorm,
    Mul,
    ConvTranspose2d,
    ZeroInsert2d,
    Conv2d,
    Dense,
    Flatten,
    Graph,
    Identity,
    MaxPool2d,
    Node,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Tanh,
)
from .methods import METHODS
from . import core, methods  # noqa: F401
from .core.canonize import canonize
from .io.native import load, save
from .methods.patterns import fit_patterns, load_patterns
from .runner import open_attributions

__version__ = "0.1.0"

__all__ = [
    "attribute", "forward", "scores", "Explainer", "Explanation", "METHODS", "rules", "composites",
    "Graph", "Node", "Sequential", "Dense", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten",
    "ReLU", "Tanh", "Sigmoid", "Softmax", "Identity",
    "Add", "Concat", "BatchNorm2d", "GlobalAvgPool2d", "Reshape", "LeakyReLU", "Softplus", "Dropout",
    "ELU", "GELU", "SiLU", "Swish", "Hardswish", "Hardsigmoid", "ReLU6", "Mish", "Pad",
    "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Upsample", "LayerNorm", "GroupNorm", "Mul",
    "ConvTranspose2d", "ZeroInsert2d",
    "canonize", "save", "load", "from_torch", "from_onnx",
    "fit_patterns", "load_patterns", "open_attributions",
]


def from_torch(module, example_input, **kwargs):
    """Import a PyTorch module (traced with torch.fx); see ``relprop.io.torch_import``."""
    from .io.torch_import import from_torch as _from_torch

    return _from_torch(module, example_input, **kwargs)


def from_onnx(path_or_model, **kwargs):
    """Import an ONNX model with the ``onnx`` package only; see ``relprop.io.onnx_import``."""
    from .io.onnx_import import from_onnx as _from_onnx

    return _from_onnx(path_or_model, **kwargs)


def __getattr__(name):
    """``rp.data`` (shipped models and samples), ``rp.evaluate`` and ``rp.viz``, imported on first use."""
    if name in ("data", "evaluate", "viz"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'relprop' has no attribute {name!r}")
