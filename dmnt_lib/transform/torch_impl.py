"""Vectorized PyTorch image→UV transform (CPU or CUDA, float32 or float64); autograd does the backward.

Same rules as ``reference.py`` (see ``dmnt_lib.transform.image_to_uv`` for the manual), computed on whole
tensors: every used quad is expanded into the texels of its bounding box (in chunks, to bound memory),
each candidate is solved in closed form without gradients, and the kept table entries are then made
differentiable by one implicit-function step (``_attach_implicit_grad``), so gradients reach ``uv``
exactly as the spec's backward says, while the forward values stay bit-identical to the closed form.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

import torch

from .reference import CONVEX_EPS, ST_EPS

__all__ = ["QuadTable", "quad_on_mask", "quad_seam", "quad_cross_chart", "quad_table_torch", "image_to_uv_torch"]

# Candidate (quad, texel) pairs solved at once: about 40 temporaries each, so <= ~170 MB in float64.
_CHUNK = 1 << 19


class QuadTable(NamedTuple):
    """The lookup table: kept entries sorted by (batch, texel, qid); all tensors on the input's device.

    Attributes:
        batch: ``(E,)`` int64 batch index of each entry.
        texel: ``(E,)`` int64 flat texel index ``i * S_w + j``.
        qid: ``(E,)`` int64 quad index ``y * (W - 1) + x``.
        s, t: ``(E,)`` floating (input dtype), clamped to ``[0, 1]``, no grad.
        count: ``(B, S_h, S_w)`` int32 kept entries per texel.
        dropped: ``(B,)`` int64 entries dropped by the ``max_quads_per_texel`` rule.
        cross_chart: ``(B,)`` int64 quads skipped only because their pixels span two charts.
    """

    batch: torch.Tensor
    texel: torch.Tensor
    qid: torch.Tensor
    s: torch.Tensor
    t: torch.Tensor
    count: torch.Tensor
    dropped: torch.Tensor
    cross_chart: torch.Tensor


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _quad_corners(x: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, D)`` per-pixel values -> ``(B, H-1, W-1, 4, D)`` at corners p1..p4 of every block."""
    return torch.stack([x[:, :-1, :-1], x[:, :-1, 1:], x[:, 1:, 1:], x[:, 1:, :-1]], dim=3)


def _texel_space(uv: torch.Tensor, s_h: int, s_w: int) -> torch.Tensor:
    return uv * uv.new_tensor([s_w, s_h]) - 0.5


def quad_on_mask(mask: torch.Tensor) -> torch.Tensor:
    """``(B, H-1, W-1)`` bool: all four pixels of the block on ``mask (B, H, W)`` (spec rule 2 (a))."""
    return _quad_corners(mask[..., None]).all(dim=-1).all(dim=-1)


def quad_seam(uv: torch.Tensor, seam_threshold: float) -> torch.Tensor:
    """``(B, H-1, W-1)`` bool: the block's ``u`` or ``v`` extent exceeds ``seam_threshold`` (rule 2 (b))."""
    uv_c = _quad_corners(uv)
    return ((uv_c.amax(dim=3) - uv_c.amin(dim=3)) > seam_threshold).any(dim=-1)


def quad_cross_chart(chart: torch.Tensor) -> torch.Tensor:
    """``(B, H-1, W-1)`` bool: the block's four pixels do not all carry one id of ``chart (B, H, W)`` (rule 2 (d))."""
    c = _quad_corners(chart[..., None])[..., 0]
    return (c != c[..., :1]).any(dim=-1)


def _quad_orientation(uv, mask, s_h, s_w, seam_threshold, chart=None):
    """Spec rule 2: ``sigma (B, H-1, W-1)`` int64, the quad's orientation (+1/-1) if used, 0 if skipped,
    and ``cross_chart (B,)`` int64, the quads that only the chart rule skips (0 without ``chart``)."""
    on_mask = quad_on_mask(mask)
    # NaN extents (off-mask uv is zeroed by the caller, but be safe) compare False, i.e. "seam".
    uv_c = _quad_corners(uv)
    extent = uv_c.amax(dim=3) - uv_c.amin(dim=3)
    no_seam = (extent <= seam_threshold).all(dim=-1)
    q = _texel_space(uv_c, s_h, s_w)
    edges = torch.roll(q, -1, dims=3) - q  # edge k = q_{k+1} - q_k
    turns = _cross(edges, torch.roll(edges, -1, dims=3))
    longest_sq = (edges * edges).sum(-1).amax(dim=3)
    sigma = torch.where(turns.sum(dim=3) >= 0, 1, -1)
    convex = (sigma[..., None] * turns > CONVEX_EPS * longest_sq[..., None]).all(dim=3)
    used = on_mask & no_seam & convex
    if chart is None:
        return torch.where(used, sigma, 0), torch.zeros(uv.shape[0], dtype=torch.int64, device=uv.device)
    cross = used & quad_cross_chart(chart)
    return torch.where(used & ~cross, sigma, 0), cross.flatten(1).sum(1)


