"""C++ / CUDA kernels of the image->UV transform (dmnt_lib.cuda): values, tables, gradients,
op registration, input checks, the build cache and the CUDA build."""
from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

import dmnt_lib.cuda as kernels
from dmnt_lib.cuda import build
from dmnt_lib.transform import reference

OP_FWD = "dmnt::quad_uv_forward"


@pytest.fixture(scope="module", autouse=True)
def cpp_kernel():
    assert kernels.kernel_available("cpp"), kernels.kernel_unavailable_reason("cpp")


def fwd(*args):
    return torch.ops.dmnt.quad_uv_forward(*args)


def bwd(*args):
    return torch.ops.dmnt.quad_uv_backward(*args)


# ---------------------------------------------------------------- inputs
def warped_uv(b, h, w, seed, dtype=torch.float64, wrap=False, span=0.8):
    """Smooth uv: a random rotation/scale of the pixel grid plus a sinusoidal warp.
    With ``wrap`` u is taken modulo 1, so the map crosses a seam."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64),
                            torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    out = []
    for _ in range(b):
        r = torch.rand(5, generator=g, dtype=torch.float64)
        a = (r[0] - 0.5) * 1.2
        u = 0.1 + span * (math.cos(a) * xs - 0.5 * math.sin(a) * ys) + 0.04 * torch.sin(5 * ys + 6 * r[1])
        v = 0.1 + span * (0.5 * math.sin(a) * xs + math.cos(a) * ys) + 0.04 * torch.sin(5 * xs + 6 * r[2])
        if wrap:
            u = torch.remainder(u + 0.45 + 0.1 * r[3], 1.0)
        out.append(torch.stack([u, v], -1))
    return torch.stack(out).to(dtype).contiguous()


def folded_uv(b, h, w, seed, dtype=torch.float64):
    """u oscillates along x: the image folds over itself about 3 times, so texels are covered
    by quads of both orientations and by many quads (overflow for small K)."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h, dtype=torch.float64),
                            torch.linspace(0, 1, w, dtype=torch.float64), indexing="ij")
    out = []
    for _ in range(b):
        ph = float(torch.rand(1, generator=g, dtype=torch.float64)) * 6.0
        u = 0.5 + 0.3 * torch.sin(3 * math.pi * xs + ph) + 0.05 * ys
        v = 0.15 + 0.7 * ys + 0.03 * torch.sin(4 * xs + ph)
        out.append(torch.stack([u, v], -1))
    return torch.stack(out).to(dtype).contiguous()


