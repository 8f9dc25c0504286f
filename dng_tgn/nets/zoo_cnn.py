"""The Small CNN Zoo network (Unterthiner et al. 2020): 3 x Conv(16, 3x3, stride 2) -> GAP -> Dense(10)."""
from __future__ import annotations

from torch import nn


class ZooCNN(nn.Module):
    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 16,
        num_layers: int = 3,
        num_classes: int = 10,
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
    ):
        super().__init__()
        convs = []
        c_in = in_channels
        for _ in range(num_layers):
            convs.append(nn.Conv2d(c_in, channels, kernel_size=3, stride=2, padding=1))
            c_in = channels
        self.convs = nn.ModuleList(convs)
        self.act = activation()
        self.dropout = nn.Dropout(dropout)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        for conv in self.convs:
            x = self.dropout(self.act(conv(x)))
        return self.head(self.flatten(self.pool(x)))
