"""Local response normalization as torch.library custom ops.

fastcnn::lrn_forward and fastcnn::lrn_backward run one backend's kernel, named by their
last argument (chosen by fastcnn.backends.select before the call), on (N, C, S) views of
their tensors. Their fake implementations give torch.compile the output layout without
running anything.
"""

import torch

from fastcnn import backends
from fastcnn.ops._custom_op import custom_op
from fastcnn.ops.layout import channel_view, channel_view_or_copy, empty_output


def _fake_forward(input, size, alpha, beta, k, backend):
    return empty_output(input)


def _fake_backward(input, grad_output, size, alpha, beta, k, backend):
    return empty_output(input)


@custom_op("fastcnn::lrn_forward", fake=_fake_forward)
def lrn_forward(input: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                backend: str) -> torch.Tensor:
    backends.report_fallback("local_response_norm", backend, input.device)
    output = empty_output(input)
    backends.kernels(backend).lrn_forward(
        channel_view_or_copy(input), channel_view(output), size, alpha, beta, k)
    return output


@custom_op("fastcnn::lrn_backward", fake=_fake_backward)
def lrn_backward(input: torch.Tensor, grad_output: torch.Tensor, size: int, alpha: float,
                 beta: float, k: float, backend: str) -> torch.Tensor:
    grad_input = empty_output(input)
    backends.kernels(backend).lrn_backward(
        channel_view_or_copy(input), channel_view_or_copy(grad_output),
        channel_view(grad_input), size, alpha, beta, k)
    return grad_input
