"""Pictures of deformable meshes: shaded renders, Figure 2 drawn from a ``DeformationNet``, the
per-model fit gallery, the test-time latent fit, and the template-vs-deformed figure of ``make demo``.

Matplotlib is imported inside the functions (the library itself never needs it).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .net import DeformationNet

__all__ = ["shade", "silhouette_overlay", "draw_architecture", "plot_history", "fit_gallery", "latent_fit_figure",
           "deformation_figure"]

_LIGHT = torch.tensor([0.4, 0.6, 0.7])  # view-space direction towards the light (x left, y up, z forward)


@torch.no_grad()
def shade(verts: torch.Tensor, faces: torch.Tensor, cameras, image_size) -> torch.Tensor:
    """Flat Lambert shading of one mesh seen by every camera (for figures).

    Args:
        verts: ``(V, 3)`` float; faces: ``(F, 3)`` int64; cameras: PyTorch3D cameras, batch ``B``.
        image_size: ``S`` or ``(H, W)``.

    Returns:
        ``(B, H, W)`` float32: gray level in ``[0.15, 1]`` on the object, ``NaN`` on the background.
    """
    from ..sizes import size_hw
    from ..mesh import UVMesh
    from ..raster import visibility

    h, w = size_hw(image_size, "image_size")
    b = len(cameras)
    vb = verts.detach().float()[None].expand(b, -1, -1)
    p2f = visibility(UVMesh(vb[0], faces, torch.zeros(1, 2), torch.zeros_like(faces)), cameras, (h, w))
    view = cameras.get_world_to_view_transform().transform_points(vb)  # (B, V, 3)
    tri = view[:, faces]  # (B, F, 3, 3)
    n = torch.nn.functional.normalize(torch.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0], dim=-1), dim=-1)
    # Two-sided: the CAD shells are closed but a face seen from behind is still drawn.
    lum = 0.15 + 0.85 * (n @ _LIGHT.to(n) / _LIGHT.norm()).abs()  # (B, F)
    img = torch.full((b, h, w), float("nan"))
    valid = p2f >= 0
    bi = torch.arange(b)[:, None, None].expand_as(p2f)
    img[valid] = lum[bi[valid], p2f[valid] % faces.shape[0]]
    return img


def silhouette_overlay(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """RGB ``(H, W, 3)`` comparison of two bool masks ``(H, W)``: both = gray, only target = red,
    only pred = blue, neither = white."""
    img = torch.ones(*pred.shape, 3)
    img[pred & target] = torch.tensor([0.55, 0.55, 0.55])
    img[target & ~pred] = torch.tensor([0.85, 0.15, 0.1])
    img[pred & ~target] = torch.tensor([0.1, 0.35, 0.9])
    return img


def plot_history(history: dict, ax=None):
    """Fitting curves: every loss term of ``FitResult.history`` against the step (log scale)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in history.items():
        if name != "loss" and any(v > 0 for v in values):
            ax.plot(range(1, len(values) + 1), values, label=name, lw=1)
    ax.plot(range(1, len(history["loss"]) + 1), history["loss"], label="total (weighted)", color="k", lw=1.5)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend(fontsize=7, ncol=2)
    return ax.figure


def fit_gallery(result, cad_models, metrics, image_size: int = 96, view=(40.0, 25.0)):
    """One column per CAD model: the CAD model, its deformed template, and their silhouettes
    overlaid (red: CAD only, blue: deformed only), titled with that model's metrics."""
    import matplotlib.pyplot as plt

    from .fit import view_cameras
    from .silhouette import hard_silhouette

    mesh = result.mesh
    radius = float(torch.linalg.vector_norm(mesh.template_verts, dim=1).max())
    cam = view_cameras([view], radius, image_size)
    faces = mesh.template.faces
    n = len(cad_models)
    fig, axes = plt.subplots(3, n, figsize=(1.6 * n, 5), squeeze=False)
    for k, m in enumerate(cad_models):
        dv = mesh.deformed_verts(k).detach()
        target = hard_silhouette(m.verts[None], m.faces, cam, image_size)[0]
        pred = hard_silhouette(dv[None], faces, cam, image_size)[0]
        axes[0, k].imshow(shade(m.verts, m.faces, cam, image_size)[0], cmap="gray", vmin=0, vmax=1)
        axes[0, k].set_title(f"CAD {result.names[k]}", fontsize=8)
        axes[1, k].imshow(shade(dv, faces, cam, image_size)[0], cmap="gray", vmin=0, vmax=1)
        axes[1, k].set_title(f"CD {metrics['chamfer_template'][k]:.1e}→{metrics['chamfer_deformed'][k]:.1e}", fontsize=6.5)
        axes[2, k].imshow(silhouette_overlay(pred, target))
        axes[2, k].set_title(f"IoU {metrics['iou_template'][k]:.2f}→{metrics['iou_deformed'][k]:.2f}", fontsize=6.5)
        for ax in axes[:, k]:
            ax.axis("off")
    return fig


