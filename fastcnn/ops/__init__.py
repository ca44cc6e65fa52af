"""torch.library custom ops, one per kernel entry point (see fastcnn.ops.<op>)."""

from fastcnn.ops import pooling
from fastcnn.ops.conv_bn_relu import (
    batch_norm_act_backward,
    batch_norm_act_backward_reduce,
    batch_norm_stats,
    channel_affine_act,
    channel_affine_act_,
    channel_affine_act_out,
)
from fastcnn.ops.concat import concat_forward
from fastcnn.ops.lrn import lrn_backward, lrn_forward
from fastcnn.ops.pooling import (global_avg_pool2d, global_avg_pool2d_backward, max_pool2d,
                                 max_pool2d_backward, max_pool2d_into,
                                 max_pool2d_with_positions, max_pool2d_with_positions_into)
from fastcnn.ops.relu_lrn_max_pool import (relu_lrn_max_pool2d, relu_lrn_max_pool2d_backward,
                                           relu_lrn_max_pool2d_with_positions)

__all__ = [
    "batch_norm_act_backward",
    "batch_norm_act_backward_reduce",
    "batch_norm_stats",
    "channel_affine_act",
    "channel_affine_act_",
    "channel_affine_act_out",
    "concat_forward",
    "global_avg_pool2d",
    "global_avg_pool2d_backward",
    "lrn_backward",
    "lrn_forward",
    "max_pool2d",
    "max_pool2d_backward",
    "max_pool2d_into",
    "max_pool2d_with_positions",
    "max_pool2d_with_positions_into",
    "pooling",
    "relu_lrn_max_pool2d",
    "relu_lrn_max_pool2d_backward",
    "relu_lrn_max_pool2d_with_positions",
]
