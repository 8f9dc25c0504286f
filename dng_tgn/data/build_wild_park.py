"""Build a CNN Wild Park (python -m dng_tgn.data.build_wild_park --help): CNNs of many architectures.

--n-archs architectures are sampled (see dng_tgn.data.wild_park: depth 2-5, widths, 3x3/5x5 kernels, with and
without residuals, four activations; a quarter of them *unseen*: depth 4 or a width-12 layer), --nets-per-arch
networks each, with their own learning rate, init scale, seed and training length (up to --max-steps Adam steps
of --batch-size images). One architecture is one shard (its networks train together), saved atomically under
_shards/, so a rerun resumes. Output: meta.json (settings, architectures), metrics.csv (one row per network:
model_id, arch_id, index_in_arch, split, test_accuracy, hyperparameters), _shards/arch_<k>.pt (stacked weights).
Read it with dng_tgn.data.wild_park.WildParkDataset (splits train / val / test / test_unseen).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..device import resolve_device
from ..progress import progress
from .shards import (add_run_arguments, apply_preset, atomic_torch_save, atomic_write_bytes, atomic_write_json,
                     open_output, torch_load, CorruptShardError)
from .sources import load_images, to_signed
from .wild_park import arch_key, is_unseen, sample_archs, sample_hparams, split_of, train_arch_group

PRESETS = {
    "tiny": dict(n_archs=8, nets_per_arch=4, max_steps=20, n_eval=200),  # tests
    # the generalization table's cnn_wild_park: 1,536 nets (~576 train, ~115 val, ~461 seen test, 384 unseen test);
    # about the CNN zoo bench preset's compute (2x its MACs per image, half its steps); benchmarks/bench_zoo_training.py
    "bench": dict(n_archs=96, nets_per_arch=16, max_steps=100, n_eval=1000),
}
SETTINGS = ("dataset", "n_archs", "nets_per_arch", "max_steps", "batch_size", "n_eval", "seed", "unseen_fraction")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m dng_tgn.data.build_wild_park", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion", choices=["fashion", "mnist", "digits"])
    p.add_argument("--out", required=True, help="output folder (rerun the same command to resume)")
    p.add_argument("--preset", default="bench", choices=sorted(PRESETS),
                   help="bench: 96 architectures x 16 nets, up to 100 steps (default); tiny: 8 x 4, 20 steps")
    p.add_argument("--n-archs", type=int)
    p.add_argument("--nets-per-arch", type=int)
    p.add_argument("--max-steps", type=int, help="training lengths are drawn from max/8..max steps")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--n-eval", type=int, help="test images used to score each network")
    p.add_argument("--unseen-fraction", type=float, default=0.25, help="share of architectures held out")
    add_run_arguments(p)
    args = p.parse_args(argv)
    apply_preset(args, PRESETS[args.preset])
    if not 0 < args.unseen_fraction < 1:
        p.error(f"--unseen-fraction must be in (0, 1), got {args.unseen_fraction}")
    return args


def build(args) -> Path:
    settings = {k: getattr(args, k) for k in SETTINGS}
    out = open_output(args, settings)
    device = resolve_device(args.device)
    x_tr, y_tr = load_images(args.dataset, "train")
    x_te, y_te = load_images(args.dataset, "test")
    eval_idx = np.random.default_rng(args.seed).permutation(len(x_te))[: args.n_eval]
    archs = sample_archs(args.n_archs, args.seed, args.unseen_fraction)
    meta = dict(settings, archs=archs, eval_test_indices=eval_idx.tolist(), complete=False)
    atomic_write_json(meta, out / "meta.json")
    xt, yt = to_signed(x_tr), torch.from_numpy(y_tr)
    xe, ye = to_signed(x_te[eval_idx]), torch.from_numpy(y_te[eval_idx])
    hps = [sample_hparams(args.nets_per_arch, args.seed * 1_000_003 + a, args.max_steps) for a in range(len(archs))]
    paths = [out / "_shards" / f"arch_{a:05d}.pt" for a in range(len(archs))]
    for p in paths:  # a damaged finished shard is an error now, not after hours of training
        if p.exists():
            _check(torch_load(p, "Wild Park shard"), p)
    todo = [a for a, p in enumerate(paths) if not p.exists()][: args.max_shards]
    t0 = time.time()
    with progress(total=sum(max(h["steps"] for h in hps[a]) * len(hps[a]) for a in todo), unit="net-step",
                  unit_scale=True, desc="Wild Park") as bar:
        for a in todo:
            params, acc = train_arch_group(archs[a], hps[a], xt, yt, xe, ye, args.batch_size, device,
                                           seed=args.seed * 1_000_003 + a, progress=bar)
            atomic_torch_save(dict(params=params, test_accuracy=acc, arch=archs[a]), paths[a])
    print(f"trained {len(todo)} architectures x {args.nets_per_arch} nets in {time.time() - t0:.1f}s", file=sys.stderr)
    if all(p.exists() for p in paths):
        rows = []
        for a, p in enumerate(paths):
            acc = torch_load(p, "Wild Park shard")["test_accuracy"]
            for j, h in enumerate(hps[a]):
                model_id = a * args.nets_per_arch + j
                rows.append(dict(model_id=model_id, arch_id=a, index_in_arch=j, arch=arch_key(archs[a]),
                                 depth=len(archs[a]["widths"]), unseen=is_unseen(archs[a]),
                                 split=split_of(archs[a], model_id, args.seed), test_accuracy=float(acc[j]), **h))
        metrics = pd.DataFrame(rows)
        atomic_write_bytes(out / "metrics.csv", metrics.to_csv(index=False).encode())
        fin = metrics["test_accuracy"].dropna()
        meta.update(complete=True, splits=metrics["split"].value_counts().to_dict(),
                    test_accuracy=dict(min=fin.min(), median=fin.median(), max=fin.max(), std=float(fin.std(ddof=0))))
        atomic_write_json(meta, out / "meta.json")
        print(f"splits {meta['splits']}; test accuracy " +
              ", ".join(f"{k}={v:.4g}" for k, v in meta["test_accuracy"].items()), file=sys.stderr)
    return out


def _check(shard, path):
    if not isinstance(shard, dict) or not {"params", "test_accuracy", "arch"} <= set(shard):
        raise CorruptShardError(f"corrupt Wild Park shard {path}: missing fields; delete it to retrain")


def main(argv=None):
    build(parse_args(argv))


if __name__ == "__main__":
    main()
