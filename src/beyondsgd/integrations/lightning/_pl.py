"""The one place that imports PyTorch Lightning (or says how to install it)."""

from __future__ import annotations

try:  # the extra installs pytorch-lightning; the unified `lightning` package works as well
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import lightning.pytorch as pl
    except ImportError:
        raise ImportError(
            "beyondsgd.integrations.lightning needs PyTorch Lightning, which is not installed: "
            "pip install 'beyondsgd[lightning]'"
        ) from None

__all__ = ["pl"]
