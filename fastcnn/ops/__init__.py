"""torch.library custom ops, one per kernel entry point (see fastcnn.ops.<op>)."""

from fastcnn.ops.conv_bn_relu import (
    batch_norm_act_backward,
    batch_norm_act_backward_reduce,
    batch_norm_stats,
    channel_affine_act,
    channel_affine_act_,
)
from fastcnn.ops.lrn import lrn_backward, lrn_forward

__all__ = [
    "batch_norm_act_backward",
    "batch_norm_act_backward_reduce",
    "batch_norm_stats",
    "channel_affine_act",
    "channel_affine_act_",
    "lrn_backward",
    "lrn_forward",
]
