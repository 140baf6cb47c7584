"""``beyondsgd list``: the problems (and whether their data is here), the methods and their
hyperparameters."""

from __future__ import annotations

import argparse

from ..bench.problems import PROBLEMS
from ..methods import METHODS
from .common import (
    _apply_flags,
)


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
    print("  Your own: --problem path/to/file.py:NAME or module.path:NAME, NAME a "
          "beyondsgd.Problem (docs/problems.md; example: examples/image_problem.py)")
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
