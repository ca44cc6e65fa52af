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
// This file holds the elementwise passes and the backward's sums; batch_norm_stats.cpp the
// statistics, conv_bn_relu.h the tilings they share.
#include <utility>
#include <vector>

#include <ATen/Dispatch.h>

#include "conv_bn_relu.h"
#include "ops.h"

namespace fastcnn::cpu {
namespace {

// The value before the activation, y * scale + shift (+ r), written once so that forward
// and backward (which recomputes the ReLU mask from it) round it the same way.
template <bool kPerLane, bool kResidual, typename scalar_t, typename T>
FASTCNN_INLINE T pre_activation(Lanes<const scalar_t> y, Lanes<const scalar_t> r, int64_t run,
                                int64_t i, int64_t one, const T* scale, const T* shift) {
  T v = static_cast<T>(y.at(run, i, one)) * channel_value<kPerLane>(scale, i) +
        channel_value<kPerLane>(shift, i);
  if constexpr (kResidual) v += static_cast<T>(r.at(run, i, one));
  return v;
}

// x where the ReLU passes v (v > 0, and NaN, as torch.relu passes it), else 0.
template <typename T>
FASTCNN_INLINE T through_relu(bool relu, T v, T x) {
  return relu & (v <= T(0)) ? T(0) : x;
}

// The lane kernels (over `runs` runs of n lanes), compiled once per vector ISA.

template <bool kPerLane, bool kResidual, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void affine_act_lanes(Lanes<const scalar_t> y, Lanes<const scalar_t> r,
                                            Lanes<scalar_t> out, const T* scale, const T* shift,
                                            bool relu, int64_t n, int64_t runs) {
  for_runs(unit_strides(y, r, out), n, runs, [&](int64_t run, int64_t i, int64_t one) {
    const T v = pre_activation<kPerLane, kResidual>(y, r, run, i, one, scale, shift);
    out.at(run, i, one) = static_cast<scalar_t>(through_relu(relu, v, v));
  });
}

// The sums of dz into sum_dz and of dz (y - mean) into sum_dz_dy (see sum_lanes).
template <bool kPerLane, bool kResidual, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void backward_sums_lanes(Lanes<const scalar_t> g,
                                               Lanes<const scalar_t> y, Lanes<const scalar_t> r,
                                               const T* scale, const T* shift, const T* mean,
                                               bool relu, int64_t n, int64_t runs, T* sum_dz,
                                               T* sum_dz_dy) {
  const auto add = [&](int64_t run, int64_t i, int64_t one, T& s_dz, T& s_dz_dy) {
    const T v = pre_activation<kPerLane, kResidual>(y, r, run, i, one, scale, shift);
    const T dz = through_relu(relu, v, static_cast<T>(g.at(run, i, one)));
    s_dz += dz;
    s_dz_dy += dz * (static_cast<T>(y.at(run, i, one)) - channel_value<kPerLane>(mean, i));
  };
  sum_lanes<kPerLane>(unit_strides(g, y, r), n, runs, add, sum_dz, sum_dz_dy);
}

// Per-channel constants of the backward pass.
template <typename T>
struct BackwardCoefficients {
  const T* scale;
  const T* shift;
  const T* mean;
  const T* mean_dz;  // sum_dz / M
  const T* k;        // scale * invstd * sum_dz_xhat / M

