"""Shared by the tests: tolerances (one table) and fresh random inputs."""

import torch

# Against a float64 reference (DESIGN.md, Numerics).
_TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float16: dict(rtol=1e-2, atol=1e-3),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
}

# Triton's interpreter passes float scalars (alpha, beta, k) to kernels as float32 (the
# compiled kernels take them as float64), so float64 through it is held to the float32
# tolerance: those constants carry float32 rounding.
_TRITON_INTERPRETER_FLOAT64 = _TOLERANCES[torch.float32]


def tolerance(dtype, backend=None, device="cpu"):
    if dtype == torch.float64 and backend == "triton" and device == "cpu":
        return _TRITON_INTERPRETER_FLOAT64
    return _TOLERANCES[dtype]


def randn(*shape, dtype=torch.float32, device="cpu", channels_last=False):
    """Fresh normal random values (never zeros), optionally in channels_last layout."""
    x = torch.randn(*shape, dtype=torch.float64).to(dtype=dtype, device=device)
    if channels_last:
        memory_format = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.to(memory_format=memory_format)
    return x


def assert_close_to_reference(actual, expected, dtype, backend=None, device="cpu"):
    """actual (any dtype) against a float64 expected value, NaNs in the same places."""
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), equal_nan=True,
                               **tolerance(dtype, backend, device))
