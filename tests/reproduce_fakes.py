"""A recording reproduce context for tests on hand-made stores: the experiment's own ``run``
names each trial, ``make`` fabricates it, and it is written under the runner's key and read
back, so a replay of the store recomputes the rows as the report does."""

from __future__ import annotations

from beyondsgd.bench.reproduce.core import Context, full_tag, stored_trial
from beyondsgd.bench.run.trial import TrialResult
from beyondsgd.bench.store import trial_key


class Recording(Context):
    """A context whose trials are fabricated by ``make(problem, method, tag, seed, epochs)`` ->
    (status, evals, events), written to the store under the runner's key and read back."""

    make = None

    def trial(self, problem, method, hparams, seed, epochs=None, tag="", train_fraction=1.0,
              analyse=None) -> TrialResult:
        from beyondsgd.methods import get_method_class
        from beyondsgd.methods.base import resolve_hparams

        t = full_tag(self.experiment, self.scale, tag)
        hp = resolve_hparams(get_method_class(method), hparams or {})
        n_ep = problem.epochs if epochs is None else int(epochs)
        status, evals, events = type(self).make(problem.name, method, tag, seed, n_ep)
        key = trial_key(problem.name, method, hp, int(seed), n_ep, float(train_fraction), t)
        self.store.record_trial(key, problem.name, method, hp, seed, n_ep, train_fraction, t,
                                {}, status, evals, events, {}, started=0.0, finished=1.0)
        return stored_trial(self.store, problem, method, hparams, seed, epochs, t,
                            train_fraction)


def recording(make, **kw) -> Recording:
    """A :class:`Recording` context whose trials ``make`` fabricates."""
    return type("R", (Recording,), {"make": staticmethod(make)})(**kw)
