// The passes of Conv -> BatchNorm -> ReLU (+ residual) around the convolution, on CPU
// tensors. The convolution itself is ATen's; these kernels read its output y once per
// pass, as (N, C, S) views, with per-channel constants (float32, or float64 for float64
// tensors):
//
//   channel_affine_act       out = act(y * scale_c + shift_c (+ r))       (may run in place)
//   batch_norm_stats         mean_c, var_c = mean and biased variance of y over (N, S)
//   batch_norm_act_backward_reduce
//                            sum_dz_c = sum dz,  sum_dz_xhat_c = invstd_c * sum dz (y - mean_c)
//   batch_norm_act_backward  dy = scale_c (dz - sum_dz_c / M) - k_c (y - mean_c),  dr = dz
//
// with act the identity or ReLU, M = N * S, dz = g where the ReLU passed its input
// (y * scale + shift + r > 0, recomputed from y) and 0 elsewhere, and
// k_c = scale_c * invstd_c * sum_dz_xhat_c / M. In training, scale = gamma * invstd and
// shift = beta - mean * scale, so that the forward is gamma * xhat + beta with
// xhat = (y - mean) * invstd.
//
// Two tilings, as for LRN; the vector lanes run along the axis that is contiguous in
// memory: runs of positions of one channel (NCHW), or the channels of one position
// (channels_last). Other strides work too, with strided loads and stores.
//
// The statistics are numerically stable: each work item (pieces of a channel's row in one
// or more images, or a block of positions of one image) gets its own mean and sum of
// squared deviations from it, in two sweeps over data still in L1/L2 (the second also
// corrects the first's rounded mean: the corrected two-pass algorithm), and the items are
// merged in float64 (Chan et al., 1979).
#include <algorithm>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../common.h"
#include "chunk.h"
#include "ops.h"

namespace fastcnn::cpu {
namespace {

// Lanes per run along a channel row (NCHW): the run is swept twice by the statistics, so
// it should stay in L1.
constexpr int64_t kRunLength = 4096;
// Values per block of positions in the channels_last reductions: the statistics sweep a
// block twice, from L2 (128 KB of float32), and merge their float64 moments once per block.
constexpr int64_t kBlockValues = 32768;

// A tensor's view along the lanes of one run: its first element, the stride between lanes
// and the step from one run to the next of a block (a kernel may be handed several runs:
// positions of one image in the pixels tiling, images in the rows tiling).
template <typename scalar_t>
struct Lanes {
  scalar_t* data;
  int64_t stride;
  int64_t step = 0;

  Lanes next(int64_t runs) const { return {data + runs * step, stride, step}; }
};

// Per-channel constants seen from one run: a scalar broadcast over its lanes (kPerLane
// false: a run lies in one channel) or one value per lane (a run spans the channels).
template <bool kPerLane, typename T>
FASTCNN_INLINE T channel_value(const T* values, int64_t i) {
  return kPerLane ? values[i] : values[0];
}

// ReLU as torch.relu: NaN stays NaN.
template <typename T>
FASTCNN_INLINE T relu_if(bool relu, T v) {
  return relu && v <= T(0) ? T(0) : v;
}

// The value before the activation, y * scale + shift (+ r), written once so that forward
// and backward (which recomputes the ReLU mask from it) round it the same way.
template <bool kPerLane, bool kResidual, typename scalar_t, typename T>
FASTCNN_INLINE T pre_activation(const scalar_t* y, const scalar_t* r, int64_t i, int64_t sy,
                                int64_t sr, const T* scale, const T* shift) {
  T v = static_cast<T>(y[i * sy]) * channel_value<kPerLane>(scale, i) +
        channel_value<kPerLane>(shift, i);
  if constexpr (kResidual) v += static_cast<T>(r[i * sr]);
  return v;
}

// Runs body(i, one) over n lanes (one: 1 where the strides are all 1, else 0): vectorised
// with unit strides when every tensor's lanes are contiguous (lanes are independent, and
// an output is either disjoint from the inputs or the very same elements), a plain strided
// loop otherwise.
template <typename F>
FASTCNN_INLINE void for_lanes(bool unit, int64_t n, F body) {
  if (unit) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) body(i, int64_t(1));
  } else {
    for (int64_t i = 0; i < n; ++i) body(i, int64_t(0));
  }
}

// ---------------------------------------------------------------------------------------
// Lane kernels, compiled once per vector ISA (FASTCNN_TARGET_CLONES).
// ---------------------------------------------------------------------------------------

template <bool kPerLane, bool kResidual, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void affine_act_lanes(Lanes<const scalar_t> y_run, Lanes<const scalar_t> r_run,
                                            Lanes<scalar_t> out_run, const T* scale,
                                            const T* shift, bool relu, int64_t n, int64_t runs) {
  const bool unit = y_run.stride == 1 && out_run.stride == 1 && (!kResidual || r_run.stride == 1);
  for (int64_t run = 0; run < runs; ++run) {
    const auto y = y_run.next(run), r = r_run.next(run);
    const auto out = out_run.next(run);
    for_lanes(unit, n, [&](int64_t i, int64_t one) {
      const int64_t sy = one ? 1 : y.stride, sr = one ? 1 : r.stride;
      const T v = pre_activation<kPerLane, kResidual>(y.data, r.data, i, sy, sr, scale, shift);
      out.data[i * (one ? 1 : out.stride)] = static_cast<scalar_t>(relu_if(relu, v));
    });
  }
}

