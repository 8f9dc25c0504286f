"""Reproducible randomness: global seeding, and batches that are a pure function of (seed, step)."""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["EpochSampler", "seed_everything"]


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class EpochSampler:
    """Step -> batch indices, a pure function of (seed, step): epoch e is ``randperm`` seeded by ``seed + e``.

    Because nothing but the step number is needed, a resumed run draws exactly the batches the uninterrupted run
    would have drawn. :meth:`state_dict` (what a checkpoint stores) identifies the sampler, so that a checkpoint is
    never resumed with another data set size, batch size or seed.
    """

    def __init__(self, n: int, batch_size: int, seed: int, drop_last: bool = True):
        if n <= 0:
            raise ValueError("cannot sample batches from an empty training set")
        self.n, self.batch_size, self.seed, self.drop_last = n, min(batch_size, n), seed, drop_last
        self.per_epoch = n // self.batch_size if drop_last else math.ceil(n / self.batch_size)
        self._epoch, self._perm = -1, None

    def state_dict(self) -> dict:
        return {"kind": "EpochSampler", "n": self.n, "batch_size": self.batch_size, "seed": self.seed,
                "drop_last": self.drop_last}

    def __call__(self, step: int) -> torch.Tensor:
        epoch, pos = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._epoch = epoch
            self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
        return self._perm[pos * self.batch_size:(pos + 1) * self.batch_size]
