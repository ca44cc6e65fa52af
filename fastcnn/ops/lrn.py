"""Local response normalization as torch.library custom ops.

fastcnn::lrn_forward and fastcnn::lrn_backward run one backend's kernel, named by their
last argument (chosen by fastcnn.backends.select before the call), on (N, C, S) views of
their tensors. Their fake implementations give torch.compile the output layout without
running anything.
"""

import torch

from fastcnn import backends
from fastcnn.ops.layout import channel_view, channel_view_or_copy, empty_output


@torch.library.custom_op("fastcnn::lrn_forward", mutates_args=())
def lrn_forward(input: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                backend: str) -> torch.Tensor:
    backends.report_fallback("local_response_norm", backend, input.device)
    output = empty_output(input)
    backends.kernels(backend).lrn_forward(
        channel_view_or_copy(input), channel_view(output), size, alpha, beta, k)
    return output


@lrn_forward.register_fake
def _(input, size, alpha, beta, k, backend):
    return empty_output(input)


@torch.library.custom_op("fastcnn::lrn_backward", mutates_args=())
def lrn_backward(input: torch.Tensor, grad_output: torch.Tensor, size: int, alpha: float,
                 beta: float, k: float, backend: str) -> torch.Tensor:
    grad_input = empty_output(input)
    backends.kernels(backend).lrn_backward(
        channel_view_or_copy(input), channel_view_or_copy(grad_output),
        channel_view(grad_input), size, alpha, beta, k)
    return grad_input


@lrn_backward.register_fake
def _(input, grad_output, size, alpha, beta, k, backend):
    return empty_output(input)
