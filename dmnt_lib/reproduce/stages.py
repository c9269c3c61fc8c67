"""The reproduction's stages and their presets: data -> deform -> train -> baseline -> evaluate -> figures.

Every stage runs the project's own command line in-process (``dmnt_lib.__main__.main``), so
``reproduce`` does exactly what a user typing the commands of the README would do. Layout of
``OUT`` (``runs/quick`` for ``--quick``, ``runs/full`` otherwise):

    data/train  data/test  data/val  deform/<category>.pt  dmnt/  baseline/  dmnt/eval/  baseline/eval/
    figures/ (unless --figures)  manifest/<stage>.json  summary.json  summary.md

The device (``--device``) is not part of any stage's config: a run may move between CPU and GPU
and keep its finished stages.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from .pipeline import Stage, StageFailed

__all__ = ["PRESETS", "preset", "check_preset", "build_stages", "cli_call", "finished_eval_name"]

from ..data.shapes import CATEGORIES

#: The full run's training options (docs/experiments.md, training section): the 64-texel atlas; the Com radius
#: scaled to it and no augmentation are TrainConfig's defaults (T2, T4).
TRAIN_FULL_SET = {"texture_size": 64}

#: ``tiny``: the test suite's end-to-end run; ``quick``: ``make demo``; ``full``: ``make reproduce``.
PRESETS: dict[str, dict] = {
    "tiny": {
        "categories": ["car", "bottle"], "image_size": 64,
        "train_data": {"per_category": 4, "seed": 0}, "test_data": {"per_category": 1, "seed": 1},
        "val_data": {"per_category": 1, "seed": 2},
        "deform": {"quick": True, "steps": 2, "seed": 0},
        "train": {"quick": True, "epochs": 1, "batch_size": 4, "set": {}},
        "baseline": {"quick": True, "epochs": 1, "augment": False},
        "evaluate": {"levels": [0, 1, 2, 3], "per_category": 1, "center": "known", "search": True, "quick": True},
    },
    "quick": {
        "categories": list(CATEGORIES), "image_size": 128,
        "train_data": {"per_category": 16, "seed": 0}, "test_data": {"per_category": 1, "seed": 1},
        "val_data": {"per_category": 4, "seed": 2},
        "deform": {"quick": True, "steps": 60, "seed": 0},
        "train": {"quick": True, "epochs": 2, "set": {}},
        "baseline": {"quick": True, "epochs": 2, "augment": False},
        "evaluate": {"levels": [0, 1, 2, 3], "per_category": 1, "center": "known", "search": True, "quick": True},
    },
    "full": {
        "categories": list(CATEGORIES), "image_size": 128,
        # The fair comparison, sized for about 2 hours on 2 CPU cores (docs/reproduction.md, measured stage
        # times there): both learners train on the same 340 images per category with the same augmentations
        # (none: on the validation set flips and colour jitter cost DMNT 0.04 texel correspondence and 14 points
        # of class at this budget, docs/experiments.md T4, so the baseline trains without them too) and the same
        # wall-clock budget: DMNT 10 epochs (measured 46 min, ~14.8 images/s), the baseline 7 epochs (measured
        # 52 min, 8.4-10.2 images/s; 2026-12-06).
        # DMNT's held-out correspondence check reads a validation set of its own (val_data, seed 2, the seed
        # the inference defaults were chosen on), so it takes no training image away. DMNT is evaluated with
        # the object centre given (`--center known`, NeMo's protocol); 20 test images per category and level.
        # The searched centre (`--set evaluate.search=true`: DMNT locates the object itself, as the baseline
        # does) is left out here: measured at ~10.6 s per image on 2 cores (2026-12-06), 2.8 h for 960 images,
        # beyond the 2-hour budget; the quick and tiny presets run it. On a GPU raise train_data.per_category,
        # train.epochs and baseline.epochs with --set (the prototype suggested >= 1000 images, 15-20 epochs).
        "train_data": {"per_category": 340, "seed": 0}, "test_data": {"per_category": 20, "seed": 1},
        "val_data": {"per_category": 20, "seed": 2},
        "deform": {"quick": True, "seed": 0},
        "train": {"quick": False, "epochs": 10, "batch_size": 16, "set": TRAIN_FULL_SET},
        "baseline": {"quick": False, "epochs": 7, "augment": False},
        "evaluate": {"levels": [0, 1, 2, 3], "per_category": 20, "center": "known", "search": False, "quick": False},
    },
}


def preset(name: str) -> dict:
    """A deep copy of ``PRESETS[name]``."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return copy.deepcopy(PRESETS[name])


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


