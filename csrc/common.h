// Shared pieces of the CPU kernels: argument checks with messages a user can act on,
// the (N, C, S) strided view every kernel works on, and the build macros that let the
// compiler vectorise the hot loops for the machine that runs them.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdint>
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

  // The view of an absent optional tensor: no data, never read.
  ChannelView() : data(nullptr), stride_n(0), stride_c(0), stride_s(0) {}

  explicit ChannelView(const at::Tensor& t)
      : data(static_cast<scalar_t*>(t.data_ptr())),
        stride_n(t.stride(0)),
        stride_c(t.stride(1)),
        stride_s(t.stride(2)) {}

  scalar_t* at(int64_t n, int64_t c, int64_t s) const {
    return data + n * stride_n + c * stride_c + s * stride_s;
  }
};

inline void check_cpu_float_3d(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got one on ", t.device());
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

// Outputs are written while inputs are still being read.
inline void check_disjoint(const at::Tensor& out, const char* out_name, const at::Tensor& in,
                           const char* in_name) {
  const auto status = at::get_overlap_status(out, in);
  TORCH_CHECK(status != at::MemOverlapStatus::Full && status != at::MemOverlapStatus::Partial,
              out_name, " must not share memory with ", in_name);
}

inline void check_writable(const at::Tensor& out, const char* name) {
  TORCH_CHECK(at::has_internal_overlap(out) != at::MemOverlap::Yes, name,
              " must not have overlapping elements (it is written to)");
}

}  // namespace fastcnn