  BackwardCoefficients from(int64_t c) const {
    return {scale + c, shift + c, mean + c, mean_dz + c, k + c};
  }
};

// kCentred: with the term k_c (y - mean_c). A frozen BatchNorm has k = 0 and no such term
// at all, so that an infinite y gives no NaN (0 * inf): one channel per run drops it
// from the loop, tiles of many channels select it per lane.
template <bool kPerLane, bool kResidual, bool kCentred, typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void backward_lanes(Lanes<const scalar_t> g, Lanes<const scalar_t> y,
                                          Lanes<const scalar_t> r, Lanes<scalar_t> dy,
                                          Lanes<scalar_t> dr, BackwardCoefficients<T> p,
                                          bool relu, int64_t n, int64_t runs) {
  const bool write_dr = dr.data != nullptr;
  for_runs(unit_strides(g, y, r, dy, dr), n, runs, [&](int64_t run, int64_t i, int64_t one) {
    const T v = pre_activation<kPerLane, kResidual>(y, r, run, i, one, p.scale, p.shift);
    const T dz = through_relu(relu, v, static_cast<T>(g.at(run, i, one)));
    T centred = T(0);
    if constexpr (kCentred) {
      const T k = channel_value<kPerLane>(p.k, i);
      const T term = k * (static_cast<T>(y.at(run, i, one)) - channel_value<kPerLane>(p.mean, i));
      centred = kPerLane && k == T(0) ? T(0) : term;
    }
    dy.at(run, i, one) = static_cast<scalar_t>(
        channel_value<kPerLane>(p.scale, i) * (dz - channel_value<kPerLane>(p.mean_dz, i)) -
        centred);
    if (write_dr) dr.at(run, i, one) = static_cast<scalar_t>(dz);
  });
}

// The backward sums over the work items, in float64 from one item to the next.
template <bool kPixels, bool kResidual, typename scalar_t, typename T>
void backward_sums(const ChannelView<const scalar_t>& g, const ChannelView<const scalar_t>& y,
                   const ChannelView<const scalar_t>& r, const Extent& e, const T* scale,
                   const T* shift, const T* mean, bool relu, double* sum_dz, double* sum_dz_dy) {
  const WorkItems items = reduction_items(e, kPixels);
  const int64_t sums = kPixels ? e.c : 1;  // per item
  const auto partial = reduce_in_tasks(e, items.count(), [&](int64_t begin, int64_t end) {
    std::vector<double> acc(2 * e.c, 0.0);
    std::vector<T> a(sums), b(sums);
    for (int64_t item = begin; item < end; ++item) {
      const Run run = items(item);
      backward_sums_lanes<kPixels, kResidual>(
          lanes_of(g, run, kPixels), lanes_of(y, run, kPixels), lanes_of(r, run, kPixels),
          scale + run.c, shift + run.c, mean + run.c, relu, run.length, run.count, a.data(),
          b.data());
      for (int64_t j = 0; j < sums; ++j) {
        acc[run.c + j] += a[j];
        acc[e.c + run.c + j] += b[j];
      }
    }
    return acc;
  });
  for (const auto& acc : partial) {
    for (int64_t c = 0; c < e.c; ++c) {
      sum_dz[c] += acc[c];
      sum_dz_dy[c] += acc[e.c + c];
    }
  }
}

// The arguments of both backward passes but the backward's outputs.
void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input,
                         const std::optional<at::Tensor>& residual, const at::Tensor& scale,
                         const at::Tensor& shift, const at::Tensor& mean,
                         const at::Tensor& invstd, const at::Tensor& sum_dz,
                         const at::Tensor& sum_dz_xhat) {
  check_cpu_float_3d(input, "input");
  check_same_as(grad_output, input, "grad_output");
  if (residual.has_value()) check_same_as(*residual, input, "residual");
  for (const auto& [v, name] : {std::pair{&scale, "scale"}, {&shift, "shift"}, {&mean, "mean"},
                                {&invstd, "invstd"}, {&sum_dz, "sum_dz"},
                                {&sum_dz_xhat, "sum_dz_xhat"}}) {
    check_channel_vector(*v, input, name);
  }
}

}  // namespace

void channel_affine_act(const at::Tensor& input, const at::Tensor& scale,
                        const at::Tensor& shift, const std::optional<at::Tensor>& residual,
                        const at::Tensor& output, bool relu) {
  check_cpu_float_3d(input, "input");
  check_output(output, input, "output");
  check_disjoint(output, "output", input, "input", /*same_allowed=*/true);
  check_channel_vector(scale, input, "scale");
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
        const T* a = scale.const_data_ptr<T>();
        const T* b = shift.const_data_ptr<T>();
        const ChannelView<const scalar_t> y(input), r(residual);
        const ChannelView<scalar_t> out(output);
        with_flags(pixels, residual.has_value(), [&](auto per_lane, auto has_residual) {
          for_each_run(e, pixels, [&](const Run& run) {
            affine_act_lanes<decltype(per_lane)::value, decltype(has_residual)::value>(
                lanes_of(y, run, pixels), lanes_of(r, run, pixels), lanes_of(out, run, pixels),
                a + run.c, b + run.c, relu, run.length, run.count);
          });
        });
      });
}