// The sum of the n lanes of `runs` runs, and (below) the sum of their squared deviations
// from a mean.
template <typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void sum_lanes(Lanes<const scalar_t> y_run, int64_t n, int64_t runs,
                                     T& sum) {
  T s = 0;
  for (int64_t run = 0; run < runs; ++run) {
    const auto y = y_run.next(run);
    if (y.stride == 1) {
      T run_s = 0;  // a run's own sum, as the simd reduction's only variable
#pragma omp simd reduction(+ : run_s)
      for (int64_t i = 0; i < n; ++i) run_s += static_cast<T>(y.data[i]);
      s += run_s;
    } else {
      for (int64_t i = 0; i < n; ++i) s += static_cast<T>(y.data[i * y.stride]);
    }
  }
  sum = s;
}

// The sums of the lanes' deviations from `shift` and of their squares.
template <typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void deviation_sums_lanes(Lanes<const scalar_t> y_run, int64_t n,
                                                int64_t runs, T shift, T& sum_d, T& sum_d2) {
  T s = 0, s2 = 0;
  for (int64_t run = 0; run < runs; ++run) {
    const auto y = y_run.next(run);
    if (y.stride == 1) {
      T run_s = 0, run_s2 = 0;  // a run's own sums, as the simd reduction's only variables
#pragma omp simd reduction(+ : run_s, run_s2)
      for (int64_t i = 0; i < n; ++i) {
        const T d = static_cast<T>(y.data[i]) - shift;
        run_s += d;
        run_s2 += d * d;
      }
      s += run_s;
      s2 += run_s2;
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const T d = static_cast<T>(y.data[i * y.stride]) - shift;
        s += d;
        s2 += d * d;
      }
    }
  }
  sum_d = s;
  sum_d2 = s2;
}

#if FASTCNN_HAS_CHUNK_VECTORS
// act(y * scale + shift (+ r)) == 0 where act is ReLU: the mask of pre_activation's value
// (the same operations in the same order), NaN passing as torch.relu passes it.
template <typename T>
FASTCNN_INLINE Chunk<T> masked_gradient(const Chunk<T>& v, const Chunk<T>& g, bool relu) {
  const Chunk<T> zero = {};
  return relu ? (v <= zero ? zero : g) : g;
}
#endif

// The channels_last reductions walk a block of positions once per chunk of kChunk
// channels (a 64-byte line of float32), keeping that chunk's sums in vector registers;
// a function call and a load and store of every sum per position cost more than the
// arithmetic. kWidth is the chunk's width where known at compile time (kChunk, for the
// whole chunks of adjacent channels), or 0 where it is given at run time (a last, narrower
// chunk; any chunk of strided channels); kUnit says its channels are adjacent in memory.

