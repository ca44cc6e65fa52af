"""Public functions, one per op, each behind its own torch.autograd.Function."""

from fastcnn.functional.conv_bn_relu import conv_bn_relu
from fastcnn.functional.lrn import local_response_norm

__all__ = ["conv_bn_relu", "local_response_norm"]
