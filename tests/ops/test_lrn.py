"""local_response_norm against torch.nn.functional.local_response_norm, on every backend."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (NON_CONTIGUOUS, OTHER_LAYOUTS, VIEW_LAYOUTS,
                     assert_close_to_reference, check_compiled_model_matches_eager, randn,
                     strided_view)

import fastcnn
from fastcnn import backends
from fastcnn.functional import local_response_norm
from fastcnn.ops.layout import channel_view


def run_both(x, size, alpha, beta, k, grad=None):
    """(output, grad_input) of fastcnn and of torch (in float64) for input x."""
    grad = randn(*x.shape, dtype=x.dtype, device=x.device) if grad is None else grad
    x_ours = x.detach().clone().requires_grad_()
    y = local_response_norm(x_ours, size, alpha, beta, k)
    y.backward(grad)
    x_ref = x.detach().double().requires_grad_()
    y_ref = F.local_response_norm(x_ref, size, alpha, beta, k)
    y_ref.backward(grad.double())
    return (y, x_ours.grad), (y_ref, x_ref.grad)


def check_against_torch(x, size, alpha=1e-4, beta=0.75, k=1.0, backend=None, device="cpu"):
    (y, dx), (y_ref, dx_ref) = run_both(x, size, alpha, beta, k)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert_close_to_reference(y, y_ref, x.dtype, backend, device)
    assert_close_to_reference(dx, dx_ref, x.dtype, backend, device)


# (shape, size, alpha, beta, k): odd and even windows, windows wider than C, C = 1, H = W = 1,
# 3-d and 5-d inputs, and exponents with and without their own code paths.
CASES = {
    "odd-size": ((2, 7, 5, 6), 5, 0.3, 0.75, 1.0),
    "even-size": ((2, 7, 5, 6), 4, 0.3, 0.75, 2.0),
    "size-1": ((2, 7, 5, 6), 1, 0.3, 0.75, 1.0),
    "size-above-C": ((2, 7, 3, 4), 9, 0.3, 0.75, 1.0),
    "size-far-above-C": ((2, 3, 3, 4), 16, 0.3, 0.75, 1.0),
    "C-1": ((3, 1, 4, 4), 3, 0.5, 0.75, 1.0),
    "HW-1": ((4, 6, 1, 1), 3, 0.3, 0.75, 1.0),
    "3d": ((3, 6, 11), 3, 0.3, 0.75, 1.0),
    "5d": ((2, 6, 3, 4, 2), 5, 0.3, 0.75, 1.0),
    "beta-0.5": ((2, 7, 5, 6), 5, 0.3, 0.5, 1.0),
    "beta-1": ((2, 7, 5, 6), 3, 0.3, 1.0, 0.5),
    "beta-2": ((2, 7, 5, 6), 3, 0.3, 2.0, 1.0),
    "beta-0": ((2, 7, 5, 6), 3, 0.3, 0.0, 1.0),
    "beta-negative": ((2, 7, 5, 6), 3, 0.3, -0.6, 1.0),
    "alexnet": ((2, 96, 7, 7), 5, 1e-4, 0.75, 2.0),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_torch_in_float64(backend_device, case):
    backend, device = backend_device
    shape, size, alpha, beta, k = case
    x = randn(*shape, dtype=torch.float64, device=device)
    check_against_torch(x, size, alpha, beta, k, backend, device)


@pytest.mark.parametrize("shape", [(2, 7, 5, 6), (2, 6, 3, 4, 2), (2, 3, 9, 9), (2, 40, 3, 3)],
                         ids=["4d", "5d", "few-channels", "many-channels"])
def test_channels_last_matches_torch_and_keeps_its_layout(backend_device, shape):
    backend, device = backend_device
    x = randn(*shape, dtype=torch.float64, device=device, channels_last=True)
    check_against_torch(x, 5, 0.3, 0.75, 1.0, backend, device)
    memory_format = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    assert local_response_norm(x, 5).is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("make", NON_CONTIGUOUS.values(), ids=NON_CONTIGUOUS.keys())
def test_non_contiguous_inputs(backend_device, make):
    backend, device = backend_device
    x = make(randn(3, 9, 6, 7, dtype=torch.float64, device=device))
    assert not x.is_contiguous()
    check_against_torch(x, 3, 0.3, 0.75, 1.0, backend, device)


def test_nchw_with_few_positions(backend_device):
    """Many channels over a 2x2 image: the kernels may run their lanes along channels."""
    backend, device = backend_device
    check_against_torch(randn(3, 40, 2, 2, dtype=torch.float64, device=device), 5, 0.3, 0.75,
                        1.0, backend, device)


@pytest.mark.parametrize("layout", VIEW_LAYOUTS)
def test_kernels_read_and_write_any_strides(backend_device, layout):
    """The kernel entry points on (N, C, S) views: x contiguous along channels, along
    positions or neither; grad and the outputs spread out (every other element of a larger
    buffer). Against the reference kernels on the same views."""
    backend, device = backend_device
    n, c, s = 2, 20, 24

    def view(kind):
        return strided_view(kind, n, c, s, device=device)

    x, grad = view(layout).normal_(), view("neither").normal_()
    results = {}
    for name in (backend, "reference"):
        y, dx = view("neither").fill_(float("nan")), view("neither").fill_(float("nan"))
        kernels = backends.kernels(name)
        kernels.lrn_forward(x, y, 5, 0.3, 0.75, 1.0)
        kernels.lrn_backward(x, grad, dx, 5, 0.3, 0.75, 1.0)
        results[name] = (y, dx)
    for ours, expected in zip(results[backend], results["reference"]):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


def test_non_contiguous_grad_output(backend_device):
    backend, device = backend_device
    x = randn(2, 6, 5, 5, dtype=torch.float64, device=device)
    grad = randn(2, 5, 5, 12, dtype=torch.float64, device=device)[..., ::2].permute(0, 3, 1, 2)
    assert grad.shape == x.shape and not grad.is_contiguous()
    (y, dx), (y_ref, dx_ref) = run_both(x, 5, 0.3, 0.75, 1.0, grad=grad)
    assert_close_to_reference(dx, dx_ref, torch.float64, backend, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_low_precision_against_float64(backend_device, dtype, channels_last):
    backend, device = backend_device
    x = randn(2, 16, 5, 6, dtype=dtype, device=device, channels_last=channels_last)
    check_against_torch(x, 5, 0.1, 0.75, 2.0, backend, device)


@pytest.mark.parametrize("beta", [0.75, 0.6, 3.9, -2.3])
def test_float32_relative_error_across_magnitudes(backend_device, beta):
    """Window sums as far apart as float32 allows (up to 1e-24..1e24): large
    |beta * log2(s)| is where a float32 power loses accuracy."""
    backend, device = backend_device
    bound = min(12, 16 / max(abs(beta), abs(0.5 - beta)))  # s^beta, y within 1e-32..1e32
    scale = torch.logspace(-bound, bound, 9, dtype=torch.float64).view(1, 1, 9, 1)
    x = (randn(2, 8, 9, 5, dtype=torch.float64) * scale).float().to(device)
    (y, _), (y_ref, _) = run_both(x, 1, 1.0, beta, 1e-30)  # s = 1e-30 + x^2
    # where s^beta and y stay well inside float32's range
    s_ref = 1e-30 + x.double().cpu() ** 2
    inside = ((beta * torch.log10(s_ref)).abs() < 35) & (y_ref.cpu().abs().log10().abs() < 35)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(y.double().cpu()[inside], y_ref.double().cpu()[inside], rtol=1e-5,
                               atol=0)


def test_gradcheck(backend_device):
    backend, device = backend_device
    for size in (3, 4):
        # small: Triton's interpreter takes tens of milliseconds a call
        x = randn(2, 4, 2, 1, dtype=torch.float64, device=device).requires_grad_()
        assert torch.autograd.gradcheck(
            lambda t, size=size: local_response_norm(t, size, 0.5, 0.75, 1.0), (x,))


def test_second_derivatives_match_torch(backend_device):
    """create_graph=True (a gradient penalty, say): second derivatives as PyTorch's."""
    backend, device = backend_device
    x = randn(2, 6, 3, 3, dtype=torch.float64, device=device)
    grad = randn(2, 6, 3, 3, dtype=torch.float64, device=device)
    penalties = []
    for fn in (local_response_norm, F.local_response_norm):
        leaf = x.clone().requires_grad_()
        (first,) = torch.autograd.grad(fn(leaf, 3, 0.5, 0.75, 1.0), leaf, grad, create_graph=True)
        first.pow(2).sum().backward()
        penalties.append((first.detach(), leaf.grad))
    for ours, expected in zip(*penalties):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)
    leaf = randn(1, 5, 2, 1, dtype=torch.float64, device=device).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda t: local_response_norm(t, 4, 0.5, 0.6, 2.0),
                                        (leaf,))


