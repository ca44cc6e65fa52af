"""Drop-in nn.Modules: each subclasses the torch module it replaces and only calls the
fastcnn function in forward."""

from fastcnn.nn.lrn import LocalResponseNorm

__all__ = ["LocalResponseNorm"]
