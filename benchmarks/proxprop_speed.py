"""Seconds per training step of ProxProp against plain BackProp, per network and batch.

Shapes (Nesterov SGD as the optimizer):

* ``mlp``: ``fmnist_mlp``, 784-256-256-10, batch 128 (Fashion-MNIST);
* ``mlp500``: the same MLP at batch 500;
* ``wide``: the paper's widths 784-4000-1000-4000-10 (Section 5.1, 3072 inputs there),
  batch 500;
* ``cnn``: ``fmnist_2c2d`` (conv32-conv64-fc1024), batch 128 (Fashion-MNIST);
* ``convnet`` / ``convnet32``: the paper's §5.3 ConvNet (conv16-conv20-conv20-fc1280,
  :func:`beyondsgd.models.proxprop_convnet`) on 3x32x32 inputs, batch 128 / 32 (synthetic
  Gaussian images: the cost does not depend on the pixel values).

``measure(rounds=3)`` returns the cg3 / BackProp medians of the issue's four cells (paper's
ConvNet B 128 and B 32, MLP B 128 and B 500) as a dict, for ``benchmarks/speed.py``.

Configurations: ``backprop`` (the plain model, native autograd: the honest baseline),
``gradient`` (ProxProp layers in gradient mode, the paper's same-overhead baseline), ``exact``,
``cg1``, ``cg3``, ``cg10`` (``cg_tol=0``, so every step runs exactly N iterations).

All (shape, configuration) cells are interleaved in every round, so a change of machine load
hits all of them alike; a cell's ratio is its time over ``backprop``'s *in the same round*,
and the table reports the median over rounds of those ratios (and of ms/step). The machine is
shared: say so when quoting the numbers, and quote medians of one interleaved run::

    OMP_NUM_THREADS=1 python benchmarks/proxprop_speed.py --rounds 3

Writes ``results/proxprop_speed.json`` (every round's times) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from beyondsgd import models as M
from beyondsgd.bench.problems import get_problem
from beyondsgd.methods.proxprop import proxprop

CONFIGS = {
    "backprop": None,
    "gradient": dict(solver="gradient"),
    "exact": dict(solver="exact"),
    "cg1": dict(solver="cg", cg_iters=1, cg_tol=0.0),
    "cg3": dict(solver="cg", cg_iters=3, cg_tol=0.0),
    "cg10": dict(solver="cg", cg_iters=10, cg_tol=0.0),
}
SHAPES = {  # name -> (problem whose data is used, batch, model builder or None: the problem's)
    "mlp": ("fmnist_mlp", 128, None),
    "mlp500": ("fmnist_mlp", 500, None),
    "wide": ("fmnist_mlp", 500, lambda: M.mlp(784, [4000, 1000, 4000], 10, seed=0)),
    "cnn": ("fmnist_2c2d", 128, None),
    "convnet": ("synthetic_cifar", 128, lambda: M.proxprop_convnet(3, 10, seed=0)),
    "convnet32": ("synthetic_cifar", 32, lambda: M.proxprop_convnet(3, 10, seed=0)),
}
FLAT = {"wide"}  # shapes whose model takes flattened inputs
DEFAULT_STEPS = {"mlp": 20, "mlp500": 8, "wide": 2, "cnn": 3, "convnet": 3, "convnet32": 8}


class _Synthetic:
    """3x32x32 Gaussian images with random labels (CIFAR-10-shaped, no download)."""

    def __init__(self, n: int = 1024, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x_train = torch.randn(n, 3, 32, 32, generator=g)
        self.y_train = torch.randint(0, 10, (n,), generator=g)


def load_data(problem: str):
    return _Synthetic() if problem == "synthetic_cifar" else get_problem(problem).load(0)


def time_steps(shape: str, cfg: dict | None, data, steps: int, warmup: int = 1) -> float:
    problem, bs, build = SHAPES[shape]
    model = get_problem(problem).build_model(data, "relu", 0) if build is None else build()
    if cfg is not None:
        proxprop(model, tau_theta=1.0, **cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95, nesterov=True)
    x, y = data.x_train, data.y_train
    if shape in FLAT:
        x = x.reshape(x.shape[0], -1)

    def step(i: int) -> None:
        j = (i * bs) % (x.shape[0] - bs)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[j:j + bs]), y[j:j + bs]).backward()
        opt.step()

    for i in range(warmup):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    return (time.perf_counter() - t0) / steps


def run(shapes: list[str], configs: list[str], rounds: int, steps: dict[str, int],
        threads: int = 1) -> dict:
    """Every (shape, config) cell interleaved in each round; returns the seconds per step of
    every round and the median over rounds of each cell's same-round ratio to BackProp."""
    configs = ["backprop"] + [c for c in configs if c != "backprop"]
    torch.set_num_threads(threads)
    data = {p: load_data(p) for p in {SHAPES[s][0] for s in shapes}}
    times: dict = {s: {c: [] for c in configs} for s in shapes}
    for _ in range(rounds):
        for s in shapes:
            for c in configs:
                times[s][c].append(time_steps(s, CONFIGS[c], data[SHAPES[s][0]],
                                              steps.get(s, DEFAULT_STEPS.get(s, 3))))
    ratios = {s: {c: statistics.median(t / b for t, b in zip(times[s][c], times[s]["backprop"]))
                  for c in configs[1:]} for s in shapes}
    return {"rounds": rounds, "threads": threads, "torch": torch.__version__,
            "load_average": list(os.getloadavg()), "seconds_per_step": times,
            "median_ratio_vs_backprop": ratios}


