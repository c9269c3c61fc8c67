"""The pose-free feature vote: which category's texture explains each pixel, with no pose at all.

NeMo's pose-free readout (wufeim/NeMo ``predict_inmodal``) compares every pixel's feature with every
feature of the model's memory and with the clutter: a pixel belongs to the object when its best match
among the object's features beats the clutter. With one texture per category that becomes, per pixel
``p`` and category ``c``,

    s_c(p) = max_t <F(p), θ_c[t]>            (the best texel of c's texture),

and a category's vote is the evidence its texture adds over the background model ``b(p)`` summed over
the whole feature map,

    vote_c = (1 / hw) Σ_p relu(s_c(p) − b(p)).

Unlike the render-and-compare score it needs no pose, no mesh and no mask, so it cannot prefer a
category because its mean-shape silhouette happens to sit on a few confident pixels, and a thin object
votes with exactly the pixels it covers. The diagnostics (``diagnose.py``) use ``s_c`` to ask which category
explains the clutter and score the vote as a class rule offline (``diagnose --rules``); measured on the
validation set it classifies worse than the render-and-compare score (docs/experiments.md E1-E3), so
inference does not use it.
"""

from __future__ import annotations

import torch

from .grid import pool_texture

__all__ = ["category_maps", "vote_scores"]


def category_maps(features: torch.Tensor, textures: dict, size: int | None = None) -> torch.Tensor:
    """``s (B, C, h, w)``: per pixel, the best cosine similarity with any texel of each category's texture.

    Args:
        features: ``(B, D, h, w)`` unit features.
        textures: category → ``(D, S, S)`` unit texture; ``C`` follows the dict's order.
        size: average-pool each texture to at most ``size × size`` texels first (``grid.pool_texture``;
            ``None``: the full texture).
    """
    if not torch.is_tensor(features) or features.dim() != 4:
        raise ValueError(f"features must be a (B, D, h, w) tensor, got {getattr(features, 'shape', type(features))}")
    if not isinstance(textures, dict) or not textures:
        raise ValueError("textures must be a non-empty dict category -> (D, S, S) tensor")
    b, d, h, w = features.shape
    flat = features.reshape(b, d, h * w).transpose(1, 2)  # (B, hw, D)
    out = []
    for cat, tex in textures.items():
        if not torch.is_tensor(tex) or tex.dim() != 3 or tex.shape[0] != d:
            raise ValueError(f"textures[{cat!r}] must be (D={d}, S, S), got {getattr(tex, 'shape', type(tex))}")
        t = pool_texture(tex.to(features.dtype), size).reshape(d, -1)
        out.append((flat @ t).amax(-1))  # (B, hw)
    return torch.stack(out, 1).reshape(b, len(textures), h, w)


def vote_scores(maps: torch.Tensor, bgmap: torch.Tensor) -> torch.Tensor:
    """``vote (B, C)`` = ``mean_p relu(s_c(p) − b(p))`` from ``maps (B, C, h, w)`` and ``bgmap (B, h, w)``."""
    if maps.dim() != 4 or bgmap.shape != (maps.shape[0], *maps.shape[2:]):
        raise ValueError(f"maps must be (B, C, h, w) and bgmap (B, h, w), got {tuple(maps.shape)} and {tuple(bgmap.shape)}")
    return torch.relu(maps - bgmap[:, None]).mean((2, 3))
