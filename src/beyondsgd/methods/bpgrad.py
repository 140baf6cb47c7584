r"""BPGrad: branch-and-pruning step lengths from a Lipschitz bound (Zhang, Wu & Wang, CVPR 2018).

The paper assumes the training loss :math:`f \ge 0` is :math:`L`-Lipschitz in the weights. Around
the current point :math:`x_t` no point closer than :math:`(f(x_t) - f^*)/L` can reach the lower
bound :math:`f^*`, so that ball is pruned and the next sample is taken on its boundary. The
practical solver replaces :math:`f^*` by :math:`\rho \min_{i \le t} f_i` and moves along the
globally normalised gradient with heavy-ball momentum.

This module holds

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

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed as D
from .base import SCHEDULE_HPARAMS, Batch, HParam, LossFn, OptimizerMethod, register

__all__ = [
    "BPGrad",
    "BPGradMethod",
    "LipschitzEstimate",
    "NonFiniteLossError",
    "bpgrad_step_length",
    "bpgrad_update",
    "estimate_lipschitz",
    "pairwise_lipschitz",
]

MOMENTUM_FORMS = ("paper", "official")
LOSS_ESTIMATES = ("minibatch", "running_mean")


# --------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------
def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"BPGrad: {name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"BPGrad: {name} must be finite, got {value!r}")
    return value


class NonFiniteLossError(ValueError):
    """``BPGrad.step`` saw a NaN/inf loss or gradient norm and changed nothing (the run has
    diverged, or the closure is broken). ``loss`` is the loss value the step saw."""

    def __init__(self, message: str, loss: float):
        super().__init__(message)
        self.loss = loss


def _lr_value(lr: Any) -> float:
    """A group's ``lr`` (= 1/L) as a float: a real number or a one-element float tensor."""
    if isinstance(lr, torch.Tensor):
        if lr.numel() != 1 or not lr.is_floating_point():
            raise ValueError(f"BPGrad: a tensor lr (= 1/lipschitz) must hold one floating-point "
                             f"value, got {lr!r}")
        lr = float(lr)
    return _real("lr (= 1/lipschitz)", lr)


def _check_group(g: dict[str, Any]) -> None:
    if _lr_value(g["lr"]) <= 0:
        raise ValueError(f"BPGrad: lr = 1/lipschitz must be > 0, got {g['lr']!r}")
    rho = _real("rho", g["rho"])
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"BPGrad: rho must be in [0, 1], got {g['rho']!r}")
    mu = _real("momentum", g["momentum"])
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"BPGrad: momentum must be in [0, 1), got {g['momentum']!r}")
    wd = _real("weight_decay", g["weight_decay"])
    if wd < 0:
        raise ValueError(f"BPGrad: weight_decay must be >= 0, got {g['weight_decay']!r}")
    if g["momentum_form"] not in MOMENTUM_FORMS:
        raise ValueError(f"BPGrad: momentum_form must be one of {list(MOMENTUM_FORMS)}, "
                         f"got {g['momentum_form']!r}")
    if g["loss_estimate"] not in LOSS_ESTIMATES:
        raise ValueError(f"BPGrad: loss_estimate must be one of {list(LOSS_ESTIMATES)}, "
                         f"got {g['loss_estimate']!r}")


def _lipschitz_to_lr(lipschitz: Any) -> float:
    L = _real("lipschitz", lipschitz)
    if L <= 0:
        raise ValueError(f"BPGrad: lipschitz must be > 0, got {lipschitz!r}")
    return 1.0 / L


# --------------------------------------------------------------------------------------------
# The maths, as pure functions
# --------------------------------------------------------------------------------------------
def bpgrad_step_length(f_t: float, f_min: float, rho: float, lipschitz: float) -> float:
    r"""The paper's step length, Eq. (12): :math:`\eta_t = (f_t - \rho \min_{i \le t} f_i) / L`.

    ``f_min`` must already include ``f_t``. With :math:`f \ge 0` and :math:`\rho \le 1` the step
    length is non-negative: :math:`\eta_t \ge (1-\rho) f_t / L`.
    """
    return (f_t - rho * f_min) / lipschitz


