r"""BPGrad in Lightning: the right :math:`f_t` under gradient accumulation.

BPGrad's step length is :math:`\eta_t = (f_t - \rho \min_{i \le t} f_i)/L` (Zhang, Wu & Wang,
CVPR 2018, Eq. 12) along the normalised gradient, so :math:`f_t` must be the loss whose gradient
is in ``.grad``. With ``Trainer(accumulate_grad_batches=k)`` Lightning backpropagates
:math:`\ell_i / k` for each of the ``k`` microbatches and then calls
``optimizer.step(closure)``, whose closure returns only the *last* microbatch's
:math:`\ell_k / k`: BPGrad would use :math:`f_t = \ell_k / k` instead of the mean
:math:`\frac1k \sum_i \ell_i` of the losses whose gradients were accumulated -- a step about
``k`` times too short, silently.

:class:`BPGradMixin` fixes that: it records each microbatch's loss (Lightning's
``training_step`` output, times ``k``), and on the step runs Lightning's closure for the last
microbatch itself, then calls ``optimizer.step(closure, loss=mean)`` (``BPGrad.step``'s
``loss=`` argument: the loss is :math:`f_t`, the closure still runs Lightning's after-closure
hooks). The gradient needs no fix: BPGrad normalises it, so the sum / ``k`` that Lightning
accumulates gives the same direction as the mean gradient of the concatenated batch.

fp16 with a gradient scaler (``precision="16-mixed"`` on a GPU): Lightning's precision plugin
runs the closure itself and then calls ``scaler.step(optimizer, **kwargs)``, i.e.
``optimizer.step()`` without the closure, so a plain module's BPGrad gets no loss and raises (its
message names the fix). The mixin's ``optimizer.step(closure, loss=f_t)`` reaches BPGrad through
the scaler's ``**kwargs``, so with the mixin fp16 works (k = 1 too); 32-bit and ``bf16-mixed``
(no scaler) pass the closure and need no mixin without accumulation.

Gradient clipping: BPGrad divides the gradient by its norm, so ``gradient_clip_val`` with the
``"norm"`` algorithm does not change the step of the data loss (with ``weight_decay > 0`` it
enlarges the decay term by the clipping factor), and ``"value"`` clipping changes the
direction. The mixin warns once when a BPGrad optimizer runs with ``gradient_clip_val`` set.

Example (see ``docs/integrations/lightning/bpgrad_digits.py``)::

    class Net(BPGradMixin, pl.LightningModule):
        ...                                    # training_step returns the loss, as usual
        def configure_optimizers(self):
            return BPGrad(self.parameters(), lipschitz=10.0)

    pl.Trainer(accumulate_grad_batches=2).fit(Net(), train_dl)
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ...methods.bpgrad import BPGrad

__all__ = ["BPGradMixin", "microbatch_loss"]


def microbatch_loss(outputs: Any, accumulate: int) -> torch.Tensor | None:
    """The unscaled loss of one microbatch from Lightning's ``training_step`` output as the
    loop reports it (``{"loss": loss / accumulate, ...}``, or the tensor itself); ``None`` when
    the step was skipped."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if loss is None:
        return None
    return loss.detach() * accumulate


def _raw(optimizer: Any) -> Any:
    """The torch optimizer inside a ``LightningOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


class BPGradMixin:
    """LightningModule mixin: BPGrad steps use the mean of the accumulated microbatch losses
    as :math:`f_t`; warns once about gradient clipping; restarts BPGrad's running-mean loss
    estimate at each training epoch (``BPGrad.new_epoch``, as the runner's method does).

    Put it first: ``class Net(BPGradMixin, pl.LightningModule)``. If you override
    ``on_train_batch_end``, ``on_train_epoch_start`` or ``configure_gradient_clipping``, call
    ``super()`` in them. Other optimizers are stepped exactly as Lightning does by default.
    The recorded losses of a step are in ``self.bpgrad_last_losses`` (unscaled, in order).
    """

    _bpgrad_pending: list[torch.Tensor]
    _bpgrad_consumed: bool = False
    _bpgrad_clip_warned: bool = False
    bpgrad_last_losses: list[float] | None = None

    def _bpgrad_list(self) -> list[torch.Tensor]:
        if "_bpgrad_pending" not in self.__dict__:
            self._bpgrad_pending = []
        return self._bpgrad_pending

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        pending = self._bpgrad_list()
        if self._bpgrad_consumed:  # this batch closed an accumulation group: already used
            pending.clear()
            self._bpgrad_consumed = False
        else:
            loss = microbatch_loss(outputs, self.trainer.accumulate_grad_batches)
            if loss is not None:
                pending.append(loss)
        sup = getattr(super(), "on_train_batch_end", None)
        if sup is not None:
            sup(outputs, batch, batch_idx)

    def on_train_epoch_start(self) -> None:
        for opt in self.trainer.optimizers:
            if isinstance(opt, BPGrad):
                opt.new_epoch()  # running-mean estimate restarts per epoch (official code)
        self._bpgrad_list().clear()
        self._bpgrad_consumed = False
        sup = getattr(super(), "on_train_epoch_start", None)
        if sup is not None:
            sup()

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        if gradient_clip_val and isinstance(_raw(optimizer), BPGrad) \
                and not self._bpgrad_clip_warned:
            self._bpgrad_clip_warned = True
            warnings.warn(
                f"gradient_clip_val={gradient_clip_val!r} with BPGrad: BPGrad normalises the "
                "gradient, so norm clipping does not change the data-loss step (with "
                "weight_decay > 0 it enlarges the decay term) and value clipping changes its "
                "direction; leave gradient_clip_val unset", UserWarning, stacklevel=2)
        super().configure_gradient_clipping(  # type: ignore[misc]
            optimizer, gradient_clip_val=gradient_clip_val,
            gradient_clip_algorithm=gradient_clip_algorithm)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any,
                       optimizer_closure: Any = None) -> None:
        if not isinstance(_raw(optimizer), BPGrad) or optimizer_closure is None:
            return super().optimizer_step(  # type: ignore[misc]
                epoch, batch_idx, optimizer, optimizer_closure)
        k = self.trainer.accumulate_grad_batches
        pending = self._bpgrad_list()
        # microbatches in this group: groups start at batch_idx % k == 0 (Lightning's
        # zero_grad rule); the last group of an epoch may be shorter
        expected = batch_idx % k + 1
        if len(pending) != expected - 1:
            raise RuntimeError(
                f"BPGradMixin recorded {len(pending)} microbatch losses before the step of "
                f"batch {batch_idx}, expected {expected - 1} (accumulate_grad_batches={k}); an "
                "on_train_batch_end override must call super().on_train_batch_end(...), and a "
                "training_step that returns None cannot be combined with accumulation here")
        last = optimizer_closure()  # training_step + backward of the last microbatch
        if last is None:  # training_step returned None: Lightning skips backward
            losses = list(pending)
        else:
            losses = [*pending, last.detach() * k]
        self._bpgrad_consumed = True
        if not losses:
            optimizer.step(closure=lambda: None)  # nothing to step on: BPGrad raises clearly
            return None
        f_t = torch.stack([v.to(losses[0]) for v in losses]).mean()
        self.bpgrad_last_losses = [float(v) for v in losses]
        # the closure only returns: Lightning's after-closure hooks (clipping,
        # on_before_optimizer_step) still run around it; `loss=` is BPGrad's f_t
        optimizer.step(closure=lambda: last if last is not None else f_t, loss=f_t)
        return None
