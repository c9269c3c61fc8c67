// dmnt::quad_uv_forward / dmnt::quad_uv_backward: the op schema and the CPU kernels.
//
// Forward: (1) per quad row, in parallel, list the texels each used quad covers
// (quads whose pixels span two charts of the optional chart map are counted, not used)
// (with s, t) in ascending qid order; (2) per batch item, append those records
// to the per-texel table, which therefore keeps the K smallest qids (the rest
// are counted as dropped); (3) per texel row, in parallel, gather the surface:
// surface[:, c] = sum_entries sum_k (w_k / n) F[:, p_k].
// Backward reuses the table: one pass over (batch, channel-block) tasks scatters
// grad_features (each plane written by one thread, in entry order) and reduces
// each entry's d(surface)/d(s,t) over the block's channels; then per entry the
// uv gradient of its four corners, scattered per batch item in entry order.
// Every step has a fixed summation order, so results do not depend on the
// number of threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "quad_checks.h"
#include "quad_math.h"

namespace dmnt {
namespace {

// Items per parallel task such that a task does at least ~kMinWork inner steps:
// small inputs then run on the calling thread instead of waking the pool.
constexpr int64_t kMinWork = 1 << 15;
inline int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(1, work_per_item));
}

template <typename scalar_t>
struct Record {
  int32_t texel;
  int32_t qid;
  scalar_t s, t;
};

// `chart` (B,H,W) may be null; cross_chart[b] counts the quads the chart rule removed.
template <typename scalar_t>
void build_table_cpu(const scalar_t* uv, const bool* mask, const int64_t* chart, int64_t B,
                     int64_t H, int64_t W, int64_t S_h, int64_t S_w, double thr, int64_t K,
                     int32_t* count, int32_t* table_qid, scalar_t* table_st, int64_t* dropped,
                     int64_t* cross_chart) {
  const int64_t rows = H - 1, T = S_h * S_w;
  std::vector<std::vector<Record<scalar_t>>> recs(B * rows);
  std::vector<int64_t> cross_rows(B * rows, 0);
  at::parallel_for(0, B * rows, grain(4 * W), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / rows, y = r % rows;
      const scalar_t* uvb = uv + b * H * W * 2;
      const bool* mb = mask + b * H * W;
      const int64_t* cb = chart != nullptr ? chart + b * H * W : nullptr;
      auto& out = recs[r];
      for (int64_t x = 0; x + 1 < W; ++x) {
        QuadGeom Q;
        const int status = quad_setup(uvb, mb, cb, W, y, x, S_h, S_w, thr, Q);
        if (status == kQuadCrossChart) ++cross_rows[r];
        if (status != kQuadUsed) continue;
        const int32_t qid = static_cast<int32_t>(y * (W - 1) + x);
        for (int64_t ty = Q.y0; ty <= Q.y1; ++ty) {
          for (int64_t tx = Q.x0; tx <= Q.x1; ++tx) {
            double s, t;
            if (quad_solve(Q, static_cast<double>(tx), static_cast<double>(ty), s, t)) {
              out.push_back({static_cast<int32_t>(ty * S_w + tx), qid, static_cast<scalar_t>(s),
                             static_cast<scalar_t>(t)});
            }
          }
        }
      }
    }
  });
  at::parallel_for(0, B, grain(H * W), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int32_t* cb = count + b * T;
      int64_t drop = 0, cross = 0;
      for (int64_t y = 0; y < rows; ++y) {
        cross += cross_rows[b * rows + y];
        for (const auto& rec : recs[b * rows + y]) {
          const int32_t n = cb[rec.texel];
          if (n < K) {
            const int64_t slot = (b * T + rec.texel) * K + n;
            table_qid[slot] = rec.qid;
            table_st[2 * slot] = rec.s;
            table_st[2 * slot + 1] = rec.t;
            cb[rec.texel] = n + 1;
          } else {
            ++drop;
          }
        }
      }
      dropped[b] = drop;
      cross_chart[b] = cross;
    }
  });
}

// One table entry of a texel row, ready for the channel loop.
template <typename scalar_t>
struct RowEntry {
  int64_t col;     // texel column j
  int64_t off;     // pixel index of p1
  scalar_t wn[4];  // w_k / n
};

// Channels [ch, ch + NC) of one texel row: NC channels share each entry load.
// out[j] = 0 + term_e0 + term_e1 + ..., the summation order of the CUDA kernel.
template <int NC, typename scalar_t>
inline void gather_row(const std::vector<RowEntry<scalar_t>>& ent, const scalar_t* F,
                       int64_t HW, int64_t W, scalar_t* out, int64_t out_stride, int64_t S_w) {
  const scalar_t* Fp[NC];
  scalar_t* o[NC];
  for (int c = 0; c < NC; ++c) {
    Fp[c] = F + c * HW;
    o[c] = out + c * out_stride;
    std::fill(o[c], o[c] + S_w, scalar_t(0));
  }
  for (const auto& en : ent) {
    for (int c = 0; c < NC; ++c) {
      const scalar_t* f = Fp[c] + en.off;
      o[c][en.col] += en.wn[0] * f[0] + en.wn[1] * f[1] + en.wn[2] * f[W + 1] + en.wn[3] * f[W];
    }
  }
}

