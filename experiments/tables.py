"""Run the paper's tables row by row, resumably, and write ``results/<table>.{md,json}``.

    python -m experiments.tables inr --scale bench --data-dir .data/bench             # Tables 1, 2, 4, 6
    python -m experiments.tables generalization --scale bench --data-dir .data/bench  # Tables 3, 7
    python -m experiments.tables inr --rows inr2jls,weight_stats --seeds 0,1,2        # some rows only
    python -m experiments.tables inr --report                                         # tables from what exists

Every (table, dataset, row, seed) is one run. Its result is written to
``results/rows/<table>/<dataset>/<row>/seed<k>.json`` the moment it finishes, so a rerun skips finished runs
and an interrupted table is completed by running the same command again (each Sacred run also resumes from
its own checkpoints when given ``runtime.resume``). The tables are re-rendered after every run.

Rows are data (:data:`TABLES`). A row that needs something the project cannot do yet says so in ``missing``;
it is listed in the table as not run, with the reason, rather than silently dropped. Sacred rows run the
experiment module with the row's named configs and config updates; direct rows (weight statistics) call a
function. All choices a row makes are made on validation; test numbers are only read at the end of a run.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

RESULTS = Path("results")


@dataclass(frozen=True)
class Row:
    """One row of a table: how to run one seed of it, and how many seeds it gets."""

    name: str
    experiment: str | None = None  # module under experiments/ (a Sacred row)
    named_configs: tuple[str, ...] = ()
    updates: Mapping = field(default_factory=dict)
    direct: Callable[[Path, str, int], dict] | None = None  # (data root, dataset, seed) -> row result
    seeds: int = 3
    datasets: tuple[str, ...] | None = None  # None: every dataset of the table
    missing: str | None = None  # why this row cannot run yet


@dataclass(frozen=True)
class Table:
    name: str  # results/<name>.md|json
    title: str
    metric: str  # the key of a row result reported as mean ± std
    metric_label: str
    datasets: tuple[str, ...]
    data_folder: Callable[[str], str]  # dataset -> folder name under --data-dir
    rows: tuple[Row, ...]


# ------------------------------------------------------------------------------------------------ row results
def inr_result(summary: Mapping, run_dir: Path | None) -> dict:
    """The INR table's fields from an inr2jls run's summary."""
    return {"test_acc": summary["test"]["accuracy"], "params": summary["params"]["inr2jls"] + summary["params"]["classifier"],
            "train_s": summary["seconds"], "recon_mse_ratio": summary["test"]["recon_mse"] / summary["mean_image_mse"],
            "history": _history(run_dir, "cls.val.accuracy")}


def generalization_result(summary: Mapping, run_dir: Path | None) -> dict:
    name = "cnn_generalization" if run_dir is None or "cnn" in str(run_dir) else "vit_generalization"
    return {"tau": summary["test"]["kendall_tau"], "r2": summary["test"]["r2"], "params": summary["params"],
            "train_s": summary["seconds"], "history": _history(run_dir, f"{name}.val.kendall_tau")}


def _history(run_dir: Path | None, metric: str) -> list[list[float]]:
    if run_dir is None or not (run_dir / "metrics.json").is_file():
        return []
    m = json.loads((run_dir / "metrics.json").read_text()).get(metric)
    return [[s, v] for s, v in zip(m["steps"], m["values"])] if m else []


def weight_stats_inr(root: Path, dataset: str, seed: int) -> dict:
    """Logistic regression on per-layer weight statistics of the INRs: the trivial floor of the INR table."""
    from dng_tgn.baselines.weight_stats import StatsModel, WeightStatsBaseline, weight_statistics
    from dng_tgn.data import NFNSirenDataset, StateDictSet

    t0 = time.perf_counter()
    sets = {s: StateDictSet.from_dataset(NFNSirenDataset(root, s), desc=s) for s in ("train", "val", "test")}
    xy = {s: (weight_statistics(d.params), d.targets.numpy()) for s, d in sets.items()}
    acc = lambda p, y: float((p == y).mean())  # noqa: E731
    model = WeightStatsBaseline.fit_tuned(StatsModel.LOGISTIC, xy["train"], xy["val"], acc, seed=seed)
    return {"test_acc": acc(model.predict(xy["test"][0]), xy["test"][1]), "params": int(xy["train"][0].shape[1] * 10),
            "train_s": time.perf_counter() - t0, "recon_mse_ratio": None, "history": []}


def pixel_cnn(rendered: bool):
    """F.1.2's classifier on pixels: the INRs' source images (``rendered=False``) or the images they render."""
    def run(root: Path, dataset: str, seed: int) -> dict:
        from dng_tgn.baselines.pixel_cnn import source_images, train_pixel_classifier
        from experiments.inr2jls import BENCH

        if rendered:
            from dng_tgn.data import NFNSirenDataset
            from dng_tgn.data.rendered_inrs import INRSet, resolve_image_shape

            shape = resolve_image_shape(root, None)
            sets = {s: INRSet.from_dataset(NFNSirenDataset(root, s), shape, 30.0, desc=s) for s in ("train", "val", "test")}
            splits = {s: (d.images, d.labels) for s, d in sets.items()}
        else:
            splits = source_images(root)
        cls = BENCH["cls"]
        out = train_pixel_classifier(splits, seed=seed, steps=cls["steps"], batch_size=cls["batch_size"], lr=cls["lr"],
                                     weight_decay=cls["weight_decay"], eval_every=cls["eval_every"], patience=cls["patience"],
                                     classifier=BENCH["classifier"])
        out.update(recon_mse_ratio=None, history=[])
        return out
    return run


def weight_stats_generalization(model_kind: str):
    def run(root: Path, dataset: str, seed: int) -> dict:
        from dng_tgn.baselines.weight_stats import WeightStatsBaseline, weight_statistics
        from dng_tgn.tasks.generalization import load_cnn_zoo, load_vit_zoo
        from dng_tgn.training import kendall_tau, r2_score

        t0 = time.perf_counter()
        zoo = load_vit_zoo(root) if dataset.startswith("vit") else load_cnn_zoo(root)
        xy = {s: (weight_statistics(d.params), d.targets.numpy()) for s, d in
              (("train", zoo.train), ("val", zoo.val), ("test", zoo.test))}
        model = WeightStatsBaseline.fit_tuned(model_kind, xy["train"], xy["val"], kendall_tau, seed=seed)
        pred = model.predict(xy["test"][0])
        return {"tau": kendall_tau(pred, xy["test"][1]), "r2": r2_score(pred, xy["test"][1]), "params": None,
                "train_s": time.perf_counter() - t0, "history": []}
    return run


# ------------------------------------------------------------------------------------------------ the tables
_NEEDS = "not implemented yet: "
INR_ROWS = (
    Row("inr2jls", "inr2jls", ("bench",)),
    Row("ng_gnn", "inr2jls", ("bench",), {"encoder": {"kind": "ng_gnn", "ng_gnn": {"bidirectional": True, "dropout": 0.2}}}),
    Row("mlp", "inr2jls", ("bench",), {"encoder": {"kind": "mlp"}}),
    Row("weight_stats", direct=weight_stats_inr),
    Row("dng_encoder_only", missing=_NEEDS + "an encoder-only classifier task (MLP on s(t^L))"),
    Row("inr2jls_no_latent_gen", missing=_NEEDS + "INR2JLS with an MLP decoder instead of the Latent Generator"),
    Row("inr2inr", missing=_NEEDS + "the INR-to-INR reconstruction variant"),
    Row("nfn_np", missing=_NEEDS + "NFN layers (the nfn package is not installed; its NP layer is not written here)"),
    Row("nfn_hnp", missing=_NEEDS + "NFN HNP layers"),
    Row("pixel_cnn", direct=pixel_cnn(rendered=False)),
    Row("pixel_cnn_rendered", direct=pixel_cnn(rendered=True)),
    Row("aug_none", "inr2jls", ("bench",), {"data": {"extra_aug": 0}, "model": {"augment": False}}, seeds=2,
        datasets=("fashion",)),
    Row("aug_noise", seeds=2, datasets=("fashion",), missing=_NEEDS + "Gaussian image-noise views (F.3, std 0.06)"),
    Row("aug_rotflip", "inr2jls", ("bench",), {"model": {"augment": True}}, seeds=2, datasets=("fashion",)),
    Row("aug_both", seeds=2, datasets=("fashion",), missing=_NEEDS + "Gaussian image-noise views (F.3, std 0.06)"),
    Row("pos_emb", seeds=2, datasets=("fashion",), missing=_NEEDS + "positional embeddings in the DNG memory"),
    Row("act_emb", seeds=2, datasets=("fashion",), missing=_NEEDS + "non-linearity embeddings (Table 6)"),
    Row("rnn_cell", seeds=2, datasets=("fashion",), missing=_NEEDS + "a plain-RNN updater option"),
    Row("gru_message_as_hidden", seeds=2, datasets=("fashion",), missing=_NEEDS + "the authors' GRU argument order"),
    Row("stacked_2", seeds=2, datasets=("fashion",), missing=_NEEDS + "stacked recurrence passes"),
    Row("shared_phi_u", seeds=2, datasets=("fashion",), missing=_NEEDS + "one φ_u shared across timestamps"),
)
GENERALIZATION_ROWS = (
    Row("dng", "cnn_generalization", ("bench",)),
    Row("ng_gnn", "cnn_generalization", ("bench",), {"encoder": {"kind": "ng_gnn", "ng_gnn": {"hidden_dim": 256}}}),
    Row("mlp", "cnn_generalization", ("bench",), {"encoder": {"kind": "mlp"}}),
    Row("weight_stats_ridge", direct=weight_stats_generalization("ridge")),
    Row("statnn", direct=weight_stats_generalization("gbt")),
    Row("nfn_np", missing=_NEEDS + "NFN layers"),
    Row("nfn_hnp", missing=_NEEDS + "NFN HNP layers"),
)
TABLES = {
    "inr": Table("inr_classification", "INR classification (Tables 1, 2, 4, 6)", "test_acc", "test accuracy",
                 ("fashion", "mnist"), lambda d: f"{d}_inrs", INR_ROWS),
    "generalization": Table("generalization", "Generalization prediction (Tables 3, 7)", "tau", "Kendall τ",
                            ("cnn_fashion", "cnn_mnist", "vit_fashion"), lambda d: d, GENERALIZATION_ROWS),
}
ROW_RESULT = {"inr2jls": inr_result, "cnn_generalization": generalization_result,
              "vit_generalization": generalization_result}
MAIN_ROWS_ONLY = {"mnist": {"inr2jls", "ng_gnn", "mlp", "weight_stats", "nfn_hnp", "pixel_cnn"}}


# ------------------------------------------------------------------------------------------------ running
def applies(row: Row, dataset: str) -> bool:
    """Whether ``row`` belongs in ``dataset``'s part of the table (ablations: one dataset; MNIST: main rows)."""
    return (row.datasets is None or dataset in row.datasets) and (
        dataset not in MAIN_ROWS_ONLY or row.name in MAIN_ROWS_ONLY[dataset])


