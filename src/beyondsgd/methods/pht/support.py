"""Support step and frozen support: record the masks ``s_l = 1[z_l > tau]`` of every PHT module,
and freeze them so the network becomes the masked multilinear network
``W_L D_{L-1} ... D_1 W_1 x`` (abstract, contribution (ii); our reconstruction).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from .activation import PositiveHardThreshold, pht_modules


# --------------------------------------------------------------------------------------------
# Support step / frozen support
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def recording(model: nn.Module, modules: Sequence[PositiveHardThreshold] | None = None
              ) -> Iterator[list[torch.Tensor]]:
    """Within the block every PHT module stores its mask; the list is filled on exit.

    The forward pass inside is the ordinary PHT forward (gradients flow as usual), so the support
    step and the first weight step can share one forward pass. ``modules``: ``pht_modules(model)``
    when the caller already has it (saves walking the model on every step).
    """
    mods = pht_modules(model) if modules is None else modules
    masks: list[torch.Tensor] = []
    for m in mods:
        if m._frozen is not None:
            raise RuntimeError("cannot record supports inside frozen_support()")
        m._recording, m._recorded = True, None
    try:
        yield masks
        missing = [i for i, m in enumerate(mods) if m._recorded is None]
        if missing:
            raise RuntimeError(
                f"PHT modules {missing} were not called in the recorded forward pass"
            )
        masks.extend(m._recorded for m in mods)
    finally:
        for m in mods:
            m._recording, m._recorded = False, None


@torch.no_grad()
def record_support(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Support step: one forward pass with the weights fixed. Returns ``(output, masks)``.

    ``masks[j]`` is the bool support of ``pht_modules(model)[j]`` for every sample of ``x``.
    """
    with recording(model) as masks:
        out = model(x)
    return out, masks


@contextlib.contextmanager
def frozen_support(model: nn.Module, masks: Sequence[torch.Tensor],
                   modules: Sequence[PositiveHardThreshold] | None = None) -> Iterator[nn.Module]:
    """Within the block every PHT module multiplies by its stored mask (frozen support).

    The network is then the masked multilinear network of the digest: with biases zero it is
    exactly linear in ``x``, and the loss is convex in each single layer's weights. ``modules``:
    ``pht_modules(model)`` when the caller already has it.
    """
    mods = pht_modules(model) if modules is None else modules
    if len(masks) != len(mods):
        raise ValueError(f"got {len(masks)} masks for {len(mods)} PHT modules")
    previous = [(m._frozen, m._frozen_cast) for m in mods]
    try:
        for m, s in zip(mods, masks, strict=True):
            if not isinstance(s, torch.Tensor):
                raise ValueError(f"masks must be tensors, got {type(s).__name__}")
            m._frozen, m._frozen_cast = s, None
        yield model
    finally:
        for m, (p, c) in zip(mods, previous, strict=True):
            m._frozen, m._frozen_cast = p, c


def mask_bytes(model: nn.Module, sample: torch.Tensor, n: int) -> int:
    """Bytes of the bool masks of ``n`` samples shaped like ``sample[:1]`` (1 byte per unit)."""
    _, masks = record_support(model, sample[:1])
    return int(n) * sum(m[0].numel() for m in masks)


@torch.no_grad()
def _record_chunked(model: nn.Module, x: torch.Tensor, max_bytes: int,
                    chunk: int = 8192) -> list[torch.Tensor]:
    need = mask_bytes(model, x, x.shape[0])
    if need > max_bytes:
        raise MemoryError(
            f"the supports of all {x.shape[0]} training samples need {need} bytes "
            f"({need / 2**20:.1f} MiB, 1 byte per unit and sample), more than max_mask_bytes="
            f"{max_bytes} ({max_bytes / 2**20:.1f} MiB); use the per-minibatch support refresh "
            "or raise the limit"
        )
    parts = [record_support(model, x[i:i + chunk])[1] for i in range(0, x.shape[0], chunk)]
    return [torch.cat(p) for p in zip(*parts, strict=True)]

