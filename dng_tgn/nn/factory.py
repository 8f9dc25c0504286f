"""The weight encoder a downstream task trains: the DNG-Encoder (§5) or the static NG-GNN baseline.

:class:`EncoderKind` is the one place a config string becomes a choice (:meth:`EncoderKind.parse`, with an error
listing the valid values); :func:`build_encoder` turns it into a :class:`WeightEncoder` whose ``forward(batch)``
returns one vector per network, so every task head works on either encoder.
"""
from __future__ import annotations

from enum import Enum
from typing import Iterable, Mapping

import torch
from torch import nn

from ..graph.batch import StreamBatch
from ..choices import parse_choice
from .encoder import DNGEncoder
from .heads import ConcatReadout
from .paths import ExecutionPath

__all__ = ["EncoderKind", "WeightEncoder", "DNGWeightEncoder", "NGGNNWeightEncoder", "FlatMLPWeightEncoder",
           "NFNWeightEncoder", "build_encoder",
           "sized_encoder_kwargs", "fit_degree_scaler"]


class EncoderKind(Enum):
    """Which network encodes the weights: the DNG-Encoder (§5), the static NG-GNN baseline, or a flat MLP."""

    DNG = "dng"
    NG_GNN = "ng_gnn"
    MLP = "mlp"  # flat weights -> MLP (Table 7's baseline); one architecture per run
    NFN_NP = "nfn_np"  # NFN (Zhou et al. 2023), NP layers with input/output embeddings; reads stacked parameters
    NFN_HNP = "nfn_hnp"  # NFN, HNP layers; reads stacked parameters, one architecture per run

    @property
    def reads_parameters(self) -> bool:
        """True for encoders fed stacked parameter tensors (``StateDictSet.params`` rows), not stream batches."""
        return self in (EncoderKind.NFN_NP, EncoderKind.NFN_HNP)

    @classmethod
    def parse(cls, value: "str | EncoderKind") -> "EncoderKind":
        """The Sacred-config boundary: ``"dng"`` / ``"ng_gnn"`` -> enum, with an error listing valid values."""
        return parse_choice(cls, value, "encoder")


class WeightEncoder(nn.Module):
    """``forward(batch: StreamBatch) -> (B, out_dim)``: one vector per network of the batch."""

    out_dim: int

    def forward(self, batch: StreamBatch) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class DNGWeightEncoder(WeightEncoder):
    """The DNG-Encoder's memories ``s(t^L)`` of the output nodes, concatenated in output order.

    §6 and F.2 read the embedding off the last layer's nodes at the final timestamp; concatenating
    (rather than averaging) keeps which output neuron is which, and output neurons are never permuted
    by a hidden-neuron symmetry, so the embedding stays permutation invariant (App. C).
    """

    def __init__(self, num_outputs: int, memory_dim: int, **kwargs):
        super().__init__()
        # device="cpu" here: the experiment moves the whole model once it is assembled
        self.encoder = DNGEncoder(memory_dim, readout=ConcatReadout(num_outputs), device="cpu", **kwargs)
        self.out_dim = self.encoder.out_dim

    def forward(self, batch: StreamBatch) -> torch.Tensor:
        return self.encoder(batch).embedding


class NGGNNWeightEncoder(WeightEncoder):
    """NG-GNN (Kofinas et al., 2024) on the static union graph; its mean+max graph readout is the embedding."""

    def __init__(self, num_slots: int, out_dim: int, **kwargs):
        super().__init__()
        # baselines/ sits beside nn/ and uses nn's execution paths; importing it here, not at module level,
        # keeps ``import dng_tgn.nn`` free of the baselines
        from ..baselines import NGGNN

        self.encoder = NGGNN(num_slots=num_slots, out_dim=out_dim, **kwargs)
        self.out_dim = int(out_dim)

    def forward(self, batch: StreamBatch) -> torch.Tensor:
        return self.encoder(batch).graph

    def fit_degree_scaler(self, batches: Iterable[StreamBatch]) -> float:
        """PNA's δ from training graphs (NG-GNN's only data-dependent constant)."""
        return self.encoder.fit_degree_scaler(batches)


class FlatMLPWeightEncoder(WeightEncoder):
    """Every parameter of a network as one vector, through an MLP (no structure, no invariance)."""

    def __init__(self, in_dim: int, out_dim: int, **kwargs):
        super().__init__()
        from ..baselines.flat_mlp import FlatMLP  # beside nn/, see NGGNNWeightEncoder

        self.encoder = FlatMLP(in_dim, out_dim=out_dim, **kwargs)
        self.out_dim = int(out_dim)

    def forward(self, batch: StreamBatch) -> torch.Tensor:
        return self.encoder(batch)


