"""Rasterization benchmark: PyTorch3D's ``MeshRasterizer`` vs Embree ray casting (``make bench``).

For every image size ``S`` (square) and pose count ``B`` it times, side by side in one run:

* **fwd**: fragments forward (``pix_to_face``, perspective-correct barycentrics, depth) of the
  cuboid template (~2000 faces) for ``B`` poses, no autograd. PyTorch3D: ``MeshRasterizer``
  (naive CPU kernel, one face per pixel, no blur — the path every render call took before
  ``raster``); Embree: ``raster.rasterize(..., backend="embree")``.
* **fwd+bwd**: pose → cameras → fragments → uv (``uv_fragment``'s interpolation) →
  ``sample_texture`` of an 8-channel 64x64 texture → a random linear loss → backward to the
  texture and the four pose angles. PyTorch3D uses its native backward; Embree the shared
  torch barycentric step (``raster.bary``).

Times are per pose (total / B), medians over rounds; rounds run interleaved and stop after
``repeats`` or when a case has used its time budget (at least one round each). PyTorch3D's naive
CPU kernel costs the same per pose at any batch size (a loop over meshes), so for large ``B`` it
is timed on the first ``max_p3d_poses`` poses only; the table says so (``p3d poses``).

It lives at the top of the package, beside ``bench`` (which prints its table), not in ``raster/``:
its forward+backward case goes through ``render``, which is built on ``raster``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time

import torch

DEFAULT_SIZES = (16, 32, 64, 128)
DEFAULT_POSES = (1, 64, 432)
QUICK_SIZES = (16, 32)
QUICK_POSES = (1, 64)
MAX_P3D_POSES = 64
BUDGET_S = 4.0  # per case, after the first round


def _poses(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, generator=g) * 2 * math.pi, (torch.rand(b, generator=g) - 0.3) * 0.8,
            (torch.rand(b, generator=g) - 0.5) * 0.5, 4.5 + torch.rand(b, generator=g))


def _cases(mesh, size: int, b: int, max_p3d: int, seed: int):
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings

    from .camera import pose_to_cameras
    from .raster import rasterize
    from .render import sample_texture, uv_fragment

    focal = 2.2 * size
    pose = _poses(b, seed)
    b3 = min(b, max_p3d)
    pose3 = [p[:b3] for p in pose]
    g = torch.Generator().manual_seed(seed + 1)
    texture = torch.rand(1, 8, 64, 64, generator=g, requires_grad=True)
    weight = torch.randn(b, 8, size, size, generator=g)
    settings = RasterizationSettings(image_size=size, blur_radius=0.0, faces_per_pixel=1, bin_size=0)
    corner_uvs = mesh.verts_uvs[mesh.faces_uvs]
    meshes3 = mesh.to_meshes(b3)

    def p3d_fwd():
        with torch.no_grad():
            MeshRasterizer(cameras=pose_to_cameras(*pose3, size, focal=focal), raster_settings=settings)(meshes3)

    def p3d_fb():
        p = [x.clone().requires_grad_() for x in pose3]
        fr = MeshRasterizer(cameras=pose_to_cameras(*p, size, focal=focal), raster_settings=settings)(meshes3)
        face = fr.pix_to_face[..., 0]
        mask = face >= 0
        face = torch.where(mask, face % mesh.num_faces, 0)
        bary = torch.where(mask[..., None], fr.bary_coords[..., 0, :], 0)
        uv = torch.where(mask[..., None], (bary[..., :, None] * corner_uvs[face]).sum(-2).clamp(0, 1), 0)
        (sample_texture(texture, uv, mask) * weight[:b3]).sum().backward()

    def emb_fwd():
        with torch.no_grad():
            rasterize(mesh, pose_to_cameras(*pose, size, focal=focal), size, backend="embree")

    def emb_fb():
        p = [x.clone().requires_grad_() for x in pose]
        frag = uv_fragment(mesh, pose_to_cameras(*p, size, focal=focal), size, backend="embree")
        (sample_texture(texture, frag.uv, frag.mask) * weight).sum().backward()

    return {"p3d_fwd": (p3d_fwd, b3), "p3d_fb": (p3d_fb, b3), "emb_fwd": (emb_fwd, b), "emb_fb": (emb_fb, b)}


def run(sizes=DEFAULT_SIZES, poses=DEFAULT_POSES, repeats: int = 3, max_p3d_poses: int = MAX_P3D_POSES,
        seed: int = 0, budget_s: float = BUDGET_S, progress: bool = True) -> list[dict]:
    """Times every case; one dict per (size, poses) with ms per pose and the ratios."""
    from .mesh import cuboid_template

    if repeats < 1 or max_p3d_poses < 1:
        raise ValueError(f"repeats and max_p3d_poses must be >= 1, got {repeats}, {max_p3d_poses}")
    mesh = cuboid_template([1.0, 0.7, 1.8], num_verts=1000)
    grid = [(s, b) for s in sizes for b in poses]
    try:
        from tqdm import tqdm

        it = tqdm(grid, desc="bench raster", leave=False, file=sys.stderr, disable=not progress)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        it = grid
    rows = []
    for size, b in it:
        cases = _cases(mesh, size, b, max_p3d_poses, seed)
        for k in ("emb_fwd", "emb_fb"):  # warm-up: builds and caches the Embree scene
            cases[k][0]()
        times = {k: [] for k in cases}
        spent = {k: 0.0 for k in cases}
        for r in range(repeats):
            for k, (fn, _) in cases.items():
                if r > 0 and spent[k] > budget_s:
                    continue
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                spent[k] += dt
                times[k].append(dt)
        ms = {k: 1e3 * statistics.median(times[k]) / cases[k][1] for k in cases}
        rows.append({
            "size": size, "poses": b, "p3d_poses": cases["p3d_fwd"][1],
            "p3d_fwd": ms["p3d_fwd"], "emb_fwd": ms["emb_fwd"], "x_fwd": ms["p3d_fwd"] / ms["emb_fwd"],
            "p3d_fb": ms["p3d_fb"], "emb_fb": ms["emb_fb"], "x_fb": ms["p3d_fb"] / ms["emb_fb"],
            "rounds": min(len(v) for v in times.values()),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table (ms per pose)."""
    head = (f"{'raster':<8}{'size':>6}{'poses':>7}{'p3d fwd':>10}{'embree fwd':>12}{'fwd x':>8}"
            f"{'p3d f+b':>10}{'embree f+b':>12}{'f+b x':>8}{'p3d poses':>11}{'rounds':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        sub = f"{r['p3d_poses']}/{r['poses']}" if r["p3d_poses"] < r["poses"] else str(r["poses"])
        lines.append(f"{'cuboid':<8}{r['size']:>6}{r['poses']:>7}{r['p3d_fwd']:>10.3f}{r['emb_fwd']:>12.3f}{r['x_fwd']:>8.1f}"
                     f"{r['p3d_fb']:>10.3f}{r['emb_fb']:>12.3f}{r['x_fb']:>8.1f}{sub:>11}{r['rounds']:>8}")
    return "\n".join(lines)


LEGEND = ("raster: ms per pose, cuboid template (~2000 faces), square images of `size` px; fwd = fragments, "
          "f+b = pose -> fragments -> uv -> sample_texture (8 channels) -> loss -> backward; "
          "x = PyTorch3D time / Embree time; p3d poses = poses PyTorch3D was timed on (its CPU cost per pose "
          "does not depend on the batch).")
