// 2-d max-pooling of (N, C, H, W) into (N, C, OH, OW) on CPU tensors, forward and backward:
// what the files max_pool*.cpp share (the entry points are in max_pool.cpp, the kernels in
// max_pool_forward.cpp, max_pool_plain.cpp and max_pool_backward.cpp).
//
// The window of output (oh, ow) has the taps (kh, kw), kh < KH and kw < KW, at input row
// oh * stride_h - pad_h + kh * dilation_h and column ow * stride_w - pad_w + kw * dilation_w;
// taps outside the input are skipped. The results are PyTorch's, bit for bit: the taps are
// scanned in row-major order from (-inf, first tap in bounds), and a tap replaces the
// running maximum when v > max or v is NaN. So the first maximum wins a tie, the last NaN
// wins over everything, and a window of -inf reports its first tap in bounds.
//
// Forward optionally writes each winner's position in its window, kh * KW + kw (one byte
// when KH * KW <= 256): that is all backward needs. Backward gathers, for every input
// element, the gradients of the windows that picked it, adding them in the order of
// increasing (oh, ow) as PyTorch's scatter does: deterministic, without atomics.
//
// Two tilings; the vector lanes run along the axis that is contiguous in memory:
//   planes (NCHW): the lanes run along a row, over blocks of rows of one plane at a time
//     (so that one call does a block's worth of work and the rows stay in L2). Forward is
//     separable: the horizontal windows of every input row of the block first, then the
//     maximum down the KH rows of each window. Rows first, then columns, is the row-major
//     scan: each row's scan yields its first maximum (or its last NaN), and scanning
//     those in row order yields the window's. Strided taps read a copy of the rows split
//     by column phase (index modulo stride_w), where each tap of a row's windows is one
//     unit-stride run. Backward sums each phase of a row's columns in registers: within
//     a phase, the columns that tap kw of the windows reaches form a contiguous run, as
//     do the outputs it comes from.
//     Inference (values only) on planes of contiguous rows that hold no NaN takes a
//     shorter road, plain_plane: the maximum down each output row's input rows first,
//     then across, with plain vector maxima (order and ties no longer matter).
//   pixels (channels_last): the lanes run along channels, and each window is KH * KW
//     channel rows combined in scan order.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <utility>
#include <vector>

#include "../common.h"

namespace fastcnn::cpu::max_pool_detail {

// Row buffers are rounded up to this many lanes (a 512-bit vector of float32), so that the
// loops over a row, often shorter than 64 lanes here, have no scalar remainder.
constexpr int64_t kVectorLanes = 16;

// Windows (and strides) of at most this many taps along a row run over the row's split
// into column phases (SplitRows), whose size grows with both; wider ones scan each window's
// taps in the input one by one.
constexpr int64_t kMaxTableTaps = 64;

// ceil(a / b) for b > 0 and any a.
inline int64_t ceil_div(int64_t a, int64_t b) { return a > 0 ? (a + b - 1) / b : -(-a / b); }

// One spatial axis of the pooling, and what every plane shares along it: the taps of each
// output that lie in the input, and the windows over each input. Planned once per call,
// so that no kernel loop divides. Kernel, stride, padding and dilation may each be up to
// 2^31 - 1, so every plan and buffer is sized by the input and output, never by them:
// only the taps that land in the input are ever listed or visited.
struct Axis {
  int64_t in;  // input size
  int64_t out;  // output size
  int64_t kernel;
  int64_t stride;
  int64_t pad;
  int64_t dilation;
  // outputs [interior_begin, interior_end) have every tap in the input
  int64_t interior_begin;
  int64_t interior_end;
  // out rounded up to whole vectors
  int64_t padded_out;
  // the most taps of one window that lie in the input
  int64_t max_taps = 0;
  // whether rows run over their column phases (row_windows): narrow windows and strides
  // whose span fits in the input and its padding
  bool tabled;
  std::vector<int64_t> first_tap, end_tap;  // per output: its taps in the input
  // per input i, covers[cover_begin[i] .. cover_begin[i + 1]) are the windows over it as
  // (tap, output) by increasing output
  std::vector<int64_t> cover_begin;
  std::vector<std::pair<int64_t, int64_t>> covers;

  Axis(int64_t in_, int64_t out_, int64_t kernel_, int64_t stride_, int64_t pad_,
       int64_t dilation_)
      : in(in_), out(out_), kernel(kernel_), stride(stride_), pad(pad_), dilation(dilation_) {
    for (int64_t o = 0; o < out; ++o) {
      const int64_t s = start(o);
      first_tap.push_back(s >= 0 ? 0 : (-s + dilation - 1) / dilation);
      const int64_t room = in - 1 - s;
      end_tap.push_back(room < 0 ? 0 : std::min(kernel, room / dilation + 1));
      max_taps = std::max(max_taps, end_tap.back() - first_tap.back());
    }
    tabled = kernel <= kMaxTableTaps && stride <= kMaxTableTaps && span() <= in + 2 * pad + stride;
    interior_begin = std::min(out, (pad + stride - 1) / stride);
    const int64_t room = in - 1 + pad - (kernel - 1) * dilation;
    interior_end = room < 0 ? interior_begin : std::clamp(room / stride + 1, interior_begin, out);
    padded_out = (out + kVectorLanes - 1) / kVectorLanes * kVectorLanes;

    for (int64_t i = 0; i < in; ++i) {
      cover_begin.push_back(static_cast<int64_t>(covers.size()));
      add_covers(i);
    }
    cover_begin.push_back(static_cast<int64_t>(covers.size()));
  }

