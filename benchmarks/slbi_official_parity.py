"""SLBI's coupling defaults against the official DessiLBI optimizer, whole trajectories.

The official LeNet (``lenet5_official``: conv3 a convolution), the official recipe (lr 0.1,
kappa 1, nu 20, lambda 1, momentum 0.9, weight decay ``--wd``), float64, ``--steps`` steps on
Fashion-MNIST minibatches of ``--batch`` (the cpu-scale subset, a fixed shuffle). Each
configuration trains its own copy from the same initialisation; against an independent
re-implementation of the official optimizer (``official_reference_step`` in
``tests/test_slbi.py``, written from the digest) it reports the largest |W difference| over
all parameters, the number of weights whose support 1[Gamma != 0] differs, and the conv3
filters selected. Configurations: the three default ways to build SLBI, and the two pre-issue-22
defaults (``structure="auto_neuron"``: Linear weights by neuron; ``slbi_param_groups(model,
linear="neuron", output=None)``: and the classifier dense).

``--official DIR``: also run the official optimizer itself, ``DIR/slbi_opt.py`` (a copy of
DessiLBI2020/DessiLBI ``code/slbi_opt.py``, which is not part of this repository; under torch
2.x its ``add_(scalar, tensor)`` calls need the ``alpha=`` form), and compare with it too.

    python benchmarks/slbi_official_parity.py [--steps 300] [--batch 128] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED
from beyondsgd.methods.slbi import SLBI, SLBIMethod, slbi_param_groups
from beyondsgd.models import lenet5_official

REPO = Path(__file__).resolve().parents[1]


def _reference_step() -> Callable:
    spec = importlib.util.spec_from_file_location("test_slbi", REPO / "tests" / "test_slbi.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.official_reference_step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--wd", type=float, default=0.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--official", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref_step = _reference_step()
    data = get_problem("fmnist_lenet5_official_cpu").load(DATA_SPLIT_SEED)
    x, y = data.x_train.double(), data.y_train
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))

    def batch(k: int):
        i = order[(k * args.batch) % x.shape[0]:][:args.batch]
        return x[i], y[i]

    wd = {"weight_decay": args.wd} if args.wd else {}
    configs: dict[str, Callable] = {
        "SLBI(model.parameters())": lambda m: SLBI(m.parameters(), **wd),
        "SLBI(slbi_param_groups(model))": lambda m: SLBI(slbi_param_groups(m), **wd),
        "method slbi": lambda m: SLBIMethod({"weight_decay": args.wd}).make_optimizer(m),
        "old auto: structure='auto_neuron'":
            lambda m: SLBI(m.parameters(), structure="auto_neuron", **wd),
        "old groups: linear='neuron', output=None":
            lambda m: SLBI(slbi_param_groups(m, linear="neuron", output=None), **wd),
    }

    def train(seed: int, make: Callable):
        m = lenet5_official(seed=seed).double()
        opt = make(m)
        for k in range(args.steps):
            opt.zero_grad()
            xb, yb = batch(k)
            F.cross_entropy(m(xb), yb).backward()
            opt.step()
        return m, {n: opt.gamma(p) for n, p in m.named_parameters()
                   if opt.structure(p) is not None}

    def reference(seed: int):
        m = lenet5_official(seed=seed).double()
        st = {p: {} for p in m.parameters()}
        hp = dict(lr=0.1, kappa=1.0, nu=20.0, momentum=0.9, weight_decay=args.wd)
        for k in range(args.steps):
            m.zero_grad()
            xb, yb = batch(k)
            F.cross_entropy(m(xb), yb).backward()
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(ref_step(p.detach().clone(), p.grad, st[p], hp))
        return m, {n: st[p]["G"] for n, p in m.named_parameters() if "G" in st[p]}

    def official(seed: int):
        sys.path.insert(0, str(args.official))
        official_module = importlib.import_module("slbi_opt")      # the copy in DIR
        m = lenet5_official(seed=seed).double()
        opt = official_module.SLBI(m.parameters(), lr=0.1, kappa=1, mu=20, weight_decay=args.wd)
        opt.assign_name([n for n, _ in m.named_parameters()])
        opt.initialize_slbi([n for n, p in m.named_parameters() if p.dim() in (2, 4)])
        for k in range(args.steps):
            opt.zero_grad()
            xb, yb = batch(k)
            F.cross_entropy(m(xb), yb).backward()
            opt.step()
        return m, {n: opt.state[p]["gamma_buffer"] for n, p in m.named_parameters()
                   if "gamma_buffer" in opt.state[p]}

    def compare(a, b) -> str:
        (ma, ga), (mb, gb) = a, b
        with torch.no_grad():
            w = max(float((p - q).abs().max()) for p, q in zip(ma.parameters(), mb.parameters()))
        mis = sum(int(((ga.get(n, torch.zeros_like(p)) != 0)
                       != (gb.get(n, torch.zeros_like(p)) != 0)).sum())
                  for n, p in ma.named_parameters())
        c3 = [int((g["6.weight"] != 0).flatten(1).any(1).sum()) if "6.weight" in g else 0
              for g in (ga, gb)]
        return (f"max|W diff| {w:.2g}, support mismatches {mis}, conv3 filters selected "
                f"{c3[0]} vs {c3[1]}")

    print(f"{args.steps} steps, batch {args.batch}, weight decay {args.wd}, float64")
    for seed in args.seeds:
        ref = reference(seed)
        sizes = {n: int((g != 0).sum()) for n, g in ref[1].items()}
        print(f"seed {seed}: reference support (weights) {sizes}", flush=True)
        if args.official is not None:
            off = official(seed)
            print(f"  reference vs official optimizer: {compare(ref, off)}", flush=True)
        for name, make in configs.items():
            got = train(seed, make)
            print(f"  {name} vs reference: {compare(got, ref)}", flush=True)
            if args.official is not None:
                print(f"  {name} vs official optimizer: {compare(got, off)}", flush=True)


if __name__ == "__main__":
    main()
