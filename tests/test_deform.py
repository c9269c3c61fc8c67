"""Deformable meshes: the MLP, regularizers, soft silhouettes, fitting, checkpoints, latent fitting."""

import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dmnt_lib.camera import pose_to_cameras
from dmnt_lib.data import CADModel, cad_models
from dmnt_lib.deform import (
    CodeAdam,
    DeformableMesh,
    DeformationNet,
    FitConfig,
    chamfer_distance,
    edge_length_loss,
    evaluate,
    fit_category,
    fit_latent,
    hard_silhouette,
    laplacian_smoothness,
    load_cad_models,
    load_checkpoint,
    make_template,
    mesh_edges,
    offset_magnitude,
    positional_encoding,
    sample_surface,
    save_checkpoint,
    silhouette_iou,
    soft_iou_loss,
    soft_silhouette,
    uniform_laplacian,
    view_cameras,
)
from dmnt_lib.deform.silhouette import _pixel_centres, _signed_dist2, to_ndc
from dmnt_lib.mesh import UVMesh, cuboid_template, uv_sphere, write_off
from dmnt_lib.render import render_mask

# A tiny configuration for the mechanics tests (checkpoints, resume): seconds, not minutes.
TINY = dict(template_verts=100, hidden=32, depth=3, skip=(1,), num_freqs=2, latent_dim=4, num_samples=200,
            image_size=32, silhouette_batch=2, eval_samples=300, eval_image_size=32)


def _small_net_mesh(template=None, n=3, seed=0):
    torch.manual_seed(seed)
    template = template or cuboid_template([1.0, 0.6, 0.8], num_verts=120)
    return DeformableMesh(template, n, DeformationNet(latent_dim=8, hidden=32, depth=4, skip=(2,), num_freqs=3), seed=seed)


def _cad(verts, faces, index=1):
    """A geometry-only ``dmnt_lib.data.CADModel`` (material and part 0, as ``load_cad_models`` makes)."""
    zeros = torch.zeros(len(faces), dtype=torch.int64)
    return CADModel("bottle", index, verts, faces, zeros, zeros, ("mesh",))


def _write_cad_set(root: Path) -> Path:
    """Three CAD-like closed meshes of one category as .off files: two ellipsoids and a box with a bump."""
    s = uv_sphere(1.0, 10, 20)
    write_off(root / "CAD" / "bottle" / "01.off", s.verts * torch.tensor([0.5, 0.2, 0.25]), s.faces)
    write_off(root / "CAD" / "bottle" / "02.off", s.verts * torch.tensor([0.35, 0.3, 0.2]), s.faces)
    b = cuboid_template([0.8, 0.25, 0.4], num_verts=300)
    v = b.verts.clone()
    top = (v[:, 1] > v[:, 1].max() - 1e-6) & (v[:, 0].abs() < 0.2)
    v[top, 1] += 0.15
    write_off(root / "CAD" / "bottle" / "03.off", v, b.faces)
    return root


# --------------------------------------------------------------------------- network


def test_positional_encoding_matches_its_formula():
    x = torch.rand(5, 3, dtype=torch.float64) * 2 - 1
    enc = positional_encoding(x, 4)
    assert enc.shape == (5, 3 + 6 * 4)
    assert torch.equal(enc[:, :3], x)
    for k in range(4):
        assert torch.allclose(enc[:, 3 + 3 * k : 6 + 3 * k], torch.sin(2**k * math.pi * x))
        assert torch.allclose(enc[:, 15 + 3 * k : 18 + 3 * k], torch.cos(2**k * math.pi * x))
    assert torch.equal(positional_encoding(x, 0), x)


def test_default_net_is_the_documented_architecture():
    net = DeformationNet()
    assert (net.depth, net.hidden, net.latent_dim, net.num_freqs, net.skip) == (8, 256, 32, 4, (4,))
    widths = [(l.in_features, l.out_features) for l in net.layers]
    assert widths[0] == (3 + 24 + 32, 256) and widths[4] == (256 + 59, 256)
    assert all(w == (256, 256) for i, w in enumerate(widths) if i not in (0, 4))
    assert (net.out.in_features, net.out.out_features) == (256, 3)


def test_zero_initialised_net_is_exactly_the_identity():
    mesh = _small_net_mesh()
    for z in (0, 2, torch.randn(8), mesh.mean_code()):
        assert torch.equal(mesh.deformed_verts(z), mesh.template.verts)
        assert torch.equal(mesh.deformed(z).verts, mesh.template.verts)
    assert torch.equal(mesh.deformed_verts(torch.randn(5, 8)), mesh.template.verts.expand(5, -1, -1))


def test_latent_codes_are_seeded_small_gaussians():
    a, b = _small_net_mesh(n=200, seed=3), _small_net_mesh(n=200, seed=3)
    assert torch.equal(a.latents, b.latents)
    assert 0.008 < float(a.latents.detach().std()) < 0.012  # N(0, 0.01²), 1600 draws
    assert not torch.equal(a.latents, _small_net_mesh(n=200, seed=4).latents)


def test_gradients_reach_the_latents_and_every_layer():
    mesh = _small_net_mesh()
    loss = (mesh.deformed_verts(mesh.latents) ** 2).sum()
    loss.backward()
    # At init only the (zero) output layer can receive gradient: everything behind it is gated by it.
    assert mesh.net.out.weight.grad.abs().sum() > 0
    assert all(float(l.weight.grad.abs().sum()) == 0 for l in mesh.net.layers)
    assert float(mesh.latents.grad.abs().sum()) == 0
    mesh.zero_grad()
    with torch.no_grad():
        mesh.net.out.weight.normal_(0, 0.1)
    (mesh.deformed_verts(mesh.latents) ** 2).sum().backward()
    for name, p in mesh.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert (mesh.latents.grad.abs().sum(dim=1) > 0).all()  # every model's code


def test_offsets_gradcheck_in_z():
    mesh = _small_net_mesh(cuboid_template([1.0, 0.6, 0.8], num_verts=20)).double()
    with torch.no_grad():
        mesh.net.out.weight.normal_(0, 0.1)
    z = torch.randn(8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: mesh.offsets(c), (z,), fast_mode=True)


