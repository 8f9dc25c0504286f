"""§6 / §8.1 (Tables 1, 2, 4): INR2JLS, then INR classification from its frozen feature maps.

Phase 1, reconstruction (Eq. 7–9): weight encoder -> Latent Generator -> transposed-conv decoder, MSE to the
image each INR represents (all six views of it with ``augment``, F.3; with ``noise_std`` the training targets
carry F.3's Gaussian noise). Early stopping on validation MSE (clean targets).
Phase 2, classification (§8.1): encoder and Latent Generator frozen; the F.1.2 classifier (two convs + 3-layer
MLP) learns labels from F (F_aug), cross-entropy, early stopping on validation accuracy.

``variant`` (:class:`INRVariant`) runs Table 2's other frameworks through the same two phases, on the same data,
budgets and early stopping (:mod:`dng_tgn.nn.inr_variants`): ``encoder_only`` skips phase 1 and trains encoder
and MLP classifier end to end on labels; ``no_latent_gen`` and ``inr2inr`` replace the Latent Generator and
decoder in phase 1 and classify the frozen ``s(t^L)`` with an MLP in phase 2.
"""
from __future__ import annotations

import time
from enum import Enum
from typing import Mapping

import numpy as np
import torch
from torch import nn

from ..choices import parse_choice
from ..data.rendered_inrs import INRSet, resolve_image_shape
from ..data.siren_fit import NFN_KEYS
from ..device import resolve_device
from ..nn.factory import EncoderKind, build_encoder, fit_degree_scaler, sized_encoder_kwargs
from ..nn.heads import MLPHead
from ..nn.inr2jls import AUGMENTATION_VIEWS, INR2JLS, FeatureMapClassifier, augment_views
from ..nn.inr_variants import INR2INR, EncoderClassifier, MLPDecoderAutoencoder, noisy_targets
from ..nn.paths import ExecutionPath
from ..tracking import log_figure, print_summary
from ..training import EpochSampler, resolve_resume, seed_everything, train_loop
from .common import checkpoint_dir, count_params, open_split, require_data_root, save_predictions, set_threads

__all__ = ["INRVariant", "load_inr_splits", "network_inputs", "recon_mse", "compute_features", "reconstruction_figure",
           "run_inr2jls"]

BUILD_COMMAND = "python -m dng_tgn.data.build_inrs --dataset mnist --out <folder>"


class INRVariant(Enum):
    """Which framework learns the INRs' representation (Table 2); the config's ``variant``."""

    INR2JLS = "inr2jls"  # §6: Latent Generator + transposed-conv decoder, classifier on the frozen F / F_aug
    ENCODER_ONLY = "encoder_only"  # §9.3 first ablation: encoder + MLP on s(t^L), end to end on labels
    NO_LATENT_GEN = "no_latent_gen"  # §9.3 second ablation: MLP decoder from s(t^L); MLP on the frozen s(t^L)
    INR2INR = "inr2inr"  # §9.2: s(t^L) -> SIREN weights, image loss; MLP on the frozen s(t^L)

    @classmethod
    def parse(cls, value: "str | INRVariant") -> "INRVariant":
        return parse_choice(cls, value, "INR variant")


def network_inputs(data: INRSet, idx, device, reads_parameters: bool = False):
    """What the weight encoder reads for INRs ``idx``: a stream batch, or (NFN) the stacked parameter rows."""
    if reads_parameters:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[idx].to(device) for k, v in data.weights.params.items()}
    return data.weights.batch(idx)[0].to(device)


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
def recon_mse(model: INR2JLS, data: INRSet, batch_size: int, device, reads_parameters: bool = False) -> float:
    """Mean squared error over every pixel of every view (Eq. 8) on ``data``."""
    total, count = 0.0, 0
    for idx in data.weights.chunks(batch_size):
        out = model(network_inputs(data, idx, device, reads_parameters))
        target = augment_views(data.images[idx].to(device), model.num_views)
        total += float(((out.reconstruction - target) ** 2).sum())
        count += target.numel()
    return total / count


@torch.no_grad()
def compute_features(model: INR2JLS, data: INRSet, batch_size: int, device,
                     reads_parameters: bool = False) -> torch.Tensor:
    """What the phase-2 classifier reads (F / F_aug for INR2JLS, s(t^L) for the variants), for all of ``data``."""
    model.eval()
    return torch.cat([model.features(network_inputs(data, idx, device, reads_parameters))[1].cpu()
                      for idx in data.weights.chunks(batch_size)])


