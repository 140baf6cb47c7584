"""Structural sparsity tools for DessiLBI (SLBI): masks, the selection path, pruning, export.

Everything here works on *unit masks*: a dict ``{parameter name: bool tensor}`` where the tensor
is either one flag per output unit (a conv filter or a Linear row/neuron; shape ``(rows,)``) or
one flag per weight (shape of the parameter, element-wise lasso). Unit masks come from the
support of SLBI's Γ (``gamma_masks``), from the selection path (``path_order_masks``), from
magnitude pruning (``magnitude_masks``) or at random (``random_masks``).

* ``gamma_masks(model, opt)`` / ``sparse_model(model, opt)``: the sparse model W ⊙ 1[Γ ≠ 0]
  (Fu et al., ICML 2020, Sec. 3; the official code's ``w_star``).
* ``support_sizes(masks)``: selected units per layer and in total.
* ``SelectionPath``: the epoch at which each unit first entered supp(Γ) (the regularisation path,
  "simple to complex"); ``path_order_masks`` prunes by the official pruning utilities' score
  ‖W_unit‖ − entry epoch (default, ``order="norm_minus_epoch"``) or lexicographically, earliest
  entry first and weight norm breaking ties (``order="entry_then_norm"``).
* ``masked_model(model, masks)`` zeroes the masked weights and, by default, the biases of the
  units a unit mask removes (the official prune's ``prune_bias=True`` for filters); element masks
  leave biases alone (the official prune of FC weights).
* ``export.export_pruned(model, masks)``: a physically smaller ``nn.Sequential`` (removed
  filters/neurons and the matching input channels/columns of the next layer) that computes the
  same function as ``masked_model(model, masks, zero_bias=False)``; constant outputs of removed
  units (their bias through the activation) are folded into the next layer's bias where that is
  exact
  (``removed_bias="zero"``: the function of ``masked_model(model, masks, zero_bias=True)``).
* ``fix_masks(model, masks)``: zero masked weights and keep them zero during training (gradient
  hooks): the retraining step of the winning-ticket procedure (reset to the initial weights,
  keep the support of an early epoch, retrain).

Supported models: ``nn.Sequential`` of ``Linear``/``Conv1d``/``Conv2d`` with element-wise
activations, ``Dropout``, ``MaxPool``/``AvgPool``, ``Flatten`` (and ``Unflatten`` before the first
weight layer), i.e. every model in ``beyondsgd.models``, the official DessiLBI LeNet-5 included
(``lenet5_official``: its conv3 filters are pruned as filters and the Linear layer after the
``Flatten`` loses the matching inputs). Batch norm and residual blocks are not.

Example::

    >>> import torch
    >>> from beyondsgd.models import mlp
    >>> from beyondsgd.methods.slbi.sparsity import masked_model
    >>> from beyondsgd.methods.slbi.export import export_pruned
    >>> net = mlp(8, [16], 3, seed=0)
    >>> masks = {"1.weight": torch.arange(16) % 2 == 0}      # keep 8 of 16 hidden neurons
    >>> small = export_pruned(net, masks)
    >>> small[1].out_features, small[3].in_features
    (8, 8)
    >>> x = torch.randn(4, 8)
    >>> torch.allclose(small(x), masked_model(net, masks, zero_bias=False)(x), atol=1e-6)
    True
    >>> zero = export_pruned(net, masks, removed_bias="zero")   # removed units' biases zeroed:
    >>> torch.allclose(zero(x), masked_model(net, masks)(x), atol=1e-6)   # the default here
    True
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

Masks = dict[str, torch.Tensor]

ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Softplus,
               nn.Identity, nn.Dropout, nn.ReLU6, nn.Hardtanh, nn.Mish)
POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


# --------------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------------
def expand_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Broadcast a unit mask (one flag per row) or an element mask to a weight of ``shape``."""
    shape = tuple(shape)
    if tuple(mask.shape) == shape:
        return mask
    if mask.dim() == 1 and mask.shape[0] == shape[0]:
        return mask.view(-1, *([1] * (len(shape) - 1))).expand(shape)
    raise ValueError(f"mask of shape {tuple(mask.shape)} fits neither the rows nor the elements "
                     f"of a weight of shape {shape}")


def row_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """One flag per output unit: a unit mask as is; an element mask -> rows with any kept weight."""
    shape = tuple(shape)
    if len(shape) > 1 and mask.dim() == 1 and mask.shape[0] == shape[0]:
        return mask.bool()
    if tuple(mask.shape) == shape:
        return mask.bool().reshape(shape[0], -1).any(dim=1)
    raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit a weight of shape {shape}")


