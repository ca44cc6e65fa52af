// Local response normalization (Krizhevsky et al., 2012, section 3.3) on CPU tensors.
//
// For x of shape (N, C, S), with the window of channel c being [c - lo, c + hi] where
// lo = size / 2 and hi = (size - 1) / 2 (zero padding outside [0, C), as PyTorch):
//
//   s_c = k + alpha / size * sum_{j in window(c)} x_j^2
//   y_c = x_c / s_c^beta
//
// and, with g = dL/dy, the gradient (c lies in window(j) exactly when j is in
// [c - hi, c + lo], the transposed window):
//
//   dL/dx_c = g_c / s_c^beta - (2 alpha beta / size) x_c sum_{j in [c - hi, c + lo]} t_j,
//   t_j = g_j x_j / (s_j^beta s_j).
//
// Both directions make one pass over memory: every element of x (and g) is read from
// memory once and every output written once; the window sums re-read rows that are still
// in L1/L2. Backward needs only x and g: it recomputes s from x, which is cheaper than
// writing s out in forward and reading it back.
//
// Two tilings; the vector lanes run along the axis that is contiguous in memory (see
// use_pixel_tiles, common.h):
//   channel rows (NCHW): a tile is a run of up to kMaxRowWidth spatial positions of one
//     image, walked channel by channel, so the reads stream through memory in order. Rows
//     are used where they lie (float32 and float64), or converted to the accumulation type
//     into a ring holding the rows the current windows need;
//   pixels (channels_last): a tile is the C channels of one position; a window is a set of
//     shifted copies of one zero-padded row.
// Other strides work in either tiling, with strided loads and stores.
#include <algorithm>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "../common.h"
#include "ops.h"
#include "lrn_rows.h"
#include "rows.h"

namespace fastcnn::cpu {
namespace {

// Spatial positions per channel-rows tile: long enough that each channel row is a long
// sequential read, short enough that the rings of rows stay in L2.
constexpr int64_t kMaxRowWidth = 1024;
constexpr int64_t kMinRowWidth = 256;

// ---------------------------------------------------------------------------------------
// Tile drivers.
// ---------------------------------------------------------------------------------------

// Rows of channel-rows buffers kept in rings: channel j lives in slot j % slots.
template <typename T>
class RowRing {
 public:
  RowRing(int64_t slots, int64_t width)
      : slots_(slots), width_(width), data_(slots * width, T(0)) {}

  T* row(int64_t channel) { return data_.data() + (channel % slots_) * width_; }

 private:
  int64_t slots_;
  int64_t width_;
  std::vector<T> data_;
};

// The rows of channels [first, last], clipped to [0, channels), collected into `out`.
template <typename T, typename RowOf>
Rows<T> window_rows(int64_t first, int64_t last, int64_t channels, RowOf row_of,
                    std::vector<const T*>& out) {
  out.clear();
  for (int64_t j = std::max<int64_t>(first, 0); j <= std::min(last, channels - 1); ++j) {
    out.push_back(row_of(j));
  }
  return {out.data(), static_cast<int64_t>(out.size())};
}

// The channel rows of one input over a tile, as T. Float32 (and float64) rows that are
// contiguous in memory are read where they are; others are converted into a ring.
template <typename scalar_t, typename T>
class RowSource {
 public:
  RowSource(const ChannelView<const scalar_t>& view, int64_t slots, int64_t width)
      : view_(view),
        direct_(std::is_same_v<scalar_t, T> && view.stride_s == 1),
        ring_(direct_ ? 0 : slots, width) {}

  void start_tile(int64_t n, int64_t s0, int64_t w) {
    n_ = n;
    s0_ = s0;
    w_ = w;
  }

  void load(int64_t channel) {
    if (!direct_) load_row(view_.at(n_, channel, s0_), view_.stride_s, ring_.row(channel), w_);
  }

  const T* row(int64_t channel) {
    if constexpr (std::is_same_v<scalar_t, T>) {
      if (direct_) return view_.at(n_, channel, s0_);
    }
    return ring_.row(channel);
  }

 private:
  const ChannelView<const scalar_t>& view_;
  bool direct_;
  RowRing<T> ring_;
  int64_t n_ = 0, s0_ = 0, w_ = 0;
};

// A task's buffers for the channel rows of its tiles: a row's window sums, its output
// lanes (where they are not contiguous in memory) and the rows of its window.
template <typename scalar_t, typename T>
struct RowBuffers {
  std::vector<T> sums;
  std::vector<scalar_t> scratch;
  std::vector<const T*> window;

  explicit RowBuffers(int64_t width) : sums(width), scratch(width) {}
};

// Spatial positions per channel-rows tile: long rows, but enough tiles for every thread.
inline int64_t row_width(const Extent& e) {
  const int64_t threads = at::get_num_threads();
  const int64_t chunks_wanted = std::max<int64_t>(1, (2 * threads + e.n - 1) / e.n);
  const int64_t width = std::max(kMinRowWidth, (e.s + chunks_wanted - 1) / chunks_wanted);
  return std::min({e.s, width, kMaxRowWidth});
}

// Grain (in positions) for the pixels tiling: at least ~16K values per task.
inline int64_t pixel_grain(const Extent& e) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(e.c, 1));
}

