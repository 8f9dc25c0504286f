"""Generalisation prediction (§8.2 / F.2, App. E.2, Tables 3 and 7): a classifier's weights -> its test accuracy.

One pipeline for the CNN zoo and the ViT zoo: the weight encoder (DNG-Encoder or NG-GNN) and an MLP head give
one logit per network, trained with BCE on the accuracy; early stopping on validation Kendall τ; the test
set's τ, R² and MSE are the result. NFN (``encoder.kind=nfn_np|nfn_hnp``) reads stacked parameters instead of
streams, with the same head, loss, budget and early stopping.

Collapse detection: every run checks its best model on validation (R² and std(pred)/std(target),
:func:`~dng_tgn.training.collapse_check`); a ratio < 0.1 warns, logs and sets ``val.collapsed`` in the result.

Per-net test predictions (``<name>_test_predictions.csv``: ``model_id, target, prediction``) name each network by
its id in the zoo's files (:attr:`GeneralizationData.ids`), so that two methods' predictions are paired on the
same network (the paired bootstrap of ``experiments/tables.py``), never on row order or on equal targets.
"""
from __future__ import annotations

import math
import time
from enum import Enum
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..choices import parse_choice
from ..data.state_dict_set import StateDictSet
from ..device import resolve_device
from ..nn.factory import EncoderKind, build_encoder, fit_degree_scaler, sized_encoder_kwargs
from ..nn.generalization import GeneralizationPredictor
from ..nn.paths import ExecutionPath
from ..tracking import log_figure, print_summary
from ..training import (EpochSampler, collapse_check, kendall_tau, r2_score, resolve_resume, seed_everything,
                        spread_ratio, train_loop)
from .common import checkpoint_dir, count_params, open_split, save_predictions, set_threads

__all__ = ["GeneralizationData", "load_cnn_zoo", "load_vit_zoo", "load_wild_park", "predict", "scatter_figure",
           "run_generalization", "HeadLoss"]

CNN_ZOO_BUILD = "python -m dng_tgn.data.build_cnn_zoo --out <folder>"
VIT_ZOO_BUILD = "python -m dng_tgn.data.build_vit_zoo --out <folder>"
WILD_PARK_BUILD = "python -m dng_tgn.data.build_wild_park --out <folder>"


class GeneralizationData:
    """The three splits of a zoo and what the encoder needs to know of its networks.

    ``ids``: split name (``train``, ``val``, ``test`` and every ``extra_tests`` name) -> (n,) int64 ids of that
    split's networks in item order, each the network's identity in the zoo's files (CNN zoo: its ``weights.npy``
    row; ViT zoo: its ``models.pt`` / ``metrics.csv`` row; Wild Park: ``metrics.csv``'s ``model_id``). Unique
    within a zoo, the same whichever split file or ``limit`` selected the network. None: positions 0..n-1, which
    identify nothing outside this object (predictions saved with them cannot be paired with another run's).
    """

    def __init__(self, train: StateDictSet, val: StateDictSet, test: StateDictSet, num_outputs: int, num_slots: int,
                 info: Mapping | None = None, extra_tests: Mapping | None = None, ids: Mapping | None = None):
        self.train, self.val, self.test = train, val, test
        self.num_outputs, self.num_slots = num_outputs, num_slots
        self.info = dict(info or {})
        # more held-out sets scored like test (the Wild Park's unseen architectures), by name
        self.extra_tests = dict(extra_tests or {})
        sets = {"train": train, "val": val, "test": test, **self.extra_tests}
        given = dict(ids or {})
        unknown = sorted(set(given) - set(sets))
        if unknown:
            raise ValueError(f"ids for unknown splits {unknown}; the splits are {sorted(sets)}")
        self.ids: dict[str, np.ndarray] = {}
        for split, ds in sets.items():
            v = np.asarray(given[split], dtype=np.int64) if split in given else np.arange(len(ds), dtype=np.int64)
            if v.shape != (len(ds),):
                raise ValueError(f"split {split!r}: {v.shape[0] if v.ndim else 0} ids for {len(ds)} networks")
            if len(np.unique(v)) != len(v):
                raise ValueError(f"split {split!r}: network ids are not unique, so they cannot name a network")
            self.ids[split] = v


