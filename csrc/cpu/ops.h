// The CPU entry points that csrc/fastcnn.cpp binds. Every op takes its tensors as
// (N, C, S) strided views (see ChannelView) and writes into outputs allocated by the caller,
// so the Python side alone decides output layouts (and the fake tensors of torch.compile
// agree with them).
#pragma once

#include <ATen/core/Tensor.h>

namespace fastcnn::cpu {

void lrn_forward(const at::Tensor& input, const at::Tensor& output, int64_t size,
                 double alpha, double beta, double k);

void lrn_backward(const at::Tensor& input, const at::Tensor& grad_output,
                  const at::Tensor& grad_input, int64_t size, double alpha, double beta,
                  double k);

}  // namespace fastcnn::cpu
