"""``proxprop(model)``: convert a model's Linear/Conv2d layers in place (the output layer
keeps its explicit step, Eq. 12), and the registered runner methods ``proxprop`` (Adam) and
``proxprop_sgd`` (Nesterov SGD)."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import nn

from .config import ProxConfig
from .layers import ProxConv2d, ProxLinear

# --------------------------------------------------------------------------------------------
# Converter
# --------------------------------------------------------------------------------------------
_SUPPORTED: dict[type, type] = {nn.Linear: ProxLinear, nn.Conv2d: ProxConv2d}
_PROX_TYPES = (ProxLinear, ProxConv2d)


_LINEAR_LIKE = (nn.Linear, nn.modules.conv._ConvNd)


def _output_layer(model: nn.Module, example_input: Any) -> str:
    """Name of the linear layer that produces the model's output (kept explicit, Eq. 12): the
    last ``nn.Linear``/convolution *called* in a forward pass on ``example_input`` (a tensor,
    or a tuple of positional arguments), run in eval mode under ``no_grad``."""
    called: list[str] = []
    handles = [m.register_forward_hook(functools.partial(_record_call, called, n))
               for n, m in model.named_modules() if n and isinstance(m, _LINEAR_LIKE)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            args = example_input if isinstance(example_input, tuple) else (example_input,)
            model(*args)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    if not called:
        raise ValueError("proxprop: the forward pass on example_input called no nn.Linear or "
                         f"convolution of {type(model).__name__}; give output_layer= instead")
    return called[-1]


def _record_call(called: list[str], name: str, *_: Any) -> None:
    called.append(name)


class _OutputSearch:
    """The deferred search for the output layer, kept on the converted model (so that
    ``copy.deepcopy`` and pickling carry it): the candidates (converted layers that may be the
    output layer), the model's two hooks, and the probes of its current forward call."""

    def __init__(self, names: list[str], hooks: list[Any]):
        self.names = tuple(names)
        self.hooks = hooks
        self.called: list[str] = []
        self.probes: list[Any] = []

    def drop_probes(self) -> None:
        for h in self.probes:
            h.remove()
        self.probes = []


_SEARCH = "_proxprop_output_search"


def _search_start(model: nn.Module, args: Any) -> None:
    """Forward pre-hook: record the order in which linear layers are called."""
    st = model.__dict__.get(_SEARCH)
    if st is None:
        return
    st.drop_probes()  # left over by a forward that raised
    st.called = []
    st.probes = [m.register_forward_hook(functools.partial(_record_call, st.called, n))
                 for n, m in model.named_modules() if n and isinstance(m, _LINEAR_LIKE)]


def _search_end(model: nn.Module, args: Any, output: Any) -> None:
    """Forward hook: the last linear layer called is the output layer. If it is one of the
    candidates, it becomes a plain layer again (sharing its parameters); the graph of this
    forward, whose backward comes later, gives it the plain gradient."""
    st = model.__dict__.get(_SEARCH)
    if st is None:
        return
    st.drop_probes()
    if not st.called:
        return  # no linear layer called: decide at a later forward
    last = st.called[-1]
    modules = dict(model.named_modules())
    for n in st.names:
        if isinstance(modules.get(n), _PROX_TYPES):
            modules[n]._output_pending = False
    out = modules.get(last)
    if last in st.names and isinstance(out, _PROX_TYPES):
        out.prox = ProxConfig(solver="gradient")  # what this forward's backward will use
        parent, _, child = last.rpartition(".")
        setattr(model.get_submodule(parent), child, out.to_plain())
        if not any(isinstance(m, _PROX_TYPES) for m in model.modules()):
            warnings.warn(f"proxprop: no layer converted; the only supported layer, {last!r}, "
                          "is the output layer and keeps its explicit step (Eq. 12); name it "
                          "in layers= to make it proximal", stacklevel=2)
    _end_search(model)


def _end_search(model: nn.Module) -> None:
    st = model.__dict__.pop(_SEARCH, None)
    if st is None:
        return
    st.drop_probes()
    for h in st.hooks:
        h.remove()
    for m in model.modules():
        if isinstance(m, _PROX_TYPES):
            m._output_pending = False


def _defer_output_layer(model: nn.Module, names: list[str]) -> None:
    """Find the output layer at the end of the model's first forward call that calls a linear
    layer (before any backward of it can run), among the converted ``names``."""
    _end_search(model)
    modules = dict(model.named_modules())
    for n in names:
        modules[n]._output_pending = True
    hooks = [model.register_forward_pre_hook(_search_start),
             model.register_forward_hook(_search_end)]
    setattr(model, _SEARCH, _OutputSearch(names, hooks))


