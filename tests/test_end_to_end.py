"""``reproduce --preset tiny`` end to end with the real stages: every results.json field, every
figure, and a second run that does no work.

The run goes to ``cached_run_dir("tiny")`` (wiped first, so it starts from scratch) and is left
there: notebook 07 reuses it in quick mode instead of training its own. This file's name sorts
before ``test_notebooks.py`` so that, in a full ``make test``, the notebook finds it finished.
"""

import json
import shutil

import pytest

from dmnt_lib.reproduce.cli import cached_run_dir


def _missing_stage_commands() -> list[str]:
    from dmnt_lib.__main__ import build_parser

    parser = build_parser()
    registered = set(next(a for a in parser._actions if a.dest == "command").choices)
    missing = [c for c in ("data", "deform", "train", "baseline", "evaluate") if c not in registered]
    if "evaluate" in registered:  # evaluate needs each run kind's predictor module
        import importlib.util

        from dmnt_lib.evaluate import LAZY_PREDICTORS

        def absent(module):
            try:
                return importlib.util.find_spec(module) is None
            except ModuleNotFoundError:  # its parent package is missing too
                return True

        missing += [f"{m} (the {k!r} predictor)" for k, m in LAZY_PREDICTORS.items() if absent(m)]
    return missing


@pytest.mark.slow
@pytest.mark.skipif(bool(_missing_stage_commands()), reason=f"stage commands not in this checkout yet: "
                    f"{', '.join(_missing_stage_commands())}")
def test_reproduce_tiny_end_to_end(capsys):
    from dmnt_lib.__main__ import main
    from dmnt_lib.figures.cli import FIGURE_FILES

    out = cached_run_dir("tiny")
    figs = out / "figures"
    shutil.rmtree(out, ignore_errors=True)
    assert main(["reproduce", "--preset", "tiny", "--out", str(out), "--figures", str(figs)]) == 0
    log = capsys.readouterr().out
    assert sum(line.startswith("[") and "running" in line for line in log.splitlines()) == 10
    assert "re-ran" not in log  # evaluate stored each drawn pose and mask (only Fig. 6's causes re-run `diagnose`)
    keys = {"n", "acc_pi6", "acc_pi18", "median_deg", "cls_acc", "miou", "acc_pi6_pred_cls", "n_undetected"}
    found = {}
    for run in ("dmnt", "baseline"):
        for res_path in (out / run / "eval").glob("*/results.json"):
            res = json.loads(res_path.read_text())
            assert {"method", "config", "levels"} <= set(res) and sorted(res["levels"]) == ["0", "1", "2", "3"]
            for level, row in res["levels"].items():
                assert keys <= set(row), (run, level, keys - set(row))
                assert row["n"] == 2  # tiny: 2 categories x 1 image per level
            found[(run, res.get("config", {}).get("center", "-"))] = res_path.parent.name
    # DMNT evaluated with the centre given and searched, the baseline once
    assert set(found) == {("dmnt", "known"), ("dmnt", "search"), ("baseline", "-")}, found
    from dmnt_lib.reproduce.stages import finished_eval_name

    assert finished_eval_name(out) == found[("dmnt", "known")]  # what notebook 07 reads: this evaluation
    assert finished_eval_name(out, "evaluate-dmnt-search") == found[("dmnt", "search")]
    from dmnt_lib.figures.cli import load_evaluations, with_searched

    ev = load_evaluations(out / "dmnt", out / "data/test", out / "baseline", eval_name=found[("dmnt", "known")])
    rows, _ = with_searched(ev["results"], ev["evals"], out / "dmnt", out / "data/test", found[("dmnt", "search")])
    assert list(rows) == ["DMNT, centre given", "DMNT, centre searched", "MT Mask R-CNN"]  # notebook 07's table
    assert rows["DMNT, centre given"] is ev["results"]["DMNT"] and rows["DMNT, centre searched"]["config"]["center"] == "search"
    assert with_searched(ev["results"], ev["evals"], out / "dmnt", out / "data/test")[0] is ev["results"]
    table = (figs / "results.md").read_text()
    assert "| L0 | DMNT, centre given |" in table and "| L0 | DMNT, centre searched |" in table
    assert finished_eval_name(out / "nowhere") is None
    for f in FIGURE_FILES + ["training_loss.png"]:  # Fig. 3 from the trained model too
        assert (figs / f).stat().st_size > 0, f
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["stages"]] == ["ran"] * 10
    # A second run on complete outputs does no work: every stage skipped, no file touched.
    before = {p: p.stat().st_mtime_ns for p in list(out.rglob("*")) + list(figs.rglob("*")) if "summary" not in p.name}
    assert main(["reproduce", "--preset", "tiny", "--out", str(out), "--figures", str(figs)]) == 0
    assert [r["status"] for r in json.loads((out / "summary.json").read_text())["stages"]] == ["skipped"] * 10
    after = {p: p.stat().st_mtime_ns for p in list(out.rglob("*")) + list(figs.rglob("*")) if "summary" not in p.name}
    assert after == before
