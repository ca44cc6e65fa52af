"""Drop-in nn.Modules: each subclasses the torch module it replaces and only calls the
fastcnn function in forward."""

from fastcnn.nn.lrn import LocalResponseNorm
from fastcnn.nn.pooling import GlobalAvgPool2d, MaxPool2d

__all__ = ["GlobalAvgPool2d", "LocalResponseNorm", "MaxPool2d"]
