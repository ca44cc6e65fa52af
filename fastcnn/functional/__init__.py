"""Public functions, one per op, each behind its own torch.autograd.Function."""

from fastcnn.functional.lrn import local_response_norm

__all__ = ["local_response_norm"]
