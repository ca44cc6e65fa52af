// Shared pieces of the CPU kernels: argument checks with messages a user can act on,
// the (N, C, S) strided view every kernel works on (its sizes, and which axis its vector
// lanes run along), and the build macros that let the compiler vectorise the hot loops for
// the machine that runs them.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <type_traits>

// Force inlining of the per-element helpers into the loops that the compiler vectorises.
#define FASTCNN_INLINE inline __attribute__((always_inline))

// On x86-64 Linux the row kernels are compiled three times (baseline SSE2, AVX2+FMA,
// AVX-512) and the loader picks the best one for the CPU at hand (GNU ifunc), so one
// wheel runs everywhere and still uses wide vectors where they exist.
#if defined(__x86_64__) && defined(__ELF__) && defined(__GNUC__) && !defined(__clang__)
#define FASTCNN_HAS_TARGET_CLONES 1
#define FASTCNN_TARGET_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTCNN_HAS_TARGET_CLONES 0
#define FASTCNN_TARGET_CLONES
#endif

namespace fastcnn {

// A tensor of shape (N, C, S) seen through its strides, in elements. Every op here reads
// its inputs as (batch, channel, flattened spatial); the Python side builds that view
// without copying wherever the spatial dimensions share one stride (NCHW, channels_last,
// most slices).
template <typename scalar_t>
struct ChannelView {
  scalar_t* data;
  int64_t stride_n;
  int64_t stride_c;
  int64_t stride_s;

  explicit ChannelView(const at::Tensor& t)
      : data(static_cast<scalar_t*>(t.data_ptr())),
        stride_n(t.stride(0)),
        stride_c(t.stride(1)),
        stride_s(t.stride(2)) {}

  // The view of an optional tensor; of an absent one: no data, never read.
  explicit ChannelView(const std::optional<at::Tensor>& t)
      : data(nullptr), stride_n(0), stride_c(0), stride_s(0) {
    if (t.has_value()) *this = ChannelView(*t);
  }

  scalar_t* at(int64_t n, int64_t c, int64_t s) const {
    return data + n * stride_n + c * stride_c + s * stride_s;
  }
};

// The sizes of an (N, C, S) view.
struct Extent {
  int64_t n, c, s;

  explicit Extent(const at::Tensor& t) : n(t.size(0)), c(t.size(1)), s(t.size(2)) {}
  int64_t count() const { return n * s; }  // values per channel
};

// Whether t's channels are its contiguous axis, and more than one.
inline bool channels_innermost(const at::Tensor& t) { return t.size(1) > 1 && t.stride(1) == 1; }

// Whether the kernels that tile an (N, C, S) view two ways run their vector lanes along its
// channels (pixel tiles: channels_last) rather than its positions (rows: NCHW): along
// whichever axis is contiguous in memory, unless that axis is too short to fill vectors
// while the other is longer; then, as for layouts with neither axis contiguous, the longer.
inline bool use_pixel_tiles(const at::Tensor& t) {
  constexpr int64_t kShortAxis = 16;
  const int64_t channels = t.size(1), positions = t.size(2);
  if (channels_innermost(t) && (channels >= kShortAxis || channels >= positions)) return true;
  if (t.stride(2) == 1 && positions > 1 && (positions >= kShortAxis || positions >= channels)) {
    return false;
  }
  return channels > positions;
}

// t is an ordinary dense tensor in CPU memory, which the kernels read through its data
// pointer and strides: other layouts (mkldnn, sparse) have neither, and would crash them.
inline void check_strided_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got an undefined one");
  TORCH_CHECK(t.layout() == at::kStrided, name, " must be a strided (dense) tensor, got layout ",
              t.layout(), " (convert it with .to_dense() first)");
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
}

inline void check_cpu_float_3d(const at::Tensor& t, const char* name) {
  check_strided_cpu(t, name);
  TORCH_CHECK(t.dim() == 3, name, " must be viewed as (N, C, S) with 3 dimensions, got ",
              t.dim(), " dimensions");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_same_shape_and_dtype(const at::Tensor& t, const at::Tensor& ref,
                                       const char* name, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ",
              ref.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ",
              ref_name, " (", ref.scalar_type(), "), got ", t.scalar_type());
}

// t is a CPU (N, C, S) view of the shape and dtype of the op's input.
inline void check_same_as(const at::Tensor& t, const at::Tensor& input, const char* name) {
  check_cpu_float_3d(t, name);
  check_same_shape_and_dtype(t, input, name, "input");
}

inline void check_writable(const at::Tensor& out, const char* name) {
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes, name,
              " must not have overlapping elements (it is written to)");
}

// An output of the shape and dtype of the op's input.
inline void check_output(const at::Tensor& out, const at::Tensor& input, const char* name) {
  check_same_as(out, input, name);
  check_writable(out, name);
}

// An output that is written while `in` is read must not overlap it, except (where
// `same_allowed`) by being exactly the same elements, for kernels in which each element
// is read before it is written.
inline void check_disjoint(const at::Tensor& out, const char* out_name, const at::Tensor& in,
                           const char* in_name, bool same_allowed = false) {
  const auto status = at::get_overlap_status(out, in);
  const bool same = status == at::MemOverlapStatus::Full && out.strides() == in.strides();
  TORCH_CHECK(status != at::MemOverlapStatus::Partial &&
                  (status != at::MemOverlapStatus::Full || (same_allowed && same)),
              out_name, " must not share memory with ", in_name,
              same_allowed ? " (except by being the very same tensor)" : "");
}

}  // namespace fastcnn
