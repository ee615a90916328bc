"""Attribution methods, one module per family; importing this package registers them all."""
from ._legacy import METHODS, Method, register  # noqa: F401
from . import perturbation, sampling, cam, surrogate, rap, patterns  # noqa: F401,E402
