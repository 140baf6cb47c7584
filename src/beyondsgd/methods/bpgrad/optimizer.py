"""The :class:`BPGrad` optimizer (the practical solver); the maths is in :mod:`.maths`."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ... import distributed as D
from .maths import (
    GLOBAL_SETTINGS,
    LossBelowBoundError,
    NonFiniteLossError,
    _check_batch_size,
    _check_group,
    _global_grad_norm,
    _lipschitz_to_lr,
    _lr_value,
    bpgrad_update,
)

# Settings added after BPGrad state_dicts were first saved: their values for older state.
_LATER_SETTINGS: dict[str, Any] = {"maximize": False, "foreach": None,
                                   "nominal_batch_size": None}


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------
class BPGrad(torch.optim.Optimizer):
    r"""BPGrad's practical solver (Zhang, Wu & Wang, CVPR 2018) as a ``torch.optim`` optimizer.

    Per step :math:`t`, with :math:`g_t` the minibatch gradient of the data loss (all
    parameters), :math:`f_t \ge b` the loss estimate and :math:`b` the loss's lower bound
    (``loss_lower_bound``; the paper's :math:`f^* = 0`):

    .. math::

        f_{\min,t} &= \min_{i \le t} f_i \\
        \eta_t &= \big((f_t - b) - \rho\,(f_{\min,t} - b)\big) / L  && \text{Eq. (12) on } f - b \\
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

    Every setting after ``params`` is keyword only (``BPGrad(params, 1e-3)`` would have meant
    :math:`L = 0.001`, a huge step, and raises a ``TypeError`` saying so).

    Args:
        params: parameters or parameter groups (any layer types; a group may set its own
            ``lipschitz`` or ``lr``, ``rho``, ``momentum``, ``weight_decay``,
            ``momentum_form``, ``foreach``).
        lipschitz: the Lipschitz constant :math:`L > 0`; it acts as an inverse learning rate.
            Stored per group as ``lr = 1/L`` so that LR schedulers scale the step length
            (:math:`\eta_t = \mathrm{lr}\cdot(f_t - \rho f_{\min})`). Optional when every
            param group sets its own ``lipschitz`` (or ``lr``).
        lr: the same knob given as :math:`1/L` (give ``lipschitz`` or ``lr``, not
            both; a one-element float tensor is accepted). It is **not** an SGD learning rate:
            the step moves :math:`\mathrm{lr}\cdot(f_t - \rho f_{\min})` along the unit-norm
            gradient, so its scale depends on the loss's scale (the paper's Eq. (12) with
            :math:`\mathrm{lr} = 1/L`; the dfw port calls it ``eta``).
        rho: :math:`\rho \in [0, 1]`, lower-bound factor (official code 0.1).
        momentum: :math:`\mu \in [0, 1)` (heavy ball; official 0.9).
        weight_decay: :math:`\lambda \ge 0` (official 5e-4).
        momentum_form: ``"paper"`` or ``"official"``.
        loss_estimate: ``"minibatch"`` or ``"running_mean"`` (one setting for all groups).
        loss_lower_bound: :math:`b`, a number the loss never goes below (default 0, the
            paper's :math:`f \ge 0`, right for cross-entropy and squared error). Eq. (12)
            is applied to :math:`f - b \ge 0` (:func:`bpgrad_step_length`). State it for an
            objective that can be negative (a log-likelihood with a density, DeepOBS's noisy
            2-D problems :math:`f + u\bar x + v\bar y`): with the wrong bound the step length is
            off by :math:`(1-\rho)\,b/L`. One setting for all groups: the loss is global.
            With :math:`\rho > 0` the bound is *not* the paper's :math:`f^*`: the solver
            measures the step from :math:`b + \rho(\min f - b)`. To use a known optimum
            :math:`f^*` as the paper's pruning radius :math:`(f_t - f^*)/L` does, pass
            ``rho=0, loss_lower_bound=f*``.
        on_below_bound: what a loss below ``loss_lower_bound`` does (one setting
            for all groups): ``"raise"`` (default) raises :class:`LossBelowBoundError` (a
            ``ValueError`` naming the value and the bound) before anything changes;
            ``"diverge"`` ends the run as diverged instead: nothing changes, a
            ``RuntimeWarning`` names the value and the bound, :attr:`diverged` becomes True
            (kept in ``state_dict``), and this step and every later one return NaN and change
            nothing (the closure is still called). The benchmark runner records such a trial
            as ``diverged``; :mod:`beyondsgd.integrations.deepobs` ends the DeepOBS run as
            DeepOBS ends a NaN run.
        distributed: under data parallelism (``DistributedDataParallel``, which averages the
            gradients) :math:`f_t` must be the loss of the global batch: ``None`` (default)
            averages the closure's loss over the ranks whenever ``torch.distributed`` is
            initialised with more than one process; ``True`` requires it; ``False`` never
            communicates (independent runs per rank). The gradient norm is the norm of the
            (already averaged) gradients, so it is global too.
        nominal_batch_size: ``None`` (default): :math:`g_t` is the true mean gradient of the
            minibatch and :math:`d_t` has the norm above. An int :math:`N`: the official code's
            treatment of a short minibatch of :math:`b < N` samples, for parity with it
            (``cnn_train_v2_cifar_BPGrad.m`` divides the *summed* gradient by the nominal
            :math:`N` for the norm but by :math:`b` for the direction): :math:`d_t = (g_t +
            \lambda x_t) / (\|g_t\|_2\, b / N)`, :math:`N/b` times longer, and the
            running-mean loss estimate weights each minibatch by its :math:`b` samples. Every
            ``step`` then needs ``batch_size=b`` (:math:`1 \le b \le N`). One setting for all
            groups; under data parallelism :math:`N` is the global batch size.
        maximize: ``False`` (default). ``True``: the closure (or ``loss=``) returns an
            objective :math:`f` to *maximise*; BPGrad runs on :math:`h = -f` (the gradient is
            negated and :math:`f_t` is replaced by :math:`-f_t` in Eq. (12), the minimum and
            the running mean), so ``loss_lower_bound`` is a lower bound of :math:`-f`, i.e.
            ``-loss_lower_bound`` an upper bound of :math:`f` (default: :math:`f \le 0`, e.g. a
            log-likelihood of discrete data). Identical to minimising :math:`-f`. One setting
            for all groups; :attr:`global_state` reports :math:`h`.
        foreach: ``None`` (default) or ``True``: the update uses torch's multi-tensor kernels;
            ``False``: the same arithmetic one tensor at a time. Accepted per group.

    ``step(closure)`` needs a closure that zeroes the gradients, computes the loss, calls
    ``backward()`` and returns the loss (the way PyTorch Lightning and L-BFGS call optimizers),
    or, after the caller's own ``backward()``, ``step(loss=value)`` with the loss whose gradient
    is in ``.grad`` (a closure and ``loss=`` together: the closure computes the gradients and
    ``loss`` is :math:`f_t`); the loss must be finite and :math:`\ge b`. A step reads the loss
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
        *positional: Any,
        lipschitz: float | None = None,
        rho: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        momentum_form: str = "paper",
        loss_estimate: str = "minibatch",
        distributed: bool | None = None,
        lr: float | torch.Tensor | None = None,
        loss_lower_bound: float = 0.0,
        on_below_bound: str = "raise",
        nominal_batch_size: int | None = None,
        maximize: bool = False,
        foreach: bool | None = None,
    ):
        if positional:
            raise TypeError(
                f"BPGrad takes its settings as keywords only, got {len(positional)} more "
                f"positional argument(s) after params: {positional!r}. The second argument is "
                f"not a learning rate: pass lipschitz=L (L acts as 1/lr, e.g. "
                f"BPGrad(params, lipschitz=10.0)) or lr=1/L (BPGrad(params, lr=0.1))")
        if lipschitz is not None and lr is not None:
            raise ValueError(f"BPGrad: give lipschitz=L or lr=1/L, not both (got "
                             f"lipschitz={lipschitz!r}, lr={lr!r})")
        if lipschitz is not None:
            lr = _lipschitz_to_lr(lipschitz)
        defaults = dict(lr=lr, rho=rho, momentum=momentum, weight_decay=weight_decay,
                        momentum_form=momentum_form, loss_estimate=loss_estimate,
                        loss_lower_bound=loss_lower_bound, on_below_bound=on_below_bound,
                        maximize=maximize, foreach=foreach,
                        nominal_batch_size=nominal_batch_size)
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
        for group in self.param_groups:  # state saved before these settings existed
            for key, default in _LATER_SETTINGS.items():
                group.setdefault(key, default)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """As torch's, plus: a ``lipschitz`` key is turned into ``lr = 1/lipschitz``; a group
        without either takes the constructor's (an error if there is none); every group is
        validated; ``loss_estimate``, ``loss_lower_bound`` and ``on_below_bound`` must be the
        same for all groups (the loss is global)."""
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
        for key in GLOBAL_SETTINGS:
            if group[key] != self.param_groups[0][key]:
                raise ValueError(
                    f"BPGrad: {key} must be the same for all param groups (the loss is "
                    f"global), got {group[key]!r} and {self.param_groups[0][key]!r}")

    # ---- global state (kept under the first parameter, like torch's LBFGS) ------------------
    _GLOBAL_KEYS = ("step", "f_min", "loss_sum", "loss_count", "f_t", "step_length",
                    "grad_norm", "diverged")

    def _global(self) -> dict[str, Any]:
        st = self.state[self.param_groups[0]["params"][0]]
        if "step" not in st:
            st.update(step=0, f_min=math.inf, loss_sum=0.0, loss_count=0, f_t=math.nan,
                      step_length=0.0, grad_norm=0.0, diverged=False)
        st.setdefault("diverged", False)  # state saved before the key existed
        return st

    @property
    def global_state(self) -> dict[str, float]:
        """A copy of the global state: ``step``, ``f_min``, ``loss_sum``/``loss_count`` (running
        mean of this epoch), last ``f_t``, ``step_length`` (:math:`\\eta_t` of group 0),
        ``grad_norm`` and ``diverged``."""
        st = self.state[self.param_groups[0]["params"][0]]
        if "step" not in st:
            return {"step": 0, "f_min": math.inf, "loss_sum": 0.0, "loss_count": 0,
                    "f_t": math.nan, "step_length": 0.0, "grad_norm": 0.0, "diverged": False}
        return {k: st.get(k, False) for k in self._GLOBAL_KEYS}

    @property
    def diverged(self) -> bool:
        """True once a loss fell below ``loss_lower_bound`` with ``on_below_bound="diverge"``:
        every later step changes nothing and returns NaN."""
        st = self.state.get(self.param_groups[0]["params"][0], {})  # no entry made (defaultdict)
        return bool(st.get("diverged", False))

    def new_epoch(self) -> None:
        """Restart the running-mean loss estimate (``loss_estimate="running_mean"``; harmless
        otherwise). Call it at every epoch boundary, as the official code does."""
        st = self._global()
        st["loss_sum"], st["loss_count"] = 0.0, 0

    # ---- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None, *,
             loss: float | torch.Tensor | None = None,
             batch_size: int | None = None) -> torch.Tensor | float | None:
        """One BPGrad step.

        ``closure`` re-evaluates the model (zero the gradients, compute the loss, ``backward()``)
        and returns the loss; it is called under ``torch.enable_grad()``. ``loss`` (keyword
        only; a real number or a one-element tensor) is the objective value whose gradient is
        in ``.grad`` now: when given it is used as :math:`f_t` instead of the closure's
        return, and without a closure it is enough -- for runners that call ``backward()``
        themselves and then ``opt.step()`` (DeepOBS's ``StandardRunner``, see
        :mod:`beyondsgd.integrations.deepobs`), and for a gradient scaler, which calls
        ``step`` without the closure: ``scaler.step(opt, loss=loss)``. ``batch_size``
        (keyword only; required with ``nominal_batch_size``, refused without it): the number
        of samples whose mean gradient is in ``.grad`` (under data parallelism: this rank's
        samples; they are summed over the ranks). Returns the closure's return value, or
        ``loss`` when there is no closure.
        """
        if closure is None and loss is None:
            raise RuntimeError(
                "BPGrad.step needs the loss value (the step length (f_t - rho*min f)/L depends "
                "on it): opt.step(closure) where closure() zeroes the gradients, computes loss, "
                "calls loss.backward() and returns loss, or opt.step(loss=loss) after "
                "loss.backward(). A gradient scaler (torch.amp.GradScaler, Lightning's "
                "precision='16-mixed') calls step() without the closure: use "
                "scaler.step(opt, loss=loss), or under Lightning the BPGradMixin "
                "(beyondsgd.integrations.lightning), which passes the loss")
        nominal = self.param_groups[0].get("nominal_batch_size")
        if nominal is not None and batch_size is None:
            raise ValueError(
                f"BPGrad.step: nominal_batch_size={nominal} needs step(..., batch_size=b), the "
                f"number of samples in this minibatch (the direction is scaled by "
                f"nominal_batch_size / b, as the official code does on a short batch)")
        b = _check_batch_size(batch_size, nominal) if batch_size is not None else None
        returned = None
        if closure is not None:
            with torch.enable_grad():
                returned = closure()
            if returned is None and loss is None:
                raise RuntimeError("BPGrad.step: the closure returned None; it must return the "
                                   "loss (or pass step(closure, loss=value))")
        if self.diverged:  # on_below_bound="diverge" ended the run: nothing changes any more
            return _nan_like(returned if closure is not None else loss)
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
        maximize = bool(self.param_groups[0].get("maximize", False))
        if maximize:  # BPGrad on h = -f: the objective to maximise becomes a loss
            f_dev = -f_dev
        b_dev = torch.tensor(float(b if b is not None else 0), dtype=norm.dtype,
                             device=norm.device)
        if D.resolve(self.distributed):  # f_t of the global batch: the mean over the ranks
            summed = D.all_reduce_sum(torch.stack([f_dev, b_dev]))
            f_dev, b_dev = summed[0] / D.world_size(), summed[1]
        f_val, g_norm, b_all = torch.stack([f_dev, norm, b_dev]).tolist()
        # Checked before anything changes (every rank sees the same global f_val and norm).
        what = "the negated objective -f (maximize=True)" if maximize else "the loss"
        if not math.isfinite(f_val):
            raise NonFiniteLossError(
                f"BPGrad: {what} is {f_val!r}; the step length (f_t - rho*min f)/L needs a "
                f"finite loss >= loss_lower_bound (the run has diverged, or the closure is "
                f"broken); nothing was changed", f_val)
        if not math.isfinite(g_norm):
            raise NonFiniteLossError(
                f"BPGrad: the gradient norm is {g_norm!r} (loss {f_val!r}); a finite gradient is "
                f"needed to normalise it; nothing was changed", f_val)
        bound = float(self.param_groups[0]["loss_lower_bound"])
        if f_val < bound:
            message = (f"BPGrad: {what} {f_val!r} is below loss_lower_bound={bound!r} ({source} "
                       f"{-f_val if maximize else f_val!r}); the step length (f_t - rho*min f)/L "
                       f"is measured from that bound and needs f >= bound")
            if maximize:
                message += (f" (with maximize=True the objective must stay <= "
                            f"-loss_lower_bound = {-bound!r})")
            if self.param_groups[0]["on_below_bound"] == "raise":
                raise LossBelowBoundError(
                    f"{message}. Nothing was changed. State a lower bound of your objective: "
                    f"BPGrad(..., loss_lower_bound=b) (0, the default, holds for cross-entropy "
                    f"and squared error), or pass on_below_bound='diverge' to end the run as "
                    f"diverged instead of raising", f_val, bound)
            self._global()["diverged"] = True
            warnings.warn(f"{message}; the run ends as diverged (on_below_bound='diverge'): "
                          f"nothing was changed, and every later step returns NaN and changes "
                          f"nothing", RuntimeWarning, stacklevel=2)
            return _nan_like(result)

        st = self._global()
        st["step"] += 1
        if self.param_groups[0]["loss_estimate"] == "running_mean":
            # official: sample-weighted with nominal_batch_size (its loss is a sum over the
            # epoch's samples / their count), else each minibatch counts once
            weight = b_all if nominal is not None else 1.0
            st["loss_sum"] += weight * f_val
            st["loss_count"] += weight
            f_t = st["loss_sum"] / st["loss_count"]
        else:
            f_t = f_val
        if f_t < st["f_min"]:
            st["f_min"] = f_t
        st["f_t"], st["grad_norm"] = f_t, g_norm
        # official code: the norm of the summed gradient / nominal batch size, i.e. ||g|| b/N
        # for the true mean gradient g of b samples; the direction is longer by N/b
        # (under data parallelism b is summed over the ranks: N is the global batch size)
        scaled_norm = g_norm if nominal is None else g_norm * b_all / nominal

        for i, (group, (ps, gs)) in enumerate(zip(self.param_groups, grouped)):
            # Eq. (12) on f - b (b = loss_lower_bound, the paper's f* = 0), times lr = 1/L
            eta = ((f_t - bound) - group["rho"] * (st["f_min"] - bound)) * _lr_value(group["lr"])
            if i == 0:
                st["step_length"] = eta
            if not ps or g_norm == 0.0:
                continue
            mom = group["momentum"]
            bufs = [self.state[p].get("momentum_buffer") for p in ps] if mom != 0 else []
            new = bpgrad_update(ps, gs, bufs if mom != 0 else [None] * len(ps), eta=eta,
                                grad_norm=scaled_norm, momentum=mom,
                                weight_decay=group["weight_decay"],
                                momentum_form=group["momentum_form"], maximize=maximize,
                                foreach=group.get("foreach") is not False)
            if mom != 0:
                for p, b_ in zip(ps, new):
                    self.state[p]["momentum_buffer"] = b_
        return result


def _nan_like(result: Any) -> Any:
    """NaN in the form of a step's result (a tensor like it, or a float)."""
    if isinstance(result, torch.Tensor):
        return torch.full_like(result.detach(), math.nan)
    return math.nan
