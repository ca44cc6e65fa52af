"""Public functions, one per op, each behind its own torch.autograd.Function."""

from fastcnn.functional.bn_relu_conv import bn_relu_conv
from fastcnn.functional.concat import concat
from fastcnn.functional.conv_bn_act import bn_relu, conv_bn_relu
from fastcnn.functional.lrn import local_response_norm
from fastcnn.functional.pooling import global_avg_pool2d, max_pool2d
from fastcnn.functional.relu_lrn_max_pool import relu_lrn_max_pool2d

__all__ = ["bn_relu", "bn_relu_conv", "concat", "conv_bn_relu", "global_avg_pool2d",
           "local_response_norm", "max_pool2d", "relu_lrn_max_pool2d"]
