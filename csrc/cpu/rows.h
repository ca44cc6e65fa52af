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

// dst[i * dst_stride] = src[i * src_stride] as To, for i < n.
template <typename From, typename To>
FASTCNN_TARGET_CLONES void copy_lanes(const From* src, int64_t src_stride, To* __restrict dst,
                                      int64_t dst_stride, int64_t n) {
  if (src_stride == 1 && dst_stride == 1) {
    if constexpr (std::is_same_v<From, To>) {
      std::memcpy(dst, src, n * sizeof(To));
    } else {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<To>(src[i]);
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i * dst_stride] = static_cast<To>(src[i * src_stride]);
}

// dst[i] = src[i * stride] as T.
template <typename scalar_t, typename T>
FASTCNN_INLINE void load_row(const scalar_t* src, int64_t stride, T* dst, int64_t n) {
  copy_lanes(src, stride, dst, 1, n);
}

// dst[i * stride] = src[i] as scalar_t.
template <typename T, typename scalar_t>
FASTCNN_INLINE void store_row(const T* src, scalar_t* dst, int64_t stride, int64_t n) {
  copy_lanes(src, 1, dst, stride, n);
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
