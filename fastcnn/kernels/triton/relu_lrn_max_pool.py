"""ReLU -> local response normalization -> max-pooling (Krizhevsky et al., 2012, sections
3.3 and 3.4) as one pair of Triton kernels: the stem of AlexNet, ZFNet and GoogLeNet.

For x of shape (N, C, H, W) and r = max(x, 0) (NaN kept), with the channel window
[c - lo, c + hi] of lrn.py (lo = size // 2, hi = (size - 1) // 2, zeros outside [0, C)),

    s_c = k + alpha / size * sum_{j in [c - lo, c + hi]} r_j^2,    z_c = r_c / s_c^beta,

and y is the max-pooling of z as max_pool.py computes it (taps scanned in row-major order,
the first maximum wins a tie, NaN wins, padding never does), with each winner's position
in its window, kh * kernel_w + kw, written as one byte when a gradient is wanted. z is
never written: forward reads x and writes y (and the positions).

Backward, from x and the positions: g = dL/dz at an input element is the sum of dL/dy over
the windows that hold it and picked it, gathered in increasing (oh, ow) order as in
max_pool.py; then LRN's gradient with r for x, and the ReLU's mask (zero where x <= 0, as
torch's threshold_backward; NaN passes):

    dL/dx_c = [x_c > 0 or NaN] (g_c / s_c^beta - 2 alpha beta / size r_c sum_j t_j),
    t_j = g_j r_j / (s_j^beta s_j),    j in [c - hi, c + lo].

Both kernels own a BLOCK_C x BLOCK_W tile of one row of their output (forward: of y;
backward: of dL/dx) and recompute the channel windows of z (and, backward, of g) that the
tile needs from x, dL/dy and the positions, which stay in L1/L2 between neighbouring
loads: nothing but x, y, dL/dy, the positions and dL/dx moves through memory. z and g are
kept in float32 (float64 for float64 inputs). Strides are arguments, so NCHW,
channels_last and sliced tensors run without a layout copy.
"""

import triton
import triton.language as tl

from fastcnn.kernels.triton._common import (acc_dtype, channel_tile, check_dims, check_dtype,
                                             check_like, on_device_of)
from fastcnn.kernels.triton.lrn import _beta_kind, _clipped_window, _power
from fastcnn.kernels.triton.max_pool import (_MAX_UNROLLED_TAPS, _ceil_div, _check_positions,
                                             _first_in_bounds_tap, _gather_window, _row_tile,
                                             _wide)

# Elements of a program's tile times the channels of an LRN window it reads at a time.
_TILE = 2048

# Channels of an LRN window read at a time (as one tile); wider windows take several reads.
_MAX_WINDOW = 8


