"""Every registered model: forward in train and eval mode, the forward_features /
forward_head split, channels_last, bfloat16 autocast, torch.compile, its parameter count
in its docstring; against torchvision's model where it has one (state_dict, logits,
a training step), and otherwise against the same network on PyTorch's own layers
(fastcnn.models.torch_layers). Model-specific checks live in each family's test file."""

import pytest
import torch
import torchvision
from helpers import randn, randomise_batch_norms

from fastcnn.models import (create_model, default_input_size, list_models, torch_layers,
                            torchvision_counterpart)
from fastcnn.models._registry import _BUILDERS

MODELS = list_models()
# Deeper members of a family whose first model is tested whole: the same blocks, more of
# them. Their parameter counts, forward and eval logits against torchvision are tested.
DEEPER = {"densenet161", "densenet169", "densenet201", "resnet34", "resnet101", "resnet152",
          "vgg13", "vgg16", "vgg19", "vgg13_bn", "vgg16_bn", "vgg19_bn"}
WHOLE = [name for name in MODELS if name not in DEEPER]
TORCHVISION = [name for name in MODELS if torchvision_counterpart(name)]
# Models with fastcnn layers and no torchvision counterpart (LeNet-5 has no layer that
# fastcnn replaces: it is PyTorch's layers already)
PAPER = [name for name in MODELS if not torchvision_counterpart(name) and name != "lenet5"]
# torchvision's models adapt their pooling to the input: they are tested on 64 x 64 images
# (at 32 x 32 the last BatchNorm of a ResNet sees two values per channel, and the
# comparisons measure its ill-conditioning)
SMALL = 64
# torchvision builder arguments that give the model fastcnn builds by default
_TORCHVISION_ARGUMENTS = {"googlenet": dict(aux_logits=True, init_weights=True)}
# Whole networks under torch.compile, those whose layers the others share (each compiles
# for a minute or more here; InceptionConcat's and DenseBlock's compiled paths are tested
# in tests/nn)
COMPILED = ["lenet5", "alexnet", "resnet18"]


def _input(name, batch=2, dtype=torch.float32):
    c, h, w = default_input_size(name)
    if torchvision_counterpart(name):
        h = w = SMALL
    return randn(batch, c, h, w, dtype=dtype)


def _outputs(output):
    return list(output) if isinstance(output, tuple) else [output]


def _torchvision_twin(name, num_classes):
    """(ours, torchvision's) in float64, with the same random weights and BatchNorm
    statistics."""
    builder, keys = torchvision_counterpart(name)
    theirs = getattr(torchvision.models, builder)(
        num_classes=num_classes, **_TORCHVISION_ARGUMENTS.get(builder, {}))
    theirs = randomise_batch_norms(theirs, scale=0.1).double()
    ours = create_model(name, num_classes=num_classes).double()
    ours.load_state_dict(keys(theirs.state_dict()), strict=True)
    return ours, theirs


def _training_step(model, x, target, seed=0):
    """Loss (main and any auxiliary outputs) and its backward, dropout drawn from seed."""
    torch.manual_seed(seed)
    outputs = _outputs(model.train()(x))
    loss = sum(torch.nn.functional.cross_entropy(o, target) for o in outputs)
    loss.backward()
    return outputs, loss


def _assert_same_training_step(ours, theirs, x, **tolerance):
    target = torch.arange(x.shape[0]) % 10
    ours_out, ours_loss = _training_step(ours, x, target)
    theirs_out, theirs_loss = _training_step(theirs, x, target)
    for a, b in zip(ours_out, theirs_out, strict=True):
        torch.testing.assert_close(a, b, **tolerance)
    torch.testing.assert_close(ours_loss, theirs_loss, **tolerance)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, msg=name, **tolerance)
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, b, msg=name, **tolerance)


