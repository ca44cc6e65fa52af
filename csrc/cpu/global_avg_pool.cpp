// Global average pooling of (N, C, S) views into (N, C, 1), forward and backward, on CPU
// tensors: y[n, c] = sum_s x[n, c, s] / S and dL/dx[n, c, s] = g[n, c] / S.
//
// Sums are accumulated in runs of at most kRun values in float32 (float64 for float64
// inputs), and the runs' sums in float64, so that a mean over a large image stays exact
// to the output's precision while the vectors hold as many lanes as they can.
//
// The lanes run along the axis that is contiguous: positions for NCHW (one row sum per
// channel; float32 rows of 16 to 256 values sixteen channels at a time, whose lanes are
// folded together at the end), channels for channels_last (a running sum per channel,
// eight positions at a time).
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../common.h"
#include "ops.h"
#include "rows.h"

namespace fastcnn::cpu {
namespace {

// Values summed in the accumulation type before their sum joins a float64 total.
constexpr int64_t kRun = 256;

// Channels per pixel tile: their running sums stay in L1.
constexpr int64_t kChannelTile = 2048;

// out[r * out_stride] = scale * (sum of the n contiguous values at x + r * row_stride)
// for `rows` rows. Runs of kRun values are summed in the accumulation type (float32 for
// the 32-bit and narrower types, with whole vectors of lanes) and the runs' sums in
// float64. The rows are one loop here (not a call each), so that the processor overlaps
// their sums.
template <typename scalar_t>
FASTCNN_TARGET_CLONES void row_means(const scalar_t* __restrict x, int64_t row_stride,
                                     int64_t rows, int64_t n, double scale,
                                     scalar_t* __restrict out, int64_t out_stride) {
  using acc_t = at::opmath_type<scalar_t>;
  for (int64_t r = 0; r < rows; ++r) {
    const scalar_t* row = x + r * row_stride;
    double total = 0;
    for (int64_t i0 = 0; i0 < n; i0 += kRun) {
      const int64_t i1 = std::min(n, i0 + kRun);
      acc_t part = 0;
#pragma omp simd reduction(+ : part)
      for (int64_t i = i0; i < i1; ++i) part += static_cast<acc_t>(row[i]);
      total += static_cast<double>(part);
    }
    out[r * out_stride] = static_cast<scalar_t>(total * scale);
  }
}

// sums[i] += x[0][i] + ... + x[7][i] for n lanes: eight positions per pass over the
// sums, so that the stream of inputs, not the sums' loads and stores, sets the pace.
template <typename acc_t>
FASTCNN_TARGET_CLONES void add_lanes8(const acc_t* const* x, acc_t* __restrict sums, int64_t n) {
  const acc_t* __restrict x0 = x[0];
  const acc_t* __restrict x1 = x[1];
  const acc_t* __restrict x2 = x[2];
  const acc_t* __restrict x3 = x[3];
  const acc_t* __restrict x4 = x[4];
  const acc_t* __restrict x5 = x[5];
  const acc_t* __restrict x6 = x[6];
  const acc_t* __restrict x7 = x[7];
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    sums[i] += ((x0[i] + x1[i]) + (x2[i] + x3[i])) + ((x4[i] + x5[i]) + (x6[i] + x7[i]));
  }
}

template <typename acc_t>
FASTCNN_TARGET_CLONES void add_lanes(const acc_t* __restrict x, acc_t* __restrict sums,
                                     int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) sums[i] += x[i];
}

#if defined(__GNUC__) && !defined(__clang__)
#define FASTCNN_HAS_ROW_BLOCKS 1
// The inline helpers below pass 64-byte vectors by value; they are always inlined into
// the clones, so the ABI note GCC gives for the baseline clone does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
// Sixteen float32 lanes as one value: GCC lowers its arithmetic and shuffles to the
// vectors of the clone being compiled (one zmm register with AVX-512, two ymm with AVX2).
typedef float F32x16 __attribute__((vector_size(64)));
typedef int32_t I32x16 __attribute__((vector_size(64)));

