"""Small plotting helpers shared by the demo, the figure scripts and the notebooks."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["checkerboard", "uv_seam_pixels", "uv_to_rgb", "save_figure"]


def checkerboard(size: int | tuple[int, int], squares: int = 8, colored: bool = True) -> torch.Tensor:
    """A ``(1, 3, S_h, S_w)`` checkerboard texture; with ``colored`` the hue varies with ``(u, v)``
    so that each square is identifiable (useful to see how the UV atlas is laid out)."""
    s_h, s_w = (size, size) if isinstance(size, int) else size
    if s_h < 1 or s_w < 1 or squares < 1:
        raise ValueError(f"size and squares must be positive, got size={size}, squares={squares}")
    v = (torch.arange(s_h) + 0.5) / s_h
    u = (torch.arange(s_w) + 0.5) / s_w
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    checks = ((uu * squares).floor() + (vv * squares).floor()) % 2
    if not colored:
        return checks.expand(1, 3, s_h, s_w).clone()
    base = torch.stack([uu, vv, 1 - uu], 0)
    return (0.35 + 0.65 * base * (0.4 + 0.6 * checks))[None]


def uv_seam_pixels(uv: torch.Tensor, mask: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """``(B, H, W)`` bool: on-mask pixels whose right or lower on-mask neighbour jumps by more than
    ``threshold`` in ``u`` or ``v`` — where the UV fragment crosses a seam of the atlas (the same
    test the image→UV transform uses to skip quads)."""
    jump = torch.zeros_like(mask)
    du = (uv[:, :, 1:] - uv[:, :, :-1]).abs().amax(-1) > threshold
    dv = (uv[:, 1:] - uv[:, :-1]).abs().amax(-1) > threshold
    jump[:, :, :-1] |= du & mask[:, :, 1:] & mask[:, :, :-1]
    jump[:, :-1] |= dv & mask[:, 1:] & mask[:, :-1]
    return jump


def uv_to_rgb(uv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` colours: red = u, green = v, white background off the mask."""
    rgb = torch.cat([uv, torch.full_like(uv[..., :1], 0.5)], -1)
    return torch.where(mask[..., None], rgb, torch.ones_like(rgb))


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
