"""``reproduce``: the skip / resume / refuse rules on injected stages, every real stage's command
line accepted by its CLI, and the tiny preset end to end."""

import json
from pathlib import Path

import pytest

from dmnt_lib.reproduce import ConfigChanged, Pipeline, Stage, StageFailed, config_hash
from dmnt_lib.reproduce import stages as real_stages


class Recorder:
    """Three file-writing stages a -> b -> c; counts how often each one runs."""

    def __init__(self, out: Path, fail: str | None = None):
        self.out, self.fail, self.calls = out, fail, []
        self.configs = {"a": {"n": 1}, "b": {"n": 2, "sub": {"x": 1}}, "c": {"n": 3}}

    def stage(self, name, inputs):
        path = self.out / f"{name}.txt"

        def run():
            self.calls.append(name)
            prev = path.read_text() if path.exists() else ""  # what an interrupted attempt left
            path.write_text(prev + f"{name}:{json.dumps(self.configs[name])}\n")
            if name == self.fail:
                raise RuntimeError("boom")

        return Stage(name, dict(self.configs[name]), run, outputs=[path], inputs=inputs, clear=[path])

    def pipeline(self, **kw):
        return Pipeline(self.out, [self.stage("a", []), self.stage("b", ["a"]), self.stage("c", ["b"])],
                        log=lambda line: None, **kw)


def test_fresh_run_then_no_work(tmp_path):
    rec = Recorder(tmp_path)
    rows = rec.pipeline().run()
    assert rec.calls == ["a", "b", "c"] and [r["status"] for r in rows] == ["ran"] * 3
    m = json.loads((tmp_path / "manifest" / "b.json").read_text())
    assert m["config_hash"] == config_hash(rec.configs["b"]) and m["inputs"] == {"a": json.loads(
        (tmp_path / "manifest" / "a.json").read_text())["token"]}
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    rows = rec.pipeline().run()
    assert rec.calls == ["a", "b", "c"] and [r["status"] for r in rows] == ["skipped"] * 3
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # not a single file touched
    assert [p.status for p in rec.pipeline().plan()] == ["complete"] * 3


def test_interrupted_stage_resumes_without_clearing(tmp_path):
    rec = Recorder(tmp_path, fail="b")
    with pytest.raises(StageFailed, match="'b' failed: RuntimeError: boom"):
        rec.pipeline().run()
    assert (tmp_path / "manifest" / "a.json").exists() and not (tmp_path / "manifest" / "b.json").exists()
    failed = rec.pipeline()
    with pytest.raises(StageFailed):
        failed.run()
    assert [(r["stage"], r["status"]) for r in failed.rows] == [("a", "skipped"), ("b", "failed")]
    assert [p.status for p in rec.pipeline().plan()] == ["complete", "run", "run"]
    assert "resuming" in rec.pipeline().plan()[1].reason
    rec.fail = None
    rec.pipeline().run()
    assert rec.calls == ["a", "b", "b", "b", "c"]
    assert (tmp_path / "b.txt").read_text().count("b:") == 3  # the partial output was kept for the stage's resume


def test_changed_config_is_refused_then_redone(tmp_path):
    rec = Recorder(tmp_path)
    rec.pipeline().run()
    rec.configs["b"] = {"n": 2, "sub": {"x": 5}}
    assert [p.status for p in rec.pipeline().plan()] == ["complete", "changed", "stale"]
    with pytest.raises(ConfigChanged) as info:
        rec.pipeline().run()
    msg = str(info.value)
    assert "b: sub.x: 1 -> 5" in msg and "--redo" in msg and "c:" not in msg
    assert rec.calls == ["a", "b", "c"]  # nothing ran
    rows = rec.pipeline().run(redo=True)
    assert rec.calls == ["a", "b", "c", "b", "c"] and [r["status"] for r in rows] == ["skipped", "ran", "ran"]
    # Redone stages start from cleared outputs (a single line, the new config).
    assert (tmp_path / "b.txt").read_text() == 'b:{"n": 2, "sub": {"x": 5}}\n'
    assert [p.status for p in rec.pipeline().plan()] == ["complete"] * 3


