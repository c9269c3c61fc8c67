import pytest
import torch
import torch.nn.functional as F

from dmnt_lib.camera import pose_to_cameras
from dmnt_lib.mesh import cuboid_template, uv_sphere
from dmnt_lib.render import rasterize, render_mask, render_texture, sample_texture, uv_fragment
from dmnt_lib.viz import checkerboard

SIZE = 48


@pytest.fixture(scope="module")
def scene():
    mesh = cuboid_template([1.0, 0.7, 1.8], num_verts=300)
    az = torch.tensor([0.3, 1.9, -2.4, 3.0])
    el = torch.tensor([0.25, -0.1, 0.5, 0.05])
    th = torch.tensor([0.0, 0.2, -0.3, 0.1])
    cams = pose_to_cameras(az, el, th, torch.tensor([5.0, 5.5, 6.0, 4.5]), SIZE, focal=2.0 * SIZE)
    return mesh, cams, uv_fragment(mesh, cams, SIZE)


def _pytorch3d_textured(mesh, cams, texture):
    """PyTorch3D's own TexturesUV sampling of the same texture, set to our conventions:
    its v axis points up (it flips the map), so we hand it the flipped map; zeros padding and
    align_corners=False as in docs/design.md §3."""
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings, TexturesUV

    b = len(cams)
    meshes = mesh.to_meshes(b)
    meshes.textures = TexturesUV(
        maps=texture.flip(2).permute(0, 2, 3, 1).expand(b, -1, -1, -1),
        faces_uvs=[mesh.faces_uvs] * b,
        verts_uvs=[mesh.verts_uvs] * b,
        padding_mode="zeros",
        align_corners=False,
    )
    settings = RasterizationSettings(image_size=SIZE, blur_radius=0.0, faces_per_pixel=1, bin_size=0)
    frags = MeshRasterizer(cameras=cams, raster_settings=settings)(meshes)
    return meshes.textures.sample_textures(frags)[..., 0, :].permute(0, 3, 1, 2)


def test_uv_is_the_hit_face_uv_triangle_interpolated_and_zero_off_the_mask(scene):
    mesh, _, frag = scene
    assert frag.uv.shape == (4, SIZE, SIZE, 2) and frag.mask.shape == (4, SIZE, SIZE)
    assert frag.mask.any(dim=(1, 2)).all()
    face = frag.pix_to_face[frag.mask]
    assert (frag.pix_to_face[~frag.mask] == -1).all() and (face >= 0).all()
    bary = frag.bary[frag.mask]
    # Each on-mask pixel lies inside its face (barycentrics in [0, 1], summing to 1) ...
    assert torch.allclose(bary.sum(-1), torch.ones(()), atol=1e-5) and (bary > -1e-5).all()
    # ... and its uv is that face's UV triangle interpolated: a point of the face's own UV triangle.
    corners = mesh.verts_uvs[mesh.faces_uvs[face]]  # (N, 3, 2)
    assert torch.allclose(frag.uv[frag.mask], (bary[..., None] * corners).sum(1).clamp(0, 1), atol=1e-6)
    assert (frag.uv[~frag.mask] == 0).all()
    # The per-pixel chart is the hit face's chart.
    assert torch.equal(frag.chart[frag.mask], mesh.face_charts()[face])
    assert (frag.chart[~frag.mask] == -1).all()


def test_sampling_through_uv_fragment_equals_pytorch3d_texturesuv(scene):
    mesh, cams, frag = scene
    texture = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    ours = sample_texture(texture, frag.uv, frag.mask)
    theirs = _pytorch3d_textured(mesh, cams, texture) * frag.mask[:, None]
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_uv_sphere_seam_is_sampled_exactly():
    mesh = uv_sphere(1.0, 12, 24)
    cams = pose_to_cameras(0.0, 0.2, 0.0, 4.0, SIZE, focal=2.0 * SIZE)  # looking at the u=0/1 seam
    frag = uv_fragment(mesh, cams, SIZE)
    texture = checkerboard((32, 64), squares=8)
    theirs = _pytorch3d_textured(mesh, cams, texture) * frag.mask[:, None]
    assert torch.allclose(sample_texture(texture, frag.uv, frag.mask), theirs, atol=1e-5)
    # Both sides of the seam are visible: u close to 0 and close to 1.
    u = frag.uv[frag.mask][:, 0]
    assert (u < 0.05).any() and (u > 0.95).any()


def test_mask_equals_pytorch3d_silhouette(scene):
    from pytorch3d.renderer import BlendParams, MeshRasterizer, MeshRenderer, RasterizationSettings, SoftSilhouetteShader

    mesh, cams, frag = scene
    settings = RasterizationSettings(image_size=SIZE, blur_radius=0.0, faces_per_pixel=1, bin_size=0)
    renderer = MeshRenderer(MeshRasterizer(cameras=cams, raster_settings=settings), SoftSilhouetteShader(BlendParams(sigma=1e-6)))
    alpha = renderer(mesh.to_meshes(len(cams)))[..., 3]
    assert torch.equal(alpha > 0.5, frag.mask)
    assert torch.equal(render_mask(mesh, cams, SIZE), frag.mask)