FASTCNN_INLINE F32x16 load16(const float* p) {
  F32x16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Lane j of the result: a[j'] + a[j' + half] for the lanes j of the lower half of each
// block of 2 * half lanes, and the same of b for the upper half, where `lower` indexes
// the concatenation (a, b). Folding pairs of vectors four times (half = 8, 4, 2, 1)
// turns 16 vectors into one that holds each vector's sum of lanes.
FASTCNN_INLINE F32x16 fold(F32x16 a, F32x16 b, I32x16 lower, int32_t half) {
  return __builtin_shuffle(a, b, lower) + __builtin_shuffle(a, b, lower + half);
}

// sums[r] = the sum of the n contiguous float32 values at x + r * row_stride, for the 16
// rows r, with 16 <= n: each row is added up in 16 lanes (the last, partial vector is
// read so that it ends where the row ends, with the lanes that the full vectors already
// covered masked off), then the 16 rows' lanes are folded into one vector of 16 sums:
// about 3 instructions a row for the horizontal sums that would otherwise take ~10 each.
FASTCNN_TARGET_CLONES void sixteen_row_sums(const float* __restrict x, int64_t row_stride,
                                            int64_t n, float* __restrict sums) {
  const int64_t full = n / 16 * 16, rest = n - full;
  const I32x16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const I32x16 keep = lane >= static_cast<int32_t>(16 - rest);  // all-ones where kept
  F32x16 acc[16];
  for (int r = 0; r < 16; ++r) {
    const float* row = x + r * row_stride;
    F32x16 a = load16(row);
    for (int64_t i = 16; i < full; i += 16) a += load16(row + i);
    if (rest) a += reinterpret_cast<F32x16>(reinterpret_cast<I32x16>(load16(row + n - 16)) & keep);
    acc[r] = a;
  }
  const I32x16 by8 = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  const I32x16 by4 = {0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27};
  const I32x16 by2 = {0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29};
  const I32x16 by1 = {0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30};
  for (int i = 0; i < 8; ++i) acc[i] = fold(acc[2 * i], acc[2 * i + 1], by8, 8);
  for (int i = 0; i < 4; ++i) acc[i] = fold(acc[2 * i], acc[2 * i + 1], by4, 4);
  for (int i = 0; i < 2; ++i) acc[i] = fold(acc[2 * i], acc[2 * i + 1], by2, 2);
  const F32x16 total = fold(acc[0], acc[1], by1, 1);
  // the folds leave row r's sum in lane bit_reverse(r) (four bits)
  for (int j = 0; j < 16; ++j) {
    const int r = ((j & 1) << 3) | ((j & 2) << 1) | ((j & 4) >> 1) | ((j & 8) >> 3);
    sums[r] = total[j];
  }
}
#else
#define FASTCNN_HAS_ROW_BLOCKS 0
#endif

template <typename scalar_t>
void forward_rows(const ChannelView<const scalar_t>& x, const ChannelView<scalar_t>& y,
                  int64_t batch, int64_t channels, int64_t positions) {
  const double scale = 1.0 / static_cast<double>(positions);
  const int64_t grain = std::max<int64_t>(1, 4096 / positions);
  at::parallel_for(0, batch * channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> row(x.stride_s == 1 ? 0 : positions);
    for (int64_t r = begin; r < end;) {
      const int64_t n = r / channels, c = r % channels;
      const int64_t count = std::min(end - r, channels - c);  // rows of image n
      if (x.stride_s == 1) {
        int64_t done = 0;
#if FASTCNN_HAS_ROW_BLOCKS
        if constexpr (std::is_same_v<scalar_t, float>) {
          if (positions >= 16 && positions <= kRun) {  // one run per row: sum in blocks
            float sums[16];
            for (; done + 16 <= count; done += 16) {
              sixteen_row_sums(x.at(n, c + done, 0), x.stride_c, positions, sums);
              for (int i = 0; i < 16; ++i) {
                *y.at(n, c + done + i, 0) = static_cast<float>(static_cast<double>(sums[i]) * scale);
              }
            }
          }
        }
#endif
        row_means(x.at(n, c + done, 0), x.stride_c, count - done, positions, scale,
                  y.at(n, c + done, 0), y.stride_c);
      } else {
        for (int64_t i = 0; i < count; ++i) {
          load_row(x.at(n, c + i, 0), x.stride_s, row.data(), positions);
          row_means(row.data(), 0, 1, positions, scale, y.at(n, c + i, 0), 0);
        }
      }
      r += count;
    }
  });
}

