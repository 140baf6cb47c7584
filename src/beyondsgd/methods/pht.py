r"""PHT alternation: positive hard-thresholding networks trained by alternating weights and support.

Paper: Chen Huang, Chen Kong, Simon Lucey, "CNNs are Globally Optimal Given Multi-Layer Support",
arXiv:1712.02501 (2017). **Only the paper's abstract is known (no full text, no public code): the
algorithm in this module is our reconstruction from that abstract.**

The abstract's three ingredients, and what this module builds for each:

1. *Replace ReLU by positive hard-thresholding* (PHT), ``pht(z) = z * 1[z > tau]`` with
   ``tau >= 0``: keep or kill, no shrinkage (:class:`PositiveHardThreshold`, :func:`pht`).
2. *Read the non-linearity as a binary state vector*: the support ``s_l(x) = 1[z_l(x) > tau_l]``.
   With every layer's support fixed, ``f(x) = W_L D_{L-1} W_{L-1} ... D_1 W_1 x`` (+ biases),
   ``D_l = diag(s_l)``: linear in ``x`` and multilinear in the weights; the loss is convex in any
   one layer's weights (:func:`record_support`, :func:`frozen_support`).
3. *Alternate between weights and support*: support step (a forward pass records the masks), then
   a weight step with the masks frozen: ``K`` inner steps of any torch optimizer, and/or exact
   block-coordinate solves of the convex per-layer sub-problem (least squares for MSE via
   ``torch.linalg.lstsq``; L-BFGS iterations for cross-entropy) (:class:`Alternating`).

Registered methods: ``pht_alt`` (the alternation), ``pht_sgd`` and ``pht_adam`` (PHT networks
trained plainly by SGD / Adam, to separate the effect of the activation from the alternation).
The runner builds models with ReLU; each method's ``prepare`` swaps in PHT with :func:`pht`.

Supported layers: PHT works in any model (any activation shape). The linear-under-frozen-support
structure, and hence the exact layer solves, needs an ``nn.Sequential`` whose modules after the
solved layer are all linear once the supports are frozen (``Linear``, ``Conv1d/2d/3d``, PHT,
``Flatten``, ``Unflatten``, ``Identity``, average pooling); max-pooling after the solved layer is
refused (its switches are a second, unfrozen, support). Solved layers: ``nn.Linear`` (lstsq or
L-BFGS) and ``nn.Conv1d/2d/3d`` (L-BFGS).

Data parallelism: masks are per sample, so each rank records and freezes the supports of its own
samples; ``Alternating.step(..., model=ddp_model)`` runs the K frozen-support steps through a
``DistributedDataParallel`` wrapper, whose averaged gradients keep the replicas identical. The
registered ``pht_alt`` gathers the global minibatch and its masks for per-step exact solves
(``exact_on="step"``) and runs per-epoch solves on the whole training set on every rank.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed as D
from .. import models as _models
from .base import (
    SCHEDULE_HPARAMS,
    Batch,
    HParam,
    LossFn,
    Method,
    TrainContext,
    make_scheduler,
    register,
)
from .baselines import SGD as _SGDMethod
from .baselines import Adam as _AdamMethod

__all__ = [
    "Alternating",
    "PHTAdam",
    "PHTAlternation",
    "PHTSGD",
    "PositiveHardThreshold",
    "frozen_support",
    "mask_bytes",
    "pht",
    "pht_modules",
    "pht_value",
    "record_support",
    "solve_layer",
    "support_of",
]

DEFAULT_TAU = 0.1


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise ValueError(f"tau must be a real number >= 0, got {tau!r}")
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0.0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    return tau


def support_of(z: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """The support ``s = 1[z > tau]`` as a bool tensor of ``z``'s shape (digest, Definitions)."""
    return z > tau


