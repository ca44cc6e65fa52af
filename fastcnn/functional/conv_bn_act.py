"""conv_bn_relu: Conv2d -> BatchNorm2d (+ residual) -> ReLU with the numbers of the three
PyTorch modules, in fewer passes over memory.

One path per mode, the same for every device, dtype and layout. ATen's convolution runs
first, with the module's own weight, in x's layout (and, as in eager, in the autocast
dtype under autocast); then:

- BatchNorm in eval mode: BatchNorm is the per-channel affine map y * s + t with
  s = gamma / sqrt(running_var + eps) and t = beta + (b - running_mean) * s (b: the conv
  bias), and one pass over y applies s, t, the residual and the ReLU, in place when no
  gradient is wanted. s and t are computed from the parameters and buffers on every call
  (a few operations on vectors of C values), so that no edit of them, in place or through
  `.data`, can leave a stale copy behind; folding s into the weight instead would cost a
  pass over the weight per call or such a cache, to save one multiply per output element.
- BatchNorm in training mode (or without running statistics): conv_bn_training.py.
"""

import torch
import torch.nn.functional as F

from fastcnn import backends, ops
from fastcnn.functional._checks import check_feature_map
from fastcnn.functional.conv_bn_training import BatchNormActTrainingFunction, scale_and_shift
from fastcnn.kernels import reference
from fastcnn.ops.conv_bn_relu import stat_dtype


class ChannelAffineActFunction(torch.autograd.Function):
    """act(y * scale_c + shift_c (+ residual)) where gradients are wanted: an eval-mode
    BatchNorm in a model that trains (a frozen BatchNorm). Its backward is the training
    one without the terms through the batch statistics, so it runs the same kernels with
    mean 0, invstd 1 and those terms' sums 0: dL/dy = scale * dz, dL/dscale = sum dz * y,
    dL/dshift = sum dz, dL/dresidual = dz."""

    @staticmethod
    def forward(ctx, y, scale, shift, residual, relu, backend):
        z = ops.channel_affine_act(y, scale, shift, residual, relu, backend)
        # y and the residual give the ReLU's mask again (eager keeps y and the ReLU output)
        ctx.save_for_backward(y, scale, shift, residual if relu else None)
        ctx.relu, ctx.backend = relu, backend
        return z

    @staticmethod
    def backward(ctx, grad_z):
        y, scale, shift, residual = ctx.saved_tensors
        need, relu = ctx.needs_input_grad, ctx.relu
        # without the ReLU, the residual is added last (and was not kept)
        grad_residual = grad_z if need[3] and not relu else None
        if torch.is_grad_enabled():  # create_graph=True: a backward autograd sees through
            inputs = [t if need[i] else None for i, t in enumerate((y, scale, shift, residual))]
            wanted = [t for t in inputs if t is not None]
            with torch.enable_grad():
                z = reference.channel_affine_act_training(y, scale, shift, residual, relu)
                found = iter(torch.autograd.grad(z, wanted, grad_z, create_graph=True))
            grads = [None if t is None else next(found) for t in inputs]
            return (*grads[:3], grads[3] if relu else grad_residual, None, None)
        zeros, ones = torch.zeros_like(scale), torch.ones_like(scale)
        grad_y = grad_scale = grad_shift = None
        if need[1] or need[2]:
            grad_shift, grad_scale = ops.batch_norm_act_backward_reduce(
                grad_z, y, residual, scale, shift, zeros, ones, relu, ctx.backend)
        if need[0] or (need[3] and relu):
            grad_y, *dz = ops.batch_norm_act_backward(
                grad_z, y, residual, scale, shift, zeros, ones, zeros, zeros, relu,
                need[3] and relu, ctx.backend)
            if dz:
                grad_residual = dz[0]
        return grad_y, grad_scale, grad_shift, grad_residual, None, None


def _running_affine(conv, bn, dtype):
    """(scale, shift) of the eval-mode BatchNorm applied to the convolution's output without
    its bias, in `dtype`; differentiable in the parameters."""
    mean = bn.running_mean.to(dtype)
    if conv.bias is not None:
        mean = mean - conv.bias.to(dtype)
    invstd = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    return scale_and_shift(mean, invstd, bn.weight, bn.bias)