def test_deformed_mesh_keeps_topology_uvs_and_seams():
    mesh = _small_net_mesh()
    with torch.no_grad():
        mesh.net.out.weight.normal_(0, 0.1)
        mesh.net.out.bias.normal_(0, 0.1)
    t = mesh.template
    d = mesh.deformed(1)
    assert isinstance(d, UVMesh)
    assert d.faces is t.faces and d.verts_uvs is t.verts_uvs and d.faces_uvs is t.faces_uvs
    assert torch.equal(d.seam_edges(), t.seam_edges())
    assert d.verts.shape == t.verts.shape and not torch.equal(d.verts, t.verts)


def test_net_and_mesh_reject_bad_arguments():
    with pytest.raises(ValueError, match="hidden"):
        DeformationNet(hidden=0)
    with pytest.raises(ValueError, match="skip"):
        DeformationNet(depth=4, skip=(4,))
    net = DeformationNet(latent_dim=4, hidden=8, depth=2, skip=(1,), num_freqs=1)
    with pytest.raises(ValueError, match="points"):
        net(torch.zeros(5, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="z must"):
        net(torch.zeros(5, 3), torch.zeros(3))
    with pytest.raises(TypeError, match="template"):
        DeformableMesh(torch.zeros(4, 3), 2, net)
    mesh = DeformableMesh(cuboid_template([1, 1, 1], num_verts=50), 2, net)
    with pytest.raises(ValueError, match="num_models"):
        DeformableMesh(mesh.template, 0, net)
    with pytest.raises(ValueError, match="model index"):
        mesh.deformed(2)
    with pytest.raises(ValueError, match="one code"):
        mesh.deformed(torch.zeros(3, 4))


# --------------------------------------------------------------------------- geometry


def test_mesh_edges_of_a_closed_mesh_satisfy_euler():
    t = cuboid_template([1.0, 0.5, 0.7], num_verts=200)
    e = mesh_edges(t.faces)
    assert len(e) == t.num_verts + t.num_faces - 2  # V - E + F = 2
    assert (e[:, 0] < e[:, 1]).all() and len(torch.unique(e, dim=0)) == len(e)
    from pytorch3d.structures import Meshes

    assert torch.equal(e, Meshes([t.verts], [t.faces]).edges_packed())  # PyTorch3D's edges, same order


def test_sample_surface_lies_on_the_mesh_and_follows_area():
    # Two coplanar triangles (z = 0), the second with 3x the area; integer coordinates.
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0], [5, 0, 0], [2, 1, 0]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    p = sample_surface(verts, faces, 20000, torch.Generator().manual_seed(0))
    assert p.shape == (20000, 3) and torch.equal(p[:, 2], torch.zeros(20000))
    in_first = p[:, 0] + p[:, 1] <= 1 + 1e-6
    in_second = (p[:, 0] >= 2 - 1e-6) & (3 * p[:, 1] <= 5 - p[:, 0] + 1e-5)
    assert (in_first | in_second).all()
    assert abs(float(in_second.float().mean()) - 0.75) < 0.02
    # Same seed, translated mesh (exact in floating point): translated points.
    q = sample_surface(verts + torch.tensor([4.0, -2.0, 1.0]), faces, 20000, torch.Generator().manual_seed(0))
    assert torch.allclose(q, p + torch.tensor([4.0, -2.0, 1.0]), atol=1e-5)


def test_sample_surface_is_pytorch3ds_sampler_seeded_by_the_generator():
    """The same generator state gives the same points; the global RNG is neither used nor
    changed; the points are PyTorch3D's ``sample_points_from_meshes`` under the seed drawn from
    the generator; gradients are the barycentric weights (they sum to 1 per point)."""
    from pytorch3d.ops import sample_points_from_meshes
    from pytorch3d.structures import Meshes

    t = cuboid_template([1.0, 0.6, 0.8], num_verts=150)
    v = torch.stack([t.verts, 1.5 * t.verts]).requires_grad_(True)
    g = torch.Generator().manual_seed(5)
    twin = torch.Generator().set_state(g.get_state())
    rng = torch.random.get_rng_state()
    p = sample_surface(v, t.faces, 500, g)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.equal(sample_surface(v, t.faces, 500, torch.Generator().set_state(twin.get_state())), p)
    assert not torch.equal(sample_surface(v, t.faces, 500, g), p)  # the generator advanced
    seed = int(torch.randint(0, 2**62, (), generator=twin))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ref = sample_points_from_meshes(Meshes(list(v.detach()), [t.faces] * 2), 500)
    assert torch.equal(p.detach(), ref)
    (grad,) = torch.autograd.grad(p.sum(), v)
    assert torch.allclose(grad.sum(1), torch.full((2, 3), 500.0))
    with pytest.raises(ValueError, match="surface area"):
        sample_surface(torch.zeros(4, 3), torch.tensor([[0, 1, 2], [1, 2, 3]]), 10, torch.Generator())


def test_chamfer_matches_brute_force_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 300, 3, generator=g, requires_grad=True)
    y = torch.rand(2, 200, 3, generator=g, requires_grad=True)
    d = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)  # (B, P, Q), exact squared distances
    ref = d.min(2).values.mean(1) + d.min(1).values.mean(1)
    got = chamfer_distance(x, y)
    assert got.dtype == torch.float32 and torch.allclose(got, ref, rtol=1e-6, atol=0)
    for a, b in zip(torch.autograd.grad(got.sum(), (x, y)), torch.autograd.grad(ref.sum(), (x, y))):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    assert torch.equal(chamfer_distance(y, y), torch.zeros(2))


