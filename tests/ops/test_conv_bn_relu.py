"""conv_bn_relu and ConvBNReLU against eager Conv2d -> BatchNorm2d (+ residual) -> ReLU, on
every backend, in training and eval mode."""

import copy
import importlib
import itertools

import pytest
import torch
from helpers import assert_close_to_reference, randn, tolerance
from torch import nn

import fastcnn
from fastcnn import backends
from fastcnn.functional import conv_bn_relu
from fastcnn.ops.layout import channel_view

# the module (its name is taken by the function in fastcnn.functional)
conv_bn_relu_impl = importlib.import_module("fastcnn.functional.conv_bn_relu")


def make_modules(cin, cout, kernel_size, dtype=torch.float64, device="cpu", bias=False,
                 affine=True, momentum=0.1, **conv_kwargs):
    """A Conv2d and a BatchNorm2d with random parameters and running statistics."""
    conv = nn.Conv2d(cin, cout, kernel_size, bias=bias, **conv_kwargs)
    bn = nn.BatchNorm2d(cout, momentum=momentum, affine=affine)
    with torch.no_grad():
        if affine:
            bn.weight.copy_(torch.rand(cout) + 0.5)
            bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.copy_(torch.rand(cout) + 0.5)
    return conv.to(dtype=dtype, device=device), bn.to(dtype=dtype, device=device)


def eager(x, conv, bn, relu=True, residual=None):
    z = bn(conv(x))
    if residual is not None:
        z = z + residual
    return torch.relu(z) if relu else z


def parameters(conv, bn):
    return [t for t in (conv.weight, conv.bias, bn.weight, bn.bias) if t is not None]


def run_both(x, conv, bn, relu=True, residual=None, train=True, steps=1, grad_mask=None):
    """Runs `steps` forward+backward passes of fastcnn (on conv, bn in x's dtype) and of
    eager PyTorch (on float64 copies) with the same inputs and output gradients (zero where
    grad_mask is false); returns both sides' outputs, gradients and running statistics."""
    ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    for module in (conv, bn, ref_conv, ref_bn):
        module.train(train)
    results = []
    for fn, c, b, dtype in ((conv_bn_relu, conv, bn, x.dtype),
                            (eager, ref_conv, ref_bn, torch.float64)):
        outputs = []
        for _ in range(steps):
            leaf_x = x.detach().to(dtype).requires_grad_()
            leaf_r = None if residual is None else residual.detach().to(dtype).requires_grad_()
            for p in parameters(c, b):
                p.grad = None
            z = fn(leaf_x, c, b, relu, leaf_r)
            grad = _fixed_grad(z)
            z.backward(grad if grad_mask is None else grad * grad_mask.to(grad))
            outputs.append((z, leaf_x.grad, *(p.grad for p in parameters(c, b)),
                            *(() if leaf_r is None else (leaf_r.grad,))))
        stats = (b.running_mean, b.running_var) if b.running_mean is not None else ()
        results.append((outputs, stats))
    return results


def _fixed_grad(z):
    """The same output gradient for both sides of a comparison."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(z.shape, generator=generator, dtype=torch.float64).to(z)


def check_against_eager(x, conv, bn, relu=True, residual=None, train=True, steps=1,
                        backend=None, device="cpu", dtype=None):
    dtype = dtype or x.dtype
    (ours, our_stats), (theirs, their_stats) = run_both(x, conv, bn, relu, residual, train, steps)
    for step_ours, step_theirs in zip(ours, theirs):
        assert step_ours[0].dtype == x.dtype and step_ours[0].shape == step_theirs[0].shape
        for a, b in zip(step_ours, step_theirs):
            assert_close_to_reference(a, b, dtype, backend, device, convolution=True)
    for a, b in zip(our_stats, their_stats):
        assert_close_to_reference(a, b, dtype, backend, device, convolution=True)
    if train and bn.num_batches_tracked is not None:
        assert bn.num_batches_tracked.item() == steps


# (conv arguments, input shape): small shapes (Triton's interpreter runs every program)
CASES = {
    "3x3": (dict(cin=4, cout=6, kernel_size=3, padding=1), (2, 4, 5, 6)),
    "1x1": (dict(cin=8, cout=4, kernel_size=1), (2, 8, 4, 5)),
    "stride-2": (dict(cin=4, cout=5, kernel_size=3, stride=2, padding=1), (2, 4, 7, 6)),
    "dilation-2": (dict(cin=3, cout=4, kernel_size=3, dilation=2, padding=2), (2, 3, 6, 6)),
    "groups-2": (dict(cin=4, cout=6, kernel_size=3, groups=2, padding=1), (2, 4, 5, 5)),
    "depthwise": (dict(cin=6, cout=6, kernel_size=3, groups=6, padding=1), (2, 6, 5, 5)),
    "conv-bias": (dict(cin=4, cout=5, kernel_size=3, bias=True), (2, 4, 6, 6)),
    "no-affine": (dict(cin=4, cout=5, kernel_size=1, affine=False), (3, 4, 3, 4)),
    "asymmetric": (dict(cin=3, cout=4, kernel_size=(1, 3), stride=(2, 1), padding=(0, 1)),
                   (2, 3, 5, 6)),
}


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["", "residual"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_matches_eager_in_float64(backend_device, case, train, with_residual, relu):
    backend, device = backend_device
    conv_kwargs, shape = case
    conv, bn = make_modules(**conv_kwargs, device=device)
    x = randn(*shape, dtype=torch.float64, device=device)
    residual = None
    if with_residual:
        with torch.no_grad():
            residual = randn(*conv(x).shape, dtype=torch.float64, device=device)
    check_against_eager(x, conv, bn, relu, residual, train, steps=2 if train else 1,
                        backend=backend, device=device)


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_inference_without_grad_matches_eager(backend_device, with_residual):
    """The folded path: no autograd, the epilogue written over the convolution's output."""
    backend, device = backend_device
    conv, bn = make_modules(4, 6, 3, padding=1, bias=True, device=device)
    conv.eval(), bn.eval()
    x = randn(2, 4, 5, 6, dtype=torch.float64, device=device)
    residual = randn(2, 6, 5, 6, dtype=torch.float64, device=device) if with_residual else None
    with torch.no_grad():
        expected = eager(x, conv, bn, True, residual)
        assert_close_to_reference(conv_bn_relu(x, conv, bn, True, residual), expected,
                                  torch.float64, backend, device)
    with torch.inference_mode():
        assert_close_to_reference(conv_bn_relu(x, conv, bn, True, residual), expected,
                                  torch.float64, backend, device)


def test_momentum_none_is_a_cumulative_average(backend_device):
    backend, device = backend_device
    conv, bn = make_modules(3, 4, 3, momentum=None, device=device)
    x = randn(2, 3, 5, 5, dtype=torch.float64, device=device)
    check_against_eager(x, conv, bn, steps=3, backend=backend, device=device)


