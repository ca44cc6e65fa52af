// Backward of 2-d max-pooling (max_pool.h says what is computed): each input element
// gathers the gradients of the windows that picked it, in the order of PyTorch's scatter.
#include <algorithm>
#include <type_traits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include "max_pool.h"
#include "rows.h"

namespace fastcnn::cpu::max_pool_detail {
namespace {

// acc[i] += g[i] where the winner p[i] is the tap `code`. (Positions are widened to
// int32 first: with bytes, the compiler's vectors would hold 64 lanes, more than a row.)
template <typename T>
FASTCNN_TARGET_CLONES void gather_lanes(const T* __restrict g, const int32_t* __restrict p,
                                        int32_t code, T* __restrict acc, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T v = g[i];  // loaded whether or not it is added, so that the loop vectorises
    acc[i] += p[i] == code ? v : T(0);
  }
}

// How the input columns of a row gather from its windows. The columns of phase r
// (iw = r + j * stride) take tap kw of output ow = j - shift for each of the taps of
// that phase; each phase's taps are listed by decreasing kw, so that a column sums its
// windows by increasing ow, as PyTorch's scatter does.
struct ColumnGather {
  struct Tap {
    int32_t kw;
    int64_t shift;
  };
  std::vector<std::vector<Tap>> taps;  // per phase
  std::vector<int64_t> columns;  // input columns per phase
  int64_t front = 0;  // room before output 0 in a padded row of dL/dy, for ow < 0
  int64_t row_length = 0;  // of a padded row of dL/dy (or positions)

  explicit ColumnGather(const Axis& a) {
    const int64_t phases = std::min(a.stride, a.in);
    taps.resize(phases);
    for (int64_t r = 0; r < phases; ++r) columns.push_back((a.in - r + a.stride - 1) / a.stride);
    int64_t back = 0;
    for (const int64_t kw : a.taps_in_input()) {  // the others gather nothing
      const int64_t offset = kw * a.dilation - a.pad;  // input column of tap kw of output 0
      const int64_t phase = ((offset % a.stride) + a.stride) % a.stride;
      if (phase >= phases) continue;
      const int64_t shift = (offset - phase) / a.stride;
      taps[phase].push_back({static_cast<int32_t>(kw), shift});
      front = std::max(front, shift);
      back = std::max(back, rounded(columns[phase]) - shift);
    }
    front = rounded(front);
    row_length = front + rounded(std::max(back, a.out));
  }

  static int64_t rounded(int64_t n) { return (n + kVectorLanes - 1) / kVectorLanes * kVectorLanes; }
};

// Input rows [ih0, ih1) of dL/dx (rows of aw.in lanes, into dx), gathered from the rows
// of dL/dy and positions (g and p: a padded row of cg.row_length per output row from
// first_out on, output ow at cg.front + ow, zeros and -1 around). Each phase's columns
// are summed in registers over whole vectors of lanes (the padding makes the reads past
// a row's outputs add nothing), then the phases are interleaved into the row.
// One window tap that a run of input columns gathers from: the run of outputs at
// `offset` in the block's padded rows of dL/dy and positions, and the code the tap must
// have won with.
struct GatherTerm {
  int64_t offset;
  int32_t code;
};

// What every plane shares in backward: the blocks of input rows, the output rows that
// reach each, and, for each input row and column phase, its gather terms by increasing
// (oh, ow).
struct GatherPlan {
  struct Block {
    int64_t ih0, ih1, first_out, last_out;
  };
  std::vector<Block> blocks;
  std::vector<int64_t> term_begin;  // terms of (row ih, phase r) at (ih * phases + r)
  std::vector<GatherTerm> terms;

  GatherPlan(const Axis& ah, const Axis& aw, const ColumnGather& cg, int64_t block) {
    const auto phases = static_cast<int64_t>(cg.columns.size());
    for (int64_t ih0 = 0; ih0 < ah.in; ih0 += block) {
      Block b{ih0, std::min(ah.in, ih0 + block), ah.out, -1};
      for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
        ah.for_each_cover(ih, [&](int64_t, int64_t oh) {
          b.first_out = std::min(b.first_out, oh);
          b.last_out = std::max(b.last_out, oh);
        });
      }
      for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
        for (int64_t r = 0; r < phases; ++r) {
          term_begin.push_back(static_cast<int64_t>(terms.size()));
          ah.for_each_cover(ih, [&](int64_t kh, int64_t oh) {
            for (const ColumnGather::Tap& t : cg.taps[r]) {
              terms.push_back({(oh - b.first_out) * cg.row_length + cg.front - t.shift,
                               static_cast<int32_t>(kh * aw.kernel + t.kw)});
            }
          });
        }
      }
      blocks.push_back(b);
    }
    term_begin.push_back(static_cast<int64_t>(terms.size()));
  }
};

