"""relu_lrn_max_pool2d: ReLU -> local response normalization -> max-pooling as one op, the
numbers of max_pool2d(local_response_norm(relu(x))) from one fused kernel, forward and
backward."""

import math
import numbers

import torch

from fastcnn import backends, ops
from fastcnn.functional._checks import check_int, check_tensor, kernels_take
from fastcnn.functional.lrn import local_response_norm
from fastcnn.functional.pooling import _check_pooled_input, _pooling_arguments, max_pool2d
from fastcnn.kernels import reference
from fastcnn.ops.pooling import positions_dtype


class ReLULRNMaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, lrn_args, pool_args, ceil_mode, keep_positions):
        backend = backends.select("relu_lrn_max_pool2d", input)
        if not keep_positions:
            return ops.relu_lrn_max_pool2d(input, *lrn_args, *pool_args, ceil_mode,
                                           backend), None
        output, positions = ops.relu_lrn_max_pool2d_with_positions(input, *lrn_args,
                                                                   *pool_args, ceil_mode,
                                                                   backend)
        # Backward recomputes relu(x), the LRN scale and output from x, and routes the
        # pooled gradient through one byte per output (the winner's place in its window):
        # neither the ReLU nor the LRN output is kept.
        ctx.save_for_backward(input, positions)
        ctx.mark_non_differentiable(positions)
        ctx.lrn_args, ctx.pool_args = lrn_args, pool_args
        ctx.backend = backend
        return output, positions

    @staticmethod
    def backward(ctx, grad_output, _):
        input, positions = ctx.saved_tensors
        if torch.is_grad_enabled() and (input.requires_grad or grad_output.requires_grad):
            # create_graph=True: a backward that autograd can see through, from PyTorch ops
            grad_input = reference.relu_lrn_max_pool2d_grad_input(
                input, grad_output, positions, *ctx.lrn_args, *ctx.pool_args).to(input.dtype)
        else:
            grad_input = ops.relu_lrn_max_pool2d_backward(input, grad_output, positions,
                                                          *ctx.lrn_args, *ctx.pool_args,
                                                          ctx.backend)
        return grad_input, None, None, None, None


def _composition(input, size, alpha, beta, k, kernel_size, stride, padding, ceil_mode):
    return max_pool2d(local_response_norm(torch.relu(input), size, alpha, beta, k),
                      kernel_size, stride, padding, 1, ceil_mode)


def relu_lrn_max_pool2d(input, size, alpha=1e-4, beta=0.75, k=1.0, kernel_size=3, stride=None,
                        padding=0, ceil_mode=False):
    """max_pool2d(local_response_norm(relu(input), size, alpha, beta, k), kernel_size,
    stride, padding, ceil_mode=ceil_mode) of an (N, C, H, W) input in one pass, the stem of
    AlexNet (Krizhevsky et al., 2012, sections 3.3 and 3.4):

        z_c = r_c / (k + alpha / size * sum_{j = c - size // 2}^{c + (size - 1) // 2} r_j^2)^beta,
        r = max(x, 0),    y = max over each window of z

    Arguments and results as the composition of torch's functions (stride defaults to
    kernel_size; ties pick the first maximum; NaN propagates), with z kept in float32 for
    float16 and bfloat16 inputs. When a gradient is needed, forward keeps x and one byte
    per output (the winner's place in its window), and backward recomputes the rest.

    What the kernels do not take runs the composition of fastcnn's relu, local_response_norm
    and max_pool2d (so the rules of those functions apply): dtypes and layouts they do not
    cover, non-finite alpha, beta or k (or 0-d tensors for them), and windows of more than
    256 taps.
    """
    args = (size, alpha, beta, k, kernel_size, stride, padding, ceil_mode)
    check_tensor("input", input)
    if not kernels_take(input):
        return _composition(input, *args)
    _check_pooled_input(input)
    if input.dim() != 4:  # LRN and max-pooling disagree on where a 3-d input's channels are
        raise ValueError(f"input must be (N, C, H, W), got a {input.dim()}-d tensor of shape "
                         f"{tuple(input.shape)}")
    size = check_int("size", size, minimum=1)
    scalars = {"alpha": alpha, "beta": beta, "k": k}
    for name, value in scalars.items():
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                            f"{value!r}")
    pool_args = _pooling_arguments(input, kernel_size, stride, padding, 1, ceil_mode)[:3]
    if (not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in scalars.values())
            or positions_dtype(pool_args[0]) != torch.uint8):
        return _composition(input, *args)
    keep_positions = torch.is_grad_enabled() and input.requires_grad
    lrn_args = (size, float(alpha), float(beta), float(k))
    output, _ = ReLULRNMaxPool2dFunction.apply(input, lrn_args, pool_args, ceil_mode,
                                               keep_positions)
    return output
