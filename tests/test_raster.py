"""Rasterization backends against PyTorch3D's MeshRasterizer (the reference), docs/design.md §7."""

import math

import pytest
import torch

from dmnt_lib.camera import pose_to_cameras
from dmnt_lib.data.shapes import CATEGORIES, cad_model
from dmnt_lib.mesh import UVMesh, cuboid_template, uv_sphere
from dmnt_lib.raster import Fragments, barycentrics, project_verts, rasterize, resolve_backend
from dmnt_lib.render import sample_texture, uv_fragment


# --------------------------------------------------------------------------- helpers


def _native(verts, faces, cams, size):
    """PyTorch3D's own MeshRasterizer: (pix_to_face within the mesh, bary, zbuf), autograd-connected."""
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes

    b = len(cams)
    vb = verts.expand(b, -1, -1) if verts.dim() == 2 else verts
    settings = RasterizationSettings(image_size=size, blur_radius=0.0, faces_per_pixel=1, bin_size=0)
    fr = MeshRasterizer(cameras=cams, raster_settings=settings)(Meshes(verts=list(vb), faces=[faces] * b))
    p2f = fr.pix_to_face[..., 0]
    p2f = torch.where(p2f >= 0, p2f % len(faces), p2f)
    return p2f, fr.bary_coords[..., 0, :], fr.zbuf[..., 0]


def _seg_dist(p, a, b):
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp_min(1e-30)
    return (p - (a + t.clamp(0, 1)[..., None] * ab)).norm(dim=-1)


def _tie_px(verts, faces, cams, size, b, i, j, f):
    """Distance in pixels from pixel (i, j)'s centre to the nearest edge of face f (camera b),
    and whether the centre is inside f (float64 from PyTorch3D's NDC projection)."""
    from dmnt_lib.raster import pixel_centers_ndc

    h, w = size
    vb = verts.expand(len(cams), -1, -1) if verts.dim() == 2 else verts
    ndc = project_verts(vb[b : b + 1].float(), cams[b]).double()[0]
    xs, ys = pixel_centers_ndc(h, w, dtype=torch.float64)
    p = torch.stack([xs[j], ys[i]])
    tri = ndc[faces[f], :2]
    d = min(_seg_dist(p, tri[k], tri[(k + 1) % 3]).item() for k in range(3))
    return d * min(h, w) / 2  # NDC units → pixels (the shorter side spans [-1, 1])


