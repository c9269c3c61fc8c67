"""``python -m dmnt_lib demo``: regenerate every figure the project has so far into ``figures/``.

Each stage is a function ``(ctx) -> list[Path]``; stages run in order and later stages may use
what earlier ones cached (e.g. the synthetic dataset). A stage whose module is not part of the
package is a programming error, not something to skip silently.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .camera import pose_to_cameras
from .mesh import UVMesh, cuboid_template, uv_sphere
from .render import sample_texture, uv_fragment
from .viz import FIGURE1_BLOCK, checkerboard, save_figure, uv_seam_pixels, uv_to_rgb

__all__ = ["DemoContext", "uv_fragment_figure", "run_demo", "STAGES"]


@dataclass
class DemoContext:
    figures_dir: Path
    cache_dir: Path
    quick: bool


def uv_fragment_figure(path: str | Path, image_size: int = 128) -> Path:
    """The UV fragment of two meshes (a car-sized cuboid template and a UV sphere), as pictures:
    rasterized face ids, the u and v channels, a checkerboard texture seen through the uv map,
    and the atlas seams (blocks the transform skips as seams: uv extent above 0.2 or pixels on two charts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meshes: list[tuple[str, UVMesh, float]] = [
        ("cuboid template (car-sized)", cuboid_template([1.0, 0.8, 2.2]), 5.5),
        ("UV sphere", uv_sphere(0.9, 16, 32), 4.5),
    ]
    texture = checkerboard(128, squares=16)
    fig, axes = plt.subplots(len(meshes), 5, figsize=(13, 5.6))
    gen = torch.Generator().manual_seed(0)
    for row, (name, mesh, distance) in enumerate(meshes):
        cams = pose_to_cameras(math.radians(35), math.radians(20), math.radians(5), distance, image_size, focal=2.0 * image_size)
        frag = uv_fragment(mesh, cams, image_size)
        face_colors = torch.rand(mesh.num_faces, 3, generator=gen)
        faces_img = torch.where(frag.mask[..., None], face_colors[frag.pix_to_face.clamp(min=0)], torch.ones(3))
        shown = sample_texture(texture, frag.uv, frag.mask)[0].permute(1, 2, 0)
        shown = torch.where(frag.mask[0, ..., None], shown, torch.ones(3))
        seams = uv_seam_pixels(frag.uv, frag.mask, chart=frag.chart)[0]
        seam_img = uv_to_rgb(frag.uv, frag.mask)[0].clone()
        seam_img[seams] = torch.tensor([0.0, 0.0, 0.0])
        panels = [
            (faces_img[0], "pix_to_face (face id)"),
            (frag.uv[0, ..., 0], "u = Σ bary · u_corner"),
            (frag.uv[0, ..., 1], "v"),
            (shown, "checkerboard through uv"),
            (seam_img, f"seams ({int(seams.sum())} px)"),
        ]
        for col, (img, title) in enumerate(panels):
            ax = axes[row, col]
            if img.dim() == 2:
                ax.imshow(torch.where(frag.mask[0], img, torch.nan).numpy(), cmap="viridis", vmin=0, vmax=1)
            else:
                ax.imshow(img.clamp(0, 1).numpy())
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("UV fragment: rasterize (pix_to_face, barycentrics) → interpolate corner UVs per pixel", fontsize=11)
    return save_figure(fig, path, dpi=80)




def transform_figure(path: str | Path, image_size: int = 128, texture_size: int = 96) -> Path:
    """Appendix Figure 1 recreated from the code, and the transform at work: a checkerboard texture
    rendered through a cuboid's UV fragment, transformed back onto the surface with ``image_to_uv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .transform import image_to_uv
    from .viz import draw_quad_block

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8), gridspec_kw={"width_ratios": [0.8, 1.2, 1, 1, 1]})
    draw_quad_block(axes[0], axes[1], FIGURE1_BLOCK, (16, 16), texel="auto")
    mesh = cuboid_template([1.0, 0.8, 2.2])
    cams = pose_to_cameras(math.radians(35), math.radians(20), math.radians(5), 5.5, image_size, focal=2.0 * image_size)
    frag = uv_fragment(mesh, cams, image_size)
    texture = checkerboard(texture_size, squares=12)
    image = sample_texture(texture, frag.uv, frag.mask)
    surface, visible = image_to_uv(image, frag.uv, frag.mask, texture_size, chart=frag.chart)
    err = (surface - texture).abs().amax(1)[0]
    axes[2].imshow(torch.where(frag.mask[0, ..., None], image[0].permute(1, 2, 0), torch.ones(3)).clamp(0, 1).numpy())
    axes[2].set_title("image features F = texture seen through uv", fontsize=9)
    axes[3].imshow(torch.where(visible[0, ..., None], surface[0].permute(1, 2, 0), torch.full((3,), 0.9)).clamp(0, 1).numpy())
    axes[3].set_title(f"image_to_uv(F, uv): {int(visible.sum())} visible texels", fontsize=9)
    im = axes[4].imshow(torch.where(visible[0], err, torch.nan).numpy(), cmap="magma", vmin=0, vmax=0.5)
    axes[4].set_title(f"|surface − texture| on visible texels\n(median {float(err[visible[0]].median()):.3f})", fontsize=9)
    fig.colorbar(im, ax=axes[4], shrink=0.8)
    for a in axes[2:]:
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle("Quad-barycentric image→UV transform (appendix A.1)", fontsize=11)
    return save_figure(fig, path, dpi=80)


def _stage_transform(ctx: DemoContext) -> list[Path]:
    return [transform_figure(ctx.figures_dir / "transform.png")]


def _stage_data(ctx: DemoContext) -> list[Path]:
    from .data.viz import demo as data_demo

    return data_demo(ctx.figures_dir, ctx.cache_dir, ctx.quick)


def _stage_deformation(ctx: DemoContext) -> list[Path]:
    from .data.cache import ensure_dataset
    from .deform.cli import demo as deform_demo

    # The CAD models of the demo dataset (the data stage made it; this call only reuses it).
    data_dir = ensure_dataset(ctx.cache_dir / "synthetic_demo", 1 if ctx.quick else 2, progress=False)
    return deform_demo(ctx.figures_dir, data_dir, ctx.cache_dir, ctx.quick)


def _stage_training(ctx: DemoContext) -> list[Path]:
    from .data.cache import ensure_dataset
    from .model.viz import demo as training_demo

    data_dir = ensure_dataset(ctx.cache_dir / "synthetic_demo", 1 if ctx.quick else 2, progress=False)
    return training_demo(ctx.figures_dir, data_dir, ctx.cache_dir, ctx.quick)


def _stage_uv_fragment(ctx: DemoContext) -> list[Path]:
    return [uv_fragment_figure(ctx.figures_dir / "uv_fragment.png")]


STAGES = [
    ("uv_fragment", _stage_uv_fragment),
    ("transform", _stage_transform),
    ("data", _stage_data),
    ("deformation", _stage_deformation),
    ("training", _stage_training),
]


def run_demo(figures_dir: Path, cache_dir: Path, quick: bool = False, only: list[str] | None = None) -> list[Path]:
    """Run the demo stages (all, or those named in ``only``) and return the files written."""
    ctx = DemoContext(Path(figures_dir), Path(cache_dir), quick)
    names = [n for n, _ in STAGES]
    for n in only or []:
        if n not in names:
            raise ValueError(f"unknown demo stage {n!r}; stages: {', '.join(names)}")
    written = []
    for name, stage in STAGES:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        paths = stage(ctx)
        print(f"[demo] {name}: {', '.join(str(p) for p in paths)} ({time.perf_counter() - t0:.1f} s)", flush=True)
        written += paths
    return written
