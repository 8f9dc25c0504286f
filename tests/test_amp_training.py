"""``runtime.amp`` reaches the training loops, bf16 training stays close to fp32, the fp16 scaler is checkpointed.

Tolerance (bf16 vs fp32, the regression task of ``tests/_ddp_worker.py``): autocast runs the two Linear layers
in bfloat16 (8-bit mantissa: relative rounding 2^-9 ~ 2e-3 per input, weight and product), the loss itself in
fp32. The first step's loss (same weights, only the forward precision differs) must agree to 2e-3 relative, one
bf16 rounding: the squared errors of 4 items average the independent roundings down (measured 5.7e-5). After 20
Adam steps (Adam normalises the gradient, so a rounding can flip a small update's sign) the final validation MSE
must agree to 2e-2 relative (measured 8.4e-4). The control: an exactly equal loss would mean autocast did
nothing, and the probe below sees autocast on (bf16) only when asked.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import _ddp_worker as worker
from dng_tgn.nn.precision import AmpMode, PrecisionError
from dng_tgn.training import EpochSampler, latest_checkpoint, load_checkpoint, train_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _probe_loop(tmp_path, amp, scaler=None, steps=2, resume=None):
    """A two-step loop whose train_step records whether autocast is on, and in which dtype."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    seen = []

    def step(idx):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return ((model(x[idx]) - y[idx]) ** 2).mean()

    train_loop(name="p", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
               sampler=EpochSampler(8, 4, seed=0), train_step=step, evaluate=lambda: {"m": 0.0}, monitor="m",
               higher_is_better=False, total_steps=steps, eval_every=2, patience=None, checkpoint_dir=tmp_path,
               resume_path=resume, amp=amp, scaler=scaler)
    return seen


def test_amp_option_reaches_the_loop(tmp_path):
    assert _probe_loop(tmp_path / "bf16", "bf16") == [(True, torch.bfloat16)] * 2
    assert {on for on, _ in _probe_loop(tmp_path / "fp32", None)} == {False}  # control: off unless asked


def test_fp16_on_cpu_is_refused_by_the_loop_and_the_config(tmp_path, runs_root):
    with pytest.raises(PrecisionError, match="needs a CUDA device"):
        _probe_loop(tmp_path, "fp16")
    from experiments.ingredients import ConfigChoiceError
    from experiments.static_vs_dynamic import ex

    with pytest.raises(ConfigChoiceError, match="runtime.amp='fp16'.*CUDA"):
        ex.run(named_configs=["tiny"], config_updates={"runtime": {"device": "cpu", "amp": "fp16"}})
    assert not runs_root.exists() or not list(runs_root.rglob("run.json"))  # refused before any run directory


def test_bf16_training_close_to_fp32(tmp_path):
    fp32 = worker.regression(tmp_path / "fp32", worker.STEPS)
    bf16 = worker.regression(tmp_path / "bf16", worker.STEPS, amp="bf16")
    first = abs(bf16["loss"][0] - fp32["loss"][0]) / fp32["loss"][0]
    final = abs(bf16["val"][-1] - fp32["val"][-1]) / fp32["val"][-1]
    print(f"bf16 vs fp32: first-step loss rel. diff {first:.2e}, final val MSE rel. diff {final:.2e}")
    assert first <= 2e-3 and final <= 2e-2
    assert first > 0  # bf16 really ran: an exact match would mean autocast did nothing


def test_scaler_state_is_checkpointed_and_restored(tmp_path):
    """fp16 needs CUDA; a CPU GradScaler exercises the same save/restore path of the loop."""
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    _probe_loop(tmp_path, None, scaler=scaler, steps=2)
    ck = load_checkpoint(latest_checkpoint(tmp_path, "p"))
    assert ck.scaler is not None and ck.scaler["scale"] == scaler.get_scale() == 4096.0  # grew once per step
    fresh = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    _probe_loop(tmp_path / "resumed", None, scaler=fresh, steps=3, resume=latest_checkpoint(tmp_path, "p"))
    assert fresh.get_scale() == 8192.0  # restored 4096, then one more step


@pytest.mark.filterwarnings("ignore:COLLAPSE WARNING")  # 2 steps on random nets: the predictor is constant
def test_runtime_amp_reaches_every_experiment(tmp_path, runs_root, monkeypatch):
    """The §7 loop and every train_loop call of INR2JLS (both phases) and the generalisation runs get runtime.amp."""
    import dng_tgn.tasks.static_vs_dynamic as svd
    import dng_tgn.training.loop as loop
    from test_downstream_experiments import inr_tiny, tiny_gen, write_cnn_zoo, write_inr_set

    seen = []
    real = loop.autocast

    def spy(mode, device):
        seen.append(AmpMode.parse(mode))
        return real(mode, device)

    monkeypatch.setattr(loop, "autocast", spy)
    monkeypatch.setattr(svd, "autocast", spy)
    from experiments import cnn_generalization, inr2jls, static_vs_dynamic

    for ex, config in [
        (static_vs_dynamic.ex, {"runtime": {"device": "cpu", "amp": "bf16"}}),
        (cnn_generalization.ex, tiny_gen(write_cnn_zoo(tmp_path / "zoo", n=12), steps=2, device="cpu", amp="bf16")),
        (inr2jls.ex, inr_tiny(write_inr_set(tmp_path / "inrs"), recon_steps=2, device="cpu", amp="bf16")),
    ]:
        seen.clear()
        named = ["tiny"] if ex is static_vs_dynamic.ex else []
        ex.run(named_configs=named, config_updates=config, options={"--capture": "no"})
        assert seen and set(seen) == {AmpMode.BF16}, ex.path