def _solve(q: torch.Tensor, sigma: torch.Tensor, c: torch.Tensor):
    """Inverse bilinear map for candidates (spec rule 3), no grad.

    Args:
        q: ``(N, 4, 2)`` texel-space corners; sigma: ``(N,)`` orientation; c: ``(N, 2)`` texel centres.

    Returns:
        ``covered (N,)`` bool and clamped ``s, t (N,)``.
    """
    q1, q2, q3, q4 = q.unbind(dim=1)
    e, f, g, h = q2 - q1, q4 - q1, q1 - q2 + q3 - q4, c - q1
    k2 = _cross(g, f)
    k1 = _cross(e, f) + _cross(h, g)
    k0 = _cross(h, e)
    disc = k1 * k1 - 4 * k0 * k2
    sgn_k1 = torch.where(k1 >= 0, 1, -1)
    r = -(k1 + sgn_k1 * disc.clamp(min=0).sqrt()) / 2
    # Root with slope 2 k2 t + k1 = det J of the quad's sign (see reference.inverse_bilinear).
    use_k0_over_r = sgn_k1 == sigma
    ok = (disc >= 0) & torch.where(use_k0_over_r, r != 0, k2 != 0)
    one = torch.ones_like(r)
    t = torch.where(use_k0_over_r, k0 / torch.where(r != 0, r, one), r / torch.where(k2 != 0, k2, one))
    a = e + t[:, None] * g
    aa = (a * a).sum(-1)
    ok &= aa != 0
    s = ((h - t[:, None] * f) * a).sum(-1) / torch.where(aa != 0, aa, one)
    ok &= (s >= -ST_EPS) & (s <= 1 + ST_EPS) & (t >= -ST_EPS) & (t <= 1 + ST_EPS)
    return ok, s.clamp(0, 1), t.clamp(0, 1)


@torch.no_grad()
def quad_table_torch(uv, mask, s_h: int, s_w: int, seam_threshold: float = 0.2, max_quads: int = 10,
                     chart: torch.Tensor | None = None) -> QuadTable:
    """Build the lookup table (spec rules 1-4) without gradients.

    Args:
        uv: ``(B, H, W, 2)`` float32/float64 in ``[0, 1]`` on the mask; mask: ``(B, H, W)`` bool.
        s_h, s_w: texture size; seam_threshold, max_quads: as in ``image_to_uv``.
        chart: optional ``(B, H, W)`` integer per-pixel chart id (spec rule 2 (d)).

    Returns:
        ``QuadTable``.
    """
    n_batch, h, w, _ = uv.shape
    idx = dict(dtype=torch.int64, device=uv.device)
    sigma_all, cross_chart = _quad_orientation(uv, mask, s_h, s_w, seam_threshold, chart)
    qb, qy, qx = torch.nonzero(sigma_all, as_tuple=True)
    q = _texel_space(_quad_corners(uv)[qb, qy, qx], s_h, s_w)  # (Q, 4, 2)
    sigma = sigma_all[qb, qy, qx]
    lo = q.amin(dim=1).ceil().clamp(min=0)
    hi = torch.minimum(q.amax(dim=1).floor(), q.new_tensor([s_w - 1, s_h - 1]))
    lo_i, extent = lo.long(), (hi - lo + 1).clamp(min=0).long()  # (Q, 2) x first
    n_cand = extent[:, 0] * extent[:, 1]
    ends = torch.cumsum(n_cand, 0).tolist()
    pieces, start = [], 0
    while start < len(ends):
        # A chunk of quads holding about _CHUNK candidates (at least one quad).
        base = ends[start - 1] if start else 0
        stop = max(bisect.bisect_right(ends, base + _CHUNK), start + 1)
        counts = n_cand[start:stop]
        owner = torch.repeat_interleave(torch.arange(start, stop, **idx), counts)
        local = torch.arange(len(owner), **idx) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        cx = lo_i[owner, 0] + local % extent[owner, 0]
        cy = lo_i[owner, 1] + local // extent[owner, 0]
        ok, s, t = _solve(q[owner], sigma[owner], torch.stack([cx, cy], dim=1).to(q.dtype))
        owner = owner[ok]
        pieces.append((qb[owner], cy[ok] * s_w + cx[ok], qy[owner] * (w - 1) + qx[owner], s[ok], t[ok]))
        start = stop
    if pieces:
        batch, texel, qid, s, t = (torch.cat(p) for p in zip(*pieces))
    else:
        batch = texel = qid = torch.zeros(0, **idx)
        s = t = uv.new_zeros(0)
    # Keep the K smallest qids per texel: sort by (batch, texel, qid) and rank inside each texel.
    group = batch * (s_h * s_w) + texel
    order = torch.argsort(group * ((h - 1) * (w - 1)) + qid)
    batch, texel, qid, s, t, group = (a[order] for a in (batch, texel, qid, s, t, group))
    _, sizes = torch.unique_consecutive(group, return_counts=True)
    rank = torch.arange(len(group), **idx) - torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    keep = rank < max_quads
    dropped = torch.bincount(batch[~keep], minlength=n_batch)
    count = torch.bincount(group[keep], minlength=n_batch * s_h * s_w).view(n_batch, s_h, s_w).int()
    return QuadTable(batch[keep], texel[keep], qid[keep], s[keep], t[keep], count, dropped, cross_chart)


