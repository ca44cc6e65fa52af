// ReLU -> LRN -> max-pooling on CPU tensors (relu_lrn_max_pool.h says what is computed):
// the entry points, which check their arguments and plan the two pooling axes, and the
// forward drivers.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/Dispatch.h>

#include "max_pool_lanes.h"
#include "ops.h"
#include "relu_lrn_max_pool.h"

namespace fastcnn::cpu {
namespace relu_lrn_max_pool_detail {
namespace {

using max_pool_detail::kVectorLanes;
using max_pool_detail::SplitRows;

// relu(x) of `width` positions (src + iw * stride_w) of `channels` channels (stride_c
// apart) each, position iw's into dst + iw * pitch.
template <typename scalar_t, typename T>
FASTCNN_TARGET_CLONES void load_relu_positions(const scalar_t* src, int64_t stride_w,
                                               int64_t stride_c, T* __restrict dst,
                                               int64_t pitch, int64_t width, int64_t channels) {
  for (int64_t iw = 0; iw < width; ++iw) {
    const scalar_t* from = src + iw * stride_w;
    T* to = dst + iw * pitch;
    if (stride_c == 1) {
#pragma omp simd
      for (int64_t c = 0; c < channels; ++c) {
        const T v = static_cast<T>(from[c]);
        to[c] = v < T(0) ? T(0) : v;
      }
    } else {
      for (int64_t c = 0; c < channels; ++c) {
        const T v = static_cast<T>(from[c * stride_c]);
        to[c] = v < T(0) ? T(0) : v;
      }
    }
  }
}

// The vertical axis of each band of output rows [oh0, oh0 + size): its input rows from
// the first its windows reach, and the top padding where it has some.
std::vector<Axis> band_axes(const Axis& ah, int64_t size, int64_t parts) {
  std::vector<Axis> axes;
  for (int64_t b = 0; b < parts; ++b) {
    const int64_t oh0 = b * size, oh1 = std::min(ah.out, oh0 + size);
    const int64_t first_row = std::max<int64_t>(0, ah.start(oh0));
    const int64_t last_row = std::min(ah.in - 1, ah.start(oh1 - 1) + ah.kernel - 1);
    axes.emplace_back(last_row - first_row + 1, oh1 - oh0, ah.kernel, ah.stride,
                      first_row - ah.start(oh0), 1);
  }
  return axes;
}

template <typename scalar_t, bool kPositions>
void forward_planes(const Args<scalar_t>& a, const ImageView<scalar_t>& y,
                    const ImageView<uint8_t>& positions) {
  using T = at::opmath_type<scalar_t>;
  const Axis& aw = a.w;
  const LrnConstants<T>& lrn = a.lrn;
  const int64_t lanes = aw.padded_out;
  const Bands bands(a.h.out, kBandPositions / std::max<int64_t>(1, a.h.stride * aw.in), a.batch);
  const std::vector<Axis> axes = band_axes(a.h, bands.size, bands.parts);
  const int64_t max_rows = std::min(a.h.in, (bands.size - 1) * a.h.stride + a.h.span());
  const int64_t max_width = max_rows * aw.in;
  SplitRows layout;  // as max_pool_forward.cpp splits the rows of a block
  layout.stride = aw.stride;
  layout.margin = (aw.pad / aw.stride + 1) * aw.stride;
  layout.length = (layout.margin + max_width + aw.span()) / aw.stride + lanes + 1;
  // Inference takes max-pooling's plain path where it goes (and the plane has no NaN): with
  // no winner to record, the maximum down the rows first, then across.
  const auto across = max_pool_detail::plain_across<T>(aw);
  const bool plain = !kPositions && across != nullptr &&
                     max_pool_detail::every_window_reaches_input(a.h) &&
                     max_pool_detail::every_window_reaches_input(aw);
  at::parallel_for(0, a.batch * bands.parts, 1, [&](int64_t begin, int64_t end) {
    ChannelRing<T> r(lrn.window_rows(), max_width);
    // z, and the plain path's output rows (aw.out apart), with room for its whole vectors
    // past the band (plain_plane may run a short band's first row over a whole vector)
    std::vector<T> sums(max_width), z(max_width + kVectorLanes);
    std::vector<T> phases(aw.tabled ? aw.stride * layout.length : 0), hm(max_rows * lanes);
    std::vector<T> m(bands.size * lanes + 2 * kVectorLanes);
    std::vector<T> v(plain ? max_pool_detail::plain_row_lanes(aw) : 0);
    std::vector<int32_t> hp(kPositions ? max_rows * lanes : 0);
    std::vector<int32_t> p(kPositions ? bands.size * lanes : 0);
    std::vector<const T*> window;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / bands.parts;
      const Axis& ah = axes[tile % bands.parts];  // rows from first_row on
      const int64_t oh0 = tile % bands.parts * bands.size, oh1 = oh0 + ah.out;
      const int64_t first_row = std::max<int64_t>(0, a.h.start(oh0));
      const int64_t width = ah.in * aw.in;
      // Step j loads channel j and finishes channel c = j - hi, whose window ends at j.
      for (int64_t j = 0; j < a.channels + lrn.hi; ++j) {
        if (j < a.channels) load_relu_band(a.x, n, j, first_row, ah.in, aw.in, r.row(j));
        if (j + 1 < a.channels) prefetch_band(a.x, n, j + 1, first_row, ah.in, aw.in);
        const int64_t c = j - lrn.hi;
        if (c < 0) continue;
        relu_lrn(lrn, ring_window(r, c - lrn.lo, c + lrn.hi, a.channels, window),
                 static_cast<const T*>(r.row(c)), z.data(), sums.data(), width);
        if (plain && max_pool_detail::plain_plane<T>(z.data(), aw.in, m.data(), aw.out, ah, aw,
                                                     across, v.data(), nullptr)) {
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            store_row(m.data() + (oh - oh0) * aw.out, y.at(n, c, oh, 0), y.stride_w, aw.out);
          }
          continue;
        }
        if (aw.tabled) layout.split(z.data(), width, phases.data());
        max_pool_detail::row_windows<T, kPositions>(z.data(), phases.data(), layout, ah.in, aw,
                                                    hm.data(), hp.data());
        max_pool_detail::column_windows<T, kPositions>(hm.data(), hp.data(), 0, ah, aw.kernel, 0,
                                                       ah.out, lanes, m.data(), lanes, p.data());
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          store_row(m.data() + (oh - oh0) * lanes, y.at(n, c, oh, 0), y.stride_w, aw.out);
          if constexpr (kPositions) {
            store_row(p.data() + (oh - oh0) * lanes, positions.at(n, c, oh, 0),
                      positions.stride_w, aw.out);
          }
        }
      }
    }
  });
}

