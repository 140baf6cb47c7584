"""Seconds per training step (and per epoch, extrapolated) of ProxProp vs plain BackProp.

For fmnist_mlp and fmnist_2c2d (the problems' batch size 128, Nesterov SGD as the optimizer,
1 thread), times a fixed number of steps of:

* ``backprop``: the plain model, native autograd (the honest baseline),
* ``gradient``: the ProxProp layers in gradient mode (the paper's same-overhead baseline),
* ``exact``, ``cg1``, ``cg3``, ``cg10``: ProxProp solvers (cg_tol=0 so every step runs
  exactly N iterations).

Configurations are interleaved over ``--rounds`` rounds and the fastest round is kept; ratios
are against ``backprop`` measured in the same run. Run under the benchmark lock::

    flock /tmp/beyondsgd-bench.lock python benchmarks/proxprop_speed.py --steps 30 --cnn-steps 6

Writes ``results/proxprop_speed.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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


def time_steps(problem: str, cfg: dict | None, data, steps: int, warmup: int = 3) -> float:
    prob = get_problem(problem)
    model = prob.build_model(data, "relu", 0)
    if cfg is not None:
        proxprop(model, tau_theta=1.0, **cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.95, nesterov=True)
    bs = prob.batch_size
    x, y = data.x_train, data.y_train

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
    ap.add_argument("--problems", default="fmnist_mlp,fmnist_2c2d")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per config (MLP)")
    ap.add_argument("--cnn-steps", type=int, default=6,
                    help="timed steps per config for fmnist_2c2d (about 1 s/step on 1 thread)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/proxprop_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict = {"rounds": args.rounds, "threads": args.threads,
                 "torch": torch.__version__, "results": {}}
    for problem in args.problems.split(","):
        prob = get_problem(problem)
        data = prob.load(0)
        steps_per_epoch = -(-data.x_train.shape[0] // prob.batch_size)
        steps = args.cnn_steps if "2c2d" in problem else args.steps
        best = {k: float("inf") for k in CONFIGS}
        for _ in range(args.rounds):
            for name, cfg in CONFIGS.items():
                best[name] = min(best[name], time_steps(problem, cfg, data, steps))
        rows = {k: {"s_per_step": v, "s_per_epoch_extrapolated": v * steps_per_epoch,
                    "ratio_vs_backprop": v / best["backprop"],
                    "ratio_vs_gradient_mode": v / best["gradient"]} for k, v in best.items()}
        out["results"][problem] = {"steps_per_epoch": steps_per_epoch, "timed_steps": steps,
                                   "configs": rows}
        print(f"\n{problem}  (batch {prob.batch_size}, {steps_per_epoch} steps/epoch, "
              f"{steps} timed steps x {args.rounds} rounds, {args.threads} thread)")
        print(f"{'config':10s} {'ms/step':>9s} {'s/epoch':>9s} {'x backprop':>11s} "
              f"{'x gradient':>11s}")
        for k, r in rows.items():
            print(f"{k:10s} {1e3 * r['s_per_step']:9.1f} {r['s_per_epoch_extrapolated']:9.1f} "
                  f"{r['ratio_vs_backprop']:11.2f} {r['ratio_vs_gradient_mode']:11.2f}")
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