// out[j] = (kAdd ? out[j] : 0) + the kTerms terms' contributions at j, added in order, in
// one loop whose sum stays in a register.
template <int kTerms, bool kAdd, typename T>
FASTCNN_INLINE void sum_terms(const T* g, const int32_t* p, const GatherTerm* terms,
                              T* __restrict out, int64_t n) {
  const T* gv[kTerms];
  const int32_t* pv[kTerms];
  int32_t code[kTerms];
  for (int t = 0; t < kTerms; ++t) {
    gv[t] = g + terms[t].offset;
    pv[t] = p + terms[t].offset;
    code[t] = terms[t].code;
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    T sum = kAdd ? out[j] : T(0);
    for (int t = 0; t < kTerms; ++t) {
      const T v = gv[t][j];  // loaded whether or not it is added, so that it vectorises
      sum += pv[t][j] == code[t] ? v : T(0);
    }
    out[j] = sum;
  }
}

// Input rows [b.ih0, b.ih1) of dL/dx (rows of aw.in lanes, into dx), gathered from the
// block's rows of dL/dy and positions (g and p: a padded row of cg.row_length per output
// row from b.first_out on, output ow at cg.front + ow, zeros and -1 around). Each phase's
// columns are summed over whole vectors of lanes (the padding makes the reads past a
// row's outputs add nothing), up to four taps per pass, then the phases are interleaved
// into the row.
template <typename T>
FASTCNN_TARGET_CLONES void gather_rows(const T* __restrict g, const int32_t* __restrict p,
                                       const GatherPlan& plan, const GatherPlan::Block& b,
                                       const Axis& aw, const ColumnGather& cg,
                                       T* __restrict runs, T* __restrict dx) {
  const auto phases = static_cast<int64_t>(cg.columns.size());
  const int64_t run = ColumnGather::rounded(cg.columns[0]);
  for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
    for (int64_t r = 0; r < phases; ++r) {
      const int64_t slot = ih * phases + r;
      const GatherTerm* terms = plan.terms.data() + plan.term_begin[slot];
      int64_t left = plan.term_begin[slot + 1] - plan.term_begin[slot];
      const int64_t count = ColumnGather::rounded(cg.columns[r]);
      T* out = runs + r * run;  // whole vectors, past the row: then copied into it
      switch (left) {  // the first pass writes, the others add
        case 0: std::fill(out, out + count, T(0)); break;
        case 1: sum_terms<1, false>(g, p, terms, out, count); break;
        case 2: sum_terms<2, false>(g, p, terms, out, count); break;
        case 3: sum_terms<3, false>(g, p, terms, out, count); break;
        default: sum_terms<4, false>(g, p, terms, out, count); break;
      }
      for (terms += 4, left -= 4; left > 0; terms += 4, left -= 4) {
        switch (left) {
          case 1: sum_terms<1, true>(g, p, terms, out, count); break;
          case 2: sum_terms<2, true>(g, p, terms, out, count); break;
          case 3: sum_terms<3, true>(g, p, terms, out, count); break;
          default: sum_terms<4, true>(g, p, terms, out, count); break;
        }
      }
    }
    T* row = dx + (ih - b.ih0) * aw.in;
    if (phases == 1) {
      std::copy(runs, runs + aw.in, row);
    } else if (phases == 2) {  // stride 2, the common case: a pattern the compiler vectorises
      const T* even = runs;
      const T* odd = runs + run;
#pragma omp simd
      for (int64_t j = 0; j < cg.columns[1]; ++j) {
        row[2 * j] = even[j];
        row[2 * j + 1] = odd[j];
      }
      if (cg.columns[0] > cg.columns[1]) row[2 * cg.columns[1]] = even[cg.columns[1]];
    } else {
      for (int64_t r = 0; r < phases; ++r) {
        for (int64_t j = 0; j < cg.columns[r]; ++j) row[r + j * aw.stride] = runs[r * run + j];
      }
    }
  }
}

