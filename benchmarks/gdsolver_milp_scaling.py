"""GDSolver solver cost: build and solve time vs problem size, on the features of our problems.

Classification: the digits_mlp (head 128 -> 10) and mnist1d_mlp (head 256 -> 10; fmnist_mlp has
the same head) models after a few epochs of SGD (lr 0.05, GDSolver's default inner optimizer),
``n`` random training points (GDSolver's default selection), radius 0.05, with GDSolver's
default HiGHS settings (one thread, node limit, no presolve / feasibility jump): the MILP
(objective="paper") and the hinge LP (objective="loss"). Regression: the L1 LP on random ReLU
features (1 output). Also: seconds per SGD epoch of each classification problem, so that a
solve can be compared with a default trial (the problem's epochs).

    flock /tmp/beyondsgd-bench.lock python benchmarks/gdsolver_milp_scaling.py \
        [--points 16,32,64,128,256] [--time-limit 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from beyondsgd.bench.problems import get_problem
from beyondsgd.methods.gdsolver import NODE_LIMIT, GDSolver, default_points
from beyondsgd.methods.gdsolver.highs import (
    solve_classification_milp,
    solve_hinge_lp,
    solve_regression_lp,
)

PROBLEMS = {"digits_mlp": 5, "mnist1d_mlp": 10}  # problem -> SGD epochs before the solves


def sgd_model(problem: str, epochs: int, seed: int = 0):
    """(problem, data, model after ``epochs`` of SGD at lr 0.05, seconds per epoch)."""
    p = get_problem(problem)
    d = p.load(seed)
    torch.manual_seed(seed)
    model = p.build_model(d, "relu", seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(d.x_train), generator=g)
        for i in range(0, len(perm), p.batch_size):
            idx = perm[i:i + p.batch_size]
            opt.zero_grad()
            p.loss_fn(model(d.x_train[idx]), d.y_train[idx]).backward()
            opt.step()
    return p, d, model, (time.perf_counter() - t0) / epochs


def trained(problem: str, epochs: int, seed: int = 0):
    """The problem's features, labels and head after ``epochs`` of SGD; seconds per epoch."""
    p, d, model, per_epoch = sgd_model(problem, epochs, seed)
    solver = GDSolver(model, task="classification")
    h, _ = solver.features(d.x_train)
    w = solver.head.weight.detach().double().numpy()
    b = solver.head.bias.detach().double().numpy()
    return p, h.double().numpy(), d.y_train.numpy(), w, b, per_epoch


def _row(kind: str, problem: str, width: int, res, extra: dict | None = None) -> dict:
    obj = res.objective if res.objective is not None else float("nan")
    print(f"{kind:8s} {problem:12s} {width:>5} {res.n_points:>6} {res.nnz:>9} "
          f"{res.build_seconds:>8.3f} {res.solve_seconds:>8.3f} {res.status:>11} "
          f"{res.start_objective:>8.3f} {obj:>8.3f}", flush=True)
    return {"kind": kind, "problem": problem, "width": width, **res.summary(), **(extra or {})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", default="16,32,64,128,256")
    ap.add_argument("--lp-points", default="64,256,1024")
    ap.add_argument("--reg-points", default="512,2048,8192")
    ap.add_argument("--reg-widths", default="64,256,1024")
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--out", default="results/gdsolver_milp_scaling.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"HiGHS 1 thread, time limit {args.time_limit:.0f} s, MILP node limit {NODE_LIMIT}, "
          "radius 0.05, random points")
    print(f"{'kind':8s} {'problem':12s} {'width':>5} {'points':>6} {'nnz':>9} {'build s':>8} "
          f"{'solve s':>8} {'status':>11} {'start':>8} {'found':>8}")
    for problem, epochs in PROBLEMS.items():
        p, h, y, w, b, per_epoch = trained(problem, epochs)
        width, classes = w.shape[1], w.shape[0]
        auto = default_points("classification", "paper", len(y), width, classes)
        print(f"{problem}: {per_epoch:.4f} s per SGD epoch, default trial ({p.epochs} epochs) "
              f"{per_epoch * p.epochs:.2f} s; default MILP points {auto}")
        rows.append({"kind": "epoch", "problem": problem, "seconds_per_epoch": per_epoch,
                     "epochs": p.epochs, "default_points": auto})
        rng = np.random.default_rng(0)
        for n in sorted({*(int(k) for k in args.points.split(",")), auto}):
            idx = np.sort(rng.permutation(len(y))[:n])
            res = solve_classification_milp(h[idx], y[idx], w, b, 0.05,
                                            time_limit=args.time_limit, node_limit=NODE_LIMIT)
            rows.append(_row("milp", problem, width, res))
        for n in (int(k) for k in args.lp_points.split(",")):
            idx = np.sort(rng.permutation(len(y))[:n])
            res = solve_hinge_lp(h[idx], y[idx], w, b, 0.05, time_limit=args.time_limit)
            rows.append(_row("hinge", problem, width, res))
    rng = np.random.default_rng(0)
    for width in (int(k) for k in args.reg_widths.split(",")):
        for n in (int(k) for k in args.reg_points.split(",")):
            h = np.maximum(rng.normal(size=(n, width)), 0)
            wt = rng.normal(size=(1, width)) / np.sqrt(width)
            yt = rng.normal(size=(n, 1))
            res = solve_regression_lp(h, yt, wt, np.zeros(1), 0.05, "l1",
                                      time_limit=args.time_limit)
            rows.append(_row("l1", "random", width, res))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
