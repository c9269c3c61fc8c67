"""The render-and-compare score (docs/design.md §9), differentiable, in image space and in UV space.

Object score ``o(p) = <F(p), R(p)>`` with ``R = normalize(sample_texture(θ, uv))`` on the rendered mask;
background score ``b(p) = max_k <F(p), β_k>`` (``K = 1``: the normalized bank mean). Per hypothesis:

* ``"normalized"`` (our default): ``Σ_{p∈mask} (max(o,b) − b) / |mask|`` — the gain over explaining the
  pixel by the background, averaged over the rendered area, so that meshes of different size compare;
* ``"nemo"``: NeMo's ``mean_p max(o,b) − mean_p b`` over the whole map, ``o = 0`` off the mask.

Inference fits poses with ``config.fit_score`` (default ``"nemo"``, which rewards explaining every object
pixel) and compares categories with ``config.score`` (default ``"normalized"``); both are reported.

In UV space (``compare="uv"``) the features are moved onto the texture with ``image_to_uv`` and the same
formulas run over the visible texels (``"nemo"``: divided by the number of texels instead).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from ..render import sample_texture
from ..transform import image_to_uv

SCORE_KINDS = ("normalized", "nemo")

__all__ = ["SCORE_KINDS", "background_map", "object_map", "combine", "image_terms", "uv_terms", "image_score", "uv_score"]


def background_map(features: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``b (B, h, w)`` = max over the ``(K, D)`` unit background features of ``<F(p), β_k>``."""
    return torch.einsum("bdhw,kd->bkhw", features, background.to(features.dtype)).amax(1)


def object_map(features: torch.Tensor, texture: torch.Tensor, uv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``o (P, h, w)`` = ``<F, normalize(sample_texture(texture, uv))>`` on ``mask``, 0 off it.

    ``features (P, D, h, w)``, ``texture (D, S, S)``, ``uv (P, h, w, 2)``, ``mask (P, h, w)``."""
    rendered = F.normalize(sample_texture(texture[None], uv.to(texture.dtype)), dim=1, eps=1e-8)
    return (features * rendered).sum(1) * mask


def combine(o: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-item score ``(P,)`` from ``o, b (P, ...)`` and ``mask (P, ...)`` (see module docstring)."""
    dims = tuple(range(1, o.dim()))
    m = mask.to(o.dtype)
    gain = (torch.relu(o - b) * m).sum(dims)
    if kind == "normalized":
        return gain / m.sum(dims).clamp(min=1)
    off = (torch.relu(-b) * (1 - m)).sum(dims)
    return (gain + off) / m[0].numel()


def image_terms(features, bgmap, texture, uv, mask):
    """``(o, b, mask)`` per pixel for ``combine``; ``features (P,D,h,w)``, ``bgmap (P,h,w)``, ``texture (D,S,S)``,
    ``uv (P,h,w,2)``, ``mask (P,h,w)``."""
    return object_map(features, texture, uv, mask), bgmap, mask


def image_score(features, bgmap, texture, uv, mask, kind: str) -> torch.Tensor:
    """Image-space score ``(P,)`` (see ``image_terms``)."""
    return combine(*image_terms(features, bgmap, texture, uv, mask), kind)


def _transform_kwargs() -> dict:
    params = inspect.signature(image_to_uv).parameters
    return {"validate": False} if "validate" in params else {}


def uv_score(features, texture, background, uv, mask, kind: str, seam_threshold: float = 0.2, chart=None) -> torch.Tensor:
    """UV-space score ``(P,)`` (see ``uv_terms``)."""
    return combine(*uv_terms(features, texture, background, uv, mask, seam_threshold, chart), kind)


def uv_terms(features, texture, background, uv, mask, seam_threshold: float = 0.2, chart=None):
    """``(o, b, visible)`` per texel for ``combine``: ``surface, visible = image_to_uv(F, uv, mask, S)``;
    ``o = <normalize(surface), θ>``, ``b = max_k <normalize(surface), β_k>``.

    ``features (P,D,h,w)``, ``texture (D,S_h,S_w)``, ``background (K,D)``, ``uv (P,h,w,2)``, ``mask (P,h,w)``,
    optional ``chart (P,h,w)`` (passed on when ``image_to_uv`` accepts it)."""
    kw = _transform_kwargs()
    if chart is not None and "chart" in inspect.signature(image_to_uv).parameters:
        kw["chart"] = chart
    surface, visible = image_to_uv(features, uv.to(features.dtype), mask, tuple(texture.shape[1:]),
                                   seam_threshold=seam_threshold, **kw)
    s = F.normalize(surface, dim=1, eps=1e-8)
    o = (s * texture[None].to(s.dtype)).sum(1)
    b = torch.einsum("bdhw,kd->bkhw", s, background.to(s.dtype)).amax(1)
    return o * visible, b, visible
