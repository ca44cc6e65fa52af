"""ReLU -> local response normalization -> max-pooling as torch.library custom ops.

Each op runs one backend's kernel, named by its last argument (chosen by
fastcnn.backends.select before the call), on (N, C, H, W) tensors of any strides. The
outputs take max-pooling's sizes and layout rule (fastcnn.ops.pooling), and the winners'
positions are max-pooling's: one byte per output, kh * kernel_w + kw. The fake
implementations give torch.compile those shapes without running anything.
"""

from typing import List

import torch

from fastcnn import backends
from fastcnn.ops._custom_op import custom_op
from fastcnn.ops.pooling import _empty_pooled, _max_pool2d_outputs

_NO_DILATION = (1, 1)


def _outputs(input, kernel_size, stride, padding, ceil_mode, positions):
    return _max_pool2d_outputs(input, kernel_size, stride, padding, _NO_DILATION, ceil_mode,
                               positions)


def _fake_forward(input, size, alpha, beta, k, kernel_size, stride, padding, ceil_mode,
                  backend):
    return _outputs(input, kernel_size, stride, padding, ceil_mode, positions=False)[0]


@custom_op("fastcnn::relu_lrn_max_pool2d", fake=_fake_forward)
def relu_lrn_max_pool2d(input: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                        kernel_size: List[int], stride: List[int], padding: List[int],
                        ceil_mode: bool, backend: str) -> torch.Tensor:
    """The pooled values alone (inference: no positions computed or written)."""
    backends.report_fallback("relu_lrn_max_pool2d", backend, input.device)
    output, _ = _outputs(input, kernel_size, stride, padding, ceil_mode, positions=False)
    backends.kernels(backend).relu_lrn_max_pool2d_forward(
        input, output, None, size, alpha, beta, k, kernel_size, stride, padding)
    return output


def _fake_forward_with_positions(input, size, alpha, beta, k, kernel_size, stride, padding,
                                 ceil_mode, backend):
    return _outputs(input, kernel_size, stride, padding, ceil_mode, positions=True)


@custom_op("fastcnn::relu_lrn_max_pool2d_with_positions", fake=_fake_forward_with_positions)
def relu_lrn_max_pool2d_with_positions(
        input: torch.Tensor, size: int, alpha: float, beta: float, k: float,
        kernel_size: List[int], stride: List[int], padding: List[int], ceil_mode: bool,
        backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled values and the position of each winner in its window."""
    backends.report_fallback("relu_lrn_max_pool2d", backend, input.device)
    output, positions = _outputs(input, kernel_size, stride, padding, ceil_mode,
                                 positions=True)
    backends.kernels(backend).relu_lrn_max_pool2d_forward(
        input, output, positions, size, alpha, beta, k, kernel_size, stride, padding)
    return output, positions


def _fake_backward(input, grad_output, positions, size, alpha, beta, k, kernel_size, stride,
                   padding, backend):
    return _empty_pooled(input, *input.shape[2:])


@custom_op("fastcnn::relu_lrn_max_pool2d_backward", fake=_fake_backward)
def relu_lrn_max_pool2d_backward(input: torch.Tensor, grad_output: torch.Tensor,
                                 positions: torch.Tensor, size: int, alpha: float, beta: float,
                                 k: float, kernel_size: List[int], stride: List[int],
                                 padding: List[int], backend: str) -> torch.Tensor:
    """dL/dinput, in input's layout, from input and the forward's positions."""
    grad_input = _empty_pooled(input, *input.shape[2:])
    backends.kernels(backend).relu_lrn_max_pool2d_backward(
        input, grad_output, positions, grad_input, size, alpha, beta, k, kernel_size, stride,
        padding)
    return grad_input
