"""Argument checks shared by the data entry points: each raises ``TypeError`` (wrong kind of
value) or ``ValueError`` (right kind, bad value) with a message that names the argument.

Integers are ``numbers.Integral`` (so ``numpy.int64`` counts) but never ``bool``; where a
sequence is expected, a bare ``str`` or number is refused rather than iterated or wrapped.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

import numpy as np

from ..sizes import size_hw

__all__ = ["integer", "seed", "positive", "int_list", "names", "image_hw", "number_range", "path", "rng"]


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def integer(name: str, value, minimum: int | None = None) -> int:
    """``value`` as a Python int (``>= minimum`` if given)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def seed(name: str, value) -> int:
    """A seed for ``numpy.random.SeedSequence``: an int >= 0."""
    return integer(name, value, 0)


def positive(name: str, value) -> float:
    """A finite real number > 0, as float."""
    if not _is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not 0 < float(value) < math.inf:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return float(value)


def _sequence(name: str, value, what: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or getattr(value, "ndim", 1) == 0:
        raise TypeError(f"{name} must be a sequence of {what}, got {type(value).__name__} {value!r}")
    return list(value)


def int_list(name: str, value, allowed, sort: bool = True) -> list[int]:
    """A non-empty sequence of ints from ``allowed``, duplicates removed, sorted (or in the given order)."""
    items = _sequence(name, value, "ints")
    bad = [x for x in items if not _is_int(x)]
    if bad:
        raise TypeError(f"{name} must contain ints, got {bad[:3]!r}")
    out = list(dict.fromkeys(int(x) for x in items))
    out = sorted(out) if sort else out
    if not out or any(x not in allowed for x in out):
        raise ValueError(f"{name} must be a non-empty subset of {', '.join(map(str, allowed))}; got {items}")
    return out


def names(name: str, value, allowed) -> list[str]:
    """A non-empty sequence of names from ``allowed`` (order kept, duplicates removed)."""
    items = _sequence(name, value, "names")
    if any(not isinstance(x, str) for x in items):
        raise TypeError(f"{name} must contain str names, got {items[:5]!r}")
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"unknown {name} {bad}; expected names from {tuple(allowed)}" if bad else f"{name} must not be empty")
    return list(dict.fromkeys(items))


def image_hw(name: str, value, minimum: int = 1, allow_int: bool = True) -> tuple[int, int]:
    """``(H, W)`` from a pair of ints (or one int, a square, if ``allow_int``), each ``>= minimum``."""
    return size_hw(value, name, minimum, allow_int)


def number_range(name: str, value, lo=-math.inf, hi=math.inf, *, integer_valued=False, open_lo=False, open_hi=False):
    """A ``(low, high)`` pair with ``low <= high`` inside the bounds ``lo``/``hi`` (open or closed).

    Returns:
        ``(low, high)`` as ints when ``integer_valued``, else floats.
    """
    items = _sequence(name, value, "two numbers (low, high)")
    kind, ok = ("ints", _is_int) if integer_valued else ("numbers", _is_real)
    if len(items) != 2:
        raise ValueError(f"{name} must be a (low, high) pair of {kind}, got {value!r}")
    if not all(ok(x) for x in items):
        raise TypeError(f"{name} must be a (low, high) pair of {kind}, got {value!r}")
    a, b = (int(x) for x in items) if integer_valued else (float(x) for x in items)
    above = a > lo if open_lo else a >= lo
    below = b < hi if open_hi else b <= hi
    if not (math.isfinite(a) and math.isfinite(b) and above and below and a <= b):
        left = f"{lo} {'<' if open_lo else '<='} " if math.isfinite(lo) else ""
        right = f" {'<' if open_hi else '<='} {hi}" if math.isfinite(hi) else ""
        bounds = f"{left}low <= high{right}"
        raise ValueError(f"{name} must satisfy {bounds}, got {value!r}")
    return a, b


def path(name: str, value) -> Path:
    """A ``str`` or ``os.PathLike`` as ``Path``."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__} {value!r}")
    return Path(value)


def rng(name: str, value) -> np.random.Generator:
    """A ``numpy.random.Generator`` (the caller's seeded source of randomness)."""
    if not isinstance(value, np.random.Generator):
        raise TypeError(f"{name} must be a numpy.random.Generator (e.g. np.random.default_rng(seed)), got {type(value).__name__}")
    return value
