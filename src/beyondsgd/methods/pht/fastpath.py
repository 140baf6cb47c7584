"""Autograd-free fast paths of the PHT alternation, bit-identical to the autograd code they replace.

The per-epoch last-layer solve (:func:`~.solvers.solve_layer`, 20 L-BFGS iterations, about 22
loss-and-gradient evaluations: :class:`LinearCE`) and the K support/frozen-support steps of
:meth:`~.alternating.Alternating.step` (:func:`alternation_step`) spend a good part of their
time in the autograd engine, for networks this small. The code here computes the same losses and
the same gradients by calling, in the same order and on the same operands, the ATen kernels the
autograd engine calls (found from the recorded graph, ``grad_fn`` names and saved attributes,
and the backward formulas of ``torch/csrc/autograd/FunctionsManual.cpp``):

* ``F.cross_entropy(z, y)``: ``_log_softmax`` and ``nll_loss_forward`` forward,
  ``nll_loss_backward`` and ``_log_softmax_backward_data`` backward;
* ``F.linear(h, W, b)`` (an ``addmm`` of ``W.t()``, which is column-major): the weight gradient
  is ``grad.t().mm(h)`` (``mm_mat2_backward``'s column-major branch, then ``TBackward0``), the
  bias gradient ``grad.sum([0], keepdim=True)`` viewed as the bias (the engine's ``sum_to``),
  the input gradient ``grad.mm(W)`` (``mm_mat1_backward`` for a row-major input);
* the PHT activation ``z * mask`` (recorded ``z > tau`` or frozen, cast to ``z``'s dtype):
  ``grad * mask`` (``MulBackward0``);
* the proximal term ``0.5 * damping * sum(((p - s) ** 2).sum())``: ``grad * c`` (``MulBackward0``
  by the wrapped scalar ``c = 0.5 * damping``), expanded (``SumBackward0``), times
  ``2.0 * (p - s)`` (``PowBackward0``), added to the loss's gradient (two terms: the order of the
  engine's accumulation cannot change a bit).

Every float operation is therefore the one autograd performs, so the results are equal bit for
bit (``torch.equal``), which ``tests/test_pht_fastpath.py`` checks: the loss and gradients
against the autograd closure over random shapes (1 row, row counts off the multiples of 8, with
and without bias, float32 and float64, damping 0 and > 0), whole ``solve_layer`` calls, steps of
random MLPs (losses, weights, gradients, optimizer states, supports), and whole ``run_trial`` runs
of ``pht_alt`` with the fast paths switched off (:data:`ENABLED`); solves and steps on two
threads too. Each fast path applies only where that argument holds (exact module types, CPU
float tensors, no hooks of any kind, no torch-function/dispatch modes or saved-tensor hooks, no
anomaly mode); everything else keeps the autograd code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module

from .activation import PositiveHardThreshold
from .support import frozen_support, recording

#: switch for the tests (and for bisecting): ``False`` forces the autograd code everywhere
ENABLED = True

_FLOATS = (torch.float32, torch.float64)
_MEAN, _IGNORE = 1, -100  # F.cross_entropy's defaults: reduction="mean", ignore_index=-100
_aten = torch.ops.aten


def _quiet() -> bool:
    """No global state that would make autograd (or a module call) do anything else. The
    checks read torch internals: a torch without one of them (``torch>=2.1`` is allowed)
    keeps the autograd code."""
    try:
        return (ENABLED and not torch.is_anomaly_enabled()
                and torch._C._len_torch_function_stack() == 0
                and torch._C._len_torch_dispatch_stack() == 0
                and torch._C._autograd._top_saved_tensors_default_hooks(False) is None
                and not any(getattr(_module, n, True) for n in (
                    "_global_forward_hooks", "_global_forward_pre_hooks",
                    "_global_backward_hooks", "_global_backward_pre_hooks",
                    "_global_forward_hooks_with_kwargs", "_global_forward_hooks_always_called")))
    except (AttributeError, TypeError):
        return False


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


def _ce_forward(out: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(out, y)``'s forward kernels: ``(log_softmax, loss, total weight)``."""
    logp = torch._log_softmax(out, 1, False)
    loss, total = _aten.nll_loss_forward(logp, y, None, _MEAN, _IGNORE)
    return logp, loss, total