def _inference(y, conv, bn, relu, residual, backend):
    scale, shift = _running_affine(conv, bn, stat_dtype(y.dtype))
    if _wants_grad(y, scale, shift, residual):
        return ChannelAffineActFunction.apply(y, scale, shift, residual, relu, backend)
    ops.channel_affine_act_(y, scale, shift, residual, relu, backend)
    return y


def _convolution(x, conv):
    """conv(x) without its bias (which BatchNorm's shift takes in)."""
    return F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation,
                    conv.groups)


def _check_arguments(x, conv, bn, relu, residual):
    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn must be a torch.nn.BatchNorm2d, got {type(bn).__name__}")
    if conv.padding_mode != "zeros":
        raise ValueError(f"conv.padding_mode must be 'zeros', got {conv.padding_mode!r}")
    if conv.padding == "same":
        raise ValueError("conv.padding='same' is not supported; give the padding as numbers")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"bn.num_features ({bn.num_features}) must equal conv.out_channels "
                         f"({conv.out_channels})")
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__} {relu!r}")
    check_feature_map("x", x, min_dim=4)
    if x.dim() != 4:
        raise ValueError(f"x must have 4 dimensions (N, C, H, W), got a {x.dim()}-d tensor "
                         f"of shape {tuple(x.shape)}")
    if x.shape[1] != conv.in_channels:
        raise ValueError(f"x must have conv.in_channels = {conv.in_channels} channels, got "
                         f"{x.shape[1]} (shape {tuple(x.shape)})")
    autocast = torch.is_autocast_enabled(x.device.type)  # then dtypes may differ, as in eager
    if x.device != conv.weight.device or (x.dtype != conv.weight.dtype and not autocast):
        raise TypeError(f"x must have the dtype and device of conv.weight "
                        f"({conv.weight.dtype}, {conv.weight.device}), got {x.dtype} on "
                        f"{x.device}")
    if residual is not None:
        check_feature_map("residual", residual, min_dim=4)
        if residual.device != x.device or (residual.dtype != x.dtype and not autocast):
            raise TypeError(f"residual must have the dtype and device of x ({x.dtype}, "
                            f"{x.device}), got {residual.dtype} on {residual.device}")


def _check_residual(residual, y):
    if residual is not None and residual.shape != y.shape:
        raise ValueError(f"residual must have the shape of the convolution's output "
                         f"{tuple(y.shape)}, got {tuple(residual.shape)}")


def _update_running_stats(bn, mean, var, count):
    """As nn.BatchNorm2d in training: the unbiased variance, and a momentum of
    1 / num_batches_tracked (a cumulative average) when bn.momentum is None."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            # a tensor, not float(...): no host sync, and torch.compile traces it
            factor = 1.0 / bn.num_batches_tracked.to(bn.running_mean.dtype)
        else:
            factor = bn.momentum
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype) * factor)
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype) * factor)


def _wants_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def conv_bn_relu(x, conv, bn, relu=True, residual=None):
    """relu(bn(conv(x)) + residual) for existing torch.nn.Conv2d and torch.nn.BatchNorm2d
    modules, with their numbers: batch statistics (and running-statistics updates) when bn
    is in training mode, the running statistics in eval mode.

    relu=False leaves out the ReLU; residual (the convolution output's shape) is added
    before it. Any stride, padding, dilation and groups; a conv bias or not.
    """
    _check_arguments(x, conv, bn, relu, residual)
    backend = backends.select("conv_bn_relu", x)
    y = _convolution(x, conv)
    _check_residual(residual, y)
    if residual is not None and residual.dtype != y.dtype:
        # autocast: the convolution's output is in the autocast dtype, and eager adds the
        # residual in the wider of the two
        dtype = torch.promote_types(y.dtype, residual.dtype)
        y, residual = y.to(dtype), residual.to(dtype)
    if not bn.training and bn.running_mean is not None and bn.running_var is not None:
        return _inference(y, conv, bn, relu, residual, backend)
    n, _, h, w = y.shape
    count = n * h * w
    if count == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got "
                         f"convolution output of shape {tuple(y.shape)}")
    z, mean, var = BatchNormActTrainingFunction.apply(
        y, conv.bias, bn.weight, bn.bias, residual, bn.eps, relu, backend)
    if bn.training and bn.track_running_stats:
        if count > 0:  # an empty batch leaves them, as eager does
            if conv.bias is not None:
                mean = mean + conv.bias.detach().to(mean.dtype)
            _update_running_stats(bn, mean, var, count)
        else:
            bn.num_batches_tracked.add_(1)
    return z