// Tile `index` of the channel-rows tiling: image n, positions [s0, s0 + w).
struct RowTile {
  int64_t n, s0, w;

  RowTile(const Extent& e, int64_t width, int64_t index) {
    const int64_t tiles_per_image = (e.s + width - 1) / width;
    n = index / tiles_per_image;
    s0 = index % tiles_per_image * width;
    w = std::min(width, e.s - s0);
  }
};

inline int64_t row_tile_count(const Extent& e, int64_t width) {
  return e.n * ((e.s + width - 1) / width);
}

template <typename scalar_t>
void forward_channel_rows(const ChannelView<const scalar_t>& x, const ChannelView<scalar_t>& y,
                          const Extent& e, const LrnConstants<at::opmath_type<scalar_t>>& p) {
  using T = at::opmath_type<scalar_t>;
  const int64_t width = row_width(e);
  at::parallel_for(0, row_tile_count(e, width), 1, [&](int64_t begin, int64_t end) {
    RowSource<scalar_t, T> xs(x, p.window_rows(), width);
    const auto x_row = [&](int64_t j) { return xs.row(j); };
    RowBuffers<scalar_t, T> buf(width);
    for (int64_t index = begin; index < end; ++index) {
      const auto [n, s0, w] = RowTile(e, width, index);
      xs.start_tile(n, s0, w);
      // Step m loads channel m and finishes channel m - hi, whose window ends at m.
      for (int64_t m = 0; m < e.c + p.hi; ++m) {
        if (m < e.c) xs.load(m);
        const int64_t c = m - p.hi;
        if (c < 0) continue;
        window_sum<true>(window_rows(c - p.lo, c + p.hi, e.c, x_row, buf.window),
                         buf.sums.data(), w);
        const RowOutput<scalar_t> out{y.at(n, c, s0), y.stride_s, buf.scratch.data()};
        forward_row(p, xs.row(c), static_cast<const T*>(buf.sums.data()), out.lanes(), w);
        out.finish(w);
      }
    }
  });
}

template <typename scalar_t>
void forward_pixels(const ChannelView<const scalar_t>& x, const ChannelView<scalar_t>& y,
                    const Extent& e, const LrnConstants<at::opmath_type<scalar_t>>& p) {
  using T = at::opmath_type<scalar_t>;
  const int64_t rows = p.window_rows();
  at::parallel_for(0, e.n * e.s, pixel_grain(e), [&](int64_t begin, int64_t end) {
    // x between lo and hi zeros: row r of the window of channel c is element c + r.
    std::vector<T> padded(p.lo + e.c + p.hi, T(0));
    std::vector<const T*> shifts(rows);
    for (int64_t r = 0; r < rows; ++r) shifts[r] = padded.data() + r;
    std::vector<T> sums(e.c);
    std::vector<scalar_t> scratch(e.c);
    T* xs = padded.data() + p.lo;
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t n = pixel / e.s;
      const int64_t s = pixel % e.s;
      load_row(x.at(n, 0, s), x.stride_c, xs, e.c);
      window_sum<true>(Rows<T>{shifts.data(), rows}, sums.data(), e.c);
      const RowOutput<scalar_t> out{y.at(n, 0, s), y.stride_c, scratch.data()};
      forward_row(p, static_cast<const T*>(xs), static_cast<const T*>(sums.data()),
                  out.lanes(), e.c);
      out.finish(e.c);
    }
  });
}

template <typename scalar_t>
void backward_channel_rows(const ChannelView<const scalar_t>& x,
                           const ChannelView<const scalar_t>& g,
                           const ChannelView<scalar_t>& dx, const Extent& e,
                           const LrnConstants<at::opmath_type<scalar_t>>& p) {
  using T = at::opmath_type<scalar_t>;
  const int64_t width = row_width(e);
  const int64_t slots = p.window_rows();
  at::parallel_for(0, row_tile_count(e, width), 1, [&](int64_t begin, int64_t end) {
    RowSource<scalar_t, T> xs(x, slots, width), gs(g, slots, width);
    RowRing<T> g_over_q(slots, width), ts(slots, width);
    const auto x_row = [&](int64_t j) { return xs.row(j); };
    const auto t_row = [&](int64_t j) { return static_cast<const T*>(ts.row(j)); };
    RowBuffers<scalar_t, T> buf(width);
    for (int64_t index = begin; index < end; ++index) {
      const auto [n, s0, w] = RowTile(e, width, index);
      xs.start_tile(n, s0, w);
      gs.start_tile(n, s0, w);
      // Step m loads channel m, makes the terms of channel j = m - hi (its window ends at
      // m) and finishes channel c = j - lo (its transposed window ends at j).
      for (int64_t m = 0; m < e.c + p.hi + p.lo; ++m) {
        if (m < e.c) {
          xs.load(m);
          gs.load(m);
        }
        const int64_t j = m - p.hi;
        if (j >= 0 && j < e.c) {
          window_sum<true>(window_rows(j - p.lo, j + p.hi, e.c, x_row, buf.window),
                           buf.sums.data(), w);
          backward_terms_row(p, xs.row(j), gs.row(j), static_cast<const T*>(buf.sums.data()),
                             g_over_q.row(j), ts.row(j), w);
        }
        const int64_t c = j - p.lo;
        if (c < 0) continue;
        window_sum<false>(window_rows(c - p.hi, c + p.lo, e.c, t_row, buf.window),
                          buf.sums.data(), w);
        const RowOutput<scalar_t> out{dx.at(n, c, s0), dx.stride_s, buf.scratch.data()};
        grad_input_row(p.grad_coef, xs.row(c), static_cast<const T*>(g_over_q.row(c)),
                       static_cast<const T*>(buf.sums.data()), out.lanes(), w);
        out.finish(w);
      }
    }
  });
}

