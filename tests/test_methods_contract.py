"""Every registered method, baselines and paper methods alike, through the same runner: it
trains, it is deterministic, and a checkpoint/resume (method state_dict round trip) gives the
same numbers as an uninterrupted run."""

import math

import pytest

from beyondsgd.bench.run.runner import run_trial
from beyondsgd.bench.store import Store
from beyondsgd.methods import METHODS


def _numbers(evals):
    return [{k: v for k, v in e.items() if k not in ("train_seconds", "train_cpu_seconds")}
            for e in evals]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_resumes_exactly(method, tmp_path):
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        full = run_trial("digits_mlp", method, seed=0, epochs=4, store=a)
        assert full.status == "finished", full.error
        assert math.isfinite(full.final["train_loss"])
        assert full.final["train_loss"] < full.evals[0]["train_loss"], method
        run_trial("digits_mlp", method, seed=0, epochs=4, store=b, stop_after_epoch=2)
        resumed = run_trial("digits_mlp", method, seed=0, epochs=4, store=b)
        assert _numbers(resumed.evals) == _numbers(full.evals), method
        assert [{k: v for k, v in e.items() if "time" not in k and "seconds" not in k}
                for e in b.events(b.trials()[0]["id"])] == \
               [{k: v for k, v in e.items() if "time" not in k and "seconds" not in k}
                for e in a.events(a.trials()[0]["id"])]