def test_missing_outputs_rerun_the_stage_and_downstream(tmp_path):
    rec = Recorder(tmp_path)
    rec.pipeline().run()
    (tmp_path / "a.txt").unlink()
    plan = rec.pipeline().plan()
    assert [p.status for p in plan] == ["run", "stale", "stale"] and "a.txt" in plan[0].reason
    rec.pipeline().run()
    assert rec.calls == ["a", "b", "c", "a", "b", "c"]


def test_stage_without_its_outputs_fails_and_clear_stays_inside(tmp_path):
    p = Pipeline(tmp_path, [Stage("x", {}, lambda: None, outputs=[tmp_path / "never"])], log=lambda s: None)
    with pytest.raises(StageFailed, match="did not write"):
        p.run()
    assert not (tmp_path / "manifest" / "x.json").exists()
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("keep")
    bad = Pipeline(tmp_path / "run", [Stage("y", {"v": 1}, lambda: [outside], clear=[outside])], log=lambda s: None)
    bad.run()
    bad.stages[0].config["v"] = 2
    with pytest.raises(ValueError, match="refusing to clear"):
        bad.run(redo=True)
    assert outside.read_text() == "keep"


def test_pipeline_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        Pipeline(tmp_path, [Stage("a", {}, lambda: None), Stage("a", {}, lambda: None)])
    with pytest.raises(ValueError, match="not earlier stages"):
        Pipeline(tmp_path, [Stage("a", {}, lambda: None, inputs=["b"]), Stage("b", {}, lambda: None)])
    with pytest.raises(TypeError, match="JSON"):
        config_hash({"x": object()})
    with pytest.raises(ValueError, match="preset"):
        real_stages.preset("huge")


@pytest.mark.parametrize("name", sorted(real_stages.PRESETS))
def test_every_stage_command_line_is_accepted(name, tmp_path, monkeypatch):
    """Each real stage's argv parses with the registered CLI (catches a drifted contract early)."""
    from dmnt_lib.__main__ import build_parser

    calls = []
    monkeypatch.setattr(real_stages, "cli_call", lambda argv: calls.append([str(a) for a in argv]))
    stages = real_stages.build_stages(tmp_path, real_stages.preset(name))
    searched = real_stages.preset(name)["evaluate"].get("search", False)
    assert searched == (name != "full")  # the full preset leaves the 2.8-hour searched evaluation out
    assert [s.name for s in stages] == ["data-train", "data-test", "data-val", "deform", "train", "baseline", "evaluate-dmnt",
                                        *(["evaluate-dmnt-search"] if searched else []), "evaluate-baseline", "figures"]
    for s in stages[:-1]:
        s.run()
    parser = build_parser()
    registered = set(next(a for a in parser._actions if a.dest == "command").choices)
    checked = 0
    for argv in calls:
        if argv[0] in registered:
            parser.parse_args(argv)  # SystemExit(2) on an unknown or malformed option
            checked += 1
    assert checked == 8 + searched  # data (x3), deform, train, baseline train, evaluate (x2 or x3)
    train = next(c for c in calls if c[0] == "train")
    assert train[train.index("--val-data") + 1] == str(tmp_path / "data" / "val")  # DMNT holds out no training image
    centers = [c[c.index("--center") + 1] for c in calls if c[0] == "evaluate"]
    assert centers == (["known", "search", "known"] if searched else ["known", "known"])
    base = next(c for c in calls if c[0] == "baseline")
    assert ("--no-augment" in base) == (real_stages.preset(name)["baseline"].get("augment") is False)


