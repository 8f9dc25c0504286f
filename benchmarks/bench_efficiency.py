"""Paper Table 5 (efficiency, §9.4): time and GFLOPs per INR, DNG-Encoder vs NG-GNN at matched parameter counts.

    python benchmarks/bench_efficiency.py [--repeats 9] [--batch 32] [--threads 1] [--out results/efficiency]

Both models encode MNIST-INR-shaped SIRENs (2-32-32-1, NFN layout) on the CPU, in their normal configuration:

* DNG-Encoder: F.1.2 (memory/message dim 512, Fourier size 128, scale 3), 3 message functions (a SIREN's 3
  timestamps, so no unused parameter inflates its count), default execution path.
* NG-GNN (dng_tgn.baselines.NGGNN): 4 PNA layers with edge updates, Fourier size 128, Kofinas et al.'s
  forward-only messages (the class defaults), default execution path; its width is the one whose parameter
  count is closest to the DNG-Encoder's.

Measured, per INR: inference time of a single INR (the paper's measure), inference time of a batch of
``--batch`` divided by the batch size, and forward GFLOPs (``torch.utils.flop_counter``: matrix products,
2 FLOPs per multiply-add, counted on the torch path; the DNG-Encoder is counted on its per-edge route, which
does the same multiply-adds as its sparse route). Timings alternate between the two models, repeat after
repeat, and are medians, so the load of a shared machine hits both alike; ratios are DNG / NG-GNN within this
one run. Results go to ``<out>.md`` and ``<out>.json`` with the date, the machine and the command.

Paper Table 5 (one INR, inference, GPU): INR2JLS 0.0047 s and 1.31 GFLOPs, NG-GNN 0.0124 s and 2.13 GFLOPs
(time ratio 0.38).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import dng_tgn
import dng_tgn.nn.memory as memory_module
from dng_tgn.baselines import NGGNN
from dng_tgn.nets import NFNSiren
from dng_tgn.nn import DNGEncoder, ExecutionPath

PAPER = {"DNG-Encoder (INR2JLS)": dict(time_s=0.0047, gflops=1.31), "NG-GNN": dict(time_s=0.0124, gflops=2.13)}


def count_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def build_ng_gnn(width: int, fourier_size: int, path=None) -> NGGNN:
    return NGGNN(hidden_dim=width, num_layers=4, out_dim=width, fourier_size=fourier_size, path=path)


def matched_width(target: int, fourier_size: int) -> int:
    lo, hi = 4, 2048  # parameter count grows with the width: bisect for the last width not above the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count_params(build_ng_gnn(mid, fourier_size)) <= target else (lo, mid - 1)
    return min((lo, lo + 1), key=lambda d: abs(count_params(build_ng_gnn(d, fourier_size)) - target))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-dim", type=int, default=512)
    ap.add_argument("--fourier-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("results/efficiency"), help="writes <out>.md and <out>.json")
    ap.add_argument("--note", default="", help="a line for the report (e.g. 'shared machine')")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    single = dng_tgn.batch_state_dicts([NFNSiren().state_dict()])
    batch = dng_tgn.batch_state_dicts([NFNSiren().state_dict() for _ in range(args.batch)])

    dng = DNGEncoder(args.memory_dim, fourier_size=args.fourier_size, max_timestamps=3, device="cpu").eval()
    width = matched_width(count_params(dng), args.fourier_size)
    ng = build_ng_gnn(width, args.fourier_size).eval()
    models = {"DNG-Encoder (INR2JLS)": (dng, lambda m, b: m(b).embedding),
              f"NG-GNN": (ng, lambda m, b: m(b).graph)}

    def runner(name, b):
        model, call = models[name]

        def run():
            with torch.no_grad():
                call(model, b)
        return run

    names = list(models)
    jobs = [(n, kind, b) for kind, b in (("single", single), ("batch", batch)) for n in names]
    for n, _, b in jobs:
        runner(n, b)()  # warm-up
    times = {(n, kind): [] for n, kind, _ in jobs}
    for r in range(args.repeats):
        for n, kind, b in (jobs if r % 2 == 0 else jobs[::-1]):
            fn = runner(n, b)
            t0 = time.perf_counter()
            fn()
            times[(n, kind)].append(time.perf_counter() - t0)

    def gflops_per_inr(name):
        model, call = models[name]
        sparse = memory_module.SPARSE_BASIS_MESSAGE
        memory_module.SPARSE_BASIS_MESSAGE = False  # count the same multiply-adds as dense products
        saved = model.path
        model.path = ExecutionPath.TORCH
        try:
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                call(model, batch)
        finally:
            model.path, memory_module.SPARSE_BASIS_MESSAGE = saved, sparse
        return counter.get_total_flops() / args.batch / 1e9

    rows = {}
    for n in names:
        model = models[n][0]
        t1 = statistics.median(times[(n, "single")])
        tb = statistics.median(times[(n, "batch")])
        path = model.execution_path().value if hasattr(model, "execution_path") else \
            __import__("dng_tgn.nn.paths", fromlist=["resolve_path"]).resolve_path(model.path, "cpu").value
        rows[n] = dict(params=count_params(model), path=path, time_single_s=t1, time_per_inr_batched_s=tb / args.batch,
                       gflops_fwd_per_inr=gflops_per_inr(n))
    dng_row, ng_row = rows[names[0]], rows[names[1]]
    ratios = dict(time_single=dng_row["time_single_s"] / ng_row["time_single_s"],
                  time_per_inr_batched=dng_row["time_per_inr_batched_s"] / ng_row["time_per_inr_batched_s"],
                  gflops=dng_row["gflops_fwd_per_inr"] / ng_row["gflops_fwd_per_inr"])
    command = shlex.join(["python", str(Path(sys.argv[0]))] + (argv if argv is not None else sys.argv[1:]))
    res = dict(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), machine=machine(), torch=torch.__version__,
               threads=args.threads, command=command, note=args.note, repeats=args.repeats, batch=args.batch,
               ng_gnn_width=width, rows=rows, ratios_dng_over_ng_gnn=ratios, paper=PAPER,
               paper_ratio=dict(time=0.0047 / 0.0124, gflops=1.31 / 2.13))

    lines = [
        "# Table 5: efficiency per INR, DNG-Encoder vs NG-GNN (matched parameter counts)", "",
        f"- date: {res['date']}", f"- machine: {res['machine']}; torch {torch.__version__}, {args.threads} thread(s)",
        f"- command: `{command}`",
        f"- workload: SIRENs 2-32-32-1; inference; medians of {args.repeats} interleaved repeats; single INR and a batch of {args.batch}",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    lines += ["", "| model | params | path | time, 1 INR (s) | time per INR, batch of %d (s) | fwd GFLOPs per INR |" % args.batch,
              "|---|---:|---|---:|---:|---:|"]
    for n, r in rows.items():
        lines.append(f"| {n} | {r['params']:,} | {r['path']} | {r['time_single_s']:.4f} | {r['time_per_inr_batched_s']:.4f} | {r['gflops_fwd_per_inr']:.3f} |")
    lines.append(f"| **DNG / NG-GNN** | | | **{ratios['time_single']:.3f}** | **{ratios['time_per_inr_batched']:.3f}** | **{ratios['gflops']:.3f}** |")
    lines += ["", "Paper (GPU, 1 INR): DNG 0.0047 s, 1.31 GFLOPs; NG-GNN 0.0124 s, 2.13 GFLOPs; ratios 0.38 (time), 0.62 (GFLOPs).",
              f"NG-GNN here: width {width}, 4 PNA layers with edge updates, Fourier size {args.fourier_size}, forward-only messages (class defaults)."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
