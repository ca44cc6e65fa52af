// ReLU -> local response normalization -> max-pooling (Krizhevsky et al., 2012, sections
// 3.3 and 3.4) on CPU tensors, as one op: the stem of AlexNet, ZFNet and GoogLeNet. What
// relu_lrn_max_pool.cpp (entry points, forward) and relu_lrn_max_pool_backward.cpp share.
//
// For x of shape (N, C, H, W), r = max(x, 0) (NaN kept), the LRN of lrn.cpp over channels,
//
//   s_c = k + alpha / size * sum_{j in [c - lo, c + hi]} r_j^2,    z_c = r_c / s_c^beta,
//
// and y = the max-pooling of z as max_pool.h computes it (scan order, first maximum wins
// a tie, NaN wins), with each winner's position in its window kept (one byte) when a
// gradient is wanted. z is never written: forward reads x once and writes y (and the
// positions). z stays in float32 for float16 and bfloat16 inputs.
//
// Backward, from x and the positions: g = dL/dz is the pooled gradient routed to the
// winners, summed in increasing (oh, ow) order as PyTorch's scatter does; then lrn.cpp's
// gradient with r for x (s and the terms recomputed from r), and the ReLU's mask, zero
// where x <= 0 (torch's threshold_backward: NaN passes):
//
//   dL/dx_c = [x_c > 0 or NaN] (g_c / s_c^beta - 2 alpha beta / size r_c sum_j t_j),
//   t_j = g_j r_j / (s_j^beta s_j),  j in [c - hi, c + lo].
//
// Two tilings, the vector lanes along the axis that is contiguous in memory:
//   planes (NCHW): a tile is a band of rows of one image, walked channel by channel with
//     the channel windows' rows in rings. Forward pools each channel's band of z as soon
//     as its window is complete (the bands overlap by kernel - stride input rows,
//     recomputed): inference by max_pool_plain.cpp's plain path, else by
//     max_pool_lanes.h's row and column kernels. Backward scatters each channel's pooled
//     gradient onto its band of g, one add per output.
//   pixels (channels_last): the lanes are the C channels of a position. Forward keeps
//     the rows of z that the current windows span in a ring and takes each window's
//     maximum over its taps with max_of_taps; backward gathers g of each input position
//     from the windows over it, then runs the LRN gradient across its channels.
// Other strides run either tiling with strided loads and stores. The window sums of the
// LRN stay in registers: one pass over the rows of a window (lrn_rows.h's two passes for
// windows of more than kMaxFixedRows rows).
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../common.h"
#include "lrn_rows.h"
#include "max_pool.h"
#include "rows.h"

namespace fastcnn::cpu::relu_lrn_max_pool_detail {

using max_pool_detail::Axis;
using max_pool_detail::ImageView;

// Windows of more taps than a byte numbers are not taken (the Python side runs them as
// separate ops).
constexpr int64_t kMaxTaps = 256;

// Positions per band of the planes tiling: rows long enough to stream, few enough that the
// rings of a band stay in L1/L2.
constexpr int64_t kBandPositions = 2048;

template <typename scalar_t>
struct Args {
  using T = at::opmath_type<scalar_t>;
  ImageView<const scalar_t> x;
  int64_t batch, channels;
  const LrnConstants<T>& lrn;
  const Axis& h;
  const Axis& w;
};

template <typename scalar_t>
struct GradArgs {
  ImageView<const scalar_t> g;  // dL/dy
  ImageView<const uint8_t> positions;
  ImageView<scalar_t> dx;
};

// The LRN's arguments as the entry points take them.
struct LrnArgs {
  int64_t size;
  double alpha, beta, k;
};

// The drivers (relu_lrn_max_pool.cpp and relu_lrn_max_pool_backward.cpp), for every dtype
// and layout; the arguments are checked by the entry points.
void forward(const at::Tensor& input, const at::Tensor& output,
             const std::optional<at::Tensor>& positions, const LrnArgs& lrn, const Axis& h,
             const Axis& w);
void backward(const at::Tensor& input, const at::Tensor& grad_output,
              const at::Tensor& positions, const at::Tensor& grad_input, const LrnArgs& lrn,
              const Axis& h, const Axis& w);

// Internal linkage on purpose, as in rows.h: each file gets its own multi-versioned copies.
namespace {

// Window rows summed in registers, in one pass; wider windows take lrn_rows.h's two passes.
constexpr int kMaxFixedRows = 8;

// ---------------------------------------------------------------------------------------
// Lane kernels.
// ---------------------------------------------------------------------------------------

// dst[i] = max(src[i * stride], 0) as T; NaN stays NaN, as torch.relu.
template <typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void load_relu_row(const scalar_t* src, int64_t stride, T* __restrict dst,
                                         int64_t n) {
  if (stride == 1) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const T v = static_cast<T>(src[i]);
      dst[i] = v < T(0) ? T(0) : v;
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T v = static_cast<T>(src[i * stride]);
    dst[i] = v < T(0) ? T(0) : v;
  }
}

// The sum over kRows rows of row[i]^2 (kSquare) or row[i], in row order.
template <int kRows, bool kSquare, typename T>
FASTCNN_INLINE T window_at(const T* const* rows, int64_t i) {
  T s = kSquare ? rows[0][i] * rows[0][i] : rows[0][i];
  for (int r = 1; r < kRows; ++r) s += kSquare ? rows[r][i] * rows[r][i] : rows[r][i];
  return s;
}

// Calls f(i, q, s) for i < n with s = k + alpha/size * (the sum over the kRows window rows
// of row[i]^2) and q = s^beta, in one vectorised loop per kind of exponent (as lrn_rows.h's
// for_each_power, with the sums in registers).
template <int kRows, typename T, typename F>
FASTCNN_INLINE void for_each_window_power(const LrnConstants<T>& p, const T* const* window,
                                          int64_t n, F f) {
  const T* rows[kRows];
  for (int r = 0; r < kRows; ++r) rows[r] = window[r];
  const T k = p.k;
  const T a = p.alpha_over_size;
  switch (p.power.kind) {
    case PowerKind::kZero:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) f(i, T(1), k + a * window_at<kRows, true>(rows, i));
      break;
    case PowerKind::kThreeQuarters:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T s = k + a * window_at<kRows, true>(rows, i);
        f(i, power_three_quarters(s), s);
      }
      break;
    case PowerKind::kGeneral: {
      const double beta = p.power.beta;
      const T negative_base_factor = static_cast<T>(p.power.negative_base_factor);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T s = k + a * window_at<kRows, true>(rows, i);
        f(i, power_general(s, beta, negative_base_factor), s);
      }
      break;
    }
  }
}

