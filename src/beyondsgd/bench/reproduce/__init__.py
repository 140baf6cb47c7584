"""``beyondsgd reproduce``: each paper's own experiment with its recipe, at three scales.

``paper`` (the published recipe, the paper's data, meant for a GPU), ``cpu`` (the same models and
optimizer settings on Fashion-MNIST, budgets sized for 2 cores), ``smoke`` (seconds, for CI).
Experiments register themselves in :data:`REGISTRY` when their module is imported; see
:mod:`.core` for the interface and :mod:`.table` for the paper-vs-ours table and report section.
"""

from __future__ import annotations

import importlib

from .core import (  # noqa: F401 - the package's public names
    REGISTRY,
    SCALES,
    Context,
    Experiment,
    NotRecorded,
    Outcome,
    PaperNumber,
    compare,
    register,
)

EXPERIMENT_MODULES = ("proxprop", "bpgrad", "dessilbi", "gdsolver", "pht")


def _load_experiments() -> None:
    for name in EXPERIMENT_MODULES:
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:  # a module still being written: skip it, not others
            if exc.name != f"{__name__}.{name}":
                raise


_load_experiments()


def report_section(store, out_dir, plots: bool = True) -> str:
    """Markdown "paper vs ours" section recomputed from ``store`` ("" when it has no
    reproduce results); see :func:`.table.report_section`."""
    from .table import report_section as _section

    return _section(store, out_dir, plots)
