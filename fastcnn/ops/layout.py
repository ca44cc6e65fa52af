"""How ops see their tensors: as (N, C, S) strided views, with no copy where possible.

Every kernel (C++, Triton, reference) takes (batch, channel, flattened spatial) views and
writes into outputs allocated here, so that one rule decides output layouts for all
backends and for the fake tensors torch.compile traces with.
"""

import math

import torch


def is_channels_last(t):
    """Whether t's channels are innermost (channels_last, or a slice of it) and it is not
    NCHW-contiguous too: the one rule by which ops give their outputs t's layout where they
    allocate them by hand (pooled sizes, (N, C, 1, 1) results, gradients)."""
    return t.size(1) > 1 and t.stride(1) == 1 and not t.is_contiguous()


def channel_view(t):
    """t of shape (N, C, *spatial) as an (N, C, S) view, or None when its spatial
    dimensions do not share one stride (then only a copy can flatten them)."""
    if t.is_contiguous():  # the common case, without the loop below
        return t.view(t.shape[0], t.shape[1], -1) if t.numel() else \
            t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))
    sizes, strides = t.shape, t.stride()
    stride_s, expected, spatial = 1, None, 1
    for d in range(len(sizes) - 1, 1, -1):  # plain loops: this runs on every call
        size, stride = sizes[d], strides[d]
        spatial *= size
        if size == 1:
            continue
        if expected is None:
            stride_s = stride
        elif stride != expected:
            return None
        expected = stride * size
    return t.as_strided((sizes[0], sizes[1], spatial), (strides[0], strides[1], stride_s))


def channel_view_or_copy(t):
    """channel_view(t), copying t to a contiguous tensor first when it has no such view."""
    view = channel_view(t)
    return view if view is not None else channel_view(t.contiguous())


def empty_output(t):
    """An uninitialised tensor shaped like t whose channel_view exists: t's own layout
    (NCHW, channels_last, ...) wherever that allows it, contiguous otherwise."""
    if channel_view(t) is None:
        return torch.empty_like(t, memory_format=torch.contiguous_format)
    return torch.empty_like(t)
