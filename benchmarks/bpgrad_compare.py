"""The BPGrad paper's headline claim, small scale: BPGrad vs Adagrad, Adadelta, RMSProp and Adam.

Protocol (per problem; every trial goes through ``run_trial``, so for one seed every method starts
from the same initial weights and sees the same minibatch order; equal epochs for all):

1. tune: each method over a 4-value log grid of its step-size knob (``lr``; BPGrad: ``lipschitz``,
   which acts as 1/lr) with seed 0; pick the value with the best final *validation* accuracy,
2. run the picked value with seeds 1 and 2 as well, report final train loss (runner's fixed
   10k-sample train subset) and final test accuracy, mean +- std over seeds 0-2,
3. ``estimate_lipschitz`` (50 steps of SGD(0.01, momentum 0.9) and of Adam(1e-3) from the seed-0
   initial weights) and BPGrad run at its mean/median/max with seed 0, against the grid's best L.

fmnist_mlp uses 3 epochs (its default budget is 10) to keep the whole run near 15 CPU minutes.
Finished trials are appended to ``--out`` (JSON lines) as they end and skipped when re-run.

    flock /tmp/beyondsgd-bench.lock python benchmarks/bpgrad_compare.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, epoch_batches, run_trial
from beyondsgd.methods.bpgrad import estimate_lipschitz

GRIDS = {
    "bpgrad": ("lipschitz", (3.0, 10.0, 30.0, 100.0)),
    "adam": ("lr", (3e-4, 1e-3, 3e-3, 1e-2)),
    "rmsprop": ("lr", (1e-4, 3e-4, 1e-3, 3e-3)),
    "adagrad": ("lr", (3e-3, 1e-2, 3e-2, 1e-1)),
    "adadelta": ("lr", (0.3, 1.0, 3.0, 10.0)),
}
EPOCHS = {"mnist1d_mlp": 30, "fmnist_mlp": 3}


class Log:
    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.rows[r["key"]] = r

    def get(self, key: str, fn, *args) -> dict:
        """The logged row ``key``, computing it as ``fn(*args)`` (and appending it) if new."""
        if key not in self.rows:
            r = {"key": key, **fn(*args)}
            self.rows[key] = r
            with self.path.open("a") as f:
                f.write(json.dumps(r) + "\n")
        return self.rows[key]


def trial(problem: str, method: str, hp: dict, seed: int, epochs: int) -> dict:
    t0 = time.perf_counter()
    res = run_trial(problem, method, hp, seed=seed, epochs=epochs)
    f = res.final
    out = {"problem": problem, "method": method, "hp": hp, "seed": seed, "epochs": epochs,
           "status": res.status, "train_loss": f.get("train_loss"), "val_acc": f.get("val_metric"),
           "test_acc": f.get("test_metric"), "train_seconds": f.get("train_seconds"),
           "wall": time.perf_counter() - t0}
    print(f"  {problem} {method} {hp} seed {seed}: {res.status} train loss "
          f"{out['train_loss']:.4f} val {out['val_acc']:.4f} test {out['test_acc']:.4f}",
          flush=True)
    return out


def estimate(p, data, opt_name: str) -> dict:
    t0 = time.perf_counter()
    model = p.build_model(data, "relu", 0)
    batches = epoch_batches(data.x_train, data.y_train, p.batch_size, 0, 0)
    e = estimate_lipschitz(model, p.loss_fn, batches, steps=50, optimizer=opt_name)
    print(f"  {p.name} estimate_lipschitz({opt_name}): {e}", flush=True)
    return {**e.as_dict(), "wall": time.perf_counter() - t0}


def score(r: dict) -> float:
    v = r["val_acc"]
    return v if (r["status"] == "finished" and v is not None and v == v) else -1.0


def ms(vals: list[float]) -> str:
    return f"{statistics.mean(vals):.4f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", default="mnist1d_mlp,fmnist_mlp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="results/bpgrad_compare.jsonl")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = Log(out)
    report: list[str] = []
    t_start = time.perf_counter()
    for prob in args.problems.split(","):
        ep = EPOCHS[prob]
        report.append(f"\n## {prob} ({ep} epochs, batch {get_problem(prob).batch_size})\n")
        report.append("| method | grid (val acc, seed 0) | picked | final train loss | "
                      "final test acc |")
        report.append("|---|---|---|---|---|")
        best_L = None
        for method, (knob, grid) in GRIDS.items():
            rows = []
            for v in grid:
                rows.append(log.get(f"{prob}|{method}|{knob}={v}|0", trial,
                                    prob, method, {knob: v}, 0, ep))
            best = max(rows, key=score)
            pick = best["hp"][knob]
            if method == "bpgrad":
                best_L = pick
            seeds = [best] + [log.get(f"{prob}|{method}|{knob}={pick}|{s}", trial,
                                      prob, method, {knob: pick}, s, ep) for s in (1, 2)]
            ok = [r for r in seeds if r["status"] == "finished"]
            gtxt = ", ".join(f"{r['hp'][knob]:g}: {r['val_acc']:.3f}" if r["status"] == "finished"
                             else f"{r['hp'][knob]:g}: {r['status']}" for r in rows)
            edge = " (grid edge)" if pick in (grid[0], grid[-1]) else ""
            report.append(f"| {method} | {gtxt} | {knob}={pick:g}{edge} | "
                          f"{ms([r['train_loss'] for r in ok])} | "
                          f"{ms([r['test_acc'] for r in ok])} |")

        # estimate_lipschitz vs the best L of the grid
        p = get_problem(prob)
        data = p.load(DATA_SPLIT_SEED)
        report.append(f"\nestimate_lipschitz on {prob} (50 steps from the seed-0 weights, fixed "
                      f"eval batch); grid-best L = {best_L:g}\n")
        report.append("| run | mean | median | max | BPGrad at mean / median / max: val acc "
                      "(seed 0) |")
        report.append("|---|---|---|---|---|")
        for opt_name in ("sgd", "adam"):
            e = log.get(f"{prob}|estimate|{opt_name}", estimate, p, data, opt_name)
            accs = []
            for stat in ("mean", "median", "max"):
                L = float(f"{e[stat]:.4g}")
                r = log.get(f"{prob}|bpgrad|lipschitz={L}|0", trial,
                            prob, "bpgrad", {"lipschitz": L}, 0, ep)
                accs.append(f"{r['val_acc']:.3f}" if r["status"] == "finished" else r["status"])
            report.append(f"| {opt_name} | {e['mean']:.3g} | {e['median']:.3g} | {e['max']:.3g} "
                          f"| {' / '.join(accs)} |")
    report.append(f"\n(total wall time of this invocation {time.perf_counter() - t_start:.0f} s, "
                  f"{args.threads} thread(s))")
    text = "\n".join(report)
    print(text)
    out.with_suffix(".md").write_text(text + "\n")


if __name__ == "__main__":
    main()
