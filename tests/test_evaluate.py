"""The shared evaluation: metrics of known predictions, resumable predictions.jsonl, results schema, run kinds."""

import json
import math

import numpy as np
import pytest
import torch

from dmnt_lib import evaluate as ev
from dmnt_lib.__main__ import main
from dmnt_lib.camera import pose_to_rotation, rotation_error
from dmnt_lib.data import PoseDataset
from dmnt_lib.data.synthetic import generate_dataset

CATS = ("car", "chair", "bottle")


@pytest.fixture(scope="module")
def testset(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata") / "test"
    generate_dataset(root, 2, (0, 1), seed=1, image_size=48, categories=CATS, progress=False)
    return root


class Oracle:
    """Answers from the ground truth (looked up by key) with controlled mistakes."""

    method = "oracle"

    def __init__(self, root, azimuth_offset=0.0, wrong=(), undetected=(), fail_after=None, empty_mask=()):
        ds = PoseDataset(root, None, (0, 1))
        self.gt = {f"L{int(it['level'])}/{it['category']}/{it['id']}": it for it in (ds[i] for i in range(len(ds)))}
        self.azimuth_offset, self.wrong, self.undetected, self.empty_mask = azimuth_offset, wrong, undetected, empty_mask
        self.fail_after, self.calls, self.seen = fail_after, 0, []
        self.config = {"azimuth_offset": azimuth_offset}

    def predict(self, batch):
        out = []
        for b in batch:
            assert set(b) == set(ev.PREDICTOR_INPUT_KEYS)  # no ground-truth pose or mask reaches a predictor
            key = f"L{int(b['level'])}/{b['category']}/{b['id']}"
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt  # simulates a kill mid-evaluation
            self.calls += 1
            self.seen.append(key)
            g = self.gt[key]
            if key in self.undetected:
                out.append({"detected": False, "time_s": 0.1})
                continue
            pose = (float(g["azimuth"]) + self.azimuth_offset, float(g["elevation"]), float(g["theta"]))
            cat = "sofa" if key in self.wrong else b["category"]
            mask = np.zeros_like(g["mask"].numpy()) if key in self.empty_mask else g["mask"].numpy()
            out.append({"category": cat, "scores": {cat: 1.0}, "pose": pose, "pose_gt_category": pose,
                        "amodal_mask": mask, "detected": True, "time_s": 0.1})
        return out


def test_perfect_predictions_score_perfectly(testset, tmp_path):
    res = ev.evaluate_run(Oracle(testset), testset, levels=(0, 1), out=tmp_path / "e", progress=False, echo=None)
    assert set(res["levels"]) == {"0", "1"}
    for m in res["levels"].values():
        assert m["n"] == 2 * len(CATS)
        assert m["acc_pi6"] == m["acc_pi18"] == m["cls_acc"] == m["acc_pi6_pred_cls"] == 1.0
        assert m["median_deg"] < 0.01 and m["miou"] == 1.0 and m["n_undetected"] == 0


def test_azimuth_offset_gives_exactly_that_rotation_error(testset, tmp_path):
    # a change of azimuth is a rotation about the vertical axis: the geodesic error equals it
    res = ev.evaluate_run(Oracle(testset, azimuth_offset=math.radians(20)), testset, levels=(0,), out=tmp_path / "e",
                          progress=False, echo=None)
    m = res["levels"]["0"]
    assert m["median_deg"] == pytest.approx(20.0, abs=1e-3)
    assert m["acc_pi6"] == 1.0 and m["acc_pi18"] == 0.0
    flip = ev.evaluate_run(Oracle(testset, azimuth_offset=math.pi), testset, levels=(0,), out=tmp_path / "f",
                           progress=False, echo=None)
    assert flip["levels"]["0"]["acc_pi6"] == 0.0 and flip["diagnostics"]["0"]["acc_pi6_flip"] == 1.0


def test_mistakes_and_undetected_images_count_as_wrong(testset, tmp_path):
    keys = sorted(Oracle(testset).gt)
    l0 = [k for k in keys if k.startswith("L0/")]
    o = Oracle(testset, wrong={l0[0]}, undetected={l0[1]}, empty_mask={l0[2]})
    res = ev.evaluate_run(o, testset, levels=(0,), out=tmp_path / "e", progress=False, echo=None)
    m, n = res["levels"]["0"], len(l0)
    assert m["n_undetected"] == 1
    assert m["cls_acc"] == pytest.approx((n - 2) / n)  # the wrong class and the undetected image
    assert m["acc_pi6"] == pytest.approx((n - 1) / n)  # the undetected image: 180 degrees
    assert m["miou"] == pytest.approx((n - 2) / n)  # the undetected image and the empty mask
    recs = {r["key"]: r for r in ev.read_predictions(tmp_path / "e" / "predictions.jsonl")}
    assert recs[l0[1]]["pose_error_deg"] == 180.0 and recs[l0[1]]["iou"] == 0.0 and recs[l0[1]]["pred_category"] is None


def test_record_pose_error_is_the_camera_rotation_error(testset):
    ds = PoseDataset(testset, None, (0,))
    item = ds[0]
    pose = (0.3, 0.2, -0.1)
    rec = ev.image_record(item, {"category": "car", "pose": pose, "pose_gt_category": pose,
                                 "amodal_mask": item["mask"].numpy(), "detected": True, "time_s": 0.0})
    gt = pose_to_rotation(item["azimuth"].double(), item["elevation"].double(), item["theta"].double()).double()
    ref = rotation_error(gt, pose_to_rotation(*[torch.tensor([a], dtype=torch.float64) for a in pose]).double())
    assert rec["pose_error_deg"] == pytest.approx(math.degrees(float(ref[0])), abs=1e-6)


def test_interrupted_evaluation_resumes_without_recomputing(testset, tmp_path):
    out = tmp_path / "e"
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate_run(Oracle(testset, fail_after=5), testset, levels=(0, 1), out=out, progress=False, echo=None)
    first = ev.read_predictions(out / "predictions.jsonl")
    assert len(first) == 5
    # a kill in the middle of a write leaves a partial line: it is cut off and that image redone
    with open(out / "predictions.jsonl", "a") as f:
        f.write('{"key": "L1/car/car_0')
    second = Oracle(testset)
    res = ev.evaluate_run(second, testset, levels=(0, 1), out=out, progress=False, echo=None)
    assert len(second.seen) == 4 * len(CATS) - 5
    assert not set(second.seen) & {r["key"] for r in first}
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 4 * len(CATS) and len({json.loads(l)["key"] for l in lines}) == len(lines)
    fresh = ev.evaluate_run(Oracle(testset), testset, levels=(0, 1), out=tmp_path / "fresh", progress=False, echo=None)
    assert res["levels"] == fresh["levels"] and res["per_category"] == fresh["per_category"]
    # a third call computes nothing
    third = Oracle(testset)
    ev.evaluate_run(third, testset, levels=(0, 1), out=out, progress=False, echo=None)
    assert third.seen == []


def test_read_predictions_rejects_a_corrupt_middle_line(tmp_path):
    p = tmp_path / "predictions.jsonl"
    p.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match="line 2 is corrupt"):
        ev.read_predictions(p)
    p.write_text('{"key": "a"}\n{"key": "b"}')  # complete last line without its newline: kept, repaired
    assert [r["key"] for r in ev.read_predictions(p)] == ["a", "b"]
    assert p.read_text() == '{"key": "a"}\n{"key": "b"}\n'


