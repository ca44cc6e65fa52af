"""Concatenation as a torch.library custom op, with torch.cat's output shape and layout.

fastcnn::concat_forward runs one backend's kernel, named by its last argument (chosen by
fastcnn.backends.select before the call), which copies every input into its slice of an
output allocated here. Its inputs all have the output's dtype (fastcnn.functional.concat
converts them first); 1-d tensors of shape (0,) among them are skipped, as torch.cat
skips them. The fake implementation gives torch.compile the same output without running
anything.
"""

from typing import List

import torch

from fastcnn import backends
from fastcnn.ops._custom_op import custom_op

# The memory formats that c10's stride test can suggest, by rank, with the order in which
# it walks the dimensions, innermost first (channels, then space from the last, then batch).
_CHANNELS_LAST_ORDERS = {
    4: (torch.channels_last, (1, 3, 2, 0)),
    5: (torch.channels_last_3d, (1, 4, 3, 2, 0)),
}


def is_skipped(t):
    """Whether torch.cat skips t: a 1-d tensor of shape (0,), from before PyTorch had
    empty tensors of other shapes, is left out of the shape checks and the result."""
    return t.dim() == 1 and t.shape[0] == 0


def _suggested_memory_format(t):
    """What PyTorch's Tensor.suggest_memory_format() gives: channels_last (channels_last_3d)
    for a 4-d (5-d) tensor whose strides, walked from the channels outwards, never
    decrease (with no empty dimension, channels not of stride 0, and the batch not of the
    channels' stride), else contiguous_format."""
    known = _CHANNELS_LAST_ORDERS.get(t.dim())
    if known is None:
        return torch.contiguous_format
    memory_format, order = known
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return torch.contiguous_format
    smallest = 0
    for d in order:
        if sizes[d] == 0 or strides[d] < smallest or (d == 0 and smallest == strides[1]):
            return torch.contiguous_format
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return memory_format


def output_memory_format(tensors):
    """torch.cat's layout rule: the memory format that every input suggests (skipped ones
    included), contiguous_format if any suggests it or two differ. So channels_last
    inputs (sliced ones too) give a channels_last output, and a single NCHW or (0,) input
    among them a contiguous one."""
    chosen = None
    for t in tensors:
        suggested = _suggested_memory_format(t)
        if suggested == torch.contiguous_format or (chosen is not None and chosen != suggested):
            return torch.contiguous_format
        chosen = suggested
    return chosen


def empty_output(inputs, dim):
    """The uninitialised output of concatenating inputs along dim: the shape of the first
    input not skipped with the sizes along dim added up ((0,) if all are skipped), the
    inputs' dtype and device, torch.cat's memory format."""
    kept = [t for t in inputs if not is_skipped(t)]
    shape = [0]
    if kept:
        shape = list(kept[0].shape)
        shape[dim] = sum(t.shape[dim] for t in kept)
    return torch.empty(shape, dtype=inputs[0].dtype, device=inputs[0].device,
                       memory_format=output_memory_format(inputs))


def _fake_concat_forward(inputs, dim, backend):
    return empty_output(inputs, dim)


@custom_op("fastcnn::concat_forward", fake=_fake_concat_forward)
def concat_forward(inputs: List[torch.Tensor], dim: int, backend: str) -> torch.Tensor:
    """inputs (of one dtype and device, each of the output's rank and of its sizes outside
    dim, or skipped) concatenated along dim (>= 0)."""
    backends.report_fallback("concat", backend, inputs[0].device)
    output = empty_output(inputs, dim)
    if output.numel() > 0:
        backends.kernels(backend).concat_forward(
            [t for t in inputs if not is_skipped(t)], output, dim)
    return output
