"""The alternation of support steps and weight steps, usable in any training loop.

Our reconstruction of the abstract's contribution (iii); see ``pht/__init__.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..base import LossFn
from .activation import PositiveHardThreshold, pht_modules
from .fastpath import alternation_step
from .flatadam import _FlatAdam
from .solvers import _loss, solvable_layers, solve_layer
from .support import _record_chunked, frozen_support, recording


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

    :meth:`solve` runs block-coordinate solves of chosen layers, one layer at a time under frozen
    supports (see :func:`solve_layer`), and keeps each only if the real network's loss (supports
    recomputed, :meth:`true_loss`) did not rise.
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
        >>> info = alt.solve(x, y, layers="last")      # last-layer solve (L-BFGS for CE)
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
        own = {id(p) for p in model.parameters()}
        held = [p for g in optimizer.param_groups for p in g["params"]]
        if own and not any(id(p) in own for p in held):
            raise ValueError(
                f"the optimizer ({type(optimizer).__name__}, {len(held)} parameter tensors) "
                f"holds none of the model's {len(own)} parameter tensors, so the weight step "
                f"would train nothing: build it from this model, e.g. "
                f"torch.optim.Adam(model.parameters(), lr=1e-3) (after pht(model), which swaps "
                f"activations in place and keeps the parameters)")
        if any(m.learnable for m in mods):
            raise ValueError("Alternating holds tau fixed (the support step is defined by tau); "
                             "got learnable=True PHT modules: learn tau with pht_sgd/pht_adam")
        self.model, self.optimizer, self.inner_steps = model, optimizer, inner_steps
        self.loss, self.loss_fn = loss, _loss(loss)
        self.max_mask_bytes = max_mask_bytes
        self.modules = mods  # the PHT modules, found once (the model's structure is fixed)
        self.masks: list[torch.Tensor] | None = None  # cached supports of the training set
        self.last_masks: list[torch.Tensor] | None = None  # supports of the last step's batch
        self._density: torch.Tensor | None = None
        self._density_of: list[torch.Tensor] | None = None
        # the weight step's optimizer.step(), on flat buffers for Adam (bit-identical)
        self._opt_step = (_FlatAdam(optimizer).step if _FlatAdam.eligible(optimizer)
                          else optimizer.step)

    def __repr__(self) -> str:
        mods = pht_modules(self.model)
        taus = sorted({float(m.tau) for m in mods})
        tau = taus[0] if len(taus) == 1 else taus
        loss = self.loss if isinstance(self.loss, str) else getattr(
            self.loss, "__name__", type(self.loss).__name__)
        groups = self.optimizer.param_groups
        lr = groups[0].get("lr") if groups else None
        masks = ("none" if self.masks is None
                 else f"{self.masks[0].shape[0]} rows, {sum(m.numel() for m in self.masks)} B")
        return (f"Alternating(model={type(self.model).__name__} with {len(mods)} PHT "
                f"(tau={tau}), optimizer={type(self.optimizer).__name__}(lr={lr}), "
                f"loss={loss!r}, inner_steps={self.inner_steps}, cached_masks={masks})")

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

    @property
    def density(self) -> torch.Tensor | None:
        """Fraction of active units at the last support step (computed when read, not on
        every step)."""
        masks = self.last_masks
        if masks is None:
            return None
        if self._density_of is not masks:
            with torch.no_grad():
                on = sum(m.sum() for m in masks)
                self._density = on / max(sum(m.numel() for m in masks), 1)
            self._density_of = masks
        return self._density

    # ---- weight step -----------------------------------------------------------------------
    def step(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None,
             model: nn.Module | None = None, loss_fn: LossFn | None = None) -> torch.Tensor:
        """One alternation round on ``(x, y)``; returns the loss before it (detached).

        ``model``: the module to run the steps through, e.g. a ``DistributedDataParallel``
        wrapper of ``self.model`` (data parallelism: each rank's masks cover its own samples,
        the gradients are averaged by DDP); ``loss_fn`` overrides the loss of the steps."""
        fast = alternation_step(self, x, y, index, model, loss_fn)  # no autograd, same bits
        if fast is not None:
            return fast
        opt = self.optimizer
        mods = self.modules if model is None or model is self.model else None
        model = self.model if model is None else model
        loss_of = self.loss_fn if loss_fn is None else loss_fn
        if index is None:
            opt.zero_grad(set_to_none=True)
            with recording(model, mods) as masks:
                first = loss_of(model(x), y)
                first.backward()
            self._opt_step()
            start = 1
        else:
            if self.masks is None:
                raise RuntimeError("step(index=...) uses cached supports: call refresh() first")
            masks = [m[index] for m in self.masks]
            start, first = 0, None
        with frozen_support(model, masks, mods):
            for _ in range(start, self.inner_steps):
                opt.zero_grad(set_to_none=True)
                loss = loss_of(model(x), y)
                loss.backward()
                self._opt_step()
                if first is None:
                    first = loss
        self.last_masks = masks
        return first.detach()

    # ---- layer solves ----------------------------------------------------------------------
    _TRUE_LOSS_CHUNK = 8192

    @torch.no_grad()
    def true_loss(self, x: torch.Tensor, y: torch.Tensor, chunk: int = _TRUE_LOSS_CHUNK
                  ) -> float:
        """The real network's loss on ``(x, y)``: a plain forward pass, so every support is
        recomputed from the current weights (nothing frozen). Built-in losses are means over
        rows and are evaluated in chunks of ``chunk`` rows; a callable loss on the whole batch."""
        n = x.shape[0]
        if callable(self.loss) or n <= chunk:
            return float(self.loss_fn(self.model(x), y))
        total = 0.0
        for i in range(0, n, chunk):
            part = self.loss_fn(self.model(x[i:i + chunk]), y[i:i + chunk])
            total += float(part) * min(chunk, n - i)
        return total / n

    def solve(self, x: torch.Tensor, y: torch.Tensor, layers: str | Sequence[int] = "last",
              masks: Sequence[torch.Tensor] | None = None, solver: str = "auto", iters: int = 20,
              damping: float = 0.0, max_bytes: int = 2**28) -> list[dict[str, Any]]:
        """Block-coordinate solves of single layers (top layer first), each under frozen
        supports, each kept only if it does not raise the real network's loss.

        A hidden layer's solve is a convex problem only while the supports of the layers above it
        stay frozen; in the real network they move with the new weights, so its true loss can
        rise although the frozen-support loss fell (measured: MSE 0.47 -> 0.63 and mnist1d
        cross-entropy 2.14 -> 5.62 after ``layers="all"``). Each solve is therefore followed by
        a plain forward pass on ``(x, y)`` (:meth:`true_loss`, supports recomputed); the layer is
        restored exactly when its true loss rose (or is not finite). The joint problem across
        layers is never solved.

        How close each solve gets: MSE on a ``Linear`` layer is solved exactly (least
        squares); cross-entropy and conv layers run ``iters`` L-BFGS iterations from the current
        weights, which stop short of the convex optimum (measured on mnist1d_mlp: 20 iterations
        end 9-16 % above the objective 500 reach; docs/methods/pht.md).

        Args:
            layers: ``"last"``, ``"all"`` (every solvable layer, from the top down) or indices
                into the ``nn.Sequential`` model.
            masks: supports to freeze in every solve (e.g. those of the support step). ``None``:
                recorded from the current weights before each layer's solve (refused beyond
                ``max_mask_bytes``), so each solve starts at the real network's loss; a layer
                followed by no PHT module needs none and is solved on its real inputs.
            solver, iters, damping, max_bytes: see :func:`solve_layer`.

        Returns one dict per solved layer: ``layer``; ``loss_before``/``loss_after``, the real
        network's loss on ``(x, y)`` before and after (``loss_after <= loss_before`` always);
        ``frozen_loss_before``/``frozen_loss_after``, the loss of the frozen-support problem the
        solve minimised; ``loss_solved``, the real network's loss with the solved layer (above
        ``loss_before`` exactly when ``reverted``, i.e. when the layer was restored).
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
            bad = [i for i in todo if i not in solvable]
            if bad:
                raise ValueError(f"layers {bad} cannot be solved exactly; this model's solvable "
                                 f"layers (Linear/Conv followed only by modules linear under "
                                 f"frozen support): {solvable}")
        if not todo:
            raise ValueError("the model has no layer that can be solved exactly")
        out = []
        true: float | None = None
        # true_loss evaluates built-in losses on the whole batch up to this many rows: then the
        # loss a free-tail solve reports on the layer's real inputs *is* the real loss, computed
        # by the same operations, and the two plain forward passes around it are skipped
        whole = callable(self.loss) or x.shape[0] <= self._TRUE_LOSS_CHUNK
        for i in todo:
            layer = self.model[i]
            saved = [p.detach().clone() for p in layer.parameters()]
            free_tail = not any(isinstance(m, PositiveHardThreshold) for m in self.model[i + 1:])
            if masks is None and free_tail:
                # nothing after this layer has a support: solve on its real inputs
                if true is None and not whole:
                    true = self.true_loss(x, y)
                with torch.no_grad():
                    feats = self.model[:i](x)
                info = solve_layer(nn.Sequential(*self.model[i:]), 0, feats, y, self.loss, [],
                                   solver, iters, damping, max_bytes)
                if true is None:
                    true = info["loss_before"]
                solved = info["loss_after"] if whole else self.true_loss(x, y)
            else:
                if true is None:
                    true = self.true_loss(x, y)
                frozen = masks if masks is not None else _record_chunked(self.model, x,
                                                                         self.max_mask_bytes)
                info = solve_layer(self.model, i, x, y, self.loss, frozen, solver, iters,
                                   damping, max_bytes)
                solved = self.true_loss(x, y)
            after = solved
            reverted = not (math.isfinite(solved) and solved <= true)
            if reverted:
                with torch.no_grad():
                    for p, s in zip(layer.parameters(), saved, strict=True):
                        p.copy_(s)
                after = true
            out.append({"layer": i, "loss_before": true, "loss_after": after,
                        "frozen_loss_before": info["loss_before"],
                        "frozen_loss_after": info["loss_after"], "loss_solved": solved,
                        "reverted": reverted})
            true = after
        return out

    # ---- checkpoint ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "masks": self.masks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.masks = state.get("masks")

