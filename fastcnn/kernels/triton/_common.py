"""Pieces shared by the Triton kernel files: where a launch runs, the shape of a
(channels x positions) tile and how a 1-d grid of them is numbered, the dtype kernels
accumulate in, and the launchers' argument checks."""

import contextlib

import torch
import triton
import triton.language as tl


def on_device_of(tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def acc_dtype(t):
    """The dtype kernels accumulate and compare in for t: float64 for float64, else float32
    (so half-precision sums do not round at every step)."""
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def channel_tile(channels, length, channels_contiguous, tile, long_block, channel_block):
    """(BLOCK_C, BLOCK_L), powers of two, of a tile of at most `tile` elements over channels
    x another axis of the given length. The tile runs long along the axis with stride 1,
    which Triton specialises and makes the contiguous one: with contiguous channels (more
    than one) it takes up to channel_block channels and fills the tile along the other axis;
    otherwise up to long_block of the other axis, filled with channels."""
    length = triton.next_power_of_2(max(length, 1))
    if channels_contiguous and channels > 1:
        block_c = min(triton.next_power_of_2(channels), channel_block)
        block_l = min(length, tile // block_c)
    else:
        block_l = min(length, long_block)
        block_c = min(triton.next_power_of_2(channels), max(tile // block_l, 1))
    return block_c, block_l


def tile_grid(t, block_c, block_s):
    """The 1-d grid of BLOCK_C x BLOCK_S tiles over t, (N, C, S), that tile_coordinates
    numbers."""
    n, c, s = t.shape
    return (n * triton.cdiv(c, block_c) * triton.cdiv(s, block_s),)


@triton.jit
def tile_coordinates(C, S, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """(image, channels, positions) of this program's tile of an (N, C, S) tensor; the grid
    is 1-d, positions varying fastest, then channels, then images."""
    pid = tl.program_id(0)
    tiles_s = tl.cdiv(S, BLOCK_S)
    tiles_c = tl.cdiv(C, BLOCK_C)
    image = pid // (tiles_s * tiles_c)
    channels = (pid // tiles_s) % tiles_c * BLOCK_C + tl.arange(0, BLOCK_C)
    positions = pid % tiles_s * BLOCK_S + tl.arange(0, BLOCK_S)
    return image.to(tl.int64), channels, positions


@triton.jit
def tile_pointers(ptr, image, channels, positions, stride_n, stride_c, stride_s):
    """Pointers (BLOCK_C, BLOCK_S) into an (N, C, S) tensor at one image (an int64 scalar),
    channels (BLOCK_C,) and positions (BLOCK_S,), with 64-bit offsets."""
    return (ptr + image * stride_n + channels.to(tl.int64)[:, None] * stride_c +
            positions.to(tl.int64)[None, :] * stride_s)


def check_strided(name, t):
    """t is an ordinary dense tensor: the kernels read it through its data pointer and
    strides, which other layouts (mkldnn, sparse) do not have."""
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a strided (dense) tensor, got layout {t.layout} "
                         f"(convert it with .to_dense() first)")


def check_dims(name, t, dims):
    """t is a strided tensor of dims dimensions."""
    check_strided(name, t)
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(t.shape)}")


def check_like(name, t, other_name, other, dims):
    """t has other's first dims sizes."""
    if t.shape[:dims] != other.shape[:dims]:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not match {other_name} of "
                         f"shape {tuple(other.shape)} in its first {dims} dimensions")


def check_dtype(name, t, other_name, other):
    if t.dtype != other.dtype:
        raise ValueError(f"{name} must have the dtype of {other_name}, {other.dtype}, got "
                         f"{t.dtype}")

