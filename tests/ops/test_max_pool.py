"""max_pool2d against torch.nn.functional.max_pool2d, on every backend."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (NON_CONTIGUOUS, OTHER_LAYOUTS, assert_close_to_reference,
                     check_compiled_model_matches_eager, randn)

import fastcnn
from fastcnn import backends
from fastcnn.functional import max_pool2d
from fastcnn.kernels.reference import window_positions_to_indices


def run_both(x, *args, grad=None):
    """((output, indices, grad_input) of fastcnn, the same of torch in float64) for x and
    max_pool2d arguments args."""
    x_ours = x.detach().clone().requires_grad_()
    y, indices = max_pool2d(x_ours, *args, return_indices=True)
    grad = randn(*y.shape, dtype=x.dtype, device=x.device) if grad is None else grad
    y.backward(grad)
    x_ref = x.detach().double().requires_grad_()
    y_ref, indices_ref = F.max_pool2d(x_ref, *args, return_indices=True)
    y_ref.backward(grad.double())
    return (y, indices, x_ours.grad), (y_ref, indices_ref, x_ref.grad)


def check_against_torch(x, *args, backend=None, device="cpu"):
    (y, indices, dx), (y_ref, indices_ref, dx_ref) = run_both(x, *args)
    assert y.shape == y_ref.shape and y.dtype == x.dtype and y.device == x.device
    # a maximum is one of the inputs: exact, and the same winner (so the same gradient)
    torch.testing.assert_close(y.double(), y_ref, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(indices, indices_ref)
    assert_close_to_reference(dx, dx_ref, x.dtype, backend, device)
    # inference (no positions kept) runs other kernel paths: the same values
    with torch.no_grad():
        y_values = max_pool2d(x, *args)
    torch.testing.assert_close(y_values.double(), y_ref.detach(), rtol=0, atol=0, equal_nan=True)


# (shape, kernel_size, stride, padding, dilation, ceil_mode)
CASES = {
    "alexnet-3x3-s2": ((2, 3, 13, 13), 3, 2, 0, 1, False),
    "even-input": ((2, 3, 12, 10), 3, 2, 0, 1, False),
    "non-overlapping-2x2": ((2, 3, 8, 6), 2, None, 0, 1, False),
    "non-overlapping-odd-input": ((2, 3, 9, 7), 2, 2, 0, 1, False),
    "resnet-stem-padded": ((2, 4, 11, 12), 3, 2, 1, 1, False),
    "ceil-mode": ((2, 3, 12, 10), 3, 2, 0, 1, True),
    "ceil-mode-padded": ((2, 3, 10, 9), 3, 2, 1, 1, True),
    "ceil-mode-drops-window": ((1, 2, 5, 5), 2, 3, 1, 1, True),  # would start in right padding
    "googlenet-3x3-s1-padded": ((2, 3, 7, 6), 3, 1, 1, 1, False),
    "dilated": ((2, 3, 11, 10), 3, 2, 1, 2, False),
    "dilated-ceil": ((2, 3, 10, 11), 3, 2, 1, 2, True),
    "rectangular": ((2, 3, 11, 12), (3, 2), (2, 1), (1, 0), (1, 2), False),
    "window-wider-than-stride-3": ((2, 3, 14, 13), 5, 3, 2, 1, True),
    "stride-larger-than-window": ((2, 3, 13, 11), 2, 3, 0, 1, False),
    "1x1-kernel": ((2, 3, 4, 5), 1, 1, 0, 1, False),
    "1x1-input": ((3, 4, 1, 1), 1, 1, 0, 1, False),
    "1x1-input-padded": ((3, 4, 1, 1), 3, 2, 1, 1, False),
    "window-covers-input": ((2, 3, 3, 3), 3, 1, 0, 1, False),
    "one-channel": ((2, 1, 7, 7), 3, 2, 0, 1, False),
    "unbatched": ((3, 9, 8), 3, 2, 1, 1, True),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_torch_in_float64(backend_device, case):
    backend, device = backend_device
    shape, *args = case
    x = randn(*shape, dtype=torch.float64, device=device)
    check_against_torch(x, *args, backend=backend, device=device)


@pytest.mark.parametrize("case", ["alexnet-3x3-s2", "resnet-stem-padded", "dilated-ceil",
                                  "rectangular", "one-channel"])
def test_channels_last_matches_torch_and_keeps_its_layout(backend_device, case):
    backend, device = backend_device
    shape, *args = CASES[case]
    x = randn(*shape, dtype=torch.float64, device=device, channels_last=True)
    check_against_torch(x, *args, backend=backend, device=device)
    y = max_pool2d(x.requires_grad_(), *args)
    y.sum().backward()
    if shape[1] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
        assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_many_channels_in_both_layouts(backend_device):
    """More channels than a vector holds, over a small image."""
    backend, device = backend_device
    for channels_last in (False, True):
        x = randn(2, 40, 5, 5, dtype=torch.float64, device=device, channels_last=channels_last)
        check_against_torch(x, 3, 2, 1, 1, False, backend=backend, device=device)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", ["alexnet-3x3-s2", "resnet-stem-padded", "googlenet-3x3-s1-padded",
                                  "non-overlapping-2x2"])
def test_ties_pick_the_first_maximum_like_torch(backend_device, case, channels_last):
    """Inputs drawn from three values: most windows have several maxima, and the winner
    (the first in row-major order) decides where the gradient goes."""
    backend, device = backend_device
    shape, *args = CASES[case]
    x = torch.randint(0, 3, shape).double().to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    check_against_torch(x, *args, backend=backend, device=device)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_nan_and_infinities_like_torch(backend_device, channels_last):
    """NaN wins its windows (the last NaN of a window, as PyTorch scans), -inf never wins
    unless the whole window is -inf (then its first tap in the input wins)."""
    backend, device = backend_device
    x = randn(2, 3, 9, 10, dtype=torch.float64, device=device)
    x[0, 0, 2, 2] = x[0, 0, 2, 3] = x[0, 0, 3, 2] = float("nan")
    x[0, 1, 4, 4] = float("inf")
    x[1, 2] = -float("inf")
    x[1, 1, :4, :4] = -float("inf")
    x[1, 0, 0, 0] = float("nan")
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    for args in [(3, 2, 0, 1, False), (3, 2, 1, 1, True), (2, 1, 0, 1, False)]:
        check_against_torch(x, *args, backend=backend, device=device)


@pytest.mark.parametrize("make", NON_CONTIGUOUS.values(), ids=NON_CONTIGUOUS.keys())
def test_non_contiguous_inputs(backend_device, make):
    backend, device = backend_device
    x = make(randn(3, 9, 10, 11, dtype=torch.float64, device=device))
    assert not x.is_contiguous()
    check_against_torch(x, 3, 2, 1, 1, True, backend=backend, device=device)


def test_non_contiguous_grad_output(backend_device):
    backend, device = backend_device
    x = randn(2, 6, 9, 9, dtype=torch.float64, device=device)
    grad = randn(2, 4, 4, 12, dtype=torch.float64, device=device)[..., ::2].permute(0, 3, 1, 2)
    assert grad.shape == (2, 6, 4, 4) and not grad.is_contiguous()
    (_, _, dx), (_, _, dx_ref) = run_both(x, 3, 2, 0, 1, False, grad=grad)
    assert_close_to_reference(dx, dx_ref, torch.float64, backend, device)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "neither"])
def test_kernels_read_and_write_any_strides(backend_device, layout):
    """The kernel entry points with every tensor spread out (every other element of a
    larger buffer), against the reference kernels on the same views."""
    backend, device = backend_device
    n, c, h, w = 2, 5, 9, 8
    pool = ((3, 3), (2, 2), (1, 1), (1, 1))
    out_h, out_w = 5, 4

    def view(shape, dtype=torch.float64, kind="neither"):
        n_, c_, h_, w_ = shape
        if kind == "nchw":
            return torch.empty(shape, dtype=dtype, device=device)
        if kind == "channels_last":
            return torch.empty(n_, h_, w_, c_, dtype=dtype, device=device).permute(0, 3, 1, 2)
        return torch.empty(n_, h_, 2 * w_, 3 * c_, dtype=dtype, device=device)[
            :, :, ::2, ::3].permute(0, 3, 1, 2)

    x = view((n, c, h, w), kind=layout).normal_()
    grad = view((n, c, out_h, out_w)).normal_()
    results = {}
    for name in (backend, "reference"):
        kernels = backends.kernels(name)
        y = view((n, c, out_h, out_w)).fill_(float("nan"))
        positions = view((n, c, out_h, out_w), torch.uint8).fill_(255)
        dx = view((n, c, h, w)).fill_(float("nan"))
        kernels.max_pool2d_forward(x, y, positions, *pool)
        kernels.max_pool2d_backward(grad, positions, dx, *pool)
        results[name] = (y, positions, dx)
    for ours, expected in zip(results[backend], results["reference"]):
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape,kernel,stride,padding", [
    ((2, 3, 13, 13), 3, 2, 0), ((1, 2, 5, 7), 3, 2, 0), ((2, 3, 55, 55), 3, 2, 0),
    # planes smaller than a 16-lane vector (GoogLeNet's 3x3/1 branch on 4 x 4 maps)
    ((2, 3, 4, 4), 3, 1, 1), ((1, 2, 3, 5), 3, 1, 1), ((2, 3, 4, 4), 2, 2, 0),
    ((1, 3, 2, 2), 3, 2, 1)])
def test_kernels_write_nothing_outside_their_outputs(backend_device, shape, kernel, stride,
                                                     padding):
    """Contiguous outputs at the start of larger buffers: what follows them stays intact
    (row loops that run over whole vectors must not spill past a plane)."""
    backend, device = backend_device
    x = randn(*shape, dtype=torch.float32, device=device)
    n, c, h, w = shape
    out_h, out_w = ((size + 2 * padding - kernel) // stride + 1 for size in (h, w))
    pool = ((kernel, kernel), (stride, stride), (padding, padding), (1, 1))
    kernels = backends.kernels(backend)
    for positions in (False, True):
        buffer = torch.full((n * c * out_h * out_w + 64,), -7.0, device=device)
        y = buffer[:n * c * out_h * out_w].view(n, c, out_h, out_w)
        p = torch.empty(n, c, out_h, out_w, dtype=torch.uint8, device=device) if positions \
            else None
        kernels.max_pool2d_forward(x, y, p, *pool)
        assert (buffer[y.numel():] == -7.0).all()
        torch.testing.assert_close(y, F.max_pool2d(x, kernel, stride, padding), rtol=0, atol=0)
        grad_buffer = torch.full((x.numel() + 64,), -7.0, device=device)
        if positions:
            dx = grad_buffer[:x.numel()].view(shape)
            kernels.max_pool2d_backward(torch.ones_like(y), p, dx, *pool)
            assert (grad_buffer[x.numel():] == -7.0).all()


def test_large_windows_keep_int32_positions(backend_device):
    """More than 256 taps: positions no longer fit in a byte."""
    backend, device = backend_device
    x = randn(2, 3, 19, 18, dtype=torch.float64, device=device)
    check_against_torch(x, 17, 1, 0, 1, False, backend=backend, device=device)
    _, positions = fastcnn.ops.max_pool2d_with_positions(x, [17, 17], [1, 1], [0, 0], [1, 1],
                                                         False, backend)
    assert positions.dtype == torch.int32


# Extreme but legal arguments (each may be up to 2^31 - 1): no buffer or loop may be sized
# by them beyond the input and output. (kernel, stride, padding, dilation, ceil_mode)
EXTREME_CASES = {
    "stride-1e9": (2, 10**9, 0, 1, False),
    "stride-1e9-ceil-padded": (2, 10**9, 1, 1, True),
    "largest-stride": (3, 2**31 - 1, 1, 1, True),
    "dilation-2^30": (2, 2**31 - 1, 0, 2**30, True),
    "window-of-2^32-taps": (65537, 1, 32768, 1, False),  # int64 positions
    "window-of-2^32-taps-strided": (65537, 65536, 32768, 1, True),
}


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", EXTREME_CASES.values(), ids=EXTREME_CASES.keys())
def test_extreme_arguments_match_torch(backend_device, case, channels_last):
    """The custom ops themselves (the functional layer's checks aside): values, indices and
    gradient as torch's."""
    backend, device = backend_device
    if backend == "triton" and device == "cpu" and channels_last:
        pytest.skip("the interpreter takes seconds per call; NCHW covers the launcher")
    kernel, stride, padding, dilation, ceil_mode = case
    pool = [[v, v] for v in (kernel, stride, padding, dilation)]
    x = randn(2, 3, 8, 7, dtype=torch.float64, device=device, channels_last=channels_last)
    x_ref = x.detach().clone().requires_grad_()
    y_ref, indices_ref = F.max_pool2d(x_ref, kernel, stride, padding, dilation, ceil_mode,
                                      return_indices=True)
    grad = randn(*y_ref.shape, dtype=torch.float64, device=device)
    y_ref.backward(grad)

    y = fastcnn.ops.max_pool2d(x, *pool, ceil_mode, backend)
    y_p, positions = fastcnn.ops.max_pool2d_with_positions(x, *pool, ceil_mode, backend)
    dx = fastcnn.ops.max_pool2d_backward(grad, positions, 8, 7, *pool, channels_last, backend)
    assert torch.equal(y, y_ref.detach()) and torch.equal(y_p, y_ref.detach())
    assert torch.equal(window_positions_to_indices(positions, (8, 7), *pool[:2], *pool[2:]),
                       indices_ref)
    assert_close_to_reference(dx, x_ref.grad, torch.float64, backend, device)
    taps = kernel * kernel
    assert positions.dtype == (torch.uint8 if taps <= 256 else
                               torch.int32 if taps < 2**31 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_low_precision_against_float64(backend_device, dtype, channels_last):
    backend, device = backend_device
    x = randn(2, 16, 11, 10, dtype=dtype, device=device, channels_last=channels_last)
    check_against_torch(x, 3, 2, 1, 1, True, backend=backend, device=device)


def test_inference_writes_no_positions(backend_device, monkeypatch):
    """Without a gradient to compute, the kernel is asked for values only."""
    backend, device = backend_device
    kernels = backends.kernels(backend)
    calls = []
    original = kernels.max_pool2d_forward
    monkeypatch.setattr(kernels, "max_pool2d_forward",
                        lambda *args: calls.append(args[2]) or original(*args))
    x = randn(2, 3, 9, 9, device=device)
    with torch.no_grad():
        max_pool2d(x.requires_grad_(), 3, 2)
    max_pool2d(x.detach(), 3, 2)
    assert calls == [None, None]
    max_pool2d(x.requires_grad_(), 3, 2)
    assert calls[-1] is not None


def test_backward_keeps_one_byte_per_output():
    """What autograd keeps for backward: the positions, one byte per output, and nothing
    else (no input, no output, no int64 indices)."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    x = randn(4, 8, 27, 27).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = max_pool2d(x, 3, 2)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in saved}
    assert sum(storages.values()) == y.numel() == 4 * 8 * 13 * 13
    y.sum().backward()


def test_gradcheck(backend_device):
    backend, device = backend_device
    # distinct values (ties have no derivative), small: Triton's interpreter is slow
    x = (torch.randperm(2 * 2 * 5 * 4, dtype=torch.float64) / 10).view(2, 2, 5, 4)
    x = x.to(device).requires_grad_()
    for args in [(3, 2, 1, 1, True), (2, 1, 0, 1, False)]:
        assert torch.autograd.gradcheck(lambda t, args=args: max_pool2d(t, *args), (x,))


def test_second_derivatives_match_torch(backend_device):
    backend, device = backend_device
    x = randn(2, 3, 7, 7, dtype=torch.float64, device=device)
    grad = randn(2, 3, 3, 3, dtype=torch.float64, device=device)
    results = []
    for fn in (max_pool2d, F.max_pool2d):
        leaf = x.clone().requires_grad_()
        grad_leaf = grad.clone().requires_grad_()
        (first,) = torch.autograd.grad(fn(leaf, 3, 2), leaf, grad_leaf, create_graph=True)
        (first * first).sum().backward()
        results.append((first.detach(), grad_leaf.grad))
    for ours, expected in zip(*results):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


def test_empty_batch(backend_device):
    _, device = backend_device
    x = randn(0, 4, 9, 9, device=device).requires_grad_()
    y, indices = max_pool2d(x, 3, 2, return_indices=True)
    y.sum().backward()
    assert y.shape == indices.shape == (0, 4, 4, 4) and x.grad.shape == x.shape


def test_64_bit_offsets(backend_device):
    """Element offsets beyond 2**31 (a batch stride that fits 32 bits times an index that
    does not). The storage is reserved, not touched: only the view's elements are written."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the storage trick relies on lazily committed host memory")
    shape, stride = (3, 2, 5, 5), (2**30 + 7, 25, 5, 1)
    out_shape, out_stride = (3, 2, 2, 2), (2**30 + 7, 4, 2, 1)

    def huge(shape, stride, dtype=torch.float16, fill=False):
        t = torch.empty_strided(shape, stride, dtype=dtype)
        return t.normal_() if fill else t

    x, grad = huge(shape, stride, fill=True), huge(out_shape, out_stride, fill=True)
    y, positions = huge(out_shape, out_stride), huge(out_shape, out_stride, torch.uint8)
    dx = huge(shape, stride)
    pool = ((3, 3), (2, 2), (0, 0), (1, 1))
    kernels = backends.kernels(backend)
    kernels.max_pool2d_forward(x, y, positions, *pool)
    kernels.max_pool2d_backward(grad, positions, dx, *pool)
    x_ref = x.double().requires_grad_()
    y_ref = F.max_pool2d(x_ref, 3, 2)
    y_ref.backward(grad.double())
    assert_close_to_reference(y, y_ref, torch.float16)
    assert_close_to_reference(dx, x_ref.grad, torch.float16)


def test_module_is_a_drop_in_for_torch():
    for kwargs in [dict(kernel_size=3, stride=2), dict(kernel_size=3, stride=2, padding=1,
                                                       ceil_mode=True),
                   dict(kernel_size=2, return_indices=True)]:
        ours, theirs = fastcnn.nn.MaxPool2d(**kwargs), torch.nn.MaxPool2d(**kwargs)
        assert isinstance(ours, torch.nn.MaxPool2d)
        assert repr(ours) == repr(theirs)
        x = randn(2, 4, 9, 9, dtype=torch.float64)
        for a, b in zip(*(torch.utils._pytree.tree_leaves(m(x)) for m in (ours, theirs))):
            assert torch.equal(a, b)


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.pool = fastcnn.nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)

    def forward(self, x):
        return torch.relu(self.pool(self.conv(x))).sum(dim=(2, 3))


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph(backend):
    net = _Net().double()
    check_compiled_model_matches_eager(net, randn(2, 3, 11, 11, dtype=torch.float64), backend,
                                       net.conv.weight)


def test_torch_compile_with_indices():
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: max_pool2d(t, 3, 2, return_indices=True), fullgraph=True)
    x = randn(2, 3, 9, 9)
    for a, b in zip(compiled(x), F.max_pool2d(x, 3, 2, return_indices=True)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: max_pool2d(torch.randn(4, 5), 3), ValueError, ["input", "3"]),
        (lambda: max_pool2d(torch.randn(1, 2, 3, 4, 5), 3), ValueError, ["input", "(N, C, H, W)"]),
        (lambda: max_pool2d(torch.randn(2, 0, 4, 4), 3), ValueError, ["input", "non-zero"]),
        (lambda: max_pool2d(torch.randn(2, 3, 4, 4), 5), ValueError,
         ["kernel_size", "more than the input"]),
        (lambda: max_pool2d(torch.randn(2, 3, 4, 4), 3, dilation=2), ValueError,
         ["kernel_size", "dilation"]),
        (lambda: max_pool2d(torch.randn(2, 3, 8, 8), 3, padding=2), ValueError,
         ["padding", "half of kernel_size"]),
        (lambda: max_pool2d(torch.randn(2, 3, 8, 8), 3, stride=0), ValueError,
         ["stride", ">= 1"]),
        (lambda: max_pool2d(torch.randn(2, 3, 8, 8), 0), ValueError, ["kernel_size", ">= 1"]),
        (lambda: max_pool2d(torch.randn(2, 3, 8, 8), 3, padding=-1), ValueError,
         ["padding", ">= 0"]),
        (lambda: max_pool2d(torch.randn(2, 3, 8, 8), (3, 3, 3)), TypeError, ["kernel_size"]),
        (lambda: max_pool2d(torch.randn(2, 3, 8, 8), 2.5), TypeError, ["kernel_size", "int"]),
        (lambda: max_pool2d(torch.randn(2, 3, 8, 8), 3, dilation=0), ValueError,
         ["dilation", ">= 1"]),
        (lambda: max_pool2d(torch.randn(1, 1, 3, 3), 2, 1, 1, 4), ValueError,
         ["dilation", "no element of the input"]),
    ],
    ids=["2d", "5d", "no-channels", "kernel-over-input",
         "dilated-kernel-over-input", "padding-over-half", "stride-0", "kernel-0",
         "negative-padding", "three-kernel-sizes", "float-kernel", "dilation-0",
         "dilation-skips-the-input"])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_cpp_entry_points_check_their_tensors():
    kernels = backends.kernels("cpp")
    x = randn(2, 3, 9, 9)
    pool = ((3, 3), (2, 2), (0, 0), (1, 1))
    with pytest.raises(RuntimeError, match="output must not share memory with input"):
        kernels.max_pool2d_forward(x, x, None, (1, 1), (1, 1), (0, 0), (1, 1))
    with pytest.raises(RuntimeError, match="output size 6 is impossible .* start at 10"):
        kernels.max_pool2d_forward(x, torch.empty(2, 3, 6, 6), None, *pool)
    with pytest.raises(RuntimeError, match="positions must be Byte"):
        kernels.max_pool2d_forward(x, torch.empty(2, 3, 4, 4),
                                   torch.empty(2, 3, 4, 4, dtype=torch.int64), *pool)


