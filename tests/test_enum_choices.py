"""The config enums of INR editing (edit, method), NFN (mode / pool), the generalisation head (loss): the strings that
configs, CLIs and results files hold still parse (any case; a member passes through), a bad value is refused with an
error naming the option and listing the valid values, and dispatching on members computes what the strings did."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dng_tgn.baselines.nfn import NFNEncoder, NFNLayout, NFNMode
from dng_tgn.baselines.nfn_edit import NFNWeightEditor
from dng_tgn.data.image_edits import ImageEdit, edit_images
from dng_tgn.nets import NFNSiren
from dng_tgn.tasks.generalization import HeadLoss
from dng_tgn.tasks.inr_editing import EditingMethod, EditingModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]

# (enum, the option its errors name, its values in order: exactly the strings configs and results files hold)
ENUMS = [
    (ImageEdit, "edit", ("dilate", "erode", "gradient")),
    (EditingMethod, "method", ("dng", "nfn", "identity", "dng_image_decoder")),
    (NFNMode, "NFN mode", ("np", "hnp")),
    (HeadLoss, "head.loss", ("bce", "mse")),
]


@pytest.mark.parametrize("cls, what, values", ENUMS, ids=[c.__name__ for c, _, _ in ENUMS])
def test_config_strings_parse_to_members(cls, what, values):
    assert tuple(m.value for m in cls) == values
    for m in cls:
        assert cls.parse(m.value) is m and cls.parse(f" {m.value.upper()} ") is m and cls.parse(m) is m


@pytest.mark.parametrize("cls, what, values", ENUMS, ids=[c.__name__ for c, _, _ in ENUMS])
def test_a_bad_value_names_the_option_and_the_valid_values(cls, what, values):
    with pytest.raises(ValueError) as err:
        cls.parse("bogus")
    assert str(err.value) == f"unknown {what} 'bogus'; valid values are " + ", ".join(repr(v) for v in values)
    with pytest.raises(ValueError, match="unknown .* None; valid values"):  # not a string at all
        cls.parse(None)


# ------------------------------------------------------------------------------------------------ at the boundaries
def siren_params(n=3, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, *v.shape, generator=g) for k, v in NFNSiren().state_dict().items()}


def test_public_functions_refuse_bad_strings_naming_the_option():
    layout = NFNLayout.from_module(NFNSiren())
    with pytest.raises(ValueError, match="unknown edit 'blur'; valid values are 'dilate', 'erode', 'gradient'"):
        edit_images(torch.zeros(1, 1, 4, 4), "blur")
    with pytest.raises(ValueError, match="unknown NFN mode 'xyz'; valid values are 'np', 'hnp'"):
        NFNEncoder(layout, "xyz")
    with pytest.raises(ValueError, match="unknown NFN pool 'max'; valid values are 'np', 'hnp'"):
        NFNEncoder(layout, "np", pool="max")
    with pytest.raises(ValueError, match="unknown NFN editor mode 'xyz'; valid values are 'np', 'hnp'"):
        NFNWeightEditor(layout, mode="xyz")
    with pytest.raises(ValueError, match="unknown method 'copy'; valid values are 'dng', 'nfn', 'identity'"):
        EditingModel("copy", None, (1, 8, 8), 30.0)
    with pytest.raises(ValueError, match="method='nfn' needs a network"):
        EditingModel("nfn", None, (1, 8, 8), 30.0)


def test_bad_config_choices_fail_before_any_run_directory(runs_root):
    from experiments.cnn_generalization import ex
    from experiments.ingredients import ConfigChoiceError

    with pytest.raises(ConfigChoiceError, match="encoder.nfn.pool='max': unknown NFN pool 'max'; valid values are "
                                                "'np', 'hnp'"):
        ex.run(config_updates={"encoder": {"kind": "nfn_hnp", "nfn": {"pool": "max"}}})
    assert not (runs_root / "cnn_generalization").exists()
    # negative control: the hook passes a valid pool (the run then stops on the missing data, a different error)
    with pytest.raises(FileNotFoundError, match="CNN zoo folder /nonexistent does not exist"):
        ex.run(config_updates={"encoder": {"kind": "nfn_hnp", "nfn": {"pool": "np"}}, "data": {"root": "/nonexistent"}})


def test_grid_cli_refuses_a_bad_method_or_edit(capsys):
    import experiments.inr_editing_grid as grid

    for argv, msg in ((["--methods", "dng,copy"], "unknown --methods entry 'copy'; valid values are 'dng', 'nfn'"),
                      (["--edits", "blur"], "unknown --edits entry 'blur'; valid values are 'dilate', 'erode'")):
        with pytest.raises(SystemExit) as e:
            grid.main(argv + ["--report"])
        assert e.value.code == 2 and msg in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ same numbers
def test_members_and_strings_compute_the_same():
    x = torch.rand(2, 1, 6, 6) * 2 - 1
    outs = {}
    for e in ImageEdit:
        outs[e] = edit_images(x, e)
        assert torch.equal(outs[e], edit_images(x, e.value))
    # negative control: the edits are different functions of the image
    assert not torch.equal(outs[ImageEdit.DILATE], outs[ImageEdit.ERODE])

    params, layout = siren_params(), NFNLayout.from_module(NFNSiren())
    y = {}
    for mode in ("np", NFNMode.NP, "HNP", NFNMode.HNP):
        torch.manual_seed(0)
        enc = NFNEncoder(layout, mode, channels=(4,), out_dim=3, head_hidden=8).eval()
        enc.set_normalization(params)
        y[mode] = enc(params).detach()
    assert torch.equal(y["np"], y[NFNMode.NP]) and torch.equal(y["HNP"], y[NFNMode.HNP])
    assert not torch.allclose(y[NFNMode.NP], y[NFNMode.HNP])  # negative control: the two groups' layers differ

    z, t = torch.randn(16), torch.rand(16)
    bce, mse = HeadLoss.BCE.criterion()(z, t), HeadLoss.MSE.criterion()(z, t)
    torch.testing.assert_close(bce, torch.nn.functional.binary_cross_entropy(torch.sigmoid(z), t))
    torch.testing.assert_close(mse, ((torch.sigmoid(z) - t) ** 2).mean())
    assert abs(float(bce - mse)) > 0.1  # negative control: the two losses are not the same number


def test_results_written_before_the_enums_still_read(monkeypatch):
    """The committed row files (folders named by the config strings) collect into the committed report's rows."""
    import experiments.inr_editing_grid as grid

    report = REPO / "results" / "inr_editing.json"
    if not report.is_file():
        pytest.skip("no INR-editing results in this checkout")
    monkeypatch.chdir(REPO)  # read-only: collect() only reads results/rows/inr_editing
    rows = grid.collect(grid.EDIT_ORDER, grid.METHOD_ORDER)
    committed = json.loads(report.read_text())["rows"]
    assert len(rows) == len(committed) == 12 and any(r["mean"] is not None for r in rows)
    key = lambda r: (r["name"], r["edit"])  # noqa: E731
    assert {key(r): r for r in rows} == {key(r): r for r in committed}
