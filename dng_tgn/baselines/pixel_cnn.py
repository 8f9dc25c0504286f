"""The pixel-space reference of the INR tables: the paper's classifier CNN trained on images, not weights.

F.1.2's classifier (two 3×3 convs, a 3-layer MLP) is what INR2JLS puts on its feature maps; here it reads the
images themselves. On the INRs' *source* images it is the ceiling an INR classifier aims at; on the images the
INRs *render* it says how much the fitting itself loses. Same splits, same optimiser and budget as the
classification phase of INR2JLS, early stopping on validation accuracy.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..nn.inr2jls import FeatureMapClassifier
from ..training import EpochSampler, seed_everything, train_loop

__all__ = ["source_images", "train_pixel_classifier"]


class _Curve:
    """Collects the validation metrics the training loop logs (the row's accuracy-against-step figure)."""

    def __init__(self, metric: str):
        self.metric, self.points = metric, []

    def log_scalar(self, name: str, value: float, step: int | None = None) -> None:
        if name == self.metric:
            self.points.append([int(step), float(value)])


def source_images(root: Path, source_root: str | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The images an INR folder was fitted to, per split, in [-1, 1]: ``{split: (images, labels)}``.

    Reads ``meta.json`` of a ``build_inrs`` folder (dataset, split points, image ids; id ``i`` is the i-th
    official training image, or test image ``i - len(train)``).
    """
    from ..data.sources import load_images, to_signed

    meta_path = Path(root) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        dataset, ids, (a, b) = meta["dataset"], meta["image_ids"], meta["split_points"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{meta_path} not found: the source images are known only for build_inrs folders") from None
    except (json.JSONDecodeError, KeyError, ValueError) as e:
        raise ValueError(f"{meta_path}: cannot read dataset/image_ids/split_points ({e})") from None
    x_tr, y_tr = load_images(dataset, "train", source_root)
    x_te, y_te = load_images(dataset, "test", source_root)
    ids = torch.as_tensor(ids)
    n_tr = len(x_tr)
    x = torch.cat([to_signed(x_tr), to_signed(x_te)])
    y = torch.cat([torch.as_tensor(y_tr), torch.as_tensor(y_te)]).long()
    assert int(ids.max()) < n_tr + len(x_te)
    parts = {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}
    return {s: (x[i], y[i]) for s, i in parts.items()}


def train_pixel_classifier(splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *, seed: int, steps: int,
                           batch_size: int, lr: float, weight_decay: float, eval_every: int,
                           classifier: Mapping, patience: int | None = None, device="cpu",
                           grad_clip: float = 1.0) -> dict:
    """Train F.1.2's classifier on ``splits[s] = (images (N, C, H, W), labels)``; returns test accuracy etc.

    ``classifier``: conv_channels, hidden, conv_dropout, mlp_dropout (as INR2JLS's ``classifier`` config).
    The result's ``history`` is the validation accuracy at every evaluation, ``[[step, accuracy], ...]``.
    """
    t0 = time.perf_counter()
    seed_everything(seed)
    (xtr, ytr), (xva, yva), (xte, yte) = (splits[s] for s in ("train", "val", "test"))
    num_classes = int(max(ytr.max(), yva.max(), yte.max())) + 1
    model = FeatureMapClassifier(xtr.shape[1], tuple(xtr.shape[2:]), num_classes,
                                 conv_channels=classifier["conv_channels"], hidden_dim=classifier["hidden"],
                                 conv_dropout=classifier["conv_dropout"], mlp_dropout=classifier["mlp_dropout"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    ce = nn.CrossEntropyLoss()

    @torch.no_grad()
    def accuracy(x, y):
        return sum(int((model(x[i:i + 512].to(device)).argmax(-1).cpu() == y[i:i + 512]).sum())
                   for i in range(0, len(x), 512)) / len(x)

    curve = _Curve("pixel_cls.val.accuracy")
    result = train_loop(name="pixel_cls", model=model, optimizer=opt, sampler=EpochSampler(len(xtr), batch_size, seed),
                        train_step=lambda idx: ce(model(xtr[idx].to(device)), ytr[idx].to(device)),
                        evaluate=lambda: {"accuracy": accuracy(xva, yva)}, monitor="accuracy", higher_is_better=True,
                        total_steps=steps, eval_every=eval_every, patience=patience, checkpoint_dir=None,
                        grad_clip=grad_clip, run=curve)
    return {"test_acc": accuracy(xte, yte), "params": sum(p.numel() for p in model.parameters()),
            "train_s": time.perf_counter() - t0, "best_step": result.best_step, "best_val": result.best_metric,
            "history": curve.points}
