"""Two short checks of ``pht_alt`` (issue 14, section 3); one JSON line per trial on stdout.

``defaults``: one brief run of ``pht_alt`` per registered problem, with given hyperparameters
(default: the defaults), reduced budgets; does every problem train?

``exact-all``: ``exact="all"`` through the runner, with the real network's training loss (a plain
forward pass, supports recomputed) measured around every per-epoch ``Alternating.solve`` call,
next to what the ``exact_solve`` events report.

    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py defaults --seeds 0,1,2
    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py defaults --hp '{"inner": "sgd", "lr": 0.1}'
    OMP_NUM_THREADS=1 python benchmarks/pht_checks.py exact-all
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from beyondsgd.bench.problems import PROBLEMS
from beyondsgd.bench.runner import run_trial
from beyondsgd.methods.pht import Alternating

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


def check_exact_all(hps: list[dict], problems: list[str], epochs: int) -> None:
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
                res = run_trial(prob, "pht_alt", {"exact": "all", **hp}, seed=0, epochs=epochs)
                for epoch, (before, after, events) in enumerate(calls, 1):
                    print(json.dumps({
                        "check": "exact-all", "problem": prob, "hp": hp, "epoch": epoch,
                        "status": res.status, "real_before": before, "real_after": after,
                        "reported": [[e["layer"], e["loss_before"], e["loss_after"],
                                      e.get("reverted")] for e in events]}), flush=True)
    finally:
        Alternating.solve = solve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("check", choices=("defaults", "exact-all"))
    ap.add_argument("--hp", default="{}", help="pht_alt hyperparameters (JSON)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--problems", default="", help="comma-separated (default: all registered "
                    "for 'defaults'; friedman_mlp,diabetes_mlp,mnist1d_mlp for 'exact-all')")
    ap.add_argument("--epochs", type=int, default=3, help="exact-all: epochs per trial")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hp = json.loads(args.hp)
    if args.check == "defaults":
        probs = args.problems.split(",") if args.problems else list(PROBLEMS)
        check_defaults(hp, [int(s) for s in args.seeds.split(",")], probs)
    else:
        probs = (args.problems.split(",") if args.problems
                 else ["friedman_mlp", "diabetes_mlp", "mnist1d_mlp"])
        check_exact_all([hp, {"inner": "sgd", "lr": 0.1}] if not hp else [hp], probs,
                        args.epochs)


if __name__ == "__main__":
    main()
