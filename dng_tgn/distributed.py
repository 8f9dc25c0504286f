"""Several processes, one training run: torchrun detection, process group, data partition, gradient averaging.

Launch any experiment or dataset builder with ``torchrun --nproc_per_node N -m experiments.X with ...`` (or
``python -m dng_tgn.data.build_inrs ...``). torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and the
rendezvous ``MASTER_ADDR``/``MASTER_PORT``); :func:`init_from_env` reads them and joins the process group, with
NCCL when the run computes on CUDA and gloo on the CPU. Without those variables (a plain ``python -m ...``)
everything here is a no-op with ``world_size() == 1``, and single-process runs take exactly the code path they
took before this module existed (no collective, no extra arithmetic), so their results are bit-identical.

Data-parallel semantics (what makes N processes equal one process with the same *global* batch):

* ``batch_size`` in every config is the global batch; each rank trains on ``batch_size / N`` items of it
  (:func:`local_batch_size` refuses a batch that does not divide, naming both numbers).
* An epoch's permutation is drawn from the same seed on every rank, and each global batch ``perm[sB:(s+1)B]`` is
  cut into N contiguous pieces (:func:`shard_batch`): over an epoch the ranks' pieces are disjoint and their union
  is exactly what one process would have seen: no item twice, none skipped. Items a drop-last sampler leaves out
  of an epoch (``n mod B``) are left out on every rank alike, as in a single process; nothing is padded.
* Each rank's loss is the mean over its own items; :func:`average_gradients` all-reduces the gradients and
  divides by N, i.e. the gradient of the global batch's mean loss (each piece has B/N items). Where a last batch
  is uneven (§7's epoch loop), :func:`weighted_gradients` weights rank r by ``n_r / B``.
* All ranks start from the same weights (same seed; :func:`broadcast_module` copies rank 0's to be sure) and apply
  the same averaged gradient, so their models stay equal; validation runs on rank 0 and its metrics are
  broadcast (:func:`broadcast_object`) so that early stopping decides the same way everywhere.
* Only rank 0 writes: Sacred observers (run directory, MongoDB), checkpoints, results, figures; dataset builders
  fit shards round-robin by rank (:func:`my_share`) and rank 0 merges after a :func:`barrier`.

What stays per process: dropout masks and other random draws inside a step come from each rank's own stream
(:func:`fork_random_streams`: base seed + rank; checkpoints keep every rank's), so a
model with dropout is equal to a single-process run in distribution, not bit for bit. Floating-point sums in the
all-reduce run in another order than one process's batch reduction; equality holds to float32 rounding
(``tests/test_distributed.py`` measures it).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

__all__ = ["DistEnv", "DistributedConfigError", "env", "init_from_env", "is_initialized", "rank", "world_size",
           "is_main", "barrier", "backend_for", "local_batch_size", "shard_batch", "shard_bounds", "my_share",
           "average_gradients", "weighted_gradients", "all_reduce_sum", "broadcast_object", "broadcast_module",
           "check_partition", "ENV_TIMEOUT_S"]

ENV_TIMEOUT_S = "DNG_DIST_TIMEOUT_S"
# builders wait at their final barrier for the slowest rank's last shard (minutes at paper scale); torch's
# default 30 min would abort a long, healthy run, so the default here is longer and adjustable
DEFAULT_TIMEOUT_S = 4 * 3600


class DistributedConfigError(ValueError):
    """A setting that cannot be split across the processes (e.g. a batch that does not divide by them)."""


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedConfigError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") \
            from None


def env() -> DistEnv:
    """The torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); rank 0 of 1 when they are unset."""
    world = _int_env("WORLD_SIZE", 1)
    r = _int_env("RANK", 0)
    local = _int_env("LOCAL_RANK", r)
    if world < 1 or not 0 <= r < world:
        raise DistributedConfigError(f"RANK={r} and WORLD_SIZE={world} are inconsistent (need 0 <= RANK < "
                                     f"WORLD_SIZE); launch with torchrun, which sets both")
    return DistEnv(r, world, local)


def is_initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def backend_for(device: str | torch.device | None) -> str:
    """NCCL when the run computes on CUDA, gloo otherwise (CPU runs, or ``device=cpu`` on a GPU machine)."""
    if device is None or str(device) == "":
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = torch.device(device).type == "cuda"
    return "nccl" if use_cuda and torch.distributed.is_nccl_available() else "gloo"


def init_from_env(device: str | torch.device | None = None) -> DistEnv:
    """Join the torchrun process group if launched by torchrun (idempotent); returns the environment.

    On CUDA the process's current device becomes ``cuda:LOCAL_RANK``, so ``device="cuda"`` in a config means
    each rank's own GPU. A plain single-process launch does nothing.
    """
    e = env()
    if not e.distributed or is_initialized():
        return e
    if not torch.distributed.is_available():
        raise DistributedConfigError(f"WORLD_SIZE={e.world_size} but this torch has no torch.distributed")
    backend = backend_for(device)
    if backend == "nccl":
        if e.local_rank >= torch.cuda.device_count():
            raise DistributedConfigError(f"LOCAL_RANK={e.local_rank} but this node has {torch.cuda.device_count()} "
                                         f"GPUs; start at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(e.local_rank)
    timeout = datetime.timedelta(seconds=float(os.environ.get(ENV_TIMEOUT_S, DEFAULT_TIMEOUT_S)))
    torch.distributed.init_process_group(backend=backend, timeout=timeout)
    return e


def _process() -> tuple[int, int]:
    """``(rank, world size)`` from one source: the process group once joined, else the single process ``(0, 1)``.

    Both numbers always come from the same place, so ``0 <= rank() < world_size()`` holds. A process that torchrun
    started (``WORLD_SIZE`` > 1) but that has not joined the group yet is refused: as rank 0 of 1 it would write
    what only rank 0 may write and train on the whole batch; as its torchrun rank of 1 it would skip every share of
    the work; and with torchrun's numbers but no group, it would train on its piece of each batch without the
    gradient all-reduce. Each is a silently wrong run, so it is an error naming the fix.
    """
    if is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    e = env()
    if e.distributed:
        raise DistributedConfigError(
            f"RANK={e.rank}, WORLD_SIZE={e.world_size} are set (a torchrun launch) but this process has not joined "
            f"the process group; call dng_tgn.distributed.init_from_env() first (Sacred runs of this project do it "
            f"when the run starts), or unset WORLD_SIZE for a single-process run")
    return 0, 1


def rank() -> int:
    """This process's rank: the process group's; 0 in a single process (see :func:`_process`)."""
    return _process()[0]


def world_size() -> int:
    """The number of processes: the process group's; 1 in a single process (see :func:`_process`)."""
    return _process()[1]


