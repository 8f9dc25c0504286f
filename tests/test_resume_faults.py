"""Fault injection: every experiment and dataset builder is SIGKILLed at two chosen points and resumed; the
result must be bit-identical to an uninterrupted run with the same seed (CPU, one thread).

Faults are deterministic: ``DNG_KILL_AT`` (see :mod:`dng_tgn.faults`) makes a forked child process kill itself
with SIGKILL at a named point: after training step k, right after a checkpoint, before / after an atomic file
write. The child is forked from the test process (it inherits the imports, so each kill costs the work, not a
second of interpreter start-up); SIGKILL gives it no chance to clean up, exactly like ``kill -9``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path

import pytest
import torch

from dng_tgn.faults import ENV_KILL_AT
from dng_tgn.training.checkpoint import checkpoint_files as checkpoint_files_of

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_downstream_experiments import TINY_ENC, inr_tiny, write_cnn_zoo, write_inr_set, write_vit_zoo  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")]
NO_CAPTURE = {"--capture": "no"}


@pytest.fixture(autouse=True)
def runs(runs_root):
    return runs_root


def killed(fn, kill_at: str) -> None:
    """Run ``fn`` in a forked child that SIGKILLs itself at the point ``kill_at``; it must die there."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.environ[ENV_KILL_AT] = kill_at
            fn()
        except BaseException:
            traceback.print_exc()
            code = 3
        finally:
            os._exit(code)  # only reached when the kill point was never hit
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"the child was not killed at {kill_at!r} (exit status {status})"


def run_dirs(runs: Path, name: str) -> list[Path]:
    base = runs / name
    return sorted((d for d in base.iterdir() if d.name.isdigit()), key=lambda d: int(d.name)) if base.is_dir() else []


def resume_chain(runs: Path, ex, name: str, config: dict, kills: list[str]):
    """Kill a fresh run at kills[0], resume it and kill that at kills[1], ..., resume to the end in-process."""
    dirs = []
    cfg = config
    for point in kills:
        killed(lambda: ex.run(config_updates=cfg, options=NO_CAPTURE), point)
        dirs.append(run_dirs(runs, name)[-1])
        cfg = {**config, "runtime": {**config["runtime"], "resume": str(dirs[-1])}}
    final = ex.run(config_updates=cfg, options=NO_CAPTURE)
    return final, dirs, Path(final.observers[0].dir)


def metrics(d: Path) -> dict:
    return json.loads((d / "metrics.json").read_text())


def check_same_curves(reference_dir: Path, dirs: list[Path]) -> int:
    """Every value any run of the chain logged (training losses, validation and test curves) equals the
    uninterrupted run's value at that step, bit for bit; returns how many values were compared."""
    ref = metrics(reference_dir)
    compared = 0
    for d in dirs:
        for name, m in metrics(d).items():
            expected = dict(zip(ref[name]["steps"], ref[name]["values"]))
            for step, value in zip(m["steps"], m["values"]):
                assert value == expected[step], f"{d.name}: {name} at step {step}: {value} != {expected[step]}"
                compared += 1
    return compared


def check_same_last_weights(reference_dir: Path, final_dir: Path, phase: str) -> None:
    from dng_tgn.training import latest_checkpoint, load_checkpoint

    a, b = (load_checkpoint(latest_checkpoint(d, phase)) for d in (reference_dir, final_dir))
    assert a.step == b.step and a.model.keys() == b.model.keys()
    assert all(torch.equal(a.model[k], b.model[k]) for k in a.model), f"{phase}: final weights differ"


def check_records(killed_dirs: list[Path], final_dir: Path, loss: str, total: int, flushed_at: list[int]) -> None:
    """Nothing logged is lost: each killed run's record holds its losses up to its last checkpoint, the chain of
    records covers every step, and each run links the one it resumed (which is marked INTERRUPTED)."""
    seen = set()
    for d, upto in zip(killed_dirs, flushed_at):
        steps = metrics(d)[loss]["steps"]
        assert upto in steps, f"{d}: {loss} steps {steps} lack the checkpointed step {upto}"
        seen.update(steps)
        run_json = json.loads((d / "run.json").read_text())
        assert run_json["status"] == "INTERRUPTED" and "resumed_by" in run_json
    seen.update(metrics(final_dir)[loss]["steps"])
    assert seen == set(range(1, total + 1))
    chain = [final_dir] + killed_dirs[::-1]
    for later, earlier in zip(chain, chain[1:]):
        assert json.loads((later / "info.json").read_text())["resumed_from"]["dir"] == str(earlier.resolve())