// sum[j] = the sum over the block's positions of channel j (kDeviations false), or, with
// d = value - shift[j], sum[j] = the sum of d and sum2[j] that of d^2.
template <int64_t kWidth, bool kUnit, bool kDeviations, typename scalar_t, typename T>
FASTCNN_INLINE void chunk_sums(Lanes<const scalar_t> y, int64_t positions, int64_t width,
                               const T* shift, T* sum, T* sum2) {
#if FASTCNN_HAS_CHUNK_VECTORS
  if constexpr (kWidth == kChunk && kUnit) {
    Chunk<T> s = {}, s2 = {}, m = {};
    if constexpr (kDeviations) m = load_chunk<T>(shift);
    for (int64_t p = 0; p < positions; ++p) {
      const Chunk<T> v = load_chunk<T>(y.data + p * y.step);
      if constexpr (kDeviations) {
        const Chunk<T> d = v - m;
        s += d;
        s2 += d * d;
      } else {
        s += v;
      }
    }
    store_chunk<T>(sum, s);
    if constexpr (kDeviations) store_chunk<T>(sum2, s2);
    return;
  }
#endif
  const int64_t w = kWidth > 0 ? kWidth : width, sc = kUnit ? 1 : y.stride;
  T s[kChunk] = {}, s2[kChunk] = {}, m[kChunk] = {};
  if constexpr (kDeviations) {
    for (int64_t j = 0; j < w; ++j) m[j] = shift[j];
  }
  for (int64_t p = 0; p < positions; ++p) {
    const scalar_t* row = y.data + p * y.step;
    for (int64_t j = 0; j < w; ++j) {
      const T v = static_cast<T>(row[j * sc]);
      if constexpr (kDeviations) {
        const T d = v - m[j];
        s[j] += d;
        s2[j] += d * d;
      } else {
        s[j] += v;
      }
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    sum[j] = s[j];
    if constexpr (kDeviations) sum2[j] = s2[j];
  }
}

// The lanes of a chunk: channels from c on.
template <typename scalar_t>
FASTCNN_INLINE Lanes<const scalar_t> from_channel(Lanes<const scalar_t> t, int64_t c) {
  return {t.data ? t.data + c * t.stride : nullptr, t.stride, t.step};
}

// chunk_sums over all `channels` channels of a block of positions (y.step apart). (No
// lambdas here: one that GCC does not inline is compiled for the baseline ISA, not the
// clone's.)
template <bool kDeviations, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void block_sums(Lanes<const scalar_t> y, int64_t positions,
                                      int64_t channels, const T* shift, T* sum, T* sum2) {
  int64_t c = 0;
  if (y.stride == 1) {
    for (; c + kChunk <= channels; c += kChunk) {
      chunk_sums<kChunk, true, kDeviations>(from_channel(y, c), positions, kChunk,
                                            kDeviations ? shift + c : nullptr, sum + c,
                                            kDeviations ? sum2 + c : nullptr);
    }
    if (c < channels) {
      chunk_sums<0, true, kDeviations>(from_channel(y, c), positions, channels - c,
                                       kDeviations ? shift + c : nullptr, sum + c,
                                       kDeviations ? sum2 + c : nullptr);
    }
    return;
  }
  for (; c < channels; c += kChunk) {
    chunk_sums<0, false, kDeviations>(from_channel(y, c), positions,
                                      std::min(kChunk, channels - c),
                                      kDeviations ? shift + c : nullptr, sum + c,
                                      kDeviations ? sum2 + c : nullptr);
  }
}

// The masked gradient dz of a run of one channel's lanes, and its sums: sum_dz = sum dz,
// sum_dz_dy = sum dz (y - mean).
template <bool kResidual, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void backward_reduce_lanes(Lanes<const scalar_t> g, Lanes<const scalar_t> y,
                                                 Lanes<const scalar_t> r, const T* scale,
                                                 const T* shift, const T* mean, bool relu,
                                                 T& sum_dz, T& sum_dz_dy, int64_t n) {
  const bool unit = g.stride == 1 && y.stride == 1 && (!kResidual || r.stride == 1);
  T a = 0, b = 0;
  const T m = mean[0];
  // (dz, dz (y - mean)) of lane i
  const auto terms = [&](int64_t i, int64_t sg, int64_t sy, int64_t sr) {
    const T v = pre_activation<false, kResidual>(y.data, r.data, i, sy, sr, scale, shift);
    const T dz = relu && v <= T(0) ? T(0) : static_cast<T>(g.data[i * sg]);
    return std::pair<T, T>{dz, dz * (static_cast<T>(y.data[i * sy]) - m)};
  };
  if (unit) {
#pragma omp simd reduction(+ : a, b)
    for (int64_t i = 0; i < n; ++i) {
      const auto [da, db] = terms(i, 1, 1, 1);
      a += da;
      b += db;
    }
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const auto [da, db] = terms(i, g.stride, y.stride, r.stride);
      a += da;
      b += db;
    }
  }
  sum_dz = a;
  sum_dz_dy = b;
}

// The same sums for each channel of a chunk (see chunk_sums) over a block of positions,
// into sum_dz[j] and sum_dz_dy[j].
template <int64_t kWidth, bool kUnit, bool kResidual, typename scalar_t, typename T>
FASTCNN_INLINE void chunk_backward_sums(Lanes<const scalar_t> g, Lanes<const scalar_t> y,
                                        Lanes<const scalar_t> r, int64_t positions,
                                        int64_t width, const T* scale, const T* shift,
                                        const T* mean, bool relu, T* sum_dz, T* sum_dz_dy) {
#if FASTCNN_HAS_CHUNK_VECTORS
  if constexpr (kWidth == kChunk && kUnit) {
    Chunk<T> a = {}, b = {};
    const Chunk<T> sc = load_chunk<T>(scale), sh = load_chunk<T>(shift), mu = load_chunk<T>(mean);
    for (int64_t p = 0; p < positions; ++p) {
      const Chunk<T> yv = load_chunk<T>(y.data + p * y.step);
      Chunk<T> v = yv * sc + sh;
      if constexpr (kResidual) v += load_chunk<T>(r.data + p * r.step);
      const Chunk<T> dz = masked_gradient<T>(v, load_chunk<T>(g.data + p * g.step), relu);
      a += dz;
      b += dz * (yv - mu);
    }
    store_chunk<T>(sum_dz, a);
    store_chunk<T>(sum_dz_dy, b);
    return;
  }
#endif
  const int64_t w = kWidth > 0 ? kWidth : width;
  const int64_t sg = kUnit ? 1 : g.stride, sy = kUnit ? 1 : y.stride, sr = kUnit ? 1 : r.stride;
  T a[kChunk] = {}, b[kChunk] = {}, sc[kChunk] = {}, sh[kChunk] = {}, mu[kChunk] = {};
  for (int64_t j = 0; j < w; ++j) {
    sc[j] = scale[j];
    sh[j] = shift[j];
    mu[j] = mean[j];
  }
  for (int64_t p = 0; p < positions; ++p) {
    const scalar_t* gp = g.data + p * g.step;
    const scalar_t* yp = y.data + p * y.step;
    const scalar_t* rp = kResidual ? r.data + p * r.step : nullptr;
    for (int64_t j = 0; j < w; ++j) {
      const T v = pre_activation<true, kResidual>(yp, rp, j, sy, sr, sc, sh);
      const T dz = relu && v <= T(0) ? T(0) : static_cast<T>(gp[j * sg]);
      a[j] += dz;
      b[j] += dz * (static_cast<T>(yp[j * sy]) - mu[j]);
    }
  }
  for (int64_t j = 0; j < w; ++j) {
    sum_dz[j] = a[j];
    sum_dz_dy[j] = b[j];
  }
}

