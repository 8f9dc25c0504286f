"""A self-describing file for a trained :class:`~dng_tgn.nn.DNGEncoder`: its constructor kwargs and weights.

On disk (``torch.save``; read back with ``torch.load(weights_only=True)``, so loading runs no code)::

    {"format": "dng_tgn.encoder", "version": 1,
     "kwargs": {"memory_dim": 16, "message_dim": 16, "message_heads": 9, "head_dim": 8, "fourier_size": 16,
                "fourier_scale": 3.0, "max_timestamps": 12, "max_inputs": 256},
     "readout": {"kind": "mean"} | {"kind": "concat", "num_outputs": 10},
     "state_dict": {...},
     "extra": {...}}          # anything the caller adds: training data, metrics, class names

``load_encoder(path)`` rebuilds ``DNGEncoder(**kwargs, readout=...)`` and loads the weights strictly.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..atomic import atomic_torch_save
from ..errors import DNGError
from .encoder import DNGEncoder
from .heads import ConcatReadout, MeanReadout, Readout

FORMAT = "dng_tgn.encoder"
VERSION = 1
ENCODER_KWARGS = ("memory_dim", "message_dim", "message_heads", "head_dim", "fourier_size", "fourier_scale",
                  "max_timestamps", "max_inputs", "cell", "gru_input", "rnn_layers", "shared_message",
                  "per_timestamp_update", "positional_embedding", "activation_embedding")

# readout name -> (class, its constructor arguments); a new readout is one entry here
READOUTS: dict[str, tuple[type[Readout], tuple[str, ...]]] = {
    "mean": (MeanReadout, ()),
    "concat": (ConcatReadout, ("num_outputs",)),
}

__all__ = ["save_encoder", "load_encoder", "encoder_kwargs", "EncoderFormatError", "FORMAT", "VERSION"]


class EncoderFormatError(DNGError):
    """Not an encoder file, another format version, or weights that do not fit the recorded kwargs."""


def encoder_kwargs(encoder: DNGEncoder) -> dict:
    """The constructor kwargs that rebuild ``encoder``'s architecture, read off its modules."""
    mem = encoder.memory
    rff = mem.edge_features.rff
    heads = [m for m in mem.modules() if hasattr(m, "head_dim")]
    up = mem.updater_at(1)
    return {
        "memory_dim": int(mem.memory_dim), "message_dim": int(mem.message_dim),
        "message_heads": int(mem.message_heads), "head_dim": int(heads[0].head_dim) if heads else 32,
        "fourier_size": int(rff.fourier_size), "fourier_scale": float(rff.scale),
        "max_timestamps": int(mem.max_timestamps), "max_inputs": int(mem.inputs.max_inputs),
        # the memory's ablation options (files written before they existed lack them: the defaults)
        "cell": up.cell_type.value, "gru_input": up.cell_input.value, "rnn_layers": int(up.passes),
        "shared_message": bool(mem.shared_message), "per_timestamp_update": bool(mem.per_timestamp_update),
        "positional_embedding": mem.layer_embedding is not None,
        "activation_embedding": mem.nonlinearity_embedding is not None,
    }


def _readout_spec(readout: Readout) -> dict:
    for kind, (cls, args) in READOUTS.items():
        if type(readout) is cls:
            return {"kind": kind, **{a: getattr(readout, a) for a in args}}
    raise TypeError(f"cannot save readout {type(readout).__name__}; known readouts: {', '.join(READOUTS)}")


def _build(kwargs: dict, readout: dict, device) -> DNGEncoder:
    kind = readout.get("kind")
    if kind not in READOUTS:
        raise EncoderFormatError(f"unknown readout {kind!r}; known readouts: {', '.join(READOUTS)}")
    cls, args = READOUTS[kind]
    unknown = set(kwargs) - set(ENCODER_KWARGS)
    if unknown:
        raise EncoderFormatError(f"unknown DNGEncoder kwargs {sorted(unknown)}")
    return DNGEncoder(**kwargs, readout=cls(*(readout[a] for a in args)), device=device)


def save_encoder(encoder: DNGEncoder, path: str | os.PathLike, *, kwargs: dict | None = None,
                 extra: dict | None = None) -> Path:
    """Write ``encoder`` (kwargs + readout + state_dict) atomically to ``path``.

    ``kwargs`` default to :func:`encoder_kwargs`; either way they are checked by rebuilding the encoder and
    comparing every weight's shape, so a file that saves always loads. ``extra``: plain data (str, numbers,
    lists, dicts, tensors) stored beside the weights.
    """
    if not isinstance(encoder, DNGEncoder):
        raise TypeError(f"save_encoder needs a DNGEncoder, got {type(encoder).__name__}")
    kwargs = dict(encoder_kwargs(encoder) if kwargs is None else kwargs)
    readout = _readout_spec(encoder.readout)
    state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    fresh = _build(kwargs, readout, "cpu").state_dict()
    bad = sorted(k for k in set(fresh) | set(state) if k not in fresh or k not in state or fresh[k].shape != state[k].shape)
    if bad:
        raise EncoderFormatError(f"kwargs {kwargs} do not rebuild this encoder: parameters {bad[:4]} differ")
    obj = {"format": FORMAT, "version": VERSION, "kwargs": kwargs, "readout": readout, "state_dict": state,
           "extra": dict(extra or {})}
    path = Path(path)
    atomic_torch_save(obj, path)
    return path


def load_encoder(path: str | os.PathLike, device=None, *, return_extra: bool = False):
    """Rebuild the encoder saved by :func:`save_encoder` (in eval mode; ``device=None``: CUDA if available).

    Returns the encoder, or ``(encoder, extra)`` with ``return_extra=True``. Raises ``FileNotFoundError`` or
    :class:`EncoderFormatError` (a ``ValueError``) naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such encoder file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise EncoderFormatError(f"{path}: not a readable encoder file ({type(e).__name__}: {first})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise EncoderFormatError(f"{path} is not a dng_tgn encoder file (no format={FORMAT!r} header)")
    if obj.get("version") != VERSION:
        raise EncoderFormatError(f"{path} is an encoder file of format version {obj.get('version')!r}; "
                                 f"this dng_tgn reads version {VERSION} only")
    try:
        encoder = _build(dict(obj["kwargs"]), dict(obj["readout"]), "cpu")
        encoder.load_state_dict(obj["state_dict"], strict=True)
    except EncoderFormatError:
        raise
    except (KeyError, TypeError, RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise EncoderFormatError(f"{path}: damaged encoder file ({type(e).__name__}: {first})") from None
    from ..device import default_device

    encoder.to(default_device() if device is None else torch.device(device)).eval()
    return (encoder, obj.get("extra", {})) if return_extra else encoder
