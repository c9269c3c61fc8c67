"""The init grid: poses, fragments rendered once per (mesh, grid, focal, map size) and cached, scores.

Why a canvas: moving the principal point by an integer number of pixels moves the perspective image by
exactly that many pixels (``x = px − f X/Z``), so the grid is rendered once with the principal point at
the centre of a square canvas just large enough for the mesh's bounding sphere at the largest grid fill,
and every image (a known centre) or every candidate centre (a search) reads it at an integer offset. Only
the mask pixels are stored: their canvas index and uv.

Grid scores (no gradients) read the texture average-pooled to ``init_texture_size`` at the *nearest*
texel, so each rendered feature is a unit texel and ``o(p) = <F(p), T[t(p)]>`` is one entry of the
similarity matrix ``F (hw, D) @ Tᵀ (D, S'²)``, computed by one matmul per image and category; the
per-pose work is then a gather. ``center="search"`` correlates the rendered maps with the features over
all candidate offsets (one ``conv2d`` per category, the maps as kernels) and scores exactly at the best
offset of each pose.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..camera import pose_to_cameras, pose_to_rotation, rotation_error
from ..mesh import UVMesh
from .raster import fragments

__all__ = ["canvas_size", "focal_key", "GridFragments", "GridCache", "GRID_CACHE", "grid_poses", "pool_texture", "known_offsets",
           "search_offsets", "grid_scores", "select_hypotheses"]


def focal_key(focal_f: float, tolerance: float) -> float:
    """The focal length the grid is rendered at: ``focal_f`` rounded to geometric bins of ``1 + tolerance``
    (``tolerance = 0``: exact). An image of focal ``f`` reads the grid of focal ``f_b`` with every grid distance
    scaled by ``f / f_b``: scaling focal and distance together keeps the image up to the (small) change of
    perspective over the object's depth, and refinement then uses the exact focal. Without bins, data whose
    focal differs per image (NeMo's crops) would render the grid for every image."""
    if tolerance <= 0:
        return float(focal_f)
    step = math.log1p(tolerance)
    return float(math.exp(round(math.log(focal_f) / step) * step))


def mesh_radius(mesh: UVMesh) -> float:
    """Radius of the bounding sphere about the object origin (PASCAL3D+ models are centred there)."""
    return float(mesh.verts.detach().norm(dim=-1).max())


def grid_poses(config, radius: float, focal_f: float, hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The ``G`` grid poses for a mesh of bounding radius ``radius`` (float64 ``(G,)`` tensors).

    ``distance`` per fill: the bounding sphere projects to ``fill·min(h, w)`` pixels,
    ``d = r·sqrt(1 + (2f / (fill·min(h,w)))²)`` (``f`` in the same pixels as ``hw``).
    """
    az = torch.arange(config.azimuths, dtype=torch.float64) * (2 * math.pi / config.azimuths)
    el = torch.tensor(config.elevations, dtype=torch.float64)
    th = torch.tensor(config.thetas, dtype=torch.float64)
    fills = torch.tensor(config.fills, dtype=torch.float64)
    dist = radius * torch.sqrt(1 + (2 * focal_f / (fills * min(hw))) ** 2)
    A, E, T, D = torch.meshgrid(az, el, th, dist, indexing="ij")
    return {"azimuth": A.reshape(-1), "elevation": E.reshape(-1), "theta": T.reshape(-1), "distance": D.reshape(-1)}


@dataclass
class GridFragments:
    """Fragments of one mesh at the ``G`` grid poses on a ``(hc, wc)`` canvas (``canvas_size``).

    Attributes:
        poses: dict of ``(G,)`` float64 ``azimuth, elevation, theta, distance``.
        rotations: ``(G, 3, 3)``; ``geodesic``: ``(G, G)`` rotation distances (radians), for NMS.
        canvas: ``(hc, wc)`` (even); the principal point is at its centre ``(wc/2, hc/2)``.
        pix: ``(G, M)`` int64 canvas row-major index of each mask pixel (padded); ``valid (G, M)`` bool.
        uv: ``(G, M, 2)`` float32 uv of each mask pixel.
        bbox: ``(a0, a1, b0, b1)`` rows/cols of the canvas covered by any grid mask.
        chart: ``(G, M)`` int64 UV chart of each mask pixel, or None (no ``UVMesh.face_charts``).
        focal: the focal length (feature pixels) it was rendered at.
    """

    poses: dict
    rotations: torch.Tensor
    geodesic: torch.Tensor
    canvas: tuple[int, int]
    pix: torch.Tensor
    valid: torch.Tensor
    uv: torch.Tensor
    bbox: tuple[int, int, int, int]
    chart: torch.Tensor | None = None
    focal: float = 0.0

    @property
    def num_poses(self) -> int:
        return int(self.pix.shape[0])


def _mesh_key(mesh: UVMesh) -> str:
    h = hashlib.sha1()
    for t in (mesh.verts, mesh.faces, mesh.verts_uvs, mesh.faces_uvs):
        t = t.detach().cpu().contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def canvas_size(config, hw) -> tuple[int, int]:
    """Square even canvas holding the bounding sphere's projection (diameter ``max(fills)·min(h, w)``, centred
    on the principal point: the camera looks at the object's origin) with a pixel to spare on each side."""
    side = 2 * (math.ceil(max(config.fills) * min(hw) / 2) + 1)
    return side, side


def build_grid_fragments(mesh: UVMesh, config, focal_f: float, hw: tuple[int, int], chunk: int = 64) -> GridFragments:
    """Render ``mesh`` at every grid pose (no gradients); see ``GridFragments``. ``focal_f`` in feature pixels."""
    h, w = hw
    hc, wc = canvas_size(config, hw)
    poses = grid_poses(config, mesh_radius(mesh), focal_f, hw)
    g = poses["azimuth"].numel()
    pix, uvs, charts, counts = [], [], [], []
    with torch.no_grad():
        for s in range(0, g, chunk):
            sl = slice(s, s + chunk)
            cams = pose_to_cameras(*(poses[k][sl].float() for k in ("azimuth", "elevation", "theta", "distance")),
                                   image_size=(hc, wc), focal=float(focal_f), principal=(wc / 2, hc / 2))
            fr = fragments(mesh, cams, (hc, wc), backend=config.backend)
            m = fr.mask.reshape(fr.mask.shape[0], -1)
            for i in range(m.shape[0]):
                idx = m[i].nonzero()[:, 0]
                pix.append(idx)
                uvs.append(fr.uv.reshape(m.shape[0], -1, 2)[i, idx])
                if fr.chart is not None:
                    charts.append(fr.chart.reshape(m.shape[0], -1)[i, idx])
                counts.append(idx.numel())
    mmax = max(max(counts), 1)
    P = torch.zeros(g, mmax, dtype=torch.int64)
    V = torch.zeros(g, mmax, dtype=torch.bool)
    U = torch.zeros(g, mmax, 2, dtype=torch.float32)
    C = torch.full((g, mmax), -1, dtype=torch.int64) if charts else None
    for i, (p, u) in enumerate(zip(pix, uvs)):
        P[i, : p.numel()] = p
        V[i, : p.numel()] = True
        U[i, : p.numel()] = u.float()
        if C is not None:
            C[i, : p.numel()] = charts[i]
    rows, cols = P[V] // wc, P[V] % wc
    bbox = (int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1) if rows.numel() else (0, 1, 0, 1)
    R = pose_to_rotation(poses["azimuth"], poses["elevation"], poses["theta"]).double()
    geo = rotation_error(R[:, None].expand(g, g, 3, 3), R[None].expand(g, g, 3, 3))
    return GridFragments(poses, R, geo, (hc, wc), P, V, U, bbox, C, float(focal_f))


class GridCache:
    """In-memory LRU cache of ``GridFragments`` keyed by the mesh's bytes, the grid, the focal length,
    the feature-map size and the rasterizer backend. ``hits``/``misses`` count lookups."""

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._d: OrderedDict = OrderedDict()
        self.hits = self.misses = 0

    @staticmethod
    def key(mesh: UVMesh, config, focal_f: float, hw) -> tuple:
        grid = (config.azimuths, config.elevations, config.thetas, config.fills)
        return (_mesh_key(mesh), grid, round(float(focal_f), 6), tuple(hw), config.backend)

    def get(self, mesh: UVMesh, config, focal_f: float, hw) -> GridFragments:
        k = self.key(mesh, config, focal_f, hw)
        if k in self._d:
            self.hits += 1
            self._d.move_to_end(k)
            return self._d[k]
        self.misses += 1
        entry = build_grid_fragments(mesh, config, focal_f, tuple(hw))
        self._d[k] = entry
        while len(self._d) > self.max_entries:
            self._d.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._d.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._d)


GRID_CACHE = GridCache()


def pool_texture(texture: torch.Tensor, size: int | None) -> torch.Tensor:
    """``(D, S, S)`` → ``(D, S', S')`` unit texels, average-pooled to ``size`` (``None`` or ≥ S: unchanged)."""
    d, sh, sw = texture.shape
    if size is not None and (size < sh or size < sw):
        texture = F.adaptive_avg_pool2d(texture[None], (min(size, sh), min(size, sw)))[0]
    return F.normalize(texture, dim=0)


def nearest_texel(uv: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Row-major index of the texel whose cell contains ``uv`` (``(..., 2)``) in an ``(S_h, S_w)`` texture."""
    sh, sw = shape
    col = (uv[..., 0] * sw).floor().long().clamp(0, sw - 1)
    row = (uv[..., 1] * sh).floor().long().clamp(0, sh - 1)
    return row * sw + col


def known_offsets(principal_f: torch.Tensor, canvas) -> torch.Tensor:
    """Integer canvas offsets ``(oy, ox)`` ``(B, 2)`` for principal points ``(B, 2)`` ``(x, y)`` in feature pixels
    (rounded): feature pixel ``(i, j)`` is canvas pixel ``(i + oy, j + ox)``; ``canvas = (hc, wc)``."""
    cy, cx = canvas[0] // 2, canvas[1] // 2
    return torch.stack([(cy - principal_f[:, 1]).round(), (cx - principal_f[:, 0]).round()], -1).long()


def offsets_to_principal(offsets: torch.Tensor, canvas) -> torch.Tensor:
    """Inverse of ``known_offsets``: principal points ``(..., 2)`` ``(x, y)`` in feature pixels."""
    cy, cx = canvas[0] // 2, canvas[1] // 2
    return torch.stack([cx - offsets[..., 1].double(), cy - offsets[..., 0].double()], -1)


def rendered_maps(entry: GridFragments, tex: torch.Tensor) -> torch.Tensor:
    """Nearest-texel rendered features ``(G, D, kh, kw)`` over the grid's canvas bounding box."""
    d = tex.shape[0]
    a0, a1, b0, b1 = entry.bbox
    hc, wc = entry.canvas
    kh, kw = a1 - a0, b1 - b0
    g, m = entry.pix.shape
    t = nearest_texel(entry.uv, tex.shape[1:])  # (G, M)
    feats = tex.reshape(d, -1).t()[t] * entry.valid[..., None]  # (G, M, D)
    rows, cols = entry.pix // wc - a0, entry.pix % wc - b0
    local = (rows.clamp(0, kh - 1) * kw + cols.clamp(0, kw - 1)).where(entry.valid, torch.zeros_like(rows))
    out = torch.zeros(g, kh * kw, d, dtype=tex.dtype)
    out.scatter_add_(1, local[..., None].expand(-1, -1, d), feats)
    return out.reshape(g, kh, kw, d).permute(0, 3, 1, 2).contiguous()


def search_offsets(features: torch.Tensor, entry: GridFragments, tex: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Best canvas offset per image and pose ``(B, G, 2)`` by correlating rendered maps with the features.

    The correlation ``c(g, oy, ox) = Σ_p <F(p), R_g(p + (oy, ox))>`` (the sum of the object score over the
    rendered mask) is computed for every candidate centre at once as a ``conv2d`` with the rendered maps as
    kernels; the background term is left out on purpose, so occluded pixels (o ≈ 0) do not pull the centre.
    Candidate principal points are the integer feature pixels within ``radius`` of the map centre (per
    axis; ``None``: the whole map).
    """
    b, d, h, w = features.shape
    a0, a1, b0, b1 = entry.bbox
    cy, cx = h / 2, w / 2
    r_y = h / 2 if radius is None else min(radius, h / 2)
    r_x = w / 2 if radius is None else min(radius, w / 2)
    py = torch.arange(math.ceil(cy - r_y), math.floor(cy + r_y) + 1)
    px = torch.arange(math.ceil(cx - r_x), math.floor(cx + r_x) + 1)
    ccy, ccx = entry.canvas[0] // 2, entry.canvas[1] // 2
    oy_lo, oy_hi = ccy - int(py.max()), ccy - int(py.min())
    ox_lo, ox_hi = ccx - int(px.max()), ccx - int(px.min())
    # Feature rows needed: a0 - oy_hi .. a1 - 1 - oy_lo (zero outside the map).
    r_lo, r_hi, c_lo, c_hi = a0 - oy_hi, a1 - 1 - oy_lo, b0 - ox_hi, b1 - 1 - ox_lo
    pad = (max(0, -c_lo), max(0, c_hi - (w - 1)), max(0, -r_lo), max(0, r_hi - (h - 1)))
    fp = F.pad(features, pad)
    fp = fp[:, :, r_lo + pad[2]: r_hi + pad[2] + 1, c_lo + pad[0]: c_hi + pad[0] + 1]
    maps = rendered_maps(entry, tex).to(features.dtype)
    corr = F.conv2d(fp, maps)  # (B, G, n_oy, n_ox); output u <-> offset hi - u
    n_y, n_x = corr.shape[-2:]
    best = corr.reshape(b, entry.num_poses, -1).argmax(-1)
    oy = oy_hi - best // n_x
    ox = ox_hi - best % n_x
    return torch.stack([oy, ox], -1)


def grid_scores(features: torch.Tensor, bgmap: torch.Tensor, entry: GridFragments, tex: torch.Tensor,
                offsets: torch.Tensor, score="normalized", chunk: int = 256):
    """Scores ``(B, G)`` of every grid pose at the given canvas offsets, without gradients.

    Args:
        features: ``(B, D, h, w)`` unit features. bgmap: ``(B, h, w)`` background score ``b``.
        tex: ``(D, S', S')`` unit (pooled) texture, read at the nearest texel.
        offsets: ``(B, 2)`` (one offset per image) or ``(B, G, 2)`` integer ``(oy, ox)``.
        score: ``"normalized"`` ``Σ_mask relu(o−b)/|mask|`` or ``"nemo"`` ``(Σ_mask relu(o−b) + Σ_off relu(−b))/(hw)``
            (= ``mean max(o,b) − mean b`` with ``o = 0`` off the mask); a tuple of kinds gives a dict kind → ``(B, G)``.
    """
    kinds = (score,) if isinstance(score, str) else tuple(score)
    b, d, h, w = features.shape
    g = entry.num_poses
    if offsets.dim() == 2:
        offsets = offsets[:, None].expand(b, g, 2)
    s2 = tex.shape[1] * tex.shape[2]
    sim = torch.bmm(features.reshape(b, d, h * w).transpose(1, 2), tex.reshape(d, s2).expand(b, d, s2).to(features.dtype))  # (B, hw, S'^2)
    sim = sim.reshape(b, -1)
    hc, wc = entry.canvas
    tex_idx = nearest_texel(entry.uv, tex.shape[1:])  # (G, M)
    neg_b = torch.relu(-bgmap.reshape(b, -1))
    out = {k: torch.empty(b, g, dtype=features.dtype) for k in kinds}
    for s in range(0, g, chunk):
        sl = slice(s, s + chunk)
        rows = entry.pix[sl] // wc
        cols = entry.pix[sl] % wc
        fa = rows[None] - offsets[:, sl, 0, None]  # (B, g, M)
        fb = cols[None] - offsets[:, sl, 1, None]
        inside = entry.valid[sl][None] & (fa >= 0) & (fa < h) & (fb >= 0) & (fb < w)
        fpix = (fa.clamp(0, h - 1) * w + fb.clamp(0, w - 1))
        o = sim.gather(1, (fpix * s2 + tex_idx[sl][None]).reshape(b, -1)).reshape(fpix.shape)
        bg = bgmap.reshape(b, -1).gather(1, fpix.reshape(b, -1)).reshape(fpix.shape)
        gain = (torch.relu(o - bg) * inside).sum(-1)
        for k in kinds:
            if k == "normalized":
                out[k][:, sl] = gain / inside.sum(-1).clamp(min=1)
            else:
                off = neg_b.sum(-1, keepdim=True) - (neg_b.gather(1, fpix.reshape(b, -1)).reshape(fpix.shape) * inside).sum(-1)
                out[k][:, sl] = (gain + off) / (h * w)
    return out[score] if isinstance(score, str) else out


def select_hypotheses(scores: torch.Tensor, geodesic: torch.Tensor, n: int, nms_rad: float) -> list[int]:
    """Greedy non-maximum suppression: indices of up to ``n`` poses, best first, pairwise at least
    ``nms_rad`` apart in rotation (poses differing only in distance are one rotation)."""
    order = torch.argsort(scores, descending=True).tolist()
    picked: list[int] = []
    for i in order:
        if all(float(geodesic[i, j]) >= nms_rad for j in picked):
            picked.append(i)
            if len(picked) == n:
                break
    return picked
