"""An example of your own problem: a small CNN on 8x8 digit images served as a ``Dataset``.

Run it through the benchmark (from the repository root)::

    beyondsgd bench --problem examples/image_problem.py:problem --methods adam,slbi --seeds 2
    beyondsgd suite --budget smoke --problems examples/image_problem.py:problem

The images come from scikit-learn's bundled digits (1797 images); the ``Dataset`` reads one
image at a time, as a dataset on disk would, so the benchmark streams it through a
``DataLoader`` instead of holding it as tensors.
"""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset

import beyondsgd as bs


class Digits(Dataset):
    """Rows ``rows`` of the digits images as (1x8x8 float image in [0, 1], label)."""

    def __init__(self, rows: np.ndarray):
        d = load_digits()
        self.images, self.labels, self.rows = d.images, d.target, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = self.rows[i]
        x = torch.from_numpy(self.images[r] / 16.0).float()[None]
        return x, int(self.labels[r])


def small_cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(),    # 8x8 -> 6x6
        nn.Conv2d(8, 16, 3), nn.ReLU(),   # 6x6 -> 4x4
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10))


_order = np.random.default_rng(0).permutation(1797)
problem = bs.Problem(
    "digits_cnn_yours", small_cnn,
    train=Digits(_order[:1077]), val=Digits(_order[1077:1437]), test=Digits(_order[1437:]),
    loss="cross_entropy", batch_size=64, epochs=10,
    description="example user problem: small CNN on 8x8 digits served as a Dataset")