def test_results_files_schema_and_tables(testset, tmp_path):
    out = tmp_path / "e"
    res = ev.evaluate_run(Oracle(testset), testset, levels=(0, 1), per_category=1, out=out, progress=False, echo=None)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(res))
    assert set(saved) == {"method", "config", "evaluation", "levels", "per_category", "diagnostics"}
    assert saved["method"] == "oracle" and saved["config"] == {"azimuth_offset": 0.0}
    for m in saved["levels"].values():
        assert tuple(m) == ev.METRIC_KEYS and m["n"] == len(CATS)
    assert set(saved["per_category"]) == set(CATS)
    assert set(saved["per_category"]["car"]["0"]) == set(ev.METRIC_KEYS) | {"acc_pi6_flip"}
    md = (out / "results.md").read_text().splitlines()
    assert len(md) == 4 and md[2].startswith("| L0 | 3 | 1.000")
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert csv_rows[0].split(",")[0] == "level" and len(csv_rows) == 3
    both = ev.markdown_table([res, {**res, "method": "other"}]).splitlines()
    assert len(both) == 6 and both[2].startswith("| oracle | L0 |") and both[4].startswith("| other | L0 |")
    assert ev.summarize(ev.read_predictions(out / "predictions.jsonl"))["levels"] == res["levels"]


