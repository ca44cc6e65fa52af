"""ConvBNReLU (Conv2d -> BatchNorm2d -> ReLU) and ConvReLU (Conv2d -> ReLU) as single layers
on the fastcnn kernels."""

import torch

from fastcnn.functional._checks import kernels_take
from fastcnn.functional._into import wants_grad
from fastcnn.functional.conv_bn_act import batch_norm_act, conv_bn_relu, relu_into
from fastcnn.nn.concat import PendingOutput


class ConvBNReLU(torch.nn.Module):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU, with plain `conv` and `bn` submodules, so
    its state_dict is torchvision's BasicConv2d's (conv.weight, bn.weight, bn.bias,
    bn.running_mean, bn.running_var, bn.num_batches_tracked).

    relu=False gives Conv -> BatchNorm. forward(x, residual=None) adds residual (the
    output's shape) before the ReLU, as at the end of a ResNet block.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, relu=True, eps=1e-5, momentum=0.1):
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                                    padding=padding, dilation=dilation, groups=groups,
                                    bias=False)
        self.bn = torch.nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.relu = relu

    def forward(self, x, residual=None):
        return conv_bn_relu(x, self.conv, self.bn, self.relu, residual)

    def begin_forward(self, x):
        """The convolution; writing the output runs BatchNorm and the ReLU into it
        (InceptionConcat's protocol, fastcnn.nn.concat)."""
        y = self.conv(x)
        return PendingOutput.like(
            y, lambda into: batch_norm_act(y, self.bn, self.relu, None, into, fresh=True))

    def extra_repr(self):
        return f"relu={self.relu}"


class ConvReLU(torch.nn.Conv2d):
    """torch.nn.Conv2d followed by ReLU, as one layer with Conv2d's arguments, parameters
    and state_dict: the layers of the original GoogLeNet and AlexNet, which have no
    BatchNorm. The ReLU runs in place over the convolution's fresh output when nothing is
    differentiated; inside an InceptionConcat it is written into the module's output."""

    def forward(self, input):
        y = super().forward(input)
        return torch.relu(y) if wants_grad(y) else y.relu_()

    def begin_forward(self, input):
        """The convolution; writing the output applies the ReLU into it."""
        y = super().forward(input)
        if not kernels_take(y):
            return PendingOutput.of(torch.relu(y))
        return PendingOutput.like(y, lambda into: torch.relu(y) if into is None
                                  else relu_into(y, into))
