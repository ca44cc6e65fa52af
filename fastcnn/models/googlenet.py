"""GoogLeNet (Szegedy et al., 2015, "Going Deeper with Convolutions"), twice: `googlenet`,
the network of the paper's Table 1 (ReLU, LRN in the stem, a real 5x5 branch, the two
auxiliary classifiers of section 5), and `googlenet_torchvision`, torchvision's BatchNorm
variant with its keys and initialisation. Both run each Inception module as an
InceptionConcat: every branch's last layer writes into its channel slice of the output.
"""

import torch
from torch import nn

from fastcnn.models._registry import register_model
from fastcnn.nn import (ConvBNReLU, ConvReLU, GlobalAvgPool2d, InceptionConcat,
                        LocalResponseNorm, MaxPool2d, ReLULRNMaxPool)

# Table 1: name, input channels, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
_INCEPTIONS = (
    ("3a", 192, 64, 96, 128, 16, 32, 32),
    ("3b", 256, 128, 128, 192, 32, 96, 64),
    ("4a", 480, 192, 96, 208, 16, 48, 64),
    ("4b", 512, 160, 112, 224, 24, 64, 64),
    ("4c", 512, 128, 128, 256, 24, 64, 64),
    ("4d", 512, 112, 144, 288, 32, 64, 64),
    ("4e", 528, 256, 160, 320, 32, 128, 128),
    ("5a", 832, 256, 160, 320, 32, 128, 128),
    ("5b", 832, 384, 192, 384, 48, 128, 128),
)


def _googlenet_outputs(logits, aux_logits2, aux_logits1):
    # torchvision's namedtuple, imported when first returned: importing torchvision takes
    # seconds, which `import fastcnn` should not pay
    from torchvision.models import GoogLeNetOutputs

    return GoogLeNetOutputs(logits, aux_logits2, aux_logits1)


class InceptionAux(nn.Module):
    """An auxiliary classifier (section 5): `pool` down to 4 x 4, `conv` (a 1x1 convolution
    to 128 channels with its ReLU), fc1 to 1024 + ReLU, dropout, fc2 to the classes."""

    def __init__(self, pool, conv, num_classes, dropout=0.7):
        super().__init__()
        self.pool = pool
        self.conv = conv
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.pool(x)  # N x 512 (528) x 4 x 4
        if x.shape[-2:] != (4, 4):
            raise ValueError(
                f"the auxiliary classifier takes a 4 x 4 map after its pooling (the 14 x 14 "
                f"map of a 224 x 224 input), got {x.shape[-2]} x {x.shape[-1]}: use that "
                f"input size in training mode, eval mode, or aux_logits=False")
        x = self.conv(x).flatten(1)  # N x 2048
        x = self.dropout(torch.relu(self.fc1(x)))  # N x 1024
        return self.fc2(x)  # N x num_classes


class _GoogLeNetBase(nn.Module):
    """The nine Inception modules after a stem (the subclass's `stem`), max-pools after 3b
    and 4e, the auxiliary classifiers after 4a and 4d (training mode only), global
    average pooling, dropout and the classifier `fc`."""

    def _add_body(self, inception, maxpool4, aux, num_classes, aux_logits, dropout):
        """Registers the modules after the stem, in torchvision's order."""
        for name, *channels in _INCEPTIONS:
            self.add_module(f"inception{name}", inception(*channels))
            if name == "3b":
                self.maxpool3 = MaxPool2d(3, 2, ceil_mode=True)
            elif name == "4e":
                self.maxpool4 = maxpool4
        self.aux_logits = aux_logits
        self.aux1 = aux(512, num_classes) if aux_logits else None
        self.aux2 = aux(528, num_classes) if aux_logits else None
        self.avgpool = GlobalAvgPool2d(flatten=True)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def _body(self, x, with_aux):
        """The last feature map, and the auxiliary logits when with_aux (else None)."""
        x = self.stem(x)  # N x 192 x 28 x 28 (224 x 224 input)
        x = self.inception3a(x)  # N x 256 x 28 x 28
        x = self.inception3b(x)  # N x 480 x 28 x 28
        x = self.maxpool3(x)  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        aux1 = self.aux1(x) if with_aux else None
        x = self.inception4b(x)  # N x 512 x 14 x 14
        x = self.inception4c(x)  # N x 512 x 14 x 14
        x = self.inception4d(x)  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if with_aux else None
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.maxpool4(x)  # N x 832 x 7 x 7
        x = self.inception5a(x)  # N x 832 x 7 x 7
        x = self.inception5b(x)  # N x 1024 x 7 x 7
        return x, aux2, aux1

    def forward_features(self, x):
        return self._body(x, with_aux=False)[0]

    def forward_head(self, x, pre_logits=False):
        x = self.dropout(self.avgpool(x))  # N x 1024
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        """The logits; in training mode with the auxiliary classifiers, torchvision's
        GoogLeNetOutputs(logits, aux_logits2, aux_logits1)."""
        with_aux = self.training and self.aux_logits
        x, aux2, aux1 = self._body(x, with_aux)
        logits = self.forward_head(x)
        return _googlenet_outputs(logits, aux2, aux1) if with_aux else logits


