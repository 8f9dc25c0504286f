"""Zoo-building cost at the generalization tables' `bench` presets, measured on a small sample and extrapolated,
and the vectorised CNN training's speed-up over training one network at a time.

    python benchmarks/bench_zoo_training.py [--json out.json] [--threads 2]

1. Speed-up: the grouped-convolution trainer (dng_tgn.data.cnn_zoo_train.train_zoo, M nets in one computation)
   against a loop that trains the same M ZooCNNs one after another, each with its own torch optimizer, on the same
   number of steps of 32 real (Fashion-)MNIST images. Unit: network-steps per second.
2. Per-network cost of each bench preset: a small build with exactly the preset's settings except the number of
   networks (CNN zoo, ViT zoo) or architectures (Wild Park), timed end to end (training and scoring; no merging),
   then scaled to the preset's size. Wall time depends on what else runs on the machine, so the 1-minute load
   average and the process CPU seconds are printed beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def speedup(m: int, steps: int, dataset: str) -> dict:
    from dng_tgn.data.cnn_zoo_train import sample_configs, sort_by_activation, train_zoo
    from dng_tgn.data.sources import load_images, to_signed
    from dng_tgn.nets.zoo_cnn import ZooCNN

    x, y = load_images(dataset, "train")
    x, y = to_signed(x[:8192]), torch.from_numpy(y[:8192])
    cfgs = sample_configs(m, seed=0)
    cfgs = [cfgs[i] for i in sort_by_activation(cfgs)]
    # checkpoints=[1] with a 1-image test set: the evaluation the builder adds is not part of this comparison
    vec, _ = _timed(lambda: [None for _ in train_zoo(cfgs, x, y, x[:1], y[:1], steps_per_epoch=steps, checkpoints=[1])])

    def loop():
        g = torch.Generator().manual_seed(0)
        for c in cfgs:
            net = ZooCNN(activation=nn.ReLU if c["activation"] == "relu" else nn.Tanh, dropout=c["dropout"])
            opt = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}[c["optimizer"]](
                net.parameters(), lr=c["learning_rate"], weight_decay=0.0)
            for _ in range(steps):
                idx = torch.randint(0, len(x), (32,), generator=g)
                opt.zero_grad()
                F.cross_entropy(net(x[idx]), y[idx]).backward()
                opt.step()

    one, _ = _timed(loop)
    return dict(nets=m, steps=steps, vectorised_net_steps_per_s=m * steps / vec, loop_net_steps_per_s=m * steps / one,
                speedup=one / vec)


def preset_cost(which: str, sample: int, dataset: str) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_zoo_") as tmp:
        if which == "cnn":
            from dng_tgn.data import build_cnn_zoo as b

            args = b.parse_args(["--preset", "bench", "--dataset", dataset, "--out", tmp, "--n-models", str(sample),
                                 "--shard-size", str(sample), "--max-shards", "1"])
            full = b.PRESETS["bench"]["n_models"]
        elif which == "vit":
            from dng_tgn.data import build_vit_zoo as b

            args = b.parse_args(["--preset", "bench", "--dataset", dataset, "--out", tmp, "--n-models", str(sample),
                                 "--shard-size", str(sample), "--max-shards", "1"])
            full = b.PRESETS["bench"]["n_models"]
        else:
            from dng_tgn.data import build_wild_park as b

            args = b.parse_args(["--preset", "bench", "--dataset", dataset, "--out", tmp, "--n-archs", str(sample)])
            full = b.PRESETS["bench"]["n_archs"]
        wall, cpu = _timed(lambda: b.build(args))
    load = os.getloadavg()[0]
    unit = "architectures" if which == "wild_park" else "nets"
    return dict(sample=sample, unit=unit, preset_size=full, wall_s=wall, cpu_s=cpu, load_avg_1min=load,
                extrapolated_wall_h=wall / sample * full / 3600, extrapolated_cpu_h=cpu / sample * full / 3600)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="fashion", choices=["fashion", "mnist"])
    p.add_argument("--nets", type=int, default=32, help="CNNs in the speed-up comparison")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cnn-sample", type=int, default=64)
    p.add_argument("--vit-sample", type=int, default=25)
    p.add_argument("--park-sample", type=int, default=2, help="Wild Park architectures (16 nets each) to time")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: speedup,cnn,vit,wild_park")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    res = dict(threads=torch.get_num_threads(), cpus=os.cpu_count())
    if "speedup" not in skip:
        res["speedup"] = s = speedup(args.nets, args.steps, args.dataset)
        print(f"CNN training: vectorised {s['vectorised_net_steps_per_s']:.1f} net-steps/s, one at a time "
              f"{s['loop_net_steps_per_s']:.1f} net-steps/s: speed-up {s['speedup']:.1f}x ({s['nets']} nets)", flush=True)
    for which, n in (("cnn", args.cnn_sample), ("vit", args.vit_sample), ("wild_park", args.park_sample)):
        if which in skip:
            continue
        res[which] = c = preset_cost(which, n, args.dataset)
        print(f"{which} bench preset: {n} {c['unit']} in {c['wall_s']:.0f}s wall / {c['cpu_s']:.0f}s CPU (load "
              f"{c['load_avg_1min']:.1f}) -> {c['preset_size']} {c['unit']}: {c['extrapolated_wall_h']:.2f} h wall, "
              f"{c['extrapolated_cpu_h']:.2f} h CPU", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
