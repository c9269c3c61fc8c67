"""``python -m dmnt_lib reproduce [--quick] [--out DIR]``: the whole reproduction, stage by stage.

data -> deform -> train -> baseline -> evaluate -> figures; a finished stage is skipped, an
interrupted one resumes, a changed configuration is refused unless ``--redo`` (rules:
``reproduce.pipeline``). One progress line per stage, then a summary table with timings, also
written to ``OUT/summary.md`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ..fileio import atomic_write_text
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
        epilog="presets: tiny (the test suite), quick (make demo), full (make reproduce); see dmnt_lib/reproduce/stages.py")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="the quick preset (what make demo runs)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="a named preset (default full; quick with --quick or when DMNT_QUICK=1)")
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


def apply_overrides(config: dict, items: list[str]) -> dict:
    """``config`` with each ``KEY=VALUE`` of ``items`` applied (dotted keys into nested dicts; the
    value parsed as JSON, else kept as a string). Unknown fields and values of the wrong type are
    refused with a ``ValueError`` naming the key (``check_preset``)."""
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
    return check_preset(config)


def reproduce(name: str = "full", out=None, figures=None, redo: bool = False, device: str = "cpu",
              config: dict | None = None, log=print) -> list[dict]:
    """Run the preset ``name`` (or an explicit ``config`` of that shape) into ``out``; returns the
    summary rows (``Pipeline.run``) and writes ``OUT/summary.{md,json}``."""
    config = preset(name) if config is None else config
    out = Path(out) if out is not None else Path("runs") / name
    pipe = Pipeline(out, build_stages(out, config, figures, device), log=log)
    t0 = time.perf_counter()
    try:
        rows = pipe.run(redo=redo)
    except StageFailed:
        log(summary_markdown(pipe.rows, time.perf_counter() - t0, name).rstrip())
        raise
    total = time.perf_counter() - t0
    md = summary_markdown(rows, total, name)
    atomic_write_text(out / "summary.md", md)
    atomic_write_text(out / "summary.json", json.dumps({"preset": name, "seconds": round(total, 3), "stages": rows,
                                                        "config": config}, indent=1) + "\n")
    log(md.rstrip())
    table = (Path(figures) if figures is not None else out / "figures") / "results.md"
    if table.is_file():
        log("\n" + table.read_text().rstrip())
    return rows


def run(args) -> int:
    name = "quick" if args.quick else (args.preset or ("quick" if os.environ.get("DMNT_QUICK") == "1" else "full"))
    out = args.out if args.out is not None else Path("runs") / name
    try:
        config = apply_overrides(preset(name), args.set)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        pipe = Pipeline(out, build_stages(out, config, args.figures, args.device))
        for i, p in enumerate(pipe.plan(), 1):
            print(f"[{i}/{len(pipe.stages)}] {p.stage.name:<18} {p.status}: {p.reason}")
        return 0
    try:
        reproduce(name, out, args.figures, args.redo, args.device, config=config)
    except ConfigChanged as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except StageFailed as e:
        print(f"error: {e}\n(the finished stages are kept; rerun the same command to resume)", file=sys.stderr)
        return 1
    return 0
