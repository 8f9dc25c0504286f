"""INR editing (NFN's SIREN stylization task; the DNG authors' ``stylize_siren.py``): given a SIREN of an image,
produce the dilated / eroded / morphological-gradient image (:mod:`dng_tgn.data.image_edits`).

The image an INR represents is its rendering on NFN's 'ij' grid (:mod:`dng_tgn.data.rendered_inrs`); the target
is the edit of that rendering. Methods (``method``, :class:`EditingMethod`):

* ``dng``: the DNG-Encoder as the encoder of a weight-space edit (:class:`~dng_tgn.nn.weight_edit.DNGWeightEditor`
  predicts a delta for every weight and bias); the edited SIREN ``W + Δ`` is rendered and compared with the target.
* ``nfn``: NFN's approach, HNP equivariant layers predicting the delta
  (:class:`~dng_tgn.baselines.nfn_edit.NFNWeightEditor`), rendered the same way.
* ``identity``: the input SIREN unchanged (no training): the MSE of doing nothing.
* ``dng_image_decoder``: the authors' variant: DNG-Encoder -> Latent Generator -> transposed-conv decoder
  (INR2JLS's pipeline, §6 Eq. 7) outputs the edited image directly, no SIREN.

Loss and metric: MSE between the produced image and the target, in the [-1, 1] scale of NFN's normalised images,
averaged over every pixel of every image. Training keeps the weights with the best validation MSE (checked every
``eval_every`` steps, early stopping after ``patience`` evaluations without improvement); the test split is read
once, at the end.
"""
from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from ..choices import parse_choice
from ..data.image_edits import ImageEdit, edit_images
from ..data.rendered_inrs import INRSet, resolve_image_shape
from ..data.siren_fit import NFN_KEYS, coord_grid, siren_forward
from ..device import resolve_device
from ..nn.factory import EncoderKind, build_encoder, sized_encoder_kwargs
from ..nn.inr2jls import INR2JLS
from ..nn.paths import ExecutionPath
from ..nn.weight_edit import DNGWeightEditor
from ..tracking import log_figure, print_summary
from ..training import EpochSampler, resolve_resume, seed_everything, train_loop
from .common import checkpoint_dir, count_params, open_split, require_data_root, set_threads

__all__ = ["EditingMethod", "EditingSplit", "load_editing_splits", "render_sirens", "EditingModel",
           "build_editing_model", "editing_mse", "examples_figure", "run_inr_editing"]

BUILD_COMMAND = "python -m dng_tgn.data.build_inrs --dataset mnist --out <folder>"
WEIGHT_KEYS, BIAS_KEYS = NFN_KEYS[0::2], NFN_KEYS[1::2]


class EditingMethod(Enum):
    """What produces the edited image (the config's ``method``; the module docstring describes each)."""

    DNG = "dng"  # DNG-Encoder -> weight delta, rendered
    NFN = "nfn"  # NFN's HNP layers -> weight delta, rendered
    IDENTITY = "identity"  # the input SIREN, untrained
    DNG_IMAGE_DECODER = "dng_image_decoder"  # DNG-Encoder -> Latent Generator -> image decoder

    @classmethod
    def parse(cls, value: "str | EditingMethod") -> "EditingMethod":
        return parse_choice(cls, value, "method")


class EditingSplit:
    """One split: the SIRENs (:class:`INRSet`: weights, labels, rendered images) and the edited targets."""

    def __init__(self, inrs: INRSet, edit: ImageEdit | str):
        self.inrs, self.edit = inrs, ImageEdit.parse(edit)
        self.targets = edit_images(inrs.images, self.edit)

    @property
    def images(self) -> torch.Tensor:
        return self.inrs.images

    def __len__(self) -> int:
        return len(self.inrs)

    def params(self, idx) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[idx] for k, v in self.inrs.weights.params.items()}

    def chunks(self, batch_size: int) -> list[torch.Tensor]:
        return self.inrs.weights.chunks(batch_size)


def load_editing_splits(data: Mapping, edit: ImageEdit | str) -> tuple[dict[str, EditingSplit], tuple[int, int, int]]:
    """Train/val/test :class:`EditingSplit` s of ``data`` (root, prefix, image_shape, w0, limit, load_workers)."""
    from ..data import NFNSirenDataset

    edit = ImageEdit.parse(edit)  # before any file is read
    root = require_data_root(data["root"], "INR folder", BUILD_COMMAND)
    shape = resolve_image_shape(root, data["image_shape"])

    def load(split):
        ds = open_split(lambda s: NFNSirenDataset(root, s, prefix=data["prefix"]), root, split, "INR set",
                        BUILD_COMMAND)
        inrs = INRSet.from_dataset(ds, shape, data["w0"], desc=f"INRs {split}", limit=data["limit"],
                                   num_workers=data["load_workers"])
        missing = [k for k in NFN_KEYS if k not in inrs.weights.params]
        if missing:
            raise ValueError(f"{root}: the INRs lack {missing}; INR editing needs NFN-layout SIRENs ({BUILD_COMMAND})")
        return EditingSplit(inrs, edit)

    return {s: load(s) for s in ("train", "val", "test")}, shape


