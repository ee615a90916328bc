"""relprop: a compiled-kernel relevance engine.

>>> import relprop as rp
>>> net = rp.Sequential(rp.Dense(w1, b1), rp.ReLU(), rp.Dense(w2, b2))   # doctest: +SKIP
>>> R = rp.attribute(net, x, "lrp.epsilon")                                # doctest: +SKIP
"""
from . import composites, rules
from .api import attribute, forward
from .graph import (
    Add,
    AvgPool2d,
    BatchNorm2d,
    Concat,
    Dropout,
    GlobalAvgPool2d,
    LeakyReLU,
    Reshape,
    Softplus,
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
from . import perturbation  # noqa: E402,F401  (registers "occlusion")
from . import sampling  # noqa: E402,F401  (registers "deepshap", "expected_gradients", "gradient_shap")
from . import cam  # noqa: E402,F401  (registers "gradcam", "gradcam_pp", "guided_gradcam")
from . import surrogate  # noqa: E402,F401  (registers "kernel_shap", "lime")
from . import rap  # noqa: E402,F401  (registers "rap")
from . import patterns  # noqa: E402,F401  (registers "patternnet", "pattern_attribution")
from .canonize import canonize
from .io_native import load, save
from .patterns import fit_patterns, load_patterns

__version__ = "0.1.0"

__all__ = [
    "attribute", "forward", "METHODS", "rules", "composites",
    "Graph", "Node", "Sequential", "Dense", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten",
    "ReLU", "Tanh", "Sigmoid", "Softmax", "Identity",
    "Add", "Concat", "BatchNorm2d", "GlobalAvgPool2d", "Reshape", "LeakyReLU", "Softplus", "Dropout",
    "canonize", "save", "load", "from_torch", "from_onnx",
    "fit_patterns", "load_patterns",
]


def from_torch(module, example_input, **kwargs):
    """Import a PyTorch module (traced with torch.fx); see ``relprop.io_torch``."""
    from .io_torch import from_torch as _from_torch

    return _from_torch(module, example_input, **kwargs)


def from_onnx(path_or_model, **kwargs):
    """Import an ONNX model with the ``onnx`` package only; see ``relprop.io_onnx``."""
    from .io_onnx import from_onnx as _from_onnx

    return _from_onnx(path_or_model, **kwargs)
