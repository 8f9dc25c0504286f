"""Build a SIREN INR set in NFN's on-disk layout (python -m dng_tgn.data.build_inrs --help).

Layout written under --out, the same as NFN's public MNIST / Fashion-MNIST / CIFAR tarballs:
    randinit_smaller_{label}s/net{idx}.pth          one SIREN per image, idx 0..N-1
    randinit_smaller_aug{i}_{label}s/net{idx}.pth   extra copies from other inits, training images only
    meta.json   settings, split points and image ids;  psnr.csv   every INR's PSNR
Images are indexed train, then val, then test (NFN splits by image index); train and val images come from the
source's official train split and test images from its official test split.

Work goes in shards of --shard-size INRs fitted together; a shard is done once ``_shards/{name}.json`` exists, so a
rerun of the same command resumes where an interrupted one stopped.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import distributed as dist
from ..device import resolve_device
from ..progress import progress
from .shards import (add_run_arguments, init_ranks, open_output, CorruptShardError, atomic_torch_save,
                     atomic_write_bytes, atomic_write_json, read_json, shard_ranges)
from .siren_fit import coord_grid, fit_sirens, images_to_targets, psnr, to_state_dicts
from .sources import load_images, to_signed

# (n_train, n_val, n_test): NFN's splits for the full preset, a small CPU set by default.
FULL_SIZES = {"mnist": (45000, 5000, 10000), "fashion": (55000, 5000, 10000), "cifar10": (45000, 5000, 10000),
              "cifar100": (45000, 5000, 10000), "digits": (1200, 100, 297)}
PRESETS = {
    "cpu": dict(sizes=(600, 50, 150), aug_copies=1, steps=300, lr=1e-3, shard_size=200),
    # the INR tables' CPU scale (issue #11): >= 5,000 training and >= 1,000 test INRs, one augmented copy each
    "bench": dict(sizes=(5000, 500, 1000), aug_copies=1, steps=300, lr=1e-3, shard_size=200),
    "full": dict(sizes=None, aug_copies=10, steps=5000, lr=5e-5, shard_size=2048),
}
SETTINGS = ("dataset", "n_train", "n_val", "n_test", "aug_copies", "steps", "lr", "seed", "prefix")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m dng_tgn.data.build_inrs", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion", "digits", "cifar10", "cifar100"])
    p.add_argument("--source-root", default=None, help="image folder (CIFAR python-pickle dir; optional otherwise)")
    p.add_argument("--out", required=True, help="output folder (created; rerun the same command to resume)")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS),
                   help="cpu: 600/50/150 images, 1 extra copy, 300 steps at lr 1e-3 (default); "
                        "bench: 5000/500/1000 images, 1 extra copy (the INR tables' CPU scale); "
                        "full: NFN's sizes (e.g. 45k/5k/10k MNIST), 10 copies, 5000 steps at lr 5e-5 (GPU)")
    p.add_argument("--n-train", type=int, help="training images (overrides the preset)")
    p.add_argument("--n-val", type=int, help="validation images")
    p.add_argument("--n-test", type=int, help="test images")
    p.add_argument("--aug-copies", type=int, help="extra training SIRENs per training image from other inits")
    p.add_argument("--steps", type=int, help="Adam steps per SIREN")
    p.add_argument("--lr", type=float, help="Adam learning rate")
    p.add_argument("--shard-size", type=int, help="SIRENs fitted together and saved as one resumable shard")
    p.add_argument("--prefix", default="randinit_smaller", help="folder prefix (NFN's is randinit_smaller)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="torch.compile the SIREN loss (about 3x faster on CPU after ~15 s compiling; default on)")
    add_run_arguments(p)
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    sizes = preset["sizes"] or FULL_SIZES[args.dataset]
    for name, default in zip(("n_train", "n_val", "n_test"), sizes):
        if getattr(args, name) is None:
            setattr(args, name, default)
    for name in ("aug_copies", "steps", "lr", "shard_size"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    return args


def select_images(args):
    """Images in NFN index order: train, val (official train split), test (official test split)."""
    x_tr, y_tr = load_images(args.dataset, "train", args.source_root)
    x_te, y_te = load_images(args.dataset, "test", args.source_root)
    n_trval = args.n_train + args.n_val
    if n_trval > len(x_tr) or args.n_test > len(x_te):
        raise ValueError(f"{args.dataset} has {len(x_tr)} train / {len(x_te)} test images; asked for "
                         f"{n_trval} train+val and {args.n_test} test")
    images = np.concatenate([x_tr[:n_trval], x_te[:args.n_test]])
    labels = np.concatenate([y_tr[:n_trval], y_te[:args.n_test]])
    image_ids = list(range(n_trval)) + [len(x_tr) + i for i in range(args.n_test)]
    return images, labels, image_ids


def plan_shards(args):
    """(name, copy, start, stop): copy 0 covers every image, copy i >= 1 (folder aug{i-1}) the training images."""
    n = args.n_train + args.n_val + args.n_test
    plan = [(f"base_{k:05d}", 0, s, e) for k, (s, e) in enumerate(shard_ranges(n, args.shard_size))]
    for c in range(1, args.aug_copies + 1):
        ranges = shard_ranges(args.n_train, args.shard_size)
        plan += [(f"aug{c - 1}_{k:05d}", c, s, e) for k, (s, e) in enumerate(ranges)]
    return plan


def folder(prefix: str, copy: int, label: int) -> str:
    return f"{prefix}_{label}s" if copy == 0 else f"{prefix}_aug{copy - 1}_{label}s"


def check_done(out: Path, name: str) -> dict | None:
    """The shard's record if it is complete; None if never finished; an error if it is damaged."""
    rec_path = out / "_shards" / f"{name}.json"
    if not rec_path.exists():
        return None
    rec = read_json(rec_path)
    if not isinstance(rec, dict) or not {"files", "psnr", "idx", "labels"} <= set(rec):
        raise CorruptShardError(f"corrupt shard record {rec_path}: missing fields; delete it to rebuild that shard")
    missing = [f for f in rec["files"] if not (out / f).is_file()]
    if missing:
        raise CorruptShardError(f"shard {rec_path} lists {len(missing)} missing files (first: {missing[0]}); "
                                f"delete the record to rebuild that shard")
    return rec


