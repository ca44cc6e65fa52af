"""torch_layers(model): the same network on PyTorch's own layers, for comparison.

A copy of the model in which every fastcnn layer is replaced by the PyTorch composition it
stands for (nn.LocalResponseNorm, nn.MaxPool2d, Conv2d/BatchNorm2d/ReLU, torch.cat, ...),
sharing nothing with the original but holding the same parameters under the same keys. The
zoo's tests compare a model with it, and `fastcnn bench --models` times both. It covers
models built from fastcnn.nn layers; models with a torchvision counterpart are compared
with torchvision's own model instead (fastcnn.models.torchvision_counterpart).
"""

import copy

import torch
import torch.nn.functional as F

from fastcnn import nn as fnn


class _ConvReLU(torch.nn.Conv2d):
    def forward(self, input):
        return F.relu(super().forward(input))


class _ConvBNReLU(torch.nn.Module):
    def forward(self, x, residual=None):
        y = self.bn(self.conv(x))
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


class _InceptionConcat(torch.nn.Module):
    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


class _GlobalAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    def forward(self, input):
        output = super().forward(input)
        return output.flatten(-3) if self.flatten else output


class _ReLULRNMaxPool(torch.nn.Module):
    def forward(self, input):
        x = F.local_response_norm(F.relu(input), self.size, self.alpha, self.beta, self.k)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding,
                            ceil_mode=self.ceil_mode)


# fastcnn layer -> a class with the same attributes whose forward is PyTorch's composition
_TORCH_CLASS = {
    fnn.LocalResponseNorm: torch.nn.LocalResponseNorm,
    fnn.MaxPool2d: torch.nn.MaxPool2d,
    fnn.GlobalAvgPool2d: _GlobalAvgPool2d,
    fnn.ConvReLU: _ConvReLU,
    fnn.ConvBNReLU: _ConvBNReLU,
    fnn.InceptionConcat: _InceptionConcat,
    fnn.ReLULRNMaxPool: _ReLULRNMaxPool,
}


def torch_layers(model):
    """A deep copy of model with each fastcnn.nn layer swapped for its PyTorch composition.
    Raises TypeError for a fastcnn layer it has no composition for (DenseBlock: compare
    DenseNet with torchvision's)."""
    copied = copy.deepcopy(model)
    for name, module in copied.named_modules():
        cls = type(module)
        if cls in _TORCH_CLASS:
            module.__class__ = _TORCH_CLASS[cls]
        elif cls.__module__.startswith("fastcnn.nn"):
            raise TypeError(f"torch_layers: no PyTorch composition for {cls.__name__} "
                            f"(at {name or 'the model'})")
    return copied
