"""Command line: ``beyondsgd list | bench | train | suite | report | export``.

Argument parsing, the pre-flight check and progress display only; the work is done by
``beyondsgd.bench``. Every bad input is answered once, before any work starts, with one line
``beyondsgd CMD: error: ...`` and exit status 2 (see :mod:`beyondsgd.bench.run.validate`); an
unexpected internal error prints one line and exits 1 (``BEYONDSGD_DEBUG=1`` shows the
traceback). ``report`` and ``export`` open the store read-only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import cli_reproduce
from .bench.problems import PROBLEMS, get_problem
from .bench.report import label, markdown_table, summarize, write_report
from .bench.run.batch import STORE_ERRORS, TrialSpec, failure_lines, failure_text, run_batch
from .bench.run.runner import run_trial
from .bench.run.validate import (
    Plan,
    PreflightError,
    check_out_dir,
    extra_hint,
    preflight,
    require_bench_extra,
)
from .bench.store import Store
from .bench.store.export import export_deepobs, export_store
from .data import DataFileError
from .distributed import restored_environ
from .methods import METHODS, get_method_class
from .methods.base import canonical_hparams, resolve_hparams

QUICK_PROBLEM = "digits_mlp"
QUICK_EPOCHS = 10
# Measured (5 digits_mlp epochs of Adam, train seconds, 2-core machine): idle 0.055 s with 1
# thread vs 0.054 s with 2; beside one CPU-bound process 0.18-0.27 s with 1 vs 3.1-7.3 s with 2.
# The built-in problems are small: one thread is as fast idle and far faster under load.
DEFAULT_THREADS = 1
DEBUG_HINT = "(run with BEYONDSGD_DEBUG=1 for the traceback)"


class CLIError(Exception):
    """Bad command-line input: printed as ``error: ...`` with exit status 2."""


class TrialFailed(Exception):
    """A trial failed at run time (after the pre-flight check): one line, exit status 1."""


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:  # pragma: no cover - before __version__ existed
        from importlib.metadata import version

        return version("beyondsgd")


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") \
            from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {v}")
    return v


def _pos_int(text: str) -> int:
    v = _nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return v


def _names(spec: str, flag: str, registry: dict) -> list[str]:
    names = _csv(spec)
    if not names:
        raise CLIError(f"{flag} {spec!r} names nothing; accepted: comma-separated names from "
                       f"{', '.join(registry)}")
    bad = [n for n in names if n not in registry]
    if bad:
        kind = "method" if registry is METHODS else "problem"
        raise CLIError(f"unknown {kind}(s) {', '.join(bad)}; available: {', '.join(registry)}")
    return list(dict.fromkeys(names))


def resolve_methods(spec: str | None, flag: str = "--methods") -> list[str]:
    if spec is None or spec.strip() == "all":
        return list(METHODS)
    return _names(spec, flag, METHODS)


def resolve_problems(spec: str | None, default: str, flag: str = "--problem") -> list[str]:
    return _names(spec, flag, PROBLEMS) if spec is not None else [default]


def _one(names: list[str], flag: str, spec: str) -> str:
    if len(names) != 1:
        raise CLIError(f"train runs one trial: {flag} {spec!r} names {len(names)}; accepted: "
                       f"one name (use `beyondsgd bench {flag}{'s' if flag == '--method' else ''}"
                       f" {spec}` for several)")
    return names[0]


def parse_overrides(items: list[str], methods: list[str], single: str | None = None
                    ) -> dict[str, dict[str, Any]]:
    """``--set method.name=value`` (or ``name=value`` when one method) -> per-method dicts."""
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--set {item!r}: expected METHOD.NAME=VALUE")
        lhs, value = item.split("=", 1)
        if "." in lhs:
            method, name = lhs.split(".", 1)
        elif single is not None:
            method, name = single, lhs
        else:
            raise CLIError(f"--set {item!r}: name the method, e.g. adam.{lhs}={value}")
        if method not in out:
            raise CLIError(f"--set {item!r}: method {method!r} is not among the methods run "
                           f"({', '.join(methods)})")
        out[method][name] = value
    for method, hp in out.items():
        try:
            out[method] = resolve_hparams(get_method_class(method), hp)
            given = canonical_hparams(get_method_class(method), hp)  # renamed: the new names
        except ValueError as exc:
            raise CLIError(f"--set: {exc}") from None
        out[method] = {k: v for k, v in out[method].items() if k in given}
    return out


def _apply_flags(args: argparse.Namespace) -> None:
    """Threads (default :data:`DEFAULT_THREADS`) and data locations, process-wide."""
    import torch

    torch.set_num_threads(getattr(args, "threads", None) or DEFAULT_THREADS)
    if getattr(args, "data_dir", None):
        if not Path(args.data_dir).is_dir():
            raise CLIError(f"--data-dir {args.data_dir!r} is not a directory; accepted: a "
                           "directory holding the four (Fashion-)MNIST IDX files and/or CIFAR-10's "
                           "cifar-10-batches-py/")
        os.environ["BEYONDSGD_FASHION_MNIST"] = args.data_dir
        os.environ["BEYONDSGD_MNIST"] = args.data_dir
        os.environ["BEYONDSGD_CIFAR10"] = args.data_dir  # DIR/cifar-10-batches-py or DIR
    if getattr(args, "download", False):
        os.environ["BEYONDSGD_DOWNLOAD"] = "1"


def _check_out(path: str | None, flag: str = "--out") -> None:
    """Refuse an output directory that cannot be created or written, before any work
    (:func:`beyondsgd.bench.run.validate.check_out_dir`: a probe file is created and removed)."""
    if path is None:
        return
    try:
        check_out_dir(path, flag)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _open_store(path: str, readonly: bool = False) -> Store:
    if readonly:
        if not Path(path).exists():
            raise CLIError(f"no store at {path}; accepted: a results file written by "
                           "`beyondsgd bench` or `beyondsgd suite`")
        try:
            return Store(path, readonly=True)
        except TypeError:  # pragma: no cover - a Store without the readonly option
            pass
    return Store(path)


# ------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    _apply_flags(args)
    print("Problems:")
    for p in PROBLEMS.values():
        print(f"  {p.name:<22} {p.description}")
        print(f"  {'':<22} batch {p.batch_size}, {p.epochs} epochs, target test {p.metric} "
              f"{'>=' if p.higher_is_better else '<='} {p.target:g}")
        missing = getattr(p, "data_status", lambda: None)()
        if missing:
            print(f"  {'':<22} DATA MISSING: {missing}")
    print("\nMethods (hyperparameter=default; * = tuned by the benchmark protocol):")
    for name, cls in METHODS.items():
        print(f"  {name:<14} {cls.summary}  [{cls.paper}]")
        for h in cls.hparams:
            extra = f" in {list(h.choices)}" if h.choices else ""
            rng = f" range [{h.low:g}, {h.high:g}]{' log' if h.log else ''}" \
                if h.tune and h.low is not None else ""
            star = "*" if h.tune else " "
            print(f"  {'':<14} {star}{h.name}={h.default!r} ({h.type.__name__}{extra}{rng}) "
                  f"{h.help}")
    return 0


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="epoch", dynamic_ncols=True, file=sys.stderr)


def cmd_bench(args: argparse.Namespace) -> int:
    quick = args.problem is None and args.methods is None
    problems = resolve_problems(args.problem, QUICK_PROBLEM)
    methods = resolve_methods(args.methods)
    overrides = parse_overrides(args.set, methods)
    require_bench_extra("bench", ("scipy", "matplotlib") if args.out else ("scipy",))
    _check_out(args.out)
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if quick else None)
    store_path = args.store or ("results/quick.db" if quick else "results/results.db")
    _apply_flags(args)
    preflight(Plan(tuple(problems), tuple((m, overrides[m]) for m in methods), args.device,
                   epochs, args.train_fraction))
    if quick:
        print(f"Quick default: {QUICK_PROBLEM}, all {len(methods)} methods, {args.seeds} "
              f"seed(s), {epochs} epochs -> {store_path}", file=sys.stderr)
    plan = [TrialSpec(p, m, overrides[m], s, f"{p}/{label(m, overrides[m])}/seed{s}")
            for p in problems for m in methods for s in range(args.seeds)]
    n_epochs = {p: epochs if epochs is not None else get_problem(p).epochs for p in problems}
    t0 = time.time()
    with _open_store(store_path) as store:
        bar = _progress_bar(sum(n_epochs[t.problem] for t in plan), not args.quiet)

        def on_eval(row: dict) -> None:
            if bar is not None and row["epoch"] > 0:
                bar.update(1)
                bar.set_postfix(epoch=row["epoch"], loss=f"{row['train_loss']:.4g}",
                                test=f"{row['test_metric']:.4g}")

        def on_end(spec: TrialSpec, res, trained: int) -> None:
            if bar is not None:  # skipped, resumed or failed trials: count their epochs too
                bar.update(max(0, n_epochs[spec.problem] - trained))

        def on_new_failure(spec: TrialSpec, msg: str) -> None:
            print(f"\n{spec.name}: FAILED: {msg} (further trials failing the same way are "
                  "counted, not repeated)", file=sys.stderr)

        result = run_batch(plan, store, epochs=epochs, device=args.device,
                           train_fraction=args.train_fraction, tag=args.tag,
                           on_start=(lambda spec: bar.set_description(spec.name)) if bar else None,
                           on_eval=on_eval, on_end=on_end, on_new_failure=on_new_failure)
        if bar is not None:
            bar.close()
        rows = [r for r in summarize(store, problems) if r["method"] in methods]
        print(markdown_table(rows))
        if args.out:
            path = write_report(store, args.out, problems)
            print(f"report: {path}", file=sys.stderr)
    for line in result.messages(store_path):
        print(line, file=sys.stderr)
    print(f"wall time {time.time() - t0:.1f} s; store {store_path}", file=sys.stderr)
    return 1 if result.failed else 0


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def cmd_train(args: argparse.Namespace) -> int:
    """One trial. Under ``torchrun --nproc-per-node W`` (``WORLD_SIZE`` > 1) it trains data
    parallel: gloo on CPU, NCCL on GPUs (one per local rank); rank 0 alone prints and writes."""
    from . import distributed as D

    problem = _one(resolve_problems(args.problem, QUICK_PROBLEM), "--problem", args.problem)
    method = _one(resolve_methods(args.method, "--method"), "--method", args.method)
    hp = parse_overrides(args.set, [method], single=method)[method]
    _apply_flags(args)
    preflight(Plan((problem,), ((method, hp),), args.device, args.epochs, args.train_fraction))
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


def cmd_suite(args: argparse.Namespace) -> int:
    from .bench.protocol.suite import BUDGETS, run_suite

    if args.budget not in BUDGETS:
        raise CLIError(f"unknown budget {args.budget!r}; accepted: {', '.join(BUDGETS)}")
    if args.address and args.executor != "ray":
        raise CLIError(f"--address {args.address!r} needs --executor ray")
    methods = resolve_methods(args.methods) if args.methods is not None else None
    require_bench_extra("suite")
    _check_out(args.out or f"results/report_{args.budget}")
    _apply_flags(args)
    budget = BUDGETS[args.budget]
    if args.problems is not None:  # a subset of the budget's problems, same epochs
        names = _csv(args.problems)
        bad = [n for n in names if n not in budget.problems]
        if bad or not names:
            what = f"{', '.join(bad)} not in budget {args.budget!r}" if bad else "names nothing"
            raise CLIError(f"--problems {args.problems!r}: {what}; accepted: comma-separated "
                           f"names from {', '.join(budget.problems)}")
        budget = dataclasses.replace(budget, problems={p: budget.problems[p] for p in names})
    run = methods or list(budget.methods or METHODS)
    preflight(Plan(tuple(budget.problems), tuple((m, {}) for m in run), args.device))
    store = args.store or f"results/suite_{args.budget}.db"
    _open_store(store).close()  # a bad store is refused before the workers start
    where = (f"Ray cluster {args.address}" if args.address else "a local Ray cluster") \
        if args.executor == "ray" else f"{args.workers or os.cpu_count()} worker(s)"
    print(f"suite {args.budget}: {budget.description}; store {store}; {where}",
          file=sys.stderr)
    try:
        res = run_suite(budget, store, methods, workers=args.workers, threads=args.threads,
                        device=args.device, progress=not args.quiet, executor=args.executor,
                        address=args.address, studies=args.studies)
    except (ValueError, ImportError) as exc:
        if isinstance(exc, ImportError) and extra_hint(exc):
            raise
        raise CLIError(str(exc)) from None
    with _open_store(store, readonly=True) as st:
        path = write_report(st, args.out or f"results/report_{args.budget}")
        _print_summary(st, None)
    print(f"suite {args.budget}: {res.jobs} trials in {res.seconds:.1f} s; report: {path}")
    failures: dict[str, list[str]] = {}
    for f in res.failed:
        name, _, msg = f.partition(": ")
        failures.setdefault(msg, []).append(name)
    for line in failure_lines(failures):
        print(line, file=sys.stderr)
    return 1 if res.failed else 0


def _print_summary(store: Store, problems: list[str] | None) -> None:
    from .bench.report import build as R

    summary = getattr(R, "report_summary", None)
    if summary is not None:
        print(summary(store, problems))
        return
    rows = summarize(store, problems)  # pragma: no cover - before report_summary existed
    print(f"{len(store.trials())} trials; problems: {', '.join({r['problem'] for r in rows})}")


def cmd_report(args: argparse.Namespace) -> int:
    problems = _csv(args.problem) if args.problem is not None else None
    if problems == []:
        raise CLIError(f"--problem {args.problem!r} names nothing; accepted: comma-separated "
                       f"problem names")
    require_bench_extra("report", ("scipy",) if args.no_plots else ("scipy", "matplotlib"))
    _check_out(args.out)
    with _open_store(args.store, readonly=True) as store:
        if problems:
            stored = sorted({t["problem"] for t in store.trials()})
            bad = [p for p in problems if p not in stored]
            if bad:
                unknown = [p for p in bad if p not in PROBLEMS]
                what = (f"unknown problem(s) {', '.join(unknown)}" if unknown else
                        f"no trials of {', '.join(bad)}")
                raise CLIError(f"--problem: {what} in {args.store}; problems in this store: "
                               f"{', '.join(stored) or 'none'}")
        path = write_report(store, args.out, problems, plots=not args.no_plots)
        _print_summary(store, problems)
    print(f"report: {path}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``--format json`` (default): per-trial JSON (problem/method/hparams/seed.json) + one CSV.
    ``--format deepobs``: DeepOBS 1.1.2's result layout, read by its analyzer."""
    _check_out(args.out)
    if args.format == "deepobs":
        out = Path(args.out)
        if out.is_dir() and any(out.iterdir()):
            raise CLIError(f"--out {args.out!r} is not empty; accepted for --format deepobs: a "
                           f"new or empty directory (DeepOBS's analyzer reads every run under "
                           f"it, so older files would be mixed in)")
        with _open_store(args.store, readonly=True) as store:
            res = export_deepobs(store, args.out)
        skipped = ", ".join(f"{n} {s}" for s, n in sorted(res["skipped"].items()))
        note = f" (skipped: {skipped}; only finished and diverged trials are runs)" \
            if skipped else ""
        print(f"exported {res['written']} runs in DeepOBS's layout to {args.out}{note}")
        if res["written"] and res["accuracies"] < res["written"]:
            print(f"  {res['written'] - res['accuracies']} run(s) without accuracies: the store "
                  f"has no training accuracy for them (DeepOBS then ranks by valid_losses)")
        return 0
    with _open_store(args.store, readonly=True) as store:
        n_trials, n_files = export_store(store, args.out)
    print(f"exported {n_trials} trials: {n_files} JSON files and evals.csv in {args.out}")
    return 0


