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
    channels = v.shape[1]
    if channels == 0 or v.numel() == 0:
        return v.clone()
    # no window reaches further than C - 1 channels into the input: wider is only zeros
    before, after = min(before, channels - 1), min(after, channels - 1)
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


# Conv -> BatchNorm -> ReLU (+ residual): the passes around the convolution. Per-channel
# vectors are (C,) in the compute dtype; see csrc/cpu/conv_bn_relu.cpp for the formulas.

def _per_channel(v):
    return v.view(1, -1, 1)


def _pre_activation(input, scale, shift, residual):
    """y * scale + shift (+ r) in the compute dtype."""
    v = input.to(_compute_dtype(input.dtype)) * _per_channel(scale) + _per_channel(shift)
    if residual is not None:
        v = v + residual.to(v.dtype)
    return v


def _masked_grad(grad_output, input, residual, scale, shift, relu):
    """dz: the gradient where the ReLU passed its input (as torch's threshold_backward)."""
    g = grad_output.to(_compute_dtype(grad_output.dtype))
    if not relu:
        return g
    return torch.where(_pre_activation(input, scale, shift, residual) <= 0, 0.0, g)


def channel_affine_act(input, scale, shift, residual, output, relu):
    v = _pre_activation(input, scale, shift, residual)
    output.copy_(torch.relu(v) if relu else v)


def batch_norm_stats(input, mean, var):
    v, m = torch.var_mean(input.to(_compute_dtype(input.dtype)), dim=(0, 2), correction=0)
    mean.copy_(m)
    var.copy_(v)


def batch_norm_act_backward_reduce(grad_output, input, residual, scale, shift, mean, invstd,
                                   sum_dz, sum_dz_xhat, relu):
    dz = _masked_grad(grad_output, input, residual, scale, shift, relu)
    centered = input.to(dz.dtype) - _per_channel(mean)
    sum_dz.copy_(dz.sum(dim=(0, 2)))
    sum_dz_xhat.copy_((dz * centered).sum(dim=(0, 2)) * invstd)


def batch_norm_act_backward(grad_output, input, residual, scale, shift, mean, invstd, sum_dz,
                            sum_dz_xhat, grad_input, grad_residual, relu):
    dz = _masked_grad(grad_output, input, residual, scale, shift, relu)
    count = input.shape[0] * input.shape[2]
    centered = input.to(dz.dtype) - _per_channel(mean)
    k = _per_channel(scale * invstd * sum_dz_xhat / count)
    # k == 0 (a frozen BatchNorm): no term at all, so an infinite y gives no NaN
    centred_term = torch.where(k == 0, 0.0, k * centered)
    grad_input.copy_(_per_channel(scale) * (dz - _per_channel(sum_dz / count)) - centred_term)
    if grad_residual is not None:
        grad_residual.copy_(dz)


def batch_norm_act_training(y, bn_weight, bn_bias, residual, eps, relu):
    """Training-mode BatchNorm of y (N, C, H, W) (+ residual) (-> ReLU) from differentiable
    PyTorch ops: the backward of second derivatives (create_graph=True)."""
    z = F.batch_norm(y, None, None, bn_weight, bn_bias, training=True, eps=eps)
    if residual is not None:
        z = z + residual
    return torch.relu(z) if relu else z


def channel_affine_act_training(y, scale, shift, residual, relu):
    """act(y * scale_c + shift_c (+ residual)) of (N, C, H, W) tensors from differentiable
    PyTorch ops, in y's dtype: the backward of second derivatives."""
    r = None if residual is None else residual.flatten(2)
    v = _pre_activation(y.flatten(2), scale, shift, r).view(y.shape)
    return (torch.relu(v) if relu else v).to(y.dtype)


def concat_forward(inputs, output, dim):
    """Copies each input into its slice of output along dim, in order (torch.cat into a
    preallocated output of any strides)."""
    offset = 0
    for t in inputs:
        output.narrow(dim, offset, t.shape[dim]).copy_(t)
        offset += t.shape[dim]


# ReLU -> LRN -> max-pooling (fastcnn.ops.relu_lrn_max_pool): (N, C, H, W) tensors, the LRN
# output z = lrn(relu(x)) in the compute dtype, pooled without rounding it to x's dtype.

def relu_lrn_max_pool2d_grad_input(input, grad_output, positions, size, alpha, beta, k,
                                   kernel_size, stride, padding):
    """dL/dinput of max_pool2d(lrn(relu(input))) from dL/doutput and the winners'
    positions, from differentiable PyTorch ops, in the compute dtype: the pooled gradient
    gathered onto z, then LRN's gradient, then ReLU's mask (torch's threshold_backward:
    zero where input <= 0, NaN passes)."""
    dtype = _compute_dtype(input.dtype)
    grad_z = max_pool2d_grad_input(grad_output.to(dtype), positions, tuple(input.shape[2:]),
                                   kernel_size, stride, padding, (1, 1))
    x = input.to(dtype)
    grad_r = lrn_grad_input(torch.relu(x), grad_z, size, alpha, beta, k)
    return torch.where(x <= 0, 0.0, grad_r)


def relu_lrn_max_pool2d_forward(input, output, positions, size, alpha, beta, k, kernel_size,
                                stride, padding):
    r = torch.relu(input.to(_compute_dtype(input.dtype)))
    z = r / _lrn_scale(r, size, alpha, k).pow(beta)
    max_pool2d_forward(z, output, positions, kernel_size, stride, padding, (1, 1))


def relu_lrn_max_pool2d_backward(input, grad_output, positions, grad_input, size, alpha, beta,
                                 k, kernel_size, stride, padding):
    grad_input.copy_(relu_lrn_max_pool2d_grad_input(input, grad_output, positions, size, alpha,
                                                    beta, k, kernel_size, stride, padding))
