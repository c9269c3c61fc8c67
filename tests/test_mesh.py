import math
import os

import pytest
import torch

from dmnt_lib.mesh import UVMesh, cuboid_template, read_off, uv_sphere, write_off


def _edge_face_counts(faces):
    e = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    e = torch.sort(e, dim=1).values
    _, counts = torch.unique(e, dim=0, return_counts=True)
    return counts


def _signed_volume(mesh):
    v = mesh.verts.double()[mesh.faces]
    return float(torch.linalg.det(v).sum() / 6)


@pytest.mark.parametrize("make", [lambda: cuboid_template([1.0, 0.8, 2.2]), lambda: uv_sphere(1.0, 12, 24)])
def test_meshes_are_closed_and_outward(make):
    mesh = make()
    # Closed 2-manifold: every edge is shared by exactly two faces; Euler characteristic 2.
    counts = _edge_face_counts(mesh.faces)
    assert (counts == 2).all()
    assert mesh.num_verts - len(counts) + mesh.num_faces == 2
    # Outward orientation: positive signed volume, every face normal points away from the centre.
    assert _signed_volume(mesh) > 0
    v = mesh.verts[mesh.faces]
    n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=1)
    assert ((n * v.mean(1)).sum(1) > 0).all()


def test_cuboid_size_volume_and_vertex_count():
    extent = torch.tensor([1.0, 0.8, 2.2])
    mesh = cuboid_template(extent, num_verts=1000)
    assert abs(mesh.num_verts - 1000) < 150
    assert torch.allclose(mesh.verts.max(0).values - mesh.verts.min(0).values, extent)
    assert math.isclose(_signed_volume(mesh), float(extent.prod()), rel_tol=1e-5)


def test_cuboid_covers_cad_models():
    gen = torch.Generator().manual_seed(3)
    models = [torch.randn(50, 3, generator=gen) * torch.tensor([0.3, 0.2, 0.6]) for _ in range(4)]
    mesh = cuboid_template(meshes_verts=models, margin=0.05)
    lo, hi = mesh.verts.min(0).values, mesh.verts.max(0).values
    for m in models:
        assert (m >= lo).all() and (m <= hi).all()


def _triangle_uv_overlap_area(mesh, res=512):
    """Rasterize UV triangles on a grid and count grid points covered by two triangles."""
    uv = mesh.verts_uvs.double()[mesh.faces_uvs]  # (F, 3, 2)
    g = (torch.arange(res, dtype=torch.float64) + 0.5) / res
    pts = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    hits = torch.zeros(len(pts), dtype=torch.int32)
    for tri in uv:
        a, b, c = tri
        d = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if abs(d) < 1e-15:
            continue
        w1 = ((pts[:, 0] - a[0]) * (c[1] - a[1]) - (pts[:, 1] - a[1]) * (c[0] - a[0])) / d
        w2 = ((b[0] - a[0]) * (pts[:, 1] - a[1]) - (b[1] - a[1]) * (pts[:, 0] - a[0])) / d
        inside = (w1 > 1e-9) & (w2 > 1e-9) & (w1 + w2 < 1 - 1e-9)
        hits += inside.int()
    return hits


def test_cuboid_uv_charts_do_not_overlap_and_seams_are_cuboid_edges():
    extent = torch.tensor([1.0, 0.5, 1.5])
    mesh = cuboid_template(extent, num_verts=200)
    hits = _triangle_uv_overlap_area(mesh, res=256)
    assert hits.max() == 1  # no UV point is covered twice
    assert hits.sum() > 0.3 * hits.numel()  # the atlas uses a good part of the texture
    # Every seam edge lies on an edge of the cuboid (two coordinates at their extreme).
    seams = mesh.seam_edges()
    assert len(seams) > 0
    mid = mesh.verts[seams].mean(1)
    at_extreme = (mid.abs() - extent / 2).abs() < 1e-5
    assert (at_extreme.sum(1) >= 2).all()
    # And every cuboid edge is a seam: the 12 edges' total length equals 4 * sum(extent).
    length = (mesh.verts[seams[:, 0]] - mesh.verts[seams[:, 1]]).norm(dim=1).sum()
    assert torch.isclose(length, 4 * extent.sum(), rtol=1e-5)


