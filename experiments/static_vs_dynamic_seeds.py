"""§7 over several seeds: the spread of the static-vs-dynamic comparison, resumably.

    python -m experiments.static_vs_dynamic_seeds                       # seeds 0,1,2 at the main job's scale
    python -m experiments.static_vs_dynamic_seeds --seeds 0,1,2,3,4
    python -m experiments.static_vs_dynamic_seeds --scale paper         # 1000/250/500 MLPs (`with paper`)
    python -m experiments.static_vs_dynamic_seeds --report              # re-render from the finished seeds

Each seed is one run of ``experiments.static_vs_dynamic`` (the main job's config with ``seed=k``): the static
MPNN forward-only and bidirectional, the dynamic MPNN, early stopping on validation, per layer the static
direction with the lower *static* validation MSE, test MSE at the best-validation weights. A seed's result is
written to ``results/rows/static_vs_dynamic/<protocol>/<scale>/seed<k>.json`` the moment it finishes, so a rerun
skips finished seeds; an interrupted seed continues from its checkpoints in
``runs/static_vs_dynamic_seeds/<protocol>/<scale>/seed<k>/`` (bit-identical to an uninterrupted run). The
protocol's version (``PROTOCOL``) keeps seeds of an older training rule out of a new report, and a report whose
seeds were run with different configs is refused. After every seed ``results/static_vs_dynamic.{json,md,png}``
are re-rendered: per-layer test MSE per seed for both models, dynamic ÷ static per seed, mean ± std, the chosen
static direction, against the paper's Fig.-5 targets (dynamic ÷ static ≤ 1.1 at layer 1, ≤ 0.33 from layer 2).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path("results")
# The protocol's version names the folders of finished seeds and of checkpoints, so a rerun never mixes seeds
# trained under different rules. v1 (results/rows/static_vs_dynamic/<scale>/, kept as it was): cosine decay
# over a 60-epoch cap, which early stopping never beat. v2: reduce-on-plateau and early stopping, both on
# validation with a relative min_delta, the cap only a safety limit.
PROTOCOL = "v2"
CHECKPOINTS = Path("runs") / "static_vs_dynamic_seeds" / PROTOCOL
# Fig. 5 read as numbers (the targets): dynamic ÷ static test MSE at most this, per layer
TARGETS = {1: 1.1, 2: 0.33, 3: 0.33}
# --scale -> the experiment's named configs (tiny: seconds, for tests)
SCALES = {"default": (), "paper": ("paper",), "tiny": ("tiny",)}
MODELS = ("static", "dynamic", "static_forward", "static_bidirectional")


def seed_file(scale: str, seed: int) -> Path:
    return RESULTS / "rows" / "static_vs_dynamic" / PROTOCOL / scale / f"seed{seed}.json"


def run_seed(scale: str, seed: int) -> dict:
    """One seed of the main job; continues from the seed's own checkpoints when an earlier attempt was killed."""
    from experiments.static_vs_dynamic import ex

    ckdir = CHECKPOINTS / scale / f"seed{seed}"
    resume = ckdir if ckdir.is_dir() and any(ckdir.glob("*.step*.pt")) else None
    if resume is not None:
        print(f"seed {seed}: continuing from the checkpoints in {ckdir}", flush=True)
    ckdir.mkdir(parents=True, exist_ok=True)
    runtime = {"checkpoint_dir": str(ckdir), "resume": str(resume) if resume else None}
    run = ex.run(named_configs=SCALES[scale], config_updates={"seed": seed, "runtime": runtime},
                 options={"--capture": "no"})
    run_dir = Path(run.observers[0].dir) if run.observers and getattr(run.observers[0], "dir", None) else None
    return {"result": run.result, "target_var": run.info["target_var"], "params": run.info["params"],
            "config": {k: run.config[k] for k in ("data", "model", "optim", "models")},
            "run_dir": str(run_dir) if run_dir else None}


