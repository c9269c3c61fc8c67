"""Pictures of the training: appendix Figure 3 from the code, textures as PCA colours on the mesh,
similarity and correspondence maps, loss curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from .dmnt import DMNT
from .loss import contrastive_loss, sample_groups
from .train import FragmentCache, TrainConfig, _batch_inputs, _generator, _transform_kwargs

__all__ = ["pca_rgb", "texture_rgb", "texture_views", "item_surface", "similarity_map", "correspondence_map",
           "plot_losses", "figure3"]


def pca_rgb(x: torch.Tensor, fit: torch.Tensor | None = None) -> torch.Tensor:
    """Project ``x (N, D)`` on the first 3 principal components of ``fit (M, D)`` (default ``x``),
    scaled to ``[0, 1]`` per component (1st-99th percentile) → ``(N, 3)``."""
    fit = x if fit is None else fit
    mu = fit.mean(0)
    _, _, v = torch.linalg.svd(fit - mu, full_matrices=False)
    p = (x - mu) @ v[:3].T
    ref = (fit - mu) @ v[:3].T
    lo, hi = ref.quantile(0.01, dim=0), ref.quantile(0.99, dim=0)
    return ((p - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


def texture_rgb(model: DMNT, category: str) -> torch.Tensor:
    """``(3, S, S)`` the category's texture in PCA colours (fitted on its seen texels; grey where unseen)."""
    tex = model.texture(category).detach().cpu()
    seen = model.seen(category).cpu()
    D, S, _ = tex.shape
    flat = tex.reshape(D, -1).T
    rgb = pca_rgb(flat, flat[seen.reshape(-1)] if seen.sum() > 3 else None).T.reshape(3, S, S)
    return torch.where(seen[None], rgb, torch.full_like(rgb, 0.5))


@torch.no_grad()
def texture_views(model: DMNT, category: str, azimuths=(0, 90, 180, 270), elevation: float = 20.0, image_size: int = 128):
    """The PCA-coloured texture rendered on the category's mean-shape mesh: ``(V, H, W, 3)`` in ``[0, 1]`` (white background)."""
    from ..camera import pose_to_cameras
    from ..render import render_texture

    mesh = model.mesh(category).to("cpu")
    radius = float(mesh.verts.norm(dim=1).max())
    n = len(azimuths)
    cams = pose_to_cameras(torch.tensor([math.radians(a) for a in azimuths]), torch.full((n,), math.radians(elevation)),
                           torch.zeros(n), torch.full((n,), 3.2 * radius), image_size, focal=float(image_size))
    img, mask = render_texture(mesh, texture_rgb(model, category)[None], cams, image_size)
    return torch.where(mask[..., None], img.permute(0, 2, 3, 1), torch.ones(3)).clamp(0, 1)


@torch.no_grad()
def item_surface(model: DMNT, item: dict, config: TrainConfig = TrainConfig(), frags: FragmentCache | None = None):
    """Features, fragment and transformed features of one dataset item, as training computes them.

    Returns:
        dict with ``features (D, h, w)``, ``uv (h, w, 2)``, ``on_object (h, w)``, ``background (h, w)``,
        ``surface (D, S, S)``, ``visible (S, S)``, ``label`` (int).
    """
    from ..transform import image_to_uv

    model.eval()
    frags = frags or FragmentCache(cache=False)
    dev = model.textures.texels.device
    images, labels, uv, on_object, background, charts = _batch_inputs(model, [item], [None], frags, config, dev)
    feats = model.features(images)
    surface, visible = image_to_uv(feats, uv, on_object, model.texture_size, backend=config.backend, **_transform_kwargs(charts))
    return {"features": feats[0], "uv": uv[0], "on_object": on_object[0], "background": background[0], "surface": surface[0],
            "visible": visible[0], "label": int(labels[0])}