ISSUE_CELLS = ("convnet", "convnet32", "mlp", "mlp500")


def measure(rounds: int = 3, threads: int = 1) -> dict:
    """cg3 / BackProp per step (median of same-round ratios over ``rounds`` interleaved
    rounds) on the paper's ConvNet at B 128 and B 32 and the 784-256-256-10 MLP at B 128 and
    B 500: ``{"convnet_b128": r, "convnet_b32": r, "mlp_b128": r, "mlp_b500": r,
    "backprop_ms": {...}, "load_average": [1, 5, 15 min], "threads": threads}``."""
    out = run(list(ISSUE_CELLS), ["backprop", "cg3"], rounds, {}, threads)
    names = {"convnet": "convnet_b128", "convnet32": "convnet_b32", "mlp": "mlp_b128",
             "mlp500": "mlp_b500"}
    res: dict = {names[s]: out["median_ratio_vs_backprop"][s]["cg3"] for s in ISSUE_CELLS}
    res["backprop_ms"] = {names[s]: 1e3 * statistics.median(out["seconds_per_step"][s]["backprop"])
                          for s in ISSUE_CELLS}
    res["load_average"] = out["load_average"]
    res["threads"] = threads
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="mlp,wide,cnn,convnet,convnet32",
                    help=f"subset of {list(SHAPES)}")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {list(CONFIGS)}")
    ap.add_argument("--steps", default="", help="timed steps per cell and round, per shape "
                    f"(default {DEFAULT_STEPS})")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/proxprop_speed.json")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    configs = ["backprop"] + [c for c in args.configs.split(",") if c != "backprop"]
    for name in shapes:
        if name not in SHAPES:
            ap.error(f"unknown shape {name!r}; accepted: {', '.join(SHAPES)}")
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}; accepted: {', '.join(CONFIGS)}")
    steps = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(",") if kv)}
    out = run(shapes, configs, args.rounds, steps, args.threads)
    print(f"\nms/step and x BackProp (median over {args.rounds} interleaved rounds of the "
          f"same-round ratio), {args.threads} thread(s), load average {out['load_average']}")
    print(f"{'shape':9s} {'backprop ms':>11s} " + " ".join(f"{c:>9s}" for c in configs[1:]))
    for s in shapes:
        bp = out["seconds_per_step"][s]["backprop"]
        ratios = out["median_ratio_vs_backprop"][s]
        print(f"{s:9s} {1e3 * statistics.median(bp):11.1f} "
              + " ".join(f"{ratios[c]:9.2f}" for c in configs[1:]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