def test_no_running_stats_uses_batch_statistics_in_eval(backend_device):
    backend, device = backend_device
    conv = nn.Conv2d(3, 4, 3).double().to(device)
    bn = nn.BatchNorm2d(4, track_running_stats=False).double().to(device)
    x = randn(2, 3, 5, 5, dtype=torch.float64, device=device)
    check_against_eager(x, conv, bn, train=False, backend=backend, device=device)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_channels_last_matches_eager_and_keeps_its_layout(backend_device, train):
    backend, device = backend_device
    conv, bn = make_modules(5, 6, 3, padding=1, device=device)
    x = randn(2, 5, 4, 6, dtype=torch.float64, device=device, channels_last=True)
    residual = randn(2, 6, 4, 6, dtype=torch.float64, device=device, channels_last=True)
    check_against_eager(x, conv, bn, True, residual, train, backend=backend, device=device)
    bn.train(train)
    with torch.no_grad():
        assert conv_bn_relu(x, conv, bn).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_pointwise_convolution_keeps_nchw(train, monkeypatch):
    """A 1x1 convolution of an NCHW float32 tensor runs as a GEMM over x's memory in a
    training step kept in x's layout (one of the ways measured, _training_way) and where
    gradients are wanted in eval mode, and as ATen's convolution in inference; its output
    and gradients are laid out as eager's."""
    conv, bn = make_modules(8, 6, 1, dtype=torch.float32)
    bn.train(train)
    x = randn(2, 8, 5, 7)
    check_against_eager(x, conv, bn, train=train)
    products = []
    bmm = torch.bmm
    monkeypatch.setattr(torch, "bmm", lambda *args: products.append(1) or bmm(*args))
    x.requires_grad_()
    with conv_bn_relu_impl.force_conv_layout(False):
        z = conv_bn_relu(x, conv, bn)
        z.backward(randn(*z.shape))
    assert products  # forward and backward
    assert z.is_contiguous() and x.grad.is_contiguous() and conv.weight.grad.is_contiguous()
    products.clear()
    with torch.no_grad():
        assert conv_bn_relu(x, conv, bn).is_contiguous()
    assert bool(products) == train  # inference (eval mode, no grad): ATen's convolution


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last-route", "as-given"])
@pytest.mark.parametrize("case", ["3x3", "stride-2", "groups-2", "conv-bias"])
def test_float32_training_either_layout_route(backend_device, case, channels_last):
    """An NCHW float32 CPU training step runs its convolution on a channels_last copy where
    that measured faster: the same numbers either way, NCHW output and input gradient, the
    weight's gradient in the weight's layout."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the route is for CPU convolutions")
    conv_kwargs, shape = CASES[case]
    conv, bn = make_modules(**conv_kwargs, dtype=torch.float32)
    x = randn(*shape)
    saved = []
    with conv_bn_relu_impl.force_conv_layout(channels_last):
        leaf = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            z = conv_bn_relu(leaf, conv.train(), bn.train())
        # the route taken: backward keeps x, or its channels_last copy
        assert [t.is_contiguous() for t in saved if t.shape == x.shape] == [not channels_last]
        z.backward(torch.ones_like(z))
        assert (z.is_contiguous() and leaf.grad.is_contiguous()
                and conv.weight.grad.is_contiguous())
        conv.weight.grad = None  # run_both's gradients would be added to it
        (ours, stats), (theirs, ref_stats) = run_both(x, conv, bn)
    for a, b in (*zip(ours[0], theirs[0]), *zip(stats, ref_stats)):
        scale = max(b.abs().max().item(), 1e-6)  # the conv bias's gradient is 0
        torch.testing.assert_close(a.double() / scale, b / scale, rtol=0,
                                   atol=4 * tolerance(torch.float32)["rtol"])


def _training_ways_taken(monkeypatch):
    """The ways (_training_way) of the training steps of conv_bn_relu from here on."""
    ways = []
    real = conv_bn_relu_impl.ConvBatchNormTrainingFunction.apply
    monkeypatch.setattr(conv_bn_relu_impl.ConvBatchNormTrainingFunction, "apply",
                        lambda *args: ways.append(args[9]) or real(*args))
    return ways


def test_layout_route_rule(monkeypatch):
    """The ways open to a training step's convolution, the first taken where none is
    measured: the GEMMs for pointwise NCHW float32/float64 convolutions, the channels_last
    route for NCHW float32 CPU steps without a residual, ATen's convolution in x's layout;
    force_conv_layout picks the route (True) or the first way in x's layout (False)."""
    ways = _training_ways_taken(monkeypatch)
    monkeypatch.setattr(conv_bn_relu_impl._Trial, "next", lambda self: (self.names[0], False))
    conv, bn = make_modules(4, 6, 3, dtype=torch.float32, padding=1)
    conv_bn_relu(randn(2, 4, 5, 6), conv, bn)
    conv_bn_relu(randn(2, 4, 5, 6, channels_last=True), conv, bn)
    conv_bn_relu(randn(2, 4, 5, 6), conv, bn, residual=randn(2, 6, 5, 6))
    conv_bn_relu(randn(2, 4, 5, 6)[:, :, :, :5], conv, bn)  # not contiguous
    conv_bn_relu(randn(2, 4, 5, 6, dtype=torch.float64), conv.double(), bn.double())
    pointwise, pointwise_bn = make_modules(4, 6, 1, dtype=torch.float32)
    conv_bn_relu(randn(2, 4, 5, 6), pointwise, pointwise_bn)
    conv_bn_relu(randn(2, 4, 5, 6, channels_last=True), pointwise, pointwise_bn)
    with conv_bn_relu_impl.force_conv_layout(False):
        conv_bn_relu(randn(2, 4, 5, 6, dtype=torch.float64).float(), conv.float(), bn.float())
        conv_bn_relu(randn(2, 4, 5, 6), pointwise, pointwise_bn)
    with conv_bn_relu_impl.force_conv_layout(True):
        conv_bn_relu(randn(2, 4, 5, 6), pointwise, pointwise_bn)
        conv_bn_relu(randn(2, 4, 5, 6), conv, bn, residual=randn(2, 6, 5, 6))
    conv_bn_relu(randn(2, 4, 5, 6, dtype=torch.float64), pointwise.double(),
                 pointwise_bn.double(), residual=randn(2, 6, 5, 6, dtype=torch.float64))
    assert ways == ["route", "direct", "direct", "direct", "direct", "gemm", "direct",
                    "direct", "gemm", "route", "direct", "gemm"]
    assert [conv_bn_relu_impl._training_ways(x, w, (s, p, d, 1), None) for x, w, s, p, d in [
        (randn(2, 4, 5, 6), pointwise.float().weight, (1, 1), (0, 0), (1, 1)),
        (randn(2, 4, 5, 6), pointwise.weight, (2, 2), (0, 0), (1, 1)),  # strided
        (randn(2, 4, 5, 6, dtype=torch.float64), pointwise.double().weight, (1, 1), (0, 0),
         (1, 1))]] == [("gemm", "route", "direct"), ("route", "direct"), ("gemm", "direct")]


@pytest.mark.parametrize("way", ["gemm", "route", "direct"])
def test_pointwise_training_each_way(monkeypatch, way):
    """A pointwise NCHW float32 training step has eager's numbers whichever way its
    convolution runs (outputs, every gradient, running statistics), in eager's layouts."""
    ways = _training_ways_taken(monkeypatch)
    monkeypatch.setattr(conv_bn_relu_impl, "_training_ways", lambda *args: (way,))
    conv, bn = make_modules(8, 6, 1, dtype=torch.float32, bias=True)
    x = randn(3, 8, 5, 7)
    check_against_eager(x, conv, bn, steps=2)
    assert ways == [way, way]
    z = conv_bn_relu(x.clone().requires_grad_(), conv, bn)
    assert z.is_contiguous() and conv.weight.grad.is_contiguous()


