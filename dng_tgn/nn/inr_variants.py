"""The INR-classification variants of Table 2 and Table 4 beside INR2JLS (§9.1–9.3, F.3).

* :class:`EncoderClassifier`, Table 2 "DNG-Encoder" (§9.3, first ablation): no decoder at all; an MLP classifier
  reads ``s(t^L)`` and encoder and classifier are trained end to end with cross-entropy. The same model with NFN's
  encoder is how the NFN paper classifies INRs (its invariant network ends in a classifier, trained on labels),
  which is what Table 1's NFN row reports.
* :class:`MLPDecoderAutoencoder`, Table 2 "INR2JLS w/o Latent Generator" (§9.3, second ablation): the Latent
  Generator is removed and an MLP decoder maps the node memory straight to the image's pixels.
* :class:`INR2INR`, Table 2 "INR-INR" (§9.2): two MLPs map the node memory to the weights and the biases of a
  SIREN; the loss compares the image the *reconstructed* SIREN renders with the image (NFT's reconstruction loss).

For the last two, as in the paper, the encoder trained by reconstruction is then frozen and "an MLP is employed
to classify the INR based on the node memory": their :meth:`features` return ``s(t^L)`` twice, so the task's
feature cache and classifier read the memory where INR2JLS's read the feature map ``F``.

:func:`noisy_targets` is F.3's other augmentation (Table 4 "Adding Noise"): Gaussian noise on the training
reconstruction targets.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import nn

from ..data.siren_fit import coord_grid, siren_forward
from .heads import MLPHead
from .inr2jls import AUGMENTATION_VIEWS, INR2JLSOutput, LatentGenerator, augment_views

__all__ = ["EncoderClassifier", "MLPDecoderAutoencoder", "INR2INR", "noisy_targets"]


def noisy_targets(images: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """F.3's noise augmentation: ``clamp(x + N(0, σ²))`` with σ = ``std`` in the units of a [0, 1] image.

    F.3 adds noise "with a mean of 0 and a standard deviation of 0.06" to the original image; the authors' code adds
    it to the [0, 1] image, clamps to [0, 1] and only then scales to [-1, 1]. Our targets are already in [-1, 1], so
    the same noise is ``2σ`` there and the clamp is to [-1, 1]. Fresh noise is drawn on every call (every training
    step), from the global RNG unless ``generator`` is given; validation and test targets stay clean.
    """
    if not math.isfinite(std) or std < 0:
        raise ValueError(f"noise std must be a finite number >= 0, got {std}")
    if std == 0:
        return images
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype, device="cpu").to(images.device)
    return (images + 2.0 * std * noise).clamp(-1.0, 1.0)


class EncoderClassifier(nn.Module):
    """Weight encoder -> F.1.2's three-layer MLP on its embedding (``s(t^L)`` for the DNG-Encoder): class logits.

    ``forward(inputs) -> (B, num_classes)``; trained end to end. ``hidden_dim`` defaults to F.1.2's classifier width
    256, ``dropout`` 0.5 between layers. ``experiments/inr2jls.py`` passes its ``classifier.hidden`` instead: 64 at
    the default and ``bench`` scales, 256 in ``paper``. (The authors' encoder-only script uses ``cls_dim`` 128 and
    dropout 0.5, ``../shared/peers.md``; no config here uses 128.)
    """

    def __init__(self, encoder: nn.Module, num_classes: int, hidden_dim: int = 256, dropout: float = 0.5):
        super().__init__()
        self.encoder = encoder
        self.head = MLPHead(encoder.out_dim, num_classes, hidden_dim=hidden_dim, num_layers=3, dropout=dropout)

    def forward(self, inputs) -> torch.Tensor:
        return self.head(self.encoder(inputs))


class _ReconstructionBase(nn.Module):
    """What the reconstruction phase needs of a model: ``forward -> INR2JLSOutput``, ``loss``, ``features``."""

    num_views: int
    image_shape: tuple[int, int, int]

    def features(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s(t^L), s(t^L))``: the frozen variants are classified from the node memory itself (§9.2, §9.3)."""
        s = self.encoder(inputs)
        return s, s

    def loss(self, out: INR2JLSOutput, images: torch.Tensor) -> torch.Tensor:
        """Eq. 8's pixel MSE (against every requested view of the image)."""
        return torch.mean((out.reconstruction - augment_views(images, self.num_views)) ** 2)


class MLPDecoderAutoencoder(_ReconstructionBase):
    """INR2JLS without the Latent Generator (§9.3): ``s(t^L)`` -> MLP -> pixels of every view.

    The authors' ablation decodes with ``Linear(D, 512) -> ReLU -> Linear(512, H·W)``; here the output layer gives
    ``V·C·H·W`` pixels so that the ablation keeps INR2JLS's targets (all ``num_views`` F.3 views) and removes
    only the Latent Generator (and with it the spatial decoder it feeds).
    """

    def __init__(self, encoder: nn.Module, image_shape: tuple[int, int, int], *, hidden_dim: int = 512,
                 num_views: int = 1):
        super().__init__()
        if not 1 <= num_views <= len(AUGMENTATION_VIEWS):
            raise ValueError(f"num_views must be 1..{len(AUGMENTATION_VIEWS)}, got {num_views}")
        self.encoder, self.image_shape, self.num_views = encoder, tuple(image_shape), num_views
        self.decoder = nn.Sequential(nn.Linear(encoder.out_dim, hidden_dim), nn.ReLU(),
                                     nn.Linear(hidden_dim, num_views * math.prod(image_shape)))

    def forward(self, inputs) -> INR2JLSOutput:
        s = self.encoder(inputs)
        recon = self.decoder(s).reshape(s.shape[0], self.num_views, *self.image_shape)
        return INR2JLSOutput(s, s, recon)


