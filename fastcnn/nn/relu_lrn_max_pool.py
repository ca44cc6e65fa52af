"""ReLULRNMaxPool: ReLU -> local response normalisation -> max-pool as one layer: AlexNet's
two stems (Krizhevsky et al., 2012, sections 3.3-3.4, overlapping 3x3/2 pools), VGG's
A-LRN first layer and GoogLeNet's conv2 stage."""

import torch

from fastcnn.functional.relu_lrn_max_pool import relu_lrn_max_pool2d


class ReLULRNMaxPool(torch.nn.Module):
    """max_pool2d(local_response_norm(relu(x), size, alpha, beta, k), kernel_size, stride,
    padding, ceil_mode=ceil_mode), one fused op forward and backward. No parameters."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0, kernel_size=3, stride=None,
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
