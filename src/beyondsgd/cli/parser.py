"""The argument parser of every command."""

from __future__ import annotations

import argparse

from . import reproduce as cli_reproduce
from .common import (
    DEFAULT_THREADS,
    _nonneg_int,
    _pos_int,
    _version,
)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="beyondsgd",
        description="Train and benchmark published alternatives to SGD/Adam.")
    ap.add_argument("--version", action="version", version=f"beyondsgd {_version()}")
    sub = ap.add_subparsers(dest="command", required=True)

    li = sub.add_parser("list", help="problems (and whether their data is here), methods and "
                                     "their hyperparameters")
    li.add_argument("--data-dir", help="directory with the (Fashion-)MNIST IDX files and/or "
                                       "CIFAR-10's cifar-10-batches-py/")
    threads_help = (f"torch CPU threads (default {DEFAULT_THREADS}: measured as fast on an idle "
                    "2-core machine and far faster beside other work, for these small models)")

    def data_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="cuda" if _cuda() else "cpu",
                       help="cpu, cuda, cuda:N (default: cuda when available)")
        p.add_argument("--data-dir", help="directory with the (Fashion-)MNIST IDX files and/or "
                                          "CIFAR-10's cifar-10-batches-py/")
        p.add_argument("--download", action="store_true",
                       help="download (Fashion-)MNIST if missing (needs internet)")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--epochs", type=_nonneg_int,
                       help="epochs, >= 1 (default: the problem's)")
        p.add_argument("--set", action="append", default=[], metavar="METHOD.NAME=VALUE",
                       help="hyperparameter override (repeatable); lr=0 is refused")
        p.add_argument("--train-fraction", type=float, default=1.0,
                       help="use this fraction of the training set, in (0, 1]")
        p.add_argument("--threads", type=_pos_int, help=threads_help)
        data_flags(p)

    b = sub.add_parser("bench", help="problems x methods x seeds into a results store "
                                     "(no arguments: a quick run on built-in data)")
    b.add_argument("--problem", help="problem name(s), comma-separated (default: digits_mlp)")
    b.add_argument("--methods", help="method names, comma-separated, or 'all' (default: all)")
    b.add_argument("--seeds", type=_pos_int, default=2, help="number of seeds (0..N-1)")
    b.add_argument("--store", help="SQLite results file (default results/results.db)")
    b.add_argument("--out", help="also write report.md and plots into this directory")
    b.add_argument("--tag", default="", help="label stored with each trial")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    common(b)

    t = sub.add_parser("train", help="one trial of one method, printing the curve; data "
                                     "parallel under torchrun --nproc-per-node W")
    t.add_argument("--problem", required=True, help="one problem name")
    t.add_argument("--method", required=True, help="one method name")
    t.add_argument("--seed", type=_nonneg_int, default=0)
    t.add_argument("--store", help="optional SQLite results file")
    common(t)

    su = sub.add_parser("suite", help="the benchmark protocol: tuning + seeds + defaults for "
                                      "every problem x method of a budget, then the report")
    su.add_argument("--budget", default="smoke", help="smoke | small | full")
    su.add_argument("--methods", help="restrict to these methods (comma-separated)")
    su.add_argument("--store", help="SQLite results file (default results/suite_BUDGET.db)")
    su.add_argument("--out", help="report directory (default results/report_BUDGET)")
    su.add_argument("--workers", type=_pos_int,
                    help="worker processes (default: one per core; a local Ray cluster gets "
                         "workers x threads CPUs)")
    su.add_argument("--executor", default="local", choices=("local", "ray"),
                    help="local process pool (default) or Ray tasks (pip install "
                         "'beyondsgd[ray]'); the driver alone writes the store")
    su.add_argument("--address", help="Ray cluster address (e.g. auto, ray://head:10001); "
                                      "default: start a local cluster")
    su.add_argument("--threads", type=_pos_int, help="torch threads per worker "
                                                     "(default: cores / workers)")
    su.add_argument("--problems", help="only these of the budget's problems (comma-separated; "
                    "e.g. a second study on the cheap ones)")
    su.add_argument("--studies", type=_pos_int, help="independent tuning studies (default 1): "
                    "each draws its own settings and seeds; claims get one verdict per study, "
                    "the median is shown and a verdict that differs is marked unstable")
    su.add_argument("--tuning-check", action="store_true",
                    help="also tune study 0 again with twice the draws (the budget's n_tune "
                    "draws per tuned hyperparameter, doubled); where the best setting changes "
                    "its final runs are re-run with study 0's seeds (tag final-x2) and the "
                    "claims table says whether each verdict survives")
    su.add_argument("--quiet", action="store_true")
    data_flags(su)

    r = sub.add_parser("report", help="Markdown report and PNG curves from a store (read-only)")
    r.add_argument("store")
    r.add_argument("--out", default="report")
    r.add_argument("--problem", help="restrict to these problems (comma-separated)")
    r.add_argument("--no-plots", action="store_true")

    e = sub.add_parser("export", help="per-trial JSON files and a CSV of all evaluations, or "
                                      "DeepOBS's result layout (store opened read-only)")
    e.add_argument("store")
    e.add_argument("--out", default="export")
    e.add_argument("--format", choices=("json", "deepobs"), default="json",
                   help="json: our per-trial records + evals.csv; deepobs: DeepOBS 1.1.2's "
                        "<problem>/<method>/<setting>/random_seed__S__<time>.json")
    cli_reproduce.add_parser(sub)
    return ap


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
