"""Save and load event streams: a versioned file that ``torch.load(weights_only=True)`` reads.

On disk a stream is one ``torch.save`` of plain containers and tensors, nothing pickled by class::

    {"format": "dng_tgn.event_stream", "version": 1, "dng_tgn_version": "0.1.0",
     "stream": {
        "arch": str, "output_group": int, "num_slots": int, "input_shape": [int] | None,
        "steps": [[edge-group index, ...] per timestamp],
        "output_transform": [spec, ...],
        "node_groups": [{"name", "size", "kind": int, "values": (size, 5) tensor, "slot_mask": (5,) bool tensor,
                         "input_index_base": int, "params": [paramref, ...]}, ...],
        "edge_groups": [{"name", "src", "dst", "kind": int, "pattern": int, "op": spec,
                         "weight": (n_dst, n_src, slots) tensor | None, "slots", "span",
                         "src_transform": [spec, ...], "params": [paramref, ...]}, ...]}}

    paramref = {"name": str, "shape": [int], "index": tensor, "slot": int | None}
    spec     = {"type": "module.ClassName", "fields": {field: value}}   (an EdgeOp or a Transform)

A spec's ``type`` must name a dataclass subclass of :class:`~dng_tgn.graph.edge_ops.EdgeOp` or
:class:`~dng_tgn.graph.transforms.Transform` defined inside ``dng_tgn`` (found through the class hierarchy, never
imported by name), and function-valued fields
(``Elementwise.fn``, ``Pool2d.op``) are stored as ``{"function": "torch.nn.functional.gelu"}`` and resolved only
inside ``torch`` and ``torch.nn.functional``; loading therefore never imports or executes anything the file names.
Offsets, edge counts and the snapshot cache are derived, so they are not stored: :class:`EventStream` rebuilds
and re-validates them on load.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..atomic import atomic_torch_save
from ..errors import DNGError
from . import edge_ops, transforms
from .events import EdgeGroup, EdgeKind, EventStream, NodeGroup, NodeKind, ParamRef, Pattern

FORMAT = "dng_tgn.event_stream"
VERSION = 1

__all__ = ["save_stream", "load_stream", "stream_to_dict", "stream_from_dict", "StreamFormatError", "FORMAT", "VERSION"]


class StreamFormatError(DNGError):
    """A file that is not a dng_tgn stream, a stream of another format version, or a damaged one."""


# ----- ops and transforms --------------------------------------------------------------------------------
def _subclasses(base: type) -> list[type]:
    out, todo = [], [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.append(sub)
            todo.append(sub)
    return out


def _spec_types() -> dict[str, type]:
    """``"module.QualName" -> class`` for every dataclass EdgeOp / Transform defined inside dng_tgn.

    Looked up at call time from the class hierarchy, so ops and transforms that converters define later (or
    elsewhere, like the ViT's patch transform) are covered without a change here; nothing is imported by name.
    """
    from . import convert  # noqa: F401  (defines converter-specific transforms)

    return {f"{c.__module__}.{c.__qualname__}": c
            for base in (edge_ops.EdgeOp, transforms.Transform) for c in _subclasses(base)
            if c.__module__.startswith("dng_tgn.") and dataclasses.is_dataclass(c)}


def _lookup_type(name) -> type | None:
    types = _spec_types()
    if name in types:
        return types[name]
    # a class that moved to another module since the file was written: accept a unique match of its name
    short = str(name).rsplit(".", 1)[-1]
    matches = [c for key, c in types.items() if key.rsplit(".", 1)[-1] == short]
    return matches[0] if len(matches) == 1 else None


_FUNCTION_MODULES = (("torch.nn.functional", F), ("torch", torch))


def _function_name(fn) -> str:
    for prefix, module in _FUNCTION_MODULES:
        name = getattr(fn, "__name__", None)
        if name and getattr(module, name, None) is fn:
            return f"{prefix}.{name}"
    for prefix, module in _FUNCTION_MODULES:  # wrappers whose __name__ differs from their attribute name
        for name in dir(module):
            if not name.startswith("_") and getattr(module, name, None) is fn:
                return f"{prefix}.{name}"
    raise TypeError(f"cannot save function {fn!r}: only functions of torch and torch.nn.functional can be stored")


def _resolve_function(path: str):
    for prefix, module in _FUNCTION_MODULES:
        if path.startswith(prefix + ".") and "." not in path[len(prefix) + 1:]:
            fn = getattr(module, path[len(prefix) + 1:], None)
            if callable(fn):
                return fn
    raise StreamFormatError(f"unknown function {path!r} (only torch.* and torch.nn.functional.* are allowed)")


def _encode_value(v):
    if isinstance(v, (edge_ops.EdgeOp, transforms.Transform)):
        return _encode_spec(v)
    if isinstance(v, (tuple, list)):
        return [_encode_value(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if callable(v):
        return {"function": _function_name(v)}
    raise TypeError(f"cannot save a value of type {type(v).__name__} in an event stream")


def _decode_value(v):
    if isinstance(v, dict):
        if "function" in v:
            return _resolve_function(v["function"])
        return _decode_spec(v)
    if isinstance(v, list):
        return tuple(_decode_value(x) for x in v)
    return v


def _encode_spec(obj) -> dict:
    cls = type(obj)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if _spec_types().get(name) is not cls:
        raise TypeError(f"cannot save {cls.__module__}.{cls.__qualname__}: only the EdgeOps and Transforms of "
                        "dng_tgn.graph.edge_ops / dng_tgn.graph.transforms can be stored")
    return {"type": name, "fields": {f.name: _encode_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}


def _decode_spec(spec: dict):
    cls = _lookup_type(spec.get("type"))
    if cls is None:
        raise StreamFormatError(f"unknown edge op / transform type {spec.get('type')!r}")
    try:
        return cls(**{k: _decode_value(v) for k, v in spec.get("fields", {}).items()})
    except TypeError as e:
        raise StreamFormatError(f"bad fields for {cls.__name__}: {e}") from None


# ----- groups ----------------------------------------------------------------------------------------------
def _encode_refs(refs) -> list[dict]:
    return [{"name": r.name, "shape": list(r.shape), "index": r.index.clone(), "slot": r.slot} for r in refs]


def _decode_refs(refs) -> tuple[ParamRef, ...]:
    return tuple(ParamRef(r["name"], tuple(r["shape"]), r["index"], r["slot"]) for r in refs)


def _clone(t):
    return None if t is None else t.detach().cpu().clone()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dng_tgn")
    except PackageNotFoundError:
        return "unknown"


def stream_to_dict(stream: EventStream) -> dict:
    """The versioned, weights-only representation of ``stream`` (what :func:`save_stream` writes)."""
    body = {
        "arch": stream.arch,
        "output_group": int(stream.output_group),
        "num_slots": int(stream.num_slots),
        "input_shape": None if stream.input_shape is None else [int(s) for s in stream.input_shape],
        "steps": [[int(e) for e in step] for step in stream.steps],
        "output_transform": _encode_value(tuple(stream.output_transform)),
        "node_groups": [
            {"name": g.name, "size": int(g.size), "kind": int(g.kind), "values": _clone(g.values),
             "slot_mask": _clone(g.slot_mask), "input_index_base": int(g.input_index_base), "params": _encode_refs(g.params),
             **({} if g.norm_eps == 1e-5 else {"norm_eps": float(g.norm_eps)})}
            for g in stream.node_groups
        ],
        "edge_groups": [
            {"name": e.name, "src": int(e.src), "dst": int(e.dst), "kind": int(e.kind), "pattern": int(e.pattern),
             "op": _encode_spec(e.op), "weight": _clone(e.weight), "slots": int(e.slots), "span": int(e.span),
             "src_transform": _encode_value(tuple(e.src_transform)), "params": _encode_refs(e.params),
             **({} if e.pairs is None else {"pairs": _clone(e.pairs)})}
            for e in stream.edge_groups
        ],
    }
    return {"format": FORMAT, "version": VERSION, "dng_tgn_version": _package_version(), "stream": body}


def stream_from_dict(obj, source: str = "stream") -> EventStream:
    """Inverse of :func:`stream_to_dict`; raises :class:`StreamFormatError` naming ``source`` on any problem."""
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise StreamFormatError(f"{source} is not a dng_tgn event stream (no format={FORMAT!r} header)")
    version = obj.get("version")
    if version != VERSION:
        raise StreamFormatError(
            f"{source} is an event stream of format version {version!r}; this dng_tgn reads version {VERSION} only "
            f"(written by dng_tgn {obj.get('dng_tgn_version', '?')})"
        )
    try:
        s = obj["stream"]
        nodes = [
            NodeGroup(g["name"], int(g["size"]), NodeKind(g["kind"]), g["values"], g["slot_mask"],
                      params=_decode_refs(g["params"]), input_index_base=int(g["input_index_base"]),
                      norm_eps=float(g.get("norm_eps", 1e-5)))
            for g in s["node_groups"]
        ]
        edges = [
            EdgeGroup(e["name"], int(e["src"]), int(e["dst"]), EdgeKind(e["kind"]), Pattern(e["pattern"]),
                      _decode_spec(e["op"]), e["weight"], slots=int(e["slots"]), span=int(e["span"]),
                      src_transform=_decode_value(e["src_transform"]), params=_decode_refs(e["params"]),
                      pairs=e.get("pairs"))
            for e in s["edge_groups"]
        ]
        return EventStream(
            nodes, edges, [list(step) for step in s["steps"]], output_group=int(s["output_group"]),
            output_transform=_decode_value(s["output_transform"]), arch=s["arch"],
            input_shape=None if s["input_shape"] is None else tuple(s["input_shape"]), num_slots=int(s["num_slots"]),
        )
    except StreamFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise StreamFormatError(f"{source}: damaged event stream ({type(e).__name__}: {e})") from None


def save_stream(stream: EventStream, path: str | os.PathLike) -> Path:
    """Write ``stream`` to ``path`` (atomically: a temporary file beside it, then a rename). Returns the path."""
    if not isinstance(stream, EventStream):
        raise TypeError(f"save_stream needs an EventStream, got {type(stream).__name__}")
    path = Path(path)
    atomic_torch_save(stream_to_dict(stream), path)
    return path


def load_stream(path: str | os.PathLike) -> EventStream:
    """Read a stream written by :func:`save_stream` (``torch.load(weights_only=True)``: no code runs).

    Raises ``FileNotFoundError`` for a missing file and :class:`StreamFormatError` (a ``ValueError``) for a file
    that is not a stream, is truncated or corrupt, or has another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such stream file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, a text file, ...
        raise StreamFormatError(f"{path}: not a readable event stream file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return stream_from_dict(obj, str(path))
