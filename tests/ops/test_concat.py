"""concat against torch.cat, on every backend: values, dtype, shape and strides, gradients
(views of the output's gradient), and refusals."""

import pytest
import torch
from helpers import NON_CONTIGUOUS, OTHER_LAYOUTS, randn

import fastcnn
from fastcnn import backends, ops
from fastcnn.functional import concat


def make(shape, dtype=torch.float32, device="cpu", channels_last=False):
    """Fresh random values of any dtype (small integers for integer and bool dtypes)."""
    x = randn(*shape, dtype=torch.float64, device=device, channels_last=channels_last)
    if dtype.is_floating_point or dtype.is_complex:
        return x.to(dtype)
    return (x * 3).round().to(dtype)


def assert_same(actual, expected):
    """The same tensor: values (a copy is exact), dtype, shape, strides, device."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.stride() == expected.stride() and actual.device == expected.device
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def shares_memory(view, t):
    return view.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()


def check_against_torch(tensors, dim):
    """concat(tensors, dim) is torch.cat's result; where inputs are differentiable, so are
    the gradients, which are views of the gradient given."""
    leaves = [t.detach().clone(memory_format=torch.preserve_format) for t in tensors]
    differentiable = [t for t in leaves if t.is_floating_point() or t.is_complex()]
    for t in differentiable:
        t.requires_grad_()
    output, expected = concat(leaves, dim), torch.cat(leaves, dim)
    assert_same(output.detach(), expected.detach())
    if not differentiable or output.numel() == 0:
        return output
    grad = make(output.shape, output.dtype, output.device)
    ours = torch.autograd.grad(output, differentiable, grad)
    theirs = torch.autograd.grad(expected, differentiable, grad)
    for g, g_ref, t in zip(ours, theirs, differentiable):
        assert_same(g, g_ref)
        assert g.numel() == 0 or t.dtype != output.dtype or shares_memory(g, grad)
    return output


def sized(base, dim, sizes):
    """Shapes of base with the given sizes along dim."""
    return [tuple(s if d != dim % len(base) else size for d, s in enumerate(base))
            for size in sizes]


DIMS = [0, 1, 2, 3, -1, -3]
LAYOUTS = {
    "nchw": lambda t: t,
    "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
    "transposed": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                   torch.int32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS.keys())
def test_matches_torch(backend_device, dtype, layout):
    backend, device = backend_device
    for dim in DIMS:
        shapes = sized((2, 5, 4, 3), dim, (1, 3, 2))
        check_against_torch([LAYOUTS[layout](make(s, dtype, device)) for s in shapes], dim)


@pytest.mark.parametrize("name", NON_CONTIGUOUS.keys())
def test_non_contiguous_inputs(backend_device, name):
    backend, device = backend_device
    tensors = [NON_CONTIGUOUS[name](make((3, 9, 6, 7), device=device)) for _ in range(3)]
    assert not any(t.is_contiguous() for t in tensors)
    for dim in range(4):
        check_against_torch(tensors, dim)


def test_mixed_layouts(backend_device):
    """Inputs of different layouts in one call (one kernel launch)."""
    backend, device = backend_device
    shapes = sized((2, 4, 5, 6), 1, (3, 2, 4, 1))
    tensors = [make(s, device=device) for s in shapes]
    tensors[0] = tensors[0].contiguous(memory_format=torch.channels_last)
    tensors[1] = NON_CONTIGUOUS["batch-innermost"](tensors[1])
    tensors[2] = tensors[2].transpose(2, 3).contiguous().transpose(2, 3)
    tensors[3] = tensors[3].expand(2, 1, 5, 6)
    for dim in (1, -3):
        check_against_torch(tensors, dim)


# The output's layout, as torch.cat chooses it (fastcnn.ops.concat.output_memory_format).
def _cl(shape, slices=(), **kwargs):
    return lambda device: make(shape, device=device, channels_last=True, **kwargs)[slices]


LAYOUT_CASES = {
    "all-channels-last": ([_cl((2, 3, 4, 5)), _cl((2, 5, 4, 5))], 1),
    "channels-last-and-nchw": ([_cl((2, 3, 4, 5)), lambda d: make((2, 5, 4, 5), device=d)], 1),
    "channels-last-and-(0,)": ([_cl((2, 3, 4, 5)), lambda d: make((0,), device=d)], 1),
    "channels-last-sliced": ([_cl((2, 6, 4, 5), (slice(None), slice(0, 3))),
                              _cl((2, 3, 8, 5), (slice(None), slice(None), slice(0, 8, 2)))], 0),
    "channels-last-W-1": ([_cl((2, 3, 4, 1)), _cl((2, 2, 4, 1))], 1),
    "channels-last-C-1": ([_cl((2, 1, 4, 5)), _cl((2, 1, 4, 5))], 1),
    "channels-last-3d": ([lambda d: make((2, 3, 2, 3, 4), device=d).contiguous(
        memory_format=torch.channels_last_3d)] * 2, 2),
    "permuted-5d": ([lambda d: make((2, 3, 2, 3, 4), device=d).permute(4, 1, 2, 0, 3)] * 2, 0),
}


@pytest.mark.parametrize("case", LAYOUT_CASES.values(), ids=LAYOUT_CASES.keys())
def test_output_layout_is_torch_cats(backend_device, case):
    backend, device = backend_device
    makers, dim = case
    check_against_torch([m(device) for m in makers], dim)


EMPTY_CASES = {
    "zero-along-dim": ([(2, 0, 3, 3), (2, 4, 3, 3), (2, 0, 3, 3)], 1),
    "all-zero-along-dim": ([(2, 0, 3, 3), (2, 0, 3, 3)], 1),
    "zero-batch": ([(0, 2, 3, 3), (0, 4, 3, 3)], 1),
    "zero-batch-along-batch": ([(0, 2, 3), (0, 2, 3)], 0),
    "legacy-(0,)-skipped": ([(0,), (2, 3, 4), (0,), (2, 1, 4)], 1),
    "legacy-(0,)-first-dim-negative": ([(0,), (2, 3, 4), (2, 1, 4)], -2),
    "only-legacy-(0,)": ([(0,), (0,)], 0),
    "(0,)-with-1-d": ([(0,), (5,), (0,), (3,)], 0),
    "2-d-empty-is-not-skipped": ([(0, 3), (2, 3)], 0),
}


@pytest.mark.parametrize("case", EMPTY_CASES.values(), ids=EMPTY_CASES.keys())
def test_empty_tensors(backend_device, case):
    backend, device = backend_device
    shapes, dim = case
    check_against_torch([make(s, device=device) for s in shapes], dim)


def test_legacy_empty_tensors_take_part_in_dtype_promotion(backend_device):
    backend, device = backend_device
    tensors = [make((2, 3), device=device), make((0,), torch.float64, device)]
    assert check_against_torch(tensors, 1).dtype == torch.float64


@pytest.mark.parametrize("count", [1, 2, 20])
def test_one_and_many_inputs(backend_device, count):
    backend, device = backend_device
    shapes = [(2, 1 + i % 3, 3, 2) for i in range(count)]
    tensors = [make(s, device=device, channels_last=i % 2 == 0) for i, s in enumerate(shapes)]
    output = check_against_torch(tensors, 1)
    assert not shares_memory(output, tensors[0])  # a new tensor even of one input


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float64), (torch.int32, torch.float16),
                                    (torch.bool, torch.uint8), (torch.uint8, torch.int8),
                                    (torch.bfloat16, torch.float16),
                                    (torch.float32, torch.complex64)], ids=str)
def test_mixed_dtypes_promote_like_torch(backend_device, dtypes):
    backend, device = backend_device
    tensors = [make((2, 3 + i, 4), dtype, device) for i, dtype in enumerate(dtypes)]
    check_against_torch(tensors, 1)


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int64,
                                   torch.complex64, torch.complex128], ids=str)
def test_every_dtype_is_copied(backend_device, dtype):
    backend, device = backend_device
    shapes = sized((2, 3, 4, 5), 1, (2, 3))
    check_against_torch([make(s, dtype, device, channels_last=True) for s in shapes], 1)
    shapes = sized((2, 3, 4, 10), 3, (4, 10))
    check_against_torch([make(s, dtype, device)[..., ::2] for s in shapes], 3)


def test_conjugate_and_negative_views(backend_device):
    backend, device = backend_device
    x = make((2, 3, 4), torch.complex64, device)
    check_against_torch([x.conj(), x, x.conj().imag.to(torch.complex64)], 1)
    check_against_torch([x.conj().imag, x.real], 0)


def test_nan_and_inf_are_copied(backend_device):
    backend, device = backend_device
    x = make((2, 3, 4), device=device)
    x[0, 1, 2], x[1, 0, 0], x[1, 2, 3] = float("nan"), float("inf"), -float("inf")
    check_against_torch([x, x[:, :1]], 1)


def test_gradcheck(backend_device):
    backend, device = backend_device
    a = make((2, 2, 3), torch.float64, device).requires_grad_()
    b = make((2, 1, 3), torch.float64, device).transpose(0, 2).contiguous().transpose(0, 2)
    c = make((0,), torch.float64, device).requires_grad_()
    assert torch.autograd.gradcheck(lambda *t: concat(t, 1), (a, b.requires_grad_(), c))
    assert torch.autograd.gradgradcheck(lambda *t: concat(t, -1), (a, a))


def test_backward_runs_no_kernel(monkeypatch):
    """The gradients are views: backward calls no kernel of any backend."""
    for name in ("cpp", "reference"):
        calls = []
        kernels = backends.kernels(name)
        original = kernels.concat_forward
        monkeypatch.setattr(kernels, "concat_forward",
                            lambda *args, original=original: calls.append(1) or original(*args),
                            raising=False)
        with fastcnn.use_backend(name):
            x = [make((2, 3, 4)).requires_grad_() for _ in range(5)]
            y = concat(x, 1)
        y.sum().backward()
        assert calls == [1] and all(t.grad is not None for t in x)


def test_one_triton_launch_for_all_inputs(monkeypatch):
    if not backends.info()["backends"]["triton"]["available"]:
        pytest.skip("Triton is not available")
    from fastcnn.kernels.triton import concat as triton_concat

    launches = []
    original = triton_concat._launch
    monkeypatch.setattr(triton_concat, "_launch",
                        lambda plans, *args: launches.append(len(plans)) or
                        original(plans, *args))
    tensors = [make((2, 1 + i % 4, 3, 2), channels_last=i % 3 == 0) for i in range(12)]
    with fastcnn.use_backend("triton"):
        assert_same(concat(tensors, 1), torch.cat(tensors, 1))
    assert launches == [12]


@pytest.mark.parametrize("kind", ["nchw", "channels_last", "slice-of-larger", "transposed"])
def test_kernels_write_into_any_strided_output(backend_device, kind):
    """The kernel entry points write through output's strides, and nothing outside it."""
    backend, device = backend_device
    inputs = [make((2, c, 3, 4), device=device) for c in (2, 3)]
    inputs[1] = inputs[1].contiguous(memory_format=torch.channels_last)
    buffer = torch.full((3, 7, 3, 4), float("nan"), device=device)
    output = {"nchw": buffer[0:2, 0:5], "slice-of-larger": buffer[1:3, 1:6],
              "channels_last": buffer.contiguous(memory_format=torch.channels_last)[:2, 2:7],
              "transposed": buffer.transpose(2, 3).contiguous().transpose(2, 3)[:2, :5]}[kind]
    before = buffer.clone()
    backends.kernels(backend).concat_forward(inputs, output, 1)
    torch.testing.assert_close(output, torch.cat(inputs, 1), rtol=0, atol=0)
    if kind in ("nchw", "slice-of-larger"):
        outside = torch.ones_like(buffer, dtype=torch.bool)
        outside[(slice(0, 2), slice(0, 5)) if kind == "nchw" else (slice(1, 3), slice(1, 6))] = 0
        torch.testing.assert_close(buffer[outside], before[outside], equal_nan=True)


