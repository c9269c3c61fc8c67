"""``python -m dmnt_lib data``: generate the synthetic dataset; ``demo``: its figures.

Also the two figure builders the notebook uses: ``cad_gallery`` (every procedural CAD model)
and ``sample_grid`` (one sample per category at every occlusion level), both returning
``(H, W, 3)`` uint8 arrays.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from .pascal3d import Pascal3D, atomic_write_bytes
from .shapes import CATEGORIES, NUM_CAD_MODELS, cad_models
from . import _checks
from .occlusion import OcclusionError
from .synthetic import _torch_threads, check_dataset_args, dataset_meta, generate_dataset, render_model

__all__ = ["add_parser", "run", "demo", "ensure_dataset", "cad_gallery", "sample_grid", "save_png", "TRAIN_TEST_HELP"]

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


# --------------------------------------------------------------------------- figures


def _label(text: str, w: int, h: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(im).text((4, h // 2 - 6), text, fill="black")
    return np.asarray(im)


def cad_gallery(cell: int = 80, seed: int = 0) -> np.ndarray:
    """Every procedural CAD model, one row per category, shaded at azimuth 35°, elevation 20°.

    Returns:
        ``(12 * cell, 100 + 10 * cell, 3)`` uint8 (white background).
    """
    cols = max(NUM_CAD_MODELS.values())
    rng = np.random.default_rng(seed)
    rows = []
    with _torch_threads(1):
        for cat in CATEGORIES:
            rows.append(_gallery_row(cat, cell, cols, seed, rng))
    return np.concatenate(rows, 0)


def _gallery_row(cat, cell, cols, seed, rng) -> np.ndarray:
    row = [_label(cat, 100, cell)]
    for m in cad_models(cat, seed):
        r = float(m.verts.norm(dim=1).max())
        pose = {"azimuth": math.radians(35), "elevation": math.radians(20), "theta": 0.0, "focal": 1.0,
                "viewport": 3.0 * cell, "distance": r * math.sqrt(1 + (2 * 3.0 / 0.95) ** 2),
                "principal": np.array([cell / 2, cell / 2])}
        rgb, mask = render_model(m, pose, (cell, cell), np.random.default_rng(rng.integers(1 << 31)))
        rgb[~mask] = 1.0
        row.append(np.round(rgb * 255).astype(np.uint8))
    row += [np.full((cell, cell, 3), 255, np.uint8)] * (cols - len(row) + 1)
    return np.concatenate(row, 1)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner


def sample_grid(root, index: int = 0, categories=None, levels=(0, 1, 2, 3)) -> np.ndarray:
    """Sample ``index`` of each category (rows) at each level (columns), the amodal mask outlined
    in yellow, read through ``Pascal3D`` (either layout).

    Returns:
        ``(rows * H + 16, 100 + cols * W, 3)`` uint8 with a header naming levels and ratios.
    """
    src = Pascal3D(root, categories, levels)
    by_key = {(c, lv, sid): i for i, (c, lv, sid, _, _) in enumerate(src.items)}
    rows = []
    for cat in src.categories:
        ids = [sid for (c, lv, sid) in by_key if c == cat and lv == src.levels[0]]
        sid = ids[min(index, len(ids) - 1)]
        cells = []
        for lv in src.levels:
            s = src[by_key[(cat, lv, sid)]]
            img = s.image.copy()
            if s.mask is not None:
                img[_outline(s.mask)] = (255, 230, 0)
            ratio = "" if s.occlusion_ratio is None else f" {100 * s.occlusion_ratio:.0f}%"
            cells.append(np.concatenate([_label(f"L{lv}{ratio}", img.shape[1], 14), img], 0))
        h = cells[0].shape[0]
        rows.append(np.concatenate([_label(cat, 100, h)] + cells, 1))
    return np.concatenate(rows, 0)


def save_png(path, image: np.ndarray, max_bytes: int = 300_000) -> Path:
    """Write ``image (H, W, 3)`` uint8 as PNG atomically; fall back to a 256-colour palette if
    the file would exceed ``max_bytes``."""
    from PIL import Image

    im = Image.fromarray(image)
    for candidate in (im, im.quantize(256, dither=Image.Dither.NONE)):
        buf = io.BytesIO()
        candidate.save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes:
            break
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def ensure_dataset(root, per_category: int, levels=(0, 1, 2, 3), seed: int = 0, image_size=128,
                   categories=CATEGORIES, progress: bool = False) -> Path:
    """``root`` holding the requested dataset: reused when its ``meta.json`` matches, else
    (re)generated. Like ``generate_dataset(..., overwrite=True)`` it only ever replaces a dmnt
    dataset or an interrupted generation; any other non-empty ``root`` raises ``FileExistsError``.

    Args:
        root: the dataset folder (str or path). image_size: ``H`` or ``(H, W)``.
        per_category, levels, seed, categories, progress: as ``generate_dataset``.
    """
    per_category, levels, seed, categories, config = check_dataset_args(per_category, levels, seed, categories, image_size)
    root = _checks.path("root", root)
    want = dataset_meta(per_category, levels, seed, categories, config)
    try:
        have = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):  # absent or unreadable: generate (which decides if root may be replaced)
        have = None
    if have != want:
        generate_dataset(root, per_category, levels, seed, None, categories, overwrite=True, config=config,
                         progress=progress)
    return root


def demo(figures_dir: Path, cache_dir: Path, quick: bool) -> list[Path]:
    """Generate (or reuse) a small dataset in ``cache_dir`` and write the two data figures.

    The cached dataset (all 12 categories, all 4 levels, 128 px; 1 sample per category when
    ``quick``, else 2) is reused when its ``meta.json`` matches the requested configuration.

    Returns:
        ``[figures_dir/cad_models.png, figures_dir/dataset_samples.png]``.
    """
    figures_dir = Path(figures_dir)
    root = ensure_dataset(Path(cache_dir) / "synthetic_demo", 1 if quick else 2, progress=not quick)
    return [save_png(figures_dir / "cad_models.png", cad_gallery()),
            save_png(figures_dir / "dataset_samples.png", sample_grid(root, index=0))]
