"""Network In Network (Lin, Chen & Yan, 2014): mlpconv blocks (a convolution and two 1x1
convolutions, the "cascaded cross channel parametric pooling" cccp layers, each followed by
ReLU) and global average pooling of one map per class instead of fully connected layers,
in the configurations of the authors' released CIFAR-10 and ImageNet models.
"""

from collections import OrderedDict

from torch import nn

from fastcnn.models._registry import register_model
from fastcnn.nn import ConvReLU, GlobalAvgPool2d, MaxPool2d

# An mlpconv block: (its three output widths, the first convolution's kernel, stride and
# padding); None for the last width means num_classes. Between blocks: "max" or "avg"
# pooling 3x3 / 2 (ceil mode, as Caffe pools), and whether dropout follows it.
_CIFAR10 = (
    ((192, 160, 96), 5, 1, 2), ("max", True),
    ((192, 192, 192), 5, 1, 2), ("avg", True),
    ((192, 192, None), 3, 1, 1),
)
_IMAGENET = (
    ((96, 96, 96), 11, 4, 0), ("max", False),
    ((256, 256, 256), 5, 1, 2), ("max", False),
    ((384, 384, 384), 3, 1, 1), ("max", True),
    ((1024, 1024, None), 3, 1, 1),
)


class NIN(nn.Module):
    """Network In Network: Lin, Chen & Yan, 2014, "Network In Network" (ICLR).

    `features` holds the layers under the names of the authors' Caffe models (conv1,
    cccp1, cccp2, pool1, drop1, conv2, ...; the ImageNet model's conv4-1024, cccp7-1024 and
    cccp8-1024 are conv4, cccp7 and cccp8), so a converted Caffe state_dict needs only a
    "features." prefix; the last cccp layer has one output map per class, and `global_pool`
    averages each map into that class's logit. Every convolution is a ConvReLU (the
    convolution with its ReLU in one layer, in place when nothing is differentiated), the
    max-pools are fastcnn's MaxPool2d, the global average pooling fastcnn's
    GlobalAvgPool2d; the CIFAR-10 model's one average pooling between blocks is
    torch.nn.AvgPool2d. See nin_cifar10 and nin_imagenet for the configurations and their
    parameter counts.

    forward_features gives the class maps (N x num_classes x 8 x 8 for CIFAR-10, x 6 x 6
    for ImageNet); forward_head pools them. NIN has no layer after its class maps, so
    pre_logits=True returns the same pooled maps.

    Initialisation: He et al.'s (2015) normal, fan-in, for ReLU, and zero biases, instead
    of the released models' hand-picked Gaussian deviations (0.01 to 0.05 per layer), which
    He et al.'s rule replaces for deep ReLU networks without BatchNorm.
    """

    def __init__(self, config, num_classes, in_chans=3, drop_rate=0.5):
        super().__init__()
        self.num_classes = num_classes
        layers = OrderedDict()
        channels, block, pool = in_chans, 0, 0
        for item in config:
            if isinstance(item[0], tuple):
                widths, kernel_size, stride, padding = item
                widths = tuple(num_classes if w is None else w for w in widths)
                block += 1
                layers[f"conv{block}"] = ConvReLU(channels, widths[0], kernel_size, stride,
                                                  padding)
                layers[f"cccp{2 * block - 1}"] = ConvReLU(widths[0], widths[1], 1)
                layers[f"cccp{2 * block}"] = ConvReLU(widths[1], widths[2], 1)
                channels = widths[2]
            else:
                kind, dropout = item
                pool += 1
                layers[f"pool{pool}"] = (MaxPool2d(3, 2, ceil_mode=True) if kind == "max"
                                         else nn.AvgPool2d(3, 2, ceil_mode=True))
                if dropout:
                    layers[f"drop{pool}"] = nn.Dropout(drop_rate)
        self.features = nn.Sequential(layers)
        self.global_pool = GlobalAvgPool2d(flatten=True)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        return self.features(x)  # N x num_classes x 8 x 8 (CIFAR-10), x 6 x 6 (ImageNet)

    def forward_head(self, x, pre_logits=False):
        return self.global_pool(x)  # N x num_classes

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


@register_model(input_size=(3, 32, 32))
def nin_cifar10(num_classes=10, in_chans=3, drop_rate=0.5):
    """NIN for 32 x 32 images, as the authors' released CIFAR-10 model: mlpconv 192-160-96
    (5x5), max-pool, dropout, 192-192-192 (5x5), average pool, dropout, 192-192-classes
    (3x3), global average pooling. 966,986 parameters with 10 classes (1,158,056 with
    1000)."""
    return NIN(_CIFAR10, num_classes, in_chans, drop_rate)


@register_model
def nin_imagenet(num_classes=1000, in_chans=3, drop_rate=0.5):
    """NIN for 224 x 224 images, as the authors' released ImageNet model: mlpconv
    96-96-96 (11x11 / 4), 256-256-256 (5x5), 384-384-384 (3x3), each followed by a 3x3 / 2
    max-pool, dropout, 1024-1024-classes (3x3), global average pooling. 7,595,176
    parameters with 1000 classes."""
    return NIN(_IMAGENET, num_classes, in_chans, drop_rate)
