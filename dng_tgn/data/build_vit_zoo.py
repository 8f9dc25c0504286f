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

from ..device import resolve_device
from .shards import (add_run_arguments, apply_preset, open_output, CorruptShardError, atomic_torch_save,
                     atomic_write_bytes, atomic_write_json, shard_ranges, torch_load)
from .sources import load_images, to_signed
from .vit_zoo import VIT_PYTORCH_LAYOUT, train_vits, vit_split

PRESETS = {
    "cpu": dict(n_models=128, shard_size=64, steps_per_epoch=30, max_epochs=5, n_eval=1000),
    "full": dict(n_models=1000, shard_size=250, steps_per_epoch=938, max_epochs=30, n_eval=10000),
}
SETTINGS = ("dataset", "n_models", "steps_per_epoch", "max_epochs", "batch_size", "lr", "n_eval", "seed",
            "model_kwargs")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dng_tgn.data.build_vit_zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion", choices=["fashion", "mnist", "digits"])
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="cpu: 128 ViTs, stop epochs 1..5 of 30 steps, eval on 1000 images (default); "
                        "full: 1000 ViTs, stop epochs 1..30 of a full pass, full test set (GPU)")
    p.add_argument("--n-models", type=int)
    p.add_argument("--shard-size", type=int, help="models trained together and saved as one shard")
    p.add_argument("--steps-per-epoch", type=int)
    p.add_argument("--max-epochs", type=int, help="stop epochs are drawn from 1..max-epochs")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-eval", type=int, help="test images used to score each model")
    p.add_argument("--patch-size", type=int, default=None, help="default 7 (28x28 images) or 4 (8x8 digits)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dim-head", type=int, default=16)
    p.add_argument("--mlp-dim", type=int, default=64)
    add_run_arguments(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS[args.preset])
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
    eval_idx = rng.permutation(len(x_te))[: args.n_eval]
    # the weights do not record the head count (only heads x dim_head): loaders take it from here
    meta = dict(settings, split_seed=0, eval_test_indices=eval_idx.tolist(), complete=False, heads=args.heads,
                layout=VIT_PYTORCH_LAYOUT)
    atomic_write_json(meta, meta_path)
    data = (to_signed(x_tr), torch.from_numpy(y_tr), to_signed(x_te[eval_idx]), torch.from_numpy(y_te[eval_idx]))
    device = resolve_device(args.device)
    plan = shard_ranges(args.n_models, args.shard_size)
    paths = [out / "_shards" / f"shard_{k:05d}.pt" for k in range(len(plan))]
    for p in paths:
        if p.exists():
            _check(torch_load(p, "ViT zoo shard"), p)
    todo = [k for k, p in enumerate(paths) if not p.exists()][: args.max_shards]
    t0 = time.time()
    # a shard runs until its latest stop epoch
    total = sum((plan[k][1] - plan[k][0]) * max(stops[plan[k][0]:plan[k][1]]) for k in todo) * args.steps_per_epoch
    with tqdm(total=total, unit="vit-step", unit_scale=True, desc="ViT zoo", disable=False) as bar:
        for k in todo:
            s, e = plan[k]
            snap, acc = train_vits(args.model_kwargs, seeds[s:e], stops[s:e], *data, args.steps_per_epoch,
                                   args.batch_size, args.lr, device, progress=bar)
            atomic_torch_save(dict(params=snap, test_accuracy=acc, model_id=list(range(s, e)), seed=seeds[s:e],
                                   stop_epoch=stops[s:e]), paths[k])
    print(f"trained {sum(plan[k][1] - plan[k][0] for k in todo)} ViTs in {time.time() - t0:.1f}s", file=sys.stderr)
    if all(p.exists() for p in paths):
        shards = [torch_load(p, "ViT zoo shard") for p in paths]
        params = {k: torch.cat([sh["params"][k] for sh in shards]) for k in shards[0]["params"]}
        metrics = pd.DataFrame(dict(
            model_id=[i for sh in shards for i in sh["model_id"]], seed=[i for sh in shards for i in sh["seed"]],
            stop_epoch=[i for sh in shards for i in sh["stop_epoch"]],
            test_accuracy=torch.cat([sh["test_accuracy"] for sh in shards]).tolist()))
        split = np.empty(len(metrics), dtype=object)
        for name, idx in vit_split(len(metrics), 0).items():
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
    build(parse_args(argv))


if __name__ == "__main__":
    main()