template <typename scalar_t>
void gather_surface_cpu(const scalar_t* F, int64_t B, int64_t C, int64_t H, int64_t W,
                        int64_t S_h, int64_t S_w, int64_t K, const int32_t* count,
                        const int32_t* table_qid, const scalar_t* table_st, scalar_t* out) {
  const int64_t HW = H * W, T = S_h * S_w;
  at::parallel_for(0, B * S_h, grain(C * S_w), [&](int64_t begin, int64_t end) {
    std::vector<RowEntry<scalar_t>> ent;  // the row's entries, decoded once for all channels
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / S_h, i = r % S_h;
      ent.clear();
      for (int64_t j = 0; j < S_w; ++j) {
        const int64_t tex = r * S_w + j;
        const int32_t n = count[tex];
        for (int32_t e = 0; e < n; ++e) {
          const int64_t qid = table_qid[tex * K + e];
          RowEntry<scalar_t> en;
          en.col = j;
          en.off = (qid / (W - 1)) * W + qid % (W - 1);
          bilinear_weights(table_st[2 * (tex * K + e)], table_st[2 * (tex * K + e) + 1], en.wn);
          for (int k = 0; k < 4; ++k) en.wn[k] = en.wn[k] / static_cast<scalar_t>(n);
          ent.push_back(en);
        }
      }
      int64_t ch = 0;
      for (; ch + 4 <= C; ch += 4) {
        gather_row<4>(ent, F + (b * C + ch) * HW, HW, W, out + (b * C + ch) * T + i * S_w, T, S_w);
      }
      for (; ch < C; ++ch) {
        gather_row<1>(ent, F + (b * C + ch) * HW, HW, W, out + (b * C + ch) * T + i * S_w, T, S_w);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
quad_uv_forward_cpu(const at::Tensor& features, const at::Tensor& uv, const at::Tensor& mask,
                    int64_t S_h, int64_t S_w, double seam_threshold, int64_t max_quads,
                    const std::optional<at::Tensor>& chart) {
  check_forward_args(features, uv, mask, S_h, S_w, seam_threshold, max_quads, chart,
                     c10::DeviceType::CPU);
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2),
                W = features.size(3), K = max_quads;
  auto i32 = features.options().dtype(at::kInt);
  at::Tensor count = at::zeros({B, S_h, S_w}, i32);
  at::Tensor table_qid = at::full({B, S_h, S_w, K}, -1, i32);
  at::Tensor table_st = at::zeros({B, S_h, S_w, K, 2}, features.options());
  at::Tensor dropped = at::zeros({B}, features.options().dtype(at::kLong));
  at::Tensor cross_chart = at::zeros({B}, features.options().dtype(at::kLong));
  at::Tensor surface = at::empty({B, C, S_h, S_w}, features.options());
  const int64_t* chart_ptr = chart.has_value() ? chart->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "quad_uv_forward_cpu", [&] {
    build_table_cpu<scalar_t>(uv.data_ptr<scalar_t>(), mask.data_ptr<bool>(), chart_ptr, B, H, W,
                              S_h, S_w, seam_threshold, K, count.data_ptr<int32_t>(),
                              table_qid.data_ptr<int32_t>(), table_st.data_ptr<scalar_t>(),
                              dropped.data_ptr<int64_t>(), cross_chart.data_ptr<int64_t>());
    gather_surface_cpu<scalar_t>(features.data_ptr<scalar_t>(), B, C, H, W, S_h, S_w, K,
                                 count.data_ptr<int32_t>(), table_qid.data_ptr<int32_t>(),
                                 table_st.data_ptr<scalar_t>(), surface.data_ptr<scalar_t>());
  });
  at::Tensor visible = count.gt(0);
  return {surface, visible, count, table_qid, table_st, dropped, cross_chart};
}

// One table entry, decoded for the backward passes.
template <typename scalar_t>
struct Entry {
  int32_t b, texel, n;
  int64_t off;       // pixel index of p1 within the batch item
  scalar_t s, t;
  scalar_t wn[4];    // w_k / n
};

template <typename scalar_t>
std::vector<Entry<scalar_t>> decode_entries(int64_t B, int64_t H, int64_t W, int64_t S_h,
                                            int64_t S_w, int64_t K, const int32_t* count,
                                            const int32_t* table_qid, const scalar_t* table_st,
                                            std::vector<int64_t>& batch_start) {
  const int64_t T = S_h * S_w, Q = (H - 1) * (W - 1);
  std::vector<int64_t> start(B * T + 1, 0);
  for (int64_t i = 0; i < B * T; ++i) {
    TORCH_CHECK(count[i] >= 0 && count[i] <= K, "dmnt::quad_uv_backward: count must be in [0, K=",
                K, "], got ", count[i]);
    start[i + 1] = start[i] + count[i];
  }
  batch_start.resize(B + 1);
  for (int64_t b = 0; b <= B; ++b) batch_start[b] = start[b * T];
  std::vector<Entry<scalar_t>> ent(start[B * T]);
  at::parallel_for(0, B * T, grain(4), [&](int64_t begin, int64_t end) {
    for (int64_t tex = begin; tex < end; ++tex) {
      for (int32_t e = 0; e < count[tex]; ++e) {
        const int64_t qid = table_qid[tex * K + e];
        TORCH_CHECK(qid >= 0 && qid < Q, "dmnt::quad_uv_backward: table_qid entry ", qid,
                    " out of range [0, ", Q, ")");
        Entry<scalar_t>& en = ent[start[tex] + e];
        en.b = static_cast<int32_t>(tex / T);
        en.texel = static_cast<int32_t>(tex % T);
        en.n = count[tex];
        en.off = (qid / (W - 1)) * W + qid % (W - 1);
        en.s = table_st[2 * (tex * K + e)];
        en.t = table_st[2 * (tex * K + e) + 1];
        scalar_t w[4];
        bilinear_weights(en.s, en.t, w);
        for (int k = 0; k < 4; ++k) en.wn[k] = w[k] / static_cast<scalar_t>(en.n);
      }
    }
  });
  return ent;
}

// Planes [plane0, plane0 + NC) for entries [e0, e1): zero and scatter dL/dF, and
// add each channel's G * d(sample)/d(s,t) to the entry's partial sums pp, in
// channel order (NC channels share each entry load).
template <int NC, typename scalar_t, typename opmath_t>
inline void backward_channels(const Entry<scalar_t>* ent, int64_t e0, int64_t e1,
                              const scalar_t* G, const scalar_t* F, scalar_t* dF, int64_t plane0,
                              int64_t T, int64_t HW, int64_t W, opmath_t* pp) {
  const scalar_t* Gp[NC];
  const scalar_t* Fp[NC];
  scalar_t* dp[NC];
  for (int c = 0; c < NC; ++c) {
    Gp[c] = G + (plane0 + c) * T;
    Fp[c] = F + (plane0 + c) * HW;
    dp[c] = dF + (plane0 + c) * HW;
    std::fill(dp[c], dp[c] + HW, scalar_t(0));
  }
  for (int64_t e = e0; e < e1; ++e) {
    const auto& en = ent[e];
    const opmath_t s = en.s, t = en.t;
    opmath_t ps = pp[2 * e], pt = pp[2 * e + 1];
    for (int c = 0; c < NC; ++c) {
      const scalar_t g = Gp[c][en.texel];
      scalar_t* d = dp[c] + en.off;
      d[0] += en.wn[0] * g;
      d[1] += en.wn[1] * g;
      d[W + 1] += en.wn[2] * g;
      d[W] += en.wn[3] * g;
      const scalar_t* f = Fp[c] + en.off;
      const opmath_t F1 = f[0], F2 = f[1], F3 = f[W + 1], F4 = f[W], gc = g;
      ps += gc * ((1 - t) * (F2 - F1) + t * (F3 - F4));
      pt += gc * ((1 - s) * (F4 - F1) + s * (F3 - F2));
    }
    pp[2 * e] = ps;
    pp[2 * e + 1] = pt;
  }
}

template <typename scalar_t>
void backward_cpu(const scalar_t* G, const scalar_t* F, const scalar_t* uv, int64_t B, int64_t C,
                  int64_t H, int64_t W, int64_t S_h, int64_t S_w, int64_t K, const int32_t* count,
                  const int32_t* table_qid, const scalar_t* table_st, scalar_t* dF,
                  scalar_t* duv) {
  using opmath_t = at::opmath_type<scalar_t>;
  const int64_t T = S_h * S_w, HW = H * W;
  std::vector<int64_t> bstart;
  const auto ent = decode_entries<scalar_t>(B, H, W, S_h, S_w, K, count, table_qid, table_st, bstart);
  const int64_t E = static_cast<int64_t>(ent.size());

  // One pass over (batch, channel block) tasks: each owns its dF planes (a
  // scatter in entry order) and also accumulates, per entry, the block's part
  // of sum_ch G * d(sample)/d(s,t). The parts are then added in block order,
  // so nothing depends on the thread count (the CUDA kernel sums the same way).
  const int64_t nblk = (C + kChanBlock - 1) / kChanBlock;
  std::vector<opmath_t> part(2 * nblk * E);
  at::parallel_for(0, B * nblk, grain(kChanBlock * (E / B + 1)), [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, blk = task % nblk;
      const int64_t e0 = bstart[b], e1 = bstart[b + 1];
      opmath_t* pp = part.data() + 2 * blk * E;
      std::fill(pp + 2 * e0, pp + 2 * e1, opmath_t(0));
      const int64_t c1 = std::min(C, (blk + 1) * kChanBlock);
      int64_t ch = blk * kChanBlock;
      for (; ch + 4 <= c1; ch += 4) {
        backward_channels<4>(ent.data(), e0, e1, G, F, dF, b * C + ch, T, HW, W, pp);
      }
      for (; ch < c1; ++ch) {
        backward_channels<1>(ent.data(), e0, e1, G, F, dF, b * C + ch, T, HW, W, pp);
      }
    }
  });

  // dL/duv, step 1: per entry, gv = (1/n) sum_ch (...) and the four corner gradients.
  std::vector<scalar_t> dq(8 * E);
  at::parallel_for(0, E, grain(64), [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const auto& en = ent[e];
      opmath_t gs = 0, gt = 0;
      for (int64_t blk = 0; blk < nblk; ++blk) {
        gs += part[2 * (blk * E + e)];
        gt += part[2 * (blk * E + e) + 1];
      }
      scalar_t w[4];
      bilinear_weights(en.s, en.t, w);
      entry_uv_grad(uv + en.b * HW * 2, W, en.off, S_h, S_w, static_cast<double>(en.s),
                    static_cast<double>(en.t), static_cast<double>(gs) / en.n,
                    static_cast<double>(gt) / en.n, w, dq.data() + 8 * e);
    }
  });

  // dL/duv, step 2: scatter the corner gradients, per batch item in entry order.
  at::parallel_for(0, B, grain(8 * (E / B + 1)), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      scalar_t* d = duv + b * HW * 2;
      std::fill(d, d + HW * 2, scalar_t(0));
      for (int64_t e = bstart[b]; e < bstart[b + 1]; ++e) {
        for (int m = 0; m < 4; ++m) {
          const int64_t p = ent[e].off + corner_offset(m, W);
          d[2 * p] += dq[8 * e + 2 * m];
          d[2 * p + 1] += dq[8 * e + 2 * m + 1];
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> quad_uv_backward_cpu(const at::Tensor& grad_surface,
                                                        const at::Tensor& features,
                                                        const at::Tensor& uv,
                                                        const at::Tensor& count,
                                                        const at::Tensor& table_qid,
                                                        const at::Tensor& table_st) {
  const int64_t K = check_backward_args(grad_surface, features, uv, count, table_qid, table_st,
                                        c10::DeviceType::CPU);
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2),
                W = features.size(3), S_h = grad_surface.size(2), S_w = grad_surface.size(3);
  at::Tensor grad_features = at::empty_like(features);
  at::Tensor grad_uv = at::empty_like(uv);
  AT_DISPATCH_FLOATING_TYPES(features.scalar_type(), "quad_uv_backward_cpu", [&] {
    backward_cpu<scalar_t>(grad_surface.data_ptr<scalar_t>(), features.data_ptr<scalar_t>(),
                           uv.data_ptr<scalar_t>(), B, C, H, W, S_h, S_w, K,
                           count.data_ptr<int32_t>(), table_qid.data_ptr<int32_t>(),
                           table_st.data_ptr<scalar_t>(), grad_features.data_ptr<scalar_t>(),
                           grad_uv.data_ptr<scalar_t>());
  });
  return {grad_features, grad_uv};
}

}  // namespace
}  // namespace dmnt

TORCH_LIBRARY(dmnt, m) {
  m.def(
      "quad_uv_forward(Tensor features, Tensor uv, Tensor mask, int S_h, int S_w, "
      "float seam_threshold, int max_quads, Tensor? chart=None) -> (Tensor surface, "
      "Tensor visible, Tensor count, Tensor table_qid, Tensor table_st, Tensor dropped, "
      "Tensor cross_chart)");
  m.def(
      "quad_uv_backward(Tensor grad_surface, Tensor features, Tensor uv, Tensor count, "
      "Tensor table_qid, Tensor table_st) -> (Tensor grad_features, Tensor grad_uv)");
}

TORCH_LIBRARY_IMPL(dmnt, CPU, m) {
  m.impl("quad_uv_forward", &dmnt::quad_uv_forward_cpu);
  m.impl("quad_uv_backward", &dmnt::quad_uv_backward_cpu);
}
