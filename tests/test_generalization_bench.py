"""Issue #12: collapse detection, the paired bootstrap, the generalization table's `paired` schema, ViT split
fractions, and the CNN Wild Park (mixed architectures, seen vs unseen)."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import experiments.tables as tables  # noqa: E402
from dng_tgn.training import collapse_check, kendall_tau, paired_bootstrap_tau  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ collapse
def test_a_constant_predictor_is_flagged_loudly(capsys):
    y = np.linspace(0.1, 0.9, 50)
    pred = 0.5 + 1e-4 * np.sin(np.arange(50))  # near-constant: R² ≈ 0, ratio ≈ 1e-4
    with pytest.warns(RuntimeWarning, match="COLLAPSE WARNING"):
        out = collapse_check(pred, y, "toy")
    assert out["collapsed"] and out["std_ratio"] < 1e-3 and abs(out["r2"]) < 0.05
    assert "COLLAPSE WARNING: toy" in capsys.readouterr().err  # the log line as well as the warning


def test_a_spread_predictor_is_not_flagged(capsys):
    # negative control: a noisy but spread predictor (ratio ~1) passes without a warning
    rng = np.random.default_rng(0)
    y = np.linspace(0.1, 0.9, 50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = collapse_check(y + rng.normal(0, 0.05, 50), y, "toy")
    assert not out["collapsed"] and out["std_ratio"] > 0.9 and out["r2"] > 0.8
    assert "COLLAPSE" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ bootstrap
def _synthetic(n=200, seeds=2, noise_a=0.05, noise_b=0.3):
    rng = np.random.default_rng(1)
    y = rng.uniform(0.1, 0.9, n)
    a = np.stack([y + rng.normal(0, noise_a, n) for _ in range(seeds)])
    b = np.stack([y + rng.normal(0, noise_b, n) for _ in range(seeds)])
    return a, b, y


def test_paired_bootstrap_finds_the_better_predictor():
    a, b, y = _synthetic()
    res = paired_bootstrap_tau(a, b, y, n_boot=100)
    full = np.mean([kendall_tau(a[s], y) - kendall_tau(b[s], y) for s in range(len(a))])
    assert res["delta_tau"] == pytest.approx(full)
    lo, hi = res["ci95"]
    assert 0 < lo < res["delta_tau"] < hi  # clearly better: the whole interval is above 0
    # and the other way round, the interval is below 0
    assert paired_bootstrap_tau(b, a, y, n_boot=100)["ci95"][1] < 0


def test_paired_bootstrap_of_identical_predictors_is_zero():
    a, _, y = _synthetic()
    res = paired_bootstrap_tau(a, a.copy(), y, n_boot=50)
    assert res["delta_tau"] == 0 and res["ci95"] == [0.0, 0.0]
    # two equally good but different predictors: an interval that straddles 0
    rng = np.random.default_rng(5)
    a2 = np.stack([y + rng.normal(0, 0.05, len(y)) for _ in range(len(a))])
    lo, hi = paired_bootstrap_tau(a, a2, y, n_boot=100)["ci95"]
    assert lo < 0 < hi and hi - lo < 0.05


def test_paired_bootstrap_refuses_unpaired_inputs():
    a, b, y = _synthetic()
    with pytest.raises(ValueError, match="seed-matched"):
        paired_bootstrap_tau(a[:1], b, y)
    with pytest.raises(ValueError, match="seed-matched"):
        paired_bootstrap_tau(a, b, y[:-1])


# ------------------------------------------------------------------------------------------------ the table
def _direct(noise):
    def run(root, dataset, seed):
        rng = np.random.default_rng(100 + seed)
        y = np.random.default_rng(7).uniform(0.1, 0.9, 120)  # the same test nets for every row and seed
        pred = y + rng.normal(0, noise, len(y)) if noise is not None else np.full(len(y), 0.5)
        check = collapse_check(pred, y, "toy")
        return {"tau": kendall_tau(pred, y), "r2": 0.0, "params": None, "train_s": 1.0, "history": [],
                "val_r2": check["r2"], "std_ratio": check["std_ratio"], "collapsed": check["collapsed"],
                "predictions": {"model_id": list(range(500, 500 + len(y))), "target": y.tolist(),
                                "prediction": pred.tolist()}}
    return run


def test_generalization_table_has_the_paired_schema(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(tables, "PAIRED_BOOTSTRAP", 100)  # the tables use 1,000; 100 shows the shape
    (tmp_path / "data" / "toy").mkdir(parents=True)
    rows = (tables.Row("dng", direct=_direct(0.02), seeds=2), tables.Row("weak", direct=_direct(0.3), seeds=2),
            tables.Row("flat", direct=_direct(None), seeds=2),
            tables.Row("mlp", direct=_direct(0.3), not_applicable={"toy": "not applicable: mixed architectures"}))
    table = tables.Table("toy_gen", "toy", "tau", "Kendall τ", ("toy",), lambda d: d, rows)
    with pytest.warns(RuntimeWarning, match="COLLAPSE"):  # the constant row
        tables.run_table(table, list(rows), ["toy"], None, tmp_path / "data", "default", "cmd")
    assert not (tmp_path / "results" / "rows" / "toy_gen" / "toy" / "mlp").exists()  # never run
    saved = pd.read_csv(tmp_path / "results" / "rows" / "toy_gen" / "toy" / "dng" / "seed0.predictions.csv")
    assert saved["model_id"].tolist() == list(range(500, 620))  # each prediction names its net
    tables.write_report(table, "default", "cmd", paired=True)
    doc = json.loads((tmp_path / "results" / "toy_gen.json").read_text())
    assert {"scale", "machine", "date", "command", "rows", "paired"} <= set(doc)
    for r in doc["rows"]:
        assert {"name", "dataset", "seeds", "tau", "mean", "std", "params", "train_s"} <= set(r)
    by = {r["name"]: r for r in doc["rows"]}
    assert by["mlp"]["not_run"].startswith("not applicable") and by["flat"]["collapsed_seeds"] == [0, 1]
    paired = {p["b"]: p for p in doc["paired"]}
    assert set(paired) == {"weak", "flat"} and all(p["a"] == "dng" and p["dataset"] == "toy" for p in paired.values())
    assert paired["weak"]["ci95"][0] > 0 and paired["weak"]["seeds"] == [0, 1]
    md = (tmp_path / "results" / "toy_gen.md").read_text()
    assert "Paired bootstrap" in md and "**COLLAPSED**" in md and "not run: not applicable" in md
    # a later report without recomputation keeps the paired section
    tables.write_report(table, "default", "cmd")
    assert json.loads((tmp_path / "results" / "toy_gen.json").read_text())["paired"] == doc["paired"]


def _paired_files(tmp_path, monkeypatch, files: dict):
    """``files``: (row, seed) -> DataFrame, written where run_table puts predictions; returns a two-row table."""
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    for (row, seed), df in files.items():
        folder = tmp_path / "results" / "rows" / "toy_pair" / "toy" / row
        folder.mkdir(parents=True, exist_ok=True)
        df.to_csv(folder / f"seed{seed}.predictions.csv", index_label="index")
    rows = (tables.Row("dng", direct=_direct(0.02)), tables.Row("other", direct=_direct(0.3)))
    return tables.Table("toy_pair", "toy", "tau", "Kendall τ", ("toy",), lambda d: d, rows)


def _tied_nets(n=120):
    """Test nets whose accuracies tie (as accuracies on n_eval images do), two methods that share each net's bias."""
    rng = np.random.default_rng(0)
    y = np.round(rng.uniform(0.1, 0.9, n), 1)  # 9 distinct values over 120 nets
    hard = rng.normal(0, 0.15, n)  # a per-net error both methods make: what pairing cancels
    ids = rng.permutation(np.arange(1000, 1000 + n))
    a = pd.DataFrame({"model_id": ids, "target": y, "prediction": y + hard + rng.normal(0, 0.03, n)})
    b = pd.DataFrame({"model_id": ids, "target": y, "prediction": y + hard + rng.normal(0, 0.06, n)})
    return a, b


