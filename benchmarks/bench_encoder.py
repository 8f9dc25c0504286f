"""How fast is the DNG-Encoder? Forward+backward time per batch of SIRENs, and FLOPs per network.

    python benchmarks/bench_encoder.py [--batch 64] [--repeats 5] [--memory-dim 512] [--fourier-size 128]

Three comparisons, all on batches of MNIST-INR-shaped SIRENs (2-32-32-1, F.1.1) at the paper's encoder
settings (F.1.2: memory and message dims 512, Fourier size 128, scale 3):

1. the DGL execution path vs the pure-torch path of the same DNGEncoder (same weights, same numbers);
2. DNG-Encoder vs NG-GNN (dng_tgn.baselines.NGGNN, 4 PNA layers) with its width chosen so the two have
   matched parameter counts (the DNG-Encoder is built with as many message functions as a SIREN has
   timestamps, 3, so no unused parameter inflates its count);
3. FLOPs per network, forward and forward+backward, counted with ``torch.utils.flop_counter`` on the
   torch path (DGL's C kernels are invisible to the counter). The counter counts matrix products
   (2 FLOPs per multiply-add) and ignores elementwise work, gathers and scatters.

Paper Table 5 (one INR, inference, GPU): INR2JLS 0.0047 s and 1.31 GFLOPs, NG-GNN 0.0124 s and 2.13 GFLOPs.
benchmarks/bench_efficiency.py writes that table (results/efficiency.md); benchmarks/bench_encoder_speed.py
compares the encoder with an older commit in one run.
Timings are medians over ``--repeats`` runs after a warm-up; ``--threads`` pins torch's CPU threads.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import dng_tgn
import dng_tgn.nn.memory as memory_module
from dng_tgn._dgl import dgl_supports
from dng_tgn.nets import NFNSiren
from dng_tgn.nn import DNGEncoder, ExecutionPath

PAPER_TABLE5 = {"INR2JLS (DNG)": (0.0047, 1.31), "NG-GNN": (0.0124, 2.13)}


def timed(fn, repeats: int) -> tuple[float, float]:
    return timed_interleaved([fn], repeats)[0]


def timed_interleaved(fns, repeats: int) -> list[tuple[float, float]]:
    """(median, min) seconds of each fn; runs alternate so that a shared machine's load hits all alike."""
    for fn in fns:
        fn()  # warm-up: allocator, DGL's first-call setup
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [(statistics.median(ts), min(ts)) for ts in times]


def count_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def flops(fn) -> int:
    # The counter would count the encoder's sparse Eq. 4 product as a dense one; its per-edge route does the
    # same multiply-adds as dense products, so count on that route.
    sparse, memory_module.SPARSE_BASIS_MESSAGE = memory_module.SPARSE_BASIS_MESSAGE, False
    try:
        with FlopCounterMode(display=False) as counter:
            fn()
    finally:
        memory_module.SPARSE_BASIS_MESSAGE = sparse
    return counter.get_total_flops()


def make_batch(n: int, seed: int = 0):
    torch.manual_seed(seed)
    return dng_tgn.batch_streams([dng_tgn.to_event_stream(NFNSiren()) for _ in range(n)])


def dng_runner(enc: DNGEncoder, batch, backward: bool, path: ExecutionPath):
    def run():
        enc.path = path
        enc.zero_grad(set_to_none=True)
        if backward:
            enc(batch).embedding.sum().backward()
        else:
            with torch.no_grad():
                enc(batch)
    return run


def ng_runner(model, batch, backward: bool):
    def run():
        model.zero_grad(set_to_none=True)
        if backward:
            model(batch).graph.sum().backward()
        else:
            with torch.no_grad():
                model(batch)
    return run


