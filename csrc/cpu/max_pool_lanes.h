// The lane kernels of the max-pooling forward (max_pool_forward.cpp): the scan over a
// window's taps in PyTorch's order, over vectors of lanes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "max_pool.h"
#include "rows.h"

namespace fastcnn::cpu::max_pool_detail {
namespace {

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

}  // namespace
}  // namespace fastcnn::cpu::max_pool_detail