def _params(model: nn.Module) -> dict[str, nn.Parameter]:
    return dict(model.named_parameters())


def check_names(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, nn.Parameter]:
    params = _params(model)
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"masks name parameters the model does not have: {unknown}; "
                         f"the model's parameters: {sorted(params)}")
    return params


def gamma_masks(model: nn.Module, optimizer: Any) -> Masks:
    """Element masks 1[Γ ≠ 0] of every coupled parameter of ``optimizer`` (an ``SLBI``), keyed by
    the parameter's name in ``model``. Before the first step Γ = 0, so every mask is empty."""
    return {name: optimizer.gamma(p) != 0
            for name, p in model.named_parameters() if optimizer.structure(p) is not None}


def unit_masks_from_gamma(model: nn.Module, optimizer: Any) -> Masks:
    """Unit masks of supp(Γ): one flag per filter/neuron for grouped parameters, one per weight
    for element-wise (lasso) parameters."""
    out: Masks = {}
    for name, p in model.named_parameters():
        s = optimizer.structure(p)
        if s is None:
            continue
        g = optimizer.gamma(p) != 0
        out[name] = g if s == "element" else g.reshape(g.shape[0], -1).any(dim=1)
    return out


ZERO_BIAS = ("units", True, False)


def zeroes_bias(mask: torch.Tensor, shape: torch.Size | tuple[int, ...],
                zero_bias: bool | str) -> bool:
    """Whether ``masked_model(..., zero_bias)`` zeroes the biases of the units ``mask`` removes:
    ``"units"`` for a unit mask (one flag per row: whole filters/neurons pruned), ``True`` for
    any mask (also rows an element mask empties), ``False`` never."""
    if zero_bias == "units":
        return len(shape) > 1 and mask.dim() == 1 and mask.shape[0] == shape[0]
    return bool(zero_bias)


@torch.no_grad()
def masked_model(model: nn.Module, masks: Mapping[str, torch.Tensor],
                 zero_bias: bool | str = "units") -> nn.Module:
    """A deep copy of ``model`` with every masked weight set to zero: W ⊙ mask, and removed
    units' biases zeroed as ``zero_bias`` says:

    * ``"units"`` (default; the official ``prune_layer_by_order_*(..., prune_bias=True)`` of
      the LeNet demo): a unit mask (one flag per filter/neuron) zeroes the biases of the units
      it removes, so they are removed entirely rather than left emitting act(bias); an element
      mask leaves every bias (the official prune of FC weights does not touch them);
    * ``True``: also the bias of a row that an element mask empties;
    * ``False``: no bias is touched (the sparse model W ⊙ 1[Γ ≠ 0], the official ``w_star``).
    """
    if not (isinstance(zero_bias, bool) or zero_bias == "units"):
        raise ValueError(f"zero_bias must be 'units', True or False, got {zero_bias!r}")
    params = check_names(model, masks)
    out = copy.deepcopy(model)
    new = _params(out)
    for name, m in masks.items():
        w = new[name]
        w.mul_(expand_mask(m.to(w.device), w.shape).to(w.dtype))
        if zeroes_bias(m, params[name].shape, zero_bias):
            bname = name.rsplit(".", 1)[0] + ".bias" if "." in name else "bias"
            if bname in new and new[bname] is not None:
                keep = row_mask(m.to(w.device), params[name].shape)
                new[bname].mul_(keep.to(w.dtype))
    return out


def sparse_model(model: nn.Module, optimizer: Any) -> nn.Module:
    """The sparse model W ⊙ 1[Γ ≠ 0] (a copy; ``model`` is untouched). Uncoupled parameters
    (biases, and any weight without a Γ) are kept dense, as in the paper and the code."""
    return masked_model(model, gamma_masks(model, optimizer), zero_bias=False)