# ------------------------------------------------------------------------------------------------ experiments
def test_inr2jls_resumes_exactly_in_both_phases(tmp_path, runs):
    from experiments.inr2jls import ex

    root = write_inr_set(tmp_path / "inrs")
    config = inr_tiny(root, recon_steps=6, device="cpu", num_threads=1)
    config["cls"] = dict(steps=6, batch_size=4, eval_every=2)  # the classifier has dropout 0.5: RNG state matters
    reference = ex.run(config_updates=config, options=NO_CAPTURE)
    final, dirs, last = resume_chain(runs, ex, "inr2jls", config, ["recon/step/3", "cls/step/5"])
    assert final.result["test"] == reference.result["test"]  # bit-identical, not approximately equal
    ref_dir = Path(reference.observers[0].dir)
    assert check_same_curves(ref_dir, dirs + [last]) >= 18
    for phase in ("inr2jls_recon", "inr2jls_cls"):
        check_same_last_weights(ref_dir, last, phase)
    assert final.result["recon"]["resumed_from_step"] == 6 and final.result["cls"]["resumed_from_step"] == 4
    check_records(dirs[:1], dirs[1], "recon.train.loss", 6, [2])
    assert 4 in metrics(dirs[1])["cls.train.loss"]["steps"]
    assert set(metrics(last)["cls.train.loss"]["steps"]) == {5, 6}
    for phase in ("inr2jls_recon", "inr2jls_cls"):  # the last 2 checkpoints (+ the best) are kept
        assert len(checkpoint_files_of(last, phase)) <= 3


@pytest.mark.parametrize("name", ["cnn_generalization", "vit_generalization"])
def test_generalization_resumes_exactly(tmp_path, runs, name):
    import importlib

    ex = importlib.import_module(f"experiments.{name}").ex
    root = (write_cnn_zoo if name.startswith("cnn") else write_vit_zoo)(tmp_path / "zoo")
    config = dict(data=dict(root=str(root)), encoder=dict(TINY_ENC, kind="dng"),
                  head=dict(hidden=8, dropout=0.5),  # dropout: the RNG state must survive the kill
                  optim=dict(batch_size=4, steps=6, eval_every=2, patience=None),
                  runtime=dict(device="cpu", num_threads=1, eval_batch_size=8, keep_checkpoints=1))
    reference = ex.run(config_updates=config, options=NO_CAPTURE)
    final, dirs, last = resume_chain(runs, ex, name, config, [f"{name}/step/3", f"{name}/saved/4"])
    assert final.result["test"] == reference.result["test"]
    ref_dir = Path(reference.observers[0].dir)
    assert check_same_curves(ref_dir, dirs + [last]) > 10
    check_same_last_weights(ref_dir, last, name)
    assert final.result["best_step"] == reference.result["best_step"]
    check_records(dirs, last, f"{name}.train.loss", 6, [2, 4])
    assert len(checkpoint_files_of(last, name)) <= 2  # keep_checkpoints=1, plus the best