def _fake_commands(calls):
    """Stand-ins for the stage commands that write what each real one leaves behind."""

    def call(argv):
        argv = [str(a) for a in argv]
        calls.append(argv[0] if argv[0] != "baseline" else "baseline")
        opt = lambda name: Path(argv[argv.index(name) + 1])  # noqa: E731
        if argv[0] == "data":
            opt("--out").mkdir(parents=True, exist_ok=True)
            (opt("--out") / "meta.json").write_text("{}")
        elif argv[0] == "deform":
            opt("--checkpoint-dir").mkdir(parents=True, exist_ok=True)
            for c in argv[argv.index("--categories") + 1:argv.index("--categories") + 3]:
                (opt("--checkpoint-dir") / f"{c}.pt").write_text("")
        elif argv[0] == "train":
            opt("--out").mkdir(parents=True, exist_ok=True)
            (opt("--out") / "model.pt").write_text("")
        elif argv[0] == "baseline":
            opt("--out").mkdir(parents=True, exist_ok=True)
            (opt("--out") / "run.json").write_text("{}")
        elif argv[0] == "evaluate":
            from dmnt_lib.evaluate import eval_name

            levels = [int(x) for x in argv[argv.index("--levels") + 1:argv.index("--per-category")]]
            d = opt("--run") / "eval" / eval_name(opt("--data"), levels, int(opt("--per-category").name),
                                                  "--quick" in argv, center=str(opt("--center")))
            d.mkdir(parents=True, exist_ok=True)
            (d / "results.json").write_text("{}")
            (d / "predictions.jsonl").write_text("")

    return call


