"""Mixed precision for the encoder and any training step: one switch, :class:`AmpMode`.

* ``AmpMode.FP32``: no autocast (the default).
* ``AmpMode.BF16``: ``torch.autocast(dtype=torch.bfloat16)`` on CPU and CUDA. bf16 has fp32's exponent range,
  so gradients need no scaling; :func:`grad_scaler` returns a disabled scaler.
* ``AmpMode.FP16``: ``torch.autocast(dtype=torch.float16)`` with a :class:`torch.amp.GradScaler`, CUDA only.
  On CPU it is refused with a :class:`PrecisionError`: CPU autocast's fp16 coverage is thin and slower than
  fp32 on most CPUs, and silently running fp32 instead would misreport what was measured; use BF16 there.

Usage in a training step::

    mode = AmpMode.parse(cfg["amp"])          # "fp32" | "bf16" | "fp16" (any case), or None -> FP32
    scaler = grad_scaler(mode, device)
    with autocast(mode, device):
        loss = loss_fn(model(batch), target)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()

Parameters stay fp32 (autocast casts per op); the DNG-Encoder's float32-only shortcuts (the sparse Eq. 4 route
in :mod:`dng_tgn.nn.memory`) step aside while autocast is on, and its small coefficient products run in fp32.
"""
from __future__ import annotations

import contextlib
from enum import Enum

import torch

from ..choices import parse_choice

__all__ = ["AmpMode", "PrecisionError", "autocast", "grad_scaler", "check_amp"]


class PrecisionError(ValueError):
    """An AMP mode that cannot run on the requested device."""


class AmpMode(Enum):
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"

    @classmethod
    def parse(cls, value: "str | AmpMode | None") -> "AmpMode":
        """A config value (None, "fp32", "bf16", "fp16", any case; also "none"/"off") -> AmpMode."""
        if value is None or isinstance(value, cls):
            return value or cls.FP32
        text = str(value).strip().lower()
        if text in ("", "none", "off", "false", "float32"):
            return cls.FP32
        aliases = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
        if text in aliases:
            return cls(aliases[text])
        return parse_choice(cls, value, "amp mode", error=PrecisionError, also=" or None")

    @property
    def dtype(self) -> torch.dtype | None:
        return {AmpMode.FP32: None, AmpMode.BF16: torch.bfloat16, AmpMode.FP16: torch.float16}[self]


def check_amp(mode: "AmpMode | str | None", device: torch.device | str) -> AmpMode:
    """``mode`` parsed and checked against ``device``; raises :class:`PrecisionError` where it cannot run."""
    mode = AmpMode.parse(mode)
    device = torch.device(device)
    if mode is AmpMode.FP16 and device.type != "cuda":
        raise PrecisionError(
            f"amp='fp16' needs a CUDA device (got {device.type}): fp16 autocast with loss scaling is a GPU "
            "feature; on CPU use amp='bf16' (autocast to bfloat16, no scaler needed) or amp='fp32'"
        )
    if mode is AmpMode.BF16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrecisionError("amp='bf16' but this GPU has no bfloat16 support; use amp='fp16' or amp='fp32'")
    if mode is not AmpMode.FP32 and device.type not in ("cpu", "cuda"):
        raise PrecisionError(f"amp={mode.value!r} is supported on cpu and cuda, not {device.type}")
    return mode


def autocast(mode: "AmpMode | str | None", device: torch.device | str):
    """A context manager: ``torch.autocast`` for BF16/FP16 on ``device``, a no-op for FP32."""
    mode = check_amp(mode, device)
    if mode is AmpMode.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=mode.dtype)


def grad_scaler(mode: "AmpMode | str | None", device: torch.device | str) -> torch.amp.GradScaler:
    """A ``torch.amp.GradScaler``: enabled for FP16 (on CUDA), disabled (a pass-through) otherwise."""
    mode = check_amp(mode, device)
    device = torch.device(device)
    return torch.amp.GradScaler(device.type, enabled=mode is AmpMode.FP16)
