"""Max-pooling and global average pooling as torch.library custom ops.

Each op runs one backend's kernel, named by its last argument (chosen by
fastcnn.backends.select before the call). Max-pooling sees (N, C, H, W) tensors (the
functional layer adds the batch dimension of 3-d inputs); global average pooling sees
(N, C, S) views. Their fake implementations give torch.compile the output shapes and
layouts without running anything.

Max-pooling keeps, for backward, the position of each window's winner inside its window
(kh * kernel_w + kw) in one byte instead of PyTorch's int64 index into the plane.
"""

from typing import List

import torch

from fastcnn import backends
from fastcnn.ops._custom_op import custom_op
from fastcnn.ops.layout import channel_view, channel_view_or_copy, is_channels_last

# Windows of more taps than one byte can number keep int32 positions, and those of more
# than int32 can number (kernel sizes near 2^31) int64.
_MAX_BYTE_POSITIONS = 256
_MAX_INT32_POSITIONS = 2**31 - 1


def pooled_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Output length of a pooling along one dimension, by PyTorch's rule: with ceil_mode a
    last partial window is kept only if it starts inside the input or its left padding."""
    span = dilation * (kernel - 1) + 1
    out = (size + 2 * padding - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def positions_dtype(kernel_size):
    """The dtype of the winners' positions for a window of kernel_size taps."""
    taps = kernel_size[0] * kernel_size[1]
    if taps <= _MAX_BYTE_POSITIONS:
        return torch.uint8
    return torch.int32 if taps <= _MAX_INT32_POSITIONS else torch.int64


def _empty_pooled(input, out_h, out_w, dtype=None, channels_last=None):
    channels_last = is_channels_last(input) if channels_last is None else channels_last
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((input.size(0), input.size(1), out_h, out_w), dtype=dtype or input.dtype,
                       device=input.device, memory_format=memory_format)


def _max_pool2d_outputs(input, kernel_size, stride, padding, dilation, ceil_mode, positions):
    out_h, out_w = (pooled_size(input.size(2 + d), kernel_size[d], stride[d], padding[d],
                                dilation[d], ceil_mode) for d in range(2))
    output = _empty_pooled(input, out_h, out_w)
    if not positions:
        return output, None
    return output, _empty_pooled(input, out_h, out_w, dtype=positions_dtype(kernel_size))


def _fake_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode, backend):
    return _max_pool2d_outputs(input, kernel_size, stride, padding, dilation, ceil_mode,
                               positions=False)[0]


@custom_op("fastcnn::max_pool2d", fake=_fake_max_pool2d)
def max_pool2d(input: torch.Tensor, kernel_size: List[int], stride: List[int],
               padding: List[int], dilation: List[int], ceil_mode: bool,
               backend: str) -> torch.Tensor:
    """The pooled values alone (inference: no positions computed or written)."""
    backends.report_fallback("max_pool2d", backend, input.device)
    output, _ = _max_pool2d_outputs(input, kernel_size, stride, padding, dilation, ceil_mode,
                                    positions=False)
    backends.kernels(backend).max_pool2d_forward(input, output, None, kernel_size, stride,
                                                 padding, dilation)
    return output


def _fake_max_pool2d_with_positions(input, kernel_size, stride, padding, dilation, ceil_mode,
                                    backend):
    return _max_pool2d_outputs(input, kernel_size, stride, padding, dilation, ceil_mode,
                               positions=True)