// z = r / s^beta over n lanes, from the kRows rows of r's window.
template <int kRows, typename T>
FASTCNN_TARGET_CLONES void lrn_lanes(const LrnConstants<T>& p, const T* const* window,
                                     const T* __restrict r, T* __restrict z, int64_t n) {
  for_each_window_power<kRows>(p, window, n, [&](int64_t i, T q, T) { z[i] = r[i] / q; });
}

// The gradient terms of a channel: g_over_q = g / s^beta and t = g r / (s^beta s).
template <int kRows, typename T>
FASTCNN_TARGET_CLONES void lrn_terms_lanes(const LrnConstants<T>& p, const T* const* window,
                                           const T* __restrict r, const T* __restrict g,
                                           T* __restrict g_over_q, T* __restrict t, int64_t n) {
  for_each_window_power<kRows>(p, window, n, [&](int64_t i, T q, T s) {
    const T gq = g[i] / q;
    g_over_q[i] = gq;
    t[i] = gq * r[i] / s;
  });
}

// dx = g_over_q - coef r sum(t over the kRows rows of the transposed window) where r > 0
// or is NaN, else 0 (r = relu(x) <= 0 exactly where x <= 0), stored as scalar_t.
template <int kRows, typename T, typename scalar_t>
FASTCNN_TARGET_CLONES void lrn_grad_lanes(T coef, const T* const* t_window,
                                          const T* __restrict r, const T* __restrict g_over_q,
                                          scalar_t* __restrict dx, int64_t n) {
  const T* rows[kRows];
  for (int i = 0; i < kRows; ++i) rows[i] = t_window[i];
  // With beta == 0 the cross term is exactly zero, as in torch.pow's gradient, even
  // where t is not finite (s == 0).
  const bool has_cross_term = coef != T(0);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T cross = has_cross_term ? coef * r[i] * window_at<kRows, false>(rows, i) : T(0);
    dx[i] = static_cast<scalar_t>(r[i] <= T(0) ? T(0) : g_over_q[i] - cross);
  }
}

// f(std::integral_constant<int, count>) for counts up to kMaxFixedRows, else f of 0.
template <typename F>
FASTCNN_INLINE void with_row_count(int64_t count, F f) {
  switch (count) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    case 3: return f(std::integral_constant<int, 3>());
    case 4: return f(std::integral_constant<int, 4>());
    case 5: return f(std::integral_constant<int, 5>());
    case 6: return f(std::integral_constant<int, 6>());
    case 7: return f(std::integral_constant<int, 7>());
    case 8: return f(std::integral_constant<int, 8>());
    default: return f(std::integral_constant<int, 0>());
  }
}

// ---------------------------------------------------------------------------------------
// The LRN of a row of lanes from its channel window's rows, in any window width.
// `sums` (n lanes) is only used by windows of more than kMaxFixedRows rows.
// ---------------------------------------------------------------------------------------

