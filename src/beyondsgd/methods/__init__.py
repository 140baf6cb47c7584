"""Training methods: one module per method, each registered with the runner under a name.

Importing this package registers every method (``beyondsgd.methods.METHODS``).
"""

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
from . import baselines  # noqa: F401  (registers sgd, momentum, adam, ...)
from . import bpgrad  # noqa: F401
from . import proxprop  # noqa: F401
from . import slbi  # noqa: F401
from . import gdsolver  # noqa: F401
from . import pht  # noqa: F401

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
