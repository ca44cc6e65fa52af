"""VGG: torchvision's parameter counts, keys and initialisation for A, B, D, E and their
BatchNorm variants; the fused forward against the unfused modules; A-LRN. The zoo's test
compares each with torchvision's model (logits, a training step)."""

import pytest
import torch
import torchvision
from helpers import randn, randomise_batch_norms, tolerance

from fastcnn.models import create_model, default_input_size, list_models
from fastcnn.models.alexnet import KRIZHEVSKY_LRN
from fastcnn.models.vgg import vgg11, vgg11_bn, vgg11_lrn
from fastcnn.nn import ConvReLU, MaxPool2d, ReLULRNMaxPool

# torchvision's counts at num_classes=1000
PARAMETERS = {
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248, "vgg11_lrn": 132_863_336,
}
TORCHVISION = [name for name in PARAMETERS if name != "vgg11_lrn"]


def _shapes(model):
    return [(key, tuple(value.shape)) for key, value in model.state_dict().items()]


def _with_features_only(builder):
    """builder(num_classes=10) with only its features materialised (random parameters and
    running statistics): building the classifier's 120M values takes seconds."""
    with torch.device("meta"):
        model = builder(num_classes=10)
    model.features.to_empty(device="cpu")
    for m in model.features.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return randomise_batch_norms(model, scale=0.1)


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvisions_parameter_count_and_keys(name):
    """Built on the meta device: shapes without the 140M values."""
    with torch.device("meta"):
        ours = create_model(name)
        theirs = getattr(torchvision.models, name)()
    assert sum(p.numel() for p in ours.parameters()) == PARAMETERS[name]
    assert _shapes(ours) == _shapes(theirs)
    assert default_input_size(name) == (3, 224, 224)


def test_vgg11_lrn_is_vgg11_with_lrn():
    """A-LRN: conv1, then its ReLU, AlexNet's LRN and the 2x2/2 max-pool in one layer;
    VGG-11's parameters and keys otherwise, so VGG-11's state_dict loads."""
    with torch.device("meta"):
        model, plain = vgg11_lrn(), vgg11()
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS["vgg11_lrn"]
    assert _shapes(model) == _shapes(plain)
    first = model.features[1]
    assert type(model.features[0]) is torch.nn.Conv2d and type(first) is ReLULRNMaxPool
    assert (first.size, first.alpha, first.beta, first.k) == KRIZHEVSKY_LRN
    assert (first.kernel_size, first.stride) == (2, 2)
    assert type(model.features[2]) is torch.nn.Identity  # in the first max-pool's place
    assert [type(m) for m in model.features][3:] == [type(m) for m in plain.features][3:]
    assert "vgg11_lrn" in list_models("vgg*")


@pytest.fixture(scope="module")
def seeded_vgg11_bn():
    """vgg11_bn(num_classes=10) built after torch.manual_seed(2), in eval mode."""
    torch.manual_seed(2)
    return vgg11_bn(num_classes=10).eval()


def test_torchvisions_initialisation(seeded_vgg11_bn):
    """The same seed gives torchvision's very parameters (Kaiming-normal convolutions,
    N(0, 0.01) Linear, zero biases, BatchNorm 1 and 0)."""
    torch.manual_seed(2)
    theirs = torchvision.models.vgg11_bn(num_classes=10).state_dict()
    ours = seeded_vgg11_bn.state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_fused_layers_at_torchvisions_indices():
    with torch.device("meta"):
        model, batch_norm = vgg11(), vgg11_bn()
    kinds = [type(m).__name__ for m in model.features][:6]
    assert kinds == ["ConvReLU", "Identity", "MaxPool2d", "ConvReLU", "Identity", "MaxPool2d"]
    kinds = [type(m).__name__ for m in batch_norm.features][:5]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Conv2d"]
    assert all(type(m) in (ConvReLU, torch.nn.Identity, MaxPool2d) for m in model.features)


@pytest.mark.parametrize("builder", [vgg11, vgg11_bn, vgg11_lrn])
def test_forward_features_is_the_features_modules(builder):
    """forward_features (Conv-BN-ReLU fused) gives what `features` gives run one module at
    a time, eval and training (same running statistics after); a 32 x 32 input reaches
    1 x 1 after the five pools."""
    fused, modules = _with_features_only(builder), _with_features_only(builder)
    modules.features.load_state_dict(fused.features.state_dict())
    x = randn(2, 3, 32, 32)
    for train in (False, True):
        with torch.no_grad():
            expected = modules.train(train).features(x)
            actual = fused.train(train).forward_features(x)
        assert actual.shape == (2, 512, 1, 1)
        torch.testing.assert_close(actual, expected, **tolerance(torch.float32, convolution=True))
        for a, b in zip(fused.buffers(), modules.buffers(), strict=True):
            torch.testing.assert_close(a, b, **tolerance(torch.float32, convolution=True))


def test_head_on_small_inputs(seeded_vgg11_bn):
    """avgpool makes the 1 x 1 map of a 32 x 32 input the classifier's 7 x 7."""
    model = seeded_vgg11_bn
    with torch.no_grad():
        features = model.forward_features(randn(2, 3, 32, 32))
        assert features.shape == (2, 512, 1, 1)
        assert model.forward_head(features).shape == (2, 10)
        assert model.forward_head(features, pre_logits=True).shape == (2, 4096)


def test_options():
    with torch.device("meta"):
        model = create_model("vgg13_bn", num_classes=5, in_chans=1, dropout=0.2)
    assert model.features[0].in_channels == 1 and model.classifier[-1].out_features == 5
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
