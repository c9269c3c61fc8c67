"""dmnt_lib.model: the A.3 loss against a plain loop, gradcheck, texture/bank memories, backbone, DMNT files."""

import math

import pytest
import torch
import torch.nn.functional as F

from dmnt_lib.model import (DMNT, BackgroundBank, FeatureNet, ModelConfig, NeuralTexture, SampleCounts, contrastive_loss,
                            sample_groups)


def _unit(*shape, gen, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, generator=gen, dtype=dtype), dim=-1)


def _loop_loss(f, pos, negatives, weights, T):
    """The A.3 formula with Python loops, straight from its definition."""
    w = {"ML": 1.0, "Com": 1.0, "Class": 1.0, "BG": 0.1, **(weights or {})}
    total = 0.0
    N = f.shape[0]
    for n in range(N):
        num = w["ML"] * math.exp(float(f[n] @ pos[n]) / T)
        den = num
        for g, (neg, valid) in negatives.items():
            K = neg.shape[-2]
            for k in range(K):
                if valid is not None and not bool(valid[n, k]):
                    continue
                vec = neg[k] if neg.dim() == 2 else neg[n, k]
                den += w[g] * math.exp(float(f[n] @ vec) / T)
        total += -math.log(num / den)
    return total / N


def _random_groups(N, D, gen):
    return {
        "Com": (_unit(N, 7, D, gen=gen), torch.rand(N, 7, generator=gen) > 0.3),  # per positive, masked
        "Class": (_unit(5, D, gen=gen), None),  # shared, all valid
        "BG": (_unit(9, D, gen=gen), torch.rand(N, 9, generator=gen) > 0.5),  # shared, masked
    }


@pytest.mark.parametrize("weights", [None, {"ML": 2.0, "Com": 0.5, "Class": 3.0, "BG": 0.25}, {"Class": 0.0}])
def test_contrastive_loss_equals_a_plain_loop(weights):
    gen = torch.Generator().manual_seed(1)
    N, D, T = 6, 5, 0.3
    f, pos = _unit(N, D, gen=gen), _unit(N, D, gen=gen)
    groups = _random_groups(N, D, gen)
    got = contrastive_loss(f, pos, groups, weights, T)
    assert float(got) == pytest.approx(_loop_loss(f, pos, groups, weights, T), rel=1e-12)


def test_a_zero_weight_removes_its_group():
    gen = torch.Generator().manual_seed(2)
    N, D = 4, 3
    f, pos = _unit(N, D, gen=gen), _unit(N, D, gen=gen)
    groups = _random_groups(N, D, gen)
    for g in ("Com", "Class", "BG"):
        without = {k: v for k, v in groups.items() if k != g}
        a = contrastive_loss(f, pos, groups, {g: 0.0})
        b = contrastive_loss(f, pos, without)
        assert torch.equal(a, b)
    # With every negative weighted 0 (or absent) only the positive remains: loss 0.
    assert float(contrastive_loss(f, pos, groups, {"Com": 0, "Class": 0, "BG": 0})) == 0.0


def test_contrastive_loss_default_weights_and_temperature():
    """Defaults are the appendix's W = (1, 1, 1, 0.1) and T = 0.07."""
    gen = torch.Generator().manual_seed(3)
    f, pos = _unit(3, 4, gen=gen), _unit(3, 4, gen=gen)
    groups = _random_groups(3, 4, gen)
    assert float(contrastive_loss(f, pos, groups)) == pytest.approx(_loop_loss(f, pos, groups, None, 0.07), rel=1e-10)


def test_contrastive_loss_gradcheck():
    gen = torch.Generator().manual_seed(4)
    N, D = 4, 3
    f = _unit(N, D, gen=gen).requires_grad_(True)
    pos = _unit(N, D, gen=gen)
    groups = _random_groups(N, D, gen)
    assert torch.autograd.gradcheck(lambda x: contrastive_loss(x, pos, groups, None, 0.5), (f,))


