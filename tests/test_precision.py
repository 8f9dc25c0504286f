"""Mixed precision (dng_tgn.nn.precision): bf16 autocast keeps the DNG-Encoder close to fp32; fp16 on CPU is refused.

Tolerance for bf16: the embedding is a mean of LayerNorm-ed memories (entries O(1)). bf16 keeps 8 bits of
mantissa (relative rounding 2^-9 ~ 2e-3 per op, so ~1e-2 on LayerNorm outputs of magnitude ~3); each
timestamp's products sum over up to d = 64 terms and three timestamps compound, so errors of several 1e-2
absolute are expected. We require max |bf16 - fp32| <= 0.2, mean abs difference <= 0.03 and a cosine
similarity >= 0.999 per network (measured here: max 0.088, mean 0.009, min cosine 0.9998): about twice the
measured bf16 error, and far below what a wrong op (a dropped term, a wrong gate) produces (O(1)).
"""
from __future__ import annotations

import pytest
import torch

import dng_tgn
from dng_tgn.nets import NFNSiren
from dng_tgn.nn import DNGEncoder, ExecutionPath
from dng_tgn.nn.precision import AmpMode, PrecisionError, autocast, check_amp, grad_scaler


def test_parse_modes():
    assert AmpMode.parse(None) is AmpMode.FP32
    assert AmpMode.parse("BF16") is AmpMode.BF16
    assert AmpMode.parse("bfloat16") is AmpMode.BF16
    assert AmpMode.parse("off") is AmpMode.FP32
    with pytest.raises(PrecisionError, match="unknown amp mode"):
        AmpMode.parse("fp8")


def test_fp16_on_cpu_is_refused_clearly():
    with pytest.raises(PrecisionError, match="needs a CUDA device.*bf16"):
        autocast("fp16", "cpu")
    with pytest.raises(PrecisionError, match="needs a CUDA device"):
        grad_scaler(AmpMode.FP16, "cpu")


def test_scaler_disabled_unless_fp16():
    assert not grad_scaler("bf16", "cpu").is_enabled()
    assert not grad_scaler(None, "cpu").is_enabled()
    assert check_amp("fp32", "cpu") is AmpMode.FP32


@pytest.mark.parametrize("path", [ExecutionPath.TORCH])
def test_dng_encoder_bf16_autocast_close_to_fp32(path):
    torch.manual_seed(0)
    batch = dng_tgn.batch_streams([dng_tgn.to_event_stream(NFNSiren()) for _ in range(4)])
    enc = DNGEncoder(64, fourier_size=32, max_timestamps=3, device="cpu", path=path)
    with torch.no_grad():
        ref = enc(batch).embedding
        with autocast("bf16", "cpu"):
            low = enc(batch).embedding
    assert low.dtype in (torch.bfloat16, torch.float32)
    diff = (low.float() - ref).abs()
    assert float(diff.max()) <= 0.2
    assert float(diff.mean()) <= 0.03
    cos = torch.nn.functional.cosine_similarity(low.float(), ref, dim=1)
    assert float(cos.min()) >= 0.999


def test_bf16_training_step_runs_and_gives_finite_grads():
    torch.manual_seed(0)
    batch = dng_tgn.batch_streams([dng_tgn.to_event_stream(NFNSiren()) for _ in range(2)])
    enc = DNGEncoder(32, fourier_size=16, max_timestamps=3, device="cpu", path=ExecutionPath.TORCH)
    opt = torch.optim.SGD(enc.parameters(), lr=1e-3)
    scaler = grad_scaler("bf16", "cpu")
    with autocast("bf16", "cpu"):
        loss = enc(batch).embedding.float().pow(2).mean()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert all(p.dtype == torch.float32 for p in enc.parameters())


def test_encoder_amp_option():
    torch.manual_seed(0)
    batch = dng_tgn.batch_streams([dng_tgn.to_event_stream(NFNSiren()) for _ in range(2)])
    enc = DNGEncoder(32, fourier_size=16, max_timestamps=3, device="cpu", path=ExecutionPath.TORCH)
    with torch.no_grad():
        ref = enc(batch).embedding
        enc.amp = AmpMode.BF16
        low = enc(batch).embedding
    assert float((low.float() - ref).abs().max()) <= 0.2
    with pytest.raises(PrecisionError, match="needs a CUDA device"):
        DNGEncoder(32, fourier_size=16, max_timestamps=3, device="cpu", amp="fp16")(batch)
