"""``python -m dmnt_lib train``: contrastive training of DMNT (also under ``torchrun``).

The last line printed (rank 0) is
``texel correspondence@5: trained=<a> untrained=<b>; category match: trained=<c> untrained=<d>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

__all__ = ["add_parser", "run", "configs_from_args"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train the feature net and neural textures (contrastive, appendix A.3)",
        description="Train DMNT's backbone, neural textures and background bank on a dataset's L0 images, each with "
        "its own deformed CAD mesh; evaluate texel correspondence on held-out images. Runs under "
        "`torchrun --nproc_per_node N -m dmnt_lib train ...` with DDP.",
    )
    p.add_argument("--data", type=Path, required=True, help="dataset folder (python -m dmnt_lib data --levels 0)")
    p.add_argument("--deform", type=Path, required=True, help="folder of <category>.pt deformable meshes (deform --checkpoint-dir)")
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint.pt, log.jsonl, model.pt, eval.json")
    p.add_argument("--epochs", type=_positive, help="epochs (default 20; quick 4)")
    p.add_argument("--batch-size", type=_positive, help="global batch size (default 16; quick 8)")
    p.add_argument("--quick", action="store_true", default=os.environ.get("DMNT_QUICK") == "1",
                   help="2-core preset: 3 categories, 60 training + 10 held-out images each, 4 epochs, 64x64 textures, "
                   "smaller sample counts (default from DMNT_QUICK=1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--categories", nargs="+", metavar="CATEGORY", help="categories to train (default: all of the dataset; quick: 3)")
    p.add_argument("--per-category", type=_positive, help="at most this many training images per category")
    p.add_argument("--seed", type=int, help="seed of every random choice (default 0)")
    p.add_argument("--threads", type=_positive, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any TrainConfig or ModelConfig field, e.g. --set lr=3e-4 --set texture_size=64")
    p.add_argument("--val-data", type=Path, help="held-out images for the final correspondence check (e.g. a validation "
                   "set, data --seed 2); then every image of --data trains (default: val_per_category held out of --data)")
    p.add_argument("--weights", help="the backbone's initial weights: a torchvision weights name of its arch (e.g. "
                   "ResNet18_Weights.IMAGENET1K_V1 for the default resnet18, downloaded by torchvision) or a local "
                   "state-dict file of the torchvision model; default from scratch")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _parse_value(field, text: str):
    if text in ("None", "none"):
        return None
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    if "tuple" in kind:
        return tuple(x for x in text.split(",") if x)
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    return text


def configs_from_args(args):
    """``(TrainConfig, ModelConfig)`` from the parsed arguments (preset, flags, then ``--set``)."""
    from .dmnt import ModelConfig
    from .train import TrainConfig

    tfields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    mfields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    tover, mover = {}, {}
    for flag, key in (("epochs", "epochs"), ("batch_size", "batch_size"), ("per_category", "per_category"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            tover[key] = getattr(args, flag)
    if args.categories:
        tover["categories"] = tuple(args.categories)
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        if key in tfields:
            tover[key] = _parse_value(tfields[key], text)
        elif key in mfields:
            mover[key] = _parse_value(mfields[key], text)
        else:
            raise ValueError(f"--set: unknown field {key!r}; TrainConfig: {sorted(tfields)}; ModelConfig: {sorted(mfields)}")
    if "seed" in tover and "seed" not in mover:
        mover["seed"] = tover["seed"]
    if args.quick:
        if "categories" not in tover:
            tover["categories"] = _quick_categories(args.data)
        return TrainConfig.quick(**tover), ModelConfig(**{**QUICK_MODEL, **mover})
    return TrainConfig(**tover), ModelConfig(**mover)


#: ``--quick``'s model: 64 x 64 textures. At 32 x 32 features an object spans ~15-25 feature pixels and a
#: 128 x 128 atlas puts several texels on each of them, so "within 5 texels" asks for sub-pixel accuracy;
#: measured: after 2 quick epochs corr@5 0.038 (S=128) vs 0.120 (S=64), untrained 0.02-0.05.
QUICK_MODEL = {"texture_size": 64}

#: ``--quick`` trains these when the dataset has them (else its first three categories).
QUICK_CATEGORIES = ("car", "aeroplane", "chair")


def _quick_categories(data: Path):
    from ..data.shapes import CATEGORIES

    present = [c for c in CATEGORIES if (Path(data) / "L0" / "annotations" / c).is_dir() or (Path(data) / "CAD" / c).is_dir()]
    chosen = [c for c in QUICK_CATEGORIES if c in present]
    return tuple(chosen if len(chosen) == len(QUICK_CATEGORIES) else present[:3]) or None


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from .train import train

    try:
        dev = torch.device(args.device)
    except (RuntimeError, ValueError):
        print(f"error: --device {args.device!r} is not a torch device (cpu, cuda)", file=sys.stderr)
        return 2
    if dev.type == "cuda" and not torch.cuda.is_available():
        print(f"error: --device {args.device}: no CUDA GPU is available here; use --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config, model_config = configs_from_args(args)
        result = train(args.data, args.deform, args.out, config, model_config, device=args.device, resume=args.resume,
                       progress=not args.no_progress, echo=tqdm.write, weights=args.weights, val_data=args.val_data)
    except (FileNotFoundError, FileExistsError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result["line"] is not None:
        print(f"trained {len(result['history'])} steps in {result['seconds']:.1f} s ({result['images_per_s']:.1f} images/s)")
        print(result["line"], flush=True)
    return 0
