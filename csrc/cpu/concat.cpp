// Concatenation along one dimension (torch.cat) into a preallocated output.
//
// Input i goes to the slice output.narrow(dim, offset_i, inputs[i].size(dim)). Each input's
// copy into its slice is planned as `rows` runs of `length` elements: the dimensions of
// size 1 are dropped, the others ordered by the output's strides (the innermost last, so
// the run is where the output is contiguous: the channels of a channels_last output) and
// merged where both sides allow it. The copy is of bytes, so one kernel serves every
// dtype. All inputs' runs, cut into pieces of at most kPieceBytes, are the items of ONE
// at::parallel_for: a concatenation of many small inputs keeps every thread busy, and so
// does one of a single large input.
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../common.h"
#include "ops.h"
#include "rows.h"

namespace fastcnn::cpu {
namespace {

// The longest piece of a run that one item copies, and the bytes a task copies at least.
constexpr int64_t kPieceBytes = 64 << 10;
constexpr int64_t kTaskBytes = 64 << 10;

// An element of 16 bytes (complex128), copied as one value.
struct Bytes16 {
  uint64_t low, high;
};

// One input's copy into its output slice: `rows` runs of `length` elements. A run starts
// at src + sum_d index_d * src_strides[d] (likewise in dst) over the row dimensions,
// outermost first; strides are in elements.
struct InputCopy {
  const char* src;
  char* dst;
  int64_t length, src_step, dst_step;  // a run: its elements, and their strides
  c10::SmallVector<int64_t, 6> sizes, src_strides, dst_strides;
  int64_t rows;
  int64_t piece;   // elements per item
  int64_t pieces;  // items per run
};

struct Axis {
  int64_t size, src, dst;
};

InputCopy plan_copy(const at::Tensor& input, const at::Tensor& output, int64_t dim,
                    int64_t offset) {
  c10::SmallVector<Axis, 8> axes;
  for (int64_t d = 0; d < input.dim(); ++d) {
    if (input.size(d) != 1) axes.push_back({input.size(d), input.stride(d), output.stride(d)});
  }
  // Outermost first: the output's largest stride, ties (possible only in the input, whose
  // strides may repeat or be 0) by the input's.
  std::stable_sort(axes.begin(), axes.end(), [](const Axis& a, const Axis& b) {
    return a.dst != b.dst ? a.dst > b.dst : a.src > b.src;
  });
  c10::SmallVector<Axis, 8> merged;
  for (const Axis& a : axes) {
    if (!merged.empty()) {
      Axis& outer = merged.back();
      if (outer.src == a.src * a.size && outer.dst == a.dst * a.size) {
        outer = {outer.size * a.size, a.src, a.dst};
        continue;
      }
    }
    merged.push_back(a);
  }
  if (merged.empty()) merged.push_back({1, 1, 1});  // a single element

  const int64_t element = output.element_size();
  InputCopy c;
  c.src = static_cast<const char*>(input.data_ptr());
  c.dst = static_cast<char*>(output.data_ptr()) + offset * output.stride(dim) * element;
  const Axis run = merged.back();
  c.length = run.size;
  c.src_step = run.src;
  c.dst_step = run.dst;
  c.rows = 1;
  for (size_t d = 0; d + 1 < merged.size(); ++d) {
    c.sizes.push_back(merged[d].size);
    c.src_strides.push_back(merged[d].src);
    c.dst_strides.push_back(merged[d].dst);
    c.rows *= merged[d].size;
  }
  c.piece = std::min(c.length, std::max<int64_t>(1, kPieceBytes / element));
  c.pieces = (c.length + c.piece - 1) / c.piece;
  return c;
}

// Items [first, last) of one input: pieces of its runs, in order.
template <typename T>
void copy_items(const InputCopy& c, int64_t first, int64_t last) {
  const auto* src = reinterpret_cast<const T*>(c.src);
  auto* dst = reinterpret_cast<T*>(c.dst);
  const auto dims = static_cast<int64_t>(c.sizes.size());
  // the row of `first`, as an index per row dimension, and where it starts
  c10::SmallVector<int64_t, 6> index(dims);
  int64_t src_offset = 0, dst_offset = 0;
  int64_t rest = first / c.pieces;
  for (int64_t d = dims - 1; d >= 0; --d) {
    index[d] = rest % c.sizes[d];
    rest /= c.sizes[d];
    src_offset += index[d] * c.src_strides[d];
    dst_offset += index[d] * c.dst_strides[d];
  }
  int64_t piece = first % c.pieces;
  for (int64_t item = first; item < last; ++item) {
    const int64_t start = piece * c.piece;
    copy_lanes(src + src_offset + start * c.src_step, c.src_step,
               dst + dst_offset + start * c.dst_step, c.dst_step,
               std::min(c.piece, c.length - start));
    if (++piece < c.pieces) continue;
    piece = 0;
    for (int64_t d = dims - 1; d >= 0; --d) {  // the next row, as an odometer turns
      src_offset += c.src_strides[d];
      dst_offset += c.dst_strides[d];
      if (++index[d] < c.sizes[d]) break;
      src_offset -= c.sizes[d] * c.src_strides[d];
      dst_offset -= c.sizes[d] * c.dst_strides[d];
      index[d] = 0;
    }
  }
}

template <typename T>
void copy_all(const std::vector<InputCopy>& copies) {
  // first[i]: the first item of copy i; items are numbered across all copies (every copy
  // has at least one)
  std::vector<int64_t> first(copies.size() + 1, 0);
  for (size_t i = 0; i < copies.size(); ++i) {
    first[i + 1] = first[i] + copies[i].rows * copies[i].pieces;
  }
  const int64_t items = first.back();
  if (items == 0) return;
  int64_t elements = 0;
  for (const InputCopy& c : copies) elements += c.rows * c.length;
  const int64_t item_bytes = std::max<int64_t>(1, elements * int64_t(sizeof(T)) / items);
  const int64_t grain = std::max<int64_t>(1, kTaskBytes / item_bytes);
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    auto i = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), begin) -
                                 first.begin() - 1);
    for (int64_t item = begin; item < end; ++i) {
      const int64_t stop = std::min(end, first[i + 1]);
      copy_items<T>(copies[i], item - first[i], stop - first[i]);
      item = stop;
    }
  });
}

