"""Physical pruning for DessiLBI's masks: :func:`export_pruned` builds a smaller ``nn.Sequential``
without the removed filters/neurons (their effect on the next layer folded into its bias, or
zeroed), and :func:`count_parameters` counts what is left."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .sparsity import ELEMENTWISE, POOLS, WEIGHT_LAYERS, check_names, expand_mask, row_mask


# --------------------------------------------------------------------------------------------
# Physical pruning
# --------------------------------------------------------------------------------------------
def _all_zero_padding(m: nn.Module) -> bool:
    pad = m.padding
    if isinstance(pad, str):
        return pad == "valid"
    return all(int(p) == 0 for p in (pad if isinstance(pad, tuple) else (pad,)))


@torch.no_grad()
def export_pruned(model: nn.Sequential, masks: Mapping[str, torch.Tensor],
                  removed_bias: str = "fold") -> nn.Sequential:
    """A physically smaller copy of ``model`` without the removed filters/neurons.

    A unit (conv filter, Linear row) is removed when its mask keeps none of its weights; its row
    of the weight and its bias go, and so do the matching input channels (conv) or columns
    (Linear, through ``Flatten`` as blocks of spatial positions) of the next weight layer.
    Element masks also zero the single weights they drop.

    A removed unit still emits the constant act(bias) in ``masked_model(model, masks,
    zero_bias=False)``;
    ``removed_bias="fold"`` adds that constant's contribution to the next layer's bias, which is
    exact for Linear layers and unpadded convolutions (a padded convolution of a non-zero constant
    is not constant at the borders: then a ``ValueError`` asks for ``removed_bias="zero"``).
    ``removed_bias="zero"`` treats removed units' biases as zero, matching
    ``masked_model(model, masks, zero_bias=True)`` (and the default ``zero_bias="units"`` when
    every mask is a unit mask). The last weight layer's outputs cannot be
    removed. The result computes the same function as the masked model (``tests/test_sparsity``).
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"export_pruned needs an nn.Sequential, got {type(model).__name__}")
    if removed_bias not in ("fold", "zero"):
        raise ValueError(f"removed_bias must be 'fold' or 'zero', got {removed_bias!r}")
    check_names(model, masks)
    mods = list(model.named_children())
    weight_idx = [i for i, (_, m) in enumerate(mods) if isinstance(m, WEIGHT_LAYERS)]
    last_weight = weight_idx[-1] if weight_idx else -1
    layers: list[nn.Module] = []
    keep_in: torch.Tensor | None = None     # kept input channels/features of the next layer
    const: torch.Tensor | None = None       # value each input channel emits if removed
    flattened = False                       # a Flatten sits between conv channels and a Linear
    for i, (name, m) in enumerate(mods):
        if isinstance(m, WEIGHT_LAYERS):
            w = m.weight.detach().clone()
            b = m.bias.detach().clone() if m.bias is not None else None
            wname = f"{name}.weight"
            mk = masks[wname].to(w.device) if wname in masks else None
            if mk is not None:              # the layer's own mask first: W * mask
                w = w * expand_mask(mk, w.shape).to(w.dtype)
            if keep_in is not None:
                removed = ~keep_in
                c = const[removed]
                if isinstance(m, nn.Linear):
                    if flattened:
                        spatial = w.shape[1] // keep_in.numel()
                        if spatial * keep_in.numel() != w.shape[1]:
                            raise ValueError(f"layer {name}: {w.shape[1]} inputs are not a "
                                             f"multiple of {keep_in.numel()} channels")
                        cols = keep_in.repeat_interleave(spatial)
                        cvals = const.repeat_interleave(spatial)[~cols]
                    else:
                        cols, cvals = keep_in, c
                    contrib = w[:, ~cols] @ cvals.to(w.dtype)
                    w = w[:, cols]
                else:
                    if flattened:
                        raise ValueError(f"layer {name}: a convolution after Flatten")
                    if torch.any(c != 0) and not _all_zero_padding(m):
                        raise ValueError(
                            f"layer {name} is a padded convolution after removed units that emit "
                            f"non-zero constants; folding them is not exact; use "
                            f"removed_bias='zero' (and masked_model(..., zero_bias=True))")
                    contrib = w[:, removed].flatten(2).sum(2) @ c.to(w.dtype)
                    w = w[:, keep_in]
                if torch.any(contrib != 0):
                    b = contrib if b is None else b + contrib
            rows = None
            if mk is not None:
                rows = row_mask(mk, m.weight.shape)
                if i == last_weight and not bool(rows.all()):
                    raise ValueError(f"layer {name} is the output layer; its units cannot be "
                                     "removed (drop it from the masks)")
                if not bool(rows.any()):
                    raise ValueError(f"layer {name} keeps no units: the pruned network is "
                                     "disconnected (its output does not depend on the input)")
            if rows is not None:
                removed_rows = ~rows
                if b is not None and removed_bias == "fold":
                    const = torch.where(removed_rows, b, torch.zeros_like(b))
                else:
                    const = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
                w = w[rows]
                b = b[rows] if b is not None else None
                keep_in = rows
            else:
                keep_in, const = None, None
            flattened = False
            layers.append(_rebuild(m, w, b))
        elif isinstance(m, ELEMENTWISE):
            if const is not None and not isinstance(m, nn.Dropout | nn.Identity):
                was = m.training
                m.eval()
                const = m(const.clone())
                m.train(was)
            layers.append(copy.deepcopy(m))
        elif isinstance(m, POOLS):
            if const is not None and isinstance(m, nn.AvgPool1d | nn.AvgPool2d) \
                    and m.count_include_pad and torch.any(const != 0) and not _all_zero_padding(m):
                raise ValueError(f"layer {name}: padded average pooling of removed units' "
                                 "constants is not constant; use removed_bias='zero'")
            layers.append(copy.deepcopy(m))
        elif isinstance(m, nn.Flatten):
            flattened = keep_in is not None
            layers.append(copy.deepcopy(m))
        elif isinstance(m, nn.Unflatten) and keep_in is None:
            layers.append(copy.deepcopy(m))
        else:
            raise ValueError(
                f"export_pruned does not support layer {name} ({type(m).__name__}); supported: "
                "Linear, Conv1d, Conv2d, element-wise activations, Dropout, Max/AvgPool, Flatten "
                "(and Unflatten before the first pruned layer)")
    return nn.Sequential(*layers)


def _rebuild(m: nn.Module, w: torch.Tensor, b: torch.Tensor | None) -> nn.Module:
    """A fresh layer like ``m`` with weight ``w`` and bias ``b`` (shapes may be smaller)."""
    if isinstance(m, nn.Linear):
        new: nn.Module = nn.Linear(w.shape[1], w.shape[0], bias=b is not None,
                                   device=w.device, dtype=w.dtype)
    else:
        cls = type(m)
        new = cls(w.shape[1] * m.groups, w.shape[0], m.kernel_size, stride=m.stride,
                  padding=m.padding, dilation=m.dilation, groups=m.groups, bias=b is not None,
                  padding_mode=m.padding_mode, device=w.device, dtype=w.dtype)
        if m.groups != 1:
            raise ValueError("export_pruned does not support grouped convolutions")
    new.weight.copy_(w)
    if b is not None:
        new.bias.copy_(b)
    return new


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
