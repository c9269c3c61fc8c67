"""Surface sampling, chamfer distance and the deformation regularizers.

Everything here is plain PyTorch, differentiable in the vertex positions.

Regularizers (all applied to a batch of deformed meshes sharing the template's faces):

* ``laplacian_smoothness``: uniform (umbrella) Laplacian ``(L x)_i = x_i − mean_{j∈N(i)} x_j`` of
  the per-vertex **offsets**, ``mean_i ‖(L δ)_i‖²``. Applied to offsets rather than positions
  so the template's own sharp corners (a cuboid's edges) are not penalised, only the
  roughness the network adds. A constant offset field (a translation) costs exactly 0.
* ``edge_length_loss``: ``mean_e ((ℓ_e − ℓ⁰_e) / ℓ⁰_e)²`` for every mesh edge, relative to the
  template's length ``ℓ⁰``: keeps triangles from collapsing or stretching, which keeps the UV
  atlas (and the neural texture on it) evenly sampled. Rigid motions cost exactly 0.
* ``offset_magnitude``: ``mean_i ‖δ_i‖²``, a weak pull towards the template.
"""

from __future__ import annotations

import torch

__all__ = [
    "mesh_edges",
    "sample_surface",
    "chamfer_distance",
    "laplacian_smoothness",
    "edge_length_loss",
    "offset_magnitude",
]


def _check_index_table(name: str, t, cols: int, num_verts: int | None) -> None:
    """``t`` must be a non-empty int64 ``(n, cols)`` tensor with indices in ``[0, num_verts)``
    (only ``>= 0`` when ``num_verts`` is None): out-of-range indices would otherwise crash or
    silently read other memory in the gathers below."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"{name} must be int64, got {t.dtype}")
    if t.dim() != 2 or t.shape[1] != cols:
        raise ValueError(f"{name} must have shape ({name[0].upper()}, {cols}), got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if t.min() < 0 or (num_verts is not None and t.max() >= num_verts):
        raise ValueError(f"{name} indices must lie in [0, {num_verts if num_verts is not None else 'V'})")


def _check_faces(faces: torch.Tensor, num_verts: int | None) -> None:
    _check_index_table("faces", faces, 3, num_verts)


def _batched_verts(name: str, verts: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(verts, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(verts).__name__}")
    if verts.dim() not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (V, 3) or (B, V, 3), got {tuple(verts.shape)}")
    if not verts.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {verts.dtype}")
    if not torch.isfinite(verts).all():
        raise ValueError(f"{name} contains NaN or inf")
    return (verts[None], True) if verts.dim() == 2 else (verts, False)


def mesh_edges(faces: torch.Tensor) -> torch.Tensor:
    """Unique undirected edges ``(E, 2)`` int64 (``i < j``, lexicographically sorted) of a triangle mesh ``faces (F, 3)`` int64."""
    _check_faces(faces, None)
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    e = torch.sort(e, dim=1).values
    return torch.unique(e, dim=0)


def sample_surface(verts: torch.Tensor, faces: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Points drawn uniformly by area on triangle meshes, differentiable in ``verts``.

    Faces are drawn with probability proportional to their area (areas detached: the choice is
    discrete), then a point inside each with the square-root trick
    ``p = (1−√r₁) a + √r₁(1−r₂) b + √r₁ r₂ c``, which is uniform on the triangle.

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)`` float.
        faces: ``(F, 3)`` int64, shared by the batch.
        num_samples: points per mesh, ``>= 1``.
        generator: a seeded ``torch.Generator`` on ``verts.device`` (the only randomness used).

    Returns:
        ``(num_samples, 3)`` or ``(B, num_samples, 3)``, same dtype as ``verts``.
    """
    v, squeeze = _batched_verts("verts", verts)
    _check_faces(faces, v.shape[1])
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    tri = v[:, faces]  # (B, F, 3, 3)
    areas = torch.linalg.vector_norm(torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1), dim=-1)
    areas = areas.detach()
    if not (areas.sum(dim=1) > 0).all():
        raise ValueError("verts: every mesh needs a positive surface area to sample from")
    face_idx = torch.multinomial(areas, num_samples, replacement=True, generator=generator)  # (B, N)
    r = torch.rand(v.shape[0], num_samples, 2, generator=generator, device=v.device, dtype=v.dtype)
    s = r[..., 0].sqrt()
    w = torch.stack([1 - s, s * (1 - r[..., 1]), s * r[..., 1]], dim=-1)  # (B, N, 3)
    corners = torch.gather(tri, 1, face_idx[..., None, None].expand(-1, -1, 3, 3))  # (B, N, 3, 3)
    pts = (w[..., None] * corners).sum(dim=2)
    return pts[0] if squeeze else pts


