"""torch.library custom ops, one per kernel entry point (see fastcnn.ops.<op>)."""

from fastcnn.ops import pooling
from fastcnn.ops.lrn import lrn_backward, lrn_forward
from fastcnn.ops.pooling import (global_avg_pool2d, global_avg_pool2d_backward, max_pool2d,
                                 max_pool2d_backward, max_pool2d_with_positions)

__all__ = ["global_avg_pool2d", "global_avg_pool2d_backward", "lrn_backward", "lrn_forward",
           "max_pool2d", "max_pool2d_backward", "max_pool2d_with_positions", "pooling"]
