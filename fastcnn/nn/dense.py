"""DenseNet's dense block (Huang et al., 2017, "Densely Connected Convolutional Networks")
on one feature buffer: every layer reads all the features before it, and appends its own.

torchvision's block concatenates the features anew before every layer (torch.cat), and
each layer keeps that concatenation and its normalised copy for backward: memory and
copying that grow with the square of the depth. Here the block allocates its output once,
(N, C_0 + L * k, H, W); the block's input is copied into its first C_0 channels, and each
layer reads the channels written so far in place (bn_relu_conv, which keeps only its input
for backward) and appends its k new channels. Parameter names are torchvision's
(denselayer1.norm1.weight, ..., transition's norm and conv), so its state_dicts load.
"""

import torch
import torch.nn.functional as F

from fastcnn.functional._into import Into, copy_into, join
from fastcnn.functional.bn_relu_conv import bn_relu_conv
from fastcnn.ops.layout import is_channels_last


class DenseLayer(torch.nn.Module):
    """BN-ReLU-Conv(1x1, bn_size * k) -> BN-ReLU-Conv(3x3, k) (-> dropout): the
    bottleneck layer of DenseNet-BC, with torchvision's _DenseLayer's parameter names. It
    takes a tensor or a list of tensors (the features before it, concatenated along
    channels) and returns its k new channels. The ReLUs run inside bn_relu_conv."""

    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate=0.0):
        super().__init__()
        width = bn_size * growth_rate
        self.norm1 = torch.nn.BatchNorm2d(num_input_features)
        self.conv1 = torch.nn.Conv2d(num_input_features, width, 1, bias=False)
        self.norm2 = torch.nn.BatchNorm2d(width)
        self.conv2 = torch.nn.Conv2d(width, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = float(drop_rate)

    def forward(self, features):
        bottleneck = bn_relu_conv(features, self.norm1, self.conv1)
        new_features = bn_relu_conv(bottleneck, self.norm2, self.conv2)
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class DenseBlock(torch.nn.ModuleDict):
    """num_layers DenseLayers, layer i taking num_input_features + i * growth_rate
    channels; the output is the input and every layer's new features, concatenated
    (torchvision's _DenseBlock, with its arguments and parameter names).

    The output is the block's feature buffer, which the layers' backward reads: changing
    it in place before backward is an error (autograd's "modified by an inplace
    operation"), where torchvision's fresh concatenation would allow it. Under
    torch.compile or autocast the block concatenates with torch.cat, as torchvision's."""

    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate=0.0):
        super().__init__()
        for i in range(num_layers):
            self[f"denselayer{i + 1}"] = DenseLayer(num_input_features + i * growth_rate,
                                                    growth_rate, bn_size, drop_rate)

    def forward(self, init_features):
        if (torch.compiler.is_compiling() or init_features.dim() != 4
                or torch.is_autocast_enabled(init_features.device.type)):
            features = [init_features]
            for layer in self.values():
                features.append(layer(features))
            return torch.cat(features, 1)
        n, c, h, w = init_features.shape
        channels = c + sum(layer.conv2.out_channels for layer in self.values())
        memory_format = (torch.channels_last if is_channels_last(init_features)
                         else torch.contiguous_format)
        whole = torch.empty((n, channels, h, w), dtype=init_features.dtype,
                            device=init_features.device, memory_format=memory_format)
        parts = [copy_into(init_features, Into(whole.narrow(1, 0, c)))]
        for layer in self.values():
            new_features = layer(parts)  # N x k x H x W
            parts.append(copy_into(new_features, Into(whole.narrow(1, c, new_features.shape[1]))))
            c += new_features.shape[1]
        return join(whole, parts, 1)


class Transition(torch.nn.Module):
    """BN-ReLU-Conv(1x1) -> 2x2 average pooling between dense blocks (torchvision's
    _Transition's parameter names: norm, conv), reading the block's buffer in place."""

    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(num_input_features)
        self.conv = torch.nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = torch.nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.pool(bn_relu_conv(x, self.norm, self.conv))
