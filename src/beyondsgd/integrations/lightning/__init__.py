"""PyTorch Lightning glue for the beyondsgd methods (extra ``lightning``).

What works in Lightning unchanged: BPGrad without gradient accumulation (Lightning's automatic
optimization calls ``optimizer.step(closure)``, and the closure returns the loss BPGrad needs),
SLBI and ProxProp (ordinary optimizers / converted layers), LR schedulers and checkpoint resume.
What needs the glue here, and why (``docs/integrations/lightning.md``):

* :class:`BPGradMixin` -- under ``accumulate_grad_batches=k`` Lightning's closure returns the
  last microbatch's loss divided by ``k``, so BPGrad's step length ``(f_t - rho min f)/L``
  (Zhang, Wu & Wang, CVPR 2018, Eq. 12) would silently use the wrong ``f_t``; the mixin passes
  the mean of the accumulated microbatch losses as ``BPGrad.step(loss=...)``, and warns once
  that gradient clipping does nothing useful for BPGrad.
* :class:`GDSolverCallback` -- GDSolver's MILP step on the last layer (Ashok et al., IJCAI-22,
  Algorithm 1) runs between epochs, at validation-loss plateaus, accepted on the validation
  dataloader; events are logged through Lightning's logger.
* :class:`PHTAlternationMixin` -- the PHT alternation (support step + ``K`` frozen-support
  weight steps) in manual optimization, with Lightning's optimizer stepped once per batch so
  that ``trainer.global_step`` counts batches.

``pytorch_lightning`` is used when installed (the extra installs it), else ``lightning.pytorch``.
"""

from __future__ import annotations

from ._pl import pl
from .bpgrad import BPGradMixin
from .data import materialize
from .gdsolver import GDSolverCallback
from .pht import PHTAlternationMixin
from .problem import model_from_lightning, problem_from_datamodule

__all__ = [
    "BPGradMixin",
    "GDSolverCallback",
    "PHTAlternationMixin",
    "materialize",
    "model_from_lightning",
    "pl",
    "problem_from_datamodule",
]