@torch.no_grad()
def similarity_map(model: DMNT, image: torch.Tensor, category: str, texel: tuple[int, int]) -> torch.Tensor:
    """Cosine similarity ``(h, w)`` of each feature pixel of ``image (3, H, W)`` with texel ``(row, col)`` of ``category``."""
    model.eval()
    f = model.features(image[None].to(model.textures.texels.device))[0]
    t = model.texture(category)[:, texel[0], texel[1]]
    return torch.einsum("dhw,d->hw", f, t).cpu()


@torch.no_grad()
def correspondence_map(model: DMNT, item: dict, config: TrainConfig = TrainConfig()):
    """Per on-object feature pixel, the uv of its most similar seen texel of the right texture, and the true uv.

    Returns:
        ``(predicted (h, w, 2), true (h, w, 2), mask (h, w))``; both uv maps are 0 off the mask.
    """
    s = item_surface(model, item, config)
    cat = model.categories[s["label"]]
    tex, seen = model.texture(cat), model.seen(cat)
    idx = seen.nonzero()
    S = model.texture_size
    f = s["features"].permute(1, 2, 0)[s["on_object"]]  # (n, D)
    best = (f @ tex[:, idx[:, 0], idx[:, 1]]).argmax(1)
    pred_uv = torch.stack([(idx[best, 1] + 0.5) / S, (idx[best, 0] + 0.5) / S], dim=1)
    pred = torch.zeros_like(s["uv"])
    pred[s["on_object"]] = pred_uv.to(pred)
    true = torch.where(s["on_object"][..., None], s["uv"], torch.zeros_like(s["uv"]))
    return pred.cpu(), true.cpu(), s["on_object"].cpu()


