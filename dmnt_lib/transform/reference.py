"""NumPy reference of the image→UV transform: plain loops, the readable ground truth.

Every backend (the vectorized torch code, the C++ and CUDA kernels) must agree with this file.
It follows the rules of docs/design.md §4 as refined in the docstring of ``dmnt_lib.transform.image_to_uv``
step by step, in float64, one quad and one texel at a time. It is slow on purpose (readability
first): use it on small inputs only (e.g. ``H, W <= 16``, ``S <= 24``).

Coordinates: a pixel ``p = (y, x)`` with texture coordinate ``(u, v)`` sits at the texel-space point
``q = (u * S_w - 0.5, v * S_h - 0.5)`` (x first), so texel ``(i, j)`` has its centre at ``(j, i)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..sizes import size_hw

__all__ = [
    "CONVEX_EPS",
    "ST_EPS",
    "ReferenceInfo",
    "quad_pixels",
    "quad_orientation",
    "texel_range",
    "inverse_bilinear",
    "bilinear_weights",
    "image_to_uv_reference",
    "image_to_uv_reference_backward",
]

CONVEX_EPS = 1e-6  # a corner turn must exceed CONVEX_EPS * (largest squared edge) to count as convex
ST_EPS = 1e-6  # (s, t) may leave [0, 1] by this much and still cover the texel (then it is clamped)


class ReferenceInfo(NamedTuple):
    """Extra outputs of ``image_to_uv_reference``.

    Attributes:
        count: ``(B, S_h, S_w)`` int32, number of kept table entries per texel (``n`` of the spec).
        dropped: ``(B,)`` int64, entries dropped because more than ``max_quads_per_texel`` quads covered a texel.
        cross_chart: ``(B,)`` int64, quads that pass every other rule but are skipped because their four
            pixels are not on one chart (0 without ``chart``).
        table: list of ``B`` dicts mapping a texel ``(i, j)`` to its kept entries, a list of
            ``(qid, s, t)`` in increasing ``qid`` (``qid = y * (W - 1) + x`` for the block at ``(y, x)``).
    """

    count: np.ndarray
    dropped: np.ndarray
    cross_chart: np.ndarray
    table: list


def _cross(a, b) -> float:
    return a[0] * b[1] - a[1] * b[0]


def _dot(a, b) -> float:
    return a[0] * b[0] + a[1] * b[1]


def quad_pixels(y: int, x: int) -> list[tuple[int, int]]:
    """Pixels ``(row, col)`` of corners p1..p4 of the block at ``(y, x)``: (y,x), (y,x+1), (y+1,x+1), (y+1,x)."""
    return [(y, x), (y, x + 1), (y + 1, x + 1), (y + 1, x)]


def quad_orientation(uv_corners: np.ndarray, s_h: int, s_w: int, seam_threshold: float) -> int:
    """Spec rule 2 (b) and (c) for one quad whose four pixels are all on the mask.

    Args:
        uv_corners: ``(4, 2)`` float64, ``(u, v)`` of p1..p4.

    Returns:
        ``sigma`` (+1 or -1, the orientation) if the quad is used, 0 if it is skipped
        (straddles a seam, or is not strictly convex / degenerate).
    """
    if np.ptp(uv_corners[:, 0]) > seam_threshold or np.ptp(uv_corners[:, 1]) > seam_threshold:
        return 0
    q = [(u * s_w - 0.5, v * s_h - 0.5) for u, v in uv_corners]
    edges = [(q[(k + 1) % 4][0] - q[k][0], q[(k + 1) % 4][1] - q[k][1]) for k in range(4)]
    turns = [_cross(edges[k], edges[(k + 1) % 4]) for k in range(4)]
    longest_sq = max(_dot(edge, edge) for edge in edges)
    sigma = 1 if sum(turns) >= 0 else -1
    # Strictly convex quads map [0,1]^2 one-to-one, so each texel has exactly one (s, t).
    if all(sigma * turn > CONVEX_EPS * longest_sq for turn in turns):
        return sigma
    return 0


def texel_range(q: np.ndarray, size: int) -> range:
    """Integer texel coordinates in ``[ceil(min q), floor(max q)]`` clipped to ``[0, size - 1]``.

    Args:
        q: ``(4,)`` float64, one texel-space coordinate (x or y) of the four corners.
    """
    lo = max(math.ceil(q.min()), 0)
    hi = min(math.floor(q.max()), size - 1)
    return range(lo, hi + 1)


def inverse_bilinear(q: np.ndarray, sigma: int, c: tuple[float, float]):
    """Solve ``X(s, t) = c`` for a used quad (spec rule 3).

    ``X(s,t) = q1 + s e + t f + s t g`` with ``e = q2-q1, f = q4-q1, g = q1-q2+q3-q4``.

    Args:
        q: ``(4, 2)`` float64 texel-space corners q1..q4 (x, y).
        sigma: the quad's orientation from ``quad_orientation``.
        c: the texel centre ``(x, y)``.

    Returns:
        ``(s, t)`` clamped to ``[0, 1]`` if the texel is covered, else ``None``.
    """
    q1, q2, q3, q4 = (tuple(row) for row in q)
    e = (q2[0] - q1[0], q2[1] - q1[1])
    f = (q4[0] - q1[0], q4[1] - q1[1])
    g = (q1[0] - q2[0] + q3[0] - q4[0], q1[1] - q2[1] + q3[1] - q4[1])
    h = (c[0] - q1[0], c[1] - q1[1])
    # Crossing s*(e + t g) = h - t f with (e + t g) eliminates s: k2 t^2 + k1 t + k0 = 0.
    k2 = _cross(g, f)
    k1 = _cross(e, f) + _cross(h, g)
    k0 = _cross(h, e)
    disc = k1 * k1 - 4.0 * k0 * k2
    if disc < 0:
        return None
    sgn_k1 = 1 if k1 >= 0 else -1
    r = -(k1 + sgn_k1 * math.sqrt(disc)) / 2.0
    # The root t = r/k2 has slope 2 k2 t + k1 = -sgn(k1) sqrt(D), t = k0/r has +sgn(k1) sqrt(D);
    # the slope is det J, so the valid root is the one whose slope has the quad's sign.
    if sgn_k1 == sigma:
        if r == 0:
            return None
        t = k0 / r
    else:
        if k2 == 0:
            return None
        t = r / k2
    a = (e[0] + t * g[0], e[1] + t * g[1])
    aa = _dot(a, a)
    if aa == 0:
        return None
    s = _dot((h[0] - t * f[0], h[1] - t * f[1]), a) / aa
    if not (-ST_EPS <= s <= 1 + ST_EPS and -ST_EPS <= t <= 1 + ST_EPS):
        return None
    return min(max(s, 0.0), 1.0), min(max(t, 0.0), 1.0)


def bilinear_weights(s: float, t: float) -> tuple[float, float, float, float]:
    """Weights of p1..p4 at ``(s, t)``: ``((1-s)(1-t), s(1-t), s t, (1-s) t)``."""
    return (1 - s) * (1 - t), s * (1 - t), s * t, (1 - s) * t


def _as_inputs(features, uv, mask, texture_size, chart=None):
    features = np.asarray(features, dtype=np.float64)
    uv = np.asarray(uv, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if chart is not None:
        chart = np.asarray(chart)
        if chart.shape != mask.shape or not np.issubdtype(chart.dtype, np.integer):
            raise ValueError(f"chart must be an integer array of shape {mask.shape}, got {chart.dtype} {chart.shape}")
    if features.ndim != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {features.shape}")
    b, _, h, w = features.shape
    if uv.shape != (b, h, w, 2):
        raise ValueError(f"uv must have shape {(b, h, w, 2)}, got {uv.shape}")
    if mask.shape != (b, h, w):
        raise ValueError(f"mask must have shape {(b, h, w)}, got {mask.shape}")
    return features, uv, mask, size_hw(texture_size, "texture_size"), chart


def _build_table(uv, mask, s_h, s_w, seam_threshold, max_quads, chart=None):
    """Per batch item: texel -> kept [(qid, s, t)], plus the dropped and cross-chart counts (spec rules 1-4)."""
    n_batch, h, w = mask.shape
    tables, dropped = [], np.zeros(n_batch, dtype=np.int64)
    cross_chart = np.zeros(n_batch, dtype=np.int64)
    for b in range(n_batch):
        covering: dict[tuple[int, int], list] = {}
        for y in range(h - 1):
            for x in range(w - 1):
                pixels = quad_pixels(y, x)
                if not all(mask[b, py, px] for py, px in pixels):
                    continue
                uv_corners = np.array([uv[b, py, px] for py, px in pixels])
                sigma = quad_orientation(uv_corners, s_h, s_w, seam_threshold)
                if sigma == 0:
                    continue
                # Rule 2 (d): the four pixels must lie on one chart (tested last, so it counts
                # exactly the quads that the threshold and convexity rules would have kept).
                if chart is not None and len({int(chart[b, py, px]) for py, px in pixels}) > 1:
                    cross_chart[b] += 1
                    continue
                q = np.stack([uv_corners[:, 0] * s_w - 0.5, uv_corners[:, 1] * s_h - 0.5], axis=1)
                for i in texel_range(q[:, 1], s_h):
                    for j in texel_range(q[:, 0], s_w):
                        st = inverse_bilinear(q, sigma, (float(j), float(i)))
                        if st is not None:
                            covering.setdefault((i, j), []).append((y * (w - 1) + x, st[0], st[1]))
        # Quads were visited in increasing qid, so each list is sorted: keep the first K.
        table = {}
        for texel, entries in covering.items():
            table[texel] = entries[:max_quads]
            dropped[b] += max(len(entries) - max_quads, 0)
        tables.append(table)
    return tables, dropped, cross_chart


def image_to_uv_reference(features, uv, mask, texture_size, seam_threshold=0.2, max_quads_per_texel=10, chart=None):
    """Forward of the image→UV transform with loops, in float64.

    Args:
        features: ``(B, C, H, W)`` array-like of floats.
        uv: ``(B, H, W, 2)`` array-like, ``uv[..., 0] = u`` (column), ``uv[..., 1] = v`` (row).
        mask: ``(B, H, W)`` array-like of bools.
        texture_size: ``S`` or ``(S_h, S_w)``.
        seam_threshold: quads whose u or v extent exceeds this are skipped.
        max_quads_per_texel: ``K``, table entries kept per texel (smallest qid first).
        chart: optional ``(B, H, W)`` array-like of ints, the per-pixel chart id; quads whose four
            pixels are not on one chart are skipped.

    Returns:
        ``surface (B, C, S_h, S_w)`` float64, ``visible (B, S_h, S_w)`` bool, ``ReferenceInfo``.
    """
    features, uv, mask, (s_h, s_w), chart = _as_inputs(features, uv, mask, texture_size, chart)
    n_batch, n_ch, _, w = features.shape
    tables, dropped, cross_chart = _build_table(uv, mask, s_h, s_w, seam_threshold, max_quads_per_texel, chart)
    surface = np.zeros((n_batch, n_ch, s_h, s_w))
    count = np.zeros((n_batch, s_h, s_w), dtype=np.int32)
    for b, table in enumerate(tables):
        for (i, j), entries in table.items():
            acc = np.zeros(n_ch)
            for qid, s, t in entries:
                y, x = divmod(qid, w - 1)
                for wk, (py, px) in zip(bilinear_weights(s, t), quad_pixels(y, x)):
                    acc += wk * features[b, :, py, px]
            count[b, i, j] = len(entries)
            surface[b, :, i, j] = acc / len(entries)
    return surface, count > 0, ReferenceInfo(count=count, dropped=dropped, cross_chart=cross_chart, table=tables)


def image_to_uv_reference_backward(grad_surface, features, uv, mask, texture_size, seam_threshold=0.2, max_quads_per_texel=10,
                                   chart=None):
    """Backward of the transform (spec rule 5) with loops, in float64; the table is rebuilt by the forward.

    Args:
        grad_surface: ``(B, C, S_h, S_w)`` upstream gradient ``G = dL/dsurface``.
        features, uv, mask, texture_size, seam_threshold, max_quads_per_texel, chart: as in the forward.

    Returns:
        ``grad_features (B, C, H, W)`` and ``grad_uv (B, H, W, 2)``, float64 (zero off the used quads).
    """
    features, uv, mask, (s_h, s_w), chart = _as_inputs(features, uv, mask, texture_size, chart)
    grad_surface = np.asarray(grad_surface, dtype=np.float64)
    n_batch, n_ch, _, w = features.shape
    if grad_surface.shape != (n_batch, n_ch, s_h, s_w):
        raise ValueError(f"grad_surface must have shape {(n_batch, n_ch, s_h, s_w)}, got {grad_surface.shape}")
    tables, _, _ = _build_table(uv, mask, s_h, s_w, seam_threshold, max_quads_per_texel, chart)
    grad_features = np.zeros_like(features)
    grad_uv = np.zeros_like(uv)
    for b, table in enumerate(tables):
        for (i, j), entries in table.items():
            g_c = grad_surface[b, :, i, j] / len(entries)  # n held constant
            for qid, s, t in entries:
                y, x = divmod(qid, w - 1)
                pixels = quad_pixels(y, x)
                weights = bilinear_weights(s, t)
                f1, f2, f3, f4 = (features[b, :, py, px] for py, px in pixels)
                for wk, (py, px) in zip(weights, pixels):
                    grad_features[b, :, py, px] += wk * g_c
                # (s, t) moves with q through X(s, t; q) = c: J d(s,t) = -sum_m w_m dq_m.
                q = np.array([(uv[b, py, px, 0] * s_w - 0.5, uv[b, py, px, 1] * s_h - 0.5) for py, px in pixels])
                e, f, g = q[1] - q[0], q[3] - q[0], q[0] - q[1] + q[2] - q[3]
                jac = np.stack([e + t * g, f + s * g], axis=1)  # columns dX/ds, dX/dt
                d_ds = -(1 - t) * f1 + (1 - t) * f2 + t * f3 - t * f4
                d_dt = -(1 - s) * f1 - s * f2 + s * f3 + (1 - s) * f4
                gv = np.array([np.dot(g_c, d_ds), np.dot(g_c, d_dt)])
                back = np.linalg.solve(jac.T, gv)  # J^{-T} gv
                for wk, (py, px) in zip(weights, pixels):
                    grad_uv[b, py, px] += np.array([s_w, s_h]) * (-wk * back)
    return grad_features, grad_uv