@pytest.mark.parametrize("bad, match", [
    (dict(f=torch.zeros(0, 3)), "N >= 1"),
    (dict(pos=torch.zeros(2, 4)), "pos must have the shape"),
    (dict(negatives={"Other": (torch.zeros(1, 3), None)}), "unknown groups"),
    (dict(negatives={"BG": (torch.zeros(2, 1, 4), None)}), r"negatives\['BG'\] n must be"),
    (dict(negatives={"BG": (torch.zeros(5, 3), torch.ones(2, 4, dtype=torch.bool))}), r"negatives\['BG'\] valid"),
    (dict(weights={"ML": 0.0}), "weights\\['ML'\\] must be > 0"),
    (dict(weights={"BG": -1.0}), "weights\\['BG'\\]"),
    (dict(weights={"bg": 1.0}), "unknown keys"),
    (dict(T=0.0), "T must be"),
])
def test_contrastive_loss_rejects_bad_input(bad, match):
    args = dict(f=torch.zeros(2, 3), pos=torch.zeros(2, 3), negatives={}, weights=None, T=0.07)
    args.update(bad)
    with pytest.raises(ValueError, match=match):
        contrastive_loss(**args)


def test_sample_groups_counts_masks_and_sources():
    gen = torch.Generator().manual_seed(5)
    C, D, S = 3, 4, 16
    texels = F.normalize(torch.randn(C, D, S, S, generator=gen), dim=1)
    seen = torch.zeros(C, S, S, dtype=torch.bool)
    seen[0, :8] = True
    seen[2, 4:6, 4:6] = True
    surface = torch.randn(D, S, S, generator=gen)
    visible = torch.zeros(S, S, dtype=torch.bool)
    visible[2:10, 3:7] = True  # 32 texels
    bank = F.normalize(torch.randn(50, D, generator=gen), dim=1)
    counts = SampleCounts(positives=20, com=30, com_min_distance=4, class_=3, bg=10)
    f, pos, neg, t, _ = sample_groups(surface, visible, 0, texels, seen, bank, counts, torch.Generator().manual_seed(0))
    assert f.shape == (20, D) and pos.shape == (20, D) and t.shape == (20, 2)
    assert visible[t[:, 0], t[:, 1]].all() and len({tuple(x) for x in t.tolist()}) == 20
    assert torch.allclose(f, F.normalize(surface[:, t[:, 0], t[:, 1]].T, dim=1))
    assert torch.equal(pos, texels[0][:, t[:, 0], t[:, 1]].T)
    com, valid = neg["Com"]
    assert com.shape == (30, D) and valid.shape == (20, 30)
    # each Com negative is a seen texel of the image's own texture; the mask is exactly "distance >= 4"
    own = {tuple(texels[0][:, i, j].tolist()): (i, j) for i, j in seen[0].nonzero().tolist()}
    where = torch.tensor([own[tuple(v.tolist())] for v in com])
    d = ((t[:, None].float() - where[None].float()) ** 2).sum(-1).sqrt()
    assert torch.equal(valid, d >= 4)
    # Class negatives come from the other categories' seen texels (only category 2 has some)
    cls, _ = neg["Class"]
    other = {tuple(texels[2][:, i, j].tolist()) for i, j in seen[2].nonzero().tolist()}
    assert cls.shape == (3, D) and all(tuple(v.tolist()) in other for v in cls)
    assert neg["BG"][0].shape == (10, D)
    # no visible texel: nothing to learn from
    assert sample_groups(surface, torch.zeros_like(visible), 0, texels, seen, bank, counts, gen) is None


def test_texture_update_equals_the_formula_and_leaves_unseen_texels():
    gen = torch.Generator().manual_seed(6)
    tex = NeuralTexture(3, dim=4, size=8, momentum=0.8, seed=1)
    before = tex.texels.clone()
    labels = torch.tensor([0, 2, 0])
    surface = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float32)
    visible = torch.rand(3, 8, 8, generator=gen) > 0.5
    tex.update(labels, surface, visible)
    for c in range(3):
        items = [b for b in range(3) if int(labels[b]) == c]
        for i in range(8):
            for j in range(8):
                seeing = [b for b in items if visible[b, i, j]]
                if not seeing:
                    assert torch.equal(tex.texels[c, :, i, j], before[c, :, i, j])
                    assert int(tex.seen[c, i, j]) == 0
                    continue
                mean = torch.stack([surface[b, :, i, j] for b in seeing]).mean(0)
                want = F.normalize(0.8 * before[c, :, i, j] + 0.2 * F.normalize(mean, dim=0), dim=0)
                assert torch.allclose(tex.texels[c, :, i, j], want, atol=1e-6)
                assert int(tex.seen[c, i, j]) == len(seeing)
    assert torch.allclose(tex.texels.norm(dim=1), torch.ones(3, 8, 8), atol=1e-6)