# ------------------------------------------------------------------------------------------
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


COMMANDS = {"list": cmd_list, "bench": cmd_bench, "train": cmd_train, "suite": cmd_suite,
            "report": cmd_report, "export": cmd_export, "reproduce": cli_reproduce.cmd_reproduce}


def _user_error(exc: BaseException) -> list[str] | None:
    """The lines to print for an expected user error (exit 2), else None."""
    if isinstance(exc, PreflightError):
        return exc.errors
    if isinstance(exc, (CLIError, DataFileError, *STORE_ERRORS)):
        return [str(exc)]
    hint = extra_hint(exc)
    if hint:
        return [hint]
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return [f"{exc.strerror}{where}"]
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"beyondsgd {args.command}: error:"
    # --data-dir/--download reach the data layer through these variables; restore them when
    # main() returns so an in-process call (tests, notebooks) leaves the environment unchanged
    try:
        with restored_environ(DATA_ENV):
            return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are in the store; re-run the same command to "
              "resume", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("BEYONDSGD_DEBUG", "") not in ("", "0"):
            raise
        if isinstance(exc, TrialFailed):
            print(f"{prefix} {exc} {DEBUG_HINT}", file=sys.stderr)
            return 1
        lines = _user_error(exc)
        if lines is not None:
            for line in lines:
                print(f"{prefix} {line}", file=sys.stderr)
            return 2
        print(f"{prefix} internal error: {failure_text(exc)} {DEBUG_HINT}", file=sys.stderr)
        return 1


DATA_ENV = ("BEYONDSGD_FASHION_MNIST", "BEYONDSGD_MNIST", "BEYONDSGD_CIFAR10",
            "BEYONDSGD_DOWNLOAD")


if __name__ == "__main__":
    sys.exit(main())
