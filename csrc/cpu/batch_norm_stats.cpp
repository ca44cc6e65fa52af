// The batch statistics of Conv -> BatchNorm -> ReLU (see conv_bn_relu.cpp): the mean and
// biased variance of each channel of an (N, C, S) view.
//
// They are numerically stable: each work item (pieces of a channel's row in one or more
// images, or a block of positions of one image) gets its own mean and sum of squared
// deviations from it, in two sweeps over data still in L1/L2 (the second also corrects the
// first's rounded mean: the corrected two-pass algorithm), and the items are merged in
// float64 (Chan et al., 1979).
#include <vector>

#include <ATen/Dispatch.h>

#include "conv_bn_relu.h"
#include "ops.h"

namespace fastcnn::cpu {
namespace {

// Count, mean and sum of squared deviations of a set of values, merged pairwise
// (Chan, Golub and LeVeque, 1979) so that no large sums of squares cancel.
struct Moments {
  double count = 0, mean = 0, m2 = 0;

  void merge(const Moments& b) {
    if (b.count == 0) return;
    const double total = count + b.count;
    const double delta = b.mean - mean;
    mean += delta * (b.count / total);
    m2 += b.m2 + delta * delta * (count * b.count / total);
    count = total;
  }

  // Merges values given as the sums of their deviations d from `shift` and of d^2: with a
  // shift near their mean (a first, rounded estimate of it) the corrected two-pass
  // formula m2 = sum d^2 - (sum d)^2 / n loses nothing to cancellation.
  template <typename T>
  void merge_deviations(double count_b, double shift, T sum_d, T sum_d2) {
    const double s = static_cast<double>(sum_d);
    merge({count_b, shift + s / count_b, static_cast<double>(sum_d2) - s * s / count_b});
  }
};

// The sums of the deviations d = y - shift of the lanes and of d^2 (see sum_lanes).
template <bool kPerLane, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void deviation_sums(Lanes<const scalar_t> y, int64_t n, int64_t runs,
                                          const T* shift, T* sum_d, T* sum_d2) {
  const auto add = [&](int64_t run, int64_t i, int64_t one, T& s, T& s2) {
    const T d = static_cast<T>(y.at(run, i, one)) - channel_value<kPerLane>(shift, i);
    s += d;
    s2 += d * d;
  };
  sum_lanes<kPerLane>(unit_strides(y), n, runs, add, sum_d, sum_d2);
}

// The moments of each channel, merged over the work items task by task and the tasks in
// order.
template <bool kPixels, typename scalar_t>
std::vector<Moments> channel_moments(const ChannelView<const scalar_t>& y, const Extent& e) {
  using T = at::opmath_type<scalar_t>;
  const WorkItems items = reduction_items(e, kPixels);
  const int64_t sums = kPixels ? e.c : 1;  // per item
  const auto partial = reduce_in_tasks(e, items.count(), [&](int64_t begin, int64_t end) {
    std::vector<Moments> acc(e.c);
    std::vector<T> rough_mean(sums), sum_d(sums), sum_d2(sums);
    for (int64_t item = begin; item < end; ++item) {
      const Run run = items(item);
      const Lanes<const scalar_t> lanes = lanes_of(y, run, kPixels);
      const int64_t values = kPixels ? run.count : run.length * run.count;  // per sum
      const auto sweep = [&] {
        deviation_sums<kPixels>(lanes, run.length, run.count, rough_mean.data(), sum_d.data(),
                                sum_d2.data());
      };
      // the deviations from 0 (the values themselves), then from their rounded mean
      std::fill(rough_mean.begin(), rough_mean.end(), T(0));
      sweep();
      for (int64_t j = 0; j < sums; ++j) rough_mean[j] = sum_d[j] / static_cast<T>(values);
      sweep();
      for (int64_t j = 0; j < sums; ++j) {
        acc[run.c + j].merge_deviations(static_cast<double>(values),
                                        static_cast<double>(rough_mean[j]), sum_d[j], sum_d2[j]);
      }
    }
    return acc;
  });
  std::vector<Moments> out(e.c);
  for (const auto& acc : partial) {
    for (int64_t c = 0; c < e.c; ++c) out[c].merge(acc[c]);
  }
  return out;
}

}  // namespace

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
        const std::vector<Moments> moments = use_pixel_tiles(input)
                                                 ? channel_moments<true>(y, e)
                                                 : channel_moments<false>(y, e);
        T* mean_out = mean.data_ptr<T>();
        T* var_out = var.data_ptr<T>();
        for (int64_t c = 0; c < e.c; ++c) {
          mean_out[c] = static_cast<T>(moments[c].mean);
          var_out[c] = static_cast<T>(moments[c].m2 / moments[c].count);
        }
      });
}

}  // namespace fastcnn::cpu
