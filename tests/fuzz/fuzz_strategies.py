"""Shared by the fuzz tests: strategies for dtypes, layouts, values and argument values,
the construction of a drawn input, and the comparison rules (torch is the oracle).

A drawn configuration is either refused by torch, and then fastcnn must raise too, or
accepted, and then fastcnn must give torch's numbers forward and backward (against torch in
float64, with the tolerances of tests/helpers.py).
"""

import contextlib
import math

import torch
from helpers import VIEW_LAYOUTS, assert_close_to_reference, strided_view, tolerance
from hypothesis import event, settings
from hypothesis import strategies as st

import fastcnn

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
CPU_BACKENDS = ("cpp", "reference")

# What fastcnn may raise where torch refuses a configuration (with a message).
ERRORS = (ValueError, TypeError, RuntimeError, NotImplementedError)

# Argument values far outside the sizes of the tensors: around int32's limit, and beyond.
HUGE = (2**20, 10**9, 2**30, 2**31 - 1, 2**31, 2**32 + 1, 2**40, 2**62)


def triton_settings():
    """Settings of a Triton-interpreter test: a twentieth of the profile's examples."""
    return settings(max_examples=max(5, settings.default.max_examples // 20))


def weighted(*options):
    """One of the strategies, each with its weight: weighted((9, common), (1, rare)).
    (st.one_of would not do: it draws each distinct strategy equally often.) Shrinks
    towards the first."""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return st.integers(0, len(table) - 1).flatmap(lambda i: table[i])


def small_or_huge(low, high, outside=(), huge=False):
    """Mostly an int in [low, high] (the range that matters for small tensors), sometimes
    one just outside the valid range (`outside`), and with `huge` sometimes a huge one."""
    return weighted((12, st.integers(low, high)),
                    (1 if outside else 0, st.sampled_from(outside or (0,))),
                    (3 if huge else 0, st.sampled_from(HUGE)))


def sizes(low, high, zero=1):
    """A dimension's size: mostly in [low, high], `zero` times in 20 empty."""
    return weighted((20 - zero, st.integers(low, high)), (zero, st.just(0)))


def extreme():
    """Whether a case may draw huge argument values (one case in eight)."""
    return st.integers(0, 7).map(lambda i: i == 0)


def int_or_pair(values, allow_bad_types=True):
    """An int, a 1- or 2-tuple or list of ints; sometimes a value of a wrong type or length."""
    return weighted((4, values), (1, st.tuples(values)), (2, st.tuples(values, values)),
                    (1, st.tuples(values, values).map(list)),
                    (1 if allow_bad_types else 0,
                     st.sampled_from([2.0, True, (2, 2, 2), "2", (2.0, 1)])))


LAYOUTS = ("contiguous", "channels_last", "sliced", "transposed-hw", "permuted",
           "expanded", *VIEW_LAYOUTS)
VALUE_KINDS = ("normal", "normal", "normal", "normal", "ties", "special", "large")


@st.composite
def layouts(draw, dim):
    """(layout name, permutation for "permuted")."""
    layout = draw(st.sampled_from(LAYOUTS))
    if (layout == "channels_last" and dim != 4) or (layout in VIEW_LAYOUTS and dim < 3):
        layout = "contiguous"
    permutation = tuple(draw(st.permutations(range(dim)))) if layout == "permuted" else None
    return layout, permutation


def make_tensor(shape, dtype, layout, values, seed):
    """A tensor of `shape` and `dtype` laid out as `layout` (from `layouts`), with values of
    kind `values` (VALUE_KINDS) from the generator seeded with `seed`; a leaf."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(shape, generator=generator, dtype=torch.float64)
    if values == "ties":
        data = torch.randint(-2, 3, shape, generator=generator).double()
    elif values == "large":
        data = data * 3e4  # squares overflow float16; sums of a few overflow it too
    elif values == "special" and data.numel():
        specials = torch.tensor([math.nan, math.inf, -math.inf, 0.0, -0.0], dtype=torch.float64)
        where = torch.rand(shape, generator=generator) < 0.2
        pick = torch.randint(0, 5, shape, generator=generator)
        data = torch.where(where, specials[pick], data)
    if dtype.is_floating_point or dtype.is_complex:
        data = data.to(dtype)
    else:
        data = data.round().clamp(-100, 100).abs().to(dtype)
    return arrange(data, *layout).detach()


def arrange(data, layout, permutation=None):
    """data, copied into a tensor with the strides of `layout`."""
    shape = tuple(data.shape)
    empty = dict(dtype=data.dtype)
    if layout == "contiguous":
        return data.contiguous()
    if layout == "channels_last":
        return data.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":  # offset and a step of 2 in every dimension
        big = torch.empty([2 * s + 1 for s in shape], **empty)
        view = big[tuple(slice(1, 1 + 2 * s, 2) for s in shape)]
    elif layout == "transposed-hw":
        view = torch.empty(*shape[:-2], shape[-1], shape[-2], **empty).transpose(-1, -2)
    elif layout == "permuted":
        inverse = [permutation.index(d) for d in range(len(shape))]
        view = torch.empty([shape[p] for p in permutation], **empty).permute(inverse)
    elif layout == "expanded":  # stride 0 along the first dimension: its values repeat
        return data[:1].expand(shape) if shape[0] > 0 else data
    else:
        rest = shape[2:]
        view = strided_view(layout, shape[0], shape[1], math.prod(rest), dtype=data.dtype)
        view = view.unflatten(2, rest)
    view.copy_(data)
    return view


def describe(tensor):
    return f"shape={tuple(tensor.shape)} strides={tensor.stride()} dtype={tensor.dtype}"


@contextlib.contextmanager
def on_backend(backend):
    with fastcnn.use_backend(backend):
        yield


def torch_outcome(fn, x=None):
    """(result, None) where fn(x) runs, (None, exception) where torch refuses. A float16
    or bfloat16 x that torch has no CPU kernel for (LRN's avg_pool3d) is tried in float32:
    fastcnn has kernels for these dtypes (DESIGN.md), torch's gap is not a refusal."""
    try:
        return fn(x), None
    except NotImplementedError as error:
        if x is None or x.dtype not in (torch.float16, torch.bfloat16):
            return None, error
        return torch_outcome(fn, x.float())
    except Exception as error:  # noqa: BLE001 - torch's refusal, whatever its type
        return None, error


def assert_refused(fn, torch_error):
    """fastcnn refuses, as torch did, with one of ERRORS and a message."""
    try:
        fn()
    except ERRORS as error:
        assert str(error), f"{type(error).__name__} without a message"
        return
    except Exception as error:
        raise AssertionError(f"torch raised {type(torch_error).__name__}: {torch_error}; "
                             f"fastcnn raised {type(error).__name__}: {error}") from error
    raise AssertionError(f"torch raised {type(torch_error).__name__}: {torch_error}; "
                         "fastcnn did not raise")


def assert_close(actual, expected, dtype, backend, convolution=False):
    """actual against the float64 expected rounded to `dtype` (the best `dtype` can hold:
    inf where the value is past its range)."""
    expected = expected.detach().to(dtype).double() if dtype != torch.float64 else expected
    assert_close_to_reference(actual, expected, dtype, backend, "cpu", convolution)


def tolerance_of(dtype, backend, convolution=False):
    return tolerance(dtype, backend, "cpu", convolution)


def event_within_torch(actual, expected, torch_same_dtype, dtype, backend,
                       relative_to_largest=False):
    """A result that passed through a convolution against the float64 `expected`: within
    the tolerance of `dtype` (for float16 and bfloat16 relative to the largest expected
    value, as tests/ops/test_conv_bn_relu.py holds them; four times that for gradients
    summed over the batch, `relative_to_largest`). Where that fails outside float64, the
    comparison itself can be ill-conditioned (BatchNorm divides by a batch's standard
    deviation of a few values): then fastcnn passes when it is no further off than twice
    torch's own result in that dtype (`torch_same_dtype`), which is noted as an event."""
    tol = dict(tolerance(dtype, backend, "cpu", convolution=True))
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    scale = e.nan_to_num(0, 0, 0).abs().amax().item() if e.numel() else 0.0
    if dtype in (torch.float16, torch.bfloat16):
        tol["atol"] = max(tol["atol"], tol["rtol"] * scale * (4 if relative_to_largest else 1))
    try:
        torch.testing.assert_close(a, e, equal_nan=True, **tol)
    except AssertionError:
        if dtype == torch.float64 or torch_same_dtype is None:
            raise
        theirs = torch_same_dtype.detach().double().cpu()
        if not torch.equal(a.isnan(), e.isnan()):
            raise
        error = (a - e).nan_to_num(0).abs().amax().item()
        torch_error = (theirs - e).nan_to_num(0).abs().amax().item()
        if not error <= 2 * torch_error + tol["atol"]:
            raise
        event(f"{dtype}: off float64 by {error:.2g}, torch in {dtype} by {torch_error:.2g}")