// chunk_backward_sums over all `channels` channels of a block of positions.
template <bool kResidual, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void block_backward_sums(Lanes<const scalar_t> g, Lanes<const scalar_t> y,
                                               Lanes<const scalar_t> r, int64_t positions,
                                               int64_t channels, const T* scale, const T* shift,
                                               const T* mean, bool relu, T* sum_dz,
                                               T* sum_dz_dy) {
  int64_t c = 0;
  if (g.stride == 1 && y.stride == 1 && (!kResidual || r.stride == 1)) {
    for (; c + kChunk <= channels; c += kChunk) {
      chunk_backward_sums<kChunk, true, kResidual>(
          from_channel(g, c), from_channel(y, c), from_channel(r, c), positions, kChunk,
          scale + c, shift + c, mean + c, relu, sum_dz + c, sum_dz_dy + c);
    }
    if (c < channels) {
      chunk_backward_sums<0, true, kResidual>(
          from_channel(g, c), from_channel(y, c), from_channel(r, c), positions, channels - c,
          scale + c, shift + c, mean + c, relu, sum_dz + c, sum_dz_dy + c);
    }
    return;
  }
  for (; c < channels; c += kChunk) {
    chunk_backward_sums<0, false, kResidual>(
        from_channel(g, c), from_channel(y, c), from_channel(r, c), positions,
        std::min(kChunk, channels - c), scale + c, shift + c, mean + c, relu, sum_dz + c,
        sum_dz_dy + c);
  }
}

// Per-channel constants of the backward apply pass.
template <typename T>
struct BackwardCoefficients {
  const T* scale;
  const T* shift;
  const T* mean;
  const T* mean_dz;  // sum_dz / M
  const T* k;        // scale * invstd * sum_dz_xhat / M
};

template <bool kPerLane, bool kResidual, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void backward_lanes(Lanes<const scalar_t> g_run, Lanes<const scalar_t> y_run,
                                          Lanes<const scalar_t> r_run, Lanes<scalar_t> dy_run,
                                          Lanes<scalar_t> dr_run, BackwardCoefficients<T> p,
                                          bool relu, int64_t n, int64_t runs) {
  const bool write_dr = dr_run.data != nullptr;
  const bool unit = g_run.stride == 1 && y_run.stride == 1 && dy_run.stride == 1 &&
                    (!kResidual || r_run.stride == 1) && (!write_dr || dr_run.stride == 1);
  for (int64_t run = 0; run < runs; ++run) {
    const auto g = g_run.next(run), y = y_run.next(run), r = r_run.next(run);
    const auto dy = dy_run.next(run), dr = dr_run.next(run);
    for_lanes(unit, n, [&](int64_t i, int64_t one) {
      const int64_t sg = one ? 1 : g.stride, sy = one ? 1 : y.stride, sr = one ? 1 : r.stride;
      const T yv = static_cast<T>(y.data[i * sy]);
      const T v = pre_activation<kPerLane, kResidual>(y.data, r.data, i, sy, sr, p.scale, p.shift);
      const T dz = relu && v <= T(0) ? T(0) : static_cast<T>(g.data[i * sg]);
      dy.data[i * (one ? 1 : dy.stride)] = static_cast<scalar_t>(
          channel_value<kPerLane>(p.scale, i) * (dz - channel_value<kPerLane>(p.mean_dz, i)) -
          channel_value<kPerLane>(p.k, i) * (yv - channel_value<kPerLane>(p.mean, i)));
      if (write_dr) dr.data[i * (one ? 1 : dr.stride)] = static_cast<scalar_t>(dz);
    });
  }
}

// ---------------------------------------------------------------------------------------
// Tilings.
// ---------------------------------------------------------------------------------------

// A run of lanes: positions [s, s + length) of channel c of image n (rows tiling), or
// channels [0, C) of position s of image n (pixels tiling). A block is `count` runs: the
// same positions of images n, n + 1, ... (rows), or positions s, s + 1, ... (pixels).
struct Run {
  int64_t n, c, s, length;
  int64_t count = 1;
};

