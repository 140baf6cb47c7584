"""Runner overhead: seconds per epoch of Adam on fmnist_mlp through ``run_trial`` vs a bare
PyTorch loop over the same model and the same minibatches, interleaved in one run.

    flock /tmp/beyondsgd-bench.lock python benchmarks/runner_overhead.py [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, epoch_batches, run_trial


def bare_epoch(problem, data, seed: int) -> float:
    model = problem.build_model(data, "relu", seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.perf_counter()
    for x, y in epoch_batches(data.x_train, data.y_train, problem.batch_size, seed, 0):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", default="fmnist_mlp")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prob = get_problem(args.problem)
    data = prob.load(DATA_SPLIT_SEED)
    bare_epoch(prob, data, 0)  # warm-up
    runner, bare = [], []
    for r in range(args.repeats):
        res = run_trial(prob, "adam", seed=0, epochs=1, tag=f"overhead{r}")
        runner.append(res.evals[1]["train_seconds"])
        bare.append(bare_epoch(prob, data, 0))
        print(f"repeat {r}: runner {runner[-1]:.3f} s/epoch, bare loop {bare[-1]:.3f} s/epoch",
              flush=True)
    ratio = statistics.median(runner) / statistics.median(bare)
    print(f"{args.problem}, Adam, batch {prob.batch_size}, {args.threads} threads: runner "
          f"{statistics.median(runner):.3f} s/epoch vs bare {statistics.median(bare):.3f} s/epoch "
          f"-> overhead ratio {ratio:.3f} (median of {args.repeats})")


if __name__ == "__main__":
    main()