def row_file(table: Table, dataset: str, row: str, seed: int) -> Path:
    return RESULTS / "rows" / table.name / dataset / row / f"seed{seed}.json"


def run_one(table: Table, row: Row, dataset: str, seed: int, data_dir: Path, scale: str) -> dict:
    root = data_dir / table.data_folder(dataset)
    if row.direct is not None:
        return row.direct(root, dataset, seed)
    import importlib

    experiment = row.experiment
    if table.name == "generalization" and dataset.startswith("vit"):
        experiment = "vit_generalization"
    ex = importlib.import_module(f"experiments.{experiment}").ex
    updates = _merge({"seed": seed, "data": {"root": str(root)}}, dict(row.updates))
    names = tuple(n for n in row.named_configs if n != "bench" or scale == "bench")
    run = ex.run(named_configs=names, config_updates=updates, options={"--capture": "no"})
    run_dir = Path(run.observers[0].dir) if run.observers and getattr(run.observers[0], "dir", None) else None
    out = ROW_RESULT[experiment](run.result, run_dir)
    out["run_dir"] = str(run_dir) if run_dir else None
    return out


def _merge(a: dict, b: Mapping) -> dict:
    for k, v in b.items():
        a[k] = _merge(dict(a.get(k, {})), v) if isinstance(v, Mapping) else v
    return a


