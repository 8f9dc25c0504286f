"""Checked readers for the files the loaders open: every problem is reported with the file's name, the line or
row, and what is wrong (truncated gzip, bad CSV header, a value that is not a number, JSON syntax, ...), at the
moment the file is opened rather than deep inside pandas / json or much later in training.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["CorruptInputError", "read_json_file", "read_csv_file", "read_index_file", "check_linear_chain"]


class CorruptInputError(ValueError):
    """An input file is damaged or malformed; the message names the file, where, and what is wrong."""


def _text(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise CorruptInputError(f"{path}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset "
                                f"{e.start}); is it a binary or damaged file?") from None


def read_json_file(path: str | os.PathLike, what: str = "JSON file", expect: type | None = dict):
    """Parse ``path``; syntax errors name the line and column, and the top level must be ``expect``."""
    path = Path(path)
    text = _text(path, path.read_bytes())
    if not text.strip():
        raise CorruptInputError(f"{path}: empty {what} (an interrupted write?)")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptInputError(f"{path}, line {e.lineno} column {e.colno}: JSON syntax error in the {what}: "
                                f"{e.msg}") from None
    if expect is not None and not isinstance(obj, expect):
        raise CorruptInputError(f"{path}: the {what} must hold a JSON {expect.__name__ if expect is not dict else 'object'}"
                                f", not {type(obj).__name__}")
    return obj


def _decompress(path: Path, raw: bytes) -> bytes:
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise CorruptInputError(f"{path}: truncated gzip stream (the file ends before gzip's end-of-stream marker: "
                                f"an incomplete download or copy)") from None
    except gzip.BadGzipFile as e:
        raise CorruptInputError(f"{path}: not a gzip file ({e}); expected a gzip-compressed CSV") from None
    except zlib.error as e:
        raise CorruptInputError(f"{path}: corrupt gzip data ({e})") from None


def read_csv_file(path: str | os.PathLike, required: Iterable[str] = (), *, numeric: Iterable[str] = (),
                  integer: Iterable[str] = (), what: str = "CSV file") -> pd.DataFrame:
    """A CSV (``.gz``: gzip-compressed) with a header row holding ``required`` columns; ``numeric`` / ``integer``
    columns must hold numbers in every row (errors name the line: the header is line 1)."""
    path = Path(path)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = _decompress(path, raw)
    text = _text(path, raw)
    if not text.strip():
        raise CorruptInputError(f"{path}: empty {what}")
    try:
        df = pd.read_csv(io.StringIO(text))
    except pd.errors.ParserError as e:
        raise CorruptInputError(f"{path}: malformed CSV: {str(e).strip()}") from None
    except pd.errors.EmptyDataError as e:
        raise CorruptInputError(f"{path}: no CSV header ({e})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CorruptInputError(f"{path}, line 1: bad CSV header {list(map(str, df.columns))[:10]}: lacks column(s) "
                                f"{missing}")
    if len(df) == 0:
        raise CorruptInputError(f"{path}: the {what} has a header but no rows")
    integer = list(integer)
    for col in [*numeric, *integer]:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() | ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan)))
        if col in integer and not len(bad):
            bad = np.flatnonzero(values.to_numpy(dtype=float) != np.round(values.to_numpy(dtype=float)))
        if len(bad):
            i = int(bad[0])
            raise CorruptInputError(f"{path}, line {i + 2} (row {i}): column {col!r} holds {df[col].iloc[i]!r}, not "
                                    f"{'an integer' if col in integer else 'a finite number'} ({len(bad)} such row(s))")
        df[col] = values.astype(np.int64) if col in integer else values.astype(np.float64)
    return df


def read_index_file(path: str | os.PathLike, n_rows: int) -> np.ndarray:
    """NFN's split file: one row index per line, no header; each in 0..n_rows-1, none twice."""
    path = Path(path)
    text = _text(path, path.read_bytes())
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise CorruptInputError(f"{path}: empty split file (expected one row index per line)")
    out, seen = [], {}
    for no, line in enumerate(lines, start=1):
        s = line.strip()
        try:
            v = int(s)
        except ValueError:
            hint = " (a split file has no header line)" if no == 1 else ""
            raise CorruptInputError(f"{path}, line {no}: {s!r} is not a row index{hint}") from None
        if not 0 <= v < n_rows:
            raise CorruptInputError(f"{path}, line {no}: row index {v} is outside 0..{n_rows - 1} (the zoo has "
                                    f"{n_rows} rows): a split file of another zoo?")
        if v in seen:
            raise CorruptInputError(f"{path}, line {no}: row index {v} appears again (first on line {seen[v]})")
        seen[v] = no
        out.append(v)
    return np.asarray(out, dtype=np.int64)


def check_linear_chain(path, tensors: Sequence[tuple[str, "object"]]) -> None:
    """(weight, bias) pairs of consecutive Linear layers: 2-D weights, matching biases, chained widths."""
    prev_out = None
    for (wk, w), (bk, b) in zip(tensors[0::2], tensors[1::2]):
        if getattr(w, "ndim", None) != 2:
            raise CorruptInputError(f"{path}: {wk} has shape {tuple(getattr(w, 'shape', ()))}, expected 2-D "
                                    f"(out, in)")
        if getattr(b, "ndim", None) != 1 or b.shape[0] != w.shape[0]:
            raise CorruptInputError(f"{path}: {bk} has shape {tuple(getattr(b, 'shape', ()))}, expected "
                                    f"({w.shape[0]},) to match {wk} {tuple(w.shape)}")
        if prev_out is not None and w.shape[1] != prev_out:
            raise CorruptInputError(f"{path}: {wk} has shape {tuple(w.shape)}, but the layer before it has "
                                    f"{prev_out} outputs")
        prev_out = w.shape[0]
