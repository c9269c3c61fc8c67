"""Run-length encoding of bool masks, as ``evaluate`` stores predicted amodal masks in
``predictions.jsonl`` (about 1 kB per 128 px image) and the figures read them back.

A leaf module (NumPy only), so that ``evaluate`` (which writes) and ``figures`` (which reads, and
imports ``evaluate``) both import it downward; ``figures.records`` re-exports both functions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["encode_mask", "decode_mask"]


def encode_mask(mask) -> dict:
    """Run-length encode a ``(H, W)`` bool mask: ``{"size": [H, W], "counts": [...]}``, row-major
    runs alternating False, True, ... starting with False (the first count may be 0)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    flat = m.astype(bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(c) for c in counts]}


def decode_mask(rle: dict) -> np.ndarray:
    """Inverse of ``encode_mask``: ``(H, W)`` bool."""
    try:
        h, w = (int(x) for x in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"mask RLE must be {{'size': [H, W], 'counts': [...]}}, got {str(rle)[:80]}") from None
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"mask RLE counts must be non-negative and sum to H*W = {h * w}, got {counts.sum()}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(h, w)
