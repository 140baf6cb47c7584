"""ProxProp: proximal backpropagation (Frerix, Moellenhoff, Moeller & Cremers, ICLR 2018).

ProxProp keeps the BackProp forward/backward sweep but replaces the explicit gradient step on the
parameters of every linear layer (``nn.Linear``, ``nn.Conv2d``) by a proximal (implicit) step.
With the forward pass :math:`z = \\phi(\\theta^k, a)` and the BackProp signal
:math:`g = \\partial J / \\partial z` of the mean-reduced loss, the layer target is
:math:`\\tilde z = z - g` (Eqs. 8-9 with unit step) and the new parameters are (Eq. 11)

.. math::

    \\theta^{k+1} = \\arg\\min_\\theta\\; \\tfrac12 \\|\\phi(\\theta, a) - \\tilde z\\|^2
                   + \\tfrac{1}{2\\tau_\\theta}\\|\\theta - \\theta^k\\|^2 ,

equivalently (Prop. 2, Eq. 13; Eq. 14 is the linear system)

.. math::

    d = \\theta^k - \\theta^{k+1} = M^{-1} \\nabla_\\theta J(\\theta^k),\\qquad
    M = \\tfrac{1}{\\tau_\\theta} I + A^\\top A,

where :math:`A` is the linear map :math:`\\theta \\mapsto \\phi(\\theta, a)` (weights *and* bias;
for a convolution :math:`A^\\top A` sums over the batch and the spatial positions). The layer's
``backward`` writes :math:`d` into ``.grad`` (this is the paper's Section 5.3 interface), so any
``torch.optim`` optimizer applies it with ``lr`` = :math:`\\tau`: SGD gives
:math:`\\theta^{k+1} = \\theta^k - \\tau M^{-1}\\nabla J` (Eq. 13). The gradient passed to
earlier layers is the ordinary BackProp gradient with the *old* weights (Eq. 10), so the
downward signal is exactly BackProp's. The last layer keeps an explicit step (Eq. 12).

Solvers (``solver=``):

* ``"cg"``: ``cg_iters`` conjugate-gradient iterations on Eq. 14, warm-started at
  :math:`\\theta^k` (i.e. :math:`d_0 = 0`, so the initial residual is :math:`\\nabla_\\theta J`
  and N iterations cost N Gram applications). Any number of iterations gives a descent
  direction (Prop. 5). One CG per output unit/channel (``cg_block="unit"``; what the default
  ``"auto"`` gives) or one CG over the whole layer (``cg_block="layer"``). For a
  Linear layer the iterates are carried on the cheapest of three equivalent paths by flop
  count (:func:`linear_cg_path`): the explicit K x K Gram, primal batch products, or
  batch-space ("dual") CG with the B x B Gram :math:`\\tilde A \\tilde A^\\top`
  (:func:`~beyondsgd.methods.proxprop.cg.batch_space_cg`). ``cg_variant="official"`` reproduces the
  official code's iteration (not CG; the paper's cgN numbers came from it): aliased
  directions, absolute eps and its blocking (per output unit for Linear, one CG over the
  whole layer for Conv2d), so it takes no ``cg_block``.
* ``"exact"``: a dense solve. Linear: Woodbury, :math:`d^\\top = \\tilde A^\\top (\\beta I + s
  \\tilde A \\tilde A^\\top)^{-1} g` with a BxB Cholesky, when the batch B is smaller than the
  fan-in + 1; otherwise a Cholesky of the (fan-in+1)^2 matrix. Conv2d: the unfolded-input Gram
  (shared by all output channels of a group) and a Cholesky solve.
* ``"gradient"``: :math:`d = \\nabla_\\theta J` (BackProp through the same layer; the
  paper's baseline mode).

Data parallelism (``distributed=``, default: whenever ``torch.distributed`` is initialised with
more than one process): :math:`A` must be the map of the *global* batch, so each rank forms its
local Gram :math:`A_r^\top A_r` (per group for convolutions) and its gradient, one all-reduce
sums them, and every rank solves the same system (CG or Cholesky on the explicit
:math:`K\times K` Gram, :math:`K` = fan-in + 1). The result equals the one-process solve on the
whole batch up to round-off; the downward gradient is per sample and stays local. Memory: the
Gram is :math:`K^2` per group (and a convolution's unfolded input, rows x :math:`K`).

Scaling (``gram=``): ``"sum"`` (default, the paper's) uses the unnormalised Gram
:math:`A^\\top A` with the mean-reduced loss's gradient, so the preconditioner's strength grows
with the batch size (and with the feature-map size for convolutions); keep batch 500 to reuse
the paper's :math:`\\tau_\\theta`. ``"mean"`` uses :math:`A^\\top A / B` (B = rows of the
layer input: batch size, times extra leading dims for Linear), making :math:`\\tau_\\theta`
batch-size independent.

Example::

    >>> import torch
    >>> from torch import nn
    >>> from beyondsgd.methods.proxprop import proxprop
    >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> net = proxprop(net, tau_theta=1.0, solver="cg", cg_iters=3)   # net[0] -> ProxLinear
    >>> opt = torch.optim.SGD(net.parameters(), lr=1.0, momentum=0.95, nesterov=True)
    >>> x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    >>> loss = nn.functional.cross_entropy(net(x), y)
    >>> loss.backward(); opt.step()                     # net[0].weight.grad holds M^{-1} grad

Reference: T. Frerix, T. Moellenhoff, M. Moeller, D. Cremers, "Proximal Backpropagation",
ICLR 2018, arXiv:1706.04638. Official code: github.com/tfrerix/proxprop (MIT licence;
behaviour described, no code reused).
"""

from .config import (
    CG_BLOCKS,
    CG_PATHS,
    CG_VARIANTS,
    GRAMS,
    SOLVERS,
    ConvGeometry,
    ProxConfig,
)
from .conv import (
    UNFOLD_LIMIT,
    conv2d_cg_flops,
    conv2d_cg_path,
    conv2d_gram_apply,
    conv2d_path,
    conv2d_prox_direction,
    conv2d_unfolded,
    conv2d_unfolded_t,
)
from .convert import proxprop
from .layers import ProxConv2d, ProxConv2dFunction, ProxLinear, ProxLinearFunction
from .method import PROX_KEYS, ProxProp, ProxPropSGD
from .solvers import (
    bias_prox_direction,
    linear_cg_flops,
    linear_cg_path,
    linear_prox_direction,
    linear_prox_parts,
)

__all__ = [
    "CG_BLOCKS",
    "CG_PATHS",
    "CG_VARIANTS",
    "GRAMS",
    "PROX_KEYS",
    "SOLVERS",
    "UNFOLD_LIMIT",
    "ConvGeometry",
    "ProxConfig",
    "ProxConv2d",
    "ProxConv2dFunction",
    "ProxLinear",
    "ProxLinearFunction",
    "ProxProp",
    "ProxPropSGD",
    "bias_prox_direction",
    "conv2d_cg_flops",
    "conv2d_cg_path",
    "conv2d_gram_apply",
    "conv2d_prox_direction",
    "conv2d_path",
    "conv2d_unfolded",
    "conv2d_unfolded_t",
    "linear_cg_flops",
    "linear_cg_path",
    "linear_prox_direction",
    "linear_prox_parts",
    "proxprop",
]
