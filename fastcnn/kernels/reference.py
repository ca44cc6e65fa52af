"""Every op in plain PyTorch: the fallback for devices without a fastcnn kernel, and the
differentiable backward used when a second derivative is asked for.

The entry points match the C++ and Triton ones: inputs are (N, C, S) views and results
are written into caller-allocated outputs. Half and bfloat16 are computed in float32.
"""

import torch
import torch.nn.functional as F


def _compute_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _channel_window_sum(v, before, after):
    """Sum over channels [c - before, c + after] of v (N, C, *), zero outside [0, C)."""
    padded = F.pad(v.flatten(2), (0, 0, before, after))
    return padded.unfold(1, before + after + 1, 1).sum(-1).view(v.shape)


def _lrn_scale(x, size, alpha, k):
    """s = k + alpha / size * (sum of x^2 over the window of each channel)."""
    return k + alpha / size * _channel_window_sum(x * x, size // 2, (size - 1) // 2)


def lrn_grad_input(input, grad_output, size, alpha, beta, k):
    """dL/dinput of local response normalization, from differentiable PyTorch ops, in the
    compute dtype."""
    dtype = _compute_dtype(input.dtype)
    x, g = input.to(dtype), grad_output.to(dtype)
    s = _lrn_scale(x, size, alpha, k)
    g_over_q = g / s.pow(beta)
    coef = 2 * alpha * beta / size
    if coef == 0:  # no cross term (as torch.pow's gradient for beta == 0), even where s == 0
        return g_over_q
    t_sum = _channel_window_sum(g_over_q * x / s, (size - 1) // 2, size // 2)
    return g_over_q - coef * x * t_sum


def lrn_forward(input, output, size, alpha, beta, k):
    x = input.to(_compute_dtype(input.dtype))
    output.copy_(x / _lrn_scale(x, size, alpha, k).pow(beta))


def lrn_backward(input, grad_output, grad_input, size, alpha, beta, k):
    grad_input.copy_(lrn_grad_input(input, grad_output, size, alpha, beta, k))
