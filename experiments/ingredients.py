"""Sacred ingredients every experiment shares, so that an ablation is the same ``with`` on any experiment.

* ``encoder``: which weight encoder (``encoder.kind``) and each encoder's keyword arguments
  (``encoder.dng.*``, ``encoder.ng_gnn.*``); ``with encoder.kind=ng_gnn`` runs the static baseline.
* ``optim`` (or a phase name, e.g. INR2JLS's ``recon`` and ``cls``): optimiser and schedule of one phase.
* ``data``: where the data lives and how much of it to use; each experiment adds its own keys.
* ``runtime``: where and how the run executes (device, execution path, threads, resume, checkpoints, amp).

Each experiment builds its own instances with its own defaults (``encoder_ingredient(dng=...)``); the keys and
their documentation are the same everywhere. Choices are checked in a config hook, so a bad one
(``encoder.kind=foo``, ``runtime.device=cuda`` without a GPU) fails before any run directory is created.
"""
from __future__ import annotations

from typing import Any

from sacred import Ingredient

from dng_tgn.baselines.nfn import NFNMode
from dng_tgn.device import default_device, resolve_device
from dng_tgn.nn.factory import EncoderKind
from dng_tgn.nn.memory import CellInput, UpdateCell
from dng_tgn.nn.paths import ExecutionPath
from dng_tgn.nn.precision import check_amp

__all__ = ["encoder_ingredient", "optim_ingredient", "data_ingredient", "runtime_ingredient", "ingredient_configs"]


class ConfigChoiceError(ValueError):
    """A config value is not one of the valid choices; raised before the run (and its directory) exists."""


def _check(choice: str, parse, value: Any) -> None:
    try:
        parse(value)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConfigChoiceError(f"{choice}={value!r}: {e}") from None


def encoder_ingredient(**defaults) -> Ingredient:
    """``encoder``: kind, dng, ng_gnn, mlp; ``defaults`` override the documented defaults below (nested dicts merge)."""
    ing = Ingredient("encoder")

    @ing.config
    def config():
        kind = "dng"  # "dng" (DNG-Encoder, §5), "ng_gnn" (static NG-GNN, Kofinas et al. 2024), "mlp" (flat weights), "nfn_np" / "nfn_hnp" (NFN)
        # Ablations (DNGMemory documents each; these defaults are the paper's model):
        # cell "gru" | "rnn" (tanh) | "rnn_relu"; gru_input "message" (ours) | "node" (the authors' order);
        # rnn_layers: recurrence passes per timestamp; shared_message: one phi_m for all timestamps;
        # per_timestamp_update: one phi_u per timestamp; positional_embedding: learned layer embedding on v_i;
        # activation_embedding: learned non-linearity embedding on v_i (Table 6).
        # DNGEncoder kwargs (the ablation keys are explained above)
        dng = dict(memory_dim=64, fourier_size=32, fourier_scale=3.0, cell="gru", gru_input="message", rnn_layers=1,
                   shared_message=False, per_timestamp_update=False, positional_embedding=False,
                   activation_embedding=False)
        ng_gnn = dict(hidden_dim=64, num_layers=3, out_dim=64, fourier_size=32, fourier_scale=3.0)  # NGGNN kwargs
        mlp = dict(hidden_dim=256, num_layers=3, out_dim=64, dropout=0.0)  # flat-weights MLP (Table 7's baseline)
        # NFN (kinds nfn_np / nfn_hnp), the NFN paper's CNN-zoo generalization model: channels 16, 16, 5, HNP pooling
        nfn = dict(channels=[16, 16, 5], out_dim=64, head_hidden=1000, head_layers=2, pool="hnp", dropout=0.0)

    ing.add_config(defaults)

    @ing.config_hook
    def check(config, command_name, logger):
        _check("encoder.kind", EncoderKind.parse, config["encoder"]["kind"])
        dng = config["encoder"].get("dng") or {}
        for key, parse in (("cell", UpdateCell.parse), ("gru_input", CellInput.parse)):
            if key in dng:
                _check(f"encoder.dng.{key}", parse, dng[key])
        nfn = config["encoder"].get("nfn") or {}
        if "pool" in nfn:
            _check("encoder.nfn.pool", lambda v: NFNMode.parse(v, "NFN pool"), nfn["pool"])
        return {}

    return ing


def optim_ingredient(name: str = "optim", **defaults) -> Ingredient:
    """One training phase's optimisation; ``name`` is its config prefix (``optim``, ``recon``, ``cls``)."""
    ing = Ingredient(name)

    @ing.config
    def config():
        lr = 1e-3  # learning rate
        weight_decay = 0.0
        batch_size = 16  # networks per step
        epochs = None  # training length in epochs (used when steps is None)
        steps = None  # training length in steps; overrides epochs
        eval_every = None  # steps between validations (None: once per epoch)
        patience = None  # validations without improvement before stopping early (None: never)
        grad_clip = 1.0  # max gradient norm (0: no clipping)
        log_every = 1  # steps between logged training losses (MongoDB documents are capped at 16 MB)

    ing.add_config(defaults)
    return ing


def data_ingredient(**defaults) -> Ingredient:
    """``data``: root and limit, plus whatever keys the experiment's ``defaults`` add."""
    ing = Ingredient("data")

    @ing.config
    def config():
        root = None  # dataset folder (required unless the experiment generates its data)
        limit = None  # use only the first `limit` networks of each split (quick looks)

    ing.add_config(defaults)
    return ing


def runtime_ingredient(**defaults) -> Ingredient:
    """``runtime``: device, execution path, CPU threads, resume and checkpoint folders, evaluation batch."""
    ing = Ingredient("runtime")

    @ing.config
    def config():
        device = str(default_device())  # CUDA when available, else CPU
        path = None  # message passing: None (DGL where its kernels run, else torch), "dgl" or "torch"
        num_threads = None  # torch CPU threads; None: torch's default (1 is fastest on an oversubscribed CPU)
        resume = None  # a previous run's directory (or checkpoint file) to continue from
        checkpoint_dir = None  # None: the run's file-storage directory
        keep_checkpoints = 2  # checkpoints kept per training phase, besides the best one (>= 1)
        eval_batch_size = 128  # networks per evaluation batch
        amp = None  # mixed precision of the training steps: None (fp32), "bf16" (CPU and CUDA), "fp16" (CUDA, scaled)

    ing.add_config(defaults)

    @ing.config_hook
    def check(config, command_name, logger):
        runtime = config["runtime"]
        _check("runtime.device", resolve_device, runtime["device"])
        _check("runtime.path", ExecutionPath.parse, runtime["path"])
        _check("runtime.amp", lambda v: check_amp(v, resolve_device(runtime["device"])), runtime.get("amp"))
        if not isinstance(runtime["keep_checkpoints"], int) or runtime["keep_checkpoints"] < 1:
            raise ConfigChoiceError(f"runtime.keep_checkpoints={runtime['keep_checkpoints']!r}: need an integer >= 1 "
                                    f"(the latest checkpoint is what a resume needs)")
        return {}

    return ing


def ingredient_configs(config: dict, *names: str) -> dict[str, dict]:
    """The named ingredients' sections of a run's ``_config``, as keyword arguments of a task function."""
    return {n: config[n] for n in names}
