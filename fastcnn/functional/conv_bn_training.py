"""Training-mode BatchNorm2d (+ residual) (-> ReLU) of a convolution's output y, as one
autograd Function (the convolution before it is ATen's, differentiated by autograd).

Forward: one pass for the batch's per-channel mean and biased variance of y, one for
z = act(y * scale + shift (+ r)) with scale = gamma * invstd and shift = beta - mean * scale
(Ioffe & Szegedy, 2015).

Backward, with dz = dL/dz where the ReLU passed its input (recomputed from y) and M values
per channel: one pass for sum dz and sum dz * xhat, one for

    dL/dy = scale * (dz - sum dz / M) - scale * invstd * xhat * sum(dz * xhat) / M.

The BatchNorm and ReLU outputs are never kept: saved are y, as eager keeps it, the
residual where the ReLU's mask needs it, and per-channel vectors.
"""

import torch

from fastcnn import ops
from fastcnn.kernels import reference
from fastcnn.ops.conv_bn_relu import stat_dtype


def scale_and_shift(mean, invstd, bn_weight, bn_bias):
    """The per-channel affine map of BatchNorm: gamma * (y - mean) * invstd + beta =
    y * scale + shift (gamma 1 and beta 0 where absent)."""
    dtype = invstd.dtype
    scale = invstd if bn_weight is None else invstd * bn_weight.to(dtype)
    shift = -mean * scale if bn_bias is None else bn_bias.to(dtype) - mean * scale
    return scale, shift


def affine_act(y, scale, shift, residual, relu, backend, into=None):
    """act(y * scale_c + shift_c (+ residual)) as a new tensor in y's layout, or written
    into `into` (an fastcnn.functional._into.Into) and returned as the tensor there."""
    if into is None:
        return ops.channel_affine_act(y, scale, shift, residual, relu, backend)
    ops.channel_affine_act_out(y, scale, shift, residual, relu, into.tensor, backend)
    return into.tensor


class BatchNormActTrainingFunction(torch.autograd.Function):
    """Outputs z (a new tensor, or the one of `into`) and the batch's per-channel mean and
    biased variance of y (for the running statistics, which the caller updates)."""

    @staticmethod
    def forward(ctx, y, bn_weight, bn_bias, residual, eps, relu, backend, into=None):
        if y.numel() > 0:
            mean, var = ops.batch_norm_stats(y, backend)
        else:  # an empty batch: eager's output, and running statistics left alone
            mean = var = torch.zeros(y.shape[1], dtype=stat_dtype(y.dtype), device=y.device)
        invstd = torch.rsqrt(var + eps)
        scale, shift = scale_and_shift(mean, invstd, bn_weight, bn_bias)
        z = affine_act(y, scale, shift, residual, relu, backend, into)
        # The residual is kept only for the ReLU's mask; in a ResNet block it is the block's
        # input, kept by its first convolution anyway.
        ctx.save_for_backward(y, residual if relu else None, mean, invstd, bn_weight, bn_bias)
        ctx.eps, ctx.relu, ctx.backend = eps, relu, backend
        ctx.mark_non_differentiable(mean, var)
        return z, mean, var

    @staticmethod
    def backward(ctx, grad_z, _grad_mean, _grad_var):
        y, residual, mean, invstd, bn_weight, bn_bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        grads = [None] * 8
        if need[3] and not ctx.relu:
            grads[3] = grad_z  # the residual is added last
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_z, grads)
        scale, shift = scale_and_shift(mean, invstd, bn_weight, bn_bias)
        sum_dz, sum_dz_xhat = ops.batch_norm_act_backward_reduce(
            grad_z, y, residual, scale, shift, mean, invstd, ctx.relu, ctx.backend)
        grad_residual_from_kernel = ctx.relu and need[3]
        if need[0] or grad_residual_from_kernel:
            grads[0], *grad_residual = ops.batch_norm_act_backward(
                grad_z, y, residual, scale, shift, mean, invstd, sum_dz, sum_dz_xhat, ctx.relu,
                grad_residual_from_kernel, ctx.backend)
            if grad_residual_from_kernel:
                grads[3] = grad_residual[0]
        if need[1]:
            grads[1] = sum_dz_xhat.to(bn_weight.dtype)  # d/dgamma = sum dz * xhat
        if need[2]:
            grads[2] = sum_dz.to(bn_bias.dtype)  # d/dbeta = sum dz
        return tuple(grads)


def _differentiable_backward(ctx, grad_z, grads):
    """The gradients from the forward rebuilt in PyTorch ops, for create_graph=True: second
    derivatives need a backward that autograd can see through."""
    y, residual, _, _, bn_weight, bn_bias = ctx.saved_tensors
    inputs = {0: y, 1: bn_weight, 2: bn_bias, 3: residual}
    wanted = [i for i, t in inputs.items() if t is not None and ctx.needs_input_grad[i]]
    with torch.enable_grad():
        z = reference.batch_norm_act_training(y, bn_weight, bn_bias, residual, ctx.eps,
                                              ctx.relu)
        found = torch.autograd.grad(z, [inputs[i] for i in wanted], grad_z,
                                    create_graph=True, allow_unused=True)
    for i, g in zip(wanted, found):
        grads[i] = g
    return tuple(grads)
