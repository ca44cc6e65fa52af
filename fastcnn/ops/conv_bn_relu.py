"""The passes of Conv -> BatchNorm -> ReLU (+ residual) around the convolution, as
torch.library custom ops.

Each op runs one backend's kernel, named by its last argument (chosen by
fastcnn.backends.select before the call), on (N, C, S) views of its feature maps; the
per-channel vectors (mean, scale, ...) are (C,) tensors in float32, or float64 for float64
feature maps (`stat_dtype`). The fake implementations give torch.compile the outputs'
shapes and layouts without running anything.
"""

from typing import Optional

import torch

from fastcnn import backends
from fastcnn.ops._custom_op import custom_op
from fastcnn.ops.layout import channel_view, channel_view_or_copy, empty_output


def stat_dtype(dtype):
    """The dtype of per-channel statistics and constants for feature maps of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _channel_vector(input):
    return torch.empty(input.shape[1], dtype=stat_dtype(input.dtype), device=input.device)


def _view(t):
    return None if t is None else channel_view_or_copy(t)


def _fake_channel_affine_act(input, scale, shift, residual, relu, backend):
    return empty_output(input)


@custom_op("fastcnn::channel_affine_act", fake=_fake_channel_affine_act)
def channel_affine_act(input: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                       residual: Optional[torch.Tensor], relu: bool,
                       backend: str) -> torch.Tensor:
    """act(input * scale_c + shift_c (+ residual)), act being ReLU or the identity. The
    output has input's layout."""
    backends.report_fallback("conv_bn_relu", backend, input.device)
    output = empty_output(input)
    backends.kernels(backend).channel_affine_act(
        channel_view_or_copy(input), scale, shift, _view(residual), channel_view(output), relu)
    return output


def _fake_channel_affine_act_(input, scale, shift, residual, relu, backend):
    return None


@custom_op("fastcnn::channel_affine_act_", fake=_fake_channel_affine_act_,
           mutates_args=("input",))
def channel_affine_act_(input: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                        residual: Optional[torch.Tensor], relu: bool, backend: str) -> None:
    """channel_affine_act written over its input (a convolution's fresh output), so that the
    epilogue costs one read and one write of it and no new tensor."""
    backends.report_fallback("conv_bn_relu", backend, input.device)
    view = channel_view(input)
    if view is None:  # no (N, C, S) view: compute aside, copy back
        input.copy_(channel_affine_act(input, scale, shift, residual, relu, backend))
        return
    backends.kernels(backend).channel_affine_act(view, scale, shift, _view(residual), view, relu)


def _fake_channel_affine_act_out(input, scale, shift, residual, relu, output, backend):
    return None


@custom_op("fastcnn::channel_affine_act_out", fake=_fake_channel_affine_act_out,
           mutates_args=("output",))
def channel_affine_act_out(input: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                           residual: Optional[torch.Tensor], relu: bool, output: torch.Tensor,
                           backend: str) -> None:
    """channel_affine_act written into output, a tensor of input's shape and dtype that
    shares no memory with it: a channel slice of a concatenation's output, say (strided in
    channels_last), so that the result needs no copy into it."""
    backends.report_fallback("conv_bn_relu", backend, input.device)
    view = channel_view(output)
    if view is None:  # no (N, C, S) view: compute aside, copy in
        output.copy_(channel_affine_act(input, scale, shift, residual, relu, backend))
        return
    backends.kernels(backend).channel_affine_act(
        channel_view_or_copy(input), scale, shift, _view(residual), view, relu)


def _fake_batch_norm_stats(input, backend):
    return _channel_vector(input), _channel_vector(input)


@custom_op("fastcnn::batch_norm_stats", fake=_fake_batch_norm_stats)
def batch_norm_stats(input: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of input (N, C, *) over every other dimension."""
    mean, var = _channel_vector(input), _channel_vector(input)
    backends.kernels(backend).batch_norm_stats(channel_view_or_copy(input), mean, var)
    return mean, var


def _fake_batch_norm_act_backward_reduce(grad_output, input, residual, scale, shift, mean,
                                         invstd, relu, backend):
    return _channel_vector(input), _channel_vector(input)


@custom_op("fastcnn::batch_norm_act_backward_reduce", fake=_fake_batch_norm_act_backward_reduce)
def batch_norm_act_backward_reduce(grad_output: torch.Tensor, input: torch.Tensor,
                                   residual: Optional[torch.Tensor], scale: torch.Tensor,
                                   shift: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                                   relu: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel sum of dz and of dz * xhat, dz being grad_output where the ReLU passed
    its input (recomputed from input, scale, shift and residual) and 0 elsewhere."""
    sum_dz, sum_dz_xhat = _channel_vector(input), _channel_vector(input)
    backends.kernels(backend).batch_norm_act_backward_reduce(
        channel_view_or_copy(grad_output), channel_view_or_copy(input), _view(residual), scale,
        shift, mean, invstd, sum_dz, sum_dz_xhat, relu)
    return sum_dz, sum_dz_xhat


def _fake_batch_norm_act_backward(grad_output, input, residual, scale, shift, mean, invstd,
                                  sum_dz, sum_dz_xhat, relu, grad_residual, backend):
    return [empty_output(input) for _ in range(2 if grad_residual else 1)]


@custom_op("fastcnn::batch_norm_act_backward", fake=_fake_batch_norm_act_backward)
def batch_norm_act_backward(grad_output: torch.Tensor, input: torch.Tensor,
                            residual: Optional[torch.Tensor], scale: torch.Tensor,
                            shift: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor,
                            sum_dz: torch.Tensor, sum_dz_xhat: torch.Tensor, relu: bool,
                            grad_residual: bool, backend: str) -> list[torch.Tensor]:
    """[dL/dinput] of batch norm (+ residual) (+ ReLU), and dL/dresidual (the masked
    gradient dz) after it when grad_residual is true."""
    grads = [empty_output(input)]
    if grad_residual:
        grads.append(empty_output(input))
    backends.kernels(backend).batch_norm_act_backward(
        channel_view_or_copy(grad_output), channel_view_or_copy(input), _view(residual), scale,
        shift, mean, invstd, sum_dz, sum_dz_xhat, channel_view(grads[0]),
        channel_view(grads[1]) if grad_residual else None, relu)
    return grads
