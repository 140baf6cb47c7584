"""What the Lightning examples share: scikit-learn digits loaders (the ``digits_mlp`` split:
1079 train / 359 validation rows), a LightningModule classifier around any network, and ``fit``.

Each example (``bpgrad_digits.py``, ``slbi_digits.py``, ...) subclasses :class:`Classifier`
with its method's ``configure_optimizers`` (and mixin or callback) and calls :func:`fit`.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import beyondsgd as bs


def loaders(seed: int = 0, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (order seeded by ``seed``) and the validation loader."""
    d = bs.data.load_digits(seed=0)
    g = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(d.x_train, d.y_train), batch_size, shuffle=True, generator=g)
    return train, DataLoader(TensorDataset(d.x_val, d.y_val), 512)


def mlp(seed: int = 0) -> nn.Module:
    """``digits_mlp``'s network: 64-128-128-10, ReLU."""
    return bs.models.mlp(64, [128, 128], 10, seed=seed)


class Classifier(pl.LightningModule):
    """Cross-entropy classifier; records the mean training loss of each epoch
    (``epoch_losses``) and logs ``val_loss`` / ``val_acc``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.epoch_losses: list[float] = []
        self._sum, self._n = 0.0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def record(self, loss: torch.Tensor, n: int) -> None:
        self._sum += float(loss.detach()) * n
        self._n += n

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.record(loss, len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        self.epoch_losses.append(self._sum / max(self._n, 1))
        self._sum, self._n = 0.0, 0

    def validation_step(self, batch, batch_idx):
        x, y = batch
        out = self(x)
        self.log("val_loss", F.cross_entropy(out, y))
        self.log("val_acc", (out.argmax(1) == y).float().mean())


def fit(model: Classifier, epochs: int, seed: int = 0, **trainer_kw) -> dict:
    """Train with ``trainer.fit(model, train_dl, val_dl)`` on CPU; returns the per-epoch mean
    training losses and the last validation loss / accuracy (and the trainer)."""
    train, val = loaders(seed)
    kw = dict(enable_progress_bar=False, logger=False, enable_checkpointing=False,
              enable_model_summary=False, accelerator="cpu")
    kw.update(trainer_kw)
    trainer = pl.Trainer(max_epochs=epochs, **kw)
    trainer.fit(model, train, val)
    m = trainer.callback_metrics
    return {"train_loss": model.epoch_losses, "val_acc": float(m["val_acc"]),
            "val_loss": float(m["val_loss"]), "trainer": trainer}


def summary(name: str, res: dict) -> str:
    return (f"{name}: train loss {res['train_loss'][0]:.3f} -> {res['train_loss'][-1]:.3f}, "
            f"val acc {res['val_acc']:.3f}")
