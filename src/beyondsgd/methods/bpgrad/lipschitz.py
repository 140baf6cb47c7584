"""Choosing BPGrad's :math:`L`: the pairwise estimator
:math:`|f_i - f_j| / \\|w_i - w_j\\|` over the iterates of a short run (the official code's
unused ``Estimate_L`` helper; digest, "Choosing L")."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..base import Batch, LossFn


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
