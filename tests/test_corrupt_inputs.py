"""Every file a loader opens is checked when it is opened: a damaged file gives an error that names the file, the
line/row and what is wrong, never a traceback from deep inside pandas / json / torch. Each file type is
corrupted in at least three ways."""
from __future__ import annotations

import gzip
import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dng_tgn.data import CNNZooDataset, CorruptShardError, NFNSirenDataset, ViTZooDataset
from dng_tgn.data.input_checks import CorruptInputError
from dng_tgn.data.rendered_inrs import resolve_image_shape

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_downstream_experiments import write_cnn_zoo, write_inr_set, write_vit_zoo  # noqa: E402


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = write_cnn_zoo(tmp_path_factory.mktemp("cnn") / "zoo", n=24)
    (root / "split.csv").write_text("".join(f"{i}\n" for i in np.random.default_rng(0).permutation(24)))
    CNNZooDataset(root, "train")  # valid as written
    return root


@pytest.fixture(scope="module")
def inrs(tmp_path_factory):
    root = write_inr_set(tmp_path_factory.mktemp("inr") / "inrs")
    ds = NFNSirenDataset(root, "all")
    [ds[i] for i in range(len(ds))]
    return root


@pytest.fixture(scope="module")
def vits(tmp_path_factory):
    root = write_vit_zoo(tmp_path_factory.mktemp("vit") / "vits")
    ViTZooDataset(root, "all")
    return root


