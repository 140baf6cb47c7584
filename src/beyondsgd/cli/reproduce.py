"""``beyondsgd reproduce``: each paper's own experiment, at the paper, cpu or smoke scale.

``beyondsgd reproduce --list`` shows every experiment (paper, what it measures, the paper's
numbers, data and estimated cost per scale); ``beyondsgd reproduce NAME[,NAME...]|all
[--scale paper|cpu|smoke] [--device cuda] [--seeds N] [--store PATH] [--out DIR]
[--data-dir DIR]`` runs them. Bad names, scales (``--list`` too), devices, seeds, outputs
(created and written with a probe file first), ``--data-dir`` at the smoke scale (which reads no
files), and missing or unreadable data (every problem's data is loaded once before the first
trial) are refused with one line (exit 2) before any work. Trials go to the store (resumable: a
re-run skips finished trials); progress goes to stderr; the paper-vs-ours table is printed at the
end and written with the recipe changes to ``DIR/reproduce_<scale>.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_SCALE = "cpu"


def add_parser(sub) -> argparse.ArgumentParser:
    """Register the ``reproduce`` sub-command on ``sub`` (argparse sub-parsers)."""
    p = sub.add_parser("reproduce", help="the papers' own experiments (paper / cpu / smoke "
                                         "scale) with a paper-vs-ours table")
    p.add_argument("names", nargs="?", help="experiment name(s), comma-separated, or 'all'")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.add_argument("--scale", default=DEFAULT_SCALE,
                   help="paper (the published recipe; the paper's data, a GPU), cpu (default: "
                        "Fashion-MNIST, small budgets) or smoke (seconds)")
    p.add_argument("--seeds", help="seeds per setting (default: the experiment's, per scale)")
    p.add_argument("--store", help="SQLite results file (default results/reproduce_SCALE.db)")
    p.add_argument("--out", help="report directory (default results/reproduce)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when "
                                                  "available)")
    p.add_argument("--data-dir", help="directory with the paper's data: MNIST IDX files and/or "
                                      "cifar-10-batches-py/ (cpu scale: Fashion-MNIST IDX files)")
    p.add_argument("--download", action="store_true",
                   help="download the paper's data when missing (needs internet)")
    p.add_argument("--threads", help="torch CPU threads (default 1)")
    p.add_argument("--no-plots", action="store_true", help="no figure in the report")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def list_text() -> str:
    """What ``--list`` prints."""
    from ..bench.problems import get_problem
    from ..bench.reproduce import REGISTRY, SCALES

    out = []
    for e in REGISTRY.values():
        out += [f"{e.name}", f"  paper:    {e.paper}", f"  measures: {e.measures}"]
        for n in e.paper_numbers:
            out.append(f"  paper's number: {n.quantity}: {n.value} ({n.source})")
        for s in SCALES:
            probs = e.problems.get(s, ())
            missing = [m for m in (get_problem(p).data_status() for p in probs) if m]
            state = f"  [data missing: {missing[0]}]" if missing else ""
            out.append(f"  {s:<6} data: {e.data.get(s, 'n/a')}; cost: {e.cost.get(s, 'n/a')}; "
                       f"{e.seeds.get(s, '?')} seeds{state}")
        out.append("")
    return "\n".join(out).rstrip()


def _error(msg: str) -> Exception:
    from .common import CLIError

    return CLIError(msg)


def _int(text: str | None, flag: str, low: int = 1) -> int | None:
    if text is None:
        return None
    try:
        v = int(text)
    except ValueError:
        raise _error(f"{flag} {text!r} is not an integer; accepted: an integer >= {low}") \
            from None
    if v < low:
        raise _error(f"{flag} {v}: accepted: an integer >= {low}")
    return v


def resolve(args: argparse.Namespace) -> tuple[list, str, str]:
    """(experiments, scale, device) after checking names, scale, device and data; raises
    CLIError with one line naming the bad value and what is accepted."""
    from ..bench.problems import get_problem
    from ..bench.reproduce import REGISTRY

    check_scale(args.scale)
    if not args.names:
        raise _error("name an experiment (or 'all'); accepted: " + ", ".join(REGISTRY) +
                     " (see --list)")
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if names == ["all"]:
        names = list(REGISTRY)
    bad = [n for n in names if n not in REGISTRY]
    if bad or not names:
        raise _error(f"unknown experiment(s) {', '.join(bad) or repr(args.names)}; accepted: "
                     f"{', '.join(REGISTRY)} or all")
    exps = [REGISTRY[n] for n in dict.fromkeys(names)]
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise _error(f"--device {device!r}; accepted: cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _error(f"--device {device!r}: no CUDA device here; accepted: cpu")
    if dev.type not in ("cpu", "cuda"):
        raise _error(f"--device {device!r}; accepted: cpu, cuda, cuda:N")
    missing = []
    for e in exps:
        if args.scale not in e.problems:
            raise _error(f"experiment {e.name} has no {args.scale} scale; it has "
                         f"{', '.join(e.problems)}")
        for p in e.problems[args.scale]:
            why = get_problem(p).data_status()
            if why:
                missing.append(f"{e.name} ({p}): {why}")
    if missing:
        raise _error(f"data missing for the {args.scale} scale: {missing[0]}" +
                     (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return exps, args.scale, device


def check_scale(scale: str) -> None:
    """CLIError unless ``scale`` is one of the scales (also for ``--list``)."""
    from ..bench.reproduce import SCALES

    if scale not in SCALES:
        raise _error(f"--scale {scale!r}; accepted: {', '.join(SCALES)}")


def check_data(exps: list, scale: str) -> None:
    """Load every problem's data of ``exps`` at ``scale`` once, before any work: files that
    exist but are unreadable (a garbled CIFAR-10 batch or archive, a bad IDX file) are refused
    here in one line, not by a failed experiment later. The loaders cache what they read, so the
    experiments do not read it again."""
    from ..bench.run.validate import PreflightError, load_data

    for name in dict.fromkeys(p for e in exps for p in e.problems.get(scale, ())):
        try:
            load_data(name)
        except PreflightError as exc:
            raise _error(exc.errors[0]) from None
        except ValueError as exc:
            raise _error(str(exc)) from None


def _apply_data_flags(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(_int(args.threads, "--threads") or 1)
    if args.data_dir and args.scale == "smoke":
        raise _error(f"--data-dir {args.data_dir!r} is unused at the smoke scale (its problems "
                     "are synthetic images, no files are read); accepted: omit --data-dir, or "
                     "--scale cpu (Fashion-MNIST) or paper (MNIST, CIFAR-10)")
    if args.data_dir:
        if not Path(args.data_dir).is_dir():
            raise _error(f"--data-dir {args.data_dir!r} is not a directory; accepted: a "
                         "directory with MNIST IDX files and/or cifar-10-batches-py/")
        os.environ["BEYONDSGD_MNIST"] = args.data_dir
        os.environ["BEYONDSGD_CIFAR10"] = args.data_dir
        if args.scale != "paper":
            os.environ["BEYONDSGD_FASHION_MNIST"] = args.data_dir
    if args.download:
        os.environ["BEYONDSGD_DOWNLOAD"] = "1"


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..bench.reproduce import REGISTRY, Context
    from ..bench.reproduce.table import (
        ExperimentRun,
        outcome_table,
        replay,
        stored_runs,
        stored_wall,
        write_markdown,
    )
    from ..bench.run.validate import check_out_dir
    from ..bench.store import Store

    check_scale(args.scale)
    if args.list:
        print(list_text())
        return 0
    _apply_data_flags(args)
    exps, scale, device = resolve(args)
    seeds = _int(args.seeds, "--seeds")
    out_dir = Path(args.out or "results/reproduce")
    try:
        check_out_dir(out_dir)
    except ValueError as exc:
        raise _error(str(exc)) from None
    check_data(exps, scale)
    store_path = args.store or f"results/reproduce_{scale}.db"
    runs: list[ExperimentRun] = []
    failed = []
    with Store(store_path) as store:
        for e in exps:
            n = seeds or e.seeds.get(scale, 2)
            ctx = Context(scale=scale, seeds=n, device=device, store=store,
                          progress=not args.quiet, experiment=e.name)
            ctx.log(f"start: {scale} scale, {n} seeds, store {store_path}")
            t0 = time.perf_counter()
            try:
                outcomes = e.run(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one experiment's failure does not stop the others
                failed.append(f"{e.name}: {type(exc).__name__}: {exc}")
                print(f"beyondsgd reproduce: {e.name} failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr)
                continue
            wall = time.perf_counter() - t0
            ctx.log(f"done in {wall:.0f} s wall: {ctx.trained} trials trained, {ctx.skipped} "
                    "found in the store")
            runs.append(ExperimentRun(e, scale, n, outcomes, wall, ctx.train_seconds,
                                      ctx.trials_seen, epoch_seconds=ctx.epoch_seconds,
                                      stored_wall=stored_wall(store, e.name, scale,
                                                              ctx.trial_ids or None)))
        # the report covers every experiment of this scale in the store (others' runs too,
        # recomputed from their trials), so the last writer of the file leaves it complete
        done = {r.experiment.name for r in runs}
        others = [replay(store, e, s, n) for e, s, n in stored_runs(store)
                  if s == scale and e not in done and e in REGISTRY]
    all_out = [o for r in runs for o in r.outcomes]
    if all_out:
        print(outcome_table(all_out))
    from ..bench.report.figures import paper_vs_ours  # the cli may import the report

    report = write_markdown(runs + [r for r in others if r.outcomes], out_dir /
                            f"reproduce_{scale}.md", plots=not args.no_plots,
                            figure=paper_vs_ours)
    for r in runs:
        print(f"{r.experiment.name}: {r.wall_seconds:.0f} s wall, {r.trials} trials")
    print(f"report: {report}\nstore: {store_path}")
    if failed:
        print(f"beyondsgd reproduce: {len(failed)} experiment(s) failed: " + "; ".join(failed),
              file=sys.stderr)
        return 1
    return 0
