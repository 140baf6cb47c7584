"""DessiLBI (SLBI) under PyTorch Lightning on scikit-learn digits: unchanged, no glue.

SLBI is an ordinary ``torch.optim.Optimizer``; give it ``slbi_param_groups(model)`` so the
hidden Linear layers get a neuron-sparse copy Gamma (Fu et al., ICML 2020). The selected neurons
per layer are printed after training.

    python docs/integrations/lightning/slbi_digits.py
"""

from __future__ import annotations

from _digits import Classifier, fit, mlp, summary

import beyondsgd as bs


class Net(Classifier):
    def __init__(self, seed: int = 0):
        super().__init__(mlp(seed))

    def configure_optimizers(self):
        # the official recipe's defaults: lr 0.1, kappa 1, nu 20, lambda 1, momentum 0.9
        self.slbi = bs.SLBI(bs.slbi_param_groups(self.net, linear="neuron"), lr=0.1)
        return self.slbi


def main(epochs: int = 10, seed: int = 0, **trainer_kw) -> dict:
    model = Net(seed)
    res = fit(model, epochs, seed, **trainer_kw)
    res["support"] = model.slbi.support_sizes(model.net)
    return res


if __name__ == "__main__":
    res = main()
    print(summary("SLBI", res), "| selected neurons:", res["support"])
