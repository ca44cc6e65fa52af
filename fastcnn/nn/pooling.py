"""MaxPool2d and GlobalAvgPool2d: drop-ins for torch.nn.MaxPool2d and
torch.nn.AdaptiveAvgPool2d(1) on the fastcnn kernels."""

import torch

from fastcnn.functional.pooling import (global_avg_pool2d, max_pool2d, max_pool2d_into,
                                        max_pool2d_output_shape, max_pool2d_writes_into)
from fastcnn.nn.concat import PendingOutput
from fastcnn.ops.layout import is_channels_last


class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d (same arguments and repr) whose forward and backward run the
    fastcnn kernels."""

    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          self.ceil_mode, self.return_indices)

    def begin_forward(self, input):
        """Nothing yet; writing the output pools into it (InceptionConcat's protocol,
        fastcnn.nn.concat)."""
        if not max_pool2d_writes_into(input, self.return_indices):
            return PendingOutput.of(self(input))
        args = (self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return PendingOutput(
            max_pool2d_output_shape(input, *args), input.dtype, input.device,
            is_channels_last(input),
            lambda into: self(input) if into is None else max_pool2d_into(input, into, *args))


class GlobalAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """torch.nn.AdaptiveAvgPool2d(1) on the fastcnn kernels; with flatten=True it returns
    (N, C) (or (C,) for unbatched input) instead of (N, C, 1, 1), as the classifier heads
    that follow it want."""

    def __init__(self, flatten=False):
        super().__init__(1)
        self.flatten = flatten

    def extra_repr(self):
        return f"flatten={self.flatten}"

    def forward(self, input):
        output = global_avg_pool2d(input)
        return output.flatten(-3) if self.flatten else output