#: Every field a preset may have (``section.field`` for the fields of a section): ``(check, what it
#: must be)``. ``train.set`` is handed to ``train --set``; ``check_preset`` checks its keys are
#: TrainConfig/ModelConfig fields, and the train command parses their values.
_FIELDS = {
    "categories": (lambda v: isinstance(v, list) and bool(v) and all(c in CATEGORIES for c in v)
                   and len(set(v)) == len(v), f"a non-empty list of distinct categories from {list(CATEGORIES)}"),
    "image_size": (_positive_int, "a positive integer"),
    "train_data.per_category": (_positive_int, "a positive integer"),
    "train_data.seed": (_int, "an integer"),
    "test_data.per_category": (_positive_int, "a positive integer"),
    "test_data.seed": (_int, "an integer"),
    "val_data.per_category": (_positive_int, "a positive integer"),
    "val_data.seed": (_int, "an integer"),
    "deform.quick": (lambda v: isinstance(v, bool), "true or false"),
    "deform.steps": (_positive_int, "a positive integer"),
    "deform.seed": (_int, "an integer"),
    "train.quick": (lambda v: isinstance(v, bool), "true or false"),
    "train.epochs": (_positive_int, "a positive integer"),
    "train.batch_size": (_positive_int, "a positive integer"),
    "train.set": (lambda v: isinstance(v, dict), 'a JSON object of train --set fields, e.g. {"texture_size": 64}'),
    "baseline.quick": (lambda v: isinstance(v, bool), "true or false"),
    "baseline.epochs": (_positive_int, "a positive integer"),
    "baseline.augment": (lambda v: isinstance(v, bool), "true or false (flips and colour jitter; DMNT's train.set flip/color_jitter alike)"),
    "evaluate.levels": (lambda v: isinstance(v, list) and bool(v) and all(_int(x) and 0 <= x <= 3 for x in v)
                        and len(set(v)) == len(v), "a non-empty list of distinct occlusion levels 0-3, e.g. [0,1,2,3]"),
    "evaluate.per_category": (_positive_int, "a positive integer"),
    "evaluate.center": (lambda v: v in ("known", "search"), '"known" or "search"'),
    "evaluate.search": (lambda v: isinstance(v, bool), "true or false (also evaluate DMNT with --center search)"),
    "evaluate.quick": (lambda v: isinstance(v, bool), "true or false"),
}
_SECTIONS = sorted({k.split(".")[0] for k in _FIELDS if "." in k})
_REQUIRED = ["categories", "image_size", "train_data.per_category", "train_data.seed", "test_data.per_category",
             "test_data.seed", "val_data.per_category", "val_data.seed", "deform.seed", "evaluate.levels",
             "evaluate.per_category", "evaluate.center"]


def check_preset(config: dict, fields: dict | None = None, required: list | None = None) -> dict:
    """``config`` itself when every field is one ``PRESETS`` knows, of the right type; otherwise a
    ``ValueError`` naming the field as ``--set KEY`` would (so a misspelt key is refused, not hashed
    into the config and ignored). ``fields``/``required``: another preset family's table, in
    ``_FIELDS``' form, and its required fields (default: the synthetic presets')."""
    fields = _FIELDS if fields is None else fields
    required = _REQUIRED if required is None else required
    sections = sorted({k.split(".")[0] for k in fields if "." in k})
    if not isinstance(config, dict):
        raise ValueError(f"a preset config must be a dict, got {type(config).__name__}")
    flat = {}
    for key, value in config.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ValueError(f"--set {key}: a section of fields ({', '.join(k for k in fields if k.startswith(key + '.'))}), "
                                 f"got {value!r}")
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    for key, value in flat.items():
        if key not in fields:
            section = key.split(".")[0] + "." if "." in key else ""
            known = [k for k in fields if k.startswith(section)] if section else [k for k in fields if "." not in k] + sections
            raise ValueError(f"--set {key}: unknown preset field (known: {', '.join(known)})")
        check, what = fields[key]
        if not check(value):
            raise ValueError(f"--set {key}: must be {what}, got {value!r}")
    if flat.get("train.set"):
        import dataclasses

        from ..model import ModelConfig
        from ..model.train import TrainConfig

        names = {f.name for cls in (TrainConfig, ModelConfig) for f in dataclasses.fields(cls)}
        bad = sorted(set(flat["train.set"]) - names)
        if bad:
            raise ValueError(f"--set train.set: {bad} are not TrainConfig or ModelConfig fields ({sorted(names)})")
        if "val_per_category" in flat["train.set"] and "val_data.per_category" in fields:
            raise ValueError("--set train.set: val_per_category comes from val_data.per_category (DMNT's held-out "
                             "images are the validation set's); set that instead")
    missing = [k for k in sections if k not in config] or [k for k in required if k not in flat]
    if missing:
        raise ValueError(f"the preset config lacks {', '.join(missing)}")
    return config


