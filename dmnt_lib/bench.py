"""Benchmarks: the image->UV transform backends against ``F.grid_sample``, and the rasterization
backends (PyTorch3D vs Embree, ``bench_raster``).

``python -m dmnt_lib bench [--quick] [--only transform|raster] [--sizes 8x128x64x64x128 ...]
[--raster-sizes 16 32 ...] [--raster-poses 1 64 ...] [--repeats N] [--device cpu|cuda|all]``
(also ``make bench`` / ``benchmarks/bench_transform.py``). Both tables by default; ``--sizes``
alone (no raster option) runs only the transform table.

For each size ``BxCxHxWxS`` it times, side by side in one run, the forward and the
forward+backward of: the NumPy reference (smallest size only: it is plain Python loops),
the torch implementation, the C++ kernel, the CUDA kernel (when a GPU is visible), and the
gather alternative ``F.grid_sample`` producing the same ``(B, C, S, S)`` surface from the
same features: its grid sends each visible texel to the image point ``(x + s, y + t)`` of
its first table entry (invisible texels sample outside the image, i.e. zero).

The uv map is a rendered sphere: an orthographic view of a unit sphere (seeded random
rotation per batch item) with equirectangular uv, masked by its disk; it is smooth, covers
much of the texture, and crosses the longitude seam. Times are medians over ``--repeats``
rounds after a warm-up; backends run interleaved round by round so that load from other
processes hits them alike. GB/s counts features + uv read and the surface written, over
the forward time.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

DEFAULT_SIZES = ["8x128x64x64x128", "8x128x128x128x256"]
QUICK_SIZES = ["2x16x24x24x32", "4x64x64x64x128"]
REFERENCE_MAX_ELEMENTS = 8 * 128 * 64 * 64  # B*C*H*W above which the reference is skipped


def sphere_uv(batch: int, height: int, width: int, seed: int, dtype=torch.float32):
    """Rendered-sphere uv map and mask.

    Returns ``uv (B,H,W,2)`` in [0,1] (``dtype``) and ``mask (B,H,W)`` bool (the disk of
    radius 0.95 in normalized image coordinates). Each item views the unit sphere under a
    rotation drawn from ``torch.Generator().manual_seed(seed)``.
    """
    gen = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height, dtype=torch.float64),
                            torch.linspace(-1, 1, width, dtype=torch.float64), indexing="ij")
    r2 = xs * xs + ys * ys
    mask = (r2 < 0.95 ** 2).expand(batch, height, width).contiguous()
    pts = torch.stack([xs, ys, torch.sqrt((1 - r2).clamp_min(0))], dim=-1)  # (H, W, 3)
    uvs = []
    for _ in range(batch):
        q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
        rot = q * torch.sign(torch.diagonal(r))  # a uniformly random orthogonal matrix
        p = pts @ rot.T
        u = 0.5 + torch.atan2(p[..., 0], p[..., 2]) / (2 * math.pi)
        v = torch.acos(p[..., 1].clamp(-1, 1)) / math.pi
        uvs.append(torch.stack([u, v], dim=-1))
    return torch.stack(uvs).to(dtype).clamp(0, 1), mask


def gather_grid(table_qid, table_st, visible, height: int, width: int):
    """``F.grid_sample`` grid reproducing the transform's surface on single-entry texels.

    Args: ``table_qid (B,S_h,S_w,K)`` int32, ``table_st (B,S_h,S_w,K,2)``, ``visible (B,S_h,S_w)``
    bool (outputs of ``dmnt::quad_uv_forward``), image size ``height, width``.
    Returns ``(B,S_h,S_w,2)`` (dtype of table_st): each visible texel points at the image point
    ``(x + s, y + t)`` of its first entry, normalized for ``align_corners=False``; invisible
    texels point outside the image (-2), where zero padding samples 0.
    """
    qid = table_qid[..., 0].clamp_min(0).long()
    px = (qid % (width - 1)).to(table_st.dtype) + table_st[..., 0, 0]
    py = torch.div(qid, width - 1, rounding_mode="floor").to(table_st.dtype) + table_st[..., 0, 1]
    grid = torch.stack([(2 * px + 1) / width - 1, (2 * py + 1) / height - 1], dim=-1)
    return torch.where(visible[..., None], grid, torch.full_like(grid, -2.0))


def parse_size(text: str) -> tuple[int, int, int, int, int]:
    """``"BxCxHxWxS"`` -> five positive ints (argparse type)."""
    parts = text.lower().split("x")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        vals = ()
    if len(vals) != 5 or min(vals) < 1 or vals[2] < 2 or vals[3] < 2:
        raise argparse.ArgumentTypeError(f"size must be BxCxHxWxS with positive ints (H, W >= 2), got {text!r}")
    return vals  # type: ignore[return-value]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return (time.perf_counter() - start) * 1e3


class Case:
    """One backend at one size: ``fwd()`` and ``fwd_bwd()`` closures, timings in ms."""

    def __init__(self, name: str, device: torch.device, fwd, fwd_bwd, rounds: int | None = None):
        self.name, self.device, self.fwd, self.fwd_bwd = name, device, fwd, fwd_bwd
        self.rounds = rounds  # None: every round; else at most this many (slow reference)
        self.t_fwd: list[float] = []
        self.t_fb: list[float] = []


def _cases(size, device: torch.device, seed: int) -> tuple[list[Case], dict]:
    from .cuda import image_to_uv_kernel, kernel_available
    from .transform import reference
    from .transform.torch_impl import image_to_uv_torch

    b, c, h, w, s = size
    uv, mask = sphere_uv(b, h, w, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    feats = torch.randn(b, c, h, w, generator=gen)
    grad = torch.randn(b, c, s, s, generator=gen)
    uv, mask, feats, grad = (t.to(device) for t in (uv, mask, feats, grad))
    args = (s, s, 0.2, 10)
    cases: list[Case] = []

    def autograd_pair(name, run):
        def fwd():
            with torch.no_grad():
                return run(feats, uv)

        def fwd_bwd():
            f = feats.detach().requires_grad_()
            g = uv.detach().requires_grad_()
            run(f, g).backward(grad)

        return Case(name, device, fwd, fwd_bwd)

    if device.type == "cpu" and b * c * h * w <= REFERENCE_MAX_ELEMENTS:
        np_args = (feats.numpy(), uv.numpy(), mask.numpy(), (s, s), 0.2, 10)

        def ref_fb():
            reference.image_to_uv_reference(*np_args)
            reference.image_to_uv_reference_backward(grad.numpy(), *np_args)

        cases.append(Case("reference", device, lambda: reference.image_to_uv_reference(*np_args), ref_fb, rounds=1))
    cases.append(autograd_pair("torch", lambda f, g: image_to_uv_torch(f, g, mask, *args)[0]))
    kind = "cuda" if device.type == "cuda" else "cpp"
    if kernel_available(kind):
        cases.append(autograd_pair(kind, lambda f, g: image_to_uv_kernel(f, g, mask, *args)[0]))
        out = torch.ops.dmnt.quad_uv_forward(feats, uv, mask, *args)
    else:
        print(f"[bench] {kind} kernel unavailable, skipped", file=sys.stderr)
        out = None
    # The public op as users call it (backend="auto"; validate=True checks the data and warns on
    # overflow, which needs host syncs) and as hot loops call it (validate=False).
    from .transform import image_to_uv

    for name, validate in (("api", True), ("api_noval", False)):
        cases.append(autograd_pair(name, lambda f, g, v=validate: image_to_uv(f, g, mask, s, validate=v)[0]))
    if out is not None:
        grid = gather_grid(out[3], out[4], out[1], h, w)

        def gs_fwd():
            with torch.no_grad():
                return F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        def gs_fwd_bwd():
            f = feats.detach().requires_grad_()
            g = grid.detach().requires_grad_()  # grid plays uv's part: it gets a gradient too
            F.grid_sample(f, g, mode="bilinear", padding_mode="zeros", align_corners=False).backward(grad)

        cases.append(Case("grid_sample", device, gs_fwd, gs_fwd_bwd))
    nbytes = (feats.numel() + uv.numel() + b * c * s * s) * feats.element_size()
    return cases, {"bytes": nbytes}


def run(sizes, repeats: int, devices: list[torch.device], seed: int = 0) -> list[dict]:
    """Times every backend; returns one dict per (device, size, backend) row."""
    rows = []
    ref_fb: dict[str, float] = {}  # size -> reference fwd+bwd (CPU), also the baseline of GPU rows
    for device in devices:
        for size in sizes:
            cases, info = _cases(size, device, seed)
            for case in cases:  # warm-up (also compiles nothing: kernels are loaded above)
                if case.rounds is None:
                    case.fwd()
                    case.fwd_bwd()
            label = "x".join(map(str, size))
            try:
                from tqdm import tqdm
                rounds = tqdm(range(repeats), desc=f"bench {label} {device.type}", leave=False, file=sys.stderr)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                rounds = range(repeats)
            for r in rounds:
                for case in cases:
                    if case.rounds is not None and r >= case.rounds:
                        continue
                    case.t_fwd.append(_timed(case.fwd, device))
                    case.t_fb.append(_timed(case.fwd_bwd, device))
            med = {cs.name: (statistics.median(cs.t_fwd), statistics.median(cs.t_fb)) for cs in cases}
            if "reference" in med:
                ref_fb[label] = med["reference"][1]
            for cs in cases:
                fwd, fb = med[cs.name]
                gs = med.get("grid_sample")
                ref = ref_fb.get(label)
                rows.append({
                    "backend": cs.name, "device": device.type, "size": label, "fwd_ms": fwd, "fb_ms": fb,
                    "x_grid_fwd": fwd / gs[0] if gs else float("nan"),
                    "x_grid_fb": fb / gs[1] if gs else float("nan"),
                    "speedup_ref_fb": ref / fb if ref else float("nan"),
                    "gbps": info["bytes"] / (fwd * 1e-3) / 1e9, "n": len(cs.t_fb),
                })
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a fixed-width text table."""
    head = (f"{'backend':<12}{'device':<7}{'size BxCxHxWxS':<20}{'fwd ms':>10}{'fwd+bwd ms':>12}"
            f"{'fwd/grid':>10}{'f+b/grid':>10}{'vs ref f+b':>12}{'GB/s':>8}{'n':>4}")
    lines = [head, "-" * len(head)]

    def num(x, fmt):
        return "-" if x != x else format(x, fmt)  # NaN -> "-"

    for r in rows:
        lines.append(f"{r['backend']:<12}{r['device']:<7}{r['size']:<20}{r['fwd_ms']:>10.2f}{r['fb_ms']:>12.2f}"
                     f"{num(r['x_grid_fwd'], '.2f'):>10}{num(r['x_grid_fb'], '.2f'):>10}"
                     f"{num(r['speedup_ref_fb'], '.0f'):>12}{r['gbps']:>8.2f}{r['n']:>4}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dmnt_lib bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_SIZES} and 3 repeats")
    p.add_argument("--sizes", nargs="+", type=parse_size, metavar="BxCxHxWxS",
                   help=f"sizes to run (default {DEFAULT_SIZES}); S is the square texture size")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per backend (default 5, quick 3)")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                   help="where to run: cpu, cuda, or all available (default)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the uv map and features")
    p.add_argument("--only", choices=["transform", "raster"], default=None,
                   help="run one table (default: both; --sizes alone means transform only)")
    p.add_argument("--raster-sizes", nargs="+", type=int, default=None, metavar="S",
                   help="raster table: square image sizes (default 16 32 64 128; quick 16 32)")
    p.add_argument("--raster-poses", nargs="+", type=int, default=None, metavar="B",
                   help="raster table: pose batch sizes (default 1 64 432; quick 1 64)")
    p.add_argument("--raster-max-p3d-poses", type=int, default=None, metavar="N",
                   help="raster table: time PyTorch3D on at most N poses of a batch (default 64)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = args.sizes or [parse_size(s) for s in (QUICK_SIZES if args.quick else DEFAULT_SIZES)]
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 5)
    if repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.threads is None or args.threads < 1:
        raise SystemExit("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    if not devices:
        raise SystemExit("--device cuda: no CUDA device is visible")
    raster_opts = (args.raster_sizes, args.raster_poses, args.raster_max_p3d_poses)
    tables = [args.only] if args.only else (["transform"] if args.sizes and all(o is None for o in raster_opts) else ["transform", "raster"])
    for name, vals in (("--raster-sizes", args.raster_sizes), ("--raster-poses", args.raster_poses)):
        if vals is not None and min(vals) < 1:
            raise SystemExit(f"{name} must be positive")
    if args.raster_max_p3d_poses is not None and args.raster_max_p3d_poses < 1:
        raise SystemExit("--raster-max-p3d-poses must be >= 1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    if "transform" in tables:
        rows = run(sizes, repeats, devices, seed=args.seed)
        print(format_table(rows))
        print("fwd/grid, f+b/grid: time relative to F.grid_sample producing the same surface; "
              "vs ref f+b: speed-up over the NumPy reference (1 round); n: timed rounds; "
              "api: the public image_to_uv (backend='auto', validate=True); api_noval: the same with validate=False.")
    if "raster" in tables:
        from . import bench_raster as raster_bench

        rows = raster_bench.run(
            sizes=args.raster_sizes or (raster_bench.QUICK_SIZES if args.quick else raster_bench.DEFAULT_SIZES),
            poses=args.raster_poses or (raster_bench.QUICK_POSES if args.quick else raster_bench.DEFAULT_POSES),
            repeats=repeats, max_p3d_poses=args.raster_max_p3d_poses or raster_bench.MAX_P3D_POSES, seed=args.seed)
        print(raster_bench.format_table(rows))
        print(raster_bench.LEGEND)
    return 0


if __name__ == "__main__":
    sys.exit(main())
