"""Small steps every task pipeline takes: finding its data, CPU threads, checkpoint folders, parameter counts."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..training import run_dir

__all__ = ["require_data_root", "open_split", "set_threads", "count_params", "checkpoint_dir", "save_predictions"]


def require_data_root(data_root: str | None, what: str, build_command: str) -> Path:
    """The dataset folder, or an error that says how to build it."""
    if not data_root:
        raise ValueError(f"no {what} given: set data.root=/path/to/data (build one with `{build_command}`)")
    root = Path(data_root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{what} {root} does not exist; build it with `{build_command}`")
    return root


def open_split(factory: Callable[[str], object], root: Path, split: str, what: str, build_command: str):
    """``factory(split)`` with the dataset module's errors re-raised naming the builder command."""
    try:
        return factory(split)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise type(e)(f"cannot open {what} at {root} ({e}); (re)build it with `{build_command}`") from e


def set_threads(num_threads: int | None) -> None:
    """CPU intra-op threads (``num_threads`` config); None or 0 keeps torch's default.

    On a loaded CPU (more runnable processes than cores) torch's spinning worker threads make the small
    matrices of weight-space batches many times slower; one thread per run is then the fastest setting.
    """
    if num_threads:
        torch.set_num_threads(int(num_threads))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def checkpoint_dir(run, configured: str | None) -> Path | None:
    """Checkpoints go to ``configured`` when set, else the run's file-storage directory (None: not saved)."""
    if configured:
        return Path(configured)
    return run_dir(run)


def save_predictions(run, name: str, **columns) -> None:
    """Per-network test predictions as a CSV artifact ``name`` (paired comparisons between methods need them)."""
    if run is None:
        return
    import tempfile

    import numpy as np
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="dng_pred_") as tmp:
        path = Path(tmp) / name
        pd.DataFrame({k: np.asarray(v) for k, v in columns.items()}).to_csv(path, index_label="index")
        run.add_artifact(str(path), name=name)
