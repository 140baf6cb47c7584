"""``create_optimizer(name, model, **hp)``: build what one method needs, by name, in one call.

In the style of ``timm.optim.create_optimizer`` / ``pytorch_optimizer.load_optimizer``. The
methods of this package do not all hand back a ``torch.optim.Optimizer``, so the factory returns
what each one needs:

============  ==============================================================================
name          returns
============  ==============================================================================
``bpgrad``    :class:`~beyondsgd.BPGrad` over ``model.parameters()`` (default
              ``lipschitz=10``, the benchmark's); ``step`` needs the loss: ``opt.step(closure)``
              or ``opt.step(loss=loss)`` after ``backward()``.
``slbi``      :class:`~beyondsgd.SLBI` over ``slbi_param_groups(model, conv=, linear=,
              output=, conv_lambda=, linear_lambda=)`` (the layer-aware groups); with
              ``structure=...`` instead, over ``model.parameters()`` with that structure
              (``"auto"``, ``"auto_neuron"``, ``"element"``, ...). The two are exclusive.
``proxprop``  **converts** ``model``'s Linear/Conv2d layers to proximal layers **in place**
              (:func:`~beyondsgd.proxprop`, its keywords: ``tau_theta``, ``solver``, ...; the
              output layer keeps its explicit step: ``output_layer=`` / ``example_input=``
              name it, else the first forward call decides) and returns the torch optimizer
              that applies the proximal directions: ``inner="adam"``
              (default; paper Sec. 5.3: lr 1e-3, tau_theta 1) or ``inner="sgd"`` (paper Sec. 5.1:
              Nesterov momentum 0.95, lr 1, tau_theta 0.05), or any torch baseline name below.
``gdsolver``  :class:`~beyondsgd.GDSolver` (one MILP step on the last layer,
              ``solver.step(x_train, y_train, x_val, y_val)``); the GD phase uses any torch
              optimizer, e.g. ``create_optimizer("sgd", model, lr=0.05)``.
``pht``       **converts** ``model``'s ``nn.ReLU`` modules to positive hard-thresholding **in
              place** (:func:`~beyondsgd.pht`, ``tau=``) and returns an
              :class:`~beyondsgd.Alternating` (``alt.step(x, y)``) whose weight step is
              ``inner`` (default ``"adam"``, lr 1e-3, ``inner_steps=5``, the ``pht_alt``
              method's defaults); ``loss=``, ``inner_steps=``, ``max_mask_bytes=`` go to it.
``sgd``,      the torch baselines over ``model.parameters()``, with the benchmark's defaults
``momentum``, (``momentum``: SGD with momentum 0.9); any keyword of the torch class.
``adam``,
``adamw``,
``adagrad``,
``adadelta``,
``rmsprop``
============  ==============================================================================

Defaults not given are the registered methods' (``beyondsgd.METHODS[...]``), so the factory and
the benchmark agree. An unknown name, or a keyword the method does not take, is one
``ValueError`` that lists the accepted names or keywords; bad values are refused by the
constructors (``ValueError``/``TypeError``), before a model is converted.

Example:
    >>> import torch
    >>> import beyondsgd as bs
    >>> from beyondsgd.models import mlp
    >>> net = mlp(4, [8], 3, seed=0)
    >>> opt = bs.create_optimizer("slbi", net, lr=0.05)
    >>> type(opt).__name__
    'SLBI'
    >>> x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    >>> loss = torch.nn.functional.cross_entropy(net(x), y)
    >>> loss.backward(); _ = opt.step()
    >>> alt = bs.create_optimizer("pht", mlp(4, [8], 3, seed=0), lr=1e-2)  # ReLU -> PHT
    >>> type(alt).__name__, type(alt.optimizer).__name__
    ('Alternating', 'Adam')
    >>> bs.create_optimizer("lbfgs", net)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: create_optimizer: unknown name 'lbfgs'; accepted: bpgrad, slbi, proxprop, ...
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from .methods import METHODS
from .methods.bpgrad import BPGrad
from .methods.gdsolver import GDSolver
from .methods.pht import Alternating, PositiveHardThreshold, pht
from .methods.proxprop import proxprop
from .methods.slbi import SLBI, slbi_param_groups

__all__ = ["NAMES", "TORCH_BASELINES", "accepted_kwargs", "create_optimizer"]

TORCH_BASELINES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "momentum": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
}
NAMES: tuple[str, ...] = ("bpgrad", "slbi", "proxprop", "gdsolver", "pht", *TORCH_BASELINES)

# slbi_param_groups' keywords taken by create_optimizer("slbi", ...) (its ``lam`` is SLBI's)
_SLBI_LAYER_KEYS = ("conv", "linear", "output", "conv_lambda", "linear_lambda")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _keywords(fn: Callable[..., Any], skip: Iterable[str]) -> tuple[str, ...]:
    """The named parameters of ``fn`` (no ``*args``/``**kwargs``), without ``skip``."""
    skip = set(skip) | {"self"}
    return tuple(n for n, p in inspect.signature(fn).parameters.items()
                 if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))


def _defaults(method: str, keys: Iterable[str]) -> dict[str, Any]:
    """The registered method's defaults of ``keys`` (those it declares)."""
    declared = {h.name: h.default for h in METHODS[method].hparams}
    return {k: declared[k] for k in keys if k in declared}


