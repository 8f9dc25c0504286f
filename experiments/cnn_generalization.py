"""§8.2 / F.2: predict a CNN classifier's test accuracy from its weights (Small CNN Zoo, Table 3).

Data: a Small-CNN-Zoo folder (``weights.npy``, ``layout.csv``, ``metrics.csv.gz``), either a public archive
(CIFAR10-GS, SVHN-GS; pass NFN's split file with ``data.split_file=``) or one written by
``python -m dng_tgn.data.build_cnn_zoo``. Splits follow NFN: final checkpoints only, second half test, first
half 80/20 train/val.

Model: DNG-Encoder with the multi-head message function of Eq. 5 (one head per 3×3 kernel position, K = 9),
the memories of the 10 output nodes concatenated, a 3-layer MLP head (hidden 1024) -> one logit; BCE on the
accuracy (§8.2). ``encoder.kind=ng_gnn`` swaps in the static NG-GNN baseline. Metrics: Kendall τ and R².

Run: ``python -m experiments.cnn_generalization with data.root=/path/to/zoo`` (small CPU default),
``... with paper data.root=/path/to/cifar10_gs data.split_file=/path/to/cifar10_split.csv`` (F.2),
``encoder.kind=ng_gnn`` (or ``mlp``, ``nfn_np``, ``nfn_hnp``) for the baselines, ``runtime.resume=runs/cnn_generalization/<id>`` to continue a run;
``--mongo mongodb://host:27017/db`` or ``$DNG_MONGO_URL`` adds MongoDB.
"""
from __future__ import annotations

from sacred.utils import apply_backspaces_and_linefeeds

from dng_tgn.tasks.common import require_data_root
from dng_tgn.tasks.generalization import CNN_ZOO_BUILD, load_cnn_zoo, run_generalization
from dng_tgn.tracking import make_experiment

from .ingredients import data_ingredient, encoder_ingredient, optim_ingredient, runtime_ingredient

data = data_ingredient(split_file=None)  # NFN's split CSV for public zoos; None: <root>/split.csv, else file order
encoder = encoder_ingredient(  # F.2: memory 128, heads of 32, Fourier 128 (F.1.2)
    dng=dict(memory_dim=64, head_dim=16, fourier_size=32, fourier_scale=3.0),
    ng_gnn=dict(hidden_dim=64, num_layers=3, out_dim=64, fourier_size=32, fourier_scale=3.0))
optim = optim_ingredient(lr=1e-3, batch_size=16, epochs=50, patience=15)  # F.2: 1e-4, 128, 200 epochs
runtime = runtime_ingredient()
ex = make_experiment("cnn_generalization", ingredients=[data, encoder, optim, runtime])
ex.captured_out_filter = apply_backspaces_and_linefeeds


@ex.config
def config():
    seed = 0  # batch order and initialisation derive from it
    head = dict(hidden=256, layers=3, dropout=0.0, loss="bce")  # MLP head (F.2: hidden 1024); loss bce | mse


@ex.named_config
def paper():
    """F.2: hidden 128 (message function and GRU), heads of 32, MLP head 3x1024, batch 128, Adam 1e-4, 200 epochs."""
    encoder = dict(dng=dict(memory_dim=128, head_dim=32, fourier_size=128),
                   ng_gnn=dict(hidden_dim=128, num_layers=4, out_dim=128, fourier_size=128))  # same width
    head = dict(hidden=1024)
    optim = dict(lr=1e-4, batch_size=128, epochs=200, patience=20, grad_clip=0.0, log_every=100)
    runtime = dict(eval_batch_size=512)


# The generalization tables' CPU scale (issue #12; `python -m experiments.tables generalization`): a zoo built with
# the builder's `--preset bench`; every method gets this same budget, early stopping on validation τ.
ex.add_named_config("bench", dict(optim=dict(lr=1e-3, batch_size=32, epochs=60, patience=10), runtime=dict(eval_batch_size=256)))


@ex.automain
def main(_run, _config, seed):
    root = require_data_root(_config["data"]["root"], "CNN zoo folder", CNN_ZOO_BUILD)
    zoo = load_cnn_zoo(root, _config["data"]["split_file"], _config["data"]["limit"])
    return run_generalization(run=_run, name="cnn_generalization", data=zoo, seed=seed, encoder=_config["encoder"],
                              optim=_config["optim"], head=_config["head"], runtime=_config["runtime"])
