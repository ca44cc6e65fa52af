"""fastcnn.functional.conv_bn_relu against eager relu(bn(conv(x)) (+ residual)) on drawn
shapes, layouts, dtypes and module settings (convolution stride, padding, dilation, groups,
bias; BatchNorm affine, track_running_stats, momentum, eps; train or eval; ReLU or not; a
residual or not): the same refusals, the same output, the same gradients of x, the
parameters and the residual, and the same running statistics after the call."""

import copy
import dataclasses

import pytest
import torch
from fuzz_strategies import (CPU_BACKENDS, FLOAT_DTYPES, assert_refused, event_within_torch,
                             extreme, layouts, make_tensor, on_backend, sizes,
                             small_or_huge, torch_outcome, triton_settings, weighted)
from hypothesis import assume, given, note
from hypothesis import strategies as st
from torch import nn

from fastcnn.functional import conv_bn_relu

BN_KINDS = {"2d": nn.BatchNorm2d, "1d": nn.BatchNorm1d, "3d": nn.BatchNorm3d,
            "lazy": nn.LazyBatchNorm2d}


@dataclasses.dataclass
class Case:
    n: int
    groups: int
    in_per_group: int
    out_per_group: int
    kernel_size: tuple
    stride: tuple
    padding: tuple
    dilation: tuple
    bias: bool
    height: int
    width: int
    dtype: torch.dtype
    layout: tuple
    bn_kind: str
    bn_dtype: torch.dtype
    affine: bool
    track_running_stats: bool
    momentum: object
    eps: float
    train: bool
    relu: bool
    residual: str  # none, same, other-dtype, broadcast
    residual_layout: tuple
    grad_layout: tuple
    seed: int


@st.composite
def cases(draw):
    huge = draw(extreme())
    pair = lambda low, high, outside=(): st.tuples(  # noqa: E731
        small_or_huge(low, high, outside, huge), small_or_huge(low, high, outside, huge))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    other = [d for d in FLOAT_DTYPES if d != dtype]
    return Case(
        n=draw(sizes(1, 3, zero=2)), groups=draw(st.integers(1, 3)),
        in_per_group=draw(st.integers(1, 3)), out_per_group=draw(st.integers(1, 3)),
        kernel_size=draw(st.tuples(st.integers(1, 3), st.integers(1, 3))),
        # no huge padding: a padding of 2**20 makes a convolution output of gigabytes
        stride=draw(pair(1, 3, (0,))), padding=draw(st.tuples(st.integers(0, 2),
                                                               st.integers(0, 2))),
        dilation=draw(pair(1, 2, (0,))), bias=draw(st.booleans()),
        height=draw(sizes(1, 7)), width=draw(sizes(1, 7)), dtype=dtype,
        layout=draw(layouts(4)),
        # (LazyBatchNorm2d: in the robustness tables, against torch in its own dtype; the
        # float64 oracle here cannot convert an uninitialised one)
        bn_kind=draw(weighted((27, st.just("2d")), (1, st.sampled_from(["1d", "3d"])))),
        bn_dtype=draw(weighted((19, st.just(dtype)), (1, st.sampled_from(other)))),
        affine=draw(st.booleans()), track_running_stats=draw(weighted((3, st.just(True)),
                                                                      (1, st.just(False)))),
        momentum=draw(weighted((4, st.just(0.1)), (2, st.none()),
                               (2, st.floats(0, 1)), (1, st.sampled_from([0.0, 1.0])))),
        eps=draw(weighted((12, st.just(1e-5)), (2, st.sampled_from([1e-3, 0.1, 1.0])),
                          (1, st.just(0.0)))),
        train=draw(st.booleans()), relu=draw(st.booleans()),
        residual=draw(weighted((8, st.just("none")), (8, st.just("same")),
                               (1, st.just("other-dtype")), (1, st.just("broadcast")))),
        residual_layout=draw(layouts(4)), grad_layout=draw(layouts(4)),
        seed=draw(st.integers(0, 2**32 - 1)))


def make_modules(case):
    cin, cout = case.groups * case.in_per_group, case.groups * case.out_per_group
    try:
        conv = nn.Conv2d(cin, cout, case.kernel_size, case.stride, case.padding, case.dilation,
                         case.groups, case.bias, dtype=case.dtype)
    except (ValueError, RuntimeError):
        assume(False)  # a Conv2d that cannot be built: nothing for conv_bn_relu to do
    kind = BN_KINDS[case.bn_kind]
    settings = dict(eps=case.eps, momentum=case.momentum, affine=case.affine,
                    track_running_stats=case.track_running_stats, dtype=case.bn_dtype)
    bn = kind(**settings) if case.bn_kind == "lazy" else kind(cout, **settings)
    seed = case.seed
    with torch.no_grad():
        for tensor in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean):
            if tensor is not None and not isinstance(tensor, nn.parameter.UninitializedBuffer) \
                    and not isinstance(tensor, nn.parameter.UninitializedParameter):
                seed += 1
                tensor.copy_(make_tensor(tuple(tensor.shape), tensor.dtype,
                                         ("contiguous", None), "normal", seed))
        if bn.weight is not None and case.bn_kind != "lazy":
            bn.weight.abs_().add_(0.5)
        if bn.running_var is not None and case.bn_kind != "lazy":
            bn.running_var.uniform_(0.5, 1.5)
            bn.num_batches_tracked.fill_(case.seed % 4)
    for module in (conv, bn):
        module.train(case.train)
    return conv, bn


