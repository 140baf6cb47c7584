"""beyondsgd: published alternatives to SGD/Adam as drop-in PyTorch methods, and a benchmark.

Methods (one module each under ``beyondsgd.methods``):

- ``BPGrad`` (Zhang, Wu & Wang, CVPR 2018) and ``estimate_lipschitz``;
- ``proxprop`` / ``ProxLinear`` / ``ProxConv2d`` (Frerix et al., ICLR 2018);
- ``SLBI`` / ``slbi_param_groups`` and ``sparsity`` (DessiLBI, Fu et al., ICML 2020);
- ``GDSolver`` and the ``gdsolver`` MILP functions (Ashok et al., IJCAI 2022);
- ``PositiveHardThreshold`` / ``pht`` / ``Alternating`` (after Huang, Kong & Lucey 2017).

``create_optimizer(name, model, **hp)`` builds what any of them needs by name.

``Problem`` defines your own benchmark problem (model factory, data as tensors or
``Dataset``s, loss, metric, budget); ``bench.compare(problem, methods=[...])`` runs the
benchmark on it from Python, ``beyondsgd bench --problem file.py:NAME`` from the shell.

Baselines SGD, momentum, Adam, AdamW, Adagrad, Adadelta, RMSProp run through the same runner
(``beyondsgd.bench.run.runner.run_trial``). See README.md for the API tour.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version

from . import (
    bench,
    data,
    models,
)
from .bench.problems.user import Problem  # your problem, for the benchmark
from .factory import create_optimizer
from .methods import METHODS, HParam, Method, TrainContext, gdsolver, make_method
from .methods.bpgrad import BPGrad, estimate_lipschitz
from .methods.gdsolver import GDSolver
from .methods.pht import Alternating, PositiveHardThreshold, frozen_support, pht
from .methods.proxprop import ProxConv2d, ProxLinear, proxprop
from .methods.slbi import SLBI, slbi_param_groups, sparsity


def _version() -> str:
    """The version from the installed distribution's metadata (pyproject.toml's ``version``, the
    single source); in a source tree that is not installed, read pyproject.toml itself."""
    try:
        return _dist_version("beyondsgd")
    except PackageNotFoundError:
        import re
        from pathlib import Path

        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        try:
            m = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
        except OSError:
            m = None
        return m.group(1) if m else "0+unknown"


__version__ = _version()

__all__ = [
    "METHODS",
    "SLBI",
    "Alternating",
    "BPGrad",
    "GDSolver",
    "HParam",
    "Method",
    "PositiveHardThreshold",
    "Problem",
    "ProxConv2d",
    "ProxLinear",
    "TrainContext",
    "__version__",
    "bench",
    "create_optimizer",
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