@pytest.mark.parametrize("winner", ["gemm", "route", "direct"])
def test_training_way_is_measured_per_shape(monkeypatch, winner):
    """A pointwise NCHW float32 training step takes each open way in turn over its key's
    first steps, two in a row, timing the second's whole step (forward, backward and the
    route's copy of x's gradient back to NCHW), then keeps the fastest; steps without
    gradients, steps under force_conv_layout and other convolutions' steps (the route) are
    not measured, and every step has eager's numbers."""
    monkeypatch.setattr(conv_bn_relu_impl, "_training_choices", {})
    clock, ran = [0.0], []
    # seconds of each way's convolution, forward and backward, and of the route's copy of
    # x's gradient back to NCHW: the winner has the slowest forward, and the route would
    # win where it does not without its copy
    costs = {"gemm": (1.0, 5.0), "route": (1.0, 0.5), "direct": (2.0, 6.0)}
    costs[winner] = (4.0, 0.5)
    copy_back = 0.0 if winner == "route" else 5.0
    ways = _training_ways_taken(monkeypatch)

    def way_of(x, gemm):
        if not x.is_contiguous():
            return "route"
        return "gemm" if gemm else "direct"

    real_forward = conv_bn_relu_impl._convolution
    real_backward = conv_bn_relu_impl._convolution_backward

    def forward(x, weight, conv_args, gemm=True):
        clock[0] += costs[way_of(x, gemm)][0]
        return real_forward(x, weight, conv_args, gemm)

    def backward(grad_y, x, weight, conv_args, need_x, need_weight, gemm=True):
        clock[0] += costs[way_of(x, gemm)][1]
        return real_backward(grad_y, x, weight, conv_args, need_x, need_weight, gemm)

    real_copy = conv_bn_relu_impl.ops.convert_layout

    def convert_layout(t, channels_last, backend):
        if not channels_last and t.dim() == 4 and t.shape[1] == 8:  # x's gradient
            clock[0] += copy_back
        return real_copy(t, channels_last, backend)

    monkeypatch.setattr(conv_bn_relu_impl.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(conv_bn_relu_impl, "_convolution", forward)
    monkeypatch.setattr(conv_bn_relu_impl, "_convolution_backward", backward)
    monkeypatch.setattr(conv_bn_relu_impl.ops, "convert_layout", convert_layout)
    conv, bn = make_modules(8, 6, 1, dtype=torch.float32)
    ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    trial_steps = 3 * 2 * 5  # three ways, two steps each in 5 rounds
    for shape in ((2, 8, 5, 7), (3, 8, 5, 7)):
        ways.clear()
        for step in range(trial_steps + 3):
            x = randn(*shape).requires_grad_()
            ref_x = x.detach().double().requires_grad_()
            z = conv_bn_relu(x, conv, bn)
            expected = eager(ref_x, ref_conv, ref_bn)
            grad = randn(*z.shape)
            z.backward(grad)
            expected.backward(grad.double())
            assert_close_to_reference(z, expected, torch.float32, "cpp", "cpu",
                                      convolution=True)
            assert_close_to_reference(x.grad, ref_x.grad, torch.float32, "cpp", "cpu",
                                      convolution=True)
            if step == 0:
                with torch.no_grad():  # no backward: neither measured nor counted
                    conv_bn_relu(x, conv, bn)
        assert sorted(ways[:trial_steps + 1]) == sorted(["gemm"] * 11 + ["route"] * 10 +
                                                        ["direct"] * 10)
        assert ways[trial_steps + 1:] == [winner] * 3
    assert sorted(conv_bn_relu_impl._training_choices.values()) == [winner, winner]
    ways.clear()
    with conv_bn_relu_impl.force_conv_layout(winner != "route"):
        conv_bn_relu(randn(2, 8, 5, 7), conv, bn).sum().backward()
    assert ways == ["route" if winner != "route" else "gemm"]
    ways.clear()
    conv3x3, bn3x3 = make_modules(8, 6, 3, padding=1, dtype=torch.float32)
    for _ in range(3):
        conv_bn_relu(randn(2, 8, 5, 7).requires_grad_(), conv3x3, bn3x3).sum().backward()
    assert ways == ["route"] * 3 and len(conv_bn_relu_impl._training_choices) == 2


def test_training_trial_ends_when_only_weights_want_gradients(monkeypatch):
    """A measured step whose backward leaves x's gradient out (autograd.grad for the
    weights only, x requiring it) still ends its time, the route's included, which has no
    copy of x's gradient back to wait for: the trial ends with its steps and keeps a way,
    and the weights' gradients are eager's."""
    monkeypatch.setattr(conv_bn_relu_impl, "_training_choices", {})
    ways = _training_ways_taken(monkeypatch)
    conv, bn = make_modules(8, 6, 1, dtype=torch.float32)
    ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    trial_steps = 3 * 2 * 5  # three ways, two steps each in 5 rounds
    for _ in range(trial_steps + 2):
        x = randn(2, 8, 5, 7).requires_grad_()
        z = conv_bn_relu(x, conv, bn)
        grad = randn(*z.shape)
        found = torch.autograd.grad(z, [conv.weight], grad)[0]
        expected = torch.autograd.grad(eager(x.detach().double(), ref_conv, ref_bn),
                                       [ref_conv.weight], grad.double())[0]
        assert_close_to_reference(found, expected, torch.float32, "cpp", "cpu",
                                  convolution=True)
        assert x.grad is None
    assert sorted(set(ways[:trial_steps])) == ["direct", "gemm", "route"]
    (choice,) = conv_bn_relu_impl._training_choices.values()
    assert isinstance(choice, str) and ways[trial_steps:] == [choice, choice]


def _inference_routes(monkeypatch):
    """The layouts (channels_last true/false) of the convolutions run by conv_bn_relu's
    inference calls from here on."""
    routes = []
    real = conv_bn_relu_impl._convolution
    monkeypatch.setattr(conv_bn_relu_impl, "_convolution", lambda x, *args, **kwargs: (
        routes.append(not x.is_contiguous()) or real(x, *args, **kwargs)))
    return routes


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last-route", "as-given"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("case", ["3x3", "stride-2", "groups-2", "conv-bias", "depthwise"])
def test_float32_inference_either_layout_route(backend_device, monkeypatch, case, with_residual,
                                               channels_last):
    """An NCHW float32 CPU inference call (no autograd) that takes no oneDNN post-ops (an
    NCHW residual, or no oneDNN) runs its convolution on a channels_last copy where that
    measured faster, and its epilogue writes the NCHW output from the channels_last one
    (the C++ backend by blocks transposed in registers): the same numbers either way, an
    NCHW output."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the route is for CPU convolutions")
    monkeypatch.setattr(conv_bn_relu_impl, "_onednn_post_ops", None)  # as without oneDNN
    conv_kwargs, shape = CASES[case]
    conv, bn = make_modules(**conv_kwargs, dtype=torch.float32)
    conv.eval(), bn.eval()
    x = randn(*shape)
    residual = None
    with torch.no_grad():
        expected = conv_bn_relu_impl.F.conv2d(x, conv.weight, conv.bias, conv.stride,
                                              conv.padding, conv.dilation, conv.groups)
        if with_residual:
            residual = randn(*expected.shape)
        ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
        expected = eager(x.double(), ref_conv, ref_bn, True,
                         None if residual is None else residual.double())
    routes = _inference_routes(monkeypatch)
    with conv_bn_relu_impl.force_conv_layout(channels_last), torch.no_grad():
        z = conv_bn_relu(x, conv, bn, residual=residual)
    assert routes == [channels_last]
    assert z.is_contiguous() and z.dtype == torch.float32
    assert_close_to_reference(z, expected, torch.float32, backend, device, convolution=True)


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_inference_layout_route_rule(monkeypatch):
    """Inference may take the channels_last route (and then measures whether to) for NCHW
    float32 CPU inputs whose convolution is no pointwise GEMM, residual or not, oneDNN or
    not, on the C++ backend; not while autograd records (a frozen BatchNorm in a training
    net). Calls without a residual that do not take it run oneDNN's post-ops."""
    routes = _inference_routes(monkeypatch)
    monkeypatch.setattr(conv_bn_relu_impl, "_cpu_inference_choices", {})
    monkeypatch.setattr(conv_bn_relu_impl._Trial, "next", lambda self: ("route", False))
    conv, bn = make_modules(4, 6, 3, dtype=torch.float32, padding=1)
    conv.eval(), bn.eval()
    pointwise, pointwise_bn = make_modules(4, 6, 1, dtype=torch.float32)
    pointwise.eval(), pointwise_bn.eval()

    def calls(residual):
        r = (lambda *shape: randn(*shape)) if residual else (lambda *shape: None)
        with torch.no_grad():
            conv_bn_relu(randn(2, 4, 14, 14), conv, bn, residual=r(2, 6, 14, 14))
            conv_bn_relu(randn(2, 4, 3, 5), conv, bn, residual=r(2, 6, 3, 5))
            conv_bn_relu(randn(2, 4, 14, 14, dtype=torch.float64), conv.double(), bn.double(),
                         residual=None if r(1) is None else r(2, 6, 14, 14).double())
            conv.float(), bn.float()
            conv_bn_relu(randn(2, 4, 14, 14), pointwise, pointwise_bn,
                         residual=r(2, 6, 14, 14))
            with conv_bn_relu_impl.force_conv_layout(False):
                conv_bn_relu(randn(2, 4, 5, 6), conv, bn, residual=r(2, 6, 5, 6))
            with fastcnn.use_backend("reference"):
                conv_bn_relu(randn(2, 4, 5, 6), conv, bn, residual=r(2, 6, 5, 6))
        conv_bn_relu(randn(2, 4, 14, 14).requires_grad_(), conv, bn, residual=r(2, 6, 14, 14))

    calls(residual=True)
    assert routes == [True, True, False, False, False, False, False]
    routes.clear()
    calls(residual=False)
    assert routes == [True, True, False, False, False]  # the others ran oneDNN's post-ops
    routes.clear()
    with monkeypatch.context() as without_onednn:
        without_onednn.setattr(conv_bn_relu_impl, "_onednn_post_ops", None)
        calls(residual=False)
    assert routes == [True, True, False, False, False, False, False]
    routes.clear()
    with torch.backends.mkldnn.flags(enabled=False):
        calls(residual=False)
    assert routes == [True, True, False, False, False, False, False]
    assert conv_bn_relu_impl._cpu_inference_choices  # the eligible calls were measured


def test_trial_schedule_and_winner():
    """_Trial gives each implementation its calls in turn (`block` in a row, the last
    timed), untimed for the warm-up rounds, the order reversed every other round, and names
    the lowest median once every implementation has its samples (not before)."""
    trial = conv_bn_relu_impl._Trial(("a", "b"), warmup=2, rounds=3)
    seen, times = [], {"a": iter([5.0, 1.0, 1.0]), "b": iter([2.0, 2.0, 0.5])}
    for _ in range(10):
        assert trial.fastest() is None
        name, timed = trial.next()
        seen.append((name, timed))
        if timed:
            trial.record(name, next(times[name]))
    assert seen == [("a", False), ("b", False), ("b", False), ("a", False),
                    ("a", True), ("b", True), ("b", True), ("a", True), ("a", True), ("b", True)]
    assert trial.fastest() == "a"  # medians 1.0 against 2.0, not the means or the minima
    blocks = conv_bn_relu_impl._Trial(("a", "b", "c"), warmup=1, rounds=2, block=2)
    assert [blocks.next() for _ in range(18)] == [
        ("a", False), ("a", False), ("b", False), ("b", False), ("c", False), ("c", False),
        ("c", False), ("c", True), ("b", False), ("b", True), ("a", False), ("a", True),
        ("a", False), ("a", True), ("b", False), ("b", True), ("c", False), ("c", True)]


@pytest.mark.parametrize("route_faster", [True, False], ids=["route-faster", "direct-faster"])
def test_inference_layout_is_measured_per_shape(monkeypatch, route_faster):
    """NCHW float32 inference measures the channels_last route against the call in x's
    layout over its first calls of each shape, then keeps the one that ran faster; every
    call has eager's numbers, and force_conv_layout overrides the measurement."""
    monkeypatch.setattr(conv_bn_relu_impl, "_cpu_inference_choices", {})
    clock, ran = [0.0], []
    route, direct = conv_bn_relu_impl._route_inference, conv_bn_relu_impl._direct_inference

    def timed(name, implementation, cost):
        def run(*args):
            ran.append(name)
            clock[0] += cost
            return implementation(*args)
        run.__name__ = implementation.__name__
        return run

    monkeypatch.setattr(conv_bn_relu_impl.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(conv_bn_relu_impl, "_route_inference",
                        timed("route", route, 1.0 if route_faster else 3.0))
    monkeypatch.setattr(conv_bn_relu_impl, "_direct_inference", lambda *args: timed(
        "direct", direct(*args), 2.0))
    conv, bn = make_modules(4, 6, 3, dtype=torch.float32, padding=1)
    conv.eval(), bn.eval()
    ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
    trial_calls = 2 * 7  # two implementations, 2 warm-up + 5 timed rounds
    with torch.no_grad():
        for shape in ((2, 4, 9, 8), (3, 4, 9, 8)):
            ran.clear()
            for _ in range(trial_calls + 3):
                x = randn(*shape)
                z = conv_bn_relu(x, conv, bn)
                assert z.is_contiguous()
                assert_close_to_reference(z, eager(x.double(), ref_conv, ref_bn),
                                          torch.float32, "cpp", "cpu", convolution=True)
            winner = "route" if route_faster else "direct"
            assert sorted(ran[:trial_calls]) == ["direct"] * 7 + ["route"] * 7
            assert ran[trial_calls:] == [winner] * 3
        ran.clear()
        with conv_bn_relu_impl.force_conv_layout(not route_faster):
            conv_bn_relu(randn(2, 4, 9, 8), conv, bn)
        assert ran == ["direct" if route_faster else "route"]
    assert len(conv_bn_relu_impl._cpu_inference_choices) == 2


class _PostOpSpy:
    """Stands in for torch.ops.mkldnn._convolution_pointwise, recording each call as
    ("unary" or "binary", whether the weight was oneDNN-packed)."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, x, weight, *args):
        self.calls.append(("unary", weight.is_mkldnn))
        return self.real(x, weight, *args)

    def binary(self, x, other, weight, *args):
        self.calls.append(("binary", weight.is_mkldnn))
        return self.real.binary(x, other, weight, *args)


@pytest.fixture
def post_ops(monkeypatch):
    if conv_bn_relu_impl._onednn_post_ops is None or not torch.backends.mkldnn.is_available():
        pytest.fail("this torch has no oneDNN convolution with post-ops")
    spy = _PostOpSpy(conv_bn_relu_impl._onednn_post_ops)
    monkeypatch.setattr(conv_bn_relu_impl, "_onednn_post_ops", spy)
    return spy


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_onednn_post_ops_match_eager(post_ops, case, channels_last, with_residual, relu):
    """float32 CPU inference by one oneDNN convolution whose post-ops add the folded bias
    (and a channels_last residual) and apply the ReLU: eager's numbers in float64, in the
    layout eager gives; an NCHW residual keeps the C++ epilogue."""
    conv_kwargs, shape = case
    conv, bn = make_modules(**conv_kwargs, dtype=torch.float32)
    conv.eval(), bn.eval()
    x = randn(*shape, channels_last=channels_last)
    residual = None
    with torch.no_grad():
        if with_residual:
            residual = randn(*conv(x).shape, channels_last=channels_last)
        ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
        expected = eager(x.double(), ref_conv, ref_bn, relu,
                         None if residual is None else residual.double())
        with conv_bn_relu_impl.force_conv_layout(False):  # not the channels_last route
            z = conv_bn_relu(x, conv, bn, relu, residual)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert z.is_contiguous(memory_format=layout) and z.dtype == torch.float32
        assert_close_to_reference(z, expected, torch.float32, "cpp", "cpu", convolution=True)
    if with_residual and not channels_last:
        assert post_ops.calls == []
    else:
        assert post_ops.calls == [("binary" if with_residual else "unary", channels_last)]


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "no-relu"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_onednn_bfloat16_post_ops_match_eager(post_ops, case, with_residual, relu):
    """bfloat16 channels_last CPU inference without a residual by one oneDNN convolution
    with post-ops (where oneDNN runs bfloat16; else, and with a residual, the C++
    epilogue): eager's numbers in float64 within bfloat16's tolerance, channels_last and
    bfloat16 out."""
    conv_kwargs, shape = case
    conv, bn = make_modules(**conv_kwargs, dtype=torch.bfloat16)
    conv.eval(), bn.eval()
    x = randn(*shape, dtype=torch.bfloat16, channels_last=True)
    residual = None
    with torch.no_grad():
        if with_residual:
            residual = randn(*conv(x).shape, dtype=torch.bfloat16, channels_last=True)
        expected = eager(x.double(), copy.deepcopy(conv).double(), copy.deepcopy(bn).double(),
                         relu, None if residual is None else residual.double())
        z = conv_bn_relu(x, conv, bn, relu, residual)
    assert z.is_contiguous(memory_format=torch.channels_last) and z.dtype == torch.bfloat16
    assert_close_to_reference(z, expected, torch.bfloat16, "cpp", "cpu", convolution=True)
    if conv_bn_relu_impl._onednn_bf16() and not with_residual:
        assert post_ops.calls == [("unary", True)]
    else:  # a bfloat16 residual keeps the epilogue (see _onednn_fusable)
        assert post_ops.calls == []


@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")
def test_onednn_post_ops_rule(post_ops):
    """Which inference calls run oneDNN's post-ops: float32 CPU inputs in NCHW or
    channels_last (bfloat16 ones in channels_last, where oneDNN runs bfloat16) without
    autograd, with no residual or a channels_last one as channels_last as x, on the C++
    backend, while oneDNN is enabled, unless they take the channels_last route (NCHW, where
    measured faster)."""
    conv, bn = make_modules(4, 6, 3, dtype=torch.float32, padding=1)
    conv.eval(), bn.eval()
    x, x_cl = randn(2, 4, 5, 6), randn(2, 4, 5, 6, channels_last=True)
    r, r_cl = randn(2, 6, 5, 6), randn(2, 6, 5, 6, channels_last=True)
    with torch.no_grad(), conv_bn_relu_impl.force_conv_layout(False):
        for inputs, residual in ((x, None), (x_cl, None), (x_cl, r_cl),  # post-ops
                                 (x, r), (x_cl, r), (x, r_cl), (x[..., :5], None)):  # epilogue
            conv_bn_relu(inputs, conv, bn, residual=residual)
        with conv_bn_relu_impl.force_conv_layout(True):
            conv_bn_relu(x, conv, bn)  # the channels_last route
        with torch.backends.mkldnn.flags(enabled=False):
            conv_bn_relu(x, conv, bn)
        with fastcnn.use_backend("reference"):
            conv_bn_relu(x, conv, bn)
        for dtype in (torch.float64, torch.bfloat16):  # NCHW
            conv_bn_relu(x.to(dtype), copy.deepcopy(conv).to(dtype), copy.deepcopy(bn).to(dtype))
        for dtype in (torch.float64, torch.float16):  # channels_last
            conv_bn_relu(x_cl.to(dtype), copy.deepcopy(conv).to(dtype),
                         copy.deepcopy(bn).to(dtype))
        bf16 = copy.deepcopy(conv).bfloat16(), copy.deepcopy(bn).bfloat16()
        conv_bn_relu(x_cl.bfloat16(), *bf16)
        conv_bn_relu(x_cl.bfloat16(), *bf16, residual=r_cl.bfloat16())
    conv_bn_relu(x.clone().requires_grad_(), conv, bn)
    conv_bn_relu(x_cl.bfloat16().requires_grad_(), *bf16)
    bf16_calls = [("unary", True)] if conv_bn_relu_impl._onednn_bf16() else []
    assert post_ops.calls == [("unary", False), ("unary", True), ("binary", True)] + bf16_calls


def test_onednn_packed_weights_follow_shapes_and_updates(post_ops):
    """A channels_last input's packed weight is made once per input shape and made again
    after the parameters change (an optimizer step); every call has eager's numbers."""
    block = fastcnn.nn.ConvBNReLU(4, 6, 3, padding=1)
    conv, bn = make_modules(4, 6, 3, dtype=torch.float32, padding=1)
    block.conv.load_state_dict(conv.state_dict())
    block.bn.load_state_dict(bn.state_dict())
    block.eval()
    reorders = []
    real = torch._C._nn.mkldnn_reorder_conv2d_weight

    def check(x):
        with torch.no_grad():
            expected = eager(x.double(), copy.deepcopy(block.conv).double(),
                             copy.deepcopy(block.bn).double())
            assert_close_to_reference(block(x), expected, torch.float32, "cpp", "cpu",
                                      convolution=True)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch._C._nn, "mkldnn_reorder_conv2d_weight",
                      lambda *args: reorders.append(tuple(args[-1])) or real(*args))
        small, large = randn(2, 4, 5, 6, channels_last=True), randn(3, 4, 7, 7, channels_last=True)
        for x in (small, large, small, large):
            check(x)
        assert reorders == [(2, 4, 5, 6), (3, 4, 7, 7)]
        with torch.no_grad():
            before = block(small)
        optimizer = torch.optim.SGD(block.parameters(), lr=0.05)
        block.train()
        block(randn(2, 4, 5, 6)).square().sum().backward()
        optimizer.step()
        block.eval()
        check(small)
        with torch.no_grad():
            assert (block(small) - before).abs().max() > 1e-2  # a stale weight would fail
        assert reorders == [(2, 4, 5, 6), (3, 4, 7, 7), (2, 4, 5, 6)]
        for batch in range(1, conv_bn_relu_impl._MAX_PACKED_SHAPES + 3):
            check(randn(batch, 4, 5, 6, channels_last=True))
        packed = conv_bn_relu_impl._folded_cache[block.conv][4]
        assert 0 < len(packed) <= conv_bn_relu_impl._MAX_PACKED_SHAPES
    assert post_ops.calls and all(packed for _, packed in post_ops.calls)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 64, 7, 9), (3, 17, 5, 7), (2, 40, 32, 33), (1, 1040, 3, 7),
                                   (2, 1, 4, 4), (2, 5, 1, 1)])