template <typename scalar_t, bool kPositions>
void forward_pixels(const Args<scalar_t>& a, const ImageView<scalar_t>& y,
                    const ImageView<uint8_t>& positions) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = a.h;
  const Axis& aw = a.w;
  const LrnConstants<T>& lrn = a.lrn;
  const int64_t lanes = a.channels;
  // A row of relu(x) holds each position's channels between lo and hi zeros, so that the
  // windows of a whole row are shifted copies of it: z of position iw, channel c, lands
  // at iw * pitch + c.
  const int64_t pitch = lrn.lo + lanes + lrn.hi, row_lanes = aw.in * pitch;
  const int64_t z_lanes = row_lanes - lrn.lo - lrn.hi;
  const int64_t window_taps = ah.max_taps * aw.max_taps;
  // Bands of output rows, as few as keep every thread busy: the rows of z shared by two
  // bands are computed by both.
  const Bands bands(ah.out, ah.out, a.batch);
  const int64_t slots = std::min(ah.kernel, ah.in);
  at::parallel_for(0, a.batch * bands.parts, 1, [&](int64_t begin, int64_t end) {
    // z of input row ih lives in slot ih % slots: a window's rows are consecutive
    std::vector<T> ring(slots * row_lanes), padded(row_lanes, T(0)), sums(z_lanes), m(lanes);
    std::vector<const T*> shifts(lrn.window_rows()), taps(window_taps);
    for (int64_t r = 0; r < lrn.window_rows(); ++r) shifts[r] = padded.data() + r;
    std::vector<int32_t> p(lanes), codes(window_taps);
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / bands.parts;
      const int64_t oh0 = tile % bands.parts * bands.size;
      int64_t next_row = 0;  // rows of z below it are in the ring (those still needed)
      for (int64_t oh = oh0; oh < std::min(ah.out, oh0 + bands.size); ++oh) {
        const int64_t row0 = ah.start(oh) + ah.first_tap[oh], row1 = ah.start(oh) + ah.end_tap[oh];
        for (int64_t ih = std::max(next_row, row0); ih < row1; ++ih) {
          load_relu_positions(a.x.at(n, 0, ih, 0), a.x.stride_w, a.x.stride_c,
                              padded.data() + lrn.lo, pitch, aw.in, lanes);
          relu_lrn(lrn, Rows<T>{shifts.data(), lrn.window_rows()},
                   static_cast<const T*>(padded.data() + lrn.lo),
                   ring.data() + ih % slots * row_lanes, sums.data(), z_lanes);
        }
        next_row = std::max(next_row, row1);
        for (int64_t ow = 0; ow < aw.out; ++ow) {
          int64_t count = 0;
          for (int64_t kh = ah.first_tap[oh]; kh < ah.end_tap[oh]; ++kh) {
            const T* z_row = ring.data() + (ah.start(oh) + kh) % slots * row_lanes;
            for (int64_t kw = aw.first_tap[ow]; kw < aw.end_tap[ow]; ++kw, ++count) {
              taps[count] = z_row + (aw.start(ow) + kw) * pitch;
              codes[count] = static_cast<int32_t>(kh * aw.kernel + kw);
            }
          }
          max_pool_detail::max_of_taps<T, kPositions>(taps.data(), codes.data(), count, m.data(),
                                                      p.data(), lanes);
          store_row(m.data(), y.at(n, 0, oh, ow), y.stride_c, lanes);
          if constexpr (kPositions) {
            store_row(p.data(), positions.at(n, 0, oh, ow), positions.stride_c, lanes);
          }
        }
      }
    }
  });
}

}  // namespace

