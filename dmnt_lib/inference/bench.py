"""Benchmark of render-and-compare inference: seconds per image (backbone / init / refine / masks) at the
default configuration, side by side in one run with a NeMo-style slow schedule (PyTorch3D rasterizer, all
12 categories refined, 300 Adam steps, full texture, no early stop), and the accuracy of both on the same images.

``python benchmarks/bench_infer.py [--run RUN --data DIR [--level L]] [--images N] [--slow-images M]
[--threads 2] [--batch 8] [--quick] [--seed S] [--compare NAME=JSON ...]``

``--compare`` runs other configurations (e.g. the previous default) on the default's images, each a row of
the same table.

* With ``--run`` (a trained DMNT run folder) and ``--data`` (a test set): the model's backbone, textures,
  mean-code meshes and bank on the test images (level ``--level``, default 0), images drawn round-robin
  over categories.
* Without: **oracle features** for the 12 categories — each category's template (a cuboid around its
  procedural CAD models, as the model uses), a random smooth texture (D = 128, S = 128, the model's
  defaults), random poses like the synthetic data, features rendered through the template at stride 4 of a
  128×128 image plus noise. The backbone is then timed on random images with an untrained ``FeatureNet`` of
  the default architecture (its cost does not depend on training), when ``dmnt_lib.model`` exists.

Both schedules see the same images and the same grid; accuracy is Acc@π/6 of the pose under the
ground-truth category (that category is refined too, as in the evaluation) and the classification accuracy.
Timings are wall clock with ``--threads`` torch threads, images in batches of ``--batch`` (the engine batches
refinement over images, hypotheses and categories), the first image of each schedule a warm-up; the grid
fragments are cached per category as in a long run (their one-off cost is reported separately).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import numpy as np
import torch

from ..camera import pose_to_rotation, rotation_error
from .config import InferenceConfig, nemo_slow_config
from .engine import render_and_compare
from .grid import GRID_CACHE
from .oracle import oracle_features, random_background, random_texture

__all__ = ["main", "oracle_world", "run_schedule"]


def oracle_world(dim=128, size=128, seed=0):
    """Templates, textures and background of the 12 categories (see the module docstring)."""
    from ..data import CATEGORIES, cad_models
    from ..mesh import cuboid_template

    meshes = {c: cuboid_template(meshes_verts=[m.verts for m in cad_models(c)], num_verts=600) for c in CATEGORIES}
    textures = {c: random_texture(dim, size, seed=seed + i) for i, c in enumerate(CATEGORIES)}
    return {"meshes": meshes, "textures": textures, "background": random_background(dim, seed)}


def oracle_images(world, n, seed, image=128, stride=4, noise=0.5):
    """``n`` oracle samples: dicts with features ``(1, D, h, w)``, focal, principal, category, pose."""
    from ..data import CATEGORIES

    rng = np.random.default_rng(seed)
    focal = 3.0 * image
    out = []
    for i in range(n):
        cat = CATEGORIES[i % len(CATEGORIES)]
        mesh = world["meshes"][cat]
        r = float(mesh.verts.norm(dim=-1).max())
        fill = rng.uniform(0.7, 0.95)
        jit = 0.4 * (1 - fill) * image
        pose = {"azimuth": rng.uniform(0, 2 * math.pi), "elevation": math.radians(rng.uniform(-10, 40)),
                "theta": math.radians(rng.uniform(-15, 15)), "distance": r * math.sqrt(1 + (2 * focal / (fill * image)) ** 2)}
        pp = (image / 2 + rng.uniform(-jit, jit), image / 2 + rng.uniform(-jit, jit))
        o = oracle_features(world["textures"][cat], mesh, pose, focal, pp, (image, image), stride, world["background"],
                            noise=noise, seed=seed * 1000 + i)
        out.append({"features": o.features, "focal": focal, "principal": pp, "category": cat, "pose": pose,
                    "image_size": (image, image)})
    return out


def _err_deg(pose, az, el, th) -> float:
    r1 = pose_to_rotation(pose["azimuth"], pose["elevation"], pose["theta"])
    return float(rotation_error(r1, pose_to_rotation(az, el, th))) * 180 / math.pi


def _background(world, config: InferenceConfig):
    """The world's background model for ``config``: a trained model's bank (its mean, or k-means centroids with
    ``config.background_centroids``), or the oracle world's fixed vectors."""
    if "model" in world:  # as infer does: the k-means once per model and K
        from .infer import _cached_background

        return _cached_background(world["model"], config.background_centroids)
    return world["background"]


