"""What tests/test_distributed.py runs in each torchrun process (and, for reference, in one process).

``python -m torch.distributed.run --nproc_per_node 2 --standalone tests/_ddp_worker.py OUT`` makes every rank:

1. train a small regression model with :func:`dng_tgn.training.train_loop` (global batch 8, 20 steps), recording
   the indices its ``train_step`` received, the logged losses and validation metrics; checkpoints go to
   ``OUT/<run>/ck/rank<r>`` so that a file written by rank 1 would be seen;
2. the negative control: the same with a per-rank batch of 8 (global 16), which must *not* match one process;
3. resume: 10 steps, then a new loop resumed from rank 0's checkpoint to step 20;
4. the §7 experiment (Sacred, ``with tiny``) with ``DNG_RUNS_DIR`` from the environment;
5. the CNN-zoo builder on a tiny zoo, shards split over the ranks;

and writes ``OUT/rank<r>.json``. The test calls the same functions in its own (single) process.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn

from dng_tgn import distributed as dist
from dng_tgn.training import EpochSampler, latest_checkpoint, train_loop

N_TRAIN, N_VAL, GLOBAL_BATCH, STEPS, EVAL_EVERY = 40, 16, 8, 20, 5
ZOO_ARGS = ["--dataset", "digits", "--n-models", "4", "--shard-size", "1", "--steps-per-epoch", "3",
            "--checkpoints", "0,1", "--n-eval", "40", "--device", "cpu", "--threads", "1"]


class Recorder:
    """A stand-in for a Sacred run: collects ``log_scalar`` calls."""

    def __init__(self):
        self.scalars: list[tuple[str, float, int]] = []

    def log_scalar(self, name, value, step=None):
        self.scalars.append((name, float(value), step))


def regression(out: Path, total_steps: int, global_batch: int = GLOBAL_BATCH, resume: Path | None = None,
               amp=None) -> dict:
    """A 5 -> 16 -> 1 tanh MLP on a fixed linear-plus-noise task; everything seeded, no dropout."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VAL, 5, generator=g)
    y = x @ torch.randn(5, 1, generator=g) + 0.1 * torch.randn(N_TRAIN + N_VAL, 1, generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    seen: list[list[int]] = []
    draws: list[float] = []  # one draw from the global stream per step, as a dropout mask would make

    def step(idx):
        seen.append(idx.tolist())
        draws.append(float(torch.rand(())))
        return ((model(x[idx]) - y[idx]) ** 2).mean()

    def evaluate():
        return {"mse": float(((model(x[N_TRAIN:]) - y[N_TRAIN:]) ** 2).mean())}

    rec = Recorder()
    result = train_loop(name="reg", model=model, optimizer=opt, sampler=EpochSampler(N_TRAIN, global_batch, seed=3),
                        train_step=step, evaluate=evaluate, monitor="mse", higher_is_better=False,
                        total_steps=total_steps, eval_every=EVAL_EVERY, patience=None,
                        checkpoint_dir=out / "ck" / f"rank{dist.rank()}", resume_path=resume, grad_clip=1.0, run=rec,
                        amp=amp)
    return {"seen": seen, "draws": draws, "loss": [v for n, v, _ in rec.scalars if n == "reg.train.loss"],
            "val": [v for n, v, _ in rec.scalars if n == "reg.val.mse"], "best_metric": result.best_metric,
            "weights": [p.detach().reshape(-1).tolist() for p in model.parameters()]}


def run_all(out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rec = {"rank": dist.rank(), "world": dist.world_size()}
    rec["full"] = regression(out / "full", STEPS)
    rec["wrong_batch"] = regression(out / "wrong_batch", STEPS, global_batch=GLOBAL_BATCH * dist.world_size())
    regression(out / "half", STEPS // 2)
    dist.barrier()  # rank 0 writes its last checkpoint after the others have finished their steps
    ck = latest_checkpoint(out / "half" / "ck" / "rank0", "reg")  # rank 0's: the only one there is
    rec["resumed"] = regression(out / "resumed", STEPS, resume=ck)

    from experiments.static_vs_dynamic import ex

    run = ex.run(named_configs=["tiny"], config_updates={"runtime": {"device": "cpu"}},
                 options={"--capture": "no"})
    rec["svd"] = run.result

    from dng_tgn.data import build_cnn_zoo

    build_cnn_zoo.main(ZOO_ARGS + ["--out", str(out / "zoo")])
    return rec


if __name__ == "__main__":
    out = Path(sys.argv[1])
    dist.init_from_env("cpu")
    torch.set_num_threads(1)
    record = run_all(out)
    (out / f"rank{dist.rank()}.json").write_text(json.dumps(record))
    dist.barrier()
    torch.distributed.destroy_process_group()