def draw_architecture(net: DeformationNet, ax=None):
    """Appendix Figure 2 drawn from the module: inputs, every ``Linear`` with its widths, the skip
    connection(s) and the zero-initialised output, read off ``net`` itself.

    Returns:
        the matplotlib figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    if not isinstance(net, DeformationNet):
        raise TypeError(f"net must be a DeformationNet, got {type(net).__name__}")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.3 * (net.depth + 4), 3.2))
    enc_dim = 3 + 6 * net.num_freqs
    boxes = [("x ∈ R³\n(template\nvertex)", "#dde8f5"), (f"γ(x)\nL={net.num_freqs}\n{enc_dim}", "#dde8f5")]
    for i, layer in enumerate(net.layers):
        label = f"Linear\n{layer.in_features}→{layer.out_features}\nReLU"
        boxes.append((label, "#f7e3c6" if i in net.skip else "#eeeeee"))
    boxes.append((f"Linear\n{net.out.in_features}→3\n(zero init)", "#d9f0d3"))
    boxes.append(("x + s·δ", "#d9f0d3"))
    w, gap = 1.0, 0.35
    xs = [i * (w + gap) for i in range(len(boxes))]
    for (label, color), x in zip(boxes, xs):
        ax.add_patch(FancyBboxPatch((x, 0), w, 1.2, boxstyle="round,pad=0.03", fc=color, ec="0.3"))
        ax.text(x + w / 2, 0.6, label, ha="center", va="center", fontsize=7.5)
    for x0, x1 in zip(xs[:-1], xs[1:]):
        ax.add_patch(FancyArrowPatch((x0 + w, 0.6), (x1, 0.6), arrowstyle="-|>", mutation_scale=9, color="0.3"))
    # The latent code joins the encoding at the first layer.
    zx = xs[2]
    ax.add_patch(FancyBboxPatch((zx - 0.1, -1.1), w, 0.6, boxstyle="round,pad=0.03", fc="#e8d9f5", ec="0.3"))
    ax.text(zx - 0.1 + w / 2, -0.8, f"z ∈ R^{net.latent_dim}", ha="center", va="center", fontsize=7.5)
    ax.add_patch(FancyArrowPatch((zx + w / 2 - 0.1, -0.5), (zx + w / 2, 0), arrowstyle="-|>", mutation_scale=9, color="purple"))
    ax.text(xs[1] + w + gap / 2, 1.35, "concat", ha="center", fontsize=7, color="purple")
    for s in net.skip:
        x_to = xs[2 + s]
        ax.add_patch(FancyArrowPatch((xs[1] + w / 2, 1.2), (x_to + w / 2, 1.2), connectionstyle="arc3,rad=-0.25",
                                     arrowstyle="-|>", mutation_scale=9, color="tab:orange"))
        ax.text((xs[1] + x_to + w) / 2, 2.05, f"skip: concat [γ(x), z] ({net.in_dim})", ha="center", fontsize=7.5, color="tab:orange")
    # The residual: the template position is added back to the scaled offset.
    ax.plot([xs[0] + w / 2] * 2 + [xs[-1] + w / 2], [0, -1.5, -1.5], color="tab:green", ls="--", lw=1)
    ax.add_patch(FancyArrowPatch((xs[-1] + w / 2, -1.5), (xs[-1] + w / 2, 0), arrowstyle="-|>", mutation_scale=9, color="tab:green"))
    ax.text((xs[0] + xs[-1] + w) / 2, -1.75, "x (residual: the net predicts offsets only)", ha="center", fontsize=7.5, color="tab:green")
    ax.set_xlim(-0.3, xs[-1] + w + 0.3)
    ax.set_ylim(-2.0, 2.4)
    ax.axis("off")
    n_params = sum(p.numel() for p in net.parameters())
    ax.set_title(f"DeformationNet: {net.depth} × {net.hidden} ReLU MLP, skip at layer(s) {[s + 1 for s in net.skip]}, "
                 f"{n_params:,} parameters", fontsize=9)
    return ax.figure


def deformation_figure(rows, path, image_size: int = 96, models_per_row: int = 2) -> Path:
    """Template vs CAD vs deformed template, one row per category.

    Args:
        rows: list of ``(category, FitResult, cad_models, metrics)`` with ``metrics`` from
            ``fit.evaluate``.
        path: PNG to write (atomically, via ``viz.save_figure``).

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..viz import save_figure
    from .fit import view_cameras

    cols = 1 + 2 * models_per_row
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.5 * cols, 1.55 * len(rows)), squeeze=False)
    for r, (category, result, cad_models, metrics) in enumerate(rows):
        mesh = result.mesh
        radius = float(torch.linalg.vector_norm(mesh.template_verts, dim=1).max())
        cam = view_cameras([(40.0, 25.0)], radius, image_size)
        faces = mesh.template.faces
        panels = [(shade(mesh.template_verts, faces, cam, image_size)[0], "template")]
        for n in range(min(models_per_row, len(cad_models))):
            m = cad_models[n]
            panels.append((shade(m.verts, m.faces, cam, image_size)[0], f"CAD {result.names[n]}"))
            panels.append((shade(mesh.deformed_verts(n), faces, cam, image_size)[0],
                           f"deformed  IoU {metrics['iou_deformed'][n]:.2f}"))
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(panels):
                ax.imshow(panels[c][0], cmap="gray", vmin=0, vmax=1)
                ax.set_title(panels[c][1], fontsize=6.5)
        mean = lambda k: sum(metrics[k]) / len(metrics[k])  # noqa: E731
        axes[r, 0].text(-0.08, 0.5, f"{category}\nCD {mean('chamfer_template'):.1e}\n→ {mean('chamfer_deformed'):.1e}",
                        transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("Cuboid template deformed by the MLP to each CAD model (same faces and UVs)", fontsize=9)
    return save_figure(fig, path, dpi=80)


@torch.no_grad()
def latent_fit_figure(mesh, fit, target, cameras, image_size):
    """A test-time shape fit (``latent.fit_latent``), one row per view: the target CAD model
    shaded, then the silhouettes of the starting (mean) code and of the fitted code over the
    target's (gray: both, red: target only, blue: prediction only), titled with their IoU.

    Args:
        mesh: the ``DeformableMesh`` the code was fitted with.
        fit: its ``LatentFit`` (``init`` and ``z``, ``(D,)`` codes).
        target: the target CAD model (any object with ``verts (V, 3)`` and ``faces (F, 3)``).
        cameras: the ``B`` PyTorch3D cameras ``fit_latent`` was given; image_size: ``S``.

    Returns:
        the matplotlib figure (``B`` rows, 3 columns); IoUs are recomputed per view with
        ``silhouette.silhouette_iou``, so their mean over views is ``fit.iou_init`` / ``fit.iou_fit``.
    """
    import matplotlib.pyplot as plt

    from .silhouette import hard_silhouette, silhouette_iou

    b = len(cameras)
    target_mask = hard_silhouette(target.verts.float()[None].expand(b, -1, -1), target.faces, cameras, image_size)
    shaded = shade(target.verts, target.faces, cameras, image_size)
    preds = {name: hard_silhouette(mesh.deformed_verts(code).detach()[None].expand(b, -1, -1), mesh.template.faces, cameras, image_size)
             for name, code in (("mean code", fit.init), ("fitted code", fit.z))}
    fig, axes = plt.subplots(b, 3, figsize=(7, 2.3 * b), squeeze=False)
    for v in range(b):
        axes[v, 0].imshow(shaded[v], cmap="gray", vmin=0, vmax=1)
        axes[v, 0].set_title("target", fontsize=8)
        for c, (name, pred) in enumerate(preds.items(), start=1):
            iou = float(silhouette_iou(pred[v : v + 1], target_mask[v : v + 1])[0])
            axes[v, c].imshow(silhouette_overlay(pred[v], target_mask[v]))
            axes[v, c].set_title(f"{name}  IoU {iou:.2f}", fontsize=8)
        for ax in axes[v]:
            ax.axis("off")
    return fig
