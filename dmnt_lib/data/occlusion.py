"""Procedural 2D textures, random shapes, and occluders at OccludedPASCAL3D+ levels.

OccludedPASCAL3D+ (Wang et al. 2020) pastes occluders over PASCAL3D+ objects so that a given
fraction of the object is hidden: level L1 hides [0.2, 0.4) of it, L2 [0.4, 0.6), L3 [0.6, 0.8)
(``LEVEL_RANGES``; both bounds apply to the foreground, hence NeMo's folder names
``FGL{k}_BGL{k}``). Here the occluders are textured random shapes (ellipses, rotated
rectangles, star-shaped blobs) and the fraction is **measured on the masks**:

    occlusion_ratio = 1 - |mask & ~occluder_mask| / |mask|        (mask = amodal object mask)

Placement. Each shape ``i`` has a centre, an orientation and a *normalised distance field*
``d_i(p)`` with ``d_i <= s`` exactly on the shape scaled by ``s`` about its centre. The union of
the shapes scaled by a common ``s`` is ``{p : min_i d_i(p) <= s}``, which grows monotonically
with ``s``; so for a target ratio ``t`` the scale is read off the sorted distances of the mask
pixels (no bisection), and the result is checked against the level's range. A rare miss (ties
in the distances jump over the range) is retried with new shapes from the same seeded RNG.
A mask too small for the range (no ``m`` pixels out of ``|mask|`` give a ratio in it, e.g. 3
pixels at L2) is refused up front with a ``ValueError``; running out of tries raises
``OcclusionError`` (a ``RuntimeError``).
"""

from __future__ import annotations

import numpy as np

from . import _checks

__all__ = [
    "LEVEL_RANGES", "OcclusionError", "procedural_texture", "random_shape_field", "place_occluders",
    "occlusion_ratio", "random_color",
]

LEVEL_RANGES = {1: (0.2, 0.4), 2: (0.4, 0.6), 3: (0.6, 0.8)}


class OcclusionError(RuntimeError):
    """No occluder placement with a ratio in the requested range was found."""


def random_color(rng: np.random.Generator, sat=(0.2, 0.9), val=(0.2, 0.95)) -> np.ndarray:
    """A random RGB colour ``(3,)`` float in [0, 1] from an HSV box."""
    h, s, v = rng.uniform(0, 1), rng.uniform(*sat), rng.uniform(*val)
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def _upsample(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling of a coarse ``(gh, gw, C)`` grid to ``(h, w, C)`` (corners aligned)."""
    gh, gw = grid.shape[:2]
    y, x = np.linspace(0, gh - 1, h), np.linspace(0, gw - 1, w)
    y0, x0 = np.minimum(y.astype(int), gh - 2), np.minimum(x.astype(int), gw - 2)
    fy, fx = (y - y0)[:, None, None], (x - x0)[None, :, None]
    g = grid
    top = g[y0][:, x0] * (1 - fx) + g[y0][:, x0 + 1] * fx
    bot = g[y0 + 1][:, x0] * (1 - fx) + g[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bot * fy


def procedural_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random texture ``(h, w, 3)`` float32 in [0, 1]: smooth colour noise, gratings
    (soft or hard stripes), a rotated checkerboard, or a gradient with blotches."""
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(h, w)
    c1, c2 = random_color(rng), random_color(rng)
    if kind == 0:
        g = int(rng.integers(2, 7))
        nodes = np.stack([random_color(rng, (0.1, 0.7), (0.2, 0.9)) for _ in range(g * g)]).reshape(g, g, 3)
        tex = _upsample(nodes, h, w)
    else:
        a = rng.uniform(0, np.pi)
        coord = xx * np.cos(a) + yy * np.sin(a)
        if kind == 1:
            t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 12) * coord + rng.uniform(0, 2 * np.pi))
            if rng.uniform() < 0.5:
                t = (t > 0.5).astype(np.float32)
        elif kind == 2:
            f = rng.uniform(3, 10)
            other = -xx * np.sin(a) + yy * np.cos(a)
            t = ((np.floor(f * coord) + np.floor(f * other)) % 2).astype(np.float32)
        else:
            t = np.clip(coord * rng.uniform(0.5, 1.5), 0, 1)
            t = 0.7 * t + 0.3 * _upsample(rng.uniform(0, 1, (4, 4, 1)), h, w)[..., 0]
        tex = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return tex.astype(np.float32)


