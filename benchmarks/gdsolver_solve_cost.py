"""GDSolver: the cost of one MILP solve, before/after, on a fixed set of instances (issue 26).

Instances: digits_mlp and mnist1d_mlp trained a few epochs with SGD (lr 0.05, GDSolver's inner
optimizer), then the solver's problem exactly as :meth:`GDSolver.solve` builds it (default
``selection="margin"``, ``box="fit"`` radius, default ``n_points``), plus larger point counts
(the issue's "64 -> 256 points on mnist1d") with the default selection and radius 0.05
(``box="fixed"``). Each instance (features, labels, head, radius) is saved to ``--dir`` and
reused, so "before" and "after" solve the very same problems.

Per instance and configuration: build and solve seconds, the objective (points correct with
margin), the dual bound, HiGHS's status and the work limit that stopped it. "before" is the
formulation and HiGHS options of the previous release (``reduce=False``,
``relaxation_first=False``, ``OLD_OPTIONS``); "after" the current defaults of
:func:`solve_classification_milp`.

    flock /tmp/beyondsgd-bench.lock python benchmarks/gdsolver_solve_cost.py [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling scripts
from gdsolver_milp_scaling import sgd_model  # noqa: E402

from beyondsgd.methods.gdsolver import GDSolver
from beyondsgd.methods.gdsolver.highs import solve_classification_milp
from beyondsgd.methods.gdsolver.points import fit_radius, flip_radius, select_points

# The HiGHS options of the previous release (before issue 26).
OLD_OPTIONS = {"presolve": "off", "mip_heuristic_run_feasibility_jump": False,
               "mip_heuristic_effort": 0.0, "mip_heuristic_run_rins": False,
               "mip_heuristic_run_rens": False, "mip_heuristic_run_root_reduced_cost": False}
CONFIGS = {
    "before": {"reduce": False, "relaxation_first": False, "options": OLD_OPTIONS},
    "after": {},
}


def trained(problem: str, epochs: int, seed: int = 0):
    """The problem's model after ``epochs`` of SGD (lr 0.05), and its data."""
    _, d, model, _ = sgd_model(problem, epochs, seed)
    return model, d


def make_instances(directory: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    paths = []
    specs = [("digits_mlp", 2, [-1]), ("digits_mlp", 4, [-1, 256]),
             ("mnist1d_mlp", 2, [-1]), ("mnist1d_mlp", 4, [-1, 64, 128, 256])]
    for problem, epochs, points in specs:
        model, d = trained(problem, epochs)
        s = GDSolver(model, task="classification")
        h, out = s.features(d.x_train)
        y = d.y_train
        w = s.head.weight.detach().double().numpy()
        b = s.head.bias.detach().double().numpy()
        for k in points:
            kk = s.points_per_solve("classification", len(y)) if k < 0 else k
            idx = select_points("classification", out, y, kk, "margin", None, h, s.margin)
            if k < 0:  # default: box="fit"
                rest = torch.ones(len(y), dtype=torch.bool)
                rest[idx] = False
                radius = fit_radius(float(flip_radius(out[rest], y[rest], h[rest],
                                                      s.margin).min()), s.radius)
                tag = "fit"
            else:
                radius, tag = s.radius, "r0.05"
            name = f"{problem}_e{epochs}_n{kk}_{tag}"
            path = os.path.join(directory, name + ".npz")
            np.savez(path, h=h[idx].double().numpy(), y=y[idx].numpy(), w=w, b=b,
                     radius=radius, margin=s.margin)
            paths.append(path)
    return paths


def solve(path: str, config: dict, time_limit: float) -> dict:
    z = np.load(path)
    t0 = time.perf_counter()
    res = solve_classification_milp(z["h"], z["y"], z["w"], z["b"], float(z["radius"]),
                                    float(z["margin"]), time_limit=time_limit, **config)
    wall = time.perf_counter() - t0
    return {"instance": os.path.basename(path)[:-4], "build_s": res.build_seconds,
            "solve_s": res.solve_seconds, "wall_s": wall, "objective": res.objective,
            "start": res.start_objective, "bound": res.bound, "status": res.status,
            "limit": res.limit, "nodes": res.info.get("nodes"),
            "checks": res.info.get("checks"), "binaries": res.n_binaries,
            "rows": res.num_row, "radius": float(z["radius"])}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/gdsolver_instances")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--only", default="", help="substring of the instance names")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    index = os.path.join(args.dir, "index.json")
    if args.rebuild or not os.path.exists(index):
        paths = make_instances(args.dir)
        with open(index, "w") as f:
            json.dump(paths, f)
    with open(index) as f:
        paths = [p for p in json.load(f) if args.only in p]
    rows = []
    print(f"{'instance':34s} {'config':7s} {'bins':>5} {'rows':>6} {'build s':>8} "
          f"{'solve s':>8} {'start':>6} {'obj':>6} {'bound':>8} {'status':>9} {'limit':>6} "
          f"{'nodes':>5} {'chk':>4}")
    for path in paths:
        objs = {}
        for cname in args.configs.split(","):
            r = solve(path, CONFIGS[cname], args.time_limit)
            r["config"] = cname
            rows.append(r)
            objs[cname] = r["objective"]
            obj = math.nan if r["objective"] is None else r["objective"]
            bnd = math.nan if r["bound"] is None else r["bound"]
            print(f"{r['instance']:34s} {cname:7s} {r['binaries']:>5} {r['rows']:>6} "
                  f"{r['build_s']:>8.3f} {r['solve_s']:>8.3f} {r['start']:>6.0f} {obj:>6.0f} "
                  f"{bnd:>8.2f} {r['status']:>9} {r['limit'] or '-':>6} {r['nodes']:>5} "
                  f"{r['checks']:>4}", flush=True)
    for cname in args.configs.split(","):
        sel = [r for r in rows if r["config"] == cname]
        print(f"{cname}: total solve {sum(r['solve_s'] for r in sel):.2f} s, build "
              f"{sum(r['build_s'] for r in sel):.2f} s, objective sum "
              f"{sum(r['objective'] or 0 for r in sel):.0f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
