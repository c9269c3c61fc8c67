"""Figures of the data stage: ``cad_gallery`` (every procedural CAD model) and ``sample_grid``
(one sample per category at every occlusion level), both ``(H, W, 3)`` uint8 arrays, ``save_png``,
and the demo stage that writes them."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from .cache import ensure_dataset
from .pascal3d import Pascal3D
from .shapes import CATEGORIES, NUM_CAD_MODELS, cad_models
from .synthetic import _torch_threads, render_model

__all__ = ["cad_gallery", "sample_grid", "save_png", "demo"]


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