def test_projected_vertices_land_inside_the_mask_bbox(scene):
    from dmnt_lib.camera import project_points

    mesh, cams, frag = scene
    xy, _ = project_points(mesh.verts, cams.R, cams.T, cams.focal_length[:, 0], cams.principal_point)
    for b in range(len(cams)):
        ys, xs = torch.nonzero(frag.mask[b], as_tuple=True)
        # the silhouette's pixel centres (j + 0.5) lie within the projected hull's bbox and fill it
        # up to one pixel on each side
        for pix, proj in ((xs, xy[b, :, 0]), (ys, xy[b, :, 1])):
            assert pix.min() + 0.5 >= proj.min() - 1e-3 and pix.max() + 0.5 <= proj.max() + 1e-3
            assert (proj.max() - proj.min()) - (pix.max() - pix.min()) <= 2.0


def test_batch_of_poses_equals_one_by_one(scene):
    mesh, cams, frag = scene
    for b in range(len(cams)):
        single = uv_fragment(mesh, cams[b], SIZE)
        assert torch.equal(single.mask[0], frag.mask[b])
        assert torch.allclose(single.uv[0], frag.uv[b], atol=1e-6)


def test_sample_texture_is_grid_sample_with_texel_centres():
    texture = torch.arange(12.0, dtype=torch.float64).reshape(1, 1, 3, 4)
    i, j = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    uv = torch.stack([(j + 0.5) / 4, (i + 0.5) / 3], -1)[None].double()
    # At texel centres the sample is the texel: v = 0 is row 0, u -> column.
    assert torch.allclose(sample_texture(texture, uv), texture, atol=1e-6)
    uv2 = torch.rand(2, 5, 6, 2, generator=torch.Generator().manual_seed(1))
    tex2 = torch.rand(2, 3, 7, 9)
    assert torch.equal(sample_texture(tex2, uv2), F.grid_sample(tex2, 2 * uv2 - 1, align_corners=False))
    mask = torch.rand(2, 5, 6) > 0.5
    assert (sample_texture(tex2, uv2, mask)[~mask[:, None].expand(-1, 3, -1, -1)] == 0).all()


def test_render_texture_gradients_reach_the_texture(scene):
    mesh, cams, frag = scene
    texture = torch.zeros(1, 4, 16, 16, requires_grad=True)
    feats, mask = render_texture(mesh, texture, cams, SIZE)
    feats.sum().backward()
    assert torch.equal(mask, frag.mask)
    # Each on-mask pixel spreads weight 1 (bilinear weights sum to 1, up to zero padding at the border).
    assert texture.grad[0, 0].sum() <= mask.sum() + 1e-3
    assert texture.grad[0, 0].sum() > 0.9 * mask.sum()


def test_bad_inputs(scene):
    mesh, cams, frag = scene
    with pytest.raises(TypeError, match="mesh must be"):
        uv_fragment(mesh.verts, cams, SIZE)
    with pytest.raises(TypeError, match="cameras must be"):
        uv_fragment(mesh, "camera", SIZE)
    with pytest.raises(ValueError, match="image_size"):
        uv_fragment(mesh, cams, (0, 3))
    with pytest.raises(ValueError, match="texture must be"):
        sample_texture(torch.rand(3, 8, 8), frag.uv)
    with pytest.raises(ValueError, match="uv must be"):
        sample_texture(torch.rand(1, 3, 8, 8), frag.uv[..., :1])
    with pytest.raises(ValueError, match="texture batch"):
        sample_texture(torch.rand(3, 3, 8, 8), frag.uv)
    with pytest.raises(ValueError, match="mask must have shape"):
        sample_texture(torch.rand(1, 3, 8, 8), frag.uv, frag.mask[:, :-1])


@pytest.mark.parametrize("backend", ["embree", "pytorch3d"])
def test_backend_argument_reaches_every_render_function(scene, backend):
    mesh, cams, frag = scene  # frag: the default backend (Embree on CPU)
    other = uv_fragment(mesh, cams, SIZE, backend=backend)
    assert torch.equal(other.mask, frag.mask) and torch.equal(other.pix_to_face, frag.pix_to_face)
    assert torch.allclose(other.uv, frag.uv, atol=1e-5) and torch.equal(other.chart, frag.chart)
    assert torch.equal(render_mask(mesh, cams, SIZE, backend=backend), frag.mask)
    texture = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    feats, mask = render_texture(mesh, texture, cams, SIZE, backend=backend)
    assert torch.equal(mask, frag.mask) and torch.allclose(feats, sample_texture(texture, frag.uv, frag.mask), atol=1e-5)
    frags = rasterize(mesh, cams, SIZE, backend=backend)
    assert torch.equal(frags.pix_to_face, frag.pix_to_face) and torch.allclose(frags.bary, frag.bary, atol=1e-6)
    with pytest.raises(ValueError, match="backend"):
        render_mask(mesh, cams, SIZE, backend="nvdiffrast")
