"""Render-and-compare inference on oracle features (no trained model): pose, centre search, occlusion,
classification, cache, top-k, UV mode, errors; and the evaluation predictor on a tiny trained run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmnt_lib.camera import pose_to_rotation, rotation_error
from dmnt_lib.inference import GridCache, InferenceConfig, render_and_compare
from dmnt_lib.inference.oracle import oracle_features, random_background, random_texture
from dmnt_lib.mesh import cuboid_template

D, S, H, W, STRIDE = 24, 48, 96, 96, 4
FOCAL = 3.0 * H
# A small grid keeps the one-off PyTorch3D grid rendering cheap; azimuth spacing as NeMo's (30°).
CFG = InferenceConfig(elevations=(-0.1, 0.25, 0.6), thetas=(0.0,), fills=(0.65, 0.8, 0.95), steps=30, hypotheses=2,
                      init_texture_size=32)
SHAPES = {"box": [2.0, 1.0, 1.2], "tall": [0.8, 2.0, 0.9], "flat": [2.2, 0.5, 1.6]}


def _mesh(cat):
    return cuboid_template(SHAPES[cat], num_verts=250)


@pytest.fixture(scope="module")
def world():
    cats = list(SHAPES)
    return {
        "meshes": {c: _mesh(c) for c in cats},
        "textures": {c: random_texture(D, S, seed=i) for i, c in enumerate(cats)},
        "background": random_background(D, seed=0),
    }


def random_poses(n, seed, mesh):
    """Poses drawn like the synthetic data (``data/synthetic.py``): azimuth U[0, 2π), elevation U[-10°, 40°],
    theta U[-15°, 15°], fill U[0.7, 0.95], principal jittered around the centre."""
    rng = np.random.default_rng(seed)
    r = float(mesh.verts.norm(dim=-1).max())
    out = []
    for _ in range(n):
        fill = rng.uniform(0.7, 0.95)
        jit = 0.4 * (1 - fill) * H
        out.append({
            "azimuth": rng.uniform(0, 2 * math.pi), "elevation": math.radians(rng.uniform(-10, 40)),
            "theta": math.radians(rng.uniform(-15, 15)), "distance": r * math.sqrt(1 + (2 * FOCAL / (fill * H)) ** 2),
            "principal": (W / 2 + rng.uniform(-jit, jit), H / 2 + rng.uniform(-jit, jit)),
        })
    return out


def make_batch(world, cat, poses, occlude=0.0, seed=0, noise=0.3):
    ims = [oracle_features(world["textures"][cat], world["meshes"][cat], p, FOCAL, p["principal"], (H, W), STRIDE,
                           world["background"], noise=noise, occlude=occlude, seed=seed + i) for i, p in enumerate(poses)]
    feats = torch.cat([o.features for o in ims])
    principal = torch.tensor([p["principal"] for p in poses])
    return feats, principal, ims


def pose_error_deg(pred, pose):
    r1 = pose_to_rotation(pose["azimuth"], pose["elevation"], pose["theta"])
    r2 = pose_to_rotation(pred.azimuth, pred.elevation, pred.theta)
    return float(rotation_error(r1, r2)) * 180 / math.pi


def iou(a, b):
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def run(world, feats, principal, cats, center="known", config=CFG, **kw):
    return render_and_compare(feats, {c: world["textures"][c] for c in cats}, {c: world["meshes"][c] for c in cats},
                              world["background"], FOCAL, principal, (H, W), STRIDE, center=center, config=config, **kw)


@pytest.fixture(scope="module")
def ten(world):
    poses = random_poses(10, seed=1, mesh=world["meshes"]["box"])
    feats, principal, ims = make_batch(world, "box", poses, seed=100)
    return poses, feats, principal, ims


@pytest.mark.parametrize("center", ["known", "search"])
def test_pose_and_amodal_mask_recovered(world, ten, center):
    poses, feats, principal, ims = ten
    preds = run(world, feats, principal, ["box"], center=center)
    errs = [pose_error_deg(p, q) for p, q in zip(preds, poses)]
    ious = [iou(p.amodal_mask, o.amodal) for p, o in zip(preds, ims)]
    good = sum(e < 5 and i >= 0.9 for e, i in zip(errs, ious))
    assert good >= 9, (errs, ious)
    for p in preds:
        assert p.amodal_mask.shape == (H, W) and p.amodal_mask.dtype == torch.bool
        assert p.visible_mask.shape == (H, W) and not (p.visible_mask & ~p.amodal_mask).any()
    if center == "search":  # the centre itself is found (within a feature pixel)
        errs_c = [math.dist(p.principal, q["principal"]) for p, q in zip(preds, poses)]
        assert sorted(errs_c)[8] < STRIDE, errs_c


def test_occlusion_explained_by_background(world):
    poses = random_poses(10, seed=2, mesh=world["meshes"]["box"])
    feats, principal, ims = make_batch(world, "box", poses, occlude=0.5, seed=200)
    assert all(0.35 < float(o.occluded.sum()) / float(o.mask.sum()) < 0.65 for o in ims)
    preds = run(world, feats, principal, ["box"])
    errs = [pose_error_deg(p, q) for p, q in zip(preds, poses)]
    assert sum(e < 10 for e in errs) >= 8, errs
    vis_iou = [iou(p.visible_mask, o.visible) for p, o in zip(preds, ims)]
    assert sum(v >= 0.8 for v in vis_iou) >= 8, vis_iou
    # The visible mask really excludes the occluder: most occluded pixels are off it.
    for p, o in zip(preds, ims):
        occ = o.amodal & ~o.visible
        assert float((p.visible_mask & occ).sum()) <= 0.2 * float(occ.sum())


@pytest.fixture(scope="module")
def three(world):
    cats = list(SHAPES)
    feats, principal, truth, poses = [], [], [], []
    for k, cat in enumerate(cats):
        ps = random_poses(2, seed=10 + k, mesh=world["meshes"][cat])
        f, pp, _ = make_batch(world, cat, ps, seed=300 + 10 * k)
        feats.append(f)
        principal.append(pp)
        truth += [cat] * 2
        poses += ps
    return torch.cat(feats), torch.cat(principal), truth, poses


def test_right_category_wins_and_refinement_improves(world, three):
    feats, principal, truth, poses = three
    cats = list(SHAPES)
    preds = run(world, feats, principal, cats, config=CFG.replace(top_k=3))
    assert [p.category for p in preds] == truth
    for p, q in zip(preds, poses):
        assert pose_error_deg(p, q) < 10
        assert set(p.scores) == set(cats) and p.scores[p.category] == max(p.scores.values())
        for c in cats:  # refined >= init (the exact objective at the init pose), for every refined category
            assert p.poses[c]["objective"] >= p.poses[c]["init_objective"]
        # Adam itself climbs: its last step (not just the best kept) beats the init pose on the true category,
        # and so does the class score there.
        assert p.poses[p.category]["final_objective"] > p.poses[p.category]["init_objective"]
        assert p.poses[p.category]["score"] > p.poses[p.category]["init_score"]


@pytest.mark.slow
def test_top_k_all_equals_top_3(world, three):
    feats, principal, truth, _ = three
    cats = list(SHAPES)
    # 12 categories: the three real ones plus nine distractors with their own textures and shapes.
    textures = {c: world["textures"][c] for c in cats}
    meshes = {c: world["meshes"][c] for c in cats}
    for j in range(9):
        textures[f"x{j}"] = random_texture(D, S, seed=50 + j)
        meshes[f"x{j}"] = cuboid_template([1.0 + 0.15 * j, 1.6 - 0.1 * j, 1.0], num_verts=250)
    kw = dict(background=world["background"], focal=FOCAL, principal=principal, image_size=(H, W), stride=STRIDE)
    cfg = CFG.replace(steps=15)  # the equality holds at any step count; fewer keep the test short
    p3 = render_and_compare(feats, textures, meshes, config=cfg.replace(top_k=3), **kw)
    p12 = render_and_compare(feats, textures, meshes, config=cfg.replace(top_k=12), **kw)
    assert [p.category for p in p3] == [p.category for p in p12] == truth
    for a, b in zip(p3, p12):
        assert len(a.refined) == 3 and len(b.refined) == 12
        assert a.azimuth == pytest.approx(b.azimuth, abs=1e-5) and a.elevation == pytest.approx(b.elevation, abs=1e-5)
        assert a.score == pytest.approx(b.score, abs=1e-6)


def test_background_centroids_is_validated():
    with pytest.raises(ValueError, match="config.background_centroids"):
        InferenceConfig(background_centroids=0)
    assert InferenceConfig(background_centroids=None).background_centroids is None


def test_model_inputs_background_centroids():
    """``background_centroids=K`` gives K unit k-means centroids of the bank (seeded: the same twice), None the mean."""
    from types import SimpleNamespace

    from dmnt_lib.inference.infer import model_background

    g = torch.Generator().manual_seed(3)
    centres = torch.nn.functional.normalize(torch.randn(4, D, generator=g), dim=1)
    feats = torch.nn.functional.normalize(centres.repeat(50, 1) + 0.05 * torch.randn(200, D, generator=g), dim=1)
    model = SimpleNamespace(bank=SimpleNamespace(features=feats, mean=lambda: feats.mean(0)))
    one = model_background(model)
    assert one.shape == (1, D) and torch.allclose(one[0], torch.nn.functional.normalize(feats.mean(0), dim=0))
    four = model_background(model, 4)
    assert four.shape == (4, D) and torch.allclose(four.norm(dim=1), torch.ones(4))
    assert torch.equal(four, model_background(model, 4))
    # each true centre has a centroid within a few degrees
    assert ((centres @ four.t()).amax(1) > 0.99).all()


def test_cached_init_equals_uncached(world, ten):
    from dmnt_lib.inference.grid import build_grid_fragments, grid_scores, known_offsets, pool_texture
    from dmnt_lib.inference.score import background_map

    _, feats, principal, _ = ten
    cache = GridCache()
    mesh = world["meshes"]["box"]
    e1 = cache.get(mesh, CFG, FOCAL / STRIDE, (H // STRIDE, W // STRIDE))
    e2 = cache.get(cuboid_template(SHAPES["box"], num_verts=250), CFG, FOCAL / STRIDE, (H // STRIDE, W // STRIDE))
    assert e1 is e2 and cache.hits == 1 and cache.misses == 1  # keyed by the mesh's content, not its identity
    fresh = build_grid_fragments(mesh, CFG, FOCAL / STRIDE, (H // STRIDE, W // STRIDE))
    assert torch.equal(fresh.pix, e1.pix) and torch.equal(fresh.uv, e1.uv)
    tex = pool_texture(world["textures"]["box"], CFG.init_texture_size)
    bgm = background_map(feats, world["background"])
    off = known_offsets(principal / STRIDE, e1.canvas)
    assert torch.equal(grid_scores(feats, bgm, e1, tex, off), grid_scores(feats, bgm, fresh, tex, off))
    # A different grid or focal is a different entry.
    cache.get(mesh, CFG.replace(azimuths=8), FOCAL / STRIDE, (H // STRIDE, W // STRIDE))
    assert cache.misses == 2
    # End to end: a warm cache gives the same predictions as a cold one.
    a = run(world, feats[:3], principal[:3], ["box"], cache=cache)
    b = run(world, feats[:3], principal[:3], ["box"], cache=GridCache())
    for p, q in zip(a, b):
        assert (p.azimuth, p.elevation, p.theta, p.distance, p.score) == (q.azimuth, q.elevation, q.theta, q.distance, q.score)
        assert torch.equal(p.amodal_mask, q.amodal_mask)


def test_grid_scores_match_a_direct_computation(world, ten):
    """The gather-based grid score equals rendering the pose on its own and applying the formula."""
    from dmnt_lib.camera import pose_to_cameras
    from dmnt_lib.inference.grid import grid_scores, known_offsets, nearest_texel, offsets_to_principal, pool_texture
    from dmnt_lib.inference.raster import fragments
    from dmnt_lib.inference.score import background_map, combine

    _, feats, principal, _ = ten
    h, w = H // STRIDE, W // STRIDE
    mesh, tex = world["meshes"]["box"], pool_texture(world["textures"]["box"], CFG.init_texture_size)
    entry = GridCache().get(mesh, CFG, FOCAL / STRIDE, (h, w))
    bgm = background_map(feats[:1], world["background"])
    off = known_offsets(principal[:1] / STRIDE, entry.canvas)
    pp = offsets_to_principal(off, entry.canvas).float()  # the rounded centre the grid is read at
    for kind in ("normalized", "nemo"):
        got = grid_scores(feats[:1], bgm, entry, tex, off, kind)[0]
        for g in (0, 17, 50):
            cams = pose_to_cameras(*(entry.poses[k][g:g + 1].float() for k in ("azimuth", "elevation", "theta", "distance")),
                                   (h, w), focal=FOCAL / STRIDE, principal=pp)
            fr = fragments(mesh, cams, (h, w))
            rendered = tex.reshape(D, -1)[:, nearest_texel(fr.uv[0], tex.shape[1:])]  # (D, h, w)
            o = (feats[0] * rendered).sum(0) * fr.mask[0]
            want = combine(o[None], bgm, fr.mask, kind)[0]
            assert float(got[g]) == pytest.approx(float(want), abs=1e-5)


def test_normalized_and_nemo_scores_both_available(world, three):
    feats, principal, truth, _ = three
    cats = list(SHAPES)
    norm = run(world, feats, principal, cats, config=CFG.replace(top_k=3, steps=15))
    nemo = run(world, feats, principal, cats, config=CFG.replace(score="nemo", top_k=3, steps=15))
    assert [p.category for p in nemo] == [p.category for p in norm] == truth  # oracle features: both classify
    for a, b in zip(norm, nemo):
        for c in cats:  # same fit objective, so same poses; each run reports both kinds at them
            assert a.poses[c]["scores"] == pytest.approx(b.poses[c]["scores"], abs=1e-6)
            s = a.poses[c]["scores"]
            assert a.poses[c]["score"] == s["normalized"] and b.poses[c]["score"] == s["nemo"]
            assert 0 <= s["nemo"] <= 2 and 0 <= s["normalized"] <= 2  # relu(o - b) with o, b in [-1, 1]


def test_uv_compare_recovers_pose(world, ten):
    """The comparison done on the texture (features moved by image_to_uv, gradients through its uv backward).
    Less precise than image space at feature resolution (grazing faces smear onto many texels), so: all within
    10° and the median within 3°. In UV space the per-texel (normalized) objective fits; NeMo's, divided by the
    texture's size, rewards views that show more texels."""
    poses, feats, principal, ims = ten
    preds = run(world, feats[:6], principal[:6], ["box"], config=CFG.replace(compare="uv", fit_score="normalized", steps=25))
    errs = [pose_error_deg(p, q) for p, q in zip(preds, poses[:6])]
    assert max(errs) < 10 and sorted(errs)[2] < 3, errs
    # The per-texel score constrains the scale only weakly (a farther mesh still maps every texel), so the mask
    # is checked on most, not all, images.
    assert sum(iou(p.amodal_mask, o.amodal) > 0.85 for p, o in zip(preds, ims[:6])) >= 5