// Calls f with a value of the trivially copyable type of `bytes` bytes.
template <typename F>
void with_element_type(int64_t bytes, const F& f) {
  switch (bytes) {
    case 1: return f(uint8_t{});
    case 2: return f(uint16_t{});
    case 4: return f(uint32_t{});
    case 8: return f(uint64_t{});
    case 16: return f(Bytes16{});
    default: TORCH_CHECK(false, "concat_forward: no kernel for elements of ", bytes, " bytes");
  }
}

void check_concat_args(const std::vector<at::Tensor>& inputs, const at::Tensor& output,
                       int64_t dim) {
  check_strided_cpu(output, "output");
  check_writable(output, "output");
  TORCH_CHECK(dim >= 0 && dim < output.dim(), "dim must be in [0, ", output.dim(),
              ") for the ", output.dim(), "-d output, got ", dim);
  int64_t total = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string name = "inputs[" + std::to_string(i) + "]";
    const at::Tensor& t = inputs[i];
    check_strided_cpu(t, name.c_str());
    TORCH_CHECK(t.scalar_type() == output.scalar_type(), name, " must have the dtype of output (",
                output.scalar_type(), "), got ", t.scalar_type());
    bool matches = t.dim() == output.dim();
    for (int64_t d = 0; matches && d < t.dim(); ++d) {
      matches = d == dim || t.size(d) == output.size(d);
    }
    TORCH_CHECK(matches, name, " of shape ", t.sizes(), " must have the shape of output ",
                output.sizes(), " in every dimension but dim ", dim);
    total += t.size(dim);
    check_disjoint(output, "output", t, name.c_str());
  }
  TORCH_CHECK(total == output.size(dim), "the inputs' sizes along dim ", dim, " add up to ",
              total, ", but output has ", output.size(dim));
}

}  // namespace

void concat_forward(const std::vector<at::Tensor>& inputs, const at::Tensor& output,
                    int64_t dim) {
  check_concat_args(inputs, output, dim);
  std::vector<InputCopy> copies;
  int64_t offset = 0;
  for (const at::Tensor& t : inputs) {
    if (t.numel() > 0) copies.push_back(plan_copy(t, output, dim, offset));
    offset += t.size(dim);
  }
  with_element_type(output.element_size(), [&](auto element) {
    copy_all<decltype(element)>(copies);
  });
}

}  // namespace fastcnn::cpu