def assert_backends_agree(mesh: UVMesh, cams, size, min_agree=0.999, coplanar_overlaps=False):
    """Embree and the PyTorch3D backend against PyTorch3D's MeshRasterizer, as issue 8 asks.

    ``coplanar_overlaps``: the mesh has overlapping coplanar faces (the procedural CAD models'
    parts are unions of shells, some flush with each other). There the nearest face is decided
    by float rounding of equal depths (z-fighting) in either rasterizer, so pixels where both
    faces have the same depth (1e-5 relative) count as ties and are left out of the agreement
    fraction; everywhere else the criteria are unchanged."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    verts, faces = mesh.verts, mesh.faces
    ref_p2f, ref_bary, ref_z = _native(verts, faces, cams, size)
    p3d = uv_fragment(mesh, cams, size, backend="pytorch3d")  # carries rasterize's fields too
    emb = uv_fragment(mesh, cams, size, backend="embree")
    # The PyTorch3D backend is the reference itself; its recomputed bary/zbuf equal the kernel's.
    assert torch.equal(p3d.pix_to_face, ref_p2f)
    on = ref_p2f >= 0
    assert (p3d.bary[on] - ref_bary[on]).abs().max() <= 1e-5 if on.any() else True
    assert (p3d.zbuf[on] - ref_z[on]).abs().max() <= 1e-5 * max(1.0, ref_z[on].abs().max().item()) if on.any() else True
    covered = emb.mask | on
    same = emb.pix_to_face == ref_p2f
    depth_tie = emb.mask & on & ((emb.zbuf - ref_z).abs() <= 1e-5 * ref_z.abs()) & ~same
    counted = covered & ~depth_tie if coplanar_overlaps else covered
    if counted.any():
        assert same[counted].double().mean() >= min_agree
    # Every differing pixel is a tie: its centre within 1e-4 px of an edge of both faces (or, with
    # coplanar overlaps, a depth tie).
    for b, i, j in (~same).nonzero().tolist():
        fe, fr = emb.pix_to_face[b, i, j].item(), ref_p2f[b, i, j].item()
        if coplanar_overlaps and depth_tie[b, i, j]:
            continue
        near = [_tie_px(verts, faces, cams, size, b, i, j, f) <= 1e-4 for f in (fe, fr) if f >= 0]
        assert all(near), f"pixel {(b, i, j)}: embree face {fe}, pytorch3d face {fr} is not a tie"
    agree = same & on
    if agree.any():
        assert (emb.bary[agree] - ref_bary[agree]).abs().max() <= 1e-5
        assert (emb.zbuf[agree] - ref_z[agree]).abs().max() <= 1e-5 * max(1.0, ref_z[agree].abs().max().item())
    # Masks equal (up to the tie pixels just checked), off-mask conventions as documented.
    assert torch.equal(emb.mask[same], on[same])
    assert (emb.bary[~emb.mask] == 0).all() and (emb.zbuf[~emb.mask] == -1).all()
    # uv_fragment equal on the pixels whose faces agree, and rasterize's fields are uv_fragment's.
    assert torch.allclose(emb.uv[agree], p3d.uv[agree], atol=1e-5)
    assert torch.equal(emb.chart[same], p3d.chart[same])
    frags = rasterize(mesh, cams, size, backend="embree")
    assert torch.equal(frags.pix_to_face, emb.pix_to_face) and torch.equal(frags.bary, emb.bary)
    assert torch.equal(frags.zbuf, emb.zbuf) and torch.equal(frags.mask, emb.mask)
    return emb, p3d


def _poses(b, seed, distance=(4.0, 6.0)):
    g = torch.Generator().manual_seed(seed)
    az = torch.rand(b, generator=g) * 2 * math.pi
    el = (torch.rand(b, generator=g) - 0.5) * 1.2
    th = (torch.rand(b, generator=g) - 0.5) * 0.8
    dist = distance[0] + torch.rand(b, generator=g) * (distance[1] - distance[0])
    return az, el, th, dist


@pytest.fixture(scope="module")
def cuboid():
    return cuboid_template([1.0, 0.7, 1.8], num_verts=600)


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("size", [48, (36, 60), (60, 36)])
@pytest.mark.parametrize("shift", [False, True])
def test_cuboid_agrees_square_nonsquare_centred_shifted(cuboid, size, shift):
    h, w = (size, size) if isinstance(size, int) else size
    principal = torch.tensor([w / 2 + 3.3, h / 2 - 2.7]) if shift else None
    cams = pose_to_cameras(*_poses(6, seed=1), (h, w), focal=1.8 * min(h, w), principal=principal)
    emb, _ = assert_backends_agree(cuboid, cams, (h, w))
    assert emb.mask.any(dim=(1, 2)).all()


def test_uv_sphere_agrees():
    cams = pose_to_cameras(*_poses(4, seed=2), 40, focal=90.0)
    assert_backends_agree(uv_sphere(1.0, 12, 24), cams, 40)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_cad_category_agrees(category):
    mesh = cad_model(category, 1).to_uvmesh()
    cams = pose_to_cameras(*_poses(3, seed=3, distance=(2.5, 3.5)), (28, 36), focal=60.0)
    assert_backends_agree(mesh, cams, (28, 36), coplanar_overlaps=True)


def test_random_triangle_soup_with_self_occlusion():
    # Triangles in separate depth layers facing the camera, overlapping in the image: heavy
    # occlusion, no interpenetration (so every disagreement must be an edge tie). Random
    # winding, so half of them are back faces.
    g = torch.Generator().manual_seed(4)
    n = 120
    centre = (torch.rand(n, 1, 3, generator=g) - 0.5) * torch.tensor([1.2, 1.2, 0.0])
    layer = torch.randperm(n, generator=g).double() / n - 0.5
    corners = (torch.rand(n, 3, 3, generator=g) - 0.5) * torch.tensor([1.0, 1.0, 0.0])
    tri = centre + corners
    tri[..., 2] = layer[:, None] * 1.5 + (torch.rand(n, 3, generator=g) - 0.5) * 0.001
    verts = tri.reshape(-1, 3).float()
    faces = torch.arange(3 * n).reshape(n, 3)
    mesh = UVMesh(verts, faces, torch.zeros(1, 2), torch.zeros_like(faces))
    cams = pose_to_cameras(torch.tensor([0.0, 0.3, -0.4]), torch.tensor([0.0, 0.2, -0.1]), 0.1, 4.0, 48, focal=100.0)
    emb, _ = assert_backends_agree(mesh, cams, 48)
    # Self-occlusion really happens: several faces per image, and hidden faces exist.
    assert all(len(emb.pix_to_face[b].unique()) > 20 for b in range(3))


def test_near_and_far_cameras(cuboid):
    near = pose_to_cameras(*_poses(3, seed=5, distance=(1.6, 1.9)), 32, focal=20.0)
    far = pose_to_cameras(*_poses(3, seed=6, distance=(40.0, 60.0)), 32, focal=600.0)
    assert_backends_agree(cuboid, near, 32)
    assert_backends_agree(cuboid, far, 32)


def test_other_pytorch3d_perspective_cameras_agree(cuboid):
    """Rays come from the cameras' own matrices, so NDC-space FoV cameras work as well."""
    from pytorch3d.renderer import FoVPerspectiveCameras

    from dmnt_lib.camera import pose_to_RT

    R, T = pose_to_RT(*_poses(3, seed=20))
    emb, _ = assert_backends_agree(cuboid, FoVPerspectiveCameras(R=R, T=T, fov=35.0), (40, 52))
    assert emb.mask.any(dim=(1, 2)).all()


