"""Drop-in nn.Modules: each subclasses the torch module it replaces (or, for a fused
block, holds the plain torch modules as submodules) and only calls the fastcnn function in
forward."""

from fastcnn.nn.conv_bn_act import ConvBNReLU
from fastcnn.nn.lrn import LocalResponseNorm

__all__ = ["ConvBNReLU", "LocalResponseNorm"]
