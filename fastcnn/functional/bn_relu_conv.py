"""bn_relu_conv: conv(relu(bn(x))), the pre-activation layer of DenseNet (Huang et al.,
2017), without keeping relu(bn(x)) for backward.

Eager PyTorch keeps the normalised tensor t = relu(bn(x)) for the convolution's weight
gradient, a second copy of x. Here backward recomputes t from x and the batch statistics
in one elementwise pass (the idea of Pleiss et al., 2017, "Memory-Efficient
Implementation of DenseNets", and of In-Place ABN, Rota Bulo et al., 2018), then runs the
convolution's backward (ATen's) and BatchNorm + ReLU's (fastcnn's kernels, as in
conv_bn_relu):

    t = relu(x * scale_c + shift_c),  y = conv(t)
    dt = conv_backward(dy),  dx = BatchNorm-ReLU backward of dt (conv_bn_training.py)

x may be a list of tensors, concatenated along channels as a DenseNet layer sees its
inputs. Where they lie side by side in one tensor (a DenseBlock's buffer) they are read
there; each gets its part of the gradient as a view.
"""

import torch
import torch.nn.functional as F

from fastcnn import backends, ops
from fastcnn.functional._checks import check_tensor, kernels_take
from fastcnn.functional._into import has_forward_hooks, slices, wants_grad
from fastcnn.functional.conv_bn_act import (_check_batch_norm, _check_modules, _fused_batch_norm,
                                            _running_affine, _update_running_stats, bn_relu)
from fastcnn.functional.conv_bn_training import scale_and_shift
from fastcnn.kernels import reference
from fastcnn.ops.conv_bn_relu import stat_dtype


def _non_overlapping(sizes, strides):
    """Whether no two elements of a strided view share memory (by a sufficient test: each
    dimension's stride spans the dimensions of smaller stride)."""
    span = 1
    for size, stride in sorted(((sz, st) for sz, st in zip(sizes, strides) if sz > 1),
                               key=lambda d: d[1]):
        if stride < span:
            return False
        span = stride * size
    return True


def adjacent_view(pieces):
    """pieces (N, C_i, H, W), one after the other along the channels of one tensor with the
    same strides, as the (N, sum C_i, H, W) view of them all; None when they are not."""
    first = pieces[0]
    if len(pieces) == 1:
        return first
    offset, stride_c = first.storage_offset(), first.stride(1)
    storage = first.untyped_storage().data_ptr()
    for p in pieces:
        if (not kernels_take(p) or p.dim() != 4 or p.dtype != first.dtype
                or p.device != first.device or p.shape[0] != first.shape[0]
                or p.shape[2:] != first.shape[2:]
                or p.stride() != first.stride() or p.storage_offset() != offset
                or p.untyped_storage().data_ptr() != storage):
            return None
        offset += p.shape[1] * stride_c
    shape = (first.shape[0], sum(p.shape[1] for p in pieces), *first.shape[2:])
    if not _non_overlapping(shape, first.stride()):
        return None
    return first.as_strided(shape, first.stride(), first.storage_offset())


def _plain_convolution(conv, x):
    """Whether the Function may run conv as F.conv2d and its backward as ATen's: conv is a
    Conv2d with Conv2d's own forward, zero padding given as numbers and no hooks, in x's
    dtype and device, and no autocast changes the dtype."""
    return (type(conv).forward is torch.nn.Conv2d.forward and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and not has_forward_hooks(conv)
            and conv.weight.dtype == x.dtype and conv.weight.device == x.device
            and not torch.is_autocast_enabled(x.device.type))