@torch.no_grad()
def bpgrad_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor | None],
    *,
    eta: float,
    grad_norm: float,
    momentum: float,
    weight_decay: float,
    momentum_form: str,
) -> list[torch.Tensor | None]:
    r"""One BPGrad update of ``params`` in place (multi-tensor; no Python loop over elements).

    With :math:`d_t = (g_t + \lambda x_t)/\|g_t\|_2` (``grad_norm`` is the one global norm of
    the data-loss gradient over *all* parameters; weight decay is added after the norm):

    * ``"paper"``:    :math:`v_{t+1} = \mu v_t - \eta_t d_t,\ x_{t+1} = x_t + v_{t+1}`
    * ``"official"``: :math:`s_{t+1} = \mu s_t - d_t,\ x_{t+1} = x_t + \eta_t s_{t+1}`

    ``momentum_buffers`` holds :math:`v` or :math:`s` per parameter (``None``: zero, created
    here). Returns the buffers (all ``None`` when ``momentum == 0``). ``grad_norm == 0`` (a
    stationary point) leaves params and buffers unchanged.
    """
    if not params or grad_norm == 0.0:
        return list(momentum_buffers)
    inv = 1.0 / grad_norm
    d = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay != 0 else grads
    if momentum == 0.0:
        torch._foreach_add_(params, d, alpha=-eta * inv)
        return [None] * len(params)
    bufs = [torch.zeros_like(p) if b is None else b for p, b in zip(params, momentum_buffers)]
    torch._foreach_mul_(bufs, momentum)
    if momentum_form == "paper":
        torch._foreach_add_(bufs, d, alpha=-eta * inv)
        torch._foreach_add_(params, bufs)
    elif momentum_form == "official":
        torch._foreach_add_(bufs, d, alpha=-inv)
        torch._foreach_add_(params, bufs, alpha=eta)
    else:
        raise ValueError(f"momentum_form must be one of {list(MOMENTUM_FORMS)}, "
                         f"got {momentum_form!r}")
    return bufs


