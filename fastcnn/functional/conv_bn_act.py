"""conv_bn_relu: Conv2d -> BatchNorm2d (+ residual) -> ReLU with the numbers of the three
PyTorch modules, in fewer passes over memory.

One path per mode, the same for every device, dtype and layout. The convolution module
runs first, as in eager (ATen's convolution in x's layout, in the autocast dtype under
autocast); then, on its output y:

- BatchNorm in eval mode: BatchNorm is the per-channel affine map y * s + t with
  s = gamma / sqrt(running_var + eps) and t = beta - running_mean * s, and one pass over y
  applies s, t, the residual and the ReLU, in place when no gradient is wanted. s and t
  are computed from the parameters and buffers on every call (a few operations on vectors
  of C values), so that no edit of them, in place or through `.data`, can leave a stale
  copy behind; folding s into the weight instead would cost a pass over the weight per
  call or such a cache, to save one multiply per output element.
- BatchNorm in training mode (or without running statistics): conv_bn_training.py.
"""

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from fastcnn import backends, ops
from fastcnn.functional._checks import check_tensor, kernels_take
from fastcnn.functional._into import copy_into, wants_grad
from fastcnn.functional.conv_bn_training import (BatchNormActTrainingFunction, affine_act,
                                                 scale_and_shift)
from fastcnn.kernels import reference
from fastcnn.ops.conv_bn_relu import stat_dtype

HALF_DTYPES = (torch.float16, torch.bfloat16)


class ChannelAffineActFunction(torch.autograd.Function):
    """act(y * scale_c + shift_c (+ residual)) where gradients are wanted: an eval-mode
    BatchNorm in a model that trains (a frozen BatchNorm). Its backward is the training
    one without the terms through the batch statistics, so it runs the same kernels with
    mean 0, invstd 1 and those terms' sums 0: dL/dy = scale * dz, dL/dscale = sum dz * y,
    dL/dshift = sum dz, dL/dresidual = dz."""

    @staticmethod
    def forward(ctx, y, scale, shift, residual, relu, backend, into=None):
        z = affine_act(y, scale, shift, residual, relu, backend, into)
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
            return (*grads[:3], grads[3] if relu else grad_residual, None, None, None)
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
        return grad_y, grad_scale, grad_shift, grad_residual, None, None, None


def _running_affine(bn, dtype):
    """(scale, shift) of the eval-mode BatchNorm, in `dtype`; differentiable in the
    parameters."""
    invstd = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
    return scale_and_shift(bn.running_mean.to(dtype), invstd, bn.weight, bn.bias)


def _inference(y, bn, relu, residual, backend, into, fresh):
    """Eval-mode BatchNorm: in place over y when it is fresh (a convolution's output made
    here) and nothing is differentiated."""
    scale, shift = _running_affine(bn, stat_dtype(y.dtype))
    if wants_grad(y, scale, shift, residual):
        return ChannelAffineActFunction.apply(y, scale, shift, residual, relu, backend, into)
    if into is not None or not fresh:
        return affine_act(y, scale, shift, residual, relu, backend, into)
    ops.channel_affine_act_(y, scale, shift, residual, relu, backend)
    return y


def _check_modules(conv, bn, relu):
    if not isinstance(conv, torch.nn.Conv2d):
        raise TypeError(f"conv must be a torch.nn.Conv2d, got {type(conv).__name__}")
    _check_bn_and_relu(bn, relu)


def _check_bn_and_relu(bn, relu):
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"bn must be a torch.nn.BatchNorm2d, got {type(bn).__name__}")
    if not isinstance(relu, bool):
        raise TypeError(f"relu must be a bool, got {type(relu).__name__} {relu!r}")


def _fused_batch_norm(bn):
    """Whether the kernels stand in for bn: a BatchNorm2d whose forward is BatchNorm's own.
    BatchNorm1d/3d, SyncBatchNorm, subclasses with their own forward (a fused activation,
    say) and a LazyBatchNorm2d before its first call (which makes it a BatchNorm2d) run
    their own forward."""
    return isinstance(bn, torch.nn.BatchNorm2d) and type(bn).forward is _BatchNorm.forward


def _check_batch_norm(bn, y, batch_statistics):
    """What torch.nn.BatchNorm2d refuses, refused here with its reasons."""
    if y.dim() != 4:
        raise ValueError(f"bn expected 4D input (got {y.dim()}D input): x must be (N, C, H, W)")
    for name in ("weight", "bias", "running_mean", "running_var"):
        t = getattr(bn, name)
        if t is None:
            continue
        if t.shape != (y.shape[1],):
            raise ValueError(f"bn.{name} has shape {tuple(t.shape)}, expected one value per "
                             f"channel of the convolution's output ({y.shape[1]}): check "
                             f"bn.num_features ({bn.num_features})")
        if t.device != y.device:
            raise RuntimeError(f"bn.{name} is on {t.device}, the convolution's output on "
                               f"{y.device}: they must be on one device")
        # BatchNorm takes its parameters in its input's dtype, or float32 for float16 and
        # bfloat16 input (as under autocast)
        if t.dtype != y.dtype and not (t.dtype == torch.float32 and y.dtype in HALF_DTYPES):
            raise TypeError(f"bn.{name} is {t.dtype} but the convolution's output is {y.dtype}:"
                            f" BatchNorm2d needs them in one dtype (or float32 parameters for "
                            f"float16/bfloat16 input)")
    if bn.eps < 0 or (batch_statistics and bn.eps == 0):
        expected = "positive with batch statistics" if batch_statistics else "non-negative"
        raise ValueError(f"bn.eps must be {expected}, got {bn.eps}")
    for name in ("running_mean", "running_var"):
        if not batch_statistics and getattr(bn, name) is None:
            raise RuntimeError(f"bn.{name} must be defined in evaluation mode")
    if batch_statistics and y.shape[0] * y.shape[2] * y.shape[3] == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got "
                         f"convolution output of shape {tuple(y.shape)}")


