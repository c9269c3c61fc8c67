"""Diagnostics of render-and-compare (inference/diagnose.py) and the pose-free vote (inference/vote.py), on oracle
features whose truth is known, so every label can be checked; plus the CLI on a tiny trained run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmnt_lib.inference.diagnose import (_pose_kind, diagnose_batch, markdown, pose_error_deg, rule_table,
                                         summarize)
from dmnt_lib.inference.oracle import oracle_features
from dmnt_lib.inference.vote import category_maps, vote_scores
from dmnt_lib.mesh import cuboid_template
from test_inference import CFG, FOCAL, SHAPES, STRIDE, H, W, make_batch, random_poses, world  # noqa: F401 (fixture)


def truths(cat, poses, ims):
    return [{"category": cat, "key": f"{cat}/{i}", "level": 0, "focal": FOCAL, "mask": o.amodal.numpy(),
             "visible_mask": o.visible.numpy(), **{k: p[k] for k in ("azimuth", "elevation", "theta", "distance", "principal")}}
            for i, (p, o) in enumerate(zip(poses, ims))]


def diag(world, feats, tr, cats=tuple(SHAPES), config=CFG, background=None, **kw):
    return diagnose_batch(feats, {c: world["textures"][c] for c in cats}, {c: world["meshes"][c] for c in cats},
                          world["background"] if background is None else background, tr, (H, W), STRIDE, "known",
                          config, **kw)


@pytest.fixture(scope="module")
def box4(world):
    poses = random_poses(4, seed=21, mesh=world["meshes"]["box"])
    feats, _, ims = make_batch(world, "box", poses, seed=500)
    return poses, feats, ims


def test_a_correct_model_is_labelled_correct(world, box4):
    poses, feats, ims = box4
    recs = diag(world, feats, truths("box", poses, ims), own_meshes=[world["meshes"]["box"]] * 4)
    for r in recs:
        assert r["correct"] and r["class_failure"] == "ok" and r["pose_kind"] == "ok" and r["pose_failure"] == "ok"
        assert r["rank_init"] == r["rank_final"] == r["rank_vote"] == 1 and r["margin"] > 0
        # the mesh that made the features is the mean mesh: the silhouette ceiling is exact, the prediction near it
        assert r["iou_gt_mean"] == pytest.approx(1.0) and r["iou_gt_own"] == pytest.approx(1.0)
        assert r["iou_pred"] > 0.85 and r["iou_fit"]["box"] == pytest.approx(r["iou_pred"])
        assert r["objective_gt_own"] == pytest.approx(r["objective_gt_mean"])
        # its own texture explains the visible object, the background the rest
        assert r["fg_own"] > 0.8 and r["bg_explained"] < 0.1
        assert r["fg_own"] + r["fg_other"] + r["fg_background"] == pytest.approx(1.0)


def test_a_search_that_cannot_reach_the_truth_is_a_search_failure(world, box4):
    """One grid azimuth, no refinement: a box seen from azimuth π is found at 0 (a flip). The objective at the
    true pose is higher than at the found one, so the label must be ``search``, and the kind ``flip``."""
    poses, _, _ = box4
    pose = dict(poses[0], azimuth=math.pi + 0.1)
    feats, _, ims = make_batch(world, "box", [pose], seed=600)
    cfg = CFG.replace(azimuths=1, steps=0)
    (r,) = diag(world, feats, truths("box", [pose], ims), cats=("box",), config=cfg)
    assert r["pose_kind"] == "flip" and r["pose_error_deg"] > 150
    assert r["objective_gt_mean"] > r["objective_pred"] and r["pose_failure"] == "search"


def test_a_wrong_label_is_a_score_failure(world, box4):
    """Features of a box labelled as the truth of another pose and category: the score prefers what the
    features show, so both failures are ``score``, and the labelled category ranks below the winner."""
    poses, feats, ims = box4
    tr = truths("box", poses, ims)
    wrong = [dict(t, category="tall", azimuth=t["azimuth"] + 1.3) for t in tr]
    recs = diag(world, feats, wrong)
    for r in recs:
        assert r["predicted"] == "box" and not r["correct"] and r["class_failure"] == "score"
        assert r["rank_final"] > 1 and r["margin"] < 0 and r["rank_vote"] > 1
        assert r["pose_failure"] == "score" and r["objective_gt_mean"] < r["objective_pred"]


def test_the_own_shape_beats_a_wrong_mean_shape_at_the_truth(world, box4):
    """Inference with a mean shape unlike the object (the tall box's mesh for the box): at the true pose
    the image's own shape explains the features better and its silhouette is the object's."""
    poses, feats, ims = box4
    meshes = {"box": world["meshes"]["tall"]}
    recs = diagnose_batch(feats, {"box": world["textures"]["box"]}, meshes, world["background"],
                          truths("box", poses, ims), (H, W), STRIDE, "known", CFG, own_meshes=[world["meshes"]["box"]] * 4)
    for r in recs:
        assert r["iou_gt_own"] == pytest.approx(1.0) and r["iou_gt_mean"] < 0.8
        assert r["objective_gt_own"] > r["objective_gt_mean"]


def test_clutter_that_looks_like_a_category_is_reported(world, box4):
    """Off-object features equal to a texel of 'flat': its texture explains the clutter, and it is named."""
    poses, _, _ = box4
    fake_bg = world["textures"]["flat"][:, 10, 10][None]
    ims = [oracle_features(world["textures"]["box"], world["meshes"]["box"], p, FOCAL, p["principal"], (H, W), STRIDE,
                           fake_bg, noise=0.1, seed=700 + i) for i, p in enumerate(poses[:2])]
    feats = torch.cat([o.features for o in ims])
    recs = diag(world, feats, truths("box", poses[:2], ims))
    for r in recs:
        assert r["bg_explained"] > 0.9 and max(r["bg_winners"], key=r["bg_winners"].get) == "flat"


def test_pose_kinds():
    gt = (0.3, 0.2, 0.05)
    assert _pose_kind(gt, gt)[0] == "ok"
    assert _pose_kind(gt, (gt[0] + math.pi, gt[1], gt[2]))[0] == "flip"
    assert _pose_kind(gt, (gt[0] - math.pi / 2, gt[1], gt[2]))[0] == "quarter"
    assert _pose_kind(gt, (gt[0], gt[1] + 1.2, gt[2]))[0] == "other"
    assert pose_error_deg(gt, (gt[0] + math.pi / 2, gt[1], gt[2])) > 60


def test_category_maps_match_brute_force_and_the_vote_finds_the_category(world, box4):
    _, feats, _ = box4
    tex = {c: world["textures"][c] for c in SHAPES}
    maps = category_maps(feats, tex)
    for j, c in enumerate(SHAPES):
        t = tex[c].reshape(tex[c].shape[0], -1)
        brute = torch.einsum("bdhw,dt->bhwt", feats, t).amax(-1)
        torch.testing.assert_close(maps[:, j], brute, rtol=1e-5, atol=1e-5)
    bgmap = torch.einsum("bdhw,kd->bkhw", feats, world["background"]).amax(1)
    votes = vote_scores(maps, bgmap)
    assert votes.shape == (4, 3) and (votes.argmax(1) == list(SHAPES).index("box")).all()
    torch.testing.assert_close(votes[:, 0], torch.relu(maps[:, 0] - bgmap).mean((1, 2)))
    with pytest.raises(ValueError, match="textures"):
        category_maps(feats, {"box": tex["box"][:5]})
    with pytest.raises(ValueError, match="bgmap"):
        vote_scores(maps, bgmap[:, :3])


def test_summary_shares_add_up_and_rules_score_offline(world, box4):
    poses, feats, ims = box4
    tr = truths("box", poses, ims)
    recs = diag(world, feats, tr) + diag(world, feats, [dict(t, category="tall", key=t["key"] + "w") for t in tr])
    s = summarize(recs)
    g = s["levels"]["0"]
    # the 4 mislabelled images are class `score` failures (or `grid` ones: 'tall' outside the grid's top k)
    wrong = recs[4:]
    assert g["n"] == 8 and g["cls_acc"] == pytest.approx(0.5) and g["acc_pi6"] == pytest.approx(0.5)
    assert g["cls_score"] == pytest.approx(sum(r["class_failure"] == "score" for r in wrong) / 8)
    assert g["cls_grid"] == pytest.approx(sum(r["class_failure"] == "grid" for r in wrong) / 8)
    assert g["cls_search"] == g["cls_shape"] == 0 and g["pose_score"] == pytest.approx(0.5)
    assert all(r["class_failure"] in ("score", "grid") and r["pose_failure"] == "score" for r in wrong)
    assert g["median_deg"] == pytest.approx(float(np.median([r["pose_error_deg"] for r in recs])))
    assert s["per_category"]["tall"]["0"]["predicted_instead"] == {"box": 4}
    md = markdown(s)
    assert "### L0" in md and "| tall |" in md and "| **all** |" in md
    table = rule_table(recs, {"score": lambda r: r["scores"], "truth": lambda r: {r["category"]: 1.0}})
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert rows["score"].split("|")[2].strip() == "0.500" and rows["truth"].split("|")[2].strip() == "1.000"
    with pytest.raises(ValueError, match="no records"):
        summarize([])


def test_bad_inputs(world, box4):
    poses, feats, ims = box4
    tr = truths("box", poses, ims)
    with pytest.raises(ValueError, match="truths"):
        diag(world, feats, tr[:2])
    with pytest.raises(ValueError, match="own_meshes"):
        diag(world, feats, tr, own_meshes=[world["meshes"]["box"]])
    with pytest.raises(ValueError, match="without a texture"):
        diag(world, feats, [dict(t, category="bus") for t in tr])
    with pytest.raises(ValueError, match="deformables"):
        diag(world, feats, tr, latent_steps=3)


@pytest.mark.slow
def test_cli_writes_resumable_diagnostics(tiny_run, tmp_path, capsys):
    from dmnt_lib.__main__ import main

    run_dir, test = tiny_run
    out = tmp_path / "diag"
    argv = ["diagnose", "--run", str(run_dir), "--data", str(test), "--levels", "0", "1", "--per-category", "1",
            "--set", "steps=3", "--set", "elevations=[0.0, 0.35]", "--set", "thetas=[0.0]", "--latent-steps", "2",
            "--rules", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    lines = (out / "diagnostics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # 2 categories x 2 levels x 1
    rec = json.loads(lines[0])
    assert {"pose_failure", "class_failure", "iou_gt_own", "iou_gt_latent", "vote", "bg_explained"} <= set(rec)
    assert rec["iou_gt_own"] is not None and 0 <= rec["iou_gt_latent"] <= 1
    rules = (out / "rules.md").read_text()
    assert all(f"| {name} |" in rules for name in ("normalized", "nemo (raw)", "vote"))
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["levels"]) == {"0", "1"} and summary["levels"]["0"]["n"] == 2
    # resume: a truncated file is completed, finished images are not redone
    (out / "diagnostics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    assert main(argv) == 0
    again = (out / "diagnostics.jsonl").read_text().splitlines()
    assert again[:2] == lines[:2] and len(again) == 4
    # another config into the same folder is refused; bad arguments exit 2 naming them
    capsys.readouterr()
    assert main(argv[:-3] + ["--set", "steps=4", "--out", str(out), "--no-progress"]) == 2
    assert "another config" in capsys.readouterr().err
    from dmnt_lib.data import generate_dataset

    other = tmp_path / "other" / test.name  # the same folder name and ids, other images: refused, not mixed in
    generate_dataset(other, 2, levels=(0, 1), seed=5, image_size=64, categories=["car", "chair"], progress=False)
    assert main([a if a != str(test) else str(other) for a in argv]) == 2
    assert "data set" in capsys.readouterr().err
    assert main(["diagnose", "--run", str(tmp_path), "--data", str(test)]) == 2
    assert "model.pt" in capsys.readouterr().err
    assert main(["diagnose", "--run", str(run_dir), "--data", str(test), "--set", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err


def test_failure_cause_captions():
    from dmnt_lib.figures.predict import failure_cause

    d = {"class_failure": "score", "pose_failure": "search", "predicted": "bus", "iou_gt_mean": 0.41, "bg_explained": 0.2}
    assert failure_cause("class", d) == "features say bus"
    assert failure_cause("pose", d, occlusion=0.62) == "search missed its pose; occluder hides 62%"
    assert failure_cause("class", dict(d, class_failure="grid")) == "its class left out by the grid"
    assert failure_cause("segmentation", dict(d, pose_failure="ok")) == "mean shape: IoU 0.41 at the truth"
    assert failure_cause("pose", dict(d, pose_failure="ok")) == "not reproduced"
    assert failure_cause("pose", dict(d, pose_failure="shape", bg_explained=0.7)) == "shape differs; clutter looks like objects"
