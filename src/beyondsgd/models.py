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
def proxprop_mlp(
    in_features: int = 3072,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    widths: Sequence[int] = (4000, 1000, 4000),
) -> nn.Sequential:
    """The ProxProp paper's MLP (Frerix et al., ICLR 2018, §5.1): flatten, Linear 3072-4000-1000-
    4000-10 with ReLU between layers (official code tfrerix/proxprop: every hidden Linear is
    followed by ReLU, the last Linear is plain). PyTorch's default init, U(+-1/sqrt(fan_in)) for
    weights and biases (§5.1: "PyTorch default uniform initialisation"). ``in_features=784`` is
    the Fashion-MNIST/MNIST adaptation; ``widths`` other than the default only for smoke runs.

    >>> [m.out_features for m in proxprop_mlp(784) if isinstance(m, nn.Linear)]
    [4000, 1000, 4000, 10]
    """
    return mlp(in_features, widths, num_classes, activation, seed)


def proxprop_convnet(
    in_channels: int = 3,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    image_size: int = 32,
    third_pool: bool = False,
) -> nn.Sequential:
    """The ProxProp paper's §5.3 ConvNet: conv5x5(16, pad 2)-ReLU-maxpool2, conv5x5(20, pad 2)-
    ReLU-maxpool2, conv5x5(20, pad 2)-ReLU, Linear(20*8*8 = 1280 -> 10) on 32x32 inputs.

    That is the official code (tfrerix/proxprop ConvNet, FC 1280 inputs); the paper's text has a
    third max-pool (FC 320 inputs): ``third_pool=True`` builds that reading. On 28x28 inputs
    (Fashion-MNIST) the FC layer has 20*7*7 = 980 inputs (3*3*20 = 180 with the third pool).

    >>> proxprop_convnet()(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> proxprop_convnet(1, image_size=28)[-1].in_features
    980
    """
    act = activation_factory(activation)
    side = image_size // 4 // (2 if third_pool else 1)

    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(16, 20, 5, padding=2), act(), nn.MaxPool2d(2),
            nn.Conv2d(20, 20, 5, padding=2), act(), *([nn.MaxPool2d(2)] if third_pool else []),
            nn.Flatten(),
            nn.Linear(20 * side * side, num_classes),
        )

    return _seeded(build, seed)


def bpgrad_cifar_quick(
    in_channels: int = 3,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    image_size: int = 32,
) -> nn.Sequential:
    """BPGrad's official CIFAR-10 network, MatConvNet's "CIFAR10-quick" LeNet (RyanCV/BPGrad,
    cifar10_code/cnn_cifar_init.m):

    conv5x5x32 (pad 2) - maxpool 3x3/2 - ReLU; conv5x5x32 (pad 2) - ReLU - avgpool 3x3/2;
    conv5x5x64 (pad 2) - ReLU - avgpool 3x3/2; conv4x4x64 - ReLU; conv1x1x10 (the logits).

    Init as in that file: weights 0.01*randn (conv1) and 0.05*randn (the others), biases 0.
    Pools: MatConvNet's pad [0 1 0 1] ("emulate caffe") is PyTorch's ``ceil_mode=True`` on these
    sizes (32 -> 16 -> 8 -> 4). Not reproduced: the per-layer learning-rate multipliers (the
    digest: ignored by BPGrad) and the data pipeline (mean subtraction, contrast normalisation,
    whitening, flips). ``image_size=28`` (Fashion-MNIST) zero-pads the input to 32x32 first, so
    the network is the same.

    >>> bpgrad_cifar_quick(1, image_size=28)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """
    act = activation_factory(activation)
    pad = (32 - image_size) // 2
    if image_size > 32 or (32 - image_size) % 2:
        raise ValueError(f"image_size must be even and <= 32, got {image_size}")

    def build() -> nn.Sequential:
        layers: list[nn.Module] = [nn.ZeroPad2d(pad)] if pad else []
        convs = [nn.Conv2d(in_channels, 32, 5, padding=2), nn.Conv2d(32, 32, 5, padding=2),
                 nn.Conv2d(32, 64, 5, padding=2), nn.Conv2d(64, 64, 4),
                 nn.Conv2d(64, num_classes, 1)]
        for conv, std in zip(convs, (0.01, 0.05, 0.05, 0.05, 0.05)):  # cnn_cifar_init.m
            nn.init.normal_(conv.weight, 0.0, std)
            nn.init.zeros_(conv.bias)
        layers += [convs[0], nn.MaxPool2d(3, 2, ceil_mode=True), act(),
                   convs[1], act(), nn.AvgPool2d(3, 2, ceil_mode=True),
                   convs[2], act(), nn.AvgPool2d(3, 2, ceil_mode=True),
                   convs[3], act(), convs[4], nn.Flatten()]
        return nn.Sequential(*layers)

    return _seeded(build, seed)



# ---- paper models: DessiLBI, GDSolver, PHT (beyondsgd reproduce) ----


def gdsolver_mnist(
    in_channels: int = 1,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    image_size: int = 28,
) -> nn.Sequential:
    """GDSolver's official MNIST model (DhananjayAshok/Hybrid-Solver-NN-Training, ``model.py``,
    ``MNISTModel``): conv4x4(3, no padding)-act-flatten-Linear(3*25*25 = 1875 -> 10). The last
    Linear is the layer the MILP solves; on 28x28 inputs it has 18,750 weights + 10 biases, as
    the digest's MILP size (18,750 continuous variables)."""
    act = activation_factory(activation)
    side = image_size - 3

    def build() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(in_channels, 3, 4), act(), nn.Flatten(),
                             nn.Linear(3 * side * side, num_classes))

    return _seeded(build, seed)


def gdsolver_cifar_deep(
    in_channels: int = 3,
    num_classes: int = 10,
    activation: ActivationSpec = "relu",
    seed: int = 0,
    image_size: int = 32,
    hidden: int = 500,
) -> nn.Sequential:
    """GDSolver's CIFAR-10 "Deep" model (official ``model.py``, ``CIFAR10ModelDeep``):
    conv1x1(16, pad 1)-act-pool2, conv3x3(32, pad 1)-act-pool2, conv3x3(64, pad 1)-act-pool2,
    flatten, Linear(-> 500)-act, Linear(500 -> 10) (the MILP's layer: 5,010 variables).

    On 32x32 inputs the map sizes are 34 -> 17 -> 17 -> 8 -> 8 -> 4, so the flattened size is
    64*4*4 = 1024 (the official ``4*4*64``); on 28x28 (the Fashion-MNIST adaptation) 30 -> 15 -> 7
    -> 3, i.e. 64*3*3 = 576."""
    act = activation_factory(activation)
    side = ((image_size + 2) // 2) // 2 // 2

    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, 16, 1, padding=1), act(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), act(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), act(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, hidden), act(),
            nn.Linear(hidden, num_classes),
        )

    return _seeded(build, seed)
