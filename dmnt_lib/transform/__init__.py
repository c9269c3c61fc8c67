"""The quad-barycentric image→UV transform (DMNT appendix A.1): ``image_to_uv``.

Pure torch + NumPy: importing this package never imports PyTorch3D and compiles nothing; the C++/CUDA
kernels of ``dmnt_lib.cuda`` are looked up only when a call needs them.
"""

from __future__ import annotations

import numbers
import warnings
from typing import NamedTuple

import torch

from ..sizes import size_hw
from .torch_impl import image_to_uv_torch

__all__ = ["image_to_uv", "TransformInfo", "BackendFallbackWarning", "TableOverflowWarning", "BACKENDS"]

BACKENDS = ("auto", "torch", "cpp", "cuda")
_warned_fallbacks: set[str] = set()


class BackendFallbackWarning(UserWarning):
    """``backend="auto"`` could not use a compiled kernel and runs the torch implementation."""


class TableOverflowWarning(UserWarning):
    """More than ``max_quads_per_texel`` used quads covered some texels; the extra entries were dropped."""


class TransformInfo(NamedTuple):
    """Diagnostics of one ``image_to_uv`` call.

    Attributes:
        count: ``(B, S_h, S_w)`` int32, table entries kept per texel (the ``n`` that divides the sum).
        dropped: ``(B,)`` int64, entries dropped per batch item by the ``max_quads_per_texel`` rule.
        cross_chart_quads: ``(B,)`` int64, quads skipped per batch item because their four pixels are not
            on one chart although the mask, seam and convexity rules would use them (all 0 without ``chart``).
    """

    count: torch.Tensor
    dropped: torch.Tensor
    cross_chart_quads: torch.Tensor


def _kernel_status(kind: str) -> tuple[bool, str]:
    """Whether ``dmnt_lib.cuda`` can run ``kind`` ("cpp" or "cuda"), and why not."""
    try:
        from .. import cuda as kernels

        available, why_not = kernels.kernel_available, kernels.kernel_unavailable_reason
    except (ImportError, AttributeError) as exc:
        return False, f"dmnt_lib.cuda provides no kernels ({type(exc).__name__}: {exc})"
    if available(kind):
        return True, ""
    return False, why_not(kind)


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend == "torch":
        return backend
    if backend in ("cpp", "cuda"):
        wanted = "cpu" if backend == "cpp" else "cuda"
        if device.type != wanted:
            raise ValueError(f"backend={backend!r} needs {wanted} tensors, got tensors on {device}")
        ok, reason = _kernel_status(backend)
        if not ok:
            raise RuntimeError(f"backend={backend!r} is unavailable: {reason}")
        return backend
    kind = {"cpu": "cpp", "cuda": "cuda"}.get(device.type)
    if kind is None:
        ok, reason = False, f"no compiled kernel for {device.type} tensors"
    else:
        ok, reason = _kernel_status(kind)
    if ok:
        return kind
    if reason not in _warned_fallbacks:
        _warned_fallbacks.add(reason)
        warnings.warn(f"image_to_uv: using the torch backend because the {kind or device.type} kernel is unavailable: {reason}",
                      BackendFallbackWarning, stacklevel=3)
    return "torch"


