"""GDSolver MILP/LP cost: build and solve time vs number of points and last-layer width.

Real features: an MLP 784-w-10 (one hidden layer of width w, the penultimate width) trained for
one epoch with Adam on 10k Fashion-MNIST images; the MILP gets the first ``n`` misclassified
training points (the official selection), radius 0.05, margin 1e-4, HiGHS with one thread,
gap 1e-4 and a time limit. The regression LP uses random ReLU features and targets.

    flock /tmp/beyondsgd-bench.lock python benchmarks/gdsolver_milp_scaling.py \
        [--points 32,128,512] [--widths 64,256,1024] [--time-limit 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from beyondsgd.bench.problems import get_problem
from beyondsgd.methods.gdsolver import GDSolver, select_points, solve_regression_lp
from beyondsgd.methods.milp import solve_classification_milp
from beyondsgd.models import mlp


def trained_features(width: int, data, n_train: int = 10000, seed: int = 0):
    model = mlp(784, [width], 10, "relu", seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.x_train[:n_train], data.y_train[:n_train]
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_train, generator=g)
    for i in range(0, n_train, 128):
        idx = perm[i:i + 128]
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    h, out = GDSolver(model).features(x)
    return model, h, out, x, y


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--points", default="32,128,512")
    ap.add_argument("--widths", default="64,256,1024")
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/gdsolver_milp_scaling.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    points = [int(p) for p in args.points.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
    data = get_problem("fmnist_mlp").load(0)
    rows = []
    print(f"classification MILP (10 classes), HiGHS threads={args.threads}, "
          f"time limit {args.time_limit:.0f}s, gap 1e-4, radius 0.05")
    print(f"{'width':>6} {'points':>6} {'cols':>7} {'rows':>6} {'nnz':>9} {'build s':>8} "
          f"{'solve s':>8} {'status':>9} {'start':>6} {'obj':>6} {'bound':>7}")
    for w in widths:
        model, h, out, x, y = trained_features(w, data)
        wt = model[-1].weight.detach().double().numpy()
        bt = model[-1].bias.detach().double().numpy()
        for n in points:
            idx = select_points("classification", out, y, n, "misclassified")
            t0 = time.perf_counter()
            res = solve_classification_milp(h[idx].double().numpy(), y[idx].numpy(), wt, bt,
                                            0.05, time_limit=args.time_limit,
                                            threads=args.threads)
            wall = time.perf_counter() - t0
            obj = res.objective if res.objective is not None else float("nan")
            bound = res.bound if res.bound is not None else float("nan")
            row = {"kind": "classification", "width": w, **res.summary(), "wall": wall}
            rows.append(row)
            print(f"{w:>6} {n:>6} {res.num_col:>7} {res.num_row:>6} {res.nnz:>9} "
                  f"{res.build_seconds:>8.3f} {res.solve_seconds:>8.2f} {res.status:>9} "
                  f"{res.start_objective:>6.0f} {obj:>6.0f} "
                  f"{bound:>7.1f}", flush=True)
    print("\nregression LP (L1, 1 output, random ReLU features)")
    print(f"{'width':>6} {'points':>6} {'cols':>7} {'rows':>6} {'nnz':>9} {'build s':>8} "
          f"{'solve s':>8} {'status':>9}")
    rng = np.random.default_rng(0)
    for w in widths:
        for n in [32, 512, 2048]:
            h = np.maximum(rng.normal(size=(n, w)), 0)
            wt = rng.normal(size=(1, w)) / np.sqrt(w)
            yt = rng.normal(size=(n, 1))
            res = solve_regression_lp(h, yt, wt, np.zeros(1), 0.05, "l1",
                                      time_limit=args.time_limit, threads=args.threads)
            rows.append({"kind": "regression", "width": w, **res.summary()})
            print(f"{w:>6} {n:>6} {res.num_col:>7} {res.num_row:>6} {res.nnz:>9} "
                  f"{res.build_seconds:>8.3f} {res.solve_seconds:>8.2f} {res.status:>9}",
                  flush=True)
    import os

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1, default=str)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
