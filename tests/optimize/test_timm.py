"""fastcnn.optimize on the timm models the benchmarks time (random weights, random
BatchNorm statistics, float64): the same logits in eval mode and the same loss, gradients
and state after one training step. timm is a test requirement (requirements.txt)."""

import pytest
import timm
import torch
from helpers import randomise_batch_norms
from test_torchvision import _check_report, _close, _step_results

import fastcnn
from fastcnn.convert.rewrite import NO_PASS_SAVED

# timm's ResNet blocks (plain BatchNorm2d), an SE-ResNet, and an EfficientNet built of
# timm's BatchNormAct2d (BatchNorm + SiLU in one module), whose chains have no ReLU to fuse
MODELS = {"resnet50": "fastcnn conv_bn_relu + residual",
          "seresnet50": "fastcnn conv_bn_relu",
          "efficientnet_b0": "fastcnn.nn.GlobalAvgPool2d"}


def _model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10)
    return randomise_batch_norms(model, scale=0.1).double()


@pytest.mark.parametrize("name", MODELS)
def test_eval_logits_equal(name):
    model = _model(name).eval()
    optimized = fastcnn.optimize(model)
    report = _check_report(model, optimized)
    assert MODELS[name] in report.counts()
    # what is left is Conv -> BatchNorm with no ReLU or residual after it
    assert {left.reason.split(" (")[0] for left in report.left} <= {NO_PASS_SAVED}
    if name == "efficientnet_b0":
        assert "(its SiLU is no ReLU)" in str(report)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        _close(optimized(x), model(x), f"timm {name} logits")


@pytest.mark.parametrize("name", MODELS)
def test_training_step_equal(name):
    model = _model(name).train()
    _step_results(model, fastcnn.optimize(model), torch.randn(2, 3, 64, 64,
                                                               dtype=torch.float64), name)
