"""experiments/tables.py: rows run once each, resume by skipping finished runs, and render the issue's schema;
the pixel-space reference classifier learns what it should."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import experiments.tables as tables  # noqa: E402
from tests.test_downstream_experiments import inr_tiny, write_inr_set  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def results(tmp_path, monkeypatch, runs_root):
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def tiny_table(tmp_path: Path) -> tuple[tables.Table, Path]:
    data_dir = tmp_path / "data"
    write_inr_set(data_dir / "toy_inrs")
    cfg = inr_tiny("unused")
    cfg.pop("data")
    rows = (tables.Row("inr2jls", "inr2jls", (), cfg, seeds=2), tables.Row("weight_stats", direct=tables.weight_stats_inr),
            tables.Row("later", missing="not implemented yet: a row for later"))
    table = tables.Table("toy_inr", "toy", "test_acc", "test accuracy", ("toy",), lambda d: f"{d}_inrs", rows)
    return table, data_dir


def test_rows_run_once_and_render_the_schema(tmp_path, results):
    table, data_dir = tiny_table(tmp_path)
    runnable = [r for r in table.rows if r.missing is None]
    tables.run_table(table, runnable, ["toy"], None, data_dir, "default", "cmd")
    files = sorted(p.relative_to(results) for p in results.rglob("seed*.json"))
    assert [str(f) for f in files] == [f"rows/toy_inr/toy/inr2jls/seed{s}.json" for s in (0, 1)] + \
        [f"rows/toy_inr/toy/weight_stats/seed{s}.json" for s in (0, 1, 2)]
    doc = json.loads((results / "toy_inr.json").read_text())
    assert {"scale", "machine", "date", "command", "rows"} <= set(doc)
    by_name = {r["name"]: r for r in doc["rows"]}
    inr = by_name["inr2jls"]
    assert inr["seeds"] == [0, 1] and len(inr["test_acc"]) == 2 and inr["params"] > 0 and inr["train_s"] > 0
    assert inr["mean"] == pytest.approx(sum(inr["test_acc"]) / 2) and inr["recon_mse_ratio"] > 0
    assert by_name["later"]["not_run"].startswith("not implemented yet") and by_name["later"]["mean"] is None
    md = (results / "toy_inr.md").read_text()
    assert "| toy | inr2jls |" in md and "not run: not implemented yet" in md
    # a rerun finds every run done and changes nothing
    stamp = {f: (results / f).stat().st_mtime_ns for f in files}
    tables.run_table(table, runnable, ["toy"], None, data_dir, "default", "cmd")
    assert {f: (results / f).stat().st_mtime_ns for f in files} == stamp


def test_a_row_with_the_same_config_reports_the_other_rows_runs(tmp_path, results):
    """``same_as``: never run twice, listed with the source row's numbers (control: a normal row is planned)."""
    table, data_dir = tiny_table(tmp_path)
    stats = next(r for r in table.rows if r.name == "weight_stats")
    alias = tables.Row("weight_stats_again", direct=tables.weight_stats_inr, same_as="weight_stats")
    table = tables.Table(table.name, table.title, table.metric, table.metric_label, table.datasets,
                         table.data_folder, (stats, alias))
    tables.run_table(table, [stats, alias], ["toy"], None, data_dir, "default", "cmd")
    assert not (results / "rows" / "toy_inr" / "toy" / "weight_stats_again").exists()
    by_name = {r["name"]: r for r in json.loads((results / "toy_inr.json").read_text())["rows"]}
    assert by_name["weight_stats_again"]["test_acc"] == by_name["weight_stats"]["test_acc"]
    assert len(by_name["weight_stats"]["test_acc"]) == 3 and by_name["weight_stats_again"]["same_as"] == "weight_stats"
    assert "weight_stats_again (= weight_stats: the same runs)" in (results / "toy_inr.md").read_text()


def test_unknown_rows_and_datasets_are_named(capsys):
    with pytest.raises(SystemExit):
        tables.main(["inr", "--rows", "inr2jls,nope", "--report"])
    assert "unknown rows ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables.main(["inr", "--datasets", "cifar", "--report"])
    assert "unknown datasets ['cifar']" in capsys.readouterr().err


