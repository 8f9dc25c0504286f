"""§6 / §8.1 (Tables 1, 2, 4): INR2JLS, then INR classification from its frozen feature maps.

Phase 1 (``recon``): weight encoder -> Latent Generator -> transposed-conv decoder, MSE to the image each INR
represents (Eq. 7–9; all six views with ``augment=True``, F.3). Phase 2 (``cls``): encoder and Latent Generator
frozen, the F.1.2 classifier learns labels from the feature maps. See :mod:`dng_tgn.tasks.inr2jls`.

Data: a SIREN INR set in NFN's layout (``randinit_smaller_{label}s/net{idx}.pth``), as written by
``python -m dng_tgn.data.build_inrs`` or NFN's public tarballs. The reconstruction target is the image the
INR represents: the SIREN evaluated on NFN's coordinate grid (:mod:`dng_tgn.data.rendered_inrs`). Image size
comes from the builder's meta.json, else from ``data.image_shape`` (e.g. [1, 28, 28] for NFN's MNIST).

Variants (``variant=...``, Table 2; :class:`dng_tgn.tasks.inr2jls.INRVariant`): ``inr2jls`` (the default),
``encoder_only`` (encoder + MLP on s(t^L), trained end to end on labels; with ``encoder.kind=nfn_np|nfn_hnp``
this is the NFN rows of Table 1, as NFN classifies INRs end to end), ``no_latent_gen`` (MLP decoder from s(t^L),
then an MLP on the frozen s(t^L)), ``inr2inr`` (s(t^L) -> SIREN weights, loss on the image they render; then an
MLP on the frozen s(t^L); needs ``model.augment=False``). ``model.noise_std=0.06`` adds F.3's Gaussian noise to
the training targets (Table 4 "Adding Noise"; with ``model.augment=True`` the views are of the noisy image).

Run: ``python -m experiments.inr2jls with data.root=/path/to/inrs`` (small CPU default),
``... with paper data.root=...`` (F.1.2/F.1.3; add ``cifar`` for CIFAR's conv dropout 0.2),
``encoder.kind=ng_gnn``, ``runtime.resume=runs/inr2jls/<id>``; ``--mongo URL`` or ``$DNG_MONGO_URL`` adds MongoDB.
"""
from __future__ import annotations

from sacred.utils import apply_backspaces_and_linefeeds

from dng_tgn.tasks.inr2jls import INRVariant, run_inr2jls
from dng_tgn.tracking import make_experiment

from .ingredients import ConfigChoiceError, data_ingredient, encoder_ingredient, optim_ingredient, runtime_ingredient

data = data_ingredient(
    prefix="randinit_smaller",  # NFN's folder prefix
    extra_aug=0,  # extra training SIRENs per image to include (F.1.1: 10 copies; must exist on disk)
    image_shape=None,  # (C, H, W); None: from the builder's meta.json
    w0=30.0,  # SIREN frequency, to render the represented images
    load_workers=0,  # DataLoader workers reading the .pth files once at start (paper scale: 450k files)
)
encoder = encoder_ingredient(  # F.1.2: memory 512, Fourier 128, scale 3; NG-GNN's out_dim plays s(t^L)
    # gru_input "node" (the authors' GRU order) won the INR ablation on validation (experiments/tables.py
    # PREVIOUS_DEFAULTS), so INR runs default to it; other tasks keep the package default
    dng=dict(memory_dim=64, fourier_size=32, fourier_scale=3.0, gru_input="node"),
    ng_gnn=dict(hidden_dim=64, num_layers=3, out_dim=64, fourier_size=32, fourier_scale=3.0),
    # NFN's INR classifier (Zhou et al.: 3 equivariant layers of 512 channels on 128 Fourier features of scale 10 of
    # the *raw* weights, `normalize: false` in their classify_siren config) at the same 1/8 width as the DNG memory;
    # its pooled vector -> Linear(out_dim), then the variant's MLP. Raw weights were also better on validation here
    # (HNP, 2,000 Fashion-MNIST INRs, 300 steps: val accuracy 0.18 raw vs 0.13 standardised)
    nfn=dict(channels=[64, 64, 64], fourier=[32, 10.0], out_dim=64, head_layers=0, pool="hnp", dropout=0.0,
             normalize=False))
# F.1.3: reconstruction Adam 1e-4, batch 64, 400k steps; classification AdamW 1e-4, batch 128, 200k steps
recon = optim_ingredient("recon", steps=600, batch_size=32, lr=1e-3, eval_every=100)
cls = optim_ingredient("cls", steps=600, batch_size=64, lr=1e-3, weight_decay=1e-2, eval_every=100)
runtime = runtime_ingredient()
ex = make_experiment("inr2jls", ingredients=[data, encoder, recon, cls, runtime])
ex.captured_out_filter = apply_backspaces_and_linefeeds