@triton.jit
def _relu_lrn(
    x_image,  # pointer to x[n, 0, 0, 0]
    channels,  # (BLOCK_C,) int32: the channels c computed
    offsets,  # (1, BLOCK_W) int64: the positions' offsets into a channel of x, in elements
    valid,  # (1, BLOCK_W) bool: positions inside the input
    C,
    x_stride_c,
    lo,
    hi,
    alpha_over_size,
    beta,
    k,
    BETA_KIND: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    WINDOW: tl.constexpr,  # channels of the LRN window read at a time
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """(r, s, q) of the tile's channels at its positions (0, k and k^beta where not valid),
    in ACC_DTYPE: r = relu(x) (NaN stays NaN), s = k + alpha / size * sum_{j in [c - lo,
    c + hi]} r_j^2 and q = s^beta. The window is read as (BLOCK_C, WINDOW, BLOCK_W) tiles."""
    total = tl.zeros((BLOCK_C, BLOCK_W), ACC_DTYPE)
    r = tl.zeros((BLOCK_C, BLOCK_W), ACC_DTYPE)
    positions = x_image + offsets[:, None, :]
    valid = valid[:, None, :]
    for first in range(-lo, hi + 1, WINDOW):
        d = first + tl.arange(0, WINDOW)
        neighbour = channels[:, None] + d[None, :]
        in_window = (neighbour >= 0) & (neighbour < C) & (d <= hi)[None, :]
        v = tl.load(positions + (neighbour.to(tl.int64) * x_stride_c)[:, :, None],
                    mask=in_window[:, :, None] & valid, other=0.0).to(ACC_DTYPE)
        v = tl.where(v < 0, 0.0, v)
        total += tl.sum(v * v, axis=1)
        r += tl.sum(tl.where((d == 0)[None, :, None], v, 0.0), axis=1)
    s = tl.cast(k, ACC_DTYPE) + tl.cast(alpha_over_size, ACC_DTYPE) * total
    return r, s, _power(s, beta, BETA_KIND)


@triton.jit
def _relu_lrn_at(x_image, channels, offsets, valid, C, x_stride_c, lo, hi, alpha_over_size,
                 beta, k, BETA_KIND: tl.constexpr, ACC_DTYPE: tl.constexpr,
                 SHAPE: tl.constexpr):
    """(r, s, q) as _relu_lrn's, of a SHAPE tile of channels (int32, broadcast against the
    positions' offsets) where valid, reading the window one channel at a time."""
    total = tl.zeros(SHAPE, ACC_DTYPE)
    r = tl.zeros(SHAPE, ACC_DTYPE)
    for e in range(-lo, hi + 1):
        neighbour = channels + e
        v = tl.load(x_image + neighbour.to(tl.int64) * x_stride_c + offsets,
                    mask=valid & (neighbour >= 0) & (neighbour < C), other=0.0).to(ACC_DTYPE)
        v = tl.where(v < 0, 0.0, v)
        total += v * v
        r = tl.where(e == 0, v, r)
    s = tl.cast(k, ACC_DTYPE) + tl.cast(alpha_over_size, ACC_DTYPE) * total
    return r, s, _power(s, beta, BETA_KIND)


@triton.jit
def _take_tap(best, position, x_image, channels, ih, iw, mask, C, H, W, x_stride_c,
              x_stride_h, x_stride_w, lo, hi, alpha_over_size, beta, k, tap,
              BETA_KIND: tl.constexpr, ACC_DTYPE: tl.constexpr, WINDOW: tl.constexpr,
              BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """The max-pooling state (best, position) of the tile's windows after their tap number
    `tap`, at input row ih (an int64 scalar) and columns iw (int64): z there, from x, and
    the scan step."""
    inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    r, _, q = _relu_lrn(x_image, channels, ih * x_stride_h + iw * x_stride_w, inside, C,
                        x_stride_c, lo, hi, alpha_over_size, beta, k, BETA_KIND, ACC_DTYPE,
                        WINDOW, BLOCK_C, BLOCK_W)
    z = r / q
    take = mask & inside & ((z > best) | (z != z))
    return tl.where(take, z, best), tl.where(take, tap, position)


@triton.jit
def _relu_lrn_max_pool2d_forward_kernel(
    x_ptr,  # input (N, C, H, W)
    y_ptr,  # output (N, C, OH, OW)
    pos_ptr,  # positions (N, C, OH, OW), uint8; None without WRITE_POSITIONS
    # shapes; N is covered by the grid
    C,
    H,
    W,
    OH,
    OW,
    # strides over (n, c, h, w), in elements
    x_stride_n,
    x_stride_c,
    x_stride_h,
    x_stride_w,
    y_stride_n,
    y_stride_c,
    y_stride_h,
    y_stride_w,
    pos_stride_n,
    pos_stride_c,
    pos_stride_h,
    pos_stride_w,
    # pooling parameters (no dilation)
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    # LRN parameters; the window of channel c is [c - lo, c + hi]
    lo,
    hi,
    alpha_over_size: tl.float64,
    beta: tl.float64,
    k: tl.float64,
    # compile-time options
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    BETA_KIND: tl.constexpr,
    WRITE_POSITIONS: tl.constexpr,  # False at inference: no positions are computed
    UNROLL_H: tl.constexpr,  # how far to unroll the loop over the taps' rows (1: not)
    UNROLL_W: tl.constexpr,  # and over their columns
    ACC_DTYPE: tl.constexpr,  # z is computed and compared in it
    WINDOW: tl.constexpr,  # channels of the LRN window read at a time
    POS_DTYPE: tl.constexpr,  # positions are numbered in it (int32)
    # tiling: BLOCK_C channels x BLOCK_W columns of one output row
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    image, channels, oh, ow = _row_tile(C, OH, OW, BLOCK_C, BLOCK_W)
    ow = _wide(ow[None, :])
    mask = (channels < C)[:, None] & (ow < OW)
    start_h = oh * stride_h - pad_h
    start_w = ow * stride_w - pad_w
    x_image = x_ptr + image * x_stride_n

    best = tl.full((BLOCK_C, BLOCK_W), float("-inf"), ACC_DTYPE)
    first_h = _first_in_bounds_tap(start_h, 1)
    first_w = _first_in_bounds_tap(start_w, 1)
    position = tl.broadcast_to((first_h * KERNEL_W + first_w).to(POS_DTYPE), (BLOCK_C, BLOCK_W))
    for kh in tl.range(0, KERNEL_H, loop_unroll_factor=UNROLL_H):
        for kw in tl.range(0, KERNEL_W, loop_unroll_factor=UNROLL_W):
            best, position = _take_tap(
                best, position, x_image, channels, start_h + kh, start_w + kw, mask, C, H, W,
                x_stride_c, x_stride_h, x_stride_w, lo, hi, alpha_over_size, beta, k,
                (_wide(kh) * KERNEL_W + kw).to(POS_DTYPE), BETA_KIND, ACC_DTYPE, WINDOW,
                BLOCK_C, BLOCK_W)

    channels64 = channels.to(tl.int64)[:, None]
    y_offsets = image * y_stride_n + channels64 * y_stride_c + oh * y_stride_h + ow * y_stride_w
    tl.store(y_ptr + y_offsets, best.to(y_ptr.dtype.element_ty), mask=mask)
    if WRITE_POSITIONS:
        pos_offsets = (image * pos_stride_n + channels64 * pos_stride_c + oh * pos_stride_h +
                       ow * pos_stride_w)
        tl.store(pos_ptr + pos_offsets, position.to(pos_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gather_row(acc, g_channels, pos_channels, oh, kh, ow_first, t_w, mask, OW, stride_w,
                g_stride_h, g_stride_w, pos_stride_h, pos_stride_w, KERNEL_W: tl.constexpr,
                WINDOWS_W: tl.constexpr, UNROLL_W: tl.constexpr, POS_DTYPE: tl.constexpr):
    """acc plus dL/dy of the windows of output row oh (a scalar, whose tap row kh holds
    the tile's row) over the tile's columns, by increasing ow."""
    for b in tl.range(0, WINDOWS_W, loop_unroll_factor=UNROLL_W):
        ow = ow_first + b
        kw = t_w - ow * stride_w
        acc = _gather_window(acc, g_channels, pos_channels, oh, ow, mask & (kw >= 0) & (ow < OW),
                             g_stride_h, g_stride_w, pos_stride_h, pos_stride_w,
                             (kh * KERNEL_W + kw).to(POS_DTYPE), POS_DTYPE)
    return acc


@triton.jit
def _pooled_gradient(g_image, pos_image, channels, ih, iw, mask, OH, OW, g_stride_c,
                     g_stride_h, g_stride_w, pos_stride_c, pos_stride_h, pos_stride_w,
                     stride_h, stride_w, pad_h, pad_w, KERNEL_H: tl.constexpr,
                     KERNEL_W: tl.constexpr, WINDOWS_H: tl.constexpr, WINDOWS_W: tl.constexpr,
                     UNROLL_H: tl.constexpr, UNROLL_W: tl.constexpr, ACC_DTYPE: tl.constexpr,
                     POS_DTYPE: tl.constexpr,
                     SHAPE: tl.constexpr):
    """dL/dz of a SHAPE tile of channels (int32) at input row ih (an int64 scalar) and
    columns iw (int64), broadcast, where mask is set: dL/dy of the windows that hold each
    element and picked it, added in increasing (oh, ow) order. An element lies in at most
    WINDOWS_H x WINDOWS_W windows: output rows from the first whose window reaches it,
    and likewise columns."""
    channels64 = channels.to(tl.int64)
    g_channels = g_image + channels64 * g_stride_c
    pos_channels = pos_image + channels64 * pos_stride_c
    t_h = ih + pad_h  # oh * stride_h + kh for the windows (oh, kh) over row ih
    t_w = iw + pad_w
    oh_first = tl.maximum(_ceil_div(t_h - (KERNEL_H - 1), stride_h), 0)
    ow_first = tl.maximum(_ceil_div(t_w - (KERNEL_W - 1), stride_w), 0)
    acc = tl.zeros(SHAPE, ACC_DTYPE)
    for a in tl.range(0, WINDOWS_H, loop_unroll_factor=UNROLL_H):
        oh = oh_first + a
        kh = t_h - oh * stride_h
        acc = _gather_row(acc, g_channels, pos_channels, oh, kh, ow_first, t_w,
                          mask & (kh >= 0) & (oh < OH), OW, stride_w, g_stride_h, g_stride_w,
                          pos_stride_h, pos_stride_w, KERNEL_W, WINDOWS_W, UNROLL_W, POS_DTYPE)
    return acc


@triton.jit
def _relu_lrn_max_pool2d_backward_kernel(
    x_ptr,  # input (N, C, H, W)
    g_ptr,  # grad_output (N, C, OH, OW)
    pos_ptr,  # positions (N, C, OH, OW) written by the forward kernel, uint8
    dx_ptr,  # grad_input (N, C, H, W)
    # shapes; N is covered by the grid
    C,
    H,
    W,
    OH,
    OW,
    # strides over (n, c, h, w), in elements
    x_stride_n,
    x_stride_c,
    x_stride_h,
    x_stride_w,
    g_stride_n,
    g_stride_c,
    g_stride_h,
    g_stride_w,
    pos_stride_n,
    pos_stride_c,
    pos_stride_h,
    pos_stride_w,
    dx_stride_n,
    dx_stride_c,
    dx_stride_h,
    dx_stride_w,
    # pooling parameters (no dilation)
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    # LRN parameters; the window of channel c is [c - lo, c + hi]
    lo,
    hi,
    alpha_over_size: tl.float64,
    beta: tl.float64,
    k: tl.float64,
    grad_coef: tl.float64,  # 2 * alpha * beta / size
    # compile-time options
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    WINDOWS_H: tl.constexpr,  # (KERNEL_H - 1) // stride_h + 1: the most windows over a row
    WINDOWS_W: tl.constexpr,  # (KERNEL_W - 1) // stride_w + 1: the most over a column
    BETA_KIND: tl.constexpr,
    UNROLL_H: tl.constexpr,  # how far to unroll the loop over the windows' rows (1: not)
    UNROLL_W: tl.constexpr,  # and over their columns
    ACC_DTYPE: tl.constexpr,
    WINDOW: tl.constexpr,  # channels of the LRN window read at a time
    POS_DTYPE: tl.constexpr,  # positions are compared in it (int32)
    # tiling: BLOCK_C channels x BLOCK_W columns of one grad_input row
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    image, channels, ih, iw = _row_tile(C, H, W, BLOCK_C, BLOCK_W)
    iw = _wide(iw[None, :])
    inside = iw < W
    x_image = x_ptr + image * x_stride_n
    offsets = ih * x_stride_h + iw * x_stride_w

    # The sum of t_j over the transposed window [c - hi, c + lo], and g_c / q_c on the way:
    # (BLOCK_C, WINDOW, BLOCK_W) tiles of channels j = c + d, WINDOW values of d at a time.
    t_sum = tl.zeros((BLOCK_C, BLOCK_W), ACC_DTYPE)
    g_over_q = tl.zeros((BLOCK_C, BLOCK_W), ACC_DTYPE)
    for first in range(-hi, lo + 1, WINDOW):
        d = first + tl.arange(0, WINDOW)
        j = channels[:, None] + d[None, :]
        valid = ((j >= 0) & (j < C) & (d <= lo)[None, :])[:, :, None] & inside[:, None, :]
        j = j[:, :, None]
        r_j, s_j, q_j = _relu_lrn_at(x_image, j, offsets[:, None, :], valid, C, x_stride_c, lo,
                                     hi, alpha_over_size, beta, k, BETA_KIND, ACC_DTYPE,
                                     (BLOCK_C, WINDOW, BLOCK_W))
        g_j = _pooled_gradient(g_ptr + image * g_stride_n, pos_ptr + image * pos_stride_n, j,
                               ih, iw[:, None, :], valid, OH, OW, g_stride_c, g_stride_h,
                               g_stride_w, pos_stride_c, pos_stride_h, pos_stride_w, stride_h,
                               stride_w, pad_h, pad_w, KERNEL_H, KERNEL_W, WINDOWS_H,
                               WINDOWS_W, UNROLL_H, UNROLL_W, ACC_DTYPE, POS_DTYPE,
                               (BLOCK_C, WINDOW, BLOCK_W))
        g_over_q_j = g_j / q_j
        t_sum += tl.sum(tl.where(valid, g_over_q_j * r_j / s_j, 0.0), axis=1)
        g_over_q += tl.sum(tl.where(valid & (d == 0)[None, :, None], g_over_q_j, 0.0), axis=1)

    mask = (channels < C)[:, None] & inside
    c64 = channels.to(tl.int64)[:, None]
    x = tl.load(x_image + c64 * x_stride_c + offsets, mask=mask).to(ACC_DTYPE)
    # With beta == 0 the cross term is exactly zero, as in torch.pow's gradient, even
    # where t is not finite (s == 0).
    cross = tl.where(grad_coef == 0, 0.0, tl.cast(grad_coef, ACC_DTYPE) * x * t_sum)
    dx = tl.where(x <= 0, 0.0, g_over_q - cross)

    dx_offsets = image * dx_stride_n + c64 * dx_stride_c + ih * dx_stride_h + iw * dx_stride_w
    tl.store(dx_ptr + dx_offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _launch_settings(input, kernel_size, stride, size, alpha, beta, k, rows, width, backward):
    """Grid, LRN arguments and compile-time options of the forward or backward kernel,
    whose tiles cover rows x width of a tensor with input's strides (numbered as
    max_pool.py's _row_tile does)."""
    n, c = input.shape[:2]
    lo, hi = _clipped_window(size, c)
    window = min(triton.next_power_of_2(lo + hi + 1), _MAX_WINDOW)
    block_c, block_w = channel_tile(c, width, input.stride(1) == 1, _TILE // window,
                                    long_block=128, channel_block=32)
    grid = (n * triton.cdiv(c, block_c) * rows * triton.cdiv(width, block_w),)
    # forward loops over each window's taps, backward over the windows over each element
    loops = kernel_size
    if backward:
        loops = [(kernel - 1) // step + 1 for kernel, step in zip(kernel_size, stride)]
    options = {
        "KERNEL_H": kernel_size[0],
        "KERNEL_W": kernel_size[1],
        **({"WINDOWS_H": loops[0], "WINDOWS_W": loops[1]} if backward else {}),
        "BETA_KIND": _beta_kind(beta),
        # loops over at most _MAX_UNROLLED_TAPS taps (or windows) are unrolled
        **{f"UNROLL_{axis}": loop if loops[0] * loops[1] <= _MAX_UNROLLED_TAPS else 1
           for axis, loop in zip("HW", loops)},
        "ACC_DTYPE": acc_dtype(input),
        "WINDOW": window,
        "POS_DTYPE": tl.int32,
        "BLOCK_C": block_c,
        "BLOCK_W": block_w,
    }
    return grid, (lo, hi, alpha / size, beta, k), options


def relu_lrn_max_pool2d_forward(input, output, positions, size, alpha, beta, k, kernel_size,
                                stride, padding):
    """Writes max_pool2d(lrn(relu(input))) into output and, unless positions is None, the
    winner's position in its window into positions; all (N, C, h, w) with any strides."""
    check_dims("input", input, 4)
    check_dims("output", output, 4)
    check_like("output", output, "input", input, 2)
    check_dtype("output", output, "input", input)
    if positions is not None:
        _check_positions(positions, output, "output", kernel_size)
    if output.numel() == 0:
        return
    grid, lrn_args, options = _launch_settings(input, kernel_size, stride, size, alpha, beta,
                                               k, *output.shape[2:], backward=False)
    pos_strides = positions.stride() if positions is not None else (0, 0, 0, 0)
    with on_device_of(input):
        _relu_lrn_max_pool2d_forward_kernel[grid](
            input, output, positions, *input.shape[1:], *output.shape[2:], *input.stride(),
            *output.stride(), *pos_strides, *stride, *padding, *lrn_args,
            WRITE_POSITIONS=positions is not None, **options)


def relu_lrn_max_pool2d_backward(input, grad_output, positions, grad_input, size, alpha, beta,
                                 k, kernel_size, stride, padding):
    """Writes dL/dinput into grad_input from input, grad_output and the forward's
    positions; all (N, C, h, w) with any strides."""
    check_dims("input", input, 4)
    check_dims("grad_output", grad_output, 4)
    check_dims("grad_input", grad_input, 4)
    check_like("grad_output", grad_output, "input", input, 2)
    check_like("grad_input", grad_input, "input", input, 4)
    check_dtype("grad_output", grad_output, "input", input)
    check_dtype("grad_input", grad_input, "input", input)
    _check_positions(positions, grad_output, "grad_output", kernel_size)
    if grad_input.numel() == 0:
        return
    grid, lrn_args, options = _launch_settings(input, kernel_size, stride, size, alpha, beta,
                                               k, *input.shape[2:], backward=True)
    with on_device_of(input):
        _relu_lrn_max_pool2d_backward_kernel[grid](
            input, grad_output, positions, grad_input, *input.shape[1:], *grad_output.shape[2:],
            *input.stride(), *grad_output.stride(), *positions.stride(), *grad_input.stride(),
            *stride, *padding, *lrn_args, 2.0 * alpha * beta / size, **options)
