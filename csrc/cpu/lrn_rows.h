// The row kernels of local response normalization (lrn.cpp says what is computed): the
// per-channel constants, the window sums of rows, and the output and gradient terms of a
// row of lanes.
#pragma once

#include <algorithm>
#include <type_traits>

#include <ATen/OpMathType.h>

#include "../common.h"
#include "power.h"
#include "rows.h"

namespace fastcnn::cpu {
namespace {

template <typename T>
struct LrnConstants {
  int64_t lo;  // channels before c in its window, clipped to C - 1 (further ones are padding)
  int64_t hi;  // channels after c in its window, clipped likewise
  T k;
  T alpha_over_size;
  T grad_coef;  // 2 * alpha * beta / size
  Power power;

  LrnConstants(int64_t size, int64_t channels, double alpha, double beta, double k_)
      : lo(std::min(size / 2, channels - 1)),
        hi(std::min((size - 1) / 2, channels - 1)),
        k(static_cast<T>(k_)),
        alpha_over_size(static_cast<T>(alpha / static_cast<double>(size))),
        grad_coef(static_cast<T>(2.0 * alpha * beta / static_cast<double>(size))),
        power(beta) {}

  int64_t window_rows() const { return lo + hi + 1; }
};

// The rows a window sums: any set of row pointers (ring slots, or shifted copies of one
// zero-padded row).
template <typename T>
struct Rows {
  const T* const* rows;
  int64_t count;
};

// ---------------------------------------------------------------------------------------
// Row kernels: plain loops over n lanes that the compiler vectorises, compiled once per
// vector ISA (FASTCNN_TARGET_CLONES).
// ---------------------------------------------------------------------------------------

// out[i] = sum over the window's rows of row[i]^2 (kSquare) or row[i].
template <bool kSquare, typename T>
FASTCNN_TARGET_CLONES void window_sum(Rows<T> window, T* __restrict out, int64_t n) {
  const T* first = window.rows[0];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = kSquare ? first[i] * first[i] : first[i];
  for (int64_t r = 1; r < window.count; ++r) {
    const T* row = window.rows[r];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] += kSquare ? row[i] * row[i] : row[i];
  }
}

// Calls f(i, q, s) for i < n with s = k + alpha/size * sums[i] and q = s^beta, in one
// vectorised loop per kind of exponent.
template <typename T, typename F>
FASTCNN_INLINE void for_each_power(const LrnConstants<T>& p, const T* __restrict sums,
                                   int64_t n, F f) {
  const T k = p.k;
  const T a = p.alpha_over_size;
  switch (p.power.kind) {
    case PowerKind::kZero:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) f(i, T(1), k + a * sums[i]);
      break;
    case PowerKind::kThreeQuarters:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T s = k + a * sums[i];
        f(i, power_three_quarters(s), s);
      }
      break;
    case PowerKind::kGeneral: {
      const double beta = p.power.beta;
      const T negative_base_factor = static_cast<T>(p.power.negative_base_factor);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const T s = k + a * sums[i];
        f(i, power_general(s, beta, negative_base_factor), s);
      }
      break;
    }
  }
}

// y = x / (k + alpha/size * sums)^beta, stored as scalar_t into contiguous lanes.
template <typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void forward_row(const LrnConstants<T>& p, const T* __restrict x,
                                       const T* __restrict sums, scalar_t* __restrict y,
                                       int64_t n) {
  for_each_power(p, sums, n, [&](int64_t i, T q, T) { y[i] = static_cast<scalar_t>(x[i] / q); });
}

// The gradient terms of a channel: g_over_q = g / s^beta and t = g x / (s^beta s).
template <typename T>
FASTCNN_TARGET_CLONES void backward_terms_row(const LrnConstants<T>& p, const T* __restrict x,
                                              const T* __restrict g, const T* __restrict sums,
                                              T* __restrict g_over_q, T* __restrict t,
                                              int64_t n) {
  for_each_power(p, sums, n, [&](int64_t i, T q, T s) {
    const T gq = g[i] / q;
    g_over_q[i] = gq;
    t[i] = gq * x[i] / s;
  });
}

// dx = g / s^beta - 2 alpha beta / size * x * t_sums, stored as scalar_t into contiguous
// lanes.
template <typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void grad_input_row(T coef, const T* __restrict x,
                                          const T* __restrict g_over_q,
                                          const T* __restrict t_sums, scalar_t* __restrict dx,
                                          int64_t n) {
  // With beta == 0 the cross term is exactly zero, as in torch.pow's gradient, even where
  // t is not finite (s == 0).
  const bool has_cross_term = coef != T(0);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T cross = has_cross_term ? coef * x[i] * t_sums[i] : T(0);
    dx[i] = static_cast<scalar_t>(g_over_q[i] - cross);
  }
}

// A row of output lanes: written straight to memory when they are contiguous there, else
// into `scratch` and then scattered.
template <typename scalar_t>
struct RowOutput {
  scalar_t* dst;
  int64_t stride;
  scalar_t* scratch;

  scalar_t* lanes() const { return stride == 1 ? dst : scratch; }
  void finish(int64_t n) const {
    if (stride != 1) store_row(static_cast<const scalar_t*>(scratch), dst, stride, n);
  }
};

}  // namespace
}  // namespace fastcnn::cpu