def disk_mask(b, h, w, seed, holes=3):
    """A disk with a few random rectangular holes per item."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    disk = ((ys - (h - 1) / 2) ** 2 + (xs - (w - 1) / 2) ** 2) <= (0.48 * max(h, w)) ** 2
    m = disk.expand(b, h, w).clone()
    for i in range(b):
        for _ in range(holes):
            y0, x0 = (int(v) for v in torch.randint(0, max(h, w) - 2, (2,), generator=g))
            m[i, y0:y0 + 2, x0:x0 + 2] = False
    return m


SCENES = {  # name: (uv maker, B, H, W, (S_h, S_w), K)
    "smooth": (lambda b, h, w, s, dt: warped_uv(b, h, w, s, dt), 2, 12, 12, (16, 16), 10),
    "seam": (lambda b, h, w, s, dt: warped_uv(b, h, w, s, dt, wrap=True), 2, 12, 14, (18, 20), 10),
    "folds_overflow": (folded_uv, 2, 14, 16, (12, 12), 2),
    "dense_rect": (lambda b, h, w, s, dt: warped_uv(b, h, w, s, dt), 1, 16, 13, (7, 9), 3),  # pixels < texels
}


def scene(name, dtype, seed=0, channels=3):
    make, b, h, w, (sh, sw), k = SCENES[name]
    uv = make(b, h, w, seed, dtype)
    mask = disk_mask(b, h, w, seed)
    feats = torch.randn(b, channels, h, w, generator=torch.Generator().manual_seed(seed + 7), dtype=dtype)
    return feats, uv, mask, sh, sw, k


def ref_table(info, b, sh, sw, k):
    """Reference table as dense (B,S_h,S_w,K) qid (-1 padded) and (B,S_h,S_w,K,2) st arrays."""
    qid = np.full((b, sh, sw, k), -1, np.int64)
    st = np.zeros((b, sh, sw, k, 2))
    for bi, table in enumerate(info.table):
        for (i, j), entries in table.items():
            for e, (q, s, t) in enumerate(entries):
                qid[bi, i, j, e] = q
                st[bi, i, j, e] = (s, t)
    return qid, st


# ---------------------------------------------------------------- agreement with the reference
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(SCENES))
def test_cpp_matches_numpy_reference(name, dtype):
    feats, uv, mask, sh, sw, k = scene(name, dtype)
    b = feats.shape[0]
    surface, visible, count, table_qid, table_st, dropped, cross = fwd(feats, uv, mask, sh, sw, 0.2, k)
    assert cross.dtype == torch.int64 and cross.tolist() == [0] * b  # no chart, no chart rule
    args = (feats.numpy(), uv.numpy(), mask.numpy(), (sh, sw), 0.2, k)
    s_ref, vis_ref, info = reference.image_to_uv_reference(*args)
    qid_ref, st_ref = ref_table(info, b, sh, sw, k)
    # The geometry runs in float64 for both dtypes, so coverage and tables agree exactly.
    assert visible.numpy().tolist() == vis_ref.tolist()
    assert count.numpy().tolist() == info.count.tolist()
    assert dropped.numpy().tolist() == info.dropped.tolist()
    assert table_qid.numpy().tolist() == qid_ref.tolist()
    exact = dtype == torch.float64
    np.testing.assert_allclose(table_st.double().numpy(), st_ref, rtol=0, atol=1e-14 if exact else 1e-7)
    np.testing.assert_allclose(surface.double().numpy(), s_ref, rtol=0, atol=1e-13 if exact else 2e-6)
    if name == "folds_overflow":
        assert int(dropped.sum()) > 0 and int(count.max()) == k  # the scene really overflows
    else:
        assert int(visible.sum()) > 0.2 * visible.numel()

    grad = torch.randn(surface.shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    gf, guv = bwd(grad, feats, uv, count, table_qid, table_st)
    gf_ref, guv_ref = reference.image_to_uv_reference_backward(grad.numpy(), *args)
    scale = np.abs(guv_ref).max()
    np.testing.assert_allclose(gf.double().numpy(), gf_ref, rtol=0, atol=1e-13 if exact else 2e-6)
    np.testing.assert_allclose(guv.double().numpy(), guv_ref, rtol=0, atol=(1e-12 if exact else 1e-5) * scale)


def stripe_chart(b, h, w, seed):
    """``(B, H, W)`` int64 chart ids: random vertical and horizontal stripes, so many quads straddle two charts."""
    g = torch.Generator().manual_seed(seed)
    cols = torch.cumsum(torch.rand(b, 1, w, generator=g) < 0.25, -1)
    rows = torch.cumsum(torch.rand(b, h, 1, generator=g) < 0.2, -2)
    return (cols + 7 * rows).long().contiguous()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["smooth", "folds_overflow"])
def test_cpp_chart_rule_matches_numpy_reference(name, dtype):
    """With a chart map the C++ table, counts and cross-chart counts equal the reference's."""
    feats, uv, mask, sh, sw, k = scene(name, dtype)
    b, _, h, w = feats.shape
    chart = stripe_chart(b, h, w, seed=1)
    out = fwd(feats, uv, mask, sh, sw, 0.2, k, chart)
    ref_s, ref_v, info = reference.image_to_uv_reference(feats.numpy(), uv.numpy(), mask.numpy(), (sh, sw), 0.2, k,
                                                         chart=chart.numpy())
    qid_ref, st_ref = ref_table(info, b, sh, sw, k)
    assert out[6].tolist() == info.cross_chart.tolist() and int(out[6].min()) > 0
    assert out[3].numpy().tolist() == qid_ref.tolist()
    assert out[2].numpy().tolist() == info.count.tolist() and out[5].tolist() == info.dropped.tolist()
    exact = dtype == torch.float64
    np.testing.assert_allclose(out[0].double().numpy(), ref_s, rtol=0, atol=1e-13 if exact else 2e-6)
    # The chart only removes quads: every kept entry is in the chart-free table too.
    free = fwd(feats, uv, mask, sh, sw, 0.2, 64)[3]
    kept = out[3] >= 0
    assert int(kept.sum()) < int((free >= 0).sum())
    assert bool((out[3][..., :, None] == free[..., None, :]).any(-1)[kept].all())


