"""Training-step time of the INR table's pixel-space reference (F.1.2's classifier on 28×28 images, 64 channels).

    python benchmarks/bench_pixel_cnn.py [--steps 10] [--threads 1,2] [--rounds 3]

Compares, in interleaved rounds on the same batch (so a machine whose load changes affects all alike), a step of
the classifier with ``torch.nn.Dropout`` after its convs (how it was built before) against
:class:`dng_tgn.nn.inr2jls.MaskDropout` (same distribution, vectorised draws), each in NCHW and channels-last
layout. Reports the median step time (forward, backward, gradient clipping, AdamW) per variant and thread count.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from dng_tgn.nn.inr2jls import FeatureMapClassifier, MaskDropout


def make(torch_dropout: bool, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = FeatureMapClassifier(1, (28, 28), 10, conv_channels=64, hidden_dim=64, conv_dropout=0.5, mlp_dropout=0.5)
    if torch_dropout:
        for i, m in enumerate(model.convs):
            if isinstance(m, MaskDropout):
                model.convs[i] = nn.Dropout(m.p)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step_times(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    ce = nn.CrossEntropyLoss()
    model.train()
    out = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = ce(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i:  # the first step allocates
            out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    variants = {"torch Dropout, NCHW": (True, False), "MaskDropout, NCHW": (False, False),
                "MaskDropout, channels_last": (False, True)}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        times = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, (td, cl) in variants.items():
                xx = x.contiguous(memory_format=torch.channels_last) if cl else x
                times[name] += step_times(make(td, cl), xx, y, args.steps)
        for name, ts in times.items():
            print(f"threads={threads}  {name:28s} median {1000 * statistics.median(ts):7.1f} ms/step "
                  f"(n={len(ts)}, min {1000 * min(ts):.1f})", flush=True)


if __name__ == "__main__":
    main()