def make_inputs(case, conv):
    shape = (case.n, conv.in_channels, case.height, case.width)
    x = make_tensor(shape, case.dtype, case.layout, "normal", case.seed)
    if case.residual == "none":
        return x, None
    with torch.no_grad():
        y, _ = torch_outcome(lambda t: torch.nn.functional.conv2d(
            t, conv.weight.double(), None, conv.stride, conv.padding, conv.dilation,
            conv.groups), x.double())
    # (where torch refuses the convolution, any residual will do)
    y_shape = tuple(shape[:1]) + (conv.out_channels,) + shape[2:] if y is None else y.shape
    dtype = {"other-dtype": torch.float64 if case.dtype != torch.float64 else torch.float32}
    if case.residual == "broadcast":
        y_shape = (1, y_shape[1], 1, 1)
    residual = make_tensor(y_shape, dtype.get(case.residual, case.dtype), case.residual_layout,
                           "normal", case.seed + 7)
    return x, residual


def copy_bn(bn):
    """A copy of bn; of an uninitialised LazyBatchNorm2d (which deepcopy refuses), a new one
    with its settings."""
    if isinstance(bn, nn.modules.lazy.LazyModuleMixin) and bn.has_uninitialized_params():
        return type(bn)(bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                        dtype=bn.weight.dtype if bn.affine else None).train(bn.training)
    return copy.deepcopy(bn)


def eager(x, conv, bn, relu, residual):
    z = bn(conv(x))
    if residual is not None:
        z = z + residual
    return torch.relu(z) if relu else z


def run(fn, x, conv, bn, relu, residual, grad_output=None):
    """fn on leaf copies of x and residual; with grad_output, its backward too. Returns the
    output and the gradients (x, conv weight and bias, bn weight and bias, residual)."""
    x = x.detach().requires_grad_()
    residual = None if residual is None else residual.detach().requires_grad_()
    z = fn(x, conv, bn, relu, residual)
    if grad_output is None:
        return z, ()
    z.backward(grad_output.to(z.dtype))
    return z, (x.grad, conv.weight.grad, conv.bias.grad if conv.bias is not None else None,
               bn.weight.grad if bn.weight is not None else None,
               bn.bias.grad if bn.bias is not None else None,
               None if residual is None else residual.grad)


def _float32_copy(x, conv, bn, residual):
    """torch has no CPU kernel for some float16/bfloat16 convolutions: whether it accepts the
    configuration is asked in float32."""
    low = (torch.float16, torch.bfloat16)
    widen = lambda t: t.float() if t is not None and t.dtype in low else t  # noqa: E731
    conv, bn = copy.deepcopy(conv), copy_bn(bn)
    for module in (conv, bn):
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if tensor.dtype in low:
                tensor.data = tensor.data.float()
    return widen(x), conv, bn, widen(residual)


def check(case, backend):
    note(repr(case))
    conv, bn = make_modules(case)
    x, residual = make_inputs(case, conv)
    lp = [copy.deepcopy(conv), copy_bn(bn)]
    _, torch_error = torch_outcome(lambda _: eager(x, *lp, case.relu, residual))
    if isinstance(torch_error, NotImplementedError) and case.dtype in (torch.float16,
                                                                      torch.bfloat16):
        _, torch_error = torch_outcome(
            lambda _: eager(*_float32_copy(x, *lp, residual)[:3], case.relu,
                            _float32_copy(x, *lp, residual)[3]))
    ours = lambda: conv_bn_relu(x, conv, bn, case.relu, residual)  # noqa: E731
    if torch_error is not None:
        return assert_refused(ours, torch_error)
    compare(case, conv, bn, x, residual, backend)


