"""Build a Small-CNN-Zoo-style dataset (python -m dng_tgn.data.build_cnn_zoo --help).

Every network is ZooCNN (3 x Conv(16, 3x3, stride 2) -> global average pooling -> Dense(10)) on grayscale input
in [-1, 1], with hyperparameters sampled as the Small CNN Zoo does (see cnn_zoo_train). Output under --out, in the
zoo's own format so CNNZooDataset reads it like the public CIFAR10-GS / SVHN-GS archives:
    weights.npy  layout.csv  metrics.csv.gz  (one row per network per checkpoint epoch)
    split.csv    a seeded row permutation in NFN's split-file format;   meta.json   settings
An "epoch" here is --steps-per-epoch steps (the full preset uses one pass over the training set).
The final checkpoint is labelled ``step`` = --final-step (default 86, the Small CNN Zoo's last epoch, which the public
NFN and neural-graphs loaders select with ``step == 86``); its real epoch is in the ``epoch`` column of every row.
Networks train --shard-size at a time and each shard is saved atomically under _shards/, so a rerun resumes.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .cnn_zoo_train import sample_configs, sort_by_activation, train_zoo
from .. import distributed as dist
from ..device import resolve_device
from ..progress import progress
from .shards import (add_run_arguments, apply_preset, init_ranks, open_output, CorruptShardError, atomic_write_bytes,
                     atomic_write_json, shard_ranges)
from .sources import load_images, to_signed
from .zoo_format import state_dict_to_row, zoo_cnn_layout

PRESETS = {
    "cpu": dict(n_models=96, shard_size=48, steps_per_epoch=25, checkpoints="0,1,2,4", n_eval=1000),
    # the generalization tables' CPU scale (issue #12): 2,048 nets, NFN's split gives 1,024 test / 205 val;
    # cost measured with benchmarks/bench_zoo_training.py, see the README's datasets section
    "bench": dict(n_models=2048, shard_size=128, steps_per_epoch=25, checkpoints="0,1,2,4", n_eval=1000),
    "full": dict(n_models=30000, shard_size=1000, steps_per_epoch=1875, checkpoints="0,1,2,3,20,40,60,80,86",
                 n_eval=10000),
}
SETTINGS = ("dataset", "n_models", "steps_per_epoch", "checkpoints", "batch_size", "n_eval", "seed", "final_step")
FINAL_STEP = 86  # the Small CNN Zoo's final epoch: public loaders keep rows with step == 86


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dng_tgn.data.build_cnn_zoo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion", choices=["fashion", "mnist", "digits"])
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="cpu: 96 nets, 4 epochs of 25 steps, eval on 1000 images (default); "
                        "bench: 2048 nets, as cpu otherwise (the generalization tables' scale); "
                        "full: 30000 nets, 86 epochs of a full pass, the zoo's checkpoint epochs (GPU)")
    p.add_argument("--n-models", type=int, help="number of networks")
    p.add_argument("--shard-size", type=int, help="networks trained together and saved as one shard")
    p.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch")
    p.add_argument("--checkpoints", help="comma-separated epochs to record, e.g. 0,1,2,3,6; the last is final")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-eval", type=int, help="test images (and training images) used to score each checkpoint")
    p.add_argument("--final-step", type=int, default=FINAL_STEP,
                   help="the 'step' label of the final checkpoint (default 86, what the public zoo loaders select); "
                        "the real epoch is kept in the 'epoch' column")
    add_run_arguments(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS[args.preset])
    args.checkpoints = ",".join(str(int(c)) for c in sorted({int(c) for c in str(args.checkpoints).split(",")}))
    earlier = [int(c) for c in args.checkpoints.split(",")][:-1]
    if any(c >= args.final_step for c in earlier):
        p.error(f"--final-step {args.final_step} must exceed every earlier checkpoint epoch ({args.checkpoints}): "
                f"otherwise two checkpoints of a network would share a step label")
    return args


def _save_shard(path: Path, rows: np.ndarray, metrics: list[dict]) -> None:
    buf = io.BytesIO()
    np.savez(buf, weights=rows, metrics=np.array(json.dumps(metrics)))
    atomic_write_bytes(path, buf.getvalue())


def _load_shard(path: Path):
    try:
        with np.load(path) as z:
            return z["weights"], json.loads(str(z["metrics"]))
    except Exception as e:  # zipfile.BadZipFile, KeyError, ValueError, EOFError ...
        raise CorruptShardError(f"corrupt zoo shard {path}: {type(e).__name__}: {e}; delete it to retrain") from e


def _train_shard(args, configs, model_ids, data, device, bar):
    x_tr, y_tr, x_te, y_te = data
    order = sort_by_activation(configs)
    sorted_cfgs = [configs[i] for i in order]
    layout, keys = zoo_cnn_layout(in_channels=x_tr.shape[1])
    checkpoints = [int(c) for c in args.checkpoints.split(",")]
    per_model = {i: [] for i in range(len(configs))}
    for epoch, params, te_acc, te_loss, tr_acc, tr_loss in train_zoo(
            sorted_cfgs, x_tr, y_tr, x_te, y_te, args.steps_per_epoch, checkpoints, args.batch_size, device,
            progress=bar, seed=args.seed * 1_000_003 + model_ids[0]):
        for j, i in enumerate(order):
            sd = {k: p[j] for k, p in zip(keys, params)}
            row = state_dict_to_row(sd, layout, keys)
            cfg = {f"config.{k}": v for k, v in configs[i].items()}
            cfg.update({"config.dataset": args.dataset, "config.dnn_architecture": "cnn", "config.num_layers": 3,
                        "config.num_units": 16, "config.epochs": checkpoints[-1],
                        "config.batch_size": args.batch_size, "config.steps_per_epoch": args.steps_per_epoch})
            step = args.final_step if epoch == checkpoints[-1] else epoch  # the public loaders' final label
            per_model[i].append((row, dict(cfg, model_id=model_ids[i], step=step, epoch=epoch,
                                           test_accuracy=float(te_acc[j]), test_loss=float(te_loss[j]),
                                           train_accuracy=float(tr_acc[j]), train_loss=float(tr_loss[j]))))
    rows = np.stack([r for i in range(len(configs)) for r, _ in per_model[i]])
    metrics = [m for i in range(len(configs)) for _, m in per_model[i]]
    return rows, metrics


def _merge(out: Path, shard_paths, args, layout):
    """Write weights.npy (via a temporary memmap, then os.replace), metrics, layout, split and meta."""
    loaded = [_load_shard(p) for p in shard_paths]
    n_rows = sum(len(w) for w, _ in loaded)
    width = loaded[0][0].shape[1]
    tmp = out / ".weights.npy.tmp"
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_rows, width))
    start = 0
    for w, _ in loaded:
        arr[start:start + len(w)] = w
        start += len(w)
    arr.flush()
    del arr
    os.replace(tmp, out / "weights.npy")
    metrics = pd.DataFrame([m for _, ms in loaded for m in ms])
    buf = io.BytesIO()
    metrics.to_csv(buf, index=False, compression={"method": "gzip", "mtime": 0})
    atomic_write_bytes(out / "metrics.csv.gz", buf.getvalue())
    atomic_write_bytes(out / "layout.csv", layout.to_csv(index=False).encode())
    perm = np.random.default_rng(args.seed).permutation(n_rows)
    atomic_write_bytes(out / "split.csv", "".join(f"{i}\n" for i in perm).encode())
    return metrics


def summarize(metrics: pd.DataFrame) -> dict:
    final = metrics[metrics["step"] == metrics["step"].max()]["test_accuracy"]
    return dict(n=int(len(final)), min=float(final.min()), median=float(final.median()),
                max=float(final.max()), std=float(final.std(ddof=0)))


def build(args) -> Path:
    settings = {k: getattr(args, k) for k in SETTINGS}
    out = open_output(args, settings)
    meta_path = out / "meta.json"
    device = resolve_device(args.device)
    x_tr, y_tr = load_images(args.dataset, "train")
    x_te, y_te = load_images(args.dataset, "test")
    eval_idx = np.random.default_rng(args.seed).permutation(len(x_te))[: args.n_eval]
    meta = dict(settings, eval_test_indices=eval_idx.tolist(), complete=False)
    if dist.is_main():
        atomic_write_json(meta, meta_path)
    data = (to_signed(x_tr), torch.from_numpy(y_tr), to_signed(x_te[eval_idx]), torch.from_numpy(y_te[eval_idx]))
    configs = sample_configs(args.n_models, args.seed)
    plan = shard_ranges(args.n_models, args.shard_size)
    shard_paths = [out / "_shards" / f"shard_{k:05d}.npz" for k in range(len(plan))]
    for p in shard_paths:  # a damaged finished shard is an error now, not after hours of training
        if p.exists():
            _load_shard(p)
    todo = dist.my_share([k for k, p in enumerate(shard_paths) if not p.exists()][: args.max_shards])  # this rank's
    dist.barrier()  # every rank has listed the same unfinished shards before any rank writes one
    n_ckpt_steps = max(int(c) for c in args.checkpoints.split(",")) * args.steps_per_epoch
    t0 = time.time()
    with progress(total=sum(plan[k][1] - plan[k][0] for k in todo) * n_ckpt_steps, unit="net-step", unit_scale=True,
                  desc="CNN zoo") as bar:
        for k in todo:
            s, e = plan[k]
            rows, metrics = _train_shard(args, configs[s:e], list(range(s, e)), data, device, bar)
            _save_shard(shard_paths[k], rows, metrics)
    elapsed = time.time() - t0
    dist.barrier()  # every rank's shards are on disk; rank 0 alone merges
    if not dist.is_main():
        print(f"rank {dist.rank()}: trained {sum(plan[k][1] - plan[k][0] for k in todo)} CNNs in {elapsed:.1f}s",
              file=sys.stderr)
        return out
    done = [p for p in shard_paths if p.exists()]
    print(f"trained {sum(plan[k][1] - plan[k][0] for k in todo)} CNNs in {elapsed:.1f}s; "
          f"{len(done)}/{len(plan)} shards in {out}", file=sys.stderr)
    if len(done) == len(plan):
        layout, _ = zoo_cnn_layout(in_channels=data[0].shape[1])
        metrics = _merge(out, shard_paths, args, layout)
        stats = summarize(metrics)
        atomic_write_json(dict(meta, complete=True, final_test_accuracy=stats), meta_path)
        print("final test accuracy: " + ", ".join(f"{k}={v:.4g}" for k, v in stats.items()), file=sys.stderr)
    return out


def main(argv=None):
    args = parse_args(argv)
    init_ranks(args)
    build(args)


if __name__ == "__main__":
    main()
