"""fastcnn's ResNets: torchvision's parameter counts, keys and initialisation, the stage
sizes of the paper's Table 1, zero_init_residual, the shortcut's fallback for other
downsample modules, the groups/width options, and one training step in float64 against
torchvision's model (the shared zoo tests compare every model in float32)."""

import pytest
import torch
import torchvision
from helpers import randn, randomise_batch_norms

from fastcnn.models import create_model, list_models, torchvision_counterpart
from fastcnn.models.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet50

# torchvision's counts at num_classes=1000 (the paper's Table 1 architectures)
PARAMETERS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_count(name):
    assert count(create_model(name)) == PARAMETERS[name]


def test_registry():
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34",
                                      "resnet50"]
    for name in PARAMETERS:
        assert torchvision_counterpart(name)[0] == name
    model = create_model("resnet18", num_classes=7, in_chans=1)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 7


@pytest.mark.parametrize("builder", [resnet18, resnet50])
def test_initialisation_and_keys_are_torchvisions(builder):
    """The same random numbers give torchvision's state_dict: the same modules built in
    the same order, the same initialisation, the same keys in the same order."""
    torch.manual_seed(0)
    ours = builder(zero_init_residual=True).state_dict()
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, builder.__name__)(zero_init_residual=True).state_dict()
    assert list(ours) == list(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.mark.parametrize("builder, last", [(resnet18, "bn2"), (resnet50, "bn3")])
def test_zero_init_residual_zeroes_each_blocks_last_batch_norm(builder, last):
    model = builder(zero_init_residual=True)
    zeroed = {name for name, m in model.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any()}
    blocks = [name for name, m in model.named_modules() if isinstance(m, (BasicBlock,
                                                                          Bottleneck))]
    assert zeroed == {f"{block}.{last}" for block in blocks}
    ones = [m.weight for name, m in model.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) and name not in zeroed]
    assert all(bool((w == 1).all()) for w in ones)
    assert not any(not m.weight.any() for m in builder().modules()
                   if isinstance(m, torch.nn.BatchNorm2d))
    # a block without projection then passes its (non-negative) input through unchanged
    block = model.layer1[1].eval()
    x = randn(2, block.conv1.in_channels, 8, 8).relu()
    with torch.no_grad():
        torch.testing.assert_close(block(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("builder, expansion", [(resnet18, 1), (resnet50, 4)])
def test_stage_sizes(builder, expansion):
    """Table 1 of the paper for 224 x 224: conv1 112, conv2_x 56, conv3_x 28, conv4_x 14,
    conv5_x 7, with 64, 128, 256, 512 (times 4 in bottlenecks) channels."""
    model = builder().eval()
    sizes = {}
    for name in ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        getattr(model, name).register_forward_hook(
            lambda module, args, out, name=name: sizes.__setitem__(name, tuple(out.shape)))
    with torch.no_grad():
        features = model.forward_features(randn(1, 3, 224, 224))
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    e = expansion
    assert sizes == {"conv1": (1, 64, 112, 112), "maxpool": (1, 64, 56, 56),
                     "layer1": (1, 64 * e, 56, 56), "layer2": (1, 128 * e, 28, 28),
                     "layer3": (1, 256 * e, 14, 14), "layer4": (1, 512 * e, 7, 7)}
    assert tuple(features.shape) == (1, 512 * e, 7, 7)
    assert tuple(pooled.shape) == (1, 512 * e) == (1, model.num_features)
    assert tuple(logits.shape) == (1, 1000)


def test_small_input_trains():
    """32 x 32 (CIFAR-sized): layer4 is 1 x 1; a training step reaches every parameter."""
    model = resnet18(num_classes=10, in_chans=1).train()
    out = model(randn(2, 1, 32, 32))
    assert out.shape == (2, 10)
    torch.nn.functional.cross_entropy(out, torch.tensor([1, 8])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all() and p.grad.any(), name
    assert all(int(m.num_batches_tracked) == 1 for m in model.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("builder", [resnet18, resnet50])
def test_training_step_matches_torchvision_in_float64(builder):
    """Basic and bottleneck blocks, projection shortcuts, the fused residual: eval logits,
    then one training step's logits, gradients and running statistics. 64 x 64, so that
    layer4's batch statistics have 8 values per channel: with 2 (a 32 x 32 input) they are
    so ill-conditioned that torchvision's own model in channels_last differs from it by
    up to 1e-7 in float64."""
    theirs = getattr(torchvision.models, builder.__name__)(num_classes=10)
    theirs = randomise_batch_norms(theirs, scale=0.1).double()
    ours = builder(num_classes=10).double()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    outputs = []
    for model in (ours.train(), theirs.train()):
        out = model(x)
        torch.nn.functional.cross_entropy(out, torch.tensor([3, 7])).backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[0], outputs[1])
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name)
    for a, b in zip(ours.buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, b)


class _Projection(torch.nn.Module):
    """A shortcut that is not torchvision's Sequential(Conv2d, BatchNorm2d)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.pool = torch.nn.AvgPool2d(2)
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x):
        return self.conv(self.pool(x))


@pytest.mark.parametrize("downsample", [
    lambda: _Projection(8, 16),
    lambda: torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1, 2, bias=False),
                                torch.nn.BatchNorm2d(16), torch.nn.ReLU()),
], ids=["module", "three-layer-sequential"])
def test_other_downsample_modules_are_called(downsample):
    ours = BasicBlock(8, 16, 2, downsample())
    theirs = torchvision.models.resnet.BasicBlock(8, 16, 2, downsample())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    randomise_batch_norms(ours)
    theirs.load_state_dict(ours.state_dict())
    x = randn(2, 8, 8, 8, dtype=torch.float64)
    ours, theirs = ours.double(), theirs.double()
    for mode in (False, True):
        torch.testing.assert_close(ours.train(mode)(x), theirs.train(mode)(x))


def test_groups_and_width_give_torchvisions_resnext_and_wide_resnet():
    resnext = ResNet(Bottleneck, (3, 4, 6, 3), groups=32, width_per_group=4)
    resnext.load_state_dict(torchvision.models.resnext50_32x4d().state_dict(), strict=True)
    assert count(resnext) == 25_028_904
    assert count(ResNet(Bottleneck, (3, 4, 6, 3), width_per_group=128)) == 68_883_240


def test_bad_arguments():
    with pytest.raises(ValueError, match="BasicBlock takes groups=1 and base_width=64"):
        ResNet(BasicBlock, (2, 2, 2, 2), groups=32, width_per_group=4)
    with pytest.raises(ValueError, match="number of blocks of the 4 stages"):
        ResNet(BasicBlock, (2, 2, 2))
