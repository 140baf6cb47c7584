"""GDSolver under PyTorch Lightning on scikit-learn digits: GD by Lightning, MILP by a callback.

The GD phase is plain SGD at lr 0.1 (SGD's default; the paper's is 0.05, see
``GDSolverCallback(preset="published")``). ``GDSolverCallback`` with its defaults solves the MILP
over the last layer after a quarter, half, three quarters and all of ``max_epochs`` and when the
validation loss plateaus (patience 2, geometric back-off), on the points nearest to changing
class in a box fitted to them, and keeps the new layer only if the validation accuracy rises;
its events are logged (``gdsolver/...``) and kept in ``callback.events``.

    python docs/integrations/lightning/gdsolver_digits.py
"""

from __future__ import annotations

import torch
from _digits import Classifier, fit, mlp, summary

from beyondsgd.integrations.lightning import GDSolverCallback


class Net(Classifier):
    def __init__(self, seed: int = 0):
        super().__init__(mlp(seed))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(epochs: int = 10, seed: int = 0, solve_every: int = 0, **trainer_kw) -> dict:
    cb = GDSolverCallback(module="net", solve_every=solve_every, seed=seed)
    res = fit(Net(seed), epochs, seed, callbacks=[cb], **trainer_kw)
    res["events"] = cb.events
    return res


if __name__ == "__main__":
    res = main()
    print(summary("GDSolver", res))
    for ev in res["events"]:
        print(f"  epoch {ev['epoch']}: {ev['status']}, val acc {ev['val_acc_before']:.3f} -> "
              f"{ev['val_acc_after']}, accepted {ev['accepted']}")
