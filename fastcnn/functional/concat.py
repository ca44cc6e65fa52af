"""concat: torch.cat from the fastcnn kernels, one kernel launch for all inputs forward and
views of the gradient backward."""

import functools
import operator

import torch

from fastcnn import backends, ops
from fastcnn.ops.concat import is_skipped

_INT64 = range(-2**63, 2**63)


class ConcatFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, dim, *tensors):
        backend = backends.select("concat", tensors[0])
        output = ops.concat_forward(list(tensors), dim, backend)
        # Backward needs only where each input's slice is: no tensor is kept.
        ctx.dim = dim
        ctx.sizes = [None if is_skipped(t) else t.shape[dim] for t in tensors]
        return output

    @staticmethod
    def backward(ctx, grad_output):
        # Each input's gradient is its slice of grad_output, a view: no copy, no kernel
        # (and, being PyTorch's narrow, differentiable for second derivatives).
        grads, offset = [], 0
        for size, needed in zip(ctx.sizes, ctx.needs_input_grad[1:]):
            if size is None:  # a skipped (0,) tensor: an empty gradient, as torch.cat's
                grads.append(grad_output.new_zeros(0) if needed else None)
                continue
            grads.append(grad_output.narrow(ctx.dim, offset, size) if needed else None)
            offset += size
        return (None, *grads)


def _check_tensors(tensors):
    if not isinstance(tensors, (tuple, list)):
        raise TypeError(f"concat(): tensors must be a tuple or list of tensors, got "
                        f"{type(tensors).__name__}")
    if not tensors:
        raise ValueError("concat(): tensors must be a non-empty tuple or list of tensors, got "
                         f"an empty {type(tensors).__name__}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"concat(): tensors[{i}] must be a torch.Tensor, got "
                            f"{type(t).__name__}")


def _kernels_take(t):
    """Whether the kernels take t: a dense tensor with a data pointer and strides, whose
    bytes are its values (not quantized)."""
    return t.layout == torch.strided and not t.is_nested and not t.is_quantized


def _check_dim(dim):
    """dim as an int: an int, or anything torch takes as one (a NumPy integer, a 0-d
    integer tensor), but not a bool."""
    if isinstance(dim, bool):
        raise TypeError("concat(): dim must be an int, got bool")
    try:
        dim = operator.index(dim)
    except TypeError:
        raise TypeError(f"concat(): dim must be an int, got {type(dim).__name__} "
                        f"{dim!r}") from None
    if dim not in _INT64:
        raise IndexError(f"concat(): dim {dim} is out of range (not a 64-bit integer)")
    return dim


def _check_shapes(tensors, dim):
    """dim, made non-negative, once the tensors are checked to concatenate along it:
    every one not skipped has the rank and, outside dim, the sizes of the first of them.
    Raises as torch.cat does: IndexError for dim, RuntimeError for the tensors."""
    kept = [i for i, t in enumerate(tensors) if not is_skipped(t)]
    if not kept:
        return 0  # only skipped tensors: torch.cat gives (0,) whatever dim is
    first = tensors[kept[0]]
    rank = first.dim()
    if not -rank <= dim < rank:
        raise IndexError(f"concat(): dim {dim} is out of range for the {rank}-d tensors "
                         f"(expected one in [{-rank}, {rank - 1}])")
    dim %= rank
    expected = tuple("*" if d == dim else size for d, size in enumerate(first.shape))
    for i in kept[1:]:
        t = tensors[i]
        if t.dim() != rank:
            raise RuntimeError(
                f"concat(): tensors[{i}] has {t.dim()} dimensions (shape {tuple(t.shape)}) "
                f"but tensors[{kept[0]}] has {rank} (shape {tuple(first.shape)}); all must "
                f"have the same number, but 1-d tensors of shape (0,), which are skipped")
        if t.shape[:dim] != first.shape[:dim] or t.shape[dim + 1:] != first.shape[dim + 1:]:
            raise RuntimeError(
                f"concat(): tensors[{i}] has shape {tuple(t.shape)}, expected "
                f"({', '.join(map(str, expected))}): the sizes of tensors[{kept[0]}] in "
                f"every dimension but dim {dim}")
    return dim


def _check_devices(tensors):
    device = tensors[0].device
    for i, t in enumerate(tensors):
        if t.device != device:
            raise RuntimeError(f"concat(): tensors[{i}] is on {t.device} but tensors[0] is "
                               f"on {device}; all tensors must be on the same device")


def _as_kernel_input(t, dtype):
    """t in dtype, with its conjugate and negative bits (lazy views of complex tensors)
    applied: the kernels copy bytes."""
    if t.dtype != dtype:
        t = t.to(dtype)
    if torch.compiler.is_compiling():  # Dynamo cannot read the bits; in a graph both are free
        return t.resolve_conj().resolve_neg()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t


def concat(tensors, dim=1):
    """The concatenation of `tensors` along `dim`, as torch.cat(tensors, dim): the same
    values, dtype, shape and strides, and the same refusals (with the same exception
    types, each naming the argument at fault).

    Every tensor must have the rank and, outside dim, the sizes of the others; 1-d
    tensors of shape (0,) are skipped, as torch.cat skips them. The output has the dtype
    that torch.cat promotes to (torch.promote_types over all inputs): inputs of another
    dtype are converted to it first, each once with Tensor.to, and their gradients flow
    back through that conversion. The output's memory format is torch.cat's (see
    fastcnn.ops.concat.output_memory_format): channels_last when every input suggests
    channels_last, contiguous otherwise.

    Forward is one kernel launch for all inputs; each input's gradient is its slice of
    the output's gradient, a view. Tensors the kernels do not take (sparse, mkldnn,
    nested and quantized ones) go to torch.cat itself, which gives its own result or
    error.
    """
    _check_tensors(tensors)
    if not all(_kernels_take(t) for t in tensors):
        return torch.cat(tensors, dim)
    dim = _check_dim(dim)
    for i, t in enumerate(tensors):
        if t.dim() == 0:
            raise RuntimeError(f"concat(): tensors[{i}] is zero-dimensional and cannot be "
                               "concatenated (give it a dimension first, t.reshape(1))")
    dim = _check_shapes(tensors, dim)
    _check_devices(tensors)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return ConcatFunction.apply(dim, *(_as_kernel_input(t, dtype) for t in tensors))
