"""Model zoo: small networks for the built-in problems.

Every model is a plain ``nn.Sequential`` (so layers are easy to find, swap and prune), takes its
activation as an argument (a name from ``ACTIVATIONS`` or a zero-argument factory returning an
``nn.Module``) and is initialised from an explicit ``seed`` without touching the global RNG.
Layers use PyTorch's default initialisation, U(+-1/sqrt(fan_in)), as in the ProxProp paper.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

ActivationSpec = str | Callable[[], nn.Module]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def register_activation(name: str, factory: Callable[[], nn.Module]) -> None:
    """Make ``name`` usable as ``activation=`` in every model (e.g. ``"pht"``)."""
    ACTIVATIONS[name] = factory


def activation_factory(spec: ActivationSpec) -> Callable[[], nn.Module]:
    if callable(spec) and not isinstance(spec, str):
        return spec
    try:
        return ACTIVATIONS[spec]
    except KeyError:
        raise ValueError(
            f"unknown activation {spec!r}; accepted: {', '.join(sorted(ACTIVATIONS))} "
            "or a zero-argument callable returning an nn.Module"
        ) from None


def _seeded(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """Build a module with parameters drawn from ``seed``, leaving the global RNG untouched."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an int, got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def mlp(
    in_features: int,
    widths: Sequence[int],
    out_features: int,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    flatten: bool = True,
) -> nn.Sequential:
    """Fully connected network ``in -> widths... -> out`` with ``activation`` between layers."""
    act = activation_factory(activation)
    widths = list(widths)
    if any(int(w) <= 0 for w in widths) or in_features <= 0 or out_features <= 0:
        raise ValueError(f"layer widths must be positive, got {in_features}, {widths}, "
                         f"{out_features}")

    def build() -> nn.Sequential:
        layers: list[nn.Module] = [nn.Flatten()] if flatten else []
        dims = [in_features, *widths]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(dims[-1], out_features))
        return nn.Sequential(*layers)

    return _seeded(build, seed)


def regression_mlp(
    in_features: int,
    widths: Sequence[int] = (64, 64),
    out_features: int = 1,
    activation: ActivationSpec = "relu",
    seed: int = 0,
) -> nn.Sequential:
    """MLP with a linear output for regression (same as ``mlp`` without the flatten)."""
    return mlp(in_features, widths, out_features, activation, seed, flatten=False)


def cnn_2c2d(
    in_channels: int = 1,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    image_size: int = 28,
) -> nn.Sequential:
    """DeepOBS ``2c2d``: conv5x5(32)-act-maxpool2, conv5x5(64)-act-maxpool2, fc1024-act, fc.

    'Same' padding as in DeepOBS; for 28x28 inputs the flattened size is 64*7*7 = 3136.
    """
    act = activation_factory(activation)
    side = image_size // 4

    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, 1024), act(),
            nn.Linear(1024, num_classes),
        )

    return _seeded(build, seed)


def lenet5(
    in_channels: int = 1,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    conv3: bool = False,
) -> nn.Sequential:
    """LeNet-5 for 28x28 inputs (LeCun et al. 1998, with max-pooling, as in the DessiLBI demo):
    conv5x5(6, pad 2)-act-pool, conv5x5(16)-act-pool, fc120-act, fc84-act, fc.

    ``conv3=True`` builds the official DessiLBI architecture (DessiLBI2020/DessiLBI, the LeNet of
    its train/prune examples), whose third layer is a convolution, conv5x5(120) on the 16x5x5
    map, followed by ``Flatten``: conv1-act-pool, conv2-act-pool, conv3-act, flatten, fc84-act,
    fc. On 28x28 inputs conv3 sees a 5x5 map, so it computes the same function as the Linear
    fc120 and, from the same seed, starts from the same numbers (the weight is the Linear one
    reshaped to 120x16x5x5). What differs is what a layer is: conv3 is a conv layer, so SLBI
    groups it by filter under ``conv=...`` (and the official "prune conv3" experiment prunes
    it), whereas fc120 is grouped under ``linear=...``.
    """
    act = activation_factory(activation)

    def build() -> nn.Sequential:
        third: list[nn.Module] = (
            [nn.Conv2d(16, 120, 5), act(), nn.Flatten()] if conv3
            else [nn.Flatten(), nn.Linear(16 * 5 * 5, 120), act()])
        return nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), act(), nn.MaxPool2d(2),
            *third,
            nn.Linear(120, 84), act(),
            nn.Linear(84, num_classes),
        )

    return _seeded(build, seed)


def lenet5_official(
    in_channels: int = 1,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
) -> nn.Sequential:
    """The official DessiLBI LeNet-5 (conv3 a convolution): ``lenet5(..., conv3=True)``."""
    return lenet5(in_channels, num_classes, activation, seed, conv3=True)


def cnn_mnist1d(
    length: int = 40,
    num_classes: int = 10,
    channels: int = 32,
    activation: ActivationSpec = "relu",
    seed: int = 0,
) -> nn.Sequential:
    """Small 1-D CNN for MNIST-1D (after Greydanus 2020): three conv1d(k=3) layers, global
    flatten, linear head. Input shape (N, length) or (N, 1, length)."""
    act = activation_factory(activation)

    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.Unflatten(1, (1, length)),
            nn.Conv1d(1, channels, 3, stride=2, padding=1), act(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), act(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), act(),
            nn.Flatten(),
            nn.Linear(channels * ((((length + 1) // 2 + 1) // 2 + 1) // 2), num_classes),
        )

    return _seeded(build, seed)


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """Name and module of the last ``nn.Linear`` in ``model`` (in registration order)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer")
    return found[-1]


# ---- paper models: ProxProp, BPGrad (beyondsgd reproduce) ----


# ---- paper models: DessiLBI, GDSolver, PHT (beyondsgd reproduce) ----
