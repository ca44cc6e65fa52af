"""Drop-in nn.Modules: each subclasses the torch module it replaces (or, for a fused
block, holds the plain torch modules as submodules) and only calls the fastcnn function in
forward."""

from fastcnn.nn.concat import InceptionConcat
from fastcnn.nn.conv_bn_act import ConvBNReLU, ConvReLU
from fastcnn.nn.dense import DenseBlock, DenseLayer, Transition
from fastcnn.nn.lrn import LocalResponseNorm
from fastcnn.nn.pooling import GlobalAvgPool2d, MaxPool2d
from fastcnn.nn.relu_lrn_max_pool import ReLULRNMaxPool

__all__ = ["ConvBNReLU", "ConvReLU", "DenseBlock", "DenseLayer", "GlobalAvgPool2d",
           "InceptionConcat", "LocalResponseNorm", "MaxPool2d", "ReLULRNMaxPool",
           "Transition"]
