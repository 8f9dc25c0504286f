"""ViT zoo (paper App. E.2): many SimpleViTs with vit-pytorch's parameter names, trained together, each stopped at
its own epoch, with its test accuracy recorded.

Training is vectorised with ``torch.func``: the models' parameters are stacked and one ``vmap``-ed
``functional_call`` runs them all, each on its own batch. Adam is elementwise, so one Adam over the stacked tensors
is one Adam per model. A model's parameters are snapshotted (and scored) at the end of its stop epoch.

On disk (``root``): meta.json (SimpleViT kwargs, ``heads``, ``layout``, ``split_seed``, ``split_fractions``,
settings), models.pt ({name: stacked tensor}), metrics.csv (model_id, seed, stop_epoch, lr, test_accuracy, split),
_shards/ while building. The split is :func:`vit_split` of meta.json's ``split_fractions``: 80/10/10 (App. E.2) by
default and in the ``cpu`` / ``full`` presets, 50/10/40 in ``bench``.
"""
from __future__ import annotations

import copy
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import Dataset

from dng_tgn.nets.simple_vit import SimpleViT, layout_kwargs

from .shards import torch_load


# meta.json "layout" of zoos written now; zoos without it are read in whichever layout their weights are in
VIT_PYTORCH_LAYOUT = "vit-pytorch SimpleViT, current layout (transformer.norm + linear_head; 1.26.x)"


