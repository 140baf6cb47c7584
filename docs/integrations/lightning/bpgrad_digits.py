"""BPGrad under PyTorch Lightning on scikit-learn digits (MLP 64-128-128-10, batch 64).

BPGrad runs through Lightning's closure unchanged; ``BPGradMixin`` keeps it right under
``accumulate_grad_batches`` (f_t = the mean of the microbatch losses, not the last one / k) and
warns once if ``gradient_clip_val`` is set (BPGrad normalises the gradient).

    python docs/integrations/lightning/bpgrad_digits.py
"""

from __future__ import annotations

from _digits import Classifier, fit, mlp, summary

import beyondsgd as bs
from beyondsgd.integrations.lightning import BPGradMixin


class Net(BPGradMixin, Classifier):
    def __init__(self, lipschitz: float = 10.0, seed: int = 0):
        super().__init__(mlp(seed))
        self.lipschitz = lipschitz

    def configure_optimizers(self):
        # rho 0.1, momentum 0.9: the official settings (Zhang, Wu & Wang, CVPR 2018);
        # L = 10: beyondsgd's digits default (bpgrad's `lipschitz`)
        return bs.BPGrad(self.parameters(), lipschitz=self.lipschitz, rho=0.1, momentum=0.9)


def main(epochs: int = 10, seed: int = 0, accumulate: int = 1, **trainer_kw) -> dict:
    return fit(Net(seed=seed), epochs, seed, accumulate_grad_batches=accumulate, **trainer_kw)


if __name__ == "__main__":
    print(summary("BPGrad", main()))