@custom_op("fastcnn::max_pool2d_with_positions", fake=_fake_max_pool2d_with_positions)
def max_pool2d_with_positions(input: torch.Tensor, kernel_size: List[int], stride: List[int],
                              padding: List[int], dilation: List[int], ceil_mode: bool,
                              backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled values and the position of each winner in its window."""
    backends.report_fallback("max_pool2d", backend, input.device)
    output, positions = _max_pool2d_outputs(input, kernel_size, stride, padding, dilation,
                                            ceil_mode, positions=True)
    backends.kernels(backend).max_pool2d_forward(input, output, positions, kernel_size, stride,
                                                 padding, dilation)
    return output, positions


def _fake_max_pool2d_into(input, kernel_size, stride, padding, dilation, output, backend):
    return None


@custom_op("fastcnn::max_pool2d_into", fake=_fake_max_pool2d_into, mutates_args=("output",))
def max_pool2d_into(input: torch.Tensor, kernel_size: List[int], stride: List[int],
                    padding: List[int], dilation: List[int], output: torch.Tensor,
                    backend: str) -> None:
    """max_pool2d written into output, an (N, C, OH, OW) tensor with any strides (a channel
    slice of a concatenation's output, say) whose size is the pooled size (the caller's
    ceil_mode decided it)."""
    backends.report_fallback("max_pool2d", backend, input.device)
    backends.kernels(backend).max_pool2d_forward(input, output, None, kernel_size, stride,
                                                 padding, dilation)


def _fake_max_pool2d_with_positions_into(input, kernel_size, stride, padding, dilation,
                                         output, backend):
    return _empty_pooled(input, *output.shape[2:], dtype=positions_dtype(kernel_size))


@custom_op("fastcnn::max_pool2d_with_positions_into",
           fake=_fake_max_pool2d_with_positions_into, mutates_args=("output",))
def max_pool2d_with_positions_into(input: torch.Tensor, kernel_size: List[int],
                                   stride: List[int], padding: List[int], dilation: List[int],
                                   output: torch.Tensor, backend: str) -> torch.Tensor:
    """max_pool2d_into, and the position of each winner in its window, returned."""
    backends.report_fallback("max_pool2d", backend, input.device)
    positions = _empty_pooled(input, *output.shape[2:], dtype=positions_dtype(kernel_size))
    backends.kernels(backend).max_pool2d_forward(input, output, positions, kernel_size, stride,
                                                 padding, dilation)
    return positions


def _fake_max_pool2d_backward(grad_output, positions, input_height, input_width, kernel_size,
                              stride, padding, dilation, channels_last, backend):
    return _empty_pooled(grad_output, input_height, input_width, channels_last=channels_last)


@custom_op("fastcnn::max_pool2d_backward", fake=_fake_max_pool2d_backward)
def max_pool2d_backward(grad_output: torch.Tensor, positions: torch.Tensor, input_height: int,
                        input_width: int, kernel_size: List[int], stride: List[int],
                        padding: List[int], dilation: List[int], channels_last: bool,
                        backend: str) -> torch.Tensor:
    grad_input = _empty_pooled(grad_output, input_height, input_width,
                               channels_last=channels_last)
    backends.kernels(backend).max_pool2d_backward(grad_output, positions, grad_input,
                                                  kernel_size, stride, padding, dilation)
    return grad_input


def _empty_global_pooled(input):
    # (N, C, 1, 1) in input's layout, as torch's mean(keepdim=True) gives it
    return _empty_pooled(input, 1, 1)


def _fake_global_avg_pool2d(input, backend):
    return _empty_global_pooled(input)


@custom_op("fastcnn::global_avg_pool2d", fake=_fake_global_avg_pool2d)
def global_avg_pool2d(input: torch.Tensor, backend: str) -> torch.Tensor:
    backends.report_fallback("global_avg_pool2d", backend, input.device)
    if backend == "cpp":
        # The extension views, allocates (by _empty_global_pooled's rule) and pools in one
        # call: doing the first two here would cost a fifth of the op on a ResNet head.
        return backends.kernels(backend).global_avg_pool2d(input, is_channels_last(input))
    output = _empty_global_pooled(input)
    n, c = output.shape[:2]
    backends.kernels(backend).global_avg_pool2d_forward(channel_view_or_copy(input),
                                                        output.view(n, c, 1))
    return output


def _fake_global_avg_pool2d_backward(grad_output, input_height, input_width, channels_last,
                                     backend):
    return _empty_pooled(grad_output, input_height, input_width, channels_last=channels_last)


@custom_op("fastcnn::global_avg_pool2d_backward", fake=_fake_global_avg_pool2d_backward)
def global_avg_pool2d_backward(grad_output: torch.Tensor, input_height: int, input_width: int,
                               channels_last: bool, backend: str) -> torch.Tensor:
    grad_input = _empty_pooled(grad_output, input_height, input_width,
                               channels_last=channels_last)
    backends.kernels(backend).global_avg_pool2d_backward(channel_view_or_copy(grad_output),
                                                         channel_view(grad_input))
    return grad_input