def test_paired_bootstrap_pairs_each_net_with_itself_by_id(tmp_path, monkeypatch):
    a, b = _tied_nets()
    # other's file lists its nets in another order: each position holds another net with the *same* target (a
    # rotation inside every group of tied accuracies), so the targets agree row by row
    perm = np.arange(len(a))
    for v in np.unique(a.target):
        g = np.flatnonzero(a.target.to_numpy() == v)
        perm[g] = np.roll(g, 1)
    shuffled = b.iloc[perm].reset_index(drop=True)
    assert np.array_equal(shuffled.target, a.target) and (shuffled.model_id != a.model_id).all()
    table = _paired_files(tmp_path / "s", monkeypatch, {("dng", 0): a, ("other", 0): shuffled})
    got = tables.paired_comparisons(table, n_boot=200)[0]
    # the same as with other's rows in dng's order
    table = _paired_files(tmp_path / "o", monkeypatch, {("dng", 0): a, ("other", 0): b})
    same = tables.paired_comparisons(table, n_boot=200)[0]
    assert (got["delta_tau"], got["ci95"], got["n_nets"]) == (same["delta_tau"], same["ci95"], 120)
    # negative control: the earlier rule (rows paired by position, accepted because the targets agree) pairs each
    # of dng's nets with another net of other's; the per-net error no longer cancels and the interval triples
    wrong = paired_bootstrap_tau(a.prediction, shuffled.prediction, a.target, n_boot=200, seed=0)
    width = lambda r: r["ci95"][1] - r["ci95"][0]  # noqa: E731
    assert width(wrong) > 2 * width(got)
    # a full shuffle of both files' rows changes nothing either
    table = _paired_files(tmp_path / "f", monkeypatch, {("dng", 0): a.sample(frac=1, random_state=1),
                                                        ("other", 0): b.sample(frac=1, random_state=2)})
    assert tables.paired_comparisons(table, n_boot=200)[0]["ci95"] == same["ci95"]


