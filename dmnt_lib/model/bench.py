"""Training throughput: ``python -m dmnt_lib bench train [--data DIR --deform DIR] [--batch-size B] [--steps N] ...``
(also ``benchmarks/bench_train.py``).

Times ``train.train_step`` at the default configuration (resnet18, D=128, S=128, stride 4, the
appendix's sample counts, 128 px images) on ``--steps`` steps after ``--warmup`` steps, and prints
the time split per phase (wall) and the process CPU time per image: fragments (rasterizing the image's deformed mesh at feature resolution;
training caches them after the first epoch, so the table shows both), backbone forward,
``image_to_uv`` forward, loss (sampling + forward), backward (backbone + transform + loss),
updates (Adam, texture momentum, bank). Without ``--data``/``--deform`` it generates (and caches in
``--cache-dir``) 3 categories x 24 images and quick deformable meshes.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

PHASES = ("fragments", "backbone", "transform", "loss", "backward", "updates")


def _ensure_inputs(cache: Path, categories=("car", "aeroplane", "chair")):
    from ..deform import FitConfig, fit_category, load_cad_models

    from ..data.cache import ensure_dataset

    data = ensure_dataset(cache / "bench_train_data", 24, levels=(0,), seed=0, categories=list(categories))
    deform = cache / "bench_train_deform"
    cfg = FitConfig.quick(steps=50)
    for c in categories:
        fit_category(load_cad_models(data, c), cfg, checkpoint=deform / f"{c}.pt", category=c, progress=False)
    return data, deform


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dmnt_lib bench train", description=__doc__.split("\n\n")[1])
    p.add_argument("--data", type=Path, help="dataset folder (default: a generated one in --cache-dir)")
    p.add_argument("--deform", type=Path, help="deformable-mesh checkpoints (default: fitted into --cache-dir)")
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get("DMNT_CACHE_DIR", Path.home() / ".cache" / "dmnt_lib")))
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=5, help="timed steps per mode (default 5)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="2 timed steps of batch 4 (a smoke run)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig/ModelConfig overrides (as train --set)")
    return p


def main(argv=None) -> int:
    from ..data import PoseDataset
    from .cli import _parse_value
    from .dmnt import DMNT, ModelConfig, load_deformables
    from .train import FragmentCache, TrainConfig, split_indices, train_step
    import dataclasses

    args = build_parser().parse_args(argv)
    if args.quick:
        args.steps, args.batch_size = 2, 4
    torch.set_num_threads(args.threads)
    data, deform = (args.data, args.deform) if args.data and args.deform else _ensure_inputs(args.cache_dir)
    tf = {f.name: f for f in dataclasses.fields(TrainConfig)}
    mf = {f.name: f for f in dataclasses.fields(ModelConfig)}
    to, mo = {}, {}
    for item in args.set:
        k, v = item.split("=", 1)
        (to if k in tf else mo)[k] = _parse_value(tf.get(k) or mf[k], v)
    config = TrainConfig(batch_size=args.batch_size, val_per_category=0, **to)
    ds = PoseDataset(data, categories=config.categories, levels=(0,))
    meshes, names = load_deformables(deform, ds.categories)
    model = DMNT(ds.categories, meshes, names, ModelConfig(**mo)).to(args.device)
    opt = torch.optim.Adam(model.backbone.parameters(), lr=config.lr)
    train_idx, _ = split_indices(ds, ds.categories, config)
    need = (args.warmup + args.steps) * args.batch_size
    order = [train_idx[i % len(train_idx)] for i in torch.randperm(max(need, len(train_idx)), generator=torch.Generator().manual_seed(0)).tolist()]
    h, w = ds[0]["image"].shape[-2:]
    print(f"training throughput: {platform.processor() or platform.machine()}, {args.threads} threads, device {args.device}, "
          f"{len(ds.categories)} categories, {h}x{w} images, batch {args.batch_size}, {model.config.arch} D={model.dim} "
          f"S={model.texture_size} stride {model.stride}, counts {config.positives}/{config.com}/{config.class_negatives}/{config.bg}")
    rows = []
    for mode, cached in (("fragments computed", False), ("fragments cached", True)):
        frags = FragmentCache(cache=cached)
        tm: dict = {}
        t_total = cpu_total = 0.0
        for s in range(args.warmup + args.steps):
            batch = order[s * args.batch_size:(s + 1) * args.batch_size]
            items = [ds[i] for i in batch]
            if cached:  # as in epochs >= 2: the cache already holds these items
                for it, i in zip(items, batch):
                    frags.get(model, it, i)
            keys = [(i, (0, s, k)) for k, i in enumerate(batch)]
            step_tm: dict = {}
            t0, c0 = time.perf_counter(), time.process_time()
            train_step(model, model.backbone, opt, items, keys, frags, config, device=args.device, timings=step_tm)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if s >= args.warmup:
                t_total += dt
                cpu_total += dc
                for k, v in step_tm.items():
                    tm[k] = tm.get(k, 0.0) + v
        n_img = args.steps * args.batch_size
        rows.append((mode, n_img / t_total, 1000 * cpu_total / n_img, {k: 1000 * tm.get(k, 0.0) / n_img for k in PHASES}))
    print(f"{'mode':<20} {'images/s':>9} {'CPU ms':>8} " + " ".join(f"{p + ' ms':>13}" for p in PHASES) + "   (per image)")
    for mode, ips, cpu, per in rows:
        print(f"{mode:<20} {ips:>9.2f} {cpu:>8.0f} " + " ".join(f"{per[p]:>13.1f}" for p in PHASES))
    print("phases: wall time per image; CPU ms: process CPU time per image (all threads; a load-independent measure "
          "on a shared machine). Training caches the fragments after the first epoch.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