def test_fit_shape_optimizes_the_code():
    """With a deformable mesh the shape code moves and the score does not drop."""
    from dmnt_lib.deform import DeformableMesh, DeformationNet

    torch.manual_seed(0)
    template = cuboid_template([2.0, 1.0, 1.2], num_verts=250)
    dm = DeformableMesh(template, num_models=2, net=DeformationNet(latent_dim=4, hidden=16, depth=2, skip=(), num_freqs=1))
    tex, bg = random_texture(D, S, 5), random_background(D, 5)
    pose = random_poses(1, seed=9, mesh=template)[0]
    o = oracle_features(tex, template, pose, FOCAL, pose["principal"], (H, W), STRIDE, bg, seed=3)
    cfg = CFG.replace(fit_shape=True, steps=10)
    before = [p.detach().clone() for p in dm.parameters()]
    pred = render_and_compare(o.features, {"a": tex}, {"a": dm}, bg, FOCAL, torch.tensor([pose["principal"]]), (H, W),
                              STRIDE, config=cfg)[0]
    assert pred.poses["a"]["code"] is not None and pred.poses["a"]["score"] >= pred.poses["a"]["init_score"]
    assert all(torch.equal(a, b) for a, b in zip(before, dm.parameters()))  # the net is not trained
    assert all(p.requires_grad for p in dm.parameters())  # and its flags are restored