def fresh(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def gz_csv(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        f.write(df.to_csv(index=False).encode())
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ CNN zoo
def _metrics_truncated(root):
    p = root / "metrics.csv.gz"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _metrics_not_gzip(root):
    (root / "metrics.csv.gz").write_text("step,test_accuracy\n1,0.5\n")


def _metrics_bad_header(root):
    df = pd.read_csv(root / "metrics.csv.gz").rename(columns={"test_accuracy": "acc"})
    (root / "metrics.csv.gz").write_bytes(gz_csv(df))


def _metrics_not_a_number(root):
    df = pd.read_csv(root / "metrics.csv.gz")
    df["test_accuracy"] = df["test_accuracy"].astype(object)
    df.loc[5, "test_accuracy"] = "n/a%"
    (root / "metrics.csv.gz").write_bytes(gz_csv(df))


def _metrics_ragged_row(root):
    text = gzip.decompress((root / "metrics.csv.gz").read_bytes()).decode().splitlines()
    text[3] += ",1,2,3"
    (root / "metrics.csv.gz").write_bytes(gzip.compress(("\n".join(text) + "\n").encode()))


@pytest.mark.parametrize("corrupt,match", [
    (_metrics_truncated, r"metrics\.csv\.gz: truncated gzip stream"),
    (_metrics_not_gzip, r"metrics\.csv\.gz: not a gzip file"),
    (_metrics_bad_header, r"metrics\.csv\.gz, line 1: bad CSV header .*lacks column\(s\) \['test_accuracy'\]"),
    (_metrics_not_a_number, r"metrics\.csv\.gz, line 7 \(row 5\): column 'test_accuracy' holds 'n/a%'"),
    (_metrics_ragged_row, r"metrics\.csv\.gz: malformed CSV: .*line 4"),
])
def test_corrupt_zoo_metrics(zoo, tmp_path, corrupt, match):
    root = fresh(zoo, tmp_path)
    corrupt(root)
    with pytest.raises(CorruptInputError, match=match):
        CNNZooDataset(root, "train")


@pytest.mark.parametrize("content,match", [
    ("index\n0\n1\n", r"split\.csv, line 1: 'index' is not a row index \(a split file has no header line\)"),
    ("0\n1\n999\n", r"split\.csv, line 3: row index 999 is outside 0\.\.23"),
    ("0\n1\n2\n1\n", r"split\.csv, line 4: row index 1 appears again \(first on line 2\)"),
    ("0\n1.5\n", r"split\.csv, line 2: '1\.5' is not a row index"),
    ("\n", r"split\.csv: empty split file"),
    ("5\n", r"split 'val' is empty \(1 usable final checkpoints listed in .*split\.csv\)"),  # too few rows listed
])
def test_corrupt_split_file(zoo, tmp_path, content, match):
    root = fresh(zoo, tmp_path)
    (root / "split.csv").write_text(content)
    with pytest.raises(CorruptInputError, match=match):
        CNNZooDataset(root, "val")


def _drop_layout_row(varname):
    def corrupt(root):
        df = pd.read_csv(root / "layout.csv")
        df[df.varname != varname].to_csv(root / "layout.csv", index=False)
    return corrupt


def _layout_header(root):
    df = pd.read_csv(root / "layout.csv").rename(columns={"start_idx": "start"})
    df.to_csv(root / "layout.csv", index=False)


def _layout_shape(root):
    df = pd.read_csv(root / "layout.csv")
    df.loc[2, "shape"] = "(3, 3, four)"
    df.to_csv(root / "layout.csv", index=False)


@pytest.mark.parametrize("corrupt,match", [
    (_drop_layout_row("sequential/conv2d_1/bias:0"),
     r"layout\.csv, line 5: sequential/conv2d_2/kernel:0 starts at \d+, but the variables before it end at \d+: "
     r"a row is missing"),
    (_drop_layout_row("sequential/dense/bias:0"), r"layout\.csv: 'sequential/dense' has no bias:0 row"),
    (_drop_layout_row("sequential/conv2d/kernel:0"), r"layout\.csv, line 2: .* starts at 36.*a row is missing"),
    (_layout_header, r"layout\.csv, line 1: bad CSV header .*\['start_idx'\]"),
    (_layout_shape, r"layout\.csv, line 4: bad shape '\(3, 3, four\)'"),
])
def test_corrupt_layout(zoo, tmp_path, corrupt, match):
    root = fresh(zoo, tmp_path)
    corrupt(root)
    with pytest.raises(CorruptInputError, match=match):
        CNNZooDataset(root, "train")


@pytest.mark.parametrize("corrupt,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), r"weights\.npy: not a readable \.npy array, truncated"),
    (lambda p: np.save(p, np.zeros(10, np.float32)), r"weights\.npy: expected a 2-D float array .* got shape \(10,\)"),
    (lambda p: np.save(p, np.zeros((24, 20), np.float32)), r"weights\.npy: rows hold 20 values, layout\.csv needs"),
    (lambda p: np.save(p, np.zeros((23, 500), np.float32)), r"weights\.npy has 23 rows but metrics\.csv\.gz has 24"),
])
def test_corrupt_weights(zoo, tmp_path, corrupt, match):
    root = fresh(zoo, tmp_path)
    corrupt(root / "weights.npy")
    with pytest.raises(CorruptInputError, match=match):
        CNNZooDataset(root, "train")


def test_corrupt_zoo_through_the_experiment_names_the_file_and_the_builder(zoo, tmp_path, runs_root):
    from experiments.cnn_generalization import ex

    root = fresh(zoo, tmp_path)
    _metrics_truncated(root)
    with pytest.raises(ValueError, match=r"metrics\.csv\.gz: truncated gzip.*build_cnn_zoo"):
        ex.run(config_updates={"data": {"root": str(root)}, "runtime": {"device": "cpu"}},
               options={"--capture": "no"})


# ------------------------------------------------------------------------------------------------ INR sets
@pytest.mark.parametrize("content,match", [
    ('{"split_points": [12, 16], "image_shape": [1, 8, 8]', r"meta\.json, line 1 column \d+: JSON syntax error"),
    ('{"split_points": [12, 16],\n "image_shape": [1, 8, 8],,}', r"meta\.json, line 2 column \d+: JSON syntax error"),
    ("[12, 16]", r"meta\.json: the INR set meta\.json must hold a JSON object, not list"),
    ('{"split_points": "12,16"}', r"meta\.json: split_points must be \[val_point, test_point\]"),
    ('{"split_points": [12, 16], "image_shape": [8, 8]}', r"meta\.json: image_shape must be \[C, H, W\]"),
    ("", r"meta\.json: empty"),
])
def test_corrupt_inr_meta(inrs, tmp_path, content, match):
    root = fresh(inrs, tmp_path)
    (root / "meta.json").write_text(content)
    with pytest.raises(CorruptInputError, match=match):
        NFNSirenDataset(root, "train")
    with pytest.raises(CorruptInputError, match=match):
        resolve_image_shape(root, None)  # what INR2JLS reads first


def _inr_file(root):
    return NFNSirenDataset(root, "all").items[3][0]


@pytest.mark.parametrize("corrupt,error,match", [
    (lambda p: p.write_bytes(p.read_bytes()[:60]), CorruptShardError, r"corrupt INR checkpoint .*net3\.pth"),
    (lambda p: torch.save({"net.0.linear.weight": torch.zeros(32, 2)}, p), KeyError, r"net3\.pth: missing keys"),
    (lambda p: torch.save({**torch.load(p), "net.1.linear.weight": torch.zeros(32, 16)}, p), CorruptInputError,
     r"net3\.pth: net\.1\.linear\.weight has shape \(32, 16\), but the layer before it has 32 outputs"),
    (lambda p: torch.save({**torch.load(p), "net.2.bias": torch.zeros(2, 2)}, p), CorruptInputError,
     r"net3\.pth: net\.2\.bias has shape \(2, 2\), expected \(1,\)"),
    (lambda p: torch.save({"net.0.linear.weight": torch.zeros(16, 2), "net.0.linear.bias": torch.zeros(16),
                           "net.1.linear.weight": torch.zeros(16, 16), "net.1.linear.bias": torch.zeros(16),
                           "net.2.weight": torch.zeros(1, 16), "net.2.bias": torch.zeros(1)}, p), CorruptInputError,
     r"net3\.pth: tensor shapes .* differ from the set's other INRs"),
])
def test_corrupt_inr_file(inrs, tmp_path, corrupt, error, match):
    root = fresh(inrs, tmp_path)
    corrupt(_inr_file(root))
    ds = NFNSirenDataset(root, "all")
    with pytest.raises(error, match=match):
        [ds[i] for i in range(len(ds))]


# ------------------------------------------------------------------------------------------------ ViT zoo
def _vit_params(root):
    return torch.load(root / "models.pt")


@pytest.mark.parametrize("corrupt,error,match", [
    (lambda r: (r / "meta.json").write_text('{"model_kwargs": {"dim": 8,}}'), CorruptInputError,
     r"meta\.json, line 1 column \d+: JSON syntax error"),
    (lambda r: (r / "meta.json").write_text('{"heads": 2}'), CorruptInputError,
     r"meta\.json: lacks the SimpleViT 'model_kwargs'"),
    (lambda r: (r / "metrics.csv").write_text("model_id,acc\n0,0.5\n"), CorruptInputError,
     r"metrics\.csv, line 1: bad CSV header"),
    (lambda r: (r / "metrics.csv").write_text("model_id,test_accuracy\n0,0.5\n1,high\n"), CorruptInputError,
     r"metrics\.csv, line 3 \(row 1\): column 'test_accuracy' holds 'high'"),
    (lambda r: (r / "metrics.csv").write_text("model_id,test_accuracy\n"), CorruptInputError,
     r"metrics\.csv: the ViT zoo metrics file has a header but no rows"),
    (lambda r: (r / "models.pt").write_bytes((r / "models.pt").read_bytes()[:100]), CorruptShardError,
     r"models\.pt"),
    (lambda r: torch.save({k: (v[..., :-1] if v.dim() > 1 and k.endswith("weight") else v)
                           for k, v in _vit_params(r).items()}, r / "models.pt"), CorruptInputError,
     r"models\.pt: per-model tensor shapes"),
    (lambda r: torch.save({k: v for i, (k, v) in enumerate(_vit_params(r).items()) if i}, r / "models.pt"), KeyError,
     r"models\.pt keys differ"),
])
def test_corrupt_vit_zoo(vits, tmp_path, corrupt, error, match):
    root = fresh(vits, tmp_path)
    corrupt(root)
    with pytest.raises(error, match=match):
        ViTZooDataset(root, "all")
