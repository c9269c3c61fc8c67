// CUDA implementations of dmnt::quad_uv_forward / dmnt::quad_uv_backward.
// The schema is defined in quad_transform_cpu.cpp (the C++ library is loaded first).
//
// Forward (deterministic, no float atomics):
//   1. one thread per quad counts the texels it covers (integer atomicAdd), and
//      the quads that the optional chart map removes;
//   2. exclusive scan of the counts -> CSR segment per texel;
//   3. one thread per quad writes (qid, s, t) into the covered texels' segments
//      (slot order inside a segment depends on scheduling);
//   4. one thread per texel selects the K smallest qids of its segment in
//      ascending order (so the table does not depend on that order), counts the
//      rest as dropped (integer atomics);
//   5. one thread per (b, ch, texel) gathers the surface from its table entries.
// Backward (deterministic too): entries are decoded from the table; one thread
// per entry reduces over channels for dL/duv; a reverse map pixel -> records,
// built by a stable sort of the records' pixel keys, lets one thread per
// (b, ch, pixel) gather dL/dF and one per (b, pixel) gather dL/duv, summing in
// entry order exactly like the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <tuple>

#include "quad_checks.h"
#include "quad_math.h"

namespace dmnt {
namespace {

constexpr int kThreads = 256;

inline unsigned int blocks_for(int64_t n) {
  return static_cast<unsigned int>((n + kThreads - 1) / kThreads);
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}

// kCollect = false: counter[texel] += 1 per covering quad.
// kCollect = true: also write (qid, s, t) at seg_start[texel] + slot, for slots
// below the first pass's count (both passes run the same IEEE code, so they
// agree; the bound only guarantees that a disagreement could never write
// outside the segment).
// `chart` (B,H,W) may be null; the first pass (kCollect = false) also counts,
// per batch item, the quads the chart rule removes (integer atomics).
template <typename scalar_t, bool kCollect>
__global__ void cover_kernel(const scalar_t* __restrict__ uv, const bool* __restrict__ mask,
                             const int64_t* __restrict__ chart, int64_t B, int64_t H, int64_t W,
                             int64_t S_h, int64_t S_w, double thr, int32_t* __restrict__ counter,
                             const int32_t* __restrict__ seg_len,
                             const int64_t* __restrict__ seg_start, int32_t* __restrict__ seg_qid,
                             scalar_t* __restrict__ seg_st,
                             unsigned long long* __restrict__ cross_chart) {
  const int64_t Q = (H - 1) * (W - 1);
  const int64_t idx = thread_index();
  if (idx >= B * Q) return;
  const int64_t b = idx / Q, qid = idx % Q, y = qid / (W - 1), x = qid % (W - 1);
  QuadGeom G;
  const int status = quad_setup(uv + b * H * W * 2, mask + b * H * W,
                                chart != nullptr ? chart + b * H * W : nullptr, W, y, x, S_h, S_w,
                                thr, G);
  if (!kCollect && status == kQuadCrossChart) atomicAdd(cross_chart + b, 1ULL);
  if (status != kQuadUsed) return;
  for (int64_t ty = G.y0; ty <= G.y1; ++ty) {
    for (int64_t tx = G.x0; tx <= G.x1; ++tx) {
      double s, t;
      if (!quad_solve(G, static_cast<double>(tx), static_cast<double>(ty), s, t)) continue;
      const int64_t tg = (b * S_h + ty) * S_w + tx;
      const int32_t slot = atomicAdd(counter + tg, 1);
      if (kCollect && slot < seg_len[tg]) {
        const int64_t pos = seg_start[tg] + slot;
        seg_qid[pos] = static_cast<int32_t>(qid);
        seg_st[2 * pos] = static_cast<scalar_t>(s);
        seg_st[2 * pos + 1] = static_cast<scalar_t>(t);
      }
    }
  }
}

template <typename scalar_t>
__global__ void select_kernel(int64_t BT, int64_t T, int64_t K, const int32_t* __restrict__ total,
                              const int32_t* __restrict__ written,
                              const int64_t* __restrict__ seg_start,
                              const int32_t* __restrict__ seg_qid,
                              const scalar_t* __restrict__ seg_st, int32_t* __restrict__ count,
                              bool* __restrict__ visible, int32_t* __restrict__ table_qid,
                              scalar_t* __restrict__ table_st,
                              unsigned long long* __restrict__ dropped) {
  const int64_t tg = thread_index();
  if (tg >= BT) return;
  const int64_t off = seg_start[tg];
  const int32_t tot = min(total[tg], written[tg]);  // equal, see cover_kernel
  int32_t prev = -1, n = 0;
  for (int64_t k = 0; k < K; ++k) {
    // k-th smallest qid = smallest one above the previous (qids of a texel are distinct).
    int32_t best = INT_MAX;
    int64_t bpos = -1;
    if (n == k) {
      for (int32_t i = 0; i < tot; ++i) {
        const int32_t q = seg_qid[off + i];
        if (q > prev && q < best) {
          best = q;
          bpos = off + i;
        }
      }
    }
    const int64_t slot = tg * K + k;
    if (bpos < 0) {
      table_qid[slot] = -1;
      table_st[2 * slot] = scalar_t(0);
      table_st[2 * slot + 1] = scalar_t(0);
      continue;
    }
    table_qid[slot] = best;
    table_st[2 * slot] = seg_st[2 * bpos];
    table_st[2 * slot + 1] = seg_st[2 * bpos + 1];
    prev = best;
    ++n;
  }
  count[tg] = n;
  visible[tg] = n > 0;
  if (tot > K) atomicAdd(dropped + tg / T, static_cast<unsigned long long>(tot - K));
}

template <typename scalar_t>
__global__ void surface_kernel(const scalar_t* __restrict__ F, int64_t B, int64_t C, int64_t H,
                               int64_t W, int64_t T, int64_t K, const int32_t* __restrict__ count,
                               const int32_t* __restrict__ table_qid,
                               const scalar_t* __restrict__ table_st, scalar_t* __restrict__ out) {
  const int64_t idx = thread_index();
  if (idx >= B * C * T) return;
  const int64_t texel = idx % T, bc = idx / T, b = bc / C;
  const int64_t tg = b * T + texel;
  const int32_t n = count[tg];
  const scalar_t* Fp = F + bc * H * W;
  scalar_t acc = 0;
  for (int32_t e = 0; e < n; ++e) {
    const int64_t slot = tg * K + e;
    const int64_t qid = table_qid[slot];
    const scalar_t* f = Fp + (qid / (W - 1)) * W + qid % (W - 1);
    scalar_t w[4];
    bilinear_weights(table_st[2 * slot], table_st[2 * slot + 1], w);
    for (int k = 0; k < 4; ++k) w[k] = w[k] / static_cast<scalar_t>(n);
    acc += w[0] * f[0] + w[1] * f[1] + w[2] * f[W + 1] + w[3] * f[W];
  }
  out[idx] = acc;
}

// Table -> flat entry arrays (entry e of texel tg at ent_start[tg] + e).
template <typename scalar_t>
__global__ void decode_kernel(int64_t BT, int64_t K, int64_t W, int64_t Q,
                              const int32_t* __restrict__ count,
                              const int64_t* __restrict__ ent_start,
                              const int32_t* __restrict__ table_qid,
                              const scalar_t* __restrict__ table_st, int64_t* __restrict__ ent_tg,
                              int64_t* __restrict__ ent_off, scalar_t* __restrict__ ent_st,
                              int32_t* __restrict__ ent_n, int32_t* __restrict__ bad) {
  const int64_t tg = thread_index();
  if (tg >= BT) return;
  const int32_t n = count[tg];
  for (int32_t e = 0; e < n; ++e) {
    const int64_t slot = tg * K + e, i = ent_start[tg] + e;
    int64_t qid = table_qid[slot];
    if (qid < 0 || qid >= Q) {  // reported by the host before any entry is used
      *bad = 1;
      qid = 0;
    }
    ent_tg[i] = tg;
    ent_off[i] = Q > 0 ? (qid / (W - 1)) * W + qid % (W - 1) : 0;
    ent_st[2 * i] = table_st[2 * slot];
    ent_st[2 * i + 1] = table_st[2 * slot + 1];
    ent_n[i] = n;
  }
}

// Per entry: gv = (1/n) sum_ch G * d(sample)/d(s,t) and the 4 corner uv gradients.
template <typename scalar_t>
__global__ void entry_grad_kernel(int64_t E, int64_t C, int64_t H, int64_t W, int64_t S_h,
                                  int64_t S_w, const scalar_t* __restrict__ G,
                                  const scalar_t* __restrict__ F, const scalar_t* __restrict__ uv,
                                  const int64_t* __restrict__ ent_tg,
                                  const int64_t* __restrict__ ent_off,
                                  const scalar_t* __restrict__ ent_st,
                                  const int32_t* __restrict__ ent_n, scalar_t* __restrict__ dq) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t e = thread_index();
  if (e >= E) return;
  const int64_t T = S_h * S_w, HW = H * W;
  const int64_t b = ent_tg[e] / T, texel = ent_tg[e] % T, off = ent_off[e];
  const opmath_t s = ent_st[2 * e], t = ent_st[2 * e + 1];
  opmath_t gs = 0, gt = 0;
  for (int64_t c0 = 0; c0 < C; c0 += kChanBlock) {
    opmath_t ps = 0, pt = 0;  // the CPU kernel's per-block partial sums
    for (int64_t ch = c0; ch < C && ch < c0 + kChanBlock; ++ch) {
      const int64_t plane = b * C + ch;
      const opmath_t gc = G[plane * T + texel];
      const scalar_t* f = F + plane * HW + off;
      const opmath_t F1 = f[0], F2 = f[1], F3 = f[W + 1], F4 = f[W];
      ps += gc * ((1 - t) * (F2 - F1) + t * (F3 - F4));
      pt += gc * ((1 - s) * (F4 - F1) + s * (F3 - F2));
    }
    gs += ps;
    gt += pt;
  }
  scalar_t w[4];
  bilinear_weights(ent_st[2 * e], ent_st[2 * e + 1], w);
  entry_uv_grad(uv + b * HW * 2, W, off, S_h, S_w, static_cast<double>(ent_st[2 * e]),
                static_cast<double>(ent_st[2 * e + 1]), static_cast<double>(gs) / ent_n[e],
                static_cast<double>(gt) / ent_n[e], w, dq + 8 * e);
}

// Record r = 4*e + k (corner k of entry e) -> global pixel key b*HW + pixel.
__global__ void record_keys_kernel(int64_t R, int64_t T, int64_t HW, int64_t W,
                                   const int64_t* __restrict__ ent_tg,
                                   const int64_t* __restrict__ ent_off, int64_t* __restrict__ keys) {
  const int64_t r = thread_index();
  if (r >= R) return;
  const int64_t e = r >> 2;
  keys[r] = (ent_tg[e] / T) * HW + ent_off[e] + corner_offset(static_cast<int>(r & 3), W);
}

template <typename scalar_t>
__global__ void grad_features_kernel(int64_t B, int64_t C, int64_t HW, int64_t T,
                                     const scalar_t* __restrict__ G,
                                     const int64_t* __restrict__ pix_start,
                                     const int64_t* __restrict__ perm,
                                     const int64_t* __restrict__ ent_tg,
                                     const scalar_t* __restrict__ ent_st,
                                     const int32_t* __restrict__ ent_n, scalar_t* __restrict__ dF) {
  const int64_t idx = thread_index();
  if (idx >= B * C * HW) return;
  const int64_t pix = idx % HW, bc = idx / HW, b = bc / C;
  const int64_t p = b * HW + pix;
  const scalar_t* Gp = G + bc * T;
  scalar_t acc = 0;
  for (int64_t r = pix_start[p]; r < pix_start[p + 1]; ++r) {
    const int64_t rec = perm[r], e = rec >> 2;
    const int k = static_cast<int>(rec & 3);
    scalar_t w[4];
    bilinear_weights(ent_st[2 * e], ent_st[2 * e + 1], w);
    acc += (w[k] / static_cast<scalar_t>(ent_n[e])) * Gp[ent_tg[e] % T];
  }
  dF[idx] = acc;
}

template <typename scalar_t>
__global__ void grad_uv_kernel(int64_t BHW, const int64_t* __restrict__ pix_start,
                               const int64_t* __restrict__ perm, const scalar_t* __restrict__ dq,
                               scalar_t* __restrict__ duv) {
  const int64_t p = thread_index();
  if (p >= BHW) return;
  scalar_t ax = 0, ay = 0;
  for (int64_t r = pix_start[p]; r < pix_start[p + 1]; ++r) {
    const int64_t rec = perm[r], e = rec >> 2, k = rec & 3;
    ax += dq[8 * e + 2 * k];
    ay += dq[8 * e + 2 * k + 1];
  }
  duv[2 * p] = ax;
  duv[2 * p + 1] = ay;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
quad_uv_forward_cuda(const at::Tensor& features, const at::Tensor& uv, const at::Tensor& mask,
                     int64_t S_h, int64_t S_w, double seam_threshold, int64_t max_quads,
                     const std::optional<at::Tensor>& chart) {
  check_forward_args(features, uv, mask, S_h, S_w, seam_threshold, max_quads, chart,
                     c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2),
                W = features.size(3), K = max_quads, T = S_h * S_w, BT = B * T;
  const int64_t BQ = B * (H - 1) * (W - 1);
  const auto i32 = features.options().dtype(at::kInt);
  at::Tensor total = at::zeros({BT}, i32);
  at::Tensor count = at::empty({B, S_h, S_w}, i32);
  at::Tensor visible = at::empty({B, S_h, S_w}, features.options().dtype(at::kBool));
  at::Tensor table_qid = at::empty({B, S_h, S_w, K}, i32);
  at::Tensor table_st = at::empty({B, S_h, S_w, K, 2}, features.options());
  at::Tensor dropped = at::zeros({B}, features.options().dtype(at::kLong));
  at::Tensor cross_chart = at::zeros({B}, features.options().dtype(at::kLong));
  at::Tensor surface = at::empty({B, C, S_h, S_w}, features.options());
  const int64_t* chart_ptr = chart.has_value() ? chart->data_ptr<int64_t>() : nullptr;
  auto* cross_ptr = reinterpret_cast<unsigned long long*>(cross_chart.data_ptr<int64_t>());
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "quad_uv_forward_cuda", [&] {
    if (BQ > 0) {
      cover_kernel<scalar_t, false><<<blocks_for(BQ), kThreads, 0, stream>>>(
          uv.data_ptr<scalar_t>(), mask.data_ptr<bool>(), chart_ptr, B, H, W, S_h, S_w,
          seam_threshold, total.data_ptr<int32_t>(), nullptr, nullptr, nullptr, nullptr,
          cross_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor incl = at::cumsum(total, 0, at::kLong);
    const int64_t N = incl[BT - 1].item<int64_t>();  // the one host sync: segment storage size
    const at::Tensor seg_start = incl - total;
    at::Tensor seg_qid = at::empty({N}, i32);
    at::Tensor seg_st = at::empty({2 * N}, features.options());
    at::Tensor cursor = at::zeros({BT}, i32);
    if (N > 0) {
      cover_kernel<scalar_t, true><<<blocks_for(BQ), kThreads, 0, stream>>>(
          uv.data_ptr<scalar_t>(), mask.data_ptr<bool>(), chart_ptr, B, H, W, S_h, S_w,
          seam_threshold, cursor.data_ptr<int32_t>(), total.data_ptr<int32_t>(),
          seg_start.data_ptr<int64_t>(), seg_qid.data_ptr<int32_t>(),
          seg_st.data_ptr<scalar_t>(), nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    select_kernel<scalar_t><<<blocks_for(BT), kThreads, 0, stream>>>(
        BT, T, K, total.data_ptr<int32_t>(), cursor.data_ptr<int32_t>(), seg_start.data_ptr<int64_t>(),
        N > 0 ? seg_qid.data_ptr<int32_t>() : nullptr, N > 0 ? seg_st.data_ptr<scalar_t>() : nullptr,
        count.data_ptr<int32_t>(), visible.data_ptr<bool>(), table_qid.data_ptr<int32_t>(),
        table_st.data_ptr<scalar_t>(),
        reinterpret_cast<unsigned long long*>(dropped.data_ptr<int64_t>()));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    surface_kernel<scalar_t><<<blocks_for(B * C * T), kThreads, 0, stream>>>(
        features.data_ptr<scalar_t>(), B, C, H, W, T, K, count.data_ptr<int32_t>(),
        table_qid.data_ptr<int32_t>(), table_st.data_ptr<scalar_t>(), surface.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {surface, visible, count, table_qid, table_st, dropped, cross_chart};
}

std::tuple<at::Tensor, at::Tensor> quad_uv_backward_cuda(const at::Tensor& grad_surface,
                                                         const at::Tensor& features,
                                                         const at::Tensor& uv,
                                                         const at::Tensor& count,
                                                         const at::Tensor& table_qid,
                                                         const at::Tensor& table_st) {
  const int64_t K = check_backward_args(grad_surface, features, uv, count, table_qid, table_st,
                                        c10::DeviceType::CUDA);
  const c10::cuda::CUDAGuard guard(features.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2),
                W = features.size(3), S_h = grad_surface.size(2), S_w = grad_surface.size(3);
  const int64_t T = S_h * S_w, BT = B * T, HW = H * W, Q = (H - 1) * (W - 1);
  TORCH_CHECK(!count.lt(0).logical_or(count.gt(K)).any().item<bool>(),
              "dmnt::quad_uv_backward: count must be in [0, K=", K, "]");
  at::Tensor grad_features = at::zeros_like(features);
  at::Tensor grad_uv = at::zeros_like(uv);
  const at::Tensor cnt = count.reshape({BT});
  const at::Tensor incl = at::cumsum(cnt, 0, at::kLong);
  const int64_t E = incl[BT - 1].item<int64_t>();
  if (E == 0) return {grad_features, grad_uv};
  const at::Tensor ent_start = incl - cnt;
  const auto i64 = features.options().dtype(at::kLong);
  at::Tensor ent_tg = at::empty({E}, i64), ent_off = at::empty({E}, i64);
  at::Tensor ent_n = at::empty({E}, features.options().dtype(at::kInt));
  at::Tensor ent_st = at::empty({2 * E}, features.options());
  at::Tensor dq = at::empty({8 * E}, features.options());
  at::Tensor bad = at::zeros({1}, features.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "quad_uv_backward_cuda", [&] {
    decode_kernel<scalar_t><<<blocks_for(BT), kThreads, 0, stream>>>(
        BT, K, W, Q, count.data_ptr<int32_t>(), ent_start.data_ptr<int64_t>(),
        table_qid.data_ptr<int32_t>(), table_st.data_ptr<scalar_t>(), ent_tg.data_ptr<int64_t>(),
        ent_off.data_ptr<int64_t>(), ent_st.data_ptr<scalar_t>(), ent_n.data_ptr<int32_t>(),
        bad.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    TORCH_CHECK(bad.item<int32_t>() == 0, "dmnt::quad_uv_backward: table_qid has entries out of "
                "range [0, (H-1)*(W-1) = ", Q, ")");
    entry_grad_kernel<scalar_t><<<blocks_for(E), kThreads, 0, stream>>>(
        E, C, H, W, S_h, S_w, grad_surface.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
        uv.data_ptr<scalar_t>(), ent_tg.data_ptr<int64_t>(), ent_off.data_ptr<int64_t>(),
        ent_st.data_ptr<scalar_t>(), ent_n.data_ptr<int32_t>(), dq.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor keys = at::empty({4 * E}, i64);
    record_keys_kernel<<<blocks_for(4 * E), kThreads, 0, stream>>>(
        4 * E, T, HW, W, ent_tg.data_ptr<int64_t>(), ent_off.data_ptr<int64_t>(),
        keys.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // Stable: records of one pixel stay in entry order, the CPU summation order.
    const auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor& sorted_keys = std::get<0>(sorted);
    const at::Tensor& perm = std::get<1>(sorted);
    const at::Tensor pix_start = at::searchsorted(sorted_keys, at::arange(B * HW + 1, i64));
    grad_features_kernel<scalar_t><<<blocks_for(B * C * HW), kThreads, 0, stream>>>(
        B, C, HW, T, grad_surface.data_ptr<scalar_t>(), pix_start.data_ptr<int64_t>(),
        perm.data_ptr<int64_t>(), ent_tg.data_ptr<int64_t>(), ent_st.data_ptr<scalar_t>(),
        ent_n.data_ptr<int32_t>(), grad_features.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_uv_kernel<scalar_t><<<blocks_for(B * HW), kThreads, 0, stream>>>(
        B * HW, pix_start.data_ptr<int64_t>(), perm.data_ptr<int64_t>(), dq.data_ptr<scalar_t>(),
        grad_uv.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_features, grad_uv};
}

}  // namespace
}  // namespace dmnt

TORCH_LIBRARY_IMPL(dmnt, CUDA, m) {
  m.impl("quad_uv_forward", &dmnt::quad_uv_forward_cuda);
  m.impl("quad_uv_backward", &dmnt::quad_uv_backward_cuda);
}
