"""ZFNet: the layer sizes of Zeiler & Fergus's figure 3, its parameter count, the paper's
order ReLU -> max-pool -> contrast normalisation, and its initialisation. The zoo's test
compares it with the same network on PyTorch's layers."""

import pytest
import torch
from helpers import randn

from fastcnn.models import create_model, default_input_size
from fastcnn.models.alexnet import KRIZHEVSKY_LRN
from fastcnn.models.zfnet import zfnet
from fastcnn.nn import ConvReLU, LocalResponseNorm, MaxPool2d


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return zfnet().eval()


def test_parameter_count(model):
    # conv1 14,208 + conv2 614,656 + conv3 885,120 + conv4 1,327,488 + conv5 884,992
    # + fc6 37,752,832 + fc7 16,781,312 + fc8 4,097,000
    assert sum(p.numel() for p in model.parameters()) == 62_357_608


def test_figure_3_layer_sizes(model):
    """224 -> 110 (conv1) -> 55 (pool1) -> 26 (conv2) -> 13 (pool2, conv3-5) -> 6 (pool5)."""
    assert default_input_size("zfnet") == (3, 224, 224)
    x = randn(1, 3, 224, 224)
    sizes = {}
    with torch.no_grad():
        for name, layer in model.features.named_children():
            x = layer(x)
            sizes[name] = tuple(x.shape[1:])
        assert model.forward_head(x).shape == (1, 1000)
        assert model.forward_head(x, pre_logits=True).shape == (1, 4096)
    assert sizes == {
        "conv1": (96, 110, 110), "pool1": (96, 55, 55), "norm1": (96, 55, 55),
        "conv2": (256, 26, 26), "pool2": (256, 13, 13), "norm2": (256, 13, 13),
        "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13),
        "pool5": (256, 6, 6)}


def test_relu_then_pool_then_contrast_normalisation(model):
    """Section 2: ReLU, max-pool, then normalisation across maps; dense layers 3 to 5."""
    f = model.features
    kinds = [type(m) for m in f]
    assert kinds == [ConvReLU, MaxPool2d, LocalResponseNorm, ConvReLU, MaxPool2d,
                     LocalResponseNorm, ConvReLU, ConvReLU, ConvReLU, MaxPool2d]
    for norm in (f.norm1, f.norm2):
        assert (norm.size, norm.alpha, norm.beta, norm.k) == KRIZHEVSKY_LRN
    for pool in (f.pool1, f.pool2, f.pool5):
        assert (pool.kernel_size, pool.stride, pool.ceil_mode) == (3, 2, True)
    assert [(c.kernel_size, c.stride, c.padding, c.groups) for c in
            (f.conv1, f.conv2, f.conv3, f.conv4, f.conv5)] == [
        ((7, 7), (2, 2), (1, 1), 1), ((5, 5), (2, 2), (0, 0), 1), ((3, 3), (1, 1), (1, 1), 1),
        ((3, 3), (1, 1), (1, 1), 1), ((3, 3), (1, 1), (1, 1), 1)]
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]


def test_paper_initialisation(model):
    """Section 3: weights 1e-2 (N(0, 0.01)), biases 0."""
    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            assert abs(layer.weight.std().item() - 0.01) < 0.001
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_options_and_other_input_sizes():
    model = create_model("zfnet", num_classes=10, in_chans=1, dropout=0.3).eval()
    assert model.features.conv1.in_channels == 1 and model.classifier.fc8.out_features == 10
    assert [m.p for m in model.classifier if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]
    with torch.no_grad(), pytest.raises(ValueError, match="from 224 x 224 inputs; got"):
        model(randn(1, 1, 160, 160))
