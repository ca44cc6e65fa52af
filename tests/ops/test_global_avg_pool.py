"""global_avg_pool2d against torch.nn.functional.adaptive_avg_pool2d(x, 1), on every backend."""

import pytest
import torch
import torch.nn.functional as F
from helpers import (NON_CONTIGUOUS, OTHER_LAYOUTS, VIEW_LAYOUTS,
                     assert_close_to_reference, check_compiled_model_matches_eager, randn,
                     strided_view)

import fastcnn
from fastcnn import backends
from fastcnn.functional import global_avg_pool2d
from fastcnn.ops.layout import channel_view


def check_against_torch(x, backend=None, device="cpu", grad=None):
    x_ours = x.detach().clone().requires_grad_()
    y = global_avg_pool2d(x_ours)
    grad = randn(*y.shape, dtype=x.dtype, device=x.device) if grad is None else grad
    y.backward(grad)
    x_ref = x.detach().double().requires_grad_()
    y_ref = F.adaptive_avg_pool2d(x_ref, 1)
    y_ref.backward(grad.double())
    assert y.shape == y_ref.shape and y.dtype == x.dtype and y.device == x.device
    assert_close_to_reference(y, y_ref, x.dtype, backend, device)
    assert_close_to_reference(x_ours.grad, x_ref.grad, x.dtype, backend, device)
    with torch.no_grad():  # inference takes its own path (no autograd Function)
        y_inference = global_avg_pool2d(x_ours.detach())
    for ours in (y, y_inference):  # the same layout as torch's (strides of sizes > 1 alike)
        assert _strides_that_matter(ours) == _strides_that_matter(y_ref)
    assert torch.equal(y_inference, y)
    return y, x_ours.grad


def _strides_that_matter(t):
    return [stride for size, stride in zip(t.shape, t.stride()) if size > 1]


SHAPES = {
    "resnet-head": (2, 64, 7, 7),
    "odd": (3, 5, 3, 5),
    "one-channel": (2, 1, 6, 6),
    "1x1": (3, 7, 1, 1),
    "one-row": (2, 4, 1, 9),
    "one-column": (2, 4, 9, 1),
    "large-image": (1, 3, 112, 112),
    "unbatched": (6, 5, 4),
}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_matches_torch_in_float64(backend_device, shape, channels_last):
    backend, device = backend_device
    x = randn(*shape, dtype=torch.float64, device=device,
              channels_last=channels_last and len(shape) == 4)
    check_against_torch(x, backend, device)


def test_gradient_keeps_the_input_layout(backend_device):
    _, device = backend_device
    x = randn(2, 16, 5, 5, device=device, channels_last=True).requires_grad_()
    global_avg_pool2d(x).sum().backward()
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("make", NON_CONTIGUOUS.values(), ids=NON_CONTIGUOUS.keys())
def test_non_contiguous_inputs(backend_device, make):
    backend, device = backend_device
    x = make(randn(3, 9, 8, 9, dtype=torch.float64, device=device))
    assert not x.is_contiguous()
    check_against_torch(x, backend, device)


def test_non_contiguous_grad_output(backend_device):
    backend, device = backend_device
    x = randn(2, 6, 4, 4, dtype=torch.float64, device=device)
    grad = randn(2, 12, 1, 1, dtype=torch.float64, device=device)[:, ::2]
    check_against_torch(x, backend, device, grad=grad)


@pytest.mark.parametrize("layout", VIEW_LAYOUTS)
def test_kernels_read_and_write_any_strides(backend_device, layout):
    backend, device = backend_device
    n, c, s = 3, 20, 24

    def view(kind, positions):
        return strided_view(kind, n, c, positions, device=device)

    x, grad = view(layout, s).normal_(), view("neither", 1).normal_()
    results = {}
    for name in (backend, "reference"):
        y, dx = view("neither", 1).fill_(float("nan")), view("neither", s).fill_(float("nan"))
        kernels = backends.kernels(name)
        kernels.global_avg_pool2d_forward(x, y)
        kernels.global_avg_pool2d_backward(grad, dx)
        results[name] = (y, dx)
    for ours, expected in zip(results[backend], results["reference"]):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_low_precision_against_float64(backend_device, dtype, channels_last):
    backend, device = backend_device
    x = randn(2, 24, 7, 7, dtype=dtype, device=device, channels_last=channels_last)
    check_against_torch(x, backend, device)


@pytest.mark.parametrize("positions", [(4, 4), (1, 17), (5, 7), (4, 8), (15, 17), (16, 16),
                                       (1, 257)])
@pytest.mark.parametrize("channel_step", [1, 3])
def test_float32_rows_of_any_length(backend_device, positions, channel_step):
    """float32 NCHW rows are summed sixteen channels at a time on CPU, with the last,
    partial vector of each row masked: row lengths around multiples of 16, around the
    256 values of one float32 run, channel counts that leave a remainder of rows, and
    channels that are not back to back."""
    backend, device = backend_device
    x = randn(3, 37 * channel_step, *positions, device=device)[:, ::channel_step]
    check_against_torch(x, backend, device)


def test_half_precision_sums_many_positions_accurately(backend_device):
    """A mean over 4096 float16 values whose float16 running sum would lose the small ones:
    the sum is kept in float32 or wider."""
    backend, device = backend_device
    x = torch.full((1, 2, 64, 64), 0.01, dtype=torch.float16, device=device)
    x[:, :, 0, 0] = 100.0
    check_against_torch(x, backend, device)


def test_float32_mean_of_offset_values(backend_device):
    """Values with a large common offset: a long float32 running sum would be off."""
    backend, device = backend_device
    x = (1000 + randn(2, 3, 128, 128, dtype=torch.float64)).float().to(device)
    check_against_torch(x, backend, device)


