"""ProxProp settings: :class:`ProxConfig` (validated) and :class:`ConvGeometry`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

SOLVERS = ("cg", "exact", "gradient")
GRAMS = ("sum", "mean")
CG_BLOCKS = ("auto", "unit", "layer")
CG_VARIANTS = ("textbook", "official")
CG_PATHS = ("auto", "gram", "primal", "dual")


@dataclass(frozen=True)
class ProxConfig:
    """Settings of one proximal layer (validated on construction).

    ``tau_theta``: prox step (M = I/tau_theta + A^T A); ``solver``: "cg" | "exact" | "gradient";
    ``cg_iters``: CG iterations (>= 1); ``cg_tol``: relative stopping tolerance of the official
    code (0: always ``cg_iters``); ``cg_eps``: added to the CG denominators. It exists for the
    official code's absolute eps (1e-6), which ``cg_variant="official"`` reproduces; in
    textbook CG it is relative to each CG block's current squared residual, so scale-free,
    and changes each step size by a relative amount of at most cg_eps * tau_theta; it is not
    needed for stability (p^T M p >= |p|^2 / tau_theta > 0); 0: exact textbook CG.
    ``gram``: "sum" (paper) | "mean" (divided by the batch rows); ``cg_block``: "auto" (the
    variant's blocking) | "unit" (one CG per output unit/channel) | "layer" (one CG for the
    layer); ``cg_variant``: "textbook" (CG, Prop. 5; "auto" blocking = "unit") | "official"
    (the official code's iteration, which is not CG, see :mod:`beyondsgd.methods.proxprop.cg`:
    aliased directions, absolute eps, and its blocking, one CG per output unit for Linear and
    one CG over all weights and the bias of a Conv2d; it fixes the blocking, so an explicit
    ``cg_block`` is refused); ``cg_path``: how a Linear layer's CG is computed, "auto" (the
    cheapest by flop count, :func:`linear_cg_path`) | "gram" | "primal" | "dual" (same
    iterates up to round-off); ``distributed``: sum the Gram and gradient over the ranks of
    the initialised ``torch.distributed`` group (``None``: when it has more than one
    process). For a Conv2d, ``cg_path="gram"`` forces the explicit unfolded Gram, "primal"
    products with the unfolded input, "dual" the matrix-free convolutions, "auto" the
    cheapest per layer and batch by the cost model :func:`conv2d_cg_flops` (flops plus the
    unfold's memory traffic), chosen in :func:`conv2d_path`.
    """

    tau_theta: float = 1.0
    solver: str = "cg"
    cg_iters: int = 3
    cg_tol: float = 1e-2
    cg_eps: float = 1e-6
    gram: str = "sum"
    cg_block: str = "auto"
    distributed: bool | None = None
    cg_variant: str = "textbook"
    cg_path: str = "auto"

    def __post_init__(self) -> None:
        t = self.tau_theta
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) < float(
                "inf"):
            raise ValueError(f"tau_theta must be a finite float > 0, got {t!r}")
        object.__setattr__(self, "tau_theta", float(t))
        if self.solver not in SOLVERS:
            raise ValueError(f"solver {self.solver!r} is not one of {list(SOLVERS)}")
        n = self.cg_iters
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            hint = " (use solver='gradient' for the plain BackProp gradient)" if n == 0 else ""
            raise ValueError(f"cg_iters must be an int >= 1, got {n!r}{hint}")
        for name in ("cg_tol", "cg_eps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < \
                    float("inf"):
                raise ValueError(f"{name} must be a finite float >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.gram not in GRAMS:
            raise ValueError(f"gram {self.gram!r} is not one of {list(GRAMS)}")
        if self.cg_block not in CG_BLOCKS:
            raise ValueError(f"cg_block {self.cg_block!r} is not one of {list(CG_BLOCKS)}")
        if self.cg_variant not in CG_VARIANTS:
            raise ValueError(f"cg_variant {self.cg_variant!r} is not one of {list(CG_VARIANTS)}")
        if self.cg_variant == "official" and self.cg_block != "auto":
            raise ValueError(
                f"cg_block {self.cg_block!r} conflicts with cg_variant='official', which fixes "
                "the official code's blocking (one CG per output unit for Linear, one CG over "
                "the whole layer for Conv2d); accepted with it: cg_block='auto' (the default)")
        if self.cg_path not in CG_PATHS:
            raise ValueError(f"cg_path {self.cg_path!r} is not one of {list(CG_PATHS)}")
        if self.distributed is not None and not isinstance(self.distributed, bool):
            raise ValueError(f"distributed must be None (auto), True or False, got "
                             f"{self.distributed!r}")


def _cg_kwargs(cfg: ProxConfig, conv: bool) -> dict[str, Any]:
    """The CG settings of ``cfg`` for a Conv2d (``conv``) or Linear layer as keyword arguments
    of the solvers in ``cg.py``. ``cg_block="auto"``: one CG per output unit, except for a
    Conv2d under ``cg_variant="official"`` (the official code runs one CG over the layer)."""
    official = cfg.cg_variant == "official"
    joint = cfg.cg_block == "layer" or (cfg.cg_block == "auto" and official and conv)
    return dict(tol=cfg.cg_tol, eps=cfg.cg_eps, joint=joint, relative_eps=not official,
                aliased=official)


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    """Solve in float32 (or float64 when the layer is float64), never in half precision."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class ConvGeometry:
    """Integer stride/padding/dilation and groups of a zero-padded Conv2d."""

    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
