"""local_response_norm: the numbers of torch.nn.functional.local_response_norm from the
fastcnn kernels, forward and backward."""

import math
import numbers

import torch
import torch.nn.functional as F

from fastcnn import backends, ops
from fastcnn.kernels import reference
from fastcnn.functional._checks import check_feature_map, check_int, check_tensor, kernels_take


class LocalResponseNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, size, alpha, beta, k):
        backend = backends.select("local_response_norm", input)
        output = ops.lrn_forward(input, size, alpha, beta, k, backend)
        # Only the input is kept: the backward kernel recomputes the window sums from it
        # where they are needed, which costs less than writing them out here and reading
        # them back (and the output itself is not needed at all).
        ctx.save_for_backward(input)
        ctx.lrn_args = (size, alpha, beta, k)
        ctx.backend = backend
        return output

    @staticmethod
    def backward(ctx, grad_output):
        (input,) = ctx.saved_tensors
        if torch.is_grad_enabled() and (input.requires_grad or grad_output.requires_grad):
            # create_graph=True: second derivatives need a backward that autograd can see
            # through, so it is built from PyTorch ops (the reference formula) instead of
            # the kernel.
            grad_input = reference.lrn_grad_input(input, grad_output, *ctx.lrn_args)
            return grad_input.to(input.dtype), None, None, None, None
        grad_input = ops.lrn_backward(input, grad_output, *ctx.lrn_args, ctx.backend)
        return grad_input, None, None, None, None


def _no_wider_than_the_channels(input, size, alpha):
    """(size, alpha) for PyTorch's own function, which pads the channels by size // 2: a
    window of 2C - 1 already covers every channel from every channel, so a wider one is
    replaced by it, with alpha / size kept (the kernels never allocate by the window)."""
    covering = 2 * input.shape[1] - 1 if input.dim() >= 2 else size
    if 0 < covering < size:
        return covering, alpha * covering / size
    return size, alpha


def local_response_norm(input, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization over channels, as torch.nn.functional.local_response_norm:

        y_c = x_c / (k + alpha / size * sum_{j = c - size // 2}^{c + (size - 1) // 2} x_j^2)^beta

    with zeros for channels outside [0, C). input is (N, C, *) with at least 3 dimensions.
    What the kernels do not take goes to PyTorch's function itself: an empty input (which
    it returns, whatever the other arguments), non-finite alpha, beta or k (or 0-d tensors
    for them), integer dtypes, mkldnn and sparse tensors.
    """
    check_tensor("input", input)
    if input.numel() == 0:
        return F.local_response_norm(input, size, alpha, beta, k)
    size = check_int("size", size, minimum=1)
    scalars = {"alpha": alpha, "beta": beta, "k": k}
    for name, value in scalars.items():
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__} "
                            f"{value!r}")
    if not kernels_take(input):
        return F.local_response_norm(input, size, alpha, beta, k)
    if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in scalars.values()):
        # PyTorch's formula, in float32 for float16 and bfloat16 as the kernels compute
        low = input.dtype in (torch.float16, torch.bfloat16)
        size, alpha = _no_wider_than_the_channels(input, size, alpha)
        x = input.float() if low else input
        # PyTorch's function views the trailing dimensions of 5-d and wider input as one,
        # which fails on strides that do not merge (a transposed H and W)
        x = x.contiguous() if x.dim() > 4 else x
        output = F.local_response_norm(x, size, alpha, beta, k)
        return output.to(input.dtype)
    check_feature_map("input", input, min_dim=3)
    return LocalResponseNormFunction.apply(input, size, float(alpha), float(beta), float(k))
