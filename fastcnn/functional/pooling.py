"""max_pool2d and global_avg_pool2d: the numbers of torch.nn.functional.max_pool2d and of
adaptive average pooling to 1x1, from the fastcnn kernels, forward and backward."""

import functools
import numbers

import torch
import torch.nn.functional as F

from fastcnn import backends, ops
from fastcnn.functional._checks import MAX_INT32, check_feature_map, check_tensor, kernels_take
from fastcnn.functional._into import copy_into
from fastcnn.kernels import reference
from fastcnn.ops.layout import is_channels_last
from fastcnn.ops.pooling import pooled_size


def _pair(name, value, minimum):
    """An int or a sequence of one or two ints, each >= minimum, as an (h, w) tuple."""
    values = (value,) if isinstance(value, numbers.Integral) else value
    if (not isinstance(values, (tuple, list, torch.Size)) or len(values) not in (1, 2)
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                       for v in values)):
        raise TypeError(f"{name} must be an int or a tuple of one or two ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if any(v > MAX_INT32 for v in values):  # as PyTorch, which keeps them in 32 bits
        raise ValueError(f"{name} must be at most 2**31 - 1, got {value!r}")
    values = tuple(int(v) for v in values)
    return values * 2 if len(values) == 1 else values


def _check_pooled_input(input, name="input"):
    """A float (C, H, W) or (N, C, H, W) tensor with C, H and W non-zero (N may be 0)."""
    check_feature_map(name, input, min_dim=3)
    if input.dim() > 4:
        raise ValueError(f"{name} must be (C, H, W) or (N, C, H, W), got a {input.dim()}-d "
                         f"tensor of shape {tuple(input.shape)}")
    if any(size == 0 for size in input.shape[-3:]):
        raise ValueError(f"{name} must have non-zero channels, height and width, got shape "
                         f"{tuple(input.shape)}")


@functools.lru_cache(maxsize=256)
def _windows_all_reach_input(size, kernel, stride, padding, dilation, out):
    """Whether every window has a tap inside the input (with dilation some can fall
    between its taps: PyTorch then reads and writes out of bounds)."""
    for o in range(out):
        start = o * stride - padding
        first = 0 if start >= 0 else -(start // dilation)  # first tap at or after row 0
        if start + first * dilation >= size or first >= kernel:
            return False
    return True


def _pooling_arguments(input, kernel_size, stride, padding, dilation, ceil_mode):
    kernel_size = _pair("kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None or stride == () or stride == [] else \
        _pair("stride", stride, minimum=1)
    padding = _pair("padding", padding, minimum=0)
    dilation = _pair("dilation", dilation, minimum=1)
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"ceil_mode must be a bool, got {ceil_mode!r}")
    for d, axis in enumerate(("height", "width")):
        if padding[d] > kernel_size[d] // 2:
            raise ValueError(
                f"padding must be at most half of kernel_size, got padding={padding} for "
                f"kernel_size={kernel_size}")
        size = input.shape[-2 + d]
        out = pooled_size(size, kernel_size[d], stride[d], padding[d], dilation[d], ceil_mode)
        if out < 1:
            span = dilation[d] * (kernel_size[d] - 1) + 1
            raise ValueError(
                f"kernel_size {kernel_size} (dilation {dilation}) spans {span} along the "
                f"{axis}, more than the input's {size} plus padding {padding[d]} on each side")
        if dilation[d] > 1 and not _windows_all_reach_input(size, kernel_size[d], stride[d],
                                                           padding[d], dilation[d], out):
            raise ValueError(
                f"dilation {dilation} leaves a window with no element of the input along the "
                f"{axis} (size {size}, kernel_size {kernel_size}, padding {padding})")
    return kernel_size, stride, padding, dilation


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, kernel_size, stride, padding, dilation, ceil_mode, keep_positions,
                into=None):
        backend = backends.select("max_pool2d", input)
        args = (kernel_size, stride, padding, dilation)
        if into is not None:  # into.tensor has the pooled size: ceil_mode is in it
            output = into.tensor
            if not keep_positions:
                ops.max_pool2d_into(input, *args, output, backend)
                return output, None
            positions = ops.max_pool2d_with_positions_into(input, *args, output, backend)
        elif not keep_positions:
            return ops.max_pool2d(input, *args, ceil_mode, backend), None
        else:
            output, positions = ops.max_pool2d_with_positions(input, *args, ceil_mode, backend)
        # Backward needs only where each window's maximum was: one byte per output (the
        # position in the window), not the input, the output or int64 indices.
        ctx.save_for_backward(positions)
        ctx.mark_non_differentiable(positions)
        ctx.pool_args = args
        ctx.input_size = tuple(input.shape[2:])
        ctx.channels_last = is_channels_last(input)
        ctx.backend = backend
        return output, positions

    @staticmethod
    def backward(ctx, grad_output, _):
        (positions,) = ctx.saved_tensors
        if torch.is_grad_enabled() and grad_output.requires_grad:
            # create_graph=True: a backward that autograd can see through (it is linear in
            # grad_output), from PyTorch ops.
            grad_input = reference.max_pool2d_grad_input(grad_output, positions,
                                                         ctx.input_size, *ctx.pool_args)
        else:
            grad_input = ops.max_pool2d_backward(grad_output, positions, *ctx.input_size,
                                                 *ctx.pool_args, ctx.channels_last,
                                                 ctx.backend)
        return grad_input, None, None, None, None, None, None, None


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
               return_indices=False):
    """2-d max-pooling over (N, C, H, W) or (C, H, W) input, as
    torch.nn.functional.max_pool2d: the same output size rule (ceil_mode included), NaN
    propagation and tie-breaking, and with return_indices=True the same int64 indices.

    When a gradient is needed, forward keeps one byte per output (the winner's position in
    its window) for backward, which gathers the gradient of each input element from the
    windows that picked it. Tensors the kernels do not take (integer dtypes, mkldnn or
    sparse layouts) go to torch.nn.functional.max_pool2d itself."""
    check_tensor("input", input)
    if not kernels_take(input):
        return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode,
                            return_indices)
    _check_pooled_input(input)
    args = _pooling_arguments(input, kernel_size, stride, padding, dilation, ceil_mode)
    unbatched = input.dim() == 3
    batched = input.unsqueeze(0) if unbatched else input
    # positions are for backward (and for the indices): none at inference
    keep_positions = return_indices or (torch.is_grad_enabled() and input.requires_grad)
    output, positions = MaxPool2dFunction.apply(batched, *args, ceil_mode, keep_positions)
    if return_indices:
        indices = reference.window_positions_to_indices(positions, batched.shape[2:], *args)
        if unbatched:
            return output.squeeze(0), indices.squeeze(0)
        return output, indices
    return output.squeeze(0) if unbatched else output


