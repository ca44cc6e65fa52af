"""fastcnn.functional.global_avg_pool2d against torch.nn.functional.adaptive_avg_pool2d(x, 1)
on drawn shapes, layouts, dtypes and values: the same refusals, and the same mean and input
gradient."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from fuzz_strategies import (CPU_BACKENDS, FLOAT_DTYPES, VALUE_KINDS, assert_close,
                             assert_refused, layouts, make_tensor, on_backend,
                             sizes, torch_outcome, triton_settings)
from hypothesis import given, note
from hypothesis import strategies as st

from fastcnn.functional import global_avg_pool2d


@dataclasses.dataclass
class Case:
    shape: tuple
    dtype: torch.dtype
    layout: tuple
    values: str
    seed: int
    grad_layout: tuple
    requires_grad: bool


@st.composite
def cases(draw, dtypes=st.sampled_from(FLOAT_DTYPES)):
    dim = draw(st.sampled_from([4, 4, 4, 4, 4, 4, 3, 3, 3, 2, 5]))
    shape = [draw(st.integers(0, 3)) for _ in range(dim - 3)]
    shape += [draw(sizes(1, 5))] if dim >= 3 else []
    shape += [draw(sizes(1, 12)), draw(sizes(1, 12))]
    return Case(shape=tuple(shape), dtype=draw(dtypes), layout=draw(layouts(dim)),
                values=draw(st.sampled_from(VALUE_KINDS)), seed=draw(st.integers(0, 2**32 - 1)),
                grad_layout=draw(layouts(dim)), requires_grad=draw(st.booleans()))


def check(case, backend):
    note(repr(case))
    x = make_tensor(case.shape, case.dtype, case.layout, case.values, case.seed)
    x.requires_grad_(case.requires_grad)
    _, torch_error = torch_outcome(lambda t: F.adaptive_avg_pool2d(t, 1), x.detach())
    if torch_error is not None:
        return assert_refused(lambda: global_avg_pool2d(x), torch_error)
    compare(case, x, backend)


def compare(case, x, backend):
    output = global_avg_pool2d(x)
    x64 = x.detach().double().requires_grad_()
    output64 = F.adaptive_avg_pool2d(x64, 1)
    assert output.dtype == x.dtype and output.shape == output64.shape
    assert_close(output, output64, x.dtype, backend)
    if case.requires_grad:
        grad = make_tensor(tuple(output.shape), x.dtype, case.grad_layout, "normal",
                           case.seed + 1)
        output.backward(grad)
        output64.backward(grad.double())
        assert x.grad.shape == x.shape and x.grad.dtype == x.dtype
        assert_close(x.grad, x64.grad, x.dtype, backend)
    with torch.no_grad():
        assert_close(global_avg_pool2d(x), output64, x.dtype, backend)


@given(case=cases(), backend=st.sampled_from(CPU_BACKENDS))
def test_matches_torch(case, backend):
    with on_backend(backend):
        check(case, backend)


@triton_settings()
@given(case=cases())
def test_matches_torch_on_triton_interpreter(case):
    with on_backend("triton"):
        check(case, "triton")


@pytest.mark.parametrize("shape", [(2, 0, 3, 3), (2, 3, 0, 3), (2, 3, 4, 0), (3, 0, 5)])
def test_empty_channels_height_or_width(shape):
    case = Case(shape, torch.float64, ("contiguous", None), "normal", 0, ("contiguous", None),
                True)
    x = make_tensor(shape, torch.float64, ("contiguous", None), "normal", 0).requires_grad_()
    with on_backend("cpp"):
        compare(case, x, "cpp")