class TestBadInputs:
    @pytest.fixture
    def args(self, world):
        feats = torch.nn.functional.normalize(torch.randn(1, D, H // STRIDE, W // STRIDE), dim=1)
        return dict(features=feats, textures={"box": world["textures"]["box"]}, meshes={"box": world["meshes"]["box"]},
                    background=world["background"], focal=FOCAL, principal=torch.tensor([[W / 2, H / 2]]),
                    image_size=(H, W), stride=STRIDE, config=CFG)

    def test_feature_dim(self, args):
        args["textures"] = {"box": random_texture(D + 1, S, 0)}
        with pytest.raises(ValueError, match=r"textures\['box'\].*feature dim"):
            render_and_compare(**args)

    def test_h_not_H_over_stride(self, args):
        args["image_size"] = (H + 4, W)
        with pytest.raises(ValueError, match="H/stride"):
            render_and_compare(**args)

    def test_missing_category(self, args):
        args["meshes"] = {}
        with pytest.raises(ValueError, match="no mesh for \\['box'\\]"):
            render_and_compare(**args)

    def test_nan(self, args):
        args["features"] = args["features"].clone()
        args["features"][0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="features contains NaN"):
            render_and_compare(**args)

    def test_non_unit(self, args):
        args["features"] = 2 * args["features"]
        with pytest.raises(ValueError, match="unit length"):
            render_and_compare(**args)

    def test_others(self, args):
        with pytest.raises(ValueError, match="center"):
            render_and_compare(**args, center="middle")
        bad = dict(args, principal=None)
        with pytest.raises(ValueError, match="principal"):
            render_and_compare(**bad)
        with pytest.raises(ValueError, match="background"):
            render_and_compare(**dict(args, background=torch.ones(D + 2)))
        with pytest.raises(ValueError, match="focal"):
            render_and_compare(**dict(args, focal=-1.0))
        with pytest.raises(ValueError, match="config.score"):
            InferenceConfig(score="best")
        with pytest.raises(ValueError, match="config.top_k"):
            InferenceConfig(top_k=0)


def test_include_is_refined_but_never_classifies(world, three):
    feats, principal, truth, _ = three
    cats = list(SHAPES)
    other = [cats[(cats.index(t) + 1) % 3] for t in truth]
    base = run(world, feats, principal, cats, config=CFG.replace(top_k=1, steps=10))
    inc = run(world, feats, principal, cats, config=CFG.replace(top_k=1, steps=10), include=other)
    for a, b, o in zip(base, inc, other):
        assert b.category == a.category and len(a.refined) == 1 and set(b.refined) == {a.category, o}
        assert b.poses[o]["refined"] and not a.poses[o]["refined"]


def test_each_hypothesis_stops_on_its_own(world, three):
    """Early stopping is per hypothesis: an image's result does not depend on the other images of its batch,
    nor on the extra hypotheses ``include`` adds (evaluation adds the ground-truth category's), so the
    label cannot reach the classification by keeping the other categories' refinement running."""
    feats, principal, truth, _ = three
    cats = list(SHAPES)
    cfg = CFG.replace(top_k=1, steps=25, patience=2, tol=2e-3)  # hypotheses stop at different steps
    batch = run(world, feats, principal, cats, config=cfg)
    other = [cats[(cats.index(t) + 1) % 3] for t in truth]
    inc = run(world, feats, principal, cats, config=cfg, include=other)
    for i, (a, b) in enumerate(zip(batch, inc)):
        alone = run(world, feats[i:i + 1], principal[i:i + 1], cats, config=cfg)[0]
        for q in (alone, b):
            assert q.category == a.category
            assert q.score == pytest.approx(a.score, abs=1e-5)
            for k in ("azimuth", "elevation", "theta", "distance"):
                assert getattr(q, k) == pytest.approx(getattr(a, k), abs=1e-4), (i, k)


# --------------------------------------------------------------------------- the evaluation predictor


@pytest.mark.slow
def test_evaluate_writes_results_and_resumes(tiny_run, monkeypatch):
    from dmnt_lib import evaluate as ev
    from dmnt_lib.inference import evaluate as dmnt_eval

    run_dir, test = tiny_run
    calls = []
    real = dmnt_eval.DMNTPredictor.predict

    def counting(self, batch):
        calls.append([s["id"] for s in batch])
        return real(self, batch)

    monkeypatch.setattr(dmnt_eval.DMNTPredictor, "predict", counting)
    res = ev.evaluate_run(run_dir, test, levels=(0, 1), per_category=2, quick=True, progress=False, echo=None, center="known")
    assert res["method"] == "dmnt" and res["config"]["center"] == "known" and "inference" in res["config"]
    for level in ("0", "1"):
        row = res["levels"][level]
        for key in ("n", "acc_pi6", "acc_pi18", "median_deg", "cls_acc", "miou", "acc_pi6_pred_cls"):
            assert key in row and row[key] is not None and math.isfinite(row[key]), (level, key, row)
        assert row["n"] == 4 and 0 <= row["miou"] <= 1
    out = next((run_dir / "eval").iterdir())
    assert (out / "results.json").is_file() and (out / "predictions.jsonl").is_file()
    n_calls = len(calls)
    assert n_calls == 8  # one image per call
    # A second call finds every image done: nothing is predicted again, the same results come back.
    again = ev.evaluate_run(run_dir, test, levels=(0, 1), per_category=2, quick=True, progress=False, echo=None, center="known")
    assert len(calls) == n_calls and again["levels"] == res["levels"]
    # An interrupted run (last two lines lost) redoes only those.
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:-2]))
    ev.evaluate_run(run_dir, test, levels=(0, 1), per_category=2, quick=True, progress=False, echo=None, center="known")
    assert len(calls) == n_calls + 2