def _global_grad_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The L2 norm of all gradients together: one ``_foreach_norm`` and one reduction."""
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads)
    dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------
class BPGrad(torch.optim.Optimizer):
    r"""BPGrad's practical solver (Zhang, Wu & Wang, CVPR 2018) as a ``torch.optim`` optimizer.

    Per step :math:`t`, with :math:`g_t` the minibatch gradient of the data loss (all
    parameters) and :math:`f_t \ge 0` the loss estimate:

    .. math::

        f_{\min,t} &= \min_{i \le t} f_i \\
        \eta_t &= (f_t - \rho\, f_{\min,t}) / L                 && \text{Eq. (12)} \\
        d_t &= (g_t + \lambda x_t) / \|g_t\|_2                  && \text{one global norm} \\
        \text{paper:}\quad v_{t+1} &= \mu v_t - \eta_t d_t,\quad x_{t+1} = x_t + v_{t+1} \\
        \text{official:}\quad s_{t+1} &= \mu s_t - d_t,\quad x_{t+1} = x_t + \eta_t s_{t+1}

    The two momentum placements agree when :math:`\eta_t` is constant and differ otherwise
    (``momentum_form``; default ``"paper"``, the official MatConvNet code uses ``"official"``).
    The ``"paper"`` label is not confirmed from the paper's text: it follows the docstring of a
    third-party port (oval-group/dfw, ``dfw/baselines/bpgrad.py``), see docs/methods/bpgrad.md.
    ``loss_estimate="minibatch"`` (default, the paper's :math:`f(x_t)`) uses the loss the
    closure returns; ``"running_mean"`` (official code) uses the mean of the minibatch losses
    since the start of the epoch -- call :meth:`new_epoch` at each epoch boundary. The minimum
    runs over the whole history of the estimates. Weight decay :math:`\lambda` is not part of
    :math:`f_t` nor of the norm (as in the official code).

    Args:
        params: parameters or parameter groups (any layer types; a group may set its own
            ``lipschitz`` or ``lr``, ``rho``, ``momentum``, ``weight_decay``,
            ``momentum_form``).
        lipschitz: the Lipschitz constant :math:`L > 0`; it acts as an inverse learning rate.
            Stored per group as ``lr = 1/L`` so that LR schedulers scale the step length
            (:math:`\eta_t = \mathrm{lr}\cdot(f_t - \rho f_{\min})`). Optional when every
            param group sets its own ``lipschitz`` (or ``lr``).
        lr: the same knob given as :math:`1/L` (keyword only; give ``lipschitz`` or ``lr``, not
            both; a one-element float tensor is accepted). It is **not** an SGD learning rate:
            the step moves :math:`\mathrm{lr}\cdot(f_t - \rho f_{\min})` along the unit-norm
            gradient, so its scale depends on the loss's scale (the paper's Eq. (12) with
            :math:`\mathrm{lr} = 1/L`; the dfw port calls it ``eta``).
        rho: :math:`\rho \in [0, 1]`, lower-bound factor (official code 0.1).
        momentum: :math:`\mu \in [0, 1)` (heavy ball; official 0.9).
        weight_decay: :math:`\lambda \ge 0` (official 5e-4).
        momentum_form: ``"paper"`` or ``"official"``.
        loss_estimate: ``"minibatch"`` or ``"running_mean"`` (one setting for all groups).
        distributed: under data parallelism (``DistributedDataParallel``, which averages the
            gradients) :math:`f_t` must be the loss of the global batch: ``None`` (default)
            averages the closure's loss over the ranks whenever ``torch.distributed`` is
            initialised with more than one process; ``True`` requires it; ``False`` never
            communicates (independent runs per rank). The gradient norm is the norm of the
            (already averaged) gradients, so it is global too.

    ``step(closure)`` needs a closure that zeroes the gradients, computes the loss, calls
    ``backward()`` and returns the loss (the way PyTorch Lightning and L-BFGS call optimizers),
    or, after the caller's own ``backward()``, ``step(loss=value)`` with the loss whose gradient
    is in ``.grad`` (a closure and ``loss=`` together: the closure computes the gradients and
    ``loss`` is :math:`f_t`); the loss must be :math:`\ge 0` and finite. A step reads the loss
    value and the gradient norm on the host once (one synchronisation) to check them and to skip
    the step at a zero gradient.
    A NaN/inf loss or gradient norm raises :class:`NonFiniteLossError` (a ``ValueError``) before
    anything changes: parameters, momentum and the loss history stay as they were.

    Example:
        >>> import torch
        >>> from beyondsgd.methods.bpgrad import BPGrad
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> model = torch.nn.Linear(3, 1)
        >>> x, y = torch.randn(64, 3), torch.randn(64, 1)
        >>> opt = BPGrad(model.parameters(), lipschitz=20.0)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> first = float(closure().detach())
        >>> for _ in range(50):
        ...     _ = opt.step(closure)
        >>> float(closure().detach()) < first
        True

    Reference: Z. Zhang, Y. Wu, G. Wang, "BPGrad: Towards Global Optimality in Deep Learning via
    Branch and Pruning", CVPR 2018 (arXiv:1711.06959), Eq. (12) and the practical solver.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lipschitz: float | None = None,
        rho: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        momentum_form: str = "paper",
        loss_estimate: str = "minibatch",
        distributed: bool | None = None,
        *,
        lr: float | torch.Tensor | None = None,
    ):
        if lipschitz is not None and lr is not None:
            raise ValueError(f"BPGrad: give lipschitz=L or lr=1/L, not both (got "
                             f"lipschitz={lipschitz!r}, lr={lr!r})")
        if lipschitz is not None:
            lr = _lipschitz_to_lr(lipschitz)
        defaults = dict(lr=lr, rho=rho, momentum=momentum, weight_decay=weight_decay,
                        momentum_form=momentum_form, loss_estimate=loss_estimate)
        _check_group({**defaults, "lr": 1.0} if lr is None else defaults)
        if distributed is not None and not isinstance(distributed, bool):
            raise ValueError(f"distributed must be None (auto), True or False, got "
                             f"{distributed!r}")
        self.distributed = distributed
        super().__init__(params, defaults)

    # torch's Optimizer pickles only defaults/state/param_groups; keep our own attribute too.
    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "distributed": self.distributed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("distributed", None)  # pickles made before it was kept

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, plus: a ``lipschitz`` key is turned into ``lr = 1/lipschitz``; a group
        without either takes the constructor's (an error if there is none); every group is
        validated; ``loss_estimate`` must be the same for all groups (the loss is global)."""
        param_group = dict(param_group)
        index = len(getattr(self, "param_groups", []))
        if "lipschitz" in param_group:
            if "lr" in param_group:
                raise ValueError(f"BPGrad: param group {index}: give 'lipschitz' or 'lr' "
                                 f"(= 1/L), not both")
            param_group["lr"] = _lipschitz_to_lr(param_group.pop("lipschitz"))
        elif "lr" not in param_group:
            default = self.defaults["lr"]
            if default is None:
                raise ValueError(
                    f"BPGrad: param group {index} sets neither 'lipschitz' nor 'lr', and no "
                    f"default was given: pass lipschitz=L (or lr=1/L) to BPGrad(...) or set "
                    f"'lipschitz' in every param group")
            # a tensor default is copied so that a scheduler changes one group only
            param_group["lr"] = default.clone() if isinstance(default, torch.Tensor) else default
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        _check_group(group)
        if group["loss_estimate"] != self.param_groups[0]["loss_estimate"]:
            raise ValueError(
                "BPGrad: loss_estimate must be the same for all param groups, got "
                f"{group['loss_estimate']!r} and {self.param_groups[0]['loss_estimate']!r}")

    # ---- global state (kept under the first parameter, like torch's LBFGS) ------------------
    _GLOBAL_KEYS = ("step", "f_min", "loss_sum", "loss_count", "f_t", "step_length",
                    "grad_norm")

    def _global(self) -> dict[str, Any]:
        st = self.state[self.param_groups[0]["params"][0]]
        if "step" not in st:
            st.update(step=0, f_min=math.inf, loss_sum=0.0, loss_count=0, f_t=math.nan,
                      step_length=0.0, grad_norm=0.0)
        return st

    @property
    def global_state(self) -> dict[str, float]:
        """A copy of the global state: ``step``, ``f_min``, ``loss_sum``/``loss_count`` (running
        mean of this epoch), last ``f_t``, ``step_length`` (:math:`\\eta_t` of group 0) and
        ``grad_norm``."""
        st = self.state[self.param_groups[0]["params"][0]]
        if "step" not in st:
            return {"step": 0, "f_min": math.inf, "loss_sum": 0.0, "loss_count": 0,
                    "f_t": math.nan, "step_length": 0.0, "grad_norm": 0.0}
        return {k: st[k] for k in self._GLOBAL_KEYS}

    def new_epoch(self) -> None:
        """Restart the running-mean loss estimate (``loss_estimate="running_mean"``; harmless
        otherwise). Call it at every epoch boundary, as the official code does."""
        st = self._global()
        st["loss_sum"], st["loss_count"] = 0.0, 0

    # ---- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, *,
             loss: float | torch.Tensor | None = None) -> torch.Tensor | float | None:
        """One BPGrad step.

        ``closure`` re-evaluates the model (zero the gradients, compute the loss, ``backward()``)
        and returns the loss; it is called under ``torch.enable_grad()``. ``loss`` (keyword
        only; a real number or a one-element tensor) is the objective value whose gradient is
        in ``.grad`` now: when given it is used as :math:`f_t` instead of the closure's
        return, and without a closure it is enough -- for runners that call ``backward()``
        themselves and then ``opt.step()`` (DeepOBS's ``StandardRunner``, see
        :mod:`beyondsgd.integrations.deepobs`). Returns the closure's return value, or
        ``loss`` when there is no closure.
        """
        if closure is None and loss is None:
            raise RuntimeError(
                "BPGrad.step needs the loss value (the step length (f_t - rho*min f)/L depends "
                "on it): opt.step(closure) where closure() zeroes the gradients, computes loss, "
                "calls loss.backward() and returns loss, or opt.step(loss=loss) after "
                "loss.backward()")
        returned = None
        if closure is not None:
            with torch.enable_grad():
                returned = closure()
            if returned is None and loss is None:
                raise RuntimeError("BPGrad.step: the closure returned None; it must return the "
                                   "loss (or pass step(closure, loss=value))")
        source = "the closure returned" if loss is None else "step(loss=...) got"
        f_in = returned if loss is None else loss
        result = returned if closure is not None else loss

        grouped: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        all_grads: list[torch.Tensor] = []
        for group in self.param_groups:
            ps, gs = [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("BPGrad does not support sparse gradients")
                ps.append(p)
                gs.append(p.grad)
            grouped.append((ps, gs))
            all_grads.extend(gs)
        device = self.param_groups[0]["params"][0].device
        norm = _global_grad_norm(all_grads, device)

        # One host read for both numbers (the loss sign check needs it anyway).
        if isinstance(f_in, torch.Tensor):
            if f_in.numel() != 1:
                raise ValueError(f"BPGrad: the loss must be a scalar, but {source} a tensor of "
                                 f"shape {tuple(f_in.shape)}")
            f_dev = f_in.detach().reshape(()).to(norm)
        else:
            if isinstance(f_in, bool) or not isinstance(f_in, numbers.Real):
                raise ValueError(f"BPGrad: the loss must be a tensor or a real number, but "
                                 f"{source} {f_in!r}")
            f_dev = torch.tensor(float(f_in), dtype=norm.dtype, device=norm.device)
        if D.resolve(self.distributed):  # f_t of the global batch: the mean over the ranks
            f_dev = D.all_reduce_sum(f_dev.clone()) / D.world_size()
        f_val, g_norm = torch.stack([f_dev, norm]).tolist()
        # Checked before anything changes (every rank sees the same global f_val and norm).
        if not math.isfinite(f_val):
            raise NonFiniteLossError(
                f"BPGrad: the loss is {f_val!r}; the step length (f_t - rho*min f)/L needs a "
                f"finite loss >= 0 (the run has diverged, or the closure is broken); nothing "
                f"was changed", f_val)
        if not math.isfinite(g_norm):
            raise NonFiniteLossError(
                f"BPGrad: the gradient norm is {g_norm!r} (loss {f_val!r}); a finite gradient is "
                f"needed to normalise it; nothing was changed", f_val)
        if f_val < 0:
            raise ValueError(f"BPGrad assumes a non-negative loss (f >= 0), but {source} "
                             f"{f_val!r}; use a loss bounded below by 0")

        st = self._global()
        st["step"] += 1
        if self.param_groups[0]["loss_estimate"] == "running_mean":
            st["loss_sum"] += f_val
            st["loss_count"] += 1
            f_t = st["loss_sum"] / st["loss_count"]
        else:
            f_t = f_val
        if f_t < st["f_min"]:
            st["f_min"] = f_t
        st["f_t"], st["grad_norm"] = f_t, g_norm

        for i, (group, (ps, gs)) in enumerate(zip(self.param_groups, grouped)):
            eta = (f_t - group["rho"] * st["f_min"]) * _lr_value(group["lr"])  # Eq. (12), 1/L
            if i == 0:
                st["step_length"] = eta
            if not ps or g_norm == 0.0:
                continue
            mom = group["momentum"]
            bufs = [self.state[p].get("momentum_buffer") for p in ps] if mom != 0 else []
            new = bpgrad_update(ps, gs, bufs if mom != 0 else [None] * len(ps), eta=eta,
                                grad_norm=g_norm, momentum=mom,
                                weight_decay=group["weight_decay"],
                                momentum_form=group["momentum_form"])
            if mom != 0:
                for p, b in zip(ps, new):
                    self.state[p]["momentum_buffer"] = b
        return result


# --------------------------------------------------------------------------------------------
# Choosing L: the pairwise estimator over iterates of a short run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LipschitzEstimate:
    """Statistics of :math:`|f_i - f_j| / \\|w_i - w_j\\|_2` over pairs of iterates."""

    mean: float
    median: float
    max: float
    num_iterates: int
    num_pairs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def pairwise_lipschitz(losses: torch.Tensor, iterates: torch.Tensor) -> LipschitzEstimate:
    r"""Mean, median and max of :math:`|f_i - f_j| / \|w_i - w_j\|_2` over pairs :math:`i<j`.

    ``losses`` has shape ``(n,)``, ``iterates`` shape ``(n, d)`` (flattened weights). Pairs with
    :math:`w_i = w_j` are skipped. Computed in float64 with exact (not Gram-matrix) distances.
    This is the estimator of the official code's unused ``Estimate_L`` helper (which averages the
    ratio matrix including its diagonal; here only distinct pairs count).
    """
    losses = torch.as_tensor(losses)
    if losses.dim() != 1 or iterates.dim() != 2 or iterates.shape[0] != losses.shape[0]:
        raise ValueError(f"pairwise_lipschitz: need losses (n,) and iterates (n, d), got "
                         f"{tuple(losses.shape)} and {tuple(iterates.shape)}")
    n = losses.shape[0]
    if n < 2:
        raise ValueError(f"pairwise_lipschitz: need at least 2 iterates, got {n}")
    f = losses.detach().to(torch.float64)
    w = iterates.detach().to(torch.float64)
    dist = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")
    df = (f[:, None] - f[None, :]).abs()
    i, j = torch.triu_indices(n, n, offset=1, device=dist.device)
    dist, df = dist[i, j], df[i, j]
    keep = dist > 0
    if not bool(keep.any()):
        raise ValueError("pairwise_lipschitz: all iterates are identical; no pair to compare")
    ratio = df[keep] / dist[keep]
    return LipschitzEstimate(mean=float(ratio.mean()), median=float(ratio.median()),
                             max=float(ratio.max()), num_iterates=n,
                             num_pairs=int(ratio.numel()))


def estimate_lipschitz(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Batch],
    *,
    steps: int = 50,
    optimizer: str | Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer] = "sgd",
    lr: float | None = None,
    loss_on: str = "fixed",
    eval_batch: Batch | None = None,
) -> LipschitzEstimate:
    r"""Estimate BPGrad's :math:`L` from the iterates of a short run on a copy of ``model``.

    Runs ``steps`` optimizer steps over ``batches`` (the model itself is not changed), keeps the
    flattened weights :math:`w_0..w_n` and a loss :math:`f_i` at each, and returns
    :func:`pairwise_lipschitz` of them (mean, median, max).

    Args:
        optimizer: ``"sgd"`` (momentum 0.9, default lr 0.01), ``"adam"`` (default lr 1e-3) or a
            callable ``params -> Optimizer``.
        loss_on: ``"fixed"`` (default): :math:`f_i` is the loss at :math:`w_i` on one fixed batch
            (``eval_batch``, default the first batch), so differences come from the weights only;
            ``"minibatch"``: the minibatch loss of step ``i`` (as the official helper, which used
            the epoch's running mean), which adds minibatch noise.

    Memory: ``(steps + 1) * num_params`` floats. See ``docs/methods/bpgrad.md`` for how the
    statistics compare with the best ``L`` found by a grid search on the built-in problems.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"estimate_lipschitz: steps must be an int >= 1, got {steps!r}")
    if loss_on not in ("fixed", "minibatch"):
        raise ValueError(f"estimate_lipschitz: loss_on must be 'fixed' or 'minibatch', "
                         f"got {loss_on!r}")
    work = copy.deepcopy(model)
    work.train()
    params = [p for p in work.parameters() if p.requires_grad]
    if callable(optimizer):
        opt = optimizer(params)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=0.01 if lr is None else lr, momentum=0.9)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=1e-3 if lr is None else lr)
    else:
        raise ValueError(f"estimate_lipschitz: optimizer must be 'sgd', 'adam' or a callable, "
                         f"got {optimizer!r}")

    def flat() -> torch.Tensor:
        return torch.nn.utils.parameters_to_vector(params).detach().clone()

    @torch.no_grad()
    def fixed_loss() -> torch.Tensor:
        return loss_fn(work(eval_batch[0]), eval_batch[1]).detach()

    iterates: list[torch.Tensor] = []
    losses: list[torch.Tensor] = []
    for k, (x, y) in enumerate(batches):
        if k >= steps:
            break
        if eval_batch is None:
            eval_batch = (x, y)
        if loss_on == "fixed":
            iterates.append(flat())
            losses.append(fixed_loss())
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(work(x), y)
        if loss_on == "minibatch":
            iterates.append(flat())
            losses.append(loss.detach())
        loss.backward()
        opt.step()
    if loss_on == "fixed" and eval_batch is not None:
        iterates.append(flat())
        losses.append(fixed_loss())
    if len(iterates) < 2:
        raise ValueError(f"estimate_lipschitz: got {len(iterates)} iterate(s); give at least "
                         f"2 batches")
    return pairwise_lipschitz(torch.stack(losses).reshape(-1), torch.stack(iterates))