def run_schedule(samples, world, config: InferenceConfig, backbone_s: float, stride=4, batch=8, warmup=True,
                 name="") -> dict:
    """Run one schedule on ``samples[1:]`` in batches of ``batch`` images (``samples[0]`` is a warm-up: Embree
    scenes, allocator; skipped with ``warmup=False``); seconds per image split as ``Prediction.timings``, pose
    errors under the ground-truth category (refined too, as in the evaluation), classification."""
    def call(group):
        feats = torch.cat([s["features"] for s in group])
        focal = torch.tensor([s["focal"] for s in group])
        pp = torch.tensor([s["principal"] for s in group])
        return render_and_compare(feats, world["textures"], world["meshes"], _background(world, config), focal, pp,
                                  group[0]["image_size"], stride, config=config, include=[s["category"] for s in group])

    if warmup:
        call(samples[:1])
    rows = []
    timed = (samples[1:] or samples) if warmup else samples
    t_all = time.perf_counter()
    for k in range(0, len(timed), batch):
        group = timed[k: k + batch]
        preds = call(group)
        print(f"[bench] {name}: {k + len(group)}/{len(timed)} images", file=sys.stderr, flush=True)
        for s, p in zip(group, preds):
            g = p.poses[s["category"]]
            rows.append({**p.timings, "err": _err_deg(s["pose"], g["azimuth"], g["elevation"], g["theta"]),
                         "correct": p.category == s["category"]})
    wall = (time.perf_counter() - t_all) / len(rows)
    mean = lambda k: statistics.fmean(r[k] for r in rows)  # noqa: E731
    out = {"n": len(rows), "backbone": backbone_s, "init": mean("init"), "refine": mean("refine"), "masks": mean("masks"),
           "total": backbone_s + wall, "acc_pi6": statistics.fmean(r["err"] < 30 for r in rows),
           "median_deg": statistics.median(r["err"] for r in rows), "cls_acc": statistics.fmean(r["correct"] for r in rows)}
    print(f"[bench] {name}: {out}", file=sys.stderr, flush=True)  # the row as soon as it exists (slow runs)
    return out


def _backbone_seconds(image=128, repeats=3) -> float:
    from ..model import FeatureNet, ModelConfig

    cfg = ModelConfig()
    net = FeatureNet(cfg.arch, cfg.dim, cfg.stride).eval()
    x = torch.rand(1, 3, image, image)
    with torch.no_grad():
        net(x)
        t0 = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return (time.perf_counter() - t0) / repeats


