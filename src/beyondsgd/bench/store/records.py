"""What a stored trial is, apart from the database: its fields, its identity and its JSON.

``trial_key`` hashes exactly the fields that make a trial (problem, method, resolved
hyperparameters, seed, epochs, train fraction, tag); ``dumps`` is the JSON every column holding
JSON is written with (NaN/inf become null, numpy/torch scalars plain numbers); ``Claim`` and
``TrialBusy`` are :meth:`Store.claim_trial`'s answers.

>>> dumps({"b": float("nan"), "a": (1, 2.5)})
'{"a": [1, 2.5], "b": null}'
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

# "collapsed": trained to the end but its final training loss is within 1 % of its initial one
# or above (the network learnt nothing: a chance-level classifier is not a finished run); see
# ``ends_collapsed``
DONE_STATUSES = ("finished", "diverged", "collapsed")
EVAL_FIELDS = ("epoch", "step", "train_seconds", "train_loss", "val_loss", "val_metric",
               "test_loss", "test_metric")
SUMMARY_FIELDS = ("final_train_loss", "final_val_metric", "final_test_metric",
                  "best_val_metric", "best_test_metric")


class TrialBusy(RuntimeError):
    """This process does not hold the trial (another one runs it, or it has ended)."""


@dataclass(frozen=True)
class Claim:
    """The answer of :meth:`Store.claim_trial`."""

    trial_id: int
    status: str          # the stored status: running (ours or another's), finished, diverged
    claimed: bool        # this process now holds the trial and runs it
    holder: str = ""     # who holds it, when another live process does

    @property
    def busy(self) -> bool:
        return not self.claimed and self.status == "running"


def _clean(v: Any) -> Any:
    """JSON/SQLite-friendly value: NaN/inf become None, numpy/torch scalars become floats."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


def dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), sort_keys=True, default=str)


def _method_class(method: str) -> Any:
    from ...methods import METHODS  # lazy: the store itself needs no method

    return METHODS.get(method)


def trial_key(problem: str, method: str, hparams: dict, seed: int, epochs: int,
              train_fraction: float = 1.0, tag: str = "") -> str:
    """The trial's identity. A renamed hyperparameter (``Method.renamed_hparams``) is hashed
    under its old name, so trials stored before the rename keep their keys."""
    from ...methods.base import key_hparams

    hparams = key_hparams(_method_class(method), hparams)
    payload = dumps({"problem": problem, "method": method, "hparams": hparams, "seed": seed,
                     "epochs": epochs, "train_fraction": train_fraction, "tag": tag})
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


#: A run whose final training loss is above its initial one minus COLLAPSE_TOL of it learnt
#: nothing: on a balanced 10-class set the class-prior predictor's loss is within 0.1 % of ln 10,
#: so 1 % separates "at chance" (PHT's K = 1 ConvNet ends at 2.30232 from 2.3025-2.3072) from the
#: slowest real progress seen (SGD on the ProxProp MLP: 2.30 -> 2.25 in its first epoch).
COLLAPSE_TOL = 0.01


def ends_collapsed(evals: list[dict]) -> bool:
    """Whether a trained run (evaluations epoch 0 first) ends with a finite training loss above
    its initial one less ``COLLAPSE_TOL`` of it: it learnt nothing, and is stored as
    ``collapsed``.

    >>> ends_collapsed([{"train_loss": 2.3025}, {"train_loss": 0.81}, {"train_loss": 2.3023}])
    True
    >>> ends_collapsed([{"train_loss": 2.30}, {"train_loss": 2.25}])
    False
    """
    if len(evals) < 2:
        return False
    first, last = evals[0].get("train_loss"), evals[-1].get("train_loss")
    if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)):
        return False
    return float(last) >= float(first) - COLLAPSE_TOL * abs(float(first))


def learnt_nothing(status: str, evals: list[dict]) -> bool:
    """Whether a done trial learnt nothing: stored as ``collapsed``, or (a store written before
    that status existed) ``finished`` with evaluations that :func:`ends_collapsed`."""
    return status == "collapsed" or (status == "finished" and ends_collapsed(evals))
