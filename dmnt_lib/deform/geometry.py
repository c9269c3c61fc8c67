"""Surface sampling, chamfer distance and the deformation regularizers, on PyTorch3D's ops.

Sampling is ``pytorch3d.ops.sample_points_from_meshes`` (made reproducible from a generator),
the chamfer distance is ``pytorch3d.loss.chamfer_distance`` and the Laplacian operator is
``pytorch3d.ops.laplacian``; the wrappers add argument checks and the batch conventions of
``fit.py``. Everything is differentiable in the vertex positions.

Regularizers (all applied to a batch of deformed meshes sharing the template's faces); two
differ from PyTorch3D's losses on purpose (each docstring says why, the tests compare them):

* ``laplacian_smoothness``: ``mean_i ‖(L δ)_i‖²`` for the uniform (umbrella) Laplacian
  ``(L x)_i = mean_{j∈N(i)} x_j − x_i`` of the per-vertex **offsets**. Applied to offsets
  rather than positions so the template's own sharp corners (a cuboid's edges) are not
  penalised, only the roughness the network adds. A constant offset field (a translation)
  costs exactly 0. (``mesh_laplacian_smoothing`` averages the unsquared norm of positions.)
* ``edge_length_loss``: ``mean_e ((ℓ_e − ℓ⁰_e) / ℓ⁰_e)²`` for every mesh edge, relative to the
  template's own length ``ℓ⁰_e``: keeps triangles from collapsing or stretching, which keeps
  the UV atlas (and the neural texture on it) evenly sampled. Rigid motions cost exactly 0.
  (``mesh_edge_loss`` pulls every edge to one common length.)
* ``offset_magnitude``: ``mean_i ‖δ_i‖²``, a weak pull towards the template.
"""

from __future__ import annotations

import torch
from pytorch3d.loss import chamfer_distance as _pytorch3d_chamfer
from pytorch3d.ops import laplacian, sample_points_from_meshes
from pytorch3d.structures import Meshes

