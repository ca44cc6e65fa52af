"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012, "ImageNet Classification with Deep
Convolutional Neural Networks"): the paper's network, two towers and LRN, and torchvision's
one-tower variant without LRN (Krizhevsky, 2014, "One weird trick for parallelizing
convolutional neural networks") with torchvision's keys and weights.
"""

from collections import OrderedDict

import torch
from torch import nn

from fastcnn.models._registry import register_model
from fastcnn.nn import ConvReLU, MaxPool2d, ReLULRNMaxPool

# The paper's local response normalisation (section 3.3): size, alpha, beta, k, as
# fastcnn.nn.LocalResponseNorm and ReLULRNMaxPool take them. Their alpha is divided by the
# size (PyTorch's and Caffe's convention; Caffe's AlexNet uses 1e-4 too); the paper's
# formula, read literally (no division), would be 5e-4 here. ZFNet and VGG's A-LRN use it.
KRIZHEVSKY_LRN = (5, 1e-4, 0.75, 2.0)


def krizhevsky_classifier(num_classes, dropout):
    """fc6 (256 x 6 x 6 -> 4096), fc7 (4096) with ReLU and dropout, fc8: AlexNet's and
    ZFNet's classifier."""
    return nn.Sequential(OrderedDict([
        ("fc6", nn.Linear(256 * 6 * 6, 4096)),
        ("relu6", nn.ReLU(inplace=True)),
        ("drop6", nn.Dropout(dropout)),
        ("fc7", nn.Linear(4096, 4096)),
        ("relu7", nn.ReLU(inplace=True)),
        ("drop7", nn.Dropout(dropout)),
        ("fc8", nn.Linear(4096, num_classes)),
    ]))


def normal_init(model):
    """The paper's initialisation: weights N(0, 0.01), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def classifier_head(classifier, x, pre_logits, name, input_size):
    """krizhevsky_classifier on 256 x 6 x 6 feature maps (from input_size inputs), up to
    fc7 when pre_logits."""
    if x.shape[-3:] != (256, 6, 6):
        raise ValueError(f"{name}'s fc6 takes 256 x 6 x 6 feature maps, which come from "
                         f"{input_size} x {input_size} inputs; got "
                         f"{' x '.join(map(str, x.shape[-3:]))}")
    x = classifier[:-1](torch.flatten(x, 1))  # N x 4096
    return x if pre_logits else classifier.fc8(x)


class AlexNet(nn.Module):
    """AlexNet as Krizhevsky et al. (2012) describe it (section 3.5, figure 2), 60,965,224
    parameters at num_classes=1000.

    Input 227 x 227: the paper says 224, but an 11 x 11 stride-4 convolution without padding
    gives its 55 x 55 conv1 maps only from 227 ((227 - 11) / 4 + 1 = 55). conv1 96@11x11/4,
    conv2 256@5x5 pad 2, conv3 384@3x3, conv4 384@3x3 and conv5 256@3x3 (pad 1); conv2, conv4
    and conv5 in two groups, each seeing only its own GPU's half of the maps, conv3 across
    both. ReLU everywhere; LRN (KRIZHEVSKY_LRN) then an overlapping 3x3/2 max-pool after the
    ReLUs of conv1 and conv2; a 3x3/2 max-pool after conv5 (maps of 55 after conv1, 27
    after pool1 and conv2, 13 after pool2 to conv5, 6 after pool5);
    fc6 and fc7 of 4096 with ReLU and dropout, fc8. The paper's initialisation: weights
    N(0, 0.01), biases 1 in conv2, conv4, conv5, fc6 and fc7 and 0 elsewhere. One LRN runs
    across all maps, where each GPU normalised its own half: the two maps on each side of
    the halves' border also see one or two maps of the other half.

    Fused: conv1's and conv2's ReLU -> LRN -> max-pool in one layer (ReLULRNMaxPool), the
    other convolutions with their ReLU (ConvReLU).
    """

    def __init__(self, num_classes=1000, in_chans=3, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(in_chans, 96, 11, stride=4)),
            ("relu_norm_pool1", ReLULRNMaxPool(*KRIZHEVSKY_LRN, kernel_size=3, stride=2)),
            ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=2)),
            ("relu_norm_pool2", ReLULRNMaxPool(*KRIZHEVSKY_LRN, kernel_size=3, stride=2)),
            ("conv3", ConvReLU(256, 384, 3, padding=1)),
            ("conv4", ConvReLU(384, 384, 3, padding=1, groups=2)),
            ("conv5", ConvReLU(384, 256, 3, padding=1, groups=2)),
            ("pool5", MaxPool2d(3, stride=2)),
        ]))
        self.classifier = krizhevsky_classifier(num_classes, dropout)
        normal_init(self)
        f, c = self.features, self.classifier
        for m in (f.conv2, f.conv4, f.conv5, c.fc6, c.fc7):
            nn.init.ones_(m.bias)

    def forward_features(self, x):
        # N x 3 x 227 x 227 -> conv1 96 x 55 x 55 -> pool 27 -> conv2 256 x 27 x 27 -> pool 13
        # -> conv3/4/5 13 x 13 -> pool5 N x 256 x 6 x 6
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        return classifier_head(self.classifier, x, pre_logits, "AlexNet", 227)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class TorchvisionAlexNet(nn.Module):
    """torchvision's AlexNet, the one-tower variant of Krizhevsky (2014, "One weird trick for
    parallelizing convolutional neural networks"): 64-192-384-256-256 convolutions, no LRN,
    no groups, 224 x 224 input, 61,100,840 parameters at num_classes=1000. torchvision's
    modules, keys and initialisation (PyTorch's defaults), so its weights load unchanged.

    Fused: each convolution with its ReLU (ConvReLU); the ReLUs' places in `features` hold
    nn.Identity, keeping torchvision's indices (features.0 ... features.12).
    """

    def __init__(self, num_classes=1000, in_chans=3, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            ConvReLU(in_chans, 64, 11, stride=4, padding=2), nn.Identity(),
            MaxPool2d(3, stride=2),
            ConvReLU(64, 192, 5, padding=2), nn.Identity(),
            MaxPool2d(3, stride=2),
            ConvReLU(192, 384, 3, padding=1), nn.Identity(),
            ConvReLU(384, 256, 3, padding=1), nn.Identity(),
            ConvReLU(256, 256, 3, padding=1), nn.Identity(),
            MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward_features(self, x):
        # N x 3 x 224 x 224 -> 64 x 55 x 55 -> pool 27 -> 192 x 27 x 27 -> pool 13
        # -> 384, 256, 256 x 13 x 13 -> pool N x 256 x 6 x 6
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        x = self.classifier[:-1](torch.flatten(self.avgpool(x), 1))  # N x 4096
        return x if pre_logits else self.classifier[-1](x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(3, 227, 227))
def alexnet(num_classes=1000, in_chans=3, **kwargs):
    """The paper's AlexNet (two towers, LRN), 227 x 227 input, 60,965,224 parameters;
    kwargs: dropout=0.5."""
    return AlexNet(num_classes, in_chans, **kwargs)


@register_model(torchvision="alexnet")
def alexnet_torchvision(num_classes=1000, in_chans=3, **kwargs):
    """torchvision's one-tower AlexNet, its keys, 61,100,840 parameters; kwargs:
    dropout=0.5."""
    return TorchvisionAlexNet(num_classes, in_chans, **kwargs)
