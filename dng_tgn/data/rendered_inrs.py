"""INR sets for INR2JLS: the SIRENs' weights, their labels, and the images they represent (rendered once).

The INR files do not carry their source image, and a fitted SIREN's output is by definition the signal its
weights encode, so the reconstruction target is the SIREN evaluated on NFN's coordinate grid ('ij' grid in
[-1, 1], w0 = 30); for a well-fitted INR it matches the source image to its PSNR (see the builder's psnr.csv).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .siren_fit import NFN_KEYS, coord_grid, siren_forward
from .state_dict_set import StateDictSet

__all__ = ["INRSet", "render_images", "resolve_image_shape"]


class INRSet:
    """INR weights (a :class:`StateDictSet`), their labels, and the images they represent."""

    def __init__(self, weights: StateDictSet, images: torch.Tensor):
        self.weights, self.images = weights, images
        self.labels = weights.targets.long()

    @classmethod
    def from_dataset(cls, dataset, image_shape, w0: float, desc: str, limit: int | None = None,
                     num_workers: int = 0) -> "INRSet":
        weights = StateDictSet.from_dataset(dataset, desc=desc, limit=limit, num_workers=num_workers)
        return cls(weights, render_images(weights.params, image_shape, w0))

    def __len__(self):
        return len(self.weights)


def render_images(params: dict[str, torch.Tensor], image_shape, w0: float, chunk: int = 2048) -> torch.Tensor:
    """Evaluate every SIREN on NFN's coordinate grid: (N, C, H, W), the images the INRs represent."""
    c, h, w = image_shape
    coords = coord_grid(h, w, "ij")
    stacked = [params[k] for k in NFN_KEYS]
    out_ch = stacked[-1].shape[1]
    if out_ch != c:
        raise ValueError(f"the SIRENs have {out_ch} output channels but image_shape says C={c}")
    parts = []
    with torch.no_grad():
        for s in range(0, stacked[0].shape[0], chunk):
            y = siren_forward([p[s:s + chunk] for p in stacked], coords, w0)  # (n, H·W, C), pixel (i, j) at i·W + j
            parts.append(y.reshape(-1, h, w, c).permute(0, 3, 1, 2).contiguous())
    return torch.cat(parts)


def resolve_image_shape(root: Path, image_shape) -> tuple[int, int, int]:
    """``image_shape`` if given, else the builder's ``meta.json``; an error says what to set otherwise."""
    if image_shape is not None:
        shape = tuple(int(v) for v in image_shape)
    else:
        meta = root / "meta.json"
        from .inr_datasets import read_inr_meta

        shape = tuple(read_inr_meta(meta).get("image_shape") or ()) if meta.is_file() else ()
        if not shape:
            raise ValueError(f"{root} has no meta.json with image_shape; set image_shape=[C,H,W] "
                             f"(e.g. [1,28,28] for MNIST/FashionMNIST, [3,32,32] for CIFAR)")
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {shape}")
    return shape
