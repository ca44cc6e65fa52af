// 2-d max-pooling of (N, C, H, W) into (N, C, OH, OW) on CPU tensors, forward and backward.
//
// The window of output (oh, ow) has the taps (kh, kw), kh < KH and kw < KW, at input row
// oh * stride_h - pad_h + kh * dilation_h and column ow * stride_w - pad_w + kw * dilation_w;
// taps outside the input are skipped. The results are PyTorch's, bit for bit: the taps are
// scanned in row-major order from (-inf, first tap in bounds), and a tap replaces the
// running maximum when v > max or v is NaN. So the first maximum wins a tie, the last NaN
// wins over everything, and a window of -inf reports its first tap in bounds.
//
// Forward optionally writes each winner's position in its window, kh * KW + kw (one byte
// when KH * KW <= 256): that is all backward needs. Backward gathers, for every input
// element, the gradients of the windows that picked it, adding them in the order of
// increasing (oh, ow) as PyTorch's scatter does: deterministic, without atomics.
//
// Two tilings; the vector lanes run along the axis that is contiguous in memory:
//   planes (NCHW): the lanes run along a row, over blocks of rows of one plane at a time
//     (so that one call does a block's worth of work and the rows stay in L2). Forward is
//     separable: the horizontal windows of every input row of the block first, then the
//     maximum down the KH rows of each window. Rows first, then columns, is the row-major
//     scan: each row's scan yields its first maximum (or its last NaN), and scanning
//     those in row order yields the window's. Strided taps read a copy of the rows split
//     by column phase (index modulo stride_w), where each tap of a row's windows is one
//     unit-stride run. Backward sums each phase of a row's columns in registers: within
//     a phase, the columns that tap kw of the windows reaches form a contiguous run, as
//     do the outputs it comes from.
//     Inference (values only) on planes of contiguous rows that hold no NaN takes a
//     shorter road, plain_plane: the maximum down each output row's input rows first,
//     then across, with plain vector maxima (order and ties no longer matter).
//   pixels (channels_last): the lanes run along channels, and each window is KH * KW
//     channel rows combined in scan order.
#include <algorithm>
#include <functional>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../common.h"
#include "ops.h"
#include "rows.h"

namespace fastcnn::cpu {
namespace {

// Row buffers are rounded up to this many lanes (a 512-bit vector of float32), so that the
// loops over a row, often shorter than 64 lanes here, have no scalar remainder.
constexpr int64_t kVectorLanes = 16;

// Windows (and strides) of at most this many taps along a row run over the row's split
// into column phases (SplitRows), whose size grows with both; wider ones scan each window's
// taps in the input one by one.
constexpr int64_t kMaxTableTaps = 64;

// ceil(a / b) for b > 0 and any a.
int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? (a + b - 1) / b : -(-a / b); }

// One spatial axis of the pooling, and what every plane shares along it: the taps of each
// output that lie in the input, and the windows over each input. Planned once per call,
// so that no kernel loop divides. Kernel, stride, padding and dilation may each be up to
// 2^31 - 1, so every plan and buffer is sized by the input and output, never by them:
// only the taps that land in the input are ever listed or visited.
struct Axis {
  int64_t in;  // input size
  int64_t out;  // output size
  int64_t kernel;
  int64_t stride;
  int64_t pad;
  int64_t dilation;
  // outputs [interior_begin, interior_end) have every tap in the input
  int64_t interior_begin;
  int64_t interior_end;
  // out rounded up to whole vectors
  int64_t padded_out;
  // the most taps of one window that lie in the input
  int64_t max_taps = 0;
  // whether rows run over their column phases (row_windows): narrow windows and strides
  // whose span fits in the input and its padding
  bool tabled;
  std::vector<int64_t> first_tap, end_tap;  // per output: its taps in the input
  // per input i, covers[cover_begin[i] .. cover_begin[i + 1]) are the windows over it as
  // (tap, output) by increasing output
  std::vector<int64_t> cover_begin;
  std::vector<std::pair<int64_t, int64_t>> covers;

  Axis(int64_t in_, int64_t out_, int64_t kernel_, int64_t stride_, int64_t pad_,
       int64_t dilation_)
      : in(in_), out(out_), kernel(kernel_), stride(stride_), pad(pad_), dilation(dilation_) {
    for (int64_t o = 0; o < out; ++o) {
      const int64_t s = start(o);
      first_tap.push_back(s >= 0 ? 0 : (-s + dilation - 1) / dilation);
      const int64_t room = in - 1 - s;
      end_tap.push_back(room < 0 ? 0 : std::min(kernel, room / dilation + 1));
      max_taps = std::max(max_taps, end_tap.back() - first_tap.back());
    }
    tabled = kernel <= kMaxTableTaps && stride <= kMaxTableTaps && span() <= in + 2 * pad + stride;
    interior_begin = std::min(out, (pad + stride - 1) / stride);
    const int64_t room = in - 1 + pad - (kernel - 1) * dilation;
    interior_end = room < 0 ? interior_begin : std::clamp(room / stride + 1, interior_begin, out);
    padded_out = (out + kVectorLanes - 1) / kVectorLanes * kVectorLanes;

    for (int64_t i = 0; i < in; ++i) {
      cover_begin.push_back(static_cast<int64_t>(covers.size()));
      add_covers(i);
    }
    cover_begin.push_back(static_cast<int64_t>(covers.size()));
  }

  // Appends the windows over input i by increasing output: o * stride + k * dilation =
  // i + pad with o < out and k < kernel, found along whichever of k and o has the shorter
  // range (both are bounded by the output size).
  void add_covers(int64_t i) {
    const int64_t t = i + pad;
    const int64_t k_lo = std::max<int64_t>(0, ceil_div(t - (out - 1) * stride, dilation));
    const int64_t k_hi = std::min(kernel - 1, t / dilation);
    const int64_t o_lo = std::max<int64_t>(0, ceil_div(t - (kernel - 1) * dilation, stride));
    const int64_t o_hi = std::min(out - 1, t / stride);
    if (k_hi - k_lo <= o_hi - o_lo) {
      for (int64_t k = k_hi; k >= k_lo; --k) {
        if ((t - k * dilation) % stride == 0) covers.emplace_back(k, (t - k * dilation) / stride);
      }
    } else {
      for (int64_t o = o_lo; o <= o_hi; ++o) {
        if ((t - o * stride) % dilation == 0) covers.emplace_back((t - o * stride) / dilation, o);
      }
    }
  }

