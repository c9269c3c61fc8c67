"""A generated dataset reused across notebooks, demos and tests: ``ensure_dataset``."""

from __future__ import annotations

import json
from pathlib import Path

from . import _checks
from .shapes import CATEGORIES
from .synthetic import check_dataset_args, dataset_meta, generate_dataset

__all__ = ["ensure_dataset"]


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
