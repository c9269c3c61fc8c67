"""The figures: record reading, mask RLE, the failure rule, and every figure function on a tiny
dataset with synthetic predictions (perturbed true poses, their rendered silhouettes)."""

import json
import math

import numpy as np
import pytest
import torch

from dmnt_lib.camera import pose_to_cameras, pose_to_rotation, rotation_error
from dmnt_lib.figures import paper
from dmnt_lib.figures.records import (
    Record, decode_mask, encode_mask, failure_cases, failure_kinds, load_records, normalize,
    pick_per_category, pick_successes, select_failures,
)
from dmnt_lib.render import render_mask

CATS = ["car", "chair", "boat"]


@pytest.fixture(scope="module")
def test_images(tmp_path_factory):
    from dmnt_lib.data import generate_dataset

    root = tmp_path_factory.mktemp("figdata") / "test"
    generate_dataset(root, 2, [0, 1, 2, 3], 1, 64, CATS, progress=False)
    return paper.TestImages(root)


def _synthetic_records(images, seed=0, wrong_every=5):
    """A prediction per test image: the true pose plus noise growing with the level, the
    silhouette of CAD model 01 there, and its measured error and IoU (what evaluate computes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, (cat, level, sid, _, _) in enumerate(images.source.items):
        s = images.sample(sid, level)
        d = torch.randn(3, generator=g) * (0.05 + 0.4 * level)
        pose = {"azimuth": s.azimuth + float(d[0]), "elevation": s.elevation + float(d[1]),
                "theta": s.theta + float(d[2]), "distance": s.distance, "principal": list(map(float, s.principal))}
        err = float(rotation_error(pose_to_rotation(s.azimuth, s.elevation, s.theta),
                                   pose_to_rotation(pose["azimuth"], pose["elevation"], pose["theta"]))[0])
        cams = pose_to_cameras(pose["azimuth"], pose["elevation"], pose["theta"], pose["distance"], s.image.shape[:2],
                               focal=s.focal, principal=torch.tensor(pose["principal"]))
        m = render_mask(images.cad_mesh(cat, 1), cams, s.image.shape[:2])[0].numpy()
        pred = cat if n % wrong_every else CATS[(CATS.index(cat) + 1) % len(CATS)]
        out.append(Record(sid, level, cat, pred, math.degrees(err), float((m & s.mask).sum() / (m | s.mask).sum()),
                          True, pose, m))
    return out


@pytest.fixture(scope="module")
def records(test_images):
    return _synthetic_records(test_images)


# --------------------------------------------------------------------------- records


def test_mask_rle_round_trip():
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 9)) < 0.5, np.ones((3, 4), bool), np.zeros((5, 2), bool), np.eye(6, dtype=bool)]
    for m in masks:
        rle = json.loads(json.dumps(encode_mask(m)))  # survives JSON
        assert rle["size"] == list(m.shape) and sum(rle["counts"]) == m.size
        np.testing.assert_array_equal(decode_mask(rle), m)
    assert encode_mask(np.ones((2, 2), bool))["counts"] == [0, 4]
    with pytest.raises(ValueError, match="sum to H"):
        decode_mask({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="mask must be"):
        encode_mask(np.zeros(4, bool))


def test_normalize_aliases_undetected_and_errors():
    r = normalize({"sample_id": "car_1", "level": 2, "gt_category": "car", "predicted_category": "bus",
                   "error_deg": 12.5, "amodal_iou": 0.25, "mask_rle": encode_mask(np.eye(3, dtype=bool))})
    assert (r.id, r.level, r.category, r.pred_category, r.pose_error_deg, r.iou) == ("car_1", 2, "car", "bus", 12.5, 0.25)
    assert r.amodal_mask.sum() == 3 and not r.correct_class
    u = normalize({"id": "a", "level": 0, "category": "car", "pred_category": None, "pose_error_deg": None,
                   "iou": None, "detected": False})
    assert not u.detected and u.pose_error_deg == 180.0 and u.iou == 0.0 and failure_kinds(u) == ["class", "segmentation"]
    # evaluate's own line: pred_pose is [azimuth, elevation, theta] under the ground-truth category.
    e = normalize({"key": "L1/car/car_2", "id": "car_2", "level": 1, "category": "car", "pred_category": "car",
                   "detected": True, "pose_error_deg": 3.0, "iou": 0.8, "pred_pose": [0.1, 0.2, 0.3],
                   "gt_pose": [0.1, 0.2, 0.25]})
    assert e.pose == {"azimuth": 0.1, "elevation": 0.2, "theta": 0.3} and e.amodal_mask is None
    with pytest.raises(ValueError, match="'level'"):
        normalize({"id": "a", "category": "car"})
    with pytest.raises(ValueError, match="pose_error_deg"):
        normalize({"id": "a", "level": 0, "category": "car", "pred_category": "car", "pose_error_deg": "x"})
    with pytest.raises(TypeError, match="dict"):
        normalize([1])


def test_load_records_resumed_and_truncated(tmp_path):
    rows = [{"id": "a", "level": 0, "category": "car", "pred_category": "car", "pose_error_deg": 50, "iou": 0.9},
            {"id": "a", "level": 0, "category": "car", "pred_category": "car", "pose_error_deg": 5, "iou": 0.9},
            {"id": "b", "level": 1, "category": "bus", "pred_category": "car", "pose_error_deg": 5, "iou": 0.9}]
    p = tmp_path / "predictions.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"id": "c", "lev')
    recs = load_records(p)
    assert [(r.id, r.pose_error_deg) for r in recs] == [("a", 5.0), ("b", 5.0)]  # later line wins, torn line skipped
    p.write_text('{"id": "c", "lev\n' + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=":1: not JSON"):
        load_records(p)
    with pytest.raises(FileNotFoundError):
        load_records(tmp_path / "nope.jsonl")


def _rec(i, cat, level, pred, err, iou):
    return Record(f"{cat}_{i}", level, cat, pred, err, iou)


def test_failure_rule_picks_the_right_items():
    recs = [
        _rec(0, "car", 0, "car", 5, 0.9),      # fine
        _rec(1, "car", 2, "bus", 40, 0.8),     # class, L2
        _rec(2, "bus", 0, "car", 10, 0.8),     # class, L0 -> first class pick
        _rec(3, "bus", 1, "bus", 170, 0.3),    # pose 170 (worst) and segmentation 0.3
        _rec(4, "bus", 1, "bus", 120, 0.7),    # pose 120, same category as #3
        _rec(5, "car", 3, "car", 90, 0.6),     # pose 90
        _rec(6, "boat", 3, "boat", 29.9, 0.1),  # not a pose failure (< 30), segmentation 0.1
        _rec(7, "boat", 2, "boat", 20, 0.45),  # segmentation 0.45
        _rec(8, "car", 1, "car", 35, 0.2),     # pose 35, segmentation 0.2
    ]
    assert [r.id for r in failure_cases(recs, "class")] == ["bus_2", "car_1"]
    assert [r.id for r in failure_cases(recs, "pose")] == ["bus_3", "bus_4", "car_5", "car_8"]
    assert [r.id for r in failure_cases(recs, "segmentation")] == ["boat_6", "car_8", "bus_3", "boat_7"]
    assert [r.id for r in failure_cases(recs, "pose", level=1)] == ["bus_3", "bus_4", "car_8"]
    chosen = select_failures(recs, n_per_kind=2)
    # pose: worst is bus_3; bus_4 is the next worst but the same category while car_5 is another one.
    # segmentation: boat_6 first; car_8 next (bus_3 is already shown as a pose failure).
    assert [(k, r.id) for k, r in chosen] == [("class", "bus_2"), ("class", "car_1"), ("pose", "bus_3"),
                                              ("pose", "car_5"), ("segmentation", "boat_6"), ("segmentation", "car_8")]
    # With room for more, a category repeats only after every other category had its turn.
    more = [r.id for k, r in select_failures(recs, n_per_kind=3) if k == "pose"]
    assert more == ["bus_3", "bus_4", "car_5"]
    assert select_failures(recs, 1, levels=[3]) == [("pose", recs[5]), ("segmentation", recs[6])]
    with pytest.raises(ValueError, match="n_per_kind"):
        select_failures(recs, 0)
    with pytest.raises(ValueError, match="kind"):
        failure_cases(recs, "shape")


def test_pick_per_category_is_smallest_id_per_level():
    recs = [_rec(3, "car", 0, "car", 1, 1), _rec(1, "car", 0, "car", 1, 1), _rec(0, "car", 1, "car", 1, 1),
            _rec(2, "bus", 0, "bus", 1, 1)]
    assert [r.id for r in pick_per_category(recs, 0)] == ["bus_2", "car_1"]
    assert [r.id for r in pick_per_category(recs, 0, ["car", "boat", "bus"])] == ["car_1", "bus_2"]


def test_pick_successes_is_the_best_correct_prediction_else_the_first_image():
    recs = [_rec(1, "car", 0, "car", 12, 0.70), _rec(2, "car", 0, "car", 5, 0.90), _rec(3, "car", 0, "bus", 2, 0.95),
            _rec(4, "car", 0, "car", 40, 0.99), _rec(5, "bus", 0, "car", 5, 0.9), _rec(6, "bus", 0, "bus", 31, 0.8),
            _rec(7, "car", 1, "car", 5, 0.5)]
    picked = pick_successes(recs, 0)
    # car: the right class within 30° with the highest IoU (not the wrong class at 0.95, not the 40° one at 0.99);
    # bus: no success, so its first image, as pick_per_category would
    assert [r.id for r in picked] == ["bus_5", "car_2"]
    assert [r.id for r in pick_successes(recs, 1)] == ["car_7"]
    assert pick_successes(recs, 2) == []


# --------------------------------------------------------------------------- drawing


def test_overlay_draws_exactly_the_rendered_silhouette(test_images):
    s = test_images.sample("car_00000", 0)
    pose = {"azimuth": s.azimuth, "elevation": s.elevation, "theta": s.theta, "distance": s.distance,
            "principal": s.principal}
    mesh = test_images.cad_mesh("car", s.cad_index)
    shown, sil = paper.render_overlay(s.image, mesh, pose, s.focal)
    np.testing.assert_array_equal(sil, s.mask)  # the object's own CAD model at its true pose = its amodal mask
    changed = np.abs(shown - s.image / 255.0).max(-1) > 1e-6
    assert not changed[~sil].any() and changed[sil].mean() > 0.9


def _check_png(path, min_std=0.05):
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    assert img.shape[0] > 50 and img.shape[1] > 50
    assert img.std() > min_std  # not blank
    return img


@pytest.mark.slow
def test_figure_functions_panels_and_content(test_images, records, tmp_path):
    import matplotlib.pyplot as plt

    n_cat = len(CATS)
    fig = paper.build_figure4(records, test_images)
    assert paper.image_panels(fig) == n_cat
    plt.close(fig)
    fig = paper.build_figure5(records, test_images)
    assert paper.image_panels(fig) == 3 * n_cat
    plt.close(fig)
    fig = paper.build_comparison(records, _synthetic_records(test_images, seed=1), test_images, per_level=2)
    assert paper.image_panels(fig) == 3 * 3 * 2  # gt | A | B rows x (3 levels x 2 images)
    plt.close(fig)
    n_fail = len(select_failures(records, 2))
    assert n_fail >= 3  # the synthetic noise at L2-L3 and the wrong classes make failures of every kind
    fig = paper.build_figure6(records, test_images, n_per_kind=2)
    assert paper.image_panels(fig) == n_fail
    height = fig.get_size_inches()[1]
    plt.close(fig)
    # a two-clause cause: one caption line per clause, and the rows grow to hold them (no overlapping titles)
    causes = {r.key: "features prefer this pose; clutter looks like objects" for _, r in select_failures(records, 2)}
    fig = paper.build_figure6(records, test_images, n_per_kind=2, causes=causes)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles and all(t.endswith("features prefer this pose\nclutter looks like objects") for t in titles)
    rows = len({k for k, _ in select_failures(records, 2)})
    assert fig.get_size_inches()[1] == pytest.approx(height + 2 * 0.25 * rows)  # 4 caption lines instead of 2
    plt.close(fig)
    for name, path in [("fig4", paper.figure4(records, test_images, tmp_path / "f4.png")),
                       ("fig6", paper.figure6(records, test_images, tmp_path / "f6.png", n_per_kind=2))]:
        _check_png(path)


def _results(scale):
    levels = {str(k): {"n": 6, "acc_pi6": scale * (1 - 0.2 * k), "acc_pi18": scale * (0.5 - 0.1 * k),
                       "median_deg": 10.0 + 10 * k / scale, "cls_acc": scale * 0.9, "miou": 0.7 - 0.1 * k,
                       "acc_pi6_pred_cls": scale * 0.8, "n_undetected": 0} for k in range(4)}
    return {"method": "x", "config": {}, "levels": levels}


def test_results_table_and_plot(tmp_path):
    import matplotlib.pyplot as plt

    res = {"DMNT": _results(1.0), "MT Mask R-CNN": _results(0.5)}
    res["MT Mask R-CNN"]["levels"]["3"]["n_undetected"] = 2
    md = paper.results_markdown(res)
    rows = [line for line in md.splitlines() if line.startswith("| L")]
    assert len(rows) == 8 and rows[0].startswith("| L0 | DMNT | 6 |") and "(2 undetected)" in rows[7]
    # Every metric cell is the input value: accuracies in %, the median in degrees.
    cells = rows[2].split("|")[4:9]  # L1 DMNT
    lv = res["DMNT"]["levels"]["1"]
    assert [float(c) for c in cells] == pytest.approx(
        [100 * lv["acc_pi6"], 100 * lv["acc_pi18"], lv["median_deg"], 100 * lv["cls_acc"], 100 * lv["miou"]], abs=0.05)
    fig = paper.build_results_plot(res)
    assert len(fig.axes) == len(paper.METRICS) and all(len(ax.lines) == 2 for ax in fig.axes)
    y = fig.axes[0].lines[1].get_ydata()
    assert list(y) == pytest.approx([100 * res["MT Mask R-CNN"]["levels"][str(k)]["acc_pi6"] for k in range(4)])
    plt.close(fig)
    _check_png(paper.results_plot(res, tmp_path / "results.png"), min_std=0.02)
    with pytest.raises(ValueError, match="levels"):
        paper.results_markdown({"x": {"method": "x"}})
    with pytest.raises(ValueError, match="at least one"):
        paper.results_markdown({})


def test_figures_need_records(test_images):
    with pytest.raises(ValueError, match="Fig. 4"):
        paper.build_figure4([], test_images)
    with pytest.raises(KeyError, match="not in"):
        test_images.sample("car_99999", 0)


def _write_eval(run_dir, records, method, evaluation=None):
    """An ``evaluate``-style folder: predictions.jsonl (pose + RLE mask per image) and results.json."""
    d = run_dir / "eval" / "test"
    d.mkdir(parents=True)
    lines = [json.dumps({"id": r.id, "level": r.level, "category": r.category, "pred_category": r.pred_category,
                         "pose_error_deg": r.pose_error_deg, "iou": r.iou, "detected": True,
                         "pred_pose": [r.pose[k] for k in ("azimuth", "elevation", "theta")],
                         "amodal_mask": encode_mask(r.amodal_mask)}) for r in records]
    (d / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    levels = {}
    for k in sorted({r.level for r in records}):
        rs = [r for r in records if r.level == k]
        err = np.array([r.pose_error_deg for r in rs])
        levels[str(k)] = {"n": len(rs), "acc_pi6": float((err < 30).mean()), "acc_pi18": float((err < 10).mean()),
                          "median_deg": float(np.median(err)), "cls_acc": float(np.mean([r.correct_class for r in rs])),
                          "miou": float(np.mean([r.iou for r in rs])), "acc_pi6_pred_cls": 0.0, "n_undetected": 0}
    (d / "results.json").write_text(json.dumps({"method": method, "config": {}, "levels": levels,
                                                **({"evaluation": evaluation} if evaluation else {})}))


def test_find_eval_prefers_the_given_centre(tmp_path):
    """Without a name, the newest evaluation is drawn, but not a centre-searched one while another exists."""
    import os

    from dmnt_lib.figures.records import find_eval

    for i, name in enumerate(["test_L0_n1_center-known", "test_L0_n1_center-search"]):
        d = tmp_path / "eval" / name
        d.mkdir(parents=True)
        (d / "results.json").write_text("{}")
        os.utime(d / "results.json", (1000 + i, 1000 + i))
    assert find_eval(tmp_path).name == "test_L0_n1_center-known"
    assert find_eval(tmp_path, "test_L0_n1_center-search").name == "test_L0_n1_center-search"
    (tmp_path / "eval" / "test_L0_n1_center-known" / "results.json").unlink()
    assert find_eval(tmp_path).name == "test_L0_n1_center-search"


def test_figures_refuse_evaluations_of_another_test_set(tmp_path, monkeypatch):
    import dmnt_lib.figures.paper as paper
    from dmnt_lib.figures.cli import load_evaluations

    monkeypatch.setattr(paper, "TestImages", lambda data: data)  # no images needed to check the pairing
    data, elsewhere = tmp_path / "test", tmp_path / "elsewhere"
    data.mkdir(), elsewhere.mkdir()
    ev = {"data": str(data), "levels": [0, 1], "per_category": 2}
    _write_eval(tmp_path / "dmnt", [], "DMNT", ev)
    _write_eval(tmp_path / "same", [], "MT Mask R-CNN", ev)
    _write_eval(tmp_path / "other_data", [], "MT Mask R-CNN", {**ev, "data": str(elsewhere)})
    _write_eval(tmp_path / "fewer", [], "MT Mask R-CNN", {**ev, "per_category": 1})
    _write_eval(tmp_path / "levels", [], "MT Mask R-CNN", {**ev, "levels": [0]})
    _write_eval(tmp_path / "moved", [], "MT Mask R-CNN", {**ev, "data": str(tmp_path / "gone")})
    monkeypatch.chdir(tmp_path)  # a relative --data names the same folder
    assert set(load_evaluations(tmp_path / "dmnt", "test", tmp_path / "same")["results"]) == {"DMNT", "MT Mask R-CNN"}
    assert load_evaluations(tmp_path / "dmnt", data, tmp_path / "moved")["images"] == data  # recorded folder gone
    with pytest.raises(ValueError, match="the evaluation .*other_data.* is of .*elsewhere, not --data"):
        load_evaluations(tmp_path / "dmnt", data, tmp_path / "other_data")
    # a searched evaluation is checked the same way (test set, levels, images)
    from dmnt_lib.figures.cli import searched_results

    ref = load_evaluations(tmp_path / "dmnt", data, tmp_path / "same")["results"]["DMNT"]
    assert searched_results(tmp_path / "same", "test", data, ref)[1]["method"] == "MT Mask R-CNN"
    with pytest.raises(ValueError, match="is of .*elsewhere"):
        searched_results(tmp_path / "other_data", "test", data, ref)
    with pytest.raises(ValueError, match="the searched evaluation test .* differs"):
        searched_results(tmp_path / "fewer", "test", data, ref)
    with pytest.raises(ValueError, match="the evaluations differ: .*'per_category': 2.* vs .*'per_category': 1"):
        load_evaluations(tmp_path / "dmnt", data, tmp_path / "fewer")
    with pytest.raises(ValueError, match=r"the evaluations differ: .*'levels': \[0, 1\].* vs .*'levels': \[0\]"):
        load_evaluations(tmp_path / "dmnt", data, tmp_path / "levels")
    (tmp_path / "fewer" / "eval" / "test" / "results.json").write_text('{"levels": ')
    with pytest.raises(ValueError, match="fewer/eval/test/results.json is not valid JSON"):
        load_evaluations(tmp_path / "dmnt", data, tmp_path / "fewer")
    (tmp_path / "fewer" / "eval" / "test" / "results.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="is not an evaluate results file"):
        load_evaluations(tmp_path / "dmnt", data, tmp_path / "fewer")


@pytest.mark.slow
def test_figures_command_writes_every_file(test_images, records, tmp_path, capsys):
    from dmnt_lib.__main__ import main
    from dmnt_lib.figures.cli import FIGURE_FILES

    _write_eval(tmp_path / "dmnt", records, "DMNT")
    _write_eval(tmp_path / "base", _synthetic_records(test_images, seed=2, wrong_every=3), "MT Mask R-CNN")
    out = tmp_path / "figs"
    assert main(["figures", "--run", str(tmp_path / "dmnt"), "--baseline", str(tmp_path / "base"),
                 "--data", str(test_images.source.root), "--out", str(out), "--n-failures", "2"]) == 0
    for name in FIGURE_FILES:
        assert (out / name).stat().st_size > 0, name
    md = (out / "results.md").read_text()
    assert md.count("| L") == 8 and "MT Mask R-CNN" in md
    assert main(["figures", "--run", str(tmp_path / "nope"), "--data", str(test_images.source.root),
                 "--out", str(out)]) == 2
    assert "no evaluation in" in capsys.readouterr().err


@pytest.mark.slow
def test_missing_masks_are_predicted_for_the_shown_images_only(test_images, records, tmp_path):
    """evaluate's lines carry no mask: the run's predictor is re-run on exactly the records given."""
    from dmnt_lib import evaluate
    from dmnt_lib.figures.cli import fill_missing, load_evaluations

    by_key = {r.key: r for r in records}
    seen = []

    class Oracle:  # returns the synthetic prediction of each image (what the run "predicted")
        method, config = "oracle", {}

        def predict(self, batch):
            out = []
            for item in batch:
                r = by_key[(item["id"], int(item["level"]))]
                seen.append(r.key)
                pose = tuple(r.pose[k] for k in ("azimuth", "elevation", "theta"))
                out.append({"category": r.pred_category, "scores": {}, "pose": pose, "pose_gt_category": pose,
                            "amodal_mask": r.amodal_mask, "detected": True, "time_s": 0.0})
            return out

    evaluate.register_predictor("figtest", lambda run_dir, device, args: Oracle())
    run = tmp_path / "run"
    _write_eval(run, records, "oracle")
    (run / "run.json").write_text(json.dumps({"kind": "figtest"}))
    pred = run / "eval" / "test" / "predictions.jsonl"
    lines = [json.loads(line) for line in pred.read_text().splitlines()]
    pred.write_text("".join(json.dumps({k: v for k, v in d.items() if k != "amodal_mask"}) + "\n" for d in lines))
    ev = load_evaluations(run, test_images.source.root)
    recs = ev["records"]["DMNT"]
    assert all(r.amodal_mask is None for r in recs)
    shown = pick_per_category(recs, 2)
    assert fill_missing(shown, run, ev["images"]) == len(shown) == len(CATS)
    assert sorted(seen) == sorted(r.key for r in shown)
    for r in shown:
        np.testing.assert_array_equal(r.amodal_mask, by_key[r.key].amodal_mask)
    assert fill_missing(shown, run, ev["images"]) == 0  # nothing left to fill


def test_evaluate_records_carry_the_mask_the_figures_draw(test_images, records):
    """evaluate's predictions.jsonl line holds the predicted amodal mask (RLE), so the figures need
    no second inference; normalize reads the line back to the same mask and pose."""
    from dmnt_lib.data import PoseDataset
    from dmnt_lib.evaluate import image_record

    ds = PoseDataset(test_images.source.root, ["chair"], [2])
    item = ds[0]
    r = next(x for x in records if x.key == (item["id"], 2))
    pose = tuple(r.pose[k] for k in ("azimuth", "elevation", "theta"))
    line = image_record(item, {"category": "chair", "pose": pose, "pose_gt_category": pose,
                               "amodal_mask": r.amodal_mask, "detected": True, "time_s": 0.0})
    back = normalize(json.loads(json.dumps(line)))
    np.testing.assert_array_equal(back.amodal_mask, r.amodal_mask)
    assert back.pose == pytest.approx({k: r.pose[k] for k in ("azimuth", "elevation", "theta")})
    assert back.pose_error_deg == pytest.approx(r.pose_error_deg, abs=1e-3) and back.iou == pytest.approx(r.iou)
