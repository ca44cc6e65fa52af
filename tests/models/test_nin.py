"""Network In Network as the authors' released CIFAR-10 and ImageNet models: parameter
counts, layer names and sizes, Caffe's ceil-mode pooling, the class maps and their global
average."""

import pytest
import torch
from helpers import randn

import fastcnn.models.nin  # noqa: F401  (registers nin_cifar10 and nin_imagenet)
from fastcnn.models import create_model, default_input_size, torch_layers
from fastcnn.models.nin import nin_cifar10, nin_imagenet
from fastcnn.nn import ConvReLU, GlobalAvgPool2d, MaxPool2d


def parameters(module):
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def imagenet_model():
    return nin_imagenet().eval()


def layer_sizes(model, x):
    sizes = {}
    for name, layer in model.features.named_children():
        x = layer(x)
        sizes[name] = tuple(x.shape[1:])
    return sizes


def test_parameter_counts(imagenet_model):
    assert parameters(nin_cifar10()) == 966986
    assert parameters(nin_cifar10(num_classes=1000)) == 1158056
    assert parameters(imagenet_model) == 7595176
    assert parameters(nin_imagenet(num_classes=10)) == 6580426


def test_cifar10_layers_and_sizes():
    model = nin_cifar10().eval()
    with torch.no_grad():
        sizes = layer_sizes(model, randn(2, 3, 32, 32))
    assert sizes == {
        "conv1": (192, 32, 32), "cccp1": (160, 32, 32), "cccp2": (96, 32, 32),
        "pool1": (96, 16, 16), "drop1": (96, 16, 16),
        "conv2": (192, 16, 16), "cccp3": (192, 16, 16), "cccp4": (192, 16, 16),
        "pool2": (192, 8, 8), "drop2": (192, 8, 8),
        "conv3": (192, 8, 8), "cccp5": (192, 8, 8), "cccp6": (10, 8, 8)}
    f = model.features
    assert all(isinstance(getattr(f, n), ConvReLU)
               for n in ("conv1", "cccp1", "cccp2", "conv2", "cccp3", "cccp4", "conv3",
                         "cccp5", "cccp6"))
    assert (f.conv1.kernel_size, f.conv2.kernel_size, f.conv3.kernel_size) == \
        ((5, 5), (5, 5), (3, 3))
    assert isinstance(f.pool1, MaxPool2d) and isinstance(f.pool2, torch.nn.AvgPool2d)
    assert isinstance(model.global_pool, GlobalAvgPool2d) and model.global_pool.flatten
    assert default_input_size("nin_cifar10") == (3, 32, 32)


def test_imagenet_layers_and_sizes(imagenet_model):
    with torch.no_grad():
        sizes = layer_sizes(imagenet_model, randn(1, 3, 224, 224))
    assert sizes == {
        "conv1": (96, 54, 54), "cccp1": (96, 54, 54), "cccp2": (96, 54, 54),
        "pool1": (96, 27, 27),
        "conv2": (256, 27, 27), "cccp3": (256, 27, 27), "cccp4": (256, 27, 27),
        "pool2": (256, 13, 13),
        "conv3": (384, 13, 13), "cccp5": (384, 13, 13), "cccp6": (384, 13, 13),
        "pool3": (384, 6, 6), "drop3": (384, 6, 6),
        "conv4": (1024, 6, 6), "cccp7": (1024, 6, 6), "cccp8": (1000, 6, 6)}
    f = imagenet_model.features
    assert (f.conv1.kernel_size, f.conv1.stride) == ((11, 11), (4, 4))
    assert default_input_size("nin_imagenet") == (3, 224, 224)


def test_average_pool_divides_by_the_window_inside_the_input():
    """Caffe's ceil-mode average pooling, as the released model computes pool2: the last
    window, cut by the border, is the mean of the values inside it."""
    pool = nin_cifar10().features.pool2
    x = randn(1, 2, 16, 16, dtype=torch.float64)
    y = pool(x)
    assert y.shape == (1, 2, 8, 8)
    torch.testing.assert_close(y[..., 7, 7], x[..., 14:, 14:].mean((-1, -2)))
    torch.testing.assert_close(y[..., 0, 7], x[..., 0:3, 14:].mean((-1, -2)))


def test_logits_are_the_class_maps_averaged():
    model = nin_cifar10(num_classes=7).double().eval()
    x = randn(3, 3, 32, 32, dtype=torch.float64)
    maps = model.forward_features(x)
    assert maps.shape == (3, 7, 8, 8)
    torch.testing.assert_close(model(x), maps.mean((-1, -2)))
    torch.testing.assert_close(model.forward_head(maps, pre_logits=True), model(x))
    torch.testing.assert_close(torch_layers(model)(x), model(x))


def test_options_and_registry():
    model = create_model("nin_cifar10", num_classes=100, in_chans=1, drop_rate=0.2)
    assert model.features.conv1.in_channels == 1
    assert model.features.cccp6.out_channels == 100
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.2]
    model = create_model("nin_imagenet", num_classes=10)
    assert model.features.cccp8.out_channels == 10
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.5]
    keys = [k for k in model.state_dict() if k.endswith("weight")]
    assert keys == [f"features.{n}.weight" for n in (
        "conv1", "cccp1", "cccp2", "conv2", "cccp3", "cccp4", "conv3", "cccp5", "cccp6",
        "conv4", "cccp7", "cccp8")]