def is_main() -> bool:
    """True on the process that writes (rank 0), and in every single-process run."""
    return rank() == 0


def barrier() -> None:
    if is_initialized() and world_size() > 1:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------------------------- data partition


def local_batch_size(global_batch: int, world: int | None = None, what: str = "batch_size") -> int:
    """``global_batch / world``; an error naming both numbers when it does not divide."""
    world = world_size() if world is None else world
    if global_batch % world:
        raise DistributedConfigError(
            f"{what}={global_batch} is the global batch and must divide by the {world} processes "
            f"(WORLD_SIZE={world}); choose a multiple of {world} or another --nproc_per_node")
    return global_batch // world


def shard_bounds(n: int, rank_: int, world: int) -> tuple[int, int]:
    """Contiguous piece ``[start, stop)`` of ``n`` items for ``rank_``: sizes differ by at most one."""
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return start, start + base + (1 if rank_ < extra else 0)


def shard_batch(indices: torch.Tensor, rank_: int | None = None, world: int | None = None) -> torch.Tensor:
    """This rank's contiguous piece of a global batch (the whole batch in a single process)."""
    world = world_size() if world is None else world
    if world == 1:
        return indices
    start, stop = shard_bounds(int(indices.numel()), rank() if rank_ is None else rank_, world)
    return indices[start:stop]