def test_overflow_keeps_k_smallest_qids():
    """The table for small K is the first K entries of the full table, in ascending qid."""
    feats, uv, mask, sh, sw, _ = scene("folds_overflow", torch.float64, seed=5)
    full = fwd(feats, uv, mask, sh, sw, 0.2, 64)
    assert int(full[5].sum()) == 0 and int(full[2].max()) > 3
    for k in (1, 2, 3):
        surface, visible, count, qid, st, dropped, _ = fwd(feats, uv, mask, sh, sw, 0.2, k)
        assert torch.equal(qid, full[3][..., :k])
        assert torch.equal(st, full[4][..., :k, :])
        assert torch.equal(count, full[2].clamp(max=k))
        assert torch.equal(dropped, (full[2].long() - k).clamp(min=0).sum(dim=(1, 2)))
        assert torch.equal(visible, full[1])
    q = full[3]
    filled = q >= 0
    assert bool((q[..., 1:][filled[..., 1:]] > q[..., :-1][filled[..., 1:]]).all())  # ascending
    assert torch.equal(filled.sum(-1).int(), full[2])  # -1 exactly in the empty slots


def test_affine_uv_with_linear_features_is_inverted_exactly():
    """Bilinear interpolation reproduces linear functions: with affine uv and features equal
    to the pixel coordinates, each visible texel receives the pixel point mapping to it."""
    h, w, sh, sw = 20, 24, 32, 40
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    A = torch.tensor([[0.031, 0.006], [-0.005, 0.037]], dtype=torch.float64)  # uv = A (x, y) + c
    c = torch.tensor([0.12, 0.09], dtype=torch.float64)
    uv = (torch.stack([xs, ys], -1) @ A.T + c)[None].contiguous()
    feats = torch.stack([xs, ys])[None].contiguous()
    mask = torch.ones(1, h, w, dtype=torch.bool)
    surface, visible, count, *_ = fwd(feats, uv, mask, sh, sw, 0.2, 10)
    ti, tj = torch.meshgrid(torch.arange(sh, dtype=torch.float64), torch.arange(sw, dtype=torch.float64), indexing="ij")
    uv_t = torch.stack([(tj + 0.5) / sw, (ti + 0.5) / sh], -1)
    pre = torch.linalg.solve(A, (uv_t - c).reshape(-1, 2).T).T.reshape(sh, sw, 2)  # (x, y) per texel
    inside = (pre[..., 0] > 1e-9) & (pre[..., 0] < w - 1 - 1e-9) & (pre[..., 1] > 1e-9) & (pre[..., 1] < h - 1 - 1e-9)
    assert torch.equal(visible[0], inside)
    assert int(inside.sum()) > 100
    torch.testing.assert_close(surface[0].permute(1, 2, 0)[inside], pre[inside], rtol=0, atol=1e-10)


# ---------------------------------------------------------------- autograd / op registration
def test_opcheck_forward_and_backward():
    feats, uv, mask, sh, sw, k = scene("seam", torch.float64, channels=2)
    args = (feats.requires_grad_(), uv.requires_grad_(), mask, sh, sw, 0.2, k)
    torch.library.opcheck(torch.ops.dmnt.quad_uv_forward, args)
    torch.library.opcheck(torch.ops.dmnt.quad_uv_forward, (*args, stripe_chart(feats.shape[0], *feats.shape[2:], 0)))
    out = fwd(*args)
    assert out[0].requires_grad and not any(o.requires_grad for o in out[1:])
    grad = torch.randn(out[0].shape, dtype=torch.float64)
    torch.library.opcheck(torch.ops.dmnt.quad_uv_backward, (grad, feats.detach(), uv.detach(), *out[2:5]))


def test_gradcheck_float64():
    feats, uv, mask, sh, sw, k = scene("smooth", torch.float64, seed=2, channels=2)
    feats, uv, mask = feats[:1, :, :7, :8], uv[:1, :7, :8], torch.ones(1, 7, 8, dtype=torch.bool)
    feats.requires_grad_()
    uv.requires_grad_()

    def f(a, b):
        return kernels.image_to_uv_kernel(a, b, mask, sh, sw, 0.2, k)[0]

    assert int(f(feats, uv)[0].ne(0).sum()) > 20
    assert torch.autograd.gradcheck(f, (feats, uv), eps=1e-6, atol=1e-6, rtol=1e-5, nondet_tol=0.0)


