"""Finding a user's problem (``path/to/file.py:NAME``, ``module.path:NAME``), loading it in a
worker, and keeping a store's trials of one problem definition (its file's hash)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from .registration import register
from .registry import PROBLEMS
from .registry import Problem as Registered
from .spec import Problem, ProblemError, _first_line


def is_ref(text: str) -> bool:
    """Whether ``text`` names a problem in a file or module (``...:NAME``), not a built-in."""
    return ":" in text


def sha256_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_ref(ref: str) -> Registered:
    """Import ``path/to/file.py:NAME`` or ``module.path:NAME`` and register the problem it names
    (``NAME``: a :class:`Problem`, or a function of no arguments returning one). Every failure
    is one :class:`ProblemError` line."""
    where, _, attr = ref.rpartition(":")
    accepted = "accepted: path/to/file.py:NAME or module.path:NAME"
    if not where or not attr.isidentifier():
        raise ProblemError(f"problem {ref!r}: cannot read it as FILE:NAME or MODULE:NAME; "
                           f"{accepted}")
    is_file = where.endswith(".py") or os.sep in where or "/" in where
    if is_file:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ProblemError(f"problem {ref!r}: no file {path}; {accepted}")
        module_name = f"_beyondsgd_problem_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # DataLoader workers and pickling find it
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ProblemError(f"problem {ref!r}: importing {path.name} raised "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
        origin = {"ref": f"{path}:{attr}", "file": str(path), "sha256": sha256_file(path)}
    else:
        if os.getcwd() not in sys.path:  # as `python -c "import module.path"` would
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name):
                raise ProblemError(f"problem {ref!r}: no module named {where!r} (nor a file); "
                                   f"{accepted}") from None
            raise ProblemError(f"problem {ref!r}: importing {where} raised "
                               f"ModuleNotFoundError: {_first_line(exc)}") from None
        except Exception as exc:
            raise ProblemError(f"problem {ref!r}: importing {where} raised "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
        file = getattr(module, "__file__", None)
        origin = {"ref": ref, "file": file, "sha256": sha256_file(file) if file else None,
                  "cwd": os.getcwd()}
    if not hasattr(module, attr):
        found = [k for k, v in vars(module).items() if isinstance(v, Problem)]
        raise ProblemError(f"problem {ref!r}: {where} has no attribute {attr!r}; problems it "
                           f"defines: {', '.join(found) or 'none'}")
    obj = getattr(module, attr)
    if callable(obj) and not isinstance(obj, Problem):
        try:
            obj = obj()
        except Exception as exc:
            raise ProblemError(f"problem {ref!r}: {attr}() raised {type(exc).__name__}: "
                               f"{_first_line(exc)}") from None
    if not isinstance(obj, Problem):
        raise ProblemError(f"problem {ref!r}: {attr} is a {type(obj).__name__}, not a "
                           "beyondsgd.Problem (nor a function returning one)")
    return register(obj, origin)


def ensure(name: str, ref: str = "", identity: str = "", cwd: str = "") -> Registered:
    """The registered problem ``name``, loading ``ref`` first when this process has not (a suite
    worker, a Ray task; ``cwd``: the driver's working directory, where a ``module:NAME`` ref is
    imported from); ``identity``: the hash the driver saw (a changed file is refused)."""
    prob = PROBLEMS.get(name)
    if ref and (prob is None or (prob.origin or {}).get("ref") != ref):
        if cwd and cwd not in sys.path:
            sys.path.insert(0, cwd)
        prob = load_ref(ref)
    elif prob is None:
        from .registry import get_problem

        return get_problem(name)
    got = (prob.origin or {}).get("identity", "")
    if identity and got != identity:
        raise ProblemError(f"problem {name}: {ref} changed since the run started (now "
                           f"{got[:12]}, was {identity[:12]}); results of a changed problem are "
                           "never mixed: start again with a new --store or problem name")
    return prob


def job_source(prob: Registered) -> tuple[str, str, str]:
    """What a worker needs to load ``prob`` itself: (ref, identity, cwd); empty for ours."""
    card = getattr(prob, "origin", None) or {}
    if not card.get("ref"):
        return "", "", ""
    return card["ref"], card.get("identity", ""), card.get("cwd", "")


def check_store(store: Any, prob: Registered) -> None:
    """Refuse (:class:`ProblemError`) a store holding trials of a problem of this name that was
    defined differently (another file hash or fingerprint): results of a changed problem must
    not mix with the old ones."""
    card = getattr(prob, "origin", None)
    if not card:
        return
    other: dict[str, list[str]] = {}
    rows = store.conn.execute("SELECT env FROM trials WHERE problem=?", (prob.name,))
    for (text,) in rows:  # cheap in the usual case: the identity is in the row's text
        if not text or card["identity"] in text:
            continue
        try:
            got = ((json.loads(text) or {}).get("problem") or {}).get("identity")
        except ValueError:  # an unreadable env says nothing about the problem
            continue
        if got and got != card["identity"]:
            other.setdefault(got, []).append(text)
    if other:
        got, trials = next(iter(other.items()))
        what = f"its file {card['file']}" if card.get("file") else "its definition"
        raise ProblemError(
            f"problem {prob.name} changed: {what} now hashes to {card['identity'][:12]}, but "
            f"{len(trials)} trial(s) in {store.path} ran with {got[:12]}; results of a changed "
            "problem are never mixed: use a new --store, or give the problem a new name")


def _stored_range(r: Any) -> tuple[float, float]:
    """A card's metric range as stored (JSON writes an infinite bound as null)."""
    lo, hi = (list(r) + [None, None])[:2] if r else (0.0, 1.0)
    return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))


def register_stored(store: Any) -> list[str]:
    """Register, from a store's trial records alone, every user problem it holds that this
    process does not know (so ``report``/``export`` work without the user's file). Their data
    cannot be loaded; everything a report reads (task, metric, direction, epochs, target) is in
    the card. Returns the names registered."""
    out = []
    for t in store.trials():
        card = ((t.get("env") or {}).get("problem") or {})
        name = t["problem"]
        if not card.get("user") or name in PROBLEMS:
            continue

        def load(seed: int, name=name):
            raise ProblemError(f"problem {name}: its data is not available here (the store "
                               "holds its results only); load its file to train it")

        target = card.get("target")
        PROBLEMS[name] = Registered(
            name, card.get("description", ""), load, None, card["task"],
            batch_size=int(card.get("batch_size", 1)), epochs=int(card.get("epochs", 1)),
            target=float(target) if target is not None else math.nan,
            metric_name=card.get("metric"), higher=card.get("higher_is_better"),
            range_=_stored_range(card.get("metric_range")), origin=card)
        out.append(name)
    return out