template <typename scalar_t, typename pos_t>
void backward_planes(const BackwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const ColumnGather cg(aw);
  const auto phases = static_cast<int64_t>(cg.columns.size());
  const int64_t run = ColumnGather::rounded(cg.columns[0]);
  // input rows per block: the block's gradient rows, and the rows of dL/dy and positions
  // that reach them, stay in L2
  const int64_t per_row = sizeof(T) * aw.in + (sizeof(T) + 4) * cg.row_length;
  const int64_t rows = std::max<int64_t>(ah.in, 1);
  const int64_t block = std::clamp<int64_t>(256 * 1024 / per_row, std::min(ah.span(), rows), rows);
  const GatherPlan plan(ah, aw, cg, block);
  int64_t max_out_rows = 1;
  for (const auto& b : plan.blocks) max_out_rows = std::max(max_out_rows, b.last_out - b.first_out + 1);
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> g(max_out_rows * cg.row_length, T(0)), runs(phases * run), dx(block * aw.in);
    std::vector<int32_t> p(max_out_rows * cg.row_length, -1);
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      for (const GatherPlan::Block& b : plan.blocks) {
        for (int64_t oh = b.first_out; oh <= b.last_out; ++oh) {
          const int64_t at = (oh - b.first_out) * cg.row_length + cg.front;
          load_row(args.g.at(n, c, oh, 0), args.g.stride_w, g.data() + at, aw.out);
          load_row(args.positions.at(n, c, oh, 0), args.positions.stride_w, p.data() + at, aw.out);
        }
        gather_rows(g.data(), p.data(), plan, b, aw, cg, runs.data(), dx.data());
        for (int64_t ih = b.ih0; ih < b.ih1; ++ih) {
          store_row(dx.data() + (ih - b.ih0) * aw.in, args.dx.at(n, c, ih, 0), args.dx.stride_w, aw.in);
        }
      }
    }
  });
}

template <typename scalar_t, typename pos_t>
void backward_pixels(const BackwardArgs<scalar_t, pos_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  const int64_t lanes = args.channels;
  at::parallel_for(0, args.batch * ah.in, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> acc(lanes), g_lanes(lanes);
    std::vector<int32_t> p(lanes);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / ah.in, ih = row % ah.in;
      for (int64_t iw = 0; iw < aw.in; ++iw) {
        std::fill(acc.begin(), acc.end(), T(0));
        ah.for_each_cover(ih, [&](int64_t kh, int64_t oh) {
          aw.for_each_cover(iw, [&](int64_t kw, int64_t ow) {
            const T* g = lanes_of<T>(args.g.at(n, 0, oh, ow), args.g.stride_c, g_lanes.data(),
                                     lanes);
            load_row(args.positions.at(n, 0, oh, ow), args.positions.stride_c, p.data(), lanes);
            gather_lanes(g, p.data(), static_cast<int32_t>(kh * aw.kernel + kw), acc.data(),
                         lanes);
          });
        });
        store_row(acc.data(), args.dx.at(n, 0, ih, iw), args.dx.stride_c, lanes);
      }
    }
  });
}


// Windows of more taps than int32 can number (positions are int64): each input's gradient
// is gathered over the windows that hold it, one by one, in the order of the lane kernels.
template <typename scalar_t>
void backward_wide(const BackwardArgs<scalar_t, int64_t>& args) {
  using T = at::opmath_type<scalar_t>;
  const Axis& ah = args.h;
  const Axis& aw = args.w;
  at::parallel_for(0, args.batch * args.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / args.channels, c = plane % args.channels;
      for (int64_t ih = 0; ih < ah.in; ++ih) {
        for (int64_t iw = 0; iw < aw.in; ++iw) {
          T sum = 0;
          ah.for_each_cover(ih, [&](int64_t kh, int64_t oh) {
            aw.for_each_cover(iw, [&](int64_t kw, int64_t ow) {
              if (*args.positions.at(n, c, oh, ow) == kh * aw.kernel + kw) {
                sum += static_cast<T>(*args.g.at(n, c, oh, ow));
              }
            });
          });
          *args.dx.at(n, c, ih, iw) = static_cast<scalar_t>(sum);
        }
      }
    }
  });
}

}  // namespace

void backward(const at::Tensor& grad_output, const at::Tensor& positions,
              const at::Tensor& grad_input, const Axis& h, const Axis& w) {
  const bool pixels = channels_innermost(grad_input);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, grad_output.scalar_type(), "fastcnn_max_pool2d_backward", [&] {
        dispatch_positions(positions.scalar_type(), [&](auto tag) {
          using pos_t = decltype(tag);
          const BackwardArgs<scalar_t, pos_t> args{
              ImageView<const scalar_t>(grad_output), ImageView<const pos_t>(positions),
              ImageView<scalar_t>(grad_input), grad_input.size(0), grad_input.size(1), h, w};
          if constexpr (std::is_same_v<pos_t, int64_t>) {
            backward_wide(args);
          } else {
            pixels ? backward_pixels(args) : backward_planes(args);
          }
        });
      });
}

}  // namespace fastcnn::cpu::max_pool_detail
