"""relu_lrn_max_pool2d against the composition of torch.relu, F.local_response_norm and
F.max_pool2d in float64, on every backend."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (NON_CONTIGUOUS, OTHER_LAYOUTS, assert_close_to_reference,
                     check_compiled_model_matches_eager, randn)

import fastcnn
from fastcnn import backends
from fastcnn.functional import relu_lrn_max_pool2d


def composition(x, size, alpha=1e-4, beta=0.75, k=1.0, kernel_size=3, stride=None, padding=0,
                ceil_mode=False):
    """What the op computes, from torch's own functions."""
    z = F.local_response_norm(torch.relu(x), size, alpha, beta, k)
    return F.max_pool2d(z, kernel_size, stride, padding, 1, ceil_mode)


def run_both(x, *args, grad=None):
    """((output, grad_input) of fastcnn, the same of the composition in float64)."""
    x_ours = x.detach().clone().requires_grad_()
    y = relu_lrn_max_pool2d(x_ours, *args)
    grad = randn(*y.shape, dtype=x.dtype, device=x.device) if grad is None else grad
    y.backward(grad)
    x_ref = x.detach().double().requires_grad_()
    y_ref = composition(x_ref, *args)
    y_ref.backward(grad.double())
    return (y, x_ours.grad), (y_ref, x_ref.grad)


def check_against_torch(x, *args, backend=None, device="cpu", inference=True):
    """Output and gradient against the composition's; with `inference`, the values without
    a gradient (no positions kept: other kernel paths) too. Returns (output, grad_input)."""
    (y, dx), (y_ref, dx_ref) = run_both(x, *args)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and y.device == x.device
    assert dx.shape == x.shape and dx.dtype == x.dtype
    assert_close_to_reference(y, y_ref, x.dtype, backend, device)
    assert_close_to_reference(dx, dx_ref, x.dtype, backend, device)
    if inference:
        with torch.no_grad():
            torch.testing.assert_close(relu_lrn_max_pool2d(x, *args), y.detach(), rtol=0,
                                       atol=0, equal_nan=True)
    return y, dx


# (shape, (size, alpha, beta, k, kernel_size, stride, padding, ceil_mode)): AlexNet's stem,
# odd and even LRN windows, windows wider than C, the pooling shapes of max-pooling's
# tests, and exponents with and without their own code paths. Small: Triton's interpreter
# takes a tenth of a second per output row.
CASES = {
    "alexnet": ((2, 6, 7, 7), (5, 1e-1, 0.75, 2.0, 3, 2)),
    "even-size-padded": ((1, 7, 6, 7), (4, 0.3, 0.75, 1.0, 3, 2, 1)),
    "size-1-ceil": ((1, 5, 6, 7), (1, 0.3, 0.75, 1.0, 3, 2, 0, True)),
    "size-above-C": ((1, 3, 7, 6), (9, 0.3, 0.75, 1.0, 3, 2, 1, True)),
    "size-11": ((1, 12, 5, 5), (11, 0.3, 0.75, 1.0, 3, 2)),  # windows of up to 11 rows
    "C-1": ((2, 1, 5, 5), (3, 0.5, 0.75, 1.0, 3, 2)),
    "googlenet-3x3-s1": ((1, 6, 5, 6), (5, 0.3, 0.75, 1.0, 3, 1, 1)),
    "rectangular": ((1, 4, 6, 7), (3, 0.3, 0.75, 1.0, (2, 3), (2, 1), (1, 0), True)),
    "stride-above-kernel": ((1, 4, 7, 8), (3, 0.3, 0.75, 1.0, 2, 3)),
    "window-covers-input": ((1, 4, 3, 3), (3, 0.3, 0.75, 1.0, 3, 1)),
    "1x1-input-padded": ((3, 4, 1, 1), (3, 0.3, 0.75, 1.0, 3, 2, 1)),
    "beta-0": ((1, 5, 5, 5), (3, 0.3, 0.0, 1.0, 3, 2)),
    "beta-1": ((1, 5, 5, 5), (3, 0.3, 1.0, 0.5, 3, 2)),
    "beta-2": ((1, 5, 5, 5), (3, 0.3, 2.0, 1.0, 3, 2)),
    "beta-negative": ((1, 5, 5, 5), (3, 0.3, -0.6, 1.0, 3, 2)),
    "window-of-72-taps": ((1, 2, 5, 5), (3, 0.3, 0.75, 1.0, (9, 8), 4, 4, True)),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_torch_in_float64(backend_device, case):
    backend, device = backend_device
    shape, args = case
    check_against_torch(randn(*shape, dtype=torch.float64, device=device), *args,
                        backend=backend, device=device)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 24, 55, 55), (1, 40, 27, 27)], ids=["conv1", "conv2"])
