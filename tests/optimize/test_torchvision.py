"""fastcnn.optimize on every torchvision classification model (random weights, random
BatchNorm statistics, float64, small inputs): the same logits in eval mode, the same loss,
gradients, updated parameters and running statistics after one training step, the same
state_dict keys, and every swap in the report."""

import copy

import pytest
import torch
import torchvision
from helpers import randn, randomise_batch_norms, tolerance

import fastcnn

ALL = torchvision.models.list_models(module=torchvision.models)
# Hundreds of millions of parameters each (10 GB and more as two float64 copies): their
# blocks are those of the smaller members of their families; tested in float32 eval mode.
GIANT = {"regnet_y_128gf", "vit_h_14", "vit_l_16", "vit_l_32"}
# The training step on the first (smallest) model of each family; the rest run the same
# blocks at other widths and depths.
TRAIN = ["alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
         "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
         "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18", "resnet50",
         "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "vgg11_bn",
         "vit_b_32", "wide_resnet50_2"]
_ARGUMENTS = {"googlenet": dict(aux_logits=True, init_weights=True),
              "inception_v3": dict(aux_logits=True, init_weights=True)}
# inception_v3's auxiliary head needs 17 x 17 maps before it in training mode; MaxViT's
# partitions of 7 x 7 need 224 x 224; ViT takes the size it is built for.
_SIZE = {"inception_v3": 299, "maxvit_t": 224}


def _model(name, num_classes=10):
    kwargs = dict(_ARGUMENTS.get(name, {}))
    if name.startswith("vit_"):
        kwargs["image_size"] = 28 if name.endswith("14") else 32
    return torchvision.models.get_model(name, num_classes=num_classes, **kwargs)


def _input(name, dtype=torch.float64):
    size = 28 if name == "vit_h_14" else 32 if name.startswith("vit_") else _SIZE.get(name, 64)
    return randn(2, 3, size, size, dtype=dtype)


def _logits(output):
    return output.logits if hasattr(output, "logits") else output


def _close(actual, expected, what):
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=1e-8, atol=1e-10 * max(scale, 1.0),
                               msg=lambda m: f"{what}: {m}")


def _check_report(model, optimized):
    report = optimized.fastcnn_report
    assert report.to_dict()["swapped"] == [vars(s) for s in report.swapped]
    assert set(optimized.state_dict()) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert optimized.state_dict()[key].shape == value.shape, key
    # every module whose class changed is in the report, and nothing else
    changed = {path for path, m in optimized.named_modules()
               if hasattr(m, "fastcnn_original_class")}
    assert changed == {s.path for s in report.swapped}
    return report


# the deeper and wider members of each family are marked slow: CI runs them, a developer's
# `pytest tests` the first of each family
@pytest.mark.parametrize("name", [n if n in TRAIN else pytest.param(n, marks=pytest.mark.slow)
                                  for n in ALL if n not in GIANT])
def test_eval_logits_equal(name):
    # float64 for the models of the training step, float32 (its convolutions many times
    # faster here) for their deeper and wider relatives
    dtype = torch.float64 if name in TRAIN else torch.float32
    torch.manual_seed(0)
    model = randomise_batch_norms(_model(name), scale=0.1).to(dtype).eval()
    optimized = fastcnn.optimize(model)
    _check_report(model, optimized)
    x = _input(name, dtype)
    with torch.no_grad():
        got, expected = optimized(x), model(x)
    if dtype == torch.float64:
        _close(got, expected, f"{name} logits")
    else:
        torch.testing.assert_close(got, expected, **tolerance(dtype, convolution=True))
    assert all(not hasattr(m, "fastcnn_original_class") for m in model.modules())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GIANT))
def test_giant_eval_logits_equal(name):
    torch.manual_seed(0)
    model = _model(name).eval()
    optimized = fastcnn.optimize(model, inplace=True)
    x = _input(name, torch.float32)
    with torch.no_grad():
        got = optimized(x)
        expected = fastcnn.restore(optimized)(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", TRAIN)
def test_training_step_equal(name):
    torch.manual_seed(0)
    model = randomise_batch_norms(_model(name), scale=0.1).double().train()
    _step_results(model, fastcnn.optimize(model), _input(name), name)


def _step_results(model, optimized, x, name):
    """One SGD step of each from the same state: the same loss, gradients, parameters
    and BatchNorm statistics after it."""
    results = []
    for net in (model, optimized):
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        torch.manual_seed(1)  # the same dropout and stochastic-depth draws
        loss = torch.nn.functional.cross_entropy(_logits(net(x)), torch.tensor([3, 7]))
        loss.backward()
        grads = {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}
        optimizer.step()
        results.append((loss.detach(), grads, copy.deepcopy(net.state_dict())))
    (loss, grads, state), (loss_o, grads_o, state_o) = results
    _close(loss_o, loss, f"{name} loss")
    assert set(grads_o) == set(grads)
    for key in grads:
        _close(grads_o[key], grads[key], f"{name} gradient of {key}")
    for key in state:
        _close(state_o[key], state[key], f"{name} {key} after the step")