def proxprop(
    model: nn.Module,
    tau_theta: float = 1.0,
    solver: str = "cg",
    cg_iters: int = 3,
    cg_tol: float = 1e-2,
    cg_eps: float = 1e-6,
    gram: str = "sum",
    cg_block: str = "auto",
    layers: str | list[str] | tuple[str, ...] | None = None,
    distributed: bool | None = None,
    cg_variant: str = "textbook",
    cg_path: str = "auto",
    output_layer: str | None = None,
    example_input: Any = None,
) -> nn.Module:
    """Convert ``model``'s ``nn.Linear``/``nn.Conv2d`` layers to ProxProp layers in place.

    ``layers=None`` converts every ``nn.Linear`` and ``nn.Conv2d`` (exact types) except the
    layer that produces the output, which keeps its explicit step as in the paper (Eq. 12):
    ``output_layer`` (its name), else the last linear layer called in a forward pass on
    ``example_input`` (a tensor or a tuple of arguments; run under ``no_grad`` in eval mode),
    else the model's only ``nn.Linear``/convolution, else the last one called in the model's
    first forward call (that calls one): until then every candidate is converted, and when
    that call returns (before its backward can run) the output layer becomes a plain layer
    again, sharing its parameters, and gets the plain gradient in that call's backward. A
    prox layer whose backward runs before the decision (its forward did not go through the
    model's own call) raises ``RuntimeError``; registration order is never used. ``layers`` may
    name modules (``dict(model.named_modules())`` keys) to convert exactly those; a named module
    of another type raises ``ValueError``. Already converted layers get the new settings.
    Parameters are shared, not copied, so optimizers built before the conversion still work
    and ``state_dict`` keys are unchanged. ``distributed``: see :class:`ProxConfig` (data
    parallelism sums the Gram over the ranks). Returns ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"proxprop() needs a torch nn.Module, got {type(model).__name__} "
                        f"({model!r:.60})")
    cfg = ProxConfig(tau_theta=tau_theta, solver=solver, cg_iters=cg_iters, cg_tol=cg_tol,
                     cg_eps=cg_eps, gram=gram, cg_block=cg_block, distributed=distributed,
                     cg_variant=cg_variant, cg_path=cg_path)
    modules = dict(model.named_modules())
    last: str | None = None
    if layers is None:
        if not any(type(m) in _SUPPORTED or isinstance(m, _PROX_TYPES)
                   for m in modules.values()):
            kinds = sorted({type(m).__name__ for n, m in modules.items() if n} or
                           {type(model).__name__})
            raise ValueError(
                f"proxprop: {type(model).__name__} has no nn.Linear or nn.Conv2d layer to "
                f"convert (its layers: {', '.join(kinds)}); supported: nn.Linear, nn.Conv2d "
                "(exact types)")
        linear_like = [n for n, m in modules.items() if n and isinstance(m, _LINEAR_LIKE)]
        if output_layer is not None:
            if output_layer not in modules or output_layer == "":
                raise ValueError(f"proxprop: output_layer {output_layer!r} is not a submodule; "
                                 f"linear layers: {linear_like}")
            last = output_layer
        elif example_input is not None:
            last = _output_layer(model, example_input)
        elif len(linear_like) == 1:
            last = linear_like[0]  # the only linear layer: the output layer if it is called
        # else: found by the model's first forward call (_defer_output_layer)
        targets = [n for n, m in modules.items()
                   if (type(m) in _SUPPORTED or isinstance(m, _PROX_TYPES)) and n != last and n]
        skipped = [f"{n} ({type(m).__name__})" for n, m in modules.items()
                   if isinstance(m, _LINEAR_LIKE) and n != last
                   and type(m) not in _SUPPORTED and not isinstance(m, _PROX_TYPES)]
        if skipped:
            warnings.warn("proxprop: these layers stay plain (only nn.Linear and nn.Conv2d are "
                          "supported): " + ", ".join(skipped), stacklevel=2)
        if not targets:
            warnings.warn(f"proxprop: no layer converted; the only supported layer, {last!r}, "
                          "is the output layer and keeps its explicit step (Eq. 12); name it "
                          "in layers= to make it proximal", stacklevel=2)
    else:
        targets = [layers] if isinstance(layers, str) else list(layers)
        for n in targets:
            if n not in modules or n == "":
                raise ValueError(
                    f"proxprop: no submodule named {n!r}; convertible layers: "
                    f"{[k for k, m in modules.items() if type(m) in _SUPPORTED]}")
            m = modules[n]
            if type(m) not in _SUPPORTED and not isinstance(m, _PROX_TYPES):
                raise ValueError(
                    f"proxprop: layer {n!r} is a {type(m).__name__}; accepted: nn.Linear, "
                    "nn.Conv2d (exact types; subclasses may change forward)")
    for n in targets:
        m = modules[n]
        if isinstance(m, _PROX_TYPES):
            m.prox = cfg
            continue
        new = _SUPPORTED[type(m)].from_module(m, cfg)
        parent_name, _, child = n.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    if layers is None and last is None and targets:
        _defer_output_layer(model, targets)
    elif layers is None:
        _end_search(model)  # an earlier conversion's search is superseded
    return model
