"""BPGrad per-step overhead vs ``torch.optim.SGD(momentum=0.9)`` on fmnist_mlp.

Both optimizers train their own copy of the same model on the same Fashion-MNIST minibatches
(batch 128), both through ``opt.step(closure)``. Blocks of ``--steps`` steps are timed
interleaved (SGD, BPGrad, BPGrad, SGD, ...) for ``--repeats`` rounds in one process, so drift in
machine load hits both alike. Reported: the median over rounds of the per-round time ratio
BPGrad/SGD, for the whole training step (forward + backward + update: what a user pays) and,
timed separately, for the update alone (``step`` with the gradients already computed).

    flock /tmp/beyondsgd-bench.lock python benchmarks/bpgrad_overhead.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, epoch_batches
from beyondsgd.methods.bpgrad import BPGrad


def make(kind: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return BPGrad(model.parameters(), lipschitz=30.0, momentum=0.9)


def full_steps(model, opt, batches) -> float:
    t0 = time.perf_counter()
    for x, y in batches:
        def closure(x=x, y=y):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    return time.perf_counter() - t0


def update_only(model, opt, batches) -> float:
    """Time of ``step`` alone: the closure only returns a precomputed loss (grads are kept)."""
    x, y = batches[0]
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    loss = loss.detach()
    t0 = time.perf_counter()
    for _ in batches:
        opt.step(lambda: loss)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--out", default="results/bpgrad_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prob = get_problem("fmnist_mlp")
    data = prob.load(DATA_SPLIT_SEED)
    batches = list(epoch_batches(data.x_train, data.y_train, prob.batch_size, 0, 0))
    batches = batches[: args.steps]
    models = {k: prob.build_model(data, "relu", 0) for k in ("sgd", "bpgrad")}
    opts = {k: make(k, m) for k, m in models.items()}
    for k in opts:  # warm-up
        full_steps(models[k], opts[k], batches[:10])
        update_only(models[k], opts[k], batches[:10])

    full = {"sgd": [], "bpgrad": []}
    upd = {"sgd": [], "bpgrad": []}
    for r in range(args.repeats):
        order = ("sgd", "bpgrad") if r % 2 == 0 else ("bpgrad", "sgd")
        for k in order:
            full[k].append(full_steps(models[k], opts[k], batches))
        for k in reversed(order):
            upd[k].append(update_only(models[k], opts[k], batches))
        print(f"round {r}: full step sgd {1e3 * full['sgd'][-1] / args.steps:.3f} ms, bpgrad "
              f"{1e3 * full['bpgrad'][-1] / args.steps:.3f} ms | update only sgd "
              f"{1e6 * upd['sgd'][-1] / args.steps:.1f} us, bpgrad "
              f"{1e6 * upd['bpgrad'][-1] / args.steps:.1f} us", flush=True)

    def ratio(d):
        return statistics.median(b / s for s, b in zip(d["sgd"], d["bpgrad"]))

    res = {
        "problem": "fmnist_mlp", "batch_size": prob.batch_size, "threads": args.threads,
        "steps_per_block": args.steps, "repeats": args.repeats,
        "full_step_ms": {k: 1e3 * statistics.median(v) / args.steps for k, v in full.items()},
        "update_only_us": {k: 1e6 * statistics.median(v) / args.steps for k, v in upd.items()},
        "full_step_ratio": ratio(full), "update_only_ratio": ratio(upd),
    }
    print(f"fmnist_mlp, batch {prob.batch_size}, {args.threads} thread(s): full step "
          f"BPGrad/SGD(momentum=0.9) = {res['full_step_ratio']:.3f} "
          f"({res['full_step_ms']['bpgrad']:.3f} vs {res['full_step_ms']['sgd']:.3f} ms); "
          f"update alone = {res['update_only_ratio']:.2f} "
          f"({res['update_only_us']['bpgrad']:.0f} vs {res['update_only_us']['sgd']:.0f} us); "
          f"median of {args.repeats} interleaved rounds of {args.steps} steps")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
