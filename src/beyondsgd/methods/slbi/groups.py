"""Which parameters of an ``SLBI`` optimizer carry a sparse copy Γ, and how Γ is grouped.

* :func:`slbi_param_groups` reads the layers of a model; its defaults are the official code's
  coupling (DessiLBI2020/DessiLBI, ``code/slbi_opt.py`` with the LeNet demo's layer list): conv
  weights by output filter, every Linear weight element-wise, the classifier included.
* :func:`auto_structure` / :func:`resolve_structure` read one tensor's shape, for a flat
  parameter list where the layers are unknown (``SLBI(params)``, whose default
  ``structure="auto"`` is the same official coupling; DeepOBS's runner and Lightning's
  ``configure_optimizers`` hand the optimizer ``model.parameters()``).
  ``structure="auto_neuron"`` groups 2-D weights by neuron (row) instead, for structured pruning
  of Linear layers.

The groups follow DessiLBI's structural sparsity (Fu et al., ICML 2020, Sec. 3): the group lasso
Ω₁(Γ) = Σ_g ‖Γ^g‖₂ over conv filters W[c_out] or over a Linear layer's neurons (rows), or the
lasso Ω₁(Γ) = ‖Γ‖₁ over single weights ("element").

A group's ``structure`` stays as the user gave it ("auto" included): the structure of each of its
parameters is resolved from the parameter's shape whenever it is needed
(:func:`resolve_structure`), so the optimizer's ``param_groups`` are exactly the user's groups.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .update import STRUCTURES

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
AUTO = "auto"
AUTO_NEURON = "auto_neuron"
AUTOS = (AUTO, AUTO_NEURON)
ACCEPTED = (*STRUCTURES, *AUTOS, None)


def auto_structure(p: torch.Tensor, linear: str = "element") -> str | None:
    """The structure ``structure="auto"`` gives one parameter, from its shape alone:

    * 3 to 5 dims (a Conv1d/2d/3d weight, out × in × kernel…): ``"filter"`` (groups W[c_out]);
      the official code group-shrinks 4-D weights (Conv2d), the only conv it has;
    * 2 dims (a Linear weight, out × in): ``linear``: ``"element"`` (default, the official
      code: element-wise lasso on every 2-D weight, the classifier included) or ``"neuron"``
      (``structure="auto_neuron"``: rows, a neuron's incoming weights);
    * anything else (biases, norm scales, 0-D): ``None`` (no Γ; the official code couples
      only 2-D and 4-D parameters).

    Shapes can mislead: a ConvTranspose weight is in × out × kernel (its dim 0 is the *input*
    channel), an Embedding is 2-D (rows are tokens). Use ``slbi_param_groups`` or explicit groups
    for such models.

    >>> [auto_structure(t) for t in (torch.zeros(6, 1, 5, 5), torch.zeros(10, 84), torch.zeros(6))]
    ['filter', 'element', None]
    >>> auto_structure(torch.zeros(10, 84), linear="neuron")
    'neuron'
    """
    if 3 <= p.dim() <= 5:
        return "filter"
    if p.dim() == 2:
        return linear
    return None


def resolve_structure(structure: str | None, p: torch.Tensor) -> str | None:
    """The structure parameter ``p`` gets in a group whose ``structure`` is ``structure``:
    ``"auto"`` / ``"auto_neuron"`` by shape (:func:`auto_structure`), anything else as given."""
    if structure == AUTO:
        return auto_structure(p, "element")
    if structure == AUTO_NEURON:
        return auto_structure(p, "neuron")
    return structure


def check_structure(p: torch.Tensor, structure: Any, where: str) -> None:
    """A ``ValueError`` naming ``where`` unless ``structure`` is accepted for ``p``'s shape."""
    if structure is None or (isinstance(structure, str) and structure in AUTOS):
        return
    if not isinstance(structure, str) or structure not in STRUCTURES:
        raise ValueError(f"{where}: structure {structure!r} is not one of "
                         f"{', '.join(map(repr, (*STRUCTURES, *AUTOS)))} or None")
    if structure == "filter" and p.dim() < 3:
        raise ValueError(f"{where}: structure 'filter' needs a conv weight (3 to 5 dims: "
                         f"out, in, kernel...), got a tensor of shape {tuple(p.shape)}")
    if structure == "neuron" and p.dim() != 2:
        raise ValueError(f"{where}: structure 'neuron' needs a Linear weight (2 dims: out, in), "
                         f"got a tensor of shape {tuple(p.shape)}")


def slbi_param_groups(model: nn.Module, conv: str | None = "filter",
                      linear: str | None = "element", output: str | None = "element",
                      lam: float | None = None, conv_lambda: float | None = None,
                      linear_lambda: float | None = None) -> list[dict[str, Any]]:
    """Parameter groups for ``SLBI`` built from the layers of ``model``.

    What each argument couples:

    * ``conv``: every Conv1d/2d/3d weight. ``"filter"`` (default): one group per output filter
      W[c_out] (group lasso); ``"element"``: single weights; ``None``: no Γ.
    * ``linear``: every Linear weight but the last. ``"element"`` (default): single weights
      (lasso); ``"neuron"``: one group per row (a neuron's incoming weights: structured pruning
      of Linear layers); ``None``: no Γ.
    * ``output``: the *last* Linear layer (the classifier, whose rows are classes), same choices.
      Default ``"element"``.

    The defaults are the official code's coupling: its LeNet demo couples every 2-D and 4-D
    parameter, group-shrinks 4-D (conv) weights by filter and shrinks 2-D (Linear) weights
    element-wise, the classifier included (``tests/test_slbi.py::
    test_defaults_equal_the_official_optimizer_on_the_official_lenet``). Everything else
    (biases, norm layers, other modules) is uncoupled. Optional thresholds per kind override
    the optimizer's ``lam`` (``linear_lambda`` applies to ``output`` too). Nothing depends on
    parameter order: groups hold the parameter objects, and ``SLBI.structure(p)`` maps them
    back.
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
