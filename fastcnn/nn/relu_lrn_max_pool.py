"""ReLULRNMaxPool: ReLU -> local response normalisation -> overlapping max-pool, the stem of
AlexNet (Krizhevsky et al., 2012, section 3.3-3.4), ZFNet and GoogLeNet's second stage, as
one layer."""

import torch

from fastcnn.functional.relu_lrn_max_pool import relu_lrn_max_pool2d


class ReLULRNMaxPool(torch.nn.Module):
    """max_pool2d(local_response_norm(relu(x), size, alpha, beta, k), kernel_size, stride,
    padding, ceil_mode=ceil_mode), one fused op forward and backward. No parameters."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, kernel_size=3, stride=2,
                 padding=0, ceil_mode=False):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = ceil_mode

    def forward(self, input):
        return relu_lrn_max_pool2d(input, self.size, self.alpha, self.beta, self.k,
                                   self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self):
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, ceil_mode={self.ceil_mode}")
