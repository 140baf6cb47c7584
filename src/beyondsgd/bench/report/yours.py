"""Your problems in the report: problems a user defined (:mod:`beyondsgd.bench.problems.user`),
not ours nor a paper's.

:func:`ensure_registered` registers, from the store's trial records alone, the user problems this
process does not know (so ``report`` and ``export`` work without the user's file);
:func:`section` is the report's "Your problems" section: each problem's name, file and SHA-256,
task, metric and direction, epochs, description and the claims of its kind, with the sentence
that verdicts on it are about the user's problem, not a test of the paper's experiment.
:func:`mark` names a user problem in the tables with :data:`YOURS` after it. A store without
user problems gets none of this: its report is as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..analysis.claims import CLAIMS
from ..problems import PROBLEMS
from ..store import Store

__all__ = ["YOURS", "YOURS_LEGEND", "cards", "ensure_registered", "is_user", "mark", "section"]

YOURS = " (yours)"
YOURS_LEGEND = ("`(yours)`: a problem you defined (section \"Your problems\"); its verdicts are "
                "about your problem, not a test of the paper's own experiment.")


def ensure_registered(store: Store) -> list[str]:
    """Register the store's user problems this process does not know, from their stored cards
    (:func:`beyondsgd.bench.problems.user.register_stored`, which also reads an unbounded
    metric range, stored as null, back as inf). Returns the names registered."""
    from ..problems.user import register_stored  # lazily: it imports torch

    return register_stored(store)


def is_user(name: str) -> bool:
    """Whether ``name`` is a registered user problem."""
    prob = PROBLEMS.get(name)
    return bool(prob is not None and getattr(prob, "user", False))


def mark(name: str) -> str:
    """``name``, with :data:`YOURS` after it when it is a user problem."""
    return name + YOURS if is_user(name) else name


def cards(store: Store, problems: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """The card (``env["problem"]``) of each user problem with trials in ``store`` (only those of
    ``problems`` when given), by name, in name order: the card its results ran with, else the
    registered problem's."""
    wanted = set(problems) if problems else None
    out: dict[str, dict[str, Any]] = {}
    for t in store.trials():
        name = t["problem"]
        if name in out or (wanted is not None and name not in wanted):
            continue
        card = (t.get("env") or {}).get("problem") or {}
        if not card.get("user") and is_user(name):
            card = PROBLEMS[name].origin or {}
        if card.get("user"):
            out[name] = card
    return dict(sorted(out.items()))


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _identity(card: dict[str, Any]) -> str:
    where = card.get("file") or card.get("ref")
    sha = card.get("sha256")
    if where and sha:
        return f"`{where}` (sha256 `{sha[:12]}`)"
    ident = card.get("identity") or card.get("fingerprint") or ""
    what = f"`{where}`" if where else "defined in code, no file"
    return what + (f" (fingerprint `{ident[:12]}`)" if ident else "")


def _direction(card: dict[str, Any]) -> str:
    hib = card.get("higher_is_better")
    if hib is None:
        hib = card.get("task") == "classification"
    return "higher" if hib else "lower"


def _target(card: dict[str, Any]) -> str:
    t = card.get("target")
    if isinstance(t, (int, float)) and math.isfinite(t):
        return f"{t:.4g} (given)"
    return "from the tuned baselines"


def section(store: Store, problems: Iterable[str] | None = None) -> str:
    """The "Your problems" section (Markdown, from its heading) for the user problems with
    trials in ``store``; "" when it holds none."""
    found = cards(store, problems)
    if not found:
        return ""
    lines = [
        "## Your problems", "",
        "These problems are **yours** (defined in your files), not ours nor a paper's. Every "
        "verdict on them, marked `(yours)` in the tables, is about **your problem**: whether "
        "the paper's claim holds on your model, data and budget. It is **not a test of the "
        "paper's own experiment**: the paper's claim is checked in its own setting by "
        "`beyondsgd reproduce`. A problem is checked against the claims of its kind "
        "(classification or regression) only; a claim about test accuracy or MSE is read on "
        "your problem's metric in its direction (non-inferiority margin: 1 % of a "
        "higher-is-better metric's range, as 1 accuracy point, or where the range is "
        "unbounded, and for lower-is-better metrics, 5 % of the comparison's mean).", "",
        "| problem | file | task | metric | epochs | validation target | claims of its kind | "
        "description |",
        "|---|---|---|---|---|---|---|---|"]
    for name, card in found.items():
        task = card.get("task", "?")
        claims = ", ".join(f"`{c.id}`" for c in CLAIMS if c.task == task) or "none"
        metric = f"{card.get('metric') or '?'} ({_direction(card)} is better)"
        lines.append(
            f"| {_cell(name + YOURS)} | {_identity(card)} | {_cell(task)} | {_cell(metric)} | "
            f"{_cell(card.get('epochs', '?'))} | {_target(card)} | {claims} | "
            f"{_cell(card.get('description', ''))} |")
    return "\n".join(lines) + "\n"
