"""Property tests of the image→UV transform (dmnt_lib.transform) for every available backend and the NumPy reference.

Backends: "torch" (CPU), "torch_cuda" (torch code on a GPU), "cpp" and "cuda" (dmnt_lib.cuda kernels; skipped with
the loader's reason when they cannot be built or no GPU is present), and "reference" (NumPy loops) for forward
properties. Expected values are computed independently of the code under test: affine maps are inverted in closed
form, coverage is decided by point-in-polygon tests, folds are laid out so each layer's preimage is known.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import dmnt_lib.transform as transform
from dmnt_lib.render import sample_texture
from dmnt_lib.transform import BackendFallbackWarning, TableOverflowWarning, image_to_uv
from dmnt_lib.transform.reference import image_to_uv_reference, image_to_uv_reference_backward
from dmnt_lib.transform import torch_impl
from dmnt_lib.transform.torch_impl import quad_table_torch

F64 = torch.float64
KERNEL_BACKENDS = {"torch": ("torch", "cpu"), "torch_cuda": ("torch", "cuda"), "cpp": ("cpp", "cpu"), "cuda": ("cuda", "cuda")}


@functools.lru_cache(maxsize=None)
def _skip_reason(backend: str) -> str | None:
    name, device = KERNEL_BACKENDS[backend]
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA device"
    if name == "torch":
        return None
    try:
        import dmnt_lib.cuda as kernels

        available, why_not = kernels.kernel_available, kernels.kernel_unavailable_reason
    except (ImportError, AttributeError) as exc:
        return f"dmnt_lib.cuda provides no kernels yet ({exc})"
    return None if available(name) else f"{name} kernel unavailable: {why_not(name)}"


def _params(names):
    return [pytest.param(n, marks=[pytest.mark.cuda] if KERNEL_BACKENDS.get(n, ("", "cpu"))[1] == "cuda" else []) for n in names]


@pytest.fixture(params=_params(KERNEL_BACKENDS))
def backend(request):
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture(params=_params([*KERNEL_BACKENDS, "reference"]))
def any_backend(request):
    reason = None if request.param == "reference" else _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


def run(backend, features, uv, mask, size, **kw):
    """Forward on ``backend``; returns CPU ``surface, visible, count, dropped``."""
    if backend == "reference":
        surface, visible, info = image_to_uv_reference(features.numpy(), uv.numpy(), mask.numpy(), size, **kw)
        return torch.from_numpy(surface), torch.from_numpy(visible), torch.from_numpy(info.count), torch.from_numpy(info.dropped)
    name, device = KERNEL_BACKENDS[backend]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TableOverflowWarning)
        surface, visible, info = image_to_uv(features.to(device), uv.to(device), mask.to(device), size, backend=name, return_info=True, **kw)
    return surface.cpu(), visible.cpu(), info.count.cpu(), info.dropped.cpu()


def grads(backend, features, uv, mask, size, grad_surface, **kw):
    """Autograd of ``sum(surface * grad_surface)`` on ``backend``: CPU ``(d features, d uv)``."""
    _, device = KERNEL_BACKENDS[backend]
    f = features.detach().to(device).clone().requires_grad_()
    q = uv.detach().to(device).clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TableOverflowWarning)
        surface, _ = image_to_uv(f, q, mask.to(device), size, backend=KERNEL_BACKENDS[backend][0], **kw)
    (surface * grad_surface.to(device)).sum().backward()
    return f.grad.cpu(), q.grad.cpu()


# ---------------------------------------------------------------- maps with independently known answers


def pixel_grid(h, w, dtype=F64):
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    return xs, ys


def from_texel_space(qx, qy, s_h, s_w):
    """Texel-space coordinates ``(H, W)`` each -> uv ``(1, H, W, 2)`` (inverse of ``q = uv * S - 0.5``)."""
    return torch.stack([(qx + 0.5) / s_w, (qy + 0.5) / s_h], dim=-1)[None]


def position_features(h, w, dtype=F64):
    """``(1, 3, H, W)``: F[0] = x, F[1] = y, F[2] = 1, so the transform must return the preimage point."""
    xs, ys = pixel_grid(h, w, dtype)
    return torch.stack([xs, ys, torch.ones_like(xs)])[None]


def smooth_uv(h, w, seed=0, jitter=0.0, dtype=F64):
    """A curved (non-affine) map with uv in about [0.1, 0.85]; optional Gaussian jitter (std ``jitter``)."""
    xs, ys = pixel_grid(h, w, dtype)
    x, y = xs / (w - 1), ys / (h - 1)
    u = 0.12 + 0.62 * x + 0.06 * torch.sin(2.5 * y) + 0.05 * x * y
    v = 0.10 + 0.60 * y + 0.08 * x**2 + 0.04 * torch.sin(3 * x)
    uv = torch.stack([u, v], dim=-1)[None]
    if jitter:
        g = torch.Generator().manual_seed(seed)
        uv = uv + jitter * torch.randn(uv.shape, generator=g, dtype=dtype)
    return uv


def used_by_mask(mask):
    """``(H-1, W-1)`` bool: all four pixels of the block on ``mask (H, W)``."""
    return mask[:-1, :-1] & mask[:-1, 1:] & mask[1:, 1:] & mask[1:, :-1]


def quad_inside_depth(uv, s_h, s_w):
    """Signed depth of every texel centre inside every quad polygon (texel units; > 0 inside).

    Args: uv ``(H, W, 2)`` float64. Returns ``(S_h * S_w, H-1, W-1)`` and the quads' turns ``(H-1, W-1, 4)``.
    """
    q = torch.stack([uv[..., 0] * s_w - 0.5, uv[..., 1] * s_h - 0.5], dim=-1)
    corners = torch.stack([q[:-1, :-1], q[:-1, 1:], q[1:, 1:], q[1:, :-1]], dim=2)
    edges = torch.roll(corners, -1, dims=2) - corners
    turns = edges[..., 0] * torch.roll(edges, -1, dims=2)[..., 1] - edges[..., 1] * torch.roll(edges, -1, dims=2)[..., 0]
    sign = torch.sign(turns.sum(-1))
    ii, jj = torch.meshgrid(torch.arange(s_h, dtype=F64), torch.arange(s_w, dtype=F64), indexing="ij")
    c = torch.stack([jj, ii], dim=-1).reshape(-1, 1, 1, 1, 2)
    rel = c - corners
    dist = (edges[..., 0] * rel[..., 1] - edges[..., 1] * rel[..., 0]) / edges.norm(dim=-1)
    return (sign[..., None] * dist).amin(-1), turns


AFFINE_CASES = {
    # name: (M (2x2) texel units per pixel, offset as (centre of texture) or explicit, (S_h, S_w))
    "aligned": (((2.0, 0.0), (0.0, 2.0)), (1.0, 1.0), (24, 24)),  # texel centres land on quad edges and corners
    "rotated": (((1.5 * math.cos(0.6), -1.5 * math.sin(0.6)), (1.5 * math.sin(0.6), 1.5 * math.cos(0.6))), None, (24, 24)),
    "mirrored": (((-1.4, 0.3), (0.2, 1.2)), None, (24, 24)),
    "sheared_rect": (((1.8, 0.4), (-0.3, 1.3)), None, (20, 28)),
}


def affine_case(name, h=12, w=12):
    """uv ``(1, H, W, 2)`` of ``q = M p + o`` and the exact preimage ``P (S_h, S_w, 2)`` of every texel centre."""
    m, offset, (s_h, s_w) = AFFINE_CASES[name]
    m = torch.tensor(m, dtype=F64)
    if offset is None:  # centre the image of the pixel grid in the texture
        offset = torch.tensor([(s_w - 1) / 2, (s_h - 1) / 2], dtype=F64) - m @ torch.tensor([(w - 1) / 2, (h - 1) / 2], dtype=F64)
    offset = torch.as_tensor(offset, dtype=F64)
    xs, ys = pixel_grid(h, w)
    q = torch.einsum("ab,hwb->hwa", m, torch.stack([xs, ys], -1)) + offset
    ii, jj = torch.meshgrid(torch.arange(s_h, dtype=F64), torch.arange(s_w, dtype=F64), indexing="ij")
    preimage = torch.einsum("ab,hwb->hwa", torch.linalg.inv(m), torch.stack([jj, ii], -1) - offset)
    return from_texel_space(q[..., 0], q[..., 1], s_h, s_w), preimage, (s_h, s_w)


def affine_expected_count(preimage, mask, tol=1e-9):
    """Number of used unit squares ``[x0, x0+1] x [y0, y0+1]`` containing each preimage (closed, up to ``tol``)."""
    count = torch.zeros(preimage.shape[:2], dtype=torch.int32)
    px, py = preimage[..., 0], preimage[..., 1]
    for y0, x0 in torch.nonzero(used_by_mask(mask)).tolist():
        count += ((px >= x0 - tol) & (px <= x0 + 1 + tol) & (py >= y0 - tol) & (py <= y0 + 1 + tol)).int()
    return count


def make_mask(kind, h, w):
    xs, ys = pixel_grid(h, w)
    if kind == "full":
        return torch.ones(h, w, dtype=torch.bool)
    if kind == "disc":
        return (xs - (w - 1) / 2) ** 2 + (ys - (h - 1) / 2) ** 2 <= 4.6**2
    mask = torch.ones(h, w, dtype=torch.bool)
    mask[5, 6] = False  # "one_off": the four blocks around this pixel are skipped
    return mask


# ---------------------------------------------------------------- exactness and coverage


@pytest.mark.parametrize("case", list(AFFINE_CASES))
@pytest.mark.parametrize("mask_kind", ["full", "disc", "one_off"])
def test_affine_map_is_inverted_exactly(any_backend, case, mask_kind):
    """Features linear in pixel position come back as the exact preimage; coverage is exactly the used squares."""
    h = w = 12
    uv, preimage, size = affine_case(case, h, w)
    mask = make_mask(mask_kind, h, w)
    frac = torch.remainder(preimage, 1.0)
    gap = torch.minimum(frac, 1 - frac)
    assert not ((gap > 1e-9) & (gap < 1e-4)).any(), "precondition: no texel centre ambiguously close to a quad edge"
    surface, visible, count, dropped = run(any_backend, position_features(h, w), uv, mask[None], size)
    expected = affine_expected_count(preimage, mask)
    assert torch.equal(count[0], expected)
    assert torch.equal(visible[0], expected > 0)
    assert dropped.tolist() == [0]
    vis = visible[0]
    assert torch.allclose(surface[0, 0][vis], preimage[..., 0][vis], atol=1e-10, rtol=0)
    assert torch.allclose(surface[0, 1][vis], preimage[..., 1][vis], atol=1e-10, rtol=0)
    assert torch.allclose(surface[0, 2][vis], torch.ones((), dtype=F64), atol=1e-12, rtol=0)
    assert not surface[0][:, ~vis].any()
    if case == "aligned" and mask_kind == "full":
        assert set(expected.unique().tolist()) == {0, 1, 2, 4}  # shared edges and corners were really exercised


def test_curved_map_round_trip_and_no_holes(any_backend):
    """sample_texture of an affine texture, transformed back, returns the texture; every texel inside the quads is visible.

    Exactness (so the tolerance is rounding only): grid_sample reproduces an affine texture exactly where all four
    neighbours are inside (uv stays in [0.1, 0.85], i.e. texel coords in [1.9, 20]); then
    sum_k w_k T(q_k) = T(sum_k w_k q_k) = T(c) because T is affine, sum w_k = 1 and X(s, t) = c.
    """
    h = w = 16
    s = 24
    uv = smooth_uv(h, w)
    ii, jj = torch.meshgrid(torch.arange(s, dtype=F64), torch.arange(s, dtype=F64), indexing="ij")
    texture = torch.stack([0.3 + 0.05 * jj - 0.02 * ii, -0.1 + 0.03 * ii, 0.7 - 0.01 * jj + 0.04 * ii])[None]
    features = sample_texture(texture, uv)
    surface, visible, count, _ = run(any_backend, features, uv, torch.ones(1, h, w, dtype=torch.bool), s)
    depth, turns = quad_inside_depth(uv[0], s, s)
    assert ((turns > 0).all(-1) | (turns < 0).all(-1)).all(), "precondition: all quads of the smooth map are convex"
    inside_strict = (depth > 1e-5).flatten(1).any(1).view(s, s)
    inside_loose = (depth > -1e-5).flatten(1).any(1).view(s, s)
    assert inside_strict.sum() > 200
    assert torch.equal(visible[0] & inside_strict, inside_strict), "a texel inside a used quad is not visible"
    assert torch.equal(visible[0] & ~inside_loose, torch.zeros_like(inside_loose)), "a texel outside every quad is visible"
    vis = visible[0]
    assert torch.allclose(surface[0][:, vis], texture[0][:, vis], atol=1e-12, rtol=0)


@pytest.mark.parametrize("uv_corners, covered", [
    (((2.2, 2.1), (6.9, 2.4), (6.6, 6.8), (1.9, 7.1)), True),  # convex
    (((2.2, 2.1), (6.9, 2.4), (1.9, 7.1), (6.6, 6.8)), False),  # bow-tie (self-intersecting)
    (((2.2, 2.1), (6.9, 2.4), (3.5, 3.6), (1.9, 7.1)), False),  # dart (non-convex)
    (((2.2, 2.1), (6.9, 2.1), (6.6, 2.1), (1.9, 2.1)), False),  # flat (degenerate)
    (((3.0, 3.0), (3.0, 3.0), (3.0, 3.0), (3.0, 3.0)), False),  # a point sitting exactly on a texel centre
])
def test_only_strictly_convex_quads_are_used(any_backend, uv_corners, covered):
    q = torch.tensor(uv_corners, dtype=F64)  # texel-space corners p1..p4
    layout = torch.stack([torch.stack([q[0], q[1]]), torch.stack([q[3], q[2]])])  # (2, 2, 2) pixel grid
    uv = from_texel_space(layout[..., 0], layout[..., 1], 10, 10)
    # seam_threshold=1: this single quad spans half the texture, which is no seam here.
    surface, visible, count, _ = run(any_backend, position_features(2, 2), uv, torch.ones(1, 2, 2, dtype=torch.bool), 10, seam_threshold=1.0)
    assert bool(visible.any()) == covered
    if covered:  # exactly the texel centres inside the polygon, each once
        depth, _ = quad_inside_depth(uv[0], 10, 10)
        assert depth.abs().min() > 1e-3
        assert torch.equal(visible[0], (depth > 0).view(10, 10)) and count.max() == 1


# ---------------------------------------------------------------- seams, mask, overflow


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("jump, used", [(0.25, False), (0.201, False), (0.199, True)])
def test_seam_quads_are_skipped(any_backend, axis, jump, used):
    """A block whose u (or v) extent exceeds seam_threshold=0.2 leaves the texels it spans uncovered."""
    h, w, s = 4, 8, 32
    xs, ys = pixel_grid(h, w)
    along = 0.1 + 0.02 * xs + torch.where(xs >= 4, jump - 0.02, 0.0)  # extent of the block 3->4 is exactly `jump`
    across = 0.3 + 0.05 * ys
    uv = torch.stack([along, across] if axis == 0 else [across, along], dim=-1)[None]
    features = position_features(h, w)
    if axis == 1:
        uv, features = uv.transpose(1, 2), features.transpose(2, 3)  # F[0] stays the coordinate along the seam
    surface, visible, _, _ = run(any_backend, features.contiguous(), uv.contiguous(), torch.ones(uv.shape[:3], dtype=torch.bool), s)
    u3, u4 = 0.1 + 0.06, 0.1 + 0.08 + jump - 0.02
    span = [j for j in range(s) if u3 * s - 0.5 < j < u4 * s - 0.5]  # texel columns strictly inside the seam block
    rows = [i for i in range(s) if 0.3 * s - 0.5 < i < 0.45 * s - 0.5]
    assert len(span) >= 5 and len(rows) >= 3
    block = visible[0][rows][:, span] if axis == 0 else visible[0][span][:, rows]
    assert bool(block.all()) == used and bool(block.any()) == used
    if used:  # the stretched block still inverts exactly: x between 3 and 4
        x_of = surface[0, 0][rows][:, span] if axis == 0 else surface[0, 0][span][:, rows].T
        expected = 3 + (torch.tensor(span, dtype=F64) + 0.5 - u3 * s) / ((u4 - u3) * s)
        assert torch.allclose(x_of, expected.expand_as(x_of), atol=1e-10)


def test_off_mask_pixels_are_ignored(backend):
    """Blocks touching an off-mask pixel are skipped; its uv may be NaN; its feature and uv get zero gradient."""
    h = w = 12
    uv, preimage, size = affine_case("rotated", h, w)
    mask = make_mask("one_off", h, w)[None]
    features = torch.randn(1, 3, h, w, dtype=F64, generator=torch.Generator().manual_seed(1))
    out = run(backend, features, uv, mask, size)
    uv_nan, features_other = uv.clone(), features.clone()
    uv_nan[0, 5, 6] = float("nan")
    features_other[0, :, 5, 6] = 1e3
    out_nan = run(backend, features_other, uv_nan, mask, size)
    for a, b in zip(out, out_nan):
        assert torch.equal(a, b)
    px, py = preimage[..., 0], preimage[..., 1]
    near = (px > 5 + 1e-3) & (px < 7 - 1e-3) & (py > 4 + 1e-3) & (py < 6 - 1e-3)  # inside the 4 skipped blocks
    assert near.sum() >= 4 and not out[1][0][near].any()
    g_f, g_uv = grads(backend, features, uv, mask, size, torch.randn(1, 3, *size, dtype=F64, generator=torch.Generator().manual_seed(2)))
    assert not g_f[0, :, 5, 6].any() and not g_uv[0, 5, 6].any()
    assert g_f.abs().sum() > 0 and g_uv.abs().sum() > 0


def test_empty_mask(backend):
    h = w = 8
    features, uv = torch.randn(2, 3, h, w, dtype=F64), smooth_uv(h, w).expand(2, -1, -1, -1).contiguous()
    mask = torch.zeros(2, h, w, dtype=torch.bool)
    surface, visible, count, dropped = run(backend, features, uv, mask, 10)
    assert surface.shape == (2, 3, 10, 10) and not surface.any() and not visible.any() and not count.any() and not dropped.any()
    g_f, g_uv = grads(backend, features, uv, mask, 10, torch.ones(2, 3, 10, 10, dtype=F64))
    assert g_f.shape == features.shape and not g_f.any() and not g_uv.any()


def zigzag_uv(h=6, w=13):
    """u folds twice (three layers over texel columns 3..8); no texel preimage sits on a pixel line."""
    xs, ys = pixel_grid(h, w)
    qx = torch.where(xs <= 4, 2.25 + 1.5 * xs, torch.where(xs <= 8, 8.25 - 1.5 * (xs - 4), 2.25 + 1.5 * (xs - 8)))
    return from_texel_space(qx, 1.6 + 1.3 * ys, 12, 12)


@pytest.mark.parametrize("k", [1, 2, 3, 10])
def test_overflow_keeps_smallest_qids(any_backend, k):
    """Three layers cover texel columns 3..8; exactly the min(K, 3) layers with the smallest qid are kept."""
    uv = zigzag_uv().expand(2, -1, -1, -1).contiguous()
    mask = torch.ones(2, 6, 13, dtype=torch.bool)
    mask[1] = False  # per-item dropped counts: the second item has none
    features = position_features(6, 13).expand(2, -1, -1, -1).contiguous()
    surface, visible, count, dropped = run(any_backend, features, uv, mask, 12, max_quads_per_texel=k)
    jj = torch.arange(12, dtype=F64)
    layers = torch.stack([(jj - 2.25) / 1.5, 4 + (8.25 - jj) / 1.5, 8 + (jj - 2.25) / 1.5])  # preimage x per layer
    rows, cols = slice(2, 9), slice(3, 9)
    kept = min(k, 3)
    assert visible[0].sum() == 7 * 6 and visible[0, rows, cols].all()
    assert (count[0, rows, cols] == kept).all()
    assert dropped.tolist() == [7 * 6 * (3 - kept), 0]
    expected_x = layers[:kept, cols].mean(0)
    assert torch.allclose(surface[0, 0, rows, cols], expected_x.expand(7, -1), atol=1e-10)


def test_overflow_warns_with_count(backend):
    uv, features = zigzag_uv(), position_features(6, 13)
    _, device = KERNEL_BACKENDS[backend]
    with pytest.warns(TableOverflowWarning, match=r"\b84\b"):
        image_to_uv(features.to(device), uv.to(device), torch.ones(1, 6, 13, dtype=torch.bool, device=device), 12,
                    max_quads_per_texel=1, backend=KERNEL_BACKENDS[backend][0])


# ---------------------------------------------------------------- gradients and agreement with the reference


def test_gradcheck(backend):
    """Finite differences agree with the backward in float64 (the jittered map keeps texels >= 1e-3 from quad edges)."""
    h = w = 5
    s = 8
    uv = smooth_uv(h, w, seed=0, jitter=0.01)
    depth, _ = quad_inside_depth(uv[0], s, s)
    assert depth.abs().min() > 1e-3, "precondition: no texel centre near a quad edge"
    _, device = KERNEL_BACKENDS[backend]
    mask = torch.ones(1, h, w, dtype=torch.bool, device=device)
    features = torch.randn(1, 2, h, w, dtype=F64, generator=torch.Generator().manual_seed(3)).to(device).requires_grad_()
    uv = uv.to(device).requires_grad_()
    name = KERNEL_BACKENDS[backend][0]
    assert run(backend, features.detach().cpu(), uv.detach().cpu(), mask.cpu(), s)[1].sum() >= 10
    assert torch.autograd.gradcheck(lambda f, q: image_to_uv(f, q, mask, s, backend=name)[0], (features, uv))


def test_reference_backward_matches_finite_differences():
    """The NumPy backward (spec rule 5) against central differences of the NumPy forward."""
    h = w = 4
    s = 6
    uv = smooth_uv(h, w, seed=5, jitter=0.01)[0].numpy()
    depth, _ = quad_inside_depth(torch.from_numpy(uv), s, s)
    assert depth.abs().min() > 1e-3
    rng = np.random.default_rng(4)
    features, mask, g = rng.normal(size=(1, 2, h, w)), np.ones((1, h, w), bool), rng.normal(size=(1, 2, s, s))
    uv = uv[None]

    def loss(f, q):  # seam_threshold=1: on a 6x6 texture every quad spans more than 0.2
        return float((image_to_uv_reference(f, q, mask, s, seam_threshold=1.0)[0] * g).sum())

    g_f, g_uv = image_to_uv_reference_backward(g, features, uv, mask, s, seam_threshold=1.0)
    eps = 1e-6
    for x, analytic in ((features, g_f), (uv, g_uv)):
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = x.copy(), x.copy()
            plus[idx] += eps
            minus[idx] -= eps
            args_p = (plus, uv) if x is features else (features, plus)
            args_m = (minus, uv) if x is features else (features, minus)
            numeric[idx] = (loss(*args_p) - loss(*args_m)) / (2 * eps)
        assert np.abs(analytic).max() > 0.1
        np.testing.assert_allclose(analytic, numeric, atol=1e-6 * max(1, np.abs(numeric).max()), rtol=1e-5)


def agreement_inputs(seed):
    """Two items: a zigzag folded twice (three layers; some quads twisted -> skipped) and a noisy smooth map with
    occasional folds, both with random off-mask pixels. uv is clamped to [0, 1] as the op requires."""
    g = torch.Generator().manual_seed(seed)
    h, w = 7, 9
    xs, ys = pixel_grid(h, w)
    peak = torch.where(ys < 3, 3.0, 4.0)  # the folds move by one column between rows 2 and 3 -> twisted blocks
    qx = 1.7 + 1.4 * torch.minimum(xs, peak) - 1.3 * (xs - peak).clamp(0, 3) + 1.4 * (xs - peak - 3).clamp(min=0)
    fold = from_texel_space(qx, 1.2 + 1.25 * ys, 10, 10) + 0.01 * torch.randn(1, h, w, 2, generator=g, dtype=F64)
    noisy = smooth_uv(h, w) + 0.03 * torch.randn(1, h, w, 2, generator=g, dtype=F64)
    uv = torch.cat([fold, noisy]).clamp(0, 1)
    mask = torch.rand(2, h, w, generator=g) > 0.1
    features = torch.randn(2, 3, h, w, generator=g, dtype=F64)
    return features, uv, mask, (10, 10)


@pytest.mark.parametrize("k", [10, 2, 1])
def test_agrees_with_reference(backend, k):
    features, uv, mask, size = agreement_inputs(seed=k)
    kw = dict(max_quads_per_texel=k)
    ref_s, ref_v, ref_info = image_to_uv_reference(features.numpy(), uv.numpy(), mask.numpy(), size, **kw)
    surface, visible, count, dropped = run(backend, features, uv, mask, size, **kw)
    assert ref_info.count.max() == min(k, 3) and ref_v.sum() >= 40, "precondition: three overlapping layers"
    assert (ref_info.dropped.sum() > 0) == (k < 3), "precondition: the overflow rule is exercised"
    assert torch.equal(visible, torch.from_numpy(ref_v))
    assert torch.equal(count, torch.from_numpy(ref_info.count))
    assert torch.equal(dropped, torch.from_numpy(ref_info.dropped))
    assert torch.allclose(surface, torch.from_numpy(ref_s), atol=1e-12, rtol=0)
    g = torch.randn(surface.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    ref_gf, ref_guv = image_to_uv_reference_backward(g.numpy(), features.numpy(), uv.numpy(), mask.numpy(), size, **kw)
    g_f, g_uv = grads(backend, features, uv, mask, size, g, **kw)
    assert torch.allclose(g_f, torch.from_numpy(ref_gf), atol=1e-10, rtol=1e-9)
    assert torch.allclose(g_uv, torch.from_numpy(ref_guv), atol=1e-8, rtol=1e-9)


def test_float32_matches_float64(backend):
    """Away from quad edges (texel depth >= 1e-3, where float32 rounding cannot flip coverage) float32 agrees.

    Tolerance: q ~ 20 texels carries ~2e-6 texel of float32 rounding, so s, t and the features (|dF/dpixel| <~ 3)
    move by ~1e-5; 1e-4 leaves room. Gradients scale with 1/det J, hence the relative tolerance.
    """
    h = w = 16
    s = 24
    uv = smooth_uv(h, w, seed=1, jitter=0.004)
    mask = torch.ones(1, h, w, dtype=torch.bool)
    mask[0, 3:5, 6:9] = False
    features = torch.rand(1, 4, h, w, generator=torch.Generator().manual_seed(5), dtype=F64)
    depth, _ = quad_inside_depth(uv[0], s, s)
    depth = depth.masked_fill(~used_by_mask(mask[0]), -1.0)
    safe = (depth.abs() >= 1e-3).flatten(1).all(1).view(s, s)
    assert safe.float().mean() > 0.9
    s64, v64, _, _ = run(backend, features, uv, mask, s)
    s32, v32, _, _ = run(backend, features.float(), uv.float(), mask, s)
    assert s32.dtype == torch.float32 and torch.equal(v64[0][safe], v32[0][safe])
    both = safe & v64[0]
    assert both.sum() > 100 and torch.allclose(s32[0][:, both].double(), s64[0][:, both], atol=1e-4, rtol=0)
    g = torch.randn(1, 4, s, s, generator=torch.Generator().manual_seed(6), dtype=F64) * both
    gf64, guv64 = grads(backend, features, uv, mask, s, g)
    gf32, guv32 = grads(backend, features.float(), uv.float(), mask, s, g.float())
    assert torch.allclose(gf32.double(), gf64, atol=1e-5, rtol=1e-4)
    assert torch.allclose(guv32.double(), guv64, atol=1e-3 * guv64.abs().max().item(), rtol=1e-3)


def test_batch_equals_items_one_at_a_time(backend):
    f_a, uv_a, mask_a, size = agreement_inputs(seed=3)
    uv = torch.cat([uv_a, smooth_uv(7, 9)])
    mask = torch.cat([mask_a, torch.ones(1, 7, 9, dtype=torch.bool)])
    features = torch.cat([f_a, torch.randn(1, 3, 7, 9, dtype=F64, generator=torch.Generator().manual_seed(8))])
    g = torch.randn(3, 3, *size, dtype=F64, generator=torch.Generator().manual_seed(9))
    kw = dict(max_quads_per_texel=2)
    whole = run(backend, features, uv, mask, size, **kw)
    whole_grads = grads(backend, features, uv, mask, size, g, **kw)
    for b in range(3):
        one = run(backend, features[b:b + 1], uv[b:b + 1], mask[b:b + 1], size, **kw)
        for a, item in zip(whole, one):
            assert torch.allclose(a[b:b + 1].double(), item.double(), atol=1e-12, rtol=0)
        one_grads = grads(backend, features[b:b + 1], uv[b:b + 1], mask[b:b + 1], size, g[b:b + 1], **kw)
        for a, item in zip(whole_grads, one_grads):
            assert torch.allclose(a[b:b + 1], item, atol=1e-12, rtol=1e-12)


def test_quad_table_torch_is_the_reference_table():
    """The torch lookup table lists the same (texel, qid, s, t) entries as the reference's, in (batch, texel, qid) order."""
    features, uv, mask, size = agreement_inputs(seed=11)
    table = quad_table_torch(uv, mask, *size, 0.2, 2)
    ref = image_to_uv_reference(features.numpy(), uv.numpy(), mask.numpy(), size, max_quads_per_texel=2)[2].table
    expected = [(b, i * size[1] + j, qid, s, t) for b in range(2) for (i, j) in sorted(ref[b]) for qid, s, t in ref[b][(i, j)]]
    got = list(zip(table.batch.tolist(), table.texel.tolist(), table.qid.tolist(), table.s.tolist(), table.t.tolist()))
    assert [e[:3] for e in got] == [e[:3] for e in expected]
    np.testing.assert_allclose(np.array([e[3:] for e in got]), np.array([e[3:] for e in expected]), atol=1e-13)


