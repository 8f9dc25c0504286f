"""The CNN Wild Park (§8.2's unseen-architecture task): predict the test accuracy of CNNs of many architectures.

Data: a folder written by ``python -m dng_tgn.data.build_wild_park`` (depth 2-5, widths, 3x3/5x5 kernels, with and
without residual connections, four activations). One encoder is trained on networks of the *seen* architectures;
the result reports τ on held-out networks of seen architectures (``test``) and on architectures whose depth or
width no training network has (``test_unseen``).

Model: as for the Small CNN Zoo (F.2): DNG-Encoder (Eq. 5 heads, one per kernel slot of the largest kernel, K = 25),
the output nodes' memories concatenated, MLP head -> one logit, BCE on the accuracy; early stopping on validation
τ. ``encoder.kind=ng_gnn`` runs NG-GNN on the same mixed batches. Flat-MLP, NFN and weight-statistics baselines
need one architecture and cannot run here (the tables mark them so).

Run: ``python -m experiments.wild_park_generalization with data.root=/path/to/park``; ``bench`` is the tables'
budget (the same as the other generalization experiments').
"""
from __future__ import annotations

from sacred.utils import apply_backspaces_and_linefeeds

from dng_tgn.tasks.common import require_data_root
from dng_tgn.tasks.generalization import WILD_PARK_BUILD, load_wild_park, run_generalization
from dng_tgn.tracking import make_experiment

from .ingredients import data_ingredient, encoder_ingredient, optim_ingredient, runtime_ingredient

data = data_ingredient()
encoder = encoder_ingredient(  # the CNN zoo experiment's sizes
    dng=dict(memory_dim=64, head_dim=16, fourier_size=32, fourier_scale=3.0),
    ng_gnn=dict(hidden_dim=64, num_layers=3, out_dim=64, fourier_size=32, fourier_scale=3.0))
optim = optim_ingredient(lr=1e-3, batch_size=16, epochs=50, patience=15)
runtime = runtime_ingredient()
ex = make_experiment("wild_park_generalization", ingredients=[data, encoder, optim, runtime])
ex.captured_out_filter = apply_backspaces_and_linefeeds


@ex.config
def config():
    seed = 0  # batch order and initialisation derive from it
    head = dict(hidden=256, layers=3, dropout=0.0, loss="bce")  # MLP head (F.2: hidden 1024); loss bce | mse


# the generalization tables' CPU scale: the same budget as cnn_generalization's and vit_generalization's bench
ex.add_named_config("bench", dict(optim=dict(lr=1e-3, batch_size=32, epochs=60, patience=10), runtime=dict(eval_batch_size=256)))


@ex.automain
def main(_run, _config, seed):
    root = require_data_root(_config["data"]["root"], "Wild Park folder", WILD_PARK_BUILD)
    park = load_wild_park(root, _config["data"]["limit"])
    return run_generalization(run=_run, name="wild_park_generalization", data=park, seed=seed,
                              encoder=_config["encoder"], optim=_config["optim"], head=_config["head"],
                              runtime=_config["runtime"])
