"""The one parser of 2-D sizes (image sizes, texture sizes, feature-map sizes) used across the package."""

from __future__ import annotations

import numbers

__all__ = ["size_hw"]


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def size_hw(value, name: str = "image_size", minimum: int = 1, allow_int: bool = True) -> tuple[int, int]:
    """``(H, W)`` from a pair of ints, or from one int (a square) when ``allow_int``.

    Args:
        value: ``S`` or ``(H, W)`` (any length-2 iterable of integers, numpy/torch integers included).
        name: the argument's name, used in error messages.
        minimum: smallest allowed side.
        allow_int: accept a single int as a square.

    Raises:
        TypeError: not an int or a pair of ints. ValueError: wrong length or a side below ``minimum``.
    """
    what = "an int or (H, W), a pair of ints" if allow_int else "(H, W), a pair of ints"
    if _is_int(value) and allow_int:
        hw = (int(value), int(value))
    else:
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or getattr(value, "ndim", 1) == 0:
            raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")
        items = list(value)
        if len(items) != 2:
            raise ValueError(f"{name} must be {what}, got {len(items)} values {value!r}")
        if not all(_is_int(x) or (getattr(x, "ndim", None) == 0 and _is_int(x.item())) for x in items):
            raise TypeError(f"{name} must be {what}, got {value!r}")
        hw = (int(items[0]), int(items[1]))
    if min(hw) < minimum:
        raise ValueError(f"{name} must be at least {minimum} per side, got {hw}")
    return hw
