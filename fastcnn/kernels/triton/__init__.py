"""Triton kernels. Importing this package defines them, so TRITON_INTERPRET=1 must be set
before it is imported for them to run on CPU tensors."""

from fastcnn.kernels.triton.concat import concat_forward
from fastcnn.kernels.triton.conv_bn_relu import (
    batch_norm_act_backward,
    batch_norm_act_backward_reduce,
    batch_norm_stats,
    channel_affine_act,
)
from fastcnn.kernels.triton.global_avg_pool import (
    global_avg_pool2d_backward,
    global_avg_pool2d_forward,
)
from fastcnn.kernels.triton.lrn import lrn_backward, lrn_forward
from fastcnn.kernels.triton.max_pool import (
    max_pool2d_backward,
    max_pool2d_forward,
)
from fastcnn.kernels.triton.relu_lrn_max_pool import (
    relu_lrn_max_pool2d_backward,
    relu_lrn_max_pool2d_forward,
)

__all__ = [
    "batch_norm_act_backward",
    "batch_norm_act_backward_reduce",
    "batch_norm_stats",
    "channel_affine_act",
    "concat_forward",
    "global_avg_pool2d_backward",
    "global_avg_pool2d_forward",
    "lrn_backward",
    "lrn_forward",
    "max_pool2d_backward",
    "max_pool2d_forward",
    "relu_lrn_max_pool2d_backward",
    "relu_lrn_max_pool2d_forward",
]