void forward(const at::Tensor& input, const at::Tensor& output,
             const std::optional<at::Tensor>& positions, const LrnArgs& lrn_args, const Axis& h,
             const Axis& w) {
  const bool pixels = channels_innermost(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_relu_lrn_max_pool2d_forward", [&] {
        const LrnConstants<at::opmath_type<scalar_t>> lrn(lrn_args.size, input.size(1),
                                                          lrn_args.alpha, lrn_args.beta,
                                                          lrn_args.k);
        const Args<scalar_t> a{ImageView<const scalar_t>(input), input.size(0), input.size(1),
                               lrn, h, w};
        const ImageView<scalar_t> y(output);
        const ImageView<uint8_t> p(positions.has_value() ? *positions : output);
        const auto run = [&](auto with_positions) {
          constexpr bool kPositions = decltype(with_positions)::value;
          pixels ? forward_pixels<scalar_t, kPositions>(a, y, p)
                 : forward_planes<scalar_t, kPositions>(a, y, p);
        };
        positions.has_value() ? run(std::true_type()) : run(std::false_type());
      });
}

}  // namespace relu_lrn_max_pool_detail

namespace {

using relu_lrn_max_pool_detail::Axis;
using relu_lrn_max_pool_detail::kMaxTaps;

// ---------------------------------------------------------------------------------------
// Entry points.
// ---------------------------------------------------------------------------------------

void check_image(const at::Tensor& t, const char* name) {
  check_strided_cpu(t, name);
  TORCH_CHECK(t.dim() == 4, name, " must be (N, C, H, W), got ", t.dim(), " dimensions");
}

void check_float_image(const at::Tensor& t, const at::Tensor& input, const char* name) {
  check_image(t, name);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.scalar_type() == input.scalar_type(), name, " must have the dtype of input (",
              input.scalar_type(), "), got ", t.scalar_type());
}

void check_pooled(const at::Tensor& pooled, const at::Tensor& input, const char* name) {
  check_float_image(pooled, input, name);
  TORCH_CHECK(pooled.size(0) == input.size(0) && pooled.size(1) == input.size(1), name,
              " must have the batch and channels of input ", input.sizes(), ", got ",
              pooled.sizes());
}

