"""End-to-end runs of the downstream Sacred experiments (INR2JLS, CNN and ViT generalisation) at tiny sizes.

Each test writes a handful of networks in the dataset's on-disk format into a tmp dir, runs the experiment
for a few steps with the DNG-Encoder and with NG-GNN, and reads back what the run stored on disk
(FileStorageObserver: config.json, metrics.json, info.json, artifacts, checkpoints). Resume tests stop a
run, start a second one from its directory, and check that it continues from the saved step.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dng_tgn.data.siren_fit import init_sirens, to_state_dicts
from dng_tgn.data.zoo_format import state_dict_to_row, zoo_cnn_layout
from dng_tgn.nets import SimpleViT, ZooCNN
from dng_tgn.nn.factory import EncoderKind, build_encoder
from dng_tgn.training import (Checkpoint, EpochSampler, kendall_tau, latest_checkpoint, load_checkpoint, r2_score,
                              save_checkpoint)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def runs_dir(runs_root):
    threads = torch.get_num_threads()
    yield runs_root
    torch.set_num_threads(threads)  # the experiments set num_threads=1; leave other tests their default


# ------------------------------------------------------------------------------------------------ datasets
def write_inr_set(root: Path, n_train=12, n_val=4, n_test=4, size=8, seed=0) -> Path:
    """Random-init NFN SIRENs in NFN's layout (what build_inrs writes), with an 8x8 image size in meta.json."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    sds = to_state_dicts(init_sirens(n, 1, generator=g))
    labels = [i % 3 for i in range(n)]
    for i, (sd, lab) in enumerate(zip(sds, labels)):
        (root / f"randinit_smaller_{lab}s").mkdir(parents=True, exist_ok=True)
        torch.save(sd, root / f"randinit_smaller_{lab}s" / f"net{i}.pth")
    (root / "meta.json").write_text(json.dumps({"split_points": [n_train, n_train + n_val], "image_shape": [1, size, size]}))
    return root