template <typename scalar_t>
void backward_pixels(const ChannelView<const scalar_t>& x, const ChannelView<const scalar_t>& g,
                     const ChannelView<scalar_t>& dx, const Extent& e,
                     const LrnConstants<at::opmath_type<scalar_t>>& p) {
  using T = at::opmath_type<scalar_t>;
  const int64_t rows = p.window_rows();
  at::parallel_for(0, e.n * e.s, pixel_grain(e), [&](int64_t begin, int64_t end) {
    // x padded by (lo, hi) zeros: its window; t padded by (hi, lo): the transposed window.
    std::vector<T> x_padded(p.lo + e.c + p.hi, T(0));
    std::vector<T> t_padded(p.hi + e.c + p.lo, T(0));
    std::vector<const T*> x_shifts(rows), t_shifts(rows);
    for (int64_t r = 0; r < rows; ++r) {
      x_shifts[r] = x_padded.data() + r;
      t_shifts[r] = t_padded.data() + r;
    }
    std::vector<T> gs(e.c), g_over_q(e.c), sums(e.c);
    std::vector<scalar_t> scratch(e.c);
    T* xs = x_padded.data() + p.lo;
    T* ts = t_padded.data() + p.hi;
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      const int64_t n = pixel / e.s;
      const int64_t s = pixel % e.s;
      load_row(x.at(n, 0, s), x.stride_c, xs, e.c);
      load_row(g.at(n, 0, s), g.stride_c, gs.data(), e.c);
      window_sum<true>(Rows<T>{x_shifts.data(), rows}, sums.data(), e.c);
      backward_terms_row(p, static_cast<const T*>(xs), static_cast<const T*>(gs.data()),
                         static_cast<const T*>(sums.data()), g_over_q.data(), ts, e.c);
      window_sum<false>(Rows<T>{t_shifts.data(), rows}, sums.data(), e.c);
      const RowOutput<scalar_t> out{dx.at(n, 0, s), dx.stride_c, scratch.data()};
      grad_input_row(p.grad_coef, static_cast<const T*>(xs),
                     static_cast<const T*>(g_over_q.data()), static_cast<const T*>(sums.data()),
                     out.lanes(), e.c);
      out.finish(e.c);
    }
  });
}

// The arguments of both directions: input, size, and the output written while input is
// read.
void check_lrn_args(const at::Tensor& input, int64_t size, const at::Tensor& out,
                    const char* out_name) {
  check_cpu_float_3d(input, "input");
  TORCH_CHECK(size >= 1, "size must be >= 1, got ", size);
  check_output(out, input, out_name);
  check_disjoint(out, out_name, input, "input");
}

}  // namespace

void lrn_forward(const at::Tensor& input, const at::Tensor& output, int64_t size,
                 double alpha, double beta, double k) {
  check_lrn_args(input, size, output, "output");
  if (input.numel() == 0) return;
  const Extent e(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_lrn_forward", [&] {
        const ChannelView<const scalar_t> x(input);
        const ChannelView<scalar_t> y(output);
        const LrnConstants<at::opmath_type<scalar_t>> p(size, e.c, alpha, beta, k);
        use_pixel_tiles(input) ? forward_pixels(x, y, e, p) : forward_channel_rows(x, y, e, p);
      });
}

void lrn_backward(const at::Tensor& input, const at::Tensor& grad_output,
                  const at::Tensor& grad_input, int64_t size, double alpha, double beta,
                  double k) {
  check_lrn_args(input, size, grad_input, "grad_input");
  check_same_as(grad_output, input, "grad_output");
  check_disjoint(grad_input, "grad_input", grad_output, "grad_output");
  if (input.numel() == 0) return;
  const Extent e(input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, input.scalar_type(), "fastcnn_lrn_backward", [&] {
        const ChannelView<const scalar_t> x(input), g(grad_output);
        const ChannelView<scalar_t> dx(grad_input);
        const LrnConstants<at::opmath_type<scalar_t>> p(size, e.c, alpha, beta, k);
        use_pixel_tiles(input) ? backward_pixels(x, g, dx, e, p)
                               : backward_channel_rows(x, g, dx, e, p);
      });
}

}  // namespace fastcnn::cpu
