"""BPGrad's pure parts: argument checks, the error types, the step length (Eq. 12) and the
multi-tensor update. See :mod:`beyondsgd.methods.bpgrad` for the method and its reference."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

MOMENTUM_FORMS = ("paper", "official")
LOSS_ESTIMATES = ("minibatch", "running_mean")
BELOW_BOUND_ACTIONS = ("raise", "diverge")
# Settings that concern the loss or the global gradient norm, which are global: the same value
# in every param group.
GLOBAL_SETTINGS = ("loss_estimate", "loss_lower_bound", "on_below_bound", "maximize",
                   "nominal_batch_size")


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


class LossBelowBoundError(ValueError):
    """``BPGrad.step`` saw a loss below ``loss_lower_bound`` (``on_below_bound="raise"``) and
    changed nothing: the stated bound is wrong for this objective. ``loss`` and ``bound`` are
    the two values."""

    def __init__(self, message: str, loss: float, bound: float):
        super().__init__(message)
        self.loss = loss
        self.bound = bound


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
    _real("loss_lower_bound", g["loss_lower_bound"])
    if g["on_below_bound"] not in BELOW_BOUND_ACTIONS:
        raise ValueError(f"BPGrad: on_below_bound must be one of {list(BELOW_BOUND_ACTIONS)}, "
                         f"got {g['on_below_bound']!r}")
    if not isinstance(g.get("maximize", False), bool):
        raise ValueError(f"BPGrad: maximize must be True or False, got {g['maximize']!r}")
    if g.get("foreach") not in (None, True, False):
        raise ValueError(f"BPGrad: foreach must be None, True or False, got {g['foreach']!r}")
    _check_nominal(g.get("nominal_batch_size"))


def _check_nominal(n: Any) -> None:
    if n is not None and (isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1):
        raise ValueError(f"BPGrad: nominal_batch_size must be None (off) or an int >= 1 (the "
                         f"batch size every full minibatch has), got {n!r}")


def _check_batch_size(b: Any, nominal: int | None) -> int:
    """``step(batch_size=b)``: an int in [1, nominal_batch_size], only with the parity option."""
    if nominal is None:
        raise ValueError(f"BPGrad.step: batch_size={b!r} is only used with "
                         f"nominal_batch_size=N (the official code's short-batch scaling); "
                         f"without it the gradient is the true mean and needs no batch size")
    if isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 1 <= b <= nominal:
        raise ValueError(f"BPGrad.step: batch_size must be an int in [1, nominal_batch_size="
                         f"{nominal}] (the number of samples whose mean gradient is in .grad), "
                         f"got {b!r}")
    return int(b)


def _lipschitz_to_lr(lipschitz: Any) -> float:
    L = _real("lipschitz", lipschitz)
    if L <= 0:
        raise ValueError(f"BPGrad: lipschitz must be > 0, got {lipschitz!r}")
    return 1.0 / L


# --------------------------------------------------------------------------------------------
# The maths, as pure functions
# --------------------------------------------------------------------------------------------
def bpgrad_step_length(f_t: float, f_min: float, rho: float, lipschitz: float,
                       lower_bound: float = 0.0) -> float:
    r"""The paper's step length, Eq. (12), measured from a lower bound :math:`b` of the loss:

    .. math:: \eta_t = \frac{(f_t - b) - \rho\,(\min_{i \le t} f_i - b)}{L}.

    The paper assumes :math:`f \ge 0` with :math:`f^* = 0` (``lower_bound=0``, the default,
    gives exactly :math:`(f_t - \rho \min f_i)/L`). A user-stated bound :math:`f \ge b`
    applies the same rule to :math:`f - b \ge 0`, which is Lipschitz with the same :math:`L`
    (digest: "Summary" and "The practical solver"). ``f_min`` must already include ``f_t``.
    With :math:`f \ge b` and :math:`\rho \le 1` the step length is non-negative:
    :math:`\eta_t \ge (1-\rho)(f_t - b)/L`.

    >>> bpgrad_step_length(3.0, 2.0, 0.5, 2.0)              # (3 - 0.5*2) / 2
    1.0
    >>> bpgrad_step_length(3.0, 2.0, 0.5, 2.0, lower_bound=-2.0)  # (5 - 0.5*4) / 2
    1.5
    """
    return ((f_t - lower_bound) - rho * (f_min - lower_bound)) / lipschitz


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
    maximize: bool = False,
    foreach: bool = True,
) -> list[torch.Tensor | None]:
    r"""One BPGrad update of ``params`` in place (multi-tensor; no Python loop over elements).

    With :math:`d_t = (g_t + \lambda x_t)/\|g_t\|_2` (``grad_norm`` is the one global norm of
    the data-loss gradient over *all* parameters; weight decay is added after the norm):

    * ``"paper"``:    :math:`v_{t+1} = \mu v_t - \eta_t d_t,\ x_{t+1} = x_t + v_{t+1}`
    * ``"official"``: :math:`s_{t+1} = \mu s_t - d_t,\ x_{t+1} = x_t + \eta_t s_{t+1}`

    ``momentum_buffers`` holds :math:`v` or :math:`s` per parameter (``None``: zero, created
    here). Returns the buffers (all ``None`` when ``momentum == 0``). ``grad_norm == 0`` (a
    stationary point) leaves params and buffers unchanged. ``maximize``: :math:`g_t` is
    replaced by :math:`-g_t` (ascent; the caller negates the loss). ``foreach=False`` does the
    same arithmetic one tensor at a time (no multi-tensor kernels).
    """
    if momentum_form not in MOMENTUM_FORMS:
        raise ValueError(f"momentum_form must be one of {list(MOMENTUM_FORMS)}, "
                         f"got {momentum_form!r}")
    if not params or grad_norm == 0.0:
        return list(momentum_buffers)
    inv = 1.0 / grad_norm
    if not foreach:
        return _update_per_tensor(params, grads, momentum_buffers, eta, inv, momentum,
                                  weight_decay, momentum_form, maximize)
    if maximize:
        grads = torch._foreach_neg(grads)
    d = torch._foreach_add(grads, params, alpha=weight_decay) if weight_decay != 0 else grads
    if momentum == 0.0:
        torch._foreach_add_(params, d, alpha=-eta * inv)
        return [None] * len(params)
    bufs = [torch.zeros_like(p) if b is None else b for p, b in zip(params, momentum_buffers)]
    torch._foreach_mul_(bufs, momentum)
    if momentum_form == "paper":
        torch._foreach_add_(bufs, d, alpha=-eta * inv)
        torch._foreach_add_(params, bufs)
    else:
        torch._foreach_add_(bufs, d, alpha=-inv)
        torch._foreach_add_(params, bufs, alpha=eta)
    return bufs


def _update_per_tensor(params: list[torch.Tensor], grads: list[torch.Tensor],
                       momentum_buffers: list[torch.Tensor | None], eta: float, inv: float,
                       momentum: float, weight_decay: float, momentum_form: str,
                       maximize: bool) -> list[torch.Tensor | None]:
    """:func:`bpgrad_update`'s arithmetic one tensor at a time (``foreach=False``)."""
    out: list[torch.Tensor | None] = []
    for p, g, b in zip(params, grads, momentum_buffers):
        if maximize:
            g = g.neg()
        d = g.add(p, alpha=weight_decay) if weight_decay != 0 else g
        if momentum == 0.0:
            p.add_(d, alpha=-eta * inv)
            out.append(None)
            continue
        b = torch.zeros_like(p) if b is None else b
        b.mul_(momentum)
        if momentum_form == "paper":
            b.add_(d, alpha=-eta * inv)
            p.add_(b)
        else:
            b.add_(d, alpha=-inv)
            p.add_(b, alpha=eta)
        out.append(b)
    return out


def _global_grad_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The L2 norm of all gradients together: one ``_foreach_norm`` and one reduction."""
    if not grads:
        return torch.zeros((), device=device)
    norms = torch._foreach_norm(grads)
    # the widest real dtype among the gradients (a complex128 gradient's norm is float64)
    wide = (torch.float64, torch.complex128)
    dtype = torch.float64 if any(g.dtype in wide for g in grads) else torch.float32
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]))
