"""beyondsgd: published alternatives to SGD/Adam as drop-in PyTorch methods, and a benchmark.

Methods (one module each under ``beyondsgd.methods``):

- ``BPGrad`` (Zhang, Wu & Wang, CVPR 2018) and ``estimate_lipschitz``;
- ``proxprop`` / ``ProxLinear`` / ``ProxConv2d`` (Frerix et al., ICLR 2018);
- ``SLBI`` / ``slbi_param_groups`` and ``sparsity`` (DessiLBI, Fu et al., ICML 2020);
- ``GDSolver`` and the ``gdsolver`` MILP functions (Ashok et al., IJCAI 2022);
- ``PositiveHardThreshold`` / ``pht`` / ``Alternating`` (after Huang, Kong & Lucey 2017).

Baselines SGD, momentum, Adam, AdamW, Adagrad, Adadelta, RMSProp run through the same runner
(``beyondsgd.bench.runner.run_trial``). See README.md for the API tour.
"""

from . import data, models
from .methods import METHODS, HParam, Method, TrainContext, gdsolver, make_method, sparsity
from .methods.bpgrad import BPGrad, estimate_lipschitz
from .methods.gdsolver import GDSolver
from .methods.pht import Alternating, PositiveHardThreshold, frozen_support, pht
from .methods.proxprop import ProxConv2d, ProxLinear, proxprop
from .methods.slbi import SLBI, slbi_param_groups

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "SLBI",
    "Alternating",
    "BPGrad",
    "GDSolver",
    "HParam",
    "Method",
    "PositiveHardThreshold",
    "ProxConv2d",
    "ProxLinear",
    "TrainContext",
    "data",
    "estimate_lipschitz",
    "frozen_support",
    "gdsolver",
    "make_method",
    "models",
    "pht",
    "proxprop",
    "slbi_param_groups",
    "sparsity",
]
