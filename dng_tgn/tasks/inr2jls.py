"""§6 / §8.1 (Tables 1, 2, 4): INR2JLS, then INR classification from its frozen feature maps.

Phase 1, reconstruction (Eq. 7–9): weight encoder -> Latent Generator -> transposed-conv decoder, MSE to the
image each INR represents (all six views of it with ``augment``, F.3). Early stopping on validation MSE.
Phase 2, classification (§8.1): encoder and Latent Generator frozen; the F.1.2 classifier (two convs + 3-layer
MLP) learns labels from F (F_aug), cross-entropy, early stopping on validation accuracy.
"""
from __future__ import annotations

import time
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..data.rendered_inrs import INRSet, resolve_image_shape
from ..device import resolve_device
from ..nn.factory import EncoderKind, build_encoder, fit_degree_scaler, sized_encoder_kwargs
from ..nn.inr2jls import AUGMENTATION_VIEWS, INR2JLS, FeatureMapClassifier, augment_views
from ..nn.paths import ExecutionPath
from ..tracking import log_figure, print_summary
from ..training import EpochSampler, resolve_resume, seed_everything, train_loop
from .common import checkpoint_dir, count_params, open_split, require_data_root, save_predictions, set_threads

__all__ = ["load_inr_splits", "recon_mse", "compute_features", "reconstruction_figure", "run_inr2jls"]

BUILD_COMMAND = "python -m dng_tgn.data.build_inrs --dataset mnist --out <folder>"


def load_inr_splits(data: Mapping) -> tuple[INRSet, INRSet, INRSet, tuple[int, int, int]]:
    """Train/val/test INR sets of ``data`` (root, prefix, extra_aug, image_shape, w0, limit, load_workers)."""
    from ..data import NFNSirenDataset

    root = require_data_root(data["root"], "INR folder", BUILD_COMMAND)
    shape = resolve_image_shape(root, data["image_shape"])

    def load(split):
        extra = data["extra_aug"] if split == "train" else 0
        ds = open_split(lambda s: NFNSirenDataset(root, s, prefix=data["prefix"], extra_aug=extra), root, split,
                        "INR set", BUILD_COMMAND)
        return INRSet.from_dataset(ds, shape, data["w0"], desc=f"INRs {split}", limit=data["limit"],
                                   num_workers=data["load_workers"])

    return load("train"), load("val"), load("test"), shape


@torch.no_grad()
def recon_mse(model: INR2JLS, data: INRSet, batch_size: int, device) -> float:
    """Mean squared error over every pixel of every view (Eq. 8) on ``data``."""
    total, count = 0.0, 0
    for idx in data.weights.chunks(batch_size):
        batch, _ = data.weights.batch(idx)
        out = model(batch.to(device))
        target = augment_views(data.images[idx].to(device), model.num_views)
        total += float(((out.reconstruction - target) ** 2).sum())
        count += target.numel()
    return total / count


@torch.no_grad()
def compute_features(model: INR2JLS, data: INRSet, batch_size: int, device) -> torch.Tensor:
    model.eval()
    return torch.cat([model.features(data.weights.batch(idx)[0].to(device))[1].cpu()
                      for idx in data.weights.chunks(batch_size)])


