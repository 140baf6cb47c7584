"""Training methods: one module per method, each registered with the runner under a name.

Importing this package registers every method (``beyondsgd.methods.METHODS``).
"""

from . import (
    baselines,  # noqa: F401  (registers sgd, momentum, adam, ...)
    bpgrad,  # noqa: F401
    gdsolver,  # noqa: F401
    pht,  # noqa: F401
    proxprop,  # noqa: F401
    slbi,  # noqa: F401
)
from .base import (
    METHODS,
    HParam,
    Method,
    OptimizerMethod,
    TrainContext,
    get_method_class,
    make_method,
    register,
)

__all__ = [
    "METHODS",
    "HParam",
    "Method",
    "OptimizerMethod",
    "TrainContext",
    "get_method_class",
    "make_method",
    "register",
]