def test_chunking_does_not_change_the_result(monkeypatch):
    """Solving candidates in many small chunks (one quad may exceed a chunk) gives the same table and outputs."""
    features, uv, mask, size = agreement_inputs(seed=4)
    whole = torch_impl.image_to_uv_torch(features, uv, mask, *size, 0.2, 2)
    monkeypatch.setattr(torch_impl, "_CHUNK", 3)
    chunked = torch_impl.image_to_uv_torch(features, uv, mask, *size, 0.2, 2)
    assert whole[2].sum() > 40
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- API: validation, dispatch, imports


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_output_shapes_and_dtypes(backend, dtype):
    _, device = KERNEL_BACKENDS[backend]
    features, uv, mask, _ = agreement_inputs(seed=6)
    out = image_to_uv(features.to(device, dtype), uv.to(device, dtype), mask.to(device), (10, 12),
                      backend=KERNEL_BACKENDS[backend][0], return_info=True)
    surface, visible, info = out
    assert surface.shape == (2, 3, 10, 12) and surface.dtype == dtype and surface.device.type == device
    assert visible.shape == (2, 10, 12) and visible.dtype == torch.bool
    assert info.count.shape == (2, 10, 12) and info.count.dtype == torch.int32
    assert info.dropped.shape == (2,) and info.dropped.dtype == torch.int64
    assert torch.equal(visible, info.count > 0) and visible.any()
    assert len(image_to_uv(features.to(device, dtype), uv.to(device, dtype), mask.to(device), 10, backend=KERNEL_BACKENDS[backend][0])) == 2