@pytest.mark.parametrize("name", MODELS)
def test_forward(name):
    """Logits of the right shape, finite, in eval mode and in training (where every
    parameter gets a gradient); forward is forward_head(forward_features(x))."""
    model = create_model(name, num_classes=7)
    x = _input(name)
    outputs = _outputs(model.train()(x))
    for output in outputs:
        assert output.shape == (2, 7) and output.isfinite().all()
    sum(o.sum() for o in outputs).backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None, parameter_name
    with torch.no_grad():
        logits = model.eval()(x)
        assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), logits)
        features = model.forward_head(model.forward_features(x), pre_logits=True)
    assert features.dim() == 2 and features.shape[0] == 2


@pytest.mark.parametrize("name", MODELS)
def test_docstring_states_the_parameter_count(name):
    model = create_model(name)
    count = f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}"
    docs = (_BUILDERS[name].__doc__ or "") + (type(model).__doc__ or "")
    assert count in docs, f"{name}: {count} parameters, not in its docstrings"


@pytest.mark.parametrize("name", TORCHVISION)
def test_matches_torchvision(name):
    """torchvision's randomly initialised state_dict loads with strict=True and the eval
    logits match, in float32 within 1e-4; for a family's first model also in float64, and
    so do a training step's outputs, loss, gradients and running statistics."""
    ours, theirs = _torchvision_twin(name, num_classes=10)
    x = _input(name)
    with torch.no_grad():
        ours32, theirs32 = ours.float().eval(), theirs.float().eval()
        torch.testing.assert_close(ours32(x), theirs32(x), rtol=1e-4, atol=1e-4)
    if name in DEEPER:
        return
    ours, theirs, x = ours.double(), theirs.double(), x.double()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x))
    _assert_same_training_step(ours, theirs, x)


@pytest.mark.parametrize("name", PAPER)
def test_matches_torch_layers(name):
    """float64: the same network on PyTorch's layers gives the same eval logits and the same
    training step (outputs, loss, gradients, running statistics)."""
    ours = randomise_batch_norms(create_model(name, num_classes=10), scale=0.1).double()
    theirs = torch_layers(ours)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = _input(name, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    _assert_same_training_step(ours, theirs, x)


@pytest.mark.parametrize("name", WHOLE)
def test_channels_last(name):
    """A channels_last model on a channels_last input gives the NCHW model's logits (to
    1e-4 of the largest logit: convolutions of another layout round otherwise in
    float32)."""
    model = randomise_batch_norms(create_model(name, num_classes=10), scale=0.1).eval()
    x = _input(name)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4,
                               atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("name", WHOLE)
def test_bfloat16_autocast(name):
    """Under CPU bfloat16 autocast, training and eval logits are finite and near float32's
    (relative error of the whole logit tensor, bfloat16 keeping 8 bits)."""
    model = randomise_batch_norms(create_model(name, num_classes=10), scale=0.1)
    x = _input(name)
    with torch.no_grad():
        expected = model.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            actual = model(x)
    assert actual.isfinite().all()
    error = (actual.float() - expected).norm() / expected.norm()
    assert error < 0.1, f"relative error {error:.3f}"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = _outputs(model.train()(x))
    sum(o.float().sum() for o in outputs).backward()
    assert all(p.grad.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize("name", [name for name in COMPILED if name in MODELS])
def test_torch_compile_fullgraph(name):
    """torch.compile(fullgraph=True) traces the model (no graph break) and gives eager's
    training-step outputs and gradients (dropout drawn from the same seed: Inductor's own
    random numbers switched off) and its eval logits; in float64, where float32's rounding
    through a deep network would hide nothing but noise."""
    torch._dynamo.reset()
    model = randomise_batch_norms(create_model(name, num_classes=10), scale=0.1).double()
    x = _input(name, batch=2, dtype=torch.float64)
    target = torch.arange(2) % 10
    expected, _ = _training_step(model, x, target)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(model, fullgraph=True)
        actual, _ = _training_step(compiled, x, target)
        for a, b in zip(actual, expected, strict=True):
            torch.testing.assert_close(a, b)
        for (parameter_name, p), g in zip(model.named_parameters(), grads):
            torch.testing.assert_close(p.grad, g, msg=parameter_name)
        with torch.no_grad():
            torch.testing.assert_close(compiled.eval()(x), model.eval()(x))