def matched_ng_gnn(target: int, fourier_size: int, path: ExecutionPath | None):
    """The NG-GNN width whose parameter count is closest to ``target``."""
    from dng_tgn.baselines import NGGNN

    def build(d):
        return NGGNN(hidden_dim=d, num_layers=4, out_dim=d, fourier_size=fourier_size, path=path)

    lo, hi = 4, 2048  # the count grows with d: bisect for the last width not above the target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count_params(build(mid)) <= target else (lo, mid - 1)
    best = min((lo, lo + 1), key=lambda d: abs(count_params(build(d)) - target))
    return build(best), best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="SIRENs per batch (F.1.3 trains with 64)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory-dim", type=int, default=512)
    ap.add_argument("--fourier-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip-ng-gnn", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")  # PyPI's DGL is CPU-only; the DGL/torch comparison needs both paths
    batch = make_batch(args.batch)
    single = make_batch(1, seed=1)
    b = args.batch
    enc = DNGEncoder(args.memory_dim, fourier_size=args.fourier_size, max_timestamps=3, device=device)
    n_params = count_params(enc)
    results: dict = dict(torch=torch.__version__, threads=torch.get_num_threads(), batch=b, repeats=args.repeats,
                         memory_dim=args.memory_dim, fourier_size=args.fourier_size, dng_params=n_params, rows=[])

    def record(name, timing_b, timing_1, flop_fn_fwd, flop_fn_fb, params):
        (med, mn), (inf1, _) = timing_b, timing_1
        row = dict(model=name, params=params, fwd_bwd_s_per_batch=med, fwd_bwd_min_s=mn, fwd_bwd_s_per_net=med / b,
                   infer_s_single=inf1, gflops_fwd_per_net=flop_fn_fwd() / b / 1e9, gflops_fwd_bwd_per_net=flop_fn_fb() / b / 1e9)
        results["rows"].append(row)
        print(f"{name:28s} params={params:>9,d}  fwd+bwd {med * 1e3:8.1f} ms/batch (min {mn * 1e3:8.1f}; {med / b * 1e3:6.2f} ms/net)  "
              f"infer(1 net) {inf1 * 1e3:6.2f} ms  fwd {row['gflops_fwd_per_net']:.3f} GFLOP/net  fwd+bwd {row['gflops_fwd_bwd_per_net']:.3f}")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch of {b} SIRENs 2-32-32-1 "
          f"({sum(s.num_edges for s in batch.steps)} edges), d={args.memory_dim}, F={args.fourier_size}, median of {args.repeats}")
    # FLOPs are counted on the torch path: same arithmetic, and the counter sees every matmul there
    torch_path = ExecutionPath.TORCH
    f_fwd = lambda: flops(dng_runner(enc, batch, False, torch_path))  # noqa: E731
    f_fb = lambda: flops(dng_runner(enc, batch, True, torch_path))  # noqa: E731
    paths = ([ExecutionPath.DGL] if dgl_supports(device) else []) + [ExecutionPath.TORCH]
    t_batch = timed_interleaved([dng_runner(enc, batch, True, p) for p in paths], args.repeats)
    t_single = timed_interleaved([dng_runner(enc, single, False, p) for p in paths], max(args.repeats, 10))
    for p, tb, t1 in zip(paths, t_batch, t_single):
        record(f"DNG-Encoder [{p.value} path]", tb, t1, f_fwd, f_fb, n_params)

    if not args.skip_ng_gnn:
        for path in paths:
            ng, width = matched_ng_gnn(n_params, args.fourier_size, path)
            ng.to(device)
            name = f"NG-GNN d={width} [{'DGL' if path is ExecutionPath.DGL else 'torch'}]"
            if path is not torch_path:  # count FLOPs on a torch-path twin with the same weights
                twin, _ = matched_ng_gnn(n_params, args.fourier_size, torch_path)
                twin.load_state_dict(ng.state_dict())
                ff, fb = (lambda: flops(ng_runner(twin, batch, False))), (lambda: flops(ng_runner(twin, batch, True)))
            else:
                ff, fb = (lambda: flops(ng_runner(ng, batch, False))), (lambda: flops(ng_runner(ng, batch, True)))
            record(name, timed(ng_runner(ng, batch, True), args.repeats), timed(ng_runner(ng, single, False), max(args.repeats, 10)),
                   ff, fb, count_params(ng))

    print("paper Table 5 (1 INR, inference): " + ", ".join(f"{k} {t} s, {g} GFLOPs" for k, (t, g) in PAPER_TABLE5.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