  int64_t start(int64_t o) const { return o * stride - pad; }
  // The taps that land in the input in some window, by decreasing k.
  std::vector<int64_t> taps_in_input() const {
    std::vector<int64_t> taps;
    for (const auto& cover : covers) taps.push_back(cover.first);
    std::sort(taps.begin(), taps.end(), std::greater<>());
    taps.erase(std::unique(taps.begin(), taps.end()), taps.end());
    return taps;
  }
  int64_t span() const { return (kernel - 1) * dilation + 1; }
  // Calls f(k, o) for the windows over input i, by increasing o.
  template <typename F>
  void for_each_cover(int64_t i, F f) const {
    for (int64_t c = cover_begin[i]; c < cover_begin[i + 1]; ++c) f(covers[c].first, covers[c].second);
  }
};

// A 4-d tensor seen through its strides, in elements.
template <typename T>
struct ImageView {
  T* data;
  int64_t stride_n, stride_c, stride_h, stride_w;

  explicit ImageView(const at::Tensor& t)
      : data(static_cast<T*>(t.data_ptr())),
        stride_n(t.stride(0)),
        stride_c(t.stride(1)),
        stride_h(t.stride(2)),
        stride_w(t.stride(3)) {}

  T* at(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return data + n * stride_n + c * stride_c + h * stride_h + w * stride_w;
  }
};

template <typename T>
constexpr T kMinusInf = -std::numeric_limits<T>::infinity();

// ---------------------------------------------------------------------------------------
// Lane kernels: plain loops that the compiler vectorises, compiled once per vector ISA.
// ---------------------------------------------------------------------------------------

// The scan step: v replaces the running maximum when it is larger or NaN.
template <typename T>
FASTCNN_INLINE bool replaces(T v, T max) {
  return v > max || v != v;
}

// For n lanes, the maximum over `count` taps in scan order: m[i] from taps[t][i], and
// p[i] the winner's code, codes[t].
template <typename T, bool kPositions>
FASTCNN_TARGET_CLONES void max_of_taps(const T* const* taps, const int32_t* codes,
                                       int64_t count, T* __restrict m, int32_t* __restrict p,
                                       int64_t n) {
  constexpr int64_t kBlock = 64;  // lanes whose running maxima stay in registers
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t width = std::min(kBlock, n - i0);
    alignas(64) T best[kBlock];
    alignas(64) int32_t winner[kBlock];
    {
      const T* v = taps[0] + i0;
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) {
        best[i] = v[i];
        if constexpr (kPositions) winner[i] = codes[0];
      }
    }
    for (int64_t t = 1; t < count; ++t) {
      const T* v = taps[t] + i0;
      const int32_t code = codes[t];
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) {
        const bool take = replaces(v[i], best[i]);
        best[i] = take ? v[i] : best[i];
        if constexpr (kPositions) winner[i] = take ? code : winner[i];
      }
    }
    std::copy(best, best + width, m + i0);
    if constexpr (kPositions) std::copy(winner, winner + width, p + i0);
  }
}

// The scan over three taps (a, b, c in scan order) of n lanes in one loop: the common
// case of 3x3 windows, whose running maxima then never leave registers. The winners'
// codes are code_* (+ the taps' own positions pa, pb, pc with kTapPositions).
template <typename T, bool kPositions, bool kTapPositions>
FASTCNN_INLINE void max_of_three(const T* __restrict a, const T* __restrict b,
                                 const T* __restrict c, const int32_t* pa, const int32_t* pb,
                                 const int32_t* pc, int32_t code_a, int32_t code_b,
                                 int32_t code_c, T* __restrict m, int32_t* __restrict p,
                                 int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    T best = a[i];
    int32_t winner = code_a + (kTapPositions ? pa[i] : 0);
    const T vb = b[i];
    const bool take_b = replaces(vb, best);
    best = take_b ? vb : best;
    if constexpr (kPositions) winner = take_b ? code_b + (kTapPositions ? pb[i] : 0) : winner;
    const T vc = c[i];
    const bool take_c = replaces(vc, best);
    best = take_c ? vc : best;
    if constexpr (kPositions) winner = take_c ? code_c + (kTapPositions ? pc[i] : 0) : winner;
    m[i] = best;
    if constexpr (kPositions) p[i] = winner;
  }
}

// A block of input rows of one plane, flattened (row r, column w at r * in + w), split
// into `stride` phases: phase q holds the elements q, q + stride, q + 2 stride, ... after
// `margin` elements (a multiple of stride) of zeros. Then tap k of the windows of row r
// is one unit-stride run of a phase: the element of output column o is flattened element
// (r * in + o * stride - pad + k * dilation), which is element o of the run that starts
// at flattened element (r * in - pad + k * dilation); the margin keeps it in bounds.
struct SplitRows {
  int64_t stride, margin, length;  // `length` elements per phase

  // fills phases from the `count` contiguous elements at `flat`
  template <typename T>
  void split(const T* __restrict flat, int64_t count, T* __restrict phases) const {
    const int64_t skip = margin / stride;
    if (stride == 1) {
      std::copy(flat, flat + count, phases + skip);
    } else if (stride == 2) {  // a pattern the compiler vectorises
      T* even = phases + skip;
      T* odd = phases + length + skip;
      const int64_t pairs = count / 2;
#pragma omp simd
      for (int64_t j = 0; j < pairs; ++j) {
        even[j] = flat[2 * j];
        odd[j] = flat[2 * j + 1];
      }
      if (count % 2) even[pairs] = flat[count - 1];
    } else {
      for (int64_t i = 0; i < count; ++i) phases[(i % stride) * length + skip + i / stride] = flat[i];
    }
  }
};

