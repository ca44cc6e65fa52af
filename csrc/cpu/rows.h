// Row helpers shared by the CPU kernels: moving a run of lanes between a tensor (any
// stride, any floating dtype) and a contiguous buffer of the type the kernel computes in.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common.h"

namespace fastcnn::cpu {
// Internal linkage on purpose: every kernel file gets its own copies of these
// multi-versioned templates (and of their ifunc resolvers).
namespace {

// dst[i] = src[i * stride] as T.
template <typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void load_row(const scalar_t* src, int64_t stride, T* __restrict dst,
                                    int64_t n) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    if (stride == 1) {
      std::memcpy(dst, src, n * sizeof(T));
      return;
    }
  }
  if (stride == 1) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i * stride]);
  }
}

// dst[i * stride] = src[i] as scalar_t.
template <typename T, typename scalar_t>
FASTCNN_TARGET_CLONES void store_row(const T* __restrict src, scalar_t* dst, int64_t stride,
                                     int64_t n) {
  if constexpr (std::is_same_v<scalar_t, T>) {
    if (stride == 1) {
      std::memcpy(dst, src, n * sizeof(T));
      return;
    }
  }
  if (stride == 1) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * stride] = static_cast<scalar_t>(src[i]);
  }
}

// The n lanes src[i * stride] as a contiguous array of T: src itself when it already is
// one, else a converted copy in `buffer`.
template <typename T, typename scalar_t>
FASTCNN_INLINE const T* lanes_of(const scalar_t* src, int64_t stride, T* buffer, int64_t n) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    if (stride == 1) return src;
  }
  load_row(src, stride, buffer, n);
  return buffer;
}

}  // namespace
}  // namespace fastcnn::cpu
