// 2-d max-pooling on CPU tensors: the entry points, which check their arguments, plan the
// two axes and run the kernels (max_pool.h says what is computed).
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>

#include "max_pool.h"
#include "ops.h"

namespace fastcnn::cpu {
namespace {

using max_pool_detail::Axis;

// ---------------------------------------------------------------------------------------
// Entry points.
// ---------------------------------------------------------------------------------------

std::pair<Axis, Axis> pooling_axes(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                                   at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation) {
  const auto pair = [](at::IntArrayRef v, const char* name) {
    TORCH_CHECK(v.size() == 2, name, " must have 2 values (h, w), got ", v.size());
  };
  pair(kernel_size, "kernel_size");
  pair(stride, "stride");
  pair(padding, "padding");
  pair(dilation, "dilation");
  const int64_t in[2] = {in_h, in_w}, out[2] = {out_h, out_w};
  for (int d = 0; d < 2; ++d) {
    TORCH_CHECK(kernel_size[d] >= 1, "kernel_size must be >= 1, got ", kernel_size);
    TORCH_CHECK(stride[d] >= 1, "stride must be >= 1, got ", stride);
    TORCH_CHECK(dilation[d] >= 1, "dilation must be >= 1, got ", dilation);
    TORCH_CHECK(padding[d] >= 0 && padding[d] <= kernel_size[d] / 2,
                "padding must be between 0 and half of kernel_size ", kernel_size, ", got ",
                padding);
    // The output size is the caller's (fastcnn.ops.pooling.pooled_size); what the kernels
    // rely on is that every window starts inside the input or its left padding.
    const int64_t last_start = (out[d] - 1) * stride[d] - padding[d];
    TORCH_CHECK(out[d] >= 1 && last_start < in[d], "output size ", out[d],
                " is impossible for input size ", in[d], ": its last window would start at ",
                last_start);
  }
  return {Axis(in_h, out_h, kernel_size[0], stride[0], padding[0], dilation[0]),
          Axis(in_w, out_w, kernel_size[1], stride[1], padding[1], dilation[1])};
}

void check_image(const at::Tensor& t, const char* name) {
  check_strided_cpu(t, name);
  TORCH_CHECK(t.dim() == 4, name, " must be (N, C, H, W), got ", t.dim(), " dimensions");
}

void check_float_image(const at::Tensor& t, const char* name) {
  check_image(t, name);
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

void check_positions(const at::Tensor& positions, const at::Tensor& pooled, const char* pooled_name,
                     const Axis& aw, const Axis& ah) {
  check_image(positions, "positions");
  TORCH_CHECK(positions.sizes() == pooled.sizes(), "positions must have the shape of ",
              pooled_name, " ", pooled.sizes(), ", got ", positions.sizes());
  const int64_t taps = ah.kernel * aw.kernel;
  const auto expected = taps <= 256                                  ? at::kByte
                        : taps <= std::numeric_limits<int32_t>::max() ? at::kInt
                                                                      : at::kLong;
  TORCH_CHECK(positions.scalar_type() == expected, "positions must be ", expected, " for a ",
              ah.kernel, "x", aw.kernel, " window, got ", positions.scalar_type());
}

}  // namespace

void max_pool2d_forward(const at::Tensor& input, const at::Tensor& output,
                        const std::optional<at::Tensor>& positions, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation) {
  check_float_image(input, "input");
  check_float_image(output, "output");
  TORCH_CHECK(output.scalar_type() == input.scalar_type(), "output must have the dtype of input (",
              input.scalar_type(), "), got ", output.scalar_type());
  TORCH_CHECK(output.size(0) == input.size(0) && output.size(1) == input.size(1),
              "output must have the batch and channels of input ", input.sizes(), ", got ",
              output.sizes());
  const auto axes = pooling_axes(input.size(2), input.size(3), output.size(2),
                                     output.size(3), kernel_size, stride, padding, dilation);
  check_writable(output, "output");
  check_disjoint(output, "output", input, "input");
  const bool with_positions = positions.has_value();
  if (with_positions) {
    check_positions(*positions, output, "output", axes.second, axes.first);
    check_writable(*positions, "positions");
    check_disjoint(*positions, "positions", input, "input");
    check_disjoint(*positions, "positions", output, "output");
  }
  if (output.numel() == 0) return;
  max_pool_detail::forward(input, output, positions, axes.first, axes.second);
}

void max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& positions,
                         const at::Tensor& grad_input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation) {
  check_float_image(grad_output, "grad_output");
  check_float_image(grad_input, "grad_input");
  TORCH_CHECK(grad_input.scalar_type() == grad_output.scalar_type(),
              "grad_input must have the dtype of grad_output (", grad_output.scalar_type(),
              "), got ", grad_input.scalar_type());
  TORCH_CHECK(grad_input.size(0) == grad_output.size(0) && grad_input.size(1) == grad_output.size(1),
              "grad_input must have the batch and channels of grad_output ", grad_output.sizes(),
              ", got ", grad_input.sizes());
  const auto axes = pooling_axes(grad_input.size(2), grad_input.size(3), grad_output.size(2),
                                     grad_output.size(3), kernel_size, stride, padding, dilation);
  check_positions(positions, grad_output, "grad_output", axes.second, axes.first);
  check_writable(grad_input, "grad_input");
  check_disjoint(grad_input, "grad_input", grad_output, "grad_output");
  check_disjoint(grad_input, "grad_input", positions, "positions");
  if (grad_input.numel() == 0) return;
  max_pool_detail::backward(grad_output, positions, grad_input, axes.first, axes.second);
}

}  // namespace fastcnn::cpu
