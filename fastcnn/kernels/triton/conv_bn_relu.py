"""The passes of Conv -> BatchNorm -> ReLU (+ residual) around the convolution, as Triton
kernels (the convolution itself is the vendor's, through ATen).

For y of shape (N, C, S) (the convolution's output), per-channel constants in float32
(float64 for float64 y), M = N * S:

    channel_affine_act:  out = act(y * scale_c + shift_c (+ r))      act: ReLU or identity
    batch_norm_stats:    mean_c, var_c = mean and biased variance of y_c over (N, S)
    backward_reduce:     sum_dz_c = sum dz,  sum_dz_xhat_c = invstd_c * sum dz (y - mean_c)
    backward:            dy = scale_c (dz - sum_dz_c / M) - k_c (y - mean_c),  dr = dz
                         k_c = scale_c * invstd_c * sum_dz_xhat_c / M

with dz = g where y * scale + shift (+ r) > 0 (recomputed; the ReLU's output is never
stored) and 0 elsewhere (dz = g without ReLU). In training, scale = gamma * invstd and
shift = beta - mean * scale.

The elementwise kernels give each program a BLOCK_C x BLOCK_S tile of one image. The
reductions give each program a block of channels and a contiguous share of the
(image, positions) tiles; it keeps running per-channel results, merged tile by tile
(the variance as Chan et al., 1979: each tile's mean and squared deviations from it, so no
large sums of squares cancel; the running merge in float64), and writes one partial result
per share, which the launcher merges in the same way. Strides are arguments, so NCHW,
channels_last and other layouts run without a copy.
"""

import torch
import triton
import triton.language as tl

from fastcnn.kernels.triton._common import (acc_dtype, channel_tile, on_device_of,
                                             tile_coordinates, tile_grid, tile_pointers)

# Elements per program tile.
_TILE = 2048
# Tiles per program of a reduction, at least (fewer programs would each do too little).
_TILES_PER_SHARE = 8
_MAX_SHARES = 256