def plot_losses(history, ax=None, smooth: int = 10):
    """Loss per step (and a running mean over ``smooth`` steps) from a history list or a ``log.jsonl`` path."""
    import matplotlib.pyplot as plt

    if isinstance(history, (str, Path)):
        history = [json.loads(x) for x in Path(history).read_text().splitlines() if x.strip()]
    ax = ax or plt.gca()
    loss = torch.tensor([r["loss"] for r in history])
    ax.plot(loss.numpy(), lw=0.6, alpha=0.5, label="loss per step")
    if len(loss) >= smooth:
        run = torch.nn.functional.avg_pool1d(loss[None, None], smooth, 1)[0, 0]
        ax.plot(range(smooth - 1, len(loss)), run.numpy(), lw=1.5, label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.legend(fontsize=8)
    return ax


@torch.no_grad()
def figure3(model: DMNT, item: dict, path=None, config: TrainConfig = TrainConfig(), seed: int = 0):
    """Appendix Figure 3 ("Training Loss") drawn from the code for one image.

    Panels: the image; its features ``F`` (PCA colours) with the object pixels; ``F̂ = image_to_uv(F)``
    on the texture with the sampled positives, one chosen positive ``t`` and its Com negatives (kept:
    ≥ ``com_min_distance`` texels away; masked: nearer); the category's texture ``θ_c`` with ``t``;
    the Class negatives' categories and the background bank; and the loss of that positive as the
    softmax over its logits (positive, Com, Class, BG; weights added as ``log W``), with the counts
    and weights of ``config`` and the value ``contrastive_loss`` returns for the image.

    Returns:
        the matplotlib figure, also saved (atomically) to ``path`` when given.
    """
    import matplotlib.pyplot as plt

    from ..viz import save_figure

    s = item_surface(model, item, config)
    lab = s["label"]
    cat = model.categories[lab]
    texels, seen = model.textures.texels, model.textures.seen > 0
    groups = sample_groups(s["surface"], s["visible"], lab, texels, seen, model.bank.memory, config.counts_for(model.texture_size), _generator(seed, 11))
    if groups is None:
        raise ValueError("figure3: the item has no visible on-object texel")
    f, pos, neg, t = groups[:4]
    loss = float(contrastive_loss(f, pos, neg, config.weights, config.temperature))
    n0 = 0
    ti, tj = (int(x) for x in t[n0])
    w = config.weights
    T = config.temperature

    fig = plt.figure(figsize=(16, 7.2))
    gs = fig.add_gridspec(2, 4, height_ratios=[1, 0.9])
    # image and features
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(item["image"].permute(1, 2, 0).numpy())
    ax.set_title(f"image ({cat})", fontsize=9)
    ax = fig.add_subplot(gs[0, 1])
    D, h, wd = s["features"].shape
    rgb = pca_rgb(s["features"].reshape(D, -1).T.cpu()).reshape(h, wd, 3)
    ax.imshow(rgb.numpy())
    ax.contour(s["on_object"].float().cpu().numpy(), levels=[0.5], colors="w", linewidths=1)
    ax.set_title(f"F = backbone(image), {D}x{h}x{wd} (PCA)\nwhite: object pixels (≥ {config.object_threshold:.0%} of block)", fontsize=9)
    # F-hat on the texture with the samples
    S = model.texture_size
    ax = fig.add_subplot(gs[0, 2])
    vis = s["visible"].cpu()
    srf = F.normalize(s["surface"], dim=0).reshape(D, -1).T.cpu()
    rgb = pca_rgb(srf, srf[vis.reshape(-1)] if vis.sum() > 3 else None).reshape(S, S, 3)
    ax.imshow(torch.where(vis[..., None], rgb, torch.full((3,), 0.92)).numpy())
    ax.scatter(t[:, 1], t[:, 0], s=1, c="k", alpha=0.25, label=f"{len(t)} positives")
    com, valid = neg["Com"]
    own = seen[lab].nonzero().cpu()
    if len(com):
        ci, cj = groups.com_index[:, 0], groups.com_index[:, 1]
        keep = valid[n0].cpu()
        ax.scatter(cj[keep], ci[keep], s=4, c="tab:blue", label=f"Com kept for t ({int(keep.sum())})")
        ax.scatter(cj[~keep], ci[~keep], s=4, c="tab:orange", label=f"Com masked for t ({int((~keep).sum())}, < {config.com_radius(model.texture_size):g} texels)")
    ax.add_patch(plt.Circle((tj, ti), config.com_radius(model.texture_size), fill=False, ls="--", color="tab:red"))
    ax.plot([tj], [ti], "*", ms=14, color="tab:red", mec="k", label="positive t")
    ax.set_title(f"F̂ = image_to_uv(F) on the {S}x{S} texture\nvisible on-object texels; {len(own)} seen texels", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(0, S)
    ax.set_ylim(S, 0)
    # the texture
    ax = fig.add_subplot(gs[0, 3])
    ax.imshow(texture_rgb(model, cat).permute(1, 2, 0).numpy())
    ax.plot([tj], [ti], "*", ms=14, color="tab:red", mec="k")
    ax.set_title(f"neural texture θ_{cat} (PCA; grey: unseen)\npositive pair: <normalize(F̂[t]), θ[t]>", fontsize=9)
    # logits of the chosen positive
    ax = fig.add_subplot(gs[1, :3])
    fn = f[n0]
    parts = [("ML (positive)", (fn @ pos[n0]).reshape(1) / T, w["ML"], torch.ones(1, dtype=torch.bool), "tab:red")]
    colors = {"Com": "tab:blue", "Class": "tab:green", "BG": "tab:purple"}
    for g in ("Com", "Class", "BG"):
        n, v = neg[g]
        z = (n.to(fn) @ fn) / T if len(n) else torch.zeros(0)
        parts.append((g, z, w[g], v[n0].cpu() if v is not None else torch.ones(len(z), dtype=torch.bool), colors[g]))
    logits = torch.cat([p[1].cpu() + math.log(p[2]) if p[2] > 0 else torch.full_like(p[1].cpu(), -float("inf")) for p in parts])
    valid_all = torch.cat([p[3] for p in parts])
    logits = torch.where(valid_all, logits, torch.full_like(logits, -float("inf")))
    prob = torch.softmax(logits, 0)
    x0 = 0
    for name, z, wg, v, c in parts:
        k = len(z)
        xs = torch.arange(x0, x0 + k)
        ax.bar(xs.numpy(), prob[x0:x0 + k].numpy(), width=1.0, color=c,
               label=f"{name}: {k} samples, W={wg:g}" + (f", {int((~v).sum())} masked" if (~v).any() else ""))
        x0 += k
    ax.plot([0], [float(prob[0])], "*", ms=16, color="tab:red", mec="k")
    ax.annotate(f"positive: p = {float(prob[0]):.2e}", (0, float(prob[0])), xytext=(25, 25), textcoords="offset points", bbox=dict(fc="w", ec="tab:red"),
                fontsize=9, color="tab:red")
    ax.set_yscale("log")
    ax.set_ylim(max(float(prob[prob > 0].min()), 1e-8), 1.5)
    ax.set_xlabel("logit index: positive, then the negative groups")
    ax.set_ylabel("softmax weight  W·e^{z} / Σ")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"one positive: −log p(positive) = {float(-torch.log(prob[0])):.3f};   "
                 f"contrastive_loss over this image's {len(t)} positives = {loss:.3f}", fontsize=10)
    ax = fig.add_subplot(gs[1, 3])
    ax.axis("off")
    ax.text(0, 0.95, "L = −log  W_ML e^{z+} / (W_ML e^{z+}\n      + W_Com Σ e^{z_Com} + W_Class Σ e^{z_Class}\n"
            "      + W_BG Σ e^{z_BG}),   z = <f, ·>/T", fontsize=10, va="top", family="monospace")
    ax.text(0, 0.5, f"T = {T:g};  W = ML {w['ML']:g}, Com {w['Com']:g}, Class {w['Class']:g}, BG {w['BG']:g}\n"
            f"per image: {config.positives} positives, {config.com} Com\n(≥ {config.com_radius(model.texture_size):g} texels away), "
            f"{config.class_negatives} Class (other\ncategories' textures), {config.bg} BG (bank of {len(model.bank.memory)})",
            fontsize=9, va="top")
    fig.suptitle("Training loss (appendix Fig. 3), computed by dmnt_lib.model.loss on one image", fontsize=11)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path, dpi=80)
    return fig


