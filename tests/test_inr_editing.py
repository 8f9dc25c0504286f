"""INR editing: the edits' definitions, the identity baseline's metric, equivariance of the weight-space edits
(with negative controls), and the Sacred experiment end to end on a tiny INR set."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from dng_tgn.data.image_edits import edit_images
from dng_tgn.data.rendered_inrs import INRSet, render_images
from dng_tgn.data.siren_fit import init_sirens
from dng_tgn.data.state_dict_set import StateDictSet
from dng_tgn.tasks.inr_editing import (NFN_KEYS, EditingMethod, EditingModel, EditingSplit, build_editing_model,
                                       editing_mse, render_sirens)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 8, 8)
TINY_ENC = dict(kind="dng", dng=dict(memory_dim=8, fourier_size=4), ng_gnn=dict(hidden_dim=8, num_layers=1, out_dim=8))
TINY = dict(dng_editor=dict(hidden=8, weight_fourier=4), nfn=dict(hidden=4, depth=2, fourier_size=4),
            decoder=dict(spatial_dim=8, latent_dim=4, generator_hidden=None, decoder_channels=4))


def siren_split(n=6, seed=0, edit="dilate") -> EditingSplit:
    g = torch.Generator().manual_seed(seed)
    params = dict(zip(NFN_KEYS, init_sirens(n, 1, generator=g)))
    # random-init SIRENs render near-flat images; scale the last layer up so the edits have something to act on
    params["net.2.weight"] = params["net.2.weight"] * 20
    ws = StateDictSet(params, torch.zeros(n, dtype=torch.long))
    return EditingSplit(INRSet(ws, render_images(params, SHAPE, 30.0)), edit)


def permute_hidden(params: dict, p1: torch.Tensor, p2: torch.Tensor) -> dict:
    """A symmetry of the SIRENs: permute both hidden layers' neurons (rows, biases, and the next layer's columns)."""
    out = dict(params)
    out["net.0.linear.weight"] = params["net.0.linear.weight"][:, p1]
    out["net.0.linear.bias"] = params["net.0.linear.bias"][:, p1]
    w2 = params["net.1.linear.weight"][:, :, p1]
    out["net.1.linear.weight"], out["net.1.linear.bias"] = w2[:, p2], params["net.1.linear.bias"][:, p2]
    out["net.2.weight"] = params["net.2.weight"][:, :, p2]
    return out


def with_params(split: EditingSplit, params: dict) -> EditingSplit:
    ws = StateDictSet(params, split.inrs.weights.targets)
    return EditingSplit(INRSet(ws, render_images(params, SHAPE, 30.0)), split.edit)


# ------------------------------------------------------------------------------------------------ the edits
def test_edits_follow_the_public_kernels():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (3, 1, 7, 9)).astype(np.float32))
    a = x[:, 0].numpy()
    # dilate: 3x3 flat max (NFN's cv2.dilate(ones(3,3))), symmetric so the grey_dilation definition agrees
    assert np.allclose(edit_images(x, "dilate")[:, 0], np.stack([ndimage.grey_dilation(i, size=(3, 3)) for i in a]))
    # erode / gradient: a 2x2 window over pixels (i-1..i, j-1..j), checked by brute force with clamped borders
    pad = np.pad(a, ((0, 0), (1, 0), (1, 0)), mode="edge")
    win = np.stack([pad[:, 1:, 1:], pad[:, :-1, 1:], pad[:, 1:, :-1], pad[:, :-1, :-1]])
    assert np.allclose(edit_images(x, "erode")[:, 0], win.min(0))
    assert np.allclose(edit_images(x, "gradient")[:, 0], win.max(0) - win.min(0) - 1)
    # the gradient is what OpenCV's uint8 morphological gradient becomes after (u/255 - 0.5)/0.5
    u = (a + 1) * 127.5
    padu = np.pad(u, ((0, 0), (1, 0), (1, 0)), mode="edge")
    winu = np.stack([padu[:, 1:, 1:], padu[:, :-1, 1:], padu[:, 1:, :-1], padu[:, :-1, :-1]])
    assert np.allclose(edit_images(x, "gradient")[:, 0], (winu.max(0) - winu.min(0)) / 127.5 - 1, atol=1e-5)
    # inputs are clipped to [-1, 1] first
    assert torch.equal(edit_images(x * 3, "erode"), edit_images((x * 3).clamp(-1, 1), "erode"))


def test_edit_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown edit 'blur'"):
        edit_images(torch.zeros(1, 1, 4, 4), "blur")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        edit_images(torch.zeros(4, 4), "erode")
    with pytest.raises(ValueError, match="NaN"):
        edit_images(torch.full((1, 1, 4, 4), float("nan")), "erode")


# ------------------------------------------------------------------------------------------------ the metric
def test_identity_mse_is_the_rendered_vs_target_mse():
    split = siren_split(n=7)
    model = EditingModel("identity", None, SHAPE, 30.0)
    # computed independently: render each SIREN on its own, edit with scipy, average the squared error
    errs = []
    for i in range(len(split)):
        p = {k: v[i:i + 1] for k, v in split.inrs.weights.params.items()}
        img = render_sirens(p, SHAPE, 30.0)[0, 0].numpy()
        target = ndimage.maximum_filter(np.clip(img, -1, 1), size=3, mode="nearest")
        errs.append(np.mean((img - target) ** 2))
    direct = float(np.mean(errs))
    assert direct > 1e-3  # the edit changes the images, so the check is not 0 == 0
    assert editing_mse(model, split, batch_size=3) == pytest.approx(direct, rel=1e-5)


# ------------------------------------------------------------------------------------------------ equivariance
@pytest.mark.parametrize("method", ["dng", "nfn"])
def test_weight_space_edit_is_equivariant_to_hidden_neurons(method):
    torch.manual_seed(0)
    split = siren_split(n=4)
    model = build_editing_model(method, split, SHAPE, w0=30.0, encoder=TINY_ENC, path=None, **TINY)
    with torch.no_grad():  # train-free check: make the edit large enough to matter
        model.net.scale.fill_(5.0)
    idx = torch.arange(4)
    base = model(split, idx).detach()
    assert (base - split.images).abs().max() > 1e-2  # the edit does something
    p1, p2 = torch.randperm(32), torch.randperm(32)
    permuted = with_params(split, permute_hidden(split.inrs.weights.params, p1, p2))
    # a symmetry: the permuted SIRENs compute the same images, and the edited ones must too
    assert torch.allclose(permuted.images, split.images, atol=1e-5)
    assert torch.allclose(model(permuted, idx).detach(), base, atol=1e-4)
    # negative control: permute the second layer's rows without its bias and the next layer's columns: a different
    # network; the edited output must move
    bad = dict(split.inrs.weights.params)
    bad["net.1.linear.weight"] = bad["net.1.linear.weight"][:, p2]
    control = with_params(split, bad)
    assert (model(control, idx).detach() - base).abs().max() > 1e-2


def test_dng_editor_refuses_a_node_order_it_does_not_understand():
    split = siren_split(n=2)
    model = build_editing_model("dng", split, SHAPE, w0=30.0, encoder=TINY_ENC, path=None, **TINY)
    batch, _ = split.inrs.weights.batch([0, 1])
    params = split.params([0, 1])
    params["net.0.linear.bias"] = params["net.0.linear.bias"].flip(1)  # memories would pair with the wrong weights
    with pytest.raises(ValueError, match="node order"):
        model.net(batch, params)


# ------------------------------------------------------------------------------------------------ end to end
def write_inr_set(root: Path, n_train=8, n_val=4, n_test=4) -> Path:
    split = siren_split(n_train + n_val + n_test, seed=1)
    params = split.inrs.weights.params
    for i in range(len(split)):
        (root / "randinit_smaller_0s").mkdir(parents=True, exist_ok=True)
        torch.save({k: v[i].clone() for k, v in params.items()}, root / "randinit_smaller_0s" / f"net{i}.pth")
    meta = {"split_points": [n_train, n_train + n_val], "image_shape": list(SHAPE)}
    (root / "meta.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("method", [m.value for m in EditingMethod])  # as a Sacred config holds it
def test_experiment_end_to_end(tmp_path, runs_root, method):
    from experiments.inr_editing import ex

    root = write_inr_set(tmp_path / "inrs")
    npz = tmp_path / "ex.npz"
    r = ex.run(config_updates=dict(
        data=dict(root=str(root)), edit="erode", method=method, encoder=TINY_ENC, **TINY,
        optim=dict(steps=4, batch_size=4, eval_every=2), runtime=dict(device="cpu", num_threads=1, eval_batch_size=8),
        num_figure_images=3, examples_out=str(npz)), options={"--capture": "no"})
    s = r.result
    assert s["method"] == method and np.isfinite(s["test"]["mse"]) and s["test"]["mse"] > 0
    if method == "identity":
        assert s["test"]["mse"] == s["test"]["identity_mse"] and s["params"] == 0 and s["train"] is None
    else:
        assert s["train"]["steps"] == 4 and s["params"] > 0
    run_dir = Path(r.observers[0].dir)
    assert (run_dir / "inr_editing_examples.png").read_bytes().startswith(b"\x89PNG")
    ex_npz = np.load(npz)
    assert ex_npz["outputs"].shape == ex_npz["targets"].shape == (3, *SHAPE)


def test_experiment_refuses_unknown_choices_before_any_run_directory(runs_root):
    from experiments.inr_editing import ex
    from experiments.ingredients import ConfigChoiceError

    with pytest.raises(ConfigChoiceError, match="edit='blur': unknown edit 'blur'; valid values are 'dilate', 'erode', "
                                                "'gradient'"):
        ex.run(config_updates=dict(edit="blur"), options={"--capture": "no"})
    with pytest.raises(ConfigChoiceError, match="method='copy': unknown method 'copy'; valid values are 'dng', 'nfn', "
                                                "'identity', 'dng_image_decoder'"):
        ex.run(config_updates=dict(method="copy"), options={"--capture": "no"})
    with pytest.raises(ConfigChoiceError, match="nfn.mode='xnp': .*valid values are 'np', 'hnp'"):
        ex.run(config_updates=dict(nfn=dict(mode="xnp")), options={"--capture": "no"})
    assert not (runs_root / "inr_editing").exists() or not any((runs_root / "inr_editing").iterdir())


def test_print_config_is_clean(capsys):
    import warnings

    from experiments.inr_editing import ex

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a config key without a default would warn
        ex.run("print_config", options={"--unobserved": True})
    out = capsys.readouterr().out
    assert "edit = 'dilate'" in out and "method = 'dng'" in out and "kind = 'dng'" in out


def test_grid_report_from_row_files(tmp_path, monkeypatch):
    import experiments.inr_editing_grid as grid

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for method, mses in (("dng", [0.10, 0.12]), ("nfn", [0.20, 0.18]), ("identity", [0.3, 0.3])):
        for seed, mse in enumerate(mses):
            path = grid.row_file("dilate", method, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(dict(seed=seed, mse=mse, identity_mse=0.3, mean_target_mse=0.35, params=7,
                                            train_s=2.0, sizes={"train": 8})))
            img = rng.uniform(-1, 1, (4, 1, 8, 8)).astype(np.float16)
            np.savez(path.with_suffix(".npz"), inputs=img, targets=img, outputs=img)
    assert grid.main(["--report"]) == 0
    doc = json.loads(Path("results/inr_editing.json").read_text())
    rows = {(r["name"], r["edit"]): r for r in doc["rows"]}
    assert rows[("dng", "dilate")]["mean"] == pytest.approx(0.11)
    assert rows[("dng", "dilate")]["std"] == pytest.approx(np.std([0.10, 0.12], ddof=1))
    assert rows[("nfn", "erode")]["mean"] is None  # not run: listed, not dropped
    md = Path("results/inr_editing.md").read_text()
    assert "- dilate: DNG 0.1100 vs NFN 0.1900: met" in md and "- erode: not both run yet" in md
    assert Path("results/inr_editing_examples.png").read_bytes().startswith(b"\x89PNG")
