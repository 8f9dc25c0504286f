"""Training checkpoints: what a phase needs to continue *exactly* where it stopped, and which files to keep.

A checkpoint holds a schema version, the model, optimizer, LR scheduler and AMP scaler states, the sampler's
position, every random number generator's state (python, numpy, torch, CUDA when present) and the
early-stopping bookkeeping. Restoring all of it makes a resumed run take bit-identical steps to an uninterrupted
one with the same seed (on CPU; on CUDA as far as its kernels are deterministic).

Files: ``<dir>/<name>.step<NNNNNNNN>.pt``, one per save, written atomically (temporary file, fsync,
``os.replace``: a kill mid-save leaves the previous checkpoint intact). :class:`CheckpointStore` keeps the last
``keep`` of them plus the one holding the best validation score (the weights the phase ends with); older ones
are deleted after the new one is safely on disk.
"""
from __future__ import annotations

import os
import random
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_torch_save

__all__ = ["SCHEMA_VERSION", "Checkpoint", "CheckpointError", "CheckpointStore", "save_checkpoint", "load_checkpoint",
           "latest_checkpoint", "resolve_resume", "run_dir", "rng_state", "set_rng_state"]

SCHEMA_VERSION = 2
FORMAT = "dng_tgn.checkpoint"
_STEP_RE = re.compile(r"\.step(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from: unreadable, foreign, or of another schema version."""


@dataclass
class Checkpoint:
    """What a phase of training needs to continue exactly: weights, optimiser, schedules, RNGs, bookkeeping."""

    step: int
    model: dict
    optimizer: dict
    scheduler: dict | None = None
    scaler: dict | None = None  # torch.amp.GradScaler state (AMP on CUDA)
    sampler: dict | None = None  # the batch sampler's position / state
    rng: dict | None = None  # rng_state() at the moment of saving
    best_metric: float | None = None
    best_step: int | None = None  # the weights to end with are the model of the checkpoint at this step
    evals_without_improvement: int = 0
    finished: bool = False  # stopped early (or finished its epochs): a resumed run does not train it again
    name: str = ""
    extra: dict = field(default_factory=dict)
    schema: int = SCHEMA_VERSION
    format: str = FORMAT


def rng_state() -> dict:
    """Every global random number generator's state: python, numpy, torch (CPU) and CUDA when initialised."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict | None) -> None:
    if not state:
        return
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> None:
    """Atomic: serialise to memory, write a temporary file beside ``path``, fsync, ``os.replace``.

    A run killed mid-save therefore leaves the previous checkpoint intact, never a truncated file.
    """
    # not dataclasses.asdict: it deep-copies every tensor of the model and optimizer states
    state = ckpt if isinstance(ckpt, dict) else {f.name: getattr(ckpt, f.name) for f in fields(ckpt)}
    atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint; a truncated, foreign or old-schema file raises :class:`CheckpointError` saying so."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a checkpoint file or use latest_checkpoint()")
    try:
        # weights_only=False: the checkpoint holds python/numpy RNG states; it is a file this project wrote
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated / foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); it is truncated or "
                              f"not a checkpoint: resume from another one or start a new run") from e
    if not isinstance(state, dict) or "step" not in state or "model" not in state:
        raise CheckpointError(f"{path} is not a dng_tgn training checkpoint")
    schema = state.get("schema", 1)
    if schema != SCHEMA_VERSION or state.get("format", FORMAT) != FORMAT:
        raise CheckpointError(
            f"{path} is a checkpoint of schema version {schema}, this dng_tgn reads version {SCHEMA_VERSION}"
            + (" (version 1 holds no RNG or scheduler state, so it cannot be resumed exactly)" if schema == 1 else "")
            + "; start a new run, or resume it with the dng_tgn version that wrote it")
    known = {f.name for f in fields(Checkpoint)}
    unknown = sorted(set(state) - known)
    if unknown:
        raise CheckpointError(f"{path}: unexpected checkpoint fields {unknown} for schema {SCHEMA_VERSION}")
    return Checkpoint(**state)


def _step_of(path: Path) -> int:
    m = _STEP_RE.search(path.name)
    return int(m.group(1)) if m else -1


def checkpoint_files(directory: str | os.PathLike, name: str) -> list[Path]:
    """``name``'s checkpoint files in ``directory``, oldest step first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    files = [p for p in d.glob(f"{name}.step*.pt") if _step_of(p) >= 0 and p.name[:len(name) + 5] == f"{name}.step"]
    return sorted(files, key=_step_of)


def latest_checkpoint(directory: str | os.PathLike, name: str) -> Path | None:
    files = checkpoint_files(directory, name)
    return files[-1] if files else None


class CheckpointStore:
    """Checkpoints of one phase ``name`` in ``directory``: save, keep the last ``keep`` plus the best, find them."""

    def __init__(self, directory: str | os.PathLike | None, name: str, keep: int = 2):
        if keep is not None and int(keep) < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 (the latest is needed to resume), got {keep}")
        self.directory = Path(directory) if directory is not None else None
        self.name, self.keep = name, int(keep or 1)

    def path(self, step: int) -> Path:
        return self.directory / f"{self.name}.step{step:08d}.pt"

    def save(self, ckpt: Checkpoint) -> Path | None:
        if self.directory is None:
            return None
        ckpt.name = ckpt.name or self.name
        path = self.path(ckpt.step)
        save_checkpoint(path, ckpt)
        self.prune(ckpt.best_step)
        return path

    def copy_in(self, source: Path) -> None:
        """Copy a checkpoint file from another run's folder (atomically), so this folder can be resumed too."""
        if self.directory is None or source.resolve().parent == self.directory.resolve():
            return
        from ..atomic import atomic_write_bytes

        atomic_write_bytes(self.directory / source.name, source.read_bytes())

    def prune(self, best_step: int | None) -> None:
        files = checkpoint_files(self.directory, self.name)
        keep = set(files[-self.keep:])
        if best_step is not None:
            keep.add(self.path(best_step))
        for p in files:
            if p not in keep:
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass

    def latest(self) -> Path | None:
        return latest_checkpoint(self.directory, self.name) if self.directory is not None else None


def best_checkpoint_path(resume_path: Path, ckpt: Checkpoint) -> Path | None:
    """The file holding ``ckpt``'s best weights: beside ``resume_path``, at ``ckpt.best_step``."""
    if ckpt.best_step is None:
        return None
    if ckpt.best_step == ckpt.step:
        return resume_path
    m = _STEP_RE.search(resume_path.name)
    base = resume_path.name[:m.start()] if m else (ckpt.name or resume_path.stem)
    return resume_path.parent / f"{base}.step{ckpt.best_step:08d}.pt"


def run_dir(run, fallback: str | os.PathLike | None = None) -> Path | None:
    """The file-storage directory of a Sacred run (where checkpoints go), else ``fallback``."""
    for obs in getattr(run, "observers", []):
        d = getattr(obs, "dir", None)
        if d:
            return Path(d)
    return Path(fallback) if fallback else None


def resolve_resume(resume: str | os.PathLike | None, name: str, required: bool = True) -> Path | None:
    """``resume`` config -> the newest checkpoint of phase ``name``: in a run directory, or the file itself.

    A missing target is an error (a typo must not silently start training from scratch) unless ``required`` is
    False (a later phase that the interrupted run never reached), which gives None.
    """
    if not resume:
        return None
    p = Path(resume)
    if p.is_dir():
        found = latest_checkpoint(p, name)
        if found is None and (p / f"{name}.pt").is_file():
            found = p / f"{name}.pt"  # a schema-1 file: load_checkpoint explains why it cannot be resumed
        if found is None:
            if not required:
                return None
            raise FileNotFoundError(f"resume={str(resume)!r}: no checkpoint {name}.step*.pt in {p} (give a run "
                                    f"directory containing one, or the checkpoint file)")
        return found
    if not p.is_file():
        if not required and p.parent.is_dir():
            return None
        raise FileNotFoundError(f"resume={str(resume)!r}: no checkpoint {p} (give a run directory containing "
                                f"{name}.step*.pt or the checkpoint file)")
    if _step_of(p) >= 0 and not p.name.startswith(f"{name}.step"):
        # a file of another phase was given: look for this phase beside it
        return resolve_resume(p.parent, name, required)
    return p
