// Forward of 2-d max-pooling (max_pool.h says what is computed): the two tilings over the
// lane kernels of max_pool_lanes.h, and the scalar loop of windows whose positions need
// 64 bits.
#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "max_pool.h"
#include "max_pool_lanes.h"
#include "rows.h"

namespace fastcnn::cpu::max_pool_detail {
namespace {

// Writes n lanes of maxima (and winners) to their place in y (and positions).
template <typename scalar_t, typename pos_t, bool kPositions, typename T>
FASTCNN_INLINE void store_lanes(const T* m, const int32_t* p, scalar_t* y, int64_t y_stride,
                                pos_t* positions, int64_t positions_stride, int64_t n) {
  store_row(m, y, y_stride, n);
  if constexpr (kPositions) store_row(p, positions, positions_stride, n);
}

// Output rows per block of a plane: the block's input rows, their split and their
// horizontal maxima stay in L2.
int64_t output_rows_per_block(const Axis& ah, const Axis& aw, int64_t element_size) {
  constexpr int64_t kBudget = 256 * 1024;
  const int64_t per_input_row = element_size * (2 * aw.in + aw.padded_out) + 4 * aw.padded_out;
  const int64_t input_rows = std::max(ah.span(), kBudget / std::max<int64_t>(per_input_row, 1));
  return std::clamp((input_rows - ah.span()) / ah.stride + 1, int64_t{1}, ah.out);
}

template <typename scalar_t, typename pos_t, bool kPositions>
void forward_planes(const ForwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const int64_t lanes = aw.padded_out;
  const int64_t block = output_rows_per_block(ah, aw, sizeof(T));
  const int64_t max_rows = std::min(ah.in, (block - 1) * ah.stride + ah.span());
  // rows used where they lie when they are one contiguous run of T, else converted
  const bool in_place = std::is_same_v<T, scalar_t> && args.x.stride_w == 1 &&
                        (args.x.stride_h == aw.in || ah.in == 1);
  const bool direct = std::is_same_v<T, scalar_t> && args.y.stride_w == 1 &&
                      args.y.stride_h == aw.out;
  // rows oh < direct_row_end have oh * out + lanes <= the plane's size
  const int64_t plane_size = ah.out * aw.out;
  const int64_t direct_row_end = plane_size >= lanes ? (plane_size - lanes) / aw.out + 1 : 0;
  SplitRows layout;
  layout.stride = aw.stride;
  layout.margin = (aw.pad / aw.stride + 1) * aw.stride;
  layout.length = (layout.margin + max_rows * aw.in + aw.span()) / aw.stride + lanes + 1;
  // the plain path (values of planes without NaN), where it goes
  const auto across = plain_across<T>(aw);
  const bool plain = !kPositions && in_place && args.y.stride_w == 1 && across != nullptr &&
                     every_window_reaches_input(ah) && every_window_reaches_input(aw);
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> converted(in_place ? 0 : max_rows * aw.in);
    std::vector<T> phases(aw.tabled ? aw.stride * layout.length : 0), hm(max_rows * lanes),
        m(block * lanes);
    std::vector<int32_t> hp(kPositions ? max_rows * lanes : 0), p(kPositions ? block * lanes : 0);
    std::vector<T> v(plain ? plain_row_lanes(aw) : 0);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      if constexpr (std::is_same_v<T, scalar_t>) {
        const T* next = plane + 1 < end ? args.x.at((plane + 1) / args.channels,
                                                    (plane + 1) % args.channels, 0, 0)
                                        : nullptr;
        if (plain && plain_plane<T>(args.x.at(n, c, 0, 0), args.x.stride_h, args.y.at(n, c, 0, 0),
                                    args.y.stride_h, ah, aw, across, v.data(), next)) {
          continue;
        }
      }
      for (int64_t oh0 = 0; oh0 < ah.out; oh0 += block) {
        const int64_t oh1 = std::min(ah.out, oh0 + block);
        // the input rows the block's windows reach
        const int64_t first_row = std::max<int64_t>(0, ah.start(oh0));
        const int64_t last_row = std::min(ah.in - 1, ah.start(oh1 - 1) + (ah.kernel - 1) * ah.dilation);
        const int64_t rows = std::max<int64_t>(0, last_row - first_row + 1);
        const T* flat;
        if constexpr (std::is_same_v<T, scalar_t>) {
          if (in_place) flat = args.x.at(n, c, first_row, 0);
        }
        if (!in_place) {
          for (int64_t r = 0; r < rows; ++r) {
            load_row(args.x.at(n, c, first_row + r, 0), args.x.stride_w,
                     converted.data() + r * aw.in, aw.in);
          }
          flat = converted.data();
        }
        if (aw.tabled) layout.split(flat, rows * aw.in, phases.data());
        row_windows<T, kPositions>(flat, phases.data(), layout, rows, aw, hm.data(), hp.data());
        // values go straight to a contiguous output plane, in the rows whose overshoot
        // stays inside the plane (it lands on rows written after them)
        const int64_t direct_rows =
            direct ? std::clamp(direct_row_end - oh0, int64_t{0}, oh1 - oh0) : 0;
        if (direct_rows > 0) {
          if constexpr (std::is_same_v<T, scalar_t>) {
            column_windows<T, kPositions>(hm.data(), hp.data(), first_row, ah, aw.kernel, oh0,
                                          oh0 + direct_rows, lanes, args.y.at(n, c, oh0, 0),
                                          aw.out, p.data());
          }
        }
        if (direct_rows < oh1 - oh0) {
          column_windows<T, kPositions>(
              hm.data(), hp.data(), first_row, ah, aw.kernel, oh0 + direct_rows, oh1, lanes,
              m.data() + direct_rows * lanes, lanes, p.data() + direct_rows * lanes);
        }
        for (int64_t oh = oh0; oh < oh1; ++oh) {
          if (oh - oh0 >= direct_rows) {
            store_row(m.data() + (oh - oh0) * lanes, args.y.at(n, c, oh, 0), args.y.stride_w,
                      aw.out);
          }
          if constexpr (kPositions) {
            store_row(p.data() + (oh - oh0) * lanes, args.positions.at(n, c, oh, 0),
                      args.positions.stride_w, aw.out);
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename pos_t, bool kPositions>
void forward_pixels(const ForwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const int64_t lanes = args.channels, window = ah.max_taps * aw.max_taps;
  at::parallel_for(0, args.batch * ah.out, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> converted(std::is_same_v<T, scalar_t> && args.x.stride_c == 1 ? 0 : window * lanes);
    std::vector<T> m(lanes);
    std::vector<int32_t> p(kPositions ? lanes : 0), codes(window);
    std::vector<const T*> taps(window);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / ah.out, oh = row % ah.out;
      for (int64_t ow = 0; ow < aw.out; ++ow) {
        int64_t count = 0;
        for (int64_t kh = ah.first_tap[oh]; kh < ah.end_tap[oh]; ++kh) {
          const int64_t ih = ah.start(oh) + kh * ah.dilation;
          for (int64_t kw = aw.first_tap[ow]; kw < aw.end_tap[ow]; ++kw, ++count) {
            const int64_t iw = aw.start(ow) + kw * aw.dilation;
            taps[count] = lanes_of<T>(args.x.at(n, 0, ih, iw), args.x.stride_c,
                                      converted.data() + count * lanes, lanes);
            codes[count] = static_cast<int32_t>(kh * aw.kernel + kw);
          }
        }
        if (count == 0) {  // no tap in bounds (odd dilations): -inf
          std::fill(m.begin(), m.end(), kMinusInf<T>);
          std::fill(p.begin(), p.end(),
                    static_cast<int32_t>(ah.first_tap[oh] * aw.kernel + aw.first_tap[ow]));
        } else {
          max_of_taps<T, kPositions>(taps.data(), codes.data(), count, m.data(),
                                     p.data(), lanes);
        }
        store_lanes<scalar_t, pos_t, kPositions>(
            m.data(), p.data(), args.y.at(n, 0, oh, ow), args.y.stride_c,
            args.positions.at(n, 0, oh, ow), args.positions.stride_c, lanes);
      }
    }
  });
}


// ---------------------------------------------------------------------------------------
// Windows of more taps than int32 can number (positions are int64): the lane kernels
// keep int32 positions, so these scan each window's taps in the input one by one, and
// gather each input's gradient over the windows that hold it, in the same orders.
// ---------------------------------------------------------------------------------------

template <typename scalar_t>
void forward_wide(const ForwardArgs<scalar_t, int64_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      for (int64_t oh = 0; oh < ah.out; ++oh) {
        for (int64_t ow = 0; ow < aw.out; ++ow) {
          T best = kMinusInf<T>;
          int64_t winner = ah.first_tap[oh] * aw.kernel + aw.first_tap[ow];
          for (int64_t kh = ah.first_tap[oh]; kh < ah.end_tap[oh]; ++kh) {
            const int64_t ih = ah.start(oh) + kh * ah.dilation;
            for (int64_t kw = aw.first_tap[ow]; kw < aw.end_tap[ow]; ++kw) {
              const T v = *args.x.at(n, c, ih, aw.start(ow) + kw * aw.dilation);
              if (replaces(v, best)) {
                best = v;
                winner = kh * aw.kernel + kw;
              }
            }
          }
          *args.y.at(n, c, oh, ow) = static_cast<scalar_t>(best);
          *args.positions.at(n, c, oh, ow) = winner;
        }
      }
    }
  });
}

}  // namespace

void forward(const at::Tensor& input, const at::Tensor& output,
             const std::optional<at::Tensor>& positions, const Axis& h, const Axis& w) {
  const bool with_positions = positions.has_value();
  const bool pixels = channels_innermost(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_max_pool2d_forward", [&] {
        dispatch_positions(with_positions ? positions->scalar_type() : at::kByte, [&](auto tag) {
          using pos_t = decltype(tag);
          const ForwardArgs<scalar_t, pos_t> args{
              ImageView<const scalar_t>(input), ImageView<scalar_t>(output),
              ImageView<pos_t>(with_positions ? *positions : output), input.size(0),
              input.size(1), h, w};
          if constexpr (std::is_same_v<pos_t, int64_t>) {
            forward_wide(args);
          } else if (with_positions) {
            pixels ? forward_pixels<scalar_t, pos_t, true>(args)
                   : forward_planes<scalar_t, pos_t, true>(args);
          } else {
            pixels ? forward_pixels<scalar_t, pos_t, false>(args)
                   : forward_planes<scalar_t, pos_t, false>(args);
          }
        });
      });
}

}  // namespace fastcnn::cpu::max_pool_detail
