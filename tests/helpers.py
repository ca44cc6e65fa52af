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


# Results that pass through a float32 convolution (its sums of many products): 1e-4
# relative (DESIGN.md, Numerics).
_CONVOLUTION_FLOAT32 = dict(rtol=1e-4, atol=1e-5)


def tolerance(dtype, backend=None, device="cpu", convolution=False):
    if dtype == torch.float32 and convolution:
        return _CONVOLUTION_FLOAT32
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


def assert_close_to_reference(actual, expected, dtype, backend=None, device="cpu",
                              convolution=False):
    """actual (any dtype) against a float64 expected value, NaNs in the same places."""
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), equal_nan=True,
                               **tolerance(dtype, backend, device, convolution))


# Views of a 4-d tensor that are not contiguous in different ways, for the kernels' any-
# stride paths.
NON_CONTIGUOUS = {
    "every-other-channel": lambda t: t[:, ::2],
    "every-other-column": lambda t: t[..., ::2],
    "cropped": lambda t: t[:, :, 1:-1, 2:-1],  # spatial dims no longer share one stride
    "transposed-hw": lambda t: t.transpose(2, 3),
    "batch-innermost": lambda t: t.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2),
    "channels-last-sliced": lambda t: t.to(memory_format=torch.channels_last)[:, 1:6, ::2],
}


def check_compiled_model_matches_eager(net, x, backend, parameter):
    """net under torch.compile(fullgraph=True) gives eager's output and gradient of
    `parameter` (one of its parameters), on `backend`, and its output without grad."""
    import fastcnn

    with fastcnn.use_backend(backend):
        expected = net(x)
        expected.sum().backward()
        expected_grad = parameter.grad.clone()
        net.zero_grad()
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True)
        actual = compiled(x)
        actual.sum().backward()
        with torch.no_grad():
            inference = compiled(x)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(inference, expected)
    torch.testing.assert_close(parameter.grad, expected_grad)


# How strided_view lays out an (N, C, S) view.
VIEW_LAYOUTS = ("channels-contiguous", "positions-contiguous", "neither")


def strided_view(kind, n, c, s, dtype=torch.float64, device="cpu"):
    """An uninitialised (N, C, S) view, contiguous along channels (channels_last), along
    positions (NCHW) or neither (every other element of a larger buffer), for the kernels'
    any-stride paths."""
    if kind == "channels-contiguous":
        return torch.empty(n, s, c, dtype=dtype, device=device).transpose(1, 2)
    if kind == "positions-contiguous":
        return torch.empty(n, c, s, dtype=dtype, device=device)
    if kind == "neither":
        return torch.empty(n, s, 2 * c, dtype=dtype, device=device)[..., ::2].transpose(1, 2)
    raise ValueError(f"kind must be one of {VIEW_LAYOUTS}, got {kind!r}")


# Tensors that are not strided (no data pointer and strides to read): every kernel entry
# point must refuse them with an error that names the argument, never crash.
OTHER_LAYOUTS = {
    "mkldnn": lambda t: t.float().to_mkldnn(),
    "sparse": lambda t: t.to_sparse(),
}


def randomise_batch_norms(module, scale=1.0):
    """Every BatchNorm of module with random parameters and running statistics (weight in
    [0.5, 1.5), running_var in [0.5, 1.5), bias and running_mean normal with std `scale`),
    so that no test passes on the defaults' identity map. Returns module."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, scale)
                if m.running_mean is not None:
                    m.running_mean.normal_(0, scale)
                    m.running_var.uniform_(0.5, 1.5)
    return module
