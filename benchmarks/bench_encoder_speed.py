"""DNG-Encoder speed against an older commit, measured in one run: time ratio, FLOP/s ÷ GEMM rate, equality.

    python benchmarks/bench_encoder_speed.py [--old-rev 74a6d88] [--batch 32] [--repeats 7] [--threads 1]
        [--weight-scale 1.0] [--profile] [--json out.json]

The encoder of this tree ("new") and of ``--old-rev`` ("old", checked out read-only with
``git worktree add --detach`` under ``--old-tree``) run in two worker processes, each importing its own
``dng_tgn`` through PYTHONPATH (each prints ``dng_tgn.__file__``, and the run stops if the old tree's package
is not the one imported: the venv's editable install points at this tree). The parent sends both workers the
same job in turn, repeat after repeat, so that a shared machine's load hits both alike; each time is the
median of ``--repeats``.

Workload (the encoder benchmark's setting): a batch of ``--batch`` SIRENs 2-32-32-1 (NFN layout, Sitzmann
init), memory_dim 512, fourier_size 128, max_timestamps 3, torch execution path, CPU. ``--weight-scale``
multiplies the SIRENs' hidden and output weights (e.g. 10: the ±0.14 range of trained INRs rather than the
±0.014 of the init) because the new edge projection's cost depends on the weights' range.

Both workers build their encoder from one state dict (the new one's; keys that the old code lacks or adds are
listed), so the outputs must agree: the run prints the largest differences of the embedding and of every
parameter gradient, and checks them against rtol/atol 1e-5.

Reported: fwd+bwd and inference (no_grad) time per batch, new ÷ old; FLOPs counted by
``torch.utils.flop_counter`` (matrix products only, 2 per multiply-add) for each encoder; and each encoder's
counted FLOP/s ÷ the rate of a plain fp32 GEMM (4096x512 @ 512x1536) timed in the new worker in the same
rounds. ``--profile`` prints the new encoder's top operators (torch.profiler) for fwd+bwd.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OLD_REV = "74a6d88"


# ------------------------------------------------------------------------------------------------------------
# worker: one dng_tgn, driven by line-based JSON commands on stdin
# ------------------------------------------------------------------------------------------------------------
def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    import dng_tgn
    from dng_tgn.nn import DNGEncoder, ExecutionPath

    def reply(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    batch = dng_tgn.batch_state_dicts(torch.load(args.data, weights_only=True))
    heads_kw = "message_heads" if "message_heads" in DNGEncoder.__init__.__code__.co_varnames else "num_heads"
    enc = DNGEncoder(args.memory_dim, fourier_size=args.fourier_size, max_timestamps=3, device="cpu",
                     path=ExecutionPath.TORCH, **{heads_kw: 1})
    missing, unexpected = enc.load_state_dict(torch.load(args.weights, weights_only=True), strict=False)
    gemm_a, gemm_b = torch.randn(4096, 512), torch.randn(512, 1536)
    # a fixed random readout of the embedding: a plain .sum() of LayerNorm-ed memories has ~zero gradients
    probe = torch.randn(batch.num_graphs, args.memory_dim, generator=torch.Generator().manual_seed(1))

    def fb():
        enc.zero_grad(set_to_none=True)
        (enc(batch).embedding * probe).sum().backward()

    def inf():
        with torch.no_grad():
            enc(batch)

    jobs = {"fb": fb, "inf": inf, "gemm": lambda: gemm_a @ gemm_b}
    reply(dict(file=dng_tgn.__file__, missing=missing, unexpected=unexpected, torch=torch.__version__,
               threads=torch.get_num_threads()))
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op in jobs:
            t0 = time.perf_counter()
            jobs[op]()
            reply(dict(t=time.perf_counter() - t0))
        elif op == "flops":
            from torch.utils.flop_counter import FlopCounterMode

            # The counter would count a sparse product as dense; the per-edge route does the same multiply-adds
            # (E·P·d) as dense products, so count on that route.
            import dng_tgn.nn.memory as memory_module

            sparse = getattr(memory_module, "SPARSE_BASIS_MESSAGE", None)
            if sparse is not None:
                memory_module.SPARSE_BASIS_MESSAGE = False
            out = {}
            for name in ("inf", "fb"):
                with FlopCounterMode(display=False) as counter:
                    jobs[name]()
                out[name] = counter.get_total_flops()
            if sparse is not None:
                memory_module.SPARSE_BASIS_MESSAGE = sparse
            reply(out)
        elif op == "outputs":
            model = enc if cmd.get("dtype", "float32") == "float32" else copy.deepcopy(enc).double()
            model.zero_grad(set_to_none=True)
            emb = model(batch).embedding
            (emb * probe.to(emb.dtype)).sum().backward()
            grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
            torch.save(dict(embedding=emb.detach(), grads=grads), cmd["path"])
            reply(dict(ok=True))
        elif op == "profile":
            from torch.profiler import ProfilerActivity, profile

            fb()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
                fb()
            table = prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=cmd.get("rows", 20))
            reply(dict(table=table))
        elif op == "quit":
            reply(dict(ok=True))
            return


# ------------------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------------------
class Worker:
    def __init__(self, name: str, pythonpath: Path, args, data: Path, weights: Path):
        env = dict(os.environ, PYTHONPATH=str(pythonpath), OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--data", str(data), "--weights", str(weights),
               "--threads", str(args.threads), "--memory-dim", str(args.memory_dim), "--fourier-size", str(args.fourier_size)]
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=tempfile.gettempdir())
        self.hello = self._read()
        expected = (pythonpath / "dng_tgn").resolve()
        got = Path(self.hello["file"]).resolve().parent
        if got != expected:
            self.close()
            raise SystemExit(f"{name} worker imported dng_tgn from {got}, expected {expected}")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} worker died (exit code {self.proc.poll()})")
        return json.loads(line)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.ask(op="quit")
        except Exception:
            pass
        self.proc.kill()


def ensure_old_tree(rev: str, path: Path) -> Path:
    if (path / "dng_tgn" / "__init__.py").exists():
        return path
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True)
    return path


def make_inputs(args, tmp: Path) -> tuple[Path, Path]:
    import torch

    from dng_tgn.nets import NFNSiren
    from dng_tgn.nn import DNGEncoder

    torch.manual_seed(args.seed)
    sds = []
    for _ in range(args.batch):
        sd = NFNSiren().state_dict()
        for k in sd:
            if args.weight_scale != 1.0 and k.endswith("weight") and not k.startswith("net.0."):
                sd[k] = sd[k] * args.weight_scale
        sds.append(sd)
    data, weights = tmp / "sirens.pt", tmp / "encoder.pt"
    torch.save(sds, data)
    torch.save(DNGEncoder(args.memory_dim, fourier_size=args.fourier_size, max_timestamps=3, device="cpu").state_dict(), weights)
    return data, weights


def compare(tmp: Path, new: Worker, old: Worker, rtol: float, atol: float) -> dict:
    """new vs old (both float32), and each against the old code run in float64 (the closest thing to exact).

    Gradients are sums over thousands of terms with cancellation, so they are compared normwise: the largest
    difference over the largest magnitude of the reference tensor.
    """
    import torch

    runs = {"new": (new, "float32"), "old": (old, "float32"), "old64": (old, "float64")}
    out = {}
    for name, (w, dtype) in runs.items():
        w.ask(op="outputs", path=str(tmp / f"out_{name}.pt"), dtype=dtype)
        out[name] = torch.load(tmp / f"out_{name}.pt", weights_only=True)

    def err(x, y):
        x, y = x.double(), y.double()
        d = (x - y).abs()
        return dict(max_abs=float(d.max()), normwise=float(d.max() / y.abs().max().clamp(min=1e-30)),
                    close=bool(torch.allclose(x, y, rtol=rtol, atol=atol)))

    def pair(a, b):
        res = dict(embedding=err(out[a]["embedding"], out[b]["embedding"]), grads={})
        for k in sorted(set(out[a]["grads"]) & set(out[b]["grads"])):
            res["grads"][k] = err(out[a]["grads"][k], out[b]["grads"][k])
        res["grad_normwise_max"] = max((v["normwise"] for v in res["grads"].values()), default=0.0)
        return res

    return {"new_vs_old": pair("new", "old"), "new_vs_float64": pair("new", "old64"), "old_vs_float64": pair("old", "old64")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-rev", default=DEFAULT_OLD_REV)
    ap.add_argument("--old-tree", type=Path, default=None, help="worktree of --old-rev (default /tmp/enc_old_<rev>)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--memory-dim", type=int, default=512)
    ap.add_argument("--fourier-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weight-scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--weights", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    old_tree = ensure_old_tree(args.old_rev, args.old_tree or Path(tempfile.gettempdir()) / f"enc_old_{args.old_rev}")
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        data, weights = make_inputs(args, tmp)
        new, old = Worker("new", REPO, args, data, weights), Worker("old", old_tree, args, data, weights)
        try:
            for w in (new, old):
                print(f"{w.name}: dng_tgn from {w.hello['file']} (torch {w.hello['torch']}, {w.hello['threads']} threads); "
                      f"state-dict keys missing {w.hello['missing']}, unexpected {w.hello['unexpected']}")
            times = {("new", "fb"): [], ("old", "fb"): [], ("new", "inf"): [], ("old", "inf"): [], ("new", "gemm"): []}
            for w in (new, old):  # warm-up
                w.ask(op="fb"), w.ask(op="inf")
            for r in range(args.repeats):
                for op in ("fb", "inf"):
                    order = (new, old) if r % 2 == 0 else (old, new)
                    for w in order:
                        times[(w.name, op)].append(w.ask(op=op)["t"])
                times[("new", "gemm")].append(min(new.ask(op="gemm")["t"] for _ in range(3)))
            med = {k: statistics.median(v) for k, v in times.items()}
            gemm_rate = 2 * 4096 * 512 * 1536 / med[("new", "gemm")]
            flops = {w.name: w.ask(op="flops") for w in (new, old)}
            equal = compare(tmp, new, old, 1e-5, 1e-5)
            table = new.ask(op="profile")["table"] if args.profile else None
        finally:
            new.close(), old.close()

    res = dict(date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), command=" ".join([Path(sys.argv[0]).name] + (argv or sys.argv[1:])),
               old_rev=args.old_rev, batch=args.batch, memory_dim=args.memory_dim, fourier_size=args.fourier_size,
               threads=args.threads, repeats=args.repeats, weight_scale=args.weight_scale, gemm_gflops_per_s=gemm_rate / 1e9,
               rows={})
    print(f"\n{args.batch} SIRENs 2-32-32-1 (hidden weights x{args.weight_scale}), d={args.memory_dim}, F={args.fourier_size}, "
          f"{args.threads} thread(s), medians of {args.repeats} interleaved repeats; GEMM {gemm_rate / 1e9:.1f} GFLOP/s")
    print(f"{'':6s}{'fwd+bwd s':>11s}{'infer s':>10s}{'GFLOP fb':>10s}{'GFLOP inf':>10s}{'fb util':>9s}{'inf util':>9s}")
    for name in ("old", "new"):
        fb, inf = med[(name, "fb")], med[(name, "inf")]
        row = dict(fwd_bwd_s=fb, infer_s=inf, gflop_fwd_bwd=flops[name]["fb"] / 1e9, gflop_infer=flops[name]["inf"] / 1e9,
                   util_fwd_bwd=flops[name]["fb"] / fb / gemm_rate, util_infer=flops[name]["inf"] / inf / gemm_rate)
        res["rows"][name] = row
        print(f"{name:6s}{fb:11.4f}{inf:10.4f}{row['gflop_fwd_bwd']:10.2f}{row['gflop_infer']:10.2f}"
              f"{row['util_fwd_bwd']:9.1%}{row['util_infer']:9.1%}")
    res["ratio_fwd_bwd"] = med[("new", "fb")] / med[("old", "fb")]
    res["ratio_infer"] = med[("new", "inf")] / med[("old", "inf")]
    res["equality"] = equal
    print(f"new / old time: fwd+bwd {res['ratio_fwd_bwd']:.3f}, inference {res['ratio_infer']:.3f}")
    for key, cmp in equal.items():
        e = cmp["embedding"]
        print(f"{key:15s} embedding max abs diff {e['max_abs']:.2e} (allclose rtol=atol=1e-5: {e['close']}); "
              f"gradients: largest normwise diff {cmp['grad_normwise_max']:.2e}")
    if table:
        print("\nnew encoder, fwd+bwd profile:\n" + table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