def _model_world(run, data, level, n, seed):
    """Samples (features from the model's backbone) and the model's world for ``--run``/``--data``."""
    from ..data import PoseDataset
    from ..model import DMNT
    from .evaluate import model_path
    from .infer import model_background

    model = DMNT.load(model_path(run)).eval()
    ds = PoseDataset(data, None, (level,))
    by_cat: dict = {}
    for i, (cat, *_rest) in enumerate(ds.source.items):
        by_cat.setdefault(cat, []).append(i)
    rng = np.random.default_rng(seed)
    order = []
    while len(order) < n and any(by_cat.values()):
        for cat in list(by_cat):
            if by_cat[cat] and len(order) < n:
                order.append(by_cat[cat].pop(int(rng.integers(len(by_cat[cat])))))
    world = {"meshes": {c: model.mesh(c) for c in model.categories},
             "textures": {c: model.texture(c).detach() for c in model.categories},
             "background": model_background(model), "model": model}
    samples, t_bb = [], []
    for i in order:
        it = ds[i]
        t0 = time.perf_counter()
        with torch.no_grad():
            f = model.features(it["image"][None]).float()
        t_bb.append(time.perf_counter() - t0)
        samples.append({"features": f, "focal": float(it["focal"]), "principal": tuple(it["principal"].tolist()),
                        "category": it["category"], "image_size": tuple(it["image"].shape[-2:]),
                        "pose": {k: float(it[k]) for k in ("azimuth", "elevation", "theta")}})
    return samples, world, statistics.fmean(t_bb[1:] or t_bb), int(model.stride)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="bench_infer", description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="trained DMNT run folder (default: oracle features)")
    ap.add_argument("--data", help="test data folder (with --run)")
    ap.add_argument("--level", type=int, default=0, help="occlusion level of the test images (with --run)")
    ap.add_argument("--images", type=int, default=17, help="images for the default schedule, the first a warm-up (default 17)")
    ap.add_argument("--slow-images", type=int, default=4, help="of the timed ones, how many also run the slow schedule (default 4)")
    ap.add_argument("--slow-steps", type=int, default=300, help="steps of the slow schedule (default 300, NeMo's)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--batch", type=int, default=8, help="images per engine call (default 8, as evaluate --batch-size 8)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="4 images, 2 of them slow with 30 steps")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=JSON",
                    help="also run an InferenceConfig given as JSON fields (e.g. 'previous={\"background_centroids\": null}') on "
                    "the default's images, its row beside the default's; repeatable")
    a = ap.parse_args(argv)
    if a.quick:
        a.images, a.slow_images, a.slow_steps = 5, 2, 30
    if (a.run is None) != (a.data is None):
        ap.error("--run and --data go together")
    compares = []
    for item in a.compare:
        name, _, text = item.partition("=")
        try:
            fields = json.loads(text)
            if not isinstance(fields, dict):
                raise ValueError("expected a JSON object of InferenceConfig fields")
            compares.append((name, InferenceConfig.from_dict(fields)))
        except (ValueError, TypeError) as e:
            ap.error(f"--compare {item!r}: {e}")
    if a.slow_images >= a.images or a.images < 2 or a.slow_images < 1:
        ap.error("need 1 <= --slow-images < --images")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.run:
        samples, world, bb, stride = _model_world(a.run, a.data, a.level, a.images, a.seed)
        source = f"model {a.run} on {a.data} L{a.level}"
    else:
        world = oracle_world(seed=a.seed)
        samples = oracle_images(world, a.images, a.seed)
        bb, stride = _backbone_seconds(), 4
        source = "oracle features (12 categories, D=128, S=128, 128x128 images)"
    print("[bench] rendering the grids", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    GRID_CACHE.clear()
    fast_cfg = InferenceConfig()
    for cat, mesh in world["meshes"].items():  # one-off grid rendering, reported apart
        GRID_CACHE.get(mesh, fast_cfg, samples[0]["focal"] / stride, tuple(x // stride for x in samples[0]["image_size"]))
    t_grid = time.perf_counter() - t0
    fast = run_schedule(samples, world, fast_cfg, bb or 0.0, stride, a.batch, name="default")
    others = [(name, cfg, run_schedule(samples, world, cfg, bb or 0.0, stride, a.batch, name=name)) for name, cfg in compares]
    # The slow schedule takes minutes per image: it runs on samples[1 : slow_images + 1] without its own warm-up
    # (its cost is dominated by 300 steps x 12 categories, not by first-call effects), the default beside it.
    same = samples[1: a.slow_images + 1]
    fast_same = run_schedule(same, world, fast_cfg, bb or 0.0, stride, a.batch, warmup=False, name="default (same)")
    slow_cfg = nemo_slow_config(steps=a.slow_steps)
    t0 = time.perf_counter()
    for cat, mesh in world["meshes"].items():
        GRID_CACHE.get(mesh, slow_cfg, samples[0]["focal"] / stride, tuple(x // stride for x in samples[0]["image_size"]))
    t_grid_slow = time.perf_counter() - t0
    slow = run_schedule(same, world, slow_cfg, bb or 0.0, stride, a.batch, warmup=False, name="nemo-style")
    print(f"# render-and-compare, {a.threads} threads, batches of {a.batch}; {source}")
    print(f"grid fragments (one-off, 12 categories x {fast_cfg.num_grid_poses} poses): {t_grid:.2f} s default backend, "
          f"{t_grid_slow:.2f} s PyTorch3D")
    print(f"backbone: {'%.3f s/image' % bb if bb is not None else 'n/a (no dmnt_lib.model)'}\n")
    print("| schedule | images | backbone | init | refine | masks | s/image | Acc@pi/6 | median (deg) | cls acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in ((f"default (top-{fast_cfg.top_k}, <= {fast_cfg.steps} steps)", fast),
                    *((f"{name}: {json.dumps({k: v for k, v in cfg.to_dict().items() if v != fast_cfg.to_dict()[k]})}", r)
                      for name, cfg, r in others),
                    ("default, same images as slow", fast_same),
                    (f"NeMo-style (PyTorch3D, all 12, {a.slow_steps} steps)", slow)):
        print(f"| {name} | {r['n']} | {r['backbone']:.3f} | {r['init']:.3f} | {r['refine']:.3f} | {r['masks']:.3f} | "
              f"{r['total']:.2f} | {r['acc_pi6']:.2f} | {r['median_deg']:.1f} | {r['cls_acc']:.2f} |")
    print(f"\nspeed-up on the same images: {slow['total'] / fast_same['total']:.1f}x")
    return 0
