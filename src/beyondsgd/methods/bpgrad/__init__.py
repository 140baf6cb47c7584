r"""BPGrad: branch-and-pruning step lengths from a Lipschitz bound (Zhang, Wu & Wang, CVPR 2018).

The paper assumes the training loss :math:`f \ge 0` is :math:`L`-Lipschitz in the weights. Around
the current point :math:`x_t` no point closer than :math:`(f(x_t) - f^*)/L` can reach the lower
bound :math:`f^*`, so that ball is pruned and the next sample is taken on its boundary. The
practical solver replaces :math:`f^*` by :math:`\rho \min_{i \le t} f_i` and moves along the
globally normalised gradient with heavy-ball momentum.

This package holds

* :class:`BPGrad`, a ``torch.optim.Optimizer`` (the practical solver, both momentum placements,
  both loss estimates),
* :func:`bpgrad_update` and :func:`bpgrad_step_length`, the pure maths it is built from,
* :func:`estimate_lipschitz` / :func:`pairwise_lipschitz`, the pairwise
  :math:`|f_i - f_j| / \|w_i - w_j\|` estimator over the iterates of a short run, to pick ``L``
  without a grid search,
* the registered runner method ``bpgrad`` (:class:`BPGradMethod`).

Reference: Z. Zhang, Y. Wu, G. Wang, "BPGrad: Towards Global Optimality in Deep Learning via Branch
and Pruning", CVPR 2018, arXiv:1711.06959. Official code: github.com/RyanCV/BPGrad (MATLAB).
"""

from .lipschitz import LipschitzEstimate, estimate_lipschitz, pairwise_lipschitz
from .maths import (
    BELOW_BOUND_ACTIONS,
    LOSS_ESTIMATES,
    MOMENTUM_FORMS,
    LossBelowBoundError,
    NonFiniteLossError,
    bpgrad_step_length,
    bpgrad_update,
)
from .method import BPGradMethod
from .optimizer import BPGrad

__all__ = [
    "BELOW_BOUND_ACTIONS",
    "LOSS_ESTIMATES",
    "MOMENTUM_FORMS",
    "BPGrad",
    "BPGradMethod",
    "LipschitzEstimate",
    "LossBelowBoundError",
    "NonFiniteLossError",
    "bpgrad_step_length",
    "bpgrad_update",
    "estimate_lipschitz",
    "pairwise_lipschitz",
]