template <typename scalar_t>
Lanes<scalar_t> lanes_of(const ChannelView<scalar_t>& v, const Run& run, bool pixels) {
  return {v.at(run.n, run.c, run.s), pixels ? v.stride_c : v.stride_s,
          pixels ? v.stride_s : v.stride_n};
}

// The work items of the rows tiling, in the order (channel, group of images, piece of a
// row): rows of up to kRunLength positions, and rows shorter than that several images at
// a time (the channel's row in each), so that an item holds about kRunLength values
// however small the feature map (a call per 7x7 row cost more than its arithmetic).
struct RowItems {
  int64_t images, groups, pieces;

  explicit RowItems(const Extent& e)
      : images(std::clamp<int64_t>(kRunLength / std::max<int64_t>(e.s, 1), 1,
                                   std::max<int64_t>(e.n, 1))),
        groups((e.n + images - 1) / images),
        pieces((e.s + kRunLength - 1) / kRunLength) {}

  int64_t count(const Extent& e) const { return e.c * groups * pieces; }

  Run operator()(const Extent& e, int64_t item) const {
    const int64_t n = item / pieces % groups * images, s = item % pieces * kRunLength;
    return Run{n, item / (pieces * groups), s, std::min(kRunLength, e.s - s),
               std::min(images, e.n - n)};
  }
};

// Calls visit(run) for runs (blocks of runs, in the pixels tiling) covering the extent, in
// parallel.
template <typename F>
void for_each_run(const Extent& e, bool pixels, F visit) {
  if (pixels) {
    // blocks of positions of one image, ~4K values each
    const int64_t block = std::max<int64_t>(1, 4096 / std::max<int64_t>(e.c, 1));
    const int64_t blocks = (e.s + block - 1) / block;
    at::parallel_for(0, e.n * blocks, 4, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t s = b % blocks * block;
        visit(Run{b / blocks, 0, s, e.c, std::min(block, e.s - s)});
      }
    });
    return;
  }
  const RowItems items(e);
  const int64_t grain = std::max<int64_t>(1, 16384 / (items.images * std::min(e.s, kRunLength)));
  at::parallel_for(0, items.count(e), grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) visit(items(e, t));
  });
}

// Positions per block of the channels_last reductions: ~kBlockValues values, fewer where
// that would leave fewer than a few blocks per thread (one 7x7 image of 512 channels).
int64_t pixel_block(const Extent& e) {
  const int64_t wanted = 4 * at::get_num_threads();
  return std::max<int64_t>(1, std::min(kBlockValues / std::max<int64_t>(e.c, 1),
                                       (e.n * e.s + wanted - 1) / wanted));
}

// Splits `items` work items into at most a few tasks per thread and calls
// task(index, begin, end) for each, in parallel; reductions keep one partial result per
// task and merge them in task order afterwards.
template <typename F>
int64_t for_each_task(int64_t items, F task) {
  const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(items, 4 * at::get_num_threads()));
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) task(t, items * t / tasks, items * (t + 1) / tasks);
  });
  return tasks;
}

// Count, mean and sum of squared deviations of a set of values, merged pairwise
// (Chan, Golub and LeVeque, 1979) so that no large sums of squares cancel.
struct Moments {
  double count = 0, mean = 0, m2 = 0;

  void merge(double count_b, double mean_b, double m2_b) {
    if (count_b == 0) return;
    const double total = count + count_b;
    const double delta = mean_b - mean;
    mean += delta * (count_b / total);
    m2 += m2_b + delta * delta * (count * count_b / total);
    count = total;
  }

  // Merges values given as the sums of their deviations d from `shift` and of d^2: with a
  // shift near their mean (a first, rounded estimate of it) the corrected two-pass
  // formula m2 = sum d^2 - (sum d)^2 / n loses nothing to cancellation.
  template <typename T>
  void merge_deviations(double count_b, double shift, T sum_d, T sum_d2) {
    const double s = static_cast<double>(sum_d);
    merge(count_b, shift + s / count_b, static_cast<double>(sum_d2) - s * s / count_b);
  }
};

template <typename scalar_t>
void batch_norm_stats_rows(const ChannelView<const scalar_t>& y, const Extent& e,
                           std::vector<Moments>& out) {
  using T = at::opmath_type<scalar_t>;
  const RowItems items(e);
  std::vector<std::vector<Moments>> partial(4 * at::get_num_threads());
  // items are channel-major, so a task's runs share few channels
  const int64_t tasks = for_each_task(items.count(e), [&](int64_t t, int64_t b, int64_t en) {
    std::vector<Moments> acc(e.c);
    for (int64_t item = b; item < en; ++item) {
      const Run run = items(e, item);
      const Lanes<const scalar_t> lanes = lanes_of(y, run, false);
      const int64_t values = run.length * run.count;
      T sum, sum_d, sum_d2;
      sum_lanes(lanes, run.length, run.count, sum);
      const T rough_mean = sum / static_cast<T>(values);
      deviation_sums_lanes(lanes, run.length, run.count, rough_mean, sum_d, sum_d2);
      acc[run.c].merge_deviations(static_cast<double>(values), static_cast<double>(rough_mean),
                                  sum_d, sum_d2);
    }
    partial[t] = std::move(acc);
  });
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t c = 0; c < e.c; ++c) {
      const Moments& m = partial[t][c];
      out[c].merge(m.count, m.mean, m.m2);
    }
  }
}