def run_table(table: Table, rows: list[Row], datasets: list[str], seeds: list[int] | None, data_dir: Path,
              scale: str, command: str) -> None:
    plan = [(d, r, s) for d in datasets for r in rows if r.missing is None and applies(r, d)
            for s in (seeds if seeds is not None else range(r.seeds))]
    todo = [p for p in plan if not row_file(table, p[0], p[1].name, p[2]).is_file()]
    print(f"{table.name}: {len(plan)} runs planned, {len(plan) - len(todo)} already done, {len(todo)} to run", flush=True)
    for i, (dataset, row, seed) in enumerate(todo, 1):
        if not (data_dir / table.data_folder(dataset)).exists():
            print(f"[{i}/{len(todo)}] skip {dataset}/{row.name}: no data at {data_dir / table.data_folder(dataset)}")
            continue
        print(f"[{i}/{len(todo)}] {dataset}/{row.name} seed {seed} ...", flush=True)
        t0 = time.perf_counter()
        result = run_one(table, row, dataset, seed, data_dir, scale)
        result.update(seed=seed, scale=scale, wall_s=time.perf_counter() - t0,
                      date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
        path = row_file(table, dataset, row.name, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)  # a row file exists only once it is complete
        write_report(table, scale, command)


# ------------------------------------------------------------------------------------------------ reporting
def machine() -> str:
    import os

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def collect(table: Table) -> list[dict]:
    rows = []
    for dataset in table.datasets:
        for row in table.rows:
            if not applies(row, dataset):
                continue
            files = sorted((RESULTS / "rows" / table.name / dataset / row.name).glob("seed*.json"))
            runs = [json.loads(f.read_text()) for f in files]
            entry = {"name": row.name, "dataset": dataset, "seeds": [r["seed"] for r in runs],
                     table.metric: [r[table.metric] for r in runs]}
            vals = entry[table.metric]
            entry["mean"] = statistics.fmean(vals) if vals else None
            entry["std"] = statistics.stdev(vals) if len(vals) > 1 else (0.0 if vals else None)
            entry["params"] = runs[0]["params"] if runs else None
            entry["train_s"] = statistics.fmean(r["train_s"] for r in runs) if runs else None
            for extra in ("recon_mse_ratio", "r2"):
                if runs and extra in runs[0]:
                    xs = [r[extra] for r in runs if r[extra] is not None]
                    entry[extra] = statistics.fmean(xs) if xs else None
            if not runs:
                entry["not_run"] = row.missing or "pending: run the command above"
            entry["history"] = [r.get("history", []) for r in runs]
            rows.append(entry)
    return rows


def write_report(table: Table, scale: str, command: str) -> None:
    rows = collect(table)
    RESULTS.mkdir(exist_ok=True)
    doc = {"scale": scale, "machine": machine(), "date": dt.date.today().isoformat(), "command": command,
           "rows": [{k: v for k, v in r.items() if k != "history"} for r in rows]}
    (RESULTS / f"{table.name}.json").write_text(json.dumps(doc, indent=1))
    fig = _figure(table, rows)
    lines = [f"# {table.title}", "", f"Scale `{scale}`; machine: {doc['machine']}; date {doc['date']}.",
             f"Command: `{command}`. Mean ± std over seeds; rows without a number were not run (reason given).", ""]
    extra = "recon MSE ÷ mean-image MSE" if table.metric == "test_acc" else "R²"
    lines += [f"| dataset | row | {table.metric_label} | seeds | params | train s | {extra} |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if r["mean"] is None:
            lines.append(f"| {r['dataset']} | {r['name']} | not run: {r.get('not_run', 'pending')} | | | | |")
            continue
        scale_pct = 100 if table.metric == "test_acc" else 1
        fmt = "{:.2f}" if table.metric == "test_acc" else "{:.3f}"
        val = f"{fmt.format(r['mean'] * scale_pct)} ± {fmt.format(r['std'] * scale_pct)}"
        ex = r.get("recon_mse_ratio" if table.metric == "test_acc" else "r2")
        lines.append(f"| {r['dataset']} | {r['name']} | {val} | {len(r['seeds'])} | {r['params'] or '—'} | "
                     f"{r['train_s']:.0f} | {'—' if ex is None else f'{ex:.3f}'} |")
    if fig:
        lines += ["", f"![validation curves]({fig.name})", "",
                  "The curves are validation metrics during training (what early stopping sees), one line per seed."]
    (RESULTS / f"{table.name}.md").write_text("\n".join(lines) + "\n")


def _figure(table: Table, rows: list[dict]) -> Path | None:
    curves = [r for r in rows if any(r["history"])]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(curves)
    cols = min(4, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(3.2 * cols, 2.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, r in zip(axes.flat, curves):
        for h in r["history"]:
            if h:
                ax.plot([p[0] for p in h], [p[1] for p in h], lw=1)
        ax.set_title(f"{r['dataset']}/{r['name']}", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.set_ylabel(f"val {table.metric_label}", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    path = RESULTS / f"{table.name}_curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("--scale", default="bench", choices=("bench", "default"),
                   help="bench: the experiments' `bench` named config; default: their small default config")
    p.add_argument("--data-dir", type=Path, default=Path(".data/bench"), help="folder holding each dataset's folder")
    p.add_argument("--datasets", help="comma-separated subset of the table's datasets")
    p.add_argument("--rows", help="comma-separated subset of rows")
    p.add_argument("--seeds", help="comma-separated seeds (default: each row's own count, from 0)")
    p.add_argument("--report", action="store_true", help="only re-render the table from finished runs")
    args = p.parse_args(argv)
    table = TABLES[args.table]
    command = "python -m experiments.tables " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = list(table.rows)
    if args.rows:
        wanted = args.rows.split(",")
        unknown = sorted(set(wanted) - {r.name for r in rows})
        if unknown:
            p.error(f"unknown rows {unknown}; valid: {', '.join(r.name for r in rows)}")
        rows = [r for r in rows if r.name in wanted]
    datasets = args.datasets.split(",") if args.datasets else list(table.datasets)
    bad = sorted(set(datasets) - set(table.datasets))
    if bad:
        p.error(f"unknown datasets {bad}; valid: {', '.join(table.datasets)}")
    if not args.report:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        run_table(table, rows, datasets, seeds, args.data_dir, args.scale, command)
    write_report(table, args.scale, command)
    print(f"wrote {RESULTS / (table.name + '.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
