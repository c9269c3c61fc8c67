"""UV-mapped triangle meshes, category templates and PASCAL3D+ OFF files.

A DMNT mesh carries two index buffers, as in PyTorch3D's ``TexturesUV``:

* ``faces (F, 3)`` index 3D vertices ``verts (V, 3)``; the surface is closed, so
  neighbouring faces share vertices;
* ``faces_uvs (F, 3)`` index UV vertices ``verts_uvs (T, 2)``; a 3D vertex that
  lies on a *seam* (the boundary between two UV charts) appears as several UV
  vertices, one per chart. The seams are therefore explicit: an edge is a seam
  exactly when its two faces reference different UV vertices for its endpoints.

UV convention (docs/design.md §3): ``uv ∈ [0, 1]²``, ``u`` → texture column, ``v`` →
texture row, ``v = 0`` is row 0.

Nothing here imports PyTorch3D at module load; ``UVMesh.to_meshes`` does so lazily.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .fileio import atomic_write_text

__all__ = [
    "UVMesh",
    "read_off",
    "write_off",
    "z_up_to_y_up",
    "y_up_to_z_up",
    "cuboid_template",
    "uv_sphere",
]


@dataclass(frozen=True)
class UVMesh:
    """A triangle mesh with a UV atlas.

    Attributes:
        verts: ``(V, 3)`` float, vertex positions (object frame, y up); or ``(B, V, 3)``, one
            shape per camera (e.g. deformed meshes), which ``render``/``raster`` draw camera by camera.
        faces: ``(F, 3)`` int64, indices into ``verts``; counter-clockwise seen from outside.
        verts_uvs: ``(T, 2)`` float in ``[0, 1]``, UV coordinates ``(u, v)``.
        faces_uvs: ``(F, 3)`` int64, indices into ``verts_uvs``, corner-for-corner with ``faces``.
    """

    verts: torch.Tensor
    faces: torch.Tensor
    verts_uvs: torch.Tensor
    faces_uvs: torch.Tensor
    # Topology-derived caches (``face_charts``), shared by meshes made with ``with_verts``/``to``.
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.verts, torch.Tensor) and self.verts.dim() == 3:
            if len(self.verts) == 0:
                raise ValueError("verts must have shape (V, 3) or (B, V, 3) with B >= 1, got B = 0")
            _check_array("verts", self.verts[0], last_dim=3, floating=True)
        else:
            _check_array("verts", self.verts, last_dim=3, floating=True)
        _check_array("faces", self.faces, last_dim=3, floating=False)
        _check_array("verts_uvs", self.verts_uvs, last_dim=2, floating=True)
        _check_array("faces_uvs", self.faces_uvs, last_dim=3, floating=False)
        if self.faces.shape != self.faces_uvs.shape:
            raise ValueError(
                f"faces_uvs must have the same shape as faces, got {tuple(self.faces_uvs.shape)} "
                f"vs {tuple(self.faces.shape)}"
            )
        _check_indices("faces", self.faces, self.verts.shape[-2])
        _check_indices("faces_uvs", self.faces_uvs, len(self.verts_uvs))
        if not torch.isfinite(self.verts).all():
            raise ValueError("verts contains NaN or inf")
        if len(self.verts_uvs) and (
            not torch.isfinite(self.verts_uvs).all()
            or self.verts_uvs.min() < 0
            or self.verts_uvs.max() > 1
        ):
            raise ValueError("verts_uvs must be finite and lie in [0, 1]")

    @property
    def num_verts(self) -> int:
        return int(self.verts.shape[-2])

    @property
    def batch_size(self) -> int | None:
        """``B`` for per-camera vertices ``(B, V, 3)``, ``None`` for one shape ``(V, 3)``."""
        return int(self.verts.shape[0]) if self.verts.dim() == 3 else None

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    @property
    def device(self) -> torch.device:
        return self.verts.device

    def to(self, device: torch.device | str) -> "UVMesh":
        return UVMesh(*(t.to(device) for t in (self.verts, self.faces, self.verts_uvs, self.faces_uvs)), _cache=self._cache)

    def with_verts(self, verts: torch.Tensor) -> "UVMesh":
        """The same topology and UV atlas with new vertex positions: ``(V, 3)`` (e.g. a deformed
        mesh) or ``(B, V, 3)`` (one shape per camera)."""
        if not isinstance(verts, torch.Tensor) or verts.dim() not in (2, 3) or tuple(verts.shape[-2:]) != (self.num_verts, 3):
            raise ValueError(f"verts must have shape ({self.num_verts}, 3) or (B, {self.num_verts}, 3), got {tuple(getattr(verts, 'shape', ()))}")
        return UVMesh(verts, self.faces, self.verts_uvs, self.faces_uvs, _cache=self._cache)

    def face_charts(self) -> torch.Tensor:
        """UV chart of every face, ``(F,)`` int64 on ``faces_uvs``' device.

        Charts are the connected components of the UV triangulation: two faces are in the same
        chart when they share a UV vertex index in ``faces_uvs`` (so a seam, where the UV vertices
        are duplicated, separates charts). Numbered ``0..K-1`` in order of their first face.
        The cuboid template gives its six sides, the UV sphere one chart. Cached per topology
        (hot loops call it for every render).
        """
        key = ("face_charts", self.faces_uvs.device)
        charts = self._cache.get(key)
        if charts is None:
            cpu = self._cache.get(("face_charts", torch.device("cpu")))
            if cpu is None:
                cpu = _face_charts_cached(self.faces_uvs.detach().cpu(), len(self.verts_uvs))
                self._cache[("face_charts", torch.device("cpu"))] = cpu
            charts = cpu.to(self.faces_uvs.device)
            self._cache[key] = charts
        return charts

    def seam_edges(self) -> torch.Tensor:
        """3D edges ``(E, 2)`` (sorted vertex pairs) along which the UV atlas is cut."""
        corners_3d = self.faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
        corners_uv = self.faces_uvs[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
        # Orient each half-edge by its 3D endpoints so both sides of an edge line up.
        swap = corners_3d[:, 0] > corners_3d[:, 1]
        corners_3d = torch.where(swap[:, None], corners_3d.flip(1), corners_3d)
        corners_uv = torch.where(swap[:, None], corners_uv.flip(1), corners_uv)
        seams = set()
        first_uv: dict[tuple[int, int], tuple[int, int]] = {}
        for e3, euv in zip(corners_3d.tolist(), corners_uv.tolist()):
            key = (e3[0], e3[1])
            if key in first_uv and first_uv[key] != tuple(euv):
                seams.add(key)
            first_uv.setdefault(key, tuple(euv))
        return torch.tensor(sorted(seams), dtype=torch.int64).reshape(-1, 2)

    def to_meshes(self, batch_size: int = 1):
        """A PyTorch3D ``Meshes`` with ``batch_size`` copies of this mesh (no textures attached)."""
        from pytorch3d.structures import Meshes

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        verts = self.verts.float()
        if verts.dim() == 3:
            if batch_size not in (1, len(verts)):
                raise ValueError(f"batch_size must be {len(verts)} for per-camera vertices, got {batch_size}")
            return Meshes(verts=list(verts), faces=[self.faces] * len(verts))
        return Meshes(verts=[verts] * batch_size, faces=[self.faces] * batch_size)


_CHARTS_BY_CONTENT: dict = {}  # BLAKE2 digest of faces_uvs -> charts, for meshes rebuilt with UVMesh(...)


def _face_charts_cached(faces_uvs: torch.Tensor, n_uv: int) -> torch.Tensor:
    import hashlib

    key = (n_uv, tuple(faces_uvs.shape), hashlib.blake2b(faces_uvs.contiguous().numpy().tobytes(), digest_size=16).digest())
    charts = _CHARTS_BY_CONTENT.get(key)
    if charts is None:
        if len(_CHARTS_BY_CONTENT) >= 64:
            _CHARTS_BY_CONTENT.pop(next(iter(_CHARTS_BY_CONTENT)))
        charts = _CHARTS_BY_CONTENT[key] = _face_charts(faces_uvs, n_uv)
    return charts


def _face_charts(faces_uvs: torch.Tensor, n_uv: int) -> torch.Tensor:
    """Connected components of faces linked through shared UV vertices (union-find, numpy)."""
    import numpy as np

    f = faces_uvs.numpy()
    n_faces = len(f)
    # Each UV vertex points at the first face using it; then faces sharing a UV vertex are joined
    # by repeated pointer jumping on the (face -> min linked face) labels until nothing changes.
    label = np.arange(n_faces)
    if n_faces == 0:
        return torch.zeros(0, dtype=torch.int64)
    corner_face = np.repeat(np.arange(n_faces), 3)
    corner_uv = f.reshape(-1)
    while True:
        uv_min = np.full(n_uv, n_faces, dtype=np.int64)
        np.minimum.at(uv_min, corner_uv, label[corner_face])
        new = label.copy()
        np.minimum.at(new, corner_face, uv_min[corner_uv])
        new = new[new]  # pointer jumping: follow labels to their own labels
        if np.array_equal(new, label):
            break
        label = new
    # Renumber components 0..K-1 in order of their first face.
    _, first, inverse = np.unique(label, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return torch.from_numpy(order[inverse].astype(np.int64))


def _check_array(name: str, t: torch.Tensor, last_dim: int, floating: bool) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2 or t.shape[1] != last_dim:
        raise ValueError(f"{name} must have shape (N, {last_dim}), got {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor, got {t.dtype}")
    if not floating and t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")


def _check_indices(name: str, idx: torch.Tensor, n: int) -> None:
    if idx.numel() and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{name} indices must lie in [0, {n}), got range [{int(idx.min())}, {int(idx.max())}]")


# --------------------------------------------------------------------------- OFF files


def z_up_to_y_up(verts: torch.Tensor) -> torch.Tensor:
    """PASCAL3D+'s on-disk CAD frame (z up) to ours (y up): ``(x, y, z) → (x, z, −y)``.

    The conversion NeMo applies to every CAD vertex (``pre_process_mesh_pascal``); a proper
    rotation (det +1), so face winding is kept, and exact in floating point (a permutation and a
    negation). ``verts (V, 3)`` → ``(V, 3)``, same dtype.
    """
    verts = torch.as_tensor(verts)
    return torch.stack([verts[:, 0], verts[:, 2], -verts[:, 1]], dim=1)


def y_up_to_z_up(verts: torch.Tensor) -> torch.Tensor:
    """The inverse of ``z_up_to_y_up``: ``(x, y, z) → (x, −z, y)``; ``(V, 3)`` → ``(V, 3)``."""
    verts = torch.as_tensor(verts)
    return torch.stack([verts[:, 0], -verts[:, 2], verts[:, 1]], dim=1)


def write_off(path: str | os.PathLike, verts: torch.Tensor, faces: torch.Tensor) -> None:
    """Write a triangle mesh in the PASCAL3D+ CAD format (``OFF``, ``nV nF 0``, vertices, ``3 i j k``).

    Args:
        path: destination ``.off`` file (written atomically).
        verts: ``(V, 3)`` float.
        faces: ``(F, 3)`` integer, 0-based.
    """
    verts = torch.as_tensor(verts)
    faces = torch.as_tensor(faces)
    if verts.dim() != 2 or verts.shape[1] != 3:
        raise ValueError(f"verts must have shape (V, 3), got {tuple(verts.shape)}")
    if faces.dim() != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    _check_indices("faces", faces.long(), len(verts))
    lines = ["OFF", f"{len(verts)} {len(faces)} 0"]
    lines += [f"{x:.9g} {y:.9g} {z:.9g}" for x, y, z in verts.double().tolist()]
    lines += [f"3 {i} {j} {k}" for i, j, k in faces.long().tolist()]
    atomic_write_text(path, "\n".join(lines) + "\n")


def read_off(path: str | os.PathLike, z_up: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a PASCAL3D+ ``.off`` file.

    ``z_up=True``: the file is in PASCAL3D+'s on-disk frame (z up), as every real PASCAL3D+ CAD
    file and every ``CAD/`` folder the data generator writes are; the vertices are returned in
    ours (y up) through ``z_up_to_y_up``. ``z_up=False`` returns them as stored.

    Accepts the header either on its own line (``OFF`` then ``nV nF nE``) or fused
    (``OFFnV nF nE``, as in some PASCAL3D+ files); ``#`` comments and blank lines are
    ignored. Polygons with more than three corners are fan-triangulated.

    Returns:
        verts ``(V, 3)`` float32 and faces ``(F, 3)`` int64.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a well-formed OFF file (the message says where).
    """
    if not isinstance(z_up, bool):
        raise TypeError(f"z_up must be a bool, got {type(z_up).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OFF file not found: {path}")
    tokens_by_line = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if line:
                tokens_by_line.append((lineno, line.split()))
    if not tokens_by_line or not tokens_by_line[0][1][0].startswith("OFF"):
        raise ValueError(f"{path}: not an OFF file (first line must start with 'OFF')")
    head = tokens_by_line[0][1]
    head[0] = head[0][3:]
    head = [h for h in head if h]
    body = tokens_by_line[1:]
    if not head:
        if not body:
            raise ValueError(f"{path}: missing the 'nV nF nE' counts line")
        head = body[0][1]
        body = body[1:]
    try:
        n_verts, n_faces = int(head[0]), int(head[1])
    except (ValueError, IndexError):
        raise ValueError(f"{path}: malformed counts line {head!r}, expected 'nV nF nE'") from None
    if n_verts < 0 or n_faces < 0:
        raise ValueError(f"{path}: negative counts {n_verts} {n_faces}")
    if len(body) < n_verts + n_faces:
        raise ValueError(f"{path}: truncated, expected {n_verts} vertex and {n_faces} face lines, got {len(body)} lines")
    verts = []
    for lineno, toks in body[:n_verts]:
        try:
            verts.append([float(t) for t in toks[:3]])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: malformed vertex line {' '.join(toks)!r}") from None
        if len(toks) < 3:
            raise ValueError(f"{path}:{lineno}: vertex line needs 3 coordinates, got {' '.join(toks)!r}")
    faces = []
    for lineno, toks in body[n_verts : n_verts + n_faces]:
        try:
            k = int(toks[0])
            idx = [int(t) for t in toks[1 : 1 + k]]
        except (ValueError, IndexError):
            raise ValueError(f"{path}:{lineno}: malformed face line {' '.join(toks)!r}") from None
        if k < 3 or len(idx) != k:
            raise ValueError(f"{path}:{lineno}: face line must be 'k i1 ... ik' with k >= 3, got {' '.join(toks)!r}")
        if min(idx) < 0 or max(idx) >= n_verts:
            raise ValueError(f"{path}:{lineno}: face index out of range [0, {n_verts})")
        faces += [[idx[0], idx[i], idx[i + 1]] for i in range(1, k - 1)]
    v = torch.tensor(verts, dtype=torch.float32).reshape(-1, 3)
    if not torch.isfinite(v).all():
        raise ValueError(f"{path}: vertex coordinates contain NaN or inf")
    return (z_up_to_y_up(v) if z_up else v), torch.tensor(faces, dtype=torch.int64).reshape(-1, 3)