template <typename scalar_t>
void batch_norm_stats_pixels(const ChannelView<const scalar_t>& y, const Extent& e,
                             std::vector<Moments>& out) {
  using T = at::opmath_type<scalar_t>;
  // blocks of positions of one image
  const int64_t block = pixel_block(e);
  const int64_t blocks = (e.s + block - 1) / block;
  std::vector<std::vector<Moments>> partial(4 * at::get_num_threads());
  const int64_t tasks = for_each_task(e.n * blocks, [&](int64_t t, int64_t b, int64_t en) {
    std::vector<Moments> acc(e.c);
    std::vector<T> sum(e.c), rough_mean(e.c), sum_d(e.c), sum_d2(e.c);
    for (int64_t index = b; index < en; ++index) {
      const int64_t s = index % blocks * block, count = std::min(block, e.s - s);
      const Lanes<const scalar_t> lanes{y.at(index / blocks, 0, s), y.stride_c, y.stride_s};
      block_sums<false>(lanes, count, e.c, static_cast<const T*>(nullptr), sum.data(),
                        static_cast<T*>(nullptr));
      for (int64_t c = 0; c < e.c; ++c) rough_mean[c] = sum[c] / static_cast<T>(count);
      block_sums<true>(lanes, count, e.c, static_cast<const T*>(rough_mean.data()),
                       sum_d.data(), sum_d2.data());
      for (int64_t c = 0; c < e.c; ++c) {
        acc[c].merge_deviations(static_cast<double>(count), static_cast<double>(rough_mean[c]),
                                sum_d[c], sum_d2[c]);
      }
    }
    partial[t] = std::move(acc);
  });
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t c = 0; c < e.c; ++c) {
      const Moments& m = partial[t][c];
      out[c].merge(m.count, m.mean, m.m2);
    }
  }
}