def vit_split(n: int, seed: int = 0, fractions=(0.8, 0.1, 0.1)) -> dict[str, np.ndarray]:
    """Seeded split of model indices: App. E.2's 80/10/10 by default; ``fractions`` = (train, val, test)."""
    fr = tuple(float(f) for f in fractions)
    if len(fr) != 3 or min(fr) <= 0 or abs(sum(fr) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {fractions!r}")
    perm = np.random.default_rng(seed).permutation(n)
    a, b = int(round(fr[0] * n)), int(round((fr[0] + fr[1]) * n))
    return {"train": np.sort(perm[:a]), "val": np.sort(perm[a:b]), "test": np.sort(perm[b:]), "all": np.arange(n)}


def make_models(model_kwargs: dict, seeds: list[int]) -> list[SimpleViT]:
    models = []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            models.append(SimpleViT(**model_kwargs))
    return models


class StackedViTs:
    """M SimpleViTs as stacked tensors; __call__(x (M, B, C, H, W)) -> logits (M, B, classes)."""

    def __init__(self, model_kwargs, seeds, device):
        models = make_models(model_kwargs, seeds)
        params, buffers = stack_module_state(models)
        self.params = {k: v.to(device).detach().requires_grad_() for k, v in params.items()}
        self.buffers = {k: v.to(device) for k, v in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")

        def one(p, b, x):
            return functional_call(self.base, (p, b), (x,))

        self._fn = vmap(one)

    def __call__(self, x, idx=None):
        if idx is None:
            return self._fn(self.params, self.buffers, x)
        return self._fn({k: v[idx] for k, v in self.params.items()}, {k: v[idx] for k, v in self.buffers.items()}, x)


@torch.no_grad()
def accuracy(stack: StackedViTs, idx: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch: int = 500):
    correct = torch.zeros(len(idx), device=x.device)
    for s in range(0, len(x), batch):
        xb = x[s:s + batch].unsqueeze(0).expand(len(idx), *x[s:s + batch].shape)
        correct += (stack(xb, idx).argmax(-1) == y[s:s + batch]).float().sum(1)
    return correct / len(x)


def train_vits(model_kwargs, seeds, stop_epochs, x_train, y_train, x_test, y_test, steps_per_epoch: int,
               batch_size: int = 64, lr: float = 1e-3, device="cpu", progress=None, loss_log=None, lrs=None):
    """Train together; return ({name: (M, ...)} snapshots at each model's stop epoch, (M,) test accuracies).

    ``lrs``: one learning rate per model (else ``lr`` for all). Adam's update is ``lr · m̂ / (√v̂ + ε)`` and its
    moments do not depend on lr, so one Adam step at ``lr`` rescaled by ``lrs[m] / lr`` per model is exactly model
    m's own Adam at ``lrs[m]``.
    """
    m = len(seeds)
    scale = None
    if lrs is not None:
        if len(lrs) != m:
            raise ValueError(f"{len(lrs)} learning rates for {m} models")
        scale = torch.as_tensor(lrs, dtype=torch.float32, device=device) / lr
    stack = StackedViTs(model_kwargs, seeds, device)
    opt = torch.optim.Adam(list(stack.params.values()), lr=lr)
    stop = torch.as_tensor(stop_epochs)
    snap = {k: torch.empty_like(v, device="cpu") for k, v in stack.params.items()}
    acc = torch.full((m,), float("nan"))
    g = torch.Generator(device=device).manual_seed(int(seeds[0]))
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    for epoch in range(int(stop.max()) + 1):
        if epoch > 0:
            for _ in range(steps_per_epoch):
                idx = torch.randint(0, len(x_train), (m, batch_size), generator=g, device=device)
                logits = stack(x_train[idx])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y_train[idx].reshape(-1),
                                       reduction="none").view(m, batch_size).mean(1)
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                before = None if scale is None else {k: v.detach().clone() for k, v in stack.params.items()}
                opt.step()
                if before is not None:
                    with torch.no_grad():
                        for k, v in stack.params.items():
                            step = v - before[k]
                            v.copy_(before[k] + scale.view((-1,) + (1,) * (v.dim() - 1)) * step)
                if loss_log is not None:
                    loss_log.append(loss.detach().mean().item())
                if progress is not None:
                    progress.update(m)
        done = (stop == epoch).nonzero().flatten()
        if len(done):
            acc[done] = accuracy(stack, done.to(device), x_test, y_test).cpu()
            for k, v in stack.params.items():
                snap[k][done] = v.detach()[done.to(device)].cpu()
    return snap, acc


class ViTZooDataset(Dataset):
    """Items are ``(state_dict, test_accuracy)`` with vit-pytorch SimpleViT keys, for one split of the zoo.

    The split is the seeded :func:`vit_split` of meta.json's ``split_seed`` and ``split_fractions`` (train, val, test),
    which the builder records: App. E.2's 80/10/10 unless ``--split`` or the preset chose otherwise (``bench``:
    50/10/40, i.e. 300 / 60 / 240 of 600 ViTs); zoos that predate the record are 80/10/10 with seed 0. When
    metrics.csv has the builder's ``split`` column, it must agree with that split. ``idx[i]`` is item i's row in
    models.pt and metrics.csv (its identity in the zoo).

    ``model_kwargs`` rebuilds the architecture: ``SimpleViT(**ds.model_kwargs).load_state_dict(ds[i][0])``; zoos in
    the older vit-pytorch layout (``linear_head.{0,1}``) load too. ``heads`` is the attention head count, which the
    weights do not record: convert items with ``dng_tgn.to_event_stream(sd, heads=ds.heads)``.
    """

    def __init__(self, root, split: str = "train"):
        root = Path(root)
        for f in ("meta.json", "models.pt", "metrics.csv"):
            if not (root / f).is_file():
                raise FileNotFoundError(f"ViT zoo folder {root} lacks {f} (unfinished build?)")
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train/val/test/all, got {split!r}")
        from .input_checks import CorruptInputError, read_csv_file, read_json_file  # file checks: named errors

        self.metadata = read_json_file(root / "meta.json", "ViT zoo meta.json")
        if not isinstance(self.metadata.get("model_kwargs"), dict):
            raise CorruptInputError(f"{root / 'meta.json'}: lacks the SimpleViT 'model_kwargs' object")
        self.model_kwargs = dict(self.metadata["model_kwargs"])
        params = torch_load(root / "models.pt", "ViT zoo weights")
        if not isinstance(params, dict) or not all(isinstance(v, torch.Tensor) for v in params.values()):
            raise CorruptInputError(f"{root / 'models.pt'}: expected {{name: stacked tensor}}, got {type(params).__name__}")
        if "final_norm_in_transformer" not in self.model_kwargs:  # zoos written before the layout was recorded
            self.model_kwargs.update(layout_kwargs(params))
        heads = {int(h) for h in (self.metadata.get("heads"), self.model_kwargs.get("heads")) if h is not None}
        if len(heads) != 1:
            raise KeyError(f"{root}/meta.json must record the attention head count once ('heads', model_kwargs['heads']), "
                           f"got {sorted(heads)}: the weights do not record it")
        self.heads = heads.pop()
        metrics = read_csv_file(root / "metrics.csv", ("test_accuracy",), numeric=("test_accuracy",),
                                what="ViT zoo metrics file")
        n = len(metrics)
        bad = {k: tuple(v.shape) for k, v in params.items() if v.shape[0] != n}
        if bad:
            raise ValueError(f"{root}/models.pt: tensors {bad} do not have {n} rows like metrics.csv")
        shapes = {k: tuple(v.shape) for k, v in SimpleViT(**self.model_kwargs).state_dict().items()}
        expected = set(shapes)
        if set(params) != expected:
            raise KeyError(f"{root}/models.pt keys differ from SimpleViT({self.model_kwargs}): "
                           f"missing {sorted(expected - set(params))}, extra {sorted(set(params) - expected)}")
        wrong = {k: (tuple(v.shape[1:]), shapes[k]) for k, v in params.items() if tuple(v.shape[1:]) != shapes[k]}
        if wrong:
            raise CorruptInputError(f"{root}/models.pt: per-model tensor shapes {wrong} (found, expected from "
                                    f"meta.json's model_kwargs)")
        # zoos written before split fractions were recorded use App. E.2's 80/10/10
        self.idx = vit_split(n, int(self.metadata.get("split_seed", 0)),
                             self.metadata.get("split_fractions", (0.8, 0.1, 0.1)))[split]
        if "split" in metrics.columns and split != "all":  # the builder's own record of the split: must agree
            recorded = np.flatnonzero(metrics["split"].astype(str).to_numpy() == split)
            if not np.array_equal(recorded, self.idx):
                raise CorruptInputError(
                    f"{root}: metrics.csv's 'split' column puts {len(recorded)} ViTs in {split!r}, but meta.json's "
                    f"split (seed {self.metadata.get('split_seed', 0)}, fractions "
                    f"{self.metadata.get('split_fractions', (0.8, 0.1, 0.1))}) puts {len(self.idx)} there, or "
                    f"other ones; one of the two files was edited or comes from another build")
        self.params = params
        self.metrics = metrics.iloc[self.idx].reset_index(drop=True)
        self.targets = self.metrics["test_accuracy"].to_numpy(dtype=np.float64)

    def __len__(self):
        return len(self.idx)

    def __getitem__(self, i):
        j = int(self.idx[i])
        return OrderedDict((k, v[j].clone()) for k, v in self.params.items()), float(self.targets[i])