def write_cnn_zoo(root: Path, n=24, seed=0) -> Path:
    """Random ZooCNNs in the Small CNN Zoo format (weights.npy, layout.csv, metrics.csv.gz)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    layout, keys = zoo_cnn_layout(in_channels=1, channels=4)
    rows = np.stack([state_dict_to_row(ZooCNN(channels=4).state_dict(), layout, keys) for _ in range(n)])
    np.save(root / "weights.npy", rows)
    layout.to_csv(root / "layout.csv", index=False)
    acc = np.random.default_rng(seed).uniform(0.1, 0.9, n)
    with gzip.open(root / "metrics.csv.gz", "wt") as f:
        pd.DataFrame({"step": 1, "test_accuracy": acc, "config.activation": "relu"}).to_csv(f, index=False)
    return root


VIT_KWARGS = dict(image_size=8, patch_size=4, num_classes=3, dim=8, depth=1, heads=2, mlp_dim=8, channels=1, dim_head=4)


def write_vit_zoo(root: Path, n=20, seed=0) -> Path:
    """Random tiny SimpleViTs in the ViT zoo format (meta.json, models.pt, metrics.csv)."""
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sds = [SimpleViT(**VIT_KWARGS).state_dict() for _ in range(n)]
    torch.save({k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}, root / "models.pt")
    acc = np.random.default_rng(seed).uniform(0.1, 0.9, n)
    pd.DataFrame({"model_id": range(n), "test_accuracy": acc}).to_csv(root / "metrics.csv", index=False)
    (root / "meta.json").write_text(json.dumps({"model_kwargs": VIT_KWARGS}))
    return root


# ------------------------------------------------------------------------------------------------ helpers
def run(ex, runtime=None, **config):
    # one thread: the CI box is shared, and threads spinning on tiny matrices are what makes it slow
    config["runtime"] = dict(device="cpu", num_threads=1, **(runtime or {}))
    r = ex.run(config_updates=config, options={"--capture": "no"})
    return r, Path(r.observers[0].dir)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def ckpt_step(run_dir: Path, name: str) -> int:
    """Step of the newest checkpoint of phase ``name`` in ``run_dir``."""
    return load_checkpoint(latest_checkpoint(run_dir, name)).step


TINY_DNG = dict(memory_dim=8, fourier_size=4)
TINY_NG = dict(hidden_dim=8, num_layers=1, out_dim=8, fourier_size=4)
TINY_ENC = dict(dng=dict(TINY_DNG, head_dim=4), ng_gnn=TINY_NG)
TINY_OPTIM = dict(batch_size=4, steps=4, eval_every=2, patience=None)


def tiny_gen(root, kind="dng", steps=4, **runtime):
    return dict(data=dict(root=str(root)), encoder=dict(TINY_ENC, kind=kind), head=dict(hidden=8),
                optim=dict(TINY_OPTIM, steps=steps), runtime=dict(eval_batch_size=8, **runtime))


# ------------------------------------------------------------------------------------------------ INR2JLS
@pytest.fixture(scope="module")
def inr_root(tmp_path_factory):
    return write_inr_set(tmp_path_factory.mktemp("inrs"))


def inr_tiny(root, kind="dng", recon_steps=4, augment=False, **runtime):
    return dict(data=dict(root=str(root)), encoder=dict(kind=kind, dng=TINY_DNG, ng_gnn=TINY_NG),
                model=dict(spatial_dim=8, latent_dim=4, decoder_channels=4, augment=augment),
                recon=dict(steps=recon_steps, batch_size=4, eval_every=2),
                cls=dict(steps=4, batch_size=4, eval_every=2), classifier=dict(conv_channels=4, hidden=8),
                runtime=dict(eval_batch_size=8, **runtime), num_figure_images=3)


@pytest.mark.parametrize("encoder", ["dng", "ng_gnn"])
def test_inr2jls_end_to_end(inr_root, encoder):
    from experiments.inr2jls import ex

    r, d = run(ex, **inr_tiny(inr_root, encoder))
    m = metrics(d)
    assert m["recon.train.loss"]["steps"] == [1, 2, 3, 4]
    assert m["recon.val.mse"]["steps"] == [2, 4] and m["cls.val.accuracy"]["steps"] == [2, 4]
    # single final values are the result (and info), not metrics
    assert not any(k.startswith("test.") for k in m)
    test_mse = r.result["test"]["recon_mse"]
    assert math.isfinite(test_mse) and test_mse > 0
    # the reported accuracy is the one of the saved per-INR predictions, against the labels the files carry
    pred = pd.read_csv(d / "inr2jls_test_predictions.csv")
    assert pred["label"].tolist() == [i % 3 for i in range(16, 20)]  # write_inr_set: label i % 3, test = last 4
    assert r.result["test"]["accuracy"] == pytest.approx((pred["label"] == pred["prediction"]).mean())
    assert (d / "inr2jls_reconstructions.png").read_bytes().startswith(PNG)
    assert ckpt_step(d, "inr2jls_recon") == 4 and ckpt_step(d, "inr2jls_cls") == 4
    info = json.loads((d / "info.json").read_text())
    assert info["results"]["test"]["recon_mse"] == pytest.approx(test_mse)
    assert info["encoder"] == encoder and info["sizes"] == {"train": 12, "val": 4, "test": 4, "classes": 3}


def test_inr2jls_augmentation_and_resume(inr_root):
    from experiments.inr2jls import ex

    _, first = run(ex, **inr_tiny(inr_root, augment=True))
    assert ckpt_step(first, "inr2jls_recon") == 4
    r, second = run(ex, **inr_tiny(inr_root, recon_steps=6, augment=True, resume=str(first)))
    m = metrics(second)
    # the second run only takes the steps the first did not: 5 and 6
    assert m["recon.train.loss"]["steps"] == [5, 6]
    assert r.result["recon"]["resumed_from_step"] == 4
    # the first run's classifier used its whole budget (cls_steps=4): the resumed run has nothing left to train
    assert "cls.train.loss" not in m and r.result["cls"]["resumed_from_step"] == 4
    assert ckpt_step(second, "inr2jls_recon") == 6
    assert ckpt_step(second, "inr2jls_cls") == 4  # carried over, so `second` is resumable too
    info = json.loads((second / "info.json").read_text())
    assert info["resumed_from"]["dir"] == str(first.resolve())  # the resumed run links the one it continues
    assert json.loads((first / "run.json").read_text())["resumed_by"]["id"] == r._id


def test_inr2jls_errors_name_the_fix(tmp_path, inr_root):
    from experiments.inr2jls import ex

    with pytest.raises(FileNotFoundError, match="build_inrs"):
        run(ex, data=dict(root=str(tmp_path / "nowhere")))
    with pytest.raises(FileNotFoundError, match="inr2jls_recon"):
        run(ex, **inr_tiny(inr_root, resume=str(tmp_path)))


# ------------------------------------------------------------------------------------------------ CNN / ViT
@pytest.mark.parametrize("encoder", ["dng", "ng_gnn", "mlp", "nfn_np", "nfn_hnp"])
def test_cnn_generalization_end_to_end(tmp_path, encoder):
    from experiments.cnn_generalization import ex

    root = write_cnn_zoo(tmp_path / "zoo")
    r, d = run(ex, **tiny_gen(root, encoder))
    m = metrics(d)
    assert m["cnn_generalization.train.loss"]["steps"] == [1, 2, 3, 4]
    assert m["cnn_generalization.val.kendall_tau"]["steps"] == [2, 4]
    tau, r2 = r.result["test"]["kendall_tau"], r.result["test"]["r2"]
    # the reported scores are those of the saved per-network predictions, whose targets are the zoo's test accuracies
    pred = pd.read_csv(d / "cnn_generalization_test_predictions.csv")
    zoo_acc = pd.read_csv(root / "metrics.csv.gz")["test_accuracy"].to_numpy()
    assert np.allclose(np.sort(pred["target"]), np.sort(zoo_acc[12:]))  # NFN's split: the second half is test
    # each prediction names its net by its weights.npy row (what the tables' paired bootstrap joins on)
    assert sorted(pred["model_id"]) == list(range(12, 24)) and np.allclose(zoo_acc[pred["model_id"]], pred["target"])
    assert tau == pytest.approx(kendall_tau(pred["prediction"], pred["target"]))
    assert r2 == pytest.approx(r2_score(pred["prediction"], pred["target"]))
    assert ((pred["prediction"] > 0) & (pred["prediction"] < 1)).all()  # sigmoid of the logit
    assert "test.kendall_tau" not in m  # a final value: result and info, not a metric
    assert (d / "cnn_generalization_scatter.png").read_bytes().startswith(PNG)
    # NFN's split of 24 final checkpoints: 12 test, 12 train+val cut 80/20
    assert json.loads((d / "info.json").read_text())["sizes"] == {"train": 9, "val": 3, "test": 12}
    # collapse detection: validation R² and spread ratio of the restored best model are in the result, and the
    # spread ratio is logged at every validation
    v = r.result["val"]
    assert set(v) == {"r2", "std_ratio", "collapsed"} and v["collapsed"] == (v["std_ratio"] < 0.1)
    assert m["cnn_generalization.val.std_ratio"]["steps"] == [2, 4]


def test_cnn_generalization_resume(tmp_path):
    from experiments.cnn_generalization import ex

    root = write_cnn_zoo(tmp_path / "zoo")
    _, first = run(ex, **tiny_gen(root))
    r, second = run(ex, **tiny_gen(root, steps=6, resume=str(first)))
    assert metrics(second)["cnn_generalization.train.loss"]["steps"] == [5, 6]
    assert r.result["resumed_from_step"] == 4 and ckpt_step(second, "cnn_generalization") == 6


@pytest.mark.parametrize("encoder", ["dng", "ng_gnn"])
def test_vit_generalization_end_to_end(tmp_path, encoder):
    from experiments.vit_generalization import ex

    root = write_vit_zoo(tmp_path / "vits")
    r, d = run(ex, **tiny_gen(root, encoder))
    m = metrics(d)
    assert m["vit_generalization.train.loss"]["steps"] == [1, 2, 3, 4]
    pred = pd.read_csv(d / "vit_generalization_test_predictions.csv")
    assert r.result["test"]["kendall_tau"] == pytest.approx(kendall_tau(pred["prediction"], pred["target"]))
    # each prediction names its net by its row in models.pt / metrics.csv: the test nets of the 80/10/10 split
    from dng_tgn.data.vit_zoo import vit_split

    assert pred["model_id"].tolist() == vit_split(20)["test"].tolist()
    zoo_acc = pd.read_csv(root / "metrics.csv").set_index("model_id")["test_accuracy"]
    assert np.allclose(zoo_acc[pred["model_id"]], pred["target"])
    assert (d / "vit_generalization_scatter.png").read_bytes().startswith(PNG)
    info = json.loads((d / "info.json").read_text())
    assert info["sizes"] == {"train": 16, "val": 2, "test": 2} and info["vit_kwargs"]["heads"] == 2


def test_generalization_run_reaches_mongodb(tmp_path, mongo_server):
    """What a user watches in MongoDB: config, per-step and final metrics, the scatter figure in GridFS."""
    import gridfs
    import pymongo

    from experiments.cnn_generalization import ex

    root = write_cnn_zoo(tmp_path / "zoo")
    db_name = f"test_downstream_{tmp_path.name[-12:]}"
    r = ex.run(config_updates=tiny_gen(root, device="cpu", num_threads=1),
               options={"--capture": "no", "--mongo": f"{mongo_server}/{db_name}"})
    client = pymongo.MongoClient(mongo_server, serverSelectionTimeoutMS=2000)
    try:
        db = client[db_name]
        doc = db.runs.find_one({"_id": r._id})
        assert doc["status"] == "COMPLETED" and doc["config"]["encoder"]["kind"] == "dng"
        loss = db.metrics.find_one({"run_id": r._id, "name": "cnn_generalization.train.loss"})
        assert loss["steps"] == [1, 2, 3, 4]
        assert doc["result"]["test"]["kendall_tau"] == pytest.approx(r.result["test"]["kendall_tau"])
        assert doc["info"]["params"] > 0 and doc["info"]["results"]["test"] == doc["result"]["test"]
        assert db.metrics.find_one({"run_id": r._id, "name": "test.kendall_tau"}) is None
        (file_id,) = [a["file_id"] for a in doc["artifacts"] if a["name"] == "cnn_generalization_scatter.png"]
        assert gridfs.GridFS(db).get(file_id).read().startswith(PNG)
    finally:
        client.close()


def test_missing_zoo_names_the_builder(tmp_path):
    from experiments.cnn_generalization import ex

    with pytest.raises(FileNotFoundError, match="build_cnn_zoo"):
        run(ex, data=dict(root=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="build_cnn_zoo"):
        run(ex, data=dict(root=str(tmp_path / "empty")))


# ------------------------------------------------------------------------------------------------ utilities
def test_encoder_kind_parse():
    assert EncoderKind.parse("dng") is EncoderKind.DNG and EncoderKind.parse("NG_GNN") is EncoderKind.NG_GNN
    with pytest.raises(ValueError, match="valid values are 'dng', 'ng_gnn'"):
        EncoderKind.parse("static")


def test_sampler_is_a_function_of_the_step():
    a, b = EpochSampler(10, 3, seed=1), EpochSampler(10, 3, seed=1)
    seq = [a(s).tolist() for s in range(9)]
    assert [b(s).tolist() for s in reversed(range(9))][::-1] == seq  # any access order gives the same batches
    assert sorted(sum(seq[:3], [])) == sorted(set(sum(seq[:3], [])))  # no repeats within an epoch
    assert seq[:3] != seq[3:6]  # a new permutation every epoch


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(path, Checkpoint(step=3, model={"w": torch.ones(2)}, optimizer={}))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("dng_tgn.data.shards.os.replace", broken)
    with pytest.raises(OSError):
        save_checkpoint(path, Checkpoint(step=4, model={"w": torch.zeros(2)}, optimizer={}))
    assert load_checkpoint(path).step == 3  # the old checkpoint survives a failed save
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # and no temporary file is left behind


def test_metrics_against_definitions():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    assert kendall_tau(y, y) == pytest.approx(1.0) and kendall_tau(-y, y) == pytest.approx(-1.0)
    assert r2_score(y, y) == pytest.approx(1.0)
    assert r2_score(np.full_like(y, y.mean()), y) == pytest.approx(0.0)
    assert math.isnan(kendall_tau(np.ones(5), y[:5]))


# ------------------------------------------------------------------------------------------------ INR2JLS model
def test_views_are_the_f3_transformations():
    from dng_tgn.nn.inr2jls import augment_views

    img = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    views = augment_views(img, 6)[0, :, 0]
    expected = [[[1, 2], [3, 4]], [[3, 1], [4, 2]], [[4, 3], [2, 1]], [[2, 4], [1, 3]], [[2, 1], [4, 3]], [[3, 4], [1, 2]]]
    assert views.tolist() == expected  # identity, 90/180/270 degrees clockwise, horizontal flip, vertical flip


def test_latent_generator_is_phi_g_of_the_concatenation():
    from dng_tgn.nn.inr2jls import LatentGenerator

    torch.manual_seed(0)
    gen = LatentGenerator(memory_dim=5, spatial_dim=3, latent_dim=4, grid=(2, 3), num_views=2, hidden_dim=7)
    s = torch.randn(2, 5)
    out = gen(s)
    assert out.shape == (2, 2, 4, 2, 3)  # (B, V, d, h_s, w_s)
    # Eq. 7 literally: one Linear on Concat(s, θ_s^n), for view 1 at spatial position (1, 2), n = 6 + 1·3 + 2
    w = torch.cat([gen.from_memory.weight, gen.from_spatial.weight], dim=1)
    n = 1 * 6 + 1 * 3 + 2
    hidden = torch.cat([s[1], gen.spatial[n]]) @ w.T + gen.from_memory.bias
    assert torch.allclose(out[1, 1, :, 1, 2], gen.out(hidden), atol=1e-6)


def test_inr2jls_features_ignore_hidden_neuron_order():
    """Permuting a SIREN's hidden neurons leaves the function, hence F (the joint latent), unchanged (App. B/C)."""
    from dng_tgn import batch_state_dicts
    from dng_tgn.nn.inr2jls import INR2JLS

    torch.manual_seed(0)
    sd, other = to_state_dicts(init_sirens(2, 1, generator=torch.Generator().manual_seed(1)))
    perm = torch.randperm(32)
    p = dict(sd)
    p["net.0.linear.weight"], p["net.0.linear.bias"] = sd["net.0.linear.weight"][perm], sd["net.0.linear.bias"][perm]
    p["net.1.linear.weight"] = sd["net.1.linear.weight"][:, perm]
    enc = build_encoder(EncoderKind.DNG, num_outputs=1, num_slots=1, ng_gnn={},
                        dng=dict(memory_dim=8, fourier_size=4, max_timestamps=3, max_inputs=2))
    model = INR2JLS(enc, (1, 8, 8), spatial_dim=4, latent_dim=3, decoder_channels=4, num_views=6).eval()
    with torch.no_grad():
        out = model(batch_state_dicts([sd, p, other]))
    assert out.features.shape == (3, 18, 2, 2) and out.reconstruction.shape == (3, 6, 1, 8, 8)
    assert torch.allclose(out.features[0], out.features[1], atol=1e-5)
    assert not torch.allclose(out.features[0], out.features[2], atol=1e-3)  # yet another INR is told apart
    with pytest.raises(ValueError, match="divisible by 4"):
        INR2JLS(enc, (1, 10, 10))


