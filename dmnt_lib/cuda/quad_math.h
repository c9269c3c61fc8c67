// Geometry of the image->UV transform shared by the C++ (CPU) and CUDA kernels.
//
// Every backend (NumPy reference, torch, C++, CUDA) implements the same rules
// (docs/design.md section 4 and the spec in dmnt_lib/transform/__init__.py):
// texel space q(p) = (u*S_w - 0.5, v*S_h - 0.5); a 2x2 pixel block (y, x) is a
// quad p1=(y,x), p2=(y,x+1), p3=(y+1,x+1), p4=(y+1,x) with id qid = y*(W-1)+x;
// it is used iff all four pixels are in the mask, its u- and v-extents are
// <= seam_threshold, it is strictly convex and, when a per-pixel chart id map is
// given, its four pixels lie on one chart; a texel centre c is covered iff
// the inverse bilinear map X(s,t) = c has its root with det J of the quad's
// orientation in [0,1]^2 (tolerance 1e-6, then clamped).
//
// All geometry is evaluated in double, whatever the feature dtype, so that the
// coverage decisions of float32 and float64 inputs agree with the reference,
// and the CUDA build uses --fmad=false so that the same code gives bit-identical
// decisions on the host and on the device.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define DMNT_HD __host__ __device__ __forceinline__
#else
#define DMNT_HD inline
#endif