_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _validate(features, uv, mask, seam_threshold, max_quads_per_texel, backend, chart) -> None:
    """Checks of types, shapes, dtypes, devices and options: free (no device work, no host sync)."""
    for name, x in (("features", features), ("uv", uv), ("mask", mask)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if features.dim() != 4:
        raise ValueError(f"features must be (B, C, H, W), got shape {tuple(features.shape)}")
    b, c, h, w = features.shape
    if b < 1 or c < 1 or h < 2 or w < 2:
        raise ValueError(f"features must have B >= 1, C >= 1, H >= 2 and W >= 2, got shape {tuple(features.shape)}")
    if tuple(uv.shape) != (b, h, w, 2):
        raise ValueError(f"uv must have shape (B, H, W, 2) = {(b, h, w, 2)} to match features, got {tuple(uv.shape)}")
    if tuple(mask.shape) != (b, h, w):
        raise ValueError(f"mask must have shape (B, H, W) = {(b, h, w)} to match features, got {tuple(mask.shape)}")
    if features.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"features must be float32 or float64, got {features.dtype}")
    if uv.dtype != features.dtype:
        raise TypeError(f"uv must have the dtype of features ({features.dtype}), got {uv.dtype}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got {mask.dtype}")
    if uv.device != features.device or mask.device != features.device:
        raise ValueError(f"features, uv and mask must be on one device, got {features.device}, {uv.device}, {mask.device}")
    if not isinstance(seam_threshold, numbers.Real) or isinstance(seam_threshold, bool):
        raise TypeError(f"seam_threshold must be a real number, got {seam_threshold!r}")
    if not (0 < seam_threshold <= 1):
        raise ValueError(f"seam_threshold must be in (0, 1], got {seam_threshold!r}")
    if not isinstance(max_quads_per_texel, numbers.Integral) or isinstance(max_quads_per_texel, bool):
        raise TypeError(f"max_quads_per_texel must be an int, got {max_quads_per_texel!r}")
    if max_quads_per_texel < 1:
        raise ValueError(f"max_quads_per_texel must be >= 1, got {max_quads_per_texel}")
    if h * w >= 2**31:
        raise ValueError(f"features: H*W must be < 2^31 (int32 pixel indices), got {h}x{w}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if chart is not None:
        if not isinstance(chart, torch.Tensor):
            raise TypeError(f"chart must be a torch.Tensor or None, got {type(chart).__name__}")
        if tuple(chart.shape) != (b, h, w):
            raise ValueError(f"chart must have shape (B, H, W) = {(b, h, w)} to match features, got {tuple(chart.shape)}")
        if chart.dtype not in _INT_DTYPES:
            raise TypeError(f"chart must be an integer tensor (per-pixel chart id), got {chart.dtype}")
        if chart.device != features.device:
            raise ValueError(f"chart must be on the device of features ({features.device}), got {chart.device}")


def _validate_values(features, uv, mask, chart) -> None:
    """Data-dependent checks: each forces a host sync, so ``validate=False`` skips them."""
    with torch.no_grad():
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contains NaN or inf")
        uv_on = uv[mask]
        if not bool(torch.isfinite(uv_on).all()):
            raise ValueError("uv contains NaN or inf on the mask")
        if uv_on.numel() and not (float(uv_on.min()) >= 0 and float(uv_on.max()) <= 1):
            raise ValueError(f"uv must lie in [0, 1] on the mask, got values in [{float(uv_on.min())}, {float(uv_on.max())}]")
        if chart is not None and chart.dtype != torch.uint8:
            chart_on = chart[mask]
            if chart_on.numel() and int(chart_on.min()) < 0:
                raise ValueError(f"chart must be >= 0 on the mask (-1 is for pixels off the mask), got {int(chart_on.min())}")


def image_to_uv(features, uv, mask, texture_size, seam_threshold=0.2, max_quads_per_texel=10, backend="auto", return_info=False,
                chart=None, validate=True):
    """Transform image-space features onto the texture ("surface") through a UV fragment.

    The inverse of texture sampling: each texel receives the image features bilinearly interpolated at the
    image point that maps to its centre, found by inverting the bilinear map of every 2x2 pixel block.

    Args:
        features: ``(B, C, H, W)`` float32 or float64 image features ``F``; ``H, W >= 2``.
        uv: ``(B, H, W, 2)`` same dtype and device, ``uv[..., 0] = u`` (column), ``uv[..., 1] = v`` (row),
            in ``[0, 1]`` and finite on the mask (anything off the mask is ignored).
        mask: ``(B, H, W)`` bool, pixels on the object.
        texture_size: ``S`` or ``(S_h, S_w)``.
        seam_threshold: float in ``(0, 1]``; quads whose ``u`` or ``v`` extent exceeds it are skipped (seams).
        max_quads_per_texel: ``K >= 1``, lookup-table entries kept per texel (the paper uses 10).
        backend: ``"auto"``, ``"torch"``, ``"cpp"`` or ``"cuda"`` (see Backends).
        return_info: also return ``TransformInfo(count, dropped, cross_chart_quads)``.
        chart: optional ``(B, H, W)`` integer tensor (same device), the UV chart id of each pixel, ``>= 0`` on
            the mask (anything off the mask is ignored; -1 by convention): ``mesh.face_charts()[pix_to_face]``,
            i.e. ``uv_fragment(...).chart``. With it, quads whose four pixels are not on one chart are skipped
            (rule 2 (d)); without it the output is exactly that of the threshold rule alone.
        validate: ``True`` (default, for user calls) also runs the data-dependent checks (NaN/inf in
            ``features``, ``uv`` finite and in ``[0, 1]`` on the mask, ``chart >= 0`` on the mask) and warns on
            table overflow; each needs a device-to-host sync. ``False`` (internal hot loops: training,
            inference) skips them and the warning, keeping only the free type/shape/dtype/device/option
            checks; the outputs are identical for valid inputs, invalid ones then give unspecified results.

    Returns:
        ``surface`` ``(B, C, S_h, S_w)`` (dtype of ``features``, zero where not visible), ``visible``
        ``(B, S_h, S_w)`` bool, and with ``return_info`` a ``TransformInfo``: ``count (B, S_h, S_w)`` int32
        kept entries per texel, ``dropped (B,)`` int64, ``cross_chart_quads (B,)`` int64.

    Rules (identical in every backend; ``reference.py`` implements them with plain loops):

    1. Texel space: ``q(p) = (u * S_w - 0.5, v * S_h - 0.5)``; texel ``(i, j)``'s centre is the point ``(j, i)``
       (docs/design.md §3, the ``grid_sample(align_corners=False)`` convention).
    2. Quads: the block at ``(y, x)`` has corners ``p1=(y,x), p2=(y,x+1), p3=(y+1,x+1), p4=(y+1,x)`` and index
       ``qid = y * (W-1) + x``. It is used iff (a) all four pixels are on the mask, (b) its ``u`` and ``v``
       extents are ``<= seam_threshold``, (c) it is strictly convex: with turns
       ``c_k = cross(q_{k+1}-q_k, q_{k+2}-q_{k+1})`` and ``sigma = sign(sum c_k)`` (+1 for 0), every
       ``sigma * c_k > 1e-6 * (largest squared edge)``, and (d) with ``chart``, all four pixels have one chart id.
       Folded, non-convex and degenerate quads (silhouette folds, seams) are skipped. The threshold (b) is the
       paper's seam test, but it cannot see two charts that lie close in the atlas (the cuboid's charts are
       0.02 apart): a block across such a seam has a small extent and would smear features across the
       texture; (d) skips it. ``cross_chart_quads`` counts the quads that pass (a)-(c) and fail (d).
    3. Inverse bilinear: for each texel centre ``c`` in the quad's bounding box, solve
       ``X(s,t) = (1-s)(1-t) q1 + s(1-t) q2 + s t q3 + (1-s) t q4 = c``. Eliminating ``s`` gives
       ``k2 t^2 + k1 t + k0 = 0``; of its two roots, the one where ``2 k2 t + k1`` (= ``det J``) has the sign
       ``sigma`` is taken, computed in the cancellation-free form ``r = -(k1 + sgn(k1) sqrt(D)) / 2``,
       ``t = k0 / r`` if ``sgn(k1) == sigma`` else ``r / k2``. The texel is covered iff ``s, t`` lie in
       ``[-1e-6, 1 + 1e-6]`` (then clamped to ``[0, 1]``); weights ``w = ((1-s)(1-t), s(1-t), s t, (1-s) t)``.
    4. Table and overflow: each texel keeps at most ``K`` entries ``(qid, s, t)``: the ``K`` with the SMALLEST
       ``qid`` (deterministic everywhere, CUDA included); the others are dropped, counted in ``dropped``,
       and a ``TableOverflowWarning`` reports the total.
       ``surface[:, c] = (1/n) sum_entries sum_k w_k F[:, p_k]`` with ``n`` = kept entries, ``visible = n > 0``.

    Backward (``G = dL/dsurface``, ``n`` and the table fixed): ``dL/dF[:, p_k] += (w_k / n) G[:, c]``; and since
    ``X(s, t; q) = c`` implies ``J d(s,t) = -sum_m w_m dq_m`` with ``J = [e + t g, f + s g]``, for each entry
    ``dL/dq_m = -w_m J^{-T} gv`` where ``gv = (1/n) sum_ch G[ch, c] d(sum_k w_k F[ch, p_k])/d(s, t)``, and
    ``dL/duv(p_m) += (S_w, S_h) * dL/dq_m``. Nothing flows to ``mask``; texels are piecewise constant in
    coverage, so the gradient is that of the current table (exact away from quad edges).

    Backends: ``"torch"`` (vectorized, any device, autograd), ``"cpp"`` (CPU kernel) and ``"cuda"`` (GPU kernel)
    from ``dmnt_lib.cuda``, compiled on first use. ``"auto"`` takes the kernel for the tensors' device if it
    loads, else falls back to ``"torch"`` with one ``BackendFallbackWarning`` per reason. The kernels keep
    a dense table for the backward, ``B*S_h*S_w*K*(4 + 2*itemsize)`` bytes (about 63 MB for B=8, S=256,
    K=10, float32); the torch backend stores only the entries used. Double backward
    (``create_graph=True``) is supported by ``"torch"`` only; the kernels raise ``NotImplementedError``. An explicit
    ``"cpp"``/``"cuda"`` on the wrong device raises ``ValueError``; when it cannot load, ``RuntimeError``.

    Raises:
        TypeError / ValueError naming the argument for wrong types, shapes, dtypes, devices, out-of-range
        options and (with ``validate``) NaN/inf, ``uv`` outside ``[0, 1]`` or ``chart < 0`` on the mask.
        An empty mask is valid: nothing is visible and all gradients are zero.

    Example:
        >>> import torch
        >>> from dmnt_lib.transform import image_to_uv
        >>> h = w = 8
        >>> ys, xs = torch.meshgrid(torch.arange(h) / h, torch.arange(w) / w, indexing="ij")
        >>> uv = torch.stack([0.2 + 0.6 * xs, 0.2 + 0.6 * ys], dim=-1)[None]  # (1, 8, 8, 2)
        >>> features = torch.randn(1, 4, h, w)
        >>> surface, visible = image_to_uv(features, uv, torch.ones(1, h, w, dtype=torch.bool), 16, backend="torch")
        >>> surface.shape, visible.shape
        (torch.Size([1, 4, 16, 16]), torch.Size([1, 16, 16]))
    """
    s_h, s_w = size_hw(texture_size, "texture_size")
    if s_h * s_w >= 2**31:
        raise ValueError(f"texture_size: S_h*S_w must be < 2^31 (int32 texel indices), got {(s_h, s_w)}")
    if not isinstance(validate, bool):
        raise TypeError(f"validate must be a bool, got {validate!r}")
    _validate(features, uv, mask, seam_threshold, max_quads_per_texel, backend, chart)
    if validate:
        _validate_values(features, uv, mask, chart)
    chosen = _pick_backend(backend, features.device)
    # Off-mask uv may be anything (NaN included); zero it so no backend ever reads it.
    uv = uv.masked_fill(~mask[..., None], 0.0)
    if chart is not None:
        chart = chart.to(torch.int64)  # no copy for the usual int64 (pix_to_face indexing gives int64)
    args = (s_h, s_w, float(seam_threshold), int(max_quads_per_texel))
    if chosen == "torch":
        surface, visible, count, dropped, cross = image_to_uv_torch(features, uv, mask, *args, chart=chart)
    else:
        from .. import cuda as kernels

        surface, visible, count, dropped, cross = kernels.image_to_uv_kernel(
            features.contiguous(), uv.contiguous(), mask.contiguous(), *args, chart=chart)
    if validate:  # the warning needs the count on the host: a sync that hot loops skip
        n_dropped = int(dropped.sum())
        if n_dropped:
            warnings.warn(f"image_to_uv: {n_dropped} lookup-table entries dropped because more than max_quads_per_texel="
                          f"{max_quads_per_texel} used quads cover some texels", TableOverflowWarning, stacklevel=2)
    if return_info:
        return surface, visible, TransformInfo(count, dropped, cross)
    return surface, visible
