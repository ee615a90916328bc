"""Attribution methods, one module per family; importing this package registers them all.

``METHODS`` maps each name to its declaration (``relprop.methods.base.Method``): parameters
with defaults, traversal configuration or run function, and capabilities.
"""
from .base import METHODS, Method, register  # noqa: F401
from . import gradient, lrp, deeplift, paths, smoothgrad  # noqa: F401,E402
from . import perturbation, sampling, cam, surrogate, rap, patterns  # noqa: F401,E402