def test_backward_keeps_nothing():
    saved = []
    x = randn(4, 8, 7, 7).requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = global_avg_pool2d(x)
    assert saved == []
    y.sum().backward()


def test_gradcheck(backend_device):
    _, device = backend_device
    x = randn(2, 3, 3, 2, dtype=torch.float64, device=device).requires_grad_()
    assert torch.autograd.gradcheck(global_avg_pool2d, (x,))
    assert torch.autograd.gradgradcheck(global_avg_pool2d, (x,))


def test_empty_batch(backend_device):
    _, device = backend_device
    x = randn(0, 4, 3, 3, device=device).requires_grad_()
    y = global_avg_pool2d(x)
    y.sum().backward()
    assert y.shape == (0, 4, 1, 1) and x.grad.shape == x.shape


def test_64_bit_offsets(backend_device):
    """Element offsets beyond 2**31; the storage is reserved, not touched."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the storage trick relies on lazily committed host memory")
    x = torch.empty_strided((3, 2, 6), (2**30 + 7, 6, 1), dtype=torch.float16).normal_()
    grad = torch.empty_strided((3, 2, 1), (2**30 + 7, 1, 1), dtype=torch.float16).normal_()
    y = torch.empty_strided((3, 2, 1), (2**30 + 7, 1, 1), dtype=torch.float16)
    dx = torch.empty_strided((3, 2, 6), (2**30 + 7, 6, 1), dtype=torch.float16)
    kernels = backends.kernels(backend)
    kernels.global_avg_pool2d_forward(x, y)
    kernels.global_avg_pool2d_backward(grad, dx)
    assert_close_to_reference(y, x.double().mean(2, keepdim=True), torch.float16)
    assert_close_to_reference(dx, (grad.double() / 6).expand(3, 2, 6), torch.float16)


def test_module_is_a_drop_in_for_adaptive_avg_pool():
    ours, theirs = fastcnn.nn.GlobalAvgPool2d(), torch.nn.AdaptiveAvgPool2d(1)
    assert isinstance(ours, torch.nn.AdaptiveAvgPool2d)
    x = randn(2, 16, 5, 5, dtype=torch.float64)
    assert_close_to_reference(ours(x), theirs(x), torch.float64)
    flat = fastcnn.nn.GlobalAvgPool2d(flatten=True)
    assert "flatten=True" in repr(flat)
    assert_close_to_reference(flat(x), theirs(x).flatten(1), torch.float64)
    assert flat(x[0]).shape == (16,)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph(backend):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), fastcnn.nn.GlobalAvgPool2d(flatten=True),
                              torch.nn.Linear(8, 2)).double()
    check_compiled_model_matches_eager(net, randn(2, 3, 9, 9, dtype=torch.float64), backend,
                                       net[0].weight)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: global_avg_pool2d("x"), TypeError, ["input", "Tensor"]),
    ],
    ids=["not-a-tensor"])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_cpp_entry_points_check_their_tensors():
    kernels = backends.kernels("cpp")
    with pytest.raises(RuntimeError, match=r"input must be \(N, C, H, W\)"):
        kernels.global_avg_pool2d(randn(3, 4, 4), False)
    with pytest.raises(RuntimeError, match="input must be float16, bfloat16, float32 or float64"):
        kernels.global_avg_pool2d(torch.ones(2, 3, 4, 4, dtype=torch.int64), False)
    x = channel_view(randn(2, 3, 4, 4))
    with pytest.raises(RuntimeError, match=r"output must be \(N, C, 1\)"):
        kernels.global_avg_pool2d_forward(x, torch.empty(2, 4, 1))
    with pytest.raises(RuntimeError, match="output must have the dtype of input"):
        kernels.global_avg_pool2d_forward(x, torch.empty(2, 3, 1, dtype=torch.float64))


@pytest.mark.parametrize("channels_last", [False, True])
def test_cpp_entry_point_allocates_the_layout_it_is_told(channels_last):
    """The C++ global_avg_pool2d(input, channels_last) takes its output layout from the
    caller (fastcnn.ops' rule), whatever the input's own."""
    x = randn(2, 3, 4, 5, channels_last=not channels_last)
    y = backends.kernels("cpp").global_avg_pool2d(x, channels_last)
    expected = torch.empty(2, 3, 1, 1, memory_format=torch.channels_last if channels_last else
                           torch.contiguous_format)
    assert y.shape == (2, 3, 1, 1) and y.stride() == expected.stride()
    torch.testing.assert_close(y, x.mean(dim=(2, 3), keepdim=True))


@pytest.mark.parametrize("layout", OTHER_LAYOUTS.keys())
def test_kernels_refuse_tensors_that_are_not_strided(layout):
    """mkldnn and sparse tensors have no strides to read: a clear error naming the
    argument from the C++ and Triton entry points, never a crash."""
    make = OTHER_LAYOUTS[layout]
    x, y = randn(2, 3, 16), torch.empty(2, 3, 1)
    with pytest.raises(RuntimeError, match="input must be a strided"):
        backends.kernels("cpp").global_avg_pool2d(make(randn(2, 3, 4, 4)), False)
    for name in ("cpp", "triton"):
        if not backends.info()["backends"][name]["available"]:
            continue
        kernels = backends.kernels(name)
        error = RuntimeError if name == "cpp" else ValueError
        for call, argument in [
            (lambda: kernels.global_avg_pool2d_forward(make(x), y), "input"),
            (lambda: kernels.global_avg_pool2d_forward(x, make(y)), "output"),
            (lambda: kernels.global_avg_pool2d_backward(make(y), x.clone()), "grad_output"),
            (lambda: kernels.global_avg_pool2d_backward(y, make(x)), "grad_input"),
        ]:
            with pytest.raises(error, match=f"{argument} must be a strided"):
                call()
