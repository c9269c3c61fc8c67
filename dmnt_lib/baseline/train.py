"""Training the multi-task Mask R-CNN: targets from the annotations, augmentations, resumable (DDP) loop.

**Data.** The unoccluded (level 0) training images, as DMNT uses. Per image one object: the amodal
mask of the annotation (the CAD projection; for real PASCAL3D+ without masks ``data.PoseDataset``
renders it from the CAD model at the annotated pose, what appendix A.4 does), its box from the mask
(pixel edges ``(x0, y0, x1, y1)``), label ``CATEGORIES.index(category) + 1`` and the pose
``(azimuth, elevation, theta)``. An empty mask (object outside the image) gives an image without
objects (only background RoIs; zero mask and pose loss).

**Augmentations** (random per ``(seed, epoch, image)``, so a resumed run sees the same ones):

* horizontal flip with probability 0.5 (``hflip``): image, mask and box mirrored, and the pose
  mirrored to ``(-azimuth, elevation, -theta)`` -- the view of the mirrored object, exact for
  left-right symmetric objects (checked on the procedural CAD models: the flipped silhouette equals
  the silhouette rendered at the mirrored pose, IoU >= 0.985 for every category);
* brightness and contrast factors uniform in ``[1 - color_jitter, 1 + color_jitter]``.

**Loop.** AdamW (``lr``, ``weight_decay``), linear warm-up for ``warmup_iters`` iterations then a
cosine decay to 0 at ``epochs``; the global batch is ``batch_size`` images (split across ranks under
``torchrun``: DistributedDataParallel, gloo on CPU, nccl on CUDA; GroupNorm has no batch statistics, so
the ranks need nothing but the gradient all-reduce). The torch RNG (torchvision's proposal sampling)
is reseeded from ``(seed, epoch, rank)`` at every epoch and the image order comes from a
``DistributedSampler`` seeded the same way, so ``resume`` from an epoch checkpoint is bit-identical
to an uninterrupted run.

**Run folder** ``RUN/``: ``run.json`` (``{"kind": "baseline", "format", "config", "data",
"categories", "epochs_done", "checkpoint"}``, the marker ``evaluate`` recognises), ``checkpoint.pt``
(model, optimizer, scheduler, history; written atomically after every epoch), ``history.json``
(per-iteration and per-epoch losses, learning rate, images/s).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..data.shapes import CATEGORIES
from ..fileio import atomic_path, atomic_write_text
from .model import BaselineConfig, build_model

__all__ = ["DetectionData", "collate", "train", "load_run", "CHECKPOINT_FORMAT", "RUN_KIND"]

CHECKPOINT_FORMAT = "dmnt-baseline-v1"
RUN_KIND = "baseline"


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """``(n, H, W)`` bool masks -> ``(n, 4)`` float32 boxes ``(x0, y0, x1, y1)`` at pixel edges (non-empty masks)."""
    out = torch.zeros(len(masks), 4)
    for k, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        out[k] = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    return out


class DetectionData(torch.utils.data.Dataset):
    """Mask R-CNN training pairs ``(image (3, H, W) float32 in [0, 1], target)`` from a dataset folder.

    ``target``: ``boxes (n, 4)`` float32, ``labels (n,)`` int64 in 1..12, ``masks (n, H, W)`` uint8,
    ``pose (n, 3)`` float32 radians, with ``n = 1`` (``0`` for an empty mask).

    Args:
        root: training data folder (ours or NeMo's layout); level 0 is used.
        categories: subset of ``CATEGORIES`` (default: all present). per_category: first N images of
            each category (default all).
        config: ``BaselineConfig`` (``hflip``, ``color_jitter``, ``seed``). augment: apply augmentations.
        render_missing_masks: render amodal masks missing from the annotations from the CAD models
            (otherwise such a dataset raises ``ValueError`` naming the file).
    """

    def __init__(self, root, categories=None, per_category=None, config: BaselineConfig | None = None,
                 augment: bool = True, render_missing_masks: bool = True):
        from ..data import PoseDataset

        self.data = PoseDataset(root, categories, (0,), render_missing_masks=render_missing_masks)
        self.config = config or BaselineConfig()
        self.augment = augment
        self.epoch = 0
        if per_category is not None and (isinstance(per_category, bool) or not isinstance(per_category, int) or per_category < 1):
            raise ValueError(f"per_category must be a positive int or None, got {per_category!r}")
        counts: dict = {}
        self.indices = []
        for i, (cat, *_rest) in enumerate(self.data.source.items):
            if per_category is None or counts.get(cat, 0) < per_category:
                self.indices.append(i)
            counts[cat] = counts.get(cat, 0) + 1
        if not self.indices:
            raise ValueError(f"no training images in {root}")

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, i: int):
        item = self.data[self.indices[i]]
        image, mask = item["image"], item["mask"].bool()
        pose = torch.stack([item["azimuth"], item["elevation"], item["theta"]]).float()
        if self.augment:
            g = torch.Generator().manual_seed(_mix(self.config.seed, self.epoch, self.indices[i]))
            if self.config.hflip and torch.rand((), generator=g) < 0.5:
                image, mask = image.flip(-1), mask.flip(-1)
                pose = torch.stack([torch.remainder(-pose[0], 2 * math.pi), pose[1], -pose[2]])
            j = self.config.color_jitter
            if j > 0:
                b, c = (1 + j * (2 * torch.rand(2, generator=g) - 1)).tolist()
                mean = image.mean()
                image = ((image - mean) * c + mean * b).clamp(0, 1)
        masks = mask[None] if mask.any() else mask.new_zeros((0,) + mask.shape)
        target = {"boxes": boxes_from_masks(masks), "labels": torch.full((len(masks),), CATEGORIES.index(item["category"]) + 1),
                  "masks": masks.to(torch.uint8), "pose": pose[None].expand(len(masks), 3).clone()}
        return image, target


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (a deterministic hash, unlike Python's ``hash`` of str)."""
    h = 1469598103934665603
    for v in values:
        h = ((h ^ (int(v) & 0xFFFFFFFFFFFF)) * 1099511628211) % (1 << 63)
    return h


def collate(batch):
    """List of ``(image, target)`` -> ``(list of images, list of targets)`` (torchvision's input)."""
    images, targets = zip(*batch)
    return list(images), list(targets)


# --------------------------------------------------------------------------- distributed


def _dist():
    """``(rank, world_size, initialised_here)``; initialises torch.distributed under torchrun."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return 0, 1, False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("DMNT_DIST_BACKEND") != "gloo" else "gloo"
        dist.init_process_group(backend)
        return dist.get_rank(), dist.get_world_size(), True
    return dist.get_rank(), dist.get_world_size(), False


# --------------------------------------------------------------------------- checkpoints


def _save(run: Path, model, optimizer, scheduler, history, epoch: int, config: BaselineConfig, meta: dict) -> None:
    state = {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epoch": epoch, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "history": history}
    with atomic_path(run / "checkpoint.pt") as tmp:
        torch.save(state, tmp)
    atomic_write_text(run / "history.json", json.dumps(history) + "\n")
    atomic_write_text(run / "run.json", json.dumps({"kind": RUN_KIND, "format": CHECKPOINT_FORMAT, **meta,
                                                    "config": config.to_dict(), "epochs_done": epoch,
                                                    "checkpoint": "checkpoint.pt"}, indent=1) + "\n")


def load_run(run, device="cpu"):
    """``(model in eval mode, config, run.json dict)`` of a baseline run folder.

    Raises:
        FileNotFoundError: no ``run.json`` or checkpoint. ValueError: not a baseline run or unreadable.
    """
    run = Path(run)
    meta_path = run / "run.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: not a run folder (train one with `baseline train --out {run}`)")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != RUN_KIND:
        raise ValueError(f"{run} is a {meta.get('kind')!r} run, not a baseline run")
    state = _load_checkpoint(run / meta.get("checkpoint", "checkpoint.pt"))
    config = BaselineConfig.from_dict(state["config"])
    model = build_model(config)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, meta


def _load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any unpickling failure is an unreadable file
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint")
    return state


# --------------------------------------------------------------------------- training


def _schedule(config: BaselineConfig, total_iters: int):
    def factor(step: int) -> float:
        if step < config.warmup_iters:
            return (step + 1) / config.warmup_iters
        t = (step - config.warmup_iters) / max(1, total_iters - config.warmup_iters)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return factor


def train(data, out, config: BaselineConfig | None = None, device: str = "cpu", resume: bool = False,
          categories=None, per_category=None, progress: bool = True, echo=print) -> dict:
    """Train (or resume) a baseline run in ``out``; returns the history dict.

    Args:
        data: training data folder. out: run folder (created; an existing run needs ``resume``).
        config: ``BaselineConfig`` (None: ``BaselineConfig()``, or on resume the stored one); on resume
            a given config must equal the stored one except ``epochs`` (to train longer).
        device: torch device string. categories, per_category: as ``DetectionData``.
        progress: tqdm bar (rank 0). echo: one line per epoch (rank 0; None: silent).

    Returns:
        ``{"iterations": [{"epoch", "iter", "lr", "loss", <each loss>}], "epochs": [{"epoch", "loss",
        <each loss>, "seconds", "images_per_s"}]}``.
    """
    from tqdm.auto import tqdm

    if config is not None and not isinstance(config, BaselineConfig):
        raise TypeError(f"config must be a BaselineConfig or None, got {type(config).__name__}")
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, got {type(device).__name__}")
    out = Path(out)
    state = None
    if (out / "checkpoint.pt").exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a baseline run; pass resume=True (--resume) to continue it")
        state = _load_checkpoint(out / "checkpoint.pt")
        saved = BaselineConfig.from_dict(state["config"])
        if config is not None:
            diff = {k: (v, getattr(config, k)) for k, v in saved.to_dict().items()
                    if k != "epochs" and getattr(config, k) != getattr(saved, k)}
            if diff:
                raise ValueError(f"{out}: the run was trained with another config (saved, given): {diff}")
            saved.epochs = config.epochs  # training longer (or as long) is allowed
        config = saved
    elif (out / "run.json").exists() and not resume:
        raise FileExistsError(f"{out} holds a run.json but no checkpoint (an interrupted first epoch?); "
                              "pass --resume to start it again, or choose another --out")
    config = config or BaselineConfig()
    rank, world, owns_group = _dist()
    dev = torch.device(device)
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    if config.batch_size % world:
        raise ValueError(f"batch_size ({config.batch_size}) must be divisible by the number of processes ({world})")
    dataset = DetectionData(data, categories, per_category, config)
    meta = {"data": str(Path(data).resolve()), "categories": list(dataset.data.categories), "per_category": per_category,
            "n_images": len(dataset)}

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = build_model(config).to(dev)
    per_rank = config.batch_size // world
    iters_per_epoch = math.ceil(len(dataset) / world / per_rank)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, config.epochs * iters_per_epoch))
    history = {"iterations": [], "epochs": []}
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scheduler.lr_lambdas = [_schedule(config, config.epochs * iters_per_epoch)]
        history, start_epoch = state["history"], int(state["epoch"])
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                                  seed=config.seed, drop_last=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler, collate_fn=collate)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if state is None:
            atomic_write_text(out / "run.json", json.dumps({"kind": RUN_KIND, "format": CHECKPOINT_FORMAT, **meta,
                                                            "config": config.to_dict(), "epochs_done": 0}, indent=1) + "\n")
    bar = tqdm(total=config.epochs * iters_per_epoch, initial=start_epoch * iters_per_epoch,
               disable=not progress or rank != 0, desc="baseline train", unit="it")
    try:
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(_mix(config.seed, epoch, rank))
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            net.train()
            t0, n_img, sums = time.perf_counter(), 0, {}
            for it, (images, targets) in enumerate(loader):
                images = [im.to(dev) for im in images]
                targets = [{k: v.to(dev) for k, v in t.items()} for t in targets]
                losses = net(images, targets)
                losses["loss_pose"] = losses["loss_pose"] * config.pose_weight
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at epoch {epoch} iteration {it}: "
                                             f"{ {k: float(v) for k, v in losses.items()} }")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                logged = _reduce({"loss": loss.detach(), **{k: v.detach() for k, v in losses.items()}}, world)
                n_img += len(images) * world
                for k, v in logged.items():
                    sums[k] = sums.get(k, 0.0) + v
                history["iterations"].append({"epoch": epoch, "iter": it, "lr": lr, **logged})
                bar.update(1)
                bar.set_postfix(loss=f"{logged['loss']:.3f}", epoch=epoch + 1)
            seconds = time.perf_counter() - t0
            history["epochs"].append({"epoch": epoch + 1, **{k: v / max(1, it + 1) for k, v in sums.items()},
                                      "seconds": seconds, "images_per_s": n_img / seconds})
            if rank == 0:
                _save(out, model, optimizer, scheduler, history, epoch + 1, config, meta)
                if echo is not None:
                    e = history["epochs"][-1]
                    echo(f"epoch {epoch + 1}/{config.epochs}: loss {e['loss']:.4f} (pose {e['loss_pose']:.4f}, "
                         f"mask {e['loss_mask']:.4f}, cls {e['loss_classifier']:.4f}) {seconds:.1f} s, "
                         f"{e['images_per_s']:.1f} images/s")
            if world > 1:
                torch.distributed.barrier()
    finally:
        bar.close()
        if owns_group:
            torch.distributed.destroy_process_group()
    if rank == 0 and state is not None and start_epoch >= config.epochs and echo is not None:
        echo(f"{out} is already trained for {config.epochs} epochs")
    return history


def _reduce(values: dict, world: int) -> dict:
    """Mean over ranks of scalar tensors, as floats (for logging)."""
    keys = sorted(values)
    t = torch.stack([values[k].float().cpu() for k in keys])
    if world > 1:
        import torch.distributed as dist

        t = t.to(values[keys[0]].device)
        dist.all_reduce(t)
        t = t.cpu() / world
    return {k: float(v) for k, v in zip(keys, t)}
