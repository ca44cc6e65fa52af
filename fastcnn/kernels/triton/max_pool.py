"""Max-pooling (overlapping windows: Krizhevsky et al., 2012, section 3.4) as Triton kernels.

Output (oh, ow) of input x (N, C, H, W) looks at the taps (kh, kw) of a kernel_h x kernel_w
window,

    ih = oh * stride_h - pad_h + kh * dil_h,    iw = ow * stride_w - pad_w + kw * dil_w,

skipping those outside [0, H) x [0, W) (padding never wins). The taps are scanned in
row-major order from the state (-inf, first in-bounds tap); a tap v replaces the state when
v > max or v is NaN. So, as in PyTorch, a tie goes to the first maximum, the last NaN wins,
and a window of -inf reports its first in-bounds tap (a dilated window with no tap in the
input gives -inf at its first tap past the top and left padding, as PyTorch's kernels
do: no input element takes its gradient). The winner's position in its window,
p = kh * kernel_w + kw, is written for backward (one byte for windows of up to 256 taps,
int64 for windows of more than 2^31 - 1), or nothing at all for inference.

Kernel, stride, padding and dilation may each be up to 2^31 - 1 (PyTorch's limit), so
window coordinates are int64, and windows of more than _MAX_UNROLLED_TAPS taps loop only
over their taps in the input (forward) or the windows over each element (backward): no
loop is longer than the input or output.

Backward gathers instead of scattering: grad_input (ih, iw) is the sum of grad_output
(oh, ow) over the windows that hold it at tap (kh, kw) and picked that tap,

    oh = (ih + pad_h - kh * dil_h) / stride_h,    ow = (iw + pad_w - kw * dil_w) / stride_w,

where the divisions are exact and land in [0, OH) x [0, OW). Every grad_input element is
written once by one program, with no atomics, adding in increasing (oh, ow) order, as
PyTorch's CPU kernel does. Both kernels own a BLOCK_C x BLOCK_W tile of one row of their
output (channels x columns), so the row of each tap is one scalar for the whole tile.

Comparison and the gradient's sums are in float32 (float64 for float64), so the max is
the input's value bit for bit. Strides are arguments, so NCHW, channels_last and sliced
tensors run without a layout copy; the tile runs long along the axis with stride 1 (columns
in NCHW, channels in channels_last), which Triton specialises and makes the contiguous one.
"""

import torch
import triton
import triton.language as tl

from fastcnn.kernels.triton._common import (acc_dtype, channel_tile, check_dims, check_dtype,
                                             check_like, on_device_of)

# Elements per program tile.
_TILE = 1024

# Windows with more taps than this loop at run time over their taps in the input (forward)
# or the windows over each input element (backward) instead of unrolling every tap.
_MAX_UNROLLED_TAPS = 64

# Positions are int32 up to this many taps per window, int64 beyond (kernel sizes near 2^31).
_MAX_INT32_POSITIONS = 2**31 - 1


@triton.jit
def _wide(v):
    """v (a run-time int or a compile-time constant) as an int64 scalar: kernel, stride,
    padding and dilation may each be up to 2^31 - 1, so their products need 64 bits."""
    return tl.full((), 0, tl.int64) + v


@triton.jit
def _row_tile(C, rows, width, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr):
    """(image, channels, row, columns) of this program's tile of one output row; the grid
    is 1-d, columns varying fastest, then rows, channels and images."""
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(width, BLOCK_W)
    tiles_c = tl.cdiv(C, BLOCK_C)
    columns = pid % tiles_w * BLOCK_W + tl.arange(0, BLOCK_W)
    row = pid // tiles_w % rows
    channels = pid // (tiles_w * rows) % tiles_c * BLOCK_C + tl.arange(0, BLOCK_C)
    image = pid // (tiles_w * rows * tiles_c)
    return image.to(tl.int64), channels, row.to(tl.int64), columns


