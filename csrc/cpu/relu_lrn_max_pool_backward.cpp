// Backward of ReLU -> LRN -> max-pooling on CPU tensors (relu_lrn_max_pool.h says what is
// computed): g = dL/dz from dL/dy and the winners' positions, then LRN's gradient and the
// ReLU's mask, in one pass over x. g takes each output's gradient at its winner only, the
// windows over an element adding by increasing (oh, ow), as in max_pool_backward.cpp.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>

#include "relu_lrn_max_pool.h"

namespace fastcnn::cpu::relu_lrn_max_pool_detail {
namespace {

// acc[i] += g[i] where the winner p[i] is the tap `code`, for n lanes.
template <typename T>
FASTCNN_TARGET_CLONES void gather_lanes(const T* __restrict g, const int32_t* __restrict p,
                                        int32_t code, T* __restrict acc, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = g[i];  // loaded whether or not it is added, so that the loop vectorises
    acc[i] += p[i] == code ? v : T(0);
  }
}

// g of input rows [ih0, ih1) of channel c (rows of aw.in lanes into `out`): each output of
// rows [first_out, last_out] adds its gradient at its winner, if the winner lies in these
// rows, in increasing (oh, ow) order. `tap_offset` gives the winner's offset from its
// window's first tap, aw.in per row, by position (past the window's taps: outside any band).
template <typename scalar_t, typename T>
void scatter_band(const GradArgs<scalar_t>& d, int64_t n, int64_t c, const Axis& ah,
                  const Axis& aw, int64_t ih0, int64_t ih1, int64_t first_out, int64_t last_out,
                  const int64_t* tap_offset, T* out) {
  const auto size = static_cast<uint64_t>((ih1 - ih0) * aw.in);
  std::fill(out, out + size, T(0));
  for (int64_t oh = first_out; oh <= last_out; ++oh) {
    const scalar_t* g = d.g.at(n, c, oh, 0);
    const uint8_t* p = d.positions.at(n, c, oh, 0);
    const int64_t row = (ah.start(oh) - ih0) * aw.in;
    for (int64_t ow = 0; ow < aw.out; ++ow) {
      // one unsigned comparison keeps the winners of other bands (and any position that
      // is not a winner's) out
      const int64_t winner = tap_offset[p[ow * d.positions.stride_w]];
      const auto at = static_cast<uint64_t>(row + aw.start(ow) + winner);
      if (at < size) out[at] += static_cast<T>(g[ow * d.g.stride_w]);
    }
  }
}

template <typename scalar_t>
void backward_planes(const Args<scalar_t>& a, const GradArgs<scalar_t>& d) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = a.h;
  const Axis& aw = a.w;
  const LrnConstants<T>& lrn = a.lrn;
  const Bands bands(ah.in, kBandPositions / std::max<int64_t>(1, aw.in), a.batch);
  const int64_t max_width = bands.size * aw.in;
  int64_t tap_offset[kMaxTaps];
  for (int64_t code = 0; code < kMaxTaps; ++code) {
    const int64_t kh = code / aw.kernel, kw = code % aw.kernel;
    tap_offset[code] = kh < ah.kernel ? kh * aw.in + kw : std::numeric_limits<int64_t>::min() / 4;
  }
  const int64_t slots = lrn.window_rows();
  at::parallel_for(0, a.batch * bands.parts, 1, [&](int64_t begin, int64_t end) {
    ChannelRing<T> r(slots, max_width), gz(slots, max_width), g_over_q(slots, max_width),
        t(slots, max_width);
    std::vector<T> sums(max_width);
    std::vector<scalar_t> scratch(max_width);
    std::vector<const T*> window;
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n = tile / bands.parts;
      const int64_t ih0 = tile % bands.parts * bands.size;
      const int64_t ih1 = std::min(ah.in, ih0 + bands.size);
      const int64_t rows = ih1 - ih0, width = rows * aw.in;
      int64_t first_out = ah.out, last_out = -1;
      for (int64_t ih = ih0; ih < ih1; ++ih) {
        ah.for_each_cover(ih, [&](int64_t, int64_t oh) {
          first_out = std::min(first_out, oh);
          last_out = std::max(last_out, oh);
        });
      }
      const bool direct = band_is_one_run(d.dx, rows, aw.in);
      // Step m loads channel m, makes the terms of channel j = m - hi (its window ends at
      // m) and finishes channel c = j - lo (its transposed window ends at j).
      for (int64_t m = 0; m < a.channels + lrn.hi + lrn.lo; ++m) {
        if (m < a.channels) {
          load_relu_band(a.x, n, m, ih0, rows, aw.in, r.row(m));
          if (m + 1 < a.channels) prefetch_band(a.x, n, m + 1, ih0, rows, aw.in);
          scatter_band(d, n, m, ah, aw, ih0, ih1, first_out, last_out, tap_offset, gz.row(m));
        }
        const int64_t j = m - lrn.hi;
        if (j >= 0 && j < a.channels) {
          relu_lrn_terms(lrn, ring_window(r, j - lrn.lo, j + lrn.hi, a.channels, window),
                         static_cast<const T*>(r.row(j)), static_cast<const T*>(gz.row(j)),
                         g_over_q.row(j), t.row(j), sums.data(), width);
        }
        const int64_t c = j - lrn.lo;
        if (c < 0) continue;
        scalar_t* out = direct ? d.dx.at(n, c, ih0, 0) : scratch.data();
        relu_lrn_grad(lrn.grad_coef, ring_window(t, c - lrn.hi, c + lrn.lo, a.channels, window),
                      static_cast<const T*>(r.row(c)), static_cast<const T*>(g_over_q.row(c)),
                      out, sums.data(), width);
        for (int64_t ih = ih0; !direct && ih < ih1; ++ih) {
          store_row(static_cast<const scalar_t*>(scratch.data()) + (ih - ih0) * aw.in,
                    d.dx.at(n, c, ih, 0), d.dx.stride_w, aw.in);
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_pixels(const Args<scalar_t>& a, const GradArgs<scalar_t>& d) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = a.h;
  const Axis& aw = a.w;
  const LrnConstants<T>& lrn = a.lrn;
  const int64_t lanes = a.channels, rows = lrn.window_rows();
  const int64_t grain = std::max<int64_t>(1, 16384 / lanes);
  at::parallel_for(0, a.batch * ah.in * aw.in, grain, [&](int64_t begin, int64_t end) {
    // r padded by (lo, hi) zeros: its window; t padded by (hi, lo): the transposed window
    std::vector<T> r_padded(lrn.lo + lanes + lrn.hi, T(0)), t_padded(lrn.hi + lanes + lrn.lo, T(0));
    std::vector<const T*> r_shifts(rows), t_shifts(rows);
    for (int64_t i = 0; i < rows; ++i) {
      r_shifts[i] = r_padded.data() + i;
      t_shifts[i] = t_padded.data() + i;
    }
    std::vector<T> gz(lanes), g_lanes(lanes), g_over_q(lanes), sums(lanes);
    std::vector<scalar_t> scratch(lanes);
    std::vector<int32_t> p(lanes);
    T* r = r_padded.data() + lrn.lo;
    T* t = t_padded.data() + lrn.hi;
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t n = pixel / (ah.in * aw.in);
      const int64_t ih = pixel / aw.in % ah.in, iw = pixel % aw.in;
      std::fill(gz.begin(), gz.end(), T(0));
      ah.for_each_cover(ih, [&](int64_t kh, int64_t oh) {
        aw.for_each_cover(iw, [&](int64_t kw, int64_t ow) {
          const T* g = lanes_of<T>(d.g.at(n, 0, oh, ow), d.g.stride_c, g_lanes.data(), lanes);
          load_row(d.positions.at(n, 0, oh, ow), d.positions.stride_c, p.data(), lanes);
          gather_lanes(g, static_cast<const int32_t*>(p.data()),
                       static_cast<int32_t>(kh * aw.kernel + kw), gz.data(), lanes);
        });
      });
      load_relu_row(a.x.at(n, 0, ih, iw), a.x.stride_c, r, lanes);
      relu_lrn_terms(lrn, Rows<T>{r_shifts.data(), rows}, static_cast<const T*>(r),
                     static_cast<const T*>(gz.data()), g_over_q.data(), t, sums.data(), lanes);
      scalar_t* out = d.dx.stride_c == 1 ? d.dx.at(n, 0, ih, iw) : scratch.data();
      relu_lrn_grad(lrn.grad_coef, Rows<T>{t_shifts.data(), rows}, static_cast<const T*>(r),
                    static_cast<const T*>(g_over_q.data()), out, sums.data(), lanes);
      if (d.dx.stride_c != 1) {
        store_row(static_cast<const scalar_t*>(scratch.data()), d.dx.at(n, 0, ih, iw),
                  d.dx.stride_c, lanes);
      }
    }
  });
}

}  // namespace

void backward(const at::Tensor& input, const at::Tensor& grad_output,
              const at::Tensor& positions, const at::Tensor& grad_input,
              const LrnArgs& lrn_args, const Axis& h, const Axis& w) {
  const bool pixels = channels_innermost(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_relu_lrn_max_pool2d_backward", [&] {
        const LrnConstants<at::opmath_type<scalar_t>> lrn(lrn_args.size, input.size(1),
                                                          lrn_args.alpha, lrn_args.beta,
                                                          lrn_args.k);
        const Args<scalar_t> a{ImageView<const scalar_t>(input), input.size(0), input.size(1),
                               lrn, h, w};
        const GradArgs<scalar_t> d{ImageView<const scalar_t>(grad_output),
                                   ImageView<const uint8_t>(positions),
                                   ImageView<scalar_t>(grad_input)};
        pixels ? backward_pixels(a, d) : backward_planes(a, d);
      });
}

}  // namespace fastcnn::cpu::relu_lrn_max_pool_detail