namespace dmnt {

constexpr double kConvexEps = 1e-6;  // sigma * c_k > kConvexEps * L2
constexpr double kCoverEps = 1e-6;   // -eps <= s, t <= 1 + eps
// Backward: gv = sum over channel blocks of (sum over the block's channels), in
// this order on CPU and CUDA alike, so float32 results match across backends.
constexpr int64_t kChanBlock = 16;

// A used quad in texel units: X(s,t) = q1 + s*e + t*f + s*t*g.
struct QuadGeom {
  double q1x, q1y, ex, ey, fx, fy, gx, gy;
  double cross_ef, cross_gf;  // cross(e,f), cross(g,f): constant parts of k1, k2
  double sigma;               // +1 or -1: orientation, the sign of det J
  int64_t x0, x1, y0, y1;     // inclusive texel bounding box, clipped; may be empty
};

DMNT_HD bool is_finite(double x) { return fabs(x) <= 1.7976931348623157e308; }  // false for NaN/inf

DMNT_HD double cross2(double ax, double ay, double bx, double by) { return ax * by - ay * bx; }

// Texel-space corners q_k (k = 0..3 for p1..p4) of quad (y, x); `uv` points at
// one batch item's (H, W, 2) map. Pixel index of corner k is base + corner_offset(k, W).
DMNT_HD int64_t corner_offset(int k, int64_t W) {
  return k == 0 ? 0 : (k == 1 ? 1 : (k == 2 ? W + 1 : W));
}

template <typename scalar_t>
DMNT_HD void quad_corners(const scalar_t* uv, int64_t W, int64_t base, int64_t S_h, int64_t S_w,
                          double* qx, double* qy) {
  for (int k = 0; k < 4; ++k) {
    const int64_t p = base + corner_offset(k, W);
    qx[k] = static_cast<double>(uv[2 * p]) * static_cast<double>(S_w) - 0.5;
    qy[k] = static_cast<double>(uv[2 * p + 1]) * static_cast<double>(S_h) - 0.5;
  }
}

// What quad_setup decided about a quad.
enum QuadStatus : int {
  kQuadUnused = 0,      // off the mask, straddles a seam, or not strictly convex
  kQuadUsed = 1,        // used: `Q` is filled
  kQuadCrossChart = 2,  // passes every other rule, but its pixels lie on two or more charts
};

// Decides whether quad (y, x) is used and, if so, fills `Q`. `uv` (H,W,2),
// `mask` (H,W) and `chart` (H,W) point at one batch item; `chart` may be null
// (no chart rule; then kQuadCrossChart is never returned). The chart rule is
// tested last so that kQuadCrossChart counts exactly the quads it removes.
template <typename scalar_t>
DMNT_HD int quad_setup(const scalar_t* uv, const bool* mask, const int64_t* chart, int64_t W,
                       int64_t y, int64_t x, int64_t S_h, int64_t S_w, double seam_threshold,
                       QuadGeom& Q) {
  const int64_t base = y * W + x;
  double u[4], v[4];
  for (int k = 0; k < 4; ++k) {
    const int64_t p = base + corner_offset(k, W);
    if (!mask[p]) return kQuadUnused;
    u[k] = static_cast<double>(uv[2 * p]);
    v[k] = static_cast<double>(uv[2 * p + 1]);
    // NaN/inf corners would make the bounding box undefined: such a quad is unused.
    if (!(is_finite(u[k]) && is_finite(v[k]))) return kQuadUnused;
  }
  double umin = u[0], umax = u[0], vmin = v[0], vmax = v[0];
  for (int k = 1; k < 4; ++k) {
    umin = fmin(umin, u[k]); umax = fmax(umax, u[k]);
    vmin = fmin(vmin, v[k]); vmax = fmax(vmax, v[k]);
  }
  if (!(umax - umin <= seam_threshold && vmax - vmin <= seam_threshold)) return kQuadUnused;

  double qx[4], qy[4];
  quad_corners(uv, W, base, S_h, S_w, qx, qy);
  double c[4], csum = 0.0, L2 = 0.0;
  for (int k = 0; k < 4; ++k) {
    const int k1 = (k + 1) & 3, k2 = (k + 2) & 3;
    const double ax = qx[k1] - qx[k], ay = qy[k1] - qy[k];
    const double bx = qx[k2] - qx[k1], by = qy[k2] - qy[k1];
    c[k] = cross2(ax, ay, bx, by);
    csum += c[k];
    L2 = fmax(L2, ax * ax + ay * ay);
  }
  const double sigma = csum >= 0.0 ? 1.0 : -1.0;
  for (int k = 0; k < 4; ++k) {
    if (!(sigma * c[k] > kConvexEps * L2)) return kQuadUnused;
  }
  if (chart != nullptr) {
    const int64_t c0 = chart[base];
    for (int k = 1; k < 4; ++k) {
      if (chart[base + corner_offset(k, W)] != c0) return kQuadCrossChart;
    }
  }

  Q.q1x = qx[0]; Q.q1y = qy[0];
  Q.ex = qx[1] - qx[0]; Q.ey = qy[1] - qy[0];
  Q.fx = qx[3] - qx[0]; Q.fy = qy[3] - qy[0];
  Q.gx = qx[0] - qx[1] + qx[2] - qx[3];
  Q.gy = qy[0] - qy[1] + qy[2] - qy[3];
  Q.cross_ef = cross2(Q.ex, Q.ey, Q.fx, Q.fy);
  Q.cross_gf = cross2(Q.gx, Q.gy, Q.fx, Q.fy);
  Q.sigma = sigma;
  const double xmin = fmin(fmin(qx[0], qx[1]), fmin(qx[2], qx[3]));
  const double xmax = fmax(fmax(qx[0], qx[1]), fmax(qx[2], qx[3]));
  const double ymin = fmin(fmin(qy[0], qy[1]), fmin(qy[2], qy[3]));
  const double ymax = fmax(fmax(qy[0], qy[1]), fmax(qy[2], qy[3]));
  // Clip both ends in double before converting: uv far outside [0,1] (finite but
  // huge) must not overflow the integer conversion; an empty range stays empty.
  const double w1 = static_cast<double>(S_w - 1), h1 = static_cast<double>(S_h - 1);
  Q.x0 = static_cast<int64_t>(fmin(fmax(ceil(xmin), 0.0), w1 + 1.0));
  Q.x1 = static_cast<int64_t>(fmax(fmin(floor(xmax), w1), -1.0));
  Q.y0 = static_cast<int64_t>(fmin(fmax(ceil(ymin), 0.0), h1 + 1.0));
  Q.y1 = static_cast<int64_t>(fmax(fmin(floor(ymax), h1), -1.0));
  return kQuadUsed;
}

// Inverse bilinear interpolation at texel centre (cx, cy). Returns true iff the
// centre is covered, with (s, t) clamped to [0,1]. Comparisons are written so
// that NaN (e.g. 0/0) means "not covered".
DMNT_HD bool quad_solve(const QuadGeom& Q, double cx, double cy, double& s, double& t) {
  const double hx = cx - Q.q1x, hy = cy - Q.q1y;
  const double k2 = Q.cross_gf;
  const double k1 = Q.cross_ef + cross2(hx, hy, Q.gx, Q.gy);
  const double k0 = cross2(hx, hy, Q.ex, Q.ey);
  const double D = k1 * k1 - 4.0 * k0 * k2;
  if (!(D >= 0.0)) return false;
  const double sg = k1 >= 0.0 ? 1.0 : -1.0;
  // Citardauq form: r never suffers cancellation; the root whose derivative
  // 2*k2*t + k1 (= det J) has the quad's sign is k0/r when sgn(k1) == sigma.
  const double r = -(k1 + sg * sqrt(D)) / 2.0;
  if (sg == Q.sigma) {
    if (r == 0.0) return false;
    t = k0 / r;
  } else {
    if (k2 == 0.0) return false;
    t = r / k2;
  }
  const double ax = Q.ex + t * Q.gx, ay = Q.ey + t * Q.gy;
  s = ((hx - t * Q.fx) * ax + (hy - t * Q.fy) * ay) / (ax * ax + ay * ay);
  if (!(s >= -kCoverEps && s <= 1.0 + kCoverEps && t >= -kCoverEps && t <= 1.0 + kCoverEps)) {
    return false;
  }
  s = fmin(fmax(s, 0.0), 1.0);
  t = fmin(fmax(t, 0.0), 1.0);
  return true;
}

// Bilinear weights of p1..p4 at (s, t), in the feature dtype: forward and
// backward both derive them from the (s, t) stored in the table.
template <typename scalar_t>
DMNT_HD void bilinear_weights(scalar_t s, scalar_t t, scalar_t* w) {
  const scalar_t one = static_cast<scalar_t>(1);
  w[0] = (one - s) * (one - t);
  w[1] = s * (one - t);
  w[2] = s * t;
  w[3] = (one - s) * t;
}

// dL/dq_m for the four corners of one table entry, scaled to uv units:
// J = [e + t g, f + s g] (columns), z = J^{-T} gv, dL/dq_m = -w_m z,
// dL/duv(p_m) = (S_w, S_h) * dL/dq_m. `gv` = (1/n) sum_ch G * d(sample)/d(s,t).
// Writes out[2*m], out[2*m+1] for m = 0..3.
template <typename scalar_t>
DMNT_HD void entry_uv_grad(const scalar_t* uv, int64_t W, int64_t base, int64_t S_h, int64_t S_w,
                           double s, double t, double gvs, double gvt, const scalar_t* w,
                           scalar_t* out) {
  double qx[4], qy[4];
  quad_corners(uv, W, base, S_h, S_w, qx, qy);
  const double ex = qx[1] - qx[0], ey = qy[1] - qy[0];
  const double fx = qx[3] - qx[0], fy = qy[3] - qy[0];
  const double gx = qx[0] - qx[1] + qx[2] - qx[3];
  const double gy = qy[0] - qy[1] + qy[2] - qy[3];
  const double ax = ex + t * gx, ay = ey + t * gy;  // dX/ds
  const double bx = fx + s * gx, by = fy + s * gy;  // dX/dt
  const double det = ax * by - ay * bx;
  // J^T z = gv  =>  z = (by*gvs - ay*gvt, -bx*gvs + ax*gvt) / det
  const double zx = (by * gvs - ay * gvt) / det;
  const double zy = (-bx * gvs + ax * gvt) / det;
  for (int m = 0; m < 4; ++m) {
    const double wm = static_cast<double>(w[m]);
    out[2 * m] = static_cast<scalar_t>(-wm * zx * static_cast<double>(S_w));
    out[2 * m + 1] = static_cast<scalar_t>(-wm * zy * static_cast<double>(S_h));
  }
}

}  // namespace dmnt