// The horizontal windows of `rows` input rows: for each row and each output column
// o < a.padded_out, the maximum over the window's taps in that row (and which tap won),
// into m and p (rows of a.padded_out lanes). `flat` holds the rows (row r at r * a.in)
// and `phases` their split (SplitRows). The loops run over whole vectors of lanes and
// read all taps, in the input or not; lanes past a.out hold garbage, and the windows
// that hang over a row's ends are redone exactly afterwards, from `flat`. Axes that are not
// a.tabled have no split: every window is scanned over its taps in the input.
template <typename T, bool kPositions>
FASTCNN_TARGET_CLONES void row_windows(const T* __restrict flat, const T* __restrict phases,
                                       const SplitRows& layout, int64_t rows, const Axis& a,
                                       T* __restrict m, int32_t* __restrict p) {
  const int64_t kernel = a.kernel, dilation = a.dilation, stride = a.stride;
  const int64_t lanes = a.padded_out;
  constexpr int64_t kBlock = 64;  // lanes whose running maxima stay in registers
  // run of tap k of row 0 starts at flattened element (margin - pad + k dilation) =
  // phase tap_phase[k], element tap_index[k]; each row adds `in` to that
  int64_t tap_phase[kMaxTableTaps], tap_index[kMaxTableTaps];
  const int64_t taps = a.tabled ? kernel : 0;
  for (int64_t k = 0; k < taps; ++k) {
    const int64_t e = layout.margin - a.pad + k * dilation;
    tap_phase[k] = e % stride;
    tap_index[k] = e / stride;
  }
  const int64_t row_phase = a.in % stride, row_index = a.in / stride;
  for (int64_t r = 0; r < rows; ++r) {
    T* row_m = m + r * lanes;
    int32_t* row_p = p + r * lanes;
    if (a.tabled && kernel == 3) {
      const auto tap = [&](int64_t k) { return phases + tap_phase[k] * layout.length + tap_index[k]; };
      max_of_three<T, kPositions, false>(tap(0), tap(1), tap(2), nullptr, nullptr, nullptr, 0, 1,
                                         2, row_m, row_p, lanes);
    } else if (a.tabled) {
      for (int64_t o0 = 0; o0 < lanes; o0 += kBlock) {
        const int64_t width = std::min(kBlock, lanes - o0);
        alignas(64) T best[kBlock];
        alignas(64) int32_t winner[kBlock];
        for (int64_t k = 0; k < kernel; ++k) {
          const T* tap = phases + tap_phase[k] * layout.length + tap_index[k] + o0;
          if (k == 0) {
#pragma omp simd
            for (int64_t i = 0; i < width; ++i) {
              best[i] = tap[i];
              winner[i] = 0;
            }
            continue;
          }
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) {
            const T v = tap[i];
            const bool take = replaces(v, best[i]);
            best[i] = take ? v : best[i];
            if constexpr (kPositions) winner[i] = take ? static_cast<int32_t>(k) : winner[i];
          }
        }
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) {
          row_m[o0 + i] = best[i];
          if constexpr (kPositions) row_p[o0 + i] = winner[i];
        }
      }
    }
    const T* row = flat + r * a.in;
    const auto exact = [&](int64_t o) {
      T best = kMinusInf<T>;
      auto winner = static_cast<int32_t>(a.first_tap[o]);
      for (int64_t k = a.first_tap[o]; k < a.end_tap[o]; ++k) {
        const T v = row[a.start(o) + k * dilation];
        if (replaces(v, best)) {
          best = v;
          winner = static_cast<int32_t>(k);
        }
      }
      row_m[o] = best;
      if constexpr (kPositions) row_p[o] = winner;
    };
    if (a.tabled) {
      for (int64_t o = 0; o < a.interior_begin; ++o) exact(o);
      for (int64_t o = a.interior_end; o < a.out; ++o) exact(o);
    } else {  // no tap tables: every output the slow way
      for (int64_t o = 0; o < a.out; ++o) exact(o);
    }
    for (int64_t k = 0; k < taps; ++k) {  // to the next row
      tap_phase[k] += row_phase;
      tap_index[k] += row_index;
      if (tap_phase[k] >= stride) {
        tap_phase[k] -= stride;
        ++tap_index[k];
      }
    }
  }
}

// (m: rows m_stride apart, each written over `lanes` lanes, so that when m is the output
// itself a row's overshoot lands on the next row, which is written after it.)
// For output rows [oh0, oh1): the maximum down each window's rows of horizontal maxima
// (hm, hp: one row of `lanes` per input row from first_row on), in scan order, into
// rows of m and p.
template <typename T, bool kPositions>
FASTCNN_TARGET_CLONES void column_windows(const T* __restrict hm, const int32_t* __restrict hp,
                                          int64_t first_row, const Axis& ah, int64_t kernel_w,
                                          int64_t oh0, int64_t oh1, int64_t lanes,
                                          T* __restrict m, int64_t m_stride,
                                          int32_t* __restrict p) {
  constexpr int64_t kBlock = 64;
  for (int64_t oh = oh0; oh < oh1; ++oh) {
    T* out_m = m + (oh - oh0) * m_stride;
    int32_t* out_p = p + (oh - oh0) * lanes;
    const int64_t k0 = ah.first_tap[oh], k1 = ah.end_tap[oh];
    if (k0 >= k1) {  // no row in the input (only odd dilations get here): -inf, as PyTorch
      std::fill(out_m, out_m + lanes, kMinusInf<T>);
      if constexpr (kPositions) std::fill(out_p, out_p + lanes, static_cast<int32_t>(k0 * kernel_w));
      continue;
    }
    const auto row_of = [&](int64_t k) { return (ah.start(oh) + k * ah.dilation - first_row) * lanes; };
    if (k1 - k0 == 3) {
      const auto code = [&](int64_t k) { return static_cast<int32_t>(k * kernel_w); };
      max_of_three<T, kPositions, kPositions>(
          hm + row_of(k0), hm + row_of(k0 + 1), hm + row_of(k0 + 2), hp + row_of(k0),
          hp + row_of(k0 + 1), hp + row_of(k0 + 2), code(k0), code(k0 + 1), code(k0 + 2), out_m,
          out_p, lanes);
      continue;
    }
    for (int64_t o0 = 0; o0 < lanes; o0 += kBlock) {
      const int64_t width = std::min(kBlock, lanes - o0);
      alignas(64) T best[kBlock];
      alignas(64) int32_t winner[kBlock];
      {
        const T* v = hm + row_of(k0) + o0;
        const int32_t* w = hp + row_of(k0) + o0;
        const auto code = static_cast<int32_t>(k0 * kernel_w);
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) {
          best[i] = v[i];
          if constexpr (kPositions) winner[i] = code + w[i];
        }
      }
      for (int64_t k = k0 + 1; k < k1; ++k) {
        const T* v = hm + row_of(k) + o0;
        const int32_t* w = hp + row_of(k) + o0;
        const auto code = static_cast<int32_t>(k * kernel_w);
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) {
          const bool take = replaces(v[i], best[i]);
          best[i] = take ? v[i] : best[i];
          if constexpr (kPositions) winner[i] = take ? code + w[i] : winner[i];
        }
      }
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) {
        out_m[o0 + i] = best[i];
        if constexpr (kPositions) out_p[o0 + i] = winner[i];
      }
    }
  }
}

