"""Problems of the papers' own experiments (``beyondsgd reproduce``): MNIST and CIFAR-10 at the
papers' settings, and their Fashion-MNIST adaptations for 2-core machines. Registered into
:data:`beyondsgd.bench.problems.PROBLEMS` when ``problems`` is imported.
"""

from __future__ import annotations

# ---- ProxProp, BPGrad problems ----
# ProxProp (Frerix et al., ICLR 2018): batch 500 and 50 epochs (§5.1-§5.3, official code
# defaults); BPGrad (Zhang et al., CVPR 2018): batch 100, 100 epochs (official
# cnn_cifar_init.m / the digest's official defaults). The cpu-scale problems keep the models and
# batch sizes and train on a fixed Fashion-MNIST subset (sizes in the name's description, chosen
# from measured per-epoch costs, docs/reproduce.md); the smoke problems use a small synthetic
# image set so that CI needs no data files.
SUBSETS = {  # problem -> (train, validation, test) images of the Fashion-MNIST subset
    "fmnist_proxprop_mlp": (2500, 500, 1000),
    "fmnist_proxprop_convnet": (6000, 1000, 2000),
    "fmnist_bpgrad_quick": (6000, 1000, 1000),
}
TRAIN_EVAL = 2500  # cpu/smoke: training loss on the first 2500 training images; paper: all
# (Table 1 reports the full-batch training loss)
SMOKE_SIZES = (200, 64, 64)  # synthetic train, validation, test images (1x28x28, 10 classes)


def fmnist_subset(n_train: int, n_val: int, n_test: int, seed: int = 0):
    """The first ``n_*`` images of Fashion-MNIST's seeded train/validation/test split."""
    from dataclasses import replace

    from ... import data as D
    from .registry import _cached

    d = _cached(D.load_fashion_mnist, seed)
    return replace(d, name=f"fashion_mnist[{n_train}/{n_val}/{n_test}]",
                   x_train=d.x_train[:n_train], y_train=d.y_train[:n_train],
                   x_val=d.x_val[:n_val], y_val=d.y_val[:n_val],
                   x_test=d.x_test[:n_test], y_test=d.y_test[:n_test])


def synthetic_images(n_train: int = 200, n_val: int = 64, n_test: int = 64, seed: int = 0):
    """Ten Gaussian classes of 1x28x28 'images' in [0, 1] (smoke runs; no files needed):
    class mean m_c ~ U(0, 1) per pixel, x = clip(m_c + 0.3 * N(0, 1), 0, 1)."""
    import torch

    from ... import data as D

    g = torch.Generator().manual_seed(1234 + seed)
    means = torch.rand(10, 1, 28, 28, generator=g)

    def draw(n: int) -> tuple:
        y = torch.randint(0, 10, (n,), generator=g)
        return (means[y] + 0.3 * torch.randn(n, 1, 28, 28, generator=g)).clamp(0, 1), y

    (xt, yt), (xv, yv), (xs, ys) = draw(n_train), draw(n_val), draw(n_test)
    return D.Dataset("synthetic_images", "classification", xt, yt, xv, yv, xs, ys,
                     num_classes=10, info={"seed": seed})


