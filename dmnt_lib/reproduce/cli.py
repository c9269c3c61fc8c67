"""``python -m dmnt_lib reproduce [--quick] [--out DIR]``: the whole reproduction, stage by stage.

data -> deform -> train -> baseline -> evaluate -> figures; a finished stage is skipped, an
interrupted one resumes, a changed configuration is refused unless ``--redo`` (rules:
``reproduce.pipeline``). One progress line per stage, then a summary table with timings, also
written to ``OUT/summary.md`` and ``OUT/summary.json``.

``--pascal3d ROOT`` runs the same stages on NeMo-prepared PASCAL3D+ / OccludedPASCAL3D+ with the
``pascal3d*`` presets (``reproduce.pascal3d``); the folder is checked before any stage runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..fileio import atomic_write_text
from .pascal3d import PASCAL3D_PRESETS, build_pascal3d_stages, check_pascal3d_preset, pascal3d_preset, survey
from .pipeline import ConfigChanged, Pipeline, StageFailed
from .stages import PRESETS, build_stages, check_preset, preset

__all__ = ["add_parser", "run", "reproduce", "summary_markdown", "apply_overrides", "cached_run_dir"]


def cached_run_dir(preset_name: str = "tiny") -> Path:
    """``$DMNT_CACHE_DIR/reproduce_<preset>`` (default cache ``~/.cache/dmnt_lib``): the run the test
    suite's end-to-end test leaves behind and notebook 07 reuses in quick mode."""
    return Path(os.environ.get("DMNT_CACHE_DIR", Path.home() / ".cache" / "dmnt_lib")) / f"reproduce_{preset_name}"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "reproduce", help="data -> deform -> train -> baseline -> evaluate -> figures, resumable",
        description="Run the whole reproduction. Each stage is skipped when its outputs are complete "
        "(OUT/manifest/<stage>.json records the config hash it was made with); an interrupted stage "
        "resumes; a stage whose config changed is refused unless --redo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets: tiny (the test suite), quick (make demo), full (make reproduce); see dmnt_lib/reproduce/stages.py. "
        "With --pascal3d: pascal3d (one GPU), pascal3d-cpu (2 CPU cores, 4 categories), pascal3d-tiny (the test "
        "suite); see dmnt_lib/reproduce/pascal3d.py and docs/pascal3d.md")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the quick preset (what make demo runs)")
    g.add_argument("--preset", choices=sorted(PRESETS) + sorted(PASCAL3D_PRESETS),
                   help="a named preset (default full; quick with --quick or when DMNT_QUICK=1; with --pascal3d: "
                   "pascal3d, or pascal3d-tiny when DMNT_QUICK=1)")
    p.add_argument("--pascal3d", type=Path, metavar="ROOT",
                   help="real data: the folder holding NeMo's PASCAL3D_train_NeMo, PASCAL3D_NeMo, PASCAL3D_OCC_NeMo and "
                   "PASCAL3D+_release1.1/CAD (checked before any stage runs; --dry-run lists what it holds)")
    p.add_argument("--out", type=Path, help="run folder (default runs/<preset>)")
    p.add_argument("--figures", type=Path, help="where the figures go (default OUT/figures)")
    p.add_argument("--redo", action="store_true", help="recompute stages whose config changed (default: refuse)")
    p.add_argument("--dry-run", action="store_true", help="print each stage's status and exit")
    p.add_argument("--device", default="cpu", help="torch device for deform/train/baseline/evaluate/figures (default cpu)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, dotted, the value as JSON (e.g. train.epochs=10, "
                   "train_data.per_category=500, categories='[\"car\"]'); part of the config hash")
    p.set_defaults(func=run)
    return p


def summary_markdown(rows: list[dict], total: float, name: str) -> str:
    lines = [f"# reproduce ({name}): {total:.1f} s", "", "| stage | status | seconds | config |", "|---|---|---:|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']:.1f} | {r['config_hash'][:8]} |" for r in rows]
    return "\n".join(lines) + "\n"


def apply_overrides(config: dict, items: list[str], check=check_preset) -> dict:
    """``config`` with each ``KEY=VALUE`` of ``items`` applied (dotted keys into nested dicts; the
    value parsed as JSON, else kept as a string). Unknown fields and values of the wrong type are
    refused with a ``ValueError`` naming the key (``check``: ``check_preset``, or
    ``check_pascal3d_preset`` for the PASCAL3D+ presets)."""
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, text = item.split("=", 1)
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        *path, last = key.split(".")
        node = config
        for part in path:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"--set {key}: {part!r} is not a section of the preset ({sorted(node)})")
            node = node[part]
        node[last] = value
    return check(config)


