r"""The PHT alternation in Lightning, with ``trainer.global_step`` counting batches.

One alternation round on a minibatch (our reconstruction of Huang, Kong & Lucey,
arXiv:1712.02501, abstract contribution (iii); :class:`~beyondsgd.methods.pht.Alternating`):
a support step :math:`s_l = 1[z_l(x) > \tau_l]` (one forward pass), then ``K`` optimizer steps
on the masked multilinear network with the supports frozen. That is ``K`` optimizer steps per
batch, so it needs manual optimization, and Lightning counts one ``global_step`` per call of its
wrapped optimizer's ``step``: built on the raw optimizer ``global_step`` stays 0, built on
Lightning's wrapper it counts ``K`` per batch.

:meth:`PHTAlternationMixin.alternation_step` calls Lightning's optimizer **once per batch**,
``self.optimizers().step(closure)``, and runs the alternation inside that closure: the
support step and the first ``K - 1`` weight steps on the raw torch optimizer, then the ``K``-th
step's frozen-support gradient, which Lightning's ``step`` applies. The updates are those of
``Alternating.step`` with the same optimizer (``tests/test_lightning.py`` compares them), and
``global_step`` equals the number of batches. Gradients go through ``self.manual_backward``.

Limits: with ``K > 1`` the ``K - 1`` inner steps bypass Lightning's optimizer hooks (they are the
raw optimizer's), so 16-bit mixed precision with a gradient scaler (``precision="16-mixed"``)
is refused; ``bf16-mixed`` and 32-bit work. Data parallelism (DDP, any strategy with more than
one process) is refused with a ``ValueError``: each inner step is one more backward through the
raw network in the same DDP forward call, which DDP's gradient reducer does not follow, so the
replicas would drift apart silently; for data-parallel training use the registered ``pht_alt``
under ``torchrun`` (``beyondsgd train``), which runs the K steps through the DDP wrapper. In manual
optimization Lightning does not step LR schedulers: call ``self.lr_schedulers().step()`` (e.g.
in ``on_train_epoch_end``).

Example (see ``docs/integrations/lightning/pht_digits.py``)::

    class Net(PHTAlternationMixin, pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False
            self.net = bs.pht(bs.models.mlp(64, [128], 10))
        def training_step(self, batch, batch_idx):
            loss = self.alternation_step(self.net, *batch, inner_steps=5)
            self.log("train_loss", loss)
        def on_train_epoch_end(self):
            self.alternation_solve(self.net, layers="last")   # pht_alt's per-epoch solve
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...methods.base import LossFn
from ...methods.pht import Alternating, frozen_support, recording
from .data import materialize

__all__ = ["PHTAlternationMixin"]


class PHTAlternationMixin:
    """LightningModule mixin for the PHT alternation under manual optimization (module
    docstring). Put it first: ``class Net(PHTAlternationMixin, pl.LightningModule)``, and set
    ``self.automatic_optimization = False``. ``self.alternating`` is the
    :class:`~beyondsgd.methods.pht.Alternating` on the raw optimizer (built by the first
    :meth:`alternation_step`); ``self.pht_density`` the fraction of active units of the last
    support step."""

    alternating: Alternating | None = None
    pht_density: float | None = None

    def _alternating(self, net: nn.Module, loss: str | LossFn, inner_steps: int) -> Alternating:
        world = int(getattr(self.trainer, "world_size", 1) or 1)  # type: ignore[attr-defined]
        if world > 1:
            raise ValueError(
                f"PHTAlternationMixin does not support data parallelism (trainer.world_size="
                f"{world}): its support step and K={inner_steps} weight steps per batch run "
                f"forward and backward passes through the raw network inside one training "
                f"step, which DDP does not synchronise (untested, refused); train on "
                f"one process (devices=1), or use the registered pht_alt under torchrun "
                f"(beyondsgd train --method pht_alt), which supports DDP")
        if getattr(self, "automatic_optimization", True):
            raise RuntimeError("the PHT alternation takes K optimizer steps per batch: set "
                               "self.automatic_optimization = False in __init__")
        lopt = self.optimizers()  # type: ignore[attr-defined]
        if isinstance(lopt, (list, tuple)):
            raise ValueError(f"alternation_step needs exactly one optimizer, "
                             f"configure_optimizers returned {len(lopt)}")
        raw = lopt.optimizer
        alt = self.alternating
        if alt is None or alt.model is not net or alt.optimizer is not raw \
                or alt.loss != loss or alt.inner_steps != inner_steps:
            alt = Alternating(net, raw, loss, inner_steps)  # checks net, optimizer, K
            self.alternating = alt
        precision = str(getattr(self.trainer, "precision", ""))  # type: ignore[attr-defined]
        if inner_steps > 1 and precision.startswith("16"):
            raise ValueError(f"precision={precision!r}: the K-1 inner steps would bypass the "
                             "gradient scaler; use precision='bf16-mixed' or 32")
        return alt

    def alternation_step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         inner_steps: int = 5, loss: str | LossFn = "cross_entropy"
                         ) -> torch.Tensor:
        """One alternation round on ``(x, y)`` with one Lightning optimizer step; returns the
        loss before it (detached), as ``Alternating.step`` does.

        ``net``: the PHT network (``bs.pht(model)``); ``inner_steps``: ``K >= 1``;
        ``loss``: ``"cross_entropy"``, ``"mse"`` or ``fn(output, target)``."""
        alt = self._alternating(net, loss, inner_steps)
        raw, loss_of = alt.optimizer, alt.loss_fn
        backward = self.manual_backward  # type: ignore[attr-defined]
        out: dict[str, Any] = {}

        def closure() -> torch.Tensor:
            raw.zero_grad(set_to_none=True)
            with recording(net) as masks:  # support step, sharing the first forward pass
                first = loss_of(net(x), y)
                backward(first)
            out["masks"], out["first"] = masks, first
            if inner_steps == 1:
                return first  # Lightning's step applies weight step 1
            raw.step()  # weight step 1
            with frozen_support(net, masks):
                for _ in range(inner_steps - 2):  # weight steps 2 .. K-1
                    raw.zero_grad(set_to_none=True)
                    backward(loss_of(net(x), y))
                    raw.step()
                raw.zero_grad(set_to_none=True)  # step K's gradient; Lightning applies it
                backward(loss_of(net(x), y))
            return first

        self.optimizers().step(closure=closure)  # type: ignore[attr-defined]
        masks, first = out["masks"], out["first"]
        alt.last_masks = masks
        with torch.no_grad():
            on = sum(m.sum() for m in masks)
            self.pht_density = float(on) / max(sum(m.numel() for m in masks), 1)
        return first.detach()

    def alternation_solve(self, net: nn.Module, layers: str | Sequence[int] = "last",
                          solver: str = "auto", iters: int = 20, damping: float = 1e-3,
                          log: bool = True) -> list[dict[str, Any]]:
        """The registered ``pht_alt``'s per-epoch layer solve (``layer_solve``,
        ``layer_solve_on="epoch"``):
        :meth:`Alternating.solve` of ``layers`` on the whole training set (read once from the
        trainer's train dataloader, in dataset order), each layer kept only if the real
        network's training loss does not rise. Call it from ``on_train_epoch_end``; logs
        ``pht/loss_before``, ``pht/loss_after`` and ``pht/reverted`` (``log=True``)."""
        if self.alternating is None or self.alternating.model is not net:
            raise RuntimeError("call alternation_step(net, ...) before alternation_solve(net)")
        rows = getattr(self, "_pht_rows", None)
        if rows is None:
            rows = materialize(self.trainer.train_dataloader, self.device)  # type: ignore
            self._pht_rows = rows
        events = self.alternating.solve(*rows, layers, solver=solver, iters=iters,
                                        damping=damping)
        if log and events:
            self.log_dict({  # type: ignore[attr-defined]
                "pht/loss_before": events[0]["loss_before"],
                "pht/loss_after": events[-1]["loss_after"],
                "pht/reverted": float(sum(e["reverted"] for e in events))},
                on_step=False, on_epoch=True)
        return events