# --------------------------------------------------------------------------- templates

# The six cuboid faces: (normal axis, sign, in-plane axes (a, b)) with a x b = sign * normal,
# so that triangles wound a→b are counter-clockwise seen from outside.
_CUBOID_SIDES = (
    (0, +1, 1, 2), (0, -1, 2, 1),
    (1, +1, 2, 0), (1, -1, 0, 2),
    (2, +1, 0, 1), (2, -1, 1, 0),
)


def cuboid_template(
    extent: Sequence[float] | torch.Tensor | None = None,
    *,
    meshes_verts: Iterable[torch.Tensor] | None = None,
    num_verts: int = 1000,
    margin: float = 0.02,
    padding: float = 0.02,
) -> UVMesh:
    """A closed, subdivided cuboid with a non-overlapping six-chart UV atlas (NeMo's cuboid idea).

    The cuboid is centred at the origin. Give either its full ``extent (3,)`` (x, y, z) or
    ``meshes_verts``, a set of CAD vertex arrays ``(V_i, 3)`` whose joint bounding box the
    cuboid covers (grown by ``margin`` of its size on each side; centred at the origin since
    PASCAL3D+ CAD models are).

    Each side is a regular grid; the grid steps are chosen so cells are close to square and
    the vertex count is close to ``num_verts``. Vertices are shared across sides (the mesh is
    watertight) while every side is its own UV chart. The six charts are packed as three rows
    of two opposite sides, or two rows of three, each chart possibly rotated by 90°, whichever
    fills the atlas best; the packing is then stretched to the unit square. One common scale per
    axis keeps the texel density equal on every side. ``padding`` (UV units, relative to the
    atlas) separates charts so bilinear lookups do not bleed across them. The 12 cuboid edges
    are the seams.

    Returns:
        A ``UVMesh``; ``verts`` float32 ``(V, 3)``, ``V ≈ num_verts``.
    """
    if (extent is None) == (meshes_verts is None):
        raise ValueError("give exactly one of extent or meshes_verts")
    if meshes_verts is not None:
        all_v = [torch.as_tensor(v, dtype=torch.float32).reshape(-1, 3) for v in meshes_verts]
        if not all_v or sum(len(v) for v in all_v) == 0:
            raise ValueError("meshes_verts must contain at least one vertex")
        cat = torch.cat(all_v)
        half = cat.abs().max(dim=0).values * (1 + margin)
        extent = 2 * half
    extent = torch.as_tensor(extent, dtype=torch.float64).reshape(-1)
    if extent.numel() != 3 or not torch.isfinite(extent).all() or (extent <= 0).any():
        raise ValueError(f"extent must be 3 positive finite numbers, got {extent.tolist()}")
    if num_verts < 8:
        raise ValueError(f"num_verts must be >= 8, got {num_verts}")
    if not 0 <= padding < 1 / 6:
        raise ValueError(f"padding must lie in [0, 1/6), got {padding}")

    steps = _cuboid_steps(extent, num_verts)
    half = extent / 2

    # 3D vertices: grid points of each side, merged by exact integer lattice coordinates.
    key_to_vid: dict[tuple[int, int, int], int] = {}
    verts: list[list[float]] = []
    faces: list[list[int]] = []
    faces_uvs: list[list[int]] = []
    verts_uvs: list[list[float]] = []

    placements = _pack_cuboid_charts(extent, padding)

    for side, (n_ax, sign, a_ax, b_ax) in enumerate(_CUBOID_SIDES):
        na, nb = steps[a_ax], steps[b_ax]
        u0, v0, du_a, dv_a, du_b, dv_b = placements[side]
        uv_base = len(verts_uvs)
        vid = torch.empty(na + 1, nb + 1, dtype=torch.int64)
        for i in range(na + 1):
            for j in range(nb + 1):
                lattice = [0, 0, 0]
                lattice[n_ax] = steps[n_ax] if sign > 0 else 0
                lattice[a_ax], lattice[b_ax] = i, j
                key = tuple(lattice)
                if key not in key_to_vid:
                    key_to_vid[key] = len(verts)
                    verts.append([float(-half[d] + extent[d] * lattice[d] / steps[d]) for d in range(3)])
                vid[i, j] = key_to_vid[key]
                verts_uvs.append([u0 + du_a * i / na + du_b * j / nb, v0 + dv_a * i / na + dv_b * j / nb])
        for i in range(na):
            for j in range(nb):
                c00, c10, c11, c01 = vid[i, j], vid[i + 1, j], vid[i + 1, j + 1], vid[i, j + 1]
                t00 = uv_base + i * (nb + 1) + j
                t10, t11, t01 = t00 + (nb + 1), t00 + (nb + 1) + 1, t00 + 1
                faces += [[c00, c10, c11], [c00, c11, c01]]
                faces_uvs += [[t00, t10, t11], [t00, t11, t01]]

    return UVMesh(
        verts=torch.tensor(verts, dtype=torch.float32),
        faces=torch.tensor(faces, dtype=torch.int64),
        verts_uvs=torch.tensor(verts_uvs, dtype=torch.float32).clamp(0, 1),
        faces_uvs=torch.tensor(faces_uvs, dtype=torch.int64),
    )


