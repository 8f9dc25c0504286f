"""The generic training loop: steps, periodic validation, early stopping, atomic checkpoints, resume."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .sampling import EpochSampler

__all__ = ["LoopResult", "train_loop", "log_metrics"]


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


def _is_better(value: float, best: float | None, higher_is_better: bool) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value > best if higher_is_better else value < best


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
    checkpoint_path: Path | None,
    resume_path: Path | None = None,
    grad_clip: float = 0.0,
    run=None,
    log_every: int = 1,
) -> LoopResult:
    """Optimise ``train_step(indices) -> loss`` for ``total_steps`` steps, with early stopping and resume.

    Every ``eval_every`` steps (and at the end) ``evaluate()`` gives validation metrics, logged as
    ``{name}.val.<key>``; ``metrics[monitor]`` decides early stopping: the best weights are kept and
    restored into ``model`` when the loop ends, and training stops after ``patience`` evaluations without
    improvement (``None``: never early). A checkpoint is written atomically after every evaluation; with
    ``resume_path`` the loop restores model, optimizer, step and early-stopping state from it and goes on.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    start, best, best_step, best_state, bad_evals, finished = 0, None, None, None, 0, False
    if resume_path is not None:
        ck = load_checkpoint(resume_path)
        model.load_state_dict(ck.model)
        optimizer.load_state_dict(ck.optimizer)
        start, best, best_step, best_state = ck.step, ck.best_metric, ck.best_step, ck.best_model
        bad_evals, finished = ck.evals_without_improvement, ck.finished
    resumed_from = start

    def save(step: int, done: bool) -> None:
        if checkpoint_path is None:
            return
        save_checkpoint(checkpoint_path, Checkpoint(
            step=step, model=model.state_dict(), optimizer=optimizer.state_dict(), best_metric=best, best_step=best_step,
            best_model=best_state, evals_without_improvement=bad_evals, finished=done))

    stopped_early = finished
    step = start
    if not finished and start < total_steps:
        model.train()
        bar = tqdm(range(start, total_steps), desc=name, initial=start, total=total_steps, leave=False, mininterval=1.0)
        for step in bar:
            loss = train_step(sampler(step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"{name}: training loss became {value} at step {step + 1}; lower lr or clip")
            if run is not None and (step + 1) % log_every == 0:
                run.log_scalar(f"{name}.train.loss", value, step + 1)
            bar.set_postfix(loss=f"{value:.3g}", refresh=False)
            if (step + 1) % eval_every == 0 or step + 1 == total_steps:
                model.eval()
                with torch.no_grad():
                    metrics = evaluate()
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
    if checkpoint_path is not None and not checkpoint_path.exists():
        # a resumed phase with nothing left to train: copy its state so this run's directory can be resumed too
        save(step, stopped_early)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return LoopResult(steps=step, best_step=best_step, best_metric=best, stopped_early=stopped_early,
                      resumed_from=resumed_from)