# --------------------------------------------------------------------------------------------
# The runner method
# --------------------------------------------------------------------------------------------
@register
class BPGradMethod(OptimizerMethod):
    """BPGrad through the runner: one :class:`BPGrad` over all parameters (any layer types).

    ``end_of_epoch`` restarts the running-mean loss estimate (``BPGrad.new_epoch``) and steps
    the optional LR schedule (which scales ``1/L``). Records the last step length and
    ``min f`` with every evaluation.
    """

    name = "bpgrad"
    summary = "step length (f_t - rho*min f)/L along the globally normalised gradient, momentum"
    paper = "Zhang, Wu & Wang, CVPR 2018 (arXiv 1711.06959)"
    hparams = (
        HParam("lipschitz", 10.0, float, "Lipschitz constant L (acts as 1/lr)",
               low=1.0, high=1000.0, log=True, tune=True),
        HParam("rho", 0.1, float, "lower bound factor: f* ~ rho * min f", low=0.0, high=1.0),
        HParam("momentum", 0.9, float, "heavy-ball momentum", low=0.0, high=0.99),
        HParam("weight_decay", 0.0, float, "L2 weight decay, added after the normalisation"),
        HParam("momentum_form", "paper", str, "v=mu*v-eta*d (paper) or s=mu*s-d; x+=eta*s",
               choices=MOMENTUM_FORMS),
        HParam("loss_estimate", "minibatch", str,
               "f_t: minibatch loss or running mean since the epoch start (official)",
               choices=LOSS_ESTIMATES),
        *SCHEDULE_HPARAMS,
    )
    published_defaults = {"lipschitz": 50.0, "rho": 0.1, "momentum": 0.9, "weight_decay": 5e-4,
                          "momentum_form": "official", "loss_estimate": "running_mean"}

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        hp = self.hp
        return BPGrad(model.parameters(), lipschitz=hp["lipschitz"], rho=hp["rho"],
                      momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                      momentum_form=hp["momentum_form"], loss_estimate=hp["loss_estimate"],
                      distributed=self.distributed)

    def train_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
        """As the base class's. A refused step (:class:`NonFiniteLossError`: NaN/inf loss or
        gradient, nothing changed) returns a non-finite loss (NaN when only the gradient was
        non-finite) instead of raising: the runner sums the epoch's losses and ends the trial
        as ``diverged``, as it does for the baselines whose weights turn NaN."""
        try:
            return super().train_step(model, batch, loss_fn)
        except NonFiniteLossError as exc:
            bad = exc.loss if not math.isfinite(exc.loss) else math.nan
            return torch.tensor(bad, device=next(model.parameters()).device)

    def end_of_epoch(self, model: nn.Module, ctx, epoch: int) -> list[dict]:
        self.optimizer.new_epoch()
        return super().end_of_epoch(model, ctx, epoch)

    def metrics(self, model: nn.Module) -> dict[str, float]:
        if self.optimizer is None:
            return {}
        st = self.optimizer.global_state
        if st["step"] == 0:
            return {}
        return {"bpgrad_step_length": float(st["step_length"]), "bpgrad_f_min": float(st["f_min"])}
