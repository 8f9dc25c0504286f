"""The generic training loop: steps, periodic validation, early stopping, exact checkpoints and resume."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .. import distributed as dist
from ..faults import kill_point
from ..nn.precision import AmpMode, autocast, check_amp, grad_scaler
from ..progress import progress
from .checkpoint import (Checkpoint, CheckpointError, CheckpointStore, best_checkpoint_path, load_checkpoint,
                         rng_state, set_rng_state)
from .sampling import EpochSampler

__all__ = ["LoopResult", "train_loop", "log_metrics", "restore", "flush_run"]


def log_metrics(run, metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    """``_run.log_scalar`` every finite-or-not number (NaN is logged too: a metric that vanished is news)."""
    if run is None:
        return
    for k, v in metrics.items():
        run.log_scalar(f"{prefix}{k}", float(v), step)


@dataclass
class LoopResult:
    steps: int  # the step count at which training ended (early stop or budget)
    best_step: int | None
    best_metric: float | None
    stopped_early: bool
    resumed_from: int  # 0 for a fresh run


def flush_run(run) -> None:
    """Write the metrics and info logged so far to ``run``'s record now (not at the next heartbeat).

    :class:`dng_tgn.tracking.TrackedExperiment` runs carry the flush as ``run.dng_flush``; other runs (plain
    Sacred, ``None``) have nothing to flush.
    """
    flush = getattr(run, "dng_flush", None)
    if flush is not None:
        flush()


def _is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


def _restore_rng(state: dict | None) -> None:
    """Put back the random streams a checkpoint holds: this rank's own under torchrun (see :func:`_rng_to_save`).

    A checkpoint written by another number of processes gives every rank rank 0's stream (a single-process
    checkpoint: its only one), and the ranks then fork again, as a fresh distributed run does.
    """
    if state and "per_rank" in state:
        streams, world = state["per_rank"], dist.world_size()
        if len(streams) == world:
            set_rng_state(streams[dist.rank()])
            return
        set_rng_state(streams[0])
    else:
        set_rng_state(state)
    dist.fork_random_streams()


def _rng_to_save() -> dict:
    """This process's random streams; under torchrun every rank's (gathered, rank order), since they differ."""
    if dist.world_size() == 1:
        return rng_state()
    return {"per_rank": dist.all_gather_object(rng_state())}


def restore(resume_path: Path, store: CheckpointStore | None, *, model: nn.Module, optimizer=None, scheduler=None,
            scaler=None, sampler_state: dict | None = None) -> tuple[Checkpoint, dict | None]:
    """Load ``resume_path`` into the given objects (and the global RNGs); returns it and its best weights.

    The checkpoint (and its best one) are copied into ``store`` so the new run's folder can be resumed as well.
    """
    ck = load_checkpoint(resume_path)
    if sampler_state is not None and ck.sampler is not None and ck.sampler != sampler_state:
        raise CheckpointError(f"{resume_path} was written for another data set or batch size (sampler {ck.sampler}, "
                              f"this run {sampler_state}); resuming it would not continue the same training")
    try:
        model.load_state_dict(ck.model)
    except RuntimeError as e:
        raise CheckpointError(f"{resume_path} does not fit this model (another config?): {e}") from e
    if optimizer is not None:
        optimizer.load_state_dict(ck.optimizer)
    if scheduler is not None:
        if ck.scheduler is None:
            raise CheckpointError(f"{resume_path} holds no LR scheduler state, but this run uses a scheduler")
        scheduler.load_state_dict(ck.scheduler)
    if scaler is not None and ck.scaler is not None:
        scaler.load_state_dict(ck.scaler)
    _restore_rng(ck.rng)
    best_state = None
    best_path = best_checkpoint_path(Path(resume_path), ck)
    if best_path is not None:
        if not best_path.is_file():
            raise CheckpointError(f"{resume_path} says the best weights are at step {ck.best_step}, but {best_path} "
                                  f"is missing")
        best_state = ck.model if best_path == Path(resume_path) else load_checkpoint(best_path).model
        if store is not None and best_path != Path(resume_path):
            store.copy_in(best_path)
    if store is not None:
        store.copy_in(Path(resume_path))
    return ck, best_state


def train_loop(
    *,
    name: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: EpochSampler,
    train_step: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Callable[[], dict[str, float]],
    monitor: str,
    higher_is_better: bool,
    total_steps: int,
    eval_every: int,
    patience: int | None,
    checkpoint_dir: Path | None,
    resume_path: Path | None = None,
    grad_clip: float = 0.0,
    run=None,
    log_every: int = 1,
    keep_checkpoints: int = 2,
    scheduler=None,
    scaler=None,
    checkpoint_name: str | None = None,
    amp: "AmpMode | str | None" = None,
) -> LoopResult:
    """Optimise ``train_step(indices) -> loss`` for ``total_steps`` steps, with early stopping and exact resume.

    Every ``eval_every`` steps (and at the end) ``evaluate()`` gives validation metrics, logged as
    ``{name}.val.<key>``; ``metrics[monitor]`` decides early stopping: the best weights are restored into
    ``model`` when the loop ends, and training stops after ``patience`` evaluations without improvement
    (``None``: never early). After every evaluation a checkpoint ``{checkpoint_name}.step<N>.pt`` goes to
    ``checkpoint_dir`` (the last ``keep_checkpoints`` and the best are kept) and the run's metrics are flushed to
    its record, so a kill loses at most the steps since. ``resume_path`` restores model, optimizer, scheduler,
    scaler, RNG states and early-stopping state from such a checkpoint: the run continues bit-identically.

    ``amp`` (:class:`~dng_tgn.nn.precision.AmpMode`: None/"fp32", "bf16", "fp16") autocasts ``train_step`` (the
    forward pass and loss; backward follows autocast's casts), with a gradient scaler for fp16 (created here when
    ``scaler`` is None, saved in every checkpoint and restored on resume).

    Under torchrun (:mod:`dng_tgn.distributed`) ``sampler`` yields the *global* batch and ``train_step`` gets this
    rank's contiguous piece of it (``sampler.batch_size / world`` items; an error if that does not divide); the
    gradients are averaged over the ranks before clipping and the optimizer step, the logged loss is the ranks'
    mean, validation runs on rank 0 and its metrics are broadcast, and only rank 0 writes checkpoints.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    world = dist.world_size()
    if world > 1:
        dist.local_batch_size(sampler.batch_size, world, f"{name} batch_size")
        if not getattr(sampler, "drop_last", True) and sampler.n % sampler.batch_size:
            # a short last batch would be cut unevenly, and equal-weight averaging would then be wrong
            raise dist.DistributedConfigError(f"{name}: a sampler without drop_last has a short last batch "
                                              f"({sampler.n} % {sampler.batch_size}); use drop_last under torchrun")
    device = next(iter(model.parameters()), torch.empty(0)).device
    amp = check_amp(amp, device)
    if amp is AmpMode.FP16 and scaler is None:
        scaler = grad_scaler(amp, device)
    # only rank 0 writes; the other ranks keep the bookkeeping but no files
    store = CheckpointStore(checkpoint_dir if dist.is_main() else None, checkpoint_name or name, keep_checkpoints)
    start, best, best_step, best_state, bad_evals, finished = 0, None, None, None, 0, False
    if resume_path is not None:
        ck, best_state = restore(resume_path, store, model=model, optimizer=optimizer, scheduler=scheduler,
                                 scaler=scaler, sampler_state=sampler.state_dict())
        start, best, best_step = ck.step, ck.best_metric, ck.best_step
        bad_evals, finished = ck.evals_without_improvement, ck.finished
    resumed_from = start
    if world > 1:
        # every rank learns whether any rank disagrees with rank 0, so all of them raise (none is left waiting in
        # the next collective for a rank that already stopped)
        start0 = dist.broadcast_object(start)
        n_off = int(dist.all_reduce_sum([float(start != start0)], device)[0])
        if n_off:
            raise CheckpointError(f"{name}: {n_off} of {world} processes resumed at another step than rank 0's "
                                  f"{start0} (rank {dist.rank()}: {start}); every process must resume from the same "
                                  f"checkpoint (a folder all of them read)")
    dist.broadcast_module(model)  # every rank starts from rank 0's weights (equal already when seeded alike)
    if resume_path is None:
        dist.fork_random_streams()  # dropout masks must differ between ranks (a resume restored its own streams)

    def save(step: int, done: bool) -> None:
        store.save(Checkpoint(
            step=step, model=model.state_dict(), optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict() if scheduler is not None else None,
            scaler=scaler.state_dict() if scaler is not None else None, sampler=sampler.state_dict(),
            rng=_rng_to_save(), best_metric=best, best_step=best_step, evals_without_improvement=bad_evals,
            finished=done, name=name))
        flush_run(run)  # the metrics logged so far reach the run record with the checkpoint
        kill_point(f"{name}/saved/{step}")

    stopped_early = finished
    step = start
    if not finished and start < total_steps:
        model.train()
        bar = progress(range(start, total_steps), desc=name, initial=start, total=total_steps, unit="step")
        for step in bar:
            with autocast(amp, device):
                loss = train_step(sampler(step) if world == 1 else dist.shard_batch(sampler(step)))
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                dist.average_gradients(params)  # scaled alike on every rank; an inf anywhere reaches every rank
                if grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                dist.average_gradients(params)
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            value = float(loss.detach())
            if world > 1:  # the global batch's loss: the mean of the ranks' equal-sized pieces
                value = dist.all_reduce_sum([value], device)[0] / world
            if not math.isfinite(value):
                raise FloatingPointError(f"{name}: training loss became {value} at step {step + 1}; lower lr or clip")
            if run is not None and (step + 1) % log_every == 0:
                run.log_scalar(f"{name}.train.loss", value, step + 1)
            bar.set_postfix(loss=f"{value:.3g}", refresh=False)
            kill_point(f"{name}/step/{step + 1}")
            if (step + 1) % eval_every == 0 or step + 1 == total_steps:
                model.eval()
                metrics = None
                if dist.is_main():  # the ranks' models are equal: validate once, decide alike everywhere
                    with torch.no_grad():
                        metrics = evaluate()
                metrics = dist.broadcast_object(metrics)
                model.train()
                log_metrics(run, metrics, step + 1, prefix=f"{name}.val.")
                if monitor not in metrics:
                    raise KeyError(f"{name}: evaluate() returned {sorted(metrics)}, not the monitored {monitor!r}")
                if _is_better(metrics[monitor], best, higher_is_better):
                    best, best_step, bad_evals = float(metrics[monitor]), step + 1, 0
                    best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
                else:
                    bad_evals += 1
                stopped_early = patience is not None and bad_evals >= patience
                # only an early stop is final: a run that used up its budget may be resumed with a larger one
                save(step + 1, stopped_early)
                if stopped_early:
                    break
        bar.close()
        step += 1
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return LoopResult(steps=step, best_step=best_step, best_metric=best, stopped_early=stopped_early,
                      resumed_from=resumed_from)
