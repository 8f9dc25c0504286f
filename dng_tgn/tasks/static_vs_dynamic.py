"""§7 of the paper: can an MPNN on the static or on the dynamic neural graph reproduce an MLP's forward pass?

Models (§7 "Model Setup"): :class:`~dng_tgn.baselines.StaticMPNN` (L rounds of Kofinas et al.'s MPNN with
edge updates over the whole graph) and :class:`~dng_tgn.baselines.DynamicMPNN` (the same φ_m/φ_u applied
per timestamp on the dynamic neural graph). Same initial features, same φ architecture, same readout,
same optimiser, epoch cap, early-stopping rule, batches and seeds. Loss: MSE over every hidden and output
neuron. The data is :class:`~dng_tgn.data.activations.ActivationData`: train, validation and test MLPs.

Honest baseline: the static MPNN is trained forward-only (as §7 describes it) and bidirectional, and per layer
the one with the lower *static validation* MSE is reported; every model stops early on its own validation MSE
and its test MSE is read once, at its best-validation weights.

Depths 1, 2, 3: the activations of layer l of a 3-layer MLP are exactly the outputs of its first l layers, an
l-layer MLP; the per-layer test MSE is therefore Fig. 5's "MLPs with one, two and three layers".
"""
from __future__ import annotations

import math
import threading
import time
from enum import Enum
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..choices import parse_choice
from ..baselines import DynamicMPNN, StaticMPNN, node_layer_index
from ..baselines.static_vs_dynamic import ActivationFitter
from ..data.activations import ActivationData
from ..graph.events import NodeKind
from ..device import resolve_device
from ..nn.paths import ExecutionPath
from .. import distributed as dist
from ..faults import kill_point
from ..nn.precision import AmpMode, autocast, check_amp, grad_scaler
from ..progress import progress
from ..tracking import log_figure, print_summary
from ..training import Checkpoint, CheckpointError, CheckpointStore, flush_run, resolve_resume, restore, rng_state
from .common import checkpoint_dir, set_threads

__all__ = ["MODEL_CLASSES", "STATIC_DIRECTIONS", "LRSchedule", "SCHEDULES", "TrainingCancelled", "evaluate", "make_schedule", "train_model",
           "train_concurrently", "choose_static", "figure", "run_static_vs_dynamic"]

MODEL_CLASSES = {"static": StaticMPNN, "dynamic": DynamicMPNN}


def _chunks(ids: torch.Tensor, size: int):
    return [ids[i:i + size] for i in range(0, ids.numel(), size)]


@torch.no_grad()
def evaluate(model: ActivationFitter, data: ActivationData, batch_size: int, device, overall: bool = False):
    """MSE per layer l = 1..L (mean over neurons, inputs and MLPs) on ``data``.

    ``overall=True`` returns ``(per_layer, mse)`` with ``mse`` the mean over every hidden and output neuron, the
    quantity training minimises (what early stopping watches).
    """
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
    per_layer = {l: float(sq[l] / cnt[l]) for l in range(1, data.depth + 1)}
    return (per_layer, float(sq[1:].sum() / cnt[1:].sum())) if overall else per_layer


class TrainingCancelled(RuntimeError):
    """A model of :func:`train_concurrently` stopped because another one failed or the run was interrupted."""


class LRSchedule(Enum):
    """``optim.schedule`` of §7's models (see :func:`train_model`)."""

    COSINE = "cosine"
    PLATEAU = "plateau"
    CONSTANT = "constant"

    @classmethod
    def parse(cls, value: "str | LRSchedule", name: str = "model") -> "LRSchedule":
        return parse_choice(cls, value, f"schedule of {name}")


SCHEDULES = tuple(m.value for m in LRSchedule)


