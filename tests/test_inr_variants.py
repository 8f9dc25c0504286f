"""Table 1/2/4 rows beside INR2JLS: the encoder-only classifier (DNG and NFN), INR2JLS without the Latent
Generator, INR-to-INR, F.3's noise augmentation, and the pixel classifier's dropout.

The row tests run the *real* row definitions of ``experiments/tables.py`` (their config updates, on a tiny INR
set and tiny sizes instead of the bench named config) end to end, and check the table's json schema.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import experiments.tables as tables  # noqa: E402
from tests.test_downstream_experiments import inr_tiny, write_inr_set  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEW_ROWS = ("dng_encoder_only", "inr2jls_no_latent_gen", "inr2inr", "nfn_np", "nfn_hnp", "aug_noise", "aug_both")
RECON_ROWS = {"inr2jls_no_latent_gen", "inr2inr", "aug_noise", "aug_both"}


@pytest.fixture
def results(tmp_path, monkeypatch, runs_root):
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    return tmp_path / "results"


def tiny_rows() -> tuple[tables.Row, ...]:
    """The table's own rows, with the tiny config underneath their updates (no `bench` named config)."""
    base = inr_tiny("unused")
    base.pop("data")
    base["model"]["decoder_hidden"] = 8
    base["encoder"]["nfn"] = dict(channels=[4, 4], fourier=[4, 10.0], out_dim=8)
    base["runtime"].update(device="cpu", num_threads=1)
    real = {r.name: r for r in tables.INR_ROWS}
    out = []
    for name in NEW_ROWS:
        row = real[name]
        assert row.missing is None and row.experiment == "inr2jls", name
        cfg = tables._merge(json.loads(json.dumps(base)), row.updates)
        out.append(tables.Row(name, "inr2jls", (), cfg, seeds=1))
    return tuple(out)


