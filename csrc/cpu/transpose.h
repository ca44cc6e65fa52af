// Transposition of float32 feature maps between the two layouts of an (N, C, S) view:
// channels-last-like (channel stride 1) and NCHW-like (position stride 1), one 16 x 16
// block at a time, with an optional per-channel epilogue applied on the way.
//
// One image is a matrix src(r, k) whose rows are src_row apart and whose columns are
// adjacent; it is written as dst(k, r), rows dst_row apart, adjacent along r. A block of
// 16 rows is loaded as 16 vectors, transposed in registers by four butterfly stages
// (blocks of 8, 4, 2, 1 lanes swap between vector pairs), and stored as 16 vectors; so
// both sides are read and written in whole 64-byte lines, where a strided element loop
// touches a line per element on one side.
//
// The epilogue is the one of channel_affine_act, for a channels_last convolution output
// written NCHW: the columns k are channels, dst(k, r) = act(src(r, k) * scale_k + shift_k
// (+ residual(k, r))), the residual laid out as dst.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "../common.h"

namespace fastcnn::cpu {

// One image's matrices, and the per-column (per-channel) epilogue; scale and shift are
// null for a plain copy, residual null where there is none.
struct TransposeArgs {
  const float* src;
  int64_t src_row;
  float* dst;
  int64_t dst_row;
  const float* residual;
  int64_t residual_row;
  const float* scale;
  const float* shift;
  bool relu;
};

namespace transpose_detail {

constexpr int64_t kBlock = 16;

// The epilogue of one value of column k (the arithmetic of conv_bn_relu.cpp's
// pre_activation and relu_if, in the same order, so that a backward that recomputes the
// ReLU mask from the channels_last input agrees with it).
template <bool kAffine, bool kResidual>
FASTCNN_INLINE float epilogue(const TransposeArgs& a, float v, int64_t k, const float* res) {
  if constexpr (kAffine) {
    v = v * a.scale[k] + a.shift[k];
    if constexpr (kResidual) v += *res;
    if (a.relu && v <= 0.0f) v = 0.0f;
  }
  return v;
}

// Rows [r0, r1) and columns [k0, k1) element by element: the edges of the blocked region.
template <bool kAffine, bool kResidual>
FASTCNN_INLINE void transpose_elements(const TransposeArgs& a, int64_t r0, int64_t r1,
                                       int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* res = kResidual ? a.residual + k * a.residual_row + r : nullptr;
      a.dst[k * a.dst_row + r] = epilogue<kAffine, kResidual>(a, a.src[r * a.src_row + k], k, res);
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)

// 16 float lanes; loads and stores go through memcpy (unaligned, no aliasing assumptions).
typedef float Lanes16 __attribute__((vector_size(64)));
typedef int32_t Index16 __attribute__((vector_size(64)));

// (by reference, not by value: a 64-byte vector return would change the ABI where the
// target has no 512-bit registers)
FASTCNN_INLINE void load16(Lanes16& v, const float* p) { std::memcpy(&v, p, sizeof(v)); }

FASTCNN_INLINE void store16(float* p, const Lanes16& v) { std::memcpy(p, &v, sizeof(v)); }

// A butterfly stage: for each pair of vectors (i, i + B) with bit B of i clear, lane j of
// the first keeps its own value where bit B of j is clear and takes the second's lane
// j - B where it is set; the second gets the first's lane j + B and keeps its own. After
// the stages for B = 8, 4, 2, 1, vector i holds column i of the block.
#define FASTCNN_BUTTERFLY(B, LO, HI)                                   \
  do {                                                                 \
    const Index16 lo = LO, hi = HI;                                    \
    for (int i = 0; i < 16; ++i) {                                     \
      if (i & (B)) continue;                                           \
      const Lanes16 first = v[i], second = v[i + (B)];                 \
      v[i] = __builtin_shuffle(first, second, lo);                     \
      v[i + (B)] = __builtin_shuffle(first, second, hi);               \
    }                                                                  \
  } while (0)

FASTCNN_INLINE void transpose16(Lanes16* v) {
  FASTCNN_BUTTERFLY(8, (Index16{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}),
                    (Index16{8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}));
  FASTCNN_BUTTERFLY(4, (Index16{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27}),
                    (Index16{4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}));
  FASTCNN_BUTTERFLY(2, (Index16{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}),
                    (Index16{2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}));
  FASTCNN_BUTTERFLY(1, (Index16{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}),
                    (Index16{1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}));
}

#undef FASTCNN_BUTTERFLY

template <bool kAffine, bool kResidual>
FASTCNN_INLINE void transpose_block(const TransposeArgs& a, int64_t r, int64_t k) {
  Lanes16 v[16];
  for (int i = 0; i < 16; ++i) load16(v[i], a.src + (r + i) * a.src_row + k);
  transpose16(v);
  for (int i = 0; i < 16; ++i) {
    Lanes16 out = v[i];
    if constexpr (kAffine) {
      out = out * a.scale[k + i] + a.shift[k + i];
      if constexpr (kResidual) {
        Lanes16 res;
        load16(res, a.residual + (k + i) * a.residual_row + r);
        out += res;
      }
      if (a.relu) {
        const Lanes16 zero = {};
        out = out <= zero ? zero : out;  // NaN stays NaN, as torch.relu
      }
    }
    store16(a.dst + (k + i) * a.dst_row + r, out);
  }
}

#else  // no vector extensions: the same blocking, element by element

template <bool kAffine, bool kResidual>
FASTCNN_INLINE void transpose_block(const TransposeArgs& a, int64_t r, int64_t k) {
  transpose_elements<kAffine, kResidual>(a, r, r + kBlock, k, k + kBlock);
}

#endif

}  // namespace transpose_detail

// dst(k, r) = epilogue(src(r, k)) for rows [r0, r1) and columns [k0, k1), r0 and k0
// multiples of 16: column blocks outside, so that each block of dst rows is written along
// the whole row range before the next.
template <bool kAffine, bool kResidual>
FASTCNN_TARGET_CLONES void transpose_region(TransposeArgs a, int64_t r0, int64_t r1, int64_t k0,
                                            int64_t k1) {
  using namespace transpose_detail;
  const int64_t r_blocked = r0 + (r1 - r0) / kBlock * kBlock;
  const int64_t k_blocked = k0 + (k1 - k0) / kBlock * kBlock;
  for (int64_t k = k0; k < k_blocked; k += kBlock) {
    for (int64_t r = r0; r < r_blocked; r += kBlock) transpose_block<kAffine, kResidual>(a, r, k);
  }
  transpose_elements<kAffine, kResidual>(a, r0, r_blocked, k_blocked, k1);
  transpose_elements<kAffine, kResidual>(a, r_blocked, r1, k0, k1);
}

}  // namespace fastcnn::cpu