def make_schedule(opt: torch.optim.Optimizer, schedule: "LRSchedule | str", *, epochs: int, steps_per_epoch: int,
                  lr_factor: float, lr_patience: int, min_delta: float, name: str = "model"):
    """The learning-rate schedule of :func:`train_model` (see there); ``plateau`` is stepped with the validation
    MSE after every validation, the others after every optimiser step."""
    schedule = LRSchedule.parse(schedule, name)
    if schedule is LRSchedule.COSINE:
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    if schedule is LRSchedule.CONSTANT:
        return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    if schedule is LRSchedule.PLATEAU:
        if not 0.0 < lr_factor < 1.0:
            raise ValueError(f"{name}: lr_factor must be in (0, 1) for the plateau schedule, got {lr_factor}")
        if int(lr_patience) < 1:
            raise ValueError(f"{name}: lr_patience must be >= 1 validations, got {lr_patience}")
        # torch cuts after `patience` bad validations *plus one*: lr_patience - 1 makes the lr_patience-th the cut;
        # its threshold (relative, against the last significant best) is the stopping rule's min_delta
        return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=lr_factor,
                                                          patience=int(lr_patience) - 1, threshold=min_delta,
                                                          threshold_mode="rel")
    raise AssertionError(f"unhandled schedule {schedule}")  # every member is handled above