def test_layouts_that_do_not_collapse(backend_device):
    """7-d permuted inputs and output, whose copies keep more dimensions than the Triton
    table holds (it copies such an input contiguous first, or lets torch copy it)."""
    backend, device = backend_device
    order = (6, 0, 5, 1, 4, 2, 3)
    inputs = [make((2,) * 7, device=device).permute(order) for _ in range(2)]
    check_against_torch(inputs, 3)
    output = torch.empty((2,) * 7, device=device).permute(order)
    output = torch.empty(output.shape[:3] + (4,) + output.shape[4:], device=device)
    output = output.permute(3, 1, 0, 6, 2, 5, 4).contiguous().permute(2, 1, 4, 0, 6, 5, 3)
    backends.kernels(backend).concat_forward(inputs, output, 3)
    assert torch.equal(output, torch.cat(inputs, 3))


def test_64_bit_offsets(backend_device):
    """Element offsets beyond 2**31 in inputs and output (reserved, not touched: only the
    few elements of the views are written)."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the storage trick relies on lazily committed host memory")
    huge = 2**30 + 3
    a = torch.empty_strided((3, 2, 5), (huge, 5, 1), dtype=torch.float16).normal_()
    b = torch.empty_strided((3, 1, 5), (2 * huge, 5, 1), dtype=torch.float16).normal_()
    output = torch.empty_strided((3, 3, 5), (huge, 5, 1), dtype=torch.float16)
    backends.kernels(backend).concat_forward([a, b], output, 1)
    assert torch.equal(output, torch.cat([a, b], 1))


def test_torch_compile_fullgraph_matches_eager():
    def net(x, y, z):
        return torch.relu(concat([x * 2, y, z], dim=1)).sum(dim=(2, 3))

    inputs = [make((2, c, 3, 3), torch.float64).requires_grad_() for c in (2, 3, 1)]
    inputs[2] = inputs[2].detach().float().requires_grad_()  # promoted to float64
    for backend in ("cpp", "reference"):
        with fastcnn.use_backend(backend):
            expected = torch.autograd.grad(net(*inputs).square().sum(), inputs)
            torch._dynamo.reset()
            compiled = torch.compile(net, fullgraph=True)
            actual = torch.autograd.grad(compiled(*inputs).square().sum(), inputs)
            torch.testing.assert_close(compiled(*inputs), net(*inputs))
        for ours, theirs in zip(actual, expected):
            torch.testing.assert_close(ours, theirs)


x4 = make((2, 3, 4, 5))
ERRORS = {
    "not-a-sequence": (lambda cat: cat(x4), TypeError, "tensors must be a tuple or list"),
    "a-generator": (lambda cat: cat(t for t in [x4]), TypeError, "tensors must be a tuple"),
    "empty-list": (lambda cat: cat([]), ValueError, "tensors must be a non-empty"),
    "empty-tuple": (lambda cat: cat(()), ValueError, "tensors must be a non-empty"),
    "an-int-element": (lambda cat: cat([x4, 1]), TypeError, r"tensors\[1\] must be a torch"),
    "a-None-element": (lambda cat: cat([None, x4]), TypeError, r"tensors\[0\] must be a torch"),
    "zero-dim": (lambda cat: cat([x4, torch.tensor(1.0)]), RuntimeError,
                 r"tensors\[1\] is zero-dimensional"),
    "dim-4": (lambda cat: cat([x4, x4], 4), IndexError, r"dim 4 is out of range .*\[-4, 3\]"),
    "dim--5": (lambda cat: cat([x4, x4], -5), IndexError, "dim -5 is out of range"),
    "dim-past-legacy": (lambda cat: cat([make((0,)), x4], 7), IndexError, "dim 7 is out of"),
    "dim-float": (lambda cat: cat([x4, x4], 1.0), TypeError, "dim must be an int, got float"),
    "dim-bool": (lambda cat: cat([x4, x4], True), TypeError, "dim must be an int, got bool"),
    "dim-None": (lambda cat: cat([x4, x4], None), TypeError, "dim must be an int"),
    "dim-str": (lambda cat: cat([x4, x4], "C"), TypeError, "dim must be an int, got str"),
    "ranks": (lambda cat: cat([x4, x4[0]]), RuntimeError,
              r"tensors\[1\] has 3 dimensions \(shape \(3, 4, 5\)\) but tensors\[0\] has 4"),
    "2-d-empty-not-skipped": (lambda cat: cat([make((0, 0)), x4]), RuntimeError,
                              r"tensors\[1\] has 4 dimensions"),
    "sizes": (lambda cat: cat([x4, x4, x4[:, :, :3]], 1), RuntimeError,
              r"tensors\[2\] has shape \(2, 3, 3, 5\), expected \(2, \*, 4, 5\).*dim 1"),
    "sizes-after-legacy": (lambda cat: cat([make((0,)), x4, x4[:1]], -1), RuntimeError,
                           r"tensors\[2\] has shape \(1, 3, 4, 5\), expected \(2, 3, 4, \*\)"),
    "devices": (lambda cat: cat([x4, x4.to("meta")]), RuntimeError,
                r"tensors\[1\] is on meta but tensors\[0\] is on cpu"),
    "device-of-a-skipped-tensor": (lambda cat: cat([x4, torch.empty(0, device="meta")]),
                                   RuntimeError, r"tensors\[1\] is on meta"),
}


@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_errors_name_the_argument_and_match_torchs_types(case):
    call, error, pattern = case
    with pytest.raises(error, match=pattern):
        call(concat)
    with pytest.raises(error):  # torch.cat refuses it too, with the same exception type
        call(torch.cat)


@pytest.mark.parametrize("layout", OTHER_LAYOUTS.keys())
def test_other_layouts_run_torch_cat(layout):
    """Sparse and mkldnn tensors (alone or with dense ones): torch.cat's result or error."""
    tensors = [OTHER_LAYOUTS[layout](make((2, c, 3))) for c in (2, 3)]
    for call in (tensors, [make((2, 2, 3)), tensors[1]]):
        try:
            expected = torch.cat(call, 1)
        except Exception as error:  # noqa: BLE001 - torch's refusal, whatever its type
            with pytest.raises(type(error)):
                concat(call, 1)
            continue
        torch.testing.assert_close(concat(call, 1).to_dense(), expected.to_dense())


