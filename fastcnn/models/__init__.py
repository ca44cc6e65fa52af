"""The model zoo: `list_models()`, `create_model(name, ...)` and a builder per model."""

from fastcnn.models._registry import (create_model, default_input_size, list_models,
                                      register_model, torchvision_counterpart)
from fastcnn.models.densenet import DenseNet, densenet121, densenet161, densenet169, densenet201
from fastcnn.models.reference import torch_layers

__all__ = ["DenseNet", "create_model", "default_input_size", "densenet121", "densenet161", "densenet169",
           "densenet201", "list_models", "register_model", "torch_layers",
           "torchvision_counterpart"]
