"""Compile the dmnt kernels with ``torch.utils.cpp_extension.load_inline`` and cache them.

Cache layout: ``${DMNT_CACHE_DIR:-~/.cache/dmnt_lib}/ext/<name>-<hash16>/<name>.so`` where
the hash covers the source files, the torch version, the compiler (and nvcc) versions and
every compiler flag, so editing a kernel or upgrading torch rebuilds, and nothing else does.

Each compile runs in a fresh temporary directory inside the cache entry and only the
finished library is moved into place with ``os.replace`` (atomic). Torch's own build lock
therefore always lives in a directory nobody else uses, so a ``lock`` file left behind by a
killed build can never make a later build wait forever; leftover temporary directories
older than ``STALE_SECONDS`` are removed.

Loading is done by the caller (``dmnt_lib.cuda``): ``load_inline`` loads the library it has
just built, ``build_library`` reports that so the same library is never loaded twice.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import platform
import time
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).resolve().parent
CPP_FILES = ("quad_math.h", "quad_checks.h", "quad_transform_cpu.cpp")
CUDA_FILES = ("quad_math.h", "quad_checks.h", "quad_transform.cu")
# at::parallel_for is OpenMP pragmas in headers. -ffp-contract=off: GCC fuses a*b+c into FMA by
# default wherever the target has it (always on aarch64, with -march on x86), which would change
# the double-precision coverage decisions; without contraction they match CUDA and NumPy bit for bit.
CFLAGS = ["-O3", "-fopenmp", "-Wfatal-errors", "-ffp-contract=off"]
LDFLAGS = ["-fopenmp"]
# --fmad=false: no fused multiply-add on the device either (see CFLAGS).
CUDA_CFLAGS = ["-O3", "--fmad=false", "-lineinfo", "-Xcompiler", "-ffp-contract=off"]
DEFAULT_CUDA_ARCH = "9.0"  # used when no GPU is visible (compile-only check)
STALE_SECONDS = 30 * 60
TMP_PREFIX = ".build-"

#: Number of compilations this process has run (tests check that the cache is reused).
COMPILE_COUNT = 0


class BuildError(RuntimeError):
    """Compilation failed; the message holds the compiler output."""


def cache_root() -> Path:
    """Directory holding the compiled extensions: ``${DMNT_CACHE_DIR:-~/.cache/dmnt_lib}/ext``."""
    base = os.environ.get("DMNT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dmnt_lib")
    return Path(base) / "ext"


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


def find_nvcc() -> str | None:
    """Path of nvcc: ``$CUDA_HOME/bin/nvcc``, else ``/usr/local/cuda/bin/nvcc``, else PATH."""
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return shutil.which("nvcc")


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported without its "No CUDA runtime is found" warning."""
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import torch.utils.cpp_extension as ce
    finally:
        log.setLevel(level)
    return ce


def _prepare_cuda_env() -> None:
    """Point torch at the CUDA toolkit and pick an arch list when no GPU is visible."""
    ce = _cpp_extension()
    nvcc = find_nvcc()
    if nvcc is None:
        raise BuildError("nvcc not found (set CUDA_HOME or install the CUDA toolkit)")
    home = str(Path(nvcc).resolve().parent.parent)
    if not os.environ.get("CUDA_HOME"):
        os.environ["CUDA_HOME"] = home
    # cpp_extension computed CUDA_HOME when it was imported, possibly before we set it.
    ce.CUDA_HOME = os.environ["CUDA_HOME"]


def _ensure_ninja_on_path() -> None:
    # `.venv/bin/python -m pytest` does not put the venv's bin (where pip put ninja) on PATH.
    if shutil.which("ninja") is None:
        venv_bin = os.path.dirname(sys.executable)
        if os.path.isfile(os.path.join(venv_bin, "ninja")):
            os.environ["PATH"] = venv_bin + os.pathsep + os.environ.get("PATH", "")


