"""Contrastive training of a ``DMNT`` (docs/design.md §8, appendix A.3), single process or DDP.

Per image (ground-truth pose; the category's deformable mesh with the code of the image's own
CAD model): ``F = backbone(image)`` at ``(H/s, W/s)``; the mesh's UV fragment at that resolution
(focal and principal point divided by ``s``); the object pixels, i.e. feature pixels whose
``s x s`` block is at least ``object_threshold`` on the image's object mask (the rendered
cuboid-like mesh overshoots thin objects); ``F̂, V = image_to_uv(F, uv, mask_mesh & object)``;
``sample_groups`` and ``contrastive_loss``; Adam on the backbone; then the texture momentum update
(from the detached ``F̂``) and the background-bank push (``bank_push`` random feature pixels per
image with no object pixel in their block and off the mesh).

Options beyond the appendix (``TrainConfig``; measured in docs/experiments.md): mirrored and
colour-jittered images (``flip``, ``color_jitter``, as the baseline's augmentations), NeMo's clutter
regulariser (``w_clutter``) and a Com radius that scales with the atlas (``com_reference_size``).

The batch loss is the mean over images of each image's mean over its positives (an image
with no visible texel adds 0): every image weighs the same whatever its size, and under DDP,
whose gradient averaging is a mean over ranks, ``N`` ranks of ``B/N`` images give exactly the
gradient of one process on the ``B`` images.

Reproducibility: every random choice of an image comes from a generator seeded by
``(seed, epoch, step, position in the global batch)``, the epoch order from ``(seed, epoch)``,
so a resumed run (checkpoints are written atomically after every epoch) repeats an
uninterrupted one bit for bit, and DDP ranks draw what one process would. UV fragments are
computed once per image and cached in memory (pose and mesh never change during training).

Distributed (``torchrun``): ranks take contiguous slices of each global batch; the backbone is
wrapped in ``DistributedDataParallel``; the texture update all-reduces its sums and counts and
the bank gathers every rank's pushes in rank order, so every rank holds identical memories; only
rank 0 writes files and prints. BatchNorm statistics are per rank (SyncBatchNorm has no CPU
implementation): use ``norm="group"`` when a distributed run must equal one process exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..fileio import atomic_write_text
from .dmnt import DMNT, ModelConfig, load_deformables
from .loss import SampleCounts, contrastive_loss, sample_groups

__all__ = ["TrainConfig", "train", "train_step", "evaluate_correspondence", "split_indices", "held_out_split", "FragmentCache", "final_line",
           "augmentation", "augment_image", "clutter_loss", "LEGACY_OPTIONS"]


@dataclass(frozen=True)
class TrainConfig:
    """Training options (defaults: the paper-sized run, 20 epochs; the ``full`` preset of ``reproduce`` sets 10 epochs
    and 64 x 64 textures; ``quick()`` the 2-core preset).

    Attributes:
        epochs, batch_size (global, divisible by the number of ranks), lr (Adam on the backbone).
        categories: names to train (default: every category of the dataset).
        per_category: at most this many training images per category (default all).
        val_per_category: images per category held out for the correspondence evaluation.
        positives, com, com_min_distance, class_negatives, bg: ``SampleCounts`` (appendix A.3).
        com_reference_size: ``com_min_distance`` is in texels of an atlas of this size and scaled to the model's
            ``texture_size`` (the paper's 20 texels are for S = 128: at S = 64 they would mask most of a side and
            the opposite side next to it, the very negatives that teach front from back); ``None``: texels as given.
            Default 128 (docs/experiments.md T2: at S = 64, correspondence@5 0.42 -> 0.50, category match
            0.58 -> 0.67 on held-out images).
        w_clutter, clutter_pixels: NeMo's clutter regulariser (weight, pixels per image): up to ``clutter_pixels``
            off-object feature pixels of each image (with gradient) are pushed away from the object texels,
            ``w_clutter · mean_p <F(p), mean_{c,t seen} θ_c[t]>`` (= the mean similarity with every seen texel,
            NeMo's ``loss_reg``); 0 disables it. Without it the bank's features enter the loss only as
            detached negatives and clutter pixels are free to land near some category's texels.
        flip: probability of mirroring a training image: image and mask flipped, the UV fragment rendered at the
            mirrored pose ``(-azimuth, elevation, -theta)`` with the principal point mirrored (the view of the
            mirrored object; exact for left-right symmetric objects, as the baseline's ``hflip``).
        color_jitter: brightness and contrast factors uniform in ``[1 - j, 1 + j]`` (the baseline's).
        bank_push: background features each image pushes into the bank.
        temperature, w_ml, w_com, w_class, w_bg: the loss's ``T`` and group weights.
        object_threshold: fraction of a feature pixel's ``s x s`` block on the object mask for it to count.
        backend: ``image_to_uv`` backend. eval_texels: visible texels scored per held-out image.
        eval_radius: correspondence@r radius in texels. seed: every random choice.
    """

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    categories: tuple | None = None
    per_category: int | None = None
    val_per_category: int = 20
    positives: int = 1000
    com: int = 1000
    com_min_distance: float = 20.0
    com_reference_size: int | None = 128
    class_negatives: int = 200
    bg: int = 2000
    bank_push: int = 64
    temperature: float = 0.07
    w_ml: float = 1.0
    w_com: float = 1.0
    w_class: float = 1.0
    w_bg: float = 0.1
    w_clutter: float = 0.0
    clutter_pixels: int = 64
    flip: float = 0.0
    color_jitter: float = 0.0
    object_threshold: float = 0.4
    backend: str = "auto"
    eval_texels: int = 500
    eval_radius: float = 5.0
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size", "val_per_category", "bank_push", "eval_texels", "seed", "clutter_pixels"):
            v = getattr(self, name)
            low = 1 if name in ("batch_size", "eval_texels") else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.per_category is not None and (not isinstance(self.per_category, int) or self.per_category < 1):
            raise ValueError(f"per_category must be a positive int or None, got {self.per_category!r}")
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(self.categories))
        for name in ("lr", "temperature", "eval_radius"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.com_reference_size is not None and (isinstance(self.com_reference_size, bool) or not isinstance(self.com_reference_size, int)
                                                    or self.com_reference_size < 1):
            raise ValueError(f"com_reference_size must be a positive int or None, got {self.com_reference_size!r}")
        for name, hi in (("w_clutter", float("inf")), ("flip", 1.0), ("color_jitter", 1.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= hi:
                raise ValueError(f"{name} must be a number in [0, {hi:g}], got {v!r}")
        if not 0 <= self.object_threshold <= 1:
            raise ValueError(f"object_threshold must be in [0, 1], got {self.object_threshold!r}")
        self.counts  # validates the counts
        self.weights

    @property
    def counts(self) -> SampleCounts:
        """The sample counts with ``com_min_distance`` as given (see ``counts_for`` for the scaled radius)."""
        return SampleCounts(self.positives, self.com, self.com_min_distance, self.class_negatives, self.bg)

    def com_radius(self, texture_size: int) -> float:
        """The Com exclusion radius in texels of a ``texture_size`` atlas (``com_reference_size``)."""
        if self.com_reference_size is None:
            return float(self.com_min_distance)
        return float(self.com_min_distance) * texture_size / self.com_reference_size

    def counts_for(self, texture_size: int) -> SampleCounts:
        """``counts`` with the Com radius scaled to ``texture_size`` (``com_radius``)."""
        return dataclasses.replace(self.counts, com_min_distance=self.com_radius(texture_size))

    @property
    def weights(self) -> dict:
        from .loss import _check_weights

        return _check_weights({"ML": self.w_ml, "Com": self.w_com, "Class": self.w_class, "BG": self.w_bg})

    @classmethod
    def quick(cls, **over) -> "TrainConfig":
        """The 2-core preset ``train --quick`` uses with ``ModelConfig(texture_size=64)`` (docs/training.md):
        60 training + 10 held-out images per category, 4 epochs of batch 8, smaller sample counts
        (400 positives, 400 Com at >= 20 texels of a 128 atlas, i.e. 10 at S=64, 100 Class, 800 BG)."""
        base = dict(epochs=4, batch_size=8, per_category=60, val_per_category=10, categories=None,
                    positives=400, com=400, com_min_distance=20.0, class_negatives=100, bg=800)
        base.update(over)
        return cls(**base)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["categories"] = list(self.categories) if self.categories is not None else None
        return d


#: The values of options added after the first full run that reproduce the training before them: a checkpoint
#: whose saved config lacks one of them was trained with this value.
LEGACY_OPTIONS = {"com_reference_size": None, "flip": 0.0, "color_jitter": 0.0, "w_clutter": 0.0}


# ---------------------------------------------------------------------------- distributed helpers
class _Dist:
    """Rank, world size and the two collectives the memories need (no-ops in one process)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist
        self.on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1

    def reduce(self, t: torch.Tensor) -> None:
        self.dist.all_reduce(t)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's ``(N_r, D)`` concatenated in rank order (padded all_gather: N_r may differ)."""
        n = torch.tensor([len(x)], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        self.dist.all_gather(sizes, n)
        m = int(max(int(s) for s in sizes))
        pad = torch.zeros(m, x.shape[1], dtype=x.dtype, device=x.device)
        pad[: len(x)] = x
        parts = [torch.zeros_like(pad) for _ in range(self.world)]
        self.dist.all_gather(parts, pad)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])

    @property
    def reduce_fn(self):
        return self.reduce if self.on else None

    @property
    def gather_fn(self):
        return self.gather if self.on else None


def _init_distributed(device: str) -> str:
    """Join the ``torchrun`` process group when its environment is set; returns the device to use."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    dev = torch.device(device)
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return device


# ---------------------------------------------------------------------------- fragments
class FragmentCache:
    """UV fragments of dataset items at feature resolution, computed once each (on the CPU).

    ``get(model, item, index)`` → ``(uv (h, w, 2) float32, mask (h, w) bool, chart (h, w) int64)``
    of ``model.mesh(category, cad_index)`` seen by the item's camera with focal and principal
    point divided by the stride.
    """

    def __init__(self, cache: bool = True):
        from ..render import uv_fragment

        self._uv_fragment = uv_fragment
        self._cache = {} if cache else None
        self._meshes = {}

    def get(self, model: DMNT, item: dict, index: int | None = None, flip: bool = False):
        """The item's fragment, or with ``flip`` the fragment of its mirror image: the mesh at the mirrored pose
        ``(-azimuth, elevation, -theta)`` with the principal point mirrored, ``x -> W - x`` (image pixels)."""
        ckey = (index, bool(flip))
        if self._cache is not None and index is not None and ckey in self._cache:
            return self._cache[ckey]
        from ..camera import pose_to_cameras

        s = model.stride
        H, W = (int(x) for x in item["image"].shape[-2:])
        h, w = H // s, W // s
        key = (item["category"], int(item["cad_index"]))
        if key not in self._meshes:
            self._meshes[key] = model.mesh(*key).to("cpu")
        sign = -1.0 if flip else 1.0
        principal = item["principal"].reshape(1, 2).clone().float()
        if flip:
            principal[:, 0] = W - principal[:, 0]
        cams = pose_to_cameras(sign * item["azimuth"].reshape(1), item["elevation"].reshape(1), sign * item["theta"].reshape(1),
                               item["distance"].reshape(1), (h, w), focal=item["focal"].reshape(1) / s, principal=principal / s)
        frag = self._uv_fragment(self._meshes[key], cams, (h, w), backend="auto")
        out = (frag.uv[0].float(), frag.mask[0], frag.chart[0])
        if self._cache is not None and index is not None:
            self._cache[ckey] = out
        return out


def _transform_kwargs(charts):
    """``image_to_uv``'s options in the training loop: the per-pixel charts, and no data validation (the
    fragments are ours and valid; validation would force host synchronisations every step)."""
    return {"chart": charts, "validate": False}


def _object_pixels(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """``(B, H, W)`` bool object masks → ``(B, H/s, W/s)`` fraction of each ``s x s`` block on the object."""
    return F.avg_pool2d(masks[:, None].float(), stride)[:, 0]


def _generator(*key: int) -> torch.Generator:
    h = 0
    for k in key:
        h = (h * 1000003 + int(k) + 1) % (2**61 - 1)
    return torch.Generator().manual_seed(h)


def augmentation(config: TrainConfig, key) -> tuple[bool, float, float]:
    """``(flip, brightness, contrast)`` of one training image, drawn from its key ``(epoch, step, k)``."""
    g = _generator(config.seed, *key, 2)
    u = torch.rand(3, generator=g).tolist()
    j = config.color_jitter
    return u[0] < config.flip, 1 + j * (2 * u[1] - 1), 1 + j * (2 * u[2] - 1)


def augment_image(image: torch.Tensor, flip: bool, brightness: float, contrast: float) -> torch.Tensor:
    """``(3, H, W)`` image mirrored and jittered as the baseline does (contrast about the mean, then brightness)."""
    if flip:
        image = image.flip(-1)
    if brightness != 1 or contrast != 1:
        mean = image.mean()
        image = ((image - mean) * contrast + mean * brightness).clamp(0, 1)
    return image


def _batch_inputs(model, items, indices, frags: FragmentCache, config: TrainConfig, device, augments=None):
    """Tensors of a batch; ``augments`` (per item ``augmentation(...)``, or None) mirror and jitter it."""
    augments = augments or [(False, 1.0, 1.0)] * len(items)
    images = torch.stack([augment_image(it["image"], *a) for it, a in zip(items, augments)]).to(device)
    labels = torch.tensor([model.label(it["category"]) for it in items], device=device)
    fr = [frags.get(model, it, i, flip=a[0]) for it, i, a in zip(items, indices, augments)]
    uv = torch.stack([f[0] for f in fr]).to(device)
    mesh_mask = torch.stack([f[1] for f in fr]).to(device)
    charts = torch.stack([f[2] for f in fr]).to(device)
    masks = torch.stack([it["mask"].flip(-1) if a[0] else it["mask"] for it, a in zip(items, augments)])
    frac = _object_pixels(masks.to(device), model.stride)
    on_object = mesh_mask & (frac >= config.object_threshold)
    background = (frac == 0) & ~mesh_mask
    return images, labels, uv, on_object, background, charts


# ---------------------------------------------------------------------------- one step
def train_step(model: DMNT, net, optimizer, items: list, keys: list, frags: FragmentCache, config: TrainConfig,
               dist: _Dist | None = None, device="cpu", timings: dict | None = None) -> float:
    """One optimisation step on this rank's ``items`` (dataset dicts) of a global batch.

    Args:
        net: ``model.backbone`` or its DDP wrapper. keys: per item ``(dataset index, (epoch, step, k))``,
            ``k`` the item's position in the global batch (seeds its random choices).
        timings: optional dict; seconds per phase are added to it.

    Returns:
        The sum over this rank's items of their losses (the caller divides by the global batch).
    """
    from ..transform import image_to_uv

    dist = dist or _Dist()
    tm = timings if timings is not None else {}

    def tick(name, t0):
        t = time.perf_counter()
        tm[name] = tm.get(name, 0.0) + t - t0
        return t

    t = time.perf_counter()
    augments = [augmentation(config, key) for _, key in keys] if (config.flip or config.color_jitter) else None
    images, labels, uv, on_object, background, charts = _batch_inputs(model, items, [k[0] for k in keys], frags, config,
                                                                       device, augments)
    t = tick("fragments", t)
    model.train()
    feats = net(images)  # (B, D, h, w)
    t = tick("backbone", t)
    S = model.texture_size
    surface, visible = image_to_uv(feats, uv.to(feats.dtype), on_object, S, backend=config.backend, **_transform_kwargs(charts))
    t = tick("transform", t)
    texels, seen = model.textures.texels, model.textures.seen > 0
    bank = model.bank.memory
    counts = config.counts_for(S)
    total = feats.new_zeros(())
    for b, (_, (epoch, step, k)) in enumerate(keys):
        g = _generator(config.seed, epoch, step, k)
        groups = sample_groups(surface[b], visible[b], int(labels[b]), texels, seen, bank, counts, g)
        if groups is not None:
            f, pos, negatives = groups[:3]
            total = total + contrastive_loss(f, pos, negatives, config.weights, config.temperature)
    if config.w_clutter > 0:
        total = total + config.w_clutter * clutter_loss(feats, background, texels, seen, config, keys)
    loss = total / len(items)
    t = tick("loss", t)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t = tick("backward", t)
    optimizer.step()
    with torch.no_grad():
        model.textures.update(labels, surface.detach(), visible, reduce=dist.reduce_fn)
        pushes = []
        for b, (_, (epoch, step, k)) in enumerate(keys):
            cand = background[b].nonzero()
            if len(cand) and config.bank_push:
                pick = cand[torch.randperm(len(cand), generator=_generator(config.seed, epoch, step, k, 1))[: config.bank_push].to(cand.device)]
                pushes.append(feats[b, :, pick[:, 0], pick[:, 1]].T.detach())
        x = torch.cat(pushes) if pushes else feats.new_zeros(0, feats.shape[1])
        model.bank.push(x, gather=dist.gather_fn)
    tick("updates", t)
    return float(total.detach())


def clutter_loss(feats: torch.Tensor, background: torch.Tensor, texels: torch.Tensor, seen: torch.Tensor,
                 config: TrainConfig, keys) -> torch.Tensor:
    """NeMo's clutter regulariser summed over the batch (``TrainConfig.w_clutter`` multiplies it): per image,
    the mean similarity of up to ``clutter_pixels`` off-object feature pixels ``(B, D, h, w)``/``background
    (B, h, w)`` with the mean seen texel of all categories (``texels (C, D, S, S)``, ``seen (C, S, S)``; no
    gradient), i.e. their mean similarity with every seen texel. Gradients reach the clutter pixels only."""
    with torch.no_grad():
        pool = texels.permute(1, 0, 2, 3)[:, seen] if seen.any() else texels.flatten(2).permute(1, 0, 2).flatten(1)
        centre = pool.mean(1)  # (D,)
    out = feats.new_zeros(())
    for b, (_, (epoch, step, k)) in enumerate(keys):
        cand = background[b].nonzero()
        if not len(cand):
            continue
        pick = cand[torch.randperm(len(cand), generator=_generator(config.seed, epoch, step, k, 3))[: config.clutter_pixels].to(cand.device)]
        f = feats[b, :, pick[:, 0], pick[:, 1]].T  # (n, D)
        out = out + (f @ centre.to(f.dtype)).mean()
    return out


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_correspondence(model: DMNT, dataset, indices, frags: FragmentCache, config: TrainConfig, candidates=None,
                            device="cpu", batch_size: int = 8) -> dict:
    """Texel correspondence@r and category match on held-out images (docs/design.md §8).

    For up to ``config.eval_texels`` visible on-object texels ``t`` per image (seeded choice),
    ``f = normalize(F̂[t])``; correspondence: the most similar (cosine) candidate texel of the
    image's own texture lies within ``config.eval_radius`` texels of ``t``; category match: the
    most similar candidate texel over all textures belongs to the image's category.

    Args:
        candidates: ``(C, S, S)`` bool texels searched (default: the model's seen texels; an
            untrained model is scored on the trained model's, so both face the same choice).

    Returns:
        ``{"corr": float, "category": float, "texels": int, "images": int}``.
    """
    from ..transform import image_to_uv

    model.eval()
    cand = (model.textures.seen > 0) if candidates is None else candidates.to(model.textures.seen.device)
    texels = model.textures.texels
    C = texels.shape[0]
    cand_idx = [cand[c].nonzero() for c in range(C)]
    cand_feat = [texels[c][:, ci[:, 0], ci[:, 1]] for c, ci in enumerate(cand_idx)]  # (D, K_c)
    hits = match = n = 0
    r2 = float(config.eval_radius) ** 2
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        idx = indices[start: start + batch_size]
        items = [dataset[i] for i in idx]
        images, labels, uv, on_object, _, charts = _batch_inputs(model, items, idx, frags, config, device)
        feats = model.features(images)
        surface, visible = image_to_uv(feats, uv.to(feats.dtype), on_object, model.texture_size, backend=config.backend,
                                       **_transform_kwargs(charts))
        for b, i in enumerate(idx):
            vis = visible[b].nonzero().cpu()
            if not len(vis):
                continue
            t = vis[torch.randperm(len(vis), generator=_generator(config.seed, 7, i))[: config.eval_texels]].to(surface.device)
            f = F.normalize(surface[b][:, t[:, 0], t[:, 1]].T, dim=1)  # (n, D)
            best = torch.full((len(t), C), -float("inf"), device=f.device)
            lab = int(labels[b])
            for c in range(C):
                if cand_feat[c].shape[1] == 0:
                    continue
                sims = f @ cand_feat[c]
                v, a = sims.max(1)
                best[:, c] = v
                if c == lab:
                    d2 = ((cand_idx[c][a] - t) ** 2).sum(1).float()
                    hits += int((d2 <= r2).sum())
            match += int((best.argmax(1) == lab).sum())
            n += len(t)
    return {"corr": hits / max(n, 1), "category": match / max(n, 1), "texels": n, "images": len(indices)}


def final_line(trained: dict, untrained: dict) -> str:
    """The line ``train`` prints last."""
    return (f"texel correspondence@5: trained={trained['corr']:.3f} untrained={untrained['corr']:.3f}; "
            f"category match: trained={trained['category']:.3f} untrained={untrained['category']:.3f}")


# ---------------------------------------------------------------------------- data
def split_indices(dataset, categories, config: TrainConfig, need_train: bool = True) -> tuple[list[int], list[int]]:
    """Seeded per-category split: ``val_per_category`` held out, then at most ``per_category`` for training.

    Raises:
        ValueError: a category has no image left for training (unless ``need_train=False``: a held-out set).
    """
    train_idx, val_idx = [], []
    by_cat = {c: [] for c in categories}
    for i, entry in enumerate(dataset.source.items):
        if entry[0] in by_cat:
            by_cat[entry[0]].append(i)
    for ci, c in enumerate(categories):
        idx = by_cat[c]
        perm = torch.randperm(len(idx), generator=_generator(config.seed, 3, ci)).tolist()
        idx = [idx[p] for p in perm]
        val, rest = idx[: config.val_per_category], idx[config.val_per_category:]
        if not rest and need_train:
            raise ValueError(f"category {c!r} has {len(idx)} images: none left for training after holding out "
                             f"val_per_category={config.val_per_category}")
        train_idx += rest[: config.per_category] if config.per_category else rest
        val_idx += val
    return sorted(train_idx), sorted(val_idx)


def held_out_split(dataset, categories, config: TrainConfig, val_data=None):
    """``(train_idx, val_set, val_idx)``: the training images of ``dataset`` and the held-out images of the
    final correspondence check, exactly as ``train`` chooses them. With ``val_data`` (a folder, ``train
    --val-data``) every selected image of ``dataset`` trains and the check reads ``val_per_category`` L0
    images per category of ``val_data``; without it both come from ``dataset`` (``split_indices``).

    Raises:
        FileNotFoundError: ``val_data`` is not a folder. ValueError: as ``split_indices``.
    """
    if val_data is None:
        train_idx, val_idx = split_indices(dataset, categories, config)
        return train_idx, dataset, val_idx
    if not Path(val_data).is_dir():
        raise FileNotFoundError(f"val_data folder not found: {val_data}")
    from ..data import PoseDataset

    val_set = PoseDataset(Path(val_data), categories=categories, levels=(0,))
    train_idx, _ = split_indices(dataset, categories, dataclasses.replace(config, val_per_category=0))
    _, val_idx = split_indices(val_set, categories, config, need_train=False)
    return train_idx, val_set, val_idx


def _check_cad_models(data_dir: Path, categories, names: dict) -> None:
    for c in categories:
        have = sorted(p.stem for p in (data_dir / "CAD" / c).glob("*.off"))
        if have and have != sorted(names[c]):
            raise ValueError(f"the deformable mesh of {c!r} was fitted to CAD models {sorted(names[c])}, "
                             f"but {data_dir / 'CAD' / c} holds {have}")


# ---------------------------------------------------------------------------- the loop
def _check_resume(saved: dict, config: TrainConfig, model_config: ModelConfig, model: DMNT, path: Path) -> None:
    # options added since a checkpoint was written count as the values that reproduce the old behaviour
    a = {**TrainConfig().to_dict(), **LEGACY_OPTIONS, **saved["train_config"]}
    a = {k: v for k, v in a.items() if k != "epochs"}
    b = {k: v for k, v in config.to_dict().items() if k != "epochs"}
    if a != b:
        diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
        raise ValueError(f"{path} was written with another training config (saved, given): {diff}")
    if model.config != model_config:
        raise ValueError(f"{path} holds a model with another config: {model.config} vs {model_config}")


def train(data, deform, out, config: TrainConfig = TrainConfig(), model_config: ModelConfig = ModelConfig(), *,
          device: str = "cpu", resume: bool = False, progress: bool = True, echo=print, evaluate: bool = True,
          weights=None, val_data=None) -> dict:
    """Train (or resume) a DMNT; see the module docstring. Writes, on rank 0, into ``out``:
    ``checkpoint.pt`` (model + optimizer + history, after every epoch), ``log.jsonl`` (one line
    per step: epoch, step, loss, images, seconds), ``model.pt`` (the final model), ``eval.json``.

    Args:
        data: dataset folder (``python -m dmnt_lib data``). deform: folder of ``<category>.pt``
            deformable-mesh checkpoints (``python -m dmnt_lib deform --checkpoint-dir``).
        out: run folder. resume: continue from ``out/checkpoint.pt`` (required if it exists).
        echo: where progress lines and the final line go (rank 0 only).
        evaluate: run the held-out evaluation at the end.
        val_data: a folder of held-out images for the final correspondence check (a seeded choice of
            ``val_per_category`` L0 images per category, e.g. of a validation set ``data --seed 2``); then every
            image of ``data`` trains (up to ``per_category``). ``None``: ``val_per_category`` images of ``data`` are
            held out. A resumed run must be given the same ``val_data`` and ``weights`` (refused otherwise).
        weights: the backbone's initial weights (``FeatureNet``'s ``weights``: a torchvision weights name, e.g.
            ``ResNet50_Weights.IMAGENET1K_V2``, or a local state-dict file); ``None``: from scratch. Only a new run
            uses them (a resumed one continues from its checkpoint).

    Returns:
        ``{"history", "trained", "untrained", "line", "seconds", "images_per_s", "timings"}``.
    """
    from tqdm.auto import tqdm

    from ..data import PoseDataset

    if not isinstance(config, TrainConfig) or not isinstance(model_config, ModelConfig):
        raise TypeError("config must be a TrainConfig and model_config a ModelConfig")
    data, deform, out = Path(data), Path(deform), Path(out)
    if not data.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {data} (make one with `python -m dmnt_lib data --out {data} --levels 0`)")
    device = _init_distributed(device)
    dist = _Dist()
    if config.batch_size % dist.world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the number of processes {dist.world}")
    dataset = PoseDataset(data, categories=config.categories, levels=(0,))
    categories = dataset.categories
    ckpt = out / "checkpoint.pt"
    history: list[dict] = []
    start_epoch = 0
    if ckpt.is_file():
        if not resume:
            raise FileExistsError(f"{ckpt} exists: pass --resume to continue that run, or choose another --out")
        model, extra = DMNT.load(ckpt, map_location=device, return_extra=True)
        _check_resume(extra, config, model_config, model, ckpt)
        if tuple(model.categories) != tuple(categories):
            raise ValueError(f"{ckpt} was trained on {model.categories}, the dataset gives {categories}")
        history, start_epoch = extra["history"], int(extra["epoch"])
    else:
        deformables, names = load_deformables(deform, categories)
        _check_cad_models(data, categories, names)
        model = DMNT(categories, deformables, names, model_config, weights=weights).to(device)
        extra = None
    h, w = dataset[0]["image"].shape[-2:]
    if h % model.stride or w % model.stride:
        raise ValueError(f"image size {(h, w)} is not divisible by the stride {model.stride}")
    train_idx, val_set, val_idx = held_out_split(dataset, categories, config, val_data)
    if len(train_idx) < config.batch_size:
        raise ValueError(f"only {len(train_idx)} training images for batch_size {config.batch_size}")
    sources = {"val_data": str(Path(val_data).resolve()) if val_data is not None else None,
               "weights": str(weights) if weights is not None else None}
    if extra is not None:  # a resumed run must keep its training images and its starting point
        saved = {k: extra.get(k) for k in sources}
        if "val_data" in extra and saved != sources:
            diff = {k: (saved[k], sources[k]) for k in sources if saved[k] != sources[k]}
            raise ValueError(f"{ckpt} was written with other --val-data/--weights (saved, given): {diff}")
        if extra.get("split", {}).get("train", train_idx) != train_idx:
            raise ValueError(f"{ckpt} was trained on another split of {data} (the dataset or val_data changed)")
    optimizer = torch.optim.Adam(model.backbone.parameters(), lr=config.lr)
    if extra is not None:
        optimizer.load_state_dict(extra["optimizer"])
    net = model.backbone
    if dist.on:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(model.backbone, device_ids=[torch.device(device).index] if torch.device(device).type == "cuda" else None)
    frags = FragmentCache()
    rank0 = dist.rank == 0
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps({"train": config.to_dict(), "model": model.config.to_dict(),
                                                           "data": str(data), "deform": str(deform), "world_size": dist.world,
                                                           **sources}, indent=1))
        atomic_write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    steps_per_epoch = len(train_idx) // config.batch_size
    local = config.batch_size // dist.world
    timings: dict = {}
    t_start = time.perf_counter()
    images_done = 0
    bar = tqdm(total=(config.epochs - start_epoch) * steps_per_epoch, disable=not (progress and rank0), desc="train", leave=False)
    for epoch in range(start_epoch, config.epochs):
        order = torch.randperm(len(train_idx), generator=_generator(config.seed, 5, epoch)).tolist()
        for step in range(steps_per_epoch):
            t0 = time.perf_counter()
            glob = [train_idx[order[step * config.batch_size + k]] for k in range(config.batch_size)]
            mine = list(range(dist.rank * local, (dist.rank + 1) * local))
            items = [dataset[glob[k]] for k in mine]
            keys = [(glob[k], (epoch, step, k)) for k in mine]
            loss_sum = train_step(model, net, optimizer, items, keys, frags, config, dist, device, timings)
            total = torch.tensor([loss_sum], dtype=torch.float64, device=device)
            if dist.on:
                dist.reduce(total)
            rec = {"epoch": epoch, "step": epoch * steps_per_epoch + step, "loss": float(total) / config.batch_size,
                   "images": config.batch_size, "seconds": round(time.perf_counter() - t0, 4)}
            history.append(rec)
            images_done += config.batch_size
            if rank0:
                with open(out / "log.jsonl", "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{rec['loss']:.3f}")
        if rank0:
            model.save(ckpt, extra={"train_config": config.to_dict(), "epoch": epoch + 1, "history": history,
                                    "optimizer": optimizer.state_dict(), "split": {"train": train_idx, "val": val_idx}, **sources,
                                    "world_size": dist.world})
            ep = [r["loss"] for r in history if r["epoch"] == epoch]
            echo(f"epoch {epoch + 1}/{config.epochs}: loss {sum(ep) / max(len(ep), 1):.4f}")
    bar.close()
    seconds = time.perf_counter() - t_start
    result = {"history": history, "seconds": seconds, "images_per_s": images_done / seconds if images_done else float("nan"),
              "timings": timings, "trained": None, "untrained": None, "line": None, "model": model}
    if rank0:
        model.save(out / "model.pt")
        if evaluate and val_idx:
            vfrags = frags if val_set is dataset else FragmentCache()  # fragments are cached by index
            trained = evaluate_correspondence(model, val_set, val_idx, vfrags, config, device=device)
            with torch.random.fork_rng(devices=[]):
                fresh = DMNT(model.categories, {c: model.deformable(c) for c in model.categories}, model.cad_names, model.config,
                             weights=weights).to(device)  # the starting point: same seed, same initial weights
            untrained = evaluate_correspondence(fresh, val_set, val_idx, vfrags, config, candidates=model.textures.seen > 0,
                                                device=device)
            line = final_line(trained, untrained)
            atomic_write_text(out / "eval.json", json.dumps({"trained": trained, "untrained": untrained, "line": line,
                                                             "train_seconds": seconds, "val_images": len(val_idx)}, indent=1))
            result.update(trained=trained, untrained=untrained, line=line)
    if os.environ.get("DMNT_DUMP_MEMORY"):  # debugging aid (used by the tests): every rank's memories
        torch.save({"texels": model.textures.texels.cpu(), "seen": model.textures.seen.cpu(), "bank": model.bank.memory.cpu(),
                    "ptr": model.bank.ptr.cpu()}, out / f"memory_rank{dist.rank}.pt")
    if dist.on:
        dist.dist.barrier()
    return result
