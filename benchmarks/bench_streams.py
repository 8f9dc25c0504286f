"""How fast do event streams build? Networks/s for batches of SIRENs and Small-CNN-Zoo CNNs.

    python benchmarks/bench_streams.py [--n 1024] [--repeats 7]

Two paths are timed: ``batch_state_dicts`` (convert one template, gather the rest from stacked
parameters) and the general ``to_event_stream`` per network followed by ``batch_streams``.
Target (issue #2): the batched stream for 1,024 SIRENs in under 50 ms.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import dng_tgn
from dng_tgn.nets import NFNSiren, ZooCNN


def timed(fn, repeats):
    fn()  # warm-up: first-touch allocations and import-time caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1024, help="networks per batch")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for name, make in (("SIREN 2-32-32-1", lambda: NFNSiren().state_dict()), ("ZooCNN 3xConv16+GAP+Dense10", lambda: ZooCNN().state_dict())):
        sds = [make() for _ in range(args.n)]
        batch = dng_tgn.batch_state_dicts(sds)
        edges = sum(s.num_edges for s in batch.steps)
        fast_med, fast_min = timed(lambda: dng_tgn.batch_state_dicts(sds), args.repeats)
        slow_med, slow_min = timed(lambda: dng_tgn.batch_streams([dng_tgn.to_event_stream(sd) for sd in sds]), max(2, args.repeats // 2))
        streams = [dng_tgn.to_event_stream(sd) for sd in sds]
        batch_only_med, _ = timed(lambda: dng_tgn.batch_streams(streams), args.repeats)
        rows.append(dict(arch=name, networks=args.n, edges=edges, batch_state_dicts_ms=1e3 * fast_med, batch_state_dicts_min_ms=1e3 * fast_min,
                         per_network_ms=1e3 * slow_med, batch_streams_only_ms=1e3 * batch_only_med, per_network_min_ms=1e3 * slow_min,
                         networks_per_s_fast=args.n / fast_med, networks_per_s_general=args.n / slow_med))
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, median of {args.repeats} runs")
    print(f"{'architecture':30s} {'nets':>5s} {'edges':>9s} {'batch_state_dicts':>18s} {'nets/s':>9s} {'to_event_stream+batch':>22s} {'nets/s':>8s} {'batch_streams only':>19s}")
    for r in rows:
        print(f"{r['arch']:30s} {r['networks']:5d} {r['edges']:9d} {r['batch_state_dicts_ms']:15.1f} ms {r['networks_per_s_fast']:9.0f} "
              f"{r['per_network_ms']:19.1f} ms {r['networks_per_s_general']:8.0f} {r['batch_streams_only_ms']:16.1f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
