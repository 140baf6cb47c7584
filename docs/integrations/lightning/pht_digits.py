"""PHT alternation under PyTorch Lightning on scikit-learn digits (manual optimization).

``bs.pht`` swaps the ReLUs for positive hard-thresholding units (Huang, Kong & Lucey,
arXiv:1712.02501; the alternation is our reconstruction from the abstract). Each batch:
a support step, then K = 5 frozen-support Adam steps, with ONE Lightning optimizer step per batch
(``PHTAlternationMixin.alternation_step``), so ``trainer.global_step`` counts batches; after each
epoch the last layer is solved on the training set (``pht_alt``'s default ``exact="last"``).

    python docs/integrations/lightning/pht_digits.py
"""

from __future__ import annotations

import torch
from _digits import Classifier, fit, mlp, summary

import beyondsgd as bs
from beyondsgd.integrations.lightning import PHTAlternationMixin


class Net(PHTAlternationMixin, Classifier):
    def __init__(self, seed: int = 0, inner_steps: int = 5, exact: bool = True):
        super().__init__(bs.pht(mlp(seed)))  # tau 0.1 (pht_alt's default)
        self.automatic_optimization = False
        self.inner_steps, self.exact = inner_steps, exact

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.alternation_step(self.net, x, y, inner_steps=self.inner_steps)
        self.record(loss, len(y))
        self.log("support_density", self.pht_density)

    def on_train_epoch_end(self):
        if self.exact:
            self.alternation_solve(self.net, layers="last")
        super().on_train_epoch_end()

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)  # pht_alt's defaults


def main(epochs: int = 10, seed: int = 0, inner_steps: int = 5, exact: bool = True,
         **trainer_kw) -> dict:
    return fit(Net(seed, inner_steps, exact), epochs, seed, **trainer_kw)


if __name__ == "__main__":
    res = main()
    print(summary("PHT alternation", res), "| global_step", res["trainer"].global_step)