def cli_call(argv: list[str]) -> None:
    """Run ``python -m dmnt_lib <argv>`` in-process; ``StageFailed`` on a non-zero status.

    ``DMNT_QUICK`` is set to 0 for the call: several commands default ``--quick`` from it, and a
    stage's quickness must come from its (hashed) config, passed as an explicit flag."""
    from ..__main__ import main

    old = os.environ.get("DMNT_QUICK")
    os.environ["DMNT_QUICK"] = "0"
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse usage errors
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        if old is None:
            os.environ.pop("DMNT_QUICK")
        else:
            os.environ["DMNT_QUICK"] = old
    if rc:
        raise StageFailed(f"`python -m dmnt_lib {' '.join(map(str, argv))}` exited with status {rc}")


def _flag(name: str, on: bool) -> list[str]:
    return [name] if on else []


def _opt(name: str, value) -> list[str]:
    return [] if value is None else [name, str(value)]


def _resume(run_dir: Path) -> list[str]:
    """``--resume`` when an interrupted training left its checkpoint or (the baseline, before its first
    epoch ends) its ``run.json``: both trainers refuse to overwrite either without it, and with it and
    no checkpoint they start afresh."""
    return ["--resume"] if (run_dir / "checkpoint.pt").exists() or (run_dir / "run.json").exists() else []


