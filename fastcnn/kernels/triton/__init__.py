"""Triton kernels. Importing this package defines them, so TRITON_INTERPRET=1 must be set
before it is imported for them to run on CPU tensors."""

from fastcnn.kernels.triton.conv_bn_relu import (
    batch_norm_act_backward,
    batch_norm_act_backward_reduce,
    batch_norm_stats,
    channel_affine_act,
)
from fastcnn.kernels.triton.lrn import lrn_backward, lrn_forward

__all__ = [
    "batch_norm_act_backward",
    "batch_norm_act_backward_reduce",
    "batch_norm_stats",
    "channel_affine_act",
    "lrn_backward",
    "lrn_forward",
]