def render_sirens(params: Mapping[str, torch.Tensor], image_shape, w0: float) -> torch.Tensor:
    """Differentiable rendering of stacked NFN-layout SIRENs on NFN's 'ij' grid: (B, C, H, W)."""
    c, h, w = image_shape
    stacked = [params[k] for k in NFN_KEYS]
    coords = coord_grid(h, w, "ij", stacked[0].device)
    y = siren_forward(stacked, coords, w0)  # (B, H·W, C), pixel (i, j) at row i·W + j
    if y.shape[-1] != c:
        raise ValueError(f"the SIRENs have {y.shape[-1]} output channels but image_shape says C={c}")
    return y.reshape(-1, h, w, c).permute(0, 3, 1, 2)


class EditingModel(nn.Module):
    """One method behind one interface: ``forward(split, idx) -> (B, C, H, W)`` edited images on the module's device."""

    def __init__(self, method: EditingMethod | str, net: nn.Module | None, image_shape, w0: float):
        super().__init__()
        method = EditingMethod.parse(method)
        if (net is None) != (method is EditingMethod.IDENTITY):
            raise ValueError(f"method={method.value!r} {'needs a network' if net is None else 'takes no network'}")
        self.method, self.net, self.image_shape, self.w0 = method, net, tuple(image_shape), w0
        self.register_buffer("_anchor", torch.zeros(()))  # device of a parameter-free (identity) model

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def forward(self, split: EditingSplit, idx) -> torch.Tensor:
        dev = self.device
        params = {k: v.to(dev) for k, v in split.params(idx).items()}
        if self.method is EditingMethod.IDENTITY:
            return render_sirens(params, self.image_shape, self.w0)
        if self.method is EditingMethod.NFN:
            delta = self.net(params)
        elif self.method is EditingMethod.DNG:
            batch, _ = split.inrs.weights.batch(idx)
            delta = self.net(batch.to(dev), params)
        elif self.method is EditingMethod.DNG_IMAGE_DECODER:  # the image itself, no SIREN
            batch, _ = split.inrs.weights.batch(idx)
            return self.net(batch.to(dev)).reconstruction[:, 0]
        else:
            raise AssertionError(f"EditingModel does not handle {self.method}")  # a new member needs a branch here
        edited = {k: params[k] + delta[k] for k in NFN_KEYS}
        return render_sirens(edited, self.image_shape, self.w0)


def build_editing_model(method: EditingMethod | str, train: EditingSplit, image_shape, *, w0: float,
                        encoder: Mapping, dng_editor: Mapping, nfn: Mapping, decoder: Mapping,
                        path: ExecutionPath | None) -> EditingModel:
    """The method's network (sizes from the configs); weight statistics from the training split."""
    method = EditingMethod.parse(method)
    if method is EditingMethod.IDENTITY:
        return EditingModel(method, None, image_shape, w0)
    train_params = train.inrs.weights.params
    if method is EditingMethod.NFN:
        from ..baselines.nfn import NFNLayout
        from ..baselines.nfn_edit import NFNWeightEditor

        layout = NFNLayout.infer(train_params, layers=[k[: -len(".weight")] for k in WEIGHT_KEYS])
        net = NFNWeightEditor(layout, **dict(nfn))
        net.fit_stats(train_params)
        return EditingModel(method, net, image_shape, w0)
    probe = train.inrs.weights.batch([0])[0]
    dng_kw, ng_kw = sized_encoder_kwargs(encoder["dng"], encoder["ng_gnn"], probe)
    wenc = build_encoder(EncoderKind.DNG, num_outputs=image_shape[0], num_slots=1, dng=dng_kw, ng_gnn=ng_kw, path=path)
    if method is EditingMethod.DNG_IMAGE_DECODER:
        net = INR2JLS(wenc, tuple(image_shape), spatial_dim=decoder["spatial_dim"], latent_dim=decoder["latent_dim"],
                      generator_hidden=decoder["generator_hidden"], decoder_channels=decoder["decoder_channels"])
        return EditingModel(method, net, image_shape, w0)
    if method is not EditingMethod.DNG:
        raise AssertionError(f"build_editing_model does not handle {method}")  # a new member needs a branch above
    counts = (int(train_params[WEIGHT_KEYS[0]].shape[2]),) + tuple(int(train_params[k].shape[1]) for k in WEIGHT_KEYS)
    net = DNGWeightEditor(wenc.encoder, WEIGHT_KEYS, BIAS_KEYS, counts, **dict(dng_editor))
    net.fit_stats(train_params)
    return EditingModel(method, net, image_shape, w0)