def reproduce(name: str = "full", out=None, figures=None, redo: bool = False, device: str = "cpu",
              config: dict | None = None, log=print, pascal3d=None) -> list[dict]:
    """Run the preset ``name`` (or an explicit ``config`` of that shape) into ``out``; returns the
    summary rows (``Pipeline.run``) and writes ``OUT/summary.{md,json}``. ``pascal3d``: the
    ``--pascal3d`` folder (or ``pascal3d.survey``'s ``Found``) for a PASCAL3D+ preset."""
    out = Path(out) if out is not None else Path("runs") / name
    if pascal3d is not None:
        config = pascal3d_preset(name) if config is None else config
        stages = build_pascal3d_stages(out, config, pascal3d, figures, device, log=log)
    else:
        config = preset(name) if config is None else config
        stages = build_stages(out, config, figures, device)
    pipe = Pipeline(out, stages, log=log)
    t0 = time.perf_counter()
    try:
        rows = pipe.run(redo=redo)
    except StageFailed:
        log(summary_markdown(pipe.rows, time.perf_counter() - t0, name).rstrip())
        raise
    total = time.perf_counter() - t0
    md = summary_markdown(rows, total, name)
    atomic_write_text(out / "summary.md", md)
    extra = {} if pascal3d is None else {"pascal3d": str(getattr(pascal3d, "root", pascal3d))}
    atomic_write_text(out / "summary.json", json.dumps({"preset": name, "seconds": round(total, 3), "stages": rows,
                                                        "config": config, **extra}, indent=1) + "\n")
    log(md.rstrip())
    table = (Path(figures) if figures is not None else out / "figures") / "results.md"
    if table.is_file():
        log("\n" + table.read_text().rstrip())
    return rows


def run(args) -> int:
    quick_env = os.environ.get("DMNT_QUICK") == "1"
    real = getattr(args, "pascal3d", None)
    if real is not None:
        name = args.preset or ("pascal3d-tiny" if quick_env else "pascal3d")
        bad = ("--quick selects the synthetic quick preset" if args.quick else
               f"--preset {name} is a synthetic-data preset" if name not in PASCAL3D_PRESETS else None)
    else:
        name = "quick" if args.quick else (args.preset or ("quick" if quick_env else "full"))
        bad = f"--preset {name} runs on real data: give --pascal3d ROOT" if name in PASCAL3D_PRESETS else None
    if bad:
        print(f"error: {bad}" + (f"; with --pascal3d use --preset {' | '.join(sorted(PASCAL3D_PRESETS))}" if real else ""),
              file=sys.stderr)
        return 2
    out = args.out if args.out is not None else Path("runs") / name
    try:
        if real is not None:
            config = apply_overrides(pascal3d_preset(name), args.set, check=check_pascal3d_preset)
            real = survey(real, config["categories"], config["evaluate"]["levels"])
            stages = build_pascal3d_stages(out, config, real, args.figures, args.device)
        else:
            config = apply_overrides(preset(name), args.set)
            stages = build_stages(out, config, args.figures, args.device) if args.dry_run else None
    except (ValueError, FileNotFoundError) as e:  # a bad --set, or an incomplete --pascal3d folder (Pascal3DLayoutError)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        if real is not None:
            print(real.describe())
            print(_selection(name, config, real))
        pipe = Pipeline(out, stages)
        for i, p in enumerate(pipe.plan(), 1):
            print(f"[{i}/{len(pipe.stages)}] {p.stage.name:<18} {p.status}: {p.reason}")
        return 0
    try:
        reproduce(name, out, args.figures, args.redo, args.device, config=config, pascal3d=real)
    except ConfigChanged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except StageFailed as e:
        print(f"error: {e}\n(the finished stages are kept; rerun the same command to resume)", file=sys.stderr)
        return 1
    return 0


def _selection(name: str, config: dict, found) -> str:
    """What a PASCAL3D+ preset takes of ``found`` (the ``--dry-run`` line after the inventory)."""
    def part(n):
        return "all" if n is None else f"up to {n} per category"

    size = config["image_size"]
    return (f"  preset {name}: categories {', '.join(found.categories)}; training {part(config['train_data']['per_category'])}, "
            f"test {part(config['test_data']['per_category'])} and level (L{''.join(map(str, config['evaluate']['levels']))}); "
            f"images {size} x {size}")