@pytest.mark.slow
def test_batch_of_432_poses_equals_one_by_one():
    cuboid = cuboid_template([1.0, 0.7, 1.8], num_verts=150)  # PyTorch3D's CPU cost grows with F
    cams = pose_to_cameras(*_poses(432, seed=7), (8, 10), focal=14.0)
    emb, _ = assert_backends_agree(cuboid, cams, (8, 10))
    for b in (0, 77, 431):
        single = rasterize(cuboid, cams[b], (8, 10))
        assert torch.equal(single.pix_to_face[0], emb.pix_to_face[b])
        assert torch.allclose(single.bary[0], emb.bary[b], atol=1e-6)


def test_batch_of_one(cuboid):
    cams = pose_to_cameras(0.4, 0.3, 0.1, 5.0, 32, focal=60.0)
    emb, _ = assert_backends_agree(cuboid, cams, 32)
    frags = rasterize(cuboid, cams, 32)
    assert isinstance(frags, Fragments) and emb.mask.any()
    assert frags.pix_to_face.shape == (1, 32, 32) and frags.pix_to_face.dtype == torch.int64
    assert frags.bary.shape == (1, 32, 32, 3) and frags.zbuf.shape == (1, 32, 32) and frags.mask.dtype == torch.bool


def test_per_camera_vertex_batches(cuboid):
    g = torch.Generator().manual_seed(8)
    b = 4
    verts = cuboid.verts[None] * (1 + 0.3 * torch.rand(b, 1, 3, generator=g)) + 0.02 * torch.randn(b, *cuboid.verts.shape, generator=g)
    verts[1] = cuboid.verts  # a repeated vertex set shares its scene
    verts[2] = cuboid.verts
    mesh = cuboid.with_verts(verts)
    cams = pose_to_cameras(*_poses(b, seed=9), (30, 26), focal=50.0)
    emb, _ = assert_backends_agree(mesh, cams, (30, 26))
    for k in range(b):  # each camera sees its own shape
        single = rasterize(cuboid.with_verts(verts[k]), cams[k], (30, 26))
        assert torch.equal(single.pix_to_face[0], emb.pix_to_face[k])