def _torch_keywords(cls: type[torch.optim.Optimizer]) -> tuple[str, ...]:
    return _keywords(cls.__init__, ("params",))


def _baseline_defaults(name: str) -> dict[str, Any]:
    keys = ("lr", "momentum", "nesterov") if name == "momentum" else ("lr",)
    out = _defaults(name, keys)
    if name == "adamw":
        out.update(_defaults(name, ("weight_decay",)))
    return out


def _inner_name(name: str, hp: dict[str, Any], default: str) -> str:
    inner = hp.pop("inner", default)
    if inner not in TORCH_BASELINES:
        raise ValueError(f"create_optimizer({name!r}): inner={inner!r} is not a torch baseline; "
                         f"accepted: {', '.join(TORCH_BASELINES)}")
    return inner


def _own_keywords(name: str, inner: str | None = None) -> dict[str, tuple[str, ...]]:
    """Where each accepted keyword of ``name`` goes: ``{"target": keywords}``, in order of
    precedence (a keyword goes to the first target that takes it)."""
    if name == "bpgrad":
        return {"optimizer": _keywords(BPGrad.__init__, ("params",))}
    if name == "slbi":
        layer = tuple(k for k in _keywords(slbi_param_groups, ("model",))
                      if k in _SLBI_LAYER_KEYS)
        return {"optimizer": _keywords(SLBI.__init__, ("params",)), "groups": layer}
    if name == "gdsolver":
        return {"solver": _keywords(GDSolver.__init__, ("model",))}
    if name == "proxprop":
        return {"convert": _keywords(proxprop, ("model",)), "factory": ("inner",),
                "inner": _torch_keywords(TORCH_BASELINES[inner or "adam"])}
    if name == "pht":
        return {"convert": _keywords(pht, ("model", "learnable")),  # Alternating holds tau
                "alternating": _keywords(Alternating.__init__, ("model", "optimizer")),
                "factory": ("inner",),
                "inner": _torch_keywords(TORCH_BASELINES[inner or "adam"])}
    return {"optimizer": _torch_keywords(TORCH_BASELINES[name])}


def accepted_kwargs(name: str, inner: str | None = None) -> tuple[str, ...]:
    """The keywords ``create_optimizer(name, model, ...)`` accepts (for ``proxprop`` / ``pht``
    those of the ``inner`` torch optimizer included; default Adam), sorted.

    >>> accepted_kwargs("gdsolver")[:3]
    ('box', 'check_limit', 'distributed')
    """
    name = _check_name(name)
    return tuple(sorted({k for ks in _own_keywords(name, inner).values() for k in ks}))


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or name.lower() not in NAMES:
        raise ValueError(f"create_optimizer: unknown name {name!r}; accepted: "
                         f"{', '.join(NAMES)}")
    return name.lower()


def _route(name: str, hp: dict[str, Any], inner: str | None = None) -> dict[str, dict]:
    """Split ``hp`` by target; one ValueError listing every unknown keyword and the accepted
    ones."""
    targets = _own_keywords(name, inner)
    accepted = {k for ks in targets.values() for k in ks}
    unknown = sorted(set(hp) - accepted)
    if unknown:
        extra = f" (inner={inner!r})" if inner is not None else ""
        raise ValueError(f"create_optimizer({name!r}){extra}: unknown keyword argument(s) "
                         f"{', '.join(unknown)}; accepted: {', '.join(sorted(accepted))}")
    out: dict[str, dict] = {t: {} for t in targets}
    for k, v in hp.items():
        out[next(t for t, ks in targets.items() if k in ks)][k] = v
    return out


