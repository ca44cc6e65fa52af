"""AlexNet: the paper's network (its parameter count, 227 x 227 input and map sizes, two
towers, LRN stems and initialisation) and torchvision's one-tower variant (its keys,
parameter count and initialisation). The zoo's test compares both with their references."""

import pytest
import torch
import torchvision
from helpers import randn

from fastcnn.models import create_model, default_input_size, list_models
from fastcnn.models.alexnet import KRIZHEVSKY_LRN, alexnet, alexnet_torchvision
from fastcnn.nn import ConvReLU, MaxPool2d, ReLULRNMaxPool


@pytest.fixture(scope="module")
def paper():
    torch.manual_seed(0)
    return alexnet().eval()


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts(paper):
    # conv1 34,944 + conv2 307,456 + conv3 885,120 + conv4 663,936 + conv5 442,624
    # + fc6 37,752,832 + fc7 16,781,312 + fc8 4,097,000
    assert _count(paper) == 60_965_224
    assert _count(alexnet_torchvision()) == 61_100_840


def test_map_sizes_at_227(paper):
    """The paper's figure 2: 55 x 55 x 96 after conv1, 27 x 27 x 256 after conv2, 13 x 13
    after conv3 to conv5, 6 x 6 x 256 into fc6; 227 is the input that gives them."""
    assert default_input_size("alexnet") == (3, 227, 227)
    x = randn(1, 3, 227, 227)
    sizes = {}
    with torch.no_grad():
        for name, layer in paper.features.named_children():
            x = layer(x)
            sizes[name] = tuple(x.shape[1:])
        assert paper.forward_head(x).shape == (1, 1000)
        assert paper.forward_head(x, pre_logits=True).shape == (1, 4096)
    assert sizes == {
        "conv1": (96, 55, 55), "relu_norm_pool1": (96, 27, 27),
        "conv2": (256, 27, 27), "relu_norm_pool2": (256, 13, 13),
        "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13),
        "pool5": (256, 6, 6)}


def test_other_input_sizes_are_refused(paper):
    with torch.no_grad(), pytest.raises(ValueError, match="from 227 x 227 inputs; got 256 x 5 x 5"):
        paper(randn(1, 3, 224, 224))


def test_two_towers_and_lrn_stems(paper):
    """conv2, conv4 and conv5 see only their own GPU's half of the maps; conv3 both."""
    f = paper.features
    assert [f.conv1.groups, f.conv2.groups, f.conv3.groups, f.conv4.groups,
            f.conv5.groups] == [1, 2, 1, 2, 2]
    assert f.conv2.weight.shape == (256, 48, 5, 5) and f.conv3.weight.shape == (384, 256, 3, 3)
    assert f.conv4.weight.shape == (384, 192, 3, 3) and f.conv5.weight.shape == (256, 192, 3, 3)
    assert KRIZHEVSKY_LRN == (5, 1e-4, 0.75, 2.0)
    for stem in (f.relu_norm_pool1, f.relu_norm_pool2):
        assert type(stem) is ReLULRNMaxPool
        assert (stem.size, stem.alpha, stem.beta, stem.k) == KRIZHEVSKY_LRN
        assert (stem.kernel_size, stem.stride, stem.padding, stem.ceil_mode) == (3, 2, 0, False)
    assert type(f.conv1) is torch.nn.Conv2d and type(f.conv2) is torch.nn.Conv2d
    assert all(type(f[i]) is ConvReLU for i in (4, 5, 6))
    assert type(f.pool5) is MaxPool2d and (f.pool5.kernel_size, f.pool5.stride) == (3, 2)
    dropouts = [m.p for m in paper.classifier if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.5, 0.5]
    assert [m.p for m in alexnet(dropout=0.2).classifier
            if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]


def test_paper_initialisation(paper):
    """Weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, 0 elsewhere."""
    f, c = paper.features, paper.classifier
    for layer in (f.conv1, f.conv2, f.conv3, f.conv4, f.conv5, c.fc6, c.fc7, c.fc8):
        assert abs(layer.weight.std().item() - 0.01) < 0.001
        assert abs(layer.weight.mean().item()) < 0.001
    for layer in (f.conv2, f.conv4, f.conv5, c.fc6, c.fc7):
        assert torch.equal(layer.bias, torch.ones_like(layer.bias))
    for layer in (f.conv1, f.conv3, c.fc8):
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_options():
    model = create_model("alexnet", num_classes=10, in_chans=1)
    assert model.features.conv1.in_channels == 1 and model.classifier.fc8.out_features == 10
    assert {"alexnet", "alexnet_torchvision"} <= set(list_models("alexnet*"))


def test_torchvision_variant_has_torchvisions_keys_and_initialisation():
    """The same seed gives torchvision's AlexNet's very parameters, under its keys."""
    torch.manual_seed(1)
    theirs = torchvision.models.alexnet(num_classes=10).state_dict()
    torch.manual_seed(1)
    ours = alexnet_torchvision(num_classes=10).state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert default_input_size("alexnet_torchvision") == (3, 224, 224)


def test_torchvision_variant_features_and_pre_logits():
    model = alexnet_torchvision(num_classes=10).eval()
    assert [i for i, m in enumerate(model.features) if type(m) is ConvReLU] == [0, 3, 6, 8, 10]
    assert [i for i, m in enumerate(model.features) if type(m) is MaxPool2d] == [2, 5, 12]
    with torch.no_grad():
        features = model.forward_features(randn(1, 3, 224, 224))
        assert features.shape == (1, 256, 6, 6)
        assert model.forward_head(features, pre_logits=True).shape == (1, 4096)
