"""ZFNet (Zeiler & Fergus, 2013, "Visualizing and Understanding Convolutional Networks"): the
network of the paper's figure 3, AlexNet with a 7 x 7 stride-2 first layer, a stride-2
second layer and dense layers 3 to 5 on one GPU."""

from collections import OrderedDict

from torch import nn

from fastcnn.models._registry import register_model
from fastcnn.models.alexnet import (KRIZHEVSKY_LRN, classifier_head, krizhevsky_classifier,
                                     normal_init)
from fastcnn.nn import ConvReLU, LocalResponseNorm, MaxPool2d


class ZFNet(nn.Module):
    """ZFNet as Zeiler & Fergus (2013) describe it (figure 3), 224 x 224 input, 62,357,608
    parameters at num_classes=1000.

    conv1 96@7x7/2, pool, norm, conv2 256@5x5/2, pool, norm, conv3 384@3x3, conv4 384@3x3,
    conv5 256@3x3, pool, fc6 and fc7 of 4096 with ReLU and dropout 0.5, fc8; every layer
    dense (no groups). The figure's map sizes 110, 55, 26, 13, 13, 13, 13, 6 come from
    conv1's padding 1, conv2's padding 0, padding 1 in conv3 to conv5, and 3x3/2 max-pools
    with ceil_mode=True (floor mode would give 54 and 12). The paper's order is
    section 2's: ReLU, max-pool, then the contrast normalisation across maps, here an LRN
    with AlexNet's parameters (KRIZHEVSKY_LRN; the paper gives none), so on the pooled
    maps: 4x fewer values to normalise than AlexNet's ReLU -> LRN -> pool, and a
    different function (LRN and max-pool do not commute). Initialisation as the paper's
    section 3: weights N(0, 0.01), biases 0.

    Fused: each convolution with its ReLU (ConvReLU).
    """

    def __init__(self, num_classes=1000, in_chans=3, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", ConvReLU(in_chans, 96, 7, stride=2, padding=1)),
            ("pool1", MaxPool2d(3, stride=2, ceil_mode=True)),
            ("norm1", LocalResponseNorm(*KRIZHEVSKY_LRN)),
            ("conv2", ConvReLU(96, 256, 5, stride=2)),
            ("pool2", MaxPool2d(3, stride=2, ceil_mode=True)),
            ("norm2", LocalResponseNorm(*KRIZHEVSKY_LRN)),
            ("conv3", ConvReLU(256, 384, 3, padding=1)),
            ("conv4", ConvReLU(384, 384, 3, padding=1)),
            ("conv5", ConvReLU(384, 256, 3, padding=1)),
            ("pool5", MaxPool2d(3, stride=2, ceil_mode=True)),
        ]))
        self.classifier = krizhevsky_classifier(num_classes, dropout)
        normal_init(self)

    def forward_features(self, x):
        # N x 3 x 224 x 224 -> conv1 96 x 110 x 110 -> pool1 55 -> conv2 256 x 26 x 26
        # -> pool2 13 -> conv3/4/5 13 x 13 -> pool5 N x 256 x 6 x 6
        return self.features(x)

    def forward_head(self, x, pre_logits=False):
        return classifier_head(self.classifier, x, pre_logits, "ZFNet", 224)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model
def zfnet(num_classes=1000, in_chans=3, **kwargs):
    """ZFNet (Zeiler & Fergus 2013, figure 3), 224 x 224 input, 62,357,608 parameters;
    kwargs: dropout=0.5."""
    return ZFNet(num_classes, in_chans, **kwargs)
