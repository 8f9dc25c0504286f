"""Loaders for SIREN INR sets: NFN's tarball layout (ours too) and DWSNets' layout.

NFN splits by image index: net{idx} with idx < val_point is train, < test_point val, the rest test. Its public
loader globs ``{prefix}_*/*.pth``, which also matches ``{prefix}_aug{i}_{label}s``; here the class folders are matched
exactly (``{prefix}_{digits}s``) so augmentation copies never reach validation or test, and they join the training
split only when asked for with ``extra_aug``.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path

from torch.utils.data import Dataset

from .input_checks import CorruptInputError, check_linear_chain, read_json_file
from .shards import CorruptShardError, torch_load
from .siren_fit import DWS_KEYS, NFN_KEYS

# NFN's split points by INR count (train | val | test by image index).
NFN_SPLIT_POINTS = {60000: (45000, 50000), 70000: (55000, 60000)}
_NET_RE = re.compile(r"net(\d+)\.pth")


def _checked_state_dict(path: Path, keys) -> OrderedDict:
    sd = torch_load(path, "INR checkpoint")
    if not isinstance(sd, dict):
        raise CorruptShardError(f"{path}: expected a state_dict, got {type(sd).__name__}")
    missing = [k for k in keys if k not in sd]
    if missing:
        raise KeyError(f"{path}: missing keys {missing}; found {sorted(sd)}")
    check_linear_chain(path, [(k, sd[k]) for k in keys])
    return OrderedDict((k, sd[k]) for k in keys)


def read_inr_meta(path: Path) -> dict:
    """An INR folder's meta.json, with split_points and image_shape checked when present."""
    meta = read_json_file(path, "INR set meta.json")
    sp = meta.get("split_points")
    if sp is not None and not (isinstance(sp, list) and len(sp) == 2 and all(isinstance(v, int) for v in sp)):
        raise CorruptInputError(f"{path}: split_points must be [val_point, test_point] (two integers), got {sp!r}")
    shape = meta.get("image_shape")
    if shape is not None and not (isinstance(shape, list) and len(shape) == 3
                                  and all(isinstance(v, int) and v > 0 for v in shape)):
        raise CorruptInputError(f"{path}: image_shape must be [C, H, W] (three positive integers), got {shape!r}")
    return meta


def _scan(root: Path, prefix: str) -> tuple[dict[int, Path], dict[int, int]]:
    """idx -> path and idx -> label from folders named exactly ``{prefix}_{label}s``."""
    folder_re = re.compile(re.escape(prefix) + r"_(\d+)s")
    paths, labels = {}, {}
    for d in sorted(root.iterdir()):
        m = folder_re.fullmatch(d.name)
        if not (m and d.is_dir()):
            continue
        for f in d.iterdir():
            fm = _NET_RE.fullmatch(f.name)
            if not fm:
                continue
            idx = int(fm.group(1))
            if idx in paths:
                raise ValueError(f"INR index {idx} appears twice: {paths[idx]} and {f}")
            paths[idx], labels[idx] = f, int(m.group(1))
    return paths, labels


class NFNSirenDataset(Dataset):
    """Items are ``(state_dict, label)`` with NFN's keys ``net.{0,1}.linear.*``, ``net.2.*``.

    split: 'train', 'val', 'test' or 'all'. split_points: (val_point, test_point); by default read from our
    meta.json, else NFN's points for 60k/70k INR sets. extra_aug: add copies aug0..aug{extra_aug-1} (train only).
    """

    def __init__(self, root, split: str = "train", prefix: str = "randinit_smaller", extra_aug: int = 0,
                 split_points: tuple[int, int] | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"INR folder {self.root} does not exist")
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train/val/test/all, got {split!r}")
        meta_path = self.root / "meta.json"
        self.metadata = read_inr_meta(meta_path) if meta_path.exists() else {}
        paths, labels = _scan(self.root, prefix)
        n = len(paths)
        if n == 0:
            raise FileNotFoundError(f"no {prefix}_<label>s/net<idx>.pth files under {self.root}")
        if sorted(paths) != list(range(n)):
            gaps = sorted(set(range(max(paths) + 1)) - set(paths))[:5]
            raise ValueError(f"{self.root}: INR indices are not 0..{n - 1} (missing e.g. {gaps}); incomplete build?")
        if split_points is None:
            split_points = self.metadata.get("split_points") or NFN_SPLIT_POINTS.get(n)
        if split_points is None:
            raise ValueError(f"{n} INRs under {self.root} and no meta.json: pass split_points=(val_point, test_point)")
        val_point, test_point = split_points
        if not 0 < val_point <= test_point <= n:
            raise ValueError(f"split points {split_points} do not fit {n} INRs")
        self.split_points = (val_point, test_point)
        ranges = {"train": range(val_point), "val": range(val_point, test_point), "test": range(test_point, n),
                  "all": range(n)}
        self.items = [(paths[i], labels[i]) for i in ranges[split]]
        if split == "train":
            for a in range(extra_aug):
                aug_paths, aug_labels = _scan(self.root, f"{prefix}_aug{a}")
                missing = [i for i in range(val_point) if i not in aug_paths]
                if missing:
                    raise ValueError(f"augmentation copy aug{a} lacks {len(missing)} training INRs "
                                     f"(e.g. net{missing[0]})")
                self.items += [(aug_paths[i], aug_labels[i]) for i in range(val_point)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        sd = _checked_state_dict(path, NFN_KEYS)
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        first = getattr(self, "_shapes", None)
        if first is None:
            self._shapes = (path, shapes)
        elif shapes != first[1]:
            diff = {k: (shapes[k], first[1][k]) for k in shapes if shapes[k] != first[1][k]}
            raise CorruptInputError(f"{path}: tensor shapes {diff} (this file, {first[0].name}) differ from the "
                                    f"set's other INRs")
        return sd, label


class DWSNetsSirenDataset(Dataset):
    """DWSNets' INR layout: a splits json ``{split: {"path": [...], "label": [...]}}`` pointing at
    ``.../mnist_png_{training|testing}_{label}_{n}/checkpoints/model_final.pth`` files with keys ``seq.{0,1,2}.*``.

    These SIRENs were fitted on the 'xy' grid and add 0.5 to their output (see ``siren_fit.render_dwsnets``).
    Relative paths resolve against ``root`` (default: the json's folder), dropping leading folders if needed.
    """

    def __init__(self, splits_path, split: str = "train", root=None):
        splits_path = Path(splits_path)
        splits = read_json_file(splits_path, "DWSNets splits file")
        if split not in splits:
            raise KeyError(f"{splits_path} has splits {sorted(splits)}, not {split!r}")
        entry = splits[split]
        if not isinstance(entry, dict) or not {"path", "label"} <= set(entry):
            raise CorruptInputError(f"{splits_path}: split {split!r} must be an object with 'path' and 'label' lists")
        if len(entry["path"]) != len(entry["label"]):
            raise ValueError(f"{splits_path}[{split}]: {len(entry['path'])} paths but {len(entry['label'])} labels")
        self.root = Path(root) if root else splits_path.parent
        self.items = [(self._resolve(p), int(lab)) for p, lab in zip(entry["path"], entry["label"])]

    def _resolve(self, p: str) -> Path:
        parts = Path(p).parts
        candidates = [Path(p)] + [self.root.joinpath(*parts[k:]) for k in range(len(parts))]
        for c in candidates:
            if c.is_file():
                return c
        raise FileNotFoundError(f"INR {p} not found as given or under {self.root}")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        return _checked_state_dict(path, DWS_KEYS), label