def test_nan_and_inf_propagate_like_torch(backend_device):
    backend, device = backend_device
    x = randn(2, 7, 4, 3, dtype=torch.float64, device=device)
    x[0, 2, 1, 1] = float("nan")
    x[1, 4, 2, 0] = float("inf")
    x[1, 0, 0, 2] = -float("inf")
    check_against_torch(x, 3, 0.1, 0.75, 1.0, backend, device)


@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0, 0.75, 1.5])
def test_negative_base_follows_torch_pow(backend_device, beta):
    """With k < 0 the base of the power can be negative: integer exponents give a real
    power (with its sign), others NaN, as torch.pow."""
    backend, device = backend_device
    x = randn(2, 5, 3, 3, dtype=torch.float64, device=device)
    check_against_torch(x, 3, 0.1, beta, -3.0, backend, device)


def test_beta_zero_is_the_identity_even_where_s_is_zero(backend_device):
    """torch.pow's gradient is 0 for a zero exponent, so the gradient is exactly g even
    where s = 0 (there 0 * inf would be NaN)."""
    backend, device = backend_device
    x = randn(2, 5, 3, 3, dtype=torch.float64, device=device)
    x[:, 1:3] = 0
    check_against_torch(x, 3, 1.0, 0.0, 0.0, backend, device)


