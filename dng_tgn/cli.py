"""``dng-tgn``: trained networks to event streams, figures, replay checks and embeddings from the shell.

    dng-tgn convert      CHECKPOINT -o STREAM.pt      checkpoint / state_dict (+ architecture) -> saved stream
    dng-tgn inspect      INPUT                        summary, per-timestamp event counts, parameter shapes
    dng-tgn draw         INPUT -o FIG.png|svg         whole stream (snapshots + timeline), one snapshot, or kernel slots
    dng-tgn replay-check CHECKPOINT                   stream vs model on random inputs; exit 1 on mismatch
    dng-tgn encode       INPUT... --encoder ENC.pt -o EMB.npy    embeddings of networks with a trained DNG-Encoder
    dng-tgn datasets     build KIND ... | verify KIND ROOT       wrap the dataset builders; open and count each split

INPUT is a saved stream (``dng-tgn convert``) or a checkpoint. A checkpoint is a state_dict, or a dict holding
one under ``state_dict`` / ``model_state_dict`` / ``model`` / ``net`` (``--key`` picks another). The
architecture is one of:

* ``--arch NAME`` a reference net of ``dng_tgn.nets`` (NFNSiren, DWSNetsSiren, ZooCNN, SimpleViT), sized by
  ``--arch-kwargs '{"hidden": 8}'`` or, for the SIRENs and ZooCNN, inferred from the state_dict's shapes;
* nothing, for state_dicts whose keys the converter recognises (NFN / DWSNets SIRENs, Small CNN Zoo, SimpleViT
  with ``--heads``);
* ``--model package.module:factory``, a function of yours that returns the ``nn.Module`` (called with
  ``--arch-kwargs``).

Exit status: 0 success, 1 replay mismatch, 2 bad usage, missing or unreadable files.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

PROG = "dng-tgn"
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


class CLIError(Exception):
    """A problem the user can fix (bad path, unreadable file, wrong architecture): one line, exit status 2."""


# ----- architectures ----------------------------------------------------------------------------------------
def _infer_siren(prefix: str, nfn: bool) -> Callable[[dict], dict | None]:
    def infer(sd: dict) -> dict | None:
        idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith(prefix + ".") and k.split(".")[1].isdigit()})
        if len(idx) < 2:
            return None
        first = sd.get(f"{prefix}.0.linear.weight" if nfn else f"{prefix}.0.weight")
        last = sd.get(f"{prefix}.{idx[-1]}.weight")
        if first is None or last is None:
            return None
        return {"in_features": int(first.shape[1]), "hidden": int(first.shape[0]), "out_features": int(last.shape[0]),
                "depth": len(idx)}
    return infer


def _infer_zoo_cnn(sd: dict) -> dict | None:
    convs = sorted({int(k.split(".")[1]) for k in sd if k.startswith("convs.") and k.endswith(".weight")})
    if not convs or "head.weight" not in sd:
        return None
    w0 = sd["convs.0.weight"]
    return {"in_channels": int(w0.shape[1]), "channels": int(w0.shape[0]), "num_layers": len(convs),
            "num_classes": int(sd["head.weight"].shape[0])}


@dataclass(frozen=True)
class ArchSpec:
    """A reference architecture: how to build it, and (optionally) its kwargs from a state_dict's shapes."""

    factory: Callable[..., nn.Module]
    infer_kwargs: Callable[[dict], dict | None] | None
    about: str


def _nets():
    from . import nets

    return nets


ARCHITECTURES: dict[str, ArchSpec] = {
    "NFNSiren": ArchSpec(lambda **kw: _nets().NFNSiren(**kw), _infer_siren("net", nfn=True),
                         "NFN-layout SIREN (net.{i}.linear.*), sizes inferred"),
    "DWSNetsSiren": ArchSpec(lambda **kw: _nets().DWSNetsSiren(**kw), _infer_siren("seq", nfn=False),
                             "DWSNets-layout SIREN (seq.{i}.*), sizes inferred"),
    "ZooCNN": ArchSpec(lambda **kw: _nets().ZooCNN(**kw), _infer_zoo_cnn,
                       "Small CNN Zoo net (convs.{i}.*, head.*), sizes inferred"),
    "SimpleViT": ArchSpec(lambda **kw: _nets().SimpleViT(**kw), None,
                          "vit-pytorch SimpleViT; sizes from --arch-kwargs (image_size, patch_size, dim, depth, heads, ...)"),
}


