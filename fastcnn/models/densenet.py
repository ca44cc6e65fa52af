"""DenseNet (Huang et al., 2017, "Densely Connected Convolutional Networks"), DenseNet-BC
121/161/169/201 as torchvision builds them (same modules, names and initialisation, so its
state_dicts load with strict=True), on fastcnn's layers: the stem's Conv-BN-ReLU in one
op, dense blocks on one feature buffer each (fastcnn.nn.DenseBlock), transitions and the
final BN-ReLU reading the blocks' buffers in place.
"""

import re
from collections import OrderedDict

from torch import nn

from fastcnn.functional import bn_relu, conv_bn_relu, global_avg_pool2d
from fastcnn.models._registry import register_model
from fastcnn.nn import DenseBlock, MaxPool2d, Transition


class DenseNet(nn.Module):
    """features (conv0, norm0, relu0, pool0, denseblock1, transition1, ..., denseblock4,
    norm5) and classifier, as torchvision's DenseNet; 224 x 224 input. forward_features(x)
    runs them on the fused ops; the module `features(x)` alone runs them one module at a
    time and gives torchvision's features."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                 bn_size=4, drop_rate=0.0, num_classes=1000, in_chans=3):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3,
                                bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", MaxPool2d(3, stride=2, padding=1)),
        ]))
        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(
                f"denseblock{i + 1}",
                DenseBlock(num_layers, channels, bn_size, growth_rate, drop_rate))
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}",
                                         Transition(channels, channels // 2))
                channels //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x):
        """The last feature map, after norm5 and its ReLU."""
        f = self.features
        x = conv_bn_relu(x, f.conv0, f.norm0)  # N x 64 x 112 x 112 (224 x 224 input)
        x = f.pool0(x)  # N x 64 x 56 x 56
        for block in list(f.children())[4:-1]:  # dense blocks and transitions
            x = block(x)  # ... N x 1024 x 7 x 7
        return bn_relu(x, f.norm5)

    def forward_head(self, x, pre_logits=False):
        x = global_avg_pool2d(x).flatten(1)  # N x 1024
        return x if pre_logits else self.classifier(x)  # N x num_classes

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


# torchvision's published DenseNet weights name the layers' parameters "norm.1", "conv.2",
# ...; its models (and this one) name them "norm1", "conv2".
_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12])\.(.+)$")


def torchvision_state_dict(state_dict):
    """A torchvision DenseNet state_dict, published weights included, in this model's keys."""
    return OrderedDict((_LEGACY_KEY.sub(r"\1\2.\3", key), value)
                       for key, value in state_dict.items())


def _densenet(growth_rate, block_config, num_init_features, **kwargs):
    return DenseNet(growth_rate, block_config, num_init_features, **kwargs)


@register_model(torchvision="densenet121", torchvision_keys=torchvision_state_dict)
def densenet121(**kwargs):
    """DenseNet-121 (k = 32, blocks of 6, 12, 24, 16 layers), torchvision's keys;
    7,978,856 parameters."""
    return _densenet(32, (6, 12, 24, 16), 64, **kwargs)


@register_model(torchvision="densenet161", torchvision_keys=torchvision_state_dict)
def densenet161(**kwargs):
    """DenseNet-161 (k = 48, blocks of 6, 12, 36, 24 layers), torchvision's keys;
    28,681,000 parameters."""
    return _densenet(48, (6, 12, 36, 24), 96, **kwargs)


@register_model(torchvision="densenet169", torchvision_keys=torchvision_state_dict)
def densenet169(**kwargs):
    """DenseNet-169 (k = 32, blocks of 6, 12, 32, 32 layers), torchvision's keys;
    14,149,480 parameters."""
    return _densenet(32, (6, 12, 32, 32), 64, **kwargs)


@register_model(torchvision="densenet201", torchvision_keys=torchvision_state_dict)
def densenet201(**kwargs):
    """DenseNet-201 (k = 32, blocks of 6, 12, 48, 32 layers), torchvision's keys;
    20,013,928 parameters."""
    return _densenet(32, (6, 12, 48, 32), 64, **kwargs)