def test_kernel_wrapper_accepts_non_contiguous_inputs():
    feats, uv, mask, sh, sw, k = scene("smooth", torch.float32)
    expected = kernels.image_to_uv_kernel(feats, uv, mask, sh, sw, 0.2, k)
    f_t = feats.transpose(2, 3).contiguous().transpose(2, 3)
    uv_t = uv.permute(3, 0, 1, 2).contiguous().permute(1, 2, 3, 0)
    assert not f_t.is_contiguous() and not uv_t.is_contiguous()
    got = kernels.image_to_uv_kernel(f_t, uv_t, mask, sh, sw, 0.2, k)
    for a, b in zip(expected, got):
        assert torch.equal(a, b)


def test_results_do_not_depend_on_thread_count():
    # Large enough that every parallel loop really splits its range over the threads.
    b, c, h, w, s, k = 4, 64, 96, 96, 64, 3
    feats = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(1))
    uv, mask = folded_uv(b, h, w, 1, torch.float32), disk_mask(b, h, w, 1)
    sh = sw = s
    grad = torch.randn(b, c, sh, sw, generator=torch.Generator().manual_seed(2))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            out = fwd(feats, uv, mask, sh, sw, 0.2, k)
            results.append(list(out) + list(bwd(grad, feats, uv, *out[2:5])))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_empty_mask_nan_off_mask_and_single_row():
    feats, uv, mask, sh, sw, k = scene("smooth", torch.float64)
    uv_nan = uv.clone()
    uv_nan[~mask] = float("nan")  # off-mask uv is never read for used quads
    a = fwd(feats, uv, mask, sh, sw, 0.2, k)
    b = fwd(feats, uv_nan, mask, sh, sw, 0.2, k)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    for bad in (float("inf"), float("nan")):  # quads touching it are unused; nothing crashes
        uv_bad = uv.clone()
        uv_bad[0, 5, 5] = bad
        out = fwd(feats, uv_bad, mask, sh, sw, 0.2, k)
        assert 0 < int(out[2].sum()) < int(a[2].sum())
    far = fwd(feats, uv * 1e30 + 1e30, mask, sh, sw, 1e40, k)  # huge but finite: empty boxes
    assert not far[1].any()
    empty = fwd(feats, uv, torch.zeros_like(mask), sh, sw, 0.2, k)
    assert not empty[1].any() and not empty[0].any() and bool((empty[3] == -1).all())
    g = bwd(torch.ones_like(empty[0]), feats, uv, *empty[2:5])
    assert not g[0].any() and not g[1].any()
    one_row = fwd(*(t.contiguous() for t in (feats[:, :, :1], uv[:, :1], mask[:, :1])), sh, sw, 0.2, k)  # H=1: no quads
    assert not one_row[1].any()


# ---------------------------------------------------------------- misuse raises, never crashes
def _good():
    feats, uv, mask, sh, sw, k = scene("smooth", torch.float32)
    return [feats, uv, mask, sh, sw, 0.2, k, None]


BAD_FORWARD = {
    "features 3-D": (0, lambda a: a[0][0], "features must be 4-D"),
    "features int": (0, lambda a: a[0].int(), "float32 or float64"),
    "uv shape": (1, lambda a: a[1][:, :-1], "uv must have shape"),
    "uv dtype": (1, lambda a: a[1].double(), "uv dtype"),
    "mask dtype": (2, lambda a: a[2].float(), "mask must be bool"),
    "mask shape": (2, lambda a: a[2][0], "mask must have shape"),
    "uv non-contiguous": (1, lambda a: a[1].transpose(1, 2).contiguous().transpose(1, 2), "uv must be contiguous"),
    "S_h zero": (3, lambda a: 0, "S_h and S_w must be > 0"),
    "K zero": (6, lambda a: 0, "max_quads must be >= 1"),
    "seam negative": (5, lambda a: -0.1, "seam_threshold"),
    "chart dtype": (7, lambda a: torch.zeros(a[2].shape, dtype=torch.int32), "chart must be int64"),
    "chart shape": (7, lambda a: torch.zeros(a[2].shape[1:], dtype=torch.int64), "chart must have shape"),
    "chart non-contiguous": (7, lambda a: torch.zeros(a[2].shape, dtype=torch.int64).transpose(1, 2).contiguous().transpose(1, 2),
                             "chart must be contiguous"),
}