def compare(case, conv, bn, x, residual, backend):
    conv64, bn64 = copy.deepcopy(conv).double(), copy_bn(bn).double()
    conv_lp, bn_lp = copy.deepcopy(conv), copy_bn(bn)  # torch in x's dtype
    r64 = None if residual is None else residual.double()
    with torch.no_grad():
        pre64 = eager(x.double(), copy.deepcopy(conv64), copy_bn(bn64), False, r64)
    grad = make_tensor(tuple(pre64.shape), case.dtype, case.grad_layout, "normal",
                       case.seed + 3).double()
    if case.relu and case.dtype != torch.float64:
        # where the value before the ReLU is within rounding of 0, rounding picks the mask
        # (the ReLU's kink): no gradient flows back from there, so the pick cannot matter
        kink = 0.1 if case.dtype in (torch.float16, torch.bfloat16) else 1e-3
        largest = pre64.abs().max().item() if pre64.numel() else 0.0
        grad = grad * (pre64.abs() > kink * max(largest, 1.0))
    z, grads = run(conv_bn_relu, x, conv, bn, case.relu, residual, grad)
    # eager's own backward depends on the output gradient's layout in some cases (a 1x1
    # convolution with padding on a 1x1 input, its gradient channels_last: found here, a
    # torch bug): the float64 reference takes a contiguous one
    z64, grads64 = run(eager, x.double(), conv64, bn64, case.relu, r64, grad.contiguous())
    torch_lp, _ = torch_outcome(lambda _: run(eager, x, conv_lp, bn_lp, case.relu, residual,
                                              grad))
    z_lp, grads_lp = torch_lp if torch_lp is not None else (None, [None] * 6)
    # a residual of another dtype promotes, as eager's addition does
    dtype = x.dtype if residual is None else torch.promote_types(x.dtype, residual.dtype)
    assert z.dtype == dtype and z.shape == z64.shape
    event_within_torch(z, z64, z_lp, case.dtype, backend)
    for name, g, g64, g_lp in zip(("x", "conv.weight", "conv.bias", "bn.weight", "bn.bias",
                                   "residual"), grads, grads64, grads_lp):
        assert (g is None) == (g64 is None), name
        if g is not None:
            # a gradient in a coarser dtype than x's (a float32 residual's) has its rounding
            precision = max(case.dtype, g.dtype, key=lambda d: torch.finfo(d).eps)
            # with batch statistics the conv bias's gradient is exactly 0 in exact
            # arithmetic: both sides give the rounding noise of a sum that cancels
            if name == "conv.bias" and (case.train or not case.track_running_stats):
                # with batch statistics it is exactly 0 in exact arithmetic: both sides
                # give the rounding noise of a sum that cancels, times invstd
                assert torch.isfinite(g).all() or not torch.isfinite(g64).all()
                continue
            event_within_torch(g, g64, g_lp, precision, backend, relative_to_largest=True)
    for name in ("running_mean", "running_var"):
        ours, theirs = getattr(bn, name), getattr(bn64, name)
        assert (ours is None) == (theirs is None), name
        if ours is not None:
            event_within_torch(ours, theirs, None if torch_lp is None else getattr(bn_lp, name),
                               case.dtype, backend)
    if bn.num_batches_tracked is not None:
        assert bn.num_batches_tracked.item() == bn64.num_batches_tracked.item()


@given(case=cases(), backend=st.sampled_from(CPU_BACKENDS))
def test_matches_eager(case, backend):
    with on_backend(backend):
        check(case, backend)


@triton_settings()
@given(case=cases())
def test_matches_eager_on_triton_interpreter(case):
    with on_backend("triton"):
        check(case, "triton")


def _base_case(**changes):
    case = Case(n=2, groups=1, in_per_group=3, out_per_group=4, kernel_size=(3, 3),
                stride=(1, 1), padding=(1, 1), dilation=(1, 1), bias=False, height=5, width=5,
                dtype=torch.float64, layout=("contiguous", None), bn_kind="2d",
                bn_dtype=torch.float64, affine=True, track_running_stats=True, momentum=0.1,
                eps=1e-5, train=True, relu=True, residual="none",
                residual_layout=("contiguous", None), grad_layout=("contiguous", None), seed=0)
    return dataclasses.replace(case, **changes)


KNOWN = {
    "batchnorm1d": _base_case(bn_kind="1d"),
    "batchnorm3d": _base_case(bn_kind="3d"),
    "bn-float32-x-float64": _base_case(bn_dtype=torch.float32),
    "eps-0-training": _base_case(eps=0.0),
    "residual-float32-x-float64": _base_case(residual="other-dtype"),
    "lazy-batchnorm2d": _base_case(bn_kind="lazy"),
}


@pytest.mark.parametrize("case", KNOWN.values(), ids=KNOWN.keys())
def test_calls_that_once_differed(case):
    conv, bn = make_modules(case)
    x, residual = make_inputs(case, conv)
    _, torch_error = torch_outcome(lambda _: eager(x, copy.deepcopy(conv), copy_bn(bn),
                                                   case.relu, residual))
    with on_backend("cpp"):
        if torch_error is not None:
            assert_refused(lambda: conv_bn_relu(x, conv, bn, case.relu, residual),
                           torch_error)
        else:
            compare(case, conv, bn, x, residual, "cpp")
