"""fastcnn.functional.concat against torch.cat on drawn ranks, dims, sizes (zeros among
them), dtypes (mixed ones too), layouts and numbers of inputs, with now and then an input
of a wrong size, rank or kind: the same refusals, or the same output (values, dtype,
shape, strides) and the same input gradients."""

import dataclasses

import pytest
import torch
from fuzz_strategies import (CPU_BACKENDS, FLOAT_DTYPES, VALUE_KINDS, assert_refused, layouts,
                             make_tensor, on_backend, torch_outcome, triton_settings,
                             weighted)
from hypothesis import event, given, note
from hypothesis import strategies as st

from fastcnn.functional import concat

DTYPES = FLOAT_DTYPES + (torch.int32, torch.int64, torch.uint8, torch.int8, torch.bool,
                         torch.complex64, torch.complex128)

# How a drawn input departs from the others, if it does.
KINDS = ("fits", "legacy-empty", "other-size", "other-rank", "zero-dim")


@dataclasses.dataclass
class Input:
    shape: tuple
    dtype: torch.dtype
    layout: tuple
    values: str
    seed: int

    def make(self):
        return make_tensor(self.shape, self.dtype, self.layout, self.values, self.seed)


@dataclasses.dataclass
class Case:
    inputs: list
    dim: int
    requires_grad: bool


@st.composite
def inputs(draw, base, dim, dtype, kind):
    shape = list(base)
    if kind == "fits":
        shape[dim] = draw(weighted((8, st.integers(1, 4)), (2, st.just(0))))
    elif kind == "legacy-empty":
        shape = [0]
    elif kind == "other-size":
        d = draw(st.integers(0, len(base) - 1))
        shape[d] += draw(st.integers(1, 2))
    elif kind == "other-rank":
        shape = shape[:-1] if draw(st.booleans()) and len(shape) > 1 else shape + [2]
    else:
        shape = []
    if draw(st.integers(0, 9)) == 0:  # now and then another dtype: torch.cat promotes
        dtype = draw(st.sampled_from(DTYPES))
    return Input(tuple(shape), dtype, draw(_layouts(len(shape))),
                 draw(st.sampled_from(VALUE_KINDS)), draw(st.integers(0, 2**32 - 1)))


def _layouts(rank):
    """fuzz_strategies.layouts, but for ranks below 2, which have fewer layouts."""
    if rank >= 2:
        return layouts(rank)
    names = ("contiguous", "sliced", "expanded") if rank == 1 else ("contiguous",)
    return st.sampled_from(names).map(lambda name: (name, None))


@st.composite
def cases(draw):
    rank = draw(st.sampled_from([4] * 4 + [1, 2, 3, 5]))
    # sizes of 1 now and then only: the kernels drop those dimensions
    base = [draw(weighted((12, st.integers(2, 4)), (3, st.just(1)), (1, st.just(0))))
            for _ in range(rank)]
    dim = draw(st.integers(-rank, rank - 1))
    count = draw(weighted((8, st.integers(2, 4)), (2, st.just(1)), (2, st.integers(5, 12))))
    dtype = draw(st.sampled_from(DTYPES))
    # in one case in five, one input departs from the others (in one of the KINDS)
    odd = draw(weighted((4, st.just(None)), (1, st.integers(0, count - 1))))
    kinds = [draw(st.sampled_from(KINDS[1:])) if i == odd else "fits" for i in range(count)]
    drawn = [draw(inputs(base, dim % rank, dtype, kind)) for kind in kinds]
    return Case(drawn, dim, draw(st.booleans()))


def _differentiable(t):
    return t.is_floating_point() or t.is_complex()


def check(case):
    note(repr(case))
    tensors = [i.make() for i in case.inputs]
    leaves = [t for t in tensors if case.requires_grad and _differentiable(t)]
    for t in leaves:
        t.requires_grad_()
    expected, torch_error = torch_outcome(lambda _: torch.cat(tensors, case.dim))
    if torch_error is not None:
        event(f"refused: {type(torch_error).__name__}")
        if isinstance(torch_error, IndexError):  # dim out of range: torch's type too
            with pytest.raises(IndexError, match="dim"):
                concat(tensors, case.dim)
            return
        return assert_refused(lambda: concat(tensors, case.dim), torch_error)
    output = concat(tensors, case.dim)
    event(f"{len(tensors)} inputs" if len(tensors) < 5 else "5+ inputs")
    assert output.dtype == expected.dtype and output.shape == expected.shape
    assert output.stride() == expected.stride()
    torch.testing.assert_close(output.detach(), expected.detach(), rtol=0, atol=0,
                               equal_nan=True)
    if not leaves or not output.requires_grad or output.numel() == 0:
        return
    grad = make_tensor(tuple(output.shape), output.dtype, ("contiguous", None), "normal", 1)
    ours = torch.autograd.grad(output, leaves, grad)
    theirs = torch.autograd.grad(expected, leaves, grad)
    for g, g_ref in zip(ours, theirs):
        assert g.dtype == g_ref.dtype and g.shape == g_ref.shape
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0, equal_nan=True)


# The backend a parameter, not drawn: every backend meets every kind of case.
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(case=cases())
def test_matches_torch(case, backend):
    with on_backend(backend):
        check(case)


@triton_settings()
@given(case=cases())
def test_matches_torch_on_triton_interpreter(case):
    with on_backend("triton"):
        check(case)