def test_convert_layout_copies_exactly(backend_device, shape, dtype):
    """ops.convert_layout between NCHW and channels_last, both ways, bit for bit (NaN,
    infinities and -0.0 included), on shapes whose axes are no multiples of the C++
    kernel's 16 x 16 blocks and that it splits into several regions."""
    backend, device = backend_device
    x = randn(*shape, dtype=dtype, device=device)
    flat = x.view(-1)
    flat[::7] = float("nan")
    flat[1::11] = float("inf")
    flat[2::13] = -0.0
    x_channels_last = x.contiguous(memory_format=torch.channels_last)
    for channels_last, source in ((True, x), (False, x_channels_last), (True, x.transpose(2, 3))):
        out = fastcnn.ops.convert_layout(source, channels_last, backend)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=layout) and out.data_ptr() != source.data_ptr()
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
        assert torch.equal(out.contiguous().view(bits), source.contiguous().view(bits))


@pytest.mark.parametrize("shape", [(2, 40, 17, 19), (1, 20, 30, 30), (1, 1040, 3, 7), (2, 3, 4, 4)])
@pytest.mark.parametrize("relu, with_scale, with_residual",
                         [(True, True, True), (True, False, False), (False, True, False),
                          (False, False, True)])
def test_channel_affine_act_from_channels_last_to_nchw(backend_device, shape, relu, with_scale,
                                                       with_residual):
    """The epilogue writing an NCHW float32 output from a channels_last input (the C++
    kernel transposes 16 x 16 blocks, with edges element by element) against the same
    arithmetic in float64; NaN passes through the ReLU."""
    backend, device = backend_device
    n, c, h, w = shape
    y = randn(*shape, device=device, channels_last=True)
    y.permute(0, 2, 3, 1).reshape(-1)[::9] = float("nan")
    scale = torch.rand(c, device=device) + 0.5 if with_scale else None
    shift = randn(c, device=device)
    residual = randn(*shape, device=device) if with_residual else None
    out = fastcnn.ops.channel_affine_act(y, scale, shift, residual, relu, True, backend)
    assert out.is_contiguous()
    expected = y.double() * (1 if scale is None else scale.double().view(1, -1, 1, 1)) + \
        shift.double().view(1, -1, 1, 1)
    if residual is not None:
        expected = expected + residual.double()
    if relu:
        expected = torch.relu(expected)
    torch.testing.assert_close(out.double(), expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert torch.equal(out.isnan(), expected.isnan())


TRITON_CONVOLUTION_CASES = ["3x3", "1x1", "stride-2", "dilation-2", "conv-bias", "no-affine",
                            "asymmetric"]


def _triton_devices():
    """The devices the Triton backend runs on here: CUDA, and the CPU through Triton's
    interpreter."""
    devices = ["cuda"] if torch.cuda.is_available() else []
    return devices + (["cpu"] if backends.TRITON_INTERPRET else [])


@pytest.fixture(params=_triton_devices())
def triton_device(request):
    """The Triton backend on each device it runs on (the Triton convolution is its own)."""
    status = backends.info()["backends"]["triton"]
    if not status["available"]:
        pytest.fail(f"the triton backend is not available: {status['reason']}")
    with fastcnn.use_backend("triton"):
        yield request.param


@pytest.mark.parametrize("config", [0, 2], ids=["config-0", "config-2"])
@pytest.mark.parametrize("relu, with_residual", [(True, True), (False, False)])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", TRITON_CONVOLUTION_CASES)
def test_triton_convolution_matches_eager(triton_device, case, channels_last, relu,
                                          with_residual, config):
    """The Triton implicit-GEMM convolution with the epilogue fused (inference without
    autograd) against eager in float64: the input's layout kept, the residual read in
    either layout."""
    backend, device = "triton", triton_device
    conv_kwargs, shape = CASES[case]
    conv, bn = make_modules(**conv_kwargs, dtype=torch.float32, device=device)
    conv.eval(), bn.eval()
    x = randn(*shape, device=device, channels_last=channels_last)
    residual = None
    with torch.no_grad():
        ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
        expected = eager(x.double(), ref_conv, ref_bn, relu)
        if with_residual:
            residual = randn(*expected.shape, device=device, channels_last=not channels_last)
            expected = eager(x.double(), ref_conv, ref_bn, relu, residual.double())
        with conv_bn_relu_impl.force_inference_convolution(config):
            z = conv_bn_relu(x, conv, bn, relu, residual)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert z.dtype == torch.float32 and z.is_contiguous(memory_format=layout)
    assert_close_to_reference(z, expected, torch.float32, backend, device, convolution=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_triton_convolution_low_precision(triton_device, dtype, channels_last):
    """float16 and bfloat16 products accumulated in float32, against float64."""
    backend, device = "triton", triton_device
    conv, bn = make_modules(8, 24, 3, padding=1, bias=True, dtype=dtype, device=device)
    conv.eval(), bn.eval()
    x = randn(2, 8, 6, 7, dtype=dtype, device=device, channels_last=channels_last)
    residual = randn(2, 24, 6, 7, dtype=dtype, device=device)
    with torch.no_grad():
        ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double()
        expected = eager(x.double(), ref_conv, ref_bn, True, residual.double())
        with conv_bn_relu_impl.force_inference_convolution(1):
            z = conv_bn_relu(x, conv, bn, True, residual)
    assert z.dtype == dtype
    _assert_close_in_low_precision(z, expected, dtype)


def test_inference_convolution_is_chosen_by_measurement_once_per_shape(triton_device,
                                                                       monkeypatch):
    """On the Triton backend each inference shape times the vendor's convolution and every
    Triton configuration once, runs the fastest, and remembers it; grouped convolutions
    are not eligible."""
    backend, device = "triton", triton_device
    monkeypatch.setattr(conv_bn_relu_impl, "_convolution_choices", {})
    monkeypatch.setattr(conv_bn_relu_impl, "_triton_convolution_eligible",
                        lambda x, weight, conv_args, backend: conv_args[3] == 1)
    from fastcnn.kernels.triton.conv import CONFIGS
    # measured in this order: the vendor's, then configurations 0, 1, ...; 1 is fastest
    fake_ms = [3.0] + [1.0 if i == 1 else 10.0 + i for i in range(len(CONFIGS))]
    timed, ran = [], []

    def fake_time(run, device):
        run()
        timed.append(run)
        return fake_ms[(len(timed) - 1) % len(fake_ms)]

    monkeypatch.setattr(conv_bn_relu_impl, "_time_ms", fake_time)
    real = conv_bn_relu_impl._triton_convolution
    monkeypatch.setattr(conv_bn_relu_impl, "_triton_convolution",
                        lambda *args: ran.append(args[-1]) or real(*args))
    conv, bn = make_modules(4, 6, 3, padding=1, dtype=torch.float32, device=device)
    conv.eval(), bn.eval()
    with torch.no_grad():
        for shape in ((2, 4, 5, 6), (2, 4, 5, 6), (1, 4, 3, 3)):
            x = randn(*shape, device=device)
            ran.clear()
            z = conv_bn_relu(x, conv, bn)
            assert ran[-1] == 1  # the fastest
            assert_close_to_reference(z, eager(x, conv, bn), torch.float32, backend, device,
                                      convolution=True)
        assert len(timed) == 2 * len(fake_ms)  # two shapes, each measured once
        assert len(conv_bn_relu_impl._convolution_choices) == 2
        grouped, grouped_bn = make_modules(4, 6, 3, padding=1, groups=2, dtype=torch.float32,
                                           device=device)
        ran.clear()
        conv_bn_relu(randn(2, 4, 5, 6, device=device), grouped.eval(), grouped_bn.eval())
        assert ran == [] and len(timed) == 2 * len(fake_ms)


@pytest.mark.parametrize("fault", ["raises", "wrong"])
def test_inference_measurement_leaves_out_faulty_configurations(triton_device, monkeypatch,
                                                                fault):
    """A Triton configuration that fails on the device (other than by running out of
    resources), or whose output is off by more than rounding, is never chosen, however fast
    it timed, and a warning names it; the rest are measured as before."""
    monkeypatch.setattr(conv_bn_relu_impl, "_convolution_choices", {})
    monkeypatch.setattr(conv_bn_relu_impl, "_triton_convolution_eligible",
                        lambda x, weight, conv_args, backend: True)
    from fastcnn.kernels.triton.conv import CONFIGS
    faulty, runner_up = 0, 2
    assert len(CONFIGS) > runner_up
    ran = []  # the configurations run by the call being timed
    real = conv_bn_relu_impl._triton_convolution

    def triton_convolution(*args):
        ran.append(args[-1])
        z = real(*args)
        if args[-1] == faulty:
            if fault == "raises":
                raise RuntimeError("no kernel image for this device")
            z[0, 0, 1, 1] += 0.5 * z.abs().max()  # one wrong element
        return z

    def fake_time(run, device):  # the faulty configuration would be the fastest
        ran.clear()
        run()
        return {None: 5.0, faulty: 1.0, runner_up: 2.0}.get(ran[-1] if ran else None, 3.0)

    monkeypatch.setattr(conv_bn_relu_impl, "_time_ms", fake_time)
    monkeypatch.setattr(conv_bn_relu_impl, "_triton_convolution", triton_convolution)
    conv, bn = make_modules(4, 6, 3, padding=1, dtype=torch.float32, device=triton_device)
    conv.eval(), bn.eval()
    x = randn(2, 4, 5, 6, device=triton_device)
    with torch.no_grad(), pytest.warns(RuntimeWarning, match=f"configuration {faulty} "):
        z = conv_bn_relu(x, conv, bn)
    assert list(conv_bn_relu_impl._convolution_choices.values()) == [runner_up]
    assert_close_to_reference(z, eager(x, conv, bn), torch.float32, "triton", triton_device,
                              convolution=True)


def test_mixed_layouts(backend_device):
    """A channels_last input with an NCHW residual: the kernels read each with its strides."""
    backend, device = backend_device
    conv, bn = make_modules(4, 6, 3, padding=1, device=device)
    x = randn(2, 4, 5, 6, dtype=torch.float64, device=device, channels_last=True)
    residual = randn(2, 6, 5, 6, dtype=torch.float64, device=device)
    check_against_eager(x, conv, bn, True, residual, backend=backend, device=device)


def _assert_close_in_low_precision(actual, expected, dtype):
    """A float16/bfloat16 convolution's output against float64. Its rounding error scales
    with the terms it sums (the folded weights are rounded to the dtype too), not with the
    output, which cancellation can make much smaller than they are: each element may be
    off by the dtype's relative tolerance of the tensor's largest value."""
    rtol = tolerance(dtype)["rtol"]
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), equal_nan=True,
                               rtol=rtol, atol=rtol * scale)