def load_cnn_zoo(root: Path, split_file: str | None = None, limit: int | None = None) -> GeneralizationData:
    """A Small-CNN-Zoo folder (public archive or ``build_cnn_zoo``'s), split as NFN does."""
    from ..data import CNNZooDataset

    def load(split):
        ds = open_split(lambda s: CNNZooDataset(root, s, split_file=split_file), root, split, "CNN zoo", CNN_ZOO_BUILD)
        # the zoo samples relu/tanh per network; the activation is not an encoder input (graphs carry weights
        # only), so the converter's default is used for all
        items = StateDictSet.from_dataset(ds, desc=f"zoo {split}", limit=limit)
        return items, np.asarray(ds.rows[:len(items)])  # a network's id: its row in weights.npy

    (train, i_tr), (val, i_va), (test, i_te) = (load(s) for s in ("train", "val", "test"))
    conv = next(v for v in train.params.values() if v.dim() == 5)  # (n, out, in, kh, kw)
    return GeneralizationData(train, val, test, num_outputs=int(train.params["head.weight"].shape[1]),
                              num_slots=int(conv.shape[-1] * conv.shape[-2]),
                              ids={"train": i_tr, "val": i_va, "test": i_te})


def load_vit_zoo(root: Path, limit: int | None = None) -> GeneralizationData:
    """A ViT zoo folder (``build_vit_zoo``'s); the attention head count comes from its meta.json."""
    from ..data import ViTZooDataset

    def load(split):
        ds = open_split(lambda s: ViTZooDataset(root, s), root, split, "ViT zoo", VIT_ZOO_BUILD)
        heads = ds.model_kwargs.get("heads")
        if heads is None:
            raise KeyError(f"{root}/meta.json model_kwargs lacks 'heads', which the App. E.2 conversion needs")
        # a state_dict does not record the number of attention heads: it comes from the stored SimpleViT kwargs
        items = StateDictSet.from_dataset(ds, desc=f"vit {split}", limit=limit, convert_kwargs={"heads": int(heads)})
        return items, ds, np.asarray(ds.idx[:len(items)])  # a network's id: its row in models.pt and metrics.csv

    (train, ds, i_tr), (val, _, i_va), (test, _, i_te) = (load(s) for s in ("train", "val", "test"))
    return GeneralizationData(train, val, test, num_outputs=int(ds.model_kwargs.get("num_classes", 10)), num_slots=1,
                              info={"vit_kwargs": dict(ds.model_kwargs)},
                              ids={"train": i_tr, "val": i_va, "test": i_te})


def model_inputs(data, idx, device, parameters: bool = False):
    """``(encoder input, targets)`` of rows ``idx``: a stream batch, or (``parameters``) stacked parameter rows."""
    if parameters:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[idx].to(device) for k, v in data.params.items()}, data.targets[idx]
    batch, y = data.batch(idx)
    return batch.to(device), y


def load_wild_park(root: Path, limit: int | None = None) -> GeneralizationData:
    """A CNN Wild Park folder (``build_wild_park``'s): mixed architectures as pre-converted event streams.

    train / val / test hold networks of *seen* architectures; ``extra_tests["test_unseen"]`` those of architectures
    whose depth or width no training network has (scored like test, reported as ``test_unseen``), and, scored
    apart, its two kinds: ``test_unseen_depth`` (an unseen depth) and ``test_unseen_width`` (a seen depth with an
    unseen width), since a model can generalise to one and not the other.
    """
    from ..data.wild_park import UNSEEN_DEPTHS, StreamSet, WildParkDataset

    def load(split):
        ds = open_split(lambda s: WildParkDataset(root, s), root, split, "Wild Park", WILD_PARK_BUILD)
        items = StreamSet.from_dataset(ds, desc=f"wild park {split}", limit=limit)
        ids[split] = ds.rows["model_id"].to_numpy()[:len(items)]
        return items

    ids: dict[str, np.ndarray] = {}
    train, val, test, unseen = (load(s) for s in ("train", "val", "test", "test_unseen"))
    k = max(st.num_slots for d in (train, val, test, unseen) for st in d.streams)
    seen = {str(a) for a in train.archs}
    info = {"architectures": {"train": len(seen), "test_unseen": len({str(a) for a in unseen.archs})}}
    if any(str(a) in seen for a in unseen.archs):
        raise ValueError(f"{root}: an unseen-architecture network has a training architecture; the split is wrong")
    extra = {"test_unseen": unseen}
    deep = np.array([len(a["widths"]) in UNSEEN_DEPTHS for a in unseen.archs])
    for name, mask in (("test_unseen_depth", deep), ("test_unseen_width", ~deep)):
        if mask.any():  # a zoo may hold only one kind
            extra[name], ids[name] = unseen.subset(np.flatnonzero(mask)), ids["test_unseen"][mask]
    return GeneralizationData(train, val, test, num_outputs=10, num_slots=k, info=info, extra_tests=extra, ids=ids)


