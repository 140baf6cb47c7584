"""Command line: ``beyondsgd list | bench | train | suite | report | export | reproduce``.

Argument parsing, the pre-flight check and progress display only; the work is done by
``beyondsgd.bench``. One module per command (``listing``, ``bench``, ``train``, ``suite``,
``results`` for report/export, ``reproduce``), ``parser`` builds the arguments and ``common``
holds what they share. Every bad input is answered once, before any work starts, with one line
``beyondsgd CMD: error: ...`` and exit status 2 (see :mod:`beyondsgd.bench.run.validate`); an
unexpected internal error prints one line and exits 1 (``BEYONDSGD_DEBUG=1`` shows the
traceback). ``report`` and ``export`` open the store read-only.
"""

from __future__ import annotations

import os
import sys

from ..bench.run.batch import STORE_ERRORS, failure_text
from ..bench.run.runner import run_trial
from ..bench.run.validate import PreflightError, extra_hint
from ..data import DataFileError
from ..distributed import restored_environ
from . import reproduce as cli_reproduce
from .bench import cmd_bench
from .common import DEBUG_HINT, CLIError, TrialFailed, _apply_flags, parse_overrides
from .listing import cmd_list
from .parser import build_parser
from .results import cmd_export, cmd_report
from .suite import cmd_suite
from .train import cmd_train

__all__ = ["COMMANDS", "CLIError", "TrialFailed", "_apply_flags", "build_parser", "main",
           "parse_overrides", "run_trial"]

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