@ex.config
def config():
    seed = 0  # batch order and initialisation derive from it
    variant = "inr2jls"  # "inr2jls", "encoder_only", "no_latent_gen" or "inr2inr" (Table 2; see the module docstring)
    # INR2JLS's sizes (F.1.2: spatial 512, latent 128, decoder 256); generator_hidden None: spatial_dim
    model = dict(spatial_dim=64, latent_dim=32, generator_hidden=None, decoder_channels=64,
                 augment=False,  # augment: F.3 rotation & flip views (6x spatial vectors)
                 noise_std=0.0,  # F.3 Gaussian noise on the training targets, std in [0, 1]-image units (paper: 0.06)
                 decoder_hidden=512)  # hidden width of the MLP decoders of no_latent_gen / inr2inr (the authors' 512)
    # F.1.2's classifier: two convs (width unstated; 64, see `paper`) + 3-layer MLP (F.1.2: hidden 256);
    # conv dropout 0.5 for MNIST/FashionMNIST, 0.2 for CIFAR
    classifier = dict(conv_channels=64, hidden=64, conv_dropout=0.5, mlp_dropout=0.5)
    cache_features = True  # compute the frozen feature maps once (exact: the frozen encoder is deterministic)
    num_figure_images = 8


@ex.named_config
def paper():
    """F.1.2 / F.1.3 (MNIST / FashionMNIST; add `cifar` for CIFAR-10/100)."""
    data = dict(extra_aug=10)
    encoder = dict(dng=dict(memory_dim=512, fourier_size=128),
                   ng_gnn=dict(hidden_dim=128, num_layers=4, out_dim=512, fourier_size=128),  # as wide as s(t^L)
                   nfn=dict(channels=[512, 512, 512], fourier=[128, 10.0], out_dim=512))
    model = dict(spatial_dim=512, latent_dim=128, decoder_channels=256, augment=True)
    # F.1.2 gives the MLP's hidden width (256) but not the convs' width; with 64 channels the inference model
    # (encoder + Latent Generator + classifier) has 5.5M / 6.4M parameters (MNIST / CIFAR-100 with F_aug),
    # the closest to F.1.2's 5M / 6.7M (256 channels would give 9.8M / 11.4M)
    classifier = dict(conv_channels=64, hidden=256)
    recon = dict(steps=400_000, batch_size=64, lr=1e-4, eval_every=5_000, grad_clip=0.0, log_every=100)
    cls = dict(steps=200_000, batch_size=128, lr=1e-4, eval_every=5_000, grad_clip=0.0, log_every=100)
    cache_features = False  # 450k training INRs x 6·128·7·7 floats would not fit in memory as a cache
    runtime = dict(eval_batch_size=512)


# The INR tables' CPU scale (issue #11; `python -m experiments.tables inr`): a `build_inrs --preset bench` folder
# (5,000 training images + one augmented SIREN copy each, 500 val, 1,000 test), F.3's six image views, and a
# step budget that keeps one run to minutes on 2 cores; early stopping on validation in both phases.
BENCH = dict(
    data=dict(extra_aug=1),
    model=dict(augment=True),
    # lr 3e-3 for both phases since 2026-12-02: inr2jls's learning-rate grid chose it on validation accuracy
    # (0.41 / 0.44 / 0.496 at 3e-4 / 1e-3 / 3e-3; experiments/tables.py INR_LR_GRID); runs at the earlier 1e-3 are
    # kept apart (tables.PREVIOUS_DEFAULTS "bench_lr_1e-3")
    recon=dict(steps=2000, batch_size=32, lr=3e-3, eval_every=250, patience=4),
    cls=dict(steps=2000, batch_size=64, lr=3e-3, weight_decay=1e-2, eval_every=250, patience=4),
    classifier=dict(conv_channels=64, hidden=64, conv_dropout=0.5, mlp_dropout=0.5),
)
ex.add_named_config("bench", BENCH)


@ex.named_config
def cifar():
    """F.1.2: CIFAR-10/100 use conv dropout 0.2 in the classifier."""
    classifier = dict(conv_dropout=0.2)


@ex.config_hook
def check_variant(config, command_name, logger):
    """A bad ``variant`` fails before any run directory exists, like a bad ``encoder.kind``."""
    try:
        INRVariant.parse(config["variant"])
    except ValueError as e:
        raise ConfigChoiceError(f"variant={config['variant']!r}: {e}") from None
    return {}


@ex.automain
def main(_run, _config, seed, cache_features, num_figure_images, variant):
    c = _config
    return run_inr2jls(run=_run, seed=seed, data=c["data"], encoder=c["encoder"], model=c["model"],
                       classifier=c["classifier"], recon=c["recon"], cls=c["cls"], runtime=c["runtime"],
                       cache_features=cache_features, num_figure_images=num_figure_images, variant=variant)