// Sums over runs (rows tiling) or blocks of positions (pixels tiling) in parallel, one
// partial per task, added in task order in float64.
template <bool kResidual, typename scalar_t>
void backward_reduce(const ChannelView<const scalar_t>& g, const ChannelView<const scalar_t>& y,
                     const ChannelView<const scalar_t>& r, const Extent& e, bool pixels,
                     const at::opmath_type<scalar_t>* scale, const at::opmath_type<scalar_t>* shift,
                     const at::opmath_type<scalar_t>* mean, bool relu, std::vector<double>& sum_dz,
                     std::vector<double>& sum_dz_dy) {
  using T = at::opmath_type<scalar_t>;
  // rows tiling: RowItems; pixels tiling: blocks of positions of one image (pixel_block),
  // whose float sums are added to the float64 ones block by block
  const RowItems rows(e);
  const int64_t block = pixel_block(e);
  const int64_t blocks = (e.s + block - 1) / block;
  const int64_t items = pixels ? e.n * blocks : rows.count(e);
  std::vector<std::vector<double>> partial(4 * at::get_num_threads());
  const int64_t tasks = for_each_task(items, [&](int64_t t, int64_t b, int64_t en) {
    std::vector<double> acc(2 * e.c, 0.0);
    std::vector<T> da(pixels ? e.c : 0), db(pixels ? e.c : 0);
    for (int64_t item = b; item < en; ++item) {
      if (pixels) {
        const int64_t n = item / blocks, s = item % blocks * block;
        const Run run{n, 0, s, e.c};
        block_backward_sums<kResidual>(lanes_of(g, run, true), lanes_of(y, run, true),
                                       lanes_of(r, run, true), std::min(block, e.s - s), e.c,
                                       scale, shift, mean, relu, da.data(), db.data());
        for (int64_t c = 0; c < e.c; ++c) {
          acc[c] += da[c];
          acc[e.c + c] += db[c];
        }
        continue;
      }
      const Run run = rows(e, item);
      const auto g_run = lanes_of(g, run, false), y_run = lanes_of(y, run, false);
      const auto r_run = lanes_of(r, run, false);
      for (int64_t i = 0; i < run.count; ++i) {
        // one call per image's row: with this loop moved inside it, GCC 12 compiled
        // backward_reduce_lanes' masked reduction to scalar code (12x slower)
        T a, bsum;
        backward_reduce_lanes<kResidual>(g_run.next(i), y_run.next(i), r_run.next(i),
                                         scale + run.c, shift + run.c, mean + run.c, relu, a,
                                         bsum, run.length);
        acc[run.c] += a;
        acc[e.c + run.c] += bsum;
      }
    }
    partial[t] = std::move(acc);
  });
  for (int64_t t = 0; t < tasks; ++t) {
    for (int64_t c = 0; c < e.c; ++c) {
      sum_dz[c] += partial[t][c];
      sum_dz_dy[c] += partial[t][e.c + c];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Checks.
// ---------------------------------------------------------------------------------------

// A per-channel vector: (C,), contiguous, in the accumulation type of y's dtype.
void check_channel_vector(const at::Tensor& v, const at::Tensor& y, const char* name) {
  const auto expected = at::toOpMathType(y.scalar_type());
  TORCH_CHECK(v.device().is_cpu(), name, " must be a CPU tensor, got one on ", v.device());
  TORCH_CHECK(v.dim() == 1 && v.size(0) == y.size(1) && v.is_contiguous(), name,
              " must be a contiguous vector of ", y.size(1), " channels, got shape ", v.sizes());
  TORCH_CHECK(v.scalar_type() == expected, name, " must be ", expected, " for ",
              y.scalar_type(), " input, got ", v.scalar_type());
}

template <typename T>
const T* data_of(const at::Tensor& v) {
  return static_cast<const T*>(v.data_ptr());
}

template <typename scalar_t>
ChannelView<scalar_t> view_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? ChannelView<scalar_t>(*t) : ChannelView<scalar_t>();
}

}  // namespace

void channel_affine_act(const at::Tensor& input, const std::optional<at::Tensor>& scale,
                        const at::Tensor& shift, const std::optional<at::Tensor>& residual,
                        const at::Tensor& output, bool relu) {
  check_cpu_float_3d(input, "input");
  check_output(output, input, "output");
  check_disjoint(output, "output", input, "input", /*same_allowed=*/true);
  if (scale.has_value()) check_channel_vector(*scale, input, "scale");
  check_channel_vector(shift, input, "shift");
  if (residual.has_value()) {
    check_same_as(*residual, input, "residual");
    check_disjoint(output, "output", *residual, "residual", /*same_allowed=*/true);
  }
  const Extent e(input);
  if (input.numel() == 0) return;
  const bool pixels = use_pixel_tiles(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_channel_affine_act", [&] {
        using T = at::opmath_type<scalar_t>;
        const std::vector<T> ones(scale.has_value() ? 0 : e.c, T(1));
        const T* a = scale.has_value() ? data_of<T>(*scale) : ones.data();
        const T* b = data_of<T>(shift);
        const ChannelView<const scalar_t> y(input), r = view_or_null<const scalar_t>(residual);
        const ChannelView<scalar_t> out(output);
        for_each_run(e, pixels, [&](const Run& run) {
          const auto call = [&](auto per_lane, auto has_residual) {
            affine_act_lanes<decltype(per_lane)::value, decltype(has_residual)::value>(
                lanes_of(y, run, pixels), lanes_of(r, run, pixels), lanes_of(out, run, pixels),
                a + run.c, b + run.c, relu, run.length, run.count);
          };
          using yes = std::true_type;
          using no = std::false_type;
          if (pixels) {
            residual.has_value() ? call(yes{}, yes{}) : call(yes{}, no{});
          } else {
            residual.has_value() ? call(no{}, yes{}) : call(no{}, no{});
          }
        });
      });
}

void batch_norm_stats(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var) {
  check_cpu_float_3d(input, "input");
  check_channel_vector(mean, input, "mean");
  check_channel_vector(var, input, "var");
  const Extent e(input);
  TORCH_CHECK(e.count() > 0, "batch statistics need at least one value per channel, got input "
              "of shape ", input.sizes());
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_batch_norm_stats", [&] {
        using T = at::opmath_type<scalar_t>;
        const ChannelView<const scalar_t> y(input);
        std::vector<Moments> moments(e.c);
        if (use_pixel_tiles(input)) {
          batch_norm_stats_pixels(y, e, moments);
        } else {
          batch_norm_stats_rows(y, e, moments);
        }
        T* mean_out = static_cast<T*>(mean.data_ptr());
        T* var_out = static_cast<T*>(var.data_ptr());
        for (int64_t c = 0; c < e.c; ++c) {
          mean_out[c] = static_cast<T>(moments[c].mean);
          var_out[c] = static_cast<T>(moments[c].m2 / moments[c].count);
        }
      });
}

