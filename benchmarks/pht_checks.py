"""Short checks of ``pht_alt`` (issues 14 and 22); one JSON line per trial or epoch on stdout.

``defaults``: one brief run of ``pht_alt`` per registered problem, with given hyperparameters
(default: the defaults), reduced budgets; does every problem train?

``solve-all``: ``layer_solve="all"`` through the runner, with the real network's training loss (a
plain forward pass, supports recomputed) measured around every per-epoch ``Alternating.solve``
call, next to what the ``layer_solve`` events report.

``solve-gap`` (issue 22): how far the default cross-entropy layer solve (``solver_iters`` = 20
damped L-BFGS iterations) stops from the optimum. Before every per-epoch solve of a default
``pht_alt`` run, copies of the network get the same last-layer solve with 20, 50, 100, 200 and
500 iterations; printed: the damped objective the solve minimises (cross-entropy + damping/2
||theta - theta_0||^2) after each, and the gap of 20 iterations to 500.

``between-solves`` (issue 22): the training loss right after each epoch's solves
(``loss_previous_solve`` of the next epoch's events) against the training loss before the next
solves (``loss_before``): what the K frozen-support steps in between did to it.

    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py defaults --seeds 0,1,2
    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py defaults --hp '{"inner": "sgd", "lr": 0.1}'
    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py solve-all
    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py solve-gap --seeds 0,1,2 --epochs 3
    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py between-solves --seeds 0,1,2,3,4 --epochs 5
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time

import torch
from torch import nn

from beyondsgd.bench.problems import PROBLEMS
from beyondsgd.bench.run.runner import run_trial
from beyondsgd.methods.pht import Alternating, solvable_layers, solve_layer

# problem -> (epochs, train fraction): brief runs (the fmnist problems on a subset)
BUDGETS: dict[str, tuple[int, float]] = {
    "digits_mlp": (10, 1.0), "mnist1d_mlp": (10, 1.0), "mnist1d_cnn": (3, 1.0),
    "fmnist_mlp": (1, 0.2), "fmnist_2c2d": (1, 0.02), "fmnist_lenet5": (1, 0.05),
    "diabetes_mlp": (100, 1.0), "friedman_mlp": (20, 1.0),
}
TOY_BUDGET = (15, 1.0)


def check_defaults(hp: dict, seeds: list[int], problems: list[str]) -> None:
    for prob in problems:
        epochs, frac = BUDGETS.get(prob, TOY_BUDGET)
        for seed in seeds:
            t0 = time.perf_counter()
            res = run_trial(prob, "pht_alt", hp, seed=seed, epochs=epochs, train_fraction=frac)
            losses = [e["train_loss"] for e in res.evals]
            print(json.dumps({
                "check": "defaults", "problem": prob, "hp": hp, "seed": seed, "epochs": epochs,
                "train_fraction": frac, "status": res.status, "train_loss_start": losses[0],
                "train_loss_final": losses[-1] if math.isfinite(losses[-1]) else None,
                "test_metric_final": res.final.get("test_metric"), "error": res.error,
                "seconds": round(time.perf_counter() - t0, 1)}), flush=True)


def check_solve_all(hps: list[dict], problems: list[str], epochs: int) -> None:
    calls: list[tuple[float, float, list[dict]]] = []
    solve = Alternating.solve

    def real_loss(alt: Alternating, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return float(alt.loss_fn(alt.model(x), y))

    def measured(alt, x, y, *args, **kwargs):
        before = real_loss(alt, x, y)
        events = solve(alt, x, y, *args, **kwargs)
        calls.append((before, real_loss(alt, x, y), events))
        return events

    Alternating.solve = measured
    try:
        for prob in problems:
            for hp in hps:
                calls.clear()
                res = run_trial(prob, "pht_alt", {"layer_solve": "all", **hp}, seed=0,
                                epochs=epochs)
                for epoch, (before, after, events) in enumerate(calls, 1):
                    print(json.dumps({
                        "check": "solve-all", "problem": prob, "hp": hp, "epoch": epoch,
                        "status": res.status, "real_before": before, "real_after": after,
                        "reported": [[e["layer"], e["loss_before"], e["loss_after"],
                                      e.get("reverted")] for e in events]}), flush=True)
    finally:
        Alternating.solve = solve


GAP_ITERS = (20, 50, 100, 200, 500)


def check_solve_gap(problems: list[str], seeds: list[int], epochs: int) -> None:
    rows: list[dict] = []
    solve = Alternating.solve

    def measured(alt, x, y, layers="last", masks=None, solver="auto", iters=20, damping=0.0,
                 max_bytes=2**28):
        i = solvable_layers(alt.model)[-1]
        with torch.no_grad():
            feats = alt.model[:i](x)  # the last layer's real inputs (nothing after it is PHT)
        with torch.no_grad():
            row = {"iters": {}, "loss_start": float(alt.loss_fn(alt.model(x), y))}
        for n in GAP_ITERS:
            tail = copy.deepcopy(nn.Sequential(*alt.model[i:]))
            start = [p.detach().clone() for p in tail[0].parameters()]
            t0 = time.perf_counter()
            info = solve_layer(tail, 0, feats, y, alt.loss, [], "lbfgs", n, damping, max_bytes)
            sec = time.perf_counter() - t0
            prox = sum(float(((p.detach() - s0) ** 2).sum())
                       for p, s0 in zip(tail[0].parameters(), start, strict=True))
            row["iters"][n] = {"objective": info["loss_after"] + 0.5 * damping * prox,
                               "loss": info["loss_after"], "seconds": round(sec, 3)}
        rows.append(row)
        return solve(alt, x, y, layers, masks, solver, iters, damping, max_bytes)

    Alternating.solve = measured
    try:
        for prob in problems:
            for seed in seeds:
                rows.clear()
                run_trial(prob, "pht_alt", {}, seed=seed, epochs=epochs)
                for epoch, row in enumerate(rows, 1):
                    o20, o500 = (row["iters"][n]["objective"] for n in (20, 500))
                    print(json.dumps({"check": "solve-gap", "problem": prob, "seed": seed,
                                      "epoch": epoch, **row,
                                      "gap_20_vs_500": (o20 - o500) / o500}), flush=True)
    finally:
        Alternating.solve = solve


def check_between_solves(problems: list[str], seeds: list[int], epochs: int,
                         hp: dict) -> None:
    for prob in problems:
        for seed in seeds:
            res = run_trial(prob, "pht_alt", hp, seed=seed, epochs=epochs)
            firsts = {}
            for e in res.events:
                if e["kind"] == "layer_solve":
                    firsts.setdefault(e["epoch"], e)
            pairs = [(e["loss_previous_solve"], e["loss_before"]) for _, e in sorted(
                firsts.items()) if e["loss_previous_solve"] is not None]
            print(json.dumps({"check": "between-solves", "problem": prob, "seed": seed,
                              "hp": hp, "status": res.status,
                              "after_solve_then_before_next": pairs,
                              "rose": sum(b > a for a, b in pairs), "of": len(pairs)}),
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=("defaults", "solve-all", "solve-gap", "between-solves"))
    ap.add_argument("--hp", default="{}", help="pht_alt hyperparameters (JSON)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--problems", default="", help="comma-separated (default: all registered "
                    "for 'defaults'; friedman_mlp,diabetes_mlp,mnist1d_mlp for 'solve-all' "
                    "and 'between-solves'; mnist1d_mlp for 'solve-gap')")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per trial (not 'defaults')")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hp = json.loads(args.hp)
    seeds = [int(s) for s in args.seeds.split(",")]
    chosen = args.problems.split(",") if args.problems else None
    if args.check == "defaults":
        check_defaults(hp, seeds, chosen or list(PROBLEMS))
    elif args.check == "solve-gap":
        check_solve_gap(chosen or ["mnist1d_mlp"], seeds, args.epochs)
    elif args.check == "between-solves":
        check_between_solves(chosen or ["diabetes_mlp", "friedman_mlp", "mnist1d_mlp"], seeds,
                             args.epochs, hp)
    else:
        probs = chosen or ["friedman_mlp", "diabetes_mlp", "mnist1d_mlp"]
        check_solve_all([hp, {"inner": "sgd", "lr": 0.1}] if not hp else [hp], probs,
                        args.epochs)


if __name__ == "__main__":
    main()