@torch.no_grad()
def editing_mse(model: EditingModel, split: EditingSplit, batch_size: int) -> float:
    """Mean squared error over every pixel of every image of ``split`` (the task's metric)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for idx in split.chunks(batch_size):
        out = model(split, idx).cpu()
        target = split.targets[idx]
        total += float(((out - target) ** 2).sum())
        count += target.numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def predict(model: EditingModel, split: EditingSplit, idx) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = model(split, idx).cpu()
    model.train(was_training)
    return out


def examples_figure(inputs: torch.Tensor, targets: torch.Tensor, outputs: Mapping[str, torch.Tensor], title: str):
    """Rows: input INR's image, target, then each method's output; one column per example."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("input INR", inputs), ("target", targets)] + [(name, img) for name, img in outputs.items()]
    n = inputs.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.0 * n + 0.9, 1.05 * len(rows)), squeeze=False)
    for r, (name, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[r, j]
            img = ((imgs[j].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def run_inr_editing(*, run, seed: int, edit: ImageEdit | str, method: EditingMethod | str, data: Mapping,
                    encoder: Mapping, dng_editor: Mapping, nfn: Mapping, decoder: Mapping, optim: Mapping,
                    runtime: Mapping, num_figure_images: int = 8, examples_out: str | None = None) -> dict:
    """Train ``method`` to produce the ``edit`` of each INR's image; returns test MSE (and the identity's).

    ``examples_out``: if set, an ``.npz`` with the first ``num_figure_images`` test inputs, targets and outputs
    (for the results figure).
    """
    t0 = time.perf_counter()
    edit, method = ImageEdit.parse(edit), EditingMethod.parse(method)  # config strings; before any data is read
    path = ExecutionPath.parse(runtime["path"])
    dev = resolve_device(runtime["device"])
    set_threads(runtime["num_threads"])
    eval_bs, resume, keep = runtime["eval_batch_size"], runtime["resume"], runtime.get("keep_checkpoints", 2)
    splits, shape = load_editing_splits(data, edit)
    train, val, test = splits["train"], splits["val"], splits["test"]
    info = run.info if run is not None else {}
    info["sizes"] = {k: len(v) for k, v in splits.items()}
    info.update(image_shape=list(shape), edit=edit.value, method=method.value)

    seed_everything(seed)
    model = build_editing_model(method, train, shape, w0=data["w0"], encoder=encoder, dng_editor=dng_editor, nfn=nfn,
                                decoder=decoder, path=path).to(dev)
    params = count_params(model)
    info["params"] = params
    result = None
    t_train = time.perf_counter()
    if method is not EditingMethod.IDENTITY:
        opt = torch.optim.Adam(model.parameters(), lr=optim["lr"], weight_decay=optim["weight_decay"])

        def step(idx):
            return torch.mean((model(train, idx) - train.targets[idx].to(dev)) ** 2)

        result = train_loop(
            name="edit", model=model, optimizer=opt, sampler=EpochSampler(len(train), optim["batch_size"], seed),
            train_step=step, evaluate=lambda: {"mse": editing_mse(model, val, eval_bs)}, monitor="mse",
            higher_is_better=False, total_steps=optim["steps"], eval_every=optim["eval_every"],
            patience=optim["patience"], checkpoint_dir=checkpoint_dir(run, runtime["checkpoint_dir"]),
            checkpoint_name="inr_editing", resume_path=resolve_resume(resume, "inr_editing"),
            grad_clip=optim["grad_clip"], run=run, log_every=optim["log_every"], keep_checkpoints=keep,
            amp=runtime.get("amp"))
    train_s = time.perf_counter() - t_train
    test_mse = editing_mse(model, test, eval_bs)
    identity = EditingModel(EditingMethod.IDENTITY, None, shape, data["w0"])
    identity_mse = editing_mse(identity, test, eval_bs)

    n_fig = min(num_figure_images, len(test))
    idx = torch.arange(n_fig)
    outputs = predict(model, test, idx)
    if run is not None and n_fig:
        fig = examples_figure(test.images[idx], test.targets[idx], {method.value: outputs},
                              f"INR editing: {edit.value}, {method.value} (test INRs)")
        log_figure(run, fig, "inr_editing_examples.png", close=True)
    if examples_out and dist.is_main():  # under torchrun one writer (the ranks' outputs are equal)
        out_path = Path(examples_out)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp.npz")
        np.savez_compressed(tmp, inputs=test.images[idx].numpy().astype(np.float16),
                            targets=test.targets[idx].numpy().astype(np.float16),
                            outputs=outputs.numpy().astype(np.float16))
        tmp.replace(out_path)

    summary = {
        "test": {"mse": test_mse, "identity_mse": identity_mse},
        "edit": edit.value, "method": method.value, "params": params,
        "train": None if result is None else {"steps": result.steps, "best_step": result.best_step,
                                              "best_val_mse": result.best_metric, "stopped_early": result.stopped_early,
                                              "resumed_from_step": result.resumed_from},
        # reference: always predicting the mean training target
        "mean_target_mse": float(((test.targets - train.targets.mean(0)) ** 2).mean()),
        "train_s": train_s, "seconds": time.perf_counter() - t0,
    }
    info["results"] = summary
    print_summary(run, f"INR editing [{edit.value}, {method.value}] test MSE {test_mse:.5f} (identity "
                  f"{identity_mse:.5f}, mean target {summary['mean_target_mse']:.5f}); {params} params; "
                  f"{summary['seconds']:.0f}s")
    return summary
