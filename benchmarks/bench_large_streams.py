"""Large streams: convert a ResNet-18-sized network and encode its stream with the DNG-Encoder on CPU.

    python benchmarks/bench_large_streams.py [--input 64] [--hidden 128] [--skip-encode] [--threads N]

Targets (issue #15): a ResNet-18-sized stream (about 1.4 M edges at 64x64 input) converts in <= 3 s, and the
DNG-Encoder (memory/hidden dim 128) encodes it once (inference, CPU) in <= 60 s within 8 GB peak memory.
The ResNet-18 is written here (BatchNorm already folded: convs with biases); it is converted with
``dng_tgn.to_event_stream``, checked with ``dng_tgn.replay`` against the model, then encoded. Peak memory is
the process's peak resident set size (``resource.getrusage``), so run each measurement in a fresh process.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import torch
from torch import nn

import dng_tgn


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1)
        self.down = nn.Conv2d(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        y = self.conv2(torch.relu(self.conv1(x)))
        y = y + (self.down(x) if self.down is not None else x)
        return torch.relu(y)


class ResNet18(nn.Module):
    """ResNet-18 (He et al.), BatchNorm folded into the convolutions."""

    def __init__(self, num_classes=1000, width=64):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 7, 2, 3)
        self.pool = nn.MaxPool2d(3, 2, 1)
        blocks, c = [], width
        for i, w in enumerate((width, 2 * width, 4 * width, 8 * width)):
            blocks += [BasicBlock(c, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.blocks(self.pool(torch.relu(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--fourier-size", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=32, help="per-slot message width of the multi-head message (Eq. 5)")
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ResNet18().eval()
    shape = (3, args.input, args.input)
    t0 = time.perf_counter()
    stream = dng_tgn.to_event_stream(model, input_shape=shape)
    convert_s = time.perf_counter() - t0
    x = torch.randn(2, *shape)
    with torch.no_grad():
        err = float((dng_tgn.replay(stream, x) - model(x)).abs().max())
    out = dict(arch="ResNet-18 (BN folded)", input=list(shape), nodes=stream.num_nodes, edges=stream.num_edges,
               slots=stream.num_slots, timestamps=stream.num_timestamps, convert_s=round(convert_s, 3),
               replay_max_abs_err=err, convert_target_s=3.0)
    if not args.skip_encode:
        from dng_tgn.nn import DNGEncoder, ExecutionPath

        enc = DNGEncoder(args.hidden, message_heads=stream.num_slots, head_dim=args.head_dim, fourier_size=args.fourier_size,
                         max_timestamps=stream.num_timestamps, max_inputs=max(256, stream.node_groups[0].size),
                         path=ExecutionPath.TORCH, device="cpu").eval()
        t0 = time.perf_counter()
        with torch.inference_mode():
            emb = enc([stream]).embedding
        out.update(head_dim=args.head_dim, encode_s=round(time.perf_counter() - t0, 2), embedding_finite=bool(torch.isfinite(emb).all()),
                   encode_target_s=60.0)
    out.update(peak_rss_gb=round(peak_rss_gb(), 2), memory_target_gb=8.0)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