def test_static_vs_dynamic_resumes_exactly(runs):
    from experiments.static_vs_dynamic import ex

    trained = ("static_forward", "static_bidirectional", "dynamic")
    config = dict(data=dict(n_train=8, n_val=4, n_test=4, inputs_per_mlp=2), model=dict(hidden_dim=8, fourier_size=2),
                  optim=dict(epochs=5, batch_size=4, eval_every=1, patience=1, lr=0.03, schedule="cosine",
                             min_delta=0.0),
                  runtime=dict(device="cpu", num_threads=1, workers=1))  # one model at a time: kills land alike
    reference = ex.run(config_updates=config, options=NO_CAPTURE)
    # early stopping is part of what must survive the kills: two of the three models stop before epoch 5
    assert reference.result["static_bidirectional"]["epochs_run"] == 3
    assert reference.result["dynamic"]["epochs_run"] == 2
    # mid-training; right after the checkpoint that ends a model early; after the validation that decides to stop
    final, dirs, last = resume_chain(runs, ex, "static_vs_dynamic", config,
                                     ["static_forward/epoch/2", "static_bidirectional/saved/3", "dynamic/epoch/2"])
    ref_dir = Path(reference.observers[0].dir)
    assert check_same_curves(ref_dir, dirs + [last]) > 20
    for model in trained:
        check_same_last_weights(ref_dir, last, model)
    for model in trained:
        for key in ("test_mse", "val_mse", "best_epoch", "epochs_run", "final_train_loss"):
            assert final.result[model][key] == reference.result[model][key], (model, key)
    assert final.result["static"] == reference.result["static"] and final.result["ratio"] == reference.result["ratio"]
    check_records(dirs[:1], dirs[1], "static_forward.train.loss", 5, [1])
    assert metrics(dirs[1])["static_bidirectional.train.loss"]["steps"] == [1, 2, 3]
    assert "static_bidirectional.train.loss" not in metrics(last)  # stopped early before the kill: not retrained
    assert 1 in metrics(dirs[2])["dynamic.train.loss"]["steps"]
    assert metrics(last)["dynamic.train.loss"]["steps"] == [2]


# ------------------------------------------------------------------------------------------------ builders
def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def check_build_resumes_exactly(main, args: list[str], tmp_path: Path, kills: list[str]) -> None:
    main(args + ["--out", str(tmp_path / "reference")])
    out = tmp_path / "resumed"
    for point in kills:
        killed(lambda: main(args + ["--out", str(out)]), point)
    main(args + ["--out", str(out)])
    ref, got = tree(tmp_path / "reference"), tree(out)
    assert sorted(got) == sorted(ref)
    assert [k for k in ref if ref[k] != got[k]] == []  # every file byte-identical


def test_inr_builder_resumes_exactly(tmp_path):
    from dng_tgn.data import build_inrs

    args = ["--dataset", "digits", "--n-train", "6", "--n-val", "2", "--n-test", "3", "--aug-copies", "1",
            "--steps", "10", "--shard-size", "4", "--device", "cpu", "--no-compile", "--threads", "1"]
    # mid-shard (files of shard 2 written, its record not), then right after a shard's record
    check_build_resumes_exactly(build_inrs.main, args, tmp_path, ["wrote/net5.pth", "wrote/aug0_00000.json"])


def test_cnn_zoo_builder_resumes_exactly(tmp_path):
    from dng_tgn.data import build_cnn_zoo

    args = ["--dataset", "digits", "--n-models", "4", "--shard-size", "2", "--steps-per-epoch", "4",
            "--checkpoints", "0,1", "--n-eval", "60", "--device", "cpu", "--threads", "1"]
    check_build_resumes_exactly(build_cnn_zoo.main, args, tmp_path, ["wrote/shard_00000.npz", "wrote/metrics.csv.gz"])


def test_vit_zoo_builder_resumes_exactly(tmp_path):
    from dng_tgn.data import build_vit_zoo

    args = ["--dataset", "digits", "--n-models", "4", "--shard-size", "2", "--steps-per-epoch", "3",
            "--max-epochs", "2", "--n-eval", "60", "--dim", "8", "--dim-head", "4", "--mlp-dim", "8", "--depth", "1",
            "--device", "cpu", "--threads", "1"]
    check_build_resumes_exactly(build_vit_zoo.main, args, tmp_path, ["write/shard_00001.pt", "wrote/models.pt"])


def test_old_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    from dng_tgn.training import CheckpointError, load_checkpoint

    old = tmp_path / "recon.step00000002.pt"
    torch.save({"step": 2, "model": {}, "optimizer": {}, "best_model": None}, old)  # schema 1: no version field
    with pytest.raises(CheckpointError, match="schema version 1.*cannot be resumed exactly"):
        load_checkpoint(old)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a dng_tgn training checkpoint"):
        load_checkpoint(foreign)
    torch.save({"step": 2, "model": {}, "optimizer": {}, "schema": 99, "format": "dng_tgn.checkpoint"}, old)
    with pytest.raises(CheckpointError, match="schema version 99"):
        load_checkpoint(old)
    old.write_bytes(old.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(old)
