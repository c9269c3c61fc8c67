"""Small plotting helpers shared by the demo, the figure scripts and the notebooks."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .fileio import atomic_path

__all__ = ["checkerboard", "uv_seam_pixels", "uv_to_rgb", "save_figure", "FIGURE1_BLOCK"]

#: The 2x2 pixel block of the appendix's Figure 1 (uv of ``[[p1, p2], [p4, p3]]``), drawn by the demo and notebook 02.
FIGURE1_BLOCK = [[[0.33, 0.22], [0.47, 0.25]], [[0.30, 0.37], [0.49, 0.40]]]


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


def uv_seam_pixels(uv: torch.Tensor, mask: torch.Tensor, threshold: float = 0.2, chart: torch.Tensor | None = None) -> torch.Tensor:
    """Pixels where the UV fragment crosses a seam, by the image→UV transform's own rules.

    A 2x2 block of on-mask pixels is a seam block when ``image_to_uv`` skips it as a seam: its ``u`` or ``v``
    extent exceeds ``threshold`` (rule 2 (b)) or, with ``chart``, its four pixels are not on one chart
    (rule 2 (d)). Convexity (rule 2 (c)) is not a seam test and is not applied.

    Args:
        uv: ``(B, H, W, 2)`` texture coordinates; mask: ``(B, H, W)`` bool.
        threshold: the transform's ``seam_threshold``.
        chart: optional ``(B, H, W)`` integer per-pixel chart id (``uv_fragment(...).chart``).

    Returns:
        ``(B, H, W)`` bool: the four pixels of every seam block.
    """
    from .transform.torch_impl import quad_cross_chart, quad_on_mask, quad_seam

    seam = quad_seam(uv, threshold)
    if chart is not None:
        seam = seam | quad_cross_chart(chart)
    seam = seam & quad_on_mask(mask)  # (B, H-1, W-1)
    out = torch.zeros_like(mask)
    out[:, :-1, :-1] |= seam
    out[:, :-1, 1:] |= seam
    out[:, 1:, 1:] |= seam
    out[:, 1:, :-1] |= seam
    return out


def uv_to_rgb(uv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` colours: red = u, green = v, white background off the mask."""
    rgb = torch.cat([uv, torch.full_like(uv[..., :1], 0.5)], -1)
    return torch.where(mask[..., None], rgb, torch.ones_like(rgb))


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a matplotlib figure atomically (temp file + rename) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return Path(path)


def draw_quad_block(ax_img, ax_uv, uv_block, texture_size, texel=None, seam_threshold: float = 0.2):
    """Draw appendix Figure 1 for one 2×2 pixel block: the pixels (left) and their quad in texel
    space (right) with the texel centres it covers; for ``texel = (i, j)`` also its weights.

    Args:
        ax_img, ax_uv: matplotlib axes.
        uv_block: ``(2, 2, 2)`` uv of pixels ``[[p1, p2], [p4, p3]]`` (rows y, y+1; columns x, x+1).
        texture_size: ``(S_h, S_w)``.
        texel: optional ``(i, j)`` to annotate with its ``(s, t)`` and weights, or ``"auto"`` for
            the covered texel nearest the quad's centre.

    Returns:
        dict with ``sigma`` (0 if the quad is skipped), ``covered`` [(i, j, s, t)], and ``weights`` of ``texel``.
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    from .transform.reference import bilinear_weights, inverse_bilinear, quad_orientation, texel_range

    s_h, s_w = texture_size
    uvb = np.asarray(uv_block, dtype=np.float64)
    corners_uv = np.stack([uvb[0, 0], uvb[0, 1], uvb[1, 1], uvb[1, 0]])  # p1..p4
    q = corners_uv * np.array([s_w, s_h]) - 0.5
    sigma = quad_orientation(corners_uv, s_h, s_w, seam_threshold)
    names = ["p1", "p2", "p3", "p4"]
    colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]

    pix = [(0, 0), (1, 0), (1, 1), (0, 1)]  # (x, y) of p1..p4 in the block
    ax_img.clear()
    for (x, y), n, c in zip(pix, names, colors):
        ax_img.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fc=c, alpha=0.25, ec="k"))
        ax_img.plot(x, y, "o", color=c)
        ax_img.annotate(n, (x, y), textcoords="offset points", xytext=(6, 6), color=c)
    ax_img.plot([p[0] for p in pix + pix[:1]], [p[1] for p in pix + pix[:1]], "k--", lw=1)
    ax_img.set(xlim=(-0.7, 1.7), ylim=(1.7, -0.7), aspect="equal", title="2×2 pixel block (image)", xlabel="x", ylabel="y")

    ax_uv.clear()
    lo, hi = np.floor(q.min(0)) - 1, np.ceil(q.max(0)) + 1
    gx, gy = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
    ax_uv.plot(gx.ravel(), gy.ravel(), ".", color="0.75", ms=4)
    ax_uv.fill(q[:, 0], q[:, 1], color="tab:purple" if sigma else "0.6", alpha=0.15)
    ax_uv.plot(np.r_[q[:, 0], q[:1, 0]], np.r_[q[:, 1], q[:1, 1]], "k-", lw=1)
    for k in range(4):
        ax_uv.plot(*q[k], "o", color=colors[k])
        ax_uv.annotate(f"q{k + 1}", q[k], textcoords="offset points", xytext=(6, 6), color=colors[k])
    covered = []
    if sigma:
        for i in texel_range(q[:, 1], s_h):
            for j in texel_range(q[:, 0], s_w):
                st = inverse_bilinear(q, sigma, (j, i))
                if st is not None:
                    covered.append((i, j) + st)
                    ax_uv.plot(j, i, "s", color="tab:purple", ms=6)
    weights = None
    if texel == "auto":
        centre = q.mean(0)
        texel = min(((c[0], c[1]) for c in covered), key=lambda ij: (ij[1] - centre[0]) ** 2 + (ij[0] - centre[1]) ** 2, default=None)
    if texel is not None:
        i, j = texel
        hit = [c for c in covered if c[0] == i and c[1] == j]
        ax_uv.plot(j, i, "*", color="k", ms=14)
        if hit:
            s, t = hit[0][2:]
            weights = bilinear_weights(s, t)
            for k in range(4):
                ax_uv.plot([j, q[k, 0]], [i, q[k, 1]], "-", color=colors[k], lw=0.5 + 4 * weights[k])
            ax_uv.set_title(f"quad in texel space; texel ({i},{j}): s={s:.2f}, t={t:.2f}\n"
                            + ", ".join(f"w{k + 1}={w:.2f}" for k, w in enumerate(weights)), fontsize=9)
        else:
            ax_uv.set_title(f"quad in texel space; texel ({i},{j}) not covered", fontsize=9)
    else:
        ax_uv.set_title("quad in texel space" + ("" if sigma else " (skipped)"), fontsize=9)
    ax_uv.set(aspect="equal", xlabel="texel x = u·S_w − ½", ylabel="texel y = v·S_h − ½")
    ax_uv.invert_yaxis()
    return {"sigma": sigma, "covered": covered, "weights": weights}
