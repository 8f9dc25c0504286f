"""Build a ViT zoo (python -m dng_tgn.data.build_vit_zoo --help), after the paper's App. E.2.

Each model is a 2-block SimpleViT (the current vit-pytorch layout, 1.26.x) with its own initialisation seed, its own random
batches and its own stop epoch drawn uniformly from 1..--max-epochs; its test accuracy is recorded at that epoch. An "epoch" is
--steps-per-epoch Adam steps (the full preset uses one pass over the training set). Models train --shard-size at a
time; each shard is saved atomically under _shards/ so a rerun resumes. meta.json records the head count, which
the weights do not. Read the result with ViTZooDataset.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import distributed as dist
from ..device import resolve_device
from .shards import (add_run_arguments, apply_preset, init_ranks, open_output, CorruptShardError, atomic_torch_save,
                     atomic_write_bytes, atomic_write_json, shard_ranges, torch_load)
from .sources import load_images, to_signed
from .vit_zoo import VIT_PYTORCH_LAYOUT, train_vits, vit_split

PRESETS = {
    "cpu": dict(n_models=128, shard_size=64, steps_per_epoch=30, max_epochs=5, n_eval=1000),
    # the generalization tables' CPU scale (issue #12): 600 ViTs split 50/10/40, so 240 test and 60 val nets can
    # rank methods (80/10/10 would need 2,000 ViTs for 200 test nets); cost: benchmarks/bench_zoo_training.py
    # per-ViT learning rates (log-uniform) widen the accuracy spread: with seeds and stop epochs alone it was std 0.035
    "bench": dict(n_models=600, shard_size=100, steps_per_epoch=40, max_epochs=6, n_eval=1000,
                  split="0.5,0.1,0.4", lr_range="3e-4,1e-2"),
    "full": dict(n_models=1000, shard_size=250, steps_per_epoch=938, max_epochs=30, n_eval=10000),
}
SETTINGS = ("dataset", "n_models", "steps_per_epoch", "max_epochs", "batch_size", "lr", "n_eval", "seed",
            "model_kwargs", "split", "lr_range")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dng_tgn.data.build_vit_zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion", choices=["fashion", "mnist", "digits"])
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="cpu: 128 ViTs, stop epochs 1..5 of 30 steps, eval on 1000 images (default); "
                        "bench: 600 ViTs, stop epochs 1..6 of 40 steps, split 50/10/40 (the tables' scale); "
                        "full: 1000 ViTs, stop epochs 1..30 of a full pass, full test set (GPU)")
    p.add_argument("--n-models", type=int)
    p.add_argument("--shard-size", type=int, help="models trained together and saved as one shard")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--max-epochs", type=int, help="stop epochs are drawn from 1..max-epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-eval", type=int, help="test images used to score each model")
    p.add_argument("--lr-range", default=None,
                   help="lo,hi: each ViT's own Adam learning rate, log-uniform in [lo, hi] (default: --lr for all)")
    p.add_argument("--split", default=None,
                   help="train,val,test fractions of the seeded model split (default 0.8,0.1,0.1 as in App. E.2)")
    p.add_argument("--patch-size", type=int, default=None, help="default 7 (28x28 images) or 4 (8x8 digits)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim-head", type=int, default=16)
    p.add_argument("--mlp-dim", type=int, default=64)
    add_run_arguments(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS[args.preset])
    try:  # None (App. E.2's 80/10/10) stays None in the settings, so zoos started before --split still resume
        vit_split(10, 0, [float(f) for f in (args.split or "0.8,0.1,0.1").split(",")])
    except ValueError as e:
        p.error(f"--split {args.split!r}: {e}")
    if args.lr_range is not None:
        try:
            lo, hi = (float(v) for v in args.lr_range.split(","))
        except ValueError:
            p.error(f"--lr-range needs two comma-separated numbers lo,hi, got {args.lr_range!r}")
        if not 0 < lo <= hi:
            p.error(f"--lr-range needs 0 < lo <= hi, got {args.lr_range!r}")
    return args


def build(args) -> Path:
    x_tr, y_tr = load_images(args.dataset, "train")
    x_te, y_te = load_images(args.dataset, "test")
    size = x_tr.shape[1]
    args.model_kwargs = dict(image_size=size, patch_size=args.patch_size or (7 if size % 7 == 0 else 4),
                             num_classes=10, dim=args.dim, depth=args.depth, heads=args.heads, mlp_dim=args.mlp_dim,
                             channels=1 if x_tr.ndim == 3 else x_tr.shape[-1], dim_head=args.dim_head,
                             final_norm_in_transformer=True)  # the current vit-pytorch layout (see nets/simple_vit.py)
    settings = {k: getattr(args, k) for k in SETTINGS}
    out = open_output(args, settings)
    meta_path = out / "meta.json"
    rng = np.random.default_rng(args.seed)
    seeds = [int(s) for s in rng.integers(2**31, size=args.n_models)]
    stops = [int(s) for s in rng.integers(1, args.max_epochs + 1, size=args.n_models)]
    lrs = [args.lr] * args.n_models
    if args.lr_range is not None:  # drawn from their own stream: the seeds and stops above stay those of older zoos
        lo, hi = (float(v) for v in args.lr_range.split(","))
        lr_rng = np.random.default_rng([args.seed, 1])
        lrs = [float(v) for v in np.exp(lr_rng.uniform(np.log(lo), np.log(hi), size=args.n_models))]
    eval_idx = rng.permutation(len(x_te))[: args.n_eval]
    # the weights do not record the head count (only heads x dim_head): loaders take it from here
    fractions = [float(f) for f in (args.split or "0.8,0.1,0.1").split(",")]
    meta = dict(settings, split_seed=0, split_fractions=fractions, eval_test_indices=eval_idx.tolist(), complete=False,
                heads=args.heads, layout=VIT_PYTORCH_LAYOUT)
    if dist.is_main():
        atomic_write_json(meta, meta_path)
    data = (to_signed(x_tr), torch.from_numpy(y_tr), to_signed(x_te[eval_idx]), torch.from_numpy(y_te[eval_idx]))
    device = resolve_device(args.device)
    plan = shard_ranges(args.n_models, args.shard_size)
    paths = [out / "_shards" / f"shard_{k:05d}.pt" for k in range(len(plan))]
    for p in paths:
        if p.exists():
            _check(torch_load(p, "ViT zoo shard"), p)
    todo = dist.my_share([k for k, p in enumerate(paths) if not p.exists()][: args.max_shards])  # this rank's
    dist.barrier()  # every rank has listed the same unfinished shards before any rank writes one
    t0 = time.time()
    # a shard runs until its latest stop epoch
    total = sum((plan[k][1] - plan[k][0]) * max(stops[plan[k][0]:plan[k][1]]) for k in todo) * args.steps_per_epoch
    with tqdm(total=total, unit="vit-step", unit_scale=True, desc="ViT zoo", disable=not dist.is_main()) as bar:
        for k in todo:
            s, e = plan[k]
            snap, acc = train_vits(args.model_kwargs, seeds[s:e], stops[s:e], *data, args.steps_per_epoch,
                                   args.batch_size, args.lr, device, progress=bar,
                                   lrs=lrs[s:e] if args.lr_range is not None else None)
            atomic_torch_save(dict(params=snap, test_accuracy=acc, model_id=list(range(s, e)), seed=seeds[s:e],
                                   stop_epoch=stops[s:e], lr=lrs[s:e]), paths[k])
    print(f"rank {dist.rank()}: " if dist.world_size() > 1 else "", end="", file=sys.stderr)
    print(f"trained {sum(plan[k][1] - plan[k][0] for k in todo)} ViTs in {time.time() - t0:.1f}s", file=sys.stderr)
    dist.barrier()  # every rank's shards are on disk; rank 0 alone merges
    if dist.is_main() and all(p.exists() for p in paths):
        shards = [torch_load(p, "ViT zoo shard") for p in paths]
        params = {k: torch.cat([sh["params"][k] for sh in shards]) for k in shards[0]["params"]}
        metrics = pd.DataFrame(dict(
            model_id=[i for sh in shards for i in sh["model_id"]], seed=[i for sh in shards for i in sh["seed"]],
            stop_epoch=[i for sh in shards for i in sh["stop_epoch"]],
            lr=[i for sh in shards for i in sh.get("lr", [args.lr] * len(sh["model_id"]))],
            test_accuracy=torch.cat([sh["test_accuracy"] for sh in shards]).tolist()))
        split = np.empty(len(metrics), dtype=object)
        for name, idx in vit_split(len(metrics), 0, fractions).items():
            if name != "all":
                split[idx] = name
        metrics["split"] = split
        atomic_torch_save(params, out / "models.pt")
        atomic_write_bytes(out / "metrics.csv", metrics.to_csv(index=False).encode())
        acc = metrics["test_accuracy"]
        meta.update(complete=True, test_accuracy=dict(min=acc.min(), median=acc.median(), max=acc.max(),
                                                      std=float(acc.std(ddof=0))))
        atomic_write_json(meta, meta_path)
        print("test accuracy: " + ", ".join(f"{k}={v:.4g}" for k, v in meta["test_accuracy"].items()),
              file=sys.stderr)
    return out


def _check(shard, path):
    if not isinstance(shard, dict) or not {"params", "test_accuracy", "model_id"} <= set(shard):
        raise CorruptShardError(f"corrupt ViT zoo shard {path}: missing fields; delete it to retrain")


def main(argv=None):
    args = parse_args(argv)
    init_ranks(args)
    build(args)


if __name__ == "__main__":
    main()
