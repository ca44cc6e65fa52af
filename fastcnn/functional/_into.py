"""Results written straight into slices of one preallocated tensor (the output of an
Inception module's concatenation, a DenseNet block's feature buffer), and the gradient
handed back to each slice as a view: concatenation without `torch.cat`'s copies.

An op that can write its result where it is told takes an `Into` naming the destination.
The destination reaches the op's autograd Function as a plain object, not as a tensor
argument, so autograd does not take the write for an in-place change of the whole tensor
(its CopySlices backward would copy the whole gradient once per slice): the Function
returns the destination as a new output of its own. `join` then makes the whole tensor the
output of a Function whose backward gives each slice's producer `grad.narrow(...)`, a view.
"""

import torch


class Into:
    """The destination of an op's result: a tensor of the result's shape and dtype,
    usually a channel slice of a larger one, written by the op and returned by it."""

    __slots__ = ("tensor",)

    def __init__(self, tensor):
        # A detached alias: the Function that writes it becomes its producer, whatever the
        # caller's tensor was. It shares the whole tensor's version counter, so that an
        # in-place change of the whole after the forward invalidates slices saved for
        # backward (DenseNet's layers save theirs).
        self.tensor = tensor.detach()


def has_forward_hooks(module):
    """Whether forward hooks are registered on module: then only its own forward (called
    as module(x)) runs them, and a fused path must not stand in for it."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def wants_grad(*tensors):
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors)


def write(destination, value):
    """Copies value into the destination's memory without counting it as a change of the
    tensor it belongs to (no version bump): the slices a forward fills are written once,
    before anything reads them, and other slices saved for backward must stay valid."""
    destination.data.copy_(value)


class CopyIntoFunction(torch.autograd.Function):
    """z copied into its destination, for a result no kernel could write there itself; the
    gradient passes through unchanged."""

    @staticmethod
    def forward(ctx, z, into):
        write(into.tensor, z)
        return into.tensor

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def copy_into(z, into):
    """z written into `into` (an Into), returned as the tensor there."""
    if wants_grad(z):
        return CopyIntoFunction.apply(z, into)
    write(into.tensor, z)
    return into.tensor


class JoinFunction(torch.autograd.Function):
    """The whole tensor as the output of its slices, already written into it; backward
    gives each slice its part of the gradient as a view (no copy)."""

    @staticmethod
    def forward(ctx, whole, dim, *parts):
        ctx.dim = dim
        ctx.sizes = [part.shape[dim] for part in parts]
        return whole.tensor

    @staticmethod
    def backward(ctx, grad):
        return (None, None, *slices(grad, ctx.sizes, ctx.dim))


def slices(t, sizes, dim=1):
    """t's consecutive slices along dim of the given sizes, as views."""
    views, offset = [], 0
    for size in sizes:
        views.append(t.narrow(dim, offset, size))
        offset += size
    return views


def join(whole, parts, dim=1):
    """`whole`, whose slices along dim are `parts` in order (each returned by an op that
    wrote it there), as one tensor that autograd differentiates through the parts."""
    if not wants_grad(*parts):
        return whole
    return JoinFunction.apply(Into(whole), dim, *parts)