def test_pixel_classifier_learns_and_shuffled_labels_do_not():
    from dng_tgn.baselines.pixel_cnn import train_pixel_classifier

    g = torch.Generator().manual_seed(0)

    def split(n, shuffle=False):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 1, 6, 6, generator=g) * 0.3
        x[y == 1, :, :3] += 1.0  # class 1 is bright in the top half
        return x, (y[torch.randperm(n, generator=g)] if shuffle else y)

    cls = dict(conv_channels=4, hidden=16, conv_dropout=0.0, mlp_dropout=0.0)
    kw = dict(seed=0, steps=120, batch_size=32, lr=3e-3, weight_decay=0.0, eval_every=40, classifier=cls)
    good = train_pixel_classifier({"train": split(256), "val": split(64), "test": split(128)}, **kw)
    assert good["test_acc"] >= 0.9 and good["params"] > 0
    bad = train_pixel_classifier({"train": split(256, shuffle=True), "val": split(64), "test": split(128)}, **kw)
    assert bad["test_acc"] <= 0.7


def test_runs_under_a_previous_default_are_reported_apart(tmp_path, results, monkeypatch):
    """Runs moved to ``_previous_defaults/<key>`` get their own section and never enter the current row (control:
    a run in the row's own folder does)."""
    table, _ = tiny_table(tmp_path)
    monkeypatch.setattr(tables, "PREVIOUS_DEFAULTS", {"toy_inr": {"old_order": "the old order, for the test"}})
    old = results / "rows" / "toy_inr" / "_previous_defaults" / "old_order" / "toy" / "inr2jls"
    new = results / "rows" / "toy_inr" / "toy" / "inr2jls"
    for folder, acc in ((old, 0.25), (new, 0.75)):
        folder.mkdir(parents=True)
        (folder / "seed0.json").write_text(json.dumps({"seed": 0, "test_acc": acc, "params": 1, "train_s": 1.0,
                                                       "recon_mse_ratio": None, "history": []}))
    tables.write_report(table, "default", "cmd")
    doc = json.loads((results / "toy_inr.json").read_text())
    assert next(r for r in doc["rows"] if r["name"] == "inr2jls")["test_acc"] == [0.75]
    (block,) = doc["previous_defaults"]
    assert block["key"] == "old_order" and [(r["name"], r["test_acc"]) for r in block["rows"]] == [("inr2jls", [0.25])]
    md = (results / "toy_inr.md").read_text()
    assert "## Runs under a previous default: `old_order`" in md and "| toy | inr2jls | 25.00 ± 0.00 | 1 |" in md


def test_a_rerun_resumes_the_unfinished_run_of_exactly_its_row(tmp_path, monkeypatch):
    """``unfinished_run`` finds a killed run of the same configuration that left a checkpoint, and nothing else:
    not another seed's or row's run, not a completed run, not a run without checkpoints."""
    from sacred.initialize import create_run

    from experiments.inr2jls import ex

    monkeypatch.setenv("DNG_RUNS_DIR", str(tmp_path / "runs"))
    base = {"seed": 0, "data": {"root": "some/inrs"}}
    row = {r.name: r for r in tables.INR_ROWS}["ng_gnn"]

    def fake_run(run_id, updates, status, checkpoint=True):
        d = tmp_path / "runs" / "inr2jls" / str(run_id)
        d.mkdir(parents=True)
        cfg = create_run(ex, ex.default_command, config_updates=updates, named_configs=("bench",)).config
        (d / "config.json").write_text(json.dumps(cfg, default=str))
        (d / "run.json").write_text(json.dumps({"status": status}))
        if checkpoint:
            (d / "inr2jls_recon.step00000010.pt").write_bytes(b"")
        return d

    want = tables._merge(dict(base), dict(row.updates))
    fake_run(1, tables._merge({"seed": 1, "data": {"root": "some/inrs"}}, dict(row.updates)), "RUNNING")  # seed 1
    fake_run(2, dict(base), "RUNNING")  # the default row, same seed
    fake_run(3, want, "RUNNING", checkpoint=False)  # killed before its first checkpoint
    assert tables.unfinished_run(ex, ("bench",), want) is None
    killed = fake_run(4, want, "INTERRUPTED")
    assert tables.unfinished_run(ex, ("bench",), want) == killed
    (killed / "run.json").write_text(json.dumps({"status": "COMPLETED"}))  # control: a finished run is not resumed
    assert tables.unfinished_run(ex, ("bench",), want) is None


