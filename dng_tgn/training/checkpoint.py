"""Atomic training checkpoints and the ``resume=`` config: what a phase needs to continue where it stopped."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.shards import atomic_torch_save

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "resolve_resume", "run_dir"]


@dataclass
class Checkpoint:
    """What a phase of training needs to continue: weights, optimizer, step and early-stopping state."""

    step: int
    model: dict
    optimizer: dict
    best_metric: float | None = None
    best_step: int | None = None
    best_model: dict | None = None
    evals_without_improvement: int = 0
    finished: bool = False  # stopped early: a resumed run does not train this phase again
    extra: dict = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Atomic: serialise to memory, write a temporary file beside ``path``, fsync, ``os.replace``.

    A run killed mid-save therefore leaves the previous checkpoint intact, never a truncated file.
    """
    atomic_torch_save(ckpt.__dict__, path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated / foreign file
        raise RuntimeError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise RuntimeError(f"{path} is not a dng_tgn training checkpoint")
    return Checkpoint(**state)


def run_dir(run, fallback: str | os.PathLike | None = None) -> Path | None:
    """The file-storage directory of a Sacred run (where checkpoints go), else ``fallback``."""
    for obs in getattr(run, "observers", []):
        d = getattr(obs, "dir", None)
        if d:
            return Path(d)
    return Path(fallback) if fallback else None


def resolve_resume(resume: str | None, name: str) -> Path | None:
    """``resume`` config -> checkpoint file ``name``: a run directory holding it, or the file itself.

    A missing target is an error (a typo must not silently start training from scratch).
    """
    if not resume:
        return None
    p = Path(resume)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise FileNotFoundError(f"resume={resume!r}: no checkpoint {p} (give a run directory containing {name} "
                                f"or the checkpoint file)")
    return p
