"""conv_bn_relu and ConvBNReLU against eager Conv2d -> BatchNorm2d (+ residual) -> ReLU, on
every backend, in training and eval mode."""

import copy
import itertools

import pytest
import torch
from helpers import assert_close_to_reference, randn, tolerance
from torch import nn

import fastcnn
from fastcnn.functional import conv_bn_relu
from fastcnn.kernels import reference


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
    """No autograd: the epilogue written over the convolution's output."""
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
        assert conv_bn_relu(x.contiguous(), conv, bn).is_contiguous()


def _load(block, conv, bn):
    block.conv.load_state_dict(conv.state_dict())
    block.bn.load_state_dict(bn.state_dict())
    return block


def test_eval_follows_every_change_of_parameters_and_buffers():
    """Eval mode reads the parameters and running statistics as they are at each call: after
    an optimizer step, load_state_dict, in-place edits (through .data too, which no version
    counter sees), a changed eps and a training step."""
    block = _load(fastcnn.nn.ConvBNReLU(4, 6, 3, padding=1).double(), *make_modules(4, 6, 3))
    x = randn(2, 4, 5, 5, dtype=torch.float64)

    def check():
        block.eval()
        with torch.no_grad():
            torch.testing.assert_close(block(x), eager(x, block.conv, block.bn))

    check()
    optimizer = torch.optim.SGD(block.parameters(), lr=0.1)
    block(x.clone().requires_grad_()).square().sum().backward()
    optimizer.step()
    check()
    block.load_state_dict(_load(fastcnn.nn.ConvBNReLU(4, 6, 3, padding=1).double(),
                                *make_modules(4, 6, 3)).state_dict())
    check()
    block.conv.weight.data.mul_(-2)
    check()
    block.bn.running_var.data.mul_(3)
    block.bn.weight.data.add_(1)
    check()
    with torch.no_grad():
        block.bn.running_mean.add_(1)
    check()
    block.bn.eps = 1e-2
    check()
    block.train()
    block(x)
    check()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("kernel_size", [1, 3])