@pytest.mark.parametrize("case", list(BAD_FORWARD))
def test_forward_misuse_raises_runtime_error(case):
    args = _good()
    pos, make, msg = BAD_FORWARD[case]
    args[pos] = make(args)
    with pytest.raises(RuntimeError, match=msg):
        fwd(*args)


def test_backward_misuse_raises_runtime_error():
    args = _good()
    out = fwd(*args)
    feats, uv = args[0], args[1]
    grad = torch.ones_like(out[0])
    with pytest.raises(RuntimeError, match="grad_surface must have shape"):
        bwd(grad[:, :1], feats, uv, *out[2:5])
    with pytest.raises(RuntimeError, match="int32"):
        bwd(grad, feats, uv, out[2].long(), out[3], out[4])
    with pytest.raises(RuntimeError, match="table_st must have shape"):
        bwd(grad, feats, uv, out[2], out[3], out[4][..., :1])
    bad_qid = out[3].clone()
    bad_qid[out[3] >= 0] = 10**6
    with pytest.raises(RuntimeError, match="out of range"):
        bwd(grad, feats, uv, out[2], bad_qid, out[4])
    bad_count = out[2].clone()
    bad_count[0, 0, 0] = args[6] + 1
    with pytest.raises(RuntimeError, match="count must be in"):
        bwd(grad, feats, uv, bad_count, out[3], out[4])


def test_unknown_kind_is_a_value_error():
    with pytest.raises(ValueError, match="kind"):
        kernels.kernel_available("metal")