@triton.jit
def _pre_activation(y, r_ptrs, mask, scale_ptr, shift_ptr, channels, c_mask,
                    ACC_DTYPE: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """y * scale + shift (+ r) in ACC_DTYPE, for a (BLOCK_C, BLOCK_S) tile of y."""
    v = y.to(ACC_DTYPE) * tl.load(scale_ptr + channels, mask=c_mask, other=1.0)[:, None]
    v = v + tl.load(shift_ptr + channels, mask=c_mask, other=0.0)[:, None]
    if HAS_RESIDUAL:
        v = v + tl.load(r_ptrs, mask=mask, other=0.0).to(ACC_DTYPE)
    return v


@triton.jit
def _masked_grad(g, y, r_ptrs, mask, scale_ptr, shift_ptr, channels, c_mask,
                 ACC_DTYPE: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr):
    """dz: g where the ReLU passed its input y * scale + shift (+ r), recomputed (NaN
    passes, as torch's threshold_backward); g itself without ReLU."""
    if RELU:
        v = _pre_activation(y, r_ptrs, mask, scale_ptr, shift_ptr, channels, c_mask, ACC_DTYPE,
                            HAS_RESIDUAL)
        g = tl.where(v <= 0, 0.0, g)
    return g


@triton.jit
def _channel_affine_act_kernel(
    y_ptr,
    scale_ptr,  # (C,)
    shift_ptr,  # (C,)
    r_ptr,  # residual, read when HAS_RESIDUAL
    out_ptr,  # may be y_ptr: every element is read before it is written, by one program
    # shape (N, C, S); N is covered by the grid
    C,
    S,
    # strides over (n, c, s), in elements
    y_stride_n,
    y_stride_c,
    y_stride_s,
    r_stride_n,
    r_stride_c,
    r_stride_s,
    out_stride_n,
    out_stride_c,
    out_stride_s,
    # compile-time options
    HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    image, channels, positions = tile_coordinates(C, S, BLOCK_C, BLOCK_S)
    c_mask = channels < C
    mask = c_mask[:, None] & (positions < S)[None, :]
    y = tl.load(tile_pointers(y_ptr, image, channels, positions, y_stride_n, y_stride_c,
                              y_stride_s), mask=mask)
    r_ptrs = tile_pointers(r_ptr, image, channels, positions, r_stride_n, r_stride_c,
                           r_stride_s)
    v = _pre_activation(y, r_ptrs, mask, scale_ptr, shift_ptr, channels, c_mask, ACC_DTYPE,
                        HAS_RESIDUAL)
    if RELU:
        v = tl.where(v <= 0, 0.0, v)
    out_ptrs = tile_pointers(out_ptr, image, channels, positions, out_stride_n, out_stride_c,
                             out_stride_s)
    tl.store(out_ptrs, v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _share_of_tiles(S, total_tiles, tiles_per_share, BLOCK_C: tl.constexpr,
                    BLOCK_S: tl.constexpr):
    """(channels, first tile, end tile, tiles per image) of this reduction program: grid
    axis 0 picks the block of channels, axis 1 the share of (image, positions) tiles."""
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    first = tl.program_id(1) * tiles_per_share
    end = tl.minimum(first + tiles_per_share, total_tiles)
    return channels, first, end, tl.cdiv(S, BLOCK_S)


@triton.jit
def _batch_norm_stats_kernel(
    y_ptr,
    # outputs, (shares, C) each, float64: count, mean and sum of squared deviations of
    # each share
    partial_count_ptr,
    partial_mean_ptr,
    partial_m2_ptr,
    # shape (N, C, S)
    C,
    S,
    # strides of y over (n, c, s), in elements
    y_stride_n,
    y_stride_c,
    y_stride_s,
    # shares: tiles are (image, block of positions), numbered image-major
    total_tiles,
    tiles_per_share,
    # compile-time options
    ACC_DTYPE: tl.constexpr,
    # tiling
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    channels, first, end, tiles_s = _share_of_tiles(S, total_tiles, tiles_per_share, BLOCK_C,
                                                    BLOCK_S)
    c_mask = channels < C
    # The running merge is in float64: a float32 mean far from zero (1e4, say) carries an
    # absolute error that the squared deviations of every later tile would inherit. It
    # costs a few operations per channel and tile, against BLOCK_S loads.
    count = tl.zeros((BLOCK_C,), tl.float64)
    mean = tl.zeros((BLOCK_C,), tl.float64)
    m2 = tl.zeros((BLOCK_C,), tl.float64)
    for tile in range(first, end):
        image = (tile // tiles_s).to(tl.int64)
        positions = tile % tiles_s * BLOCK_S + tl.arange(0, BLOCK_S)
        s_mask = positions < S
        mask = c_mask[:, None] & s_mask[None, :]
        y = tl.load(tile_pointers(y_ptr, image, channels, positions, y_stride_n, y_stride_c,
                                  y_stride_s), mask=mask, other=0.0).to(ACC_DTYPE)
        tile_count = tl.sum(s_mask.to(ACC_DTYPE), axis=0)
        rough_mean = tl.sum(y, axis=1) / tile_count
        # corrected two-pass: the deviations' own sum corrects the rounded first mean
        deviation = tl.where(mask, y - rough_mean[:, None], 0.0)
        sum_d = tl.sum(deviation, axis=1)
        tile_mean = rough_mean.to(tl.float64) + (sum_d / tile_count).to(tl.float64)
        tile_m2 = (tl.sum(deviation * deviation, axis=1) - sum_d * sum_d / tile_count).to(
            tl.float64)
        # Chan et al.: merge (count, mean, m2) with the tile's
        total = count + tile_count
        delta = tile_mean - mean
        mean += delta * (tile_count / total)
        m2 += tile_m2 + delta * delta * (count * tile_count / total)
        count = total
    out = tl.program_id(1).to(tl.int64) * C + channels
    tl.store(partial_count_ptr + out, count, mask=c_mask)
    tl.store(partial_mean_ptr + out, mean, mask=c_mask)
    tl.store(partial_m2_ptr + out, m2, mask=c_mask)


@triton.jit
def _backward_reduce_kernel(
    g_ptr,
    y_ptr,
    r_ptr,  # residual, read when HAS_RESIDUAL (and RELU: it only matters for the mask)
    scale_ptr,  # (C,) per-channel constants of the forward
    shift_ptr,
    mean_ptr,
    # outputs, (shares, C) each: sum of dz and of dz * (y - mean) of each share
    sum_dz_ptr,
    sum_dz_dy_ptr,
    # shape (N, C, S)
    C,
    S,
    # strides over (n, c, s), in elements
    g_stride_n,
    g_stride_c,
    g_stride_s,
    y_stride_n,
    y_stride_c,
    y_stride_s,
    r_stride_n,
    r_stride_c,
    r_stride_s,
    # shares: tiles are (image, block of positions), numbered image-major
    total_tiles,
    tiles_per_share,
    # compile-time options
    HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    channels, first, end, tiles_s = _share_of_tiles(S, total_tiles, tiles_per_share, BLOCK_C,
                                                    BLOCK_S)
    c_mask = channels < C
    mean = tl.load(mean_ptr + channels, mask=c_mask, other=0.0)[:, None]
    sum_dz = tl.zeros((BLOCK_C, BLOCK_S), ACC_DTYPE)
    sum_dz_dy = tl.zeros((BLOCK_C, BLOCK_S), ACC_DTYPE)
    for tile in range(first, end):
        image = (tile // tiles_s).to(tl.int64)
        positions = tile % tiles_s * BLOCK_S + tl.arange(0, BLOCK_S)
        mask = c_mask[:, None] & (positions < S)[None, :]
        y = tl.load(tile_pointers(y_ptr, image, channels, positions, y_stride_n, y_stride_c,
                                  y_stride_s), mask=mask, other=0.0)
        g = tl.load(tile_pointers(g_ptr, image, channels, positions, g_stride_n, g_stride_c,
                                  g_stride_s), mask=mask, other=0.0).to(ACC_DTYPE)
        r_ptrs = tile_pointers(r_ptr, image, channels, positions, r_stride_n, r_stride_c,
                               r_stride_s)
        g = _masked_grad(g, y, r_ptrs, mask, scale_ptr, shift_ptr, channels, c_mask, ACC_DTYPE,
                         HAS_RESIDUAL, RELU)
        dz = tl.where(mask, g, 0.0)
        sum_dz += dz
        sum_dz_dy += dz * (y.to(ACC_DTYPE) - mean)
    out = tl.program_id(1).to(tl.int64) * C + channels
    tl.store(sum_dz_ptr + out, tl.sum(sum_dz, axis=1), mask=c_mask)
    tl.store(sum_dz_dy_ptr + out, tl.sum(sum_dz_dy, axis=1), mask=c_mask)


@triton.jit
def _backward_kernel(
    g_ptr,
    y_ptr,
    r_ptr,  # residual, read when HAS_RESIDUAL
    dy_ptr,  # output: dL/dy
    dr_ptr,  # output: dL/dresidual = dz, written when WRITE_DR
    # (C,) per-channel constants and sums
    scale_ptr,
    shift_ptr,
    mean_ptr,
    invstd_ptr,
    sum_dz_ptr,
    sum_dz_xhat_ptr,
    count: tl.float64,  # M = N * S
    # shape (N, C, S); N is covered by the grid
    C,
    S,
    # strides over (n, c, s), in elements
    g_stride_n,
    g_stride_c,
    g_stride_s,
    y_stride_n,
    y_stride_c,
    y_stride_s,
    r_stride_n,
    r_stride_c,
    r_stride_s,
    dy_stride_n,
    dy_stride_c,
    dy_stride_s,
    dr_stride_n,
    dr_stride_c,
    dr_stride_s,
    # compile-time options
    HAS_RESIDUAL: tl.constexpr,
    RELU: tl.constexpr,
    WRITE_DR: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    # tiling
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    image, channels, positions = tile_coordinates(C, S, BLOCK_C, BLOCK_S)
    c_mask = channels < C
    mask = c_mask[:, None] & (positions < S)[None, :]
    y = tl.load(tile_pointers(y_ptr, image, channels, positions, y_stride_n, y_stride_c,
                              y_stride_s), mask=mask)
    g = tl.load(tile_pointers(g_ptr, image, channels, positions, g_stride_n, g_stride_c,
                              g_stride_s), mask=mask).to(ACC_DTYPE)
    r_ptrs = tile_pointers(r_ptr, image, channels, positions, r_stride_n, r_stride_c,
                           r_stride_s)
    g = _masked_grad(g, y, r_ptrs, mask, scale_ptr, shift_ptr, channels, c_mask, ACC_DTYPE,
                     HAS_RESIDUAL, RELU)

    scale = tl.load(scale_ptr + channels, mask=c_mask, other=0.0)
    invstd = tl.load(invstd_ptr + channels, mask=c_mask, other=0.0)
    mean = tl.load(mean_ptr + channels, mask=c_mask, other=0.0)
    count = tl.cast(count, ACC_DTYPE)
    mean_dz = tl.load(sum_dz_ptr + channels, mask=c_mask, other=0.0) / count
    k = scale * invstd * tl.load(sum_dz_xhat_ptr + channels, mask=c_mask, other=0.0) / count
    # k == 0 (a frozen BatchNorm): no term at all, so an infinite y gives no NaN
    centred_term = tl.where(k[:, None] == 0, 0.0, k[:, None] * (y.to(ACC_DTYPE) - mean[:, None]))
    dy = scale[:, None] * (g - mean_dz[:, None]) - centred_term
    tl.store(tile_pointers(dy_ptr, image, channels, positions, dy_stride_n, dy_stride_c,
                           dy_stride_s), dy.to(dy_ptr.dtype.element_ty), mask=mask)
    if WRITE_DR:
        tl.store(tile_pointers(dr_ptr, image, channels, positions, dr_stride_n, dr_stride_c,
                               dr_stride_s), g.to(dr_ptr.dtype.element_ty), mask=mask)


def _blocks(y):
    """(BLOCK_C, BLOCK_S) of every kernel here on y, (N, C, S)."""
    return channel_tile(y.shape[1], y.shape[2], y.stride(1) == 1, _TILE, long_block=256,
                        channel_block=64)


def _shares(y, block_c, block_s):
    """Grid, total tiles and tiles per share of a reduction over y."""
    n, c, s = y.shape
    total_tiles = n * triton.cdiv(s, block_s)
    shares = max(1, min(_MAX_SHARES, triton.cdiv(total_tiles, _TILES_PER_SHARE)))
    tiles_per_share = max(1, triton.cdiv(total_tiles, shares))
    shares = max(1, triton.cdiv(total_tiles, tiles_per_share))
    return (triton.cdiv(c, block_c), shares), total_tiles, tiles_per_share


def _strides_or_zeros(t):
    return t.stride() if t is not None else (0, 0, 0)


def channel_affine_act(input, scale, shift, residual, output, relu):
    """Writes act(input * scale + shift (+ residual)) into output (which may be input)."""
    if input.numel() == 0:
        return
    block_c, block_s = _blocks(input)
    with on_device_of(input):
        _channel_affine_act_kernel[tile_grid(input, block_c, block_s)](
            input, scale, shift,
            residual if residual is not None else input, output, input.shape[1],
            input.shape[2], *input.stride(), *_strides_or_zeros(residual), *output.stride(),
            HAS_RESIDUAL=residual is not None, RELU=relu,
            ACC_DTYPE=acc_dtype(input), BLOCK_C=block_c, BLOCK_S=block_s)


def batch_norm_stats(input, mean, var):
    """Writes the per-channel mean and biased variance of input (N, C, S) into mean, var."""
    if input.shape[0] * input.shape[2] == 0:
        raise ValueError(f"batch statistics need at least one value per channel, got input of "
                         f"shape {tuple(input.shape)}")
    block_c, block_s = _blocks(input)
    grid, total_tiles, tiles_per_share = _shares(input, block_c, block_s)
    partial = torch.empty((3, grid[1], input.shape[1]), dtype=torch.float64,
                          device=mean.device)
    counts, means, m2s = partial
    with on_device_of(input):
        _batch_norm_stats_kernel[grid](
            input, counts, means, m2s, input.shape[1], input.shape[2], *input.stride(),
            total_tiles, tiles_per_share, ACC_DTYPE=acc_dtype(input), BLOCK_C=block_c,
            BLOCK_S=block_s)
    # merge the shares' (count, mean, m2), as the kernel merges tiles
    total = counts.sum(0)
    merged_mean = (counts * means).sum(0) / total
    mean.copy_(merged_mean)
    var.copy_((m2s.sum(0) + (counts * (means - merged_mean) ** 2).sum(0)) / total)


def batch_norm_act_backward_reduce(grad_output, input, residual, scale, shift, mean, invstd,
                                   sum_dz, sum_dz_xhat, relu):
    """Writes the per-channel sums of dz and of dz * xhat into sum_dz and sum_dz_xhat."""
    block_c, block_s = _blocks(input)
    grid, total_tiles, tiles_per_share = _shares(input, block_c, block_s)
    partial = torch.zeros((2, grid[1], input.shape[1]), dtype=mean.dtype, device=mean.device)
    with on_device_of(input):
        if total_tiles > 0:
            _backward_reduce_kernel[grid](
                grad_output, input, residual if residual is not None else input, scale, shift,
                mean, partial[0], partial[1], input.shape[1], input.shape[2],
                *grad_output.stride(), *input.stride(), *_strides_or_zeros(residual),
                total_tiles, tiles_per_share, HAS_RESIDUAL=residual is not None, RELU=relu,
                ACC_DTYPE=acc_dtype(input), BLOCK_C=block_c, BLOCK_S=block_s)
    sums = partial.sum(1)
    sum_dz.copy_(sums[0])
    sum_dz_xhat.copy_(sums[1] * invstd)


def batch_norm_act_backward(grad_output, input, residual, scale, shift, mean, invstd, sum_dz,
                            sum_dz_xhat, grad_input, grad_residual, relu):
    """Writes dL/dinput into grad_input and, when given, the masked gradient dz into
    grad_residual."""
    if input.numel() == 0:
        return
    block_c, block_s = _blocks(input)
    with on_device_of(input):
        _backward_kernel[tile_grid(input, block_c, block_s)](
            grad_output, input, residual if residual is not None else input, grad_input,
            grad_residual if grad_residual is not None else grad_input, scale, shift, mean,
            invstd, sum_dz, sum_dz_xhat, float(input.shape[0] * input.shape[2]),
            input.shape[1], input.shape[2], *grad_output.stride(), *input.stride(),
            *_strides_or_zeros(residual), *grad_input.stride(), *_strides_or_zeros(grad_residual),
            HAS_RESIDUAL=residual is not None, RELU=relu, WRITE_DR=grad_residual is not None,
            ACC_DTYPE=acc_dtype(input), BLOCK_C=block_c, BLOCK_S=block_s)
