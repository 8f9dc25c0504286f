"""SimpleViT (Beyer et al. 2022) with vit-pytorch's parameter names, so its checkpoints load.

vit-pytorch itself is not a dependency: it imports torchvision, which does not load beside the CPU torch we
pin. The layouts below are written from its documented parameter names (not from its code) and were checked
against vit-pytorch's ``simple_vit.py`` of 1.2.0, 1.2.1, 1.2.9 and 1.26.14: same keys, shapes and outputs.

* **current** (default, ``final_norm_in_transformer=True``; vit-pytorch 1.26.x): ``to_patch_embedding.{1,2,3}``
  (LayerNorm, Linear, LayerNorm), ``transformer.layers.{i}.0.{norm,to_qkv,to_out}`` (the pre-norm inside
  Attention), ``transformer.layers.{i}.1.net.{0,1,3}`` (LayerNorm, Linear, GELU, Linear inside FeedForward),
  ``transformer.norm`` and a bare ``linear_head`` Linear: tokens are normalised, then mean-pooled.
* **older** (``final_norm_in_transformer=False``; vit-pytorch 1.2.x): the same, but no ``transformer.norm`` and
  ``linear_head = [LayerNorm, Linear]`` (``linear_head.{0,1}``): tokens are mean-pooled, then normalised.
  Kept so that zoos and checkpoints written in it still load (:func:`layout_kwargs` tells them apart).

The constructor's defaults are small CPU sizes (28x28 grayscale, ``dim_head=16``); vit-pytorch's own defaults
are ``channels=3, dim_head=64`` and it has none for the other sizes, so pass the sizes a checkpoint was built with.
The number of heads is not recorded by the weights: only ``heads * dim_head`` is.
"""
from __future__ import annotations

import torch
from torch import nn


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    if dim % 4:
        raise ValueError(f"SimpleViT needs dim divisible by 4 for its sin-cos embedding, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = torch.arange(dim // 4) / max(dim // 4 - 1, 1)
    omega = 1.0 / (temperature**omega)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1).float()


class Patchify(nn.Module):
    """b c (h p1) (w p2) -> b (h w) (p1 p2 c), the order vit-pytorch's Rearrange uses."""

    def __init__(self, p1: int, p2: int):
        super().__init__()
        self.p1, self.p2 = p1, p2

    def forward(self, img):
        b, c, H, W = img.shape
        x = img.reshape(b, c, H // self.p1, self.p1, W // self.p2, self.p2)
        return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (H // self.p1) * (W // self.p2), self.p1 * self.p2 * c)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x):
        x = self.norm(x)
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = self.attend(q @ k.transpose(-1, -2) * self.scale)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, final_norm: bool):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, heads, dim_head), FeedForward(dim, mlp_dim)]) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim) if final_norm else nn.Identity()

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return self.norm(x)


class SimpleViT(nn.Module):
    def __init__(
        self,
        *,
        image_size: int = 28,
        patch_size: int = 7,
        num_classes: int = 10,
        dim: int = 32,
        depth: int = 2,
        heads: int = 2,
        mlp_dim: int = 64,
        channels: int = 1,
        dim_head: int = 16,
        final_norm_in_transformer: bool = True,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")
        n_side = image_size // patch_size
        patch_dim = channels * patch_size * patch_size
        self.heads, self.dim_head = heads, dim_head
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        self.to_patch_embedding = nn.Sequential(
            Patchify(patch_size, patch_size), nn.LayerNorm(patch_dim), nn.Linear(patch_dim, dim), nn.LayerNorm(dim)
        )
        self.register_buffer("pos_embedding", posemb_sincos_2d(n_side, n_side, dim), persistent=False)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, final_norm=final_norm_in_transformer)
        if final_norm_in_transformer:
            self.linear_head = nn.Linear(dim, num_classes)
        else:
            self.linear_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward(self, img):
        x = self.to_patch_embedding(img) + self.pos_embedding
        x = self.transformer(x).mean(dim=1)
        return self.linear_head(x)


def layout_kwargs(state_dict) -> dict:
    """``{"final_norm_in_transformer": ...}`` for a SimpleViT state_dict: which of the two layouts it is in."""
    keys = set(state_dict)
    if "transformer.norm.weight" in keys and "linear_head.weight" in keys:
        return {"final_norm_in_transformer": True}
    if "linear_head.0.weight" in keys and "linear_head.1.weight" in keys:
        return {"final_norm_in_transformer": False}
    raise KeyError("not a SimpleViT state_dict of a known layout: expected 'transformer.norm.*' + 'linear_head.*' "
                   "(current vit-pytorch) or 'linear_head.0.*' + 'linear_head.1.*' (vit-pytorch 1.2.0)")
