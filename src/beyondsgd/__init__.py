"""beyondsgd: published alternatives to SGD/Adam as drop-in PyTorch methods, and a benchmark.

Methods: BPGrad, ProxProp, DessiLBI (SLBI), GDSolver, PHT alternation; baselines SGD, momentum,
Adam, AdamW, Adagrad, Adadelta, RMSProp. See README.md for the API tour.
"""

from . import data, models
from .methods import METHODS, HParam, Method, TrainContext, make_method

__version__ = "0.1.0"

__all__ = ["METHODS", "HParam", "Method", "TrainContext", "data", "make_method", "models"]