def test_predictor_output_fields(tiny_run):
    from dmnt_lib.data import PoseDataset
    from dmnt_lib.inference.evaluate import load_predictor

    run_dir, test = tiny_run
    pred = load_predictor(run_dir, "cpu", {"quick": True, "center": "search"})
    ds = PoseDataset(test, None, (1,))
    items = [ds[i] for i in range(2)]
    out = pred.predict([{k: it[k] for k in ("id", "level", "category", "image", "focal", "principal")} for it in items])
    for o, it in zip(out, items):
        assert o["category"] in ("car", "chair") and set(o["scores"]) == {"car", "chair"}
        assert len(o["pose"]) == 3 and len(o["pose_gt_category"]) == 3 and o["detected"] is True
        assert o["amodal_mask"].shape == tuple(it["image"].shape[-2:]) and o["amodal_mask"].dtype == bool
        assert o["time_s"] > 0 and set(o["timings"]) >= {"backbone", "init", "refine", "masks"}
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_predictor(run_dir.parent, "cpu", {})


def test_per_image_focal_lengths_share_the_grid(world):
    """Focal lengths within the tolerance read one cached grid (its distances rescaled per image)."""
    mesh, tex = world["meshes"]["box"], world["textures"]["box"]
    poses = random_poses(2, seed=4, mesh=mesh)
    focals = [FOCAL, FOCAL * 1.015]
    ims = [oracle_features(tex, mesh, p, f, p["principal"], (H, W), STRIDE, world["background"], seed=40 + i)
           for i, (p, f) in enumerate(zip(poses, focals))]
    cache = GridCache()
    preds = render_and_compare(torch.cat([o.features for o in ims]), {"box": tex}, {"box": mesh}, world["background"],
                               torch.tensor(focals), torch.tensor([p["principal"] for p in poses]), (H, W), STRIDE,
                               config=CFG, cache=cache)
    assert cache.misses == 1 and len(cache) == 1
    assert all(pose_error_deg(p, q) < 5 for p, q in zip(preds, poses))
    assert all(p.distance == pytest.approx(q["distance"], rel=0.03) for p, q in zip(preds, poses))