def test_regularizers_identities():
    t = cuboid_template([1.0, 0.5, 0.7], num_verts=150)
    e = mesh_edges(t.faces)
    assert float(laplacian_smoothness(torch.tensor([0.3, -1.0, 2.0]).expand(t.num_verts, 3), e)) == pytest.approx(0.0, abs=1e-12)
    x = torch.randn(2, t.num_verts, 3, dtype=torch.float64)
    ref = []
    for b in range(2):
        for i in range(t.num_verts):
            nb = torch.cat([e[e[:, 0] == i, 1], e[e[:, 1] == i, 0]])
            ref.append(((x[b, i] - x[b, nb].mean(0)) ** 2).sum())
    assert torch.allclose(laplacian_smoothness(x, e), torch.stack(ref).mean())
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64)).Q
    moved = t.verts.double() @ rot + torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    assert float(edge_length_loss(moved, t.verts.double(), e)) < 1e-20
    assert float(edge_length_loss(1.3 * t.verts.double(), t.verts.double(), e)) == pytest.approx(0.09, rel=1e-9)
    assert torch.allclose(offset_magnitude(x), (x**2).sum(-1).mean())


def test_laplacian_is_pytorch3ds_and_only_the_reduction_differs():
    """``uniform_laplacian`` is PyTorch3D's ``D⁻¹A − I``: its mean unsquared norm is
    ``mesh_laplacian_smoothing(..., "uniform")``; ours averages the squared norm."""
    from pytorch3d.loss import mesh_laplacian_smoothing
    from pytorch3d.structures import Meshes

    t = cuboid_template([1.0, 0.5, 0.7], num_verts=150)
    e = mesh_edges(t.faces)
    x = torch.randn(2, t.num_verts, 3)
    lap = uniform_laplacian(x, e)
    assert lap.shape == x.shape and torch.allclose(uniform_laplacian(x[1], e), lap[1])
    ref = mesh_laplacian_smoothing(Meshes(list(x), [t.faces] * 2), method="uniform")
    assert torch.allclose(lap.norm(dim=-1).mean(), ref, rtol=1e-5)
    assert torch.allclose(laplacian_smoothness(x, e), (lap**2).sum(-1).mean())
    small = cuboid_template([1.0, 0.5, 0.7], num_verts=30)  # float64 works (PyTorch3D's matrix is float32)
    xd = torch.randn(small.num_verts, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: laplacian_smoothness(a, mesh_edges(small.faces)), (xd,))


