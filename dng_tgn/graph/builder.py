"""Incremental construction of an :class:`EventStream`, shared by every converter."""
from __future__ import annotations

import torch

from ..errors import EmptyModelError
from .edge_ops import EdgeOp
from .events import EdgeGroup, EdgeKind, EventStream, NodeGroup, NodeKind, ParamRef, Pattern, node_values


class StreamBuilder:
    def __init__(self, arch: str):
        self.arch = arch
        self.node_groups: list[NodeGroup] = []
        self.edge_groups: list[EdgeGroup] = []
        self.steps: list[list[int]] = []
        self._num_inputs = 0

    def add_inputs(self, name: str, size: int, params: tuple[ParamRef, ...] = (), **slots) -> int:
        values, mask = node_values(size, **slots)
        g = NodeGroup(name, size, NodeKind.INPUT, values, mask, params=params, input_index_base=self._num_inputs)
        self._num_inputs += size
        self.node_groups.append(g)
        return len(self.node_groups) - 1

    def add_nodes(self, name: str, size: int, kind: NodeKind = NodeKind.NEURON, params: tuple[ParamRef, ...] = (), **slots) -> int:
        values, mask = node_values(size, **slots)
        self.node_groups.append(NodeGroup(name, size, kind, values, mask, params=params))
        return len(self.node_groups) - 1

    def new_step(self) -> int:
        self.steps.append([])
        return len(self.steps)

    def add_edges(
        self,
        name: str,
        src: int,
        dst: int,
        op: EdgeOp,
        weight: torch.Tensor | None = None,
        kind: EdgeKind = EdgeKind.WEIGHT,
        pattern: Pattern = Pattern.DENSE,
        span: int = 0,
        src_transform: tuple = (),
        params: tuple[ParamRef, ...] = (),
        step: int | None = None,
        pairs: torch.Tensor | None = None,
    ) -> int:
        """Add an edge group to timestamp ``step`` (default: the newest one)."""
        if not self.steps:
            raise RuntimeError("call new_step() before adding edges")
        if weight is not None:
            weight = weight.detach().float()  # finiteness is checked once, by EventStream.validate
        slots = 1 if weight is None else int(weight.shape[-1])
        self.edge_groups.append(
            EdgeGroup(name, src, dst, kind, pattern, op, weight, slots=slots, span=span, src_transform=tuple(src_transform), params=params,
                      pairs=None if pairs is None else pairs.long())
        )
        idx = len(self.edge_groups) - 1
        self.steps[(step or len(self.steps)) - 1].append(idx)
        return idx

    def build(self, output: int, output_transform: tuple = (), input_shape=None) -> EventStream:
        if not self.steps:
            raise EmptyModelError(f"{self.arch}: the model has no layer with weights to turn into events")
        k = max((e.slots for e in self.edge_groups if e.weight is not None), default=1)
        return EventStream(
            self.node_groups,
            self.edge_groups,
            self.steps,
            output_group=output,
            output_transform=tuple(output_transform),
            arch=self.arch,
            input_shape=tuple(input_shape) if input_shape is not None else None,
            num_slots=k,
        )