def test_bench_infer_compare_option(capsys):
    """``bench infer --compare NAME=JSON``: a bad config is refused naming it; a model world's background follows
    each config's ``background_centroids``."""
    from types import SimpleNamespace

    from dmnt_lib.inference.bench import _background, main

    with pytest.raises(SystemExit) as e:
        main(["--compare", 'prev={"no_such_field": 1}'])
    assert e.value.code == 2 and "no_such_field" in capsys.readouterr().err
    feats = torch.nn.functional.normalize(torch.randn(64, D), dim=1)
    world = {"model": SimpleNamespace(bank=SimpleNamespace(features=feats, mean=lambda: feats.mean(0))), "background": None}
    assert _background(world, InferenceConfig(background_centroids=None)).shape == (1, D)
    assert _background(world, InferenceConfig(background_centroids=3)).shape == (3, D)
    oracle = {"background": random_background(D, seed=0)}
    assert _background(oracle, InferenceConfig(background_centroids=3)) is oracle["background"]


def test_background_centroids_are_computed_once_per_bank_state(monkeypatch):
    """The k-means of the bank runs once per model and K (the evaluation calls ``infer`` per batch), again after
    the bank changes."""
    from types import SimpleNamespace

    import importlib

    from dmnt_lib.model.texture import BackgroundBank

    infer_mod = importlib.import_module("dmnt_lib.inference.infer")  # the package's `infer` is the function

    calls = []
    real = infer_mod.model_background
    monkeypatch.setattr(infer_mod, "model_background", lambda m, k=None: calls.append(k) or real(m, k))
    model = SimpleNamespace(bank=BackgroundBank(64, D, seed=1))
    a = infer_mod._cached_background(model, 8)
    b = infer_mod._cached_background(model, 8)
    assert a is b and calls == [8]
    infer_mod._cached_background(model, 4)
    assert calls == [8, 4]
    model.bank.push(torch.nn.functional.normalize(torch.randn(5, D), dim=1))
    c = infer_mod._cached_background(model, 4)
    assert calls == [8, 4, 4] and c.shape == (4, D)