def _attach_implicit_grad(q: torch.Tensor, s0: torch.Tensor, t0: torch.Tensor):
    """Make the solved ``(s0, t0)`` differentiable in the corners ``q (E, 4, 2)``; values unchanged.

    ``X(s, t; q) = c`` defines ``y = (s, t)(q)``. With the residual ``R = X(y0; q) - stop_grad(X(y0; q))``
    (zero in value, ``dR = sum_m w_m dq_m``) and ``A = J^{-1}(y0; q)``, ``J = [e + t g, f + s g]``:

    * ``delta = -A R`` has the implicit-function derivative ``dy = -J^{-1} sum_m w_m dq_m`` (first order);
    * ``y = y0 + delta - A (delta_s delta_t g)`` also has the exact second derivative: differentiating
      ``X(y(q); q) = c`` twice gives ``J d2y = -2 X_yq[dq, dy] - X_yy[dy, dy]``; the first term comes from
      ``A`` depending on ``q`` (it is not detached), the second (``X_yy[dy, dy] = 2 dy_s dy_t g``, X is
      bilinear) from the correction, which is zero in value and in first derivative.

    So the torch backend supports double backward (``create_graph=True``) correctly, in ``uv`` too.
    ``|det J| > 0`` on strictly convex quads (it is bilinear and its corner values are the turns).
    """
    q1, q2, q3, q4 = q.unbind(dim=1)
    e, f, g = q2 - q1, q4 - q1, q1 - q2 + q3 - q4
    x = q1 + s0[:, None] * e + t0[:, None] * f + (s0 * t0)[:, None] * g
    res = x - x.detach()
    col_s = e + t0[:, None] * g
    col_t = f + s0[:, None] * g
    det = _cross(col_s, col_t)

    def solve(r):  # A r = J^{-1} r by Cramer's rule
        return _cross(r, col_t) / det, _cross(col_s, r) / det

    d_s, d_t = solve(res)
    d_s, d_t = -d_s, -d_t
    c_s, c_t = solve((d_s * d_t)[:, None] * g)
    return s0 + d_s - c_s, t0 + d_t - c_t


def image_to_uv_torch(features, uv, mask, s_h: int, s_w: int, seam_threshold: float = 0.2, max_quads: int = 10,
                      chart: torch.Tensor | None = None):
    """Vectorized image→UV transform; inputs are assumed validated (see ``image_to_uv``).

    Args:
        features: ``(B, C, H, W)`` float32/float64; uv: ``(B, H, W, 2)`` same dtype; mask: ``(B, H, W)`` bool.
        s_h, s_w: texture size; seam_threshold, max_quads: as in ``image_to_uv``.
        chart: optional ``(B, H, W)`` integer per-pixel chart id.

    Returns:
        ``surface (B, C, S_h, S_w)`` (input dtype, differentiable in features and uv),
        ``visible (B, S_h, S_w)`` bool, ``count (B, S_h, S_w)`` int32, ``dropped (B,)`` int64,
        ``cross_chart (B,)`` int64.
    """
    n_batch, n_ch, h, w = features.shape
    # Geometry (coverage, roots) in float64 whatever the input dtype, as the kernels do, so that
    # float32 inputs give the same table in every backend; only (s, t) return to the input dtype.
    table = quad_table_torch(uv.detach().double(), mask, s_h, s_w, seam_threshold, max_quads, chart)
    y, x = table.qid // (w - 1), table.qid % (w - 1)
    p1 = table.batch * (h * w) + y * w + x
    pixels = torch.stack([p1, p1 + 1, p1 + w + 1, p1 + w], dim=1)  # (E, 4) flat pixel of p1..p4
    q = _texel_space(uv, s_h, s_w).reshape(-1, 2)[pixels]
    s, t = _attach_implicit_grad(q, table.s.to(q.dtype), table.t.to(q.dtype))
    weights = torch.stack([(1 - s) * (1 - t), s * (1 - t), s * t, (1 - s) * t], dim=1)
    flat_features = features.permute(0, 2, 3, 1).reshape(-1, n_ch)
    values = sum(weights[:, k, None] * flat_features[pixels[:, k]] for k in range(4))
    texel = table.batch * (s_h * s_w) + table.texel
    acc = features.new_zeros(n_batch * s_h * s_w, n_ch).index_add(0, texel, values)
    n = table.count.reshape(-1, 1).clamp(min=1).to(features.dtype)
    surface = (acc / n).view(n_batch, s_h, s_w, n_ch).permute(0, 3, 1, 2).contiguous()
    return surface, table.count > 0, table.count, table.dropped, table.cross_chart