# ---------------------------------------------------------------- build system
def test_build_cache_is_reused():
    before = build.COMPILE_COUNT
    path, loaded_now = build.build_kernel("cpp")
    mtime = path.stat().st_mtime_ns
    assert not loaded_now and build.COMPILE_COUNT == before
    assert path.parent.name.startswith("dmnt_quad_cpu-") and path.parent.parent == build.cache_root()
    # A new process finds the same library and compiles nothing.
    code = ("import dmnt_lib.cuda as k; from dmnt_lib.cuda import build; "
            "assert k.kernel_available('cpp'); print(build.COMPILE_COUNT)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "0"
    assert "compiling" not in out.stderr
    assert path.stat().st_mtime_ns == mtime


PROBE = 'extern "C" int dmnt_probe() { return 42; }'


def test_stale_lock_does_not_hang(tmp_path):
    """Locks and temp dirs left by killed builds neither block nor survive a build."""
    key = "f" * 64
    entry = tmp_path / f"dmnt_probe-{key[:16]}"
    stale = entry / f"{build.TMP_PREFIX}killed"
    stale.mkdir(parents=True)
    (stale / "lock").write_text("")
    old = time.time() - 2 * build.STALE_SECONDS
    os.utime(stale, (old, old))
    (entry / "lock").write_text("")  # fresh: we never build in the entry itself anyway
    with ThreadPoolExecutor(1) as pool:
        path, loaded_now = pool.submit(build.build_library, "dmnt_probe", [PROBE], None, None, key,
                                       tmp_path).result(timeout=240)
    assert loaded_now and path == entry / "dmnt_probe.so"
    assert ctypes.CDLL(str(path)).dmnt_probe() == 42
    assert not stale.exists()
    assert not list(entry.glob(build.TMP_PREFIX + "*"))  # our own temp dir is gone too
    assert build.build_library("dmnt_probe", [PROBE], None, None, key, tmp_path) == (path, False)


def test_broken_source_makes_kernel_unavailable_with_reason(tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(build.SOURCE_DIR, src, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    cpp = src / "quad_transform_cpu.cpp"
    cpp.write_text("this_is_not_cpp dmnt_syntax_error;\n" + cpp.read_text())
    monkeypatch.setattr(build, "SOURCE_DIR", src)
    monkeypatch.setenv("DMNT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_STATE", {})
    monkeypatch.setattr(kernels, "_PATHS", {})
    assert kernels.kernel_available("cpp") is False
    reason = kernels.kernel_unavailable_reason("cpp")
    assert "BuildError" in reason and "dmnt_syntax_error" in reason and "error" in reason
    assert not list((tmp_path / "cache").rglob("*.so"))
    if build.find_nvcc() is not None:  # the CUDA library needs the C++ one
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert kernels.kernel_available("cuda") is False
        assert "needs the C++ kernel" in kernels.kernel_unavailable_reason("cuda")
    # The pure-torch path of the public transform is unaffected.
    from dmnt_lib.transform import image_to_uv

    feats, uv, mask, sh, sw, k = scene("smooth", torch.float64)
    uv = uv.clamp(0, 1)  # the public API requires uv in [0, 1] on the mask
    surface, visible = image_to_uv(feats, uv, mask, (sh, sw), max_quads_per_texel=k, backend="torch")
    assert torch.equal(visible, fwd(feats, uv, mask, sh, sw, 0.2, k)[1])


# ---------------------------------------------------------------- CUDA
@pytest.mark.slow
@pytest.mark.skipif(build.find_nvcc() is None or torch.version.cuda is None, reason="needs nvcc and a CUDA build of torch")
def test_cuda_compiles():
    path = kernels.compile_cuda_only()
    assert path.is_file() and path.stat().st_size > 0
    assert path.parent.name.startswith("dmnt_quad_cuda-")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(OP_FWD, "CUDA")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dmnt::quad_uv_backward", "CUDA")


needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def large_scene(dtype):
    """B=8, C=128, S=256 (the benchmark's size): the rendered-sphere uv of ``dmnt_lib.bench`` at 128x128."""
    from dmnt_lib.bench import sphere_uv

    uv, mask = sphere_uv(8, 128, 128, seed=3, dtype=dtype)
    feats = torch.randn(8, 128, 128, 128, generator=torch.Generator().manual_seed(3), dtype=dtype)
    return feats, uv.contiguous(), mask, 256, 256, 10


@pytest.mark.cuda
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", [*SCENES, "chart", "large_B8_C128_S256"])
def test_cuda_matches_cpu(name, dtype):
    """The CUDA kernels sum in the CPU kernels' order (see quad_transform.cu), so every output is bit-identical."""
    assert kernels.kernel_available("cuda"), kernels.kernel_unavailable_reason("cuda")
    if name == "large_B8_C128_S256":
        feats, uv, mask, sh, sw, k = large_scene(dtype)
        chart = None
    else:
        feats, uv, mask, sh, sw, k = scene("folds_overflow" if name == "chart" else name, dtype, channels=37)
        chart = stripe_chart(feats.shape[0], *feats.shape[2:], seed=2) if name == "chart" else None
    cpu = fwd(feats, uv, mask, sh, sw, 0.2, k, chart)
    gpu = fwd(feats.cuda(), uv.cuda(), mask.cuda(), sh, sw, 0.2, k, None if chart is None else chart.cuda())
    assert int(cpu[1].sum()) > 0.05 * cpu[1].numel()
    if chart is not None:
        assert int(cpu[6].sum()) > 0
    for i, (a, b) in enumerate(zip(cpu, gpu)):
        assert torch.equal(a, b.cpu()), f"forward output {i} differs"
    grad = torch.randn(cpu[0].shape, dtype=dtype, generator=torch.Generator().manual_seed(4))
    gc = bwd(grad, feats, uv, *cpu[2:5])
    gg = bwd(grad.cuda(), feats.cuda(), uv.cuda(), *gpu[2:5])
    assert gc[1].abs().sum() > 0
    for i, (a, b) in enumerate(zip(gc, gg)):
        assert torch.equal(a, b.cpu()), f"backward output {i} differs"


@pytest.mark.cuda
@needs_gpu
def test_cuda_is_deterministic_and_differentiable():
    assert kernels.kernel_available("cuda"), kernels.kernel_unavailable_reason("cuda")
    feats, uv, mask, sh, sw, k = scene("folds_overflow", torch.float32, channels=64)
    feats, uv, mask = feats.cuda(), uv.cuda(), mask.cuda()
    grad = torch.randn(feats.shape[0], 64, sh, sw, device="cuda")
    runs = []
    for _ in range(3):
        out = fwd(feats, uv, mask, sh, sw, 0.2, k)
        runs.append(list(out) + list(bwd(grad, feats, uv, *out[2:5])))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)
    f64 = [t.double().detach()[:1, :2, :8, :9].contiguous().requires_grad_() for t in (feats,)]
    u64 = uv.double()[:1, :8, :9].contiguous().requires_grad_()
    m = mask[:1, :8, :9]
    assert torch.autograd.gradcheck(lambda a, b: kernels.image_to_uv_kernel(a, b, m, sh, sw, 0.2, k)[0],
                                    (f64[0], u64), eps=1e-6, atol=1e-6, rtol=1e-5, nondet_tol=0.0)


# ---------------------------------------------------------------- benchmark
def test_bench_grid_sample_reproduces_kernel_surface():
    """The benchmark's gather alternative computes the same surface (single-entry texels)."""
    from dmnt_lib.bench import gather_grid, sphere_uv

    b, c, h, w, s = 2, 5, 24, 28, 32
    uv, mask = sphere_uv(b, h, w, seed=4)
    assert uv.min() >= 0 and uv.max() <= 1 and mask.any() and not mask.all()
    feats = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(4))
    surface, visible, count, qid, st, _, _ = fwd(feats, uv, mask, s, s, 0.2, 10)
    sampled = torch.nn.functional.grid_sample(feats, gather_grid(qid, st, visible, h, w), align_corners=False)
    single = count == 1
    assert int(single.sum()) > 0.9 * int(visible.sum()) > 0
    torch.testing.assert_close(sampled.permute(0, 2, 3, 1)[single], surface.permute(0, 2, 3, 1)[single],
                               rtol=0, atol=1e-5)
    assert not sampled.permute(0, 2, 3, 1)[~visible].any()


def test_bench_main_prints_every_backend(capsys, monkeypatch):
    """The table lists every backend (the public image_to_uv with and without validation included) and
    its columns are what they claim: with a fixed fake time per case (every case still runs for real),
    each ratio, speed-up, GB/s and round count is checked against its definition."""
    from dmnt_lib import bench

    fake = {"reference": (40.0, 400.0), "torch": (8.0, 20.0), "cpp": (2.0, 5.0), "api": (2.5, 6.25),
            "api_noval": (2.25, 5.5), "grid_sample": (0.25, 2.0)}
    ran = []
    real_cases = bench._cases

    def cases(size, device, seed):
        found, info = real_cases(size, device, seed)
        for case in found:
            for attr, ms in (("fwd", fake[case.name][0]), ("fwd_bwd", fake[case.name][1])):
                def timed_fn(fn=getattr(case, attr), tag=(case.name, attr)):
                    ran.append(tag)
                    return fn()
                timed_fn.fake_ms = ms
                setattr(case, attr, timed_fn)
        return found, info

    monkeypatch.setattr(bench, "_cases", cases)
    monkeypatch.setattr(bench, "_timed", lambda fn, device: (fn(), fn.fake_ms)[1])
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--sizes", "1x16x16x16x32", "--repeats", "2", "--device", "cpu", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:3] == ["backend", "device", "size"]
    rows = [line.split() for line in out if line.split()[1:2] == ["cpu"]]
    assert [r[0] for r in rows] == ["reference", "torch", "cpp", "api", "api_noval", "grid_sample"]
    nbytes = (16 * 16 * 16 + 16 * 16 * 2 + 16 * 32 * 32) * 4  # features + uv read, surface written (float32)
    for name, _, size, fwd_ms, fb_ms, x_fwd, x_fb, vs_ref, gbps, n in rows:
        f, fb = fake[name]
        assert size == "1x16x16x16x32" and (float(fwd_ms), float(fb_ms)) == (f, fb)
        assert (x_fwd, x_fb) == (f"{f / 0.25:.2f}", f"{fb / 2.0:.2f}")
        assert vs_ref == f"{400.0 / fb:.0f}"
        assert gbps == f"{nbytes / (f * 1e-3) / 1e9:.2f}"
        assert n == ("1" if name == "reference" else "2")
        timed = 1 if name == "reference" else 2
        warm = 0 if name == "reference" else 1
        assert ran.count((name, "fwd")) == ran.count((name, "fwd_bwd")) == timed + warm