def reconstruction_figure(model: INR2JLS, data: INRSet, n: int, device):
    """Rows: the image each INR represents, then INR2JLS's reconstruction of every view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(data))
    idx = torch.arange(n)
    with torch.no_grad():
        recon = model(data.weights.batch(idx)[0].to(device)).reconstruction.cpu()
    targets = augment_views(data.images[idx], model.num_views)
    views = [name for name, _ in AUGMENTATION_VIEWS[:model.num_views]]
    rows = 1 + model.num_views
    fig, axes = plt.subplots(rows, n, figsize=(1.2 * n, 1.25 * rows), squeeze=False)

    def show(ax, img):
        img = ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])

    for j in range(n):
        show(axes[0, j], targets[j, 0])
        for v in range(model.num_views):
            show(axes[1 + v, j], recon[j, v])
    axes[0, 0].set_ylabel("INR", fontsize=7)
    for v, name in enumerate(views):
        axes[1 + v, 0].set_ylabel(f"recon\n{name}", fontsize=7)
    fig.suptitle("INR2JLS reconstructions (test INRs)", fontsize=9)
    fig.tight_layout()
    return fig


def run_inr2jls(*, run, seed: int, data: Mapping, encoder: Mapping, model: Mapping, classifier: Mapping,
                recon: Mapping, cls: Mapping, runtime: Mapping, cache_features: bool = True,
                num_figure_images: int = 8) -> dict:
    """Both phases of INR2JLS on the INR set ``data``; returns the test reconstruction MSE and accuracy.

    ``model``: spatial_dim, latent_dim, generator_hidden, decoder_channels, augment (INR2JLS's sizes);
    ``classifier``: conv_channels, hidden, conv_dropout, mlp_dropout (F.1.2); ``recon`` / ``cls``: each
    phase's optimisation (steps, batch_size, lr, weight_decay, eval_every, patience, grad_clip, log_every);
    ``runtime``: device, path, num_threads, resume, checkpoint_dir, eval_batch_size.
    """
    t0 = time.perf_counter()
    kind = EncoderKind.parse(encoder["kind"])
    path = ExecutionPath.parse(runtime["path"])
    dev = resolve_device(runtime["device"])
    set_threads(runtime["num_threads"])
    eval_bs, resume, keep = runtime["eval_batch_size"], runtime["resume"], runtime.get("keep_checkpoints", 2)
    train, val, test, shape = load_inr_splits(data)
    num_classes = int(max(int(d.labels.max()) for d in (train, val, test))) + 1
    info = run.info if run is not None else {}
    info["sizes"] = {"train": len(train), "val": len(val), "test": len(test), "classes": num_classes}
    info["image_shape"] = list(shape)
    info["encoder"] = kind.value

    # ---------------------------------------------------------------- phase 1: reconstruction (Eq. 7-9)
    seed_everything(seed)
    probe = train.weights.batch([0])[0]
    dng_kw, ng_kw = sized_encoder_kwargs(encoder["dng"], encoder["ng_gnn"], probe)
    enc = build_encoder(kind, num_outputs=shape[0], num_slots=1, dng=dng_kw, ng_gnn=ng_kw, path=path,
                        mlp=encoder.get("mlp"), probe=probe)
    fit_degree_scaler(enc, (train.weights.batch(idx)[0] for idx in train.weights.chunks(recon["batch_size"])[:4]))
    net = INR2JLS(enc, shape, spatial_dim=model["spatial_dim"], latent_dim=model["latent_dim"],
                  generator_hidden=model["generator_hidden"], decoder_channels=model["decoder_channels"],
                  num_views=6 if model["augment"] else 1).to(dev)
    info["params_inr2jls"] = count_params(net)
    ckdir = checkpoint_dir(run, runtime["checkpoint_dir"])
    opt = torch.optim.Adam(net.parameters(), lr=recon["lr"], weight_decay=recon["weight_decay"])

    def recon_step(idx):
        batch, _ = train.weights.batch(idx)
        return net.loss(net(batch.to(dev)), train.images[idx].to(dev))

    recon_result = train_loop(
        name="recon", model=net, optimizer=opt, sampler=EpochSampler(len(train), recon["batch_size"], seed),
        train_step=recon_step, evaluate=lambda: {"mse": recon_mse(net, val, eval_bs, dev)},
        monitor="mse", higher_is_better=False, total_steps=recon["steps"], eval_every=recon["eval_every"],
        patience=recon["patience"], checkpoint_dir=ckdir, checkpoint_name="inr2jls_recon",
        resume_path=resolve_resume(resume, "inr2jls_recon"), grad_clip=recon["grad_clip"], run=run,
        log_every=recon["log_every"], keep_checkpoints=keep)
    test_mse = recon_mse(net, test, eval_bs, dev)  # a single value: result and info, not a metric
    if run is not None:
        log_figure(run, reconstruction_figure(net, test, num_figure_images, dev), "inr2jls_reconstructions.png",
                   close=True)

    # ---------------------------------------------------------------- phase 2: classification (§8.1)
    for p in net.parameters():  # "we keep the DNG-Encoder and the Latent Generator fixed"
        p.requires_grad_(False)
    net.eval()
    seed_everything(seed + 1)
    clf = FeatureMapClassifier(net.feature_channels, net.grid, num_classes, conv_channels=classifier["conv_channels"],
                               hidden_dim=classifier["hidden"], conv_dropout=classifier["conv_dropout"],
                               mlp_dropout=classifier["mlp_dropout"]).to(dev)
    info["params_classifier"] = count_params(clf)
    if cache_features:  # exact: the frozen encoder is deterministic
        feats = {name: compute_features(net, d, eval_bs, dev) for name, d in
                 (("train", train), ("val", val), ("test", test))}

        def features_of(name, data, idx):
            return feats[name][idx].to(dev)
    else:
        def features_of(name, data, idx):
            with torch.no_grad():
                return net.features(data.weights.batch(idx)[0].to(dev))[1]

    @torch.no_grad()
    def cls_predictions(name, data):
        return torch.cat([clf(features_of(name, data, idx)).argmax(-1).cpu() for idx in data.weights.chunks(eval_bs)])

    def cls_accuracy(name, data):
        return float((cls_predictions(name, data) == data.labels).sum()) / len(data)

    ce = nn.CrossEntropyLoss()
    copt = torch.optim.AdamW(clf.parameters(), lr=cls["lr"], weight_decay=cls["weight_decay"])
    # a run that stopped during phase 1 has no classifier checkpoint yet: phase 2 then starts fresh
    cls_resume = resolve_resume(resume, "inr2jls_cls", required=False)
    cls_result = train_loop(
        name="cls", model=clf, optimizer=copt, sampler=EpochSampler(len(train), cls["batch_size"], seed + 1),
        train_step=lambda idx: ce(clf(features_of("train", train, idx)), train.labels[idx].to(dev)),
        evaluate=lambda: {"accuracy": cls_accuracy("val", val)}, monitor="accuracy", higher_is_better=True,
        total_steps=cls["steps"], eval_every=cls["eval_every"], patience=cls["patience"],
        checkpoint_dir=ckdir, checkpoint_name="inr2jls_cls", resume_path=cls_resume,
        grad_clip=cls["grad_clip"], run=run, log_every=cls["log_every"], keep_checkpoints=keep)
    test_pred = cls_predictions("test", test)
    test_acc = float((test_pred == test.labels).sum()) / len(test)
    save_predictions(run, "inr2jls_test_predictions.csv", label=test.labels.numpy(), prediction=test_pred.numpy())

    summary = {
        "test": {"recon_mse": test_mse, "accuracy": test_acc},
        "recon": {"steps": recon_result.steps, "best_step": recon_result.best_step,
                  "best_val_mse": recon_result.best_metric, "resumed_from_step": recon_result.resumed_from},
        "cls": {"steps": cls_result.steps, "best_step": cls_result.best_step,
                "best_val_accuracy": cls_result.best_metric, "resumed_from_step": cls_result.resumed_from},
        # references: the majority class, and the MSE of always predicting the mean training image
        "chance_accuracy": float(np.bincount(test.labels.numpy()).max() / len(test)),
        "mean_image_mse": float(((test.images - train.images.mean(0)) ** 2).mean()),
        "params": {"inr2jls": info["params_inr2jls"], "classifier": info["params_classifier"]},
        "seconds": time.perf_counter() - t0,
    }
    info["results"] = summary
    print_summary(run, f"INR2JLS [{kind.value}] test reconstruction MSE {test_mse:.4f} (mean training image: "
          f"{summary['mean_image_mse']:.4f}), test accuracy {test_acc:.4f} (majority class "
          f"{summary['chance_accuracy']:.3f}); {summary['seconds']:.0f}s")
    return summary
