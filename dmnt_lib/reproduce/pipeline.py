"""A resumable pipeline of stages with per-stage manifests (``python -m dmnt_lib reproduce``).

Each ``Stage`` has a JSON-able ``config`` and a ``run`` function. When a stage finishes,
``OUT/manifest/<stage>.json`` records its config hash, the files it wrote, its wall time and a
fresh *token*; a stage reads its upstream stages' tokens. Before any work, ``plan`` gives every
stage one status:

* ``complete`` — manifest present, same config hash, same upstream tokens, every recorded output
  still on disk: skipped, no work done.
* ``run`` — never finished (no manifest, e.g. interrupted): run it *without* clearing its outputs,
  so the stage's own resume (the dataset's interrupted marker, training checkpoints, evaluation's
  JSON lines) continues where it stopped. Also when recorded outputs have gone missing.
* ``stale`` — same config, but an upstream stage was recomputed since: its outputs are cleared
  and it is recomputed.
* ``moved`` — only the stage's ``movable`` keys changed (where its outputs go, e.g. the figures
  folder): it runs again, writing to the new place, without a refusal and without clearing.
* ``changed`` — the stage's config differs from the one its outputs were made with. This is
  **refused** (``ConfigChanged``, naming each stage and the differing keys) unless ``redo=True``
  (``reproduce --redo``), which clears that stage's outputs and recomputes it; the stages after
  it then become ``stale``. Nothing is run when a refusal is raised.

A stage's manifest is deleted before it runs and written (atomically) only after it succeeded
and its outputs exist, so an interrupted stage is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..fileio import atomic_write_text

__all__ = ["Stage", "StagePlan", "ConfigChanged", "StageFailed", "config_hash", "Pipeline", "MANIFEST_DIR"]

MANIFEST_DIR = "manifest"
MANIFEST_VERSION = 1


def config_hash(config: dict) -> str:
    """First 16 hex digits of the SHA-256 of ``config`` as canonical JSON (sorted keys)."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    except TypeError as e:
        raise TypeError(f"stage config must be JSON-serialisable: {e}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ConfigChanged(RuntimeError):
    """Some stages' outputs were made with another config; nothing was run."""


class StageFailed(RuntimeError):
    """A stage raised, returned an error status, or did not write its outputs."""


@dataclass
class Stage:
    """One step of the pipeline.

    Attributes:
        name: unique, used for the manifest file name.
        config: JSON-able dict; what the outputs depend on (hashed).
        run: does the work; returns the paths it wrote (files or folders) or ``None`` to use
            ``outputs``. Raises (or returns a non-path error) on failure.
        outputs: paths that must exist when the stage is complete (used when ``run`` returns None).
        inputs: names of the stages whose outputs this one reads.
        clear: paths removed before a ``stale``/``changed`` stage is recomputed; must lie inside the
            pipeline's ``out`` folder (others are refused).
        movable: top-level ``config`` keys that say only where the outputs go; a change confined to
            them makes the stage ``moved`` (rerun there), not ``changed`` (refused).
    """

    name: str
    config: dict
    run: Callable[[], list | None]
    outputs: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    clear: list = field(default_factory=list)
    movable: tuple = ()


@dataclass
class StagePlan:
    stage: Stage
    status: str  # complete | run | moved | stale | changed
    reason: str
    hash: str


class Pipeline:
    """Stages in order, with their manifests under ``out/manifest``.

    Args:
        out: the run folder (created). stages: ``Stage`` list; each ``inputs`` name must come earlier.
        log: called with each progress line (default ``print``).
    """

    def __init__(self, out, stages: list[Stage], log: Callable[[str], None] = print):
        self.out = Path(out)
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        for i, s in enumerate(stages):
            missing = [n for n in s.inputs if n not in names[:i]]
            if missing:
                raise ValueError(f"stage {s.name!r}: inputs {missing} are not earlier stages")
        self.stages = list(stages)
        self.log = log
        self.rows: list[dict] = []

    # ------------------------------------------------------------------ manifests

    def manifest_path(self, name: str) -> Path:
        return self.out / MANIFEST_DIR / f"{name}.json"

    def manifest(self, name: str) -> dict | None:
        try:
            m = json.loads(self.manifest_path(name).read_text())
        except (OSError, ValueError):
            return None
        return m if isinstance(m, dict) and m.get("version") == MANIFEST_VERSION else None

    # ------------------------------------------------------------------ planning

    def plan(self) -> list[StagePlan]:
        """Every stage's status (module docstring), computed without running anything."""
        plans: list[StagePlan] = []
        rerun: set[str] = set()
        tokens = {}
        for s in self.stages:
            h = config_hash(s.config)
            m = self.manifest(s.name)
            ups = [u for u in s.inputs if m is not None and (u in rerun or m.get("inputs", {}).get(u) != tokens.get(u))]
            if m is None:
                status, reason = "run", "not finished" + (" (resuming)" if any(Path(p).exists() for p in s.outputs) else "")
            elif m.get("config_hash") != h:
                old = m.get("config", {})
                fixed = lambda c: {k: v for k, v in c.items() if k not in s.movable}
                moved = bool(s.movable) and isinstance(old, dict) and fixed(old) == fixed(s.config)
                if moved and ups:  # its old outputs are outdated too: clear them as for any stale stage
                    status, reason = "stale", f"upstream {', '.join(ups)} recomputed; {_diff(old, s.config)}"
                else:
                    status, reason = ("moved" if moved else "changed"), _diff(old, s.config)
            elif ups:
                status, reason = "stale", f"upstream {', '.join(ups)} recomputed"
            else:
                gone = [p for p in m.get("outputs", []) if not Path(p).exists()]
                status, reason = ("run", f"outputs missing: {', '.join(gone[:3])}") if gone else ("complete", "complete")
            if status != "complete":
                rerun.add(s.name)
            else:
                tokens[s.name] = m["token"]
            plans.append(StagePlan(s, status, reason, h))
        return plans

    # ------------------------------------------------------------------ running

    def _clear(self, stage: Stage) -> None:
        root = self.out.resolve()
        for p in stage.clear:
            p = Path(p)
            if not p.resolve().is_relative_to(root):
                raise ValueError(f"stage {stage.name!r}: refusing to clear {p}, outside the run folder {self.out}")
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def run(self, redo: bool = False) -> list[dict]:
        """Run what the plan says; returns one summary row per stage
        (``{"stage", "status", "seconds", "reason", "config_hash"}``).

        Raises:
            ConfigChanged: some stage is ``changed`` and ``redo`` is False (before any work).
            StageFailed: a stage failed; the stages before it keep their manifests.
        """
        plans = self.plan()
        changed = [p for p in plans if p.status == "changed"]
        if changed and not redo:
            lines = "\n".join(f"  {p.stage.name}: {p.reason}" for p in changed)
            raise ConfigChanged(
                f"{self.out} holds outputs made with a different configuration:\n{lines}\n"
                "Nothing was run. Use --redo to recompute these stages (and the ones after them), "
                "or another --out to keep both.")
        self.out.mkdir(parents=True, exist_ok=True)
        n = len(plans)
        tokens: dict[str, str] = {}
        rows = self.rows = []  # kept on the object, so a caller can summarise a failed run
        for i, p in enumerate(plans, 1):
            s = p.stage
            prefix = f"[{i}/{n}] {s.name:<18}"
            if p.status == "complete":
                tokens[s.name] = self.manifest(s.name)["token"]
                self.log(f"{prefix} skipped: complete (config {p.hash[:8]})")
                rows.append({"stage": s.name, "status": "skipped", "seconds": 0.0, "reason": p.reason,
                             "config_hash": p.hash})
                continue
            self.log(f"{prefix} running: {p.reason} (config {p.hash[:8]})")
            self.manifest_path(s.name).unlink(missing_ok=True)
            if p.status in ("stale", "changed"):
                self._clear(s)
            t0 = time.perf_counter()
            try:
                produced = s.run()
            except Exception as e:
                rows.append({"stage": s.name, "status": "failed", "seconds": round(time.perf_counter() - t0, 3),
                             "reason": str(e), "config_hash": p.hash})
                if isinstance(e, StageFailed):
                    raise
                raise StageFailed(f"stage {s.name!r} failed: {type(e).__name__}: {e}") from e
            seconds = time.perf_counter() - t0
            outputs = [str(x) for x in (produced if produced is not None else s.outputs)]
            gone = [o for o in outputs if not Path(o).exists()]
            if gone:
                raise StageFailed(f"stage {s.name!r} finished but did not write {', '.join(gone)}")
            token = hashlib.sha256(f"{p.hash}:{time.time_ns()}:{sorted(tokens.items())}".encode()).hexdigest()[:16]
            manifest = {"version": MANIFEST_VERSION, "stage": s.name, "config_hash": p.hash, "config": s.config,
                        "inputs": {u: tokens[u] for u in s.inputs}, "outputs": outputs, "token": token,
                        "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
            atomic_write_text(self.manifest_path(s.name), json.dumps(manifest, indent=1) + "\n")
            tokens[s.name] = token
            rows.append({"stage": s.name, "status": "ran", "seconds": round(seconds, 3), "reason": p.reason,
                         "config_hash": p.hash})
        return rows


def _diff(old: dict, new: dict, prefix: str = "") -> str:
    """Human-readable differences between two configs: ``key: old -> new; ...``."""
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            sub = _diff(a, b, f"{prefix}{k}.")
            if sub:
                parts.append(sub)
        elif a != b:
            parts.append(f"{prefix}{k}: {json.dumps(a)} -> {json.dumps(b)}")
    return "; ".join(parts)
