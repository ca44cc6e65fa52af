"""fastcnn.functional.local_response_norm against torch.nn.functional.local_response_norm on
drawn shapes, layouts, dtypes, values and arguments (size, alpha, beta, k): the same
refusals, the same output and input gradient."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from fuzz_strategies import (CPU_BACKENDS, FLOAT_DTYPES, VALUE_KINDS, assert_close,
                             assert_refused, extreme, layouts, make_tensor,
                             on_backend, sizes, small_or_huge, torch_outcome, triton_settings,
                             weighted)
from helpers import tolerance
from hypothesis import given, note
from hypothesis import strategies as st

from fastcnn.functional import local_response_norm
from fastcnn.kernels import reference

NON_FINITE = (math.nan, math.inf, -math.inf)

# Above this, torch's own LRN pads the channels with size // 2 zeros (gigabytes for the
# huge sizes): the expected value comes from an equivalent size instead (_equivalent).
_LARGEST_SIZE_RUN_BY_TORCH = 64


@dataclasses.dataclass
class Case:
    shape: tuple
    dtype: torch.dtype
    layout: tuple
    values: str
    seed: int
    grad_layout: tuple
    size: object
    alpha: object
    beta: object
    k: object
    requires_grad: bool

    def args(self):
        return dict(size=self.size, alpha=self.alpha, beta=self.beta, k=self.k)


def _real(common, specials):
    """A float mostly from `common`, sometimes a special value, an int or a non-finite one."""
    return weighted((16, common), (2, st.sampled_from(specials)),
                    (1, st.integers(-2, 3)), (1, st.sampled_from(NON_FINITE)))


@st.composite
def cases(draw):
    dim = draw(st.sampled_from([4] * 6 + [3] * 3 + [5] * 2 + [2, 6]))
    shape = [draw(sizes(1, 3, zero=2))] if dim >= 2 else []
    shape += [draw(sizes(1, 8))]
    largest = {2: 1, 3: 12, 4: 6, 5: 3, 6: 2}[dim]  # a few dozen positions at most
    shape += [draw(sizes(1, largest)) for _ in range(dim - 2)]
    size = draw(weighted((30, small_or_huge(1, 12, outside=(0, -1), huge=draw(extreme()))),
                         (1, st.sampled_from([2.0, True, "3"]))))
    # float32-representable values: one that float32 flushes to 0 (beta 5e-211) makes
    # NaN ** beta 1 in float32 and NaN in float64, a difference of the oracle, not of fastcnn
    floats = dict(allow_nan=False, allow_infinity=False, width=32)
    return Case(
        shape=tuple(shape), dtype=draw(st.sampled_from(FLOAT_DTYPES)),
        layout=draw(layouts(dim)), values=draw(st.sampled_from(VALUE_KINDS)),
        seed=draw(st.integers(0, 2**32 - 1)), grad_layout=draw(layouts(dim)), size=size,
        alpha=draw(_real(st.floats(0, 2, **floats), (0.0, 1e-4, -0.5, 1e30, 1e-30))),
        beta=draw(_real(st.floats(-1, 3, **floats), (0.0, 0.75, 10.0, -4.0, 1e-30))),
        k=draw(_real(st.floats(0.125, 3, **floats), (0.0, -1.0, 1e-30, 1e30))),
        requires_grad=draw(st.booleans()))


def _equivalent(case, channels):
    """Arguments torch runs in a moment with the output of case.args(): a window of at least
    2 * channels - 1 covers every channel, whatever its size; alpha / size is kept."""
    size = case.size
    if isinstance(size, int) and not isinstance(size, bool) and \
            size > _LARGEST_SIZE_RUN_BY_TORCH:
        covering = max(2 * channels - 1, 1)
        return dict(case.args(), size=covering, alpha=case.alpha * covering / size)
    return case.args()


def check(case, backend):
    note(repr(case))
    x = make_tensor(case.shape, case.dtype, case.layout, case.values, case.seed)
    x.requires_grad_(case.requires_grad)
    channels = x.shape[1] if x.dim() >= 2 else 0
    torch_args = _equivalent(case, channels)
    _, torch_error = torch_outcome(
        lambda t: F.local_response_norm(t, **torch_args), x.detach())
    if torch_error is not None and "view size is not compatible" in str(torch_error):
        # torch's own LRN calls .view on some non-contiguous 5-d inputs (a torch bug): the
        # configuration is accepted, as a contiguous copy shows
        _, torch_error = torch_outcome(
            lambda t: F.local_response_norm(t, **torch_args), x.detach().contiguous())
    ours = lambda: local_response_norm(x, **case.args())  # noqa: E731
    if torch_error is not None:
        return assert_refused(ours, torch_error)
    compare(case, x, ours(), torch_args, backend)


def _as_float32(value):
    """A float argument as torch's float32 (and float16, bfloat16) LRN uses it: 5e-211 is 0
    there, which makes NaN of 0 * inf where float64 has inf."""
    if isinstance(value, float):
        return torch.tensor(value, dtype=torch.float32).item()
    return value


def _well_conditioned(x64, args, dtype):
    """Where the denominator's base s = k + alpha / size * (window sum of x^2) does not
    cancel to within rounding of its terms (alpha -1 and integer values can make it
    exactly 0): elsewhere the result depends on the order of rounding (alpha / size first,
    or the window's mean first as torch does), not on correctness; every implementation
    gets another number; and where a nonzero, finite s^beta (or a term of s) leaves the
    range of normal numbers of the computing dtype (k = 1e-30, beta = 10 in float32:
    torch's own float32 divides by 0 there). For the gradient, also where no such position
    is in the window. Third, whether some base is exactly 0."""
    v = x64.detach() if x64.dim() > 2 else x64.detach().unsqueeze(-1)
    size, alpha, k = args["size"], args["alpha"], args["k"]
    everywhere = torch.ones_like(x64, dtype=torch.bool)
    if v.shape[1] == 0 or not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return everywhere, everywhere, False
    base = reference._lrn_scale(v, size, alpha, k)
    terms = reference._lrn_scale(v, size, abs(alpha), abs(k))
    computing = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32)
    # s carries a rounding error of a few eps * terms, which s^-beta turns into a relative
    # error beta times that over |s|: positions where it can exceed the dtype's rtol are
    # ill-conditioned (k = -1, alpha = 2 in float32 drew 2.8e-5 against 1e-5)
    rtol = tolerance(dtype)["rtol"]
    bad = ((base.abs() * rtol <= 16 * computing.eps * terms * max(abs(args["beta"]), 1.0))
           & (terms > 0))
    with torch.no_grad():
        power = base.abs() ** args["beta"]
    bad |= ((power > 0) & (power < computing.tiny)) | ((power > computing.max)
                                                       & (power < float("inf")))
    bad |= (terms > computing.max) & (terms < float("inf"))
    with torch.no_grad():  # the gradient divides by s^(beta + 1)
        power = base.abs() ** (args["beta"] + 1)
    grad_bad = bad | ((power > 0) & (power < computing.tiny)) | (
        (power > computing.max) & (power < float("inf")))
    near_bad = reference._channel_window_sum(grad_bad.double(), size, size) > 0
    return (~bad).view(x64.shape), (~near_bad).view(x64.shape), bool((base == 0).any())


def compare(case, x, output, torch_args, backend):
    if x.dtype != torch.float64:
        torch_args = {name: _as_float32(v) for name, v in torch_args.items()}
    x64 = x.detach().double().contiguous().requires_grad_()
    output64 = F.local_response_norm(x64, **torch_args)
    assert output.dtype == x.dtype and output.shape == output64.shape
    sound, sound_gradient, zero_base = _well_conditioned(x64, torch_args, x.dtype)
    assert_close(output[sound], output64[sound], x.dtype, backend)
    if case.requires_grad:
        grad = make_tensor(tuple(output.shape), x.dtype, case.grad_layout, "normal",
                           case.seed + 1)
        output.backward(grad)
        output64.backward(grad.double())
        assert x.grad.shape == x.shape and x.grad.dtype == x.dtype
        if not torch.isfinite(x64.detach()).all() or zero_base:
            # a deliberate difference: torch's autograd makes NaN where 0 * inf appears
            # (a window holding inf, or a base of 0 with alpha 0), fastcnn's closed form
            # does not
            finite = torch.isfinite(x64.grad) & sound_gradient
            return assert_close(x.grad[finite], x64.grad[finite], x.dtype, backend)
        assert_close(x.grad[sound_gradient], x64.grad[sound_gradient], x.dtype, backend)
    with torch.no_grad():
        assert_close(local_response_norm(x, **case.args())[sound], output64[sound], x.dtype,
                     backend)


@given(case=cases(), backend=st.sampled_from(CPU_BACKENDS))
def test_matches_torch(case, backend):
    with on_backend(backend):
        check(case, backend)


@triton_settings()
@given(case=cases())
def test_matches_torch_on_triton_interpreter(case):
    with on_backend("triton"):
        check(case, "triton")


@pytest.mark.parametrize("argument", ["alpha", "beta", "k"])
@pytest.mark.parametrize("value", NON_FINITE, ids=["nan", "inf", "-inf"])
def test_non_finite_arguments(argument, value):
    case = Case((2, 5, 3, 4), torch.float64, ("contiguous", None), "normal", 0,
                ("contiguous", None), 3, 1e-2, 0.75, 1.0, True)
    setattr(case, argument, value)
    x = make_tensor(case.shape, case.dtype, case.layout, case.values, 0).requires_grad_()
    with on_backend("cpp"):
        compare(case, x, local_response_norm(x, **case.args()), case.args(), "cpp")