def test_texture_update_with_a_reduce_is_the_update_of_the_union():
    """Two "ranks" whose sums are added by ``reduce`` end where one process on both halves ends."""
    gen = torch.Generator().manual_seed(7)
    labels = torch.tensor([0, 1, 1, 0])
    surface = torch.randn(4, 4, 8, 8, generator=gen)
    visible = torch.rand(4, 8, 8, generator=gen) > 0.4
    whole = NeuralTexture(2, 4, 8, seed=0)
    whole.update(labels, surface, visible)
    halves = [NeuralTexture(2, 4, 8, seed=0) for _ in range(2)]
    parts = [(labels[:2], surface[:2], visible[:2]), (labels[2:], surface[2:], visible[2:])]
    # simulate all_reduce: each call sees the other rank's tensor for the same call

    records = [[], []]

    def make_reduce(r):
        def reduce(t):
            records[r].append(t.clone())
        return reduce

    for r in range(2):  # first pass: record local tensors
        NeuralTexture(2, 4, 8, seed=0).update(*parts[r], reduce=make_reduce(r))
    for r in range(2):
        calls = iter(range(2))

        def reduce(t, r=r):
            i = next(calls)
            t.copy_(records[0][i] + records[1][i])
        halves[r].update(*parts[r], reduce=reduce)
    for h in halves:
        assert torch.allclose(h.texels, whole.texels, atol=1e-6) and torch.equal(h.seen, whole.seen)


def test_bank_is_a_fifo():
    bank = BackgroundBank(size=5, dim=2, seed=0)
    init = bank.features.clone()
    assert torch.allclose(init.norm(dim=1), torch.ones(5))
    pushed = F.normalize(torch.arange(1, 15, dtype=torch.float32).view(7, 2), dim=1)
    bank.push(pushed[:3])
    assert torch.allclose(bank.features, torch.cat([init[3:], pushed[:3]]))
    bank.push(pushed[3:5])
    assert torch.allclose(bank.features, pushed[:5])
    bank.push(pushed[5:7])
    assert torch.allclose(bank.features, pushed[2:7])  # the two oldest dropped
    bank.push(torch.cat([pushed, pushed]))  # more than the capacity: the last 5
    assert torch.allclose(bank.features, torch.cat([pushed, pushed])[-5:])
    assert torch.allclose(bank.mean(), F.normalize(bank.features.mean(0), dim=0))
    with pytest.raises(ValueError, match="features must be"):
        bank.push(torch.zeros(3, 4))


