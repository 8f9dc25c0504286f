"""App. E.2 / Table 7: predict a Vision Transformer's test accuracy from its weights.

Data: a ViT zoo folder (``meta.json`` with the SimpleViT kwargs, ``models.pt``, ``metrics.csv``) as written by
``python -m dng_tgn.data.build_vit_zoo``; split 80/10/10 as in App. E.2. Each SimpleViT is converted with the
attention construction of App. E.2: a 2-block SimpleViT is a dynamic graph of 12 timestamps.

Model: as for CNNs (§8.2, F.2), the DNG-Encoder's memories of the output nodes -> 3-layer MLP head -> one
logit, BCE on the accuracy. ``encoder.kind=ng_gnn`` swaps in the static NG-GNN baseline. Metrics: Kendall τ
(Table 7) and R².

Run: ``python -m experiments.vit_generalization with data.root=/path/to/vit_zoo`` (small CPU default),
``... with paper data.root=...`` (F.2's hyperparameters, which App. E.2 says it follows), ``encoder.kind=ng_gnn``,
``runtime.resume=runs/vit_generalization/<id>``; ``--mongo URL`` or ``$DNG_MONGO_URL`` adds MongoDB.
"""
from __future__ import annotations

from sacred.utils import apply_backspaces_and_linefeeds

from dng_tgn.tasks.common import require_data_root
from dng_tgn.tasks.generalization import VIT_ZOO_BUILD, load_vit_zoo, run_generalization
from dng_tgn.tracking import make_experiment

from .ingredients import data_ingredient, encoder_ingredient, optim_ingredient, runtime_ingredient

data = data_ingredient()
encoder = encoder_ingredient(
    dng=dict(memory_dim=32, head_dim=16, fourier_size=16, fourier_scale=3.0),
    ng_gnn=dict(hidden_dim=32, num_layers=3, out_dim=32, fourier_size=16, fourier_scale=3.0))
optim = optim_ingredient(lr=1e-3, batch_size=16, epochs=20, patience=10)  # F.2: 1e-4, 128, 200 epochs
runtime = runtime_ingredient(eval_batch_size=32)
ex = make_experiment("vit_generalization", ingredients=[data, encoder, optim, runtime])
ex.captured_out_filter = apply_backspaces_and_linefeeds


@ex.config
def config():
    seed = 0  # batch order and initialisation derive from it
    head = dict(hidden=256, layers=3, dropout=0.0, loss="bce")  # MLP head (F.2: hidden 1024); loss bce | mse


@ex.named_config
def paper():
    """App. E.2 follows §8.2: F.2's DNG-Encoder (hidden 128), MLP head 3x1024, batch 128, Adam 1e-4, 200 epochs."""
    encoder = dict(dng=dict(memory_dim=128, head_dim=32, fourier_size=128),
                   ng_gnn=dict(hidden_dim=128, num_layers=4, out_dim=128, fourier_size=128))  # same width
    head = dict(hidden=1024)
    optim = dict(lr=1e-4, batch_size=128, epochs=200, patience=20, grad_clip=0.0, log_every=100)
    runtime = dict(eval_batch_size=256)


# The generalization tables' CPU scale (issue #12; `python -m experiments.tables generalization`): a zoo built with
# the builder's `--preset bench`; every method gets this same budget, early stopping on validation τ.
ex.add_named_config("bench", dict(optim=dict(lr=1e-3, batch_size=32, epochs=60, patience=10), runtime=dict(eval_batch_size=256)))


@ex.automain
def main(_run, _config, seed):
    root = require_data_root(_config["data"]["root"], "ViT zoo folder", VIT_ZOO_BUILD)
    zoo = load_vit_zoo(root, _config["data"]["limit"])
    return run_generalization(run=_run, name="vit_generalization", data=zoo, seed=seed, encoder=_config["encoder"],
                              optim=_config["optim"], head=_config["head"], runtime=_config["runtime"])