def reconstruction_figure(model: INR2JLS, data: INRSet, n: int, device, reads_parameters: bool = False):
    """Rows: the image each INR represents, then INR2JLS's reconstruction of every view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(data))
    idx = torch.arange(n)
    with torch.no_grad():
        recon = model(network_inputs(data, idx, device, reads_parameters)).reconstruction.cpu()
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
    fig.suptitle(f"{type(model).__name__} reconstructions (test INRs)", fontsize=9)
    fig.tight_layout()
    return fig


def run_inr2jls(*, run, seed: int, data: Mapping, encoder: Mapping, model: Mapping, classifier: Mapping,
                recon: Mapping, cls: Mapping, runtime: Mapping, cache_features: bool = True,
                num_figure_images: int = 8, variant: str = "inr2jls") -> dict:
    """Both phases of INR2JLS (or of a Table 2 ``variant``) on the INR set ``data``; returns test MSE and accuracy.

    ``model``: spatial_dim, latent_dim, generator_hidden, decoder_channels, augment (INR2JLS's sizes), noise_std
    (F.3's noise on the training targets, in [0, 1]-image units; 0: none), decoder_hidden (the MLP decoders of
    ``no_latent_gen`` / ``inr2inr``); ``classifier``: conv_channels, hidden, conv_dropout, mlp_dropout (F.1.2;
    the MLP classifiers of the variants use hidden and mlp_dropout); ``recon`` / ``cls``: each phase's
    optimisation (steps, batch_size, lr, weight_decay, eval_every, patience, grad_clip, log_every; ``cls`` also
    trains ``encoder_only`` end to end); ``runtime``: device, path, num_threads, resume, checkpoint_dir,
    eval_batch_size. ``variant``: see :class:`INRVariant`. Every choice (best step of each phase) is made on
    the validation split; the test split is read once at the end of each phase.
    """
    t0 = time.perf_counter()
    kind = EncoderKind.parse(encoder["kind"])
    variant = INRVariant.parse(variant)
    path = ExecutionPath.parse(runtime["path"])
    dev = resolve_device(runtime["device"])
    set_threads(runtime["num_threads"])
    eval_bs, resume, keep = runtime["eval_batch_size"], runtime["resume"], runtime.get("keep_checkpoints", 2)
    noise_std = float(model.get("noise_std") or 0.0)
    num_views = 6 if model["augment"] else 1
    if variant is INRVariant.INR2INR and num_views > 1:
        raise ValueError("variant=inr2inr reconstructs the SIREN itself, which renders one view: set "
                         "model.augment=False (the rotation/flip views are INR2JLS's, §8.1)")
    if variant is INRVariant.ENCODER_ONLY and (num_views > 1 or noise_std):
        raise ValueError("variant=encoder_only has no reconstruction phase, so image augmentation does not apply: "
                         "set model.augment=False and model.noise_std=0")
    train, val, test, shape = load_inr_splits(data)
    num_classes = int(max(int(d.labels.max()) for d in (train, val, test))) + 1
    info = run.info if run is not None else {}
    info["sizes"] = {"train": len(train), "val": len(val), "test": len(test), "classes": num_classes}
    info["image_shape"] = list(shape)
    info["encoder"] = kind.value
    info["variant"] = variant.value
    by_params = kind.reads_parameters

    def inputs(d: INRSet, idx):
        return network_inputs(d, idx, dev, by_params)

    # ---------------------------------------------------------------- the weight encoder
    seed_everything(seed)
    probe = train.weights.batch([0])[0]
    dng_kw, ng_kw = sized_encoder_kwargs(encoder["dng"], encoder["ng_gnn"], probe)
    # NFN reads stacked parameters; its layout and input normalisation come from the training split only
    enc = build_encoder(kind, num_outputs=shape[0], num_slots=1, dng=dng_kw, ng_gnn=ng_kw, path=path,
                        mlp=encoder.get("mlp"), probe=probe, nfn=encoder.get("nfn"), params=train.weights.params)
    fit_degree_scaler(enc, (train.weights.batch(idx)[0] for idx in train.weights.chunks(recon["batch_size"])[:4]))
    ckdir = checkpoint_dir(run, runtime["checkpoint_dir"])

    # ---------------------------------------------------------------- phase 1: reconstruction (Eq. 7-9)
    net, recon_result, test_mse = None, None, None
    if variant is not INRVariant.ENCODER_ONLY:
        if variant is INRVariant.INR2JLS:
            net = INR2JLS(enc, shape, spatial_dim=model["spatial_dim"], latent_dim=model["latent_dim"],
                          generator_hidden=model["generator_hidden"], decoder_channels=model["decoder_channels"],
                          num_views=num_views)
        elif variant is INRVariant.NO_LATENT_GEN:
            net = MLPDecoderAutoencoder(enc, shape, hidden_dim=model.get("decoder_hidden", 512), num_views=num_views)
        else:
            net = INR2INR(enc, [(k, train.weights.params[k].shape[1:]) for k in NFN_KEYS], shape,
                          latent_dim=model["latent_dim"],
                          generator_hidden=model["generator_hidden"] or model["spatial_dim"],
                          hyper_hidden=model.get("decoder_hidden", 512), w0=data["w0"])
            net.set_parameter_stats(train.weights.params)  # training split only
        net = net.to(dev)
        info["params_inr2jls"] = count_params(net)
        opt = torch.optim.Adam(net.parameters(), lr=recon["lr"], weight_decay=recon["weight_decay"])

        def recon_step(idx):
            # F.3's noise: fresh on every step, training targets only (validation and test stay clean)
            return net.loss(net(inputs(train, idx)), noisy_targets(train.images[idx], noise_std).to(dev))

        recon_result = train_loop(
            name="recon", model=net, optimizer=opt, sampler=EpochSampler(len(train), recon["batch_size"], seed),
            train_step=recon_step, evaluate=lambda: {"mse": recon_mse(net, val, eval_bs, dev, by_params)},
            monitor="mse", higher_is_better=False, total_steps=recon["steps"], eval_every=recon["eval_every"],
            patience=recon["patience"], checkpoint_dir=ckdir, checkpoint_name="inr2jls_recon",
            resume_path=resolve_resume(resume, "inr2jls_recon"), grad_clip=recon["grad_clip"], run=run,
            log_every=recon["log_every"], keep_checkpoints=keep, amp=runtime.get("amp"))
        test_mse = recon_mse(net, test, eval_bs, dev, by_params)  # a single value: result and info, not a metric
        if run is not None:
            log_figure(run, reconstruction_figure(net, test, num_figure_images, dev, by_params),
                       "inr2jls_reconstructions.png", close=True)
        for p in net.parameters():  # "we keep the DNG-Encoder and the Latent Generator fixed"
            p.requires_grad_(False)
        net.eval()

    # ---------------------------------------------------------------- phase 2: classification (§8.1)
    seed_everything(seed + 1)
    if variant is INRVariant.ENCODER_ONLY:  # §9.3: no decoder; encoder and MLP learn the labels together
        clf = EncoderClassifier(enc, num_classes, hidden_dim=classifier["hidden"],
                                dropout=classifier["mlp_dropout"]).to(dev)
        info["params_classifier"] = count_params(clf.head)
    elif variant is INRVariant.INR2JLS:
        clf = FeatureMapClassifier(net.feature_channels, net.grid, num_classes,
                                   conv_channels=classifier["conv_channels"], hidden_dim=classifier["hidden"],
                                   conv_dropout=classifier["conv_dropout"],
                                   mlp_dropout=classifier["mlp_dropout"]).to(dev)
        info["params_classifier"] = count_params(clf)
    else:  # §9.2 / §9.3: "an MLP is employed to classify the INR based on the node memory"
        clf = MLPHead(enc.out_dim, num_classes, hidden_dim=classifier["hidden"], num_layers=3,
                      dropout=classifier["mlp_dropout"]).to(dev)
        info["params_classifier"] = count_params(clf)

    if variant is INRVariant.ENCODER_ONLY:
        def features_of(name, data, idx):
            return inputs(data, idx)
    elif cache_features:  # exact: the frozen encoder is deterministic
        feats = {name: compute_features(net, d, eval_bs, dev, by_params) for name, d in
                 (("train", train), ("val", val), ("test", test))}

        def features_of(name, data, idx):
            return feats[name][idx].to(dev)
    else:
        def features_of(name, data, idx):
            with torch.no_grad():
                return net.features(inputs(data, idx))[1]

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
        grad_clip=cls["grad_clip"], run=run, log_every=cls["log_every"], keep_checkpoints=keep,
        amp=runtime.get("amp"))
    test_pred = cls_predictions("test", test)
    test_acc = float((test_pred == test.labels).sum()) / len(test)
    save_predictions(run, "inr2jls_test_predictions.csv", label=test.labels.numpy(), prediction=test_pred.numpy())

    n_phase1 = info.get("params_inr2jls", 0)
    summary = {
        "variant": variant.value,
        "test": {"recon_mse": test_mse, "accuracy": test_acc},
        "recon": None if recon_result is None else {
            "steps": recon_result.steps, "best_step": recon_result.best_step,
            "best_val_mse": recon_result.best_metric, "resumed_from_step": recon_result.resumed_from},
        "cls": {"steps": cls_result.steps, "best_step": cls_result.best_step,
                "best_val_accuracy": cls_result.best_metric, "resumed_from_step": cls_result.resumed_from},
        # references: the majority class, and the MSE of always predicting the mean training image
        "chance_accuracy": float(np.bincount(test.labels.numpy()).max() / len(test)),
        "mean_image_mse": float(((test.images - train.images.mean(0)) ** 2).mean()),
        # total: every parameter trained in the run (phase-1 model + classifier; encoder + MLP for encoder_only)
        "params": {"inr2jls": n_phase1, "encoder": count_params(enc), "classifier": info["params_classifier"],
                   "total": (n_phase1 or count_params(enc)) + info["params_classifier"]},
        "seconds": time.perf_counter() - t0,
    }
    info["results"] = summary
    mse_text = "none (no reconstruction phase)" if test_mse is None else f"{test_mse:.4f}"
    print_summary(run, f"INR2JLS/{variant.value} [{kind.value}] test reconstruction MSE {mse_text} (mean training "
          f"image: {summary['mean_image_mse']:.4f}), test accuracy {test_acc:.4f} (majority class "
          f"{summary['chance_accuracy']:.3f}); {summary['seconds']:.0f}s")
    return summary
