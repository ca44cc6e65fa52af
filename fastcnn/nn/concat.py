"""InceptionConcat: an Inception module's branches written straight into their channel
slices of one output, with no torch.cat (Szegedy et al., 2014, "Going Deeper with
Convolutions": the outputs of the 1x1, 3x3, 5x5 and pooling branches, concatenated).

torch.cat reads and writes the module's whole output once more after the branches made it,
and keeps it twice at that moment. Here the output is allocated once, after each branch has
run up to its last layer (so that every branch's output shape is known), and each last
layer writes its result into its slice; backward hands each branch its slice of the
gradient as a view.
"""

import torch

from fastcnn.functional._into import Into, copy_into, has_forward_hooks, join
from fastcnn.ops.layout import is_channels_last


class PendingOutput:
    """A layer's output before it is written: its shape, dtype, device and layout, and
    `write(into)`, which writes it into `into` (an fastcnn.functional._into.Into of that
    shape and dtype) and returns the tensor there, or with into=None returns it as a
    tensor of its own."""

    def __init__(self, shape, dtype, device, channels_last, write):
        self.shape = torch.Size(shape)
        self.dtype, self.device, self.channels_last = dtype, device, channels_last
        self._write = write

    @classmethod
    def like(cls, t, write):
        """The output of a layer whose result has t's shape, dtype, device and layout."""
        return cls(t.shape, t.dtype, t.device, is_channels_last(t), write)

    @classmethod
    def of(cls, result):
        """An output computed already: writing it copies it."""
        return cls.like(result, lambda into: result if into is None else copy_into(result, into))

    def write(self, into=None):
        return self._write(into)


def begin_forward(module, x):
    """module(x) up to its last write, as a PendingOutput. Modules with a `begin_forward`
    method (fastcnn's ConvBNReLU, ConvReLU, MaxPool2d) stop before it; a plain
    nn.Sequential runs all but its last layer and asks that one; any other module runs
    whole, and writing its output copies it."""
    if not has_forward_hooks(module):  # else two steps would skip the hooks
        if hasattr(module, "begin_forward"):
            return module.begin_forward(x)
        if type(module) is torch.nn.Sequential and len(module) > 0:
            for layer in list(module)[:-1]:
                x = layer(x)
            return begin_forward(module[-1], x)
    return PendingOutput.of(module(x))


def _concatenable(pending, dim):
    """Whether the outputs can share one tensor: the same dtype, device and rank, and equal
    sizes but along dim. Others go to torch.cat, for its promotion rules and errors."""
    first = pending[0]
    return all(p.dtype == first.dtype and p.device == first.device
               and len(p.shape) == len(first.shape)
               and all(a == b for d, (a, b) in enumerate(zip(p.shape, first.shape)) if d != dim)
               for p in pending)


def write_concatenated(pending, dim=1):
    """torch.cat([p.write() for p in pending], dim), written in place: one tensor allocated
    (channels_last when every output is, as torch.cat's), each output written into its
    slice of it."""
    rank = len(pending[0].shape)
    if not (-rank <= dim < rank and _concatenable(pending, dim)):
        return torch.cat([p.write() for p in pending], dim)
    dim %= rank
    shape = list(pending[0].shape)
    shape[dim] = sum(p.shape[dim] for p in pending)
    channels_last = len(shape) == 4 and all(p.channels_last for p in pending)
    whole = torch.empty(shape, dtype=pending[0].dtype, device=pending[0].device,
                        memory_format=torch.channels_last if channels_last
                        else torch.contiguous_format)
    parts, offset = [], 0
    for p in pending:
        parts.append(p.write(Into(whole.narrow(dim, offset, p.shape[dim]))))
        offset += p.shape[dim]
    return join(whole, parts, dim)


class InceptionConcat(torch.nn.Module):
    """torch.cat([branch(x) for branch in branches], 1) with each branch's last layer
    writing its result into its channel slice of the output.

    A branch writes in place when it is, or is a plain nn.Sequential ending in, a fastcnn
    layer that can (ConvBNReLU, ConvReLU, MaxPool2d); any other branch is run as it is and
    its output copied into its slice. Under torch.compile the branches are joined by
    torch.cat, which the compiler lowers to writes into one buffer itself."""

    def __init__(self, branches):
        super().__init__()
        self.branches = torch.nn.ModuleList(branches)
        if len(self.branches) == 0:
            raise ValueError("InceptionConcat needs at least one branch, got none")

    def forward(self, x):
        if torch.compiler.is_compiling():
            return torch.cat([branch(x) for branch in self.branches], 1)
        return write_concatenated([begin_forward(branch, x) for branch in self.branches], 1)