  // Appends the windows over input i by increasing output: o * stride + k * dilation =
  // i + pad with o < out and k < kernel, found along whichever of k and o has the shorter
  // range (both are bounded by the output size).
  void add_covers(int64_t i) {
    const int64_t t = i + pad;
    const int64_t k_lo = std::max<int64_t>(0, ceil_div(t - (out - 1) * stride, dilation));
    const int64_t k_hi = std::min(kernel - 1, t / dilation);
    const int64_t o_lo = std::max<int64_t>(0, ceil_div(t - (kernel - 1) * dilation, stride));
    const int64_t o_hi = std::min(out - 1, t / stride);
    if (k_hi - k_lo <= o_hi - o_lo) {
      for (int64_t k = k_hi; k >= k_lo; --k) {
        if ((t - k * dilation) % stride == 0) covers.emplace_back(k, (t - k * dilation) / stride);
      }
    } else {
      for (int64_t o = o_lo; o <= o_hi; ++o) {
        if ((t - o * stride) % dilation == 0) covers.emplace_back((t - o * stride) / dilation, o);
      }
    }
  }

  int64_t start(int64_t o) const { return o * stride - pad; }
  // The taps that land in the input in some window, by decreasing k.
  std::vector<int64_t> taps_in_input() const {
    std::vector<int64_t> taps;
    for (const auto& cover : covers) taps.push_back(cover.first);
    std::sort(taps.begin(), taps.end(), std::greater<>());
    taps.erase(std::unique(taps.begin(), taps.end()), taps.end());
    return taps;
  }
  int64_t span() const { return (kernel - 1) * dilation + 1; }
  // Calls f(k, o) for the windows over input i, by increasing o.
  template <typename F>
  void for_each_cover(int64_t i, F f) const {
    for (int64_t c = cover_begin[i]; c < cover_begin[i + 1]; ++c) f(covers[c].first, covers[c].second);
  }
};

// A 4-d tensor seen through its strides, in elements.
template <typename T>
struct ImageView {
  T* data;
  int64_t stride_n, stride_c, stride_h, stride_w;

  explicit ImageView(const at::Tensor& t)
      : data(static_cast<T*>(t.data_ptr())),
        stride_n(t.stride(0)),
        stride_c(t.stride(1)),
        stride_h(t.stride(2)),
        stride_w(t.stride(3)) {}

  T* at(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return data + n * stride_n + c * stride_c + h * stride_h + w * stride_w;
  }
};

template <typename scalar_t, typename pos_t>
struct ForwardArgs {
  ImageView<const scalar_t> x;
  ImageView<scalar_t> y;
  ImageView<pos_t> positions;  // unused without kPositions
  int64_t batch, channels;
  const Axis& h;
  const Axis& w;
};

template <typename scalar_t, typename pos_t>
struct BackwardArgs {
  ImageView<const scalar_t> g;  // dL/dy
  ImageView<const pos_t> positions;
  ImageView<scalar_t> dx;
  int64_t batch, channels;
  const Axis& h;
  const Axis& w;
};

// f(pos_t{}) for the dtype of the winners' positions: uint8, int32 or int64.
template <typename F>
void dispatch_positions(at::ScalarType type, F f) {
  if (type == at::kByte) {
    f(uint8_t{});
  } else if (type == at::kInt) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

// The kernels of max_pool_forward.cpp and max_pool_backward.cpp, for every dtype and
// layout; the arguments are checked by the entry points.
void forward(const at::Tensor& input, const at::Tensor& output,
             const std::optional<at::Tensor>& positions, const Axis& h, const Axis& w);
void backward(const at::Tensor& grad_output, const at::Tensor& positions,
              const at::Tensor& grad_input, const Axis& h, const Axis& w);

// The plain path of inference (max_pool_plain.cpp), for T float and double.
template <typename T>
using PlainAcross = void (*)(const T*, T*, int64_t);
template <typename T>
PlainAcross<T> plain_across(const Axis& aw);
bool every_window_reaches_input(const Axis& a);
int64_t plain_row_lanes(const Axis& aw);
template <typename T>
bool plain_plane(const T* x, int64_t x_stride_h, T* y, int64_t y_stride_h, const Axis& ah,
                 const Axis& aw, PlainAcross<T> across, T* v, const T* next);

}  // namespace fastcnn::cpu::max_pool_detail
