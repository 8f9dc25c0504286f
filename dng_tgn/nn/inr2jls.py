"""INR2JLS (paper §6, Fig. 4, App. F.1.2, F.3): a joint latent space of INR weights and the images they encode.

Pipeline, for a batch of INRs ``W``::

    s(t^L)  = weight encoder(W)                                   DNG-Encoder memory of the output node(s)
    F^n     = φ_g(Concat(s(t^L), θ_s^n)),  n = 1..N              (Eq. 7), N = h_s·w_s learnable θ_s^n
    F       = reshape(F^1..F^N) ∈ R^{h_s × w_s × d}
    Î       = DEC(F)                                              two ConvTranspose2d (k4, s2, p1): 256, C
    L       = MSE(Î, I_img)                                       (Eq. 8, 9)

With the F.3 augmentation there are ``6·N`` spatial vectors: view ``v`` of the image (identity, rotations by
90°/180°/270° clockwise, horizontal and vertical flip) is decoded from its own ``N`` latent vectors, and the
six ``h_s × w_s × d`` maps are stacked along channels into ``F_aug ∈ R^{h_s × w_s × 6d}`` (§8.1).

The encoder is any :class:`~dng_tgn.nn.factory.WeightEncoder`, so the same model runs on the static NG-GNN
baseline. After reconstruction training the encoder and Latent Generator are frozen and
:class:`FeatureMapClassifier` (F.1.2: two conv layers, a 3-layer MLP, hidden 256, dropout) learns labels
from ``F`` (or ``F_aug``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["AUGMENTATION_VIEWS", "augment_views", "LatentGenerator", "ConvDecoder", "INR2JLS", "INR2JLSOutput",
           "MaskDropout", "FeatureMapClassifier"]


def _identity(x):
    return x


def _rot90_cw(x):
    return torch.rot90(x, k=-1, dims=(-2, -1))


def _rot180(x):
    return torch.rot90(x, k=2, dims=(-2, -1))


def _rot270_cw(x):
    return torch.rot90(x, k=1, dims=(-2, -1))


def _hflip(x):
    return torch.flip(x, dims=(-1,))


def _vflip(x):
    return torch.flip(x, dims=(-2,))


# §8.1 / F.3: the original plus five transformations, "clockwise rotations of 90, 180 and 270 degrees, as well
# as horizontal and vertical flips". Order fixes which channel block of F_aug is which view.
AUGMENTATION_VIEWS: tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...] = (
    ("identity", _identity), ("rot90", _rot90_cw), ("rot180", _rot180), ("rot270", _rot270_cw),
    ("hflip", _hflip), ("vflip", _vflip),
)


def augment_views(images: torch.Tensor, num_views: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, V, C, H, W): the first ``num_views`` views of F.3 (1 = no augmentation)."""
    if not 1 <= num_views <= len(AUGMENTATION_VIEWS):
        raise ValueError(f"num_views must be 1..{len(AUGMENTATION_VIEWS)}, got {num_views}")
    if num_views > 1 and images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation views need square images, got {tuple(images.shape[-2:])}")
    return torch.stack([fn(images) for _, fn in AUGMENTATION_VIEWS[:num_views]], dim=1)


class LatentGenerator(nn.Module):
    """φ_g of Eq. 7 over ``num_views · h_s · w_s`` learnable spatial vectors θ_s^n.

    φ_g is a two-layer MLP (the paper fixes only its input and output sizes: F.1.2 uses 512-d spatial vectors
    and 128-d latents). Its first layer acts on ``Concat(s, θ_s^n)``; we evaluate it as ``A s + B θ_s^n``, the
    same linear map split by columns, so the B·N concatenations are never materialised.

    ``forward(s (B, D)) -> (B, V, d, h_s, w_s)``.
    """

    def __init__(self, memory_dim: int, spatial_dim: int = 512, latent_dim: int = 128, grid: tuple[int, int] = (7, 7),
                 num_views: int = 1, hidden_dim: int | None = None):
        super().__init__()
        h, w = grid
        if h < 1 or w < 1:
            raise ValueError(f"grid must be positive, got {grid}")
        hidden_dim = hidden_dim or spatial_dim
        self.grid, self.num_views, self.latent_dim = (h, w), num_views, latent_dim
        # small init: the spatial vectors start as near-equal "positions" and are learned (§6)
        self.spatial = nn.Parameter(torch.randn(num_views * h * w, spatial_dim) * 0.02)
        self.from_memory = nn.Linear(memory_dim, hidden_dim)
        self.from_spatial = nn.Linear(spatial_dim, hidden_dim, bias=False)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(hidden_dim, latent_dim))

    @property
    def num_vectors(self) -> int:
        return self.spatial.shape[0]

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        b = s.shape[0]
        h, w = self.grid
        hidden = self.from_memory(s).unsqueeze(1) + self.from_spatial(self.spatial).unsqueeze(0)  # (B, N, H)
        feats = self.out(hidden)  # (B, V·h·w, d): F^n of Eq. 7
        # F^n is the vector at spatial index n of view v: reshape to (B, V, h, w, d) then channels-first
        return feats.reshape(b, self.num_views, h, w, self.latent_dim).permute(0, 1, 4, 2, 3)


class ConvDecoder(nn.Module):
    """DEC_θ (F.1.2): ConvTranspose2d(d, 256, 4, 2, 1) -> ReLU -> ConvTranspose2d(256, C, 4, 2, 1): ×4 upsampling."""

    def __init__(self, latent_dim: int, out_channels: int, hidden_channels: int = 256):
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, hidden_channels, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(hidden_channels, out_channels, 4, 2, 1),
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


