"""ProxProp under PyTorch Lightning on scikit-learn digits: unchanged, no glue.

``bs.proxprop`` converts the Linear layers in place (Frerix et al., ICLR 2018); their ``.grad``
then holds the proximal direction, which any torch optimizer applies (here Adam, lr 1e-3, the
paper's ProxProp+Adam setting; tau_theta 1, 3 CG iterations).

    python docs/integrations/lightning/proxprop_digits.py
"""

from __future__ import annotations

import torch
from _digits import Classifier, fit, mlp, summary

import beyondsgd as bs


class Net(Classifier):
    def __init__(self, seed: int = 0):
        super().__init__(bs.proxprop(mlp(seed), tau_theta=1.0, solver="cg", cg_iters=3))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main(epochs: int = 10, seed: int = 0, **trainer_kw) -> dict:
    return fit(Net(seed), epochs, seed, **trainer_kw)


if __name__ == "__main__":
    print(summary("ProxProp", main()))