def train_model(name: str, model: ActivationFitter, train: ActivationData, val: ActivationData, test: ActivationData,
                *, epochs: int, batch_size: int, lr: float, weight_decay: float, grad_clip: float, eval_every: int,
                device, seed: int, patience: int | None = None, run=None, checkpoint_dir: Path | None = None,
                resume_path: Path | None = None, keep_checkpoints: int = 2, amp=None, schedule: str = "cosine",
                lr_factor: float = 0.5, lr_patience: int = 3, min_delta: float = 0.0,
                cancel: "threading.Event | None" = None) -> dict:
    """Adam on the node MSE with a learning-rate ``schedule``, early stopping on validation.

    ``cancel``: set by :func:`train_concurrently` when a model beside this one failed or the run was
    interrupted; this model then stops at its next epoch (:class:`TrainingCancelled`) instead of training on.

    Every model gets the same seed, so they all see the same batches. Every ``eval_every`` epochs the validation
    MSE (over all hidden and output neurons, the training loss's quantity) is measured. A validation *improves*
    when it is below ``ref · (1 − min_delta)``, ``ref`` being the validation MSE of the last improvement (so
    slow progress still counts once it adds up to ``min_delta``); training stops once ``patience``
    validations in a row have not improved (None: never early, run ``epochs``), and the model ends with the
    weights of its lowest validation MSE. ``test`` is read once, with those weights: nothing is chosen on it.

    ``schedule``: ``"cosine"`` decays the rate to 0 over exactly ``epochs`` (the cap then decides when the
    curves flatten, so early stopping rarely fires); ``"plateau"`` multiplies it by ``lr_factor`` whenever
    ``lr_patience`` validations in a row have not improved (same rule and ``min_delta`` as the stopping;
    with ``lr_patience < patience`` a stalled model gets smaller rates before it is stopped); ``"constant"``
    keeps ``lr``.
    With ``"plateau"`` or ``"constant"`` the epoch cap is only a safety limit, and when a model stops is
    decided by its own validation curve.

    A checkpoint ``{name}.step<epoch>.pt`` (model, optimizer, scheduler, the batch-order generator, RNG states,
    validation history, the early-stopping state) goes to ``checkpoint_dir`` after every epoch, the run's
    metrics are flushed with it, the best one is kept, and ``resume_path`` continues from one: bit-identical to
    the uninterrupted run.

    ``amp`` autocasts the forward pass and loss (fp16 with a gradient scaler, CUDA only). Under torchrun each
    global batch of ``batch_size`` MLP inputs is cut into contiguous per-rank pieces (:mod:`dng_tgn.distributed`);
    the gradients are summed with weights n_r / n (n_r: the rank's items, n: the batch's; exact also for the
    shorter last batch), evaluation runs on rank 0, and only rank 0 writes checkpoints.
    """
    model.to(device)
    world = dist.world_size()
    if world > 1:
        dist.local_batch_size(batch_size, world, "optim.batch_size")
    amp = check_amp(amp, device)
    scaler = grad_scaler(amp, device) if amp is AmpMode.FP16 else None
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if patience is not None and int(patience) < 1:
        raise ValueError(f"{name}: patience must be >= 1 validations (or None: no early stopping), got {patience}")
    if not 0.0 <= min_delta < 1.0:
        raise ValueError(f"{name}: min_delta is a relative improvement in [0, 1), got {min_delta}")
    sched = make_schedule(opt, schedule, epochs=epochs, steps_per_epoch=math.ceil(train.n / batch_size),
                          lr_factor=lr_factor, lr_patience=lr_patience, min_delta=min_delta, name=name)
    schedule = LRSchedule.parse(schedule, name)
    per_step = schedule is not LRSchedule.PLATEAU  # cosine / constant advance every optimiser step, plateau every validation
    g = torch.Generator().manual_seed(seed)
    history = []
    # early stopping: the best validation MSE so far, its epoch and weights, and how many validations since
    best_metric, best_step, best_state, stale, finished = math.inf, None, None, 0, False
    ref = math.inf  # validation MSE of the last improvement by more than min_delta (what `stale` counts from)
    store = CheckpointStore(checkpoint_dir if dist.is_main() else None, name, keep_checkpoints)
    sampler = {"kind": "epoch_randperm", "n": train.n, "batch_size": batch_size, "seed": seed}
    start_epoch, seconds_before, cpu_before, train_loss = 0, 0.0, 0.0, math.nan
    if resume_path is not None:
        ck, best_state = restore(resume_path, store, model=model, optimizer=opt, scheduler=sched, scaler=scaler)
        saved = dict(ck.sampler or {})
        generator_state = saved.pop("generator", None)
        if saved != sampler or generator_state is None:
            raise CheckpointError(f"{resume_path} was written for other data or batches ({saved}, this run "
                                  f"{sampler}); resuming it would not continue the same training")
        if any("val_mse" not in h for h in ck.extra["history"]):
            raise CheckpointError(f"{resume_path} was written before §7 had a validation split and early stopping "
                                  f"(its history holds test curves); start a new run instead of resuming it")
        if ck.extra.get("schedule", "cosine") != schedule.value:
            raise CheckpointError(f"{resume_path} was trained with the {ck.extra.get('schedule', 'cosine')!r} "
                                  f"schedule, this run uses {schedule.value!r}; resuming it would mix two protocols")
        g.set_state(generator_state)
        start_epoch, history = ck.step, list(ck.extra["history"])
        ref = ck.extra.get("stop_ref", ck.best_metric if ck.best_metric is not None else math.inf)
        seconds_before, train_loss = float(ck.extra.get("train_seconds", 0.0)), ck.extra.get("train_loss", math.nan)
        cpu_before = float(ck.extra.get("cpu_seconds", 0.0))
        best_step, stale, finished = ck.best_step, ck.evals_without_improvement, ck.finished
        best_metric = ck.best_metric if ck.best_metric is not None else math.inf
    dist.broadcast_module(model)  # every rank starts from rank 0's weights (equal already when seeded alike)
    # this thread's CPU time: with models trained side by side it is what the model would take on an idle core
    start, cpu_start = time.perf_counter(), time.thread_time()
    bar = progress(desc=name, total=epochs, initial=start_epoch, unit="epoch")
    for epoch in range(start_epoch + 1, epochs + 1):
        if finished:  # stopped early before the kill: nothing left to train
            break
        if cancel is not None and cancel.is_set():
            raise TrainingCancelled(f"{name}: stopped before epoch {epoch} because a model trained beside it failed "
                                    f"or the run was interrupted (its checkpoints so far are kept)")
        total, count = 0.0, 0
        for ids in _chunks(torch.randperm(train.n, generator=g), batch_size):
            mine = ids if world == 1 else dist.shard_batch(ids)  # this rank's piece of the global batch
            opt.zero_grad(set_to_none=True)
            if mine.numel():  # a short last batch may leave a rank without items: it adds zero gradients
                batch, inputs, targets = train.batch(mine)
                batch, inputs, targets = batch.to(device), inputs.to(device), targets.to(device)
                hidden = batch.node_kind != NodeKind.INPUT
                with autocast(amp, device):
                    loss = ((model(batch, inputs) - targets)[hidden] ** 2).mean()
                (scaler.scale(loss) if scaler is not None else loss).backward()
                total += float(loss.detach()) * mine.numel()
                count += mine.numel()
            if world > 1:  # every MLP has the same neurons, so n_r / n weights the ranks' means into the batch's
                dist.weighted_gradients(model.parameters(), mine.numel() / ids.numel())
            if scaler is not None:
                if grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(opt)
                scaler.update()
            else:
                if grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                opt.step()
            if per_step:
                sched.step()
        if world > 1:
            total, count = dist.all_reduce_sum([total, count], device)
        train_loss = total / count
        bar.set_postfix(loss=f"{train_loss:.2e}")
        if run is not None:
            run.log_scalar(f"{name}.train.loss", train_loss, epoch)
        if epoch % eval_every == 0 or epoch == epochs:
            # the ranks' models are equal: rank 0 evaluates, every rank keeps the same history
            per_layer, val_mse = dist.broadcast_object(
                evaluate(model, val, batch_size, device, overall=True) if dist.is_main() else None)
            # the rate this epoch trained with (before a plateau cut that this validation may trigger)
            lr_now = opt.param_groups[0]["lr"]
            history.append({"epoch": epoch, "train_loss": train_loss, "val_mse": val_mse, "val_mse_layer": per_layer,
                            "lr": lr_now})
            if run is not None:
                run.log_scalar(f"{name}.lr", lr_now, epoch)
                run.log_scalar(f"{name}.val.mse", val_mse, epoch)
                for l, v in per_layer.items():
                    run.log_scalar(f"{name}.val.mse.layer{l}", v, epoch)
            if val_mse < best_metric:  # the result's weights: the lowest validation MSE, however small the gain
                best_metric, best_step = val_mse, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if val_mse < ref * (1.0 - min_delta):  # progress that resets the patience
                ref, stale = val_mse, 0
            else:
                stale += 1
            if not per_step:
                sched.step(val_mse)
                if opt.param_groups[0]["lr"] < lr_now and dist.is_main():
                    print(f"{name}: epoch {epoch}: no progress in {lr_patience} validations, "
                          f"lr {lr_now:.2e} -> {opt.param_groups[0]['lr']:.2e}", flush=True)
            finished = patience is not None and stale >= patience
        finished = finished or epoch == epochs
        kill_point(f"{name}/epoch/{epoch}")
        store.save(Checkpoint(
            step=epoch, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
            scaler=scaler.state_dict() if scaler is not None else None,
            sampler=dict(sampler, generator=g.get_state()), rng=rng_state(), finished=finished, name=name,
            best_metric=best_metric if best_step is not None else None, best_step=best_step,
            evals_without_improvement=stale,
            extra={"history": history, "train_loss": train_loss, "schedule": schedule.value, "stop_ref": ref,
                   "train_seconds": seconds_before + time.perf_counter() - start,
                   "cpu_seconds": cpu_before + time.thread_time() - cpu_start}))
        flush_run(run)
        kill_point(f"{name}/saved/{epoch}")
        bar.update(1)
        if finished:
            if epoch < epochs and dist.is_main():
                print(f"{name}: stopped early at epoch {epoch}: {stale} validations without a relative improvement "
                      f"of {min_delta:g} (best {best_metric:.3e} at epoch {best_step})", flush=True)
            break
    bar.close()
    seconds = seconds_before + time.perf_counter() - start
    cpu_seconds = cpu_before + time.thread_time() - cpu_start
    if best_state is None:
        raise RuntimeError(f"{name}: no validation was run (epochs={epochs}, eval_every={eval_every})")
    model.load_state_dict(best_state)  # the best validation's weights are the model's result
    best = next(h for h in history if h["epoch"] == best_step)
    test_mse = dist.broadcast_object(evaluate(model, test, batch_size, device) if dist.is_main() else None)
    return {"test_mse": test_mse, "val_mse": best["val_mse_layer"], "best_val_mse": best["val_mse"],
            "best_epoch": best_step, "epochs_run": history[-1]["epoch"] if history else 0,
            "train_loss": history[-1]["train_loss"], "history": history, "train_seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "params": sum(p.numel() for p in model.parameters())}


def train_concurrently(jobs: Sequence[tuple[str, ActivationFitter, Path | None]], train: ActivationData,
                       val: ActivationData, test: ActivationData, *, workers: int, **train_kw) -> dict[str, dict]:
    """:func:`train_model` for every ``(name, model, resume_path)`` of ``jobs``, ``workers`` at a time.

    The models are independent (own weights, optimiser, batch-order generator, checkpoints), so training them in
    threads gives each model exactly the numbers it gets alone: torch releases the GIL inside its kernels, so
    with one intra-op thread per model two models keep two cores busy; unlike intra-op threads, that does not
    oversubscribe a shared CPU. The most expensive models start first (the bidirectional static MPNN has twice
    the edges). Under torchrun (collectives must run in one order on every rank) and with ``workers=1`` the
    models train one after the other. Returns the results in ``jobs`` order.
    """
    if workers <= 1 or len(jobs) <= 1 or dist.world_size() > 1:
        return {name: train_model(name, model, train, val, test, resume_path=rp, **train_kw)
                for name, model, rp in jobs}
    from concurrent.futures import ThreadPoolExecutor, as_completed

    cost = {name: k for k, name in enumerate(("static_bidirectional", "static_forward", "dynamic"))}
    order = sorted(jobs, key=lambda j: cost.get(j[0], -1))
    cancel = threading.Event()  # a failure or Ctrl-C stops the other models at their next epoch, not at their end
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sec7") as pool:
        futures = {name: pool.submit(train_model, name, model, train, val, test, resume_path=rp, cancel=cancel,
                                     **train_kw)
                   for name, model, rp in order}
        try:
            for f in as_completed(futures.values()):
                f.result()  # the first failure, as it happens
            done = {name: f.result() for name, f in futures.items()}
        except BaseException:
            cancel.set()
            for f in futures.values():
                f.cancel()
            raise
    return {name: done[name] for name, _, _ in jobs}


STATIC_DIRECTIONS = ("forward", "bidirectional")
COLORS = {"static_forward": "#d62728", "static_bidirectional": "#ff9896", "dynamic": "#1f77b4"}


def choose_static(variants: Mapping[str, dict]) -> dict:
    """The strongest static MPNN per layer, chosen on *its own* validation MSE (never on test, never on the
    dynamic model): ``variants`` maps a direction to its :func:`train_model` result.

    Returns ``{"direction": {l: dir}, "test_mse": {l: …}, "val_mse": {l: …}}`` (the chosen variant's numbers).
    """
    if not variants:
        raise ValueError("no static variant was trained")
    layers = sorted(next(iter(variants.values()))["val_mse"])
    chosen = {l: min(variants, key=lambda d: variants[d]["val_mse"][l]) for l in layers}
    return {"direction": chosen, "test_mse": {l: variants[chosen[l]]["test_mse"][l] for l in layers},
            "val_mse": {l: variants[chosen[l]]["val_mse"][l] for l in layers}}


def figure(results: dict, target_var: dict[int, float], static_choice: dict | None = None):
    """Fig.-5-style grouped bars (test MSE per layer of every trained model, log y; the static variant chosen on
    validation hatched) and the validation curves early stopping watched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    layers = sorted(next(iter(results.values()))["test_mse"])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        xs = [l - 0.4 + width * (k + 0.5) for l in layers]
        bars = ax.bar(xs, [results[name]["test_mse"][l] for l in layers], width, label=name, color=COLORS.get(name))
        if static_choice is not None and name.startswith("static_"):
            for bar, l in zip(bars, layers):
                if f"static_{static_choice['direction'][l]}" == name:
                    bar.set_hatch("//")
                    bar.set_edgecolor("k")
    ax.plot(layers, [target_var[l] for l in layers], "k_", markersize=28, label="Var(target)")
    ax.set_yscale("log")
    ax.set_xticks(layers)
    ax.set_xticklabels([f"layer {l}" for l in layers])
    ax.set_ylabel("test MSE (best-validation weights)")
    ax.set_title("MLP activations: static vs dynamic graph\n(hatched: static chosen on validation)", fontsize=9)
    ax.legend(fontsize=7)
    # the validation curves show where early stopping stopped and whether a gap is a matter of training length
    for name in names:
        hist = results[name]["history"]
        ax2.plot([h["epoch"] for h in hist], [h["val_mse"] for h in hist], "-", color=COLORS.get(name), lw=1.2,
                 label=name)
        ax2.axvline(results[name]["best_epoch"], color=COLORS.get(name), ls=":", lw=0.8)
    ax2.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation MSE (all layers)")
    ax2.set_title("validation MSE during training (dotted: best epoch)", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def run_static_vs_dynamic(*, run, seed: int, data: Mapping, model: Mapping, models: Sequence[str], optim: Mapping,
                          runtime: Mapping) -> dict:
    """Train the §7 models on the same random MLPs and compare their per-layer test MSE.

    ``data``: :class:`ActivationData`'s arguments (n_train, n_val, n_test, widths, activation, weight_gain,
    bias_std, inputs_per_mlp); ``model``: hidden_dim, fourier_size, fourier_scale, share_weights, static_layers
    (None: the MLP depth), edge_updates, static_directions (the static MPNNs to train: ``forward`` as §7
    describes it, ``bidirectional`` with reversed edges too); ``models``: which of ``MODEL_CLASSES`` to train;
    ``optim``: epochs (at most), patience (validations), batch_size, lr, weight_decay, grad_clip, eval_every
    (epochs), schedule, lr_factor, lr_patience, min_delta (:func:`train_model`); ``runtime``: device, path,
    num_threads, workers (models trained at once, :func:`train_concurrently`), resume (a run directory to
    continue), checkpoint_dir, keep_checkpoints, amp.

    Three seeded, disjoint sets of random MLPs: train (seed+1), validation (seed+5), test (seed+2). The static
    baseline is the strongest static MPNN: per layer, the direction with the lower *static* validation MSE
    (:func:`choose_static`). The result holds every trained model (``static_forward``, ``static_bidirectional``,
    ``dynamic``), the chosen ``static`` and ``ratio`` = dynamic ÷ static test MSE per layer.
    """
    unknown = [m for m in models if m not in MODEL_CLASSES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {sorted(MODEL_CLASSES)}")
    directions = list(model["static_directions"])
    bad = [d for d in directions if d not in STATIC_DIRECTIONS]
    if bad or ("static" in models and not directions):
        raise ValueError(f"model.static_directions={directions}: give one or more of {list(STATIC_DIRECTIONS)}")
    dev = resolve_device(runtime["device"])
    path = ExecutionPath.parse(runtime["path"])
    set_threads(runtime["num_threads"])
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    widths = list(data["widths"])
    shape = dict(widths=widths, act_name=data["activation"], weight_gain=data["weight_gain"],
                 bias_std=data["bias_std"], inputs_per_mlp=data["inputs_per_mlp"])
    train = ActivationData(data["n_train"], seed=seed + 1, **shape)
    test = ActivationData(data["n_test"], seed=seed + 2, **shape)  # seeds +1/+2 as before: same test MLPs
    val = ActivationData(data["n_val"], seed=seed + 5, **shape)
    target_var = {l: float(a.var()) for l, a in enumerate(test.activations, start=1)}
    info = run.info if run is not None else {}
    info["target_var"] = {str(l): v for l, v in target_var.items()}
    depth = len(widths) - 1
    common = dict(hidden_dim=model["hidden_dim"], share_weights=model["share_weights"],
                  fourier_size=model["fourier_size"], fourier_scale=model["fourier_scale"], path=path)
    info["params"] = {}
    ckdir = checkpoint_dir(run, runtime.get("checkpoint_dir"))
    resume = runtime.get("resume")
    # (checkpoint name, constructor) of every model to train, in order
    plan = []
    for kind in models:
        if MODEL_CLASSES[kind] is StaticMPNN:
            plan += [(f"static_{d}", lambda d=d: StaticMPNN(
                num_layers=model["static_layers"] or depth, edge_updates=model["edge_updates"],
                bidirectional=d == "bidirectional", **common)) for d in directions]
        else:
            plan.append(("dynamic", lambda: DynamicMPNN(num_layers=depth, **common)))
    # the newest checkpoint of every model; one must exist, a later one may not have been reached by a killed run
    resume_paths = [resolve_resume(resume, name, required=False) for name, _ in plan]
    if resume and plan and not any(resume_paths):
        resolve_resume(resume, plan[0][0], required=True)  # raises, naming what is missing
    train_kw = dict(epochs=optim["epochs"], patience=optim["patience"], batch_size=optim["batch_size"], lr=optim["lr"],
                    weight_decay=optim["weight_decay"], grad_clip=optim["grad_clip"], eval_every=optim["eval_every"],
                    device=dev, seed=seed + 4, run=run, checkpoint_dir=ckdir,
                    keep_checkpoints=runtime.get("keep_checkpoints", 2), amp=runtime.get("amp"),
                    schedule=optim.get("schedule", "cosine"), lr_factor=optim.get("lr_factor", 0.5),
                    lr_patience=optim.get("lr_patience", 3), min_delta=optim.get("min_delta", 0.0))
    built = []
    for name, build in plan:
        torch.manual_seed(seed + 3)  # same initialisation stream for every model
        built.append(build())
    jobs = [(name, m, rp) for (name, _), m, rp in zip(plan, built, resume_paths)]
    workers = 1 if runtime.get("workers") is None else int(runtime["workers"])  # not `or 1`: 0 is an error too
    if workers < 1:
        raise ValueError(f"runtime.workers must be >= 1, got {runtime.get('workers')}")
    results = train_concurrently(jobs, train, val, test, workers=workers, **train_kw)
    for name in results:
        info["params"][name] = results[name]["params"]  # a constant of the model: info, not a metric

    def per_layer(d: Mapping[int, float]) -> dict[str, float]:
        return {str(l): v for l, v in d.items()}

    summary = {name: {"test_mse": per_layer(r["test_mse"]), "val_mse": per_layer(r["val_mse"]),
                      "relative_mse": {str(l): v / target_var[l] for l, v in r["test_mse"].items()},
                      "params": r["params"], "train_seconds": r["train_seconds"], "cpu_seconds": r["cpu_seconds"],
                      "final_train_loss": r["train_loss"],
                      "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"]}
               for name, r in results.items()}
    choice = None
    if "static" in models:
        choice = choose_static({d: results[f"static_{d}"] for d in directions})
        summary["static"] = {"test_mse": per_layer(choice["test_mse"]), "val_mse": per_layer(choice["val_mse"]),
                             "direction": per_layer(choice["direction"]),
                             "relative_mse": {str(l): v / target_var[l] for l, v in choice["test_mse"].items()}}
        if "dynamic" in results:
            summary["ratio"] = {str(l): results["dynamic"]["test_mse"][l] / choice["test_mse"][l]
                                for l in range(1, depth + 1)}
    info["results"] = summary
    info["total_seconds"] = time.perf_counter() - t0
    if run is not None:
        log_figure(run, figure(results, target_var, choice), "static_vs_dynamic_mse.png", close=True)
    cols = list(results) + (["static"] if choice else [])
    header = "layer  " + "  ".join(f"{n:>20}" for n in cols) + ("   dyn÷static" if "ratio" in summary else "") \
        + "   Var(target)"
    lines = ["test MSE at the best-validation epoch; static = the direction with the lower static validation MSE",
             header]
    for l in range(1, depth + 1):
        cells = [f"{results[n]['test_mse'][l]:20.3e}" for n in results]
        if choice:
            cells.append(f"{choice['test_mse'][l]:11.3e} ({choice['direction'][l][:3]})".rjust(20))
        ratio = f"   {summary['ratio'][str(l)]:10.3f}" if "ratio" in summary else ""
        lines.append(f"{l:>5}  " + "  ".join(cells) + ratio + f"   {target_var[l]:.3e}")
    lines.append("epochs " + "  ".join(f"{'best %d of %d' % (r['best_epoch'], r['epochs_run']):>20}"
                                        for r in results.values()))
    lines.append("time s " + "  ".join(f"{'%.0f wall, %.0f CPU' % (r['train_seconds'], r['cpu_seconds']):>20}"
                                        for r in results.values()))
    lines.append("params " + "  ".join(f"{results[n]['params']:>20d}" for n in results))
    print_summary(run, "\n" + "\n".join(lines))
    return summary