# ------------------------------------------------------------------------------------------------ shared config
EXPERIMENTS = ["inr2jls", "cnn_generalization", "vit_generalization", "static_vs_dynamic"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_print_config_is_clean_and_shares_the_ingredients(name, capsys):
    import importlib
    import warnings as w

    ex = importlib.import_module(f"experiments.{name}").ex
    with w.catch_warnings():
        w.simplefilter("error")  # e.g. Sacred's "Added new config entry" would mean a key without a default
        ex.run("print_config", options={"--unobserved": True})
    out = capsys.readouterr().out
    assert "runtime:" in out and "device =" in out and "path = None" in out
    if name != "static_vs_dynamic":
        assert "encoder:" in out and "kind = 'dng'" in out


@pytest.mark.parametrize("name,bad,match", [
    ("cnn_generalization", {"encoder": {"kind": "foo"}}, r"encoder.kind='foo'.*'dng', 'ng_gnn'"),
    ("inr2jls", {"encoder": {"kind": "gnn"}}, r"encoder.kind='gnn'.*'dng', 'ng_gnn'"),
    ("inr2jls", {"encoder": {"dng": {"cell": "lstm"}}}, r"encoder.dng.cell='lstm'.*'gru', 'rnn', 'rnn_relu'"),
    ("vit_generalization", {"runtime": {"path": "cuda"}}, r"runtime.path='cuda'.*'dgl', 'torch'"),
    ("static_vs_dynamic", {"runtime": {"path": "fast"}}, r"runtime.path='fast'.*'dgl', 'torch'"),
])
def test_unknown_choice_fails_before_any_run_directory(runs_dir, name, bad, match):
    import importlib

    from experiments.ingredients import ConfigChoiceError

    ex = importlib.import_module(f"experiments.{name}").ex
    with pytest.raises(ConfigChoiceError, match=match):
        ex.run(config_updates=bad)
    assert not (runs_dir / name).exists() or not any((runs_dir / name).iterdir())
    # negative control: a valid choice does create the run (and its directory) when it runs
    if name == "static_vs_dynamic":
        r = ex.run(named_configs=["tiny"], config_updates={"runtime": {"path": "torch", "device": "cpu"}})
        assert Path(r.observers[0].dir).is_dir()
