"""The GDSolver paper's two claims on our problems, through the benchmark runner.

1. Regression (paper: 31.5% lower MSE in 48% less time than the GD baselines). Problems:
   friedman_mlp, diabetes_mlp, toy_{identity,affine,polynomial,formula}_mlp. SGD and Adam get
   the best learning rate of {1e-3, 1e-2, 1e-1} by final validation MSE (seed 0); GDSolver gets
   the best of inner optimizer {SGD, Adam} at those learning rates x radius {0.05, 0.5} x
   n_points {default, all training points} (L1 LP; ``--version 1``, the logged rows from before
   issue 14: {32 largest errors, all}), same rule. Then 3 seeds each:
   final test MSE and training wall time (``train_seconds``: steps, plateau checks and solver,
   no evaluation). "gdsolver_half" is the official time/cost protocol:
   half the epochs, then exactly one solve at the end.
2. Classification (paper: GDSolver with 50% of the data matches or beats the GD baselines with
   100%): fmnist_mlp with reduced epochs; SGD (lr 0.05, the official baselines' lr), Adam (1e-3)
   and GDSolver (inner SGD lr 0.05, radius 0.05, default points (version 1: 32 misclassified);
   a solve at each plateau *and* every 2 epochs, because with so few epochs the plateau rule
   alone rarely fires).
3. ``--part defaults``: GDSolver at its defaults (``--hp`` overrides, per problem or for all)
   at each problem's epochs next to its inner optimizer alone: solves / accepted, test metric,
   solver share of the training time (``--label`` names the rows, e.g. before / after).
4. ``--part equal_time`` (issue 22): GDSolver at its defaults and with ``preset="published"``
   next to SGD at *SGD's* defaults, each problem at its epoch budget; then SGD again for as many
   epochs as fit in GDSolver's mean training time (equal wall time, from the same run's
   ``train_seconds``; rough on a shared machine); and a second run of GDSolver's seed 0, which
   must repeat every recorded number but the seconds (the solves are bounded by work).

Every finished trial is appended to a JSON-lines file; a rerun skips what is already there.

    flock /tmp/beyondsgd-bench.lock python benchmarks/gdsolver_claims.py \
        [--part regression|classification|diagnose|defaults|all] [--seeds 3] \
        [--fmnist-epochs 3] [--friedman-epochs 20] [--problems P1,P2] [--version 1|2] \
        [--label L] [--hp JSON] [--out results/gdsolver_claims.jsonl]
    python benchmarks/gdsolver_claims.py --part equal_time --problems digits_mlp,fmnist_mlp \
        --out benchmarks/results/gdsolver_defaults.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import time

import torch

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import run_trial

REG_PROBLEMS = ["friedman_mlp", "diabetes_mlp", "toy_identity_mlp",
                "toy_polynomial_mlp", "toy_formula_mlp"]
LRS = [1e-3, 1e-2, 1e-1]
PROBLEM_KEYS = ("digits_mlp", "mnist1d_mlp", "fmnist_mlp", "friedman_mlp", "diabetes_mlp",
                "toy_identity_mlp", "toy_polynomial_mlp", "toy_formula_mlp")


class Log:
    def __init__(self, path: str):
        self.path = path
        self.rows: dict[str, dict] = {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    r = json.loads(line)
                    self.rows[r["key"]] = r
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)

    def run(self, part: str, problem: str, label: str, method: str, hp: dict, seed: int,
            epochs: int | None, fraction: float = 1.0) -> dict:
        key = json.dumps([part, problem, label, method, hp, seed, epochs, fraction],
                         sort_keys=True)
        if key in self.rows:
            return self.rows[key]
        t0 = time.perf_counter()
        res = run_trial(problem, method, hp, seed=seed, epochs=epochs, train_fraction=fraction)
        wall = time.perf_counter() - t0
        fin = res.final
        milp = [e for e in res.events if e.get("kind") == "milp"]
        row = {"key": key, "part": part, "problem": problem, "label": label, "method": method,
               "hp": hp, "seed": seed, "epochs": epochs, "fraction": fraction,
               "status": res.status, "test_metric": fin.get("test_metric"),
               "val_metric": fin.get("val_metric"), "test_loss": fin.get("test_loss"),
               "train_seconds": fin.get("train_seconds"), "wall": wall,
               "solves": len(milp), "accepted": sum(bool(e["accepted"]) for e in milp),
               "solver_seconds": sum(e["solve_seconds"] + e["build_seconds"] for e in milp),
               "milp": [{k: e.get(k) for k in ("epoch", "status", "start_objective",
                                               "objective", "val_loss_before",
                                               "val_loss_after", "accepted")} for e in milp]}
        if res.status != "finished":
            row["test_metric"] = row["val_metric"] = math.inf
        self.rows[key] = row
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        print(f"  {problem:20s} {label:14s} seed {seed} {json.dumps(hp):70s} "
              f"test {row['test_metric']:.4f} val {row['val_metric']:.4f} "
              f"{row['train_seconds']:.1f}s solves {row['solves']}/{row['accepted']}",
              flush=True)
        return row


def _ms(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.4f}"
    return f"{statistics.mean(vals):.4f}±{statistics.stdev(vals):.4f}"


def regression(log: Log, seeds: int, friedman_epochs: int, problems: list[str],
               version: int = 2) -> list[dict]:
    """``version`` 1: the GDSolver of before issue 14 (n_points {32 largest errors, all}; rows
    kept in the log as history); 2: the current defaults (n_points {auto, all}). Baseline rows
    are shared."""
    sfx = "" if version == 1 else f"-v{version}"
    grid_points = (32, 0) if version == 1 else (-1, 0)  # 0: every point (selection="all")
    summary = []
    for prob in problems:
        ep = friedman_epochs if prob == "friedman_mlp" else None
        best: dict[str, tuple[float, dict]] = {}
        for opt in ("sgd", "adam"):
            trials = [(log.run("reg-tune", prob, opt, opt, {"lr": lr}, 0, ep)["val_metric"],
                       {"lr": lr}) for lr in LRS]
            best[opt] = min(trials, key=lambda t: t[0])
        cands = []
        for opt in ("sgd", "adam"):
            for radius, n_points in itertools.product((0.05, 0.5), grid_points):
                hp = {"optimizer": opt, "lr": best[opt][1]["lr"], "radius": radius,
                      **({"selection": "all"} if n_points == 0 else {"n_points": n_points})}
                cands.append((log.run("reg-tune" + sfx, prob, "gdsolver", "gdsolver", hp, 0,
                                      ep)["val_metric"], hp))
        best["gdsolver"] = min(cands, key=lambda t: t[0])
        n_ep = ep or get_problem(prob).epochs
        half = max(1, n_ep // 2)
        configs = [("sgd", "sgd", best["sgd"][1], ep),
                   ("adam", "adam", best["adam"][1], ep),
                   ("gdsolver", "gdsolver", best["gdsolver"][1], ep),
                   ("gdsolver_half", "gdsolver",
                    {**best["gdsolver"][1], "solve_every": half, "max_solves": 1}, half)]
        res = {}
        for label, method, hp, e in configs:
            part = "reg" + (sfx if method == "gdsolver" else "")
            res[label] = [log.run(part, prob, label, method, hp, s, e) for s in range(seeds)]
        base = min(("sgd", "adam"), key=lambda k: statistics.mean(
            r["test_metric"] for r in res[k]))
        row = {"problem": prob, "best_baseline": base}
        for label, rows in res.items():
            row[label] = {"hp": rows[0]["hp"], "mse": [r["test_metric"] for r in rows],
                          "seconds": [r["train_seconds"] for r in rows],
                          "solves": [r["solves"] for r in rows],
                          "accepted": [r["accepted"] for r in rows]}
        summary.append(row)
    print("\nRegression: final test MSE (mean±std over seeds) and train seconds")
    print(f"{'problem':20s} {'method':14s} {'config':55s} {'test MSE':>17s} {'sec':>6s} "
          f"{'solves/acc':>10s}")
    rel_mse, rel_time, rel_mse_h, rel_time_h, rel_inner = [], [], [], [], []
    for row in summary:
        for label in ("sgd", "adam", "gdsolver", "gdsolver_half"):
            r = row[label]
            print(f"{row['problem']:20s} {label:14s} {json.dumps(r['hp']):55s} "
                  f"{_ms(r['mse']):>17s} {statistics.mean(r['seconds']):6.1f} "
                  f"{sum(r['solves'])}/{sum(r['accepted'])}")
        b = row[row["best_baseline"]]
        for lab, rm, rt in (("gdsolver", rel_mse, rel_time),
                            ("gdsolver_half", rel_mse_h, rel_time_h)):
            g = row[lab]
            rm.append(statistics.mean(g["mse"]) / statistics.mean(b["mse"]) - 1)
            rt.append(statistics.mean(g["seconds"]) / statistics.mean(b["seconds"]) - 1)
        print(f"{'':20s} vs best baseline ({row['best_baseline']}): gdsolver MSE "
              f"{100 * rel_mse[-1]:+.1f}%, time {100 * rel_time[-1]:+.1f}%; gdsolver_half MSE "
              f"{100 * rel_mse_h[-1]:+.1f}%, time {100 * rel_time_h[-1]:+.1f}%")
        inner = row[row["gdsolver"]["hp"]["optimizer"]]  # same optimizer, same lr, same seeds
        rel_inner.append(statistics.mean(row["gdsolver"]["mse"]) / statistics.mean(inner["mse"])
                         - 1)
        print(f"{'':20s} vs its own inner optimizer alone: gdsolver MSE "
              f"{100 * rel_inner[-1]:+.1f}%")
    print(f"\nAverage over {len(summary)} problems vs the best baseline: gdsolver MSE "
          f"{100 * statistics.mean(rel_mse):+.1f}%, time {100 * statistics.mean(rel_time):+.1f}%;"
          f" gdsolver_half MSE {100 * statistics.mean(rel_mse_h):+.1f}%, time "
          f"{100 * statistics.mean(rel_time_h):+.1f}%  (paper: -31.5% MSE, -48% time); "
          f"gdsolver vs its inner optimizer MSE {100 * statistics.mean(rel_inner):+.1f}%")
    return summary


def classification(log: Log, seeds: int, epochs: int, prob: str = "fmnist_mlp",
                   version: int = 2) -> None:
    sfx = "" if version == 1 else f"-v{version}"
    gd_hp = {"optimizer": "sgd", "lr": 0.05, "radius": 0.05, "solve_every": 2}
    configs = [("sgd", "sgd", {"lr": 0.05}, 1.0), ("adam", "adam", {"lr": 1e-3}, 1.0),
               ("gdsolver", "gdsolver", gd_hp, 0.5), ("sgd", "sgd", {"lr": 0.05}, 0.5),
               ("adam", "adam", {"lr": 1e-3}, 0.5), ("gdsolver", "gdsolver", gd_hp, 1.0),
               ("gds_keepworse", "gdsolver", {**gd_hp, "keep_worse": True}, 0.5)]
    out = {}
    for label, method, hp, frac in configs:
        part = "cls" + (sfx if method == "gdsolver" else "")
        out[(label, frac)] = [log.run(part, prob, label, method, hp, s, epochs, frac)
                              for s in range(seeds)]
    print(f"\nClassification {prob}, {epochs} epochs: final test accuracy (mean±std)")
    for (label, frac), rows in out.items():
        acc = _ms([r["test_metric"] for r in rows])
        print(f"  {label:13s} {int(frac * 100):3d}% data  acc {acc}"
              f"  {statistics.mean(r['train_seconds'] for r in rows):6.1f}s  solves/accepted "
              f"{sum(r['solves'] for r in rows)}/{sum(r['accepted'] for r in rows)}")
    g50 = statistics.mean(r["test_metric"] for r in out[("gdsolver", 0.5)])
    best100 = max(statistics.mean(r["test_metric"] for r in out[(k, 1.0)])
                  for k in ("sgd", "adam"))
    print(f"  claim (GDSolver@50% >= best GD baseline@100%): {g50:.4f} vs {best100:.4f} -> "
          f"{'holds' if g50 >= best100 else 'does not hold'}")


def diagnose(log: Log, prob: str = "fmnist_mlp", version: int = 2) -> None:
    """Why are the classification solves rejected? One solve after 2 SGD epochs (50% data,
    seed 0) for several radii and point counts: validation loss before and after."""
    print(f"\nDiagnosis on {prob} (50% data, seed 0, 2 SGD epochs then one solve)")
    for radius, n_points, sel in itertools.product((0.05, 0.01, 0.002), (32, 256),
                                                   ("misclassified",)):
        hp = {"optimizer": "sgd", "lr": 0.05, "radius": radius, "n_points": n_points,
              "selection": sel, "solve_every": 2, "max_solves": 1, "time_limit": 20.0}
        r = log.run("diag" + ("" if version == 1 else f"-v{version}"), prob, "gdsolver",
                    "gdsolver", hp, 0, 2, 0.5)
        m = r["milp"][0]
        print(f"  radius {radius:<6} points {n_points:4d}: {m['status']:9s} correct "
              f"{m['start_objective']:.0f} -> {m['objective']:.0f}, val loss "
              f"{m['val_loss_before']:.4f} -> {m['val_loss_after']:.4f}, accepted "
              f"{m['accepted']}, solver {r['solver_seconds']:.1f}s")


def defaults(log: Log, seeds: int, problems: list[str], label: str, hp: dict | None = None
             ) -> None:
    """GDSolver with its default hyperparameters (``hp``: overrides, or a mapping problem ->
    overrides) on each problem at the problem's default epochs, next to its inner optimizer
    alone (same optimizer and lr): solves / accepted, test metric, and the solver's share of
    the training time."""
    hp = hp or {}
    print(f"\nGDSolver ({label}, overrides {json.dumps(hp)}): per problem, {seeds} seeds")
    for prob in problems:
        over = hp.get(prob, {}) if any(k in hp for k in PROBLEM_KEYS) else hp
        inner = {"lr": over.get("lr", 0.05)}
        base = over.get("optimizer", "sgd")  # plain SGD (no momentum), as GDSolver's default
        ref = [log.run("defaults", prob, base, base, inner, s, None) for s in range(seeds)]
        gds = [log.run("defaults", prob, label, "gdsolver", over, s, None) for s in range(seeds)]
        share = [r["solver_seconds"] / r["train_seconds"] for r in gds]
        print(f"  {prob:14s} solves/accepted {sum(r['solves'] for r in gds)}/"
              f"{sum(r['accepted'] for r in gds)}  test {_ms([r['test_metric'] for r in gds])} "
              f"({base} {json.dumps(inner)} alone {_ms([r['test_metric'] for r in ref])})  "
              f"solver share {100 * statistics.mean(share):.1f}% of "
              f"{statistics.mean(r['train_seconds'] for r in gds):.2f}s", flush=True)


def equal_time(log: Log, seeds: int, problems: list[str], label: str = "equal_time") -> None:
    """Issue 22: GDSolver's defaults (and the published preset) vs SGD's defaults at each
    problem's budget, SGD at GDSolver's wall time, and a repeated GDSolver trial (determinism:
    every recorded number but the seconds must match)."""
    print(f"\nGDSolver defaults vs SGD defaults ({label}), {seeds} seeds, each problem's epochs")
    for prob in problems:
        epochs = get_problem(prob).epochs
        sgd = [log.run(label, prob, "sgd", "sgd", {}, s, None) for s in range(seeds)]
        gds = [log.run(label, prob, "gdsolver", "gdsolver", {}, s, None) for s in range(seeds)]
        pub = [log.run(label, prob, "published", "gdsolver", {"preset": "published"}, s, None)
               for s in range(seeds)]
        ratio = statistics.mean(r["train_seconds"] for r in gds) / \
            statistics.mean(r["train_seconds"] for r in sgd)
        eq = max(epochs, round(epochs * ratio))
        sgd_eq = [log.run(label, prob, f"sgd@{eq}ep", "sgd", {}, s, eq) for s in range(seeds)]
        again = Log.__new__(Log)  # a second, unlogged run of seed 0
        again.path, again.rows = os.devnull, {}
        rerun = again.run(label, prob, "gdsolver", "gdsolver", {}, 0, None)
        same = all(rerun[k] == gds[0][k] for k in ("test_metric", "val_metric", "test_loss",
                                                    "solves", "accepted", "milp"))
        for name, rows in (("sgd", sgd), ("gdsolver", gds), ("published", pub),
                           (f"sgd {eq} ep", sgd_eq)):
            share = [r["solver_seconds"] / r["train_seconds"] for r in rows]
            print(f"  {prob:11s} {name:11s} test {_ms([r['test_metric'] for r in rows])} "
                  f"solves {[r['solves'] for r in rows]} accepted {[r['accepted'] for r in rows]}"
                  f" solver share {100 * statistics.mean(share):.1f}% train "
                  f"{statistics.mean(r['train_seconds'] for r in rows):.2f}s", flush=True)
        print(f"  {prob:11s} time ratio gdsolver/sgd {ratio:.2f} -> SGD for {eq} epochs; "
              f"seed 0 re-run identical (all but seconds): {same}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all",
                    choices=("regression", "classification", "diagnose", "defaults",
                             "equal_time", "all"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fmnist-epochs", type=int, default=3)
    ap.add_argument("--friedman-epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cls-problem", default="fmnist_mlp", help="classification problem")
    ap.add_argument("--problems", default=",".join(REG_PROBLEMS), help="regression problems")
    ap.add_argument("--out", default="results/gdsolver_claims.jsonl")
    ap.add_argument("--label", default="gdsolver", help="label of the --part defaults rows")
    ap.add_argument("--version", type=int, default=2, choices=(1, 2),
                    help="regression part: 1 = GDSolver before issue 14 (logged rows), 2 = now")
    ap.add_argument("--hp", default="{}", help="JSON overrides for --part defaults")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log = Log(args.out)
    if args.part in ("regression", "all"):
        regression(log, args.seeds, args.friedman_epochs, args.problems.split(","), args.version)
    if args.part in ("classification", "all"):
        classification(log, args.seeds, args.fmnist_epochs, args.cls_problem, args.version)
    if args.part in ("diagnose", "all"):
        diagnose(log, args.cls_problem, args.version)
    if args.part == "defaults":
        defaults(log, args.seeds, args.problems.split(","), args.label, json.loads(args.hp))
    if args.part == "equal_time":
        equal_time(log, args.seeds, args.problems.split(","))


if __name__ == "__main__":
    main()
