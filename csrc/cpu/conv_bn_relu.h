// How the passes of Conv -> BatchNorm -> ReLU (conv_bn_relu.cpp, batch_norm_stats.cpp) walk
// their (N, C, S) views. Two tilings, as for LRN (use_pixel_tiles); the vector lanes of a
// run run along the axis that is contiguous in memory: positions of one channel (rows:
// NCHW), or the channels of one position (pixels: channels_last). Other strides work too,
// with strided loads and stores.
#pragma once

#include <algorithm>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../common.h"

namespace fastcnn::cpu {
namespace {

// Positions per run along a channel row: the statistics sweep a run twice, from L1.
constexpr int64_t kRunLength = 4096;
// Values per block of positions in the channels_last reductions: the statistics sweep a
// block twice, from L2 (128 KB of float32), and merge their float64 moments once per block.
constexpr int64_t kBlockValues = 32768;
// The most partial results of a reduction (see reduction_tasks): enough to share among the
// threads of a large host.
constexpr int64_t kReductionTasks = 64;

// A tensor's view along the lanes of one run: its first element, the stride between lanes
// and the step from one run to the next of a block (a kernel may be handed several runs:
// positions of one image in the pixels tiling, images in the rows tiling). An absent
// tensor has no data.
template <typename scalar_t>
struct Lanes {
  scalar_t* data;
  int64_t stride;
  int64_t step;