# Low precision against float64: BatchNorm divides by the batch's standard deviation, so
# the convolution's rounding is held to the tolerance of its dtype, on unit-scale values.
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_low_precision_against_float64(backend_device, dtype, channels_last, train):
    backend, device = backend_device
    conv, bn = make_modules(8, 8, 1, dtype=dtype, device=device)
    x = randn(2, 8, 4, 4, dtype=dtype, device=device, channels_last=channels_last)
    residual = randn(2, 8, 4, 4, dtype=dtype, device=device, channels_last=channels_last)
    # Where the value before the ReLU is within rounding of 0, the ReLU's mask depends on
    # the rounding: no gradient flows back from there, so the mask's choice cannot matter.
    ref_conv, ref_bn = copy.deepcopy(conv).double().train(train), copy.deepcopy(bn).double()
    with torch.no_grad():
        pre_activation = eager(x.double(), ref_conv, ref_bn.train(train), False,
                               residual.double())
    clear_of_kink = pre_activation.abs() > 0.1
    (ours, stats), (theirs, ref_stats) = run_both(x, conv, bn, True, residual, train,
                                                  grad_mask=clear_of_kink)
    z, dx, dw, dgamma, dbeta, dr = ours[0]
    z_ref, dx_ref, dw_ref, dgamma_ref, dbeta_ref, dr_ref = theirs[0]
    assert z.dtype == dtype
    for a, b in ((z, z_ref), (dr, dr_ref)):
        if dtype == torch.float32:
            assert_close_to_reference(a, b, dtype, backend, device, convolution=True)
        else:
            _assert_close_in_low_precision(a, b, dtype)
    for a, b in zip(stats, ref_stats):
        assert_close_to_reference(a, b, dtype, backend, device, convolution=True)
    # gradients that sum over the batch: relative to their largest entry
    for a, b in ((dx, dx_ref), (dw, dw_ref), (dgamma, dgamma_ref), (dbeta, dbeta_ref)):
        scale = b.abs().max().item()
        torch.testing.assert_close(a.double().cpu() / scale, b.double().cpu() / scale,
                                   rtol=0, atol=4 * tolerance(dtype)["rtol"])