def test_other_options_in_the_same_folder_are_refused(testset, tmp_path):
    ev.evaluate_run(Oracle(testset), testset, levels=(0,), out=tmp_path / "e", progress=False, echo=None)
    with pytest.raises(ValueError, match="other options"):
        ev.evaluate_run(Oracle(testset), testset, levels=(0, 1), out=tmp_path / "e", progress=False, echo=None)


def test_bad_predictions_are_reported(testset, tmp_path):
    class Bad(Oracle):
        def predict(self, batch):
            out = super().predict(batch)
            out[0]["amodal_mask"] = out[0]["amodal_mask"][:-1]
            return out

    with pytest.raises(ValueError, match="amodal_mask"):
        ev.evaluate_run(Bad(testset), testset, levels=(0,), out=tmp_path / "e", progress=False, echo=None)
    item = PoseDataset(testset, None, (0,))[0]
    good = {"category": "car", "pose": (0, 0, 0), "pose_gt_category": (0, 0, 0), "amodal_mask": item["mask"].numpy(),
            "detected": True}
    with pytest.raises(ValueError, match="'category'"):
        ev.image_record(item, {**good, "category": "cat"})
    with pytest.raises(ValueError, match="'pose'"):
        ev.image_record(item, {**good, "pose": (0, float("nan"), 0)})
    with pytest.raises(ValueError, match="pose_gt_category"):
        ev.image_record(item, {**good, "pose_gt_category": (0, 0)})


def test_bad_arguments(testset, tmp_path):
    o = Oracle(testset)
    for kw, match in [({"levels": (5,)}, "levels"), ({"levels": "01"}, "levels"), ({"per_category": 0}, "per_category"),
                      ({"batch_size": 0}, "batch_size")]:
        with pytest.raises((ValueError, TypeError), match=match):
            ev.evaluate_run(o, testset, out=tmp_path / "e", progress=False, echo=None, **kw)
    with pytest.raises(ValueError, match="out is required"):
        ev.evaluate_run(o, testset, progress=False, echo=None)
    with pytest.raises(FileNotFoundError):
        ev.evaluate_run(o, tmp_path / "missing", out=tmp_path / "e", progress=False, echo=None)
    with pytest.raises(ValueError, match="must not be empty"):
        ev.summarize([])


def test_run_kinds_are_recognised_and_unknown_runs_refused(testset, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not a recognised run"):
        ev.run_kind(empty)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "run.json").write_text('{"kind": "nope"}')
    with pytest.raises(ValueError, match="'nope' has no predictor"):
        ev.load_predictor(tmp_path / "odd")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{")
    with pytest.raises(ValueError, match="run.json"):
        ev.run_kind(tmp_path / "broken")

    # a registered kind is evaluated through the CLI, into RUN/eval/<name>
    seen = {}

    def loader(run_dir, device, args):
        seen.update(args, device=device)
        return Oracle(testset)

    monkeypatch.setitem(ev.PREDICTORS, "oracle", loader)
    monkeypatch.setenv("DMNT_QUICK", "0")  # the CLI's --quick default follows it
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"kind": "oracle"}')
    assert main(["evaluate", "--run", str(run), "--data", str(testset), "--levels", "0", "--per-category", "1",
                 "--center", "search", "--no-progress"]) == 0
    assert seen == {"center": "search", "quick": False, "device": "cpu"}
    name = ev.eval_name(testset, [0], 1, False, center="search")
    assert json.loads((run / "eval" / name / "results.json").read_text())["levels"]["0"]["n"] == len(CATS)
    assert "| L0 | 3 |" in capsys.readouterr().out
    assert main(["evaluate", "--run", str(empty), "--data", str(testset), "--no-progress"]) == 2
    assert "not a recognised run" in capsys.readouterr().err