template <typename scalar_t>
void forward_pixels(const ChannelView<const scalar_t>& x, const ChannelView<scalar_t>& y,
                    int64_t batch, int64_t channels, int64_t positions) {
  using T = at::opmath_type<scalar_t>;
  const int64_t tiles = (channels + kChannelTile - 1) / kChannelTile;
  const int64_t tile = std::min(kChannelTile, channels);
  // float32 channels one apart are read where they lie; other types and strides are
  // converted into `lanes` first
  const bool in_place = std::is_same_v<T, scalar_t> && x.stride_c == 1;
  at::parallel_for(0, batch * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> lanes(in_place ? 0 : 8 * tile), part(tile);
    std::vector<double> sums(tile);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / tiles, c0 = t % tiles * kChannelTile;
      const int64_t width = std::min(kChannelTile, channels - c0);
      std::fill_n(sums.begin(), width, 0.0);
      // runs of kRun positions summed in T (float32 but for float64), their sums in float64
      for (int64_t s0 = 0; s0 < positions; s0 += kRun) {
        std::fill_n(part.begin(), width, T(0));
        const int64_t s1 = std::min(positions, s0 + kRun);
        const auto row = [&](int64_t s, int i) {
          return lanes_of<T>(x.at(n, c0, s), x.stride_c, lanes.data() + i * tile, width);
        };
        int64_t s = s0;
        for (; s + 8 <= s1; s += 8) {
          const T* rows[8];
          for (int i = 0; i < 8; ++i) rows[i] = row(s + i, i);
          add_lanes8(rows, part.data(), width);
        }
        for (; s < s1; ++s) add_lanes(row(s, 0), part.data(), width);
        for (int64_t i = 0; i < width; ++i) sums[i] += static_cast<double>(part[i]);
      }
      for (int64_t i = 0; i < width; ++i) sums[i] /= static_cast<double>(positions);
      store_row(sums.data(), y.at(n, c0, 0), y.stride_c, width);
    }
  });
}

template <typename scalar_t>
void backward_rows(const ChannelView<const scalar_t>& g, const ChannelView<scalar_t>& dx,
                   int64_t batch, int64_t channels, int64_t positions) {
  using T = at::opmath_type<scalar_t>;
  const int64_t grain = std::max<int64_t>(1, 4096 / positions);
  at::parallel_for(0, batch * channels, grain, [&](int64_t begin, int64_t end) {
    std::vector<T> row(positions);
    for (int64_t n = begin / channels, c = begin % channels, r = begin; r < end; ++r) {
      std::fill(row.begin(), row.end(), static_cast<T>(*g.at(n, c, 0)) / static_cast<T>(positions));
      store_row(row.data(), dx.at(n, c, 0), dx.stride_s, positions);
      if (++c == channels) {
        c = 0;
        ++n;
      }
    }
  });
}

template <typename scalar_t>
void backward_pixels(const ChannelView<const scalar_t>& g, const ChannelView<scalar_t>& dx,
                     int64_t batch, int64_t channels, int64_t positions) {
  using T = at::opmath_type<scalar_t>;
  at::parallel_for(0, batch * positions, std::max<int64_t>(1, 4096 / channels),
                   [&](int64_t begin, int64_t end) {
    std::vector<T> lanes(channels);
    int64_t filled_for = -1;  // the image whose gradients `lanes` holds
    for (int64_t n = begin / positions, s = begin % positions, r = begin; r < end; ++r) {
      if (n != filled_for) {
        load_row(g.at(n, 0, 0), g.stride_c, lanes.data(), channels);
        for (auto& v : lanes) v /= static_cast<T>(positions);
        filled_for = n;
      }
      store_row(lanes.data(), dx.at(n, 0, s), dx.stride_c, channels);
      if (++s == positions) {
        s = 0;
        ++n;
      }
    }
  });
}