def my_share(items: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """Round-robin share of a work list (builders' shards): item k goes to rank ``k mod world``."""
    world = world_size() if world is None else world
    r = rank() if rank_ is None else rank_
    return [x for k, x in enumerate(items) if k % world == r]


def check_partition(pieces: Sequence[Iterable[int]], expected: Iterable[int]) -> None:
    """Raise if the ranks' ``pieces`` overlap or their union is not ``expected`` (an epoch's item set)."""
    seen: dict[int, int] = {}
    for r, piece in enumerate(pieces):
        for i in piece:
            i = int(i)
            if i in seen:
                raise AssertionError(f"item {i} is seen by rank {seen[i]} and rank {r}")
            seen[i] = r
    want = {int(i) for i in expected}
    if set(seen) != want:
        missing, extra = sorted(want - set(seen))[:5], sorted(set(seen) - want)[:5]
        raise AssertionError(f"the ranks' items are not the epoch's: missing {missing}, unexpected {extra}")


# ----------------------------------------------------------------------------------------------- collectives


def _flat_grads(params: Sequence[torch.nn.Parameter]) -> list[torch.Tensor]:
    """The gradients to reduce: of every parameter that has one on *some* rank.

    A parameter unused by this rank's piece (e.g. an edge kind absent from its networks) takes part as zeros; one
    that no rank used keeps ``grad=None``, so the optimizer skips it as it would in one process (a zero gradient
    is not the same: Adam's weight decay would still move it).
    """
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
    used = [p for p, h in zip(params, has.tolist()) if h]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    return [p.grad for p in used]


def weighted_gradients(params: Iterable[torch.nn.Parameter], weight: float) -> None:
    """``grad <- Σ_r weight_r · grad_r`` over ranks (in place, every rank gets the same result).

    With ``weight_r = n_r / B`` (rank r's share of a global batch of B items, losses averaged per rank) the result
    is the gradient of the mean loss over the whole batch. One flat all-reduce instead of one per tensor.
    """
    if not is_initialized() or world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = _flat_grads(params)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    if weight != 1.0:
        flat.mul_(weight)
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Mean of the ranks' gradients (equal pieces of the global batch): :func:`weighted_gradients` with 1/N."""
    if is_initialized() and world_size() > 1:
        weighted_gradients(params, 1.0 / world_size())


def all_reduce_sum(values: Sequence[float], device: str | torch.device = "cpu") -> list[float]:
    """Sum of python numbers over ranks (float64), e.g. loss totals; unchanged in a single process."""
    if not is_initialized() or world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s picklable ``obj`` on every rank (e.g. validation metrics computed on rank 0)."""
    if not is_initialized() or world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


@torch.no_grad()
def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers into every rank's ``module`` (identical starting weights)."""
    if not is_initialized() or world_size() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        torch.distributed.broadcast(t.data, src=src)


def all_gather_object(obj) -> list:
    """Every rank's picklable ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_initialized() or world_size() == 1:
        return [obj]
    out = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def fork_random_streams() -> None:
    """Give each rank its own python / numpy / torch (and CUDA) random stream, derived from the shared one.

    Tasks seed every rank alike (the model's initialisation and the batch order must agree), but dropout and
    any other draw made during training must differ between ranks: with equal streams, item j of rank 1's
    piece would get exactly rank 0's mask j. A base seed is drawn from the shared torch stream (identical on
    every rank), and rank r reseeds with ``base + r``. A single process is left untouched.
    """
    if not is_initialized() or world_size() == 1:
        return
    import random

    import numpy as np

    base = int(torch.randint(0, 2**62, (1,)).item())
    seed = base + rank()
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
