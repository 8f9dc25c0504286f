"""Atomic writes and shard bookkeeping shared by the builders.

A builder splits its work into numbered shards. A shard counts as done only once its record file exists; every file
is written to a temporary name in the same folder and then ``os.replace``d, so an interrupted run leaves either a
complete shard or no trace of it, and a rerun skips exactly the finished shards.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import distributed as dist
from ..atomic import atomic_torch_save, atomic_write_bytes, atomic_write_json  # noqa: F401  (re-exported)


class CorruptShardError(RuntimeError):
    """A shard file exists but cannot be read; the message names it and says how to recover."""


def read_json(path: str | os.PathLike, what: str = "shard record"):
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptShardError(f"corrupt {what} {path}: {e}; delete it to rebuild that shard") from e


def torch_load(path: str | os.PathLike, what: str = "shard"):
    """torch.load with a clear error for truncated or foreign files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for damaged files
        raise CorruptShardError(f"corrupt {what} {path}: {type(e).__name__}: {e}; delete it to rebuild") from e


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    if shard_size <= 0:
        raise ValueError(f"shard size must be positive, got {shard_size}")
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def add_run_arguments(p) -> None:
    """The options every builder shares: seed, device, CPU threads, and a shard cap for tests."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="torch device; default cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; 1 can be faster on a busy machine)")
    p.add_argument("--max-shards", type=int, default=None, help="stop after this many new shards (for testing)")


def apply_preset(args, preset: dict) -> None:
    """Fill every option the user left unset from the chosen preset."""
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def open_output(args, settings: dict) -> Path:
    """Create --out and refuse to resume a folder that was started with other settings.

    Under torchrun every rank checks the settings (so all fail alike), rank 0 alone clears what a killed run left,
    and no rank goes on before that is done.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if dist.is_main():
        for stale in [*out.glob(".*.tmp"), *out.glob("_shards/.*.tmp")]:  # left by a run killed mid-write
            stale.unlink()
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = read_json(meta_path, "meta.json")
        diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
        if diff:
            raise ValueError(f"{out} was started with other settings {diff} (old, new); use a new --out")
    dist.barrier()
    return out


def init_ranks(args) -> None:
    """Join torchrun's process group (NCCL for a CUDA ``--device``, else gloo); nothing in a single process.

    Builders split their shards round-robin over the ranks (:func:`dng_tgn.distributed.my_share`); each shard is
    still a pure function of (seed, shard), so the folder is the same whatever the number of processes, and
    rank 0 merges once every rank has passed the final barrier.
    """
    from ..device import default_device

    dist.init_from_env(args.device or default_device())
