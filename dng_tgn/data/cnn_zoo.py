"""CNNZooDataset: the public Small CNN Zoo archives (CIFAR10-GS, SVHN-GS, ...) and the zoos build_cnn_zoo writes.

Filtering follows NFN's ZooDataset: reorder rows by the split CSV (read with ``header=None``), keep the final
checkpoint of every run, drop non-finite rows, then the second half is test and the first half is shuffled with
``random.Random(0)`` and cut 80/20 into train/val.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from .input_checks import CorruptInputError, read_csv_file, read_index_file
from .zoo_format import check_zoo_folder, layout_to_keys, read_layout, row_to_state_dict


def nfn_zoo_split(n: int) -> dict[str, list[int]]:
    test_point = int(0.5 * n)
    trainval = list(range(test_point))
    val_point = int(0.8 * len(trainval))
    random.Random(0).shuffle(trainval)
    return {"train": trainval[:val_point], "val": trainval[val_point:], "test": list(range(test_point, n)),
            "all": list(range(n))}


class CNNZooDataset(Dataset):
    """Items are ``(state_dict, test_accuracy)``; state_dict keys ``convs.{i}.{weight,bias}``, ``head.*`` (ZooCNN).

    split_file: NFN's split CSV (one row index per line, no header). None uses ``root/split.csv`` when present
    (our builder writes one), else the file order. final_step: the checkpoint step kept; default the largest step
    in metrics (86 in the public CIFAR10-GS / SVHN-GS zoos). ``configs[i]`` holds item i's hyperparameters.
    """

    def __init__(self, root, split: str = "train", split_file=None, final_step: int | None = None):
        root = Path(root)
        check_zoo_folder(root)
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train/val/test/all, got {split!r}")
        try:
            self._weights = np.load(root / "weights.npy", mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise CorruptInputError(f"{root / 'weights.npy'}: not a readable .npy array, truncated or damaged "
                                    f"({e})") from e
        if self._weights.ndim != 2 or self._weights.dtype.kind != "f":
            raise CorruptInputError(f"{root / 'weights.npy'}: expected a 2-D float array (checkpoints, parameters), "
                                    f"got shape {self._weights.shape} of {self._weights.dtype}")
        metrics = read_csv_file(root / "metrics.csv.gz", ("step", "test_accuracy"), integer=("step",),
                                numeric=("test_accuracy",), what="zoo metrics file")
        self.layout = read_layout(root / "layout.csv")
        self.keys = layout_to_keys(self.layout, root / "layout.csv")
        n_rows, width = self._weights.shape
        if len(metrics) != n_rows:
            raise CorruptInputError(f"{root}: weights.npy has {n_rows} rows but metrics.csv.gz has {len(metrics)} "
                                    f"(one metrics row per weights row)")
        need = max(end for _, _, end, _ in self.layout)
        if width < need:
            raise CorruptInputError(f"{root / 'weights.npy'}: rows hold {width} values, layout.csv needs {need}")

        if split_file is None and (root / "split.csv").is_file():
            split_file = root / "split.csv"
        if split_file is not None:
            order = read_index_file(split_file, n_rows)
        else:
            order = np.arange(n_rows)
        steps = metrics["step"].to_numpy()[order]
        final_step = int(metrics["step"].max()) if final_step is None else final_step
        order = order[steps == final_step]
        finite = np.array([np.isfinite(self._weights[i]).all() for i in order], dtype=bool) if len(order) else order
        self.dropped_nonfinite = int((~finite).sum())
        order = order[finite]
        rows = order[nfn_zoo_split(len(order))[split]]
        if len(rows) == 0:
            raise CorruptInputError(f"{root}: split {split!r} is empty ({len(order)} usable final checkpoints"
                                    f"{f' listed in {split_file}' if split_file is not None else ''})")
        self.rows = rows
        self.metrics = metrics.iloc[rows].reset_index(drop=True)
        cfg_cols = [c for c in metrics.columns if c.startswith("config.")]
        self.configs = [{c[len("config."):]: r[c] for c in cfg_cols} for _, r in self.metrics.iterrows()]
        self.targets = self.metrics["test_accuracy"].to_numpy(dtype=np.float64)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = np.asarray(self._weights[self.rows[i]])
        return row_to_state_dict(row, self.layout, self.keys), float(self.targets[i])
