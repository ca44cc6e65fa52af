"""Argument checks shared by the public functions: each error names the argument and
says what was expected."""

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_INT32 = 2 ** 31 - 1


def check_tensor(name, value):
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")


def kernels_take(t):
    """Whether the fastcnn kernels take tensor t: a strided (dense) tensor of a floating
    dtype that they cover. Others (integer dtypes, mkldnn, sparse and nested tensors) take
    PyTorch's own op, so that they are accepted, refused and computed as PyTorch does."""
    return t.layout == torch.strided and not t.is_nested and t.dtype in FLOAT_DTYPES


def check_feature_map(name, value, min_dim):
    """A floating-point tensor (N, C, *) with at least `min_dim` dimensions."""
    check_tensor(name, value)
    if value.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimensions (N, C, ...), got a "
            f"{value.dim()}-d tensor of shape {tuple(value.shape)}")
    if value.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {value.dtype}")


def check_int(name, value, minimum):
    """An integer (not a bool) no smaller than `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)