def _tuned_table(tmp_path: Path):
    (tmp_path / "data" / "zoo").mkdir(parents=True)
    row = tables.Row("dng", "cnn_generalization", (), tune=tables.LR_GRID)
    table = tables.Table("toy_gen", "toy", "tau", "Kendall τ", ("zoo",), lambda d: d, (row,), val_metric="val_tau")
    return table, row, tmp_path / "data"


def _fake_runs(monkeypatch, best_lr: float) -> list[tuple[int, float]]:
    """run_one replaced by a run whose validation τ peaks at ``best_lr``; returns the (seed, lr) of every run."""
    calls = []

    def run_one(table, row, dataset, seed, data_dir, scale, extra=None):
        lr = (extra or {}).get("optim", {}).get("lr", 1e-3)
        calls.append((seed, lr))
        return {"tau": 0.5 + seed / 100 + lr, "val_tau": 0.9 - abs(lr - best_lr), "r2": 0.5, "params": 7,
                "train_s": 1.0, "history": [], "predictions": {"model_id": [0, 1, 2], "target": [0.1, 0.2, 0.3],
                                                               "prediction": [0.1, 0.3, 0.2]}}
    monkeypatch.setattr(tables, "run_one", run_one)
    return calls


def _untuned(results: Path, seed: int, val_tau: float) -> None:
    folder = results / "rows" / "toy_gen" / "zoo" / "dng"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed{seed}.json").write_text(json.dumps({"seed": seed, "tau": 0.4, "val_tau": val_tau, "r2": 0.5,
                                                         "params": 7, "train_s": 1.0, "history": []}))


def test_a_tuned_row_chooses_its_learning_rate_on_validation_and_keeps_the_untuned_runs_apart(tmp_path, results,
                                                                                           monkeypatch):
    """The grid runs on seed 0 (the untuned seed-0 run is the default's point, not rerun); the best validation τ
    configures every seed; untuned runs of another value move to _previous_defaults, never deleted."""
    table, row, data_dir = _tuned_table(tmp_path)
    monkeypatch.setattr(tables, "PREVIOUS_DEFAULTS", {"toy_gen": {"untuned_lr": "lr 1e-3 for the test"}})
    _untuned(results, 0, 0.5)
    _untuned(results, 1, 0.6)
    calls = _fake_runs(monkeypatch, best_lr=3e-3)
    tables.run_table(table, [row], ["zoo"], [0, 1, 2], data_dir, "default", "cmd")
    assert calls == [(0, 3e-4), (0, 3e-3), (1, 3e-3), (2, 3e-3)]
    folder = results / "rows" / "toy_gen" / "zoo" / "dng"
    runs = {s: json.loads((folder / f"seed{s}.json").read_text()) for s in (0, 1, 2)}
    assert all(r["tuned"]["chosen"] == 3e-3 for r in runs.values())
    assert runs[0]["tau"] == pytest.approx(0.503) and "tuning run" in runs[0]["provenance"]
    assert (folder / "seed0.predictions.csv").is_file()
    kept = results / "rows" / "toy_gen" / "_previous_defaults" / "untuned_lr" / "zoo" / "dng"
    assert sorted(p.name for p in kept.glob("seed*.json")) == ["seed0.json", "seed1.json"]
    assert json.loads((kept / "seed1.json").read_text())["tau"] == 0.4
    doc = json.loads((results / "toy_gen.json").read_text())
    (entry,) = doc["rows"]
    assert entry["tuned"]["ran_with"] == [3e-3] and entry["tuned"]["val"] == pytest.approx([0.8973, 0.5, 0.9])
    assert doc["previous_defaults"][0]["rows"][0]["tau"] == [0.4, 0.4]
    assert "optim.lr 0.003 [0.0003: 0.897, 0.001: 0.500, 0.003: 0.900]" in (results / "toy_gen.md").read_text()
    calls.clear()  # a rerun finds everything done
    tables.run_table(table, [row], ["zoo"], [0, 1, 2], data_dir, "default", "cmd")
    assert calls == []


def test_when_the_default_wins_the_untuned_runs_stay_in_the_table(tmp_path, results, monkeypatch):
    """Control of the test above: with the default best on validation, its earlier runs are the row's runs."""
    table, row, data_dir = _tuned_table(tmp_path)
    _untuned(results, 0, 0.95)
    _untuned(results, 1, 0.6)
    calls = _fake_runs(monkeypatch, best_lr=1e-3)
    tables.run_table(table, [row], ["zoo"], [0, 1, 2], data_dir, "default", "cmd")
    assert calls == [(0, 3e-4), (0, 3e-3), (2, 1e-3)]
    folder = results / "rows" / "toy_gen" / "zoo" / "dng"
    assert [json.loads((folder / f"seed{s}.json").read_text())["tau"] for s in (0, 1)] == [0.4, 0.4]
    assert not (results / "rows" / "toy_gen" / "_previous_defaults").exists()
    row_line = next(x for x in (results / "toy_gen.md").read_text().splitlines() if x.startswith("| zoo | dng |"))
    assert "optim.lr 0.001 [0.0003: 0.899, 0.001: 0.950, 0.003: 0.898]" in row_line and "untuned" not in row_line


