"""SLBI's new defaults (the official recipe) against the old ones on a real problem.

New: ``coupling="code"``, lr 0.1, kappa 1, nu 20, lambda 1 in entry-time units (the optimizer's
lambda is 1 * (steps per epoch / 469)), weight decay 0, and (since issue 22) the official
grouping: conv filters, every Linear weight element-wise, the classifier included (the recorded
results predate it: Linear weights by neuron, the classifier dense; ``--grouping neuron``
reruns them so). Old (before issue 14): paper coupling (inside the momentum buffer), lr 0.1,
nu 100, lambda 1 absolute. Both through the runner
(``run_trial``), same seeds and epochs, one thread; every epoch records the dense test accuracy,
the sparse model's validation accuracy and the selected units per layer.

    flock /tmp/beyondsgd-bench.lock python benchmarks/slbi_defaults.py --epochs 3 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from beyondsgd.bench.run.runner import run_trial

CONFIGS = {
    "new": {},
    "old": {"coupling": "paper", "nu": 100.0, "lambda_unit": "absolute"},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", default="fmnist_lenet5")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="benchmarks/results/slbi_defaults.json")
    ap.add_argument("--grouping", choices=("official", "neuron"), default="official",
                    help="Linear weights element-wise (the defaults since issue 22) or by neuron "
                         "with the classifier dense (the defaults before; the recorded results)")
    args = ap.parse_args()
    grouping = {} if args.grouping == "official" else {"linear": "neuron", "output": "none"}
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        for name, hp in CONFIGS.items():
            t0 = time.perf_counter()
            hp = {**grouping, **hp}
            res = run_trial(args.problem, "slbi", hp, seed=seed, epochs=args.epochs)
            per_epoch = [{"epoch": e["epoch"], "test_acc": e.get("test_metric"),
                          "sparse_val_acc": e.get("sparse_val_metric"),
                          "support_total": e.get("support_total"),
                          "support": {k.split("/", 1)[1]: v for k, v in e.items()
                                      if k.startswith("support/")}}
                         for e in res.evals[1:]]
            rows.append({"config": name, "hparams": hp, "seed": seed, "status": res.status,
                         "seconds": time.perf_counter() - t0, "epochs": per_epoch})
            last = per_epoch[-1] if per_epoch else {}
            print(f"{name} seed {seed}: " + ", ".join(
                f"ep{e['epoch']} acc {e['test_acc']:.4f} units {e['support_total']:.0f}"
                for e in per_epoch) + f" ({last.get('support')})", flush=True)
    summary = {}
    for name in CONFIGS:
        last = [r["epochs"][-1] for r in rows if r["config"] == name and r["epochs"]]
        summary[name] = {k: (statistics.mean(v[k] for v in last),
                             statistics.stdev(v[k] for v in last) if len(last) > 1 else None)
                         for k in ("test_acc", "sparse_val_acc", "support_total")}
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"problem": args.problem, "epochs": args.epochs,
                               "seeds": args.seeds, "summary": summary, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