class NFNWeightEncoder(WeightEncoder):
    """NFN's invariant encoder (``baselines.nfn.NFNEncoder``, NP or HNP) on stacked parameters.

    ``forward(params)`` takes a dict of stacked parameter rows, not a stream batch. The per-layer input
    normalisation is set by :meth:`set_normalization` from the *training* split only.
    """

    def __init__(self, params: Mapping[str, torch.Tensor], mode, **kwargs):  # mode: baselines.nfn.NFNMode or its value
        super().__init__()
        from ..baselines.nfn import NFNEncoder, NFNLayout  # beside nn/, see NGGNNWeightEncoder

        kwargs = dict(kwargs)
        if "channels" in kwargs:
            kwargs["channels"] = tuple(kwargs["channels"])
        self.encoder = NFNEncoder(NFNLayout.infer(params), mode=mode, **kwargs)
        self.out_dim = int(self.encoder.out_dim)

    def set_normalization(self, params: Mapping[str, torch.Tensor]) -> None:
        self.encoder.set_normalization(params)

    def forward(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.encoder(params)


def build_encoder(kind: EncoderKind, *, num_outputs: int, num_slots: int, dng: Mapping, ng_gnn: Mapping,
                  path: ExecutionPath | None = None, mlp: Mapping | None = None,
                  probe: StreamBatch | None = None, nfn: Mapping | None = None,
                  params: Mapping[str, torch.Tensor] | None = None) -> WeightEncoder:
    """The weight encoder for ``kind``; ``dng`` / ``ng_gnn`` are the keyword arguments of each model.

    ``num_outputs``: output neurons of the encoded networks (ConcatReadout); ``num_slots``: edges per node
    pair K (9 for 3x3 convs, 1 for MLPs and ViTs), which the DNG-Encoder's Eq. 5 heads also need.
    ``path``: the execution path of the graph encoders (None: DGL where its kernels run, else torch).
    ``mlp``: the flat MLP's kwargs (hidden_dim, num_layers, out_dim, dropout); its input size is read off
    ``probe``, a batch of the task's networks, unless ``mlp`` gives ``in_dim``.
    ``nfn``: NFNEncoder kwargs (channels, out_dim, head_hidden, head_layers, pool, dropout, fourier; plus normalize,
    default True) for the NFN kinds,
    whose layer layout is read off ``params`` (stacked training parameters, also their normalisation).
    """
    if not isinstance(kind, EncoderKind):
        raise TypeError(f"build_encoder needs an EncoderKind, got {kind!r}")
    if kind is EncoderKind.DNG:
        kw = dict(dng, path=path)
        kw.setdefault("message_heads", num_slots)
        return DNGWeightEncoder(num_outputs, **kw)
    if kind is EncoderKind.NG_GNN:
        kw = dict(ng_gnn, path=path)
        if "out_dim" not in kw:
            raise ValueError(f"the ng_gnn config needs out_dim (the embedding size the heads read), got {sorted(kw)}")
        return NGGNNWeightEncoder(num_slots, **kw)
    if kind is EncoderKind.MLP:
        kw = dict(mlp or {})
        if "in_dim" not in kw:
            if probe is None:
                raise ValueError("the flat MLP needs its input size: pass probe= (a batch of the networks) or mlp.in_dim")
            from ..baselines.flat_mlp import flat_parameters

            kw["in_dim"] = int(flat_parameters(probe).shape[1])
        kw.setdefault("out_dim", 64)
        return FlatMLPWeightEncoder(**kw)
    if kind.reads_parameters:
        if params is None:
            raise ValueError(f"the {kind.value} encoder reads stacked parameters: pass params= (the training split's)")
        kw = dict(nfn or {})
        # nfn.normalize=False feeds raw weights, as NFN's own INR classifier does (its Fourier features of scale 10
        # are sized for raw SIREN weights, not standardised ones)
        normalize = bool(kw.pop("normalize", True))
        from ..baselines.nfn import NFNMode  # beside nn/, see NGGNNWeightEncoder

        enc = NFNWeightEncoder(params, NFNMode.NP if kind is EncoderKind.NFN_NP else NFNMode.HNP, **kw)
        if normalize:
            enc.set_normalization(params)
        return enc
    raise AssertionError(f"build_encoder does not handle {kind}")  # a new EncoderKind needs a branch here


def sized_encoder_kwargs(dng: Mapping, ng_gnn: Mapping, probe: StreamBatch) -> tuple[dict, dict]:
    """Fill the table sizes the data fixes (timestamps, inputs, layers) into the encoders' kwargs.

    The DNG-Encoder has one message function per timestamp and one learnable vector per input neuron, and
    NG-GNN embedding tables per layer/input; a config need not know them (12 timestamps for a 2-block ViT,
    App. E.2), so they come from ``probe``, a batch of the task's networks, unless the config sets them.
    """
    t = int(probe.num_timestamps.max())
    n_in = int(probe.node_input_index.max()) + 1
    dng, ng_gnn = dict(dng), dict(ng_gnn)
    dng.setdefault("max_timestamps", t)
    dng.setdefault("max_inputs", n_in)
    ng_gnn.setdefault("max_layers", max(64, t + 1))
    ng_gnn.setdefault("max_inputs", max(64, n_in))
    return dng, ng_gnn


def fit_degree_scaler(encoder: WeightEncoder, batches: Iterable[StreamBatch]) -> None:
    """NG-GNN's PNA scalers need δ = mean log-degree of training graphs; other encoders need nothing."""
    if isinstance(encoder, NGGNNWeightEncoder):
        encoder.fit_degree_scaler(batches)