def shard_generator(seed: int, copy: int, start: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, copy, start]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def build(args) -> Path:
    settings = {k: getattr(args, k) for k in SETTINGS}
    out = open_output(args, settings)
    meta_path = out / "meta.json"
    images, labels, image_ids = select_images(args)
    x = to_signed(images)
    meta = dict(settings, split_points=[args.n_train, args.n_train + args.n_val], image_ids=image_ids,
                image_shape=list(x.shape[1:]), layout="nfn", w0=30.0, hidden=32, complete=False)
    if dist.is_main():
        atomic_write_json(meta, meta_path)

    device = resolve_device(args.device)
    targets = images_to_targets(x)
    coords = coord_grid(x.shape[2], x.shape[3], "ij", device)
    plan = plan_shards(args)
    records = {name: check_done(out, name) for name, *_ in plan}
    todo = dist.my_share([p for p in plan if records[p[0]] is None][: args.max_shards])  # this rank's shards
    dist.barrier()  # every rank has listed the same unfinished shards before any rank writes one
    total = sum(e - s for _, _, s, e in todo) * args.steps
    t0 = time.time()
    with progress(total=total, unit="step", unit_scale=True, desc="SIREN-steps") as bar:
        for name, copy, s, e in todo:
            params, mse, _ = fit_sirens(targets[s:e].to(device), coords, args.steps, args.lr,
                                        shard_generator(args.seed, copy, s), progress=bar, compile=args.compile)
            files = []
            for i, sd in zip(range(s, e), to_state_dicts(params)):
                rel = f"{folder(args.prefix, copy, int(labels[i]))}/net{i}.pth"
                atomic_torch_save(sd, out / rel)
                files.append(rel)
            rec = dict(files=files, idx=list(range(s, e)), labels=[int(v) for v in labels[s:e]],
                       psnr=[round(float(v), 4) for v in psnr(mse).cpu()], copy=copy)
            atomic_write_json(rec, out / "_shards" / f"{name}.json")
            records[name] = rec
            bar.set_postfix(psnr=f"{np.mean(rec['psnr']):.1f}dB")
    elapsed = time.time() - t0
    dist.barrier()  # every rank's shards are on disk
    if not dist.is_main():
        print(f"rank {dist.rank()}: fitted {sum(e - s for _, _, s, e in todo)} SIRENs in {elapsed:.1f}s",
              file=sys.stderr)
        return out
    if dist.world_size() > 1:  # the other ranks' shards
        records = {name: check_done(out, name) for name, *_ in plan}
    if all(r is not None for r in records.values()):
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["file", "idx", "label", "copy", "psnr"])
        for name, *_ in plan:
            r = records[name]
            for f, i, lab, p in zip(r["files"], r["idx"], r["labels"], r["psnr"]):
                w.writerow([f, i, lab, r.get("copy", 0), p])
        atomic_write_bytes(out / "psnr.csv", buf.getvalue().encode())
        meta["complete"] = True
        atomic_write_json(meta, meta_path)
    n_new = sum(e - s for _, _, s, e in todo)
    print(f"fitted {n_new} SIRENs in {elapsed:.1f}s; {sum(r is not None for r in records.values())}/{len(plan)} "
          f"shards done in {out}", file=sys.stderr)
    return out


def main(argv=None):
    args = parse_args(argv)
    init_ranks(args)
    build(args)


if __name__ == "__main__":
    main()