class INR2INR(_ReconstructionBase):
    """The INR-to-INR framework of §9.2: node memory -> SIREN weights and biases -> the image that SIREN renders.

    ``s(t^L)`` goes through a Latent Generator with one spatial vector (the authors' ``latent_size`` 1, i.e. one
    ``Concat(s, θ) -> Linear -> ReLU -> Linear`` latent of ``latent_dim``) and two MLPs (``Linear -> ReLU -> Linear ->
    ReLU -> Linear``, hidden ``hyper_hidden``), one for all weights and one for all biases of the SIREN. The
    reconstructed SIREN is evaluated on NFN's coordinate grid (w0 on every sine layer, NFN's convention) and the loss
    is the pixel MSE to the image (the authors' default ``target='img'``, NFT's loss).

    One departure, for trainability, not capacity: the MLPs output *standardised* parameters, mapped back with one
    mean and one standard deviation per parameter tensor measured on the training INRs (:meth:`set_parameter_stats`).
    Raw outputs of a freshly initialised MLP are ~10x larger than SIREN weights, and sin(30·x) of them is noise with
    no useful gradient; an affine output layer could learn the same map, so the model class is unchanged.

    Args:
        param_shapes: ``(key, shape per network)`` of the SIREN's six tensors in NFN order (w1, b1, w2, b2, w3, b3).
        image_shape: (C, H, W) rendered; only one view (the SIREN's own image) exists.
    """

    def __init__(self, encoder: nn.Module, param_shapes: Sequence[tuple[str, Sequence[int]]],
                 image_shape: tuple[int, int, int], *, latent_dim: int = 256, generator_hidden: int = 1024,
                 hyper_hidden: int = 512, w0: float = 30.0):
        super().__init__()
        shapes = [(k, tuple(int(d) for d in s)) for k, s in param_shapes]
        if len(shapes) != 6 or any(len(s) != (2 if i % 2 == 0 else 1) for i, (_, s) in enumerate(shapes)):
            raise ValueError(f"INR2INR reconstructs 3-layer SIRENs: six tensors (weight, bias) x 3 in order, got "
                             f"{[(k, s) for k, s in shapes]}")
        if shapes[-1][1][0] != image_shape[0]:
            raise ValueError(f"the SIRENs have {shapes[-1][1][0]} outputs but image_shape says C={image_shape[0]}")
        self.encoder, self.image_shape, self.num_views, self.w0 = encoder, tuple(image_shape), 1, float(w0)
        self.param_shapes = shapes
        self.generator = LatentGenerator(encoder.out_dim, encoder.out_dim, latent_dim, (1, 1), 1, generator_hidden)
        n_w = sum(math.prod(s) for i, (_, s) in enumerate(shapes) if i % 2 == 0)
        n_b = sum(math.prod(s) for i, (_, s) in enumerate(shapes) if i % 2 == 1)
        self.weights_decoder = MLPHead(latent_dim, n_w, hidden_dim=hyper_hidden, num_layers=3)
        self.biases_decoder = MLPHead(latent_dim, n_b, hidden_dim=hyper_hidden, num_layers=3)
        self.register_buffer("param_stats", torch.tensor([[0.0, 1.0]] * 6))  # (mean, std) per tensor
        self.register_buffer("coords", coord_grid(image_shape[1], image_shape[2], "ij"))

    @torch.no_grad()
    def set_parameter_stats(self, params: Mapping[str, torch.Tensor]) -> None:
        """Per-tensor mean and std of the *training* SIRENs (stacked ``params``; the key names of ``param_shapes``)."""
        rows = []
        for k, _ in self.param_shapes:
            if k not in params:
                raise KeyError(f"{k} is not among the parameters {sorted(params)}")
            v = params[k].double()
            std = float(v.std())
            rows.append([float(v.mean()), std if std > 1e-8 else 1.0])
        self.param_stats.copy_(torch.tensor(rows, dtype=self.param_stats.dtype))

    def siren_parameters(self, inputs) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(s(t^L), [w1, b1, w2, b2, w3, b3])``: the node memory and the SIREN reconstructed from it."""
        s = self.encoder(inputs)
        z = self.generator(s).flatten(1)  # (B, latent_dim): the single latent vector
        flat = {0: self.weights_decoder(z), 1: self.biases_decoder(z)}
        offsets, out = [0, 0], []
        for i, (_, shape) in enumerate(self.param_shapes):
            kind, n = i % 2, math.prod(shape)
            part = flat[kind][:, offsets[kind]:offsets[kind] + n].reshape(-1, *shape)
            offsets[kind] += n
            out.append(part * self.param_stats[i, 1] + self.param_stats[i, 0])
        return s, out

    def forward(self, inputs) -> INR2JLSOutput:
        s, params = self.siren_parameters(inputs)
        c, h, w = self.image_shape
        y = siren_forward(params, self.coords, self.w0)  # (B, H·W, C), pixel (i, j) at i·W + j
        recon = y.reshape(-1, h, w, c).permute(0, 3, 1, 2).unsqueeze(1)  # (B, 1, C, H, W)
        return INR2JLSOutput(s, s, recon)