def _valid():
    return dict(features=torch.rand(1, 2, 4, 5), uv=torch.rand(1, 4, 5, 2), mask=torch.ones(1, 4, 5, dtype=torch.bool), texture_size=8)


def _with(**changes):
    def build():
        args = _valid()
        for key, fn in changes.items():
            args[key] = fn(args)
        return args

    return build


def _set_uv(value, on_mask=True):
    def fn(a):
        uv = a["uv"].clone()
        uv[0, 1, 2, 0] = value
        if not on_mask:
            a["mask"][0, 1, 2] = False
        return uv

    return fn


BAD_INPUTS = [
    (_with(features=lambda a: a["features"].numpy()), TypeError, "features"),
    (_with(features=lambda a: a["features"][0]), ValueError, "features"),
    (_with(features=lambda a: torch.rand(1, 2, 1, 5), uv=lambda a: torch.rand(1, 1, 5, 2), mask=lambda a: torch.ones(1, 1, 5, dtype=torch.bool)), ValueError, "features"),
    (_with(features=lambda a: a["features"].half()), TypeError, "features"),
    (_with(features=lambda a: (a["features"] * 10).int()), TypeError, "features"),
    (_with(uv=lambda a: a["uv"][..., :1]), ValueError, "uv"),
    (_with(uv=lambda a: a["uv"].double()), TypeError, "uv"),
    (_with(uv=lambda a: a["uv"].to("meta")), ValueError, "device"),
    (_with(mask=lambda a: a["mask"].float()), TypeError, "mask"),
    (_with(mask=lambda a: a["mask"][:, :3]), ValueError, "mask"),
    (_with(mask=lambda a: a["mask"].expand(2, -1, -1)), ValueError, "mask"),
    (_with(texture_size=lambda a: 0), ValueError, "texture_size"),
    (_with(texture_size=lambda a: (8, -2)), ValueError, "texture_size"),
    (_with(texture_size=lambda a: 8.0), TypeError, "texture_size"),
    (_with(texture_size=lambda a: (8,)), ValueError, "texture_size"),
    (_with(texture_size=lambda a: True), TypeError, "texture_size"),
    (_with(seam_threshold=lambda a: 0.0), ValueError, "seam_threshold"),
    (_with(seam_threshold=lambda a: 1.5), ValueError, "seam_threshold"),
    (_with(seam_threshold=lambda a: float("nan")), ValueError, "seam_threshold"),
    (_with(seam_threshold=lambda a: "0.2"), TypeError, "seam_threshold"),
    (_with(max_quads_per_texel=lambda a: 0), ValueError, "max_quads_per_texel"),
    (_with(max_quads_per_texel=lambda a: 2.0), TypeError, "max_quads_per_texel"),
    (_with(backend=lambda a: "gpu"), ValueError, "backend"),
    (_with(backend=lambda a: "cuda"), ValueError, "backend"),  # CPU tensors
    (_with(chart=lambda a: np.zeros((1, 4, 5), np.int64)), TypeError, "chart"),
    (_with(chart=lambda a: torch.zeros(1, 4, 5)), TypeError, "chart"),
    (_with(chart=lambda a: torch.zeros(1, 4, 5, dtype=torch.bool)), TypeError, "chart"),
    (_with(chart=lambda a: torch.zeros(1, 5, 4, dtype=torch.int64)), ValueError, "chart"),
    (_with(chart=lambda a: torch.zeros(4, 5, dtype=torch.int64)), ValueError, "chart"),
    (_with(chart=lambda a: torch.zeros(1, 4, 5, dtype=torch.int64, device="meta")), ValueError, "chart"),
    (_with(validate=lambda a: 1), TypeError, "validate"),
]

