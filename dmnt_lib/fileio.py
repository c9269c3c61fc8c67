"""Atomic file writes: a temp file in the destination folder, then ``os.replace``.

An interrupted run never leaves a half-written file: readers see the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_path", "default_file_mode"]


def _read_umask() -> int:
    # os.umask can only be read by setting it; doing that on every write would race with other
    # threads creating files. Read it once, at import, before any worker threads exist.
    umask = os.umask(0)
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def default_file_mode() -> int:
    """The mode a plain ``open()`` gives a new file (``0o666`` less the umask read at import); ``mkstemp`` would use 0600."""
    return 0o666 & ~_UMASK


class atomic_path:
    """Context manager yielding a temp path next to ``path``; on success it becomes ``path``.

    >>> with atomic_path("out.png") as tmp:  # doctest: +SKIP
    ...     fig.savefig(tmp)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=f"{self.path.suffix}.tmp")
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            os.chmod(self.tmp, default_file_mode())
            os.replace(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode())