def test_alexnet_sizes_in_float32(shape, channels_last):
    """AlexNet's planes (fewer channels), where the C++ kernels split images into bands."""
    x = randn(*shape, channels_last=channels_last)
    check_against_torch(x, 5, 1e-4, 0.75, 2.0, 3, 2)


@pytest.mark.parametrize("case", ["alexnet", "rectangular", "C-1"])
def test_channels_last_matches_torch_and_keeps_its_layout(backend_device, case):
    backend, device = backend_device
    shape, args = CASES[case]
    x = randn(*shape, dtype=torch.float64, device=device, channels_last=True)
    y, dx = check_against_torch(x, *args, backend=backend, device=device)
    if shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert dx.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("make", NON_CONTIGUOUS.values(), ids=NON_CONTIGUOUS.keys())
def test_non_contiguous_inputs(backend_device, make):
    backend, device = backend_device
    x = make(randn(2, 7, 5, 6, dtype=torch.float64, device=device))
    assert not x.is_contiguous()
    check_against_torch(x, 5, 0.3, 0.75, 2.0, 3, 2, 1, True, backend=backend, device=device,
                        inference=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_low_precision_against_float64(backend_device, dtype, channels_last):
    backend, device = backend_device
    x = randn(1, 8, 5, 6, dtype=dtype, device=device, channels_last=channels_last)
    check_against_torch(x, 5, 0.1, 0.75, 2.0, 3, 2, 1, True, backend=backend, device=device,
                        inference=False)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_ties_pick_the_first_maximum_like_torch(backend_device, channels_last):
    """Inputs equal across channels and drawn from four values (negatives among them, which
    the ReLU makes zeros): most windows hold several equal maxima of z, and the winner (the
    first in row-major order) decides where the gradient goes."""
    backend, device = backend_device
    x = torch.randint(-1, 3, (1, 1, 6, 6)).double().expand(1, 4, 6, 6).contiguous().to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    for args in [(5, 0.3, 0.75, 2.0, 3, 2), (3, 0.3, 0.75, 1.0, 3, 1, 1), (3, 0.3, 0.75, 1.0, 2)]:
        check_against_torch(x, *args, backend=backend, device=device, inference=False)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_nan_and_infinities_like_torch(backend_device, channels_last):
    """NaN spreads over its LRN window and wins its pooling windows; +inf gives NaN where
    its square enters a window sum (inf / inf); -inf is a zero after the ReLU."""
    backend, device = backend_device
    x = randn(1, 6, 7, 6, dtype=torch.float64, device=device)
    x[0, 1, 1, 4] = float("nan")
    x[0, 4, 2, 1] = float("inf")
    x[0, :, 4:, :3] = -float("inf")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    for args in [(3, 0.3, 0.75, 1.0, 3, 2), (3, 0.3, 0.75, 1.0, 3, 2, 1, True)]:
        check_against_torch(x, *args, backend=backend, device=device)


def test_empty_batch(backend_device):
    _, device = backend_device
    x = randn(0, 4, 9, 9, device=device).requires_grad_()
    y = relu_lrn_max_pool2d(x, 3, 1e-4, 0.75, 2.0, 3, 2)
    y.sum().backward()
    assert y.shape == (0, 4, 4, 4) and x.grad.shape == x.shape


def test_gradcheck(backend_device):
    backend, device = backend_device
    # distinct values (ties have no derivative), none at 0 (the ReLU's kink), small, and
    # fast_mode (a few directional derivatives): Triton's interpreter is slow
    x = torch.randperm(2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4) / 40 - 1.2125
    x = x.to(device).requires_grad_()
    for args in [(3, 0.5, 0.75, 1.0, 3, 2, 1, True), (2, 0.5, 0.6, 2.0, 2, 1)]:
        assert torch.autograd.gradcheck(lambda t, args=args: relu_lrn_max_pool2d(t, *args),
                                        (x,), fast_mode=True)


def test_second_derivatives_match_torch(backend_device):
    """create_graph=True (a gradient penalty, say): second derivatives as the composition's."""
    backend, device = backend_device
    x = randn(1, 5, 7, 7, dtype=torch.float64, device=device)
    grad = randn(1, 5, 3, 3, dtype=torch.float64, device=device)
    results = []
    for fn in (relu_lrn_max_pool2d, composition):
        leaf = x.clone().requires_grad_()
        grad_leaf = grad.clone().requires_grad_()
        (first,) = torch.autograd.grad(fn(leaf, 3, 0.5, 0.75, 1.0, 3, 2), leaf, grad_leaf,
                                       create_graph=True)
        (first * first).sum().backward()
        results.append((first.detach(), leaf.grad, grad_leaf.grad))
    for ours, expected in zip(*results):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


def test_64_bit_offsets(backend_device):
    """Element offsets beyond 2**31 (a batch stride that fits 32 bits times an index that
    does not). The storage is reserved, not touched: only the view's elements are written."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the storage trick relies on lazily committed host memory")

    def huge(shape, stride, dtype=torch.float16, fill=False):
        t = torch.empty_strided(shape, stride, dtype=dtype)
        return t.normal_() if fill else t

    x = huge((3, 2, 5, 5), (2**30 + 7, 25, 5, 1), fill=True)
    grad = huge((3, 2, 2, 2), (2**30 + 7, 4, 2, 1), fill=True)
    y, positions = huge(grad.shape, grad.stride()), huge(grad.shape, grad.stride(), torch.uint8)
    dx = huge(x.shape, x.stride())
    args = (3, 0.5, 0.75, 1.0, (3, 3), (2, 2), (0, 0))
    kernels = backends.kernels(backend)
    kernels.relu_lrn_max_pool2d_forward(x, y, positions, *args)
    kernels.relu_lrn_max_pool2d_backward(x, grad, positions, dx, *args)
    x_ref = x.double().requires_grad_()
    composition(x_ref, 3, 0.5, 0.75, 1.0, 3, 2).backward(grad.double())
    assert_close_to_reference(y, composition(x.double(), 3, 0.5, 0.75, 1.0, 3, 2),
                              torch.float16)
    assert_close_to_reference(dx, x_ref.grad, torch.float16)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "neither"])
def test_kernels_read_and_write_any_strides(backend_device, layout):
    """The kernel entry points with their outputs and dL/dy spread out (every other element
    of a larger buffer), against the reference kernels on the same views."""
    backend, device = backend_device
    n, c, h, w = 1, 6, 5, 6
    args = (5, 0.3, 0.75, 2.0, (3, 3), (2, 2), (1, 1))

    def view(shape, dtype=torch.float64, kind="neither"):
        n_, c_, h_, w_ = shape
        if kind == "nchw":
            return torch.empty(shape, dtype=dtype, device=device)
        if kind == "channels_last":
            return torch.empty(n_, h_, w_, c_, dtype=dtype, device=device).permute(0, 3, 1, 2)
        return torch.empty(n_, h_, 2 * w_, 3 * c_, dtype=dtype, device=device)[
            :, :, ::2, ::3].permute(0, 3, 1, 2)

    x, grad = view((n, c, h, w), kind=layout).normal_(), view((n, c, 3, 3)).normal_()
    results = {}
    for name in (backend, "reference"):
        kernels = backends.kernels(name)
        y = view((n, c, 3, 3)).fill_(float("nan"))
        positions = view((n, c, 3, 3), torch.uint8).fill_(255)
        dx = view((n, c, h, w)).fill_(float("nan"))
        kernels.relu_lrn_max_pool2d_forward(x, y, positions, *args)
        kernels.relu_lrn_max_pool2d_backward(x, grad, positions, dx, *args)
        results[name] = (y, positions, dx)
    for ours, expected in zip(results[backend], results["reference"]):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


def test_backward_keeps_the_input_and_one_byte_per_output():
    """What autograd keeps for backward: x itself (no copy) and the positions, one byte
    per output; no ReLU or LRN output."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = randn(2, 8, 27, 27).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = relu_lrn_max_pool2d(x, 5, 1e-4, 0.75, 2.0, 3, 2)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    assert x.untyped_storage().data_ptr() in storages
    assert sum(storages.values()) == x.numel() * 4 + y.numel()
    y.sum().backward()


def test_inference_writes_no_positions(backend_device, monkeypatch):
    backend, device = backend_device
    kernels = backends.kernels(backend)
    calls = []
    original = kernels.relu_lrn_max_pool2d_forward
    monkeypatch.setattr(kernels, "relu_lrn_max_pool2d_forward",
                        lambda *args: calls.append(args[2]) or original(*args))
    x = randn(2, 3, 7, 7, device=device)
    with torch.no_grad():
        relu_lrn_max_pool2d(x.requires_grad_(), 3)
    relu_lrn_max_pool2d(x.detach(), 3)
    assert calls == [None, None]
    relu_lrn_max_pool2d(x.requires_grad_(), 3)
    assert calls[-1] is not None


def test_backward_uses_the_forward_backend(monkeypatch):
    from fastcnn.kernels import reference

    calls = []
    original = reference.relu_lrn_max_pool2d_backward
    monkeypatch.setattr(reference, "relu_lrn_max_pool2d_backward",
                        lambda *args: calls.append(1) or original(*args))
    x = randn(2, 5, 7, 7).requires_grad_()
    with fastcnn.use_backend("reference"):
        y = relu_lrn_max_pool2d(x, 3)
    y.sum().backward()  # outside the block, where CPU tensors would run the C++ kernels
    assert calls == [1]


@pytest.mark.parametrize("args", [
    (3, float("nan")),
    (3, torch.tensor(0.3, dtype=torch.float64)),
    (3, 0.3, 0.75, 1.0, 17, 1, 8),
], ids=["alpha-nan", "alpha-a-tensor", "window-of-289-taps"])
def test_what_the_kernels_do_not_take_matches_the_composition(args):
    """Non-finite (or tensor) LRN arguments, and windows whose positions do not fit a
    byte, run the composition of fastcnn's ops: the composition's numbers."""
    (y, dx), (y_ref, dx_ref) = run_both(randn(2, 4, 9, 9, dtype=torch.float64), *args)
    assert_close_to_reference(y, y_ref, torch.float64)
    assert_close_to_reference(dx, dx_ref, torch.float64)


def test_integer_input_follows_torch():
    """Integer inputs are not the kernels': the composition of torch's functions decides
    (its LRN returns float32)."""
    x = torch.randint(-3, 4, (2, 4, 9, 9))
    torch.testing.assert_close(relu_lrn_max_pool2d(x, 3, 0.3), composition(x, 3, 0.3),
                               rtol=0, atol=0)


def test_module():
    """The stride defaults to the kernel size, as nn.MaxPool2d's."""
    module = fastcnn.nn.ReLULRNMaxPool(5, alpha=1e-4, beta=0.75, k=2.0)
    assert repr(module) == ("ReLULRNMaxPool(size=5, alpha=0.0001, beta=0.75, k=2.0, "
                            "kernel_size=3, stride=None, padding=0, ceil_mode=False)")
    assert list(module.state_dict()) == []
    x = randn(2, 8, 13, 13, dtype=torch.float64)
    assert_close_to_reference(module(x), composition(x, 5, 1e-4, 0.75, 2.0, 3, 3),
                              torch.float64)
    module = fastcnn.nn.ReLULRNMaxPool(5, alpha=1e-4, beta=0.75, k=2.0, stride=2)
    assert_close_to_reference(module(x), composition(x, 5, 1e-4, 0.75, 2.0, 3, 2),
                              torch.float64)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.stem = fastcnn.nn.ReLULRNMaxPool(5, alpha=1e-2, beta=0.75, k=2.0, padding=1,
                                              ceil_mode=True)

    def forward(self, x):
        return self.stem(self.conv(x)).sum(dim=(2, 3))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph(backend):
    net = _Net().double()
    check_compiled_model_matches_eager(net, randn(2, 3, 11, 11, dtype=torch.float64), backend,
                                       net.conv.weight)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: relu_lrn_max_pool2d([[[[1.0]]]], 3), TypeError, ["input", "Tensor"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(4, 5), 3), ValueError, ["input", "3"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(4, 5, 6), 3), ValueError,
         ["input", "(N, C, H, W)"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 0, 4, 4), 3), ValueError,
         ["input", "non-zero"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 0), ValueError, ["size", ">= 1"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 2.5), TypeError, ["size", "int"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 3, k="1"), TypeError, ["k"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 3, beta=None), TypeError,
         ["beta"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 4, 4), 3, kernel_size=5), ValueError,
         ["kernel_size", "more than the input"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 3, kernel_size=0), ValueError,
         ["kernel_size", ">= 1"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 3, stride=0), ValueError,
         ["stride", ">= 1"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 3, padding=2), ValueError,
         ["padding", "half of kernel_size"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 3, kernel_size=2.5), TypeError,
         ["kernel_size", "int"]),
        (lambda: relu_lrn_max_pool2d(torch.randn(2, 3, 8, 8), 3, ceil_mode=1), TypeError,
         ["ceil_mode", "bool"]),
    ],
    ids=["not-a-tensor", "2d", "3d", "no-channels", "size-0", "size-float", "k-string",
         "beta-none", "kernel-over-input", "kernel-0", "stride-0", "padding-over-half",
         "float-kernel", "ceil-mode-int"])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_cpp_entry_points_check_their_tensors():
    kernels = backends.kernels("cpp")
    x = randn(2, 3, 9, 9)
    args = (3, 1e-4, 0.75, 1.0, (3, 3), (2, 2), (0, 0))
    y, p = torch.empty(2, 3, 4, 4), torch.empty(2, 3, 4, 4, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="output must not share memory with input"):
        kernels.relu_lrn_max_pool2d_forward(x, x, None, 3, 1e-4, 0.75, 1.0, (1, 1), (1, 1),
                                            (0, 0))
    with pytest.raises(RuntimeError, match="output size 6 is impossible .* start at 10"):
        kernels.relu_lrn_max_pool2d_forward(x, torch.empty(2, 3, 6, 6), None, *args)
    with pytest.raises(RuntimeError, match="positions must be Byte"):
        kernels.relu_lrn_max_pool2d_forward(x, y, p.long(), *args)
    with pytest.raises(RuntimeError, match="at most 256 taps"):
        kernels.relu_lrn_max_pool2d_forward(x, torch.empty(2, 3, 1, 1), None, 3, 1e-4, 0.75,
                                            1.0, (17, 17), (1, 1), (8, 8))
    with pytest.raises(RuntimeError, match="grad_input must have the shape of input"):
        kernels.relu_lrn_max_pool2d_backward(x, y, p, torch.empty(2, 3, 9, 8), *args)


