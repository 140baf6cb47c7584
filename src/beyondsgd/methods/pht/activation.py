"""The PHT activation: positive hard-thresholding ``z * 1[z > tau]`` and the model swap.

Paper: Huang, Kong & Lucey, arXiv:1712.02501 (2017), abstract contribution (i); only the abstract
is known, so everything in this package is our reconstruction (see ``pht/__init__.py``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ... import models as _models

DEFAULT_TAU = 0.1


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------
def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise ValueError(f"tau must be a real number >= 0, got {tau!r}")
    tau = float(tau)
    if not math.isfinite(tau) or tau < 0.0:
        raise ValueError(f"tau must be a finite number >= 0, got {tau!r}")
    return tau


def support_of(z: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """The support ``s = 1[z > tau]`` as a bool tensor of ``z``'s shape (digest, Definitions)."""
    return z > tau


def pht_value(z: torch.Tensor, tau: float | torch.Tensor) -> torch.Tensor:
    """Positive hard-thresholding ``z * 1[z > tau]`` (abstract, contribution (i)).

    Its derivative in ``z`` is ``1[z > tau]`` (the same form as ReLU's); with ``tau = 0`` the value
    equals ``relu(z)``. Compare ``relu(z - tau)``, the non-negative *soft* threshold, which shrinks
    the kept values by ``tau``.
    """
    return z * support_of(z, tau).to(z.dtype)


# --------------------------------------------------------------------------------------------
# The activation
# --------------------------------------------------------------------------------------------
class PositiveHardThreshold(nn.Module):
    r"""Positive hard-thresholding activation ``PHT_tau(z) = z * 1[z > tau]``, ``tau >= 0``.

    Three modes:

    * *free* (default): computes the support from ``z`` and applies it;
    * *recording* (inside :func:`record_support` / ``Alternating``): as free, and stores the mask;
    * *frozen* (inside :func:`frozen_support`): multiplies by a stored mask instead of recomputing
      it, so the network becomes the masked multilinear network ``W_L D_{L-1} ... D_1 W_1 x``.

    Args:
        tau: threshold (``>= 0``). ``tau = 0`` equals ReLU in value and gradient.
        learnable: make ``tau`` a parameter. ``d PHT / d tau`` is zero almost everywhere (the jump
            of height ``tau`` at ``z = tau`` is a Dirac in the derivative), so its gradient is a
            surrogate (our choice; the abstract says nothing about learning ``tau``): the step
            ``1[z > tau]`` is replaced by ``sigmoid((z - tau) / temperature)`` in the backward pass
            for ``tau`` only. The value and the gradient in ``z`` stay exact. The effective
            threshold is ``max(tau, 0)``.
        temperature: width of the surrogate step (only used when ``learnable``).

    Example::

        >>> import torch
        >>> act = PositiveHardThreshold(tau=0.5)
        >>> act(torch.tensor([-1.0, 0.3, 0.5, 0.7, 2.0]))
        tensor([-0.0000, 0.0000, 0.0000, 0.7000, 2.0000])
    """

    def __init__(self, tau: float = DEFAULT_TAU, learnable: bool = False,
                 temperature: float = 0.1):
        super().__init__()
        tau = _check_tau(tau)
        if not isinstance(learnable, bool):
            raise ValueError(f"learnable must be a bool, got {learnable!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        self.learnable = learnable
        self.temperature = float(temperature)
        if learnable:
            self.tau = nn.Parameter(torch.tensor(tau))
        else:
            self.register_buffer("tau", torch.tensor(tau))
        self._frozen: torch.Tensor | None = None
        self._frozen_cast: torch.Tensor | None = None  # _frozen in the activations' dtype
        self._recording = False
        self._recorded: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"tau={float(self.tau.detach()):g}, learnable={self.learnable}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self._frozen is not None:
            mask = self._frozen
            if mask.shape != z.shape:
                raise ValueError(
                    f"frozen support of shape {tuple(mask.shape)} does not match the "
                    f"pre-activation of shape {tuple(z.shape)}; masks are per sample: freeze with "
                    "masks recorded on the same batch"
                )
            cast = self._frozen_cast
            if cast is None or cast.dtype != z.dtype or cast.device != z.device:
                # converted once per frozen_support block, not once per inner step
                cast = self._frozen_cast = mask.to(z.dtype)
            return z * cast
        tau = self.tau.clamp_min(0.0) if self.learnable else self.tau
        mask = support_of(z, tau)
        if self._recording:
            if self._recorded is not None:
                raise RuntimeError(
                    "a PositiveHardThreshold module was called twice in one recorded forward "
                    "pass; supports are per layer: use one PHT module per layer"
                )
            self._recorded = mask
        out = z * mask.to(z.dtype)
        if self.learnable and not self._recording and torch.is_grad_enabled():
            zd = z.detach()
            soft = torch.sigmoid((zd - tau) / self.temperature)
            out = out + zd * (soft - soft.detach())  # zero in value; surrogate d/dtau only
        return out


def pht_modules(model: nn.Module) -> list[PositiveHardThreshold]:
    """The PHT modules of ``model`` in registration order (the order masks are listed in)."""
    return [m for m in model.modules() if isinstance(m, PositiveHardThreshold)]


def pht(model: nn.Module, tau: float = DEFAULT_TAU, learnable: bool = False) -> nn.Module:
    """Swap every ``nn.ReLU`` of ``model`` (recursively, in place) for PHT; returns ``model``.

    PHT modules already present are kept as they are. Functional ``F.relu`` calls inside a custom
    ``forward`` cannot be swapped: build such models with ``activation="pht"`` instead.

    Example::

        >>> from beyondsgd.models import mlp
        >>> net = pht(mlp(4, [8], 2), tau=0.1)
        >>> type(net[2]).__name__
        'PositiveHardThreshold'
    """
    _check_tau(tau)
    device = next((p.device for p in model.parameters()), None)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                act = PositiveHardThreshold(tau, learnable)
                setattr(parent, name, act if device is None else act.to(device))
            else:
                swap(child)

    swap(model)
    if not pht_modules(model):
        raise ValueError(
            f"{type(model).__name__} has no nn.ReLU module to replace (and no PHT module); "
            "build it with activation='pht' or with nn.ReLU modules"
        )
    return model


_models.register_activation("pht", PositiveHardThreshold)
