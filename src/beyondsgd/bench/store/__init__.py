"""The results store: one SQLite file (``db.py``: trials, evaluations, events; ``records.py``: a
trial's fields, key and JSON; ``file.py``: opening, schema checks, read-only media; ``lease.py``:
who runs which trial) and ``export.py`` (per-trial JSON, CSV, DeepOBS's layout). Everything
above the store (runs, protocol, analysis, report) reads and writes results only through
:class:`Store`.
"""

from . import db, export, file, lease, records
from .db import (
    DONE_STATUSES,
    EVAL_FIELDS,
    SUMMARY_FIELDS,
    Claim,
    Store,
    TrialBusy,
    dumps,
    trial_key,
)
from .file import APPLICATION_ID, SCHEMA_VERSION, StoreError
from .records import ends_collapsed, learnt_nothing

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "StoreError",
    "export",
    "file",
    "lease",
    "Claim",
    "DONE_STATUSES",
    "EVAL_FIELDS",
    "SUMMARY_FIELDS",
    "Store",
    "TrialBusy",
    "dumps",
    "ends_collapsed",
    "learnt_nothing",
    "trial_key",
    "db",
    "records",
]