@pytest.mark.parametrize("layout", OTHER_LAYOUTS.keys())
def test_kernels_refuse_tensors_that_are_not_strided(layout):
    """mkldnn and sparse tensors have no strides to read: a clear error naming the
    argument from the C++ and Triton entry points, never a crash."""
    make = OTHER_LAYOUTS[layout]
    x, y = randn(2, 3, 9, 9), torch.empty(2, 3, 4, 4)
    p = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    args = (3, 1e-4, 0.75, 1.0, (3, 3), (2, 2), (0, 0))
    for name in ("cpp", "triton"):
        if not backends.info()["backends"][name]["available"]:
            continue
        kernels = backends.kernels(name)
        error = RuntimeError if name == "cpp" else ValueError
        for call, argument in [
            (lambda: kernels.relu_lrn_max_pool2d_forward(make(x), y, None, *args), "input"),
            (lambda: kernels.relu_lrn_max_pool2d_forward(x, make(y), p, *args), "output"),
            (lambda: kernels.relu_lrn_max_pool2d_backward(x, make(y), p, x.clone(), *args),
             "grad_output"),
            (lambda: kernels.relu_lrn_max_pool2d_backward(x, y, p, make(x), *args),
             "grad_input"),
        ]:
            with pytest.raises(error, match=f"{argument} must be a strided"):
                call()