def test_edge_length_loss_is_mesh_edge_loss_when_all_template_edges_are_equal():
    """On a regular tetrahedron (every edge of length ℓ*) ``edge_length_loss · ℓ*²`` is
    PyTorch3D's ``mesh_edge_loss(target_length=ℓ*)``; on the cuboid template the two differ."""
    from pytorch3d.loss import mesh_edge_loss
    from pytorch3d.structures import Meshes

    tet = torch.tensor([[1.0, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])
    length = 8**0.5
    moved = tet + 0.3 * torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = edge_length_loss(moved, tet, mesh_edges(faces)) * length**2
    assert torch.allclose(ours, mesh_edge_loss(Meshes(list(moved), [faces] * 2), target_length=length))
    t = cuboid_template([1.0, 0.8, 2.2], num_verts=150)
    mean_len = float((t.verts[mesh_edges(t.faces)[:, 0]] - t.verts[mesh_edges(t.faces)[:, 1]]).norm(dim=1).mean())
    assert float(edge_length_loss(t.verts, t.verts, mesh_edges(t.faces))) == 0.0
    assert float(mesh_edge_loss(Meshes([t.verts], [t.faces]), target_length=mean_len)) > 0  # would deform the template


# --------------------------------------------------------------------------- silhouettes


def _sphere_cams(size, n=2):
    return pose_to_cameras(torch.tensor([0.3, 1.2, -2.0])[:n], torch.tensor([0.2, 0.6, -0.3])[:n], 0.1, 3.0, size, focal=1.2 * min(size))


@pytest.mark.parametrize("size", [(24, 24), (20, 28), (28, 20)])
def test_signed_distances_match_pytorch3d_rasterizer(size):
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes

    s = uv_sphere(0.8, 8, 12)
    cams = _sphere_cams(size)
    raster = MeshRasterizer(cameras=cams, raster_settings=RasterizationSettings(image_size=size, blur_radius=0.01, faces_per_pixel=10, bin_size=0))
    meshes = Meshes(verts=[s.verts] * 2, faces=[s.faces] * 2)
    frags = raster(meshes)
    ndc = to_ndc(s.verts[None].expand(2, -1, -1), cams)
    assert torch.allclose(ndc, raster.transform(meshes).verts_padded(), atol=1e-6)
    b, i, j, k = torch.nonzero(frags.pix_to_face >= 0, as_tuple=True)
    f = frags.pix_to_face[b, i, j, k] % s.num_faces
    d = _signed_dist2(_pixel_centres(i, j, size[0], size[1], torch.float32), ndc[b[:, None], s.faces[f], :2])
    assert len(d) > 1000 and (d < 0).any() and (d > 0).any()
    assert torch.allclose(d, frags.dists[b, i, j, k], atol=1e-6)


def test_soft_silhouette_equals_dense_soft_rasterizer_and_gradchecks():
    s = uv_sphere(0.8, 6, 8)
    h, w = 14, 18
    cams = _sphere_cams((h, w))
    v = s.verts[None].repeat(2, 1, 1).double().requires_grad_()
    sigma = 0.5
    got = soft_silhouette(v, s.faces, cams, (h, w), sigma=sigma)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    dist = _signed_dist2(_pixel_centres(ii, jj, h, w, torch.float64)[None, :, :, None], to_ndc(v.detach(), cams)[:, s.faces, :2][:, None, None])
    sig_ndc = sigma * (2 / min(h, w)) ** 2
    prob = torch.sigmoid(-dist / sig_ndc) * (dist < math.log(1e4 - 1) * sig_ndc)
    assert torch.allclose(got, 1 - (1 - prob).prod(-1), atol=1e-12)
    soft = (got > 0.01) & (got < 0.99)
    assert (got > 0.99).any() and soft.sum() > 20  # both the saturated inside and the soft rim are exercised
    cam0 = _sphere_cams((h, w), n=1)
    assert torch.autograd.gradcheck(lambda x: soft_silhouette(x, s.faces, cam0, (h, w), sigma=sigma), (v[:1].detach().requires_grad_(),), fast_mode=True)


def test_hard_silhouette_equals_render_mask_and_iou_identities():
    t = cuboid_template([1.0, 0.5, 0.7], num_verts=150)
    cams = _sphere_cams((32, 32), n=3)
    hard = hard_silhouette(t.verts[None].expand(3, -1, -1), t.faces, cams, 32)
    assert torch.equal(hard, render_mask(t, cams, 32))
    assert torch.equal(silhouette_iou(hard, hard), torch.ones(3))
    shifted = hard.roll(3, dims=2)
    inter, union = (hard & shifted).sum((1, 2)).float(), (hard | shifted).sum((1, 2)).float()
    assert torch.allclose(silhouette_iou(hard, shifted), inter / union)
    assert torch.allclose(soft_iou_loss(shifted.float(), hard), 1 - (inter / union).mean())


def test_silhouette_inputs_are_checked():
    t = cuboid_template([1.0, 0.5, 0.7], num_verts=50)
    cams = _sphere_cams((16, 16), n=2)
    with pytest.raises(ValueError, match="verts"):
        soft_silhouette(t.verts, t.faces, cams, 16)
    with pytest.raises(ValueError, match="batch"):
        soft_silhouette(t.verts[None], t.faces, cams, 16)
    with pytest.raises(ValueError, match="sigma"):
        soft_silhouette(t.verts[None].expand(2, -1, -1), t.faces, cams, 16, sigma=0)
    with pytest.raises(TypeError, match="cameras"):
        hard_silhouette(t.verts[None], t.faces, "camera", 16)
    with pytest.raises(TypeError, match="target"):
        soft_iou_loss(torch.zeros(1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="same batch"):
        chamfer_distance(torch.zeros(2, 5, 3), torch.zeros(3, 5, 3))


# --------------------------------------------------------------------------- fitting


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A quick fit of the three-model category (shared by the fitting tests)."""
    root = _write_cad_set(tmp_path_factory.mktemp("cad"))
    models = load_cad_models(root, "bottle")
    config = FitConfig.quick(steps=100, image_size=64, silhouette_batch=2)
    result = fit_category(models, config, progress=False)
    return models, config, result, evaluate(result.mesh, models, config)


@pytest.mark.slow
def test_fitting_halves_chamfer_and_raises_silhouette_iou(fitted):
    models, config, result, m = fitted
    assert [x.index for x in models] == [1, 2, 3] and result.names == ["01", "02", "03"]
    for n in range(3):
        assert m["chamfer_deformed"][n] <= 0.5 * m["chamfer_template"][n]
        assert m["iou_deformed"][n] > m["iou_template"][n]
    # The template is the identity deformation: its numbers are the untrained mesh's.
    fresh = DeformableMesh(result.mesh.template, 3, DeformationNet(config.latent_dim, config.hidden, config.depth, config.skip, config.num_freqs))
    assert evaluate(fresh, models, config)["chamfer_deformed"] == m["chamfer_template"]
    h = result.history
    assert len(h["loss"]) == 100 and h["chamfer"][-1] < h["chamfer"][0]
    assert result.mesh.deformed(0).faces is result.mesh.template.faces


@pytest.mark.slow
def test_fit_latent_beats_the_mean_code(fitted):
    """The code fitted to two silhouettes beats the mean code on those views, on three views it
    never saw, and in 3D (chamfer to the CAD model)."""
    models, config, result, _ = fitted
    mesh = result.mesh
    faces = mesh.template.faces
    before = {k: v.clone() for k, v in mesh.state_dict().items()}
    radius = float(torch.linalg.vector_norm(mesh.template_verts, dim=1).max())
    cams = view_cameras([(60.0, 15.0), (150.0, 30.0)], radius, 64)
    unseen = view_cameras([(250.0, 20.0), (330.0, 40.0), (15.0, 60.0)], radius, 64)

    def unseen_iou(code, m):
        pred = hard_silhouette(mesh.deformed_verts(code).detach()[None].expand(3, -1, -1), faces, unseen, 64)
        return float(silhouette_iou(pred, hard_silhouette(m.verts[None].expand(3, -1, -1), m.faces, unseen, 64)).mean())

    def chamfer_to_cad(code, m):
        pts = sample_surface(mesh.deformed_verts(code).detach(), faces, 3000, torch.Generator().manual_seed(1))
        return float(chamfer_distance(pts[None], sample_surface(m.verts, m.faces, 3000, torch.Generator().manual_seed(2))[None])[0])

    for m in models:
        target = hard_silhouette(m.verts[None].expand(2, -1, -1), m.faces, cams, 64)
        fit = fit_latent(mesh, cams, target, steps=40, lr=0.05)
        assert torch.equal(fit.init, mesh.mean_code())
        assert fit.iou_fit > fit.iou_init
        assert fit.history[-1] < fit.history[0]
        assert unseen_iou(fit.z, m) > unseen_iou(fit.init, m), m.index
        assert chamfer_to_cad(fit.z, m) < chamfer_to_cad(fit.init, m), m.index
    assert all(torch.equal(before[k], v) for k, v in mesh.state_dict().items())
    assert all(p.requires_grad for p in mesh.parameters())


def test_fit_latent_rejects_bad_inputs():
    mesh = _small_net_mesh()
    cams = _sphere_cams((16, 16), n=2)
    good = torch.zeros(2, 16, 16, dtype=torch.bool)
    good[:, 4:10, 4:10] = True
    with pytest.raises(TypeError, match="target_mask"):
        fit_latent(mesh, cams, good.float())
    with pytest.raises(ValueError, match="cameras"):
        fit_latent(mesh, cams, good[:1])
    with pytest.raises(ValueError, match="at least one"):
        fit_latent(mesh, cams, torch.zeros(2, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="init"):
        fit_latent(mesh, cams, good, init=torch.zeros(3))
    with pytest.raises(TypeError, match="DeformableMesh"):
        fit_latent(mesh.net, cams, good)


def test_code_adam_is_torch_adam_per_drawn_code():
    """Each row follows torch.optim.Adam run on that row alone, over the steps it was drawn in."""
    g = torch.Generator().manual_seed(0)
    codes = torch.nn.Parameter(torch.randn(5, 6, generator=g))
    alone = [torch.nn.Parameter(codes.detach()[r].clone()) for r in range(5)]
    ref = [torch.optim.Adam([p], lr=0.01, foreach=False) for p in alone]
    opt = CodeAdam(codes, 0.01)
    for _ in range(25):
        rows = torch.randperm(5, generator=g)[:2].tolist()
        grad = torch.randn(5, 6, generator=g)
        codes.grad = grad.clone()
        opt.step(rows)
        for r in rows:
            alone[r].grad = grad[r].clone()
            ref[r].step()
        assert torch.equal(codes.detach(), torch.stack([p.detach() for p in alone]))
    assert opt.step_count.tolist() == [int(o.state[p]["step"]) for o, p in zip(ref, alone)]
    assert int(opt.step_count.sum()) == 50
    with pytest.raises(ValueError, match="rows"):
        opt.step([1, 1])


def test_codes_not_drawn_at_a_step_do_not_move(tmp_path):
    """models_per_step=1: at every step exactly one code takes an Adam step; every other code
    and its Adam state are bitwise unchanged (checkpoint after each step, read in the callback)."""
    models = load_cad_models(_write_cad_set(tmp_path), "bottle")
    config = FitConfig(steps=8, checkpoint_every=1, models_per_step=1, **TINY)
    ckpt = tmp_path / "bottle.pt"
    initial = fit_category(models, FitConfig(**{**config.to_dict(), "steps": 0}), progress=False).mesh.latents.detach()
    snaps = [(initial, torch.zeros(3, dtype=torch.int64), torch.zeros_like(initial), torch.zeros_like(initial))]

    def record(step, losses):
        result, opt, _ = load_checkpoint(ckpt)
        snaps.append((result.mesh.latents.detach(), opt["codes"]["step_count"], opt["codes"]["exp_avg"], opt["codes"]["exp_avg_sq"]))

    final = fit_category(models, config, checkpoint=ckpt, callback=record, progress=False)
    drawn = []
    for (z0, n0, m0, v0), (z1, n1, m1, v1) in zip(snaps[:-1], snaps[1:]):
        (row,) = torch.nonzero(n1 != n0)[:, 0].tolist()  # one code drew its Adam step
        assert n1[row] == n0[row] + 1
        others = torch.arange(3) != row
        for before, after in ((z0, z1), (m0, m1), (v0, v1)):
            assert torch.equal(before[others], after[others])
        drawn.append(row)
    assert len(set(drawn)) > 1 and not torch.equal(snaps[-1][0], initial)  # several codes drawn, and they moved
    assert torch.equal(final.mesh.latents.detach(), snaps[-1][0])


def test_checkpoint_round_trip_is_bitwise(tmp_path):
    models = load_cad_models(_write_cad_set(tmp_path), "bottle")
    config = FitConfig(steps=4, checkpoint_every=2, **TINY)
    ckpt = tmp_path / "ck" / "bottle.pt"
    result = fit_category(models, config, checkpoint=ckpt, category="bottle", progress=False)
    loaded, opt_state, category = load_checkpoint(ckpt)
    assert category == "bottle" and loaded.steps == 4 and loaded.names == ["01", "02", "03"] and loaded.config == config
    a, b = result.mesh.state_dict(), loaded.mesh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(loaded.mesh.deformed_verts(loaded.mesh.latents), result.mesh.deformed_verts(result.mesh.latents))
    assert loaded.history == result.history
    assert loaded.optimizer is None and result.optimizer is not None
    _assert_same_state(opt_state, result.optimizer.state_dict())  # the live optimizer's state, saved bitwise
    assert opt_state["codes"]["step_count"].sum() == 4 * 3  # every model drawn at each of the 4 steps
    assert sorted(os.listdir(ckpt.parent)) == ["bottle.pt"]  # atomic write leaves no temp file


def _assert_same_state(a, b, where="state"):
    """Nested dicts/lists of tensors and scalars are equal, tensors bitwise (dtype included)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_state(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    models = load_cad_models(_write_cad_set(tmp_path), "bottle")
    ckpt = tmp_path / "ck" / "bottle.pt"
    result = fit_category(models, FitConfig(steps=2, **TINY), checkpoint=ckpt, progress=False)
    saved = ckpt.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(saved[: len(saved) // 2])  # a partial write, then the failure
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    result.steps += 1
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, result, result.optimizer, "bottle")
    monkeypatch.undo()
    assert ckpt.read_bytes() == saved
    assert sorted(os.listdir(ckpt.parent)) == ["bottle.pt"]
    assert load_checkpoint(ckpt)[0].steps == 2


def test_interrupted_fit_resumes_to_the_same_result(tmp_path):
    models = load_cad_models(_write_cad_set(tmp_path), "bottle")
    config = FitConfig(steps=6, checkpoint_every=3, models_per_step=2, **TINY)  # per-code Adam state must resume too
    straight = fit_category(models, config, progress=False)

    def interrupt(step, losses):
        if step == 4:
            raise KeyboardInterrupt

    ckpt = tmp_path / "bottle.pt"
    with pytest.raises(KeyboardInterrupt):
        fit_category(models, config, checkpoint=ckpt, callback=interrupt, progress=False)
    assert load_checkpoint(ckpt)[0].steps == 3  # the last checkpoint before the interruption
    resumed = fit_category(models, config, checkpoint=ckpt, progress=False)
    assert resumed.steps == 6 and resumed.history == straight.history
    a, b = straight.mesh.state_dict(), resumed.mesh.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    _assert_same_state(straight.optimizer.state_dict(), resumed.optimizer.state_dict())
    with pytest.raises(ValueError, match="different config"):
        fit_category(models, FitConfig(steps=7, checkpoint_every=3, models_per_step=2, **TINY), checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="models"):
        fit_category(models[:2], config, checkpoint=ckpt, progress=False)


def _train_view_iou(mesh, models, config):
    """Per model: mean hard-silhouette IoU over the training ``config.views`` at ``config.image_size``."""
    radius = float(torch.linalg.vector_norm(mesh.template_verts, dim=1).max())
    cams = view_cameras(config.views, radius, config.image_size)
    nv = len(config.views)
    out = []
    for n, m in enumerate(models):
        target = hard_silhouette(m.verts[None].expand(nv, -1, -1), m.faces, cams, config.image_size)
        pred = hard_silhouette(mesh.deformed_verts(n).detach()[None].expand(nv, -1, -1), mesh.template.faces, cams, config.image_size)
        out.append(float(silhouette_iou(pred, target).mean()))
    return out


def test_silhouette_term_alone_fits_the_training_silhouettes(tmp_path):
    """Only w_silhouette is non-zero: the soft IoU loss falls and every model's hard IoU on the
    training views rises (inverted targets, or a silhouette term left out of the loss, would not)."""
    models = load_cad_models(_write_cad_set(tmp_path), "bottle")
    weights = dict(w_chamfer=0.0, w_laplacian=0.0, w_edge=0.0, w_offset=0.0, w_latent=0.0, w_silhouette=1.0)
    config = FitConfig(steps=20, lr_net=5e-3, lr_latent=5e-2, sigma=0.5, **{**TINY, "silhouette_batch": 12}, **weights)
    result = fit_category(models, config, progress=False)
    untrained = fit_category(models, FitConfig(**{**config.to_dict(), "steps": 0}), progress=False)
    before, after = _train_view_iou(untrained.mesh, models, config), _train_view_iou(result.mesh, models, config)
    assert all(a > b for a, b in zip(after, before)), (before, after)
    h = result.history["silhouette"]
    assert h[-1] < h[0] and sum(h[-5:]) < sum(h[:5])


def _same_models(a, b):
    return [(m.category, m.index) for m in a] == [(m.category, m.index) for m in b] and all(
        torch.equal(x.verts, y.verts) and torch.equal(x.faces, y.faces) for x, y in zip(a, b))


def _write_library(root, models, z_up=False):
    """``root/CAD/<category>/NN.off``, y up as in memory or in PASCAL3D+'s z-up frame, where
    ``(x, y, z)_ours = (x, z, -y)_file``."""
    for m in models:
        v = torch.stack([m.verts[:, 0], -m.verts[:, 2], m.verts[:, 1]], 1) if z_up else m.verts
        write_off(Path(root) / "CAD" / m.category / f"{m.index:02d}.off", v, m.faces)
    return root


def test_load_cad_models_reads_the_projects_models_in_either_frame(tmp_path):
    """Written .off files come back as dmnt_lib.data.CADModel with the generator's exact
    geometry: stored y up, and stored z up when meta.json says ``cad_frame: z_up`` (PASCAL3D+'s
    on-disk frame) or when asked with ``z_up=True``."""
    cars = cad_models("car")
    loaded = load_cad_models(_write_library(tmp_path / "y", cars), "car")
    assert all(isinstance(m, CADModel) for m in loaded) and _same_models(loaded, cars)
    assert all(m.part_names == ("mesh",) and not m.face_material.any() and not m.face_part.any() for m in loaded)
    _write_library(tmp_path / "z", cars, z_up=True)
    assert not _same_models(load_cad_models(tmp_path / "z", "car"), cars)
    assert _same_models(load_cad_models(tmp_path / "z", "car", z_up=True), cars)
    (tmp_path / "z" / "meta.json").write_text('{"format": "dmnt", "cad_frame": "z_up"}')
    assert _same_models(load_cad_models(tmp_path / "z", "car"), cars)
    (tmp_path / "z" / "meta.json").write_text('{"cad_frame": "x_up"}')
    with pytest.raises(ValueError, match="cad_frame"):
        load_cad_models(tmp_path / "z", "car")
    with pytest.raises(TypeError, match="z_up"):
        load_cad_models(tmp_path / "y", "car", z_up="yes")
    write_off(tmp_path / "y" / "CAD" / "car" / "extra.off", cars[0].verts, cars[0].faces)
    with pytest.raises(ValueError, match="NN.off"):
        load_cad_models(tmp_path / "y", "car")


def test_fit_accepts_the_projects_cad_models(tmp_path):
    """dmnt_lib.data.cad_models and the same models read back from .off files fit identically;
    any object with verts/faces fits too (named by position)."""
    cars = cad_models("car")
    read = load_cad_models(_write_library(tmp_path, cars), "car")
    config = FitConfig(steps=2, **TINY)
    a, b = fit_category(cars, config, progress=False), fit_category(read, config, progress=False)
    assert a.names == b.names == [f"{i:02d}" for i in range(1, len(cars) + 1)]
    sa, sb = a.mesh.state_dict(), b.mesh.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and a.history == b.history
    assert evaluate(a.mesh, cars, config) == evaluate(b.mesh, read, config)
    plain = [SimpleNamespace(verts=m.verts, faces=m.faces) for m in cars[:2]]
    assert fit_category(plain, config, progress=False).names == ["01", "02"]


def test_fitting_inputs_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="CAD"):
        load_cad_models(tmp_path, "car")
    (tmp_path / "CAD" / "car").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=".off"):
        load_cad_models(tmp_path, "car")
    with pytest.raises(ValueError, match="steps"):
        FitConfig(steps=-1)
    with pytest.raises(ValueError, match="w_edge"):
        FitConfig(w_edge=float("nan"))
    with pytest.raises(ValueError, match="views"):
        FitConfig(views=())
    with pytest.raises(ValueError, match="cad_models"):
        fit_category([], FitConfig(**TINY))
    with pytest.raises(TypeError, match="cad_models"):
        make_template([torch.zeros(3, 3)])
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        load_checkpoint(bad)


@pytest.mark.parametrize("eval_views", [((0.0, 5.0),), ((360.0, 5.0), (30.0, 20.0)), ((-270.0, 5.0),)])
def test_eval_views_must_be_held_out(eval_views):
    with pytest.raises(ValueError, match="eval_views.*held out"):
        FitConfig(eval_views=eval_views)  # (360, 5) and (-270, 5) look from the training views (0, 5) and (90, 5)
    with pytest.raises(ValueError, match="held out"):
        FitConfig(views=((0.0, 90.0),), eval_views=((123.0, 90.0),))  # the same pole
    assert FitConfig(eval_views=((0.0, 6.0),)).eval_views == ((0.0, 6.0),)


NAN = float("nan")
E = mesh_edges(cuboid_template([1.0, 1.0, 1.0], num_verts=50).faces)

# (label, call, exception, message pattern): every bad input named in the error, raised up front.
BAD_CALLS = [
    ("init list", lambda k: fit_latent(k.mesh, k.cams, k.mask, init=[0.0] * 8), TypeError, "init"),
    ("init int", lambda k: fit_latent(k.mesh, k.cams, k.mask, init=torch.zeros(8, dtype=torch.int64)), TypeError, "init"),
    ("init nan", lambda k: fit_latent(k.mesh, k.cams, k.mask, init=torch.full((8,), NAN)), ValueError, "init"),
    ("prior nan", lambda k: fit_latent(k.mesh, k.cams, k.mask, prior_weight=NAN), ValueError, "prior_weight"),
    ("prior < 0", lambda k: fit_latent(k.mesh, k.cams, k.mask, prior_weight=-1.0), ValueError, "prior_weight"),
    ("lr 0", lambda k: fit_latent(k.mesh, k.cams, k.mask, lr=0.0), ValueError, "lr"),
    ("lr str", lambda k: fit_latent(k.mesh, k.cams, k.mask, lr="0.1"), TypeError, "lr"),
    ("steps bool", lambda k: fit_latent(k.mesh, k.cams, k.mask, steps=True), ValueError, "steps"),
    ("steps float", lambda k: fit_latent(k.mesh, k.cams, k.mask, steps=2.0), ValueError, "steps"),
    ("sigma 0", lambda k: fit_latent(k.mesh, k.cams, k.mask, sigma=0.0), ValueError, "sigma"),
    ("num_models bool", lambda k: DeformableMesh(k.mesh.template, True, k.mesh.net), ValueError, "num_models"),
    ("seed str", lambda k: DeformableMesh(k.mesh.template, 2, k.mesh.net, seed="x"), TypeError, "seed"),
    ("z float64", lambda k: k.mesh.offsets(torch.zeros(8, dtype=torch.float64)), TypeError, "z must have the net's dtype"),
    ("z int", lambda k: k.mesh.net(torch.zeros(4, 3), torch.zeros(8, dtype=torch.int64)), TypeError, "z"),
    ("z nan", lambda k: k.mesh.offsets(torch.full((8,), NAN)), ValueError, "z contains NaN"),
    ("z list", lambda k: k.mesh.net(torch.zeros(4, 3), [0.0] * 8), TypeError, "z"),
    ("points nan", lambda k: k.mesh.net(torch.full((4, 3), NAN), torch.zeros(8)), ValueError, "points"),
    ("chamfer int", lambda k: chamfer_distance(torch.zeros(1, 4, 3, dtype=torch.int64), torch.zeros(1, 4, 3)), TypeError, "x"),
    ("chamfer mixed", lambda k: chamfer_distance(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3, dtype=torch.float64)), TypeError, "y must be float32"),
    ("chamfer nan", lambda k: chamfer_distance(torch.zeros(1, 4, 3), torch.full((1, 4, 3), NAN)), ValueError, "y contains NaN"),
    ("chamfer list", lambda k: chamfer_distance([[[0.0, 0, 0]]], torch.zeros(1, 4, 3)), TypeError, "x"),
    ("laplacian edge >= V", lambda k: laplacian_smoothness(torch.zeros(10, 3), E[:4].clamp(max=10)), ValueError, "edges"),
    ("laplacian edge < 0", lambda k: laplacian_smoothness(torch.zeros(50, 3), -E), ValueError, "edges"),
    ("laplacian edges int32", lambda k: laplacian_smoothness(torch.zeros(50, 3), E.int()), TypeError, "edges"),
    ("edge loss verts list", lambda k: edge_length_loss([[0.0, 0, 0]], torch.zeros(1, 3), E), TypeError, "verts"),
    ("edge loss template list", lambda k: edge_length_loss(torch.zeros(50, 3), [[0.0, 0, 0]] * 50, E), TypeError, "template_verts"),
    ("edge loss edges range", lambda k: edge_length_loss(torch.rand(10, 3), torch.rand(10, 3), E[:4].clamp(max=10)), ValueError, "edges"),
    ("mesh_edges list", lambda k: mesh_edges([[0, 1, 2]]), TypeError, "faces"),
    ("mesh_edges int32", lambda k: mesh_edges(torch.tensor([[0, 1, 2]], dtype=torch.int32)), TypeError, "faces"),
    ("iou lists", lambda k: silhouette_iou([[[True]]], [[[True]]]), TypeError, "a must"),
    ("soft iou list", lambda k: soft_iou_loss([[[0.5]]], torch.ones(1, 1, 1, dtype=torch.bool)), TypeError, "pred"),
    ("skip >= depth", lambda k: FitConfig(skip=(9,)), ValueError, "skip"),
    ("skip 0", lambda k: FitConfig(skip=(0,)), ValueError, "skip"),
    ("seed str", lambda k: FitConfig(seed="x"), TypeError, "seed"),
    ("seed < 0", lambda k: FitConfig(seed=-1), ValueError, "seed"),
    ("steps float", lambda k: FitConfig(steps=1.5), TypeError, "steps"),
    ("views nan", lambda k: FitConfig(views=((0.0, NAN),)), ValueError, "views"),
    ("evaluate net", lambda k: evaluate(k.mesh.net, [_cad(k.mesh.template.verts, k.mesh.template.faces)] * 3, FitConfig(**TINY)), TypeError, "mesh"),
    ("evaluate dict", lambda k: evaluate(k.mesh, [_cad(k.mesh.template.verts, k.mesh.template.faces)] * 3, FitConfig(**TINY).to_dict()), TypeError, "config"),
    ("template str", lambda k: fit_category([_cad(k.mesh.template.verts, k.mesh.template.faces)], FitConfig(**TINY), template="t"), TypeError, "template"),
    ("cad faces range", lambda k: make_template([_cad(torch.rand(3, 3), torch.tensor([[0, 1, 3]]))]), ValueError, r"cad_models\[0\].faces"),
]


@pytest.mark.parametrize("call, exc, match", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_inputs_get_a_clear_error(call, exc, match):
    mesh = _small_net_mesh()
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[:, 4:10, 4:10] = True
    with pytest.raises(exc, match=match):
        call(SimpleNamespace(mesh=mesh, cams=_sphere_cams((16, 16), n=2), mask=mask))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    root = _write_cad_set(tmp_path_factory.mktemp("ck"))
    models = load_cad_models(root, "bottle")
    ckpt = root / "bottle.pt"
    fit_category(models, FitConfig(steps=1, **TINY), checkpoint=ckpt, progress=False)
    return models, ckpt


@pytest.mark.parametrize("damage, match", [
    (lambda ck: ck.pop("state"), "missing the entries \\['state'\\]"),
    (lambda ck: ck.pop("optimizer"), "missing the entries \\['optimizer'\\]"),
    (lambda ck: ck["config"].update(hidden="x"), "'config'"),
    (lambda ck: ck["config"].update(color=1), "'config'"),
    (lambda ck: ck["state"].update(latents=torch.zeros(2, 4)), "'state'"),
    (lambda ck: ck.update(format="dmnt-deform-v1"), "not a dmnt-deform-v2 checkpoint"),
])
def test_damaged_checkpoints_get_a_value_error_naming_the_entry(tiny_checkpoint, tmp_path, damage, match):
    _, ckpt = tiny_checkpoint
    ck = torch.load(ckpt, weights_only=True)
    damage(ck)
    bad = tmp_path / "bad.pt"
    torch.save(ck, bad)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(bad)


def test_resuming_from_a_damaged_optimizer_state_is_a_value_error(tiny_checkpoint, tmp_path):
    models, ckpt = tiny_checkpoint
    ck = torch.load(ckpt, weights_only=True)
    ck["optimizer"]["codes"]["exp_avg"] = torch.zeros(5, 4)
    bad = tmp_path / "bottle.pt"
    torch.save(ck, bad)
    with pytest.raises(ValueError, match="'optimizer'"):
        fit_category(models, FitConfig(steps=1, **TINY), checkpoint=bad, progress=False)


# --------------------------------------------------------------------------- CLI and pictures


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_cli_prints_table_and_final_line(tmp_path, capsys, restore_threads):
    from dmnt_lib.__main__ import main

    root = _write_cad_set(tmp_path)
    args = ["deform", "--data", str(root), "--steps", "2", "--quick", "--threads", "1", "--checkpoint-dir", str(tmp_path / "ck")]
    assert main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    m = re.fullmatch(r"mean chamfer template=(\S+) deformed=(\S+); silhouette IoU template=(\S+) deformed=(\S+)", out[-1])
    assert m, out[-1]
    row = next(l.split() for l in out if l.startswith("bottle "))
    assert row[1] == "3" and [float(x) for x in row[2:6]] == [float(x) for x in m.groups()]  # one category: mean = its row
    assert out[-2].split()[:2] == ["total", "3"] and float(out[-2].split()[-1]) >= 0
    assert (tmp_path / "ck" / "bottle.pt").is_file()


@pytest.mark.parametrize("option", [["--threads", "0"], ["--steps", "-3"], ["--seed", "x"], ["--device", "gpu0"]])
def test_cli_rejects_bad_options_with_a_usage_error(tmp_path, capsys, option):
    from dmnt_lib.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["deform", "--data", str(tmp_path), *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and f"argument {option[0]}" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cli_cuda_without_gpu_is_a_one_line_error(tmp_path, capsys):
    from dmnt_lib.__main__ import main

    assert main(["deform", "--data", str(tmp_path), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --device cuda") and "CUDA" in err[0]


def test_demo_needs_cad_models(tmp_path):
    from dmnt_lib.deform.cli import demo

    with pytest.raises(FileNotFoundError, match="CAD"):
        demo(tmp_path / "fig", tmp_path, tmp_path / "cache", quick=True)


def test_architecture_figure_is_read_from_the_module():
    import matplotlib.pyplot as plt

    from dmnt_lib.deform.viz import draw_architecture

    net = DeformationNet(latent_dim=16, hidden=64, depth=5, skip=(2,), num_freqs=3)
    fig = draw_architecture(net)
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for layer in net.layers:
        assert f"{layer.in_features}→{layer.out_features}" in texts
    assert "64→3" in texts and "R^16" in texts and f"skip: concat [γ(x), z] ({net.in_dim})" in texts
    plt.close(fig)


def test_shade_covers_exactly_the_silhouette():
    from dmnt_lib.deform.viz import shade

    t = cuboid_template([1.0, 0.5, 0.7], num_verts=150)
    cams = _sphere_cams((32, 32), n=2)
    img = shade(t.verts, t.faces, cams, 32)
    assert torch.equal(~torch.isnan(img), render_mask(t, cams, 32))
    assert float(img[~torch.isnan(img)].min()) >= 0.15 and float(img[~torch.isnan(img)].max()) <= 1.0


def test_latent_fit_figure_shows_each_view_and_the_fits_ious():
    """One row per view (target, mean code, fitted code); each row's IoU titles are the
    per-view IoUs whose mean ``fit_latent`` reports."""
    import matplotlib.pyplot as plt

    from dmnt_lib.deform.viz import latent_fit_figure

    mesh = _small_net_mesh()
    with torch.no_grad():
        mesh.latents.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))  # distinct codes
    cams = _sphere_cams((32, 32), n=2)
    target = _cad(mesh.template.verts * torch.tensor([1.2, 0.7, 1.0]), mesh.template.faces)
    mask = hard_silhouette(target.verts[None].expand(2, -1, -1), target.faces, cams, 32)
    fit = fit_latent(mesh, cams, mask, steps=3)
    fig = latent_fit_figure(mesh, fit, target, cams, 32)
    axes = fig.axes
    assert len(axes) == 6 and [a.get_title().split()[0] for a in axes[:3]] == ["target", "mean", "fitted"]
    ious = [[float(a.get_title().split()[-1]) for a in axes[r * 3 + 1 : r * 3 + 3]] for r in range(2)]
    assert sum(r[0] for r in ious) / 2 == pytest.approx(fit.iou_init, abs=0.006)
    assert sum(r[1] for r in ious) / 2 == pytest.approx(fit.iou_fit, abs=0.006)
    assert all(a.get_images() and a.get_images()[0].get_array().std() > 0 for a in axes)  # non-blank panels
    plt.close(fig)