# Data-dependent checks: they need a host sync, so validate=False skips them.
BAD_VALUES = [
    (_with(features=lambda a: a["features"].index_fill(1, torch.tensor([0]), float("nan"))), ValueError, "features"),
    (_with(features=lambda a: a["features"].index_fill(1, torch.tensor([1]), float("inf"))), ValueError, "features"),
    (_with(uv=_set_uv(float("nan"))), ValueError, "uv"),
    (_with(uv=_set_uv(float("-inf"))), ValueError, "uv"),
    (_with(uv=_set_uv(1.0001)), ValueError, "uv"),
    (_with(uv=_set_uv(-1e-6)), ValueError, "uv"),
    (_with(chart=lambda a: torch.full((1, 4, 5), -1, dtype=torch.int64)), ValueError, "chart"),
    (_with(chart=lambda a: torch.zeros(1, 4, 5, dtype=torch.int8).index_fill(2, torch.tensor([3]), -2)), ValueError, "chart"),
]


@pytest.mark.parametrize("build, error, name", BAD_INPUTS + BAD_VALUES)
def test_validation_names_the_argument(build, error, name):
    args = build()
    with pytest.raises(error, match=name):
        image_to_uv(**args)
    if "validate" not in args:
        with pytest.raises(error, match=name):
            image_to_uv(**args, validate=True)


