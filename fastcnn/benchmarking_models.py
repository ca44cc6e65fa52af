"""Whole-network benchmarks of the zoo, shared by `fastcnn bench --models` and
benchmarks/bench_models.py: each model against the same network on PyTorch's own layers
with the same weights, eager and under torch.compile, inference and a training step.

The baseline ("eager") is torchvision's model where the zoo model has its architecture
(vgg16, resnet50 here), its state_dict loaded into fastcnn's; otherwise
fastcnn.models.torch_layers(model), the model with every fastcnn layer swapped for
nn.LocalResponseNorm, nn.MaxPool2d, Conv2d + ReLU, torch.cat, ...
The "torchvision.*" and "timm.*" models are fastcnn.optimize's: the model itself
("eager") against its converted copy ("fastcnn"), and with torch.compile, compile against
the converted copy compiled ("fastcnn+compile").
The cases, timing and memory measurement are benchmarking_modules' (a model is a module
whose input is a batch of images).
"""

import functools

import torch
import torchvision

import fastcnn
from fastcnn import models
from fastcnn.benchmarking_modules import Module

_TORCHVISION_ARGUMENTS = {"googlenet": dict(aux_logits=True, init_weights=True),
                          "inception_v3": dict(init_weights=True)}


def _randomise_batch_norms(model):
    """BatchNorm far from its identity initialisation: random affine parameters and
    running statistics."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def twins(name):
    """{"fastcnn": the zoo model, "eager": the same network on PyTorch's layers}, with the
    same weights (every BatchNorm's parameters and statistics random)."""
    counterpart = models.torchvision_counterpart(name)
    if counterpart is None:
        ours = _randomise_batch_norms(models.create_model(name))
        return {"fastcnn": ours, "eager": models.torch_layers(ours)}
    builder, keys = counterpart
    theirs = getattr(torchvision.models, builder)(**_TORCHVISION_ARGUMENTS.get(builder, {}))
    ours = models.create_model(name)
    ours.load_state_dict(keys(_randomise_batch_norms(theirs).state_dict()), strict=True)
    return {"fastcnn": ours, "eager": theirs}


def _model(name, cuda_batch=128, quick=True, compile_by_default=False):
    return Module(functools.partial(twins, name), models.default_input_size(name),
                  ("fastcnn", "eager"), batch=dict(cuda=cuda_batch, cpu=8, quick=8),
                  images=True, compile_by_default=compile_by_default,
                  quick_modes=("forward",) if quick else ())


# The networks of the zoo, each once (one VGG, the paper's AlexNet and GoogLeNet). On CPU
# the quick subset is inference at batch 8 of the four that are quickest to run (and of
# two of the fastcnn.optimize models below).
MODELS = {
    "lenet5": _model("lenet5", cuda_batch=1024, compile_by_default=True),
    "alexnet": _model("alexnet", compile_by_default=True),
    "zfnet": _model("zfnet", quick=False),
    "vgg16": _model("vgg16", cuda_batch=64, quick=False),
    "nin_imagenet": _model("nin_imagenet", quick=False),
    "googlenet": _model("googlenet"),
    "resnet50": _model("resnet50"),
}


def library_model(library, name):
    """torchvision's or timm's model `name`, randomly initialised (timm imported only
    here, as it is optional)."""
    if library == "timm":
        import timm

        return timm.create_model(name, pretrained=False)
    return getattr(torchvision.models, name)(weights=None, **_TORCHVISION_ARGUMENTS.get(name, {}))


def optimized(library, name):
    """{"fastcnn": fastcnn.optimize(model), "eager": model}, model a torchvision or timm
    model with every BatchNorm's parameters and statistics random."""
    model = _randomise_batch_norms(library_model(library, name))
    return {"fastcnn": fastcnn.optimize(model), "eager": model}


# fastcnn.optimize on models as they exist: (library, model, input size, batch on CUDA,
# whether inference at batch 8 is in the quick CPU subset).
_OPTIMIZED = (
    ("torchvision", "alexnet", 224, 128, False),
    ("torchvision", "googlenet", 224, 128, True),
    ("torchvision", "inception_v3", 299, 128, False),
    ("torchvision", "resnet50", 224, 128, True),
    ("torchvision", "vgg16", 224, 64, False),
    ("torchvision", "densenet121", 224, 64, False),
    ("timm", "resnet50", 224, 128, False),
    ("timm", "seresnet50", 224, 128, False),
    ("timm", "efficientnet_b0", 224, 128, False),
)

MODELS.update({
    f"{library}.{name}": Module(
        functools.partial(optimized, library, name), (3, size, size), ("fastcnn", "eager"),
        batch=dict(cuda=cuda_batch, cpu=8, quick=8), images=True, compile_by_default=False,
        quick_modes=("forward",) if quick else (), compiled=("compile", "fastcnn+compile"),
        requires=library)
    for library, name, size, cuda_batch, quick in _OPTIMIZED})
