"""relprop: a compiled-kernel relevance engine.

>>> import relprop as rp
>>> net = rp.Sequential(rp.Dense(w1, b1), rp.ReLU(), rp.Dense(w2, b2))   # doctest: +SKIP
>>> R = rp.attribute(net, x, "lrp.epsilon")                                # doctest: +SKIP
"""
from . import composites, rules
from .api import attribute, forward
from .graph import (
    AvgPool2d,
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

__version__ = "0.1.0"

__all__ = [
    "attribute", "forward", "METHODS", "rules", "composites",
    "Graph", "Node", "Sequential", "Dense", "Conv2d", "MaxPool2d", "AvgPool2d", "Flatten",
    "ReLU", "Tanh", "Sigmoid", "Softmax", "Identity",
]