def test_empty_batch(backend_device):
    _, device = backend_device
    for shape in [(0, 4, 3, 3), (0, 5, 6), (2, 4, 0, 3)]:
        x = randn(*shape, device=device).requires_grad_()
        y = local_response_norm(x, 3)
        y.sum().backward()
        assert y.shape == x.shape and x.grad.shape == x.shape


# Strides that fit in 32 bits (so Triton types them int32) times indices that do not.
@pytest.mark.parametrize("shape, strides", [((3, 2, 3), (2**30 + 3, 4, 1)),
                                            ((1, 3, 3), (3 * (2**30 + 3), 2**30 + 3, 1))],
                         ids=["batch-stride", "channel-stride"])
def test_64_bit_offsets(backend_device, shape, strides):
    """Element offsets beyond 2**31, forward and backward. The storage is reserved, not
    touched: only the few elements of the view are written."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the storage trick relies on lazily committed host memory")

    def huge(fill):
        t = torch.empty_strided(shape, strides, dtype=torch.float16)
        return t.normal_() if fill else t

    x, grad, y, dx = huge(True), huge(True), huge(False), huge(False)
    kernels = backends.kernels(backend)
    kernels.lrn_forward(channel_view(x), channel_view(y), 3, 0.5, 0.75, 1.0)
    kernels.lrn_backward(channel_view(x), channel_view(grad), channel_view(dx), 3, 0.5, 0.75,
                         1.0)
    x_ref = x.double().requires_grad_()
    y_ref = F.local_response_norm(x_ref, 3, 0.5, 0.75, 1.0)
    y_ref.backward(grad.double())
    assert_close_to_reference(y, y_ref, torch.float16)
    assert_close_to_reference(dx, x_ref.grad, torch.float16)


def test_backward_uses_the_forward_backend(monkeypatch):
    """The autograd Function keeps the backend of its forward for its backward."""
    from fastcnn.kernels import reference

    calls = []
    original = reference.lrn_backward

    def spy(*args):
        calls.append(args)
        original(*args)

    monkeypatch.setattr(reference, "lrn_backward", spy)
    x = randn(2, 5, 3, 3).requires_grad_()
    with fastcnn.use_backend("reference"):
        y = local_response_norm(x, 3)
    y.sum().backward()  # outside the block, where CPU tensors would run the C++ kernels
    assert len(calls) == 1


def test_module_is_a_drop_in_for_torch():
    ours = fastcnn.nn.LocalResponseNorm(5, alpha=1e-3, beta=0.75, k=2.0)
    theirs = torch.nn.LocalResponseNorm(5, alpha=1e-3, beta=0.75, k=2.0)
    assert isinstance(ours, torch.nn.LocalResponseNorm)
    assert repr(ours) == repr(theirs)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = randn(2, 16, 6, 6)
    assert_close_to_reference(ours(x), theirs(x.double()), torch.float32)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3)
        self.lrn = fastcnn.nn.LocalResponseNorm(5, alpha=1e-2, beta=0.75, k=2.0)

    def forward(self, x):
        return torch.relu(self.lrn(self.conv(x))).sum(dim=(2, 3))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph(backend):
    net = _Net().double()
    check_compiled_model_matches_eager(net, randn(2, 3, 9, 9, dtype=torch.float64), backend,
                                       net.conv.weight)


def test_torch_compile_follows_use_backend(monkeypatch):
    """The backend is a constant of the traced graph, guarded: changing it re-traces."""
    from fastcnn.kernels import reference

    calls = []
    original = reference.lrn_forward
    monkeypatch.setattr(reference, "lrn_forward",
                        lambda *args: calls.append(1) or original(*args))
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: local_response_norm(t, 3), fullgraph=True)
    x = randn(2, 4, 3, 3)
    compiled(x)
    assert calls == []
    with fastcnn.use_backend("reference"):
        torch.testing.assert_close(compiled(x), F.local_response_norm(x, 3))
    assert calls == [1]
    compiled(x)
    assert calls == [1]


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: local_response_norm(torch.randn(4, 5), 3), ValueError, ["input", "3"]),
        (lambda: local_response_norm([[[1.0]]], 3), TypeError, ["input", "Tensor"]),
        (lambda: local_response_norm(torch.randn(2, 3, 4), 0), ValueError, ["size", ">= 1"]),
        (lambda: local_response_norm(torch.randn(2, 3, 4), 2.5), TypeError, ["size", "int"]),
        (lambda: local_response_norm(torch.randn(2, 3, 4), 3, k="1"), TypeError, ["k"]),
    ],
    ids=["2d", "not-a-tensor", "size-0", "size-float", "k-string"])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_cpp_entry_points_refuse_outputs_that_share_memory_with_inputs():
    x = channel_view(randn(2, 4, 5, 5))
    with pytest.raises(RuntimeError, match="output must not share memory with input"):
        backends.kernels("cpp").lrn_forward(x, x, 3, 1e-4, 0.75, 1.0)
    grad = channel_view(randn(2, 4, 5, 5))
    with pytest.raises(RuntimeError, match="grad_input must not share memory with grad_output"):
        backends.kernels("cpp").lrn_backward(x, grad, grad, 3, 1e-4, 0.75, 1.0)


@pytest.mark.parametrize("size", [2**31 + 1, 2**62], ids=["2^31+1", "2^62"])
def test_window_wider_than_all_channels(backend_device, size):
    """A window of more than 2C - 1 channels sums all of them at every channel: torch's LRN
    of size 2C + 1 with alpha scaled to keep alpha / size, the same function."""
    backend, device = backend_device
    x = randn(2, 5, 3, 4, dtype=torch.float64, device=device)
    grad = randn(2, 5, 3, 4, dtype=torch.float64, device=device)
    alpha, beta, k = 0.3, 0.75, 1.5
    y = fastcnn.ops.lrn_forward(x, size, alpha, beta, k, backend)
    dx = fastcnn.ops.lrn_backward(x, grad, size, alpha, beta, k, backend)
    x_ref = x.detach().clone().requires_grad_()
    wide = 2 * x.shape[1] + 1
    y_ref = F.local_response_norm(x_ref, wide, alpha * wide / size, beta, k)
    y_ref.backward(grad)
    assert_close_to_reference(y, y_ref, torch.float64, backend, device)
    assert_close_to_reference(dx, x_ref.grad, torch.float64, backend, device)


def test_non_finite_argument_on_5d_input_whose_last_dimensions_do_not_merge():
    """PyTorch's function, which runs for a non-finite k, views the trailing dimensions of
    5-d input as one: on a transposed H and W that view fails, so it is given a contiguous
    copy (the fuzz tests' ci profile drew this)."""
    x = randn(2, 3, 2, 4, 5, dtype=torch.float64).transpose(3, 4)
    y = local_response_norm(x, 3, alpha=1e-4, beta=0.75, k=float("nan"))
    expected = F.local_response_norm(x.contiguous(), 3, alpha=1e-4, beta=0.75, k=float("nan"))
    torch.testing.assert_close(y, expected, equal_nan=True)
    y = local_response_norm(x, 3, alpha=float("inf"), beta=0.75, k=2.0)
    expected = F.local_response_norm(x.contiguous(), 3, alpha=float("inf"), beta=0.75, k=2.0)
    torch.testing.assert_close(y, expected, equal_nan=True)


@pytest.mark.parametrize("argument", ["alpha", "beta", "k"])
def test_non_finite_argument_with_a_huge_window_allocates_nothing_by_it(argument):
    """Non-finite alpha, beta or k run PyTorch's own function, which pads the channels by
    size // 2: it is handed the window of 2C - 1 channels, which covers them all (a window
    of 10^9 made it allocate 8 GB)."""
    from fastcnn.benchmarking_memory import peak_memory_bytes

    x = randn(2, 3, 4, 5, dtype=torch.float64)
    args = dict(size=10**9, alpha=1e-4, beta=0.75, k=1.0)
    args[argument] = float("nan") if argument == "k" else float("inf")
    outputs = []
    peak = peak_memory_bytes(lambda: outputs.append(local_response_norm(x, **args)), "cpu")
    assert peak < 100 * x.numel() * 8
    wide = 2 * x.shape[1] - 1
    expected = F.local_response_norm(x, **dict(args, size=wide,
                                                 alpha=args["alpha"] * wide / args["size"]))
    torch.testing.assert_close(outputs[0], expected, equal_nan=True)


@pytest.mark.parametrize("layout", OTHER_LAYOUTS.keys())
def test_kernels_refuse_tensors_that_are_not_strided(layout):
    """mkldnn and sparse tensors have no strides to read: a clear error naming the
    argument from the C++ and Triton entry points, never a crash."""
    make = OTHER_LAYOUTS[layout]
    x, g = randn(2, 4, 25), randn(2, 4, 25)
    for name in ("cpp", "triton"):
        if not backends.info()["backends"][name]["available"]:
            continue
        kernels = backends.kernels(name)
        error = RuntimeError if name == "cpp" else ValueError
        for call, argument in [
            (lambda: kernels.lrn_forward(make(x), torch.empty_like(x), 3, 1e-4, 0.75, 1.0),
             "input"),
            (lambda: kernels.lrn_forward(x, make(torch.empty_like(x)), 3, 1e-4, 0.75, 1.0),
             "output"),
            (lambda: kernels.lrn_backward(x, make(g), torch.empty_like(x), 3, 1e-4, 0.75, 1.0),
             "grad_output"),
            (lambda: kernels.lrn_backward(x, g, make(torch.empty_like(x)), 3, 1e-4, 0.75, 1.0),
             "grad_input"),
        ]:
            with pytest.raises(error, match=f"{argument} must be a strided"):
                call()