// acc[i] += g[i] where the winner p[i] is the tap `code`. (Positions are widened to
// int32 first: with bytes, the compiler's vectors would hold 64 lanes, more than a row.)
template <typename T>
FASTCNN_TARGET_CLONES void gather_lanes(const T* __restrict g, const int32_t* __restrict p,
                                        int32_t code, T* __restrict acc, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = g[i];  // loaded whether or not it is added, so that the loop vectorises
    acc[i] += p[i] == code ? v : T(0);
  }
}

// ---------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------

template <typename scalar_t, typename pos_t>
struct ForwardArgs {
  ImageView<const scalar_t> x;
  ImageView<scalar_t> y;
  ImageView<pos_t> positions;  // unused without kPositions
  int64_t batch, channels;
  const Axis& h;
  const Axis& w;
};

// Writes n lanes of maxima (and winners) to their place in y (and positions).
template <typename scalar_t, typename pos_t, bool kPositions, typename T>
FASTCNN_INLINE void store_lanes(const T* m, const int32_t* p, scalar_t* y, int64_t y_stride,
                                pos_t* positions, int64_t positions_stride, int64_t n) {
  store_row(m, y, y_stride, n);
  if constexpr (kPositions) store_row(p, positions, positions_stride, n);
}

// ---------------------------------------------------------------------------------------
// Inference on planes of contiguous rows, when the plane holds no NaN: each output row is
// the maximum down its windows' input rows (long unit-stride runs), then across each
// window's columns of that row of maxima. With no NaN to carry and no winner to record,
// one vector max is the whole scan step, and a row costs a few loops, not one per tap.
// ---------------------------------------------------------------------------------------

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

