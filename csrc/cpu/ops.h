// The CPU entry points that csrc/fastcnn.cpp binds. Every op takes its tensors as
// (N, C, S) strided views (see ChannelView) and writes into outputs allocated by the caller,
// so the Python side alone decides output layouts (and the fake tensors of torch.compile
// agree with them).
#pragma once

#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>

namespace fastcnn::cpu {

void lrn_forward(const at::Tensor& input, const at::Tensor& output, int64_t size,
                 double alpha, double beta, double k);

void lrn_backward(const at::Tensor& input, const at::Tensor& grad_output,
                  const at::Tensor& grad_input, int64_t size, double alpha, double beta,
                  double k);

// Max-pooling of (N, C, H, W) input into (N, C, OH, OW) output; positions, if given, receive
// each winner's place in its window (kh * kernel_w + kw): uint8 for windows of at most
// 256 taps, int32 for up to 2^31 - 1, else int64. kernel_size, stride, padding, dilation
// are (h, w).
void max_pool2d_forward(const at::Tensor& input, const at::Tensor& output,
                        const std::optional<at::Tensor>& positions, at::IntArrayRef kernel_size,
                        at::IntArrayRef stride, at::IntArrayRef padding,
                        at::IntArrayRef dilation);

void max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& positions,
                         const at::Tensor& grad_input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation);

// ReLU -> LRN -> max-pooling of (N, C, H, W) input (any strides) into (N, C, OH, OW)
// output, and positions (uint8, kh * kernel_w + kw), if given, of each winner in its window
// (dilation 1, at most 256 taps); the gradient w.r.t. input from input and positions.
void relu_lrn_max_pool2d_forward(const at::Tensor& input, const at::Tensor& output,
                                 const std::optional<at::Tensor>& positions, int64_t size,
                                 double alpha, double beta, double k,
                                 at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding);

void relu_lrn_max_pool2d_backward(const at::Tensor& input, const at::Tensor& grad_output,
                                  const at::Tensor& positions, const at::Tensor& grad_input,
                                  int64_t size, double alpha, double beta, double k,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding);

// Global average pooling of an (N, C, S) view into an (N, C, 1) view, and its gradient.
void global_avg_pool2d_forward(const at::Tensor& input, const at::Tensor& output);

// The same for an (N, C, H, W) tensor, into an (N, C, 1, 1) output allocated here,
// channels_last or contiguous as the caller decides (fastcnn.ops' layout rule): a call costs
// a few microseconds less than allocating in Python and viewing there, on an op of a tenth
// of a millisecond.
at::Tensor global_avg_pool2d(const at::Tensor& input, bool channels_last);

void global_avg_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& grad_input);

// The passes of Conv -> BatchNorm -> ReLU (+ residual) around the convolution (see
// conv_bn_relu.cpp). Per-channel vectors are (C,) in float32, or float64 for float64 input.
void channel_affine_act(const at::Tensor& input, const at::Tensor& scale,
                        const at::Tensor& shift, const std::optional<at::Tensor>& residual,
                        const at::Tensor& output, bool relu);

void batch_norm_stats(const at::Tensor& input, const at::Tensor& mean, const at::Tensor& var);

void batch_norm_act_backward_reduce(const at::Tensor& grad_output, const at::Tensor& input,
                                    const std::optional<at::Tensor>& residual,
                                    const at::Tensor& scale, const at::Tensor& shift,
                                    const at::Tensor& mean, const at::Tensor& invstd,
                                    const at::Tensor& sum_dz, const at::Tensor& sum_dz_xhat,
                                    bool relu);

void batch_norm_act_backward(const at::Tensor& grad_output, const at::Tensor& input,
                             const std::optional<at::Tensor>& residual, const at::Tensor& scale,
                             const at::Tensor& shift, const at::Tensor& mean,
                             const at::Tensor& invstd, const at::Tensor& sum_dz,
                             const at::Tensor& sum_dz_xhat, const at::Tensor& grad_input,
                             const std::optional<at::Tensor>& grad_residual, bool relu);

// Concatenation (torch.cat) of inputs along dim into output, preallocated with any strides:
// each input is copied, as bytes, into output.narrow(dim, offset, its size along dim); the
// inputs have output's dtype and rank and its sizes outside dim.
void concat_forward(const std::vector<at::Tensor>& inputs, const at::Tensor& output,
                    int64_t dim);

}  // namespace fastcnn::cpu