def test_paired_bootstrap_refuses_different_test_nets(tmp_path, monkeypatch):
    a, b = _tied_nets()
    other = b.copy()
    other.loc[3, "model_id"] = 5  # one net of other's test set is not in dng's
    table = _paired_files(tmp_path / "ids", monkeypatch, {("dng", 0): a, ("other", 0): other})
    with pytest.raises(ValueError, match=r"toy: rows 'dng' and 'other' were tested on different nets .* has 1 "
                                         r"nets that set lacks, e.g. model_id \[5\]"):
        tables.paired_comparisons(table, n_boot=10)
    other = b.copy()
    other.loc[3, "target"] += 0.05  # same ids, another target: another zoo
    table = _paired_files(tmp_path / "y", monkeypatch, {("dng", 0): a, ("other", 0): other})
    with pytest.raises(ValueError, match=r"toy: rows 'dng' and 'other' disagree on the targets .* read different zoos"):
        tables.paired_comparisons(table, n_boot=10)
    other = pd.concat([b, b.iloc[:1]])
    table = _paired_files(tmp_path / "dup", monkeypatch, {("dng", 0): a, ("other", 0): other})
    with pytest.raises(ValueError, match="appears more than once"):
        tables.paired_comparisons(table, n_boot=10)


def test_prediction_files_without_ids_are_skipped_by_name(tmp_path, monkeypatch, capsys):
    a, b = _tied_nets()
    old = b.drop(columns="model_id")  # written before predictions named their nets
    table = _paired_files(tmp_path, monkeypatch, {("dng", 0): a, ("other", 0): old, ("dng", 1): a, ("other", 1): b})
    res = tables.paired_comparisons(table, n_boot=10)
    assert len(res) == 1 and res[0]["seeds"] == [1]  # only the seed both rows name their nets in
    err = capsys.readouterr().err
    assert "WARNING" in err and str(Path("other") / "seed0.predictions.csv") in err and "seed0.json" in err
    # without any file with ids, no comparison at all rather than a guessed one
    table = _paired_files(tmp_path / "none", monkeypatch, {("dng", 0): a, ("other", 0): old})
    assert tables.paired_comparisons(table, n_boot=10) == []


