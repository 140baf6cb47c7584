"""What every command shares: the user-error types, name and ``--set`` parsing, the process-wide
flags (threads, data locations), output and store checks, progress and summaries.

The command line: ``beyondsgd list | bench | train | suite | report | export | reproduce``.

Argument parsing, the pre-flight check and progress display only; the work is done by
``beyondsgd.bench``. Every bad input is answered once, before any work starts, with one line
``beyondsgd CMD: error: ...`` and exit status 2 (see :mod:`beyondsgd.bench.run.validate`); an
unexpected internal error prints one line and exits 1 (``BEYONDSGD_DEBUG=1`` shows the
traceback). ``report`` and ``export`` open the store read-only.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from ..bench.problems import PROBLEMS
from ..bench.run.validate import (
    check_out_dir,
)
from ..bench.store import Store
from ..methods import METHODS, get_method_class
from ..methods.base import canonical_hparams, resolve_hparams

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
        from .. import __version__

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
    """Problem names: built-in names, and your problems as ``path/to/file.py:NAME`` or
    ``module.path:NAME`` (imported, checked and registered here; a bad one is one line)."""
    if spec is None:
        return [default]
    names = load_user_problems(spec)
    return _names(",".join(names) if names else spec, flag, PROBLEMS)


def load_user_problems(spec: str) -> list[str]:
    """``spec``'s comma-separated items with every ``FILE:NAME``/``MODULE:NAME`` loaded and
    replaced by its problem's name (CLIError on a bad one)."""
    from ..bench.problems import ProblemError, load_ref
    from ..bench.problems.user import is_ref

    out = []
    for item in _csv(spec):
        if is_ref(item):
            try:
                item = load_ref(item).name
            except ProblemError as exc:
                raise CLIError(str(exc)) from None
        out.append(item)
    return out


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



def check_store_problems(path: str | None, problems: list[str]) -> None:
    """:func:`beyondsgd.bench.run.validate.check_store_problems`, its refusal a CLIError: a
    store holding a changed user problem is refused before any work, without writing."""
    from ..bench.problems import ProblemError
    from ..bench.run.validate import check_store_problems as check

    try:
        check(path, problems)
    except ProblemError as exc:
        raise CLIError(str(exc)) from None


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, unit="epoch", dynamic_ncols=True, file=sys.stderr)


def _rounded(obj: Any) -> Any:
    if isinstance(obj, float):
        return float(f"{obj:.4g}")
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    return obj


def _print_summary(store: Store, problems: list[str] | None) -> None:
    from ..bench.report import report_summary

    print(report_summary(store, problems))