__all__ = [
    "mesh_edges",
    "sample_surface",
    "chamfer_distance",
    "uniform_laplacian",
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
    """Unique undirected edges ``(E, 2)`` int64 (``i < j``, lexicographically sorted) of a triangle mesh ``faces (F, 3)`` int64.

    The same edges as PyTorch3D's ``Meshes.edges_packed()`` (tested), without building a
    ``Meshes`` (which needs vertices) from the faces alone.
    """
    _check_faces(faces, None)
    e = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    e = torch.sort(e, dim=1).values
    return torch.unique(e, dim=0)


def sample_surface(verts: torch.Tensor, faces: torch.Tensor, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Points drawn uniformly by area on triangle meshes, differentiable in ``verts``: PyTorch3D's
    ``sample_points_from_meshes``, made reproducible from a generator.

    PyTorch3D draws its faces (``multinomial`` on the areas) and barycentric coordinates
    (square-root trick) from the *global* RNG and takes no generator. Fitting must not depend on
    (or disturb) the global RNG: a resumed fit repeats an uninterrupted one only if step ``t``
    draws the same samples, whatever ran before. So one seed is drawn from ``generator`` and
    PyTorch3D's sampler runs inside ``torch.random.fork_rng`` seeded with it: the caller's global
    RNG state is restored afterwards (not thread-safe: another thread drawing from the global RNG
    meanwhile would see the seeded state).

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)`` float.
        faces: ``(F, 3)`` int64, shared by the batch.
        num_samples: points per mesh, ``>= 1``.
        generator: a seeded ``torch.Generator`` (any device); its state advances by one draw.

    Returns:
        ``(num_samples, 3)`` or ``(B, num_samples, 3)``, same dtype as ``verts``.
    """
    v, squeeze = _batched_verts("verts", verts)
    _check_faces(faces, v.shape[1])
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    meshes = Meshes(verts=v, faces=faces.to(v.device)[None].expand(v.shape[0], -1, -1))
    meshes.verts_packed()  # cached with its autograd history *before* no_grad (else samples lose it)
    with torch.no_grad():
        areas = meshes.faces_areas_packed().reshape(v.shape[0], -1).sum(dim=1)
    if not (areas > 0).all():  # PyTorch3D would fail inside multinomial
        raise ValueError("verts: every mesh needs a positive surface area to sample from")
    seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
    cuda = [v.device] if v.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(v.device):
                torch.cuda.manual_seed(seed)
        pts = sample_points_from_meshes(meshes, num_samples)
    return pts[0] if squeeze else pts


def chamfer_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Symmetric squared chamfer distance per batch element: PyTorch3D's ``chamfer_distance``.

    ``CD(X, Y) = mean_{x∈X} min_{y∈Y} ‖x−y‖² + mean_{y∈Y} min_{x∈X} ‖x−y‖²`` in squared
    object units (``point_reduction="mean"``, no batch reduction; nearest neighbours from
    ``pytorch3d.ops.knn_points``). This wrapper only checks the inputs.

    Args:
        x: ``(B, P, 3)`` float32; y: ``(B, Q, 3)`` float32, same ``B`` and device; both finite.

    Returns:
        ``(B,)`` float32, differentiable in both.
    """
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3 or t.shape[-1] != 3 or t.shape[1] == 0:
            raise ValueError(f"{name} must be a non-empty (B, N, 3) tensor, got {tuple(t.shape)}")
        if t.dtype != torch.float32:  # not silently cast: float64 callers would get float32 values
            raise TypeError(f"{name} must be float32 (PyTorch3D's CPU knn_points takes no other dtype), got {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
    if x.device != y.device:
        raise TypeError(f"x and y must be on the same device, got {x.device} and {y.device}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same batch size, got {x.shape[0]} and {y.shape[0]}")
    return _pytorch3d_chamfer(x, y, batch_reduction=None, point_reduction="mean")[0]


def uniform_laplacian(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``(L x)_i = mean_{j∈N(i)} x_j − x_i`` with PyTorch3D's ``ops.laplacian`` (``D⁻¹A − I``).

    Args:
        x: ``(V, 3)`` or ``(B, V, 3)`` per-vertex vectors.
        edges: ``(E, 2)`` int64 unique undirected edges (``mesh_edges``). An isolated vertex
            gets ``−x_i`` (PyTorch3D's convention; a closed template has none).

    Returns:
        ``(V, 3)`` or ``(B, V, 3)``, like ``x``.
    """
    xb, squeeze = _batched_verts("x", x)
    _check_index_table("edges", edges, 2, xb.shape[1])
    b, n, _ = xb.shape
    lap = laplacian(xb[0], edges.to(xb.device)).to(xb.dtype)  # sparse (V, V), float32 in PyTorch3D
    out = torch.sparse.mm(lap, xb.permute(1, 0, 2).reshape(n, b * 3)).reshape(n, b, 3).permute(1, 0, 2)
    return out[0] if squeeze else out


def laplacian_smoothness(x: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Uniform-Laplacian roughness ``mean_i ‖(L x)_i‖²`` (mean over the batch too).

    The operator is PyTorch3D's (``uniform_laplacian``), the reduction is not:
    ``pytorch3d.loss.mesh_laplacian_smoothing`` averages the *unsquared* norm ``‖(L x)_i‖``
    and applies it to the mesh positions. The squared norm is smooth at 0 (its gradient
    vanishes as the roughness does, where the unsquared one keeps a constant pull that makes
    small offsets jitter) and is what ``FitConfig.w_laplacian`` was tuned for; and it is applied
    to the offsets (module docstring). ``tests/test_deform.py`` checks that
    ``mean_i ‖(L x)_i‖`` equals ``mesh_laplacian_smoothing``.

    Args:
        x: ``(V, 3)`` or ``(B, V, 3)`` per-vertex vectors (offsets in this module).
        edges: ``(E, 2)`` int64 undirected edges (``mesh_edges``).

    Returns:
        scalar tensor.
    """
    return (uniform_laplacian(x, edges) ** 2).sum(-1).mean()


def edge_length_loss(verts: torch.Tensor, template_verts: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Relative edge-length change ``mean_e ((ℓ_e − ℓ⁰_e)/ℓ⁰_e)²`` against the template.

    Not ``pytorch3d.loss.mesh_edge_loss``, which is ``mean_e (ℓ_e − ℓ*)²`` for one target length
    ``ℓ*``: a cuboid template subdivided on a box of unequal sides has edges of several lengths
    (0.11–0.17 on a 642-vertex 1 × 0.8 × 2.2 box), and pulling them all to one length would
    deform the template by itself. For a
    template whose edges all have length ``ℓ*`` the two agree up to the factor ``ℓ*²`` (tested).

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
