"""Local response normalization (Krizhevsky et al., 2012, section 3.3) as Triton kernels.

For x of shape (N, C, S), with the window of channel c being [c - lo, c + hi],
lo = size // 2 and hi = (size - 1) // 2 (zero padding outside [0, C), as PyTorch):

    s_c = k + alpha / size * sum_{j in window(c)} x_j^2
    y_c = x_c / s_c^beta

and with g = dL/dy (c is in window(j) exactly when j is in [c - hi, c + lo]):

    dL/dx_c = g_c / s_c^beta - 2 alpha beta / size * x_c * sum_{j in [c - hi, c + lo]} t_j
    t_j     = g_j x_j / (s_j^beta s_j)

Each program owns a BLOCK_C x BLOCK_S tile of one image and reads the channel window of
its tile with shifted loads, which after the first hit L1/L2, so forward moves x in and
y out once. Backward reads only x and g (it recomputes every s_j in its transposed window
rather than reading a saved copy) and writes dx once. Accumulation is in float32 (float64
for float64 inputs). Strides are arguments, so NCHW, channels_last and sliced inputs run
without a layout copy; Triton specialises a stride of 1 and makes that axis the
contiguous one of the tile.
"""

import triton
import triton.language as tl

from fastcnn.kernels.triton._common import (acc_dtype, channel_tile, check_strided,
                                             on_device_of, tile_coordinates, tile_grid,
                                             tile_pointers)

# How s^beta is computed, fixed at compile time (see _power).
_BETA_ZERO = tl.constexpr(0)
_BETA_THREE_QUARTERS = tl.constexpr(1)
_BETA_FRACTIONAL = tl.constexpr(2)
_BETA_EVEN = tl.constexpr(3)
_BETA_ODD = tl.constexpr(4)

# Elements per program tile.
_TILE = 2048


@triton.jit
def _power(s, beta, BETA_KIND: tl.constexpr):
    """s ** beta (beta a float64 scalar) with torch.pow's special cases: s^0 == 1, and a
    negative s has a real power only for an integer beta."""
    if BETA_KIND == _BETA_ZERO:
        q = tl.full(s.shape, 1.0, s.dtype)
    elif BETA_KIND == _BETA_THREE_QUARTERS:
        root = tl.sqrt(s)
        q = root * tl.sqrt(root)
    else:
        # in float64: in float32, beta * log2|s| loses up to 1e-5 relative for |z| near 100
        magnitude = tl.exp2(beta * tl.log2(tl.abs(s).to(tl.float64))).to(s.dtype)
        if BETA_KIND == _BETA_FRACTIONAL:
            q = tl.where(s < 0, float("nan"), magnitude)
        elif BETA_KIND == _BETA_EVEN:
            q = magnitude
        else:
            q = tl.where(s < 0, -magnitude, magnitude)
    return q