def test_batch_statistics_are_numerically_stable(backend_device):
    """Values far from zero (mean 1e4, standard deviation 1) in float32: the variance is
    that of the float32 values, computed exactly, to float32 precision."""
    backend, device = backend_device
    y = (1e4 + randn(2, 3, 3000, dtype=torch.float64)).float().to(device)
    mean = torch.empty(3, device=device)
    var = torch.empty(3, device=device)
    backends.kernels(backend).batch_norm_stats(y, mean, var)
    var_ref, mean_ref = torch.var_mean(y.double(), dim=(0, 2), correction=0)
    torch.testing.assert_close(mean.double().cpu(), mean_ref.cpu(), rtol=1e-7, atol=0)
    torch.testing.assert_close(var.double().cpu(), var_ref.cpu(), rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", ["channels-contiguous", "positions-contiguous", "neither"])
def test_kernels_read_and_write_any_strides(backend_device, layout):
    """The kernel entry points on (N, C, S) views laid out every way, against the
    reference kernels on the same views."""
    backend, device = backend_device
    n, c, s = 2, 20, 24

    def view(kind):
        if kind == "channels-contiguous":
            return torch.empty(n, s, c, dtype=torch.float64, device=device).transpose(1, 2)
        if kind == "positions-contiguous":
            return torch.empty(n, c, s, dtype=torch.float64, device=device)
        return torch.empty(n, s, 2 * c, dtype=torch.float64, device=device)[..., ::2] \
            .transpose(1, 2)

    def vector(fill=None):
        v = torch.rand(c, dtype=torch.float64, device=device) + 0.5
        return v if fill is None else v.fill_(fill)

    y, grad, residual = view(layout).normal_(), view("neither").normal_(), view(layout).normal_()
    scale, shift, invstd = vector(), vector() - 1, vector()
    results = {}
    for name in (backend, "reference"):
        kernels = backends.kernels(name)
        out, dy, dr = (view("neither").fill_(float("nan")) for _ in range(3))
        mean, var, sum_dz, sum_dz_xhat = (vector(float("nan")) for _ in range(4))
        kernels.channel_affine_act(y, scale, shift, residual, out, True)
        kernels.batch_norm_stats(y, mean, var)
        kernels.batch_norm_act_backward_reduce(grad, y, residual, scale, shift, mean, invstd,
                                               sum_dz, sum_dz_xhat, True)
        kernels.batch_norm_act_backward(grad, y, residual, scale, shift, mean, invstd, sum_dz,
                                        sum_dz_xhat, dy, dr, True)
        in_place = y.clone()
        kernels.channel_affine_act(in_place, None, shift, None, in_place, False)
        results[name] = (out, mean, var, sum_dz, sum_dz_xhat, dy, dr, in_place)
    for ours, expected in zip(results[backend], results["reference"]):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


# (N, C, S) views of the C++ kernels' work splits: channels_last ones, whose channels the
# reductions take 16 at a time (whole chunks, then a narrower last one) over blocks of
# positions of one image (one, or several per image), and NCHW ones of short rows, which
# are taken several images at a time (a last, smaller group of images included).
TILINGS = {
    "channels-last-16": (True, (3, 16, 50)),
    "channels-last-37": (True, (3, 37, 50)),
    "channels-last-64": (True, (3, 64, 50)),
    "channels-last-blocks": (True, (2, 64, 1000)),
    "nchw-image-groups": (False, (100, 8, 49)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tiling", TILINGS.values(), ids=TILINGS.keys())
@pytest.mark.parametrize("with_residual", [False, True], ids=["", "residual"])
def test_passes_against_float64(backend_device, dtype, tiling, with_residual):
    """Every pass (batch statistics, affine + ReLU, backward sums, backward) on the views of
    TILINGS against the reference kernels on the same values in float64. The backward sums
    are compared divided by their count, as the means they stand for. A NaN in the
    residual makes its value before the ReLU NaN, whose gradient passes as torch.relu's."""
    backend, device = backend_device
    channels_last, (n, c, s) = tiling

    def feature_map():
        if channels_last:
            return randn(n, s, c, dtype=dtype, device=device).transpose(1, 2)
        return randn(n, c, s, dtype=dtype, device=device)

    tensors = [feature_map(), feature_map(), feature_map() if with_residual else None]
    if with_residual:
        tensors[2][1, c - 1, s // 2] = float("nan")
    # scale, shift, mean, invstd, and the backward's sum_dz, sum_dz_xhat
    vectors = [torch.rand(c, dtype=torch.float64) + 0.5, torch.randn(c, dtype=torch.float64),
               torch.randn(c, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5,
               torch.randn(c, dtype=torch.float64) * n * s,
               torch.randn(c, dtype=torch.float64) * n * s]
    results = {}
    for side, name, to in (("ours", backend, dtype), ("expected", "reference", torch.float64)):
        y, grad, residual = (None if t is None else t.to(to) for t in tensors)
        opmath = torch.float64 if to == torch.float64 else torch.float32
        scale, shift, mean, invstd, sum_dz, sum_dz_xhat = (
            v.to(device=device, dtype=opmath) for v in vectors)
        kernels = backends.kernels(name)
        batch_mean, batch_var, found_dz, found_dz_xhat = (
            torch.empty(c, dtype=opmath, device=device) for _ in range(4))
        out, dy, dr = (torch.empty_like(y) for _ in range(3))
        kernels.batch_norm_stats(y, batch_mean, batch_var)
        kernels.channel_affine_act(y, scale, shift, residual, out, True)
        kernels.batch_norm_act_backward_reduce(grad, y, residual, scale, shift, mean, invstd,
                                               found_dz, found_dz_xhat, True)
        kernels.batch_norm_act_backward(grad, y, residual, scale, shift, mean, invstd, sum_dz,
                                        sum_dz_xhat, dy, dr if with_residual else None, True)
        results[side] = ((batch_mean, batch_var, found_dz / (n * s), found_dz_xhat / (n * s)),
                         (out, dy) + ((dr,) if with_residual else ()))
    accumulation = torch.float64 if dtype == torch.float64 else torch.float32
    for ours, expected in zip(results["ours"][0], results["expected"][0]):
        assert_close_to_reference(ours, expected, accumulation, backend, device)
    for ours, expected in zip(results["ours"][1], results["expected"][1]):
        assert ours.dtype == dtype
        assert_close_to_reference(ours, expected, dtype, backend, device)


# Strides that fit in 32 bits (so Triton types them int32) times indices that do not.
@pytest.mark.parametrize("shape, strides", [((3, 2, 3), (2**30 + 3, 4, 1)),
                                            ((1, 3, 3), (3 * (2**30 + 3), 2**30 + 3, 1))],
                         ids=["batch-stride", "channel-stride"])
def test_64_bit_offsets(backend_device, shape, strides):
    """Element offsets beyond 2**31 in every kernel. The storage is reserved, not touched:
    only the few elements of the views are written."""
    backend, device = backend_device
    if device != "cpu":
        pytest.skip("the storage trick relies on lazily committed host memory")

    def huge(fill):
        t = torch.empty_strided(shape, strides, dtype=torch.float16)
        return t.normal_() if fill else t

    y, grad, residual, out, dy, dr = (huge(i < 3) for i in range(6))
    c = shape[1]
    scale, shift, invstd = torch.rand(c) + 0.5, torch.randn(c), torch.rand(c) + 0.5
    results = {}
    for name in (backend, "reference"):
        kernels = backends.kernels(name)
        mean, var, sum_dz, sum_dz_xhat = (torch.empty(c) for _ in range(4))
        kernels.channel_affine_act(y, scale, shift, residual, out, True)
        kernels.batch_norm_stats(y, mean, var)
        kernels.batch_norm_act_backward_reduce(grad, y, residual, scale, shift, mean, invstd,
                                               sum_dz, sum_dz_xhat, True)
        kernels.batch_norm_act_backward(grad, y, residual, scale, shift, mean, invstd, sum_dz,
                                        sum_dz_xhat, dy, dr, True)
        results[name] = [t.clone() for t in (out, mean, var, sum_dz, sum_dz_xhat, dy, dr)]
    for ours, expected in zip(results[backend], results["reference"]):
        assert_close_to_reference(ours, expected, torch.float16)


def test_gradcheck(backend_device):
    backend, device = backend_device
    block = fastcnn.nn.ConvBNReLU(3, 4, 3, padding=1).double().to(device)
    x = randn(2, 3, 3, 3, dtype=torch.float64, device=device).requires_grad_()
    residual = randn(2, 4, 3, 3, dtype=torch.float64, device=device).requires_grad_()
    names = ("conv.weight", "bn.weight", "bn.bias")
    params = [block.get_parameter(name).detach().clone().requires_grad_() for name in names]

    def f(x, residual, *params):
        return torch.func.functional_call(block, dict(zip(names, params)), (x, residual))

    for train in (True, False):
        block.train(train)
        assert torch.autograd.gradcheck(f, (x, residual, *params))


def _gradient_penalty(fn, x, conv, bn, dtype):
    """fn's first derivative w.r.t. x (create_graph=True), and the gradients of its squared
    sum w.r.t. x, conv.weight and bn.weight, on copies of the modules in `dtype`."""
    c, b = copy.deepcopy(conv).to(dtype), copy.deepcopy(bn).to(dtype)
    leaf = x.detach().to(dtype).clone().requires_grad_()
    z = fn(leaf, c, b)
    (first,) = torch.autograd.grad(z, leaf, _fixed_grad(z), create_graph=True)
    first.pow(2).sum().backward()
    return first.detach(), leaf.grad, c.weight.grad, b.weight.grad


def test_second_derivatives_match_eager(backend_device):
    """create_graph=True (a gradient penalty): second derivatives as PyTorch's."""
    backend, device = backend_device
    conv, bn = make_modules(3, 4, 3, padding=1, device=device)
    x = randn(2, 3, 4, 4, dtype=torch.float64, device=device)
    penalties = [_gradient_penalty(fn, x, conv, bn, torch.float64) for fn in (conv_bn_relu, eager)]
    for ours, expected in zip(*penalties):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


def test_second_derivatives_through_the_channels_last_route():
    """The NCHW float32 CPU route copies x to channels_last as an autograd step of its own:
    a gradient penalty's second derivatives still reach x and the parameters."""
    conv, bn = make_modules(3, 4, 3, padding=1, dtype=torch.float32)
    x = randn(2, 3, 5, 4)
    with conv_bn_relu_impl.force_conv_layout(True):
        penalties = [_gradient_penalty(conv_bn_relu, x, conv, bn, torch.float32),
                     _gradient_penalty(eager, x, conv, bn, torch.float64)]
    assert penalties[0][0].is_contiguous() and penalties[0][1].is_contiguous()
    for ours, expected in zip(*penalties):
        scale = expected.abs().max().item()
        torch.testing.assert_close(ours.double() / scale, expected / scale, rtol=0,
                                   atol=4 * tolerance(torch.float32)["rtol"])


def test_folded_weights_are_cached_and_refreshed(monkeypatch):
    """Inference folds the BatchNorm into the convolution once, and again after anything
    it was folded from changes: an optimizer step, load_state_dict, an in-place edit."""
    folds = []
    original = conv_bn_relu_impl._fold
    monkeypatch.setattr(conv_bn_relu_impl, "_fold",
                        lambda conv, bn: folds.append(1) or original(conv, bn))
    block = fastcnn.nn.ConvBNReLU(4, 6, 3, padding=1).double()
    conv, bn = make_modules(4, 6, 3, padding=1)
    block.conv.load_state_dict(conv.state_dict())
    block.bn.load_state_dict(bn.state_dict())
    block.eval()
    x = randn(2, 4, 5, 5, dtype=torch.float64)

    def check():
        with torch.no_grad():
            expected = eager(x, block.conv, block.bn)
            torch.testing.assert_close(block(x), expected)

    check()
    check()
    assert len(folds) == 1

    # an optimizer step (gradients through the eval-mode path, which folds without caching)
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    block(x.requires_grad_()).square().sum().backward()
    x.requires_grad_(False)
    optimizer.step()
    folds.clear()
    check()
    assert len(folds) == 1

    # load_state_dict from another block
    other = fastcnn.nn.ConvBNReLU(4, 6, 3, padding=1).double()
    other_conv, other_bn = make_modules(4, 6, 3, padding=1)
    other.conv.load_state_dict(other_conv.state_dict())
    other.bn.load_state_dict(other_bn.state_dict())
    block.load_state_dict(other.state_dict())
    check()

    # a running statistic edited in place, eps changed, a training step's running stats
    with torch.no_grad():
        block.bn.running_var.mul_(2)
    check()
    block.bn.eps = 1e-2
    check()
    block.train()
    block(x)
    block.eval()
    check()
    assert len(folds) == 5


def test_saved_bytes_are_not_more_than_eager():
    """Bytes kept for backward (each storage once) in training mode, against eager's
    Conv2d -> BatchNorm2d -> ReLU: the BatchNorm and ReLU outputs are not kept."""

    def saved_bytes(fn, *args):
        storages = {}

        def pack(t):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(*args)
        return sum(storages.values())

    conv, bn = make_modules(16, 32, 3, dtype=torch.float32, padding=1)
    x = randn(4, 16, 12, 12).requires_grad_()
    output_bytes = 4 * 32 * 12 * 12 * 4
    channel_vector_bytes = 32 * 4
    for relu, with_residual, channels_last in itertools.product((True, False), (False, True),
                                                                (False, True)):
        residual = randn(4, 32, 12, 12).requires_grad_() if with_residual else None
        with conv_bn_relu_impl.force_conv_layout(channels_last):
            ours = saved_bytes(conv_bn_relu, x, conv, bn, relu, residual)
        theirs = saved_bytes(eager, x, conv, bn, relu, residual)
        assert ours <= theirs, (relu, with_residual, channels_last, ours, theirs)
        if relu and not with_residual:
            # the ReLU output is not kept (a few per-channel vectors more are)
            assert ours <= theirs - output_bytes + 4 * channel_vector_bytes


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("backend", ["cpp", "reference"])
def test_torch_compile_fullgraph(backend, train):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = fastcnn.nn.ConvBNReLU(3, 8, 3, padding=1)
            self.b = fastcnn.nn.ConvBNReLU(8, 8, 1, relu=True)

        def forward(self, x):
            h = self.a(x)
            return self.b(h, residual=h).sum(dim=(2, 3))

    net = Block().double().train(train)
    for module in (net.a.bn, net.b.bn):
        with torch.no_grad():
            module.running_var.fill_(2.0)
    twin = copy.deepcopy(net)
    x = randn(2, 3, 7, 7, dtype=torch.float64)
    with fastcnn.use_backend(backend):
        expected = twin(x)
        expected.sum().backward()
        torch._dynamo.reset()
        compiled = torch.compile(net, fullgraph=True)
        actual = compiled(x)
        actual.sum().backward()
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), twin(x))
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(net.a.conv.weight.grad, twin.a.conv.weight.grad)
    torch.testing.assert_close(net.b.bn.weight.grad, twin.b.bn.weight.grad)
    torch.testing.assert_close(net.b.bn.running_mean, twin.b.bn.running_mean)
    torch.testing.assert_close(net.b.bn.num_batches_tracked, twin.b.bn.num_batches_tracked)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_torch_compile_fullgraph_inference(dtype, channels_last):
    """Inference in the dtypes and layouts whose eager calls run oneDNN's post-ops or the
    measured NCHW route: torch.compile(fullgraph=True) traces them, with eager's numbers."""
    block = fastcnn.nn.ConvBNReLU(4, 6, 3, padding=1)
    conv, bn = make_modules(4, 6, 3, dtype=dtype, padding=1)
    conv.eval(), bn.eval()
    block.conv.load_state_dict(conv.state_dict())
    block.bn.load_state_dict(bn.state_dict())
    block = block.to(dtype).eval()
    x = randn(2, 4, 7, 7, dtype=dtype, channels_last=channels_last)
    with torch.no_grad():
        expected = eager(x.double(), copy.deepcopy(conv).double(), copy.deepcopy(bn).double())
        torch._dynamo.reset()
        z = torch.compile(block, fullgraph=True)(x)
    assert z.dtype == dtype
    assert_close_to_reference(z, expected, dtype, "cpp", "cpu", convolution=True)


def test_module_keys_and_numbers():
    block = fastcnn.nn.ConvBNReLU(4, 8, 3, stride=2, padding=1, eps=1e-3, momentum=0.2)
    assert list(block.state_dict()) == ["conv.weight", "bn.weight", "bn.bias",
                                        "bn.running_mean", "bn.running_var",
                                        "bn.num_batches_tracked"]
    assert block.conv.bias is None and block.bn.eps == 1e-3 and block.bn.momentum == 0.2
    block = block.double()
    x = randn(2, 4, 9, 9, dtype=torch.float64)
    expected = eager(x, copy.deepcopy(block.conv), copy.deepcopy(block.bn))
    torch.testing.assert_close(block(x), expected)
    block.relu = False
    block.eval()
    torch.testing.assert_close(block(x), block.bn(block.conv(x)))


def test_empty_batch_in_eval_mode(backend_device):
    _, device = backend_device
    conv, bn = make_modules(3, 4, 3, device=device)
    bn.eval()
    x = randn(0, 3, 5, 5, dtype=torch.float64, device=device).requires_grad_()
    z = conv_bn_relu(x, conv, bn)
    z.sum().backward()
    assert z.shape == (0, 4, 3, 3) and x.grad.shape == x.shape


def test_backward_uses_the_forward_backend(monkeypatch):
    from fastcnn.kernels import reference

    calls = []
    original = reference.batch_norm_act_backward
    monkeypatch.setattr(reference, "batch_norm_act_backward",
                        lambda *args: calls.append(1) or original(*args))
    conv, bn = make_modules(3, 4, 3, dtype=torch.float32)
    x = randn(2, 3, 5, 5).requires_grad_()
    with fastcnn.use_backend("reference"):
        z = conv_bn_relu(x, conv, bn)
    z.sum().backward()
    assert calls == [1]


def _modules():
    return make_modules(4, 6, 3, dtype=torch.float32)


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: conv_bn_relu(torch.randn(2, 5, 6, 6), *_modules()), ValueError,
         ["x", "in_channels", "4", "5"]),
        (lambda: conv_bn_relu(torch.randn(4, 6, 6), *_modules()), ValueError, ["x", "4 dimensions"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6, 1), *_modules()), ValueError,
         ["x", "4 dimensions"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6, dtype=torch.float64), *_modules()),
         TypeError, ["x", "dtype", "float32"]),
        (lambda: conv_bn_relu(torch.ones(2, 4, 6, 6, dtype=torch.int64), *_modules()),
         TypeError, ["x", "int64"]),
        (lambda: conv_bn_relu([[1.0]], *_modules()), TypeError, ["x", "Tensor"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), _modules()[0], nn.BatchNorm2d(5)),
         ValueError, ["bn", "num_features", "out_channels"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), nn.Linear(4, 6), nn.BatchNorm2d(6)),
         TypeError, ["conv", "Conv2d"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), _modules()[0], nn.LayerNorm(6)),
         TypeError, ["bn", "BatchNorm2d"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6),
                              nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
                              nn.BatchNorm2d(6)), ValueError, ["padding_mode", "zeros"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), *_modules(),
                              residual=torch.randn(2, 6, 6, 6)), ValueError,
         ["residual", "(2, 6, 4, 4)"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), *_modules(), relu="yes"), TypeError,
         ["relu", "bool"]),
        (lambda: conv_bn_relu(torch.randn(1, 4, 3, 3), *_modules()), ValueError,
         ["more than 1 value per channel"]),
    ],
    ids=["channels", "3d", "5d", "dtype", "integer-dtype", "not-a-tensor", "bn-features",
         "not-a-conv", "not-a-batchnorm", "padding-mode", "residual-shape", "relu-type",
         "one-value-per-channel"])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_cpp_entry_points_refuse_outputs_that_share_memory_with_inputs():
    base = randn(201)
    y, shifted = base[:200].view(2, 4, 25), base[1:].view(2, 4, 25)
    grad = channel_view(randn(2, 4, 5, 5))
    v = torch.rand(4)
    kernels = backends.kernels("cpp")
    with pytest.raises(RuntimeError, match="output must not share memory with input"):
        kernels.channel_affine_act(y, v, v, None, shifted, True)
    with pytest.raises(RuntimeError, match="grad_input must not share memory with grad_output"):
        kernels.batch_norm_act_backward(grad, y, None, v, v, v, v, v, v, grad, None, True)
    with pytest.raises(RuntimeError, match="output must not share memory with input"):
        kernels.convert_layout(y, shifted)
    with pytest.raises(RuntimeError, match=r"output must have the shape of input \[2, 4, 25\]"):
        kernels.convert_layout(y, torch.empty(2, 25, 4).transpose(1, 2)[:, :3])
    with pytest.raises(RuntimeError, match="output must have the dtype of input"):
        kernels.convert_layout(y, torch.empty(2, 25, 4, dtype=torch.float64).transpose(1, 2))
    with pytest.raises(RuntimeError, match="scale must be Float for Float input"):
        kernels.channel_affine_act(y, v.double(), v, None, y, True)
