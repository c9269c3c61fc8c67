"""Compiled C++ (CPU) and CUDA kernels of the image->UV transform.

The public transform (``dmnt_lib.transform.image_to_uv``) calls only:

- :func:`kernel_available` ``(kind)``: ``kind`` is ``"cpp"`` or ``"cuda"``; builds and loads the
  kernel once (cached on disk and per process) and never raises on build failure;
- :func:`kernel_unavailable_reason` ``(kind)``: why not (the compiler output, say);
- :func:`image_to_uv_kernel`: the transform itself, differentiable in features and uv.

:func:`compile_cuda_only` builds the CUDA library without needing a GPU (compile check).
"""
from __future__ import annotations

import threading
from pathlib import Path

import torch

from . import build, ops

_KINDS = ("cpp", "cuda")
_LOCK = threading.RLock()
_STATE: dict[str, tuple[bool, str]] = {}  # kind -> (loaded, reason); filled once per process
_PATHS: dict[str, Path] = {}  # kind -> the loaded library


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")


def _load(kind: str) -> None:
    if kind == "cuda":
        ok, reason = _ensure("cpp")
        if not ok:  # the CUDA library registers kernels for the schema the C++ one defines
            raise build.BuildError(f"the CUDA kernel needs the C++ kernel, which failed: {reason}")
    path, loaded_now = build.build_kernel(kind)
    if not loaded_now:
        try:
            torch.ops.load_library(str(path))
        except OSError:  # an incompatible or damaged cache entry: drop it and build afresh
            path.unlink(missing_ok=True)
            path, loaded_now = build.build_kernel(kind)
            if not loaded_now:
                torch.ops.load_library(str(path))
    _PATHS[kind] = path
    if kind == "cpp":
        ops.register()


def _ensure(kind: str) -> tuple[bool, str]:
    with _LOCK:
        if kind not in _STATE:
            try:
                _load(kind)
                _STATE[kind] = (True, "")
            except Exception as exc:  # noqa: BLE001 - any failure means "use another backend"
                _STATE[kind] = (False, f"{type(exc).__name__}: {exc}")
        return _STATE[kind]


def kernel_available(kind: str) -> bool:
    """True when the ``"cpp"`` or ``"cuda"`` kernel is built, loaded and usable here.

    The first call per kind may compile (about a minute; cached on disk afterwards).
    Build failures return False (see :func:`kernel_unavailable_reason`); an unknown
    ``kind`` raises ValueError. ``"cuda"`` also needs a visible GPU.
    """
    _check_kind(kind)
    if kind == "cuda" and not torch.cuda.is_available():
        return False
    return _ensure(kind)[0]


def kernel_unavailable_reason(kind: str) -> str:
    """Why :func:`kernel_available` ``(kind)`` is False ("" when it is available)."""
    _check_kind(kind)
    if kind == "cuda":
        if build.find_nvcc() is None:
            return "nvcc not found (set CUDA_HOME or install the CUDA toolkit)"
        if not torch.cuda.is_available():
            return "no CUDA device is visible (torch.cuda.is_available() is False)"
    return _ensure(kind)[1]


def compile_cuda_only() -> Path:
    """Builds (or finds cached) the CUDA library; needs nvcc but no GPU. Returns its path.

    Raises :class:`build.BuildError` with the compiler output on failure.
    """
    ok, reason = _ensure("cuda")
    if not ok:
        raise build.BuildError(reason)
    return _PATHS["cuda"]


def image_to_uv_kernel(features: torch.Tensor, uv: torch.Tensor, mask: torch.Tensor, S_h: int,
                       S_w: int, seam_threshold: float = 0.2, max_quads: int = 10,
                       chart: torch.Tensor | None = None):
    """Image->UV transform with the compiled kernel of ``features``' device.

    Args: ``features (B,C,H,W)`` float32/float64, ``uv (B,H,W,2)`` same dtype,
    ``mask (B,H,W)`` bool, texture size ``(S_h, S_w)``, ``seam_threshold`` in uv units,
    ``max_quads`` = K table entries per texel, optional ``chart (B,H,W)`` integer per-pixel
    chart id (made int64 here). Inputs are validated by the kernel (a RuntimeError on
    misuse); the public ``image_to_uv`` validates user input first.

    Returns ``surface (B,C,S_h,S_w)`` (dtype of features; differentiable in features and
    uv), ``visible (B,S_h,S_w)`` bool, ``count (B,S_h,S_w)`` int32 kept entries per texel,
    ``dropped (B,)`` int64 entries dropped because more than K quads covered a texel,
    ``cross_chart (B,)`` int64 quads skipped because their pixels span two charts.
    """
    kind = "cuda" if features.is_cuda else "cpp"
    if not kernel_available(kind):
        raise RuntimeError(f"dmnt {kind} kernel unavailable: {kernel_unavailable_reason(kind)}")
    if chart is not None:
        chart = chart.to(torch.int64).contiguous()
    surface, visible, count, _, _, dropped, cross_chart = torch.ops.dmnt.quad_uv_forward(
        features.contiguous(), uv.contiguous(), mask.contiguous(), int(S_h), int(S_w),
        float(seam_threshold), int(max_quads), chart)
    return surface, visible, count, dropped, cross_chart


__all__ = ["kernel_available", "kernel_unavailable_reason", "image_to_uv_kernel", "compile_cuda_only"]
