"""Generalisation prediction (§8.2 / F.2, App. E.2, Tables 3 and 7): a classifier's weights -> its test accuracy.

One pipeline for the CNN zoo and the ViT zoo: the weight encoder (DNG-Encoder or NG-GNN) and an MLP head give
one logit per network, trained with BCE on the accuracy; early stopping on validation Kendall τ; the test
set's τ, R² and MSE are the result.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..data.state_dict_set import StateDictSet
from ..device import resolve_device
from ..nn.factory import EncoderKind, build_encoder, fit_degree_scaler, sized_encoder_kwargs
from ..nn.generalization import GeneralizationPredictor
from ..nn.paths import ExecutionPath
from ..tracking import log_figure, print_summary
from ..training import EpochSampler, kendall_tau, r2_score, resolve_resume, seed_everything, train_loop
from .common import checkpoint_dir, count_params, open_split, save_predictions, set_threads

__all__ = ["GeneralizationData", "load_cnn_zoo", "load_vit_zoo", "predict", "scatter_figure", "run_generalization"]

CNN_ZOO_BUILD = "python -m dng_tgn.data.build_cnn_zoo --out <folder>"
VIT_ZOO_BUILD = "python -m dng_tgn.data.build_vit_zoo --out <folder>"


class GeneralizationData:
    """The three splits of a zoo and what the encoder needs to know of its networks."""

    def __init__(self, train: StateDictSet, val: StateDictSet, test: StateDictSet, num_outputs: int, num_slots: int,
                 info: Mapping | None = None):
        self.train, self.val, self.test = train, val, test
        self.num_outputs, self.num_slots = num_outputs, num_slots
        self.info = dict(info or {})


def load_cnn_zoo(root: Path, split_file: str | None = None, limit: int | None = None) -> GeneralizationData:
    """A Small-CNN-Zoo folder (public archive or ``build_cnn_zoo``'s), split as NFN does."""
    from ..data import CNNZooDataset

    def load(split):
        ds = open_split(lambda s: CNNZooDataset(root, s, split_file=split_file), root, split, "CNN zoo", CNN_ZOO_BUILD)
        # the zoo samples relu/tanh per network; the activation is not an encoder input (graphs carry weights
        # only), so the converter's default is used for all
        return StateDictSet.from_dataset(ds, desc=f"zoo {split}", limit=limit)

    train, val, test = (load(s) for s in ("train", "val", "test"))
    conv = next(v for v in train.params.values() if v.dim() == 5)  # (n, out, in, kh, kw)
    return GeneralizationData(train, val, test, num_outputs=int(train.params["head.weight"].shape[1]),
                              num_slots=int(conv.shape[-1] * conv.shape[-2]))


def load_vit_zoo(root: Path, limit: int | None = None) -> GeneralizationData:
    """A ViT zoo folder (``build_vit_zoo``'s); the attention head count comes from its meta.json."""
    from ..data import ViTZooDataset

    def load(split):
        ds = open_split(lambda s: ViTZooDataset(root, s), root, split, "ViT zoo", VIT_ZOO_BUILD)
        heads = ds.model_kwargs.get("heads")
        if heads is None:
            raise KeyError(f"{root}/meta.json model_kwargs lacks 'heads', which the App. E.2 conversion needs")
        # a state_dict does not record the number of attention heads: it comes from the stored SimpleViT kwargs
        return StateDictSet.from_dataset(ds, desc=f"vit {split}", limit=limit, convert_kwargs={"heads": int(heads)}), ds

    (train, ds), (val, _), (test, _) = (load(s) for s in ("train", "val", "test"))
    return GeneralizationData(train, val, test, num_outputs=int(ds.model_kwargs.get("num_classes", 10)), num_slots=1,
                              info={"vit_kwargs": dict(ds.model_kwargs)})


@torch.no_grad()
def predict(model: GeneralizationPredictor, data: StateDictSet, batch_size: int, device) -> np.ndarray:
    """Predicted accuracies (sigmoid of the logits) of every network of ``data``, in order."""
    out = []
    for idx in data.chunks(batch_size):
        batch, _ = data.batch(idx)
        out.append(torch.sigmoid(model(batch.to(device))).cpu())
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
    return {"kendall_tau": kendall_tau(pred, y), "r2": r2_score(pred, y), "mse": float(np.mean((pred - y) ** 2))}


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
    seed_everything(seed)
    train, val, test = data.train, data.val, data.test
    probe = train.batch([0])[0]
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
    bce = nn.BCEWithLogitsLoss()

    def step(idx):
        batch, y = train.batch(idx)
        return bce(model(batch.to(dev)), y.float().to(dev))

    ckdir = checkpoint_dir(run, runtime["checkpoint_dir"])
    result = train_loop(
        name=name, model=model, optimizer=opt, sampler=sampler, train_step=step,
        evaluate=lambda: _scores(predict(model, val, eval_bs, dev), val.targets.numpy()),
        monitor="kendall_tau", higher_is_better=True, total_steps=total, eval_every=eval_every,
        patience=optim["patience"], checkpoint_dir=ckdir, resume_path=resolve_resume(runtime["resume"], name),
        grad_clip=optim["grad_clip"], run=run, log_every=optim["log_every"],
        keep_checkpoints=runtime.get("keep_checkpoints", 2))
    pred, y = predict(model, test, eval_bs, dev), test.targets.numpy()
    final = _scores(pred, y)  # single values: the run's result and info, not metrics
    save_predictions(run, f"{name}_test_predictions.csv", target=y, prediction=pred)
    if run is not None:
        log_figure(run, scatter_figure(pred, y, f"{name} ({kind.value}), test set"), f"{name}_scatter.png", close=True)
    summary = {"test": final, "steps": result.steps, "best_step": result.best_step,
               "best_val_kendall_tau": result.best_metric, "stopped_early": result.stopped_early,
               "resumed_from_step": result.resumed_from, "params": info["params"],
               "seconds": time.perf_counter() - t0}
    info["results"] = summary
    print_summary(run, f"{name} [{kind.value}] test: τ={final['kendall_tau']:.4f}  R²={final['r2']:.4f}  "
          f"(best val τ {result.best_metric if result.best_metric is not None else math.nan:.4f} at step "
          f"{result.best_step}, {result.steps} steps, {summary['seconds']:.0f}s)")
    return summary