def test_generalization_data_ids_name_each_net_once():
    from dng_tgn.data import StateDictSet
    from dng_tgn.tasks.generalization import GeneralizationData

    sets = [StateDictSet({"w": torch.zeros(n, 2)}, torch.zeros(n)) for n in (4, 2, 3)]
    data = GeneralizationData(*sets, num_outputs=1, num_slots=1, ids={"test": [7, 3, 9]})
    assert data.ids["test"].tolist() == [7, 3, 9] and data.ids["train"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="not unique"):
        GeneralizationData(*sets, num_outputs=1, num_slots=1, ids={"test": [7, 7, 9]})
    with pytest.raises(ValueError, match="2 ids for 3 networks"):
        GeneralizationData(*sets, num_outputs=1, num_slots=1, ids={"test": [7, 9]})
    with pytest.raises(ValueError, match="unknown splits"):
        GeneralizationData(*sets, num_outputs=1, num_slots=1, ids={"holdout": [1]})


# ------------------------------------------------------------------------------------------------ ViT split
def test_vit_split_fractions():
    from dng_tgn.data.vit_zoo import vit_split

    s = vit_split(600, 0, (0.5, 0.1, 0.4))
    assert [len(s[k]) for k in ("train", "val", "test")] == [300, 60, 240]
    assert len(np.unique(np.concatenate([s["train"], s["val"], s["test"]]))) == 600
    assert [len(vit_split(10)[k]) for k in ("train", "val", "test")] == [8, 1, 1]  # App. E.2's default
    with pytest.raises(ValueError, match="summing to 1"):
        vit_split(10, 0, (0.5, 0.5, 0.5))