def _nearest_dist2(x: torch.Tensor, y: torch.Tensor, chunk: int) -> torch.Tensor:
    """``min_j ‖x_i − y_j‖²`` per point of ``x (B, P, 3)`` → ``(B, P)``.

    The nearest neighbour is the argmin of ``‖y_j‖² − 2 x_i·y_j`` (one ``addmm`` per chunk of
    ``chunk`` query points of one batch element, so the block stays in cache; no gradient),
    then the distance to it is recomputed exactly as ``‖x − y_nn‖²``: the expanded form loses
    precision for nearby points, and autograd through the gather gives the exact gradient.
    """
    with torch.no_grad():
        xd, yd = x.detach(), y.detach()
        y2 = (yd * yd).sum(-1)
        nn_idx = torch.stack([
            torch.cat([torch.addmm(y2[b], xd[b, s : s + chunk], yd[b].t(), alpha=-2).argmin(dim=1) for s in range(0, x.shape[1], chunk)])
            for b in range(x.shape[0])
        ])
    nearest = torch.gather(y, 1, nn_idx[..., None].expand(-1, -1, 3))
    return ((x - nearest) ** 2).sum(-1)


def chamfer_distance(x: torch.Tensor, y: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Symmetric squared chamfer distance per batch element.

    ``CD(X, Y) = mean_{x∈X} min_{y∈Y} ‖x−y‖² + mean_{y∈Y} min_{x∈X} ‖x−y‖²`` (the same value as
    PyTorch3D's ``chamfer_distance`` with ``point_reduction="mean"``), in squared object units.
    Brute force in chunks of ``chunk`` query points (memory ``O(chunk · max(P, Q))``).

    Args:
        x: ``(B, P, 3)`` float; y: ``(B, Q, 3)``, same ``B``, dtype and device; both finite.

    Returns:
        ``(B,)``, the inputs' dtype, differentiable in both.
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or t.shape[-1] != 3 or t.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty (B, N, 3) tensor, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
    if x.dtype != y.dtype or x.device != y.device:
        raise TypeError(f"x and y must have the same dtype and device, got {x.dtype}/{x.device} and {y.dtype}/{y.device}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    return _nearest_dist2(x, y, chunk).mean(dim=1) + _nearest_dist2(y, x, chunk).mean(dim=1)


def laplacian_smoothness(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Uniform-Laplacian roughness ``mean_i ‖x_i − mean_{j∈N(i)} x_j‖²`` (mean over batch too).

    Args:
        x: ``(V, 3)`` or ``(B, V, 3)`` per-vertex vectors (offsets in this module).
        edges: ``(E, 2)`` int64 undirected edges (``mesh_edges``); isolated vertices count 0.

    Returns:
        scalar tensor.
    """
    x, _ = _batched_verts("x", x)
    _check_index_table("edges", edges, 2, x.shape[1])
    b, n, _ = x.shape
    i, j = edges[:, 0], edges[:, 1]
    nbr_sum = torch.zeros_like(x)
    nbr_sum = nbr_sum.index_add(1, i, x[:, j]).index_add(1, j, x[:, i])
    deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add(0, i, torch.ones_like(i, dtype=x.dtype))
    deg = deg.index_add(0, j, torch.ones_like(j, dtype=x.dtype))
    lap = torch.where(deg[None, :, None] > 0, x - nbr_sum / deg.clamp(min=1)[None, :, None], torch.zeros_like(x))
    return (lap**2).sum(-1).mean()


def edge_length_loss(verts: torch.Tensor, template_verts: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Relative edge-length change ``mean_e ((ℓ_e − ℓ⁰_e)/ℓ⁰_e)²`` against the template.

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)`` deformed positions.
        template_verts: ``(V, 3)`` template positions (every edge must have positive length).
        edges: ``(E, 2)`` int64.

    Returns:
        scalar tensor.
    """
    v, _ = _batched_verts("verts", verts)
    _batched_verts("template_verts", template_verts)
    if template_verts.shape != v.shape[1:]:
        raise ValueError(f"template_verts must have shape {tuple(v.shape[1:])}, got {tuple(template_verts.shape)}")
    _check_index_table("edges", edges, 2, v.shape[1])
    l0 = torch.linalg.vector_norm(template_verts[edges[:, 0]] - template_verts[edges[:, 1]], dim=-1)
    if not (l0 > 0).all():
        raise ValueError("template_verts has zero-length edges")
    l = torch.linalg.vector_norm(v[:, edges[:, 0]] - v[:, edges[:, 1]], dim=-1)
    return (((l - l0) / l0) ** 2).mean()


def offset_magnitude(offsets: torch.Tensor) -> torch.Tensor:
    """``mean_i ‖δ_i‖²`` over vertices (and batch); ``offsets (V, 3)`` or ``(B, V, 3)`` → scalar."""
    o, _ = _batched_verts("offsets", offsets)
    return (o**2).sum(-1).mean()