def support_sizes(masks: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Number of selected units per parameter name, plus ``"total"``."""
    sizes = {name: int(m.sum()) for name, m in masks.items()}
    sizes["total"] = sum(sizes.values())
    return sizes


def mask_density(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of the masked parameters' weights that are kept."""
    params = check_names(model, masks)
    kept = total = 0
    for name, m in masks.items():
        e = expand_mask(m, params[name].shape)
        kept += int(e.sum())
        total += e.numel()
    return kept / max(total, 1)


# --------------------------------------------------------------------------------------------
# The selection path
# --------------------------------------------------------------------------------------------
class SelectionPath:
    """Epoch at which each unit first entered the support (``inf``: never), plus the support size
    recorded at every update. ``update(epoch, masks)`` returns the units that entered and left.

    The official code records the same "selection order" once per epoch (with a sentinel 2000 for
    never-selected weights); here ``inf`` is used and selected negative weights count too (the code
    tests ``w_star > 0`` for FC layers, which misses them).
    """

    def __init__(self) -> None:
        self.entry: dict[str, torch.Tensor] = {}
        self.last: dict[str, torch.Tensor] = {}
        self.sizes: list[tuple[int, dict[str, int]]] = []

    @torch.no_grad()
    def update(self, epoch: int, masks: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        entered: dict[str, torch.Tensor] = {}
        left: dict[str, torch.Tensor] = {}
        for name, m in masks.items():
            m = m.detach().bool().cpu()
            if name not in self.entry:
                self.entry[name] = torch.full(m.shape, math.inf, dtype=torch.float64)
                self.last[name] = torch.zeros(m.shape, dtype=torch.bool)
            new = m & torch.isinf(self.entry[name])
            self.entry[name][new] = float(epoch)
            entered[name] = (m & ~self.last[name]).nonzero().flatten() if m.dim() == 1 else \
                (m & ~self.last[name]).sum()
            left[name] = (~m & self.last[name]).nonzero().flatten() if m.dim() == 1 else \
                (~m & self.last[name]).sum()
            self.last[name] = m.clone()
        sizes = support_sizes(masks)
        self.sizes.append((int(epoch), sizes))
        return {"entered": entered, "left": left, "sizes": sizes}

    def support_at(self, epoch: float) -> Masks:
        """Units that had entered by ``epoch`` (first entry; units that later left count)."""
        return {name: e <= epoch for name, e in self.entry.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"entry": {k: v.clone() for k, v in self.entry.items()},
                "last": {k: v.clone() for k, v in self.last.items()},
                "sizes": [(e, dict(s)) for e, s in self.sizes]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.entry = {k: v.clone() for k, v in state["entry"].items()}
        self.last = {k: v.clone() for k, v in state["last"].items()}
        self.sizes = [(int(e), dict(s)) for e, s in state["sizes"]]


# --------------------------------------------------------------------------------------------
# Pruning masks
# --------------------------------------------------------------------------------------------
def _unit_norms(w: torch.Tensor, mask_shape: torch.Size) -> torch.Tensor:
    w = w.detach()
    if tuple(mask_shape) == tuple(w.shape):
        return w.abs()
    return torch.linalg.vector_norm(w.reshape(w.shape[0], -1), dim=1)


def _keep_count(n: int, ratio: float) -> int:
    if not 0.0 <= ratio <= 1.0 or isinstance(ratio, bool):
        raise ValueError(f"pruning ratio must be in [0, 1], got {ratio!r}")
    return n - int(round(ratio * n))


def _topk_mask(scores_order: torch.Tensor, n: int, k: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[scores_order[:k]] = True
    return mask


ORDERS = ("norm_minus_epoch", "entry_then_norm")
NEVER_EPOCH = 2000.0   # the official code's entry epoch of a unit never selected


def path_scores(entry: torch.Tensor, norms: torch.Tensor, order: str = "norm_minus_epoch"
                ) -> torch.Tensor:
    """Pruning scores of units (higher: kept first) from their entry epochs and weight norms.

    ``"norm_minus_epoch"``: the official pruning utilities' score ‖W_unit‖₂ − (entry epoch)
    (per filter, or |W_ij| − epoch per weight), a unit never selected counting as entering at
    epoch 2000 as in the official code (``inf`` in :class:`SelectionPath`). Early entry
    dominates, but a filter one epoch later with a norm larger by more than 1 ranks higher.
    ``"entry_then_norm"``: earliest entry first, larger norm breaking ties (lexicographic; a
    rank, not a score: ``-rank`` is returned).
    """
    entry, norms = entry.flatten().double(), norms.flatten().double()
    if order == "norm_minus_epoch":
        return norms - torch.where(torch.isinf(entry), torch.full_like(entry, NEVER_EPOCH),
                                   entry)
    if order == "entry_then_norm":
        idx = torch.sort(-norms, stable=True).indices             # larger norm first
        idx = idx[torch.sort(entry[idx], stable=True).indices]    # then earlier entry
        score = torch.empty_like(norms)
        score[idx] = -torch.arange(len(idx), dtype=torch.float64)
        return score
    raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def path_order_masks(model: nn.Module, path: SelectionPath, ratio: float | Mapping[str, float],
                     names: Iterable[str] | None = None,
                     order: str = "norm_minus_epoch") -> Masks:
    """Prune ``ratio`` of the units of each layer by the selection path: the units are ranked by
    :func:`path_scores` (default ``order="norm_minus_epoch"``, the official score ‖W_unit‖ −
    entry epoch; ``"entry_then_norm"``: earliest entry first, larger norm breaking ties) and
    the top ``n - round(ratio·n)`` are kept (ties: the earlier unit). ``ratio`` may be one
    number or one per parameter name. The official code keeps the units above the ratio's
    percentile of the scores (``np.percentile``, linear): the same units whenever the scores
    are distinct and ``floor((n-1)·ratio) + 1 = round(n·ratio)``, as for its demo (120 conv3
    filters, 10080 fc1 weights at 80 %)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    params = _params(model)
    names = list(names) if names is not None else list(path.entry)
    out: Masks = {}
    for name in names:
        if name not in path.entry:
            raise ValueError(f"the path has no record of {name!r}; recorded: {sorted(path.entry)}")
        r = ratio[name] if isinstance(ratio, Mapping) else ratio
        entry = path.entry[name].flatten()
        norms = _unit_norms(params[name], path.entry[name].shape).flatten().cpu().double()
        ranked = torch.sort(-path_scores(entry, norms, order), stable=True).indices
        out[name] = _topk_mask(ranked, entry.numel(), _keep_count(entry.numel(), r)).view(
            path.entry[name].shape)
    return out


def magnitude_masks(model: nn.Module, sizes: Mapping[str, int],
                    unit: str = "row") -> Masks:
    """Keep, per named weight, the ``sizes[name]`` units of largest norm (``unit="row"``: filters /
    neurons by L2 norm; ``unit="element"``: weights by absolute value). The magnitude-pruning
    baseline at equal size."""
    if unit not in ("row", "element"):
        raise ValueError(f"unit must be 'row' or 'element', got {unit!r}")
    params = check_names(model, dict.fromkeys(sizes, torch.zeros(0)))
    out: Masks = {}
    for name, k in sizes.items():
        w = params[name].detach().cpu()
        norms = w.abs().flatten() if unit == "element" else _unit_norms(w, (w.shape[0],))
        if not 0 <= k <= norms.numel():
            raise ValueError(f"cannot keep {k} of {norms.numel()} units of {name!r}")
        order = torch.sort(-norms.double(), stable=True).indices
        m = _topk_mask(order, norms.numel(), int(k))
        out[name] = m.view(w.shape) if unit == "element" else m
    return out


def random_masks(like: Mapping[str, torch.Tensor], generator: torch.Generator | None = None
                 ) -> Masks:
    """Random masks with exactly as many kept units per name as ``like`` (same shapes)."""
    out: Masks = {}
    for name, m in like.items():
        n, k = m.numel(), int(m.sum())
        perm = torch.randperm(n, generator=generator)
        out[name] = _topk_mask(perm, n, k).view(m.shape)
    return out


# --------------------------------------------------------------------------------------------
# Retraining with fixed masks (winning tickets)
# --------------------------------------------------------------------------------------------
class MaskHandle:
    """Gradient hooks that keep masked weights at zero; ``remove()`` detaches them."""

    def __init__(self, handles: list[Any]):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


@torch.no_grad()
def fix_masks(model: nn.Module, masks: Mapping[str, torch.Tensor],
              zero_bias: bool = True) -> MaskHandle:
    """Zero the masked weights of ``model`` in place and mask their gradients from now on, so any
    first-order optimizer (SGD with momentum and weight decay, Adam) keeps them exactly zero.
    With ``zero_bias`` (default) the biases of removed units are zeroed and frozen too, so the
    retrained network is the physically smaller one."""
    params = check_names(model, masks)
    handles = []
    for name, m in masks.items():
        w = params[name]
        e = expand_mask(m.to(w.device), w.shape).to(w.dtype).contiguous()
        w.mul_(e)
        handles.append(w.register_hook(lambda g, e=e: g * e))
        bname = name.rsplit(".", 1)[0] + ".bias" if "." in name else "bias"
        if zero_bias and bname in params:
            b = params[bname]
            keep = row_mask(m.to(w.device), w.shape).to(b.dtype)
            b.mul_(keep)
            handles.append(b.register_hook(lambda g, k=keep: g * k))
    return MaskHandle(handles)


def ticket(init_model: nn.Module, masks: Mapping[str, torch.Tensor],
           zero_bias: bool = True) -> tuple[nn.Module, MaskHandle]:
    """The winning-ticket network: a copy of the *initial* model with ``masks`` fixed (see
    ``fix_masks``). Train it with any optimizer; masked weights stay zero."""
    model = copy.deepcopy(init_model)
    return model, fix_masks(model, masks, zero_bias=zero_bias)