def random_shape_field(rng: np.random.Generator, h: int, w: int, center, size: float) -> np.ndarray:
    """Normalised distance field ``(h, w)`` float32 of a random shape at ``center (x, y)``
    (pixels): the shape scaled by ``s`` is ``{field <= s}``; at ``s = 1`` it is ``size`` pixels
    across (roughly). Kinds: ellipse, rotated rectangle, star-shaped blob."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    a = rng.uniform(0, np.pi)
    dx, dy = xx - center[0], yy - center[1]
    u, v = dx * np.cos(a) + dy * np.sin(a), -dx * np.sin(a) + dy * np.cos(a)
    ax, ay = size / 2, size / 2 * rng.uniform(0.3, 1.0)
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
    if kind == 1:
        return np.maximum(np.abs(u) / ax, np.abs(v) / ay)
    k = int(rng.integers(5, 10))
    radii = rng.uniform(0.45, 1.0, k) * ax
    phi = (np.arctan2(v, u) % (2 * np.pi)) / (2 * np.pi) * k
    i0 = np.floor(phi).astype(int) % k
    frac = phi - np.floor(phi)
    r = radii[i0] * (1 - frac) + radii[(i0 + 1) % k] * frac
    return np.sqrt(u**2 + v**2) / r


def occlusion_ratio(mask: np.ndarray, occluder_mask: np.ndarray) -> float:
    """``1 - |mask & ~occluder_mask| / |mask|`` for ``(H, W)`` bool masks; ``mask`` must be non-empty."""
    area = int(mask.sum())
    if area == 0:
        raise ValueError("mask is empty: the occlusion ratio is undefined")
    return 1.0 - int((mask & ~occluder_mask).sum()) / area


def place_occluders(mask: np.ndarray, ratio_range: tuple[float, float], rng: np.random.Generator, max_tries: int = 50):
    """Occluders hiding a fraction in ``[lo, hi)`` of ``mask``.

    Args:
        mask: ``(H, W)`` bool amodal object mask (non-empty; numeric 0/1 arrays are accepted).
        ratio_range: ``(lo, hi)`` with ``0 < lo < hi <= 1``, e.g. ``LEVEL_RANGES[2]``.
        rng: seeded ``numpy.random.Generator`` (the only source of randomness).
        max_tries: shape sets to try before giving up (int >= 1).

    Returns:
        ``occluder_mask (H, W)`` bool, ``texture (H, W, 3)`` float32 (the occluders' look, valid
        where ``occluder_mask``) and the measured ``ratio`` (float, in ``[lo, hi)``).

    Raises:
        TypeError / ValueError: a bad argument, naming it (also a mask with too few pixels for
        any ratio in the range). OcclusionError: no placement found in ``max_tries`` tries.
    """
    mask = np.asarray(mask)
    if mask.dtype.kind not in "biuf":
        raise TypeError(f"mask must be a bool (H, W) array, got dtype {mask.dtype}")
    mask = mask.astype(bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError(f"mask must be a non-empty (H, W) bool array, got shape {mask.shape} with {int(mask.sum())} pixels")
    lo, hi = _checks.number_range("ratio_range", ratio_range, 0, 1, open_lo=True)
    if lo == hi:
        raise ValueError(f"ratio_range must satisfy 0 < lo < hi <= 1, got {ratio_range}")
    rng = _checks.rng("rng", rng)
    max_tries = _checks.integer("max_tries", max_tries, 1)
    area = int(mask.sum())
    hidden = np.arange(1, area + 1)
    reachable = 1.0 - (area - hidden) / area  # the exact floats occlusion_ratio gives for each count
    if not ((reachable >= lo) & (reachable < hi)).any():
        raise ValueError(f"mask has {area} pixels: hiding any number of them gives no ratio in [{lo}, {hi}) (ratio_range)")
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    for _ in range(max_tries):
        n = int(rng.integers(1, 4))
        fields = []
        for _ in range(n):
            j = int(rng.integers(0, len(xs)))  # centres on the object so every shape can bite into it
            centre = (xs[j] + 0.5 + rng.normal(0, 0.1 * extent), ys[j] + 0.5 + rng.normal(0, 0.1 * extent))
            fields.append(random_shape_field(rng, h, w, centre, extent * rng.uniform(0.4, 1.0)))
        fields = np.stack(fields)
        nearest = fields.argmin(0)
        dist = fields.min(0)
        target = rng.uniform(lo, hi)
        on_obj = np.sort(dist[mask])
        k = min(max(int(round(target * len(on_obj))), 1), len(on_obj)) - 1
        occ = dist <= on_obj[k]
        ratio = occlusion_ratio(mask, occ)
        if lo <= ratio < hi:
            tex = np.zeros((h, w, 3), np.float32)
            for i in range(n):
                sel = occ & (nearest == i)
                tex[sel] = procedural_texture(rng, h, w)[sel]
            return occ, tex, ratio
    raise OcclusionError(f"could not place occluders hiding a fraction in [{lo}, {hi}) of a {area}-pixel mask after {max_tries} tries")