def _register_proxprop_bpgrad() -> None:
    import functools

    from ... import data as D
    from ... import models as M
    from .registry import Problem, _cached, register_problem

    def cifar10(seed: int) -> D.Dataset:  # 45000 train / 5000 validation (ProxProp official)
        return _cached(D.load_cifar10, seed, val_size=5000)

    def cifar10_status() -> str | None:
        status = getattr(D, "cifar10_status", None)
        return status() if status is not None else "CIFAR-10 support is not in this version"

    def subset(name: str):
        return functools.partial(lambda s, n: fmnist_subset(*SUBSETS[n], seed=s), n=name)

    def n_in(d: D.Dataset) -> int:
        n = 1
        for s in d.input_shape:
            n *= s
        return n

    mlp = lambda d, a, s: M.proxprop_mlp(n_in(d), 10, a, s)  # noqa: E731
    conv = lambda d, a, s: M.proxprop_convnet(d.input_shape[0], 10, a, s,  # noqa: E731
                                              d.input_shape[-1])
    quick = lambda d, a, s: M.bpgrad_cifar_quick(d.input_shape[0], 10, a, s,  # noqa: E731
                                                 d.input_shape[-1])
    small_mlp = lambda d, a, s: M.proxprop_mlp(n_in(d), 10, a, s, (64, 32, 64))  # noqa: E731
    smoke = functools.partial(lambda s: synthetic_images(*SMOKE_SIZES, seed=s))
    fm = D.fashion_mnist_status
    todo = "provisional (not measured); reproduce does not use time-to-target"
    sub = "Fashion-MNIST subset {}/{}/{} (train/val/test)"
    paper = ("cifar10_mlp", "cifar10_convnet", "cifar10_quick", "mnist_mlp")
    for name, desc, load, status, build, bs, ep, target in (
        ("cifar10_mlp", "CIFAR-10, ProxProp's MLP 3072-4000-1000-4000-10", cifar10,
         cifar10_status, mlp, 500, 50, 0.50),
        ("cifar10_convnet", "CIFAR-10, ProxProp's ConvNet (conv16-conv20-conv20, fc 1280)",
         cifar10, cifar10_status, conv, 500, 50, 0.65),
        ("cifar10_quick", "CIFAR-10, BPGrad's official net (MatConvNet CIFAR10-quick)",
         cifar10, cifar10_status, quick, 100, 100, 0.70),
        ("mnist_mlp", "MNIST, ProxProp's MLP on 784 inputs (784-4000-1000-4000-10)",
         lambda s: _cached(D.load_mnist, s), D.mnist_status, mlp, 500, 50, 0.97),
        ("fmnist_proxprop_mlp", f"{sub.format(*SUBSETS['fmnist_proxprop_mlp'])}, "
         "ProxProp's MLP 784-4000-1000-4000-10", subset("fmnist_proxprop_mlp"), fm, mlp, 500, 4,
         0.70),
        ("fmnist_proxprop_convnet", f"{sub.format(*SUBSETS['fmnist_proxprop_convnet'])}, "
         "ProxProp's ConvNet (fc 980)", subset("fmnist_proxprop_convnet"), fm, conv, 500, 4,
         0.75),
        ("fmnist_bpgrad_quick", f"{sub.format(*SUBSETS['fmnist_bpgrad_quick'])}, "
         "BPGrad's CIFAR10-quick net (input zero-padded to 32x32)",
         subset("fmnist_bpgrad_quick"), fm, quick, 100, 4, 0.80),
        ("smoke_proxprop_mlp", "synthetic 1x28x28 images (smoke), MLP 784-64-32-64-10", smoke,
         lambda: None, small_mlp, 100, 1, 0.5),
        ("smoke_proxprop_convnet", "synthetic 1x28x28 images (smoke), ProxProp's ConvNet",
         smoke, lambda: None, conv, 100, 1, 0.5),
        ("smoke_bpgrad_quick", "synthetic 1x28x28 images (smoke), BPGrad's CIFAR10-quick net",
         smoke, lambda: None, quick, 50, 1, 0.5),
    ):
        register_problem(Problem(name, desc, load, build, "classification", batch_size=bs,
                                 epochs=ep, target=target, target_note=todo,
                                 data_check=status,
                                 train_eval_size=60000 if name in paper else TRAIN_EVAL))


_register_proxprop_bpgrad()


# ---- DessiLBI, GDSolver, PHT problems ----
# DessiLBI: the official LeNet (DessiLBI2020/DessiLBI, conv3 a convolution), batch 128 and 60
# epochs (the official LeNet recipe, example/train). GDSolver: the official models
# (DhananjayAshok/Hybrid-Solver-NN-Training, model.py), batch 32 (its loaders' default train
# batch) and 20 epochs (its GD baselines). Fashion-MNIST versions: same models on 28x28x1 inputs;
# the *_cpu ones on a fixed subset (train/validation/test sizes in CPU_SUBSETS, chosen from
# measured per-epoch costs, docs/reproduce_papers.md), training loss on 2500 training images.
CPU_SUBSETS = {
    "fmnist_lenet5_official_cpu": (20000, 1000, 5000),
    "fmnist_gdsolver_cpu": (20000, 1000, 5000),
    "fmnist_gdsolver_deep_cpu": (8000, 500, 2000),
}


