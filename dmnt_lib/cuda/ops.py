"""Python-side registrations of the ``dmnt::quad_uv_*`` ops: fake kernels and autograd.

The schema and the CPU/CUDA kernels come from the compiled libraries (see ``build.py``);
:func:`register` must run once after the C++ library is loaded. With the fake kernels the
ops work under FakeTensor / ``torch.compile``, and ``torch.library.opcheck`` passes.

``dmnt::quad_uv_forward(features (B,C,H,W), uv (B,H,W,2), mask (B,H,W) bool, S_h, S_w,
seam_threshold, max_quads=K, chart=None)`` (``chart``: optional ``(B,H,W)`` int64 per-pixel
chart id; a quad whose pixels are not on one chart is skipped) returns ``surface (B,C,S_h,S_w)``
(dtype of features), ``visible (B,S_h,S_w)`` bool, ``count (B,S_h,S_w)`` int32,
``table_qid (B,S_h,S_w,K)`` int32 (-1 in empty slots, ascending), ``table_st (B,S_h,S_w,K,2)``
(dtype of features), ``dropped (B,)`` int64 and ``cross_chart (B,)`` int64 (quads skipped by
the chart rule only; 0 without ``chart``). ``dmnt::quad_uv_backward(grad_surface, features, uv, count,
table_qid, table_st)`` returns ``(grad_features, grad_uv)`` shaped like features and uv.
"""
from __future__ import annotations

import torch

_REGISTERED = False


def _forward_fake(features, uv, mask, S_h, S_w, seam_threshold, max_quads, chart=None):
    B = features.shape[0]
    C = features.shape[1]
    surface = features.new_empty((B, C, S_h, S_w))
    visible = features.new_empty((B, S_h, S_w), dtype=torch.bool)
    count = features.new_empty((B, S_h, S_w), dtype=torch.int32)
    table_qid = features.new_empty((B, S_h, S_w, max_quads), dtype=torch.int32)
    table_st = features.new_empty((B, S_h, S_w, max_quads, 2))
    dropped = features.new_empty((B,), dtype=torch.int64)
    cross_chart = features.new_empty((B,), dtype=torch.int64)
    return surface, visible, count, table_qid, table_st, dropped, cross_chart


def _backward_fake(grad_surface, features, uv, count, table_qid, table_st):
    return torch.empty_like(features), torch.empty_like(uv)


def _setup_context(ctx, inputs, output):
    features, uv = inputs[0], inputs[1]
    _, _, count, table_qid, table_st, _, _ = output
    ctx.save_for_backward(features, uv, count, table_qid, table_st)
    # The table's (s, t) are an intermediate of the forward, not a differentiable result.
    ctx.mark_non_differentiable(table_st)


def _backward(ctx, grad_surface, *unused_grads):
    features, uv, count, table_qid, table_st = ctx.saved_tensors
    grad_features = grad_uv = None
    if grad_surface is not None and (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
        # Autograd may hand over expanded (stride-0) gradients; the kernel needs contiguous.
        grad_features, grad_uv = torch.ops.dmnt.quad_uv_backward(
            grad_surface.contiguous(), features, uv, count, table_qid, table_st)
    return (grad_features if ctx.needs_input_grad[0] else None,
            grad_uv if ctx.needs_input_grad[1] else None,
            None, None, None, None, None, None)  # mask, S_h, S_w, seam_threshold, max_quads, chart


def _no_double_backward(ctx, *grads):
    raise NotImplementedError(
        "image_to_uv: double backward (create_graph=True through the backward) is not implemented by the "
        "cpp/cuda kernels; use backend='torch', whose backward is differentiable")


def register() -> None:
    """Registers fake kernels and autograd for the loaded ops (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    torch.library.register_fake("dmnt::quad_uv_forward")(_forward_fake)
    torch.library.register_fake("dmnt::quad_uv_backward")(_backward_fake)
    torch.library.register_autograd("dmnt::quad_uv_forward", _backward, setup_context=_setup_context)
    torch.library.register_autograd("dmnt::quad_uv_backward", _no_double_backward, setup_context=lambda ctx, inputs, output: None)
    _REGISTERED = True