def _cuboid_steps(extent: torch.Tensor, num_verts: int) -> list[int]:
    """Grid steps (n_x, n_y, n_z) with near-square cells and close to ``num_verts`` vertices."""

    def count(n):  # vertices on the surface of an (n_x, n_y, n_z) lattice box
        a, b, c = n
        return (a + 1) * (b + 1) * (c + 1) - max(a - 1, 0) * max(b - 1, 0) * max(c - 1, 0)

    best = None
    for k in range(1, 2000):
        cell = float(extent.max()) / k
        n = [max(1, round(float(e) / cell)) for e in extent]
        err = abs(count(n) - num_verts)
        if best is None or err < best[0]:
            best = (err, n)
        if count(n) > 2 * num_verts:
            break
    return best[1]


def _pack_cuboid_charts(extent: torch.Tensor, padding: float) -> list[tuple[float, ...]]:
    """Per side: UV origin and the UV vectors of its ``a`` and ``b`` edges, ``(u0, v0, du_a, dv_a, du_b, dv_b)``."""
    sizes = [(float(extent[a]), float(extent[b])) for _, _, a, b in _CUBOID_SIDES]
    pad = padding * float(sum(w * h for w, h in sizes)) ** 0.5  # world units, about `padding` of the atlas
    best = None
    for rows in ([[0, 1], [2, 3], [4, 5]], [[0, 2, 4], [1, 3, 5]]):
        for flips in range(8):
            # rotate = True puts the side's `a` edge along v instead of u; opposite sides rotate together.
            rot = [bool(flips >> (side // 2) & 1) for side in range(6)]
            cells = [(h, w) if rot[k] else (w, h) for k, (w, h) in enumerate(sizes)]
            row_w = [sum(cells[k][0] + 2 * pad for k in row) for row in rows]
            row_h = [max(cells[k][1] + 2 * pad for k in row) for row in rows]
            width, height = max(row_w), sum(row_h)
            used = sum(w * h for w, h in sizes) / (width * height)
            if best is None or used > best[0]:
                best = (used, rows, rot, cells, row_h, width, height)
    _, rows, rot, cells, row_h, width, height = best
    out: list[tuple[float, ...]] = [()] * 6
    y = 0.0
    for row, rh in zip(rows, row_h):
        x = 0.0
        for k in row:
            cw, ch = cells[k]
            u0, v0 = (x + pad) / width, (y + pad) / height
            w, h = sizes[k]
            if rot[k]:  # a along v, b along u
                out[k] = (u0, v0, 0.0, w / height, h / width, 0.0)
            else:
                out[k] = (u0, v0, w / width, 0.0, 0.0, h / height)
            x += cw + 2 * pad
        y += rh
    return out


def uv_sphere(radius: float = 1.0, n_lat: int = 16, n_lon: int = 32) -> UVMesh:
    """A UV sphere (for demos): ``u`` = longitude / 2π, ``v`` = colatitude / π.

    The seam is the meridian at longitude 0, where the UV atlas jumps from ``u = 1`` back to
    ``u = 0``; it is explicit in ``faces_uvs`` (that meridian has two UV columns). Poles are
    single 3D vertices with one UV vertex per adjacent triangle fan column.

    Returns:
        ``UVMesh`` with ``V = (n_lat - 1) * n_lon + 2`` vertices.
    """
    if n_lat < 2 or n_lon < 3:
        raise ValueError(f"need n_lat >= 2 and n_lon >= 3, got n_lat={n_lat}, n_lon={n_lon}")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    verts = [[0.0, radius, 0.0]]  # north pole (y up)
    for i in range(1, n_lat):
        theta = math.pi * i / n_lat
        for j in range(n_lon):
            phi = 2 * math.pi * j / n_lon
            verts.append([radius * math.sin(theta) * math.sin(phi), radius * math.cos(theta), radius * math.sin(theta) * math.cos(phi)])
    verts.append([0.0, -radius, 0.0])
    south = len(verts) - 1

    def vid(i, j):  # ring i in 1..n_lat-1, column j (wraps)
        return 1 + (i - 1) * n_lon + (j % n_lon)

    def tid(i, j):  # UV grid (n_lat + 1) x (n_lon + 1); row i, column j (no wrap: seam column doubled)
        return i * (n_lon + 1) + j

    verts_uvs = [[j / n_lon, i / n_lat] for i in range(n_lat + 1) for j in range(n_lon + 1)]
    # Pole UVs sit at the middle of each fan column so pole triangles are not degenerate in UV.
    for j in range(n_lon):
        verts_uvs[tid(0, j)][0] = (j + 0.5) / n_lon
        verts_uvs[tid(n_lat, j)][0] = (j + 0.5) / n_lon
    faces, faces_uvs = [], []
    for j in range(n_lon):
        faces.append([0, vid(1, j), vid(1, j + 1)])
        faces_uvs.append([tid(0, j), tid(1, j), tid(1, j + 1)])
        faces.append([south, vid(n_lat - 1, j + 1), vid(n_lat - 1, j)])
        faces_uvs.append([tid(n_lat, j), tid(n_lat - 1, j + 1), tid(n_lat - 1, j)])
        for i in range(1, n_lat - 1):
            faces.append([vid(i, j), vid(i + 1, j), vid(i + 1, j + 1)])
            faces_uvs.append([tid(i, j), tid(i + 1, j), tid(i + 1, j + 1)])
            faces.append([vid(i, j), vid(i + 1, j + 1), vid(i, j + 1)])
            faces_uvs.append([tid(i, j), tid(i + 1, j + 1), tid(i, j + 1)])
    return UVMesh(
        verts=torch.tensor(verts, dtype=torch.float32),
        faces=torch.tensor(faces, dtype=torch.int64),
        verts_uvs=torch.tensor(verts_uvs, dtype=torch.float32),
        faces_uvs=torch.tensor(faces_uvs, dtype=torch.int64),
    )
