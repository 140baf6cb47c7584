"""Which parameters of an ``SLBI`` optimizer carry a sparse copy Γ, and how Γ is grouped.

* :func:`slbi_param_groups` reads the layers of a model (conv weights: filters, hidden Linear
  weights: neurons, the classifier dense);
* :func:`auto_structure` reads one tensor's shape, for a flat parameter list where the layers are
  unknown (``SLBI(params, structure="auto")``, the default; DeepOBS's runner and Lightning's
  ``configure_optimizers`` hand the optimizer ``model.parameters()``).

The groups follow DessiLBI's structural sparsity (Fu et al., ICML 2020, Sec. 3): the group lasso
Ω₁(Γ) = Σ_g ‖Γ^g‖₂ over conv filters W[c_out] or over a Linear layer's neurons (rows).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .slbi_update import STRUCTURES

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
AUTO = "auto"


def auto_structure(p: torch.Tensor) -> str | None:
    """The structure ``structure="auto"`` gives one parameter, from its shape alone:

    * 3 to 5 dims (a Conv1d/2d/3d weight, out × in × kernel…): ``"filter"`` (groups W[c_out]);
    * 2 dims (a Linear weight, out × in): ``"neuron"`` (groups are rows, a neuron's incoming
      weights) -- the classifier's rows too, since a tensor does not say which layer is last
      (the official base optimizer also couples the classifier; ``slbi_param_groups(model)``
      keeps it dense);
    * anything else (biases, norm scales, 0-D): ``None`` (no Γ).

    Shapes can mislead: a ConvTranspose weight is in × out × kernel (its dim 0 is the *input*
    channel), an Embedding is 2-D (rows are tokens). Use ``slbi_param_groups`` or explicit groups
    for such models.

    >>> [auto_structure(t) for t in (torch.zeros(6, 1, 5, 5), torch.zeros(10, 84), torch.zeros(6))]
    ['filter', 'neuron', None]
    """
    if 3 <= p.dim() <= 5:
        return "filter"
    if p.dim() == 2:
        return "neuron"
    return None


def split_auto_group(group: dict[str, Any]) -> list[dict[str, Any]]:
    """An ``"auto"`` parameter group as one group per resolved structure (``"filter"``,
    ``"neuron"``, ``None``; empty ones dropped, order of first appearance kept), every other key
    copied. A group with no parameters stays one group (structure None)."""
    params = group["params"]
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    by: dict[str | None, list[torch.Tensor]] = {}
    for p in params:
        by.setdefault(auto_structure(p), []).append(p)
    if not by:
        return [{**group, "params": params, "structure": None}]
    return [{**group, "params": ps, "structure": s} for s, ps in by.items()]


def check_structure(p: torch.Tensor, structure: Any, where: str) -> None:
    if structure is None:
        return
    if structure not in STRUCTURES:
        raise ValueError(f"{where}: structure {structure!r} is not one of "
                         f"{', '.join(map(repr, STRUCTURES))} or None")
    if structure == "filter" and p.dim() < 3:
        raise ValueError(f"{where}: structure 'filter' needs a conv weight (3 to 5 dims: "
                         f"out, in, kernel...), got a tensor of shape {tuple(p.shape)}")
    if structure == "neuron" and p.dim() != 2:
        raise ValueError(f"{where}: structure 'neuron' needs a Linear weight (2 dims: out, in), "
                         f"got a tensor of shape {tuple(p.shape)}")


def slbi_param_groups(model: nn.Module, conv: str | None = "filter",
                      linear: str | None = "neuron", output: str | None = None,
                      lam: float | None = None, conv_lambda: float | None = None,
                      linear_lambda: float | None = None) -> list[dict[str, Any]]:
    """Parameter groups for ``SLBI`` built from the layers of ``model``.

    Conv1d/2d/3d weights get structure ``conv`` ('filter', 'element' or None), Linear weights
    ``linear`` ('neuron', 'element' or None), except the *last* Linear layer (the classifier,
    whose rows are classes), which gets ``output`` (default None: dense, as removing a class is
    rarely wanted). Everything else (biases, norm layers, other modules) is uncoupled. Optional
    thresholds per kind override the optimizer's ``lam``. Nothing depends on parameter order:
    groups hold the parameter objects, and ``SLBI.structure(p)`` maps them back.
    """
    for name, val, allowed in (("conv", conv, ("filter", "element", None)),
                               ("linear", linear, ("neuron", "element", None)),
                               ("output", output, ("neuron", "element", None))):
        if val not in allowed:
            raise ValueError(f"{name}={val!r} is not accepted; accepted: {allowed}")
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    last = linears[-1] if linears else None
    kinds: dict[str, list[nn.Parameter]] = {"conv": [], "linear": [], "output": []}
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, _CONV):
            kinds["conv"].append(m.weight)
        elif isinstance(m, nn.Linear):
            kinds["output" if m is last else "linear"].append(m.weight)
    groups: list[dict[str, Any]] = []
    lambdas = {"conv": conv_lambda, "linear": linear_lambda, "output": linear_lambda}
    structures = {"conv": conv, "linear": linear, "output": output}
    for kind, ps in kinds.items():
        ps = [p for p in ps if id(p) not in seen and p.requires_grad]
        if not ps or structures[kind] is None:
            continue
        seen.update(id(p) for p in ps)
        g: dict[str, Any] = {"params": ps, "structure": structures[kind], "name": kind}
        lam_k = lambdas[kind] if lambdas[kind] is not None else lam
        if lam_k is not None:
            g["lambda"] = lam_k
        groups.append(g)
    rest = [p for p in model.parameters() if id(p) not in seen and p.requires_grad]
    if rest:
        groups.append({"params": rest, "structure": None, "name": "uncoupled"})
    return groups
