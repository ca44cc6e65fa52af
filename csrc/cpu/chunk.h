// Chunks of kChunk adjacent channels (a 64-byte line of float32) as one GCC vector value,
// for kernels whose lanes run along the channels of channels_last tensors: GCC keeps such
// a value in registers across a loop (it does not keep arrays there) and lowers its
// arithmetic to the vectors of the clone being compiled (one zmm of float32 with
// AVX-512, two ymm with AVX2). Elsewhere FASTCNN_HAS_CHUNK_VECTORS is 0 and the kernels
// take their element-by-element paths.
//
// Inside target_clones functions GCC 12 lowers only some of these operations to vector
// instructions: arithmetic, and a select on a comparison written inside it against a
// constant (v <= zero ? zero : g); a comparison whose mask is kept, combined, or selects
// between two variables (a running maximum) it lowers lane by lane, slower than scalar
// code. (Tried for channels_last max-pooling, and dropped.)
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../common.h"

namespace fastcnn::cpu {
namespace {

constexpr int64_t kChunk = 16;

#if defined(__GNUC__) && !defined(__clang__)
#define FASTCNN_HAS_CHUNK_VECTORS 1
// The inline helpers below take and return vectors by value; they are always inlined
// into the clones, so the ABI note GCC gives for the baseline clone does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

template <typename T>
struct ChunkVector {
  typedef T type __attribute__((vector_size(kChunk * sizeof(T))));
};
template <typename T>
using Chunk = typename ChunkVector<T>::type;

// kChunk adjacent values, converted to T.
template <typename T, typename scalar_t>
FASTCNN_INLINE Chunk<T> load_chunk(const scalar_t* p) {
  Chunk<T> v;
  if constexpr (std::is_same_v<T, scalar_t>) {
    std::memcpy(&v, p, sizeof v);
  } else {
    T values[kChunk];
    for (int64_t j = 0; j < kChunk; ++j) values[j] = static_cast<T>(p[j]);
    std::memcpy(&v, values, sizeof v);
  }
  return v;
}

// Stores v's kChunk lanes at p, converted to scalar_t.
template <typename T, typename scalar_t>
FASTCNN_INLINE void store_chunk(scalar_t* p, const Chunk<T>& v) {
  if constexpr (std::is_same_v<T, scalar_t>) {
    std::memcpy(p, &v, sizeof v);
  } else {
    for (int64_t j = 0; j < kChunk; ++j) p[j] = static_cast<scalar_t>(v[j]);
  }
}

#else
#define FASTCNN_HAS_CHUNK_VECTORS 0
#endif

}  // namespace
}  // namespace fastcnn::cpu