@pytest.mark.parametrize("stride", [4, 8])
def test_featurenet_shapes_and_unit_length(stride):
    net = FeatureNet("resnet18", dim=16, stride=stride).eval()
    y = net(torch.rand(2, 3, 64, 96))
    assert y.shape == (2, 16, 64 // stride, 96 // stride)
    assert torch.allclose(y.norm(dim=1), torch.ones(2, 64 // stride, 96 // stride), atol=1e-5)


def test_featurenet_loads_a_local_state_dict(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    net = FeatureNet("resnet18", dim=8, weights=str(path))
    assert torch.equal(net.layers[2][0].conv1.weight, ref.layer3[0].conv1.weight)
    with pytest.raises(FileNotFoundError):
        FeatureNet("resnet18", weights=str(tmp_path / "missing.pt"))
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a resnet18 state dict"):
        FeatureNet("resnet18", weights=str(tmp_path / "bad.pt"))


def test_featurenet_errors():
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        FeatureNet("vgg")
    with pytest.raises(ValueError, match="stride must be"):
        FeatureNet(stride=2)
    with pytest.raises(ValueError, match="not divisible by the stride 4"):
        FeatureNet(dim=8)(torch.rand(1, 3, 30, 32))


def _tiny_model(categories=("car", "chair"), **config):
    from dmnt_lib.deform import DeformableMesh, DeformationNet
    from dmnt_lib.mesh import cuboid_template

    torch.manual_seed(0)
    meshes = {c: DeformableMesh(cuboid_template([1.0, 0.6 + 0.2 * i, 1.5], num_verts=100), 3, DeformationNet(8, 16, 2, (), 2), seed=i)
              for i, c in enumerate(categories)}
    names = {c: ["01", "02", "03"] for c in categories}
    cfg = dict(dim=8, texture_size=16, bank_size=32)
    cfg.update(config)
    return DMNT(categories, meshes, names, ModelConfig(**cfg))


def test_dmnt_accessors():
    m = _tiny_model()
    assert m.categories == ("car", "chair") and m.stride == 4 and m.dim == 8
    assert m.texture("chair").shape == (8, 16, 16) and m.codes("car").shape == (3, 8)
    assert m.features(torch.rand(1, 3, 32, 32)).shape == (1, 8, 8, 8)
    dm = m.deformable("car")
    assert torch.allclose(m.mesh("car", 2).verts, dm.deformed_verts(dm.latents[1]))
    assert torch.allclose(m.mesh("car").verts, dm.deformed_verts(dm.mean_code()))
    with pytest.raises(ValueError, match="unknown category 'bus'"):
        m.texture("bus")
    with pytest.raises(ValueError, match="no CAD model 9"):
        m.mesh("car", 9)
    # Inference is dmnt_lib.inference.infer(model, ...): the model package never imports inference
    # (the layering in tests/test_imports.py).
    assert not hasattr(m, "infer")


def test_every_category_name_works_including_train(tmp_path):
    """"train" is a PASCAL3D+ category and also nn.Module.train: the model must not key modules by name."""
    from dmnt_lib.data import CATEGORIES

    m = _tiny_model(categories=tuple(CATEGORIES))
    assert m.categories == tuple(CATEGORIES) and m.deformable("train").num_models == 3
    m.train()  # still the method
    m.save(tmp_path / "m.pt")
    back = DMNT.load(tmp_path / "m.pt")
    assert torch.equal(back.mesh("train", 2).verts, m.mesh("train", 2).verts)


def test_dmnt_save_load_round_trip(tmp_path):
    m = _tiny_model()
    m.textures.update(torch.tensor([1]), torch.randn(1, 8, 16, 16), torch.rand(1, 16, 16) > 0.5)
    m.bank.push(torch.randn(5, 8))
    m.save(tmp_path / "m.pt", extra={"note": "x"})
    back, extra = DMNT.load(tmp_path / "m.pt", return_extra=True)
    assert extra == {"note": "x"} and back.categories == m.categories and back.config == m.config
    sa, sb = m.state_dict(), back.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(m.eval().features(x), back.eval().features(x))
    assert torch.equal(back.mesh("chair", 3).verts, m.mesh("chair", 3).verts)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a readable model file"):
        DMNT.load(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError):
        DMNT.load(tmp_path / "none.pt")


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_loss_gradient_reaches_the_backbone_through_image_to_uv(backend):
    """A uv map of a rendered mesh, features from the backbone, the loss: every backbone layer gets a gradient,
    and the torch and cpp backends give the same one."""
    from dmnt_lib.camera import pose_to_cameras
    from dmnt_lib.render import uv_fragment
    from dmnt_lib.transform import image_to_uv

    grads = {}
    for b in ("torch", backend):
        m = _tiny_model()
        m.train()
        cams = pose_to_cameras(0.6, 0.3, 0.1, 4.0, 16, focal=40.0)
        frag = uv_fragment(m.mesh("car", 1), cams, 16)
        feats = m.features(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
        surface, visible = image_to_uv(feats, frag.uv, frag.mask, 16, backend=b)
        groups = sample_groups(surface[0], visible[0], 0, m.textures.texels, m.textures.seen > 0, m.bank.memory,
                               SampleCounts(50, 20, 3, 10, 10), torch.Generator().manual_seed(0))
        f, pos, neg = groups[:3]
        contrastive_loss(f, pos, neg).backward()
        grads[b] = {n: p.grad.clone() for n, p in m.backbone.named_parameters()}
    g = grads[backend]
    assert all(v.abs().sum() > 0 for v in g.values())
    for n in g:  # float32 sums in another order: relative error of the whole tensor
        assert (g[n] - grads["torch"][n]).norm() <= 1e-4 * grads["torch"][n].norm(), n
