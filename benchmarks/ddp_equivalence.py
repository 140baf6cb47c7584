"""Data parallelism: how far W=2 gloo processes land from one process on the same global batch.

Runs the plan of ``tests/test_distributed.py`` (every registered method at its defaults, plus
variants: GDSolver solving every epoch with misclassified/random points, ProxProp exact and
mean-Gram, BPGrad running-mean, PHT per-step solves and per-epoch refresh) on digits_mlp for 2
epochs with seed 1, once in two processes (``beyondsgd.distributed.launch_local``, gloo on
127.0.0.1) and once in this process, and prints per run: the largest relative parameter
difference, the relative difference of the final training loss, the final test accuracy of both,
and the largest difference between the two ranks' replicas. For scale, it also measures the
round-off floor of each method in one process: the same trial with the training inputs
multiplied by (1 + 6e-8 N(0, 1)).

With ``--timing`` it also times one epoch of Adam on fmnist_mlp (batch 128) with 1 process
(1 thread) and 2 processes (1 thread each), training seconds from the runner.

    flock /tmp/beyondsgd-bench.lock python benchmarks/ddp_equivalence.py [--timing]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
os.environ.setdefault("BEYONDSGD_DATA", str(Path(__file__).resolve().parents[1] / "tests"
                                             / ".cache"))

import test_distributed as T  # noqa: E402  (the plan and the two-process worker)
from beyondsgd import distributed as D  # noqa: E402
from beyondsgd.bench.problems import get_problem  # noqa: E402
from beyondsgd.bench.run.runner import run_trial  # noqa: E402


def _timing_worker(rank: int, out: str) -> None:
    res = run_trial("fmnist_mlp", "adam", {}, seed=0, epochs=1, distributed=True)
    if rank == 0:
        Path(out).write_text(json.dumps(res.evals[-1]))


def timing() -> dict:
    torch.set_num_threads(1)
    one = run_trial("fmnist_mlp", "adam", {}, seed=0, epochs=1)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "two.json")
        t0 = time.perf_counter()
        D.launch_local(_timing_worker, 2, out)
        wall2 = time.perf_counter() - t0
        two = json.loads(Path(out).read_text())
    return {"one_process_train_seconds": one.evals[-1]["train_seconds"],
            "two_process_train_seconds": two["train_seconds"],
            "speedup": one.evals[-1]["train_seconds"] / two["train_seconds"],
            "two_process_wall_seconds_incl_start": wall2,
            "one_process_test_acc": one.evals[-1]["test_metric"],
            "two_process_test_acc": two["test_metric"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--timing", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/ddp_equivalence.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        two = T.run_two_process(tmp)
    prob = get_problem(T.PROBLEM)
    data = prob.load(0)
    g = torch.Generator().manual_seed(0)
    noisy = dataclasses.replace(
        data, x_train=data.x_train * (1 + 6e-8 * torch.randn(data.x_train.shape, generator=g)))
    rows = []
    print(f"{'run':<24} {'param rel diff':>14} {'floor':>9} {'train loss rel':>14} "
          f"{'acc 1p':>7} {'acc 2p':>7} {'replicas':>8}")
    for name, (method, hp) in T.PLAN.items():
        ref = run_trial(T.PROBLEM, method, hp, seed=1, epochs=T.EPOCHS)
        floor = run_trial(T.PROBLEM, method, hp, seed=1, epochs=T.EPOCHS, dataset=noisy)
        r0, r1 = two[0][name], two[1][name]
        row = {
            "run": name, "method": method, "hparams": hp,
            "param_rel_diff": T._max_rel(r0["params"], ref.model.state_dict()),
            "roundoff_floor": T._max_rel(floor.model.state_dict(), ref.model.state_dict()),
            "train_loss_rel_diff": abs(r0["evals"][-1]["train_loss"]
                                       - ref.evals[-1]["train_loss"])
            / ref.evals[-1]["train_loss"],
            "test_acc_1p": ref.evals[-1]["test_metric"],
            "test_acc_2p": r0["evals"][-1]["test_metric"],
            "replica_diff": max(float((r0["params"][k] - r1["params"][k]).abs().max())
                                for k in r0["params"]),
        }
        rows.append(row)
        print(f"{name:<24} {row['param_rel_diff']:>14.2e} {row['roundoff_floor']:>9.1e} "
              f"{row['train_loss_rel_diff']:>14.2e} {row['test_acc_1p']:>7.4f} "
              f"{row['test_acc_2p']:>7.4f} {row['replica_diff']:>8.1e}", flush=True)
    result = {"problem": T.PROBLEM, "epochs": T.EPOCHS, "world_size": T.WORLD, "runs": rows}
    if args.timing:
        result["timing_fmnist_mlp_adam_1_epoch"] = timing()
        print(json.dumps(result["timing_fmnist_mlp_adam_1_epoch"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
