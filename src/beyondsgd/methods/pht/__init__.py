r"""PHT alternation: positive hard-thresholding networks trained by alternating weights and support.

Paper: Chen Huang, Chen Kong, Simon Lucey, "CNNs are Globally Optimal Given Multi-Layer Support",
arXiv:1712.02501 (2017). **Only the paper's abstract is known (no full text, no public code): the
algorithm in this package is our reconstruction from that abstract.**

The abstract's three ingredients, and what this package builds for each:

1. *Replace ReLU by positive hard-thresholding* (PHT), ``pht(z) = z * 1[z > tau]`` with
   ``tau >= 0``: keep or kill, no shrinkage (:class:`PositiveHardThreshold`, :func:`pht`;
   ``activation.py``).
2. *Read the non-linearity as a binary state vector*: the support ``s_l(x) = 1[z_l(x) > tau_l]``.
   With every layer's support fixed, ``f(x) = W_L D_{L-1} W_{L-1} ... D_1 W_1 x`` (+ biases),
   ``D_l = diag(s_l)``: linear in ``x`` and multilinear in the weights; the loss is convex in any
   one layer's weights (:func:`record_support`, :func:`frozen_support`; ``support.py``).
3. *Alternate between weights and support*: support step (a forward pass records the masks), then
   a weight step with the masks frozen: ``K`` inner steps of any torch optimizer, and/or
   block-coordinate solves of one layer's convex sub-problem at a time (:func:`solve_layer`,
   ``solvers.py``; :class:`Alternating`, ``alternating.py``).

What is exact, and what is not: for MSE on a ``Linear`` layer the layer solve is the exact
least-squares minimiser (``torch.linalg.lstsq``); for cross-entropy (and conv layers) it is
``iters`` (default 20) L-BFGS iterations of the damped convex problem, not a certified optimum
(hence the registered hyperparameter's name ``layer_solve``, formerly ``exact``).
Either way only *one* layer is solved at a time under frozen supports: the joint problem across
layers is never solved, and solving a hidden layer moves the supports of the layers above it, so
the real network's loss can rise although the frozen-support loss fell. :meth:`Alternating.solve`
therefore evaluates the real network after each layer solve and reverts the layer when its true
loss rose.

Registered methods (``method.py``): ``pht_alt`` (the alternation), ``pht_sgd`` and ``pht_adam``
(PHT networks trained plainly by SGD / Adam, to separate the effect of the activation from the
alternation). The runner builds models with ReLU; each method's ``prepare`` swaps in PHT.

Supported layers: PHT works in any model (any activation shape). The linear-under-frozen-support
structure, and hence the layer solves, needs an ``nn.Sequential`` whose modules after the
solved layer are all linear once the supports are frozen (``Linear``, ``Conv1d/2d/3d``, PHT,
``Flatten``, ``Unflatten``, ``Identity``, average pooling); max-pooling after the solved layer is
refused (its switches are a second, unfrozen, support). Solved layers: ``nn.Linear`` (lstsq or
L-BFGS) and ``nn.Conv1d/2d/3d`` (L-BFGS).

Data parallelism: masks are per sample, so each rank records and freezes the supports of its own
samples; ``Alternating.step(..., model=ddp_model)`` runs the K frozen-support steps through a
``DistributedDataParallel`` wrapper, whose averaged gradients keep the replicas identical. The
registered ``pht_alt`` gathers the global minibatch and its masks for per-step layer solves
(``layer_solve_on="step"``) and runs per-epoch solves on the whole training set on every rank.
Under PyTorch Lightning, ``PHTAlternationMixin`` refuses DDP (K backward passes per forward call).
"""

from __future__ import annotations

from .activation import DEFAULT_TAU, PositiveHardThreshold, pht, pht_modules, pht_value, support_of
from .alternating import Alternating
from .method import PHTSGD, PHTAdam, PHTAlternation  # importing registers the methods
from .method import _RowIndex as _RowIndex  # used by the tests
from .solvers import solvable_layers, solve_layer
from .support import frozen_support, mask_bytes, record_support, recording

__all__ = [
    "DEFAULT_TAU",
    "PHTSGD",
    "Alternating",
    "PHTAdam",
    "PHTAlternation",
    "PositiveHardThreshold",
    "frozen_support",
    "mask_bytes",
    "pht",
    "pht_modules",
    "pht_value",
    "record_support",
    "recording",
    "solvable_layers",
    "solve_layer",
    "support_of",
]
