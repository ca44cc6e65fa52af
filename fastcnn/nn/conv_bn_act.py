"""ConvBNReLU: Conv2d -> BatchNorm2d -> ReLU as one layer on the fastcnn kernels."""

import torch

from fastcnn.functional.conv_bn_act import conv_bn_relu


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

    def extra_repr(self):
        return f"relu={self.relu}"