// Lanes along channels when they are contiguous and positions are not, or positions are
// too few to fill vectors.
bool use_pixels(const at::Tensor& x) {
  return channels_innermost(x) && (x.stride(2) != 1 || x.size(2) < 16);
}

// The arguments of either direction: `full`, an (N, C, S) view, and `pooled`, its (N, C, 1)
// counterpart, of which the output (pooled in forward, full in backward) is written while
// the other is read.
void check_pool_args(const at::Tensor& full, const char* full_name, const at::Tensor& pooled,
                     const char* pooled_name, bool pooled_is_output) {
  check_cpu_float_3d(full, full_name);
  check_cpu_float_3d(pooled, pooled_name);
  TORCH_CHECK(pooled.size(0) == full.size(0) && pooled.size(1) == full.size(1) &&
                  pooled.size(2) == 1,
              pooled_name, " must be (N, C, 1) for ", full_name, " of shape ", full.sizes(),
              ", got ", pooled.sizes());
  TORCH_CHECK(pooled.scalar_type() == full.scalar_type(), pooled_name, " must have the dtype of ",
              full_name, " (", full.scalar_type(), "), got ", pooled.scalar_type());
  const at::Tensor& out = pooled_is_output ? pooled : full;
  const at::Tensor& in = pooled_is_output ? full : pooled;
  const char* out_name = pooled_is_output ? pooled_name : full_name;
  const char* in_name = pooled_is_output ? full_name : pooled_name;
  check_writable(out, out_name);
  check_disjoint(out, out_name, in, in_name);
}

}  // namespace

void global_avg_pool2d_forward(const at::Tensor& input, const at::Tensor& output) {
  check_pool_args(input, "input", output, "output", /*pooled_is_output=*/true);
  if (output.numel() == 0) return;
  TORCH_CHECK(input.size(2) > 0, "input must have at least one position to average, got shape ",
              input.sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_global_avg_pool2d_forward", [&] {
        const ChannelView<const scalar_t> x(input);
        const ChannelView<scalar_t> y(output);
        const auto f = use_pixels(input) ? forward_pixels<scalar_t> : forward_rows<scalar_t>;
        f(x, y, input.size(0), input.size(1), input.size(2));
      });
}

at::Tensor global_avg_pool2d(const at::Tensor& input, bool channels_last) {
  check_strided_cpu(input, "input");
  TORCH_CHECK(input.dim() == 4, "input must be (N, C, H, W), got a ", input.dim(),
              "-d tensor of shape ", input.sizes());
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3);
  const at::Tensor output = at::empty(
      {n, c, 1, 1}, input.options().memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                 : at::MemoryFormat::Contiguous));
  // H and W flattened into one stride where they have one (fastcnn.ops.layout.channel_view)
  const bool one_stride = w == 1 || h == 1 || input.stride(2) == input.stride(3) * w;
  const int64_t stride_s = w == 1 ? input.stride(2) : input.stride(3);
  const at::Tensor flat =
      one_stride ? input.as_strided({n, c, h * w}, {input.stride(0), input.stride(1), stride_s})
                 : input.contiguous().view({n, c, h * w});
  global_avg_pool2d_forward(flat, output.view({n, c, 1}));
  return output;
}

void global_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& grad_input) {
  check_pool_args(grad_input, "grad_input", grad_output, "grad_output",
                  /*pooled_is_output=*/false);
  if (grad_input.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_input.scalar_type(), "fastcnn_global_avg_pool2d_backward",
      [&] {
        const ChannelView<const scalar_t> g(grad_output);
        const ChannelView<scalar_t> dx(grad_input);
        const auto f = use_pixels(grad_input) ? backward_pixels<scalar_t> : backward_rows<scalar_t>;
        f(g, dx, grad_input.size(0), grad_input.size(1), grad_input.size(2));
      });
}

}  // namespace fastcnn::cpu
