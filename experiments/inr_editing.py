"""INR editing (NFN's SIREN stylization; the DNG authors' ``stylize_siren.py``): dilate / erode / gradient an
MNIST SIREN's image, with a DNG weight-space edit, NFN's equivariant edit, the identity, or the authors'
encoder -> image decoder. See :mod:`dng_tgn.tasks.inr_editing` (methods) and :mod:`dng_tgn.data.image_edits`
(the exact structuring elements).

Data: a SIREN INR set in NFN's layout, e.g. the editing bench set
``python -m dng_tgn.data.build_inrs --dataset mnist --n-train 1000 --n-val 200 --n-test 300 --aug-copies 0
--out .data/editing/mnist_inrs``.

Run: ``python -m experiments.inr_editing with data.root=.data/editing/mnist_inrs edit=erode method=nfn``;
``method`` in dng | nfn | identity | dng_image_decoder, ``edit`` in dilate | erode | gradient;
``runtime.resume=runs/inr_editing/<id>``; ``--mongo URL`` or ``$DNG_MONGO_URL`` adds MongoDB. All methods, edits
and seeds, resumably, with the results table: ``python -m experiments.inr_editing_grid``.
"""
from __future__ import annotations

from sacred.utils import apply_backspaces_and_linefeeds

from dng_tgn.baselines.nfn import NFNMode
from dng_tgn.data.image_edits import ImageEdit
from dng_tgn.tasks.inr_editing import EditingMethod, run_inr_editing
from dng_tgn.tracking import make_experiment

from .ingredients import ConfigChoiceError, data_ingredient, encoder_ingredient, optim_ingredient, runtime_ingredient

data = data_ingredient(
    prefix="randinit_smaller",  # NFN's folder prefix
    image_shape=None,  # (C, H, W); None: from the builder's meta.json
    w0=30.0,  # SIREN frequency: renders the INRs and the edited SIRENs
    load_workers=0,  # DataLoader workers reading the .pth files once at start
)
encoder = encoder_ingredient(dng=dict(memory_dim=32, fourier_size=16, fourier_scale=3.0))  # F.1.2: 512, 128, 3
# NFN's stylization: Adam, batch 32, 50k steps; the authors': Adam 1e-4, batch 64, 400k steps (GPU budgets)
# The defaults are the bench scale (experiments/inr_editing_grid.py): a few minutes per run on 2 busy cores.
optim = optim_ingredient(steps=250, batch_size=16, lr=1e-3, eval_every=50, patience=None, grad_clip=1.0)
runtime = runtime_ingredient()
ex = make_experiment("inr_editing", ingredients=[data, encoder, optim, runtime])
ex.captured_out_filter = apply_backspaces_and_linefeeds


@ex.config
def config():
    seed = 0  # initialisation and batch order
    edit = "dilate"  # dilate (3x3 max), erode (2x2 min), gradient (2x2 max - min), see dng_tgn.data.image_edits
    method = "dng"  # dng | nfn | identity | dng_image_decoder
    dng_editor = dict(hidden=32, weight_fourier=16, fourier_scale=3.0, out_scale=0.01)  # per-edge delta heads
    # NFN's stylization net: HNP, 3 hidden layers of 128 channels, Gaussian Fourier input features, out scale 0.01
    nfn = dict(hidden=32, depth=3, mode="hnp", fourier_size=16, fourier_scale=3.0, out_scale=0.01)
    # dng_image_decoder: INR2JLS's Latent Generator + decoder (the authors': latent 128, 49 vectors, 256 channels)
    decoder = dict(spatial_dim=32, latent_dim=32, generator_hidden=None, decoder_channels=32)
    num_figure_images = 8
    examples_out = None  # .npz of the first test inputs / targets / outputs (the grid's figure)


@ex.named_config
def paper():
    # the authors' stylize_siren.py sizes (n_dim 512, f_dim 128, latent 128; Adam 1e-4, batch 64, 400k steps,
    # validation every 1000 steps) and NFN's stylization net (HNP, 3 x 128 channels); for a GPU
    encoder = dict(dng=dict(memory_dim=512, fourier_size=128))
    dng_editor = dict(hidden=128)
    nfn = dict(hidden=128)
    decoder = dict(spatial_dim=512, latent_dim=128, decoder_channels=256)
    optim = dict(steps=400_000, batch_size=64, lr=1e-4, eval_every=1000, grad_clip=0.0, log_every=100)
    runtime = dict(eval_batch_size=512)


@ex.config_hook
def check_choices(config, command_name, logger):
    """A bad choice fails before any run directory exists; the config keeps the strings (run_inr_editing parses)."""
    checks = (("edit", config["edit"], ImageEdit.parse), ("method", config["method"], EditingMethod.parse),
              ("nfn.mode", config["nfn"].get("mode", NFNMode.HNP.value), NFNMode.parse))
    for key, value, parse in checks:
        try:
            parse(value)
        except ValueError as e:
            raise ConfigChoiceError(f"{key}={value!r}: {e}") from None
    return {}


@ex.automain
def main(_run, _config, seed, edit, method, num_figure_images, examples_out):
    c = _config
    return run_inr_editing(run=_run, seed=seed, edit=edit, method=method, data=c["data"], encoder=c["encoder"],
                           dng_editor=c["dng_editor"], nfn=c["nfn"], decoder=c["decoder"], optim=c["optim"],
                           runtime=c["runtime"], num_figure_images=num_figure_images, examples_out=examples_out)
