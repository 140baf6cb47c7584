"""Autograd-free fast paths of the PHT alternation, bit-identical to the autograd code they replace.

The per-epoch last-layer solve (:func:`~.solvers.solve_layer`, 20 L-BFGS iterations, about 22
loss-and-gradient evaluations) and the frozen-support inner steps spend a good part of their
time in the autograd engine, for networks this small. The classes here compute the same loss and
the same gradients by calling, in the same order and on the same operands, the ATen kernels the
autograd engine calls (found from the recorded graph, ``grad_fn`` names and saved attributes,
and the backward formulas of ``torch/csrc/autograd/FunctionsManual.cpp``):

* ``F.cross_entropy(z, y)``: ``_log_softmax`` and ``nll_loss_forward`` forward,
  ``nll_loss_backward`` and ``_log_softmax_backward_data`` backward;
* ``F.linear(h, W, b)`` (an ``addmm`` of ``W.t()``, which is column-major): the weight gradient
  is ``grad.t().mm(h)`` (``mm_mat2_backward``'s column-major branch, then ``TBackward0``), the
  bias gradient ``grad.sum([0], keepdim=True)`` viewed as the bias (the engine's ``sum_to``);
* the proximal term ``0.5 * damping * sum(((p - s) ** 2).sum())``: ``grad * c`` (``MulBackward0``
  by the wrapped scalar ``c = 0.5 * damping``), expanded (``SumBackward0``), times
  ``2.0 * (p - s)`` (``PowBackward0``), added to the loss's gradient (two terms: the order of the
  engine's accumulation cannot change a bit).

Every float operation is therefore the one autograd performs, so the results are equal bit for
bit (``torch.equal``), which ``tests/test_pht_fastpath.py`` checks: the loss and gradients
against the autograd closure over random shapes (1 row, row counts off the multiples of 8, with
and without bias, float32 and float64, damping 0 and > 0), whole ``solve_layer`` calls, and whole
``run_trial`` runs of ``pht_alt`` with the fast paths switched off (:data:`ENABLED`). Each fast
path applies only where that argument holds (exact module types, CPU float tensors, no hooks of
any kind, no torch-function/dispatch modes or saved-tensor hooks, no anomaly mode); everything
else keeps the autograd code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

#: switch for the tests (and for bisecting): ``False`` forces the autograd code everywhere
ENABLED = True

_FLOATS = (torch.float32, torch.float64)
_MEAN, _IGNORE = 1, -100  # F.cross_entropy's defaults: reduction="mean", ignore_index=-100
_aten = torch.ops.aten


def _quiet() -> bool:
    """No global state that would make autograd (or a module call) do anything else."""
    return (ENABLED and not torch.is_anomaly_enabled()
            and torch._C._len_torch_function_stack() == 0
            and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._autograd._top_saved_tensors_default_hooks(False) is None
            and not any(getattr(_module, n) for n in (
                "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks", "_global_forward_hooks_with_kwargs",
                "_global_forward_hooks_always_called")))


def _unhooked(m: nn.Module) -> bool:
    return not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks)


def _plain_param(p: torch.Tensor, dtype: torch.dtype) -> bool:
    return (isinstance(p, nn.Parameter) and type(p.data) is torch.Tensor and p.requires_grad
            and p.dtype == dtype and p.device.type == "cpu" and p.is_contiguous()
            and not p._backward_hooks and not p._post_accumulate_grad_hooks)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


def _class_targets(y: torch.Tensor, n: int) -> bool:
    return (type(y) is torch.Tensor and y.dtype == torch.int64 and y.dim() == 1
            and y.shape[0] == n and y.device.type == "cpu")


# --------------------------------------------------------------------------------------------
# The last-layer L-BFGS solve: cross-entropy of one Linear layer
# --------------------------------------------------------------------------------------------
class LinearCE:
    """``F.cross_entropy(layer(h), y)`` and the L-BFGS closure of :func:`~.solvers._lbfgs_layer`
    for an ``nn.Linear`` layer with nothing after it, without the autograd engine.

    :meth:`objective` is the loss at the layer's current weights, :meth:`closure` the closure
    (the loss plus the proximal term, gradients stored in ``p.grad``), both bit-identical to the
    autograd code (module docstring). The forward results of every evaluation are kept, keyed by
    the weights' bits, so the loss before the solve, the closure's first evaluation (same
    weights) and the loss after it (the weights of an evaluation of the line search) share
    forward passes: the same kernels on the same bits give the same bits.
    """

    def __init__(self, layer: nn.Linear, h: torch.Tensor, y: torch.Tensor):
        self.layer, self.h, self.y = layer, h, y
        self._seen: list[tuple[list[torch.Tensor], torch.Tensor]] = []  # (weight bits, loss)
        self._last: tuple[list[torch.Tensor], tuple[torch.Tensor, ...]] | None = None

    @classmethod
    def make(cls, layer: nn.Module, tail: nn.Module, h: torch.Tensor, y: torch.Tensor,
             loss: object) -> LinearCE | None:
        """The fast path for ``loss(tail(layer(h)), y)``, or ``None`` where it does not apply."""
        if not (loss == "cross_entropy" and type(layer) is nn.Linear
                and type(tail) is nn.Sequential and len(tail) == 0 and _quiet()
                and _unhooked(layer) and _unhooked(tail) and type(h) is torch.Tensor
                and h.dtype in _FLOATS and h.device.type == "cpu" and h.dim() == 2
                and not h.requires_grad and _class_targets(y, h.shape[0])):
            return None
        params = list(layer.parameters())
        if not (params and params[0] is layer.weight
                and len(params) == (1 if layer.bias is None else 2)
                and all(_plain_param(p, h.dtype) for p in params)):
            return None
        return cls(layer, h, y)

    def _params(self) -> list[torch.Tensor]:
        b = self.layer.bias
        return [self.layer.weight.detach()] + ([] if b is None else [b.detach()])

    @staticmethod
    def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    def _forward(self) -> tuple[torch.Tensor, ...]:
        """``(logits, log_softmax, total_weight, loss)`` at the current weights."""
        params = self._params()
        bits = [_bits(p) for p in params]
        if self._last is not None and self._same(self._last[0], bits):
            return self._last[1]
        with torch.no_grad():
            logits = F.linear(self.h, *params)
            logp = torch._log_softmax(logits, 1, False)
            ce, total = _aten.nll_loss_forward(logp, self.y, None, _MEAN, _IGNORE)
        snap = [b.clone() for b in bits]
        self._last = (snap, (logits, logp, total, ce))
        self._seen.append((snap, ce))
        return self._last[1]

    def objective(self) -> torch.Tensor:
        """``F.cross_entropy(layer(h), y)`` at the current weights."""
        bits = [_bits(p) for p in self._params()]
        for snap, ce in reversed(self._seen):
            if self._same(snap, bits):
                return ce
        return self._forward()[3]

    def closure(self, params: Sequence[torch.nn.Parameter], start: Sequence[torch.Tensor],
                damping: float) -> Callable[[], torch.Tensor]:
        """The closure of :func:`~.solvers._lbfgs_layer` (``params``: the layer's parameters,
        ``start``: their values at the start of the solve)."""

        def closure() -> torch.Tensor:
            logits, logp, total, ce = self._forward()
            loss = ce
            with torch.no_grad():
                if damping > 0:
                    diffs = [p.detach() - s for p, s in zip(params, start, strict=True)]
                    loss = ce + 0.5 * damping * sum((d ** 2).sum() for d in diffs)
                one = torch.ones_like(loss)
                g = _aten.nll_loss_backward(one, logp, self.y, None, _MEAN, _IGNORE, total)
                g = _aten._log_softmax_backward_data(g, logp, 1, logits.dtype)
                grads = [g.t().mm(self.h)]
                if len(params) == 2:
                    grads.append(g.sum([0], keepdim=True).view(params[1].shape))
                if damping > 0:
                    gd = one * (0.5 * damping)
                    grads = [gr + gd.expand(d.shape) * (2.0 * d)
                             for gr, d in zip(grads, diffs, strict=True)]
            for p, gr in zip(params, grads, strict=True):
                p.grad = gr
            return loss

        return closure
