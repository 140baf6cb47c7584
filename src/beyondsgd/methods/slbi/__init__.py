"""DessiLBI (Split LBI for deep nets; Fu et al., ICML 2020), one package:

- ``optimizer.py``: :class:`SLBI`, the torch optimizer (the update rule and its equations);
- ``update.py``: the pure maths (the W/V/Γ step, the group-lasso prox);
- ``groups.py``: which parameters are coupled and how (:func:`slbi_param_groups`, ``"auto"``);
- ``sparsity.py``: masks from Γ, the selection path, pruning and tickets; ``export.py``: a
  physically smaller network from the masks;
- ``method.py``: the runner's registered ``slbi`` method.
"""

from . import sparsity
from .export import count_parameters, export_pruned
from .groups import (
    AUTO,
    AUTO_NEURON,
    AUTOS,
    auto_structure,
    check_structure,
    resolve_structure,
    slbi_param_groups,
)
from .method import SLBIMethod, entry_lambda
from .optimizer import LAMBDA_UNITS, OFFICIAL, SLBI, check_hparams
from .update import (
    COUPLINGS,
    LAMBDA_SCALINGS,
    STRUCTURES,
    group_thresholds,
    prox_group_lasso,
    prox_group_lasso_,
    slbi_group_step,
)

__all__ = ["AUTO", "AUTOS", "AUTO_NEURON", "COUPLINGS", "LAMBDA_SCALINGS", "LAMBDA_UNITS",
           "OFFICIAL", "SLBI", "STRUCTURES", "SLBIMethod", "auto_structure", "check_hparams",
           "check_structure", "count_parameters", "entry_lambda", "export_pruned",
           "group_thresholds", "prox_group_lasso", "prox_group_lasso_", "resolve_structure",
           "slbi_group_step", "slbi_param_groups", "sparsity"]
