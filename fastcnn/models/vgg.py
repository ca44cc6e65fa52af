"""VGG (Simonyan & Zisserman, 2015, "Very Deep Convolutional Networks for Large-Scale Image
Recognition"): configurations A, B, D and E (VGG-11, 13, 16, 19) and their BatchNorm
variants as torchvision builds them (same modules, keys and initialisation, so its weights
load unchanged), and configuration A-LRN, which torchvision does not have.
"""

import torch
from torch import nn

from fastcnn.functional import conv_bn_relu
from fastcnn.models._registry import register_model
from fastcnn.models.alexnet import KRIZHEVSKY_LRN
from fastcnn.nn import ConvReLU, MaxPool2d, ReLULRNMaxPool

# The paper's table 1: output channels of each 3x3 convolution, "M" for a 2x2/2 max-pool.
_CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
          512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}


def _make_features(config, batch_norm=False, lrn=False, in_chans=3):
    """The convolutional part of a configuration as one nn.Sequential in torchvision's
    order, hence its keys: per convolution [ConvReLU, nn.Identity] (the Identity in the
    ReLU's place), or with batch_norm [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] (VGG's forward
    runs each triple as one Conv-BN-ReLU); MaxPool2d(2, 2) for "M". lrn=True (A-LRN, with
    configuration A) makes the first three [nn.Conv2d, ReLULRNMaxPool(2x2/2), nn.Identity]:
    the first ReLU, the LRN and the first max-pool in one layer, VGG-11's indices kept."""
    layers, channels = [], in_chans
    if lrn:  # conv1, then its ReLU, the LRN and the max-pool after it ("M") as one layer
        layers += [nn.Conv2d(in_chans, config[0], 3, padding=1),
                   ReLULRNMaxPool(*KRIZHEVSKY_LRN, kernel_size=2, stride=2), nn.Identity()]
        channels, config = config[0], config[2:]
    for v in config:
        if v == "M":
            layers.append(MaxPool2d(2, stride=2))
            continue
        if batch_norm:
            layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v),
                       nn.ReLU(inplace=True)]
        else:
            layers += [ConvReLU(channels, v, 3, padding=1), nn.Identity()]
        channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG: `features` (_make_features), avgpool AdaptiveAvgPool2d(7) (so
    inputs from 32 x 32 work; the paper's is 224 x 224), classifier of 4096, 4096 (ReLU,
    dropout) and num_classes. torchvision's initialisation: convolutions Kaiming-normal
    (fan_out), Linear N(0, 0.01), biases 0, BatchNorm 1 and 0. Parameters at
    num_classes=1000: VGG-11 132,863,336, VGG-13 133,047,848, VGG-16 138,357,544, VGG-19
    143,667,240; with BatchNorm 132,868,840, 133,053,736, 138,365,992, 143,678,248; A-LRN
    as VGG-11.

    Fused: each convolution with its ReLU (ConvReLU), or each Conv-BN-ReLU in one op
    (fastcnn.functional.conv_bn_relu on the modules at torchvision's indices); in A-LRN,
    the first ReLU -> LRN -> max-pool (ReLULRNMaxPool).
    """

    def __init__(self, features, num_classes=1000, dropout=0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        # N x 3 x 224 x 224 -> 64 x 224 x 224 ... -> N x 512 x 7 x 7 (five 2x2/2 pools).
        # A Conv2d, BatchNorm2d, ReLU triple (the _bn variants) runs as one op; every other
        # module runs itself.
        layers = list(self.features)
        i = 0
        while i < len(layers):
            if i + 1 < len(layers) and isinstance(layers[i + 1], nn.BatchNorm2d):
                x = conv_bn_relu(x, layers[i], layers[i + 1])
                i += 3
            else:
                x = layers[i](x)
                i += 1
        return x

    def forward_head(self, x, pre_logits=False):
        x = self.classifier[:-1](torch.flatten(self.avgpool(x), 1))  # N x 4096
        return x if pre_logits else self.classifier[-1](x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def _vgg(config, batch_norm, num_classes, in_chans, lrn=False, **kwargs):
    return VGG(_make_features(_CONFIGS[config], batch_norm, lrn, in_chans), num_classes,
               **kwargs)


@register_model(torchvision="vgg11")
def vgg11(num_classes=1000, in_chans=3, **kwargs):
    """VGG-11 (configuration A), torchvision's keys, 132,863,336 parameters; kwargs:
    dropout=0.5."""
    return _vgg("A", False, num_classes, in_chans, **kwargs)


@register_model(torchvision="vgg13")
def vgg13(num_classes=1000, in_chans=3, **kwargs):
    """VGG-13 (configuration B), torchvision's keys, 133,047,848 parameters; kwargs:
    dropout=0.5."""
    return _vgg("B", False, num_classes, in_chans, **kwargs)


@register_model(torchvision="vgg16")
def vgg16(num_classes=1000, in_chans=3, **kwargs):
    """VGG-16 (configuration D), torchvision's keys, 138,357,544 parameters; kwargs:
    dropout=0.5."""
    return _vgg("D", False, num_classes, in_chans, **kwargs)


@register_model(torchvision="vgg19")
def vgg19(num_classes=1000, in_chans=3, **kwargs):
    """VGG-19 (configuration E), torchvision's keys, 143,667,240 parameters; kwargs:
    dropout=0.5."""
    return _vgg("E", False, num_classes, in_chans, **kwargs)


@register_model(torchvision="vgg11_bn")
def vgg11_bn(num_classes=1000, in_chans=3, **kwargs):
    """VGG-11 with BatchNorm after each convolution, torchvision's keys; 132,868,840
    parameters; kwargs: dropout=0.5."""
    return _vgg("A", True, num_classes, in_chans, **kwargs)


@register_model(torchvision="vgg13_bn")
def vgg13_bn(num_classes=1000, in_chans=3, **kwargs):
    """VGG-13 with BatchNorm after each convolution, torchvision's keys; 133,053,736
    parameters; kwargs: dropout=0.5."""
    return _vgg("B", True, num_classes, in_chans, **kwargs)


@register_model(torchvision="vgg16_bn")
def vgg16_bn(num_classes=1000, in_chans=3, **kwargs):
    """VGG-16 with BatchNorm after each convolution, torchvision's keys; 138,365,992
    parameters; kwargs: dropout=0.5."""
    return _vgg("D", True, num_classes, in_chans, **kwargs)


@register_model(torchvision="vgg19_bn")
def vgg19_bn(num_classes=1000, in_chans=3, **kwargs):
    """VGG-19 with BatchNorm after each convolution, torchvision's keys; 143,678,248
    parameters; kwargs: dropout=0.5."""
    return _vgg("E", True, num_classes, in_chans, **kwargs)


@register_model
def vgg11_lrn(num_classes=1000, in_chans=3, **kwargs):
    """VGG configuration A-LRN: A with AlexNet's LRN after the first layer (the paper's
    table 1), 224 x 224 input, VGG-11's 132,863,336 parameters and keys (its state_dict
    loads), torchvision's initialisation; kwargs: dropout=0.5."""
    return _vgg("A", False, num_classes, in_chans, lrn=True, **kwargs)
