"""Dataset-builder throughput, measured in one run (python benchmarks/bench_datasets.py --help).

1. SIREN fitting in SIREN-steps/s (one Adam step of one 2-32-32-1 SIREN on a 28x28 image): the batched fitter of
   dng_tgn.data.siren_fit, eager and with torch.compile, against a naive loop with one NFNSiren module and one Adam
   per SIREN. Target: >= 20x. On CPU the naive loop is compute-bound at 28x28 (each step is ~5 MFLOP), so the
   ratio is far smaller than on a GPU, where the naive loop is bound by kernel launches; --side 8 shows the
   overhead-bound regime.
2. CNN zoo training in network-steps/s (one optimizer step of one ZooCNN on a batch of 32 28x28 images): the
   grouped-convolution trainer of dng_tgn.data.cnn_zoo_train against a loop over ZooCNN modules.
Inputs are random images in [-1, 1]: throughput does not depend on their content.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from dng_tgn.device import resolve_device
from dng_tgn.data.cnn_zoo_train import sample_configs, sort_by_activation, train_zoo
from dng_tgn.data.siren_fit import coord_grid, fit_sirens
from dng_tgn.nets.siren import NFNSiren
from dng_tgn.nets.zoo_cnn import ZooCNN


def bench_siren(n: int, steps: int, naive_sirens: int, device, side: int = 28) -> dict:
    g = torch.Generator().manual_seed(0)
    pixels = side * side
    targets = (torch.rand(n, pixels, 1, generator=g) * 2 - 1).to(device)
    coords = coord_grid(side, side, device=device)
    fit_sirens(targets[:8], coords, 3, generator=g)  # warm-up
    t = time.perf_counter()
    fit_sirens(targets, coords, steps, lr=1e-4, generator=g)
    batched = n * steps / (time.perf_counter() - t)
    t = time.perf_counter()
    fit_sirens(targets, coords, 2, generator=g, compile=True)  # compilation for this shape, timed separately
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    fit_sirens(targets, coords, steps, lr=1e-4, generator=g, compile=True)
    compiled = n * steps / (time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(naive_sirens):
        model = NFNSiren().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        for _ in range(steps):
            opt.zero_grad()
            F.mse_loss(model(coords), targets[i]).backward()
            opt.step()
    naive = naive_sirens * steps / (time.perf_counter() - t)
    return dict(batched_siren_steps_per_s=batched, compiled_siren_steps_per_s=compiled, compile_seconds=compile_s,
                naive_siren_steps_per_s=naive, speedup=batched / naive, speedup_compiled=compiled / naive,
                n_sirens=n, steps=steps, naive_sirens=naive_sirens, pixels=pixels)


def bench_cnn(m: int, steps: int, naive_models: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4096, 1, 28, 28, generator=g) * 2 - 1
    y = torch.randint(0, 10, (4096,), generator=g)
    cfgs = sample_configs(m, seed=0)
    cfgs = [cfgs[i] for i in sort_by_activation(cfgs)]
    t = time.perf_counter()
    for _ in train_zoo(cfgs, x, y, x[:32], y[:32], steps_per_epoch=steps, checkpoints=[1], device=device):
        pass
    batched = m * steps / (time.perf_counter() - t)
    t = time.perf_counter()
    for c in cfgs[:naive_models]:
        net = ZooCNN(activation=nn.ReLU if c["activation"] == "relu" else nn.Tanh, dropout=c["dropout"]).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=c["learning_rate"])
        for _ in range(steps):
            idx = torch.randint(0, len(x), (32,), generator=g)
            opt.zero_grad()
            F.cross_entropy(net(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
    naive = naive_models * steps / (time.perf_counter() - t)
    return dict(batched_net_steps_per_s=batched, naive_net_steps_per_s=naive, speedup=batched / naive,
                images_per_s=batched * 32, n_models=m, steps=steps, naive_models=naive_models)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sirens", type=int, default=256, help="SIRENs fitted together in the batched run")
    p.add_argument("--siren-steps", type=int, default=100)
    p.add_argument("--naive-sirens", type=int, default=8, help="SIRENs fitted one by one in the naive loop")
    p.add_argument("--side", type=int, default=28, help="image side: 28 for (Fashion-)MNIST, 8 for sklearn digits")
    p.add_argument("--cnns", type=int, default=64, help="CNNs trained together")
    p.add_argument("--cnn-steps", type=int, default=30)
    p.add_argument("--naive-cnns", type=int, default=4)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default=None, help="default cuda when available, else cpu")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    res = dict(device=str(device), threads=torch.get_num_threads(),
               siren=bench_siren(args.sirens, args.siren_steps, args.naive_sirens, device, args.side),
               cnn=bench_cnn(args.cnns, args.cnn_steps, args.naive_cnns, device))
    s, c = res["siren"], res["cnn"]
    print(f"device={res['device']} threads={res['threads']}")
    print(f"SIREN fitting ({args.side}x{args.side}): batched {s['batched_siren_steps_per_s']:.0f} SIREN-steps/s "
          f"(compiled {s['compiled_siren_steps_per_s']:.0f}, after {s['compile_seconds']:.0f}s compiling), naive loop "
          f"{s['naive_siren_steps_per_s']:.0f} SIREN-steps/s; speed-up {s['speedup']:.1f}x "
          f"(compiled {s['speedup_compiled']:.1f}x)")
    print(f"CNN zoo: vectorised {c['batched_net_steps_per_s']:.1f} net-steps/s ({c['images_per_s']:.0f} images/s), "
          f"naive loop {c['naive_net_steps_per_s']:.1f} net-steps/s, speed-up {c['speedup']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
