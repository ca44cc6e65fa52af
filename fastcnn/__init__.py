"""fastcnn: hand-written Triton and C++ kernels for classic convolutional networks, with
the numbers of native PyTorch."""

__version__ = "0.1.0"

from fastcnn import backends, functional, models, nn, ops  # noqa: E402
from fastcnn.backends import use_backend  # noqa: E402
from fastcnn.convert import OptimizeReport, optimize, restore  # noqa: E402

__all__ = ["OptimizeReport", "__version__", "backends", "functional", "models", "nn", "ops",
           "optimize", "restore", "use_backend"]
