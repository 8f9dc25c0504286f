"""Seconds per INR2JLS reconstruction training step with NG-GNN vs the DNG-Encoder, on the INR table's bench batch.

    OMP_NUM_THREADS=1 nice python benchmarks/bench_ng_gnn_inr.py [--root .data/bench/fashion_inrs] [--batch 32]
        [--repeats 5] [--threads 1] [--path auto|dgl|torch] [--profile ng_gnn|dng] [--json OUT]

The step is the one ``experiments.inr2jls with bench`` trains in phase 1 (dng_tgn.tasks.inr2jls.run_inr2jls):
``--batch`` training INRs of the bench Fashion-MNIST set (2-32-32-1 SIRENs) converted and batched
(``StateDictSet.batch``), the weight encoder -> Latent Generator -> decoder over F.3's six views, MSE, backward,
gradient clipping at 1, Adam. The NG-GNN encoder has the INR table row's configuration (experiments/tables.py
``ng_gnn``: ``encoder.kind=ng_gnn`` with ``bidirectional=True, dropout=0.2`` over the experiment's ``ng_gnn`` defaults),
the DNG encoder the experiment's defaults. Both models and batches are built exactly as the experiment builds
them (``sized_encoder_kwargs``, ``build_encoder``, ``fit_degree_scaler``).

Printed per model: the median over ``--repeats`` of the batch construction time and of the fwd+bwd+Adam time,
wall clock and CPU time of this process (after one warm-up step; with one thread the CPU time is the less
load-sensitive figure on a shared machine), alternating between the models so a shared machine's load hits both alike.
``--profile NAME`` adds a cProfile of 3 steps of that model (top functions by cumulative time).

``--old-tree DIR`` (a checkout holding an older ``dng_tgn/``, e.g. ``git worktree add --detach DIR REV`` or
``git archive REV dng_tgn | tar -x -C DIR``) times that code too: ``--rounds`` alternating pairs of worker
processes, one importing ``DIR/dng_tgn`` and one this checkout's, each running the steps above on the same batch;
the medians are over all rounds' steps. Measured before/after figures: benchmarks/ng_gnn_inr_speed.md.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dng_tgn
from dng_tgn.data import NFNSirenDataset
from dng_tgn.data.rendered_inrs import INRSet, resolve_image_shape
from dng_tgn.nn.factory import EncoderKind, build_encoder, fit_degree_scaler, sized_encoder_kwargs
from dng_tgn.nn.inr2jls import INR2JLS
from dng_tgn.nn.paths import ExecutionPath

# experiments/inr2jls.py's encoder defaults (gru_input "node" since b156f57) and `bench` model sizes; the ng_gnn row
# adds tables.py's overrides
DNG = dict(memory_dim=64, fourier_size=32, fourier_scale=3.0, cell="gru", gru_input="node", rnn_layers=1,
           shared_message=False, per_timestamp_update=False, positional_embedding=False, activation_embedding=False)
NG_GNN = dict(hidden_dim=64, num_layers=3, out_dim=64, fourier_size=32, fourier_scale=3.0, bidirectional=True,
              dropout=0.2)
MODEL = dict(spatial_dim=64, latent_dim=32, generator_hidden=None, decoder_channels=64, num_views=6)


def build(kind: str, probe, shape, path, train: INRSet, batch: int) -> INR2JLS:
    torch.manual_seed(0)
    dng_kw, ng_kw = sized_encoder_kwargs(DNG, NG_GNN, probe)
    enc = build_encoder(EncoderKind.parse(kind), num_outputs=shape[0], num_slots=1, dng=dng_kw, ng_gnn=ng_kw,
                        path=path, probe=probe)
    fit_degree_scaler(enc, (train.weights.batch(idx)[0] for idx in train.weights.chunks(batch)[:4]))
    return INR2JLS(enc, shape, **MODEL)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=".data/bench/fashion_inrs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--path", default="auto", choices=["auto", "dgl", "torch"])
    ap.add_argument("--models", default="ng_gnn,dng")
    ap.add_argument("--profile", default=None, help="cProfile 3 steps of this model (ng_gnn or dng)")
    ap.add_argument("--json", default=None, help="also write the medians to this file")
    ap.add_argument("--old-tree", default=None, help="also time the dng_tgn/ of this folder (see the docstring)")
    ap.add_argument("--rounds", type=int, default=3, help="with --old-tree: alternating old/new worker pairs")
    args = ap.parse_args(argv)
    if args.old_tree:
        return compare_trees(args)
    torch.set_num_threads(args.threads)
    path = None if args.path == "auto" else ExecutionPath.parse(args.path)

    root = Path(args.root)
    shape = resolve_image_shape(root, None)
    ds = NFNSirenDataset(root, "train", prefix="randinit_smaller", extra_aug=1)
    train = INRSet.from_dataset(ds, shape, 30.0, desc="INRs train", limit=4 * args.batch)
    idx = torch.arange(args.batch)
    probe = train.weights.batch([0])[0]
    models = {k: build(k, probe, shape, path, train, args.batch) for k in args.models.split(",")}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}
    target = train.images[idx]

    def step(name):
        t0 = time.perf_counter()
        batch = train.weights.batch(idx)[0]
        t1, c1 = time.perf_counter(), time.process_time()
        net, opt = models[name], opts[name]
        net.train()
        opt.zero_grad(set_to_none=True)
        loss = net.loss(net(batch), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)  # the recon phase's grad_clip (train_loop)
        opt.step()
        return t1 - t0, time.perf_counter() - t1, time.process_time() - c1

    print(f"{train.weights.batch(idx)[0]!r}, threads {args.threads}, path {args.path}, dng_tgn from "
          f"{Path(dng_tgn.__file__).parent}")
    times = {k: {"batch_s": [], "step_s": [], "cpu_s": []} for k in models}
    for k in models:
        step(k)  # warm-up
    for _ in range(args.repeats):
        for k in models:
            b, s, c = step(k)
            times[k]["batch_s"].append(b)
            times[k]["step_s"].append(s)
            times[k]["cpu_s"].append(c)
    result = {}
    for k, t in times.items():
        params = sum(p.numel() for p in models[k].encoder.parameters())
        result[k] = dict(encoder_params=params, batch_s=statistics.median(t["batch_s"]),
                         step_s=statistics.median(t["step_s"]), step_all_s=t["step_s"],
                         cpu_s=statistics.median(t["cpu_s"]), cpu_all_s=t["cpu_s"])
        print(f"{k:7s} encoder params {params:7d}  batch build {result[k]['batch_s']:.4f} s  "
              f"fwd+bwd+Adam {result[k]['step_s']:.4f} s/step wall, {result[k]['cpu_s']:.4f} CPU s "
              f"(medians of {args.repeats}; wall min {min(t['step_s']):.4f}, max {max(t['step_s']):.4f})")
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(3):
            step(args.profile)
        prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(30)
        print(s.getvalue())
    if args.json:
        Path(args.json).write_text(json.dumps(dict(command=" ".join(sys.argv), result=result,
                                                    package=str(Path(dng_tgn.__file__).resolve().parent)), indent=1))
    return result


def compare_trees(args) -> dict:
    """Alternate worker processes on the old tree and on this checkout; medians over all their steps."""
    here = Path(__file__).resolve().parents[1]
    trees = {"old": Path(args.old_tree).resolve(), "new": here}
    if not (trees["old"] / "dng_tgn" / "__init__.py").is_file():
        raise SystemExit(f"--old-tree {args.old_tree}: no dng_tgn/ package there")
    worker_args = ["--root", args.root, "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads",
                   str(args.threads), "--path", args.path, "--models", args.models]
    steps = {(tree, k): [] for tree in trees for k in args.models.split(",")}
    cpu = {key: [] for key in steps}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for tree, root in trees.items():
                out = Path(tmp) / f"{tree}{r}.json"
                env = dict(os.environ, PYTHONPATH=str(root))
                proc = subprocess.run([sys.executable, __file__, *worker_args, "--json", str(out)], env=env,
                                      capture_output=True, text=True, cwd=here)
                if proc.returncode:
                    raise SystemExit(f"{tree} worker failed:\n{proc.stderr[-3000:]}")
                report = json.loads(out.read_text())
                if Path(report["package"]) != root / "dng_tgn":  # the worker must have timed the intended code
                    raise SystemExit(f"{tree} worker imported {report['package']}, not {root / 'dng_tgn'}")
                for k, v in report["result"].items():
                    steps[(tree, k)] += v["step_all_s"]
                    cpu[(tree, k)] += v["cpu_all_s"]
                print(f"round {r} {tree}: " + ", ".join(f"{k} {statistics.median(v['step_all_s']):.4f} s/step"
                                                       for k, v in report["result"].items()), flush=True)
    result = {f"{tree}/{k}": dict(step_s=statistics.median(v), n=len(v), min_s=min(v), max_s=max(v),
                                  cpu_s=statistics.median(cpu[(tree, k)]))
              for (tree, k), v in steps.items()}
    for name, r in result.items():
        print(f"{name:12s} fwd+bwd+Adam {r['step_s']:.4f} s/step wall, {r['cpu_s']:.4f} CPU s (medians of {r['n']}; "
              f"wall min {r['min_s']:.4f}, max {r['max_s']:.4f})")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(command=" ".join(sys.argv), result=result), indent=1))
    return result


if __name__ == "__main__":
    main()