def _fused_residual(residual, y):
    """Whether the residual is added inside the kernels' pass: a float tensor of y's shape,
    dtype and device. Others (a number, a shape that broadcasts, another dtype) are added
    as eager adds them, after BatchNorm."""
    return (isinstance(residual, torch.Tensor) and kernels_take(residual)
            and residual.shape == y.shape and residual.dtype == y.dtype
            and residual.device == y.device)


def _update_running_stats(bn, mean, var, count):
    """As nn.BatchNorm2d in training: the unbiased variance, and a momentum of
    1 / num_batches_tracked (a cumulative average) when bn.momentum is None."""
    with torch.no_grad():
        if bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
        if count == 0 or bn.running_mean is None:  # left alone, as eager leaves them
            return
        if bn.momentum is None:
            # a tensor, not float(...): no host sync, and torch.compile traces it
            factor = 1.0 / bn.num_batches_tracked.to(bn.running_mean.dtype)
        else:
            factor = bn.momentum
        unbiased = var * (count / max(count - 1, 1))
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype) * factor)
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype) * factor)


def conv_bn_relu(x, conv, bn, relu=True, residual=None):
    """relu(bn(conv(x)) + residual) for existing torch.nn.Conv2d and torch.nn.BatchNorm2d
    modules, with their numbers: batch statistics (and running-statistics updates) when bn
    is in training mode or has no running statistics, the running statistics otherwise.

    relu=False leaves out the ReLU; residual is added before it. The convolution is conv's
    own forward (any stride, padding, padding mode, dilation, groups, bias; hooks run).
    What the kernels do not take runs as eager runs it, with eager's results and errors:
    a BatchNorm other than BatchNorm2d's own forward (BatchNorm1d/3d, SyncBatchNorm, a
    subclass with its own forward, a lazy one's first call), an empty convolution output
    or one of another dtype or layout, and a residual that is not a tensor of the output's
    shape and dtype (it is added after BatchNorm).
    """
    _check_modules(conv, bn, relu)
    check_tensor("x", x)
    return batch_norm_act(conv(x), bn, relu, residual, fresh=True)


def bn_relu(x, bn, relu=True, residual=None):
    """relu(bn(x) + residual) for an existing torch.nn.BatchNorm2d: conv_bn_relu without
    the convolution (the pre-activation of DenseNet and pre-activation ResNets), on the
    same kernels and with the same rules. x itself is never written."""
    _check_bn_and_relu(bn, relu)
    check_tensor("x", x)
    return batch_norm_act(x, bn, relu, residual, fresh=False)


def batch_norm_act(y, bn, relu, residual, into=None, fresh=False):
    """bn_relu's work, without the argument checks: the result written into `into` (an
    fastcnn.functional._into.Into) when given, and over y itself when y is `fresh` (made
    by the caller, read by nobody else) and nothing is differentiated."""
    if not (_fused_batch_norm(bn) and kernels_take(y)) or y.numel() == 0:
        z = bn(y)
        return _finish(_activate(z if residual is None else z + residual, relu), into)
    if residual is not None and not _fused_residual(residual, y):
        z = _batch_norm(y, bn, False, None, None, fresh) + residual
        return _finish(_activate(z, relu), into)
    return _batch_norm(y, bn, relu, residual, into, fresh)


def relu_into(y, into):
    """relu(y) written into `into` (an Into): the end of a convolution + ReLU without
    BatchNorm (the original GoogLeNet's), on the kernels of the eval-mode BatchNorm with
    scale 1 and shift 0, which leave every value as it was."""
    ones = torch.ones(y.shape[1], dtype=stat_dtype(y.dtype), device=y.device)
    zeros = torch.zeros_like(ones)
    backend = backends.select("conv_bn_relu", y)
    if wants_grad(y):
        return ChannelAffineActFunction.apply(y, ones, zeros, None, True, backend, into)
    return affine_act(y, ones, zeros, None, True, backend, into)


def _finish(z, into):
    return z if into is None else copy_into(z, into)


def _activate(z, relu):
    return torch.relu(z) if relu else z


def _batch_norm(y, bn, relu, residual, into, fresh):
    # BatchNorm's rule: batch statistics in training, or in eval without running ones
    batch_statistics = bn.training or (bn.running_mean is None and bn.running_var is None)
    _check_batch_norm(bn, y, batch_statistics)
    backend = backends.select("conv_bn_relu", y)
    if not batch_statistics:
        return _inference(y, bn, relu, residual, backend, into, fresh)
    z, mean, var = BatchNormActTrainingFunction.apply(
        y, bn.weight, bn.bias, residual, bn.eps, relu, backend, into)
    if bn.training and bn.track_running_stats:
        _update_running_stats(bn, mean, var, y.shape[0] * y.shape[2] * y.shape[3])
    return z