@dataclass
class INR2JLSOutput:
    embedding: torch.Tensor  # (B, D) s(t^L) as read by the weight encoder
    features: torch.Tensor  # (B, V·d, h_s, w_s): F (V = 1) or F_aug (V = 6), channels-first
    reconstruction: torch.Tensor  # (B, V, C, H, W): DEC(F) per view


class INR2JLS(nn.Module):
    """ENC_θ = weight encoder + Latent Generator (Eq. 7, 9); DEC_θ = transposed-conv decoder; MSE loss (Eq. 8).

    Args:
        encoder: a :class:`~dng_tgn.nn.factory.WeightEncoder` (DNG-Encoder or NG-GNN) with ``out_dim``.
        image_shape: (C, H, W) of the images the INRs represent; H and W must be divisible by 4 (the
            decoder doubles the resolution twice), giving the grid h_s × w_s = H/4 × W/4 (7×7 for 28×28,
            8×8 for 32×32, as in F.1.2).
        spatial_dim, latent_dim, generator_hidden: sizes of θ_s^n, F^n and φ_g's hidden layer (512, 128, 512).
        decoder_channels: the first transposed conv's output channels (256).
        num_views: 1 (no augmentation) or up to 6 (F.3: identity, three rotations, two flips).
    """

    def __init__(self, encoder: nn.Module, image_shape: tuple[int, int, int], *, spatial_dim: int = 512,
                 latent_dim: int = 128, generator_hidden: int | None = None, decoder_channels: int = 256,
                 num_views: int = 1):
        super().__init__()
        c, h, w = image_shape
        if h % 4 or w % 4:
            raise ValueError(f"image size {h}x{w} is not divisible by 4; the two stride-2 transposed convs of "
                             f"F.1.2 reconstruct (4·h_s)x(4·w_s) images")
        if not 1 <= num_views <= len(AUGMENTATION_VIEWS):
            raise ValueError(f"num_views must be 1..{len(AUGMENTATION_VIEWS)}, got {num_views}")
        self.image_shape, self.num_views = (c, h, w), num_views
        self.encoder = encoder
        self.generator = LatentGenerator(encoder.out_dim, spatial_dim, latent_dim, (h // 4, w // 4), num_views,
                                         generator_hidden)
        self.decoder = ConvDecoder(latent_dim, c, decoder_channels)

    @property
    def feature_channels(self) -> int:
        return self.num_views * self.generator.latent_dim

    @property
    def grid(self) -> tuple[int, int]:
        return self.generator.grid

    def features(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(s(t^L) (B, D), F or F_aug (B, V·d, h_s, w_s)): what the classifier of §8.1 consumes."""
        s = self.encoder(batch)
        f = self.generator(s)
        return s, f.flatten(1, 2)

    def forward(self, batch) -> INR2JLSOutput:
        s = self.encoder(batch)
        f = self.generator(s)  # (B, V, d, h, w)
        b, v = f.shape[:2]
        # one decoder for every view: each view's d-channel block is a latent map of the same kind (F.3)
        recon = self.decoder(f.flatten(0, 1)).reshape(b, v, *self.image_shape)
        return INR2JLSOutput(s, f.flatten(1, 2), recon)

    def loss(self, out: INR2JLSOutput, images: torch.Tensor) -> torch.Tensor:
        """Eq. 8: MSE between DEC(F) and the image (every view of it, with augmentation)."""
        return torch.mean((out.reconstruction - augment_views(images, self.num_views)) ** 2)


class MaskDropout(nn.Module):
    """Dropout with the same distribution as :class:`torch.nn.Dropout` (each entry kept with probability 1-p and
    scaled by 1/(1-p), a fresh mask per call, from the global RNG), drawn as ``rand >= p`` instead of ``bernoulli_``.

    Why: on CPU ``bernoulli_`` draws entry by entry and took 22 % of a pixel-classifier training step (its conv
    feature maps are 64×64×28×28 per batch); uniform draws are vectorised (2.6x faster dropout forward+backward;
    a whole step 1.40 -> 1.06 s on one thread of a busy 2-core CPU, ``benchmarks/bench_pixel_cnn.py``). On CUDA the
    fused kernel of ``F.dropout`` is used.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.is_cuda:
            return nn.functional.dropout(x, self.p, True)
        mask = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))  # no grad: a constant of the step
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class FeatureMapClassifier(nn.Module):
    """The §8.1 classifier on the frozen feature map (F.1.2).

    Two 3×3 conv layers (``conv_channels``, ReLU, dropout ``conv_dropout``), flatten, then a 3-layer MLP
    with hidden width ``hidden_dim`` and dropout ``mlp_dropout`` between layers. F.1.2: hidden 256 and
    dropout 0.5 everywhere for MNIST/FashionMNIST; conv dropout 0.2 for CIFAR.
    """

    def __init__(self, in_channels: int, grid: tuple[int, int], num_classes: int, *, conv_channels: int = 256,
                 hidden_dim: int = 256, conv_dropout: float = 0.5, mlp_dropout: float = 0.5):
        super().__init__()
        h, w = grid
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, conv_channels, 3, padding=1), nn.ReLU(), MaskDropout(conv_dropout),
            nn.Conv2d(conv_channels, conv_channels, 3, padding=1), nn.ReLU(), MaskDropout(conv_dropout),
        )
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(conv_channels * h * w, hidden_dim), nn.ReLU(), nn.Dropout(mlp_dropout),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(), nn.Dropout(mlp_dropout),
            nn.Linear(hidden_dim, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.convs(features))
