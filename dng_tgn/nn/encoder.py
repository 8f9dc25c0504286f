"""``DNGEncoder``: event streams in, one embedding per network out (paper §5, Fig. 4)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..device import default_device
from ..graph.batch import StreamBatch, batch_streams
from ..graph.events import EventStream
from .heads import MeanReadout, Readout
from .memory import CellInput, DNGMemory, UpdateCell
from .paths import ExecutionPath, resolve_path
from .precision import AmpMode, autocast


@dataclass
class EncoderOutput:
    """``embedding`` (B, out_dim): one row per network, in the order the streams were given.

    ``node_memory`` (N, d): every node's final memory ``s(t^L)``; ``trajectory`` (T+1, N, d) or None: the
    memory bank after each timestamp (see :class:`~dng_tgn.nn.memory.MemoryState`); ``batch``: the
    :class:`StreamBatch` that was encoded (on the encoder's device), whose ``node_graph``/``node_kind``
    and the streams' node-group offsets say which row of ``node_memory`` is which node. (The module that
    computes them is :attr:`DNGEncoder.memory`, a :class:`~dng_tgn.nn.memory.DNGMemory`.)
    """

    embedding: torch.Tensor
    node_memory: torch.Tensor
    trajectory: torch.Tensor | None
    batch: StreamBatch


class DNGEncoder(nn.Module):
    """The Dynamic Neural Graph Encoder: a TGN-style memory run along a network's forward pass.

    Args:
        memory_dim: size of each node memory ``s_i`` (F.1.2 uses 512, F.2 128).
        message_dim: size of the messages ``m_i``; defaults to ``memory_dim``.
        message_heads: edges per node pair. 1: Eq. 4 (MLPs, SIRENs, ViTs). ``K > 1``: Eq. 5 with K heads, for
            CNNs whose kernels (or flattened maps) give K edges per pair; smaller kernels are zero-padded.
        head_dim: size of each Eq. 5 head (F.2 uses 32).
        fourier_size, fourier_scale: RFF of weights and biases (F.1.2: 128, 3.0).
        max_timestamps: number of per-timestamp message functions; streams may be shorter.
        max_inputs: learnable input vectors available (a network's input count must not exceed it).
        readout: how output-node memories become an embedding; :class:`MeanReadout` by default.
        path: force :attr:`ExecutionPath.DGL` or :attr:`ExecutionPath.TORCH`; ``None`` picks DGL wherever
            its kernels run on the encoder's device, torch elsewhere. Both give the same numbers.
        device: where to put the encoder; ``None`` means CUDA when available, else CPU.
        amp: mixed precision for :meth:`forward` (:class:`~dng_tgn.nn.precision.AmpMode` or "fp32"/"bf16"/"fp16"):
            bf16 autocast on CPU or CUDA, fp16 autocast on CUDA only (pair it with
            :func:`~dng_tgn.nn.precision.grad_scaler`). ``None``/"fp32": full precision. Parameters stay fp32.
        cell, gru_input, rnn_layers, shared_message, per_timestamp_update, positional_embedding,
            activation_embedding: ablations of the memory (Tables 4/6 and the authors' code), documented in
            :class:`~dng_tgn.nn.memory.DNGMemory`; the defaults are the paper's model (GRU, message as the GRU
            input, one pass, per-timestamp ``phi_m``, one shared ``phi_u``, no embeddings).

    ``forward(streams, return_trajectory=False) -> EncoderOutput``; ``streams`` is a :class:`StreamBatch`
    or a list of :class:`EventStream` (any mix of architectures), moved to the encoder's device.
    """

    def __init__(
        self,
        memory_dim: int = 128,
        *,
        message_dim: int | None = None,
        message_heads: int = 1,
        head_dim: int = 32,
        fourier_size: int = 128,
        fourier_scale: float = 3.0,
        max_timestamps: int = 12,
        max_inputs: int = 256,
        readout: Readout | None = None,
        path: ExecutionPath | None = None,
        device: torch.device | str | None = None,
        amp: AmpMode | str | None = None,
        cell: UpdateCell | str = UpdateCell.GRU,
        gru_input: CellInput | str = CellInput.MESSAGE,
        rnn_layers: int = 1,
        shared_message: bool = False,
        per_timestamp_update: bool = False,
        positional_embedding: bool = False,
        activation_embedding: bool = False,
    ):
        super().__init__()
        self.amp = AmpMode.parse(amp)
        self.memory = DNGMemory(
            memory_dim, message_dim, message_heads, head_dim, fourier_size, fourier_scale, max_timestamps, max_inputs,
            cell=cell, gru_input=gru_input, rnn_layers=rnn_layers, shared_message=shared_message,
            per_timestamp_update=per_timestamp_update, positional_embedding=positional_embedding,
            activation_embedding=activation_embedding,
        )
        self.readout = readout if readout is not None else MeanReadout()
        if not isinstance(self.readout, Readout):
            raise TypeError(f"readout must be a dng_tgn.nn.Readout, got {type(self.readout).__name__}")
        if path is not None and not isinstance(path, ExecutionPath):
            raise TypeError(f"path must be an ExecutionPath or None, got {path!r}")
        self.path = path
        self.to(default_device() if device is None else torch.device(device))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def out_dim(self) -> int:
        return self.readout.out_dim(self.memory.memory_dim)

    def execution_path(self) -> ExecutionPath:
        """The path :meth:`forward` will take on the encoder's current device."""
        return resolve_path(self.path, self.device)

    def forward(self, streams: StreamBatch | Sequence[EventStream], return_trajectory: bool = False) -> EncoderOutput:
        if isinstance(streams, StreamBatch):
            batch = streams
        elif isinstance(streams, EventStream):
            raise TypeError("DNGEncoder takes a batch: wrap a single stream in a list")
        else:
            streams = list(streams)
            if not all(isinstance(s, EventStream) for s in streams):
                raise TypeError("DNGEncoder takes a StreamBatch or a list of EventStreams (see dng_tgn.to_event_stream)")
            batch = batch_streams(streams)
        batch = batch.to(self.device)
        with autocast(self.amp, self.device):  # checks the mode against the current device (fp16 needs CUDA)
            state = self.memory(batch, self.execution_path(), return_trajectory)
            embedding = self.readout(state.node_memory, batch)
        return EncoderOutput(embedding, state.node_memory, state.trajectory, batch)