DEMO_CATEGORIES = ("car", "aeroplane")


def demo(figures_dir, data_dir, cache_dir, quick: bool = True) -> list[Path]:
    """``make demo``'s stage: ``figures_dir/training_loss.png`` (Figure 3) on the demo dataset.

    Fits (or reuses, in ``cache_dir/train_demo/``) small deformable meshes of ``DEMO_CATEGORIES``,
    builds a fresh ``DMNT``, fills its textures once from the category's images (one momentum
    update each, no gradient step) so that Com negatives exist, and draws Figure 3 for the first
    car image. A trained model is not needed to show how the loss is built; the notebook draws
    the same figure with a trained one.
    """
    from ..data import PoseDataset
    from ..deform import FitConfig, fit_category, load_cad_models

    data_dir, cache = Path(data_dir), Path(cache_dir) / "train_demo"
    cfg = FitConfig.quick(steps=40 if quick else 100)
    for c in DEMO_CATEGORIES:
        fit_category(load_cad_models(data_dir, c), cfg, checkpoint=cache / f"{c}.pt", category=c, progress=False)
    from .dmnt import load_deformables

    meshes, names = load_deformables(cache, DEMO_CATEGORIES)
    model = DMNT(DEMO_CATEGORIES, meshes, names)
    ds = PoseDataset(data_dir, categories=DEMO_CATEGORIES, levels=(0,))
    config = TrainConfig()
    items = [ds[i] for i in range(len(ds))]
    for it in items:
        s = item_surface(model, it, config)
        model.textures.update(torch.tensor([s["label"]]), s["surface"][None], s["visible"][None])
    car = next(it for it in items if it["category"] == "car")
    path = Path(figures_dir) / "training_loss.png"
    import matplotlib.pyplot as plt

    plt.close(figure3(model, car, path, config))
    return [path]
