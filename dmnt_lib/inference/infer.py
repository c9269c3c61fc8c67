"""``infer(model, images, focal, principal=None, ...)``: a trained DMNT's backbone + ``render_and_compare``.

The model provides (docs/design.md §8) ``features(images) -> (B, D, H/s, W/s)``
unit features, ``stride``, ``categories``, ``texture(category) -> (D, S, S)``, the background bank
(``bank.features (K, D)`` or ``bank.mean()``), ``mesh(category)`` (the mean-code shape) and
``deformable(category)`` (used when ``config.fit_shape``).
"""

from __future__ import annotations

import copy
import time
import weakref

import torch
import torch.nn.functional as F

from .config import InferenceConfig
from .engine import render_and_compare

__all__ = ["infer", "model_background", "model_inputs"]


def model_background(model, centroids: int | None = None) -> torch.Tensor:
    """Background features of a model ``(K, D)``: the normalized bank mean (``K = 1``, docs/design.md §9),
    or, with ``centroids``, that many spherical k-means centroids of the bank's features (seeded; 10 rounds;
    at most one per bank feature). ``InferenceConfig.background_centroids`` (default 128) chooses."""
    bank = model.bank
    feats = getattr(bank, "features", None)
    if callable(feats):
        feats = feats()
    if centroids is None or feats is None:
        mean = bank.mean() if hasattr(bank, "mean") and callable(bank.mean) else feats.mean(0)
        return F.normalize(torch.as_tensor(mean).reshape(1, -1).float(), dim=1)
    x = F.normalize(torch.as_tensor(feats).float(), dim=1)
    g = torch.Generator().manual_seed(0)
    c = x[torch.randperm(len(x), generator=g)[:centroids]].clone()
    for _ in range(10):  # spherical k-means; a centroid that loses all its members stays where it is
        assign = (x @ c.t()).argmax(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        filled = torch.bincount(assign, minlength=len(c)) > 0
        c = torch.where(filled[:, None], F.normalize(sums, dim=1), c)
    return c


def model_inputs(model, config: InferenceConfig, categories=None):
    """``(textures, meshes, background)`` dicts for ``render_and_compare`` from a trained model."""
    cats = list(categories) if categories is not None else list(model.categories)
    unknown = [c for c in cats if c not in model.categories]
    if unknown:
        raise ValueError(f"categories {unknown} are not in the model (it has {list(model.categories)})")
    # The engine runs on the CPU (Embree); a model on a GPU lends CPU copies.
    textures = {c: model.texture(c).detach().float().cpu() for c in cats}
    if config.fit_shape:
        meshes = {}
        for c in cats:
            dm = model.deformable(c)
            meshes[c] = dm if next(dm.parameters()).device.type == "cpu" else copy.deepcopy(dm).cpu()
    else:
        meshes = {c: model.mesh(c).to("cpu") for c in cats}
    return textures, meshes, _cached_background(model, config.background_centroids).cpu()


#: bank -> {(centroids, memory's in-place version counter, write pointer, storage address): (K, D)}; the bank does
#: not change during inference, so the k-means runs once per model and K, not once per batch (the evaluation calls
#: ``infer`` per batch of images); a push or a load changes the key.
_BACKGROUNDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached_background(model, centroids):
    memory = getattr(model.bank, "memory", None)
    if not isinstance(model.bank, torch.nn.Module) or memory is None:
        return model_background(model, centroids)
    try:
        version = memory._version
    except RuntimeError:  # an inference-mode tensor has no version counter: nothing to key on, compute it
        return model_background(model, centroids)
    key = (centroids, version, int(getattr(model.bank, "ptr", 0)), memory.data_ptr())
    per_bank = _BACKGROUNDS.setdefault(model.bank, {})
    if key not in per_bank:
        per_bank.clear()
        per_bank[key] = model_background(model, centroids)
    return per_bank[key]


def infer(model, images: torch.Tensor, focal, principal=None, center: str = "known", config: InferenceConfig | None = None,
          categories=None, include=None, record: bool = False):
    """Class, pose and masks for a batch of images.

    Args:
        model: a trained ``DMNT`` (``model.DMNT.load``).
        images: ``(B, 3, H, W)`` float in [0, 1].
        focal: image pixels, scalar or ``(B,)``.
        principal: ``(B, 2)`` image pixels ``(x, y)``; ``None`` = the image centre (with ``center="known"``).
        center, config, include, record: as ``render_and_compare``; categories: subset of ``model.categories``.

    Returns:
        ``list[Prediction]`` with ``timings["backbone"]`` added to each image's share.
    """
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    config = config or InferenceConfig()
    b, _, H, W = images.shape
    if principal is None:
        principal = torch.tensor([[W / 2.0, H / 2.0]]).expand(b, 2)
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = model.features(images).float()
    t_backbone = (time.perf_counter() - t0) / b
    textures, meshes, bg = model_inputs(model, config, categories)
    preds = render_and_compare(feats.cpu(), textures, meshes, bg, focal, principal,
                               (H, W), int(model.stride), center=center, config=config, include=include, record=record)
    for p in preds:
        p.timings["backbone"] = t_backbone
        p.time_s += t_backbone
    return preds
