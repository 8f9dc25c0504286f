"""The generalisation predictor of §8.2 / F.2 and App. E.2: a network's weights -> its test accuracy."""
from __future__ import annotations

import torch
from torch import nn

from ..graph.batch import StreamBatch
from .heads import MLPHead

__all__ = ["GeneralizationPredictor"]


class GeneralizationPredictor(nn.Module):
    """Weight encoder -> MLP head -> one logit; ``sigmoid(logit)`` is the predicted test accuracy.

    F.2: the DNG-Encoder's memories of the last layer's nodes at the final timestamp, mapped to a scalar by a
    three-layer MLP of hidden width 1024, trained with binary cross-entropy on the accuracy (§8.2).
    ``encoder`` is any :class:`~dng_tgn.nn.factory.WeightEncoder` (it needs ``out_dim``).
    """

    def __init__(self, encoder: nn.Module, head_hidden: int, head_layers: int, head_dropout: float):
        super().__init__()
        self.encoder = encoder
        self.head = MLPHead(encoder.out_dim, 1, hidden_dim=head_hidden, num_layers=head_layers, dropout=head_dropout)

    def forward(self, batch: StreamBatch) -> torch.Tensor:
        return self.head(self.encoder(batch)).squeeze(-1)