void batch_norm_act_backward_reduce(const at::Tensor& grad_output, const at::Tensor& input,
                                    const std::optional<at::Tensor>& residual,
                                    const at::Tensor& scale, const at::Tensor& shift,
                                    const at::Tensor& mean, const at::Tensor& invstd,
                                    const at::Tensor& sum_dz, const at::Tensor& sum_dz_xhat,
                                    bool relu) {
  check_cpu_float_3d(input, "input");
  check_same_as(grad_output, input, "grad_output");
  if (residual.has_value()) check_same_as(*residual, input, "residual");
  check_channel_vector(scale, input, "scale");
  check_channel_vector(shift, input, "shift");
  check_channel_vector(mean, input, "mean");
  check_channel_vector(invstd, input, "invstd");
  check_channel_vector(sum_dz, input, "sum_dz");
  check_channel_vector(sum_dz_xhat, input, "sum_dz_xhat");
  const Extent e(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_batch_norm_act_backward_reduce",
      [&] {
        using T = at::opmath_type<scalar_t>;
        const ChannelView<const scalar_t> g(grad_output), y(input);
        const ChannelView<const scalar_t> r = view_or_null<const scalar_t>(residual);
        const bool pixels = use_pixel_tiles(input);
        std::vector<double> a(e.c, 0.0), b(e.c, 0.0);
        if (e.count() > 0) {
          const auto run = [&](auto has_residual) {
            backward_reduce<decltype(has_residual)::value>(
                g, y, r, e, pixels, data_of<T>(scale), data_of<T>(shift), data_of<T>(mean),
                relu, a, b);
          };
          residual.has_value() ? run(std::true_type{}) : run(std::false_type{});
        }
        T* dz_out = static_cast<T*>(sum_dz.data_ptr());
        T* dz_xhat_out = static_cast<T*>(sum_dz_xhat.data_ptr());
        const T* inv = data_of<T>(invstd);
        for (int64_t c = 0; c < e.c; ++c) {
          dz_out[c] = static_cast<T>(a[c]);
          dz_xhat_out[c] = static_cast<T>(b[c] * static_cast<double>(inv[c]));
        }
      });
}

void batch_norm_act_backward(const at::Tensor& grad_output, const at::Tensor& input,
                             const std::optional<at::Tensor>& residual, const at::Tensor& scale,
                             const at::Tensor& shift, const at::Tensor& mean,
                             const at::Tensor& invstd, const at::Tensor& sum_dz,
                             const at::Tensor& sum_dz_xhat, const at::Tensor& grad_input,
                             const std::optional<at::Tensor>& grad_residual, bool relu) {
  check_cpu_float_3d(input, "input");
  check_same_as(grad_output, input, "grad_output");
  if (residual.has_value()) check_same_as(*residual, input, "residual");
  check_channel_vector(scale, input, "scale");
  check_channel_vector(shift, input, "shift");
  check_channel_vector(mean, input, "mean");
  check_channel_vector(invstd, input, "invstd");
  check_channel_vector(sum_dz, input, "sum_dz");
  check_channel_vector(sum_dz_xhat, input, "sum_dz_xhat");
  check_output(grad_input, input, "grad_input");
  check_disjoint(grad_input, "grad_input", grad_output, "grad_output");
  check_disjoint(grad_input, "grad_input", input, "input");
  if (residual.has_value()) check_disjoint(grad_input, "grad_input", *residual, "residual");
  if (grad_residual.has_value()) {
    check_output(*grad_residual, input, "grad_residual");
    check_disjoint(*grad_residual, "grad_residual", grad_input, "grad_input");
    check_disjoint(*grad_residual, "grad_residual", grad_output, "grad_output");
    check_disjoint(*grad_residual, "grad_residual", input, "input");
    if (residual.has_value()) check_disjoint(*grad_residual, "grad_residual", *residual, "residual");
  }
  const Extent e(input);
  if (input.numel() == 0) return;
  const bool pixels = use_pixel_tiles(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_batch_norm_act_backward", [&] {
        using T = at::opmath_type<scalar_t>;
        const T* a = data_of<T>(scale);
        const T* inv = data_of<T>(invstd);
        const T* s_dz = data_of<T>(sum_dz);
        const T* s_dz_xhat = data_of<T>(sum_dz_xhat);
        const T count = static_cast<T>(e.count());
        std::vector<T> mean_dz(e.c), k(e.c);
        for (int64_t c = 0; c < e.c; ++c) {
          mean_dz[c] = s_dz[c] / count;
          k[c] = a[c] * inv[c] * s_dz_xhat[c] / count;
        }
        const ChannelView<const scalar_t> g(grad_output), y(input);
        const ChannelView<const scalar_t> r = view_or_null<const scalar_t>(residual);
        const ChannelView<scalar_t> dy(grad_input);
        const ChannelView<scalar_t> dr = view_or_null<scalar_t>(grad_residual);
        for_each_run(e, pixels, [&](const Run& run) {
          const BackwardCoefficients<T> p{a + run.c, data_of<T>(shift) + run.c,
                                          data_of<T>(mean) + run.c, mean_dz.data() + run.c,
                                          k.data() + run.c};
          const Lanes<scalar_t> dr_lanes =
              dr.data ? lanes_of(dr, run, pixels) : Lanes<scalar_t>{nullptr, 0, 0};
          const auto call = [&](auto per_lane, auto has_residual) {
            backward_lanes<decltype(per_lane)::value, decltype(has_residual)::value>(
                lanes_of(g, run, pixels), lanes_of(y, run, pixels), lanes_of(r, run, pixels),
                lanes_of(dy, run, pixels), dr_lanes, p, relu, run.length, run.count);
          };
          using yes = std::true_type;
          using no = std::false_type;
          if (pixels) {
            residual.has_value() ? call(yes{}, yes{}) : call(yes{}, no{});
          } else {
            residual.has_value() ? call(no{}, yes{}) : call(no{}, no{});
          }
        });
      });
}

}  // namespace fastcnn::cpu
