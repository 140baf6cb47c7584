"""Seconds per training step of ProxProp against plain BackProp, on three shapes.

Shapes (Fashion-MNIST inputs, Nesterov SGD as the optimizer):

* ``mlp``: ``fmnist_mlp``, 784-256-256-10, batch 128;
* ``wide``: the paper's widths 784-4000-1000-4000-10 (Section 5.1, 3072 inputs there),
  batch 500;
* ``cnn``: ``fmnist_2c2d`` (conv32-conv64-fc1024), batch 128.

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
    "wide": ("fmnist_mlp", 500, lambda: M.mlp(784, [4000, 1000, 4000], 10, seed=0)),
    "cnn": ("fmnist_2c2d", 128, None),
}


def time_steps(shape: str, cfg: dict | None, data, steps: int, warmup: int = 1) -> float:
    problem, bs, build = SHAPES[shape]
    model = get_problem(problem).build_model(data, "relu", 0) if build is None else build()
    if cfg is not None:
        proxprop(model, tau_theta=1.0, **cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95, nesterov=True)
    x, y = data.x_train, data.y_train
    if build is not None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"subset of {list(SHAPES)}")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {list(CONFIGS)}")
    ap.add_argument("--steps", default="mlp=20,wide=2,cnn=3",
                    help="timed steps per cell and round, per shape")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/proxprop_speed.json")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    configs = ["backprop"] + [c for c in args.configs.split(",") if c != "backprop"]
    for name, known in ((s, SHAPES) for s in shapes):
        if name not in known:
            ap.error(f"unknown shape {name!r}; accepted: {', '.join(SHAPES)}")
    for c in configs:
        if c not in CONFIGS:
            ap.error(f"unknown config {c!r}; accepted: {', '.join(CONFIGS)}")
    steps = {k: int(v) for k, v in (kv.split("=") for kv in args.steps.split(","))}
    torch.set_num_threads(args.threads)
    data = {p: get_problem(p).load(0) for p in {SHAPES[s][0] for s in shapes}}
    times: dict = {s: {c: [] for c in configs} for s in shapes}
    for r in range(args.rounds):
        for s in shapes:
            for c in configs:
                times[s][c].append(time_steps(s, CONFIGS[c], data[SHAPES[s][0]],
                                              steps.get(s, 3)))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    out = {"rounds": args.rounds, "threads": args.threads, "torch": torch.__version__,
           "steps": steps, "seconds_per_step": times, "median_ratio_vs_backprop": {}}
    print(f"\nms/step and x BackProp (median over {args.rounds} interleaved rounds of the "
          f"same-round ratio), {args.threads} thread(s)")
    print(f"{'shape':6s} {'backprop ms':>11s} " + " ".join(f"{c:>9s}" for c in configs[1:]))
    for s in shapes:
        bp = times[s]["backprop"]
        ratios = {c: statistics.median(t / b for t, b in zip(times[s][c], bp))
                  for c in configs[1:]}
        out["median_ratio_vs_backprop"][s] = ratios
        print(f"{s:6s} {1e3 * statistics.median(bp):11.1f} "
              + " ".join(f"{ratios[c]:9.2f}" for c in configs[1:]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
