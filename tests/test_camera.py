import math

import pytest
import torch

from dmnt_lib.camera import (
    RT_to_pose,
    camera_center,
    pose_metrics,
    pose_to_cameras,
    pose_to_RT,
    pose_to_rotation,
    project_points,
    rotation_error,
    rotation_to_pose,
)


def _random_poses(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    az = (torch.rand(n, generator=g) * 2 - 1) * math.pi
    el = (torch.rand(n, generator=g) * 2 - 1) * (math.pi / 2 - 0.05)
    th = (torch.rand(n, generator=g) * 2 - 1) * (math.pi - 0.01)
    dist = 2 + 8 * torch.rand(n, generator=g)
    return az.double(), el.double(), th.double(), dist.double()


def test_matches_pytorch3d_look_at_and_nemo_theta():
    from pytorch3d.renderer import look_at_view_transform

    az, el, th, dist = _random_poses(16)
    R, T = pose_to_RT(az, el, th, dist)
    R0, _ = look_at_view_transform(dist=dist.float(), elev=el.float(), azim=az.float(), degrees=False)
    c, s = th.cos(), th.sin()
    r_theta = torch.zeros(16, 3, 3, dtype=torch.float64)
    r_theta[:, 0, 0], r_theta[:, 0, 1], r_theta[:, 1, 0], r_theta[:, 1, 1], r_theta[:, 2, 2] = c, -s, s, c, 1
    assert torch.allclose(R, R0.double() @ r_theta, atol=1e-6)
    # The camera centre maps to the view origin.
    center = camera_center(az, el, dist)
    assert torch.allclose((center[:, None] @ R)[:, 0] + T, torch.zeros(16, 3, dtype=torch.float64), atol=1e-9)


def test_rotations_are_proper():
    az, el, th, _ = _random_poses(32, seed=1)
    R = pose_to_rotation(az, el, th)
    eye = torch.eye(3, dtype=torch.float64).expand(32, 3, 3)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(32, dtype=torch.float64))


def test_pose_round_trip():
    az, el, th, dist = _random_poses(64, seed=2)
    R, T = pose_to_RT(az, el, th, dist)
    az2, el2, th2, dist2 = RT_to_pose(R, T)
    wrap = lambda a: torch.atan2(a.sin(), a.cos())  # noqa: E731
    assert torch.allclose(wrap(az2 - az), torch.zeros_like(az), atol=1e-9)
    assert torch.allclose(el2, el, atol=1e-9)
    assert torch.allclose(wrap(th2 - th), torch.zeros_like(th), atol=1e-9)
    assert torch.allclose(dist2, dist, atol=1e-9)


def test_rotation_to_pose_near_and_at_the_poles_keeps_the_rotation():
    for el in (math.pi / 2 - 1e-6, -math.pi / 2 + 1e-6):
        R = pose_to_rotation(torch.tensor([0.8], dtype=torch.float64), el, 0.7)
        assert torch.allclose(pose_to_rotation(*rotation_to_pose(R)), R, atol=1e-9)
    # Exactly on the up axis the azimuth is undefined: 0 is returned and the rotation is kept.
    R = torch.tensor([[[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]]], dtype=torch.float64)  # camera at +y
    az, el, th = rotation_to_pose(R)
    assert az.item() == 0 and el.item() == pytest.approx(math.pi / 2)
    assert torch.allclose(pose_to_rotation(az, el, th), R, atol=1e-7)


def test_rotation_error_is_the_geodesic_angle():
    az, el, th, _ = _random_poses(8, seed=3)
    R = pose_to_rotation(az, el, th)
    g = torch.Generator().manual_seed(4)
    axis = torch.nn.functional.normalize(torch.randn(8, 3, generator=g, dtype=torch.float64), dim=1)
    angle = torch.tensor([0.0, 1e-4, 0.3, 1.0, 2.0, 3.0, math.pi - 1e-4, math.pi], dtype=torch.float64)
    K = torch.zeros(8, 3, 3, dtype=torch.float64)
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    K = K - K.transpose(1, 2)
    delta = torch.linalg.matrix_exp(K * angle[:, None, None])
    err = rotation_error(R, R @ delta)
    assert torch.allclose(err, angle, atol=1e-7)
    assert torch.allclose(rotation_error(R @ delta, R), angle, atol=1e-7)  # symmetric
    # Equal to ||logm(R1^T R2)||_F / sqrt(2) computed through the eigen-decomposition.
    ev = torch.linalg.eigvals(delta[2:6]).angle().abs().max(dim=1).values
    assert torch.allclose(err[2:6], ev, atol=1e-7)


def test_pose_metrics():
    errors = torch.tensor([0.0, 0.1, math.pi / 18 + 1e-3, 0.5, math.pi / 6 + 1e-3, 3.0])
    m = pose_metrics(errors)
    assert m["acc_pi_18"] == pytest.approx(2 / 6)
    assert m["acc_pi_6"] == pytest.approx(4 / 6)
    assert m["median_deg"] == pytest.approx(math.degrees(float(torch.quantile(errors.double(), 0.5))))
    assert m["n"] == 6
    with pytest.raises(ValueError, match="empty"):
        pose_metrics([])
    with pytest.raises(ValueError, match="non-negative"):
        pose_metrics([-1.0])


def test_projection_matches_pytorch3d_screen_space():
    az, el, th, dist = (t.float() for t in _random_poses(4, seed=5))
    cams = pose_to_cameras(az, el, th, dist, (60, 80), focal=[100.0, 110.0, 120.0, 130.0], principal=(41.0, 29.5))
    pts = torch.randn(4, 20, 3) * 0.5
    theirs = cams.transform_points_screen(pts, image_size=((60, 80),))[..., :2]
    R, T = pose_to_RT(az, el, th, dist)
    ours, depth = project_points(pts, R, T, torch.tensor([100.0, 110.0, 120.0, 130.0]), (41.0, 29.5))
    assert torch.allclose(ours, theirs, atol=1e-3)
    assert (depth > 0).all()


def test_object_origin_projects_to_the_principal_point():
    cams = pose_to_cameras(0.4, 0.2, 0.3, 5.0, (64, 96), focal=200.0)
    xy = cams.transform_points_screen(torch.zeros(1, 1, 3), image_size=((64, 96),))[0, 0, :2]
    assert torch.allclose(xy, torch.tensor([48.0, 32.0]), atol=1e-4)


def test_bad_inputs():
    with pytest.raises(ValueError, match="distance must be positive"):
        pose_to_RT(0.0, 0.0, 0.0, -1.0)
    with pytest.raises(ValueError, match="theta has batch size 2"):
        pose_to_RT([0.0, 1.0, 2.0], 0.0, [0.0, 1.0], 5.0)
    with pytest.raises(ValueError, match="azimuth contains NaN"):
        pose_to_RT(float("nan"), 0.0, 0.0, 5.0)
    with pytest.raises(ValueError, match="image_size"):
        pose_to_cameras(0.0, 0.0, 0.0, 5.0, (0, 10))
    with pytest.raises(ValueError, match="focal"):
        pose_to_cameras(0.0, 0.0, 0.0, 5.0, 32, focal=-1.0)
    with pytest.raises(ValueError, match="R must have shape"):
        rotation_to_pose(torch.eye(3))