def _arch_spec(name: str) -> ArchSpec:
    by_lower = {k.lower(): k for k in ARCHITECTURES}
    key = by_lower.get(name.lower())
    if key is None:
        raise CLIError(f"unknown --arch {name!r}; known: {', '.join(ARCHITECTURES)} (or use --model module:callable)")
    return ARCHITECTURES[key]


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"--model must look like package.module:callable, got {spec!r}")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise CLIError(f"--model {spec}: cannot import {module_name} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CLIError(f"--model {spec}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CLIError(f"--model {spec}: {attr} is not callable")
    return obj


# ----- reading inputs ---------------------------------------------------------------------------------------
def _torch_load(path: Path, allow_pickle: bool = False):
    if not path.exists():
        raise CLIError(f"{path}: no such file")
    if path.is_dir():
        raise CLIError(f"{path}: is a directory, expected a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as e:  # truncated zip, a text file, a pickled class under weights_only, ...
        with open(path, "rb") as f:
            head = f.read(4)
        if not (head.startswith(b"PK") or head[:1] == b"\x80"):  # torch.save zip archive / legacy pickle
            raise CLIError(f"{path}: not a torch file (corrupt, or another format)") from None
        if "weights_only" in str(e) and not allow_pickle and "Unsupported global" in str(e):
            raise CLIError(f"{path}: holds pickled Python objects; --allow-pickle loads it (runs code from the "
                           "file: only for files you trust)") from None
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "").split(". ")[0][:160]
        raise CLIError(f"{path}: damaged torch file ({type(e).__name__}: {first})") from None


def _is_tensor_mapping(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _state_dict_of(obj, path: Path, key: str | None) -> dict:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise CLIError(f"{path}: no entry {key!r} (entries: {', '.join(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__})")
        obj = obj[key]
        if isinstance(obj, nn.Module):
            return obj.state_dict()
        if not _is_tensor_mapping(obj):
            raise CLIError(f"{path}: entry {key!r} is not a state_dict")
        return dict(obj)
    if _is_tensor_mapping(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for k in STATE_DICT_KEYS:
            if _is_tensor_mapping(obj.get(k)):
                return dict(obj[k])
        raise CLIError(f"{path}: a dict without a state_dict (entries: {', '.join(map(str, list(obj)[:8]))}); "
                       f"pass --key NAME")
    raise CLIError(f"{path}: expected a state_dict or a checkpoint dict, found {type(obj).__name__}")


def _arch_kwargs(args) -> dict | None:
    if not getattr(args, "arch_kwargs", None):
        return None
    try:
        kw = json.loads(args.arch_kwargs)
    except json.JSONDecodeError as e:
        raise CLIError(f"--arch-kwargs is not valid JSON ({e})") from None
    if not isinstance(kw, dict):
        raise CLIError("--arch-kwargs must be a JSON object, e.g. '{\"hidden\": 8}'")
    return kw


def _build_model(args, sd: dict, path: Path) -> nn.Module | None:
    """The architecture named on the command line, with ``sd`` loaded strictly; None if none was named."""
    kwargs = _arch_kwargs(args)
    if args.model:
        factory, name = _import_factory(args.model), args.model
    elif args.arch:
        spec = _arch_spec(args.arch)
        factory, name = spec.factory, args.arch
        if kwargs is None and spec.infer_kwargs is not None:
            kwargs = spec.infer_kwargs(sd)
    else:
        return None
    try:
        model = factory(**(kwargs or {}))
    except TypeError as e:
        raise CLIError(f"cannot build {name} with {kwargs or {}}: {e}") from None
    if not isinstance(model, nn.Module):
        raise CLIError(f"{name} returned {type(model).__name__}, not an nn.Module")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise CLIError(f"{path}: the state_dict does not fit {name}{kwargs or ''}: {' '.join(lines[1:3])[:300]}") from None
    return model.eval()


def _guess_model(sd: dict) -> tuple[str, nn.Module] | None:
    """The first reference architecture whose inferred sizes load ``sd`` strictly (for replay-check)."""
    for name, spec in ARCHITECTURES.items():
        kw = spec.infer_kwargs(sd) if spec.infer_kwargs else None
        if kw is None:
            continue
        try:
            model = spec.factory(**kw)
            model.load_state_dict(sd, strict=True)
        except (RuntimeError, TypeError, KeyError):
            continue
        return f"{name}{kw}", model.eval()
    return None


def _input_shape(args) -> tuple[int, ...] | None:
    if not getattr(args, "input_shape", None):
        return None
    try:
        return tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        raise CLIError(f"--input-shape must be comma-separated integers such as 1,28,28, got {args.input_shape!r}") from None


@dataclass
class Loaded:
    path: Path
    stream: object  # EventStream
    model: nn.Module | None
    state_dict: dict | None


def load_input(path: str | Path, args, need_model: bool = False) -> Loaded:
    """A stream file or a checkpoint (+ architecture) -> its stream (and model, when one was named)."""
    from .graph.convert import to_event_stream
    from .graph.io import FORMAT, stream_from_dict

    path = Path(path)
    obj = _torch_load(path, getattr(args, "allow_pickle", False))
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return Loaded(path, stream_from_dict(obj, str(path)), None, None)
    if isinstance(obj, nn.Module):
        model, sd = obj.eval(), obj.state_dict()
    else:
        sd = _state_dict_of(obj, path, getattr(args, "key", None))
        model = _build_model(args, sd, path)
    if model is None and need_model:
        guess = _guess_model(sd)
        if guess is None:
            raise CLIError(f"{path}: name the architecture to run the model: --arch NAME or --model module:callable")
        model = guess[1]
    kw = dict(input_shape=_input_shape(args), fold_batchnorm=getattr(args, "fold_batchnorm", False))
    try:
        if model is not None:
            stream = to_event_stream(model, **kw)
        else:
            stream = to_event_stream(sd, heads=getattr(args, "heads", None), w0=getattr(args, "w0", 30.0))
    except ValueError as e:
        raise CLIError(f"{path}: {e}") from None
    return Loaded(path, stream, model, sd)


# ----- subcommands ------------------------------------------------------------------------------------------
def cmd_convert(args) -> int:
    from .graph.io import save_stream

    loaded = load_input(args.checkpoint, args)
    out = save_stream(loaded.stream, args.output)
    s = loaded.stream
    print(f"wrote {out}: {s.arch}, {s.num_nodes} nodes, {s.num_edges} edges, L={s.num_timestamps}, K={s.num_slots}")
    return 0


def _parameter_shapes(stream) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for g in (*stream.node_groups, *stream.edge_groups):
        for ref in g.params:
            shapes[ref.name] = tuple(ref.shape)
    return shapes


def cmd_inspect(args) -> int:
    from .graph.draw import event_counts

    s = load_input(args.input, args).stream
    counts = event_counts(s)
    shapes = _parameter_shapes(s)
    if args.json:
        print(json.dumps({"arch": s.arch, "num_nodes": s.num_nodes, "num_edges": s.num_edges,
                          "num_timestamps": s.num_timestamps, "num_slots": s.num_slots, "timestamps": counts,
                          "parameters": {k: list(v) for k, v in shapes.items()}}, indent=1))
        return 0
    print(s.summary())
    print("\nper timestamp (events / items):")
    cols = ["t", "+V", "+E", "-V", "-E", "snapshot nodes", "snapshot edges"]
    print("  " + "".join(f"{c:>16}" if i else f"{c:>4}" for i, c in enumerate(cols)))
    for row in counts:
        cells = [f"{row['t']:>4}"] + [f"{row[op + ' events']:>6} / {row[op + ' items']:<7}" for op in ("+V", "+E", "-V", "-E")]
        cells += [f"{row['snapshot nodes']:>16}", f"{row['snapshot edges']:>16}"]
        print("  " + "".join(cells))
    total = sum(int(torch.Size(v).numel()) for v in shapes.values())
    print(f"\nparameters ({len(shapes)} tensors, {total} scalars, each stored once in the stream):")
    width = max((len(k) for k in shapes), default=0)
    for k, v in shapes.items():
        print(f"  {k:<{width}}  {tuple(v)}")
    return 0


def cmd_draw(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .graph.draw import draw_kernel_slots, draw_snapshot_colored, draw_stream

    out = Path(args.output)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise CLIError(f"{out}: the figure file must end in .png, .svg or .pdf")
    s = load_input(args.input, args).stream
    if args.slots is not None:
        try:
            fig = draw_kernel_slots(s, int(args.slots) if args.slots.isdigit() else args.slots)
        except (KeyError, ValueError) as e:
            raise CLIError(str(e).strip("'\"")) from None
        what = f"the slots of {args.slots}"
    elif args.t is not None:
        if not 0 <= args.t <= s.num_timestamps:
            raise CLIError(f"--t {args.t} is out of range: {s.arch} has timestamps 0..{s.num_timestamps}")
        fig, ax = plt.subplots(figsize=(7, 4.5))
        draw_snapshot_colored(s, args.t, ax=ax, slot=args.slot, max_nodes_per_group=args.max_nodes)
        what = f"snapshot t^{args.t}"
    else:
        fig = draw_stream(s, max_nodes_per_group=args.max_nodes, slot=args.slot)
        what = f"all {s.num_timestamps} snapshots and the event timeline"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=args.dpi)
    plt.close(fig)
    print(f"drew {what} of {s.arch} to {out}")
    return 0


def _random_inputs(stream, model, args, n: int, gen: torch.Generator) -> torch.Tensor:
    from .graph.edge_ops import Conv
    from .graph.events import NodeKind

    shape = _input_shape(args) or stream.input_shape
    if shape is None and hasattr(model, "image_size") and hasattr(model, "channels"):
        shape = (model.channels, model.image_size, model.image_size)
    if shape is None:
        n_in = sum(g.size for g in stream.node_groups if g.kind == NodeKind.INPUT)
        convs = any(isinstance(e.op, Conv) for e in stream.edge_groups)
        shape = (n_in, 28, 28) if convs else (n_in,)
    return torch.rand((n, *shape), generator=gen) * 2 - 1


def cmd_replay_check(args) -> int:
    from .graph.io import load_stream
    from .graph.replay import replay

    loaded = load_input(args.checkpoint, args, need_model=True)
    model = loaded.model
    if args.stream:
        try:
            stream = load_stream(args.stream)
        except FileNotFoundError:
            raise CLIError(f"{args.stream}: no such file") from None
    else:
        stream = loaded.stream
    name = type(model).__name__
    if all(e.op.replayable for e in stream.edge_groups):
        gen = torch.Generator().manual_seed(args.seed)
        x = _random_inputs(loaded.stream, model, args, args.n, gen)
        with torch.no_grad():
            want = model(x)
        try:
            got = replay(stream, x)
        except (RuntimeError, ValueError) as e:
            print(f"MISMATCH: the stream cannot run {name}'s input {tuple(x.shape)}: {e}")
            return 1
        if got.shape != want.shape:
            print(f"MISMATCH: stream output {tuple(got.shape)} vs {name} output {tuple(want.shape)}")
            return 1
        diff = float((got - want).abs().max())
        ok = torch.allclose(got, want, atol=args.atol, rtol=args.rtol)
        verdict = "OK" if ok else "MISMATCH"
        print(f"{verdict}: replaying the {stream.arch} stream vs {name} on {args.n} random inputs {tuple(x.shape[1:])}: "
              f"max |diff| = {diff:.3g} (atol {args.atol:g}, rtol {args.rtol:g})")
        return 0 if ok else 1
    # attention edges are learnable placeholders: the stream cannot be executed, so compare the parameters
    try:
        rec = stream.recover_parameters()
    except ValueError as e:
        print(f"MISMATCH: the {stream.arch} stream does not hold each parameter once: {e}")
        return 1
    own = {k: v for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(rec))
    wrong = sorted(k for k in rec if k not in own or own[k].shape != rec[k].shape or not torch.equal(own[k].float(), rec[k].float()))
    ok = not missing and not wrong
    detail = f"missing {missing[:3]}" if missing else (f"differing {wrong[:3]}" if wrong else "")
    print(f"{'OK' if ok else 'MISMATCH'}: the {stream.arch} stream is not executable (parameter-free attention edges); "
          f"its {sum(v.numel() for v in rec.values())} recovered parameters vs {name}'s "
          f"{sum(p.numel() for p in params.values())}: {'identical' if ok else detail}")
    return 0 if ok else 1


def cmd_encode(args) -> int:
    import numpy as np

    from .graph.batch import batch_streams
    from .nn.checkpoint import load_encoder

    if not Path(args.encoder).is_file():
        raise CLIError(f"{args.encoder}: no such encoder file")
    try:
        encoder = load_encoder(args.encoder, device=args.device)
    except ValueError as e:
        raise CLIError(str(e)) from None
    streams = [load_input(p, args).stream for p in args.inputs]
    rows = []
    with torch.no_grad():
        for i in range(0, len(streams), args.batch_size):
            try:
                rows.append(encoder(batch_streams(streams[i : i + args.batch_size])).embedding.cpu())
            except (ValueError, IndexError, RuntimeError) as e:
                raise CLIError(f"the encoder cannot read {args.inputs[i]}...: {str(e).splitlines()[0]}") from None
    emb = torch.cat(rows).numpy().astype(np.float32)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, emb)
    print(f"wrote {out}: embeddings {emb.shape} (one row per input, in the order given)")
    return 0


# ----- datasets -----------------------------------------------------------------------------------------------
def _inr_stream(ds, sd):
    from .graph.convert import to_event_stream

    return to_event_stream(sd)


def _vit_stream(ds, sd):
    from .graph.convert import to_event_stream

    return to_event_stream(sd, heads=int(ds.model_kwargs.get("heads", 2)))


@dataclass(frozen=True)
class DatasetKind:
    builder: str  # module with main(argv)
    loader: str  # class in dng_tgn.data
    to_stream: Callable


DATASETS: dict[str, DatasetKind] = {
    "inrs": DatasetKind("dng_tgn.data.build_inrs", "NFNSirenDataset", _inr_stream),
    "cnn-zoo": DatasetKind("dng_tgn.data.build_cnn_zoo", "CNNZooDataset", _inr_stream),
    "vit-zoo": DatasetKind("dng_tgn.data.build_vit_zoo", "ViTZooDataset", _vit_stream),
}


def cmd_datasets_build(args) -> int:
    kind = DATASETS[args.kind]
    builder = importlib.import_module(kind.builder)
    print(f"building {args.kind} with python -m {kind.builder} {' '.join(args.builder_args)}", file=sys.stderr)
    builder.main(list(args.builder_args))
    return 0


def cmd_datasets_verify(args) -> int:
    from tqdm import tqdm

    from . import data

    kind = DATASETS[args.kind]
    root = Path(args.root)
    if not root.is_dir():
        raise CLIError(f"{root}: no such dataset folder")
    cls = getattr(data, kind.loader)
    counts, checked = {}, 0
    for split in ("train", "val", "test"):
        try:
            ds = cls(root, split)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise CLIError(f"{root}: cannot open the {split} split with {kind.loader}: {str(e).splitlines()[0]}") from None
        counts[split] = len(ds)
        n = len(ds) if args.convert < 0 else min(args.convert, len(ds))
        for i in tqdm(range(n), desc=f"{split}: converting", unit="net", file=sys.stderr, disable=n == 0 or args.quiet):
            sd, target = ds[i]
            try:
                kind.to_stream(ds, sd)
            except ValueError as e:
                raise CLIError(f"{root}: {split} item {i} does not convert: {e}") from None
            checked += 1
    print(f"OK: {args.kind} at {root}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f" items; {checked} converted to streams")
    return 0


# ----- parser -----------------------------------------------------------------------------------------------
def _network_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("architecture (for checkpoints; a saved stream needs none)")
    g.add_argument("--arch", metavar="NAME", help=f"reference net: {', '.join(ARCHITECTURES)}")
    g.add_argument("--arch-kwargs", metavar="JSON", help="constructor kwargs of --arch / --model, e.g. '{\"hidden\": 8}'")
    g.add_argument("--model", metavar="MODULE:CALLABLE", help="import your own factory returning the nn.Module")
    g.add_argument("--key", help="entry of a checkpoint dict that holds the state_dict (default: found automatically)")
    g.add_argument("--heads", type=int, help="attention heads of a SimpleViT state_dict converted without --arch")
    g.add_argument("--w0", type=float, default=30.0, help="SIREN frequency for SIREN state_dicts (default 30)")
    g.add_argument("--input-shape", metavar="C,H,W", help="input shape, needed by CNNs that flatten feature maps")
    g.add_argument("--fold-batchnorm", action="store_true", help="fold BatchNorm into the layer before it (eval mode)")
    g.add_argument("--allow-pickle", action="store_true",
                   help="load pickled nn.Modules (torch.load weights_only=False): runs code from the file, trusted files only")
    return p


def build_parser() -> argparse.ArgumentParser:
    net = _network_options()
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("convert", parents=[net], help="checkpoint -> saved event stream",
                       description="Convert a checkpoint or state_dict into an event stream file (format: dng_tgn.graph.io).")
    p.add_argument("checkpoint", help="checkpoint / state_dict file (torch.save)")
    p.add_argument("-o", "--output", required=True, help="stream file to write, e.g. siren.stream.pt")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("inspect", parents=[net], help="summary, per-timestamp counts, parameter shapes",
                       description="Print a stream's summary, its events per timestamp and the parameters it encodes.")
    p.add_argument("input", help="stream file or checkpoint")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("draw", parents=[net], help="draw a stream or one snapshot to PNG/SVG",
                       description="Draw all snapshots and the event timeline (default), one snapshot (--t), "
                                   "or every kernel slot of one edge group (--slots).")
    p.add_argument("input", help="stream file or checkpoint")
    p.add_argument("-o", "--output", required=True, help="figure file: .png, .svg or .pdf")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--t", type=int, help="draw only the snapshot G(t^T)")
    what.add_argument("--slots", metavar="EDGE_GROUP", help="draw every slot of this edge group (name or index)")
    p.add_argument("--slot", type=int, default=0, help="kernel slot that colours the edges (default 0)")
    p.add_argument("--max-nodes", type=int, default=16, help="nodes drawn per group (default 16)")
    p.add_argument("--dpi", type=int, default=100)
    p.set_defaults(func=cmd_draw)

    p = sub.add_parser("replay-check", parents=[net], help="stream vs model on random inputs (exit 1 on mismatch)",
                       description="Run the model and the stream on the same random inputs and compare. Streams "
                                   "that cannot be executed (ViT attention) are checked parameter by parameter.")
    p.add_argument("checkpoint", help="checkpoint / state_dict of the model")
    p.add_argument("--stream", help="a saved stream to check (default: convert the checkpoint now)")
    p.add_argument("-n", "--n", type=int, default=16, help="random inputs (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.set_defaults(func=cmd_replay_check)

    p = sub.add_parser("encode", parents=[net], help="embeddings of networks with a trained encoder (.npy)",
                       description="Encode networks (stream files or checkpoints) with a DNG-Encoder saved by "
                                   "dng_tgn.nn.save_encoder; writes an (N, d) float32 .npy, rows in input order.")
    p.add_argument("inputs", nargs="+", help="stream files or checkpoints")
    p.add_argument("--encoder", required=True, help="encoder file (dng_tgn.nn.save_encoder)")
    p.add_argument("-o", "--output", required=True, help=".npy file to write")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("datasets", help="build or verify weight-space datasets",
                       description="Build a dataset with its builder, or open every split of one and count it.")
    dsub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    b = dsub.add_parser("build", help="run a builder (arguments after KIND go to it; KIND --help lists them)",
                        description="Run python -m dng_tgn.data.build_<kind> with the remaining arguments "
                                    "(progress bars on stderr; re-running resumes).")
    b.add_argument("kind", choices=sorted(DATASETS))
    b.add_argument("builder_args", nargs=argparse.REMAINDER, help="builder arguments, e.g. --out DIR --preset cpu")
    b.set_defaults(func=cmd_datasets_build)
    v = dsub.add_parser("verify", help="open train/val/test with the loaders, count, convert a few",
                        description="Open each split with its loader, report the counts and convert items to streams.")
    v.add_argument("kind", choices=sorted(DATASETS))
    v.add_argument("root", help="dataset folder")
    v.add_argument("--convert", type=int, default=2, help="items per split converted to streams (-1: all; default 2)")
    v.add_argument("--quiet", action="store_true", help="no progress bars")
    v.set_defaults(func=cmd_datasets_verify)
    return ap


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    from .errors import DNGError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except CLIError as e:
        msg = str(e)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        msg = f"{e.filename or ''}: {e.strerror or e}" if getattr(e, "filename", None) else str(e)
    except DNGError as e:
        msg = str(e)
    print(f"{PROG} {args.command}: error: {' '.join(msg.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
