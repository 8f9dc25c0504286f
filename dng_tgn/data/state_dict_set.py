"""A weight-space dataset held in memory as stacked parameter tensors, batched straight into stream batches."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from ..graph.batch import StreamBatch, batch_state_dicts
from ..progress import progress

__all__ = ["StateDictSet"]


class StateDictSet:
    """A weight-space dataset held as stacked parameter tensors (one row per network) plus targets.

    Weight-space sets are small per item (a SIREN has 1.2k parameters, a zoo CNN 5k) but many, so loading
    them once and slicing rows is much faster than re-reading files every epoch. All networks must share
    one layout (true of every dataset in §8 / App. E.2).
    """

    def __init__(self, params: dict[str, torch.Tensor], targets: torch.Tensor, convert_kwargs: Mapping | None = None):
        n = len(targets)
        bad = {k: tuple(v.shape) for k, v in params.items() if v.shape[0] != n}
        if bad:
            raise ValueError(f"parameter tensors {bad} do not have one row per target ({n})")
        self.params, self.targets = params, targets
        self.convert_kwargs = dict(convert_kwargs or {})

    @classmethod
    def from_dataset(cls, dataset, desc: str = "loading", num_workers: int = 0, convert_kwargs: Mapping | None = None,
                     limit: int | None = None) -> "StateDictSet":
        """Read every ``(state_dict, target)`` item of ``dataset`` (the first ``limit`` if given)."""
        n = len(dataset) if limit is None else min(limit, len(dataset))
        if n == 0:
            raise ValueError(f"{desc}: the dataset split is empty")
        indices = range(n)
        if num_workers > 0:
            loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(indices)), batch_size=256,
                                                 num_workers=num_workers, collate_fn=list)
            items = (it for chunk in loader for it in chunk)
        else:
            items = (dataset[i] for i in indices)
        rows: dict[str, list[torch.Tensor]] = {}
        targets = []
        keys = None
        for i, (sd, target) in enumerate(progress(items, total=n, desc=desc, every_percent=100, unit="nets")):
            if keys is None:
                keys = list(sd)
            elif list(sd) != keys:
                raise ValueError(f"{desc}: networks have different layouts ({keys[:3]}... vs {list(sd)[:3]}...)")
            for k in keys:
                t = torch.as_tensor(sd[k]).float()
                if i and t.shape != rows[k][0].shape:
                    raise ValueError(f"{desc}: network {i} has {k} of shape {tuple(t.shape)}, network 0 has "
                                     f"{tuple(rows[k][0].shape)}")
                rows.setdefault(k, []).append(t)
            targets.append(target)
        params = {k: torch.stack(v) for k, v in rows.items()}
        return cls(params, torch.as_tensor(np.asarray(targets)), convert_kwargs)

    def __len__(self) -> int:
        return len(self.targets)

    def state_dicts(self, idx: Sequence[int] | torch.Tensor) -> list[dict[str, torch.Tensor]]:
        idx = torch.as_tensor(idx).tolist()
        return [{k: v[i] for k, v in self.params.items()} for i in idx]

    def batch(self, idx: Sequence[int] | torch.Tensor) -> tuple[StreamBatch, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return batch_state_dicts(self.state_dicts(idx), **self.convert_kwargs), self.targets[idx]

    def chunks(self, batch_size: int) -> list[torch.Tensor]:
        """Index chunks covering the set in order (evaluation)."""
        return list(torch.arange(len(self)).split(batch_size))
