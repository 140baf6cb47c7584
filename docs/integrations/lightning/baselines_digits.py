"""Adam and SGD under PyTorch Lightning on scikit-learn digits, run exactly like the method
examples (same network, split, batch order and epochs), for comparison.

    python docs/integrations/lightning/baselines_digits.py
"""

from __future__ import annotations

import torch
from _digits import Classifier, fit, mlp, summary


class Net(Classifier):
    def __init__(self, optimizer: str = "adam", seed: int = 0):
        super().__init__(mlp(seed))
        self.optimizer = optimizer

    def configure_optimizers(self):
        if self.optimizer == "adam":
            return torch.optim.Adam(self.parameters(), lr=1e-3)  # beyondsgd's adam default
        return torch.optim.SGD(self.parameters(), lr=0.1)  # beyondsgd's sgd default


def main(optimizer: str = "adam", epochs: int = 10, seed: int = 0, **trainer_kw) -> dict:
    return fit(Net(optimizer, seed), epochs, seed, **trainer_kw)


if __name__ == "__main__":
    for name in ("adam", "sgd"):
        print(summary(name, main(name)))
