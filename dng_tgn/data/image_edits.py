"""Morphological image edits for INR editing (NFN's SIREN stylization task and the DNG authors' variant of it).

Each edit maps an image in [-1, 1] (a SIREN's rendering, clipped to [-1, 1] first) to its edited version in the
same scale. The public code applies OpenCV to the uint8 image ``u = 255·(x + 1)/2`` and normalises the result
back with ``(u/255 - 0.5)/0.5``; we compute the same thing with :mod:`scipy.ndimage` directly in [-1, 1]:

* ``dilate`` (NFN: ``cv2.dilate(u, ones(3, 3))``): ``maximum_filter(x, size=3)``, the grey dilation with a
  flat 3x3 square. Max commutes with the increasing affine map between the two scales.
* ``erode`` (DNG authors: ``cv2.erode(u, ones(2, 2))``): ``minimum_filter(x, size=2)``; pixel (i, j) takes the
  minimum of pixels (i-1..i, j-1..j), the window OpenCV's default anchor (1, 1) gives a 2x2 kernel.
* ``gradient`` (DNG authors: ``cv2.morphologyEx(u, MORPH_GRADIENT, ones(2, 2))`` = dilation − erosion with
  the same 2x2 window): ``maximum_filter(x, 2) − minimum_filter(x, 2) − 1``. The difference of two images is
  not affine-equivariant: ``255·(max − min)/2`` is the uint8 gradient, which normalises to ``(max − min) − 1``.

Borders use ``mode="nearest"``: for windows of at most 3 pixels the replicated border pixel is already inside the
window, so this equals OpenCV's default of ignoring out-of-image pixels in dilation and erosion. We use
``maximum_filter``/``minimum_filter`` rather than ``grey_dilation``, whose 2x2 window is mirrored (i..i+1).
"""
from __future__ import annotations

from enum import Enum

import numpy as np
import torch
from scipy import ndimage

from ..choices import parse_choice

__all__ = ["ImageEdit", "edit_images"]


def _dilate(x: np.ndarray) -> np.ndarray:
    return ndimage.maximum_filter(x, size=(1, 3, 3), mode="nearest")


def _erode(x: np.ndarray) -> np.ndarray:
    return ndimage.minimum_filter(x, size=(1, 2, 2), mode="nearest")


def _gradient(x: np.ndarray) -> np.ndarray:
    return (ndimage.maximum_filter(x, size=(1, 2, 2), mode="nearest")
            - ndimage.minimum_filter(x, size=(1, 2, 2), mode="nearest") - 1.0)


class ImageEdit(Enum):
    """The edit of INR editing (the config's ``edit``); each is defined in the module docstring."""

    DILATE = "dilate"  # 3x3 max (NFN)
    ERODE = "erode"  # 2x2 min (the DNG authors)
    GRADIENT = "gradient"  # 2x2 max - 2x2 min, renormalised (the DNG authors)

    @classmethod
    def parse(cls, value: "str | ImageEdit") -> "ImageEdit":
        return parse_choice(cls, value, "edit")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(M, H, W) single-channel images in [-1, 1] -> their edit."""
        if self is ImageEdit.DILATE:
            return _dilate(x)
        if self is ImageEdit.ERODE:
            return _erode(x)
        if self is ImageEdit.GRADIENT:
            return _gradient(x)
        raise AssertionError(f"ImageEdit.apply does not handle {self}")  # a new member needs a branch here


def edit_images(images: torch.Tensor, edit: ImageEdit | str) -> torch.Tensor:
    """(N, C, H, W) images in [-1, 1] -> the ``edit`` (:class:`ImageEdit` or its name) of each channel of each
    image, same shape, float32.

    Inputs are clipped to [-1, 1] first (a SIREN's rendering overshoots slightly; the source images do not).
    """
    edit = ImageEdit.parse(edit)
    if images.dim() != 4:
        raise ValueError(f"edit_images needs (N, C, H, W) images, got shape {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("edit_images: the images contain NaN or inf")
    n, c, h, w = images.shape
    x = images.detach().float().clamp(-1, 1).reshape(n * c, h, w).cpu().numpy()
    out = edit.apply(x).astype(np.float32)
    return torch.from_numpy(out).reshape(n, c, h, w)