@torch.no_grad()
def predict(model: GeneralizationPredictor, data: StateDictSet, batch_size: int, device,
            parameters: bool = False) -> np.ndarray:
    """Predicted accuracies (sigmoid of the logits) of every network of ``data``, in order."""
    out = []
    for idx in data.chunks(batch_size):
        x, _ = model_inputs(data, idx, device, parameters)
        out.append(torch.sigmoid(model(x)).cpu())
    return torch.cat(out).numpy()


def scatter_figure(pred: np.ndarray, target: np.ndarray, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.scatter(target, pred, s=8, alpha=0.6)
    lo, hi = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel("true test accuracy")
    ax.set_ylabel("predicted test accuracy")
    ax.set_title(f"{title}\nτ={kendall_tau(pred, target):.3f}  R²={r2_score(pred, target):.3f}", fontsize=9)
    fig.tight_layout()
    return fig


def _scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"kendall_tau": kendall_tau(pred, y), "r2": r2_score(pred, y), "mse": float(np.mean((pred - y) ** 2)),
            "std_ratio": spread_ratio(pred, y)}


class HeadLoss(Enum):
    """The training loss of the predicted accuracy (``head.loss``); the prediction is ``sigmoid(logit)`` either way."""

    BCE = "bce"  # §8.2 / the authors' predictor: binary cross-entropy of sigmoid(logit) against the accuracy
    MSE = "mse"  # Kofinas et al.'s CNN-zoo choice: squared error of sigmoid(logit) against the accuracy

    @classmethod
    def parse(cls, value: "str | HeadLoss") -> "HeadLoss":
        return parse_choice(cls, value, "head.loss")

    def criterion(self):
        """``(logits, accuracy) -> scalar``, the mean over the batch."""
        if self is HeadLoss.BCE:
            return nn.BCEWithLogitsLoss()
        if self is HeadLoss.MSE:
            return lambda z, t: nn.functional.mse_loss(torch.sigmoid(z), t)
        raise AssertionError(f"HeadLoss.criterion does not handle {self}")  # a new member needs a branch here