def test_kernel_entry_points_check_their_arguments():
    a, b = make((2, 3, 4)), make((2, 2, 4))
    out = torch.empty(2, 5, 4)
    calls = [
        (lambda k: k.concat_forward([a, b.double()], out, 1), r"inputs\[1\] must have the dtype"),
        (lambda k: k.concat_forward([a, b[:, :, :3]], out, 1), r"inputs\[1\] of shape"),
        (lambda k: k.concat_forward([a, b, b], out, 1), "add up to 7, but output has 5"),
        (lambda k: k.concat_forward([a, b], out, 3), r"dim must be in \[0, 3\)"),
        (lambda k: k.concat_forward([a.to_sparse(), b], out, 1),
         r"inputs\[0\] must be a strided"),
        (lambda k: k.concat_forward([a, b], out.to_sparse(), 1), "output must be a strided"),
    ]
    for name in ("cpp", "triton"):
        if not backends.info()["backends"][name]["available"]:
            continue
        for call, pattern in calls:
            with pytest.raises((RuntimeError, ValueError), match=pattern):
                call(backends.kernels(name))
    with pytest.raises(RuntimeError, match="output must not have overlapping elements"):
        backends.kernels("cpp").concat_forward([a, b], out[:, :1].expand(2, 5, 4), 1)
    whole = torch.empty(40)
    with pytest.raises(RuntimeError, match=r"output must not share memory with inputs\[1\]"):
        backends.kernels("cpp").concat_forward(
            [make((2, 1, 5)), whole[5:15].view(2, 1, 5)], whole[:20].view(2, 2, 5), 1)


def test_custom_op_output_has_torch_cats_layout():
    """The op's own rule against torch.cat on tensors of every layout rule case (the
    fake implementation uses the same rule)."""
    for makers, dim in LAYOUT_CASES.values():
        tensors = [m("cpu") for m in makers]
        wrapped = dim % max(t.dim() for t in tensors)
        expected = torch.cat(tensors, dim)
        output = ops.concat_forward(tensors, wrapped, "reference")
        assert output.stride() == expected.stride()
