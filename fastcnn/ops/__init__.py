"""torch.library custom ops, one per kernel entry point (see fastcnn.ops.<op>)."""

from fastcnn.ops.lrn import lrn_backward, lrn_forward

__all__ = ["lrn_backward", "lrn_forward"]