def _register_dessilbi_gdsolver() -> None:
    import functools

    from ... import data as D
    from ... import models as M
    from .registry import Problem, _cached, register_problem

    def cifar10(seed: int) -> D.Dataset:  # data.load_cifar10, looked up at call time
        return _cached(D.load_cifar10, seed)

    def cifar10_status() -> str | None:
        status = getattr(D, "cifar10_status", None)
        return status() if status is not None else "CIFAR-10 support is not in this version"

    def side(d: D.Dataset) -> int:
        return int(d.input_shape[-1])

    def subset(name: str):
        return functools.partial(lambda s, n: fmnist_subset(*CPU_SUBSETS[n], seed=s), n=name)

    def sub(name: str) -> str:
        return "Fashion-MNIST subset {}/{}/{} (train/val/test)".format(*CPU_SUBSETS[name])

    lenet = lambda d, a, s: M.lenet5_official(1, 10, a, s)  # noqa: E731
    small = lambda d, a, s: M.gdsolver_mnist(1, 10, a, s, side(d))  # noqa: E731
    deep1 = lambda d, a, s: M.gdsolver_cifar_deep(1, 10, a, s, side(d))  # noqa: E731
    fm, fm_load = D.fashion_mnist_status, lambda s: _cached(D.load_fashion_mnist, s)
    prov = "provisional (not measured): reproduce does not use time-to-target"
    smoke = functools.partial(lambda s: synthetic_images(*SMOKE_SIZES, seed=s))  # no files
    for name, desc, load, status, build, bs, ep, target, note in (
        ("mnist_lenet5", "MNIST, the official DessiLBI LeNet-5 (conv3 a convolution)",
         lambda s: _cached(D.load_mnist, s), D.mnist_status, lenet, 128, 60, 0.99,
         "provisional (not measured here: no MNIST offline); LeNet-5 on MNIST reaches ~0.99"),
        ("fmnist_lenet5_official", "Fashion-MNIST, the official DessiLBI LeNet-5 (conv3 a conv)",
         fm_load, fm, lenet, 128, 10, 0.88,
         "fmnist_lenet5's target: the same function and initial numbers (models.lenet5)"),
        ("fmnist_lenet5_official_cpu", f"{sub('fmnist_lenet5_official_cpu')}, the official "
         "DessiLBI LeNet-5", subset("fmnist_lenet5_official_cpu"), fm, lenet, 128, 6, 0.85,
         prov),
        ("mnist_gdsolver", "MNIST, GDSolver's official model (conv4x4(3), Linear 1875->10)",
         lambda s: _cached(D.load_mnist, s), D.mnist_status, small, 32, 20, 0.97,
         "provisional (not measured here); the official log's SGD at 60k: 97.71 %"),
        ("fmnist_gdsolver", "Fashion-MNIST, GDSolver's official MNIST model (Linear 1875->10)",
         fm_load, fm, small, 32, 20, 0.84, prov),
        ("fmnist_gdsolver_cpu", f"{sub('fmnist_gdsolver_cpu')}, GDSolver's MNIST model",
         subset("fmnist_gdsolver_cpu"), fm, small, 32, 4, 0.80, prov),
        ("cifar10_gdsolver_deep", "CIFAR-10, GDSolver's official 'Deep' model (3 conv, fc500)",
         cifar10, cifar10_status, lambda d, a, s: M.gdsolver_cifar_deep(3, 10, a, s, side(d)),
         32, 20, 0.60, "provisional (not measured here); the official log's SGD at 50k: 67.55 %"),
        ("fmnist_gdsolver_deep", "Fashion-MNIST, GDSolver's 'Deep' model on 28x28x1 (fc 576)",
         fm_load, fm, deep1, 32, 20, 0.88, prov),
        ("fmnist_gdsolver_deep_cpu", f"{sub('fmnist_gdsolver_deep_cpu')}, GDSolver's 'Deep' "
         "model on 28x28x1 (fc 576)", subset("fmnist_gdsolver_deep_cpu"), fm, deep1, 32, 4,
         0.80, prov),
        ("smoke_lenet5_official", "synthetic 1x28x28 images (smoke), official DessiLBI LeNet-5",
         smoke, lambda: None, lenet, 32, 2, 0.5, prov),
        ("smoke_gdsolver", "synthetic 1x28x28 images (smoke), GDSolver's MNIST model",
         smoke, lambda: None, small, 32, 2, 0.5, prov),
    ):
        register_problem(Problem(
            name, desc, load, build, "classification", batch_size=bs, epochs=ep, target=target,
            target_note=note, data_check=status,
            train_eval_size=TRAIN_EVAL if name.endswith("_cpu") or "smoke" in name else 10000))


_register_dessilbi_gdsolver()