@pytest.mark.parametrize("layout", OTHER_LAYOUTS.keys())
def test_kernels_refuse_tensors_that_are_not_strided(layout):
    """mkldnn and sparse tensors have no strides to read: a clear error naming the
    argument, from the C++ and Triton entry points (the custom op must not crash either)."""
    make = OTHER_LAYOUTS[layout]
    x = randn(2, 3, 9, 9)
    y, p = torch.empty(2, 3, 4, 4), torch.empty(2, 3, 4, 4, dtype=torch.uint8)
    pool = ((3, 3), (2, 2), (0, 0), (1, 1))
    names = list(backends.info()["backends"])
    for name in ("cpp", "triton"):
        if name not in names or not backends.info()["backends"][name]["available"]:
            continue
        kernels = backends.kernels(name)
        error = RuntimeError if name == "cpp" else ValueError
        for call, argument in [
            (lambda: kernels.max_pool2d_forward(make(x), y, None, *pool), "input"),
            (lambda: kernels.max_pool2d_forward(x, make(y), p, *pool), "output"),
            (lambda: kernels.max_pool2d_forward(x, y, p.to_sparse(), *pool), "positions"),
            (lambda: kernels.max_pool2d_backward(make(y), p, x.clone(), *pool), "grad_output"),
            (lambda: kernels.max_pool2d_backward(y, p.to_sparse(), x.clone(), *pool),
             "positions"),
            (lambda: kernels.max_pool2d_backward(y, p, make(x), *pool), "grad_input"),
        ]:
            with pytest.raises(error, match=f"{argument} must be a strided"):
                call()
    with pytest.raises(RuntimeError):
        fastcnn.ops.max_pool2d(make(x), *map(list, pool), False, "cpp")