def test_repeated_calls_take_the_same_path_bit_for_bit(backend_device, kernel_size,
                                                       channels_last):
    """A fixed rule, not a measurement, picks the path: calls of the same shape give the
    same bits, in training (outputs and gradients) and in inference. (With another thread
    count ATen's convolution itself may round differently; that our passes do not is
    test_conv_bn_relu_passes.py's test_cpu_reductions_do_not_depend_on_the_thread_count.)"""
    backend, device = backend_device
    conv, bn = make_modules(8, 8, kernel_size, dtype=torch.float32, device=device,
                            padding=kernel_size // 2)
    x = randn(3, 8, 6, 7, device=device, channels_last=channels_last)
    runs = []
    for call in range(3):
        leaf, step_bn = x.clone().requires_grad_(), copy.deepcopy(bn).train()
        conv.weight.grad = None
        z = conv_bn_relu(leaf, conv, step_bn)
        z.backward(_fixed_grad(z))
        with torch.no_grad():
            inference = conv_bn_relu(x, conv, bn.eval())
        runs.append((z, leaf.grad, step_bn.running_var, inference))
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert torch.equal(a, b)


def test_passes_of_each_mode(monkeypatch):
    """Inference without autograd: one pass, over the convolution's own output; a training
    step: the statistics and the normalisation forward, two passes backward."""
    calls = []
    for name in ("channel_affine_act", "batch_norm_stats", "batch_norm_act_backward_reduce",
                 "batch_norm_act_backward"):
        real = getattr(reference, name)
        monkeypatch.setattr(reference, name,
                            lambda *args, name=name, real=real: calls.append(name) or real(*args))
    conv, bn = make_modules(3, 4, 3, dtype=torch.float32)
    x = randn(2, 3, 5, 5)
    with fastcnn.use_backend("reference"):
        with torch.no_grad():
            z = conv_bn_relu(x, conv, bn.eval())
        assert calls == ["channel_affine_act"]
        torch.testing.assert_close(z, eager(x, conv, bn))
        calls.clear()
        z = conv_bn_relu(x.requires_grad_(), conv, bn.train())
        assert calls == ["batch_norm_stats", "channel_affine_act"]
        z.sum().backward()
    assert calls[2:] == ["batch_norm_act_backward_reduce", "batch_norm_act_backward"]


def test_mixed_layouts(backend_device):
    """A channels_last input with an NCHW residual: the kernels read each with its strides."""
    backend, device = backend_device
    conv, bn = make_modules(4, 6, 3, padding=1, device=device)
    x = randn(2, 4, 5, 6, dtype=torch.float64, device=device, channels_last=True)
    residual = randn(2, 6, 5, 6, dtype=torch.float64, device=device)
    check_against_eager(x, conv, bn, True, residual, backend=backend, device=device)


def _assert_close_in_low_precision(actual, expected, dtype):
    """A float16/bfloat16 convolution's output against float64. Its rounding error scales
    with the terms it sums, not with the output, which cancellation can make much smaller
    than they are: each element may be off by the dtype's relative tolerance of the
    tensor's largest value."""
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


def _gradient_penalty(fn, x, conv, bn, relu, residual):
    """fn's first derivative w.r.t. x and the residual (create_graph=True), and the
    gradients of its squared sum w.r.t. x, the residual, conv.weight and bn.weight, on
    copies of the modules."""
    c, b = copy.deepcopy(conv), copy.deepcopy(bn)
    leaves = [t.detach().clone().requires_grad_() for t in (x, residual) if t is not None]
    z = fn(leaves[0], c, b, relu, leaves[1] if len(leaves) > 1 else None)
    first = torch.autograd.grad(z, leaves, _fixed_grad(z), create_graph=True)
    sum(g.pow(2).sum() for g in first).backward()
    second = [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves]  # None: 0
    return (*(g.detach() for g in first), *second, c.weight.grad, b.weight.grad)


@pytest.mark.parametrize("relu, with_residual", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_second_derivatives_match_eager(backend_device, train, relu, with_residual):
    """create_graph=True (a gradient penalty): second derivatives as PyTorch's."""
    backend, device = backend_device
    conv, bn = make_modules(3, 4, 3, padding=1, device=device)
    bn.train(train)
    x = randn(2, 3, 4, 4, dtype=torch.float64, device=device)
    residual = randn(2, 4, 4, 4, dtype=torch.float64, device=device) if with_residual else None
    penalties = [_gradient_penalty(fn, x, conv, bn, relu, residual)
                 for fn in (conv_bn_relu, eager)]
    for ours, expected in zip(*penalties):
        assert_close_to_reference(ours, expected, torch.float64, backend, device)


@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_autocast_matches_eager(train, with_residual):
    """Under autocast the convolution runs in bfloat16 as eager's does (float32 modules and
    input), and a float32 residual is added in float32: eager's dtypes, its numbers to
    bfloat16's tolerance, and float32 gradients."""
    conv, bn = make_modules(4, 6, 3, dtype=torch.float32, padding=1)
    x = randn(2, 4, 5, 6)
    residual = randn(2, 6, 5, 6) if with_residual else None
    # Near the ReLU's kink bfloat16's rounding picks the mask: no gradient flows from there.
    with torch.no_grad():
        ref_conv, ref_bn = copy.deepcopy(conv).double(), copy.deepcopy(bn).double().train(train)
        pre_activation = eager(x.double(), ref_conv, ref_bn, False,
                               None if residual is None else residual.double())
    results = []
    for fn in (conv_bn_relu, eager):
        c, b = copy.deepcopy(conv), copy.deepcopy(bn).train(train)
        leaf = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            z = fn(leaf, c, b, True, residual)
        grad = _fixed_grad(z).float() * (pre_activation.abs() > 0.1)
        z.float().backward(grad)
        results.append((z, leaf.grad, c.weight.grad, b.running_mean))
    rtol = tolerance(torch.bfloat16)["rtol"]
    for i, (ours, expected) in enumerate(zip(*results)):
        assert ours.dtype == expected.dtype
        scale = expected.abs().max().item()
        # the output to bfloat16's rounding; gradients summed over the batch, twice that
        torch.testing.assert_close(ours.double() / scale, expected.double() / scale, rtol=0,
                                   atol=(2 if i == 0 else 4) * rtol)


def test_saved_bytes_are_not_more_than_eager():
    """Bytes kept for backward (each storage once), in training mode and in eval mode with
    gradients (a frozen BatchNorm), against eager's Conv2d -> BatchNorm2d -> ReLU: the
    BatchNorm and ReLU outputs are not kept."""

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
    output_bytes = 4 * 32 * 12 * 12 * 4
    channel_vector_bytes = 32 * 4
    for train, relu, with_residual, channels_last in itertools.product(
            (True, False), (True, False), (False, True), (False, True)):
        bn.train(train)
        x = randn(4, 16, 12, 12, channels_last=channels_last).requires_grad_()
        residual = randn(4, 32, 12, 12).requires_grad_() if with_residual else None
        ours = saved_bytes(conv_bn_relu, x, conv, bn, relu, residual)
        theirs = saved_bytes(eager, x, conv, bn, relu, residual)
        # in eval mode BatchNorm's scale and shift are new vectors (eager keeps its buffers)
        vectors = 0 if train else 2 * channel_vector_bytes
        assert ours <= theirs + vectors, (train, relu, with_residual, channels_last, ours,
                                          theirs)
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
    """Inference in float32 and bfloat16, NCHW and channels_last:
    torch.compile(fullgraph=True) traces it, with eager's numbers."""
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


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_empty_batch(backend_device, train):
    """N = 0: an empty output, zero gradients, running statistics left alone, as eager."""
    backend, device = backend_device
    conv, bn = make_modules(3, 4, 3, device=device)
    bn.train(train)
    x = randn(0, 3, 5, 5, dtype=torch.float64, device=device)
    (ours, stats), (theirs, their_stats) = run_both(x, conv, bn, train=train)
    assert ours[0][0].shape == (0, 4, 3, 3) and ours[0][1].shape == x.shape
    for a, b in (*zip(ours[0], theirs[0]), *zip(stats, their_stats)):
        assert torch.equal(a.cpu(), b.cpu())
    assert bn.num_batches_tracked.item() == int(train)


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
        (lambda: conv_bn_relu([[1.0]], *_modules()), TypeError, ["x", "Tensor"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), _modules()[0], nn.BatchNorm2d(5)),
         ValueError, ["bn.weight", "num_features", "channel"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), nn.Linear(4, 6), nn.BatchNorm2d(6)),
         TypeError, ["conv", "Conv2d"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), _modules()[0], nn.LayerNorm(6)),
         TypeError, ["bn", "BatchNorm2d"]),
        (lambda: conv_bn_relu(torch.randn(2, 4, 6, 6), *_modules(), relu="yes"), TypeError,
         ["relu", "bool"]),
        (lambda: conv_bn_relu(torch.randn(1, 4, 3, 3), *_modules()), ValueError,
         ["more than 1 value per channel"]),
        (lambda: conv_bn_relu(torch.randn(1, 4, 3, 3), _modules()[0],
                              nn.BatchNorm2d(6, track_running_stats=False).eval()), ValueError,
         ["more than 1 value per channel"]),
    ],
    ids=["not-a-tensor", "bn-features", "not-a-conv", "not-a-batchnorm", "relu-type",
         "one-value-per-channel", "one-value-without-running-stats"])
def test_bad_input_names_the_argument(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value)
