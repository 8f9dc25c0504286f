"""The generic training machinery every downstream task shares (paper §8, App. F).

* :mod:`.loop`: :func:`train_loop`, steps with validation every ``eval_every`` steps, early stopping on the
  validation metric (F.1.3 / F.2: "the model showing the best performance on the validation set"), atomic
  checkpoints and resume.
* :mod:`.checkpoint`: the checkpoint format (schema-versioned; model, optimizer, scheduler, AMP scaler, sampler
  and RNG states), which files to keep, and the ``resume=`` config.
* :mod:`.sampling`: seeding and :class:`EpochSampler` (batches as a pure function of the step).
* :mod:`.metrics`: Kendall's τ and R² of Tables 3 and 7.

What is trained (encoders, heads) lives in :mod:`dng_tgn.nn`, what it is trained on in :mod:`dng_tgn.data`,
and the task pipelines that put them together in :mod:`dng_tgn.tasks`.
"""
from .checkpoint import (Checkpoint, CheckpointError, CheckpointStore, latest_checkpoint, load_checkpoint,
                         resolve_resume, rng_state, run_dir, save_checkpoint, set_rng_state)
from .loop import LoopResult, flush_run, log_metrics, restore, train_loop
from .metrics import COLLAPSE_RATIO, collapse_check, kendall_tau, paired_bootstrap_tau, r2_score, spread_ratio
from .sampling import EpochSampler, seed_everything

__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointStore", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
    "resolve_resume", "run_dir", "rng_state", "set_rng_state", "COLLAPSE_RATIO", "collapse_check", "spread_ratio", "paired_bootstrap_tau",
    "LoopResult", "train_loop", "log_metrics", "restore", "flush_run", "kendall_tau", "r2_score", "EpochSampler", "seed_everything",
]