def test_vit_zoo_reads_the_recorded_split_and_checks_the_split_column(tmp_path):
    from dng_tgn.data import ViTZooDataset
    from dng_tgn.data.input_checks import CorruptInputError
    from dng_tgn.data.vit_zoo import vit_split
    from dng_tgn.nets.simple_vit import SimpleViT

    kw = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=8, channels=1, dim_head=4)
    n, fr = 20, [0.5, 0.1, 0.4]  # the bench preset's fractions, not App. E.2's 80/10/10
    sds = [SimpleViT(**kw).state_dict() for _ in range(n)]
    torch.save({k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}, tmp_path / "models.pt")
    split = np.empty(n, dtype=object)
    for name, idx in vit_split(n, 0, fr).items():
        if name != "all":
            split[idx] = name
    metrics = pd.DataFrame({"model_id": range(n), "test_accuracy": np.linspace(0.1, 0.9, n), "split": split})
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    (tmp_path / "meta.json").write_text(json.dumps({"model_kwargs": kw, "split_seed": 0, "split_fractions": fr}))
    sizes = {s: len(ViTZooDataset(tmp_path, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 10, "val": 2, "test": 8}
    assert ViTZooDataset(tmp_path, "test").idx.tolist() == np.flatnonzero(split == "test").tolist()
    # negative control: a split column that disagrees with meta.json's split is refused, naming both
    metrics.loc[int(np.flatnonzero(split == "test")[0]), "split"] = "train"
    metrics.to_csv(tmp_path / "metrics.csv", index=False)
    with pytest.raises(CorruptInputError, match=r"'split' column puts 7 ViTs in 'test', but meta.json's split"):
        ViTZooDataset(tmp_path, "test")


# ------------------------------------------------------------------------------------------------ Wild Park
def test_park_cnns_convert_and_replay():
    import dng_tgn
    from dng_tgn.data.wild_park import ParkCNN
    from dng_tgn.graph.events import EdgeKind

    x = torch.rand(3, 1, 12, 12) * 2 - 1
    for arch in (dict(widths=[4, 6, 6, 6], kernels=[5, 3, 3, 5], residual=True, activation="gelu"),
                 dict(widths=[8, 4], kernels=[3, 3], residual=False, activation="tanh")):
        net = ParkCNN(**arch).eval()
        stream = dng_tgn.to_event_stream(net)
        assert torch.allclose(dng_tgn.replay(stream, x), net(x), atol=1e-5)
        assert stream.num_timestamps == len(arch["widths"]) + 1
        residual = [e for e in stream.edge_groups if e.kind == EdgeKind.RESIDUAL]
        assert len(residual) == (2 if arch["residual"] else 0)  # layers 2 and 3 keep their width


def test_unseen_architectures_share_no_depth_or_width_with_seen_ones():
    from dng_tgn.data.wild_park import SEEN_DEPTHS, SEEN_WIDTHS, is_unseen, sample_archs

    archs = sample_archs(40, seed=3, unseen_fraction=0.25)
    unseen = [a for a in archs if is_unseen(a)]
    assert len(unseen) == 10 and len({json.dumps(a) for a in archs}) == 40
    for a in archs:
        if not is_unseen(a):
            assert len(a["widths"]) in SEEN_DEPTHS and set(a["widths"]) <= set(SEEN_WIDTHS)
    assert all(len(a["widths"]) == 4 or 12 in a["widths"] for a in unseen)
    assert {a["residual"] for a in archs} == {True, False} and len({a["activation"] for a in archs}) >= 3


@pytest.fixture(scope="module")
def park(tmp_path_factory):
    from dng_tgn.data import build_wild_park

    out = tmp_path_factory.mktemp("park") / "park"
    build_wild_park.main(["--preset", "tiny", "--dataset", "digits", "--n-archs", "8", "--nets-per-arch", "3",
                          "--max-steps", "4", "--n-eval", "100", "--device", "cpu", "--out", str(out)])
    return out


def test_wild_park_build_and_splits(park):
    from dng_tgn.data.wild_park import WildParkDataset

    m = pd.read_csv(park / "metrics.csv")
    assert len(m) == 24 and set(m.split) <= {"train", "val", "test", "test_unseen"}
    assert (m.split == "test_unseen").eq(m.unseen).all()  # exactly the unseen architectures' nets
    seen_train = set(m[m.split == "train"].arch)
    assert not seen_train & set(m[m.unseen].arch)
    ds = WildParkDataset(park, "test_unseen")
    net, acc = ds[0]
    assert isinstance(acc, float) and isinstance(net, torch.nn.Module)
    with pytest.raises(ValueError, match="split must be"):
        WildParkDataset(park, "holdout")


def test_wild_park_experiment_reports_seen_and_unseen(park, tmp_path, runs_root):
    from experiments.wild_park_generalization import ex

    upd = {"data": {"root": str(park)}, "optim": {"steps": 2, "eval_every": 2, "batch_size": 4},
           "encoder": {"dng": {"memory_dim": 8, "head_dim": 4, "fourier_size": 4}}}
    r = ex.run(config_updates=upd, options={"--capture": "no"})
    assert {"test", "test_unseen", "val"} <= set(r.result)
    d = Path(r.observers[0].dir)
    unseen = pd.read_csv(d / "wild_park_generalization_test_unseen_predictions.csv")
    assert r.result["test_unseen"]["kendall_tau"] == pytest.approx(kendall_tau(unseen.prediction, unseen.target))
    # what the tables keep of the run: seen and unseen τ, the collapse check, the per-net test predictions
    row = tables.generalization_result(r.result, d)
    assert row["tau_unseen"] == r.result["test_unseen"]["kendall_tau"] and row["std_ratio"] == r.result["val"]["std_ratio"]
    test = pd.read_csv(d / "wild_park_generalization_test_predictions.csv")
    assert row["predictions"]["prediction"] == pytest.approx(test.prediction.tolist())
    # each prediction is named by its net's model_id in the park's metrics.csv (what the paired bootstrap joins on)
    assert row["predictions"]["model_id"] == test.model_id.tolist()
    m = pd.read_csv(park / "metrics.csv").set_index("model_id")
    for split, df in (("test", test), ("test_unseen", unseen)):
        assert (m.loc[df.model_id, "split"] == split).all()
        assert np.allclose(m.loc[df.model_id, "test_accuracy"], df.target)
    # the unseen nets are also scored by kind: unseen depth, and unseen width at a seen depth; together all of them
    kinds = {k: pd.read_csv(d / f"wild_park_generalization_test_unseen_{k}_predictions.csv")
             for k in ("depth", "width") if f"test_unseen_{k}" in r.result}
    assert sorted(pd.concat(kinds.values()).model_id) == sorted(unseen.model_id)
    for k, df in kinds.items():
        is_deep = m.loc[df.model_id, "depth"].isin([4])
        assert (is_deep if k == "depth" else ~is_deep).all()  # control: the other kind's nets are not in it
        assert row[f"tau_unseen_{k}"] == r.result[f"test_unseen_{k}"]["kendall_tau"]
    # baselines that need one architecture refuse the mixed zoo by name
    with pytest.raises(ValueError, match="one architecture"):
        ex.run(config_updates=dict(upd, encoder={"kind": "nfn_hnp"}), options={"--capture": "no"})


@pytest.fixture(scope="module")
def park_both_kinds(tmp_path_factory):
    """A tiny park whose unseen nets include both kinds (`park`'s two unseen architectures are both depth 5)."""
    from dng_tgn.data import build_wild_park

    out = tmp_path_factory.mktemp("park2") / "park"
    build_wild_park.main(["--preset", "tiny", "--dataset", "digits", "--n-archs", "8", "--nets-per-arch", "4",
                          "--unseen-fraction", "0.5", "--max-steps", "4", "--n-eval", "100", "--device", "cpu",
                          "--out", str(out)])
    return out


def test_wild_park_unseen_kinds_name_each_net_by_its_model_id(park_both_kinds):
    """test_unseen_depth / test_unseen_width: each item's id is its own net's model_id (arch and accuracy agree
    with metrics.csv), the kinds split by depth and together are test_unseen (control: shifted ids fail)."""
    from dng_tgn.data.wild_park import arch_key
    from dng_tgn.tasks.generalization import load_wild_park

    m = pd.read_csv(park_both_kinds / "metrics.csv").set_index("model_id")
    data = load_wild_park(park_both_kinds)

    def named_right(ids, subset):
        return (list(m.loc[ids, "arch"]) == [arch_key(a) for a in subset.archs]
                and np.allclose(m.loc[ids, "test_accuracy"], subset.targets.numpy()))

    kinds = {k: data.extra_tests[f"test_unseen_{k}"] for k in ("depth", "width")}  # both kinds present
    for k, subset in kinds.items():
        ids = data.ids[f"test_unseen_{k}"]
        assert named_right(ids, subset) and len(set(m.loc[ids, "arch"])) > 1
        assert (m.loc[ids, "depth"].eq(4) if k == "depth" else m.loc[ids, "depth"].ne(4)).all()
        assert (m.loc[ids, "split"] == "test_unseen").all()
        assert not named_right(np.roll(ids, 1), subset)  # control: the check sees ids moved by one net
    assert sorted(np.concatenate([data.ids["test_unseen_depth"], data.ids["test_unseen_width"]])) == \
        sorted(data.ids["test_unseen"])


def test_row_result_names_come_from_the_experiment_not_the_path(tmp_path):
    """A CNN run kept under a runs folder whose path says "vit" still reads the CNN run's curve and predictions."""
    run_dir = tmp_path / "vit_runs" / "cnn_generalization" / "1"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(
        {"cnn_generalization.val.kendall_tau": {"steps": [5], "values": [0.4]},
         "vit_generalization.val.kendall_tau": {"steps": [5], "values": [-0.9]}}))
    pd.DataFrame({"target": [0.1, 0.2], "prediction": [0.3, 0.4]}).to_csv(
        run_dir / "cnn_generalization_test_predictions.csv", index=False)
    summary = {"test": {"kendall_tau": 1.0, "r2": 0.5}, "params": 10, "seconds": 1.0}
    for row in (tables.generalization_result(summary, run_dir),  # from the run folder's parent
                tables.ROW_RESULT["cnn_generalization"](summary, run_dir)):  # what run_one calls
        assert row["history"] == [[5, 0.4]] and row["predictions"]["prediction"] == [0.3, 0.4]
    # negative control: the ViT experiment's names find neither this curve's values nor these predictions
    vit = tables.ROW_RESULT["vit_generalization"](summary, run_dir)
    assert vit["history"] == [[5, -0.9]] and "predictions" not in vit
    with pytest.raises(ValueError, match="not a run of a generalization experiment"):
        tables.generalization_result(summary, tmp_path / "runs" / "inr2jls" / "1")

# ------------------------------------------------------------------------------------------------ bench presets
def test_bench_presets_are_big_enough_to_rank_methods(tmp_path):
    """Issue #12's sizes, read off the presets as the builders resolve them (nothing is trained here)."""
    from dng_tgn.data import build_cnn_zoo, build_vit_zoo, build_wild_park
    from dng_tgn.data.cnn_zoo import nfn_zoo_split
    from dng_tgn.data.vit_zoo import vit_split
    from dng_tgn.data.wild_park import is_unseen, sample_archs, split_of

    cnn = build_cnn_zoo.parse_args(["--preset", "bench", "--out", str(tmp_path / "c")])
    assert cnn.n_models >= 2000 and cnn.final_step == 86
    assert min(len(v) for k, v in nfn_zoo_split(cnn.n_models).items() if k != "all") >= 200
    vit = build_vit_zoo.parse_args(["--preset", "bench", "--out", str(tmp_path / "v")])
    fr = [float(f) for f in vit.split.split(",")]
    assert vit.n_models >= 500 and len(vit_split(vit.n_models, 0, fr)["test"]) >= 200
    park = build_wild_park.parse_args(["--preset", "bench", "--out", str(tmp_path / "p")])
    archs = sample_archs(park.n_archs, park.seed, park.unseen_fraction)
    splits = pd.Series([split_of(a, i * park.nets_per_arch + j, park.seed)
                        for i, a in enumerate(archs) for j in range(park.nets_per_arch)]).value_counts()
    assert splits["test"] >= 200 and splits["test_unseen"] >= 200 and splits["train"] >= 400
    assert sum(is_unseen(a) for a in archs) == round(park.unseen_fraction * park.n_archs)


def test_vit_builder_arguments_fail_by_name(tmp_path, capsys):
    from dng_tgn.data import build_vit_zoo

    out = ["--out", str(tmp_path / "v")]
    for bad, says in (("1e-3", "two comma-separated numbers"), ("a,b", "two comma-separated numbers"),
                      ("1e-2,1e-3", "0 < lo <= hi")):
        with pytest.raises(SystemExit):
            build_vit_zoo.parse_args(out + ["--lr-range", bad])
        assert f"--lr-range needs {says}" in capsys.readouterr().err, bad
    assert build_vit_zoo.parse_args(out + ["--lr-range", "1e-3,1e-2"]).lr_range == "1e-3,1e-2"  # a good one passes

def test_per_vit_learning_rates_are_each_models_own_adam():
    from dng_tgn.data.sources import load_digits, to_signed
    from dng_tgn.data.vit_zoo import train_vits

    kw = dict(image_size=8, patch_size=4, num_classes=10, dim=8, depth=1, heads=2, mlp_dim=16, channels=1, dim_head=4)
    x, y = to_signed(load_digits()[0][:64]), torch.as_tensor(load_digits()[1][:64])
    run = lambda lr, lrs=None: train_vits(kw, [1, 2], [2, 2], x, y, x[:16], y[:16], steps_per_epoch=3,  # noqa: E731
                                          batch_size=8, lr=lr, lrs=lrs)[0]
    mixed, base, fast = run(1e-3, [1e-3, 4e-3]), run(1e-3), run(4e-3)
    for k in mixed:  # same seeds and batches: model 0 is the lr-1e-3 run's, model 1 the lr-4e-3 run's
        torch.testing.assert_close(mixed[k][0], base[k][0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(mixed[k][1], fast[k][1], atol=1e-6, rtol=1e-5)
    # negative control: model 1 really trained at another rate than the shared-lr run
    assert (mixed["linear_head.weight"][1] - base["linear_head.weight"][1]).abs().max() > 1e-4


def test_mse_head_loss_is_kofinas_choice(tmp_path, runs_root):
    """``head.loss=mse`` (NG-GNN's CNN-zoo row): the logged loss is MSE of sigmoid(logit), not BCE."""
    from experiments.cnn_generalization import ex
    from tests.test_downstream_experiments import metrics, run, tiny_gen, write_cnn_zoo

    root = write_cnn_zoo(tmp_path / "zoo")
    losses = {}
    for loss in ("bce", "mse"):
        cfg = tiny_gen(root, "ng_gnn", steps=2)
        cfg["head"]["loss"] = loss
        _, d = run(ex, **cfg)
        losses[loss] = metrics(d)["cnn_generalization.train.loss"]["values"][0]
    # same seed, same first batch and weights: BCE of a near-0.5 output is ≈ 0.69, MSE to accuracies in [0, 1] < 0.3
    assert losses["bce"] > 0.5 and losses["mse"] < 0.3
    cfg = tiny_gen(root, "ng_gnn", steps=2)
    cfg["head"]["loss"] = "hinge"
    with pytest.raises(ValueError, match="head.loss"):
        run(ex, **cfg)
