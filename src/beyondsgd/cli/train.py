"""``beyondsgd train``: one trial of one method, printing the curve (data parallel under
``torchrun``)."""

from __future__ import annotations

import argparse
import json

from ..bench.problems import get_problem
from ..bench.report import label
from ..bench.run.batch import STORE_ERRORS, failure_text
from ..bench.run.runner import run_trial
from ..bench.run.validate import (
    Plan,
    extra_hint,
    preflight,
)
from .common import (
    QUICK_PROBLEM,
    TrialFailed,
    _apply_flags,
    _one,
    _open_store,
    _rounded,
    check_store_problems,
    parse_overrides,
    resolve_methods,
    resolve_problems,
)


def cmd_train(args: argparse.Namespace) -> int:
    """One trial. Under ``torchrun --nproc-per-node W`` (``WORLD_SIZE`` > 1) it trains data
    parallel: gloo on CPU, NCCL on GPUs (one per local rank); rank 0 alone prints and writes."""
    from .. import distributed as D

    problem = _one(resolve_problems(args.problem, QUICK_PROBLEM), "--problem", args.problem)
    method = _one(resolve_methods(args.method, "--method"), "--method", args.method)
    hp = parse_overrides(args.set, [method], single=method)[method]
    _apply_flags(args)
    preflight(Plan((problem,), ((method, hp),), args.device, args.epochs, args.train_fraction))
    check_store_problems(args.store, [problem])
    started = not D.active()
    device = D.init_from_env(args.device)
    started = started and D.active()
    lead = D.rank() == 0
    store = _open_store(args.store) if args.store and lead else None
    try:
        if lead:
            world = f" / {D.world_size()} processes" if D.active() else ""
            print(f"{problem} / {label(method, hp)} / seed {args.seed}{world}")
        try:
            res = run_trial(problem, method, hp, seed=args.seed, epochs=args.epochs,
                            device=device, store=store, progress=lead,
                            train_fraction=args.train_fraction)
        except STORE_ERRORS:
            raise
        except Exception as exc:
            if extra_hint(exc):
                raise
            raise TrialFailed(f"the trial failed at run time: {failure_text(exc)}") from exc
        if lead and getattr(res, "busy", False):
            print(f"status: not run: another process is running this trial "
                  f"({getattr(res, 'holder', '') or 'in this store'}); re-run when it ends")
        elif lead:
            for e in res.events:
                print("  event:", json.dumps(_rounded(e), default=str))
            metric = get_problem(problem).metric
            final = res.final.get("test_metric")
            best = res.best
            print(f"status: {res.status}; final test {metric} "
                  f"{'n/a' if final is None else f'{final:.4f}'}; best "
                  f"{'n/a' if best is None else f'{best:.4f}'}"
                  + ("; skipped: already finished in the store" if res.skipped else ""))
    finally:
        if store:
            store.close()
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0 if res.status == "finished" else 3