def test_face_charts():
    cube = cuboid_template([1.0, 0.7, 1.8], num_verts=300)
    charts = cube.face_charts()
    assert charts.dtype == torch.int64 and charts.shape == (cube.num_faces,)
    assert charts.unique().tolist() == list(range(6))
    # Charts are numbered in order of first face, and each chart's faces share no UV vertex with another's.
    first = [int((charts == k).nonzero()[0]) for k in range(6)]
    assert first == sorted(first) and first[0] == 0
    for k in range(6):
        inside = set(cube.faces_uvs[charts == k].reshape(-1).tolist())
        outside = set(cube.faces_uvs[charts != k].reshape(-1).tolist())
        assert not inside & outside
        # One chart = one cuboid side: all its 3D vertices share one coordinate at ±extent/2.
        v = cube.verts[cube.faces[charts == k].reshape(-1)]
        assert ((v - v[0]).abs().max(dim=0).values < 1e-6).sum() == 1
    assert uv_sphere().face_charts().unique().tolist() == [0]
    assert cube.face_charts() is charts  # cached
    assert cube.with_verts(cube.verts * 2).face_charts() is charts  # shared by the same topology


def test_uv_fragment_chart_field(cuboid):
    cams = pose_to_cameras(*_poses(3, seed=10), 32, focal=60.0)
    frag = uv_fragment(cuboid, cams, 32)
    assert torch.equal(frag.chart[frag.mask], cuboid.face_charts()[frag.pix_to_face[frag.mask]])
    assert (frag.chart[~frag.mask] == -1).all()


# --------------------------------------------------------------------------- gradients


def _loss_grads(mesh, pose, size, backend, focal=60.0, seed=11):
    """Gradients of a random scalar loss through uv -> sample_texture (plus the depth) w.r.t.
    the vertices and the pose (azimuth, elevation, theta, distance)."""
    g = torch.Generator().manual_seed(seed)
    b = len(pose[0])
    texture = torch.rand(1, 3, 16, 16, generator=g)
    weight = torch.randn(b, 3, *size, generator=g)
    wz = torch.randn(b, *size, generator=g)
    p = [x.clone().requires_grad_() for x in pose]
    verts = mesh.verts.clone().requires_grad_()
    cams = pose_to_cameras(*p, size, focal=focal)
    if backend == "native":
        p2f, bary, zbuf = _native(verts, mesh.faces, cams, size)
        mask = p2f >= 0
        corner = mesh.verts_uvs[mesh.faces_uvs][p2f.clamp(min=0)]
        uv = (torch.where(mask[..., None], bary, 0)[..., :, None] * corner).sum(-2)
        uv = torch.where(mask[..., None], uv.clamp(0, 1), 0)
    else:
        frag = uv_fragment(mesh.with_verts(verts), cams, size, backend=backend)
        uv, mask, zbuf = frag.uv, frag.mask, frag.zbuf
    loss = (sample_texture(texture, uv, mask) * weight).sum() + 0.1 * (torch.where(mask, zbuf, 0) * wz).sum()
    loss.backward()
    return [verts.grad] + [x.grad for x in p]


@pytest.mark.parametrize("size", [(24, 32), 32])
def test_gradients_equal_between_backends_and_pytorch3d_native_backward(cuboid, size):
    size = (size, size) if isinstance(size, int) else size
    pose = _poses(4, seed=12)
    grads = {name: _loss_grads(cuboid, pose, size, name) for name in ("embree", "pytorch3d", "native")}
    for k, name in enumerate(("verts", "azimuth", "elevation", "theta", "distance")):
        ref = grads["native"][k]
        assert ref.abs().max() > 0, name
        for backend in ("embree", "pytorch3d"):
            err = (grads[backend][k] - ref).abs().max() / ref.abs().max()
            assert err <= 1e-4, (backend, name, float(err))