def build_stages(out, config: dict, figures_dir=None, device: str = "cpu") -> list[Stage]:
    """The pipeline's stages for one preset ``config`` (see ``PRESETS``; checked by ``check_preset``),
    writing under ``out``."""
    check_preset(config)
    out = Path(out)
    figures_dir = Path(figures_dir) if figures_dir is not None else out / "figures"
    cats, size = list(config["categories"]), int(config["image_size"])
    train_dir, test_dir, val_dir = out / "data" / "train", out / "data" / "test", out / "data" / "val"
    deform_dir, dmnt_dir, base_dir = out / "deform", out / "dmnt", out / "baseline"
    stages: list[Stage] = []

    def data_stage(name, folder, cfg, levels):
        c = {"categories": cats, "image_size": size, "levels": levels, **cfg}
        argv = ["data", "--out", folder, "--per-category", c["per_category"], "--levels", *levels,
                "--seed", c["seed"], "--image-size", size, "--categories", *cats, "--overwrite", "--no-progress"]
        return Stage(name, c, lambda: cli_call(argv), outputs=[folder / "meta.json"], clear=[folder])

    stages.append(data_stage("data-train", train_dir, config["train_data"], [0]))
    stages.append(data_stage("data-test", test_dir, config["test_data"], [0, 1, 2, 3]))
    stages.append(data_stage("data-val", val_dir, config["val_data"], [0]))

    d = {"categories": cats, **config["deform"]}
    deform_argv = ["deform", "--data", train_dir, "--checkpoint-dir", deform_dir, "--seed", d["seed"],
                   "--categories", *cats, *_flag("--quick", d.get("quick")), *_opt("--steps", d.get("steps")),
                   "--device", device]
    stages.append(Stage("deform", d, lambda: cli_call(deform_argv), outputs=[deform_dir / f"{c}.pt" for c in cats],
                        inputs=["data-train"], clear=[deform_dir]))

    # Both learners see every category and every image of the training set (the commands' --quick would
    # otherwise cut categories or images); DMNT's texture-correspondence check (train's last line) reads
    # ``val_data.per_category`` images per category of the validation set instead of holding training images out.
    n_train = int(config["train_data"]["per_category"])
    n_val = int(config["val_data"]["per_category"])
    t = {**config["train"], "val_data": config["val_data"]}
    sets = [x for k, v in sorted(t.get("set", {}).items()) for x in ("--set", f"{k}={v}")]
    train_argv = ["train", "--data", train_dir, "--deform", deform_dir, "--out", dmnt_dir, "--categories", *cats,
                  "--per-category", n_train, "--val-data", val_dir, *sets, "--set", f"val_per_category={n_val}",
                  *_opt("--epochs", t.get("epochs")), *_opt("--batch-size", t.get("batch_size")),
                  *_flag("--quick", t.get("quick")), "--device", device]
    stages.append(Stage("train", t, lambda: cli_call(train_argv + _resume(dmnt_dir)), outputs=[dmnt_dir / "model.pt"],
                        inputs=["data-train", "data-val", "deform"], clear=[dmnt_dir]))

    b = dict(config["baseline"])
    base_argv = ["baseline", "train", "--data", train_dir, "--out", base_dir, "--categories", *cats,
                 "--per-category", n_train, *_opt("--epochs", b.get("epochs")), *_flag("--quick", b.get("quick")),
                 *_flag("--no-augment", b.get("augment") is False), "--device", device]
    stages.append(Stage("baseline", b, lambda: cli_call(base_argv + _resume(base_dir)),
                        outputs=[base_dir / "run.json"], inputs=["data-train"], clear=[base_dir]))

    e = dict(config["evaluate"])
    # The folder evaluate writes into (its own naming rule), so the figures read exactly this
    # evaluation even when a run holds others.
    from ..evaluate import eval_name

    ev_name = eval_name(test_dir, e["levels"], e["per_category"], bool(e.get("quick")), center=e["center"])
    search_name = eval_name(test_dir, e["levels"], e["per_category"], bool(e.get("quick")), center="search")
    evals = [("evaluate-dmnt", dmnt_dir, "train", e["center"], ev_name),
             ("evaluate-baseline", base_dir, "baseline", e["center"], ev_name)]
    if e.get("search") and e["center"] != "search":
        evals.insert(1, ("evaluate-dmnt-search", dmnt_dir, "train", "search", search_name))
    for name, run_dir, upstream, center, folder in evals:
        # 8 images per predictor call: batched rendering is faster, and the results do not depend on it
        # (DMNT's refinement stops each hypothesis on its own; the baseline's test images all have one
        # size, so torchvision's batching pads nothing and GroupNorm has no batch statistics).
        argv = ["evaluate", "--run", run_dir, "--data", test_dir, "--levels", *e["levels"],
                "--per-category", e["per_category"], "--center", center, "--batch-size", 8,
                *_flag("--quick", e.get("quick")), "--device", device]
        ev_dir = run_dir / "eval" / folder
        # `search` only decides whether the searched evaluation exists: not part of any evaluation's config
        stages.append(Stage(name, {**{k: v for k, v in e.items() if k != "search"}, "center": center},
                            lambda argv=argv: cli_call(argv),
                            outputs=[ev_dir / "results.json", ev_dir / "predictions.jsonl"],
                            inputs=["data-test", upstream], clear=[ev_dir]))
    searched = any(name == "evaluate-dmnt-search" for name, *_ in evals)

    def run_figures():
        from ..figures.cli import make_figures

        return make_figures(dmnt_dir, test_dir, figures_dir, base_dir, eval_name=ev_name, device=device,
                            search_eval_name=search_name if searched else None)

    # The folder is part of the config (a different one must be written) but only movable: drawing
    # the same evaluations somewhere else is a rerun, not a configuration change to refuse.
    stages.append(Stage("figures", {"out": str(figures_dir.resolve())}, run_figures,
                        inputs=["data-test", "evaluate-dmnt", "evaluate-baseline"] + (["evaluate-dmnt-search"] if searched else []),
                        movable=("out",)))
    return stages


def finished_eval_name(out, stage: str = "evaluate-dmnt") -> str | None:
    """The ``RUN/eval/<name>`` folder name the finished ``stage`` (``evaluate-dmnt``, ``evaluate-dmnt-search``,
    ``evaluate-baseline``) of the ``reproduce`` folder ``out`` wrote (from its manifest), or None when that
    stage has not finished (or the preset has no such stage). Readers of a
    reproduce folder (notebook 07) use it rather than "the newest evaluation", which another
    evaluation of the same run (notebook 06's, a user's) would change."""
    import json

    path = Path(out) / "manifest" / f"{stage}.json"
    if not path.is_file():
        return None
    outputs = json.loads(path.read_text()).get("outputs", [])
    names = {Path(o).parent.name for o in outputs if Path(o).name == "results.json"}
    return names.pop() if len(names) == 1 else None

