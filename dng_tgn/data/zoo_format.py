"""The Small CNN Zoo on-disk format (Unterthiner et al. 2020) and its TF <-> PyTorch layout transposes.

A zoo folder holds
    weights.npy      (rows, P) float32; each row is one checkpoint, every variable flattened in TF layout
    layout.csv       varname,start_idx,end_idx,size,shape   (shape like "(3, 3, 1, 16)")
    metrics.csv.gz   one row per weights row: config.* hyperparameters, step, test_accuracy, ...
TF stores conv kernels as (kh, kw, in, out) and dense kernels as (in, out); PyTorch (and ZooCNN) uses
(out, in, kh, kw) and (out, in). The transposes are the ones NFN's ZooDataset makes.
"""
from __future__ import annotations

import ast
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

LAYOUT_COLUMNS = ["varname", "start_idx", "end_idx", "size", "shape"]


def tf_to_torch(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 4:
        return arr.transpose(3, 2, 0, 1)
    if arr.ndim == 2:
        return arr.T
    return arr


def torch_to_tf(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 4:
        return arr.transpose(2, 3, 1, 0)
    if arr.ndim == 2:
        return arr.T
    return arr


def zoo_cnn_layout(in_channels: int = 1, channels: int = 16, num_layers: int = 3, num_classes: int = 10):
    """layout.csv rows for ZooCNN, with Keras' variable names, plus the matching ZooCNN state_dict keys."""
    shapes, keys = [], []
    c_in = in_channels
    for i in range(num_layers):
        scope = "sequential/conv2d" + (f"_{i}" if i else "")
        shapes += [(f"{scope}/kernel:0", (3, 3, c_in, channels)), (f"{scope}/bias:0", (channels,))]
        keys += [f"convs.{i}.weight", f"convs.{i}.bias"]
        c_in = channels
    shapes += [("sequential/dense/kernel:0", (channels, num_classes)), ("sequential/dense/bias:0", (num_classes,))]
    keys += ["head.weight", "head.bias"]
    rows, start = [], 0
    for name, shape in shapes:
        size = int(np.prod(shape))
        rows.append(dict(varname=name, start_idx=start, end_idx=start + size, size=size, shape=str(shape)))
        start += size
    return pd.DataFrame(rows, columns=LAYOUT_COLUMNS), keys


def state_dict_to_row(sd: dict, layout: pd.DataFrame, keys: list[str]) -> np.ndarray:
    row = np.empty(int(layout["end_idx"].max()), dtype=np.float32)
    for (_, r), k in zip(layout.iterrows(), keys):
        row[r["start_idx"]:r["end_idx"]] = torch_to_tf(sd[k].detach().cpu().numpy()).reshape(-1)
    return row


def read_layout(path: str | os.PathLike) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """Validated (varname, start, end, shape) rows: a header with the layout columns, parsable shapes, and
    variables that tile the weights row from 0 without gaps (a gap is a missing row, named with its line)."""
    from .input_checks import CorruptInputError, read_csv_file

    df = read_csv_file(path, ("varname", "start_idx", "end_idx", "shape"), integer=("start_idx", "end_idx"),
                       what="layout file")
    out, expected_start = [], 0
    for i, r in df.iterrows():
        line = i + 2
        try:
            shape = tuple(int(v) for v in ast.literal_eval(str(r["shape"])))
        except (ValueError, SyntaxError, TypeError):
            raise CorruptInputError(f"{path}, line {line}: bad shape {r['shape']!r} for {r['varname']}") from None
        start, end = int(r["start_idx"]), int(r["end_idx"])
        if end - start != int(np.prod(shape)):
            raise CorruptInputError(f"{path}, line {line}: {r['varname']} spans {end - start} values but shape "
                                    f"{shape} needs {int(np.prod(shape))}")
        if start != expected_start:
            raise CorruptInputError(
                f"{path}, line {line}: {r['varname']} starts at {start}, but the variables before it end at "
                f"{expected_start}: " + ("a row is missing before this line" if start > expected_start
                                         else "it overlaps the previous row"))
        expected_start = end
        out.append((str(r["varname"]), start, end, shape))
    return out


def layout_to_keys(layout, path="layout.csv") -> list[str]:
    """Map Keras variable names to ZooCNN keys: conv scopes -> convs.{i}, the single dense scope -> head.

    Every scope needs a kernel and a bias row whose shapes fit each other and the layer before (a missing row
    fails here, naming it, not later when a network is built)."""
    from .input_checks import CorruptInputError

    scopes = []
    leaves: dict[str, dict[str, tuple]] = {}
    for name, _, _, shape in layout:
        scope, leaf = name.rsplit("/", 1) if "/" in name else ("", name)
        if leaf not in ("kernel:0", "bias:0"):
            raise CorruptInputError(f"{path}: layout variable {name!r} is neither a kernel nor a bias")
        leaves.setdefault(scope, {})[leaf] = shape
        if scope not in [s for s, _ in scopes]:
            scopes.append((scope, None))
        if leaf == "kernel:0":
            scopes[[s for s, _ in scopes].index(scope)] = (scope, len(shape))
    prev_out = None
    for scope, _ in scopes:
        have = leaves[scope]
        for leaf in ("kernel:0", "bias:0"):
            if leaf not in have:
                raise CorruptInputError(f"{path}: {scope!r} has no {leaf} row (a missing row); found "
                                        f"{sorted(have)}")
        kernel, bias = have["kernel:0"], have["bias:0"]
        if len(kernel) not in (2, 4) or bias != (kernel[-1],):
            raise CorruptInputError(f"{path}: {scope}/bias:0 has shape {bias}, expected ({kernel[-1]},) for kernel "
                                    f"{kernel}")
        if prev_out is not None and kernel[-2] != prev_out:
            raise CorruptInputError(f"{path}: {scope}/kernel:0 {kernel} takes {kernel[-2]} inputs, but the layer "
                                    f"before has {prev_out} outputs (a missing or reordered row?)")
        prev_out = kernel[-1]
    convs = [s for s, nd in scopes if nd == 4]
    dense = [s for s, nd in scopes if nd == 2]
    if len(dense) != 1 or len(convs) + 1 != len(scopes):
        raise CorruptInputError(f"{path}: layout is not conv layers + one dense head: scopes "
                                f"{[s for s, _ in scopes]}")
    names = {s: f"convs.{i}" for i, s in enumerate(convs)}
    names[dense[0]] = "head"
    keys = []
    for name, *_ in layout:
        scope, leaf = name.rsplit("/", 1) if "/" in name else ("", name)
        keys.append(f"{names[scope]}.{'weight' if leaf == 'kernel:0' else 'bias'}")
    return keys


def row_to_state_dict(row: np.ndarray, layout, keys) -> OrderedDict:
    sd = OrderedDict()
    for (name, start, end, shape), key in zip(layout, keys):
        arr = np.asarray(row[start:end], dtype=np.float32).reshape(shape)
        sd[key] = torch.from_numpy(np.array(tf_to_torch(arr), dtype=np.float32, order="C", copy=True))
    return sd


def check_zoo_folder(root: Path) -> None:
    missing = [f for f in ("weights.npy", "layout.csv", "metrics.csv.gz") if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"zoo folder {root} lacks {missing}")
