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


def window_positions_to_indices(positions, input_size, kernel_size, stride, padding, dilation):
    """PyTorch's max-pooling indices (flat h * W + w in each plane, int64) from positions in
    the window (kh * kernel_w + kw), for (N, C, OH, OW) positions."""
    width, kernel_w = input_size[1], kernel_size[1]
    p = positions.long()
    out_h, out_w = positions.shape[-2:]
    rows = torch.arange(out_h, device=p.device).view(-1, 1) * stride[0] - padding[0]
    cols = torch.arange(out_w, device=p.device) * stride[1] - padding[1]
    ih = rows + (p // kernel_w) * dilation[0]
    iw = cols + (p % kernel_w) * dilation[1]
    return ih * width + iw


def window_positions_from_indices(indices, width, kernel_size, stride, padding, dilation):
    """The inverse of window_positions_to_indices (int64 positions)."""
    out_h, out_w = indices.shape[-2:]
    rows = torch.arange(out_h, device=indices.device).view(-1, 1) * stride[0] - padding[0]
    cols = torch.arange(out_w, device=indices.device) * stride[1] - padding[1]
    kh = (indices // width - rows) // dilation[0]
    kw = (indices % width - cols) // dilation[1]
    return kh * kernel_size[1] + kw


def max_pool2d_grad_input(grad_output, positions, input_size, kernel_size, stride, padding,
                          dilation):
    """dL/dinput of max-pooling (N, C, H, W) from dL/doutput and the winners' positions,
    from differentiable PyTorch ops, in the dtype of grad_output."""
    n, c, out_h, out_w = grad_output.shape
    indices = window_positions_to_indices(positions, input_size, kernel_size, stride, padding,
                                          dilation)
    grad_input = grad_output.new_zeros(n, c, input_size[0] * input_size[1])
    grad_input = grad_input.scatter_add(2, indices.reshape(n, c, out_h * out_w),
                                        grad_output.reshape(n, c, out_h * out_w))
    return grad_input.view(n, c, *input_size)


def max_pool2d_forward(input, output, positions, kernel_size, stride, padding, dilation):
    # output's size says whether ceil_mode added a window: pool with ceil_mode on, then crop
    out_h, out_w = output.shape[-2:]
    values, indices = F.max_pool2d(input, kernel_size, stride, padding, dilation,
                                   ceil_mode=True, return_indices=True)
    output.copy_(values[..., :out_h, :out_w])
    if positions is not None:
        indices = indices[..., :out_h, :out_w]
        positions.copy_(window_positions_from_indices(
            indices, input.shape[-1], kernel_size, stride, padding, dilation))


def max_pool2d_backward(grad_output, positions, grad_input, kernel_size, stride, padding,
                        dilation):
    dtype = _compute_dtype(grad_output.dtype)
    grad_input.copy_(max_pool2d_grad_input(grad_output.to(dtype), positions,
                                           tuple(grad_input.shape[-2:]), kernel_size, stride,
                                           padding, dilation))


def global_avg_pool2d_forward(input, output):
    output.copy_(input.to(_compute_dtype(input.dtype)).mean(2, keepdim=True))


def global_avg_pool2d_backward(grad_output, grad_input):
    grad = grad_output.to(_compute_dtype(grad_output.dtype)) / grad_input.shape[2]
    grad_input.copy_(grad.expand(grad_input.shape))