def test_a_tuning_grid_must_hold_its_default():
    with pytest.raises(ValueError, match="3 values including its default"):
        tables.Tuning("optim.lr", (1e-4, 3e-4, 3e-3), default=1e-3)


def test_a_collapsed_grid_run_never_wins_the_tuning(tmp_path, results, monkeypatch):
    """A run whose validation τ was never finite (a constant predictor: val_tau None) scores NaN and loses, also
    as the grid's first value (compared with NaN, max keeps whichever came first). Control: finite, it wins."""
    table, row, data_dir = _tuned_table(tmp_path)
    calls = _fake_runs(monkeypatch, best_lr=3e-3)
    fake = tables.run_one

    def collapsed_first(table, row, dataset, seed, data_dir, scale, extra=None):
        out = fake(table, row, dataset, seed, data_dir, scale, extra)
        if (extra or {}).get("optim", {}).get("lr") == 3e-4:
            out.update(val_tau=None, history=[[1, float("nan")], [2, float("nan")]])
        return out
    monkeypatch.setattr(tables, "run_one", collapsed_first)
    tuned = tables.tune_row(table, row, "zoo", data_dir, "default")
    assert tuned["chosen"] == 3e-3 and math.isnan(tuned["val"][0]) and len(calls) == 3
    old = {"val_tau": None, "history": [[1, float("nan")], [2, 0.7], [3, 0.6]]}  # an untuned file: history only
    assert tables.validation_score(table, {"history": old["history"]}) == 0.7
    assert math.isnan(tables.validation_score(table, old))  # val_tau recorded as None: no finite validation
    monkeypatch.setattr(tables, "run_one", fake)  # control: the same grid with a finite 3e-4 run
    for f in (results / "rows" / "toy_gen" / "zoo" / "dng" / "tuning").glob("*"):
        f.unlink()
    assert tables.tune_row(table, row, "zoo", data_dir, "default")["chosen"] == 3e-3  # still the best
    monkeypatch.setattr(tables, "run_one", lambda *a, **k: {**fake(*a, **k), "val_tau": 0.99})
    for f in (results / "rows" / "toy_gen" / "zoo" / "dng" / "tuning").glob("*"):
        f.unlink()
    assert tables.tune_row(table, row, "zoo", data_dir, "default")["chosen"] == 3e-4  # finite and tied: the first


def test_a_move_killed_after_its_copy_is_finished_by_the_rerun(tmp_path, results, monkeypatch):
    """settle_tuned_seeds killed between copying an untuned run to _previous_defaults and removing it: the rerun
    completes the move instead of refusing (FileExistsError on every rerun). Control: a different kept run is
    never overwritten."""
    table, row, data_dir = _tuned_table(tmp_path)
    monkeypatch.setattr(tables, "PREVIOUS_DEFAULTS", {"toy_gen": {"untuned_lr": "lr 1e-3 for the test"}})
    _untuned(results, 1, 0.6)
    src = results / "rows" / "toy_gen" / "zoo" / "dng" / "seed1.json"
    dst = tables.previous_default_file(table, "untuned_lr", "zoo", "dng", 1)
    tables._copy_row(src, dst, "killed before the unlink")  # the state a kill leaves
    tuned = {"key": "optim.lr", "grid": list(tables.LR_GRID.values), "val": [0.1, 0.2, 0.9], "chosen": 3e-3,
             "seed": 0}
    tables._copy_row(src, tables.tuning_file(table, "zoo", "dng", tables.LR_GRID, 3e-3), "toy grid run")
    tables.settle_tuned_seeds(table, row, "zoo", tuned)
    assert not src.exists() and json.loads(dst.read_text())["tau"] == 0.4
    _untuned(results, 1, 0.6)  # control: another untuned seed-1 run where one is kept already
    data = json.loads(src.read_text())
    src.write_text(json.dumps({**data, "tau": 0.41}))
    with pytest.raises(FileExistsError):
        tables.settle_tuned_seeds(table, row, "zoo", tuned)
    assert src.exists() and json.loads(dst.read_text())["tau"] == 0.4