# --------------------------------------------------------------------------------------------
# The factory
# --------------------------------------------------------------------------------------------
def create_optimizer(name: str, model: nn.Module, **hp: Any) -> Any:
    """Build what method ``name`` needs to train ``model`` (see the module docstring's table).

    Args:
        name: one of :data:`NAMES` (case-insensitive): ``bpgrad``, ``slbi``, ``proxprop``,
            ``gdsolver``, ``pht``, and the torch baselines ``sgd``, ``momentum``, ``adam``,
            ``adamw``, ``adagrad``, ``adadelta``, ``rmsprop``.
        model: the ``nn.Module`` to train. ``proxprop`` and ``pht`` change it **in place**
            (layers / activations swapped; parameters kept, so ``state_dict`` keys and other
            optimizers over its parameters stay valid).
        **hp: the method's keywords (:func:`accepted_kwargs` lists them); ``inner=`` picks the
            torch optimizer of ``proxprop`` / ``pht``, whose keywords are accepted too.

    Returns:
        ``BPGrad`` / ``SLBI`` / a ``torch.optim.Optimizer`` (baselines, ``proxprop``), a
        ``GDSolver`` (``gdsolver``) or an ``Alternating`` (``pht``).

    Raises:
        ValueError: an unknown name or keyword (the message lists the accepted ones), or a
            value the method refuses. TypeError: ``model`` is not an ``nn.Module``.
    """
    name = _check_name(name)
    if not isinstance(model, nn.Module):
        raise TypeError(f"create_optimizer({name!r}): model must be a torch nn.Module, got "
                        f"{type(model).__name__}")
    hp = dict(hp)
    if name in TORCH_BASELINES:
        kw = _route(name, hp)["optimizer"]
        return TORCH_BASELINES[name](model.parameters(), **{**_baseline_defaults(name), **kw})
    if name == "bpgrad":
        kw = _route(name, hp)["optimizer"]
        if kw.get("lipschitz") is None and kw.get("lr") is None:
            kw.pop("lr", None)
            kw["lipschitz"] = _defaults("bpgrad", ("lipschitz",))["lipschitz"]
        return BPGrad(model.parameters(), **kw)
    if name == "slbi":
        parts = _route(name, hp)
        if "structure" in parts["optimizer"] and parts["groups"]:
            raise ValueError(
                f"create_optimizer('slbi'): give structure= (one structure for "
                f"model.parameters()) or the layer options {', '.join(sorted(parts['groups']))} "
                f"(slbi_param_groups(model, ...)), not both")
        if "structure" in parts["optimizer"]:
            return SLBI(model.parameters(), **parts["optimizer"])
        return SLBI(slbi_param_groups(model, **parts["groups"]), **parts["optimizer"])
    if name == "gdsolver":
        return GDSolver(model, **_route(name, hp)["solver"])
    if name == "proxprop":
        inner = _inner_name(name, hp, "adam")
        parts = _route(name, hp, inner)
        # the paper's recipes (the registered proxprop / proxprop_sgd methods' defaults)
        if inner == "adam":
            paper = _defaults("proxprop", ("lr", "tau_theta"))
        elif inner == "sgd":
            paper = _defaults("proxprop_sgd", ("lr", "tau_theta", "momentum", "nesterov"))
        else:
            paper = {}
        convert_kw = {k: paper.pop(k) for k in ("tau_theta",) if k in paper}
        convert_kw.update(parts["convert"])
        inner_kw = {**_baseline_defaults(inner), **paper, **parts["inner"]}
        # built first: a bad optimizer setting is refused before the model is changed
        opt = TORCH_BASELINES[inner](model.parameters(), **inner_kw)
        proxprop(model, **convert_kw)
        return opt
    # pht
    method = _defaults("pht_alt", ("inner", "lr", "inner_steps", "momentum"))
    inner = _inner_name(name, hp, method["inner"])
    parts = _route(name, hp, inner)
    inner_kw = {**_baseline_defaults(inner), "lr": method["lr"], **parts["inner"]}
    if inner == "momentum" and "momentum" in method:
        inner_kw = {**inner_kw, "momentum": method["momentum"], **parts["inner"]}
    alt_kw = {"inner_steps": method["inner_steps"], **parts["alternating"]}
    opt = TORCH_BASELINES[inner](model.parameters(), **inner_kw)
    # the Alternating settings are checked on a stand-in first, so that a bad one is refused
    # before the model's activations are swapped
    probe = nn.Parameter(torch.zeros(1))
    Alternating(nn.Sequential(PositiveHardThreshold()), torch.optim.SGD([probe], lr=0.1),
                **alt_kw)
    pht(model, **parts["convert"])
    return Alternating(model, opt, **alt_kw)