class BNReLUConvFunction(torch.autograd.Function):
    """y = conv(relu(x * scale + shift)) and the batch's mean and variance. With batch
    statistics, (a, b) are BatchNorm's (gamma, beta) and scale, shift come from the batch;
    without, (a, b) are the running statistics' (scale, shift) themselves. Either way
    dL/da = sum dz * xhat and dL/db = sum dz (xhat = x for the running statistics: mean 0
    and invstd 1 in the kernels)."""

    @staticmethod
    def forward(ctx, conv_args, eps, batch_statistics, backend, weight, bias, a, b, *pieces):
        x = adjacent_view(pieces)
        if batch_statistics:
            mean, var = ops.batch_norm_stats(x, backend)
            invstd = torch.rsqrt(var + eps)
            scale, shift = scale_and_shift(mean, invstd, a, b)
        else:
            scale, shift = a, b
            # no statistics: mean 0 and invstd 1 in the kernels (three tensors: a Function
            # returns no tensor twice)
            mean, var, invstd = (torch.zeros_like(scale), torch.ones_like(scale),
                                 torch.ones_like(scale))
        t = ops.channel_affine_act(x, scale, shift, None, True, backend)
        y = F.conv2d(t, weight, bias, *conv_args)
        ctx.save_for_backward(weight, bias, a, b, mean, invstd, *pieces)
        ctx.conv_args, ctx.eps, ctx.backend = conv_args, eps, backend
        ctx.batch_statistics = batch_statistics
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        weight, bias, a, b, mean, invstd, *pieces = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_y)
        x = adjacent_view(pieces)
        scale, shift = scale_and_shift(mean, invstd, a, b) if ctx.batch_statistics else (a, b)
        t = ops.channel_affine_act(x, scale, shift, None, True, ctx.backend)
        need_x = any(need[8:])
        need_t = need_x or need[6] or need[7]
        stride, padding, dilation, groups = ctx.conv_args
        grad_t, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_y, t, weight, None if bias is None else list(bias.shape), stride, padding,
            dilation, False, [0, 0], groups, [need_t, need[4], need[5]])
        del t
        grad_a = grad_b = None
        if need_t:
            sum_dz, sum_dz_xhat = ops.batch_norm_act_backward_reduce(
                grad_t, x, None, scale, shift, mean, invstd, True, ctx.backend)
            grad_a = sum_dz_xhat.to(a.dtype) if need[6] else None
            grad_b = sum_dz.to(b.dtype) if need[7] else None
        grads_x = [None] * len(pieces)
        if need_x:
            if not ctx.batch_statistics:  # no gradient through the statistics
                sum_dz = sum_dz_xhat = torch.zeros_like(mean)
            grad_x = ops.batch_norm_act_backward(
                grad_t, x, None, scale, shift, mean, invstd, sum_dz, sum_dz_xhat, True, False,
                ctx.backend)[0]
            grads_x = slices(grad_x, [p.shape[1] for p in pieces])
        return (None, None, None, None, grad_weight, grad_bias, grad_a, grad_b, *grads_x)


def _differentiable_backward(ctx, grad_y):
    """The gradients from the forward rebuilt in PyTorch ops, for create_graph=True."""
    weight, bias, a, b, _, _, *pieces = ctx.saved_tensors
    inputs = [weight, bias, a, b, *pieces]
    wanted = [i for i, t in enumerate(inputs) if t is not None and ctx.needs_input_grad[4 + i]]
    with torch.enable_grad():
        x = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1)
        if ctx.batch_statistics:
            t = reference.batch_norm_act_training(x, a, b, None, ctx.eps, True)
        else:
            t = reference.channel_affine_act_training(x, a, b, None, True)
        y = F.conv2d(t, weight, bias, *ctx.conv_args)
        found = torch.autograd.grad(y, [inputs[i] for i in wanted], grad_y, create_graph=True,
                                    allow_unused=True)
    grads = [None] * len(inputs)
    for i, g in zip(wanted, found):
        grads[i] = g
    return (None, None, None, None, *grads)


def _pieces(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if not isinstance(x, (list, tuple)) or len(x) == 0:
        raise TypeError(f"x must be a tensor or a non-empty list of tensors, got {x!r}")
    for i, p in enumerate(x):
        check_tensor(f"x[{i}]", p)
    return list(x)


def bn_relu_conv(x, bn, conv):
    """conv(relu(bn(x))) for an existing torch.nn.BatchNorm2d and torch.nn.Conv2d, with the
    numbers of the three modules (batch statistics and running-statistics updates in
    training mode), keeping for backward only x, not relu(bn(x)).

    x is a tensor or a list of tensors, concatenated along channels. What the fused path
    does not take runs conv(bn_relu(x, bn)), which keeps relu(bn(x)) as eager does: a
    BatchNorm or convolution with a forward of its own or hooks, a padding mode or string
    padding, another dtype or device, autocast, empty or non-float tensors."""
    pieces = _pieces(x)
    _check_modules(conv, bn, True)
    # (torch.compile traces no storage offsets: there, several pieces are concatenated)
    joined = (pieces[0] if len(pieces) == 1 else
              None if torch.compiler.is_compiling() else adjacent_view(pieces))
    if joined is None:
        joined = torch.cat(pieces, 1)
        pieces = [joined]
    fused = (_fused_batch_norm(bn) and kernels_take(joined) and joined.numel() > 0
             and _plain_convolution(conv, joined))
    if not (fused and wants_grad(*pieces, *bn.parameters(), *conv.parameters())):
        if len(pieces) > 1:  # the slices' own tensor to autograd, as torch.cat gives it
            joined = torch.cat(pieces, 1) if wants_grad(*pieces) else joined
        return conv(bn_relu(joined, bn))
    batch_statistics = bn.training or (bn.running_mean is None and bn.running_var is None)
    _check_batch_norm(bn, joined, batch_statistics)
    backend = backends.select("conv_bn_relu", joined)
    if batch_statistics:
        a, b = bn.weight, bn.bias
    else:
        a, b = _running_affine(bn, stat_dtype(joined.dtype))
    conv_args = (conv.stride, conv.padding, conv.dilation, conv.groups)
    y, mean, var = BNReLUConvFunction.apply(conv_args, bn.eps, batch_statistics, backend,
                                            conv.weight, conv.bias, a, b, *pieces)
    if bn.training and bn.track_running_stats:
        _update_running_stats(bn, mean, var, joined.shape[0] * joined.shape[2] * joined.shape[3])
    return y
