"""§7 of the paper: can an MPNN on the static or on the dynamic neural graph reproduce an MLP's forward pass?

Models (§7 "Model Setup"): :class:`~dng_tgn.baselines.StaticMPNN` (L rounds of Kofinas et al.'s MPNN with
edge updates over the whole graph) and :class:`~dng_tgn.baselines.DynamicMPNN` (the same φ_m/φ_u applied
per timestamp on the dynamic neural graph). Same initial features, same φ architecture, same readout,
same optimiser, epochs, batches and seeds. Loss: MSE over every hidden and output neuron. The data is
:class:`~dng_tgn.data.activations.ActivationData`.

Depths 1, 2, 3: the activations of layer l of a 3-layer MLP are exactly the outputs of its first l layers, an
l-layer MLP; the per-layer test MSE is therefore Fig. 5's "MLPs with one, two and three layers".
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..baselines import DynamicMPNN, StaticMPNN, node_layer_index
from ..baselines.static_vs_dynamic import ActivationFitter
from ..data.activations import ActivationData
from ..graph.events import NodeKind
from ..device import resolve_device
from ..nn.paths import ExecutionPath
from ..faults import kill_point
from ..progress import progress
from ..tracking import log_figure, print_summary
from ..training import Checkpoint, CheckpointError, CheckpointStore, flush_run, resolve_resume, restore, rng_state
from .common import checkpoint_dir, set_threads

__all__ = ["MODEL_CLASSES", "evaluate", "train_model", "figure", "run_static_vs_dynamic"]

MODEL_CLASSES = {"static": StaticMPNN, "dynamic": DynamicMPNN}


def _chunks(ids: torch.Tensor, size: int):
    return [ids[i:i + size] for i in range(0, ids.numel(), size)]


@torch.no_grad()
def evaluate(model: ActivationFitter, data: ActivationData, batch_size: int, device) -> dict[int, float]:
    """Test MSE per layer l = 1..L (mean over neurons, inputs and MLPs)."""
    model.eval()
    sq = torch.zeros(data.depth + 1, dtype=torch.float64)
    cnt = torch.zeros(data.depth + 1, dtype=torch.float64)
    for ids in _chunks(torch.arange(data.n), batch_size):
        batch, inputs, targets = data.batch(ids)
        batch, inputs, targets = batch.to(device), inputs.to(device), targets.to(device)
        err = (model(batch, inputs) - targets) ** 2
        layer = node_layer_index(batch)
        sq.index_add_(0, layer.cpu(), err.double().cpu())
        cnt.index_add_(0, layer.cpu(), torch.ones_like(err, dtype=torch.float64).cpu())
    model.train()
    return {l: float(sq[l] / cnt[l]) for l in range(1, data.depth + 1)}


def train_model(name: str, model: ActivationFitter, train: ActivationData, test: ActivationData, *, epochs: int,
                batch_size: int, lr: float, weight_decay: float, grad_clip: float, eval_every: int, device,
                seed: int, run=None, checkpoint_dir: Path | None = None, resume_path: Path | None = None,
                keep_checkpoints: int = 2) -> dict:
    """Adam + cosine decay on the node MSE. Both models get the same seed, so they see the same batches.

    A checkpoint ``{name}.step<epoch>.pt`` (model, optimizer, scheduler, the batch-order generator, RNG states,
    test history) goes to ``checkpoint_dir`` after every epoch, the run's metrics are flushed with it, and
    ``resume_path`` continues from one: bit-identical to the uninterrupted run.
    """
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(train.n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    g = torch.Generator().manual_seed(seed)
    history = []
    store = CheckpointStore(checkpoint_dir, name, keep_checkpoints)
    sampler = {"kind": "epoch_randperm", "n": train.n, "batch_size": batch_size, "seed": seed}
    start_epoch, seconds_before, train_loss = 0, 0.0, math.nan
    if resume_path is not None:
        ck, _ = restore(resume_path, store, model=model, optimizer=opt, scheduler=sched)
        saved = dict(ck.sampler or {})
        generator_state = saved.pop("generator", None)
        if saved != sampler or generator_state is None:
            raise CheckpointError(f"{resume_path} was written for other data or batches ({saved}, this run "
                                  f"{sampler}); resuming it would not continue the same training")
        g.set_state(generator_state)
        start_epoch, history = ck.step, list(ck.extra["history"])
        seconds_before, train_loss = float(ck.extra.get("train_seconds", 0.0)), ck.extra.get("train_loss", math.nan)
    start = time.perf_counter()
    bar = progress(range(start_epoch + 1, epochs + 1), desc=name, total=epochs, initial=start_epoch, unit="epoch")
    for epoch in bar:
        total, count = 0.0, 0
        for ids in _chunks(torch.randperm(train.n, generator=g), batch_size):
            batch, inputs, targets = train.batch(ids)
            batch, inputs, targets = batch.to(device), inputs.to(device), targets.to(device)
            hidden = batch.node_kind != NodeKind.INPUT
            loss = ((model(batch, inputs) - targets)[hidden] ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            sched.step()
            total += float(loss.detach()) * ids.numel()
            count += ids.numel()
        train_loss = total / count
        bar.set_postfix(loss=f"{train_loss:.2e}")
        if run is not None:
            run.log_scalar(f"{name}.train.loss", train_loss, epoch)
        if epoch % eval_every == 0 or epoch == epochs:
            per_layer = evaluate(model, test, batch_size, device)
            history.append({"epoch": epoch, "train_loss": train_loss, "test_mse": per_layer})
            if run is not None:
                for l, v in per_layer.items():
                    run.log_scalar(f"{name}.test.mse.layer{l}", v, epoch)
        kill_point(f"{name}/epoch/{epoch}")
        store.save(Checkpoint(
            step=epoch, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
            sampler=dict(sampler, generator=g.get_state()), rng=rng_state(), finished=epoch == epochs, name=name,
            extra={"history": history, "train_loss": train_loss,
                   "train_seconds": seconds_before + time.perf_counter() - start}))
        flush_run(run)
        kill_point(f"{name}/saved/{epoch}")
    bar.close()
    seconds = seconds_before + time.perf_counter() - start
    return {"test_mse": history[-1]["test_mse"], "train_loss": history[-1]["train_loss"], "history": history,
            "train_seconds": seconds, "params": sum(p.numel() for p in model.parameters())}


def figure(results: dict, target_var: dict[int, float]):
    """Fig.-5-style grouped bars (test MSE per layer, static vs dynamic, log y) and the test curves behind them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    layers = sorted(next(iter(results.values()))["test_mse"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.6))
    width = 0.8 / len(names)
    colors = {"static": "#d62728", "dynamic": "#1f77b4"}
    for k, name in enumerate(names):
        xs = [l - 0.4 + width * (k + 0.5) for l in layers]
        ax.bar(xs, [results[name]["test_mse"][l] for l in layers], width, label=name, color=colors.get(name))
    ax.plot(layers, [target_var[l] for l in layers], "k_", markersize=28, label="Var(target)")
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xticklabels([f"layer {l}" for l in layers])
    ax.set_ylabel("test MSE")
    ax.set_title("MLP activations: static vs dynamic graph", fontsize=10)
    ax.legend(fontsize=8)
    # the curves show whether a gap is a matter of training length
    styles = ["-", "--", ":", "-."]
    for name in names:
        hist = results[name]["history"]
        for i, l in enumerate(layers):
            ax2.plot([h["epoch"] for h in hist], [h["test_mse"][l] for h in hist], styles[i % len(styles)],
                     color=colors.get(name), marker="o", markersize=3, label=f"{name} layer {l}")
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test MSE")
    ax2.set_title("test MSE during training", fontsize=10)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def run_static_vs_dynamic(*, run, seed: int, data: Mapping, model: Mapping, models: Sequence[str], optim: Mapping,
                          runtime: Mapping) -> dict:
    """Train the §7 models on the same random MLPs and compare their per-layer test MSE.

    ``data``: :class:`ActivationData`'s arguments (n_train, n_test, widths, activation, weight_gain, bias_std,
    inputs_per_mlp); ``model``: hidden_dim, fourier_size, fourier_scale, share_weights, static_layers (None:
    the MLP depth), edge_updates, bidirectional; ``models``: which of ``MODEL_CLASSES`` to train; ``optim``:
    epochs, batch_size, lr, weight_decay, grad_clip, eval_every (epochs); ``runtime``: device, path, num_threads,
    resume (a run directory to continue), checkpoint_dir, keep_checkpoints.
    """
    unknown = [m for m in models if m not in MODEL_CLASSES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {sorted(MODEL_CLASSES)}")
    dev = resolve_device(runtime["device"])
    path = ExecutionPath.parse(runtime["path"])
    set_threads(runtime["num_threads"])
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    widths = list(data["widths"])
    shape = dict(widths=widths, act_name=data["activation"], weight_gain=data["weight_gain"],
                 bias_std=data["bias_std"], inputs_per_mlp=data["inputs_per_mlp"])
    train = ActivationData(data["n_train"], seed=seed + 1, **shape)
    test = ActivationData(data["n_test"], seed=seed + 2, **shape)
    target_var = {l: float(a.var()) for l, a in enumerate(test.activations, start=1)}
    info = run.info if run is not None else {}
    info["target_var"] = {str(l): v for l, v in target_var.items()}
    depth = len(widths) - 1
    common = dict(hidden_dim=model["hidden_dim"], share_weights=model["share_weights"],
                  fourier_size=model["fourier_size"], fourier_scale=model["fourier_scale"], path=path)
    info["params"] = {}
    ckdir = checkpoint_dir(run, runtime.get("checkpoint_dir"))
    resume = runtime.get("resume")
    results = {}
    for k, name in enumerate(models):
        # the first model's checkpoint must be there; a later one may not have been reached by the killed run
        resume_path = resolve_resume(resume, name, required=k == 0)
        torch.manual_seed(seed + 3)  # same initialisation stream for both models
        if MODEL_CLASSES[name] is StaticMPNN:
            net = StaticMPNN(num_layers=model["static_layers"] or depth, edge_updates=model["edge_updates"],
                             bidirectional=model["bidirectional"], **common)
        else:
            net = DynamicMPNN(num_layers=depth, **common)
        results[name] = train_model(name, net, train, test, epochs=optim["epochs"], batch_size=optim["batch_size"],
                                    lr=optim["lr"], weight_decay=optim["weight_decay"], grad_clip=optim["grad_clip"],
                                    eval_every=optim["eval_every"], device=dev, seed=seed + 4, run=run,
                                    checkpoint_dir=ckdir, resume_path=resume_path,
                                    keep_checkpoints=runtime.get("keep_checkpoints", 2))
        info["params"][name] = results[name]["params"]  # a constant of the model: info, not a metric
    summary = {name: {"test_mse": {str(l): v for l, v in r["test_mse"].items()},
                      "relative_mse": {str(l): v / target_var[l] for l, v in r["test_mse"].items()},
                      "params": r["params"], "train_seconds": r["train_seconds"], "final_train_loss": r["train_loss"]}
               for name, r in results.items()}
    info["results"] = summary
    info["total_seconds"] = time.perf_counter() - t0
    if run is not None:
        log_figure(run, figure(results, target_var), "static_vs_dynamic_mse.png", close=True)
    header = "layer  " + "  ".join(f"{n:>12}" for n in results) + "   Var(target)"
    lines = [header] + [
        f"{l:>5}  " + "  ".join(f"{results[n]['test_mse'][l]:12.3e}" for n in results) + f"   {target_var[l]:.3e}"
        for l in range(1, depth + 1)
    ]
    lines.append("params " + "  ".join(f"{results[n]['params']:>12d}" for n in results))
    print_summary(run, "\n" + "\n".join(lines))
    return summary