// The row pass across windows of this shape, or nullptr where the plain path does not go.
template <typename T>
auto plain_across(const Axis& aw) -> void (*)(const T*, T*, int64_t) {
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

constexpr int64_t kCacheLine = 64;

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
                 const Axis& aw, void (*across)(const T*, T*, int64_t), T* v, const T* next) {
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
  // out_rows_whole) written over out_lanes
  const int64_t in_rows_whole =
      x_stride_h == aw.in ? std::max<int64_t>(0, (ah.in * aw.in - in_lanes) / aw.in + 1) : 0;
  const int64_t out_rows_whole =
      y_stride_h == aw.out
          ? std::max<int64_t>(0, (ah.out * aw.out - aw.interior_begin - out_lanes) / aw.out + 1)
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

// Output rows per block of a plane: the block's input rows, their split and their
// horizontal maxima stay in L2.
int64_t output_rows_per_block(const Axis& ah, const Axis& aw, int64_t element_size) {
  constexpr int64_t kBudget = 256 * 1024;
  const int64_t per_input_row = element_size * (2 * aw.in + aw.padded_out) + 4 * aw.padded_out;
  const int64_t input_rows = std::max(ah.span(), kBudget / std::max<int64_t>(per_input_row, 1));
  return std::clamp((input_rows - ah.span()) / ah.stride + 1, int64_t{1}, ah.out);
}

template <typename scalar_t, typename pos_t, bool kPositions>
void forward_planes(const ForwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const int64_t lanes = aw.padded_out;
  const int64_t block = output_rows_per_block(ah, aw, sizeof(T));
  const int64_t max_rows = std::min(ah.in, (block - 1) * ah.stride + ah.span());
  // rows used where they lie when they are one contiguous run of T, else converted
  const bool in_place = std::is_same_v<T, scalar_t> && args.x.stride_w == 1 &&
                        (args.x.stride_h == aw.in || ah.in == 1);
  const bool direct = std::is_same_v<T, scalar_t> && args.y.stride_w == 1 &&
                      args.y.stride_h == aw.out;
  // rows oh < direct_row_end have oh * out + lanes <= the plane's size
  const int64_t plane_size = ah.out * aw.out;
  const int64_t direct_row_end = plane_size >= lanes ? (plane_size - lanes) / aw.out + 1 : 0;
  SplitRows layout;
  layout.stride = aw.stride;
  layout.margin = (aw.pad / aw.stride + 1) * aw.stride;
  layout.length = (layout.margin + max_rows * aw.in + aw.span()) / aw.stride + lanes + 1;
  // the plain path (values of planes without NaN), where it goes
  const auto across = plain_across<T>(aw);
  const bool plain = !kPositions && in_place && args.y.stride_w == 1 && across != nullptr &&
                     every_window_reaches_input(ah) && every_window_reaches_input(aw);
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> converted(in_place ? 0 : max_rows * aw.in);
    std::vector<T> phases(aw.tabled ? aw.stride * layout.length : 0), hm(max_rows * lanes),
        m(block * lanes);
    std::vector<int32_t> hp(kPositions ? max_rows * lanes : 0), p(kPositions ? block * lanes : 0);
    std::vector<T> v(plain ? plain_row_lanes(aw) : 0);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      if constexpr (std::is_same_v<T, scalar_t>) {
        const T* next = plane + 1 < end ? args.x.at((plane + 1) / args.channels,
                                                    (plane + 1) % args.channels, 0, 0)
                                        : nullptr;
        if (plain && plain_plane<T>(args.x.at(n, c, 0, 0), args.x.stride_h, args.y.at(n, c, 0, 0),
                                    args.y.stride_h, ah, aw, across, v.data(), next)) {
          continue;
        }
      }
      for (int64_t oh0 = 0; oh0 < ah.out; oh0 += block) {
        const int64_t oh1 = std::min(ah.out, oh0 + block);
        // the input rows the block's windows reach
        const int64_t first_row = std::max<int64_t>(0, ah.start(oh0));
        const int64_t last_row = std::min(ah.in - 1, ah.start(oh1 - 1) + (ah.kernel - 1) * ah.dilation);
        const int64_t rows = std::max<int64_t>(0, last_row - first_row + 1);
        const T* flat;
        if constexpr (std::is_same_v<T, scalar_t>) {
          if (in_place) flat = args.x.at(n, c, first_row, 0);
        }
        if (!in_place) {
          for (int64_t r = 0; r < rows; ++r) {
            load_row(args.x.at(n, c, first_row + r, 0), args.x.stride_w,
                     converted.data() + r * aw.in, aw.in);
          }
          flat = converted.data();
        }
        if (aw.tabled) layout.split(flat, rows * aw.in, phases.data());
        row_windows<T, kPositions>(flat, phases.data(), layout, rows, aw, hm.data(), hp.data());
        // values go straight to a contiguous output plane, in the rows whose overshoot
        // stays inside the plane (it lands on rows written after them)
        const int64_t direct_rows =
            direct ? std::clamp(direct_row_end - oh0, int64_t{0}, oh1 - oh0) : 0;
        if (direct_rows > 0) {
          if constexpr (std::is_same_v<T, scalar_t>) {
            column_windows<T, kPositions>(hm.data(), hp.data(), first_row, ah, aw.kernel, oh0,
                                          oh0 + direct_rows, lanes, args.y.at(n, c, oh0, 0),
                                          aw.out, p.data());
          }
        }
        if (direct_rows < oh1 - oh0) {
          column_windows<T, kPositions>(
              hm.data(), hp.data(), first_row, ah, aw.kernel, oh0 + direct_rows, oh1, lanes,
              m.data() + direct_rows * lanes, lanes, p.data() + direct_rows * lanes);
        }
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          if (oh - oh0 >= direct_rows) {
            store_row(m.data() + (oh - oh0) * lanes, args.y.at(n, c, oh, 0), args.y.stride_w,
                      aw.out);
          }
          if constexpr (kPositions) {
            store_row(p.data() + (oh - oh0) * lanes, args.positions.at(n, c, oh, 0),
                      args.positions.stride_w, aw.out);
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename pos_t, bool kPositions>
void forward_pixels(const ForwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const int64_t lanes = args.channels, window = ah.max_taps * aw.max_taps;
  at::parallel_for(0, args.batch * ah.out, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> converted(std::is_same_v<T, scalar_t> && args.x.stride_c == 1 ? 0 : window * lanes);
    std::vector<T> m(lanes);
    std::vector<int32_t> p(kPositions ? lanes : 0), codes(window);
    std::vector<const T*> taps(window);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / ah.out, oh = row % ah.out;
      for (int64_t ow = 0; ow < aw.out; ++ow) {
        int64_t count = 0;
        for (int64_t kh = ah.first_tap[oh]; kh < ah.end_tap[oh]; ++kh) {
          const int64_t ih = ah.start(oh) + kh * ah.dilation;
          for (int64_t kw = aw.first_tap[ow]; kw < aw.end_tap[ow]; ++kw, ++count) {
            const int64_t iw = aw.start(ow) + kw * aw.dilation;
            taps[count] = lanes_of<T>(args.x.at(n, 0, ih, iw), args.x.stride_c,
                                      converted.data() + count * lanes, lanes);
            codes[count] = static_cast<int32_t>(kh * aw.kernel + kw);
          }
        }
        if (count == 0) {  // no tap in bounds (odd dilations): -inf
          std::fill(m.begin(), m.end(), kMinusInf<T>);
          std::fill(p.begin(), p.end(),
                    static_cast<int32_t>(ah.first_tap[oh] * aw.kernel + aw.first_tap[ow]));
        } else {
          max_of_taps<T, kPositions>(taps.data(), codes.data(), count, m.data(),
                                     p.data(), lanes);
        }
        store_lanes<scalar_t, pos_t, kPositions>(
            m.data(), p.data(), args.y.at(n, 0, oh, ow), args.y.stride_c,
            args.positions.at(n, 0, oh, ow), args.positions.stride_c, lanes);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------

template <typename scalar_t, typename pos_t>
struct BackwardArgs {
  ImageView<const scalar_t> g;  // dL/dy
  ImageView<const pos_t> positions;
  ImageView<scalar_t> dx;
  int64_t batch, channels;
  const Axis& h;
  const Axis& w;
};

// How the input columns of a row gather from its windows. The columns of phase r
// (iw = r + j * stride) take tap kw of output ow = j - shift for each of the taps of
// that phase; each phase's taps are listed by decreasing kw, so that a column sums its
// windows by increasing ow, as PyTorch's scatter does.
struct ColumnGather {
  struct Tap {
    int32_t kw;
    int64_t shift;
  };
  std::vector<std::vector<Tap>> taps;  // per phase
  std::vector<int64_t> columns;  // input columns per phase
  int64_t front = 0;  // room before output 0 in a padded row of dL/dy, for ow < 0
  int64_t row_length = 0;  // of a padded row of dL/dy (or positions)

  explicit ColumnGather(const Axis& a) {
    const int64_t phases = std::min(a.stride, a.in);
    taps.resize(phases);
    for (int64_t r = 0; r < phases; ++r) columns.push_back((a.in - r + a.stride - 1) / a.stride);
    int64_t back = 0;
    for (const int64_t kw : a.taps_in_input()) {  // the others gather nothing
      const int64_t offset = kw * a.dilation - a.pad;  // input column of tap kw of output 0
      const int64_t phase = ((offset % a.stride) + a.stride) % a.stride;
      if (phase >= phases) continue;
      const int64_t shift = (offset - phase) / a.stride;
      taps[phase].push_back({static_cast<int32_t>(kw), shift});
      front = std::max(front, shift);
      back = std::max(back, rounded(columns[phase]) - shift);
    }
    front = rounded(front);
    row_length = front + rounded(std::max(back, a.out));
  }

  static int64_t rounded(int64_t n) { return (n + kVectorLanes - 1) / kVectorLanes * kVectorLanes; }
};

// Input rows [ih0, ih1) of dL/dx (rows of aw.in lanes, into dx), gathered from the rows
// of dL/dy and positions (g and p: a padded row of cg.row_length per output row from
// first_out on, output ow at cg.front + ow, zeros and -1 around). Each phase's columns
// are summed in registers over whole vectors of lanes (the padding makes the reads past
// a row's outputs add nothing), then the phases are interleaved into the row.
// One window tap that a run of input columns gathers from: the run of outputs at
// `offset` in the block's padded rows of dL/dy and positions, and the code the tap must
// have won with.
struct GatherTerm {
  int64_t offset;
  int32_t code;
};

// What every plane shares in backward: the blocks of input rows, the output rows that
// reach each, and, for each input row and column phase, its gather terms by increasing
// (oh, ow).
struct GatherPlan {
  struct Block {
    int64_t ih0, ih1, first_out, last_out;
  };
  std::vector<Block> blocks;
  std::vector<int64_t> term_begin;  // terms of (row ih, phase r) at (ih * phases + r)
  std::vector<GatherTerm> terms;

  GatherPlan(const Axis& ah, const Axis& aw, const ColumnGather& cg, int64_t block) {
    const auto phases = static_cast<int64_t>(cg.columns.size());
    for (int64_t ih0 = 0; ih0 < ah.in; ih0 += block) {
      Block b{ih0, std::min(ah.in, ih0 + block), ah.out, -1};
      for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
        ah.for_each_cover(ih, [&](int64_t, int64_t oh) {
          b.first_out = std::min(b.first_out, oh);
          b.last_out = std::max(b.last_out, oh);
        });
      }
      for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
        for (int64_t r = 0; r < phases; ++r) {
          term_begin.push_back(static_cast<int64_t>(terms.size()));
          ah.for_each_cover(ih, [&](int64_t kh, int64_t oh) {
            for (const ColumnGather::Tap& t : cg.taps[r]) {
              terms.push_back({(oh - b.first_out) * cg.row_length + cg.front - t.shift,
                               static_cast<int32_t>(kh * aw.kernel + t.kw)});
            }
          });
        }
      }
      blocks.push_back(b);
    }
    term_begin.push_back(static_cast<int64_t>(terms.size()));
  }
};

// out[j] = (kAdd ? out[j] : 0) + the kTerms terms' contributions at j, added in order, in
// one loop whose sum stays in a register.
template <int kTerms, bool kAdd, typename T>
FASTCNN_INLINE void sum_terms(const T* g, const int32_t* p, const GatherTerm* terms,
                              T* __restrict out, int64_t n) {
  const T* gv[kTerms];
  const int32_t* pv[kTerms];
  int32_t code[kTerms];
  for (int t = 0; t < kTerms; ++t) {
    gv[t] = g + terms[t].offset;
    pv[t] = p + terms[t].offset;
    code[t] = terms[t].code;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    T sum = kAdd ? out[j] : T(0);
    for (int t = 0; t < kTerms; ++t) {
      const T v = gv[t][j];  // loaded whether or not it is added, so that it vectorises
      sum += pv[t][j] == code[t] ? v : T(0);
    }
    out[j] = sum;
  }
}

// Input rows [b.ih0, b.ih1) of dL/dx (rows of aw.in lanes, into dx), gathered from the
// block's rows of dL/dy and positions (g and p: a padded row of cg.row_length per output
// row from b.first_out on, output ow at cg.front + ow, zeros and -1 around). Each phase's
// columns are summed over whole vectors of lanes (the padding makes the reads past a
// row's outputs add nothing), up to four taps per pass, then the phases are interleaved
// into the row.
template <typename T>
FASTCNN_TARGET_CLONES void gather_rows(const T* __restrict g, const int32_t* __restrict p,
                                       const GatherPlan& plan, const GatherPlan::Block& b,
                                       const Axis& aw, const ColumnGather& cg,
                                       T* __restrict runs, T* __restrict dx) {
  const auto phases = static_cast<int64_t>(cg.columns.size());
  const int64_t run = ColumnGather::rounded(cg.columns[0]);
  for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
    for (int64_t r = 0; r < phases; ++r) {
      const int64_t slot = ih * phases + r;
      const GatherTerm* terms = plan.terms.data() + plan.term_begin[slot];
      int64_t left = plan.term_begin[slot + 1] - plan.term_begin[slot];
      const int64_t count = ColumnGather::rounded(cg.columns[r]);
      T* out = runs + r * run;  // whole vectors, past the row: then copied into it
      switch (left) {  // the first pass writes, the others add
        case 0: std::fill(out, out + count, T(0)); break;
        case 1: sum_terms<1, false>(g, p, terms, out, count); break;
        case 2: sum_terms<2, false>(g, p, terms, out, count); break;
        case 3: sum_terms<3, false>(g, p, terms, out, count); break;
        default: sum_terms<4, false>(g, p, terms, out, count); break;
      }
      for (terms += 4, left -= 4; left > 0; terms += 4, left -= 4) {
        switch (left) {
          case 1: sum_terms<1, true>(g, p, terms, out, count); break;
          case 2: sum_terms<2, true>(g, p, terms, out, count); break;
          case 3: sum_terms<3, true>(g, p, terms, out, count); break;
          default: sum_terms<4, true>(g, p, terms, out, count); break;
        }
      }
    }
    T* row = dx + (ih - b.ih0) * aw.in;
    if (phases == 1) {
      std::copy(runs, runs + aw.in, row);
    } else if (phases == 2) {  // stride 2, the common case: a pattern the compiler vectorises
      const T* even = runs;
      const T* odd = runs + run;
#pragma omp simd
      for (int64_t j = 0; j < cg.columns[1]; ++j) {
        row[2 * j] = even[j];
        row[2 * j + 1] = odd[j];
      }
      if (cg.columns[0] > cg.columns[1]) row[2 * cg.columns[1]] = even[cg.columns[1]];
    } else {
      for (int64_t r = 0; r < phases; ++r) {
        for (int64_t j = 0; j < cg.columns[r]; ++j) row[r + j * aw.stride] = runs[r * run + j];
      }
    }
  }
}

template <typename scalar_t, typename pos_t>
void backward_planes(const BackwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const ColumnGather cg(aw);
  const auto phases = static_cast<int64_t>(cg.columns.size());
  const int64_t run = ColumnGather::rounded(cg.columns[0]);
  // input rows per block: the block's gradient rows, and the rows of dL/dy and positions
  // that reach them, stay in L2
  const int64_t per_row = sizeof(T) * aw.in + (sizeof(T) + 4) * cg.row_length;
  const int64_t rows = std::max<int64_t>(ah.in, 1);
  const int64_t block = std::clamp<int64_t>(256 * 1024 / per_row, std::min(ah.span(), rows), rows);
  const GatherPlan plan(ah, aw, cg, block);
  int64_t max_out_rows = 1;
  for (const auto& b : plan.blocks) max_out_rows = std::max(max_out_rows, b.last_out - b.first_out + 1);
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> g(max_out_rows * cg.row_length, T(0)), runs(phases * run), dx(block * aw.in);
    std::vector<int32_t> p(max_out_rows * cg.row_length, -1);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      for (const GatherPlan::Block& b : plan.blocks) {
        for (int64_t oh = b.first_out; oh <= b.last_out; ++oh) {
          const int64_t at = (oh - b.first_out) * cg.row_length + cg.front;
          load_row(args.g.at(n, c, oh, 0), args.g.stride_w, g.data() + at, aw.out);
          load_row(args.positions.at(n, c, oh, 0), args.positions.stride_w, p.data() + at, aw.out);
        }
        gather_rows(g.data(), p.data(), plan, b, aw, cg, runs.data(), dx.data());
        for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
          store_row(dx.data() + (ih - b.ih0) * aw.in, args.dx.at(n, c, ih, 0), args.dx.stride_w, aw.in);
        }
      }
    }
  });
}