def run_seeds(scale: str, seeds: list[int], command: str) -> None:
    todo = [s for s in seeds if not seed_file(scale, s).is_file()]
    print(f"static_vs_dynamic: {len(seeds)} seeds planned, {len(seeds) - len(todo)} already done, {len(todo)} to run",
          flush=True)
    for i, seed in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] seed {seed} ...", flush=True)
        t0 = time.perf_counter()
        out = run_seed(scale, seed)
        out.update(seed=seed, scale=scale, wall_s=time.perf_counter() - t0,
                   date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        path = seed_file(scale, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        tmp.replace(path)  # a seed file exists only once the seed is complete
        shutil.rmtree(CHECKPOINTS / scale / f"seed{seed}", ignore_errors=True)  # done: its checkpoints are spent
        write_report(scale, seeds, command)


# ------------------------------------------------------------------------------------------------ reporting
def _mean_std(xs: list[float]) -> tuple[float | None, float | None]:
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def collect(scale: str, seeds: list[int] | None = None) -> dict:
    """The finished seeds' results as the document of ``results/static_vs_dynamic.json`` (minus the header)."""
    files = sorted(seed_file(scale, 0).parent.glob("seed*.json"), key=lambda p: int(p.stem[4:]))
    runs = [json.loads(f.read_text()) for f in files]
    if seeds is not None:
        runs = [r for r in runs if r["seed"] in seeds]
    if not runs:
        return {"seeds": [], "layers": []}
    mixed = [r["seed"] for r in runs if r["config"] != runs[0]["config"]]
    if mixed:
        raise ValueError(f"seeds {mixed} in {files[0].parent} were run with another config than seed "
                         f"{runs[0]['seed']}; one report must not mix protocols: move them aside or rerun them")
    layers = sorted(runs[0]["result"]["static"]["test_mse"], key=int)
    doc = {"seeds": [r["seed"] for r in runs], "layers": [int(l) for l in layers],
           "config": runs[0]["config"], "target_var": {l: [r["target_var"][l] for r in runs] for l in layers}}
    for name in MODELS:
        if name not in runs[0]["result"]:
            continue
        per = {l: [r["result"][name]["test_mse"][l] for r in runs] for l in layers}
        entry = {"test_mse": per, "mean": {}, "std": {}}
        for l in layers:
            entry["mean"][l], entry["std"][l] = _mean_std(per[l])
        entry["val_mse"] = {l: [r["result"][name]["val_mse"][l] for r in runs] for l in layers}
        if name == "static":
            entry["direction"] = {l: [r["result"]["static"]["direction"][l] for r in runs] for l in layers}
        else:
            entry["best_epoch"] = [r["result"][name]["best_epoch"] for r in runs]
            entry["epochs_run"] = [r["result"][name]["epochs_run"] for r in runs]
            entry["train_s"] = [r["result"][name]["train_seconds"] for r in runs]
            entry["cpu_s"] = [r["result"][name].get("cpu_seconds") for r in runs]  # the model's own thread's
            entry["params"] = runs[0]["result"][name]["params"]
        doc[name] = entry
    ratio = {l: [r["result"]["ratio"][l] for r in runs] for l in layers}
    doc["ratio"] = ratio  # dynamic ÷ static test MSE, per seed
    doc["ratio_mean"], doc["ratio_std"] = {}, {}
    for l in layers:
        doc["ratio_mean"][l], doc["ratio_std"][l] = _mean_std(ratio[l])
    doc["ratio_of_means"] = {l: doc["dynamic"]["mean"][l] / doc["static"]["mean"][l] for l in layers}
    doc["targets"] = {l: TARGETS.get(int(l)) for l in layers}
    doc["meets_target"] = {l: (None if TARGETS.get(int(l)) is None else doc["ratio_mean"][l] <= TARGETS[int(l)])
                           for l in layers}
    # the same numbers in the tables' row shape (notebooks/results.ipynb plots `rows` of every results/*.json)
    doc["rows"] = [{"name": name, "dataset": f"layer {l}", "seeds": doc["seeds"], "test_mse": doc[name]["test_mse"][l],
                    "mean": doc[name]["mean"][l], "std": doc[name]["std"][l]}
                   for l in layers for name in ("static", "dynamic")]
    doc["wall_s"] = [r["wall_s"] for r in runs]
    doc["run_dirs"] = [r["run_dir"] for r in runs]
    return doc


def schedule_words(o: dict) -> str:
    """The optimisation protocol of an ``optim`` config, in words, for the report."""
    schedule = o.get("schedule", "cosine")
    stop = (f"early stopping after {o['patience']} validations without a relative improvement of "
            f"{o.get('min_delta', 0.0):g}")
    if schedule == "plateau":
        return (f"rate × {o['lr_factor']} after {o['lr_patience']} validations without improvement, {stop}, "
                f"at most {o['epochs']} epochs")
    if schedule == "cosine":
        return f"cosine decay over at most {o['epochs']} epochs, {stop}"
    return f"constant rate, {stop}, at most {o['epochs']} epochs"


def write_report(scale: str, seeds: list[int] | None, command: str) -> None:
    from experiments.tables import machine

    body = collect(scale, seeds)
    RESULTS.mkdir(exist_ok=True)
    doc = {"scale": scale, "protocol": PROTOCOL, "machine": machine(), "date": dt.date.today().isoformat(),
           "command": command, **body}
    (RESULTS / "static_vs_dynamic.json").write_text(json.dumps(doc, indent=1))
    lines = ["# §7 static vs dynamic neural graph: MSE fitting MLP activations (paper Fig. 5)", "",
             f"Scale `{scale}`; machine: {doc['machine']}; date {doc['date']}.", f"Command: `{command}`.", ""]
    if not body["seeds"]:
        lines.append("No seed has finished yet.")
        (RESULTS / "static_vs_dynamic.md").write_text("\n".join(lines) + "\n")
        return
    cfg = body["config"]
    d, o = cfg["data"], cfg["optim"]
    lines += [f"Seeds {body['seeds']}. {d['n_train']}/{d['n_val']}/{d['n_test']} random MLPs (train/val/test) of "
              f"widths {d['widths']} ({d['activation']}), {d['inputs_per_mlp']} inputs each; d = "
              f"{cfg['model']['hidden_dim']}; Adam lr {o['lr']}, {schedule_words(o)}; test MSE at the "
              f"best-validation weights (protocol {PROTOCOL}). Static = per layer the direction (forward-only "
              f"as in §7, or "
              f"bidirectional) with the lower static validation MSE.", "",
              "| layer | static (chosen) | dynamic | dynamic ÷ static per seed | mean ± std | target | met | "
              "static direction chosen | static forward | static bidirectional |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]

    def ms(name: str, l: str) -> str:
        e = body.get(name)
        return "—" if e is None else f"{e['mean'][l]:.2e} ± {e['std'][l]:.1e}"

    for l in map(str, body["layers"]):
        dirs = body["static"]["direction"][l]
        count = ", ".join(f"{k} ×{dirs.count(k)}" for k in sorted(set(dirs)))
        met = body["meets_target"][l]
        lines.append(f"| {l} | {ms('static', l)} | {ms('dynamic', l)} | "
                     f"{', '.join(f'{x:.2f}' for x in body['ratio'][l])} | "
                     f"{body['ratio_mean'][l]:.2f} ± {body['ratio_std'][l]:.2f} | ≤ {body['targets'][l]} | "
                     f"{'yes' if met else 'no'} | {count} | {ms('static_forward', l)} | "
                     f"{ms('static_bidirectional', l)} |")
    lines += ["", "Wall time per seed: " + ", ".join(f"{w:.0f}" for w in body["wall_s"]) + " s (it depends on the "
              "machine's load).", "Epochs (best / run) per seed: " + "; ".join(
        f"{n}: " + ", ".join(f"{b}/{e}" for b, e in zip(body[n]["best_epoch"], body[n]["epochs_run"]))
        for n in MODELS if n != "static" and n in body) + f" (cap {o['epochs']}).",
              "Training CPU seconds per seed (each model's own thread; the models train side by side, so an idle "
              "2-core machine needs about the larger of the two threads' sums): " + "; ".join(
                  f"{n}: " + ", ".join("—" if c is None else f"{c:.0f}" for c in body[n]["cpu_s"])
                  for n in MODELS if n != "static" and n in body) + ".", ""]
    fig = figure(body)
    lines += [f"![per-layer test MSE over seeds]({fig.name})", "",
              "Left: test MSE per layer, one dot per seed, bar = mean. Right: dynamic ÷ static per seed, the "
              "dashed lines are the targets."]
    (RESULTS / "static_vs_dynamic.md").write_text("\n".join(lines) + "\n")


def figure(body: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = [str(l) for l in body["layers"]]
    colors = {"static": "#d62728", "dynamic": "#1f77b4"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    for k, name in enumerate(("static", "dynamic")):
        xs = [int(l) + (k - 0.5) * 0.36 for l in layers]
        ax.bar(xs, [body[name]["mean"][l] for l in layers], 0.34, color=colors[name], alpha=0.45,
               label=f"{name} (mean of {len(body['seeds'])} seeds)")
        for x, l in zip(xs, layers):
            vals = body[name]["test_mse"][l]
            jitter = [x + 0.06 * (i - (len(vals) - 1) / 2) for i in range(len(vals))]
            ax.plot(jitter, vals, "o", color=colors[name], markersize=4, markeredgecolor="k", markeredgewidth=0.4)
    ax.set_yscale("log")
    ax.set_xticks([int(l) for l in layers])
    ax.set_xticklabels([f"layer {l}" for l in layers])
    ax.set_ylabel("test MSE")
    ax.set_title("static (chosen on validation) vs dynamic", fontsize=10)
    ax.legend(fontsize=8)
    for l in layers:
        vals = body["ratio"][l]
        ax2.plot([int(l)] * len(vals), vals, "o", color="k", markersize=4)
        t = body["targets"][l]
        if t is not None:
            ax2.hlines(t, int(l) - 0.3, int(l) + 0.3, colors="g", linestyles="--")
    ax2.axhline(1.0, color="0.6", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xticks([int(l) for l in layers])
    ax2.set_xticklabels([f"layer {l}" for l in layers])
    ax2.set_ylabel("dynamic ÷ static test MSE")
    ax2.set_title("per seed (dashed: target)", fontsize=10)
    fig.tight_layout()
    path = RESULTS / "static_vs_dynamic.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--scale", default="default", choices=sorted(SCALES),
                   help="default: the main job's config; paper: its `paper` named config (1000/250/500 MLPs); "
                        "tiny: its `tiny` smoke config")
    p.add_argument("--report", action="store_true", help="only re-render the report from finished seeds")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if len(set(seeds)) != len(seeds):
        p.error(f"--seeds lists a seed twice: {args.seeds}")
    # the command that produces the numbers (a --report rerun only re-renders them)
    args_given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report"]
    command = "python -m experiments.static_vs_dynamic_seeds " + " ".join(args_given)
    if not args.report:
        run_seeds(args.scale, seeds, command.strip())
    write_report(args.scale, seeds, command.strip())
    print(f"wrote {RESULTS / 'static_vs_dynamic.md'} and .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