@triton.jit
def _scale(
    x_image,  # pointer to x[n, 0, 0]
    channels,  # (BLOCK_C,) int32: the channels c whose s_c is computed
    s_offsets,  # (1, BLOCK_S) int64: spatial offsets into x, in elements
    s_mask,  # (1, BLOCK_S) bool
    C,
    x_stride_c,
    # LRN parameters; the window of channel c is [c - lo, c + hi], clipped to at most
    # C - 1 each way
    lo,
    hi,
    alpha_over_size,
    k,
    ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """s_c = k + alpha / size * sum_{j in window(c)} x_j^2, in ACC_DTYPE."""
    total = tl.zeros((BLOCK_C, BLOCK_S), ACC_DTYPE)
    for d in range(-lo, hi + 1):
        neighbour = channels + d
        valid = ((neighbour >= 0) & (neighbour < C))[:, None] & s_mask
        v = tl.load(
            x_image + neighbour.to(tl.int64)[:, None] * x_stride_c + s_offsets,
            mask=valid,
            other=0.0,
        ).to(ACC_DTYPE)
        total += v * v
    return tl.cast(k, ACC_DTYPE) + tl.cast(alpha_over_size, ACC_DTYPE) * total


@triton.jit
def _lrn_forward_kernel(
    x_ptr,
    y_ptr,
    # shape (N, C, S); N is covered by the grid
    C,
    S,
    # strides of x and y over (n, c, s), in elements
    x_stride_n,
    x_stride_c,
    x_stride_s,
    y_stride_n,
    y_stride_c,
    y_stride_s,
    # LRN parameters; the window of channel c is [c - lo, c + hi]
    lo,
    hi,
    alpha_over_size: tl.float64,
    beta: tl.float64,
    k: tl.float64,
    # compile-time options
    BETA_KIND: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    image, channels, positions = tile_coordinates(C, S, BLOCK_C, BLOCK_S)
    s_mask = (positions < S)[None, :]
    mask = (channels < C)[:, None] & s_mask
    x_image = x_ptr + image * x_stride_n
    x_s = positions.to(tl.int64)[None, :] * x_stride_s

    s = _scale(x_image, channels, x_s, s_mask, C, x_stride_c, lo, hi, alpha_over_size, k,
               ACC_DTYPE, BLOCK_C, BLOCK_S)
    x = tl.load(x_image + channels.to(tl.int64)[:, None] * x_stride_c + x_s, mask=mask)
    y = x.to(ACC_DTYPE) / _power(s, beta, BETA_KIND)

    y_ptrs = tile_pointers(y_ptr, image, channels, positions, y_stride_n, y_stride_c,
                           y_stride_s)
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _lrn_backward_kernel(
    x_ptr,
    g_ptr,
    dx_ptr,
    # shape (N, C, S); N is covered by the grid
    C,
    S,
    # strides of x, g (dL/dy) and dx over (n, c, s), in elements
    x_stride_n,
    x_stride_c,
    x_stride_s,
    g_stride_n,
    g_stride_c,
    g_stride_s,
    dx_stride_n,
    dx_stride_c,
    dx_stride_s,
    # LRN parameters; the window of channel c is [c - lo, c + hi]
    lo,
    hi,
    alpha_over_size: tl.float64,
    beta: tl.float64,
    k: tl.float64,
    grad_coef: tl.float64,  # 2 * alpha * beta / size
    # compile-time options
    BETA_KIND: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    image, channels, positions = tile_coordinates(C, S, BLOCK_C, BLOCK_S)
    s_mask = (positions < S)[None, :]
    mask = (channels < C)[:, None] & s_mask
    x_image = x_ptr + image * x_stride_n
    g_image = g_ptr + image * g_stride_n
    x_s = positions.to(tl.int64)[None, :] * x_stride_s
    g_s = positions.to(tl.int64)[None, :] * g_stride_s

    # sum of t_j over the transposed window [c - hi, c + lo]
    t_sum = tl.zeros((BLOCK_C, BLOCK_S), ACC_DTYPE)
    for d in range(-hi, lo + 1):
        j = channels + d
        valid = ((j >= 0) & (j < C))[:, None] & s_mask
        j64 = j.to(tl.int64)[:, None]
        x_j = tl.load(x_image + j64 * x_stride_c + x_s, mask=valid, other=0.0).to(ACC_DTYPE)
        g_j = tl.load(g_image + j64 * g_stride_c + g_s, mask=valid, other=0.0).to(ACC_DTYPE)
        s_j = _scale(x_image, j, x_s, s_mask, C, x_stride_c, lo, hi, alpha_over_size, k,
                     ACC_DTYPE, BLOCK_C, BLOCK_S)
        t_sum += tl.where(valid, g_j * x_j / (_power(s_j, beta, BETA_KIND) * s_j), 0.0)

    c64 = channels.to(tl.int64)[:, None]
    x = tl.load(x_image + c64 * x_stride_c + x_s, mask=mask).to(ACC_DTYPE)
    g = tl.load(g_image + c64 * g_stride_c + g_s, mask=mask).to(ACC_DTYPE)
    s = _scale(x_image, channels, x_s, s_mask, C, x_stride_c, lo, hi, alpha_over_size, k,
               ACC_DTYPE, BLOCK_C, BLOCK_S)
    # With beta == 0 the cross term is exactly zero, as in torch.pow's gradient, even
    # where t is not finite (s == 0).
    cross = tl.where(grad_coef == 0, 0.0, tl.cast(grad_coef, ACC_DTYPE) * x * t_sum)
    dx = g / _power(s, beta, BETA_KIND) - cross

    dx_ptrs = tile_pointers(dx_ptr, image, channels, positions, dx_stride_n, dx_stride_c,
                            dx_stride_s)
    tl.store(dx_ptrs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _beta_kind(beta):
    """The BETA_KIND of an exponent, as a plain int (the launcher's cache key)."""
    if beta == 0:
        kind = _BETA_ZERO
    elif beta == 0.75:
        kind = _BETA_THREE_QUARTERS
    elif beta != int(beta):
        kind = _BETA_FRACTIONAL
    else:
        kind = _BETA_ODD if int(beta) % 2 else _BETA_EVEN
    return kind.value


def _launch_settings(x):
    """Grid size and compile-time options shared by the forward and backward launches."""
    _, c, s = x.shape
    block_c, block_s = channel_tile(c, s, x.stride(1) == 1, _TILE, long_block=128,
                                    channel_block=64)
    grid = tile_grid(x, block_c, block_s)
    options = {
        "ACC_DTYPE": acc_dtype(x),
        "BLOCK_C": block_c,
        "BLOCK_S": block_s,
    }
    return grid, options


def _clipped_window(size, channels):
    """(lo, hi) of the window, clipped: a neighbour further than C - 1 is always padding."""
    return min(size // 2, channels - 1), min((size - 1) // 2, channels - 1)


def lrn_forward(input, output, size, alpha, beta, k):
    """Writes LRN(input) into output; both are (N, C, S) views with any strides."""
    check_strided("input", input)
    check_strided("output", output)
    if input.numel() == 0:
        return
    grid, options = _launch_settings(input)
    with on_device_of(input):
        _lrn_forward_kernel[grid](
            input, output, input.shape[1], input.shape[2], *input.stride(), *output.stride(),
            *_clipped_window(size, input.shape[1]), alpha / size, beta, k,
            BETA_KIND=_beta_kind(beta), **options)


def lrn_backward(input, grad_output, grad_input, size, alpha, beta, k):
    """Writes dL/dinput into grad_input from input and grad_output; (N, C, S) views."""
    for name, t in (("input", input), ("grad_output", grad_output), ("grad_input", grad_input)):
        check_strided(name, t)
    if input.numel() == 0:
        return
    grid, options = _launch_settings(input)
    with on_device_of(input):
        _lrn_backward_kernel[grid](
            input, grad_output, grad_input, input.shape[1], input.shape[2], *input.stride(),
            *grad_output.stride(), *grad_input.stride(), *_clipped_window(size, input.shape[1]),
            alpha / size, beta, k, 2.0 * alpha * beta / size,
            BETA_KIND=_beta_kind(beta), **options)
