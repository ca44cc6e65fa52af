"""The model zoo: `list_models()`, `create_model(name, ...)` and a builder per model."""

from fastcnn.models._registry import (create_model, default_input_size, list_models,
                                      register_model, torchvision_counterpart)
from fastcnn.models.alexnet import AlexNet, TorchvisionAlexNet, alexnet, alexnet_torchvision
from fastcnn.models.densenet import DenseNet, densenet121, densenet161, densenet169, densenet201
from fastcnn.models.googlenet import GoogLeNet, GoogLeNetBN, googlenet, googlenet_torchvision
from fastcnn.models.lenet import LeNet5, lenet5
from fastcnn.models.nin import NIN, nin_cifar10, nin_imagenet
from fastcnn.models.reference import torch_layers
from fastcnn.models.resnet import (BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50,
                                   resnet101, resnet152)
from fastcnn.models.vgg import (VGG, vgg11, vgg11_bn, vgg11_lrn, vgg13, vgg13_bn, vgg16,
                                vgg16_bn, vgg19, vgg19_bn)
from fastcnn.models.zfnet import ZFNet, zfnet

__all__ = ["AlexNet", "BasicBlock", "Bottleneck", "DenseNet", "GoogLeNet", "GoogLeNetBN",
           "LeNet5", "NIN", "ResNet", "TorchvisionAlexNet", "VGG", "ZFNet", "alexnet",
           "alexnet_torchvision", "create_model", "default_input_size", "densenet121",
           "densenet161", "densenet169", "densenet201", "googlenet", "googlenet_torchvision",
           "lenet5", "list_models", "nin_cifar10", "nin_imagenet", "register_model", "resnet18",
           "resnet34", "resnet50", "resnet101", "resnet152", "torch_layers",
           "torchvision_counterpart", "vgg11", "vgg11_bn", "vgg11_lrn", "vgg13", "vgg13_bn",
           "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "zfnet"]