  // Lane i of run `run`; one == 1 (see for_lanes) makes the stride a constant 1.
  FASTCNN_INLINE scalar_t& at(int64_t run, int64_t i, int64_t one) const {
    return data[run * step + i * (one ? 1 : stride)];
  }
};

// Whether the lanes of all the (present) tensors are contiguous.
template <typename... L>
bool unit_strides(const L&... lanes) {
  return ((lanes.data == nullptr || lanes.stride == 1) && ...);
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

// body(run, i, one) for the n lanes of each of `runs` runs.
template <typename F>
FASTCNN_INLINE void for_runs(bool unit, int64_t n, int64_t runs, F body) {
  for (int64_t run = 0; run < runs; ++run) {
    for_lanes(unit, n, [&](int64_t i, int64_t one) { body(run, i, one); });
  }
}

// Per-channel constants seen from one run: a scalar broadcast over its lanes (kPerLane
// false: a run lies in one channel) or one value per lane (a run spans the channels).
template <bool kPerLane, typename T>
FASTCNN_INLINE T channel_value(const T* values, int64_t i) {
  return kPerLane ? values[i] : values[0];
}

// Sums over `runs` runs of n lanes: add(run, i, one, a, b) adds lane i's terms to the
// sums a and b (one as for for_lanes), which are per lane, sum1[i] and sum2[i]
// (kPerLane), else over all lanes, sum1[0] and sum2[0]. Inlined into the reduction
// kernels, which are compiled once per ISA. (The unit test stays outside the loop over
// runs: inside it, GCC 12 compiles the backward's masked sums to scalar code.)
template <bool kPerLane, typename T, typename Add>
FASTCNN_INLINE void sum_lanes(bool unit, int64_t n, int64_t runs, Add add, T* __restrict sum1,
                              T* __restrict sum2) {
  if constexpr (kPerLane) {
    std::fill_n(sum1, n, T(0));
    std::fill_n(sum2, n, T(0));
    for_runs(unit, n, runs, [&](int64_t run, int64_t i, int64_t one) {
      add(run, i, one, sum1[i], sum2[i]);
    });
    return;
  }
  T s1 = 0, s2 = 0;
  if (unit) {
    for (int64_t run = 0; run < runs; ++run) {
      T a = 0, b = 0;  // a run's own sums, as the simd reduction's only variables
#pragma omp simd reduction(+ : a, b)
      for (int64_t i = 0; i < n; ++i) add(run, i, int64_t(1), a, b);
      s1 += a;
      s2 += b;
    }
  } else {
    for (int64_t run = 0; run < runs; ++run) {
      for (int64_t i = 0; i < n; ++i) add(run, i, int64_t(0), s1, s2);
    }
  }
  sum1[0] = s1;
  sum2[0] = s2;
}

// A block of runs: positions [s, s + length) of channel c in images n, n + 1, ..., n +
// count - 1 (rows tiling), or channels [0, length = C) of positions s, s + 1, ..., s +
// count - 1 of image n (pixels tiling).
struct Run {
  int64_t n, c, s, length, count;
};

template <typename scalar_t>
Lanes<scalar_t> lanes_of(const ChannelView<scalar_t>& v, const Run& run, bool pixels) {
  return {v.at(run.n, run.c, run.s), pixels ? v.stride_c : v.stride_s,
          pixels ? v.stride_s : v.stride_n};
}

// The work items of a tiling, as blocks of runs. Rows: in the order (channel, group of
// images, piece of a row), pieces of up to kRunLength positions, and rows shorter than
// that several images at a time, so that an item holds about kRunLength values however
// small the feature map (a call per 7x7 row cost more than its arithmetic). Pixels:
// blocks of `block` positions of one image.
struct WorkItems {
  Extent e;
  bool pixels;
  int64_t block, blocks;          // pixels
  int64_t images, groups, pieces;  // rows

  WorkItems(const Extent& e_, bool pixels_, int64_t block_)
      : e(e_),
        pixels(pixels_),
        block(block_),
        blocks((e.s + block - 1) / block),
        images(std::clamp<int64_t>(kRunLength / std::max<int64_t>(e.s, 1), 1,
                                   std::max<int64_t>(e.n, 1))),
        groups((e.n + images - 1) / images),
        pieces((e.s + kRunLength - 1) / kRunLength) {}

  int64_t count() const { return pixels ? e.n * blocks : e.c * groups * pieces; }

  Run operator()(int64_t item) const {
    if (pixels) {
      const int64_t s = item % blocks * block;
      return Run{item / blocks, 0, s, e.c, std::min(block, e.s - s)};
    }
    const int64_t n = item / pieces % groups * images, s = item % pieces * kRunLength;
    return Run{n, item / (pieces * groups), s, std::min(kRunLength, e.s - s),
               std::min(images, e.n - n)};
  }
};

// Calls visit(run) for blocks of runs covering the extent, ~4K values each, in parallel.
template <typename F>
void for_each_run(const Extent& e, bool pixels, F visit) {
  const WorkItems items(e, pixels, std::max<int64_t>(1, 4096 / std::max<int64_t>(e.c, 1)));
  const int64_t grain =
      pixels ? 4 : std::max<int64_t>(1, 16384 / (items.images * std::min(e.s, kRunLength)));
  at::parallel_for(0, items.count(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) visit(items(t));
  });
}

// How many partial results a reduction over e keeps: one per ~kBlockValues values, at
// most kReductionTasks. A rule of the shape, not of the thread count, so that the partial
// sums, merged in task order, are the same bits on every host.
inline int64_t reduction_tasks(const Extent& e) {
  return std::clamp<int64_t>(e.n * e.s * e.c / kBlockValues, 1, kReductionTasks);
}

// The work items of the reductions: pixel blocks of ~kBlockValues values, fewer where that
// would leave fewer blocks than tasks (one 7x7 image of 2048 channels).
WorkItems reduction_items(const Extent& e, bool pixels) {
  const int64_t tasks = reduction_tasks(e);
  return WorkItems(e, pixels,
                   std::max<int64_t>(1, std::min(kBlockValues / std::max<int64_t>(e.c, 1),
                                                 (e.n * e.s + tasks - 1) / tasks)));
}

// Splits the work items of a reduction over e into reduction_tasks(e) tasks (at most one
// per item), runs task(begin, end) for each in parallel, and returns what they return
// (their partial sums) in task order.
template <typename F>
auto reduce_in_tasks(const Extent& e, int64_t items, F task) {
  const int64_t tasks = std::max<int64_t>(1, std::min(items, reduction_tasks(e)));
  std::vector<decltype(task(int64_t(0), int64_t(0)))> partial(tasks);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      partial[t] = task(items * t / tasks, items * (t + 1) / tasks);
    }
  });
  return partial;
}

// f(std::bool_constant<a>{}, std::bool_constant<b>{}): two run-time flags as template ones.
template <typename F>
void with_flags(bool a, bool b, F f) {
  const auto with_b = [&](auto a_) { b ? f(a_, std::true_type{}) : f(a_, std::false_type{}); };
  a ? with_b(std::true_type{}) : with_b(std::false_type{});
}

// A per-channel vector: (C,), contiguous, in the accumulation type of y's dtype.
inline void check_channel_vector(const at::Tensor& v, const at::Tensor& y, const char* name) {
  const auto expected = at::toOpMathType(y.scalar_type());
  check_strided_cpu(v, name);
  TORCH_CHECK(v.dim() == 1 && v.size(0) == y.size(1) && v.is_contiguous(), name,
              " must be a contiguous vector of ", y.size(1), " channels, got shape ", v.sizes());
  TORCH_CHECK(v.scalar_type() == expected, name, " must be ", expected, " for ",
              y.scalar_type(), " input, got ", v.scalar_type());
}

}  // namespace
}  // namespace fastcnn::cpu