def test_real_stage_graph_refuses_and_redoes_only_what_depends(tmp_path, monkeypatch, capsys):
    import dmnt_lib.figures.cli as fig_cli
    from dmnt_lib.__main__ import main

    calls = []
    monkeypatch.setattr(real_stages, "cli_call", _fake_commands(calls))

    def fake_figures(run, data, out, baseline=None, **kw):
        calls.append("figures")
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "fig4_categories.png").write_text("")
        return [Path(out) / "fig4_categories.png"]

    monkeypatch.setattr(fig_cli, "make_figures", fake_figures)
    argv = ["reproduce", "--preset", "tiny", "--out", str(tmp_path / "run")]
    assert main(argv + ["--dry-run"]) == 0
    assert capsys.readouterr().out.count("run: not finished") == 10
    assert main(argv) == 0
    assert calls == ["data", "data", "data", "deform", "train", "baseline", "evaluate", "evaluate", "evaluate", "figures"]
    out = capsys.readouterr().out
    assert sum(line.startswith("[") for line in out.splitlines()) == 10 and "| train | ran |" in out
    calls.clear()
    argv += ["--set", "train.epochs=3"]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "train: epochs: 1 -> 3" in err and "--redo" in err and calls == []
    assert main(argv + ["--set", "nope=1"]) == 2 and "unknown preset field" in capsys.readouterr().err
    assert main(argv + ["--redo"]) == 0
    # Only the DMNT branch reruns: train, its two evaluations, the figures; data, deform and the baseline are kept.
    assert calls == ["train", "evaluate", "evaluate", "figures"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [r["status"] for r in summary["stages"]] == ["skipped"] * 4 + ["ran", "skipped", "ran", "ran", "skipped", "ran"]
    # Another figures folder (notebook 07 draws into RUN/figures, `make demo` into figures/) is drawn
    # there, without a refusal and without touching the evaluations; back to the first is a redraw too.
    calls.clear()
    assert main(argv + ["--figures", str(tmp_path / "elsewhere")]) == 0
    assert calls == ["figures"] and (tmp_path / "elsewhere" / "fig4_categories.png").is_file()
    assert main(argv) == 0 and calls == ["figures", "figures"]
    assert main(argv) == 0 and calls == ["figures", "figures"]  # complete again: nothing


def test_resume_flag_after_an_interruption(tmp_path):
    """Both trainers refuse a folder holding a checkpoint or (the baseline before its first epoch ends) a
    run.json unless --resume: the stage passes it in both cases, and not for a fresh folder."""
    assert real_stages._resume(tmp_path) == []
    (tmp_path / "run.json").write_text("{}")
    assert real_stages._resume(tmp_path) == ["--resume"]
    (tmp_path / "run.json").unlink()
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert real_stages._resume(tmp_path) == ["--resume"]


def test_moved_stage_reruns_without_refusal_or_clearing(tmp_path):
    calls = []
    keep = tmp_path / "keep.txt"  # what a clear would remove

    def stage(where, inputs=()):
        def run():
            calls.append(where)
            (tmp_path / where).write_text(where)

        return Stage("draw", {"out": where, "dpi": 100}, run, outputs=[tmp_path / where], clear=[keep],
                     inputs=list(inputs), movable=("out",))

    log = lambda s: None  # noqa: E731
    Pipeline(tmp_path, [stage("x.png")], log=log).run()
    keep.write_text("keep")
    plan = Pipeline(tmp_path, [stage("y.png")], log=log).plan()
    assert [p.status for p in plan] == ["moved"] and 'out: "x.png" -> "y.png"' in plan[0].reason
    Pipeline(tmp_path, [stage("y.png")], log=log).run()  # no ConfigChanged
    assert calls == ["x.png", "y.png"] and keep.read_text() == "keep"  # nothing cleared
    other = stage("y.png")
    other.config["dpi"] = 200  # a real change next to a move is still refused
    assert [p.status for p in Pipeline(tmp_path, [other], log=log).plan()] == ["changed"]
    # Moved *and* an upstream recomputed: stale, so its old outputs are cleared as for any stale stage.
    up = tmp_path / "up"
    up.mkdir()
    def write_src():
        (up / "s").write_text("1")

    src = Stage("src", {"v": 1}, write_src, outputs=[up / "s"])
    Pipeline(up, [src, stage("x.png", ["src"])], log=log).run()
    src.config["v"] = 2
    assert [p.status for p in Pipeline(up, [src, stage("z.png", ["src"])], log=log).plan()] == ["changed", "stale"]


@pytest.mark.parametrize("item, message", [
    ("image_size=abc", "--set image_size: must be a positive integer, got 'abc'"),
    ("evaluate.levels=2", "--set evaluate.levels: must be a non-empty list of distinct occlusion levels"),
    ("evaluate.levels=[0,5]", "--set evaluate.levels: must be a non-empty list of distinct occlusion levels"),
    ("evaluate.levels=[0,0]", "--set evaluate.levels: must be a non-empty list of distinct occlusion levels"),
    ("train_data=5", "--set train_data: a section of fields (train_data.per_category"),
    ("train.set=5", "--set train.set: must be a JSON object"),
    ("train.epoch=10", "--set train.epoch: unknown preset field (known: train.quick, train.epochs"),
    ("train_data.per_categroy=5", "--set train_data.per_categroy: unknown preset field"),
    ("train.set.texture_sise=64", "--set train.set: ['texture_sise'] are not TrainConfig or ModelConfig fields"),
    ("categories=[\"car\",\"ship\"]", "--set categories: must be a non-empty list of distinct categories"),
    ("evaluate.center=middle", '--set evaluate.center: must be "known" or "search"'),
    ("baseline.epochs=true", "--set baseline.epochs: must be a positive integer, got True"),
])
def test_bad_set_values_are_refused_naming_the_key(item, message, capsys):
    from dmnt_lib.__main__ import main
    from dmnt_lib.reproduce.cli import apply_overrides

    with pytest.raises(ValueError) as info:
        apply_overrides(real_stages.preset("tiny"), [item])
    assert message in str(info.value)
    assert main(["reproduce", "--preset", "tiny", "--dry-run", "--set", item]) == 2
    assert message in capsys.readouterr().err


def test_every_preset_passes_its_own_check():
    from dmnt_lib.reproduce.cli import apply_overrides

    for name in real_stages.PRESETS:
        assert real_stages.check_preset(real_stages.preset(name)) == real_stages.PRESETS[name]
    partial = real_stages.preset("tiny")
    del partial["baseline"]
    with pytest.raises(ValueError, match="the preset config lacks baseline"):
        real_stages.check_preset(partial)
    good = apply_overrides(real_stages.preset("tiny"), ["train.set.texture_size=32", "evaluate.levels=[0,3]"])
    assert good["train"]["set"]["texture_size"] == 32 and good["evaluate"]["levels"] == [0, 3]


def test_device_reaches_every_stage_that_computes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(real_stages, "cli_call", lambda argv: calls.append([str(a) for a in argv]))
    for s in real_stages.build_stages(tmp_path, real_stages.preset("tiny"), device="cuda:1")[3:9]:
        s.run()
    assert [c[0] for c in calls] == ["deform", "train", "baseline", "evaluate", "evaluate", "evaluate"]
    for argv in calls:
        assert argv[argv.index("--device") + 1] == "cuda:1", argv
