// Input validation shared by the CPU and CUDA implementations of dmnt::quad_uv_*.
// Every misuse becomes a TORCH_CHECK error (a Python RuntimeError), never a crash.
#pragma once

#include <ATen/ATen.h>
#include <limits>
#include <optional>

namespace dmnt {

inline void check_device_contig(const at::Tensor& t, const char* name, c10::DeviceType dev,
                                const char* op) {
  TORCH_CHECK(t.device().type() == dev, op, ": ", name, " must be on ", c10::DeviceTypeName(dev),
              ", got ", t.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Checks shared by both ops: features (B,C,H,W) float32/64 with positive sizes, uv (B,H,W,2).
inline void check_features_uv(const at::Tensor& features, const at::Tensor& uv, const char* op) {
  TORCH_CHECK(features.dim() == 4, op, ": features must be 4-D (B,C,H,W), got shape ",
              features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, op,
              ": features must be float32 or float64, got ", features.scalar_type());
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2),
                W = features.size(3);
  TORCH_CHECK(B > 0 && C > 0 && H > 0 && W > 0, op, ": features sizes must be > 0, got ",
              features.sizes());
  TORCH_CHECK(uv.dim() == 4 && uv.size(0) == B && uv.size(1) == H && uv.size(2) == W &&
                  uv.size(3) == 2,
              op, ": uv must have shape (B,H,W,2) = (", B, ",", H, ",", W, ",2), got ", uv.sizes());
}

inline void check_forward_args(const at::Tensor& features, const at::Tensor& uv,
                               const at::Tensor& mask, int64_t S_h, int64_t S_w,
                               double seam_threshold, int64_t K,
                               const std::optional<at::Tensor>& chart, c10::DeviceType dev) {
  const char* op = "dmnt::quad_uv_forward";
  check_features_uv(features, uv, op);
  const int64_t B = features.size(0), H = features.size(2), W = features.size(3);
  TORCH_CHECK(uv.scalar_type() == features.scalar_type(), op, ": uv dtype ", uv.scalar_type(),
              " must equal features dtype ", features.scalar_type());
  TORCH_CHECK(mask.dim() == 3 && mask.size(0) == B && mask.size(1) == H && mask.size(2) == W, op,
              ": mask must have shape (B,H,W) = (", B, ",", H, ",", W, "), got ", mask.sizes());
  TORCH_CHECK(mask.scalar_type() == at::kBool, op, ": mask must be bool, got ", mask.scalar_type());
  check_device_contig(features, "features", dev, op);
  check_device_contig(uv, "uv", dev, op);
  check_device_contig(mask, "mask", dev, op);
  TORCH_CHECK(uv.device() == features.device() && mask.device() == features.device(), op,
              ": features, uv and mask must be on the same device");
  if (chart.has_value()) {
    const at::Tensor& ch = *chart;
    TORCH_CHECK(ch.dim() == 3 && ch.size(0) == B && ch.size(1) == H && ch.size(2) == W, op,
                ": chart must have shape (B,H,W) = (", B, ",", H, ",", W, "), got ", ch.sizes());
    TORCH_CHECK(ch.scalar_type() == at::kLong, op, ": chart must be int64, got ",
                ch.scalar_type());
    check_device_contig(ch, "chart", dev, op);
    TORCH_CHECK(ch.device() == features.device(), op,
                ": chart must be on the device of features");
  }
  TORCH_CHECK(S_h > 0 && S_w > 0, op, ": S_h and S_w must be > 0, got ", S_h, ", ", S_w);
  TORCH_CHECK(K >= 1, op, ": max_quads must be >= 1, got ", K);
  TORCH_CHECK(seam_threshold >= 0.0, op, ": seam_threshold must be >= 0, got ", seam_threshold);
  // qid and per-batch texel/pixel indices are stored as int32.
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  // The tables themselves are indexed in int64, so K does not enter this limit.
  TORCH_CHECK(H * W <= kMax && S_h <= kMax && S_w <= kMax && S_h * S_w <= kMax,
              op, ": sizes too large for int32 indices (H*W and S_h*S_w must be < 2^31)");
}

// Validates the backward inputs; returns K.
inline int64_t check_backward_args(const at::Tensor& grad_surface, const at::Tensor& features,
                                   const at::Tensor& uv, const at::Tensor& count,
                                   const at::Tensor& table_qid, const at::Tensor& table_st,
                                   c10::DeviceType dev) {
  const char* op = "dmnt::quad_uv_backward";
  check_features_uv(features, uv, op);
  const int64_t B = features.size(0), C = features.size(1), H = features.size(2),
                W = features.size(3);
  TORCH_CHECK(grad_surface.dim() == 4 && grad_surface.size(0) == B && grad_surface.size(1) == C,
              op, ": grad_surface must have shape (B,C,S_h,S_w) with B=", B, ", C=", C, ", got ",
              grad_surface.sizes());
  const int64_t S_h = grad_surface.size(2), S_w = grad_surface.size(3);
  TORCH_CHECK(S_h > 0 && S_w > 0, op, ": S_h and S_w must be > 0");
  TORCH_CHECK(count.dim() == 3 && count.size(0) == B && count.size(1) == S_h &&
                  count.size(2) == S_w,
              op, ": count must have shape (B,S_h,S_w), got ", count.sizes());
  TORCH_CHECK(table_qid.dim() == 4 && table_qid.size(0) == B && table_qid.size(1) == S_h &&
                  table_qid.size(2) == S_w,
              op, ": table_qid must have shape (B,S_h,S_w,K), got ", table_qid.sizes());
  const int64_t K = table_qid.size(3);
  TORCH_CHECK(K >= 1, op, ": table K must be >= 1");
  TORCH_CHECK(table_st.dim() == 5 && table_st.size(0) == B && table_st.size(1) == S_h &&
                  table_st.size(2) == S_w && table_st.size(3) == K && table_st.size(4) == 2,
              op, ": table_st must have shape (B,S_h,S_w,K,2), got ", table_st.sizes());
  const auto dt = features.scalar_type();
  TORCH_CHECK(uv.scalar_type() == dt && grad_surface.scalar_type() == dt &&
                  table_st.scalar_type() == dt,
              op, ": grad_surface, uv and table_st must have the dtype of features (", dt, ")");
  TORCH_CHECK(count.scalar_type() == at::kInt && table_qid.scalar_type() == at::kInt, op,
              ": count and table_qid must be int32");
  check_device_contig(grad_surface, "grad_surface", dev, op);
  check_device_contig(features, "features", dev, op);
  check_device_contig(uv, "uv", dev, op);
  check_device_contig(count, "count", dev, op);
  check_device_contig(table_qid, "table_qid", dev, op);
  check_device_contig(table_st, "table_st", dev, op);
  const auto d = features.device();
  TORCH_CHECK(grad_surface.device() == d && uv.device() == d && count.device() == d &&
                  table_qid.device() == d && table_st.device() == d,
              op, ": all tensors must be on the same device");
  constexpr int64_t kMax = std::numeric_limits<int32_t>::max();
  TORCH_CHECK(H * W <= kMax && S_h * S_w <= kMax, op, ": sizes too large for int32 indices");
  return K;
}

}  // namespace dmnt
