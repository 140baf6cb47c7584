"""SLBI overhead per training step vs torch.optim.SGD(momentum=0.9), interleaved in one run.

Two copies of the same model (same init) train on the same minibatches; blocks of ``--block``
steps alternate SGD, SLBI, SGD, SLBI, ... (``--rounds`` rounds) so drift of the shared machine
hits both alike. Each step is forward + backward + optimizer step. Reports the ratio of median
block times (whole step) and of the optimizer step alone.

    flock /tmp/beyondsgd-bench.lock python benchmarks/slbi_overhead.py [--problem fmnist_2c2d]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.runner import DATA_SPLIT_SEED, epoch_batches
from beyondsgd.methods.slbi import SLBI, slbi_param_groups


def block(model, opt, batches, loss_fn, sync) -> tuple[float, float]:
    """Seconds for the whole block and for the optimizer steps inside it."""
    t_opt = 0.0
    sync()
    t0 = time.perf_counter()
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        sync()
        t1 = time.perf_counter()
        opt.step()
        sync()
        t_opt += time.perf_counter() - t1
    return time.perf_counter() - t0, t_opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", default="fmnist_2c2d")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/slbi_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    prob = get_problem(args.problem)
    data = prob.load(DATA_SPLIT_SEED).to(dev)
    base = prob.build_model(data, "relu", 0).to(dev)
    m_sgd, m_slbi = copy.deepcopy(base), copy.deepcopy(base)
    sgd = torch.optim.SGD(m_sgd.parameters(), lr=0.01, momentum=0.9)
    slbi = SLBI(slbi_param_groups(m_slbi), lr=0.01, kappa=1.0, nu=100.0, momentum=0.9)
    it = epoch_batches(data.x_train, data.y_train, prob.batch_size, 0, 0)
    batches = [next(it) for _ in range(args.block)]
    block(m_sgd, sgd, batches[:2], prob.loss_fn, sync)      # warm-up (allocates state)
    block(m_slbi, slbi, batches[:2], prob.loss_fn, sync)
    rows = {"sgd": [], "slbi": []}
    for r in range(args.rounds):
        for name, m, o in (("sgd", m_sgd, sgd), ("slbi", m_slbi, slbi)):
            rows[name].append(block(m, o, batches, prob.loss_fn, sync))
        print(f"round {r}: sgd {rows['sgd'][-1][0] / args.block * 1e3:.1f} ms/step, "
              f"slbi {rows['slbi'][-1][0] / args.block * 1e3:.1f} ms/step", flush=True)
    med = {k: (statistics.median(t for t, _ in v) / args.block,
               statistics.median(s for _, s in v) / args.block) for k, v in rows.items()}
    result = {
        "problem": args.problem, "device": str(dev), "threads": args.threads,
        "batch": prob.batch_size, "steps_per_block": args.block, "rounds": args.rounds,
        "sgd_ms_per_step": med["sgd"][0] * 1e3, "slbi_ms_per_step": med["slbi"][0] * 1e3,
        "ratio_step": med["slbi"][0] / med["sgd"][0],
        "sgd_opt_ms": med["sgd"][1] * 1e3, "slbi_opt_ms": med["slbi"][1] * 1e3,
        "ratio_optimizer_only": med["slbi"][1] / med["sgd"][1],
        "coupled_params": sum(p.numel() for g in slbi.param_groups if g["structure"]
                              for p in g["params"]),
        "total_params": sum(p.numel() for p in m_slbi.parameters()),
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prev = json.loads(out.read_text()) if out.exists() else {}
    prev[f"{args.problem}/{dev.type}/{args.threads}t"] = result
    out.write_text(json.dumps(prev, indent=1))


if __name__ == "__main__":
    main()
