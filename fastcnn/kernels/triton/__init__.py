"""Triton kernels. Importing this package defines them, so TRITON_INTERPRET=1 must be set
before it is imported for them to run on CPU tensors."""

from fastcnn.kernels.triton.lrn import lrn_backward, lrn_forward

__all__ = ["lrn_backward", "lrn_forward"]