template <typename scalar_t, typename pos_t>
void backward_pixels(const BackwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const int64_t lanes = args.channels;
  at::parallel_for(0, args.batch * ah.in, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(lanes), g_lanes(lanes);
    std::vector<int32_t> p(lanes);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / ah.in, ih = row % ah.in;
      for (int64_t iw = 0; iw < aw.in; ++iw) {
        std::fill(acc.begin(), acc.end(), T(0));
        ah.for_each_cover(ih, [&](int64_t kh, int64_t oh) {
          aw.for_each_cover(iw, [&](int64_t kw, int64_t ow) {
            const T* g = lanes_of<T>(args.g.at(n, 0, oh, ow), args.g.stride_c, g_lanes.data(),
                                     lanes);
            load_row(args.positions.at(n, 0, oh, ow), args.positions.stride_c, p.data(), lanes);
            gather_lanes(g, p.data(), static_cast<int32_t>(kh * aw.kernel + kw), acc.data(),
                         lanes);
          });
        });
        store_row(acc.data(), args.dx.at(n, 0, ih, iw), args.dx.stride_c, lanes);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Windows of more taps than int32 can number (positions are int64): the lane kernels
// keep int32 positions, so these scan each window's taps in the input one by one, and
// gather each input's gradient over the windows that hold it, in the same orders.
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void forward_wide(const ForwardArgs<scalar_t, int64_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      for (int64_t oh = 0; oh < ah.out; ++oh) {
        for (int64_t ow = 0; ow < aw.out; ++ow) {
          T best = kMinusInf<T>;
          int64_t winner = ah.first_tap[oh] * aw.kernel + aw.first_tap[ow];
          for (int64_t kh = ah.first_tap[oh]; kh < ah.end_tap[oh]; ++kh) {
            const int64_t ih = ah.start(oh) + kh * ah.dilation;
            for (int64_t kw = aw.first_tap[ow]; kw < aw.end_tap[ow]; ++kw) {
              const T v = *args.x.at(n, c, ih, aw.start(ow) + kw * aw.dilation);
              if (replaces(v, best)) {
                best = v;
                winner = kh * aw.kernel + kw;
              }
            }
          }
          *args.y.at(n, c, oh, ow) = static_cast<scalar_t>(best);
          *args.positions.at(n, c, oh, ow) = winner;
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_wide(const BackwardArgs<scalar_t, int64_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      for (int64_t ih = 0; ih < ah.in; ++ih) {
        for (int64_t iw = 0; iw < aw.in; ++iw) {
          T sum = 0;
          ah.for_each_cover(ih, [&](int64_t kh, int64_t oh) {
            aw.for_each_cover(iw, [&](int64_t kw, int64_t ow) {
              if (*args.positions.at(n, c, oh, ow) == kh * aw.kernel + kw) {
                sum += static_cast<T>(*args.g.at(n, c, oh, ow));
              }
            });
          });
          *args.dx.at(n, c, ih, iw) = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------
// Entry points.
// ---------------------------------------------------------------------------------------

std::pair<Axis, Axis> pooling_axes(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto pair = [](at::IntArrayRef v, const char* name) {
    TORCH_CHECK(v.size() == 2, name, " must have 2 values (h, w), got ", v.size());
  };
  pair(kernel_size, "kernel_size");
  pair(stride, "stride");
  pair(padding, "padding");
  pair(dilation, "dilation");
  const int64_t in[2] = {in_h, in_w}, out[2] = {out_h, out_w};
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(kernel_size[d] >= 1, "kernel_size must be >= 1, got ", kernel_size);
    TORCH_CHECK(stride[d] >= 1, "stride must be >= 1, got ", stride);
    TORCH_CHECK(dilation[d] >= 1, "dilation must be >= 1, got ", dilation);
    TORCH_CHECK(padding[d] >= 0 && padding[d] <= kernel_size[d] / 2,
                "padding must be between 0 and half of kernel_size ", kernel_size, ", got ",
                padding);
    // The output size is the caller's (fastcnn.ops.pooling.pooled_size); what the kernels
    // rely on is that every window starts inside the input or its left padding.
    const int64_t last_start = (out[d] - 1) * stride[d] - padding[d];
    TORCH_CHECK(out[d] >= 1 && last_start < in[d], "output size ", out[d],
                " is impossible for input size ", in[d], ": its last window would start at ",
                last_start);
  }
  return {Axis(in_h, out_h, kernel_size[0], stride[0], padding[0], dilation[0]),
          Axis(in_w, out_w, kernel_size[1], stride[1], padding[1], dilation[1])};
}

void check_image(const at::Tensor& t, const char* name) {
  check_strided_cpu(t, name);
  TORCH_CHECK(t.dim() == 4, name, " must be (N, C, H, W), got ", t.dim(), " dimensions");
}

void check_float_image(const at::Tensor& t, const char* name) {
  check_image(t, name);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

void check_positions(const at::Tensor& positions, const at::Tensor& pooled, const char* pooled_name,
                     const Axis& aw, const Axis& ah) {
  check_image(positions, "positions");
  TORCH_CHECK(positions.sizes() == pooled.sizes(), "positions must have the shape of ",
              pooled_name, " ", pooled.sizes(), ", got ", positions.sizes());
  const int64_t taps = ah.kernel * aw.kernel;
  const auto expected = taps <= 256                                  ? at::kByte
                        : taps <= std::numeric_limits<int32_t>::max() ? at::kInt
                                                                      : at::kLong;
  TORCH_CHECK(positions.scalar_type() == expected, "positions must be ", expected, " for a ",
              ah.kernel, "x", aw.kernel, " window, got ", positions.scalar_type());
}

template <typename F>
void dispatch_positions(at::ScalarType type, F f) {
  if (type == at::kByte) {
    f(uint8_t{});
  } else if (type == at::kInt) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

}  // namespace

void max_pool2d_forward(const at::Tensor& input, const at::Tensor& output,
                        const std::optional<at::Tensor>& positions, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  check_float_image(input, "input");
  check_float_image(output, "output");
  TORCH_CHECK(output.scalar_type() == input.scalar_type(), "output must have the dtype of input (",
              input.scalar_type(), "), got ", output.scalar_type());
  TORCH_CHECK(output.size(0) == input.size(0) && output.size(1) == input.size(1),
              "output must have the batch and channels of input ", input.sizes(), ", got ",
              output.sizes());
  const auto axes = pooling_axes(input.size(2), input.size(3), output.size(2),
                                     output.size(3), kernel_size, stride, padding, dilation);
  check_writable(output, "output");
  check_disjoint(output, "output", input, "input");
  const bool with_positions = positions.has_value();
  if (with_positions) {
    check_positions(*positions, output, "output", axes.second, axes.first);
    check_writable(*positions, "positions");
    check_disjoint(*positions, "positions", input, "input");
    check_disjoint(*positions, "positions", output, "output");
  }
  if (output.numel() == 0) return;
  const bool pixels = channels_innermost(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_max_pool2d_forward", [&] {
        dispatch_positions(with_positions ? positions->scalar_type() : at::kByte, [&](auto tag) {
          using pos_t = decltype(tag);
          const ForwardArgs<scalar_t, pos_t> args{
              ImageView<const scalar_t>(input), ImageView<scalar_t>(output),
              ImageView<pos_t>(with_positions ? *positions : output), input.size(0),
              input.size(1), axes.first, axes.second};
          if constexpr (std::is_same_v<pos_t, int64_t>) {
            forward_wide(args);
          } else if (with_positions) {
            pixels ? forward_pixels<scalar_t, pos_t, true>(args)
                   : forward_planes<scalar_t, pos_t, true>(args);
          } else {
            pixels ? forward_pixels<scalar_t, pos_t, false>(args)
                   : forward_planes<scalar_t, pos_t, false>(args);
          }
        });
      });
}

void max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& positions,
                         const at::Tensor& grad_input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation) {
  check_float_image(grad_output, "grad_output");
  check_float_image(grad_input, "grad_input");
  TORCH_CHECK(grad_input.scalar_type() == grad_output.scalar_type(),
              "grad_input must have the dtype of grad_output (", grad_output.scalar_type(),
              "), got ", grad_input.scalar_type());
  TORCH_CHECK(grad_input.size(0) == grad_output.size(0) && grad_input.size(1) == grad_output.size(1),
              "grad_input must have the batch and channels of grad_output ", grad_output.sizes(),
              ", got ", grad_input.sizes());
  const auto axes = pooling_axes(grad_input.size(2), grad_input.size(3), grad_output.size(2),
                                     grad_output.size(3), kernel_size, stride, padding, dilation);
  check_positions(positions, grad_output, "grad_output", axes.second, axes.first);
  check_writable(grad_input, "grad_input");
  check_disjoint(grad_input, "grad_input", grad_output, "grad_output");
  check_disjoint(grad_input, "grad_input", positions, "positions");
  if (grad_input.numel() == 0) return;
  const bool pixels = channels_innermost(grad_input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "fastcnn_max_pool2d_backward", [&] {
        dispatch_positions(positions.scalar_type(), [&](auto tag) {
          using pos_t = decltype(tag);
          const BackwardArgs<scalar_t, pos_t> args{
              ImageView<const scalar_t>(grad_output), ImageView<const pos_t>(positions),
              ImageView<scalar_t>(grad_input), grad_input.size(0), grad_input.size(1),
              axes.first, axes.second};
          if constexpr (std::is_same_v<pos_t, int64_t>) {
            backward_wide(args);
          } else {
            pixels ? backward_pixels(args) : backward_planes(args);
          }
        });
      });
}

}  // namespace fastcnn::cpu
