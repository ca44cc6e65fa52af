"""Global average pooling (Lin et al., 2013, "Network in Network", section 3.2) as Triton
kernels. For x viewed as (N, C, S), S = H * W:

    y[n, c] = 1/S * sum_s x[n, c, s],        dL/dx[n, c, s] = g[n, c] / S.

Forward gives each program BLOCK_C channels of one image and walks S in BLOCK_S steps;
backward gives each program a BLOCK_C x BLOCK_S tile of one image. Accumulation is in
float32 (float64 for float64). Strides are arguments, so NCHW, channels_last and sliced
tensors run without a layout copy; the tile runs long along the axis with stride 1 (space
in NCHW, channels in channels_last), which Triton specialises and makes the contiguous one.
"""

import triton
import triton.language as tl

from fastcnn.kernels.triton._common import (acc_dtype, channel_tile, check_dims, check_dtype,
                                             check_like, on_device_of, tile_coordinates,
                                             tile_grid, tile_pointers)

# Elements per program tile.
_TILE = 1024


@triton.jit
def _global_avg_pool2d_forward_kernel(
    x_ptr,  # input (N, C, S)
    y_ptr,  # output (N, C, 1)
    # shape (N, C, S); N is covered by the grid
    C,
    S,
    # strides, in elements
    x_stride_n,
    x_stride_c,
    x_stride_s,
    y_stride_n,
    y_stride_c,
    # compile-time options
    ACC_DTYPE: tl.constexpr,
    # tiling: BLOCK_C channels of one image, S walked BLOCK_S at a time
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles_c = tl.cdiv(C, BLOCK_C)
    image = (pid // tiles_c).to(tl.int64)
    channels = pid % tiles_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channels < C
    x_channels = x_ptr + image * x_stride_n + channels.to(tl.int64)[:, None] * x_stride_c

    acc = tl.zeros((BLOCK_C, BLOCK_S), ACC_DTYPE)
    for start in range(0, S, BLOCK_S):
        positions = start + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (positions < S)[None, :]
        v = tl.load(x_channels + positions.to(tl.int64)[None, :] * x_stride_s, mask=mask,
                    other=0.0)
        acc += v.to(ACC_DTYPE)
    mean = tl.sum(acc, axis=1) / S

    y_offsets = image * y_stride_n + channels.to(tl.int64) * y_stride_c
    tl.store(y_ptr + y_offsets, mean.to(y_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _global_avg_pool2d_backward_kernel(
    g_ptr,  # grad_output (N, C, 1)
    dx_ptr,  # grad_input (N, C, S)
    # shape (N, C, S); N is covered by the grid
    C,
    S,
    # strides, in elements
    g_stride_n,
    g_stride_c,
    dx_stride_n,
    dx_stride_c,
    dx_stride_s,
    # compile-time options
    ACC_DTYPE: tl.constexpr,
    # tiling: a BLOCK_C x BLOCK_S tile of one image
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    image, channels, positions = tile_coordinates(C, S, BLOCK_C, BLOCK_S)
    c_mask = channels < C

    g = tl.load(g_ptr + image * g_stride_n + channels.to(tl.int64) * g_stride_c, mask=c_mask)
    dx = tl.broadcast_to((g.to(ACC_DTYPE) / S)[:, None], (BLOCK_C, BLOCK_S))

    dx_ptrs = tile_pointers(dx_ptr, image, channels, positions, dx_stride_n, dx_stride_c,
                            dx_stride_s)
    mask = c_mask[:, None] & (positions < S)[None, :]
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _blocks(t):
    """(BLOCK_C, BLOCK_S) of the global-average-pooling kernels on t, (N, C, S)."""
    return channel_tile(t.shape[1], t.shape[2], t.stride(1) == 1, _TILE, long_block=1024,
                        channel_block=32)


def _check_views(name, t, other_name, other):
    check_dims(name, t, 3)
    check_dims(other_name, other, 3)
    check_like(name, t, other_name, other, 2)
    check_dtype(name, t, other_name, other)
    if t.shape[2] != 1:
        raise ValueError(f"{name} must have shape (N, C, 1), got {tuple(t.shape)}")


def global_avg_pool2d_forward(input, output):
    """Writes the mean of input (N, C, S) over S into output (N, C, 1); any strides."""
    _check_views("output", output, "input", input)
    if output.numel() == 0:
        return
    n, c, s = input.shape
    block_c, block_s = _blocks(input)
    with on_device_of(input):
        _global_avg_pool2d_forward_kernel[(n * triton.cdiv(c, block_c),)](
            input, output, c, s, *input.stride(), *output.stride()[:2],
            ACC_DTYPE=acc_dtype(input), BLOCK_C=block_c, BLOCK_S=block_s)


def global_avg_pool2d_backward(grad_output, grad_input):
    """Writes grad_output (N, C, 1) / S into every element of grad_input (N, C, S)."""
    _check_views("grad_output", grad_output, "grad_input", grad_input)
    if grad_input.numel() == 0:
        return
    _, c, s = grad_input.shape
    block_c, block_s = _blocks(grad_input)
    with on_device_of(grad_input):
        _global_avg_pool2d_backward_kernel[tile_grid(grad_input, block_c, block_s)](
            grad_output, grad_input, c, s, *grad_output.stride()[:2], *grad_input.stride(),
            ACC_DTYPE=acc_dtype(grad_input), BLOCK_C=block_c, BLOCK_S=block_s)
