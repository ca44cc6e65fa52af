"""The training-mode Conv2d -> BatchNorm2d (+ residual) (-> ReLU) as one autograd Function.

Forward: y = conv2d(x, W) (ATen's convolution, in x's layout), one pass for the batch's
per-channel mean and biased variance, one pass for z = act(y * scale + shift (+ r)) with
scale = gamma * invstd and shift = beta - mean * scale (Ioffe & Szegedy, 2015).

Backward, with dz = dL/dz where the ReLU passed its input (recomputed from y) and M values
per channel: one pass for sum dz and sum dz * xhat, one for

    dL/dy = scale * (dz - sum dz / M) - scale * invstd * xhat * sum(dz * xhat) / M,

then the convolution's backward. The BatchNorm and ReLU outputs are never kept: saved are
x, W and y, as eager keeps them, and per-channel vectors.
"""

import torch
import torch.nn.functional as F

from fastcnn import ops
from fastcnn.kernels import reference


def scale_and_shift(mean, invstd, bn_weight, bn_bias):
    """The per-channel affine map of BatchNorm: gamma * (y - mean) * invstd + beta =
    y * scale + shift (gamma 1 and beta 0 where absent)."""
    dtype = invstd.dtype
    scale = invstd if bn_weight is None else invstd * bn_weight.to(dtype)
    shift = -mean * scale if bn_bias is None else bn_bias.to(dtype) - mean * scale
    return scale, shift


def convolution_backward(grad_y, x, weight, conv_args, need_x, need_weight):
    """(dL/dx, dL/dweight) of conv2d(x, weight, *conv_args) without bias, each None where
    not needed."""
    stride, padding, dilation, groups = conv_args
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad_y, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
        [need_x, need_weight, False])
    return grad_x, grad_weight


class ConvBatchNormTrainingFunction(torch.autograd.Function):
    """Outputs the activation z and the batch's per-channel mean and biased variance of the
    convolution's output (for the running statistics, which the caller updates)."""

    @staticmethod
    def forward(ctx, x, weight, conv_bias, bn_weight, bn_bias, residual, conv_args, eps, relu,
                backend):
        stride, padding, dilation, groups = conv_args
        # A conv bias shifts y and its batch mean alike, so it cancels in the normalised
        # value: the convolution runs without it (the caller adds it to the running mean).
        y = F.conv2d(x, weight, None, stride, padding, dilation, groups)
        mean, var = ops.batch_norm_stats(y, backend)
        invstd = torch.rsqrt(var + eps)
        scale, shift = scale_and_shift(mean, invstd, bn_weight, bn_bias)
        z = ops.channel_affine_act(y, scale, shift, residual, relu, backend)
        # The residual is kept only for the ReLU's mask; in a ResNet block it is the block's
        # input, kept by its first convolution anyway.
        ctx.save_for_backward(x, weight, y, residual if relu else None, mean, invstd,
                              bn_weight, bn_bias, conv_bias)
        ctx.conv_args, ctx.eps, ctx.relu, ctx.backend = conv_args, eps, relu, backend
        ctx.mark_non_differentiable(mean, var)
        return z, mean, var

    @staticmethod
    def backward(ctx, grad_z, _grad_mean, _grad_var):
        x, weight, y, residual, mean, invstd, bn_weight, bn_bias, conv_bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = [None] * 10
        if need[2]:
            # The conv bias cancels in the normalised value: its gradient is exactly zero.
            grads[2] = torch.zeros_like(conv_bias)
        if need[5] and not ctx.relu:
            grads[5] = grad_z  # the residual is added last
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_z, grads)
        scale, shift = scale_and_shift(mean, invstd, bn_weight, bn_bias)
        sum_dz, sum_dz_xhat = ops.batch_norm_act_backward_reduce(
            grad_z, y, residual, scale, shift, mean, invstd, ctx.relu, ctx.backend)
        grad_residual_from_kernel = ctx.relu and need[5]
        grad_y, *grad_residual = ops.batch_norm_act_backward(
            grad_z, y, residual, scale, shift, mean, invstd, sum_dz, sum_dz_xhat, ctx.relu,
            grad_residual_from_kernel, ctx.backend)
        if grad_residual_from_kernel:
            grads[5] = grad_residual[0]
        grads[0], grads[1] = convolution_backward(grad_y, x, weight, ctx.conv_args, need[0],
                                                  need[1])
        if need[3]:
            grads[3] = sum_dz_xhat.to(bn_weight.dtype)  # d/dgamma = sum dz * xhat
        if need[4]:
            grads[4] = sum_dz.to(bn_bias.dtype)  # d/dbeta = sum dz
        return tuple(grads)


def _differentiable_backward(ctx, grad_z, grads):
    """The gradients from the forward rebuilt in PyTorch ops, for create_graph=True: second
    derivatives need a backward that autograd can see through."""
    x, weight, _, residual, _, _, bn_weight, bn_bias, _ = ctx.saved_tensors
    inputs = {0: x, 1: weight, 3: bn_weight, 4: bn_bias, 5: residual}
    wanted = [i for i, t in inputs.items() if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        z = reference.conv_bn_relu_training(x, weight, bn_weight, bn_bias, residual,
                                            ctx.conv_args, ctx.eps, ctx.relu)
        found = torch.autograd.grad(z, [inputs[i] for i in wanted], grad_z,
                                    create_graph=True, allow_unused=True)
    for i, g in zip(wanted, found):
        grads[i] = g
    return tuple(grads)


def conv_bn_training(x, conv, bn, relu, residual, conv_args, backend):
    """(z, batch mean, batch biased variance) of a training-mode step."""
    if residual is x:
        # torch.compile cannot trace one tensor given twice to an autograd.Function
        residual = residual.view_as(residual)
    return ConvBatchNormTrainingFunction.apply(
        x, conv.weight, conv.bias, bn.weight, bn.bias, residual, conv_args, bn.eps, relu,
        backend)