def test_new_rows_run_end_to_end_and_follow_the_schema(tmp_path, results):
    data_dir = tmp_path / "data"
    write_inr_set(data_dir / "toy_inrs")
    table = tables.Table("toy_inr", "toy", "test_acc", "test accuracy", ("toy",), lambda d: f"{d}_inrs", tiny_rows())
    tables.run_table(table, list(table.rows), ["toy"], None, data_dir, "default", "cmd")
    doc = json.loads((results / "toy_inr.json").read_text())
    assert {"scale", "machine", "date", "command", "rows"} <= set(doc)
    by_name = {r["name"]: r for r in doc["rows"]}
    assert set(by_name) == set(NEW_ROWS)
    for name in NEW_ROWS:
        r = by_name[name]
        assert {"name", "dataset", "seeds", "test_acc", "mean", "std", "params", "train_s", "recon_mse_ratio"} <= set(r)
        assert r["seeds"] == [0] and len(r["test_acc"]) == 1 and 0.0 <= r["test_acc"][0] <= 1.0, name
        assert isinstance(r["params"], int) and r["params"] > 0 and r["train_s"] > 0, name
        if name in RECON_ROWS:
            assert r["recon_mse_ratio"] > 0, name
        else:  # encoder-only rows have no reconstruction phase
            assert r["recon_mse_ratio"] is None, name
        run = json.loads((results / "rows" / "toy_inr" / "toy" / name / "seed0.json").read_text())
        assert [p[0] for p in run["history"]] == [2, 4], name  # validation accuracy at each evaluation
        run_dir = Path(run["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert ("recon.val.mse" in metrics) == (name in RECON_ROWS), name
        # what phase 2 trained: the encoder too (encoder-only), or only a classifier on the frozen encoder
        ck = torch.load(sorted(run_dir.glob("inr2jls_cls.step*.pt"))[-1], weights_only=False)
        state = ck["model"] if isinstance(ck, dict) else ck.model
        trained_encoder = any(k.startswith("encoder.") for k in state)
        assert trained_encoder == (name not in RECON_ROWS), name
        info = json.loads((run_dir / "info.json").read_text())
        kind = {"nfn_np": "nfn_np", "nfn_hnp": "nfn_hnp"}.get(name, "dng")
        assert info["encoder"] == kind, name
    md = (results / "toy_inr.md").read_text()
    assert all(f"| toy | {n} |" in md for n in NEW_ROWS)


def test_no_new_row_is_marked_missing():
    rows = {r.name: r for r in tables.INR_ROWS}
    assert all(rows[n].missing is None for n in NEW_ROWS)
    # the noise rows mirror the existing augmentation rows, with F.3's noise added; Table 2's four rows train on
    # the same INRs (only the image augmentation varies), the SIREN copies are a row of their own
    aug = [rows[n] for n in ("aug_none", "aug_noise", "aug_rotflip", "aug_both")]
    assert all("data" not in r.updates for r in aug)
    assert rows["no_siren_copies"].updates == {"data": {"extra_aug": 0}, "model": rows["aug_none"].updates["model"]}
    assert rows["aug_noise"].updates["model"] == dict(rows["aug_none"].updates["model"], noise_std=0.06)
    assert rows["aug_both"].updates["model"] == dict(rows["aug_rotflip"].updates["model"], noise_std=0.06)


def test_variant_errors_name_the_fix(tmp_path, runs_root):
    from experiments.ingredients import ConfigChoiceError
    from experiments.inr2jls import ex

    root = write_inr_set(tmp_path / "inrs", n_train=6, n_val=3, n_test=3)
    with pytest.raises(ConfigChoiceError, match=r"variant='decoder'.*'encoder_only'"):
        ex.run(config_updates={"variant": "decoder"})
    cfg = inr_tiny(root, augment=True)
    with pytest.raises(ValueError, match="model.augment=False"):
        ex.run(config_updates=dict(cfg, variant="inr2inr"), options={"--capture": "no"})
    with pytest.raises(ValueError, match="model.augment=False"):
        ex.run(config_updates=dict(cfg, variant="encoder_only"), options={"--capture": "no"})


# ------------------------------------------------------------------------------------------------ INR-to-INR
class _Const(nn.Module):
    """A stand-in encoder: every network gets the same memory (the test drives the decoders' output directly)."""

    out_dim = 3

    def forward(self, params):
        return torch.ones(next(iter(params.values())).shape[0], self.out_dim)


def _sirens(n, seed):
    from dng_tgn.data.siren_fit import NFN_KEYS, init_sirens

    ps = init_sirens(n, 1, generator=torch.Generator().manual_seed(seed))
    return {k: p for k, p in zip(NFN_KEYS, ps)}


def _force_output(model, params):
    """Set the hypernetworks' last layers so that the model outputs exactly ``params`` (one SIREN)."""
    from dng_tgn.data.siren_fit import NFN_KEYS

    stats = model.param_stats
    std = [((params[k][0] - stats[i, 0]) / stats[i, 1]).reshape(-1) for i, k in enumerate(NFN_KEYS)]
    with torch.no_grad():
        for dec, parts in ((model.weights_decoder, std[0::2]), (model.biases_decoder, std[1::2])):
            last = dec.net[-1]
            last.weight.zero_()
            last.bias.copy_(torch.cat(parts))


def test_inr2inr_renders_the_siren_it_reconstructs():
    from dng_tgn.data.rendered_inrs import render_images
    from dng_tgn.data.siren_fit import NFN_KEYS
    from dng_tgn.nn.inr_variants import INR2INR

    train = _sirens(16, 0)
    shapes = [(k, train[k].shape[1:]) for k in NFN_KEYS]
    model = INR2INR(_Const(), shapes, (1, 8, 8), latent_dim=4, generator_hidden=8, hyper_hidden=8).eval()
    model.requires_grad_(False)
    model.set_parameter_stats(train)
    assert torch.allclose(model.param_stats[2], torch.tensor([train[NFN_KEYS[2]].mean(), train[NFN_KEYS[2]].std()]))
    one = {k: v[:1] for k, v in train.items()}
    _force_output(model, one)
    out = model(one)
    target = render_images(one, (1, 8, 8), 30.0)
    assert out.reconstruction.shape == (1, 1, 1, 8, 8)
    assert torch.allclose(out.reconstruction[:, 0], target, atol=1e-5)
    assert float(model.loss(out, target)) < 1e-10
    # negative control: another SIREN's parameters render another image, and the loss sees it
    other = {k: v[1:2] for k, v in train.items()}
    _force_output(model, other)
    out2 = model(one)
    assert torch.allclose(out2.reconstruction[:, 0], render_images(other, (1, 8, 8), 30.0), atol=1e-5)
    assert float(model.loss(out2, target)) > 1e-4
    with pytest.raises(ValueError, match="3-layer SIRENs"):
        INR2INR(_Const(), shapes[:4], (1, 8, 8))
    with pytest.raises(ValueError, match="C=3"):
        INR2INR(_Const(), shapes, (3, 8, 8))


def test_mlp_decoder_outputs_every_view():
    from dng_tgn.nn.inr_variants import MLPDecoderAutoencoder

    enc = _Const()
    model = MLPDecoderAutoencoder(enc, (1, 8, 8), hidden_dim=5, num_views=6)
    out = model({"w": torch.zeros(2, 1)})
    assert out.reconstruction.shape == (2, 6, 1, 8, 8) and out.features.shape == (2, 3)
    s, f = model.features({"w": torch.zeros(2, 1)})
    assert torch.equal(s, f)  # the frozen variants classify s(t^L) itself
    with pytest.raises(ValueError, match="num_views"):
        MLPDecoderAutoencoder(enc, (1, 8, 8), num_views=7)


# ------------------------------------------------------------------------------------------------ F.3 noise, dropout
def test_noisy_targets_have_f3_noise_in_signed_units():
    from dng_tgn.nn.inr_variants import noisy_targets

    img = torch.zeros(20, 1, 64, 64)
    assert noisy_targets(img, 0.0) is img  # no noise: the targets themselves
    g = torch.Generator().manual_seed(0)
    noisy = noisy_targets(img, 0.06, generator=g)
    # 0.06 of a [0, 1] image is 0.12 of a [-1, 1] one (the authors add it before scaling)
    assert abs(float(noisy.std()) - 0.12) < 0.003 and abs(float(noisy.mean())) < 0.003
    edge = noisy_targets(torch.ones(4, 1, 16, 16), 0.5, generator=g)
    assert float(edge.max()) == 1.0 and float(edge.min()) >= -1.0  # clamped to the image range, as theirs
    assert not torch.equal(noisy_targets(img, 0.06), noisy_targets(img, 0.06))  # fresh noise every call
    with pytest.raises(ValueError, match="noise std"):
        noisy_targets(img, -0.1)


def test_mask_dropout_has_dropouts_distribution():
    from dng_tgn.nn.inr2jls import MaskDropout

    torch.manual_seed(0)
    x = torch.ones(400_000, requires_grad=True)
    d = MaskDropout(0.3).train()
    y = d(x)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient passes through the same mask and scale
    assert torch.equal(d.eval()(x), x) and torch.equal(MaskDropout(0.0).train()(x), x)
    # negative control: in training mode two calls draw two masks
    d.train()
    assert not torch.equal(d(x) != 0, d(x) != 0)
    with pytest.raises(ValueError, match="dropout probability"):
        MaskDropout(1.0)


def test_pixel_classifier_reports_its_validation_curve():
    from dng_tgn.baselines.pixel_cnn import train_pixel_classifier

    g = torch.Generator().manual_seed(0)

    def split(n):
        y = torch.randint(0, 2, (n,), generator=g)
        return torch.randn(n, 1, 4, 4, generator=g), y

    cls = dict(conv_channels=2, hidden=4, conv_dropout=0.5, mlp_dropout=0.0)
    out = train_pixel_classifier({"train": split(32), "val": split(8), "test": split(8)}, seed=0, steps=6,
                                 batch_size=8, lr=1e-3, weight_decay=0.0, eval_every=2, classifier=cls)
    assert [p[0] for p in out["history"]] == [2, 4, 6]
    assert out["best_val"] == max(p[1] for p in out["history"])


def test_encoder_only_resumes_where_it_stopped(tmp_path, runs_root):
    from experiments.inr2jls import ex

    root = write_inr_set(tmp_path / "inrs", n_train=8, n_val=4, n_test=4)
    cfg = dict(inr_tiny(root), variant="encoder_only")
    cfg["runtime"].update(device="cpu", num_threads=1)
    first = ex.run(config_updates=cfg, options={"--capture": "no"})
    first_dir = Path(first.observers[0].dir)
    cfg2 = json.loads(json.dumps(cfg))
    cfg2["cls"]["steps"] = 6
    cfg2["runtime"]["resume"] = str(first_dir)
    second = ex.run(config_updates=cfg2, options={"--capture": "no"})
    m = json.loads((Path(second.observers[0].dir) / "metrics.json").read_text())
    assert m["cls.train.loss"]["steps"] == [5, 6]  # only the steps the first run did not take
    assert second.result["cls"]["resumed_from_step"] == 4 and second.result["recon"] is None


def test_nfn_normalisation_comes_from_the_given_training_params_or_is_off():
    from dng_tgn.data.siren_fit import NFN_KEYS
    from dng_tgn.nn.factory import EncoderKind, build_encoder

    train, other = _sirens(12, 0), _sirens(12, 1)
    other = {k: v * 3 for k, v in other.items()}
    kw = dict(num_outputs=1, num_slots=1, dng={}, ng_gnn={})
    nfn = dict(channels=[4], fourier=[4, 10.0], out_dim=4, head_layers=0)
    enc = build_encoder(EncoderKind.NFN_HNP, nfn=nfn, params=train, **kw)
    w2 = train[NFN_KEYS[2]].double()
    assert torch.allclose(enc.encoder.norm_stats[1, :2].double(), torch.stack([w2.mean(), w2.std()]), atol=1e-6)
    # negative control: other parameters give other statistics
    enc_other = build_encoder(EncoderKind.NFN_HNP, nfn=nfn, params=other, **kw)
    assert not torch.allclose(enc_other.encoder.norm_stats, enc.encoder.norm_stats, atol=1e-4)
    raw = build_encoder(EncoderKind.NFN_NP, nfn=dict(nfn, normalize=False), params=train, **kw)
    # NFN's INR setting: raw weights
    assert torch.equal(raw.encoder.norm_stats, torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 3))