def test_barycentric_step_gradcheck_float64():
    g = torch.Generator().manual_seed(13)
    # Two overlapping triangles in NDC with positive view depths, on a 6x7 grid.
    verts = torch.tensor(
        [[[0.9, 0.8, 2.0], [-0.7, 0.6, 3.0], [0.1, -0.9, 2.5], [0.5, 0.9, 4.0], [-0.9, -0.2, 3.5], [0.8, -0.6, 5.0]]],
        dtype=torch.float64,
    )
    verts = verts + 0.01 * torch.rand(verts.shape, generator=g, dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    with torch.no_grad():  # visibility from the nearest face whose screen barycentrics are all > 0
        p2f = torch.full((1, 6, 7), -1, dtype=torch.int64)
        for f in (1, 0):  # face 0 is nearer: it wins where both cover
            bary, _ = barycentrics(verts, faces, torch.full((1, 6, 7), f))
            p2f[(bary > 0.02).all(-1)] = f
    assert (p2f == 0).any() and (p2f == 1).any() and (p2f == -1).any()
    verts.requires_grad_()
    assert torch.autograd.gradcheck(lambda v: barycentrics(v, faces, p2f), (verts,), eps=1e-6, atol=1e-7)


def test_zbuf_is_view_depth_and_bary_interpolates_the_hit_point(cuboid):
    cams = pose_to_cameras(*_poses(2, seed=14), 32, focal=60.0)
    frag = rasterize(cuboid, cams, 32)
    for b in range(2):
        m = frag.mask[b]
        f = frag.pix_to_face[b][m]
        p = (frag.bary[b][m][..., None] * cuboid.verts[cuboid.faces[f]]).sum(-2)  # 3D hit points
        view = cams[b].get_world_to_view_transform().transform_points(p[None])[0]
        assert torch.allclose(view[:, 2], frag.zbuf[b][m], atol=1e-4)
        assert torch.allclose(frag.bary[b][m].sum(-1), torch.ones(()), atol=1e-5)


# --------------------------------------------------------------------------- empty views, bad input


def test_mesh_outside_the_view_or_behind_the_camera_gives_an_empty_mask(cuboid):
    cams = pose_to_cameras(0.3, 0.2, 0.0, 5.0, 32, focal=60.0)
    centre = -(cams.R[0] @ cams.T[0])  # camera centre in the object frame
    outside = cuboid.with_verts(cuboid.verts + torch.tensor([40.0, 0.0, 0.0]))
    behind = cuboid.with_verts(cuboid.verts + 2 * centre)  # the cuboid mirrored behind the camera
    for mesh in (outside, behind):
        for backend in ("embree", "pytorch3d"):
            frag = uv_fragment(mesh, cams, 32, backend=backend)
            assert not frag.mask.any() and (frag.pix_to_face == -1).all() and (frag.uv == 0).all()


def test_mesh_without_faces_covers_nothing():
    faces = torch.zeros(0, 3, dtype=torch.int64)
    mesh = UVMesh(torch.rand(3, 3), faces, torch.zeros(1, 2), faces)
    cams = pose_to_cameras(*_poses(2, seed=21), 16, focal=30.0)
    for backend in ("embree", "pytorch3d"):
        frag = uv_fragment(mesh, cams, 16, backend=backend)
        assert frag.pix_to_face.shape == (2, 16, 16) and not frag.mask.any() and (frag.chart == -1).all()


def test_bad_inputs(cuboid):
    cams = pose_to_cameras(*_poses(2, seed=15), 16, focal=30.0)
    with pytest.raises(TypeError, match="mesh"):
        rasterize(cuboid.verts, cams, 16)
    with pytest.raises(TypeError, match="cameras"):
        rasterize(cuboid, {"R": cams.R}, 16)
    with pytest.raises(ValueError, match="backend"):
        rasterize(cuboid, cams, 16, backend="opengl")
    with pytest.raises(ValueError, match="backend='embree' needs CPU"):
        resolve_backend("embree", torch.device("cuda"))
    assert resolve_backend("auto", torch.device("cpu")) == "embree"
    assert resolve_backend("auto", torch.device("cuda")) == "pytorch3d"
    with pytest.raises(ValueError, match="mesh.verts"):
        rasterize(cuboid.with_verts(cuboid.verts.expand(3, -1, -1)), cams, 16)  # 3 shapes, 2 cameras
    with pytest.raises(ValueError, match="verts"):
        cuboid.with_verts(cuboid.verts[:, :2])
    with pytest.raises(ValueError, match="verts contains NaN"):
        cuboid.with_verts(torch.full_like(cuboid.verts, float("nan")))
    bad = cuboid.with_verts(cuboid.verts.clone())
    bad.verts[0, 0] = float("nan")  # corrupted after construction
    with pytest.raises(ValueError, match="mesh.verts contains NaN"):
        rasterize(bad, cams, 16)
    with pytest.raises(ValueError, match="image_size"):
        rasterize(cuboid, cams, (16, 0))
    from pytorch3d.renderer import FoVOrthographicCameras

    with pytest.raises(ValueError, match="cameras must be perspective"):
        rasterize(cuboid, FoVOrthographicCameras(), 16)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_defaults_to_pytorch3d_and_refuses_embree(cuboid):
    cams = pose_to_cameras(*_poses(2, seed=16), 32, focal=60.0, device="cuda")
    mesh = cuboid.to("cuda")
    frag = rasterize(mesh, cams, 32)
    ref = rasterize(cuboid, pose_to_cameras(*_poses(2, seed=16), 32, focal=60.0), 32, backend="embree")
    assert (frag.pix_to_face.cpu() == ref.pix_to_face).double().mean() >= 0.999
    with pytest.raises(ValueError, match="backend='embree'"):
        rasterize(mesh, cams, 32, backend="embree")


# --------------------------------------------------------------------------- benchmark


def test_bench_prints_the_raster_table(capsys):
    from dmnt_lib.bench import main

    threads = torch.get_num_threads()
    try:
        assert main(["--only", "raster", "--raster-sizes", "8", "--raster-poses", "1", "3", "--raster-max-p3d-poses", "2",
                     "--repeats", "1", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["cuboid"]]
    assert [(r[1], r[2], r[9]) for r in rows] == [("8", "1", "1"), ("8", "3", "2/3")]
    for r in rows:  # ratios are the quotients of the printed times
        p3d_fwd, emb_fwd, x_fwd, p3d_fb, emb_fb, x_fb = map(float, r[3:9])
        assert abs(x_fwd - p3d_fwd / emb_fwd) <= 0.051 * x_fwd + 0.06 and abs(x_fb - p3d_fb / emb_fb) <= 0.051 * x_fb + 0.06


def test_dense_barycentric_path_equals_the_sparse_one(cuboid):
    """The dense form (the CUDA default, no host sync) gives the same maps and gradients."""
    from dmnt_lib.raster import hit_barycentrics, scatter_hits

    cams = pose_to_cameras(*_poses(3, seed=17), (20, 28), focal=40.0)
    p2f = rasterize(cuboid, cams, (20, 28)).pix_to_face
    out = {}
    for dense in (False, True):
        verts = cuboid.verts.clone().requires_grad_()
        flat, face, bary, zbuf = hit_barycentrics(project_verts(verts, cams), cuboid.faces, p2f, dense=dense)
        assert len(flat) == (p2f.numel() if dense else int((p2f >= 0).sum()))
        maps = scatter_hits(bary, flat, p2f, 0.0), scatter_hits(zbuf, flat, p2f, -1.0)
        (maps[0].square().sum() + maps[1].sum()).backward()
        out[dense] = maps + (verts.grad,)
    for a, b in zip(out[False], out[True]):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_gradients_to_focal_and_principal_point_equal_pytorch3d_native(cuboid):
    size = (26, 30)
    pose = _poses(3, seed=18)
    g = torch.Generator().manual_seed(19)
    texture = torch.rand(1, 3, 16, 16, generator=g)
    weight = torch.randn(3, 3, *size, generator=g)
    grads = {}
    for backend in ("embree", "native"):
        focal = torch.tensor([50.0, 55.0, 60.0], requires_grad=True)
        principal = torch.tensor([[16.0, 12.5], [14.2, 13.9], [15.0, 12.0]], requires_grad=True)
        cams = pose_to_cameras(*pose, size, focal=focal, principal=principal)
        if backend == "native":
            p2f, bary, _ = _native(cuboid.verts, cuboid.faces, cams, size)
            mask = p2f >= 0
            corner = cuboid.verts_uvs[cuboid.faces_uvs][p2f.clamp(min=0)]
            uv = torch.where(mask[..., None], (torch.where(mask[..., None], bary, 0)[..., :, None] * corner).sum(-2).clamp(0, 1), 0)
        else:
            frag = uv_fragment(cuboid, cams, size, backend=backend)
            uv, mask = frag.uv, frag.mask
        (sample_texture(texture, uv, mask) * weight).sum().backward()
        grads[backend] = (focal.grad, principal.grad)
    for a, b in zip(grads["embree"], grads["native"]):
        assert b.abs().max() > 0
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