def pht_value(z: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Positive hard-thresholding ``z * 1[z > tau]`` (abstract, contribution (i)).

    Its derivative in ``z`` is ``1[z > tau]`` (the same form as ReLU's); with ``tau = 0`` the value
    equals ``relu(z)``. Compare ``relu(z - tau)``, the non-negative *soft* threshold, which shrinks
    the kept values by ``tau``.
    """
    return z * support_of(z, tau).to(z.dtype)


# --------------------------------------------------------------------------------------------
# The activation
# --------------------------------------------------------------------------------------------
class PositiveHardThreshold(nn.Module):
    r"""Positive hard-thresholding activation ``PHT_tau(z) = z * 1[z > tau]``, ``tau >= 0``.

    Three modes:

    * *free* (default): computes the support from ``z`` and applies it;
    * *recording* (inside :func:`record_support` / ``Alternating``): as free, and stores the mask;
    * *frozen* (inside :func:`frozen_support`): multiplies by a stored mask instead of recomputing
      it, so the network becomes the masked multilinear network ``W_L D_{L-1} ... D_1 W_1 x``.

    Args:
        tau: threshold (``>= 0``). ``tau = 0`` equals ReLU in value and gradient.
        learnable: make ``tau`` a parameter. ``d PHT / d tau`` is zero almost everywhere (the jump
            of height ``tau`` at ``z = tau`` is a Dirac in the derivative), so its gradient is a
            surrogate (our choice; the abstract says nothing about learning ``tau``): the step
            ``1[z > tau]`` is replaced by ``sigmoid((z - tau) / temperature)`` in the backward pass
            for ``tau`` only. The value and the gradient in ``z`` stay exact. The effective
            threshold is ``max(tau, 0)``.
        temperature: width of the surrogate step (only used when ``learnable``).

    Example::

        >>> import torch
        >>> act = PositiveHardThreshold(tau=0.5)
        >>> act(torch.tensor([-1.0, 0.3, 0.5, 0.7, 2.0]))
        tensor([0.0000, 0.0000, 0.0000, 0.7000, 2.0000])
    """

    def __init__(self, tau: float = DEFAULT_TAU, learnable: bool = False,
                 temperature: float = 0.1):
        super().__init__()
        tau = _check_tau(tau)
        if not isinstance(learnable, bool):
            raise ValueError(f"learnable must be a bool, got {learnable!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.learnable = learnable
        self.temperature = float(temperature)
        if learnable:
            self.tau = nn.Parameter(torch.tensor(tau))
        else:
            self.register_buffer("tau", torch.tensor(tau))
        self._frozen: torch.Tensor | None = None
        self._recording = False
        self._recorded: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"tau={float(self.tau.detach()):g}, learnable={self.learnable}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self._frozen is not None:
            mask = self._frozen
            if mask.shape != z.shape:
                raise ValueError(
                    f"frozen support of shape {tuple(mask.shape)} does not match the "
                    f"pre-activation of shape {tuple(z.shape)}; masks are per sample: freeze with "
                    "masks recorded on the same batch"
                )
            return z * mask.to(z.dtype)
        tau = self.tau.clamp_min(0.0) if self.learnable else self.tau
        mask = support_of(z, tau)
        if self._recording:
            if self._recorded is not None:
                raise RuntimeError(
                    "a PositiveHardThreshold module was called twice in one recorded forward "
                    "pass; supports are per layer: use one PHT module per layer"
                )
            self._recorded = mask
        out = z * mask.to(z.dtype)
        if self.learnable and not self._recording and torch.is_grad_enabled():
            zd = z.detach()
            soft = torch.sigmoid((zd - tau) / self.temperature)
            out = out + zd * (soft - soft.detach())  # zero in value; surrogate d/dtau only
        return out


def pht_modules(model: nn.Module) -> list[PositiveHardThreshold]:
    """The PHT modules of ``model`` in registration order (the order masks are listed in)."""
    return [m for m in model.modules() if isinstance(m, PositiveHardThreshold)]


def pht(model: nn.Module, tau: float = DEFAULT_TAU, learnable: bool = False) -> nn.Module:
    """Swap every ``nn.ReLU`` of ``model`` (recursively, in place) for PHT; returns ``model``.

    PHT modules already present are kept as they are. Functional ``F.relu`` calls inside a custom
    ``forward`` cannot be swapped: build such models with ``activation="pht"`` instead.

    Example::

        >>> from beyondsgd.models import mlp
        >>> net = pht(mlp(4, [8], 2), tau=0.1)
        >>> type(net[2]).__name__
        'PositiveHardThreshold'
    """
    _check_tau(tau)
    device = next((p.device for p in model.parameters()), None)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                act = PositiveHardThreshold(tau, learnable)
                setattr(parent, name, act if device is None else act.to(device))
            else:
                swap(child)

    swap(model)
    if not pht_modules(model):
        raise ValueError(
            f"{type(model).__name__} has no nn.ReLU module to replace (and no PHT module); "
            "build it with activation='pht' or with nn.ReLU modules"
        )
    return model


_models.register_activation("pht", PositiveHardThreshold)


# --------------------------------------------------------------------------------------------
# Support step / frozen support
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block every PHT module stores its mask; the list is filled on exit.

    The forward pass inside is the ordinary PHT forward (gradients flow as usual), so the support
    step and the first weight step can share one forward pass.
    """
    mods = pht_modules(model)
    masks: list[torch.Tensor] = []
    for m in mods:
        if m._frozen is not None:
            raise RuntimeError("cannot record supports inside frozen_support()")
        m._recording, m._recorded = True, None
    try:
        yield masks
        missing = [i for i, m in enumerate(mods) if m._recorded is None]
        if missing:
            raise RuntimeError(
                f"PHT modules {missing} were not called in the recorded forward pass"
            )
        masks.extend(m._recorded for m in mods)
    finally:
        for m in mods:
            m._recording, m._recorded = False, None


@torch.no_grad()
def record_support(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Support step: one forward pass with the weights fixed. Returns ``(output, masks)``.

    ``masks[j]`` is the bool support of ``pht_modules(model)[j]`` for every sample of ``x``.
    """
    with recording(model) as masks:
        out = model(x)
    return out, masks


@contextlib.contextmanager
def frozen_support(model: nn.Module, masks: Sequence[torch.Tensor]) -> Iterator[nn.Module]:
    """Within the block every PHT module multiplies by its stored mask (frozen support).

    The network is then the masked multilinear network of the digest: with biases zero it is
    exactly linear in ``x``, and the loss is convex in each single layer's weights.
    """
    mods = pht_modules(model)
    if len(masks) != len(mods):
        raise ValueError(f"got {len(masks)} masks for {len(mods)} PHT modules")
    previous = [m._frozen for m in mods]
    try:
        for m, s in zip(mods, masks, strict=True):
            if not isinstance(s, torch.Tensor):
                raise ValueError(f"masks must be tensors, got {type(s).__name__}")
            m._frozen = s
        yield model
    finally:
        for m, p in zip(mods, previous, strict=True):
            m._frozen = p


def mask_bytes(model: nn.Module, sample: torch.Tensor, n: int) -> int:
    """Bytes of the bool masks of ``n`` samples shaped like ``sample[:1]`` (1 byte per unit)."""
    _, masks = record_support(model, sample[:1])
    return int(n) * sum(m[0].numel() for m in masks)


@torch.no_grad()
def _record_chunked(model: nn.Module, x: torch.Tensor, max_bytes: int,
                    chunk: int = 8192) -> list[torch.Tensor]:
    need = mask_bytes(model, x, x.shape[0])
    if need > max_bytes:
        raise MemoryError(
            f"the supports of all {x.shape[0]} training samples need {need} bytes "
            f"({need / 2**20:.1f} MiB, 1 byte per unit and sample), more than max_mask_bytes="
            f"{max_bytes} ({max_bytes / 2**20:.1f} MiB); use the per-minibatch support refresh "
            "or raise the limit"
        )
    parts = [record_support(model, x[i:i + chunk])[1] for i in range(0, x.shape[0], chunk)]
    return [torch.cat(p) for p in zip(*parts, strict=True)]


# --------------------------------------------------------------------------------------------
# Exact block-coordinate layer solves under frozen support
# --------------------------------------------------------------------------------------------
_LINEAR_TAIL = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, PositiveHardThreshold, nn.Flatten,
                nn.Unflatten, nn.Identity, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_SOLVABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def solvable_layers(model: nn.Module) -> list[int]:
    """Indices of the layers of ``model`` (an ``nn.Sequential``) whose sub-problem is convex under
    frozen support: a ``Linear``/``Conv`` followed only by modules linear under frozen support."""
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"exact layer solves need an nn.Sequential model, got {type(model).__name__}"
        )
    out = []
    for i, layer in enumerate(model):
        if isinstance(layer, _SOLVABLE) and all(isinstance(m, _LINEAR_TAIL) for m in model[i + 1:]):
            out.append(i)
    return out


def _loss(kind: str | LossFn) -> LossFn:
    if callable(kind):
        return kind
    if kind == "mse":
        return F.mse_loss
    if kind == "cross_entropy":
        return F.cross_entropy
    raise ValueError(f"loss must be 'mse', 'cross_entropy' or a callable, got {kind!r}")


def _lstsq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least-squares solution of ``a @ x = b`` (rank-deficient ``a`` allowed).

    Refuses non-finite inputs (diverged weights) with a ``ValueError`` instead of handing them
    to LAPACK, which prints an error and returns garbage."""
    if not (bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())):
        raise ValueError("exact layer solve: the design matrix or the targets hold NaN/inf "
                         "(diverged weights or inputs)")
    if a.device.type == "cpu":
        return torch.linalg.lstsq(a, b, driver="gelsd").solution
    return torch.linalg.pinv(a) @ b  # CUDA's lstsq driver assumes full rank


def _lstsq_linear(layer: nn.Linear, h: torch.Tensor, y: torch.Tensor,
                  tail: Callable[[torch.Tensor], torch.Tensor], tail_is_identity: bool,
                  damping: float, max_bytes: int) -> None:
    """Exact minimiser of ``mse(tail(layer(h)), y) + damping/2 ||theta - theta_0||^2`` over the
    layer's ``theta = [W, b]`` with the tail affine (frozen support); written into ``layer``."""
    if h.dim() != 2 or y.dim() != 2:
        raise ValueError("the lstsq layer solve needs 2-D layer inputs and 2-D targets (N, C); "
                         "use solver='lbfgs'")
    n, d = h.shape
    has_b = layer.bias is not None
    ht = torch.cat([h, h.new_ones(n, 1)], 1) if has_b else h
    w0 = layer.weight.detach()
    theta0 = torch.cat([w0, layer.bias.detach()[:, None]], 1) if has_b else w0  # (m, d+1)
    c_out = y.shape[1]
    scale = math.sqrt(damping * n * c_out / 2.0)
    if tail_is_identity:
        # C independent least-squares problems sharing the design [h, 1] (digest: the last layer
        # is a plain least-squares problem).
        a, b = ht, y
        if damping > 0:
            a = torch.cat([a, scale * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)])
            b = torch.cat([b, scale * theta0.T])
        theta = _lstsq(a, b).T  # (m, d+1)
    else:
        m = layer.out_features
        need = n * c_out * m * ht.shape[1] * h.element_size()
        if need > max_bytes:
            raise MemoryError(
                f"the lstsq design matrix of this layer needs {need} bytes ({need / 2**20:.1f} "
                f"MiB) for {n} samples, more than max_bytes={max_bytes}; use solver='lbfgs' or "
                "fewer samples"
            )
        with torch.enable_grad():
            z = torch.zeros(n, m, dtype=h.dtype, device=h.device, requires_grad=True)
            out = tail(z)  # affine in z: out_i = M_i z_i + c_i
            if out.shape != y.shape:
                raise ValueError(f"output shape {tuple(out.shape)} != target {tuple(y.shape)}")
            jac = torch.stack([torch.autograd.grad(out[:, c].sum(), z, retain_graph=True)[0]
                               for c in range(c_out)], 1)  # (n, C, m) = M_i
        r = (y - out.detach()).reshape(-1)
        a = (jac[:, :, :, None] * ht[:, None, None, :]).reshape(n * c_out, -1)
        if damping > 0:
            a = torch.cat([a, scale * torch.eye(a.shape[1], dtype=a.dtype, device=a.device)])
            r = torch.cat([r, scale * theta0.reshape(-1)])
        theta = _lstsq(a, r[:, None]).reshape(m, -1)
    with torch.no_grad():
        layer.weight.copy_(theta[:, :d])
        if has_b:
            layer.bias.copy_(theta[:, d])


def _lbfgs_layer(layer: nn.Module, objective: Callable[[], torch.Tensor], iters: int,
                 damping: float) -> None:
    params = [p for p in layer.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iters, max_eval=3 * iters, history_size=10,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-10,
                            tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        with torch.enable_grad():
            loss = objective()
            if damping > 0:
                loss = loss + 0.5 * damping * sum(((p - s) ** 2).sum()
                                                  for p, s in zip(params, start, strict=True))
            grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        return loss.detach()

    opt.step(closure)
    for p in params:
        p.grad = None


def solve_layer(model: nn.Sequential, index: int, x: torch.Tensor, y: torch.Tensor,
                loss: str | LossFn = "mse", masks: Sequence[torch.Tensor] | None = None,
                solver: str = "auto", iters: int = 20, damping: float = 0.0,
                max_bytes: int = 2**28) -> dict[str, Any]:
    r"""Block-coordinate step: minimise the loss over layer ``model[index]`` alone, supports frozen.

    With every support fixed the network output is affine in one layer's parameters
    ``theta = [W_l, b_l]``, so (digest, Definitions)

    .. math:: \min_\theta\; \ell(A(\theta) ; y) + \tfrac{\lambda}{2}\|\theta - \theta_0\|^2

    is convex: least squares for ``loss="mse"`` (solved exactly with ``torch.linalg.lstsq``; for a
    hidden layer the design matrix rows are ``M_i[c] (x) [h_i, 1]`` with ``M_i`` the Jacobian of the
    frozen tail), multinomial logistic regression for cross-entropy (``iters`` L-BFGS iterations
    with a strong-Wolfe line search). ``damping`` (``lambda``) adds a proximal term towards the
    current weights (use it for minibatch solves, which otherwise interpolate the batch).

    Args:
        masks: supports of ``x`` for every PHT module (``None``: recorded now from ``x``).
        solver: ``"lstsq"`` (MSE, ``nn.Linear``), ``"lbfgs"`` (any loss, Linear or Conv) or
            ``"auto"`` (lstsq for ``loss="mse"`` on a Linear layer, else L-BFGS).
        max_bytes: limit on the lstsq design matrix of a hidden layer.

    Returns ``{"layer": index, "loss_before": ..., "loss_after": ...}`` (losses under the frozen
    support, without the proximal term). The loss never increases: ``theta_0`` is feasible.
    """
    solvable = solvable_layers(model)
    if index not in solvable:
        allowed = ", ".join(t.__name__ for t in _LINEAR_TAIL)
        raise ValueError(
            f"layer {index} ({type(model[index]).__name__}) cannot be solved exactly: solvable "
            f"layers are Linear/Conv layers followed only by {allowed}; this model's solvable "
            f"layers: {solvable}"
        )
    if solver not in ("auto", "lstsq", "lbfgs"):
        raise ValueError(f"solver must be 'auto', 'lstsq' or 'lbfgs', got {solver!r}")
    if not (isinstance(iters, int) and iters >= 1):
        raise ValueError(f"iters must be an int >= 1, got {iters!r}")
    if not (math.isfinite(damping) and damping >= 0):
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    layer = model[index]
    if solver == "auto":
        solver = "lstsq" if loss == "mse" and isinstance(layer, nn.Linear) else "lbfgs"
    if solver == "lstsq" and (loss != "mse" or not isinstance(layer, nn.Linear)):
        raise ValueError(
            "solver='lstsq' needs loss='mse' and an nn.Linear layer, got loss="
            f"{loss!r} and {type(layer).__name__}; use solver='lbfgs'"
        )
    loss_fn = _loss(loss)
    if masks is None:
        masks = record_support(model, x)[1]
    head, tail = model[:index], model[index + 1:]
    with frozen_support(model, masks), torch.no_grad():
        h = head(x)

        def objective() -> torch.Tensor:
            return loss_fn(tail(layer(h)), y)

        before = float(objective())
        state = [p.detach().clone() for p in layer.parameters()]
        if solver == "lstsq":
            _lstsq_linear(layer, h, y, tail, len(tail) == 0, damping, max_bytes)
        else:
            _lbfgs_layer(layer, objective, iters, damping)
        after = float(objective())
        if not math.isfinite(after) or after > before * (1 + 1e-6) + 1e-12:
            # numerical failure: keep theta_0
            for p, s in zip(layer.parameters(), state, strict=True):
                p.copy_(s)
            after = before
    return {"layer": index, "loss_before": before, "loss_after": after}


# --------------------------------------------------------------------------------------------
# The alternation, usable in any training loop
# --------------------------------------------------------------------------------------------
class Alternating:
    r"""Train a PHT network by alternating support steps and weight steps (our reconstruction).

    One call of :meth:`step` on a minibatch ``(x, y)``:

    1. **Support step** (weights fixed): ``s_l = 1[z_l(x) > tau_l]`` for every PHT layer, from a
       forward pass (``index=None``), or taken from the masks cached by :meth:`refresh` for the
       rows ``index`` of the training set (per-epoch refresh).
    2. **Weight step** (supports frozen): ``K = inner_steps`` steps of ``optimizer`` on the masked
       multilinear network ``f(x) = W_L D_{L-1} ... D_1 W_1 x``. With ``K = 1`` and a per-minibatch
       support step this is exactly plain PHT training by backprop (the PHT derivative is the mask).
       The first inner step shares the support step's forward pass.

    :meth:`solve` runs exact block-coordinate solves of chosen layers (see :func:`solve_layer`).
    ``tau`` is held fixed by the alternation; learnable-tau modules are refused.

    Args:
        model: a network with PHT activations (see :func:`pht`).
        optimizer: any ``torch.optim.Optimizer`` over ``model``'s parameters whose ``step()``
            needs no closure (SGD, Adam, ...): the weight step.
        loss: ``"cross_entropy"``, ``"mse"`` or a callable ``(output, target) -> scalar``.
        inner_steps: ``K >= 1``.
        max_mask_bytes: limit for the cached masks of the per-epoch refresh (1 byte per unit and
            sample); :meth:`refresh` refuses with a ``MemoryError`` beyond it.

    Example::

        >>> import torch
        >>> from beyondsgd.models import mlp
        >>> net = mlp(4, [16], 3, activation="pht", seed=0)
        >>> alt = Alternating(net, torch.optim.SGD(net.parameters(), lr=0.1), inner_steps=5)
        >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
        >>> loss = alt.step(x, y)                      # support step + 5 frozen-support steps
        >>> info = alt.solve(x, y, layers="last")      # exact last-layer solve (L-BFGS for CE)
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 loss: str | LossFn = "cross_entropy", inner_steps: int = 1,
                 max_mask_bytes: int = 2**30):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        if isinstance(optimizer, torch.optim.LBFGS):
            raise ValueError("the weight step calls optimizer.step() without a closure; "
                             "LBFGS needs one: use solve(..., solver='lbfgs') for L-BFGS")
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps (K) must be an int >= 1, got {inner_steps!r}")
        if isinstance(max_mask_bytes, bool) or not isinstance(max_mask_bytes, int) \
                or max_mask_bytes < 0:
            raise ValueError(f"max_mask_bytes must be an int >= 0, got {max_mask_bytes!r}")
        mods = pht_modules(model)
        if not mods:
            raise ValueError("model has no PositiveHardThreshold module; call pht(model) first")
        if any(m.learnable for m in mods):
            raise ValueError("Alternating holds tau fixed (the support step is defined by tau); "
                             "got learnable=True PHT modules: learn tau with pht_sgd/pht_adam")
        self.model, self.optimizer, self.inner_steps = model, optimizer, inner_steps
        self.loss, self.loss_fn = loss, _loss(loss)
        self.max_mask_bytes = max_mask_bytes
        self.masks: list[torch.Tensor] | None = None  # cached supports of the training set
        self.density: torch.Tensor | None = None  # fraction of active units, last support step
        self.last_masks: list[torch.Tensor] | None = None  # supports of the last step's batch

    # ---- support step ----------------------------------------------------------------------
    def refresh(self, x_all: torch.Tensor) -> dict[str, Any]:
        """Per-epoch support step: record and cache the supports of every row of ``x_all``.

        Refuses (``MemoryError``) when the masks exceed ``max_mask_bytes``. Returns the mask bytes
        and the fraction of support bits that flipped since the previous refresh.
        """
        masks = _record_chunked(self.model, x_all, self.max_mask_bytes)
        info: dict[str, Any] = {"mask_bytes": sum(m.numel() for m in masks)}
        old = self.masks
        if old is not None and all(a.shape == b.shape for a, b in zip(masks, old, strict=True)):
            flips = sum(int((a != b).sum()) for a, b in zip(masks, old, strict=True))
            info["flipped"] = flips / max(info["mask_bytes"], 1)
        info["density"] = sum(int(m.sum()) for m in masks) / max(info["mask_bytes"], 1)
        self.masks = masks
        return info

    def _set_density(self, masks: Sequence[torch.Tensor]) -> None:
        with torch.no_grad():
            on = sum(m.sum() for m in masks)
            self.density = on / max(sum(m.numel() for m in masks), 1)

    # ---- weight step -----------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None,
             model: nn.Module | None = None, loss_fn: LossFn | None = None) -> torch.Tensor:
        """One alternation round on ``(x, y)``; returns the loss before it (detached).

        ``model``: the module to run the steps through, e.g. a ``DistributedDataParallel``
        wrapper of ``self.model`` (data parallelism: each rank's masks cover its own samples,
        the gradients are averaged by DDP); ``loss_fn`` overrides the loss of the steps."""
        opt = self.optimizer
        model = self.model if model is None else model
        loss_of = self.loss_fn if loss_fn is None else loss_fn
        if index is None:
            opt.zero_grad(set_to_none=True)
            with recording(model) as masks:
                first = loss_of(model(x), y)
                first.backward()
            opt.step()
            start = 1
        else:
            if self.masks is None:
                raise RuntimeError("step(index=...) uses cached supports: call refresh() first")
            masks = [m[index] for m in self.masks]
            start, first = 0, None
        self._set_density(masks)
        with frozen_support(model, masks):
            for _ in range(start, self.inner_steps):
                opt.zero_grad(set_to_none=True)
                loss = loss_of(model(x), y)
                loss.backward()
                opt.step()
                if first is None:
                    first = loss
        self.last_masks = masks
        return first.detach()

    # ---- exact solves ----------------------------------------------------------------------
    def solve(self, x: torch.Tensor, y: torch.Tensor, layers: str | Sequence[int] = "last",
              masks: Sequence[torch.Tensor] | None = None, solver: str = "auto", iters: int = 20,
              damping: float = 0.0, max_bytes: int = 2**28) -> list[dict[str, Any]]:
        """Exact block-coordinate solves (last layer first) with the supports of ``x`` frozen.

        ``layers``: ``"last"``, ``"all"`` (every solvable layer, from the top down) or indices
        into the ``nn.Sequential`` model. ``masks=None`` records them now from ``x`` (refused
        beyond ``max_mask_bytes`` when the solved layers need them).
        """
        solvable = solvable_layers(self.model)
        if layers == "last":
            todo = solvable[-1:]
        elif layers == "all":
            todo = solvable[::-1]
        elif isinstance(layers, str):
            raise ValueError(f"layers must be 'last', 'all' or a list of indices, got {layers!r}")
        else:
            todo = list(layers)
        if not todo:
            raise ValueError("the model has no layer that can be solved exactly")
        if masks is None:
            if todo == solvable[-1:] and not any(isinstance(m, PositiveHardThreshold)
                                                 for m in self.model[todo[0] + 1:]):
                # nothing after the last layer needs a support: compute its inputs directly
                with torch.no_grad():
                    feats = self.model[:todo[0]](x)
                head_model = nn.Sequential(*self.model[todo[0]:])
                return [dict(solve_layer(head_model, 0, feats, y, self.loss, [], solver, iters,
                                         damping, max_bytes), layer=todo[0])]
            masks = _record_chunked(self.model, x, self.max_mask_bytes)
        return [solve_layer(self.model, i, x, y, self.loss, masks, solver, iters, damping,
                            max_bytes) for i in todo]

    # ---- checkpoint ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "masks": self.masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.masks = state.get("masks")


# --------------------------------------------------------------------------------------------
# Runner integration
# --------------------------------------------------------------------------------------------
class _RowIndex:
    """Finds the rows of a training tensor that a minibatch consists of (exact integer hashing of
    the float bits, verified), so per-epoch supports can be looked up from the runner's batches."""

    def __init__(self, x: torch.Tensor, chunk: int = 8192):
        self.x = x
        gen = torch.Generator().manual_seed(12345)
        width = x[0].numel()
        self.r = torch.randint(1, 2**20, (width,), generator=gen, dtype=torch.int64).to(
            x.device)
        keys = torch.cat([self._keys(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])
        self.sorted, self.order = torch.sort(keys)

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        bits = x.reshape(x.shape[0], -1).float().contiguous().view(torch.int32).to(torch.int64)
        # |bits| < 2^31 and r < 2^20: each term < 2^51, so sums of < 4096 terms stay exact
        return (bits * self.r).sum(1)

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        keys = self._keys(xb)
        pos = torch.searchsorted(self.sorted, keys).clamp_max(self.sorted.numel() - 1)
        idx = self.order[pos]
        if not torch.equal(self.x[idx], xb):
            raise ValueError(
                "refresh='epoch' looks the minibatch rows up in ctx.x_train, and some rows were "
                "not found there (augmented or foreign batches?); use refresh='minibatch'"
            )
        return idx


def _make_inner(name: str, params: Iterator[nn.Parameter], hp: dict[str, Any]
                ) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    if name == "momentum":
        return torch.optim.SGD(params, lr=hp["lr"], momentum=hp["momentum"],
                               weight_decay=hp["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    raise ValueError(f"inner optimizer must be 'sgd', 'momentum' or 'adam', got {name!r}")


_TAU = HParam("tau", DEFAULT_TAU, float, "PHT threshold (>= 0; 0 equals ReLU)", low=0.0,
              high=1.0)


@register
class PHTAlternation(Method):
    """PHT alternation (reconstruction): support step, then K frozen-support optimizer steps;
    optional exact layer solves (lstsq / L-BFGS) per epoch or per step."""

    name = "pht_alt"
    summary = ("PHT network trained by alternating supports and weights (K frozen-support "
               "steps + exact layer solves); reconstruction from the abstract")
    paper = "Huang, Kong & Lucey, arXiv:1712.02501 (2017)"
    hparams = (
        HParam("lr", 0.1, float, "inner optimizer learning rate (use ~1e-3 with inner=adam)",
               low=1e-4, high=1.0, log=True, tune=True),
        HParam("inner", "sgd", str, "optimizer of the weight step",
               choices=("sgd", "momentum", "adam")),
        HParam("momentum", 0.9, float, "momentum for inner=momentum"),
        HParam("weight_decay", 0.0, float, "L2 weight decay of the inner optimizer"),
        HParam("inner_steps", 5, int, "K: optimizer steps per support step", low=1, high=50),
        _TAU,
        HParam("refresh", "minibatch", str, "support refresh: per minibatch or per epoch "
               "(per-epoch caches the masks of the whole training set)",
               choices=("minibatch", "epoch")),
        HParam("max_mask_mb", 1024.0, float, "refuse per-epoch refresh beyond this many MiB"),
        HParam("exact", "last", str, "layers solved exactly", choices=("none", "last", "all")),
        HParam("exact_on", "epoch", str, "exact solves on the whole training set after each "
               "epoch, or on each minibatch after the K steps", choices=("epoch", "step")),
        HParam("solver", "auto", str, "exact solver (auto: lstsq for MSE Linear, else L-BFGS)",
               choices=("auto", "lstsq", "lbfgs")),
        HParam("solver_iters", 20, int, "L-BFGS iterations per layer solve"),
        HParam("damping", 1e-3, float, "proximal weight lambda of the layer solves "
               "(lambda/2 ||theta - theta_0||^2; use > 0 with exact_on=step)"),
        *SCHEDULE_HPARAMS,
    )

    def __init__(self, hp: dict[str, Any] | None = None):
        super().__init__(hp)
        if self.hp["inner_steps"] < 1:
            raise ValueError(f"inner_steps must be >= 1, got {self.hp['inner_steps']}")
        _check_tau(self.hp["tau"])
        if self.hp["lr"] <= 0:
            raise ValueError(f"lr must be > 0, got {self.hp['lr']}")
        if self.hp["damping"] < 0 or self.hp["max_mask_mb"] < 0 or self.hp["solver_iters"] < 1:
            raise ValueError("damping and max_mask_mb must be >= 0 and solver_iters >= 1, got "
                             f"{self.hp['damping']}, {self.hp['max_mask_mb']}, "
                             f"{self.hp['solver_iters']}")
        self.alt: Alternating | None = None
        self.scheduler = None
        self.rows: _RowIndex | None = None
        self._model: nn.Module | None = None
        self.distributed = False  # data parallel (ctx.world_size > 1), set by prepare

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        self.distributed = ctx.world_size > 1
        model = pht(model, self.hp["tau"])
        opt = _make_inner(self.hp["inner"], model.parameters(), self.hp)
        loss = "mse" if ctx.task == "regression" else "cross_entropy"
        self.alt = Alternating(model, opt, loss, self.hp["inner_steps"],
                               int(self.hp["max_mask_mb"] * 2**20))
        self.scheduler = make_scheduler(opt, self.hp, ctx.epochs)
        self._model = model
        if self.hp["exact"] != "none" and not solvable_layers(model):
            raise ValueError(f"exact={self.hp['exact']!r}: this model has no solvable layer")
        if self.hp["refresh"] == "epoch":
            self.alt.refresh(ctx.x_train)  # refuses clearly when the masks do not fit
            self.rows = _RowIndex(ctx.x_train)
        return model

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
        x, y = batch
        index = self.rows(x) if self.rows is not None else None
        loss = self.alt.step(x, y, index, model=model, loss_fn=loss_fn)
        if self.hp["exact"] != "none" and self.hp["exact_on"] == "step":
            masks = self.alt.last_masks
            if self.distributed:  # solve on the global batch, identically on every rank
                x, y = D.all_gather_rows(x), D.all_gather_rows(y)
                masks = [D.all_gather_rows(m) for m in masks]
            self.alt.solve(x, y, self.hp["exact"], masks=masks,
                           solver=self.hp["solver"], iters=self.hp["solver_iters"],
                           damping=self.hp["damping"])
        return loss

    def end_of_epoch(self, model: nn.Module, ctx: TrainContext, epoch: int) -> list[dict]:
        events: list[dict] = []
        if self.hp["exact"] != "none" and self.hp["exact_on"] == "epoch":
            for info in self.alt.solve(ctx.x_train, ctx.y_train, self.hp["exact"],
                                       solver=self.hp["solver"], iters=self.hp["solver_iters"],
                                       damping=self.hp["damping"]):
                events.append({"kind": "exact_solve", **info})
        if self.hp["refresh"] == "epoch":
            events.append({"kind": "support_refresh",
                           **self.alt.refresh(ctx.x_train)})
        if self.scheduler is not None:
            self.scheduler.step()
        return events

    def metrics(self, model: nn.Module) -> dict[str, float]:
        if self.alt is None or self.alt.density is None:
            return {}
        return {"support_density": float(self.alt.density)}

    def state_dict(self) -> dict[str, Any]:
        state = self.alt.state_dict()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alt.load_state_dict(state)
        if self.scheduler is not None and "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])


_LEARN_TAU = HParam("learnable_tau", False, bool, "learn tau (surrogate gradient)")


@register
class PHTSGD(_SGDMethod):
    """Plain SGD on a PHT network (the activation alone, no alternation)."""

    name = "pht_sgd"
    summary = "PHT network (ReLUs swapped for positive hard-thresholding) trained by plain SGD"
    paper = "Huang, Kong & Lucey, arXiv:1712.02501 (2017) (activation only)"
    hparams = (*_SGDMethod.hparams, _TAU, _LEARN_TAU)

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return super().prepare(pht(model, self.hp["tau"], self.hp["learnable_tau"]), ctx)


@register
class PHTAdam(_AdamMethod):
    """Adam on a PHT network (the activation alone, no alternation)."""

    name = "pht_adam"
    summary = "PHT network (ReLUs swapped for positive hard-thresholding) trained by Adam"
    paper = "Huang, Kong & Lucey, arXiv:1712.02501 (2017) (activation only)"
    hparams = (*_AdamMethod.hparams, _TAU, _LEARN_TAU)

    def prepare(self, model: nn.Module, ctx: TrainContext) -> nn.Module:
        return super().prepare(pht(model, self.hp["tau"], self.hp["learnable_tau"]), ctx)
