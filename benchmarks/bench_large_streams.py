"""Large streams: convert a ResNet-18-sized network and encode its stream with the DNG-Encoder on CPU.

    python benchmarks/bench_large_streams.py [--input 64] [--hidden 128] [--head-dims 32 16] [--threads N]
        [--skip-encode] [--profile] [--compare-tree DIR] [--out benchmarks/large_streams]

Targets (issue #15): a ResNet-18-sized stream (about 1.4 M edges at 64x64 input) converts in <= 3 s, and the
DNG-Encoder (memory/hidden dim 128, head_dim 32) encodes it once (inference, CPU) in <= 60 s within 8 GB peak
memory. The ResNet-18 is written here (BatchNorm already folded: convs with biases); it is converted with
``dng_tgn.to_event_stream``, checked with ``dng_tgn.replay`` against the model, then encoded.

Each head_dim is encoded in a fresh worker process (this script with ``--worker``), so that its peak resident set
size (``resource.getrusage``: conversion, batch and encode together; torch's allocations are invisible to
tracemalloc, so RSS is the measure) is its own; the worker also reports the RSS before the encode, the encode's
wall time and its process CPU time (all threads: on a shared machine the wall time depends on the load, which is
recorded as the 1-minute load average before and after). ``--compare-tree DIR`` encodes the same stream with the
``dng_tgn`` of another checkout (e.g. ``git worktree add --detach /tmp/enc_head HEAD``) on the same encoder
weights, for the first of ``--head-dims``, and reports its time, memory and the largest difference of the embeddings. ``--profile`` prints the
top operators (torch.profiler) of each encode. Results go to ``--out``.json / .md with date, machine, command.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


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


def build_stream(input_size: int):
    import dng_tgn

    torch.manual_seed(0)
    model = ResNet18().eval()
    shape = (3, input_size, input_size)
    t0 = time.perf_counter()
    stream = dng_tgn.to_event_stream(model, input_shape=shape)
    return model, stream, shape, time.perf_counter() - t0


def worker(args) -> None:
    """One encode in this process: prints one JSON line."""
    import dng_tgn
    from dng_tgn.nn import DNGEncoder, ExecutionPath

    if args.threads:
        torch.set_num_threads(args.threads)
    _, stream, _, _ = build_stream(args.input)
    torch.manual_seed(1)
    enc = DNGEncoder(args.hidden, message_heads=stream.num_slots, head_dim=args.head_dim, fourier_size=args.fourier_size,
                     max_timestamps=stream.num_timestamps, max_inputs=max(256, stream.node_groups[0].size),
                     path=ExecutionPath.TORCH, device="cpu").eval()
    if args.load_weights:
        missing, unexpected = enc.load_state_dict(torch.load(args.load_weights, weights_only=True), strict=False)
        if missing:
            raise SystemExit(f"{args.load_weights}: the encoder of {dng_tgn.__file__} lacks weights for {missing}")
    if args.save_weights:
        torch.save(enc.state_dict(), args.save_weights)
    t0 = time.perf_counter()
    batch = dng_tgn.batch_streams([stream])
    batch_s = time.perf_counter() - t0
    rss_before, load_before = peak_rss_gb(), os.getloadavg()[0]
    prof = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        prof = profile(activities=[ProfilerActivity.CPU])
        prof.__enter__()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        emb = enc(batch).embedding
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), file=sys.stderr)
    if args.save_embedding:
        torch.save(emb, args.save_embedding)
    print(json.dumps(dict(dng_tgn=dng_tgn.__file__, head_dim=args.head_dim, batch_s=round(batch_s, 2), encode_s=round(wall, 2), encode_cpu_s=round(cpu, 2),
                          threads=torch.get_num_threads(), rss_before_encode_gb=round(rss_before, 2),
                          peak_rss_gb=round(peak_rss_gb(), 2), load_1min_before=round(load_before, 2),
                          load_1min_after=round(os.getloadavg()[0], 2), embedding_finite=bool(torch.isfinite(emb).all()),
                          profiled=bool(args.profile))))


def run_worker(args, head_dim: int, tmp: Path, tree: Path | None = None) -> dict:
    tag = "compare" if tree else "new"
    cmd = [sys.executable, __file__, "--worker", "--input", str(args.input), "--hidden", str(args.hidden),
           "--fourier-size", str(args.fourier_size), "--head-dim", str(head_dim),
           "--save-embedding", str(tmp / f"{tag}_{head_dim}.pt")]
    weights = tmp / f"weights_{head_dim}.pt"
    cmd += ["--load-weights", str(weights)] if tree else ["--save-weights", str(weights)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.profile:
        cmd.append("--profile")
    env = dict(os.environ, PYTHONPATH=str((tree or REPO).resolve()))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"worker for head_dim {head_dim} ({tree or REPO}) failed with exit status {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = (tree or REPO).resolve() / "dng_tgn" / "__init__.py"
    if Path(out["dng_tgn"]).resolve() != expected:
        raise SystemExit(f"worker imported {out['dng_tgn']}, not {expected}")
    return out


def write_markdown(path: Path, out: dict) -> None:
    lines = [f"# Large streams: {out['arch']}", "",
             f"{out['date']}, {out['machine']}; command: `{out['command']}`", "",
             f"Stream: {out['nodes']:,} nodes, {out['edges']:,} edges, {out['slots']} slots, {out['timestamps']} timestamps; "
             f"conversion {out['convert_s']} s (target {out['convert_target_s']} s), replay max abs error "
             f"{out['replay_max_abs_err']:.2e}.", ""]
    if out.get("encode"):
        lines += [f"Encode (inference, CPU, hidden {out['hidden']}, fourier_size {out['fourier_size']}; targets "
                  f"{out['encode_target_s']} s and {out['memory_target_gb']} GB):", "",
                  "| code | head_dim | batch s | encode wall s | encode CPU s | peak RSS GB | RSS before encode GB | load before/after | max abs diff vs new |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in out["encode"]:
            lines.append(f"| {r['code']} | {r['head_dim']} | {r['batch_s']} | {r['encode_s']} | {r['encode_cpu_s']} | {r['peak_rss_gb']} | "
                         f"{r['rss_before_encode_gb']} | {r['load_1min_before']} / {r['load_1min_after']} | "
                         f"{r.get('max_abs_diff_vs_new', '')} |")
        lines += ["", "batch s: `batch_streams` of the one stream; encode: `DNGEncoder` on that batch under "
                  "`torch.inference_mode`. CPU s is the encode's process CPU time (all threads); wall s depends on the "
                  "machine's load (1-minute load average given beside it)."]
    path.write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--fourier-size", type=int, default=32)
    ap.add_argument("--head-dims", type=int, nargs="+", default=[32, 16],
                    help="per-slot message widths of the multi-head message (Eq. 5), one worker each")
    ap.add_argument("--skip-encode", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="print each encode's top operators (torch.profiler)")
    ap.add_argument("--compare-tree", type=Path, default=None, help="another checkout's dng_tgn to encode the same stream")
    ap.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md (default: print only)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--head-dim", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--save-embedding", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--save-weights", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--load-weights", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    import dng_tgn

    model, stream, shape, convert_s = build_stream(args.input)
    x = torch.randn(2, *shape)
    with torch.no_grad():
        err = float((dng_tgn.replay(stream, x) - model(x)).abs().max())
    out = dict(arch="ResNet-18 (BN folded)", input=list(shape), nodes=stream.num_nodes, edges=stream.num_edges,
               slots=stream.num_slots, timestamps=stream.num_timestamps, convert_s=round(convert_s, 3),
               replay_max_abs_err=err, convert_target_s=3.0,
               date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} threads",
               command="python " + " ".join([os.path.relpath(__file__, REPO)] + sys.argv[1:]))
    if not args.skip_encode:
        out.update(hidden=args.hidden, fourier_size=args.fourier_size, encode_target_s=60.0, memory_target_gb=8.0, encode=[])
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for hd in args.head_dims:
                new = run_worker(args, hd, tmp)
                out["encode"].append(dict(code="this tree", **new))
                if args.compare_tree and hd == args.head_dims[0]:  # the old code is slow: the first head_dim only
                    old = run_worker(args, hd, tmp, args.compare_tree)
                    a, b = torch.load(tmp / f"new_{hd}.pt"), torch.load(tmp / f"compare_{hd}.pt")
                    old["max_abs_diff_vs_new"] = float((a - b).abs().max())
                    out["encode"].append(dict(code=str(args.compare_tree), **old))
    print(json.dumps(out, indent=1))
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
        write_markdown(args.out.with_suffix(".md"), out)


if __name__ == "__main__":
    main()