def max_pool2d_writes_into(input, return_indices=False):
    """Whether max_pool2d_into writes straight into its destination: the kernels take
    input, a batch (N, C, H, W), and no indices are asked for."""
    return kernels_take(input) and input.dim() == 4 and not return_indices


def max_pool2d_output_shape(input, kernel_size, stride=None, padding=0, dilation=1,
                            ceil_mode=False):
    """The shape of max_pool2d's output for a batch (N, C, H, W), its arguments checked as
    max_pool2d checks them."""
    _check_pooled_input(input)
    args = _pooling_arguments(input, kernel_size, stride, padding, dilation, ceil_mode)
    return (*input.shape[:2], *(pooled_size(input.shape[2 + d], *(a[d] for a in args),
                                            ceil_mode) for d in range(2)))


def max_pool2d_into(input, into, kernel_size, stride=None, padding=0, dilation=1,
                    ceil_mode=False):
    """max_pool2d of a batch (N, C, H, W) written into `into` (an
    fastcnn.functional._into.Into of max_pool2d_output_shape's shape and input's dtype,
    a channel slice of a concatenation's output, say), returned as the tensor there. What
    max_pool2d_writes_into refuses is pooled by max_pool2d, then copied."""
    check_tensor("input", input)
    if not max_pool2d_writes_into(input):
        return copy_into(max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode),
                         into)
    _check_pooled_input(input)
    args = _pooling_arguments(input, kernel_size, stride, padding, dilation, ceil_mode)
    keep_positions = torch.is_grad_enabled() and input.requires_grad
    output, _ = MaxPool2dFunction.apply(input, *args, ceil_mode, keep_positions, into)
    return output


class GlobalAvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input):
        backend = backends.select("global_avg_pool2d", input)
        # Nothing is saved: the gradient is grad_output / (H * W) at every position.
        ctx.input_size = tuple(input.shape[2:])
        ctx.channels_last = is_channels_last(input)
        ctx.backend = backend
        return ops.global_avg_pool2d(input, backend)

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled() and grad_output.requires_grad:
            height, width = ctx.input_size
            return (grad_output / (height * width)).expand(*grad_output.shape[:2], height,
                                                           width)
        return ops.global_avg_pool2d_backward(grad_output, *ctx.input_size, ctx.channels_last,
                                              ctx.backend)


def global_avg_pool2d(input):
    """The mean over height and width of (N, C, H, W) input as (N, C, 1, 1) (or of
    (C, H, W) input as (C, 1, 1)): torch.nn.functional.adaptive_avg_pool2d(input, 1).
    float16 and bfloat16 are summed in float32 or wider. What the kernels do not take goes
    to adaptive_avg_pool2d itself: other dimensions than 3 or 4, empty channels or planes
    (the mean of nothing is NaN), other dtypes and layouts."""
    check_tensor("input", input)
    if not kernels_take(input) or input.dim() not in (3, 4) or 0 in input.shape[-3:]:
        return F.adaptive_avg_pool2d(input, 1)
    _check_pooled_input(input)
    batched = input.unsqueeze(0) if input.dim() == 3 else input
    if torch.is_grad_enabled() and input.requires_grad:
        output = GlobalAvgPool2dFunction.apply(batched)
    else:  # nothing to differentiate: skip the autograd Function's own cost
        output = ops.global_avg_pool2d(batched, backends.select("global_avg_pool2d", batched))
    return output.squeeze(0) if input.dim() == 3 else output