@pytest.mark.parametrize("build, error, name", [case for case in BAD_INPUTS if case[2] != "validate"])
def test_validate_false_keeps_the_free_checks(build, error, name):
    with pytest.raises(error, match=name):
        image_to_uv(**build(), validate=False)


@pytest.mark.parametrize("build, error, name", BAD_VALUES)
def test_validate_false_skips_the_data_checks(build, error, name):
    """The data-dependent checks are really skipped (no host sync): bad values pass through unreported."""
    image_to_uv(**build(), validate=False, backend="torch")


def test_off_mask_uv_is_not_validated():
    """uv off the mask may be NaN or out of range: it is ignored, not rejected."""
    args = _with(uv=_set_uv(float("nan"), on_mask=False))()
    args["uv"][0, 0, 0] = -3.0
    args["mask"][0, 0, 0] = False
    out = image_to_uv(**args, backend="torch")
    args["uv"] = args["uv"].masked_fill(~args["mask"][..., None], 0.5)
    expected = image_to_uv(**args, backend="torch")
    assert torch.equal(out[0], expected[0]) and torch.equal(out[1], expected[1])


def test_unavailable_kernel(monkeypatch):
    """Explicit cpp/cuda that cannot load raise; auto falls back to torch with one warning per reason."""
    monkeypatch.setattr(transform, "_kernel_status", lambda kind: (False, f"test: no {kind} today"))
    monkeypatch.setattr(transform, "_warned_fallbacks", set())
    args = _valid()
    with pytest.raises(RuntimeError, match="backend='cpp'.*test: no cpp today"):
        image_to_uv(**args, backend="cpp")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = image_to_uv(**args, backend="auto")
        second = image_to_uv(**args, backend="auto")
    fallbacks = [w for w in caught if issubclass(w.category, BackendFallbackWarning)]
    assert len(fallbacks) == 1 and "test: no cpp today" in str(fallbacks[0].message)
    expected = image_to_uv(**args, backend="torch")
    for a, b, c in zip(first, second, expected):
        assert torch.equal(a, c) and torch.equal(b, c)


