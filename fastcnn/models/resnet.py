"""ResNet (He, Zhang, Ren & Sun, 2016, "Deep Residual Learning for Image Recognition"),
ResNet-18/34/50/101/152 as torchvision builds them (same modules, names and initialisation,
so its state_dicts load with strict=True and its weights give its logits), with every
Conv-BN(-ReLU) as one fastcnn.functional.conv_bn_relu over the block's own modules and the
residual add fused into the last one, before the ReLU.
"""

from torch import nn

from fastcnn.functional import conv_bn_relu
from fastcnn.models._registry import register_model
from fastcnn.nn import GlobalAvgPool2d, MaxPool2d


def _conv(in_channels, out_channels, kernel_size, stride=1, groups=1):
    """A bias-free convolution padded to keep the size at stride 1 (torchvision's conv1x1
    and conv3x3)."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2, groups=groups, bias=False)


def _shortcut(x, downsample):
    """The block's input, or its projection: one Conv-BN op for torchvision's
    Sequential(1x1 Conv2d, BatchNorm2d); any other module is called as it is."""
    if downsample is None:
        return x
    if (isinstance(downsample, nn.Sequential) and len(downsample) == 2
            and isinstance(downsample[0], nn.Conv2d)
            and isinstance(downsample[1], nn.BatchNorm2d)):
        return conv_bn_relu(x, downsample[0], downsample[1], relu=False)
    return downsample(x)


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers, the stride on the first; the shortcut added before the
    last ReLU (ResNet-18/34). Attributes conv1, bn1, conv2, bn2, downsample."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError(f"BasicBlock takes groups=1 and base_width=64 only, got "
                             f"groups={groups}, base_width={base_width}")
        self.conv1 = _conv(inplanes, planes, 3, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(planes, planes, 3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = conv_bn_relu(x, self.conv1, self.bn1)
        identity = _shortcut(x, self.downsample)
        return conv_bn_relu(out, self.conv2, self.bn2, relu=True, residual=identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) Conv-BN layers; the stride on the 3x3
    (torchvision's "v1.5"; the paper strides the first 1x1); the shortcut added before the
    last ReLU (ResNet-50/101/152). Attributes conv1..3, bn1..3, downsample."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = _conv(inplanes, width, 1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv(width, width, 3, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv(width, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = conv_bn_relu(x, self.conv1, self.bn1)
        out = conv_bn_relu(out, self.conv2, self.bn2)
        identity = _shortcut(x, self.downsample)
        return conv_bn_relu(out, self.conv3, self.bn3, relu=True, residual=identity)


class ResNet(nn.Module):
    """ResNet for 224 x 224 input (smaller ones run too): a 7x7/2 Conv-BN-ReLU
    stem and 3x3/2 max-pool, four stages (layer1..layer4) of residual blocks at strides 4,
    8, 16, 32, global average pooling and fc, with torchvision's keys (conv1, bn1,
    layer1.0.conv1, ..., layer2.0.downsample.0/1, fc) and initialisation. Parameters at
    num_classes=1000: ResNet-18 11,689,512; -34 21,797,672; -50 25,557,032; -101
    44,549,160; -152 60,192,808.

    Fused: each Conv-BN(-ReLU) is one conv_bn_relu (BatchNorm, the ReLU and the residual
    add in one pass over the convolution's output), the projection shortcut one Conv-BN.

    zero_init_residual zeroes the weight of each block's last BatchNorm, so that every
    block starts as the identity (Goyal et al., 2017). groups and width_per_group widen or
    group the bottleneck's 3x3 (ResNeXt, Wide ResNet) as torchvision's do.
    """

    def __init__(self, block, layers, num_classes=1000, in_chans=3, zero_init_residual=False,
                 groups=1, width_per_group=64):
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must give the number of blocks of the 4 stages, "
                             f"got {layers!r}")
        self.groups, self.base_width = groups, width_per_group
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = GlobalAvgPool2d(flatten=True)
        self.num_features = 512 * block.expansion
        self.fc = nn.Linear(self.num_features, num_classes)
        for m in self.modules():  # torchvision's initialisation (fc keeps Linear's own)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv(self.inplanes, planes * block.expansion, 1, stride),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, self.groups,
                        self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x):
        x = conv_bn_relu(x, self.conv1, self.bn1)  # N x 64 x 112 x 112 (224 x 224 input)
        x = self.maxpool(x)  # N x 64 x 56 x 56
        x = self.layer1(x)  # N x 64e x 56 x 56 (e = block.expansion)
        x = self.layer2(x)  # N x 128e x 28 x 28
        x = self.layer3(x)  # N x 256e x 14 x 14
        return self.layer4(x)  # N x 512e x 7 x 7

    def forward_head(self, x, pre_logits=False):
        x = self.avgpool(x)  # N x 512e
        return x if pre_logits else self.fc(x)  # N x num_classes

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(torchvision="resnet18")
def resnet18(**kwargs):
    """ResNet-18 (basic blocks, 2-2-2-2), torchvision's keys."""
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


@register_model(torchvision="resnet34")
def resnet34(**kwargs):
    """ResNet-34 (basic blocks, 3-4-6-3), torchvision's keys."""
    return ResNet(BasicBlock, (3, 4, 6, 3), **kwargs)


@register_model(torchvision="resnet50")
def resnet50(**kwargs):
    """ResNet-50 (bottleneck blocks, 3-4-6-3), torchvision's keys."""
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)


@register_model(torchvision="resnet101")
def resnet101(**kwargs):
    """ResNet-101 (bottleneck blocks, 3-4-23-3), torchvision's keys."""
    return ResNet(Bottleneck, (3, 4, 23, 3), **kwargs)


@register_model(torchvision="resnet152")
def resnet152(**kwargs):
    """ResNet-152 (bottleneck blocks, 3-8-36-3), torchvision's keys."""
    return ResNet(Bottleneck, (3, 8, 36, 3), **kwargs)