def test_a_diverging_learning_rate_counts_as_tried_and_the_report_marks_an_incomplete_grid(tmp_path, results,
                                                                                         monkeypatch):
    """A grid run whose loss diverges is written as tried (NaN score) and loses; the table goes on. Before the grid
    is complete the report marks the row untuned (control: once complete, the mark is gone)."""
    table, row, data_dir = _tuned_table(tmp_path)
    _untuned(results, 0, 0.5)
    tables.write_report(table, "default", "cmd")
    assert "**untuned** (optim.lr 0.001); grid pending" in (results / "toy_gen.md").read_text()
    calls = _fake_runs(monkeypatch, best_lr=3e-3)
    fake = tables.run_one

    def diverging(table, row, dataset, seed, data_dir, scale, extra=None):
        if (extra or {}).get("optim", {}).get("lr") == 3e-3:
            calls.append((seed, 3e-3))
            raise FloatingPointError("toy: training loss became nan at step 3")
        return fake(table, row, dataset, seed, data_dir, scale, extra)
    monkeypatch.setattr(tables, "run_one", diverging)
    tables.run_table(table, [row], ["zoo"], [0, 1], data_dir, "default", "cmd")
    grid = results / "rows" / "toy_gen" / "zoo" / "dng" / "tuning"
    assert "diverged" in json.loads((grid / "optim.lr=0.003.json").read_text())
    runs = [json.loads((results / "rows" / "toy_gen" / "zoo" / "dng" / f"seed{s}.json").read_text()) for s in (0, 1)]
    assert [r["tuned"]["chosen"] for r in runs] == [3e-4, 3e-4]
    assert calls == [(0, 3e-4), (0, 3e-3), (1, 3e-4)]
    md = (results / "toy_gen.md").read_text()
    assert "untuned" not in md.split("| zoo | dng |")[1].split("\n")[0]


def test_a_tuned_pixel_row_trains_at_the_grid_value(tmp_path, monkeypatch):
    """The INR grid reaches the direct pixel-CNN rows (control: untuned, they train at the bench default)."""
    import dng_tgn.baselines.pixel_cnn as pc

    seen = []
    monkeypatch.setattr(pc, "source_images", lambda root: {s: (None, None) for s in ("train", "val", "test")})
    monkeypatch.setattr(pc, "train_pixel_classifier", lambda splits, **kw: seen.append(kw["lr"]) or
                        {"test_acc": 0.5, "params": 1, "train_s": 1.0, "best_step": 1, "best_val": 0.4})
    row = next(r for r in tables.INR_ROWS if r.name == "pixel_cnn")
    table = tables.TABLES["inr"]
    out = tables.run_one(table, row, "fashion", 0, tmp_path, "bench", tables.INR_LR_GRID.updates(3e-4))
    tables.run_one(table, row, "fashion", 0, tmp_path, "bench")
    from experiments.inr2jls import BENCH

    assert seen == [3e-4, BENCH["cls"]["lr"]] and out["val_acc"] == 0.4 and BENCH["cls"]["lr"] != 3e-4
    assert tables.INR_LR_GRID.updates(3e-4) == {"cls": {"lr": 3e-4}, "recon": {"lr": 3e-4}}


def test_runs_not_at_the_grids_best_value_are_reported_untuned(tmp_path, results):
    """A complete grid whose best value the seeds have not been run at yet (a report between tuning and the seeds)
    is still marked pending; control: seeds at the best value are not."""
    table, row, _ = _tuned_table(tmp_path)
    grid = results / "rows" / "toy_gen" / "zoo" / "dng" / "tuning"
    grid.mkdir(parents=True)
    for lr, val in ((3e-4, 0.5), (1e-3, 0.6), (3e-3, 0.7)):
        (grid / f"optim.lr={lr}.json").write_text(json.dumps({"val_tau": val, "tau": 0.1}))
    old = [{"seed": 0, "tau": 0.4}]  # no "tuned": ran at the default 1e-3
    assert tables._tuning_summary(table, row, "zoo", old)["pending"]
    new = [{"seed": 0, "tau": 0.4, "tuned": {"chosen": 3e-3}}]
    assert not tables._tuning_summary(table, row, "zoo", new)["pending"]