def test_auto_matches_torch():
    features, uv, mask, size = agreement_inputs(seed=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auto = image_to_uv(features, uv, mask, size, backend="auto")
    fell_back = any(issubclass(w.category, BackendFallbackWarning) for w in caught)
    # "auto" uses the C++ kernel whenever it is available, and says so when it is not.
    assert fell_back == (_skip_reason("cpp") is not None)
    torch_out = image_to_uv(features, uv, mask, size, backend="torch")
    assert torch.equal(auto[1], torch_out[1]) and torch.allclose(auto[0], torch_out[0], atol=1e-12, rtol=0)


def test_import_is_light():
    """Importing the op never imports PyTorch3D nor loads the kernels package (kernels load lazily)."""
    code = "import dmnt_lib.transform, sys; assert 'pytorch3d' not in sys.modules; assert 'dmnt_lib.cuda' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


def dense_table(backend, uv, mask, size, k):
    """``backend``'s lookup table as the kernels store it: ``qid (B, S, S, K)`` int64 (-1 in empty slots) and
    ``st (B, S, S, K, 2)`` in uv's dtype, plus ``dropped``. The torch backend's table is the one
    ``image_to_uv_torch`` uses: built in float64, ``(s, t)`` then cast to the input dtype."""
    name, device = KERNEL_BACKENDS[backend]
    b = uv.shape[0]
    if name == "torch":
        table = quad_table_torch(uv.double(), mask, size, size, 0.2, k)
        qid = torch.full((b * size * size, k), -1, dtype=torch.int64)
        st = torch.zeros(b * size * size, k, 2, dtype=uv.dtype)
        group = table.batch * size * size + table.texel
        start = torch.cumsum(table.count.flatten().long(), 0) - table.count.flatten().long()
        slot = torch.arange(len(group)) - start[group]
        qid[group, slot] = table.qid
        st[group, slot] = torch.stack([table.s, table.t], -1).to(uv.dtype)
        return qid.view(b, size, size, k), st.view(b, size, size, k, 2), table.dropped
    feats = torch.zeros(b, 1, *uv.shape[1:3], dtype=uv.dtype, device=device)
    out = torch.ops.dmnt.quad_uv_forward(feats, uv.to(device), mask.to(device), size, size, 0.2, k)
    return out[3].long().cpu(), out[4].cpu(), out[5].cpu()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_float32_tables_are_identical_across_backends(seed):
    """Every backend decides coverage and solves (s, t) in float64, so float32 inputs give the same lookup
    table everywhere: the same qids in the same slots and bit-identical float32 (s, t)."""
    others = [be for be in ("cpp", "cuda") if not _skip_reason(be)]
    if not others:
        pytest.skip(_skip_reason("cpp"))
    g = torch.Generator().manual_seed(seed)
    h = w = 24
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    uv = torch.stack([0.1 + 0.8 * xs + 0.03 * torch.sin(5 * ys + seed), 0.1 + 0.8 * ys + 0.03 * torch.cos(4 * xs)], -1)[None]
    uv = (uv + 1e-4 * torch.rand(uv.shape, generator=g)).float()
    mask = torch.ones(1, h, w, dtype=torch.bool)
    qid, st, dropped = dense_table("torch", uv, mask, 509, 4)
    assert st.dtype == torch.float32 and int((qid >= 0).sum()) > 100_000
    for be in others:
        qid_b, st_b, dropped_b = dense_table(be, uv, mask, 509, 4)
        assert torch.equal(qid_b, qid) and torch.equal(st_b, st) and torch.equal(dropped_b, dropped)
    # And the float32 tables are those of the float64 input (the geometry never runs in float32).
    qid64, st64, _ = dense_table(others[0], uv.double(), mask, 509, 4)
    assert torch.equal(qid64, qid) and torch.equal(st64.float(), st)


def test_double_backward(backend):
    """The torch backend's backward is itself differentiable, exactly (gradgradcheck, in features and uv);
    the kernels refuse double backward loudly."""
    name, dev = KERNEL_BACKENDS[backend]
    if name != "torch":
        features, uv, mask, size = agreement_inputs(seed=3)
        f = features.to(dev).requires_grad_()
        u = uv.to(dev).requires_grad_()
        surface, _ = image_to_uv(f, u, mask.to(dev), size, backend=name)
        (g_uv,) = torch.autograd.grad((surface ** 2).sum(), u, create_graph=True)
        with pytest.raises(NotImplementedError, match="double backward"):
            torch.autograd.grad(g_uv.pow(2).sum(), f)
        return
    h = w = 5
    s = 8
    uv = smooth_uv(h, w, seed=0, jitter=0.01)
    depth, _ = quad_inside_depth(uv[0], s, s)
    assert depth.abs().min() > 1e-2, "precondition: no texel centre near a quad edge (coverage is constant)"
    mask = torch.ones(1, h, w, dtype=torch.bool, device=dev)
    features = torch.randn(1, 2, h, w, dtype=F64, generator=torch.Generator().manual_seed(3)).to(dev).requires_grad_()
    uv = uv.to(dev).requires_grad_()
    fn = lambda f, q: image_to_uv(f, q, mask, s, backend="torch")[0]  # noqa: E731
    assert fn(features, uv).ne(0).sum() > 20
    # Second derivatives in uv come from the curvature of the inverse bilinear map: nonzero, hence checkable.
    (g_uv,) = torch.autograd.grad((fn(features, uv) ** 2).sum(), uv, create_graph=True)
    (gg,) = torch.autograd.grad(g_uv.pow(2).sum(), uv)
    assert gg.abs().max() > 1e-3
    # fast_mode checks random projections of the second-order Jacobian; it fails for a uv-detached J^{-1}.
    assert torch.autograd.gradgradcheck(fn, (features, uv), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_oversized_sizes_are_value_errors():
    features, uv, mask, _ = agreement_inputs(seed=0)
    with pytest.raises(ValueError, match="texture_size"):
        image_to_uv(features, uv, mask, (2**16, 2**15))


# ---------------------------------------------------------------- UV charts: quads that bridge two charts


def face_charts_from_faces_uvs(faces_uvs):
    """``(F,)`` int64 chart id per face: connected components of faces sharing a UV vertex (computed here,
    independently of the mesh code), numbered 0.. in order of their smallest UV vertex."""
    label = torch.arange(int(faces_uvs.max()) + 1)
    while True:  # propagate the smallest label over faces until nothing changes
        face_min = label[faces_uvs].amin(1)
        new = label.scatter_reduce(0, faces_uvs.reshape(-1), face_min.repeat_interleave(3), reduce="amin")
        new = new[new]
        if torch.equal(new, label):
            break
        label = new
    return torch.unique(label[faces_uvs[:, 0]], return_inverse=True)[1]


@pytest.fixture(scope="module")
def cuboid_views():
    """The cuboid template's UV fragment from 54 views (18 azimuths x 3 elevations) at 64 px, with the
    per-pixel chart ``face_charts[pix_to_face]`` (-1 off the mask)."""
    from dmnt_lib.camera import pose_to_cameras
    from dmnt_lib.mesh import cuboid_template
    from dmnt_lib.render import uv_fragment

    mesh = cuboid_template([1.0, 0.8, 2.2])
    charts = face_charts_from_faces_uvs(mesh.faces_uvs)
    assert charts.unique().tolist() == list(range(6)), "precondition: one chart per cuboid side"
    az = torch.linspace(0, 2 * math.pi, 19)[:-1].repeat(3)
    el = torch.tensor([-15.0, 15.0, 45.0]).repeat_interleave(18) * (math.pi / 180)
    size = 64
    frag = uv_fragment(mesh, pose_to_cameras(az, el, 0.0, 5.5, size, focal=2.0 * size), size)
    chart = torch.where(frag.mask, charts[frag.pix_to_face.clamp(min=0)], -1)
    features = torch.randn(len(az), 3, size, size, generator=torch.Generator().manual_seed(0))
    return features, frag.uv, frag.mask, chart


def quad_charts(chart, qid, batch, w):
    """``(E, 4)`` chart ids of the four pixels of quads ``qid (E,)`` in items ``batch (E,)``."""
    y, x = qid // (w - 1), qid % (w - 1)
    return torch.stack([chart[batch, y, x], chart[batch, y, x + 1], chart[batch, y + 1, x + 1], chart[batch, y + 1, x]], 1)


def backend_table(backend, uv, mask, size, k, chart=None):
    """The lookup table of ``backend`` as ``(batch, texel, qid) (E, 3)`` int64 in (batch, texel, qid) order,
    ``cross_chart (B,)`` and ``dropped (B,)``: quad_table_torch for torch, the op's dense table for the kernels."""
    name, device = KERNEL_BACKENDS[backend]
    if name == "torch":
        table = quad_table_torch(uv.double().to(device), mask.to(device), size, size, 0.2, k, chart=None if chart is None else chart.to(device))
        return torch.stack([table.batch, table.texel, table.qid], 1).cpu(), table.cross_chart.cpu(), table.dropped.cpu()
    feats = torch.zeros(uv.shape[0], 1, *uv.shape[1:3], dtype=uv.dtype)
    out = torch.ops.dmnt.quad_uv_forward(feats.to(device), uv.to(device), mask.to(device), size, size, 0.2, k,
                                         None if chart is None else chart.to(device))
    qid = out[3].cpu().reshape(uv.shape[0], size * size, k)
    b, texel, slot = torch.nonzero(qid >= 0, as_tuple=True)  # row-major: (batch, texel, slot) = qid order
    return torch.stack([b, texel, qid[b, texel, slot].long()], 1), out[6].cpu(), out[5].cpu()


def test_chart_rule_on_cuboid_views(backend, cuboid_views):
    """Issue 9 item 1: on the cuboid's atlas (charts 0.02 apart) many quads bridge two sides yet pass the 0.2
    threshold; with the per-pixel chart none of them reaches the table, and the table is exactly the old one
    without their entries."""
    _, uv, mask, chart = cuboid_views
    size, k, w = 128, 8, uv.shape[2]
    old, old_cross, old_dropped = backend_table(backend, uv, mask, size, k)
    new, cross, _ = backend_table(backend, uv, mask, size, k, chart)
    assert not old_dropped.any(), "precondition: nothing dropped, so the chart's filtering is all that changes"
    old_mixed = (quad_charts(chart, old[:, 2], old[:, 0], w) != quad_charts(chart, old[:, 2], old[:, 0], w)[:, :1]).any(1)
    assert int(old_mixed.sum()) > 200, "precondition: without the chart, table entries mix charts"
    assert not old_cross.any()
    charts_new = quad_charts(chart, new[:, 2], new[:, 0], w)
    assert not (charts_new != charts_new[:, :1]).any(), "a kept entry mixes charts"
    assert torch.equal(new, old[~old_mixed])
    # cross_chart counts the quads the chart rule removed: at least every removed quad that covered a texel.
    removed = torch.unique(old[old_mixed][:, [0, 2]], dim=0)
    assert (torch.bincount(removed[:, 0], minlength=len(cross)) <= cross).all()
    assert int(cross.sum()) >= 100


def test_chart_public_api_agrees_across_backends(backend, cuboid_views):
    """image_to_uv with chart: the same table sizes and cross-chart counts as the torch backend, and no texel
    the chart removes stays visible with its old value."""
    features, uv, mask, chart = cuboid_views
    _, device = KERNEL_BACKENDS[backend]
    name = KERNEL_BACKENDS[backend][0]
    ins = [t.to(device) for t in (features, uv, mask, chart)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TableOverflowWarning)
        s_t, v_t, i_t = image_to_uv(features, uv, mask, 128, backend="torch", return_info=True, chart=chart)
        s_b, v_b, i_b = image_to_uv(*ins[:3], 128, backend=name, return_info=True, chart=ins[3])
        s_old, v_old, i_old = image_to_uv(*ins[:3], 128, backend=name, return_info=True)
    assert torch.equal(i_b.count.cpu(), i_t.count) and torch.equal(v_b.cpu(), v_t)
    assert torch.equal(i_b.dropped.cpu(), i_t.dropped) and torch.equal(i_b.cross_chart_quads.cpu(), i_t.cross_chart_quads)
    assert torch.allclose(s_b.cpu(), s_t, atol=1e-5, rtol=0)
    assert int(i_t.cross_chart_quads.sum()) >= 100 and not i_old.cross_chart_quads.any()
    assert int(i_b.count.sum()) < int(i_old.count.sum())


def test_chart_agrees_with_reference(backend, cuboid_views):
    """The NumPy reference and every backend apply the chart rule identically (forward, counts and backward),
    on the three cuboid views with the most cross-chart quads."""
    features, uv, mask, chart = cuboid_views
    per_view = image_to_uv(features, uv, mask, 64, backend="torch", return_info=True, chart=chart)[2].cross_chart_quads
    views = torch.argsort(per_view, descending=True, stable=True)[:3]
    f, q, m, c = features[views].double(), uv[views].double(), mask[views], chart[views]
    size, kw = 64, dict(max_quads_per_texel=4)
    ref_s, ref_v, ref_info = image_to_uv_reference(f.numpy(), q.numpy(), m.numpy(), size, chart=c.numpy(), **kw)
    ref_old = image_to_uv_reference(f.numpy(), q.numpy(), m.numpy(), size, **kw)[2]
    assert (ref_info.cross_chart > 0).all() and (ref_info.count != ref_old.count).any(), "precondition"
    assert not ref_old.cross_chart.any()
    name, device = KERNEL_BACKENDS[backend]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TableOverflowWarning)
        surface, visible, info = image_to_uv(f.to(device), q.to(device), m.to(device), size, backend=name, return_info=True,
                                             chart=c.to(device), **kw)
    assert torch.equal(visible.cpu(), torch.from_numpy(ref_v))
    assert torch.equal(info.count.cpu(), torch.from_numpy(ref_info.count))
    assert torch.equal(info.dropped.cpu(), torch.from_numpy(ref_info.dropped))
    assert torch.equal(info.cross_chart_quads.cpu(), torch.from_numpy(ref_info.cross_chart))
    assert torch.allclose(surface.cpu(), torch.from_numpy(ref_s), atol=1e-12, rtol=0)
    g = torch.randn(surface.shape, generator=torch.Generator().manual_seed(7), dtype=F64)
    ref_gf, ref_guv = image_to_uv_reference_backward(g.numpy(), f.numpy(), q.numpy(), m.numpy(), size, chart=c.numpy(), **kw)
    g_f, g_uv = grads(backend, f, q, m, size, g, chart=c.to(device), **kw)
    assert torch.allclose(g_f, torch.from_numpy(ref_gf), atol=1e-10, rtol=1e-9)
    assert torch.allclose(g_uv, torch.from_numpy(ref_guv), atol=1e-7, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_without_chart_nothing_changes(backend, dtype):
    """chart=None is the old behaviour: identical (bit for bit) to a chart that puts every pixel on one chart,
    whatever the chart's integer dtype, with zero cross-chart quads."""
    features, uv, mask, size = agreement_inputs(seed=5)
    name, device = KERNEL_BACKENDS[backend]
    ins = [t.to(device) for t in (features, uv, mask)]
    kw = dict(max_quads_per_texel=2, backend=name, return_info=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TableOverflowWarning)
        none = image_to_uv(*ins, size, **kw)
        one = image_to_uv(*ins, size, chart=torch.full(mask.shape, 3, dtype=dtype, device=device), **kw)
    for a, b in zip([*none[:2], *none[2]], [*one[:2], *one[2]]):
        assert torch.equal(a, b)
    assert int(none[2].count.sum()) > 40 and not none[2].cross_chart_quads.any()


def test_uv_seam_pixels_follows_the_transform_rule(cuboid_views):
    """viz.uv_seam_pixels marks exactly the pixels of on-mask 2x2 blocks with a u or v extent above the threshold
    or (with chart) pixels on two charts; on the cuboid the threshold alone misses seams that the chart finds."""
    from dmnt_lib.viz import uv_seam_pixels

    _, uv, mask, chart = cuboid_views
    views = [21, 22, 40]
    uv, mask, chart = uv[views], mask[views], chart[views]
    got_thr = uv_seam_pixels(uv, mask, 0.2)
    got = uv_seam_pixels(uv, mask, 0.2, chart=chart)
    exp_thr, exp = torch.zeros_like(mask), torch.zeros_like(mask)
    u, m, c = uv.numpy(), mask.numpy(), chart.numpy()
    for b in range(len(views)):
        for y in range(mask.shape[1] - 1):
            for x in range(mask.shape[2] - 1):
                if not m[b, y:y + 2, x:x + 2].all():
                    continue
                block = u[b, y:y + 2, x:x + 2].reshape(4, 2)
                seam = bool(np.ptp(block[:, 0]) > 0.2 or np.ptp(block[:, 1]) > 0.2)
                exp_thr[b, y:y + 2, x:x + 2] |= seam
                exp[b, y:y + 2, x:x + 2] |= seam or len(set(c[b, y:y + 2, x:x + 2].ravel().tolist())) > 1
    assert torch.equal(got_thr, exp_thr) and torch.equal(got, exp)
    assert int((got & ~got_thr).sum()) > 20, "precondition: cross-chart seams below the threshold"


# ---------------------------------------------------------------- validate=False (hot loops)


def test_validate_false_gives_identical_outputs(backend, cuboid_views):
    features, uv, mask, chart = cuboid_views
    name, device = KERNEL_BACKENDS[backend]
    ins = [t[:6].to(device) for t in (features, uv, mask, chart)]
    outs = []
    for validate in (True, False):
        f = ins[0].clone().requires_grad_()
        q = ins[1].clone().requires_grad_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", TableOverflowWarning)
            surface, visible, info = image_to_uv(f, q, ins[2], 96, backend=name, return_info=True, chart=ins[3], validate=validate)
        (surface * surface).sum().backward()
        outs.append([surface.detach(), visible, *info, f.grad, q.grad])
    assert int(outs[0][1].sum()) > 500 and outs[0][-1].abs().sum() > 0
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_validate_false_skips_the_overflow_warning():
    uv, features = zigzag_uv(), position_features(6, 13)
    mask = torch.ones(1, 6, 13, dtype=torch.bool)
    with pytest.warns(TableOverflowWarning):
        image_to_uv(features, uv, mask, 12, max_quads_per_texel=1, backend="torch")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TableOverflowWarning)
        info = image_to_uv(features, uv, mask, 12, max_quads_per_texel=1, backend="torch", return_info=True, validate=False)[2]
    assert info.dropped.tolist() == [84]  # still counted, just not reported
