// The plain path of max-pooling inference (see max_pool.h).
//
// Inference on planes of contiguous rows, when the plane holds no NaN: each output row is
// the maximum down its windows' input rows (long unit-stride runs), then across each
// window's columns of that row of maxima. With no NaN to carry and no winner to record,
// one vector max is the whole scan step, and a row costs a few loops, not one per tap.
#include <algorithm>
#include <cstdint>

#include "max_pool.h"

namespace fastcnn::cpu::max_pool_detail {
namespace {

// Input rows one output row may reach for this path to take it.
constexpr int64_t kMaxPlainRows = 16;

// v[i] = the maximum of rows[t][i] over t < count (>= 1), for n lanes.
template <typename T>
FASTCNN_TARGET_CLONES void max_down(const T* const* rows, int64_t count, T* __restrict v,
                                    int64_t n) {
  if (count == 3) {  // 3x3 windows away from the edges: one pass, in registers
    const T* __restrict a = rows[0];
    const T* __restrict b = rows[1];
    const T* __restrict c = rows[2];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      T m = a[i];
      m = b[i] > m ? b[i] : m;
      m = c[i] > m ? c[i] : m;
      v[i] = m;
    }
    return;
  }
  std::copy(rows[0], rows[0] + n, v);
  for (int64_t t = 1; t < count; ++t) {
    const T* __restrict r = rows[t];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) v[i] = r[i] > v[i] ? r[i] : v[i];
  }
}

// y[o] = the maximum of v[kStride o + k] over k < kKernel, for o < n.
template <typename T, int kKernel, int kStride>
FASTCNN_TARGET_CLONES void max_across(const T* __restrict v, T* __restrict y, int64_t n) {
#pragma omp simd
  for (int64_t o = 0; o < n; ++o) {
    T m = v[kStride * o];
    for (int k = 1; k < kKernel; ++k) m = v[kStride * o + k] > m ? v[kStride * o + k] : m;
    y[o] = m;
  }
}

// Whether the sum of the n values at x is NaN: always when one of them is (and, rarely,
// when infinities of both signs meet, which costs only the exact path's time).
template <typename T>
FASTCNN_TARGET_CLONES bool sum_is_nan(const T* __restrict x, int64_t n) {
  constexpr int64_t kSums = 64;  // independent running sums: several vectors in flight
  T sums[kSums] = {};
  int64_t i = 0;
  for (; i + kSums <= n; i += kSums) {
#pragma omp simd
    for (int64_t j = 0; j < kSums; ++j) sums[j] += x[i + j];
  }
  T sum = 0;
  for (; i < n; ++i) sum += x[i];
  for (int64_t j = 0; j < kSums; ++j) sum += sums[j];
  return sum != sum;
}

constexpr int64_t kCacheLine = 64;

}  // namespace

// The row pass across windows of this shape, or nullptr where the plain path does not go.
template <typename T>
PlainAcross<T> plain_across(const Axis& aw) {
  if (aw.dilation != 1) return nullptr;
  if (aw.kernel == 3 && aw.stride == 2) return max_across<T, 3, 2>;
  if (aw.kernel == 3 && aw.stride == 1) return max_across<T, 3, 1>;
  if (aw.kernel == 2 && aw.stride == 2) return max_across<T, 2, 2>;
  return nullptr;
}

// Whether every window of the axis has a tap in the input and the path's row table holds
// its taps.
bool every_window_reaches_input(const Axis& a) {
  for (int64_t o = 0; o < a.out; ++o) {
    if (a.first_tap[o] >= a.end_tap[o]) return false;
  }
  return a.kernel <= kMaxPlainRows;
}

// Lanes of v that plain_plane may use.
int64_t plain_row_lanes(const Axis& aw) {
  return aw.in + kVectorLanes + aw.stride * (aw.padded_out + kVectorLanes) + aw.kernel;
}