@triton.jit
def _first_in_bounds_tap(start, dilation):
    """Index of the first tap of a window starting at start (< 0 with padding) that is
    not left of the input."""
    return tl.where(start < 0, (dilation - 1 - start) // dilation, 0)


@triton.jit
def _ceil_div(a, b):
    """ceil(a / b) for b > 0 and a of any sign."""
    return tl.where(a > 0, (a + b - 1) // b, -((-a) // b))


@triton.jit
def _take_tap(best, position, x_channels, ih, iw, H, W, x_stride_h, x_stride_w, mask, tap):
    """The max-pooling state (best, position) of the tile's windows after their tap number
    `tap`, which is at row ih (a scalar) and columns iw of the input channels x_channels."""
    valid = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    v = tl.load(x_channels + ih * x_stride_h + iw.to(tl.int64) * x_stride_w, mask=valid,
                other=float("-inf"))
    v = v.to(best.dtype)
    take = valid & ((v > best) | (v != v))
    return tl.where(take, v, best), tl.where(take, tap, position)


@triton.jit
def _max_pool2d_forward_kernel(
    x_ptr,  # input (N, C, H, W)
    y_ptr,  # output (N, C, OH, OW)
    pos_ptr,  # positions (N, C, OH, OW), uint8, int32 or int64; None without WRITE_POSITIONS
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
    # pooling parameters
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    # compile-time options
    WRITE_POSITIONS: tl.constexpr,  # False at inference: no positions are computed
    UNROLL: tl.constexpr,  # unroll the loops over the taps
    ACC_DTYPE: tl.constexpr,  # the max is taken in it, exactly
    POS_DTYPE: tl.constexpr,  # positions are numbered in it: int32, or int64 for huge windows
    # tiling: BLOCK_C channels x BLOCK_W columns of one output row
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    image, channels, oh, ow = _row_tile(C, OH, OW, BLOCK_C, BLOCK_W)
    channels64 = channels.to(tl.int64)[:, None]
    ow = ow[None, :]
    mask = (channels < C)[:, None] & (ow < OW)
    dil_h64, dil_w64 = _wide(dil_h), _wide(dil_w)
    start_h = oh * stride_h - pad_h
    start_w = _wide(ow) * stride_w - pad_w
    x_channels = x_ptr + image * x_stride_n + channels64 * x_stride_c

    best = tl.full((BLOCK_C, BLOCK_W), float("-inf"), ACC_DTYPE)
    first_h = _first_in_bounds_tap(start_h, dil_h64)
    first_w = _first_in_bounds_tap(start_w, dil_w64)
    position = tl.broadcast_to((first_h * KERNEL_W + first_w).to(POS_DTYPE), (BLOCK_C, BLOCK_W))
    if UNROLL:
        for kh in tl.static_range(KERNEL_H):
            for kw in tl.static_range(KERNEL_W):
                best, position = _take_tap(best, position, x_channels, start_h + kh * dil_h64,
                                           start_w + kw * dil_w64, H, W, x_stride_h,
                                           x_stride_w, mask, kh * KERNEL_W + kw)
    else:
        # Only the taps in the input: the rows of the window's (one range for the tile),
        # and, from each column's first tap in the input, as many taps as a row can hold.
        end_h = tl.minimum(KERNEL_H, (H - 1 - start_h) // dil_h64 + 1)
        taps_w = tl.minimum(KERNEL_W, (W - 1) // dil_w64 + 1)
        for kh in range(first_h, end_h):
            kh64 = _wide(kh)
            for j in range(0, taps_w):
                kw = first_w + j
                best, position = _take_tap(best, position, x_channels, start_h + kh64 * dil_h64,
                                           start_w + kw * dil_w64, H, W, x_stride_h,
                                           x_stride_w, mask & (kw < KERNEL_W),
                                           (kh64 * KERNEL_W + kw).to(POS_DTYPE))

    ow64 = ow.to(tl.int64)
    y_offsets = (image * y_stride_n + channels64 * y_stride_c + oh * y_stride_h +
                 ow64 * y_stride_w)
    tl.store(y_ptr + y_offsets, best.to(y_ptr.dtype.element_ty), mask=mask)
    if WRITE_POSITIONS:
        pos_offsets = (image * pos_stride_n + channels64 * pos_stride_c + oh * pos_stride_h +
                       ow64 * pos_stride_w)
        tl.store(pos_ptr + pos_offsets, position.to(pos_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gather_window(acc, g_channels, pos_channels, oh, ow, valid, g_stride_h, g_stride_w,
                   pos_stride_h, pos_stride_w, tap, POS_DTYPE: tl.constexpr):
    """acc plus grad_output at the windows (oh, a scalar; ow) where valid, when they
    picked their tap number `tap`; oh and ow are int64."""
    picked = tl.load(pos_channels + oh * pos_stride_h + ow * pos_stride_w, mask=valid,
                     other=0).to(POS_DTYPE)
    hit = valid & (picked == tap)
    g = tl.load(g_channels + oh * g_stride_h + ow * g_stride_w, mask=hit, other=0.0)
    return acc + g.to(acc.dtype)


@triton.jit
def _gather_tap(acc, g_channels, pos_channels, oh_scaled, q_w, r_w, shift_w, mask, OH, OW,
                stride_h, stride_w, g_stride_h, g_stride_w, pos_stride_h, pos_stride_w, tap,
                POS_DTYPE: tl.constexpr):
    """acc plus grad_output at the windows that hold the tile's elements at their tap
    number `tap` and picked it. The tap is oh_scaled = ih + pad_h - kh * dil_h (a scalar)
    and shift_w = kw * dil_w, and iw + pad_w = q_w * stride_w + r_w (all int64)."""
    oh = oh_scaled // stride_h
    # ow = (iw + pad_w - shift_w) / stride_w where exact, with no vector division
    ow = q_w - shift_w // stride_w
    valid = (mask & (oh_scaled >= 0) & (oh_scaled % stride_h == 0) & (oh < OH) &
             (r_w == shift_w % stride_w) & (ow >= 0) & (ow < OW))
    return _gather_window(acc, g_channels, pos_channels, oh, ow, valid, g_stride_h,
                          g_stride_w, pos_stride_h, pos_stride_w, tap, POS_DTYPE)


@triton.jit
def _max_pool2d_backward_kernel(
    g_ptr,  # grad_output (N, C, OH, OW)
    pos_ptr,  # positions (N, C, OH, OW) written by the forward kernel, uint8, int32 or int64
    dx_ptr,  # grad_input (N, C, H, W)
    # shapes; N is covered by the grid
    C,
    H,
    W,
    OH,
    OW,
    # strides over (n, c, h, w), in elements
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
    # pooling parameters
    stride_h,
    stride_w,
    pad_h,
    pad_w,
    dil_h,
    dil_w,
    KERNEL_H: tl.constexpr,
    KERNEL_W: tl.constexpr,
    # compile-time options
    UNROLL: tl.constexpr,  # unroll the loops over the taps
    ACC_DTYPE: tl.constexpr,
    POS_DTYPE: tl.constexpr,  # positions are compared in it: int32, or int64 for huge windows
    # tiling: BLOCK_C channels x BLOCK_W columns of one grad_input row
    BLOCK_C: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    image, channels, ih, iw = _row_tile(C, H, W, BLOCK_C, BLOCK_W)
    channels64 = channels.to(tl.int64)[:, None]
    iw = _wide(iw[None, :])
    mask = (channels < C)[:, None] & (iw < W)
    g_channels = g_ptr + image * g_stride_n + channels64 * g_stride_c
    pos_channels = pos_ptr + image * pos_stride_n + channels64 * pos_stride_c
    dil_h64, dil_w64 = _wide(dil_h), _wide(dil_w)
    t_h = ih + pad_h  # oh * stride_h + kh * dil_h for each window (oh, kh) over row ih
    t_w = iw + pad_w

    # Windows in increasing (oh, ow) order: taps in decreasing (kh, kw) order.
    acc = tl.zeros((BLOCK_C, BLOCK_W), ACC_DTYPE)
    if UNROLL:
        q_w = t_w // stride_w
        r_w = t_w % stride_w
        for i in tl.static_range(KERNEL_H):
            for j in tl.static_range(KERNEL_W):
                kh, kw = KERNEL_H - 1 - i, KERNEL_W - 1 - j
                acc = _gather_tap(acc, g_channels, pos_channels, t_h - kh * dil_h64, q_w, r_w,
                                  kw * dil_w64, mask, OH, OW, stride_h, stride_w, g_stride_h,
                                  g_stride_w, pos_stride_h, pos_stride_w, kh * KERNEL_W + kw,
                                  POS_DTYPE)
    else:
        # Only the windows over the tile: the output rows whose windows reach row ih (one
        # range for the tile), and, from each column's first such window, as many as can
        # hold one element.
        oh_lo = tl.maximum(_ceil_div(t_h - (KERNEL_H - 1) * dil_h64, stride_h), 0)
        oh_hi = tl.minimum(t_h // stride_h, OH - 1)
        ow_lo = tl.maximum(_ceil_div(t_w - (KERNEL_W - 1) * dil_w64, stride_w), 0)
        ow_hi = tl.minimum(t_w // stride_w, OW - 1)
        windows_w = tl.minimum(((KERNEL_W - 1) * dil_w64) // stride_w + 1, OW)
        for oh in range(oh_lo, oh_hi + 1):
            kh_scaled = t_h - _wide(oh) * stride_h
            kh = kh_scaled // dil_h64
            for j in range(0, windows_w):
                ow = ow_lo + j
                kw_scaled = t_w - ow * stride_w
                valid = (mask & (kh_scaled % dil_h64 == 0) & (ow <= ow_hi) &
                         (kw_scaled % dil_w64 == 0))
                acc = _gather_window(acc, g_channels, pos_channels, _wide(oh), ow, valid,
                                     g_stride_h, g_stride_w, pos_stride_h, pos_stride_w,
                                     (kh * KERNEL_W + kw_scaled // dil_w64).to(POS_DTYPE),
                                     POS_DTYPE)

    dx_offsets = (image * dx_stride_n + channels64 * dx_stride_c + ih * dx_stride_h +
                  iw * dx_stride_w)
    tl.store(dx_ptr + dx_offsets, acc.to(dx_ptr.dtype.element_ty), mask=mask)


def _row_launch(t, kernel_size, channels, rows, width):
    """Grid and compile-time options of a max-pooling kernel whose tiles cover rows x
    width of t, a 4-d tensor whose strides pick the tiling."""
    block_c, block_w = channel_tile(channels, width, t.stride(1) == 1, _TILE, long_block=128,
                                    channel_block=32)
    grid = (t.shape[0] * triton.cdiv(channels, block_c) * rows * triton.cdiv(width, block_w),)
    options = {
        "KERNEL_H": kernel_size[0],
        "KERNEL_W": kernel_size[1],
        "UNROLL": kernel_size[0] * kernel_size[1] <= _MAX_UNROLLED_TAPS,
        "POS_DTYPE": _position_dtype(kernel_size),
        "BLOCK_C": block_c,
        "BLOCK_W": block_w,
    }
    return grid, options


def _position_dtype(kernel_size):
    """The Triton dtype the kernels number a window's taps in."""
    return tl.int32 if kernel_size[0] * kernel_size[1] <= _MAX_INT32_POSITIONS else tl.int64


def _check_positions(positions, output, output_name, kernel_size):
    check_dims("positions", positions, 4)
    check_like("positions", positions, output_name, output, 4)
    taps = kernel_size[0] * kernel_size[1]
    allowed = ([torch.uint8] if taps <= 256 else []) + \
        ([torch.int32] if taps <= _MAX_INT32_POSITIONS else []) + [torch.int64]
    if positions.dtype not in allowed:
        raise ValueError(f"positions must be {' or '.join(map(str, allowed))} for a window of "
                         f"{taps} taps, got {positions.dtype}")


def max_pool2d_forward(input, output, positions, kernel_size, stride, padding, dilation):
    """Writes max_pool2d(input) into output and, unless positions is None, the winner's
    position in its window into positions; all (N, C, h, w) with any strides."""
    check_dims("input", input, 4)
    check_dims("output", output, 4)
    check_like("output", output, "input", input, 2)
    check_dtype("output", output, "input", input)
    if positions is not None:
        _check_positions(positions, output, "output", kernel_size)
    if output.numel() == 0:
        return
    n, c, h, w = input.shape
    oh, ow = output.shape[2:]
    grid, options = _row_launch(input, kernel_size, c, oh, ow)
    pos_strides = positions.stride() if positions is not None else (0, 0, 0, 0)
    with on_device_of(input):
        _max_pool2d_forward_kernel[grid](
            input, output, positions, c, h, w, oh, ow, *input.stride(), *output.stride(),
            *pos_strides, *stride, *padding, *dilation,
            WRITE_POSITIONS=positions is not None, ACC_DTYPE=acc_dtype(input), **options)


def max_pool2d_backward(grad_output, positions, grad_input, kernel_size, stride, padding,
                        dilation):
    """Writes dL/dinput into grad_input from grad_output and the forward's positions,
    gathering over the windows that hold each input element; any strides."""
    check_dims("grad_output", grad_output, 4)
    check_dims("grad_input", grad_input, 4)
    check_like("grad_input", grad_input, "grad_output", grad_output, 2)
    check_dtype("grad_input", grad_input, "grad_output", grad_output)
    _check_positions(positions, grad_output, "grad_output", kernel_size)
    if grad_input.numel() == 0:
        return
    n, c, h, w = grad_input.shape
    grid, options = _row_launch(grad_input, kernel_size, c, h, w)
    with on_device_of(grad_input):
        _max_pool2d_backward_kernel[grid](
            grad_output, positions, grad_input, c, h, w, *grad_output.shape[2:],
            *grad_output.stride(), *positions.stride(), *grad_input.stride(), *stride,
            *padding, *dilation, ACC_DTYPE=acc_dtype(grad_input), **options)
