"""Pieces shared by the Triton kernel files: where a launch runs and how a 1-d grid of
(channels x positions) tiles is numbered."""

import contextlib

import torch
import triton
import triton.language as tl


def on_device_of(tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


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