template <typename T>
void relu_lrn(const LrnConstants<T>& p, Rows<T> window, const T* r, T* z, T* sums, int64_t n) {
  with_row_count(window.count, [&](auto rows) {
    if constexpr (rows.value == 0) {
      window_sum<true>(window, sums, n);
      forward_row(p, r, static_cast<const T*>(sums), z, n);
    } else {
      lrn_lanes<rows.value>(p, window.rows, r, z, n);
    }
  });
}

template <typename T>
void relu_lrn_terms(const LrnConstants<T>& p, Rows<T> window, const T* r, const T* g,
                    T* g_over_q, T* t, T* sums, int64_t n) {
  with_row_count(window.count, [&](auto rows) {
    if constexpr (rows.value == 0) {
      window_sum<true>(window, sums, n);
      backward_terms_row(p, r, g, static_cast<const T*>(sums), g_over_q, t, n);
    } else {
      lrn_terms_lanes<rows.value>(p, window.rows, r, g, g_over_q, t, n);
    }
  });
}

template <typename T, typename scalar_t>
void relu_lrn_grad(T coef, Rows<T> t_window, const T* r, const T* g_over_q, scalar_t* dx,
                   T* sums, int64_t n) {
  with_row_count(t_window.count, [&](auto rows) {
    if constexpr (rows.value == 0) {  // the window's sums, then as one row
      window_sum<false>(t_window, sums, n);
      const T* summed = sums;
      lrn_grad_lanes<1>(coef, &summed, r, g_over_q, dx, n);
    } else {
      lrn_grad_lanes<rows.value>(coef, t_window.rows, r, g_over_q, dx, n);
    }
  });
}

// ---------------------------------------------------------------------------------------
// Tiling helpers.
// ---------------------------------------------------------------------------------------

// Rows of `width` lanes for channel j in slot j % slots.
template <typename T>
struct ChannelRing {
  int64_t slots, width;
  std::vector<T> data;

  ChannelRing(int64_t slots_, int64_t width_)
      : slots(slots_), width(width_), data(slots_ * width_, T(0)) {}
  T* row(int64_t channel) { return data.data() + (channel % slots) * width; }
};

// The rows of channels [first, last] of `ring`, clipped to [0, channels), into `out`.
template <typename T>
Rows<T> ring_window(ChannelRing<T>& ring, int64_t first, int64_t last, int64_t channels,
                    std::vector<const T*>& out) {
  out.clear();
  for (int64_t j = std::max<int64_t>(first, 0); j <= std::min(last, channels - 1); ++j) {
    out.push_back(ring.row(j));
  }
  return {out.data(), static_cast<int64_t>(out.size())};
}

// Whether rows [first_row, first_row + rows) of a plane of `width` columns are one run.
template <typename scalar_t>
bool band_is_one_run(const ImageView<scalar_t>& t, int64_t rows, int64_t width) {
  return t.stride_w == 1 && (t.stride_h == width || rows == 1);
}

// relu(x) of input rows [first_row, first_row + rows) of channel c, as one run of T.
template <typename scalar_t, typename T>
void load_relu_band(const ImageView<const scalar_t>& x, int64_t n, int64_t c, int64_t first_row,
                    int64_t rows, int64_t width, T* dst) {
  if (band_is_one_run(x, rows, width)) {
    load_relu_row(x.at(n, c, first_row, 0), 1, dst, rows * width);
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {
    load_relu_row(x.at(n, c, first_row + r, 0), x.stride_w, dst + r * width, width);
  }
}

// Asks the cache for input rows [first_row, first_row + rows) of channel c: the next
// channel's band is fetched while this one is computed (each channel's band is a separate
// run of memory, whose start the hardware prefetchers would wait for).
template <typename scalar_t>
void prefetch_band(const ImageView<const scalar_t>& x, int64_t n, int64_t c, int64_t first_row,
                   int64_t rows, int64_t width) {
  constexpr int64_t kLine = 64 / sizeof(scalar_t);
  const bool one_run = band_is_one_run(x, rows, width);
  for (int64_t r = 0; r < (one_run ? 1 : rows); ++r) {
    const scalar_t* row = x.at(n, c, first_row + r, 0);
    const int64_t extent = one_run ? rows * width : (width - 1) * x.stride_w + 1;
    for (int64_t i = 0; i < extent; i += kLine) __builtin_prefetch(row + i, 0, 2);
  }
}

// `total` rows split into `parts` bands of `size` rows (the last may be shorter): bands of
// at most `most` rows, and enough of them over the batch for every thread.
struct Bands {
  int64_t size, parts;

  Bands(int64_t total, int64_t most, int64_t batch) {
    const int64_t threads = at::get_num_threads();
    const int64_t wanted = std::max<int64_t>(1, (2 * threads + batch - 1) / batch);
    most = std::max<int64_t>(1, most);
    parts = std::max((total + most - 1) / most, std::min(wanted, total));
    size = (total + parts - 1) / parts;
    parts = (total + size - 1) / size;
  }
};

}  // namespace
}  // namespace fastcnn::cpu::relu_lrn_max_pool_detail
