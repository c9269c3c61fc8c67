"""``python -m dmnt_lib baseline {train,bench}``: train the multi-task Mask R-CNN; measure its speed.

Evaluation goes through the shared command: ``python -m dmnt_lib evaluate --run RUN --data TESTDIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["add_parser", "run", "config_from_args", "benchmark", "QUICK"]

#: ``--quick``: a tiny run for demos and smoke tests (also what DMNT_QUICK=1 selects).
QUICK = {"epochs": 2, "per_category": 4}


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``baseline`` (with ``train`` and ``bench``) on an argparse ``subparsers`` object."""
    from ..data.shapes import CATEGORIES

    p = subparsers.add_parser(
        "baseline", help="multi-task Mask R-CNN baseline (class, box, amodal mask, pose bins)",
        description="torchvision Mask R-CNN with a per-class viewpoint-bin head (appendix A.4). Train with "
        "`baseline train`, evaluate with `python -m dmnt_lib evaluate --run RUN --data TESTDIR`.")
    sub = p.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")

    t = sub.add_parser("train", help="train (or --resume) a run",
                       description="Train on the unoccluded (L0) images of --data; atomic checkpoint and run.json in "
                       "--out after every epoch; works under torchrun (DDP, gloo on CPU).")
    t.add_argument("--data", type=Path, required=True, help="training data folder (e.g. `data --levels 0 --seed 0`)")
    t.add_argument("--out", type=Path, required=True, help="run folder")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _model_args(t, CATEGORIES)
    t.set_defaults(func=run)

    b = sub.add_parser("bench", help="training and inference images/s",
                       description="Time training iterations and inference on images of --data at a config.")
    b.add_argument("--data", type=Path, required=True, help="data folder (level 0 is used)")
    b.add_argument("--iters", type=_positive(int), default=5, help="timed iterations of each (default 5)")
    _model_args(b, CATEGORIES)
    b.set_defaults(func=run)
    return p


def _model_args(p, categories):
    p.add_argument("--epochs", type=_positive(int), help="epochs (default 12; 2 with --quick)")
    p.add_argument("--batch-size", type=_positive(int), help="global batch size (default 8)")
    p.add_argument("--lr", type=_positive(float), help="AdamW learning rate (default 1e-3)")
    p.add_argument("--backbone", help="resnet18 (default), resnet34, resnet50 or resnext50_32x4d")
    p.add_argument("--weights", help="ResNet weights: a torchvision name (e.g. ResNet18_Weights.IMAGENET1K_V1) or a "
                   "state-dict file (default: from scratch)")
    p.add_argument("--stock", action="store_true", help="torchvision's head and proposal sizes instead of the CPU-slim ones")
    p.add_argument("--image-size", type=_positive(int), help="network input size (default: the data's image size)")
    p.add_argument("--no-augment", action="store_true", help="no flips or colour jitter")
    p.add_argument("--categories", nargs="+", choices=categories, metavar="CATEGORY", help="subset of categories")
    p.add_argument("--per-category", type=_positive(int), help="first N training images per category (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    p.add_argument("--quick", action="store_true", default=os.environ.get("DMNT_QUICK") == "1",
                   help=f"tiny run: {QUICK['epochs']} epochs on {QUICK['per_category']} images per category (default from DMNT_QUICK=1)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu; under torchrun each rank takes cuda:LOCAL_RANK)")
    p.add_argument("--threads", type=_positive(int), help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _data_image_size(data: Path) -> int | None:
    meta = data / "meta.json"
    try:
        size = json.loads(meta.read_text())["config"]["image_size"]
        return int(max(size)) if isinstance(size, list) else int(size)
    except (OSError, KeyError, TypeError, ValueError):
        return None


def config_from_args(args):
    """The ``BaselineConfig`` the options describe (``ValueError`` for bad combinations)."""
    from .model import BaselineConfig

    kw = {}
    for opt, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("lr", "lr"), ("backbone", "backbone"),
                     ("weights", "weights"), ("seed", "seed")):
        if getattr(args, opt) is not None:
            kw[key] = getattr(args, opt)
    if args.quick and args.epochs is None:
        kw["epochs"] = QUICK["epochs"]
    size = args.image_size or _data_image_size(args.data)
    if size:
        kw["image_size"] = size
    if args.no_augment:
        kw.update(hflip=False, color_jitter=0.0)
    return BaselineConfig.stock(**kw) if args.stock else BaselineConfig(**kw)


def benchmark(data, config, iters: int = 5, device: str = "cpu", categories=None) -> dict:
    """Training and inference images/s of ``config`` on images of ``data`` (one warm-up iteration each).

    Returns ``{"train_images_per_s", "infer_images_per_s", "batch_size", "image_size", "threads"}``.
    """
    import torch

    from .model import build_model
    from .train import DetectionData, collate

    ds = DetectionData(data, categories, None, config, augment=False)
    n = config.batch_size
    images, targets = collate([ds[i % len(ds)] for i in range(n)])
    images = [im.to(device) for im in images]
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    torch.manual_seed(config.seed)
    model = build_model(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr)

    def step():
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    train_ips = n * iters / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(images)
        t0 = time.perf_counter()
        for _ in range(iters):
            model(images)
        infer_ips = n * iters / (time.perf_counter() - t0)
    return {"train_images_per_s": train_ips, "infer_images_per_s": infer_ips, "batch_size": n,
            "image_size": config.image_size, "threads": torch.get_num_threads()}


def run(args) -> int:
    """Run ``baseline train`` / ``baseline bench``; exit 2 with a one-line message on bad input."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA GPU is available here; use --device cpu")
        config = config_from_args(args)
        if args.baseline_command == "bench":
            r = benchmark(args.data, config, args.iters, args.device, args.categories)
            print(f"baseline {config.backbone} @ {r['image_size']} px, batch {r['batch_size']}, {r['threads']} threads: "
                  f"train {r['train_images_per_s']:.1f} images/s, inference {r['infer_images_per_s']:.1f} images/s")
            return 0
        from .train import train

        per_category = args.per_category or (QUICK["per_category"] if args.quick else None)
        explicit = any(getattr(args, k) is not None for k in ("batch_size", "lr", "backbone", "weights", "image_size")) \
            or args.stock or args.no_augment
        # on --resume without model options the stored config is used (with a new --epochs, if given)
        if args.resume and not explicit and (args.out / "checkpoint.pt").exists():
            from .train import _load_checkpoint
            from .model import BaselineConfig

            saved = BaselineConfig.from_dict(_load_checkpoint(args.out / "checkpoint.pt")["config"])
            if args.epochs is not None:
                saved.epochs = args.epochs
            config = saved
        start = time.perf_counter()
        history = train(args.data, args.out, config, args.device, resume=args.resume, categories=args.categories,
                        per_category=per_category, progress=not args.no_progress)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0 and history["epochs"]:
        e = history["epochs"][-1]
        print(f"trained {args.out} to epoch {e['epoch']} in {time.perf_counter() - start:.1f} s "
              f"(last epoch {e['images_per_s']:.1f} images/s, loss {e['loss']:.4f}); "
              f"evaluate: python -m dmnt_lib evaluate --run {args.out} --data TESTDIR")
    return 0