def _paper_inception(in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
    return InceptionConcat([
        ConvReLU(in_channels, ch1x1, 1),
        nn.Sequential(ConvReLU(in_channels, ch3x3red, 1),
                      ConvReLU(ch3x3red, ch3x3, 3, padding=1)),
        nn.Sequential(ConvReLU(in_channels, ch5x5red, 1),
                      ConvReLU(ch5x5red, ch5x5, 5, padding=2)),
        nn.Sequential(MaxPool2d(3, 1, 1), ConvReLU(in_channels, pool_proj, 1)),
    ])


def _paper_aux(in_channels, num_classes, dropout):
    return InceptionAux(nn.AvgPool2d(5, 3, ceil_mode=True), ConvReLU(in_channels, 128, 1),
                        num_classes, dropout)


class GoogLeNet(_GoogLeNetBase):
    """GoogLeNet as Szegedy et al. (2015), "Going Deeper with Convolutions", Table 1 and
    section 5 describe it: 224 x 224 input, no BatchNorm; 13,378,280 parameters at
    num_classes=1000 (6,998,552 without the auxiliary classifiers).

    Stem: conv1 7x7/2 + ReLU, max-pool 3x3/2, LRN, conv2 1x1 + ReLU, conv3 3x3 (its
    ReLU, the second LRN and max-pool 3x3/2 in one op, `relu_lrn_maxpool2`). LRN as in
    the reference Caffe model (bvlc_googlenet): size 5, alpha 1e-4, beta 0.75, k 1; its
    max-pools round up (ceil_mode), giving Table 1's 56/28/14/7. The Inception branches are
    Conv + ReLU layers (ConvReLU), the last of each writing into the module's output; the
    auxiliary classifiers take a 5x5/3 average pool (4 x 4 at 224 x 224). Initialised as
    the Caffe model: its "xavier" U(-sqrt(3 / fan_in), sqrt(3 / fan_in)) for every weight,
    biases 0.2, classifier biases 0.
    """

    def __init__(self, num_classes=1000, in_chans=3, aux_logits=True, dropout=0.4,
                 dropout_aux=0.7):
        super().__init__()
        self.conv1 = ConvReLU(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = MaxPool2d(3, 2, ceil_mode=True)
        self.norm1 = LocalResponseNorm(5, 1e-4, 0.75, 1.0)
        self.conv2 = ConvReLU(64, 64, 1)
        self.conv3 = nn.Conv2d(64, 192, 3, padding=1)
        self.relu_lrn_maxpool2 = ReLULRNMaxPool(5, 1e-4, 0.75, 1.0, 3, 2, ceil_mode=True)
        self._add_body(_paper_inception, MaxPool2d(3, 2, ceil_mode=True),
                       lambda cin, classes: _paper_aux(cin, classes, dropout_aux),
                       num_classes, aux_logits, dropout)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="linear")
                nn.init.constant_(m.bias, 0.2)
        auxes = [aux for aux in (self.aux1, self.aux2) if aux is not None]
        for classifier in [self.fc] + [aux.fc2 for aux in auxes]:
            nn.init.zeros_(classifier.bias)

    def stem(self, x):
        x = self.conv1(x)  # N x 64 x 112 x 112
        x = self.norm1(self.maxpool1(x))  # N x 64 x 56 x 56
        x = self.conv3(self.conv2(x))  # N x 192 x 56 x 56
        return self.relu_lrn_maxpool2(x)  # N x 192 x 28 x 28


def _basic_conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    """torchvision's BasicConv2d: Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""
    return ConvBNReLU(in_channels, out_channels, kernel_size, stride, padding, eps=1e-3)


class Inception(InceptionConcat):
    """torchvision's Inception module: branch1 (1x1), branch2 (1x1 -> 3x3), branch3
    (1x1 -> 3x3: torchvision's "5x5", as its weights have it), branch4 (max-pool 3x3/1 ->
    1x1), all Conv-BN-ReLU. InceptionConcat's forward over these four attributes instead
    of its `branches` list, so the state_dict keys are torchvision's (branch2.0.conv.weight,
    ...)."""

    def __init__(self, in_channels, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
        nn.Module.__init__(self)  # not InceptionConcat's: no `branches` list to register
        self.branch1 = _basic_conv(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(_basic_conv(in_channels, ch3x3red, 1),
                                     _basic_conv(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(_basic_conv(in_channels, ch5x5red, 1),
                                     _basic_conv(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(MaxPool2d(3, 1, 1, ceil_mode=True),
                                     _basic_conv(in_channels, pool_proj, 1))

    @property
    def branches(self):
        return (self.branch1, self.branch2, self.branch3, self.branch4)


def _torchvision_aux(in_channels, num_classes, dropout):
    return InceptionAux(nn.AdaptiveAvgPool2d(4), _basic_conv(in_channels, 128, 1),
                        num_classes, dropout)


# transform_input: x * scale + shift per channel takes inputs normalised with ImageNet's
# mean and std to the (x - 0.5) / 0.5 that torchvision's GoogLeNet weights expect
_TRANSFORM_SCALE = tuple(std / 0.5 for std in (0.229, 0.224, 0.225))
_TRANSFORM_SHIFT = tuple((mean - 0.5) / 0.5 for mean in (0.485, 0.456, 0.406))


class GoogLeNetBN(_GoogLeNetBase):
    """GoogLeNet as torchvision builds it (torchvision.models.googlenet): the paper's
    layout with Conv-BN-ReLU layers (BatchNorm eps 1e-3) and no LRN, 3x3 convolutions in
    the "5x5" branches, a 2x2/2 max-pool after 4e, auxiliary classifiers on a 4 x 4
    adaptive average pool, dropout 0.2. Same modules, keys and initialisation (truncated
    normal, std 0.01, on every convolution and linear weight), so its state_dicts load with
    strict=True. 224 x 224 input; 13,004,888 parameters at num_classes=1000 (6,624,904
    without the auxiliary classifiers). Each Conv-BN-ReLU is one fastcnn op."""

    def __init__(self, num_classes=1000, in_chans=3, aux_logits=True, transform_input=False,
                 init_weights=True, dropout=0.2, dropout_aux=0.7):
        super().__init__()
        if transform_input and in_chans != 3:
            raise ValueError(f"transform_input renormalises 3 (RGB) input channels, got "
                             f"in_chans={in_chans}")
        self.transform_input = transform_input
        self.conv1 = _basic_conv(in_chans, 64, 7, stride=2, padding=3)
        self.maxpool1 = MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = _basic_conv(64, 64, 1)
        self.conv3 = _basic_conv(64, 192, 3, padding=1)
        self.maxpool2 = MaxPool2d(3, 2, ceil_mode=True)
        self._add_body(Inception, MaxPool2d(2, 2, ceil_mode=True),
                       lambda cin, classes: _torchvision_aux(cin, classes, dropout_aux),
                       num_classes, aux_logits, dropout)
        if init_weights:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)

    def stem(self, x):
        if self.transform_input:
            scale, shift = (torch.tensor(c, dtype=x.dtype, device=x.device).view(3, 1, 1)
                            for c in (_TRANSFORM_SCALE, _TRANSFORM_SHIFT))
            x = x * scale + shift
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56
        x = self.conv3(self.conv2(x))  # N x 192 x 56 x 56
        return self.maxpool2(x)  # N x 192 x 28 x 28


@register_model
def googlenet(num_classes=1000, in_chans=3, **kwargs):
    """The paper's GoogLeNet (LRN, real 5x5 branches, no BatchNorm); kwargs: aux_logits
    (True), dropout (0.4), dropout_aux (0.7)."""
    return GoogLeNet(num_classes, in_chans, **kwargs)


@register_model(torchvision="googlenet", weights_arguments=dict(transform_input=True))
def googlenet_torchvision(num_classes=1000, in_chans=3, **kwargs):
    """torchvision's BatchNorm GoogLeNet, its keys; kwargs: aux_logits (True),
    transform_input (False; True with torchvision's weights by name, as torchvision sets
    it), init_weights (True), dropout (0.2), dropout_aux (0.7)."""
    return GoogLeNetBN(num_classes, in_chans, **kwargs)