def run_generalization(*, run, name: str, data: GeneralizationData, seed: int, encoder: Mapping, optim: Mapping,
                       head: Mapping, runtime: Mapping) -> dict:
    """Train and test a generalisation predictor; returns the final metrics (also logged and put in ``run.info``).

    ``encoder`` (kind, dng, ng_gnn), ``optim`` (lr, weight_decay, batch_size, epochs or steps, eval_every,
    patience, grad_clip, log_every), ``head`` (hidden, layers, dropout) and ``runtime`` (device, path,
    num_threads, resume, checkpoint_dir, eval_batch_size) are the experiments' ingredient configs.
    Checkpoints: ``<run dir>/{name}.step<N>.pt`` (the last ``runtime.keep_checkpoints`` and the best);
    ``runtime.resume=<run dir or checkpoint file>`` continues exactly where it stopped.
    """
    t0 = time.perf_counter()
    dev = resolve_device(runtime["device"])
    set_threads(runtime["num_threads"])
    kind = EncoderKind.parse(encoder["kind"])
    path = ExecutionPath.parse(runtime["path"])
    loss_kind = HeadLoss.parse(head.get("loss", HeadLoss.BCE))
    seed_everything(seed)
    train, val, test = data.train, data.val, data.test
    by_params = kind.reads_parameters
    if by_params and not hasattr(train, "params"):
        raise ValueError(f"encoder.kind={kind.value!r} needs networks of one architecture as stacked parameters; "
                         f"this zoo mixes architectures (mark the row as not applicable)")
    if by_params:  # NFN: layout and input normalisation from the training split only
        enc = build_encoder(kind, num_outputs=data.num_outputs, num_slots=data.num_slots, dng={}, ng_gnn={},
                            nfn=encoder.get("nfn"), params=train.params)
    else:
        # mixed architectures: a probe with the set's deepest networks and largest kernels sizes the tables
        probe = train.probe_batch() if hasattr(train, "probe_batch") else train.batch([0])[0]
        dng, ng_gnn = sized_encoder_kwargs(encoder["dng"], encoder["ng_gnn"], probe)
        enc = build_encoder(kind, num_outputs=data.num_outputs, num_slots=data.num_slots, dng=dng, ng_gnn=ng_gnn,
                            mlp=encoder.get("mlp"), probe=probe,
                            path=path)
        fit_degree_scaler(enc, (train.batch(idx)[0] for idx in train.chunks(optim["batch_size"])[:4]))  # lazy: only NG-GNN reads it
    model = GeneralizationPredictor(enc, head["hidden"], head["layers"], head["dropout"]).to(dev)
    info = run.info if run is not None else {}
    info.update(data.info)
    info["params"] = count_params(model)
    info["encoder"] = kind.value
    info["sizes"] = {"train": len(train), "val": len(val), "test": len(test)}
    opt = torch.optim.Adam(model.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])
    sampler = EpochSampler(len(train), optim["batch_size"], seed=seed)
    # F.2 counts epochs; steps are what the loop and the logs count
    total = optim["steps"] if optim["steps"] else optim["epochs"] * sampler.per_epoch
    eval_every = optim["eval_every"] or sampler.per_epoch
    eval_bs = runtime["eval_batch_size"]
    criterion = loss_kind.criterion()

    def step(idx):
        x, y = model_inputs(train, idx, dev, by_params)
        return criterion(model(x), y.float().to(dev))

    ckdir = checkpoint_dir(run, runtime["checkpoint_dir"])
    result = train_loop(
        name=name, model=model, optimizer=opt, sampler=sampler, train_step=step,
        evaluate=lambda: _scores(predict(model, val, eval_bs, dev, by_params), val.targets.numpy()),
        monitor="kendall_tau", higher_is_better=True, total_steps=total, eval_every=eval_every,
        patience=optim["patience"], checkpoint_dir=ckdir, resume_path=resolve_resume(runtime["resume"], name),
        grad_clip=optim["grad_clip"], run=run, log_every=optim["log_every"],
        keep_checkpoints=runtime.get("keep_checkpoints", 2), amp=runtime.get("amp"))
    # the best weights are restored: is this model a collapsed (near-constant) predictor? (issue #12)
    val_check = collapse_check(predict(model, val, eval_bs, dev, by_params), val.targets.numpy(), f"{name} [{kind.value}]")
    pred, y = predict(model, test, eval_bs, dev, by_params), test.targets.numpy()
    final = _scores(pred, y)  # single values: the run's result and info, not metrics
    save_predictions(run, f"{name}_test_predictions.csv", model_id=data.ids["test"], target=y, prediction=pred)
    if run is not None:
        log_figure(run, scatter_figure(pred, y, f"{name} ({kind.value}), test set"), f"{name}_scatter.png", close=True)
    extra = {}
    for tname, tset in data.extra_tests.items():  # e.g. the Wild Park's unseen architectures
        p_t, y_t = predict(model, tset, eval_bs, dev, by_params), tset.targets.numpy()
        extra[tname] = _scores(p_t, y_t)
        save_predictions(run, f"{name}_{tname}_predictions.csv", model_id=data.ids[tname], target=y_t, prediction=p_t)
    summary = {"test": final, "val": val_check, **extra, "steps": result.steps, "best_step": result.best_step,
               "best_val_kendall_tau": result.best_metric, "stopped_early": result.stopped_early,
               "resumed_from_step": result.resumed_from, "params": info["params"],
               "seconds": time.perf_counter() - t0}
    info["results"] = summary
    print_summary(run, f"{name} [{kind.value}] test: τ={final['kendall_tau']:.4f}  R²={final['r2']:.4f}  "
          f"(best val τ {result.best_metric if result.best_metric is not None else math.nan:.4f} at step "
          f"{result.best_step}, {result.steps} steps, {summary['seconds']:.0f}s)")
    return summary