def fingerprint(files: dict[str, str], cuda: bool) -> str:
    """sha256 hex of the sources (name -> text), torch version, compilers and flags."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    parts = [torch.__version__, platform.machine(), str(CFLAGS), str(LDFLAGS), _tool_version(["c++", "--version"])]
    if cuda:
        caps = [str(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]
        parts += [str(CUDA_CFLAGS), os.environ.get("TORCH_CUDA_ARCH_LIST", ""), ",".join(caps),
                  _tool_version([find_nvcc() or "nvcc", "--version"])]
    h.update("\0".join(parts).encode())
    return h.hexdigest()


def _remove_stale(entry: Path) -> None:
    """Removes temp build dirs (and their torch lock files) left by killed builds."""
    now = time.time()
    for child in entry.glob(TMP_PREFIX + "*"):
        try:
            if now - child.stat().st_mtime > STALE_SECONDS:
                shutil.rmtree(child, ignore_errors=True)
        except OSError:
            pass
    lock = entry / "lock"  # a lock torch left in the entry itself (we never build there)
    try:
        if lock.exists() and now - lock.stat().st_mtime > STALE_SECONDS / 6:
            lock.unlink()
    except OSError:
        pass


def build_library(name: str, cpp_sources: list[str], cuda_sources: list[str] | None,
                  include_dir: Path | None, key: str, root: Path | None = None,
                  label: str = "C++", no_implicit_headers: bool = True) -> tuple[Path, bool]:
    """Returns ``(path_of_.so, loaded_now)``, compiling only when the cache lacks it.

    ``loaded_now`` is True when this call compiled the library: ``load_inline`` has then
    already loaded it into the process (``is_python_module=False``: the ``TORCH_LIBRARY``
    static initializers have run). Raises :class:`BuildError` with the compiler output.
    """
    global COMPILE_COUNT
    entry = (root or cache_root()) / f"{name}-{key[:16]}"
    so = entry / f"{name}.so"
    if so.is_file():
        return so, False
    entry.mkdir(parents=True, exist_ok=True)
    _remove_stale(entry)
    _ensure_ninja_on_path()
    ce = _cpp_extension()

    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=entry))
    eta = "~2 min" if cuda_sources else "~1 min"
    print(f"dmnt: compiling {label} kernel (first use, {eta})...", file=sys.stderr, flush=True)
    COMPILE_COUNT += 1
    try:
        ce.load_inline(
            name=name, cpp_sources=cpp_sources, cuda_sources=cuda_sources or None,
            # Copies: torch appends to the flag lists it is given, which would change our key.
            extra_cflags=list(CFLAGS), extra_cuda_cflags=list(CUDA_CFLAGS) if cuda_sources else None,
            extra_ldflags=list(LDFLAGS), extra_include_paths=[str(include_dir)] if include_dir else None,
            build_directory=str(tmp), with_cuda=bool(cuda_sources), is_python_module=False,
            no_implicit_headers=no_implicit_headers, verbose=False)
    except Exception as exc:  # compiler errors arrive as RuntimeError with the log
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"building {name} failed:\n{exc}") from exc
    # The versioner may have renamed the library (name_v1.so) if `name` was built before.
    built = max(tmp.glob("*.so"), key=lambda p: p.stat().st_mtime)
    os.replace(built, so)
    shutil.rmtree(tmp, ignore_errors=True)
    return so, True


def _read(source_dir: Path, files: tuple[str, ...]) -> dict[str, str]:
    return {f: (source_dir / f).read_text() for f in files}


def build_kernel(kind: str, source_dir: Path | None = None, root: Path | None = None) -> tuple[Path, bool]:
    """Builds (or finds in the cache) the ``"cpp"`` or ``"cuda"`` kernel library.

    ``source_dir`` defaults to :data:`SOURCE_DIR` (tests pass a modified copy).
    Returns ``(path, loaded_now)`` as :func:`build_library`.
    """
    src = Path(source_dir) if source_dir is not None else SOURCE_DIR
    if kind == "cpp":
        files = _read(src, CPP_FILES)
        key = fingerprint(files, cuda=False)
        return build_library("dmnt_quad_cpu", [files["quad_transform_cpu.cpp"]], None, src, key,
                             root, label="C++")
    if kind == "cuda":
        if torch.version.cuda is None:
            raise BuildError("this torch build has no CUDA support (torch.version.cuda is None)")
        _prepare_cuda_env()
        files = _read(src, CUDA_FILES)
        # Without a visible GPU torch cannot pick an arch: choose one for this build only.
        pick_arch = not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST")
        if pick_arch:
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH
        try:
            key = fingerprint(files, cuda=True)
            # The CUDA library only adds CUDA implementations; the schema lives in the C++ one.
            return build_library("dmnt_quad_cuda", ["// CUDA implementations only"],
                                 [files["quad_transform.cu"]], src, key, root, label="CUDA")
        finally:
            if pick_arch:
                del os.environ["TORCH_CUDA_ARCH_LIST"]
    raise ValueError(f"kind must be 'cpp' or 'cuda', got {kind!r}")