def test_uv_charts_have_equal_texel_density():
    mesh = cuboid_template([1.0, 0.5, 1.5], num_verts=300)
    v3 = mesh.verts.double()[mesh.faces]
    v2 = mesh.verts_uvs.double()[mesh.faces_uvs]
    area3 = torch.cross(v3[:, 1] - v3[:, 0], v3[:, 2] - v3[:, 0], dim=1).norm(dim=1) / 2
    e1, e2 = v2[:, 1] - v2[:, 0], v2[:, 2] - v2[:, 0]
    area2 = (e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]).abs() / 2
    ratio = area2 / area3
    assert torch.allclose(ratio, ratio.mean().expand_as(ratio), rtol=1e-4)


def test_uv_sphere_seam_is_the_zero_meridian():
    mesh = uv_sphere(1.0, 8, 16)
    seams = mesh.seam_edges()
    # Non-pole seam edges lie on the meridian x = 0, z > 0.
    non_pole = [(a, b) for a, b in seams.tolist() if a != 0 and b != mesh.num_verts - 1]
    pts = mesh.verts[torch.tensor(non_pole)]
    assert torch.allclose(pts[..., 0], torch.zeros(()), atol=1e-6) and (pts[..., 2] > 0).all()


def test_off_round_trip(tmp_path):
    mesh = cuboid_template([1.0, 2.0, 3.0], num_verts=100)
    path = tmp_path / "CAD" / "car" / "01.off"
    write_off(path, mesh.verts, mesh.faces)
    verts, faces = read_off(path)
    assert torch.allclose(verts, mesh.verts, atol=1e-6)
    assert torch.equal(faces, mesh.faces)
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left no temp file
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # same mode as a plain open() would give


def test_off_accepts_pascal_variants(tmp_path):
    # Fused header ('OFF4 2 0'), comments, a quad that gets fan-triangulated.
    path = tmp_path / "q.off"
    path.write_text("OFF4 1 0\n# a comment\n0 0 0\n1 0 0\n1 1 0\n0 1 0\n4 0 1 2 3\n")
    verts, faces = read_off(path)
    assert verts.shape == (4, 3)
    assert faces.tolist() == [[0, 1, 2], [0, 2, 3]]


@pytest.mark.parametrize(
    "text, match",
    [
        ("PLY\n", "not an OFF file"),
        ("OFF\nx y z\n", "malformed counts"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n", "truncated"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1\n3 0 1 2\n", "vertex line"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 5\n", "out of range"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n2 0 1\n", "k >= 3"),
        ("OFF\n3 1 0\n0 0 nan\n1 0 0\n0 1 0\n3 0 1 2\n", "NaN"),
    ],
)
def test_off_malformed_files_raise_clear_errors(tmp_path, text, match):
    path = tmp_path / "bad.off"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_off(path)


def test_off_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.off"):
        read_off(tmp_path / "missing.off")


def test_uvmesh_validation():
    m = uv_sphere(1.0, 4, 6)
    with pytest.raises(ValueError, match="faces_uvs"):
        UVMesh(m.verts, m.faces, m.verts_uvs, m.faces_uvs[:-1])
    with pytest.raises(ValueError, match="faces indices"):
        UVMesh(m.verts, m.faces + 1000, m.verts_uvs, m.faces_uvs)
    with pytest.raises(TypeError, match="faces must be int64"):
        UVMesh(m.verts, m.faces.int(), m.verts_uvs, m.faces_uvs)
    with pytest.raises(ValueError, match="verts_uvs"):
        UVMesh(m.verts, m.faces, m.verts_uvs + 2, m.faces_uvs)
    with pytest.raises(ValueError, match="verts must have shape"):
        m.with_verts(m.verts[:-1])
    with pytest.raises(ValueError, match="extent"):
        cuboid_template([1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="exactly one"):
        cuboid_template()
