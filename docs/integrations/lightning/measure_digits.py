"""The results table of docs/integrations/lightning.md: every example as shipped, 20 epochs (the
digits_mlp budget), seeds 0-2, one thread; prints one Markdown row per run.

    python docs/integrations/lightning/measure_digits.py
"""

from __future__ import annotations

import importlib
import logging
import statistics as st
import sys
import time
import warnings
from pathlib import Path

import torch

RUNS = [("Adam lr 1e-3", "baselines_digits", {"optimizer": "adam"}),
        ("SGD lr 0.1", "baselines_digits", {"optimizer": "sgd"}),
        ("BPGrad L 10", "bpgrad_digits", {}),
        ("BPGrad L 10, accumulate_grad_batches=2", "bpgrad_digits", {"accumulate": 2}),
        ("SLBI (official defaults)", "slbi_digits", {}),
        ("ProxProp + Adam", "proxprop_digits", {}),
        ("GDSolver (SGD 0.1, defaults)", "gdsolver_digits", {}),
        ("PHT alternation (K 5, Adam)", "pht_digits", {})]


def _span(v: list[float], fmt: str) -> str:
    return f"{st.mean(v):{fmt}} ({min(v):{fmt}}-{max(v):{fmt}})"


def main(epochs: int = 20, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    print("| run | train loss | val acc | s/run | notes |\n|---|---|---|---|---|")
    for name, module, kw in RUNS:
        mod = importlib.import_module(module)
        loss, acc, sec, notes = [], [], [], []
        for seed in seeds:
            t = time.perf_counter()
            res = mod.main(epochs=epochs, seed=seed, **kw)
            sec.append(time.perf_counter() - t)
            loss.append(res["train_loss"][-1])
            acc.append(res["val_acc"])
            if "events" in res:
                ev = res["events"]
                notes.append(f"{sum(e['accepted'] for e in ev)}/{len(ev)} solves accepted")
            if "support" in res:
                notes.append(f"{res['support']['total']} neurons selected")
        print(f"| {name} | {_span(loss, '.4g')} | {_span(acc, '.3f')} | {st.mean(sec):.1f} | "
              f"{'; '.join(notes)} |", flush=True)


if __name__ == "__main__":
    main()