// The plain path for one plane: x's rows x_stride_h apart (each contiguous), y's rows
// y_stride_h apart (each contiguous), v a buffer of plain_row_lanes(aw), `next` the
// input plane computed after this one (or nullptr). Returns false,
// with y written but wrong, when the plane may hold a NaN: the caller then redoes it
// exactly.
//
// Rows are run over in whole vectors where the overshoot stays inside the plane: past
// an input row's end the next row is read (and ignored); past an output row's end, the
// next row is written over before that row is computed. The last rows, whose overshoot
// would leave the plane, run over their exact length.
template <typename T>
bool plain_plane(const T* x, int64_t x_stride_h, T* y, int64_t y_stride_h, const Axis& ah,
                 const Axis& aw, PlainAcross<T> across, T* v, const T* next) {
  // The next plane (when it is one run of memory) is asked into the cache a share per
  // output row: streaming from L3 or memory, that takes a fifth off the time here.
  const int64_t next_lines =
      next != nullptr && x_stride_h == aw.in
          ? (ah.in * aw.in * static_cast<int64_t>(sizeof(T)) + kCacheLine - 1) / kCacheLine
          : 0;
  const int64_t lines_per_row = (next_lines + ah.out - 1) / ah.out;
  const auto whole = [](int64_t n) { return (n + kVectorLanes - 1) / kVectorLanes * kVectorLanes; };
  const int64_t in_lanes = whole(aw.in);
  const int64_t interior = aw.interior_end - aw.interior_begin;
  const int64_t out_lanes = whole(interior);
  // input rows [0, in_rows_whole) can be read over in_lanes, output rows [0,
  // out_rows_whole) written over out_lanes: the rows r with r * row + lanes <= size (none
  // when lanes > size, where C++'s division, rounding toward zero, would give one)
  const auto rows_within = [](int64_t size, int64_t lanes, int64_t row) -> int64_t {
    return size >= lanes ? (size - lanes) / row + 1 : 0;
  };
  const int64_t in_rows_whole = x_stride_h == aw.in ? rows_within(ah.in * aw.in, in_lanes, aw.in)
                                                    : 0;
  const int64_t out_rows_whole =
      y_stride_h == aw.out
          ? rows_within(ah.out * aw.out - aw.interior_begin, out_lanes, aw.out)
          : 0;
  const T* rows[kMaxPlainRows];
  for (int64_t oh = 0; oh < ah.out; ++oh) {
    const int64_t k0 = ah.first_tap[oh], k1 = ah.end_tap[oh];
    for (int64_t k = k0; k < k1; ++k) rows[k - k0] = x + (ah.start(oh) + k * ah.dilation) * x_stride_h;
    const int64_t last_row = ah.start(oh) + (k1 - 1) * ah.dilation;
    for (int64_t l = oh * lines_per_row; l < std::min(next_lines, (oh + 1) * lines_per_row); ++l) {
#if defined(__GNUC__)
      __builtin_prefetch(reinterpret_cast<const char*>(next) + kCacheLine * l, 0, 2);
#endif
    }
    max_down(rows, k1 - k0, v, last_row < in_rows_whole ? in_lanes : aw.in);
    T* out = y + oh * y_stride_h;
    across(v + aw.start(aw.interior_begin), out + aw.interior_begin,
           oh < out_rows_whole ? out_lanes : interior);
    const auto edge = [&](int64_t o) {  // a window over the row's ends: its taps inside
      const T* tap = v + aw.start(o);
      T m = tap[aw.first_tap[o] * aw.dilation];
      for (int64_t k = aw.first_tap[o] + 1; k < aw.end_tap[o]; ++k) {
        m = tap[k * aw.dilation] > m ? tap[k * aw.dilation] : m;
      }
      out[o] = m;
    };
    for (int64_t o = 0; o < aw.interior_begin; ++o) edge(o);
    for (int64_t o = aw.interior_end; o < aw.out; ++o) edge(o);
  }
  if (x_stride_h == aw.in) return !sum_is_nan(x, ah.in * aw.in);
  for (int64_t h = 0; h < ah.in; ++h) {
    if (sum_is_nan(x + h * x_stride_h, aw.in)) return false;
  }
  return true;
}


template PlainAcross<float> plain_across<float>(const Axis&);
template PlainAcross<double> plain_across<double>(const Axis&);
template bool plain_plane<float>(const float*, int64_t, float*, int64_t, const Axis&,
                                 const Axis&, PlainAcross<float>, float*, const float*);
template bool plain_plane<double>(const double*, int64_t, double*, int64_t, const Axis&,
                                  const Axis&, PlainAcross<double>, double*, const double*);

}  // namespace fastcnn::cpu::max_pool_detail
