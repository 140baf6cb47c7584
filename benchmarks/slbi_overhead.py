"""SLBI overhead per training step vs torch.optim.SGD(momentum=0.9), interleaved in one run.

Two copies of the same model (same init) train on the same minibatches; blocks of steps
alternate SGD and SLBI in the order ABBA (SGD, SLBI, SLBI, SGD, ...) for ``--rounds`` rounds, so
drift of the shared machine and any first/second position effect hit both alike. Each step is
forward + backward + optimizer step; a block lasts about ``--block-seconds``. Reports, per
problem, the ratio of the median block times (whole step), of the optimizer step alone, and
1 + (extra optimizer time)/(SGD's whole step), the overhead the optimizer itself causes.

SLBI runs with its defaults (code coupling, kappa 1, nu 20, lambda 1, momentum 0.9, groups from
``slbi_param_groups``: since issue 22 conv filters and every Linear weight element-wise; the
recorded results predate it: Linear weights by neuron, the classifier dense) except lr = 0.01,
the SGD baseline's lr (the cost does not depend on it).

    flock /tmp/beyondsgd-bench.lock python benchmarks/slbi_overhead.py \\
        [--problems fmnist_2c2d fmnist_lenet5] [--rounds 9]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from beyondsgd.bench.problems import get_problem
from beyondsgd.bench.run.runner import DATA_SPLIT_SEED, epoch_batches
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


def measure(problem: str, rounds: int, block_seconds: float, dev: torch.device) -> dict:
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    prob = get_problem(problem)
    data = prob.load(DATA_SPLIT_SEED).to(dev)
    base = prob.build_model(data, "relu", 0).to(dev)
    m_sgd, m_slbi = copy.deepcopy(base), copy.deepcopy(base)
    opts = {"sgd": (m_sgd, torch.optim.SGD(m_sgd.parameters(), lr=0.01, momentum=0.9)),
            "slbi": (m_slbi, SLBI(slbi_param_groups(m_slbi), lr=0.01))}
    it = epoch_batches(data.x_train, data.y_train, prob.batch_size, 0, 0)
    warm = list(itertools.islice(it, 3))
    for m, o in opts.values():                            # warm-up (allocates state)
        block(m, o, warm, prob.loss_fn, sync)
    per_step = block(m_sgd, opts["sgd"][1], warm, prob.loss_fn, sync)[0] / len(warm)
    n = max(1, min(200, round(block_seconds / per_step)))
    batches = (warm + list(itertools.islice(it, max(0, n - len(warm)))))[:n]
    n = len(batches)
    rows: dict[str, list[tuple[float, float]]] = {"sgd": [], "slbi": []}
    for r in range(rounds):
        order = ("sgd", "slbi") if r % 2 == 0 else ("slbi", "sgd")
        for name in order:
            m, o = opts[name]
            rows[name].append(block(m, o, batches, prob.loss_fn, sync))
        print(f"{problem} round {r}: sgd {rows['sgd'][-1][0] / n * 1e3:.2f} ms/step, "
              f"slbi {rows['slbi'][-1][0] / n * 1e3:.2f} ms/step", flush=True)
    med = {k: (statistics.median(t for t, _ in v) / n, statistics.median(s for _, s in v) / n)
           for k, v in rows.items()}
    ratios = [s[0] / g[0] for g, s in zip(rows["sgd"], rows["slbi"])]
    slbi = opts["slbi"][1]
    return {
        "problem": problem, "device": str(dev), "threads": torch.get_num_threads(),
        "batch": prob.batch_size, "steps_per_block": n, "rounds": rounds, "order": "ABBA",
        "sgd_ms_per_step": med["sgd"][0] * 1e3, "slbi_ms_per_step": med["slbi"][0] * 1e3,
        "ratio_step": med["slbi"][0] / med["sgd"][0],
        "ratio_step_per_round_min_median_max": [min(ratios), statistics.median(ratios),
                                                max(ratios)],
        "sgd_opt_ms": med["sgd"][1] * 1e3, "slbi_opt_ms": med["slbi"][1] * 1e3,
        "ratio_optimizer_only": med["slbi"][1] / med["sgd"][1],
        # what the optimizer adds to SGD's whole step: less exposed to the machine's noise in
        # forward/backward than ratio_step (a loaded machine moves the latter by +-10 %)
        "ratio_step_from_optimizer": 1 + (med["slbi"][1] - med["sgd"][1]) / med["sgd"][0],
        "coupled_params": sum(p.numel() for g in slbi.param_groups if g["structure"]
                              for p in g["params"]),
        "total_params": sum(p.numel() for p in m_slbi.parameters()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", nargs="+", default=["fmnist_2c2d", "fmnist_lenet5"])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--block-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="benchmarks/results/slbi_overhead.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    out = Path(args.out)
    prev = json.loads(out.read_text()) if out.exists() else {}
    for problem in args.problems:
        result = measure(problem, args.rounds, args.block_seconds, dev)
        print(json.dumps(result, indent=1), flush=True)
        prev[f"{problem}/{dev.type}/{args.threads}t"] = result
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(prev, indent=1))


if __name__ == "__main__":
    main()
