"""The ``dng-tgn`` command line: every subcommand in-process through ``main([...])``, plus the console script."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dng_tgn.cli import ARCHITECTURES, main
from dng_tgn.graph.io import load_stream
from dng_tgn.nets import NFNSiren, SimpleViT, ZooCNN
from dng_tgn.nn import DNGEncoder, load_encoder, save_encoder

VIT_KW = {"dim": 16, "dim_head": 8, "mlp_dim": 32, "heads": 2}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    torch.save(NFNSiren(hidden=8).state_dict(), d / "siren.pt")
    torch.save({"model": ZooCNN(channels=4).state_dict(), "step": 7}, d / "cnn.pt")  # a training checkpoint
    torch.save(SimpleViT(**VIT_KW).state_dict(), d / "vit.pt")
    (d / "text.pt").write_text("not a checkpoint")
    good = (d / "siren.pt").read_bytes()
    (d / "cut.pt").write_bytes(good[: len(good) // 2])
    return d


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_everywhere(capsys):
    for argv in ([], ["convert"], ["inspect"], ["draw"], ["replay-check"], ["encode"], ["datasets"],
                 ["datasets", "verify"]):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--help"])
        assert e.value.code == 0
        assert "usage: dng-tgn" in capsys.readouterr().out


def test_convert_round_trip(files, capsys):
    code, out, _ = run(capsys, "convert", files / "siren.pt", "-o", files / "siren.stream.pt")
    assert code == 0 and "19 nodes, 88 edges" in out
    s = load_stream(files / "siren.stream.pt")
    assert s.num_timestamps == 3
    # the same checkpoint through a named reference architecture, sizes inferred from the state_dict
    code, _, _ = run(capsys, "convert", files / "cnn.pt", "--arch", "ZooCNN", "-o", files / "cnn.stream.pt")
    assert code == 0 and load_stream(files / "cnn.stream.pt").num_slots == 9
    code, _, _ = run(capsys, "convert", files / "vit.pt", "--arch", "SimpleViT", "--arch-kwargs", json.dumps(VIT_KW),
                     "-o", files / "vit.stream.pt")
    assert code == 0
    # a user's factory: module:callable
    code, _, _ = run(capsys, "convert", files / "siren.pt", "--model", "dng_tgn.nets:NFNSiren",
                     "--arch-kwargs", '{"hidden": 8}', "-o", files / "siren2.stream.pt")
    assert code == 0 and load_stream(files / "siren2.stream.pt").num_nodes == s.num_nodes


def test_arch_registry_is_a_mapping():
    assert {"NFNSiren", "DWSNetsSiren", "ZooCNN", "SimpleViT"} <= set(ARCHITECTURES)


def test_inspect(files, capsys):
    code, out, _ = run(capsys, "inspect", files / "cnn.pt")
    assert code == 0
    assert "ZooCNN" in out and "per timestamp" in out and "convs.0.weight  (4, 1, 3, 3)" in out
    code, out, _ = run(capsys, "inspect", files / "vit.pt", "--heads", "2", "--json")
    info = json.loads(out)
    assert code == 0 and info["num_timestamps"] == len(info["timestamps"]) - 1
    params = dict(SimpleViT(**VIT_KW).named_parameters())  # every parameter, with its shape, and nothing else
    assert info["parameters"] == {k: list(v.shape) for k, v in params.items()}


def test_draw(files, capsys):
    for extra, name in ((["--t", "2"], "snap.png"), ([], "stream.svg"), (["--slots", "convs.1.weight"], "slots.png")):
        code, out, _ = run(capsys, "draw", files / "cnn.pt", "-o", files / name, *extra)
        assert code == 0 and (files / name).stat().st_size > 1000, out
    assert (files / "stream.svg").read_text().lstrip().startswith("<?xml")
    code, _, err = run(capsys, "draw", files / "cnn.pt", "-o", files / "x.png", "--t", "9")
    assert code == 2 and "out of range" in err


def test_replay_check(files, capsys):
    code, out, _ = run(capsys, "replay-check", files / "siren.pt")
    assert code == 0 and out.startswith("OK:") and out.count("\n") == 1
    code, out, _ = run(capsys, "replay-check", files / "cnn.pt", "--arch", "ZooCNN", "--stream", files / "cnn.stream.pt")
    assert code == 0 and out.startswith("OK:")
    code, out, _ = run(capsys, "replay-check", files / "vit.pt", "--arch", "SimpleViT", "--arch-kwargs", json.dumps(VIT_KW))
    assert code == 0 and out.startswith("OK:")
    # a stream of different weights must fail
    torch.manual_seed(1)
    torch.save(NFNSiren(hidden=8).state_dict(), files / "other.pt")
    run(capsys, "convert", files / "other.pt", "-o", files / "other.stream.pt")
    code, out, _ = run(capsys, "replay-check", files / "siren.pt", "--stream", files / "other.stream.pt")
    assert code == 1 and out.startswith("MISMATCH:") and out.count("\n") == 1


def test_encode(files, capsys, tmp_path):
    enc = DNGEncoder(8, message_heads=9, head_dim=4, fourier_size=8, max_timestamps=4, device="cpu")
    save_encoder(enc, tmp_path / "enc.pt", extra={"note": "untrained"})
    assert torch.load(tmp_path / "enc.pt", weights_only=True)["kwargs"]["message_heads"] == 9
    code, out, _ = run(capsys, "encode", files / "siren.stream.pt", files / "cnn.pt", files / "siren.pt",
                       "--encoder", tmp_path / "enc.pt", "-o", tmp_path / "emb.npy")
    assert code == 0, out
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (3, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(emb[0], emb[2], rtol=0, atol=1e-6)  # the stream file and its checkpoint agree
    back = load_encoder(tmp_path / "enc.pt", device="cpu")
    with torch.no_grad():
        direct = back([load_stream(files / "siren.stream.pt")]).embedding.numpy()
    np.testing.assert_allclose(emb[:1], direct, atol=1e-6)
    code, _, err = run(capsys, "encode", files / "siren.pt", "--encoder", files / "siren.pt", "-o", tmp_path / "e.npy")
    assert code == 2 and "not a dng_tgn encoder file" in err


def test_datasets_build_and_verify(tmp_path, capsys):
    out = tmp_path / "zoo"
    code, _, _ = run(capsys, "datasets", "build", "cnn-zoo", "--dataset", "digits", "--n-models", "6", "--shard-size", "6",
                     "--steps-per-epoch", "2", "--checkpoints", "0,1", "--n-eval", "40", "--device", "cpu", "--out", out)
    assert code == 0
    code, stdout, _ = run(capsys, "datasets", "verify", "cnn-zoo", out, "--quiet")
    assert code == 0 and stdout.startswith("OK: cnn-zoo") and "train" in stdout and "test" in stdout
    code, _, err = run(capsys, "datasets", "verify", "vit-zoo", out)
    assert code == 2 and "lacks models.pt" in err and err.count("\n") == 1
    code, _, err = run(capsys, "datasets", "verify", "inrs", tmp_path / "nowhere")
    assert code == 2 and "no such dataset folder" in err


@pytest.mark.parametrize("argv, message", [
    (["inspect", "{d}/missing.pt"], "missing.pt: no such file"),
    (["inspect", "{d}/text.pt"], "text.pt: not a torch file"),
    (["inspect", "{d}/cut.pt"], "cut.pt: damaged torch file"),
    (["inspect", "{d}"], "is a directory"),
    (["inspect", "{d}/siren.pt", "--arch", "ResNet"], "unknown --arch 'ResNet'; known: NFNSiren"),
    (["inspect", "{d}/cnn.pt", "--arch", "NFNSiren"], "does not fit NFNSiren"),
    (["inspect", "{d}/vit.pt"], "heads"),
    (["inspect", "{d}/siren.pt", "--model", "no_such_module:f"], "cannot import no_such_module"),
    (["inspect", "{d}/siren.pt", "--arch", "NFNSiren", "--arch-kwargs", "[oops"], "--arch-kwargs is not valid JSON"),
    (["replay-check", "{d}/vit.pt", "--heads", "2"], "name the architecture"),
    (["draw", "{d}/siren.pt", "-o", "{d}/x.gif"], "must end in .png, .svg or .pdf"),
    (["encode", "{d}/siren.pt", "--encoder", "{d}/nope.pt", "-o", "{d}/e.npy"], "nope.pt: no such encoder file"),
])
def test_clear_errors(files, capsys, argv, message):
    code, out, err = run(capsys, *[a.replace("{d}", str(files)) for a in argv])
    assert code == 2, (out, err)
    assert message in err and err.count("\n") == 1 and err.startswith("dng-tgn ")
    assert "Traceback" not in err


def test_console_script(files):
    exe = shutil.which("dng-tgn", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("the dng-tgn console script is not installed (pip install -e .)")
    r = subprocess.run([exe, "replay-check", str(files / "siren.pt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("OK: replaying the ") and "NFNSiren" in r.stdout and r.stdout.count("\n") == 1