def _ce_backward(one: torch.Tensor, logp: torch.Tensor, y: torch.Tensor, total: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
    """The gradient of ``F.cross_entropy`` in its input, from the forward's ``log_softmax``
    output ``logp`` and total weight (the two backward kernels of autograd)."""
    g = _aten.nll_loss_backward(one, logp, y, None, _MEAN, _IGNORE, total)
    return _aten._log_softmax_backward_data(g, logp, 1, dtype)


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
            logp, ce, total = _ce_forward(logits, self.y)
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
                g = _ce_backward(one, logp, self.y, total, logits.dtype)
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


# --------------------------------------------------------------------------------------------
# The K frozen-support steps of Alternating.step on an MLP
# --------------------------------------------------------------------------------------------
def _ce_grad(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.cross_entropy(out, y)`` and its gradient in ``out`` (the kernels of autograd)."""
    logp, loss, total = _ce_forward(out, y)
    return loss, _ce_backward(torch.ones_like(loss), logp, y, total, out.dtype)


def _loss_grad(loss_fn: Callable, out: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Any loss: its value and gradient in ``out`` by autograd on the loss alone (the same nodes
    as in the whole graph), or ``None`` when its graph reaches any other leaf (a loss that reads
    the weights, say), whose gradient this would miss. A graph that is exactly the plain
    cross-entropy's (``NllLossBackward0`` with mean reduction, no weight and ignore_index -100, of
    ``LogSoftmaxBackward0`` over dim 1 of ``out``; e.g. a problem's ``loss_fn`` that calls
    ``F.cross_entropy``) is differentiated by the two kernels those nodes call, on the tensors
    they saved, without starting the engine."""
    leaf = out.detach().requires_grad_()
    with torch.enable_grad():
        loss = loss_fn(leaf, y)
    if type(loss) is not torch.Tensor or loss.grad_fn is None:
        return None
    fn = loss.grad_fn
    if (type(fn).__name__ == "NllLossBackward0" and fn._saved_reduction == _MEAN
            and fn._saved_weight is None and fn._saved_ignore_index in (_IGNORE, 2**64 + _IGNORE)):
        nxt = [f for f, _ in fn.next_functions if f is not None]
        lsm = nxt[0] if len(nxt) == 1 else None
        if type(lsm).__name__ == "LogSoftmaxBackward0" and lsm._saved_dim == 1:
            acc = [f for f, _ in lsm.next_functions if f is not None]
            result = lsm._saved_result
            if (len(acc) == 1 and getattr(acc[0], "variable", None) is leaf
                    and result.dtype == leaf.dtype):
                g = _aten.nll_loss_backward(torch.ones_like(loss), fn._saved_self,
                                            fn._saved_target, None, _MEAN, _IGNORE,
                                            fn._saved_total_weight)
                return loss.detach(), _aten._log_softmax_backward_data(g, result, 1, leaf.dtype)
    todo, seen = [fn], set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if hasattr(fn, "variable") and fn.variable is not leaf:
            return None
        todo.extend(f for f, _ in fn.next_functions if f is not None)
    (g,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), g


def _mlp_layers(alt: Any, x: torch.Tensor) -> tuple[list[nn.Module], list[nn.Linear]] | None:
    """``(leading Flatten modules, Linear layers)`` of ``alt.model`` when it is a plain
    ``Sequential(Flatten*, Linear, PHT, Linear, PHT, ..., Linear)`` whose PHT modules are
    ``alt.modules`` and whose parameters all belong to the optimizer; else ``None``."""
    net = alt.model
    if type(net) is not nn.Sequential or not _unhooked(net):
        return None
    mods = list(net)
    k = 0
    while k < len(mods) and type(mods[k]) is nn.Flatten:
        k += 1
    pre, body = mods[:k], mods[k:]
    linears, phts = body[0::2], body[1::2]
    if not (len(body) % 2 == 1 and all(type(m) is nn.Linear for m in linears)
            and all(type(m) is PositiveHardThreshold for m in phts)
            and len(phts) == len(alt.modules)
            and all(a is b for a, b in zip(phts, alt.modules, strict=False))
            and all(_unhooked(m) for m in mods)
            and all(not m.learnable and m._frozen is None and not m._recording
                    for m in phts)):
        return None
    params = list(net.parameters())
    held = {id(p) for g in alt.optimizer.param_groups for p in g["params"]}
    if not (all(_plain_param(p, x.dtype) for p in params) and all(id(p) in held for p in params)
            and len(params) == sum(1 if m.bias is None else 2 for m in linears)):
        return None
    return pre, linears


def alternation_step(alt: Any, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None,
                     model: nn.Module | None, loss_fn: Callable | None) -> torch.Tensor | None:
    """:meth:`~.alternating.Alternating.step` without the autograd engine where it applies (an
    MLP of ``Linear``/PHT layers, CPU float inputs, the built-in cross-entropy or any loss that
    reads only the output), bit-identical to it; ``None`` (nothing done) elsewhere.

    The forward pass is the modules' own (under ``no_grad``); the backward pass calls the kernels
    the engine calls for ``addmm`` (weight ``g.t().mm(h)``, bias ``g.sum([0], keepdim=True)``,
    input ``g.mm(W)``: ``mm_mat1_backward``'s row-major branch) and for the frozen mask
    (``g * mask``); the loss's gradient in the output is the cross-entropy's kernels, or
    autograd on the loss alone (``_loss_grad``). Then, as in ``step``, ``zero_grad``, the
    gradients into ``p.grad`` and the optimizer step; a step whose loss fails ``_loss_grad``'s
    check runs through autograd."""
    opt = alt.optimizer
    if not (_quiet() and (model is None or model is alt.model) and torch.is_grad_enabled()
            and type(x) is torch.Tensor and x.dtype in _FLOATS and x.device.type == "cpu"
            and not x.requires_grad and type(opt).zero_grad is torch.optim.Optimizer.zero_grad
            and (index is None or alt.masks is not None)):
        return None
    layers = _mlp_layers(alt, x)
    if layers is None:
        return None
    pre, linears = layers
    # the built-in loss, or F.cross_entropy itself (a problem's batch_loss): the same call
    builtin = ((loss_fn is None and alt.loss == "cross_entropy")
               or loss_fn is F.cross_entropy)
    if builtin and not _class_targets(y, x.shape[0]):
        return None
    loss_of = alt.loss_fn if loss_fn is None else loss_fn
    with torch.no_grad():
        h0 = x
        for m in pre:
            h0 = m(h0)
    if h0.dim() != 2:
        return None
    masks = None if index is None else [m[index] for m in alt.masks]
    casts: list[torch.Tensor] | None = None
    if masks is not None:
        shapes = [(h0.shape[0], m.out_features) for m in linears[:-1]]
        if len(masks) != len(shapes) or any(tuple(s.shape) != t or s.device.type != "cpu"
               for s, t in zip(masks, shapes, strict=True)):
            return None  # step() raises its own error
        casts = [s.to(h0.dtype) for s in masks]
    wb = [(m.weight, m.bias) for m in linears]
    params = [p for w, b in wb for p in ((w,) if b is None else (w, b))]
    mine = {id(p) for p in params}
    others = [p for g in opt.param_groups for p in g["params"] if id(p) not in mine]
    taus = [m.tau for m in alt.modules]
    last = len(wb) - 1
    first = None
    for step in range(alt.inner_steps):
        if step == 0:
            opt.zero_grad(set_to_none=True)
        else:  # what zero_grad(set_to_none=True) does; the model's grads are replaced below
            for p in others:
                p.grad = None
        record = casts is None
        with torch.no_grad():
            ins, h = [], h0
            if record:
                masks, casts = [], []
            for j, (w, b) in enumerate(wb):
                ins.append(h)
                h = F.linear(h, w, b)
                if j < last:
                    if record:
                        s = h > taus[j]
                        masks.append(s)
                        casts.append(s.to(h.dtype))
                    h = h * casts[j]
            lg = _ce_grad(h, y) if builtin else _loss_grad(loss_of, h, y)
            if lg is not None:
                loss, g = lg
                grads = []
                for j in range(last, -1, -1):
                    w, b = wb[j]
                    if b is not None:
                        grads.append(g.sum([0], keepdim=True).view(b.shape))
                    grads.append(g.t().mm(ins[j]))
                    if j:
                        g = g.mm(w) * casts[j - 1]
        if lg is None:  # run this step through autograd, as step() does
            loss = _autograd_step(alt, x, y, loss_of, None if record else masks)
            if record:
                masks = alt.last_masks
                casts = [s.to(h0.dtype) for s in masks]
        else:
            for p, gp in zip(params, reversed(grads), strict=True):
                p.grad = gp
            alt._opt_step()
        if first is None:
            first = loss
    alt.last_masks = masks
    return first.detach()


def _autograd_step(alt: Any, x: torch.Tensor, y: torch.Tensor, loss_of: Callable,
                   masks: list[torch.Tensor] | None) -> torch.Tensor:
    """One step exactly as ``Alternating.step`` takes it (``masks=None``: the support step)."""
    alt.optimizer.zero_grad(set_to_none=True)
    if masks is None:
        with recording(alt.model, alt.modules) as masks:
            loss = loss_of(alt.model(x), y)
            loss.backward()
        alt.last_masks = masks
    else:
        with frozen_support(alt.model, masks, alt.modules):
            loss = loss_of(alt.model(x), y)
            loss.backward()
    alt._opt_step()
    return loss.detach()
