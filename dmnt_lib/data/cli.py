"""``python -m dmnt_lib data``: generate the synthetic dataset (figures: ``data/viz.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .shapes import CATEGORIES
from .occlusion import OcclusionError
from .synthetic import generate_dataset

__all__ = ["add_parser", "run", "TRAIN_TEST_HELP"]

TRAIN_TEST_HELP = """\
train and test data (as in the paper: train unoccluded, test at every occlusion level):
  python -m dmnt_lib data --out data/train --levels 0 --seed 0
  python -m dmnt_lib data --out data/test --levels 0 1 2 3 --seed 1
Different seeds give independent objects and poses; the same seed gives byte-identical files.
Every level of one run shows the same objects and poses, with more of each object hidden."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``data`` subcommand on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "data",
        help="generate a synthetic PASCAL3D+-style dataset (12 categories, occlusion levels L0-L3)",
        description="Render procedural CAD models at random PASCAL3D+-like poses on cluttered backgrounds,\n"
        "add occluders hiding 20-40% (L1), 40-60% (L2) or 60-80% (L3) of the object, and write\n"
        "images, NeMo-style .npz annotations, lists and CAD/*.off files under --out.",
        epilog=TRAIN_TEST_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: empty or absent, or with --overwrite a previous dmnt dataset")
    p.add_argument("--per-category", type=int, default=100, help="samples per category (default 100)")
    p.add_argument("--levels", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3],
                   help="occlusion levels to write (default 0 1 2 3); every level shows the same objects and poses")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (>= 0); the same seed gives byte-identical files, another seed independent "
                   "objects and poses (train: 0, test: 1; see below)")
    p.add_argument("--image-size", type=int, default=128, help="square image size in pixels (default 128)")
    p.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES, metavar="CATEGORY",
                   help="subset of: " + " ".join(CATEGORIES))
    p.add_argument("--overwrite", action="store_true",
                   help="replace a dmnt dataset (or an interrupted generation) in --out; other folders are never deleted")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Run ``data``; returns the exit status: 2, with a one-line message, for bad arguments, a
    protected ``--out`` or a sample that cannot be occluded at its level."""
    try:
        report = generate_dataset(args.out, args.per_category, args.levels, args.seed, args.image_size,
                                  args.categories, overwrite=args.overwrite, progress=not args.no_progress)
    except (FileExistsError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OcclusionError as e:
        print(f"error: {e}; {args.out} is left marked as an interrupted generation (rerun with --overwrite)",
              file=sys.stderr)
        return 2
    print(f"wrote {report['images']} images ({report['samples']} samples x {len(set(args.levels))} levels) "
          f"to {args.out} in {report['seconds']:.1f} s: {report['images_per_s']:.1f} images/s, "
          f"{report['bytes'] / 1e6:.1f} MB")
    return 0