void check_positions(const at::Tensor& positions, const at::Tensor& pooled,
                     const char* pooled_name) {
  check_image(positions, "positions");
  TORCH_CHECK(positions.sizes() == pooled.sizes(), "positions must have the shape of ",
              pooled_name, " ", pooled.sizes(), ", got ", positions.sizes());
  TORCH_CHECK(positions.scalar_type() == at::kByte, "positions must be Byte (uint8), got ",
              positions.scalar_type());
}

// The LRN arguments, and the two pooling axes of an input of size in_h x in_w pooled into
// out_h x out_w (the output size is the caller's, fastcnn.ops.pooling.pooled_size; what
// the kernels rely on is that every window starts inside the input or its left padding).
std::pair<Axis, Axis> checked_arguments(int64_t size, int64_t in_h, int64_t in_w, int64_t out_h,
                                        int64_t out_w, at::IntArrayRef kernel_size,
                                        at::IntArrayRef stride, at::IntArrayRef padding) {
  TORCH_CHECK(size >= 1, "size must be >= 1, got ", size);
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2,
              "kernel_size, stride and padding must have 2 values (h, w) each");
  TORCH_CHECK(kernel_size[0] >= 1 && kernel_size[1] >= 1 &&
                  kernel_size[0] * kernel_size[1] <= kMaxTaps,
              "kernel_size must be at least 1 and have at most ", kMaxTaps, " taps, got ",
              kernel_size);
  const int64_t in[2] = {in_h, in_w}, out[2] = {out_h, out_w};
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(stride[d] >= 1, "stride must be >= 1, got ", stride);
    TORCH_CHECK(padding[d] >= 0 && padding[d] <= kernel_size[d] / 2,
                "padding must be between 0 and half of kernel_size ", kernel_size, ", got ",
                padding);
    const int64_t last_start = (out[d] - 1) * stride[d] - padding[d];
    TORCH_CHECK(out[d] >= 1 && last_start < in[d], "output size ", out[d],
                " is impossible for input size ", in[d], ": its last window would start at ",
                last_start);
  }
  return {Axis(in_h, out_h, kernel_size[0], stride[0], padding[0], 1),
          Axis(in_w, out_w, kernel_size[1], stride[1], padding[1], 1)};
}

}  // namespace

void relu_lrn_max_pool2d_forward(const at::Tensor& input, const at::Tensor& output,
                                 const std::optional<at::Tensor>& positions, int64_t size,
                                 double alpha, double beta, double k,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding) {
  check_float_image(input, input, "input");
  check_pooled(output, input, "output");
  const auto axes = checked_arguments(size, input.size(2), input.size(3), output.size(2),
                                      output.size(3), kernel_size, stride, padding);
  check_writable(output, "output");
  check_disjoint(output, "output", input, "input");
  if (positions.has_value()) {
    check_positions(*positions, output, "output");
    check_writable(*positions, "positions");
    check_disjoint(*positions, "positions", input, "input");
    check_disjoint(*positions, "positions", output, "output");
  }
  if (output.numel() == 0) return;
  relu_lrn_max_pool_detail::forward(input, output, positions, {size, alpha, beta, k},
                                    axes.first, axes.second);
}

void relu_lrn_max_pool2d_backward(const at::Tensor& input, const at::Tensor& grad_output,
                                  const at::Tensor& positions, const at::Tensor& grad_input,
                                  int64_t size, double alpha, double beta, double k,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding) {
  check_float_image(input, input, "input");
  check_pooled(grad_output, input, "grad_output");
  check_float_image(grad_input, input, "grad_input");
  TORCH_CHECK(grad_input.sizes() == input.sizes(), "grad_input must have the shape of input ",
              input.sizes(), ", got ", grad_input.sizes());
  const auto axes = checked_arguments(size, input.size(2), input.size(3), grad_output.size(2),
                                      grad_output.size(3), kernel_size, stride, padding);
  check_positions(positions, grad_output, "grad_output");
  check_writable(grad_input, "grad_input");
  check_disjoint(grad_input, "grad_input", input, "input");
  check_disjoint(grad_input, "grad_input", grad_output, "grad_output");
  check_disjoint(grad_input, "grad_input", positions, "positions");
  if (grad_input.numel() == 0) return;
  relu_lrn_max_pool_detail::backward(input, grad_output, positions, grad_input,
                                     {size, alpha, beta, k}, axes.first, axes.second);
}

}  // namespace fastcnn::cpu
