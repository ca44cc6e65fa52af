"""Kernel backends: triton/ (CUDA tensors, or CPU tensors through Triton's interpreter),
reference (pure PyTorch). The C++ kernels are the extension fastcnn._C. Each backend has
the same entry points, taking (N, C, S) views and writing into caller-allocated outputs."""