void batch_norm_act_backward_reduce(const at::Tensor& grad_output, const at::Tensor& input,
                                    const std::optional<at::Tensor>& residual,
                                    const at::Tensor& scale, const at::Tensor& shift,
                                    const at::Tensor& mean, const at::Tensor& invstd,
                                    const at::Tensor& sum_dz, const at::Tensor& sum_dz_xhat,
                                    bool relu) {
  check_backward_args(grad_output, input, residual, scale, shift, mean, invstd, sum_dz,
                      sum_dz_xhat);
  const Extent e(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_batch_norm_act_backward_reduce",
      [&] {
        using T = at::opmath_type<scalar_t>;
        const ChannelView<const scalar_t> g(grad_output), y(input), r(residual);
        std::vector<double> a(e.c, 0.0), b(e.c, 0.0);
        with_flags(use_pixel_tiles(input), residual.has_value(), [&](auto pixels, auto with_r) {
          backward_sums<decltype(pixels)::value, decltype(with_r)::value>(
              g, y, r, e, scale.const_data_ptr<T>(), shift.const_data_ptr<T>(),
              mean.const_data_ptr<T>(), relu, a.data(), b.data());
        });
        T* dz_out = sum_dz.data_ptr<T>();
        T* dz_xhat_out = sum_dz_xhat.data_ptr<T>();
        const T* inv = invstd.const_data_ptr<T>();
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
  check_backward_args(grad_output, input, residual, scale, shift, mean, invstd, sum_dz,
                      sum_dz_xhat);
  check_output(grad_input, input, "grad_input");
  check_disjoint(grad_input, "grad_input", grad_output, "grad_output");
  check_disjoint(grad_input, "grad_input", input, "input");
  if (residual.has_value()) check_disjoint(grad_input, "grad_input", *residual, "residual");
  if (grad_residual.has_value()) {
    check_output(*grad_residual, input, "grad_residual");
    check_disjoint(*grad_residual, "grad_residual", grad_input, "grad_input");
    check_disjoint(*grad_residual, "grad_residual", grad_output, "grad_output");
    check_disjoint(*grad_residual, "grad_residual", input, "input");
    if (residual.has_value()) {
      check_disjoint(*grad_residual, "grad_residual", *residual, "residual");
    }
  }
  const Extent e(input);
  if (input.numel() == 0) return;
  const bool pixels = use_pixel_tiles(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_batch_norm_act_backward", [&] {
        using T = at::opmath_type<scalar_t>;
        const T *a = scale.const_data_ptr<T>(), *inv = invstd.const_data_ptr<T>();
        const T *s_dz = sum_dz.const_data_ptr<T>(), *s_dz_xhat = sum_dz_xhat.const_data_ptr<T>();
        const T count = static_cast<T>(e.count());
        std::vector<T> mean_dz(e.c), k(e.c);
        for (int64_t c = 0; c < e.c; ++c) {
          mean_dz[c] = s_dz[c] / count;
          k[c] = a[c] * inv[c] * s_dz_xhat[c] / count;
        }
        const BackwardCoefficients<T> p{a, shift.const_data_ptr<T>(), mean.const_data_ptr<T>(),
                                        mean_dz.data(), k.data()};
        const ChannelView<const scalar_t> g(grad_output), y(input), r(residual);
        const ChannelView<scalar_t> dy(grad_input), dr(grad_residual);
        with_flags(pixels, residual.has_value(), [&](auto per_lane, auto has_residual) {
          constexpr bool kPerLane = decltype(per_lane)::value;
          constexpr bool kResidual = decltype(has_residual)::value;
          for_each_run(e, pixels, [&](const Run& run) {
            const auto lanes = [&](auto centred) {
              backward_lanes<kPerLane, kResidual, decltype(centred)::value>(
                  lanes_of(g, run, pixels), lanes_of(y, run, pixels), lanes_of(r, run, pixels),
                  lanes_of(dy, run, pixels), lanes_of(dr, run, pixels), p.from(run.c), relu,
                  run.length, run.count);
            };
            if (kPerLane || k[run.c] != T(0)) {
              lanes(std::true_type{});
            } else {
              lanes(std::false_type{});
            }
          });
        });
      });
}

}  // namespace fastcnn::cpu
