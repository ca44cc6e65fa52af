"""bn_relu (BatchNorm2d -> ReLU) and bn_relu_conv (BatchNorm2d -> ReLU -> Conv2d, the
normalised tensor recomputed in backward) against eager PyTorch in float64, on every
backend; what each keeps for backward."""

import copy

import pytest
import torch
from helpers import assert_close_to_reference, randn, randomise_batch_norms, tolerance
from torch import nn

from fastcnn.functional import bn_relu, bn_relu_conv


def make_bn(c, affine=True, dtype=torch.float64, device="cpu"):
    return randomise_batch_norms(nn.BatchNorm2d(c, affine=affine)).to(dtype=dtype, device=device)


def eager(x, bn, conv):
    x = torch.cat(x, 1) if isinstance(x, list) else x
    return conv(torch.relu(bn(x)))


def run(fn, x, bn, conv):
    """fn's output, the gradients of x (each piece) and of every parameter, and bn's
    running statistics, from a fixed output gradient."""
    bn, conv = copy.deepcopy(bn), copy.deepcopy(conv)
    leaves = [t.detach().clone().requires_grad_() for t in (x if isinstance(x, list) else [x])]
    y = fn(leaves if isinstance(x, list) else leaves[0], bn, conv)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64).to(y))
    params = [p.grad for p in (*bn.parameters(), *conv.parameters())]
    return [y, *(t.grad for t in leaves), *params, bn.running_mean, bn.running_var]


CONVS = {
    "1x1": dict(kernel_size=1, bias=False),
    "3x3-bias": dict(kernel_size=3, padding=1, bias=True),
    "strided-groups": dict(kernel_size=3, stride=2, padding=1, groups=2, bias=False),
}
MODES = {"train": (True, True), "eval-frozen": (False, True), "train-no-affine": (True, False)}


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("conv_kwargs", CONVS.values(), ids=CONVS.keys())
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bn_relu_conv_matches_eager(backend_device, conv_kwargs, mode, channels_last):
    backend, device = backend_device
    train, affine = mode
    bn = make_bn(6, affine, device=device).train(train)
    conv = nn.Conv2d(6, 4, **conv_kwargs).double().to(device)
    x = randn(3, 6, 5, 4, dtype=torch.float64, device=device, channels_last=channels_last)
    for a, b in zip(run(bn_relu_conv, x, bn, conv), run(eager, x, bn, conv), strict=True):
        assert_close_to_reference(a, b, torch.float64, backend, device)


@pytest.mark.parametrize("adjacent", [True, False], ids=["slices-of-one-buffer", "apart"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_list_of_pieces_is_their_concatenation(backend_device, adjacent, channels_last):
    """A DenseNet layer's inputs: slices of one buffer side by side are read in place, other
    lists concatenated; each piece gets its gradient."""
    backend, device = backend_device
    bn, conv = make_bn(7, device=device), nn.Conv2d(7, 3, 1).double().to(device)
    whole = randn(2, 9, 4, 3, dtype=torch.float64, device=device, channels_last=channels_last)
    pieces = [whole[:, :2], whole[:, 2:6], whole[:, 6:7]] if adjacent else \
        [whole[:, :2], whole[:, 3:7], whole[:, 8:9]]
    for a, b in zip(run(bn_relu_conv, pieces, bn, conv), run(eager, pieces, bn, conv),
                    strict=True):
        assert_close_to_reference(a, b, torch.float64, backend, device)


def test_adjacent_pieces_are_read_in_place():
    from fastcnn.functional.bn_relu_conv import adjacent_view

    whole = randn(2, 9, 4, 3)
    view = adjacent_view([whole[:, :2], whole[:, 2:6]])
    assert view.data_ptr() == whole.data_ptr() and torch.equal(view, whole[:, :6])
    assert adjacent_view([whole[:, :2], whole[:, 3:6]]) is None
    assert adjacent_view([whole[:, 2:6], whole[:, :2]]) is None
    assert adjacent_view([whole[:1, :2], whole[1:, 2:6]]) is None
    cl = whole.to(memory_format=torch.channels_last)
    assert torch.equal(adjacent_view([cl[:, :4], cl[:, 4:]]), whole)


def test_keeps_its_input_not_the_normalised_tensor():
    """Saved for backward (each storage once): the input, the convolution's weight and
    per-channel vectors; eager keeps relu(bn(x)) too."""
    def saved_bytes(fn, x, bn, conv):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x, bn, conv)
        return sum(storages.values())

    bn, conv = make_bn(32, dtype=torch.float32), nn.Conv2d(32, 16, 1, bias=False)
    x = randn(4, 32, 8, 8).requires_grad_()
    feature_map, weight, vectors = x.numel() * 4, conv.weight.numel() * 4, 8 * 32 * 4
    for train in (True, False):
        bn.train(train)
        assert saved_bytes(bn_relu_conv, x, bn, conv) <= feature_map + weight + vectors
        assert saved_bytes(eager, x, bn, conv) >= 2 * feature_map


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval-frozen"])
def test_low_precision_against_float64(dtype, train):
    """The output to the dtype's rounding relative to its largest value; the gradients,
    which the ReLU masks that rounding may flip change here and there, by norm."""
    bn = make_bn(6, dtype=dtype).train(train)
    conv = nn.Conv2d(6, 4, 3, padding=1).to(dtype)
    x = randn(2, 6, 5, 5, dtype=dtype, channels_last=True)
    ours = run(bn_relu_conv, x, bn, conv)
    theirs = run(eager, x.double(), bn.double(), conv.double())
    rtol = 4 * tolerance(dtype, convolution=True)["rtol"]
    assert ours[0].dtype == dtype
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        a, b = a.double(), b.double()
        if i == 0 or i >= len(ours) - 2:  # the output, the running statistics
            scale = b.abs().max().item()
            torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=rtol)
        else:
            assert (a - b).norm() <= 4 * rtol * b.norm(), i


class _Layer(nn.Module):
    """bn_relu_conv of two pieces of x, for functional_call."""

    def __init__(self, bn, conv):
        super().__init__()
        self.bn, self.conv = bn, conv

    def forward(self, x):
        return bn_relu_conv([x[:, :1], x[:, 1:]], self.bn, self.conv)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_gradcheck(backend_device, train):
    _, device = backend_device
    layer = _Layer(make_bn(4, device=device).train(train),
                   nn.Conv2d(4, 3, 3, padding=1, bias=True).double().to(device))
    names = ("bn.weight", "bn.bias", "conv.weight", "conv.bias")
    params = [layer.get_parameter(n).detach().clone().requires_grad_() for n in names]
    x = randn(2, 4, 3, 3, dtype=torch.float64, device=device).requires_grad_()

    def f(x, *params):
        return torch.func.functional_call(layer, dict(zip(names, params)), (x,))

    # (Triton's interpreter runs each of the many perturbed calls slowly: fast mode there)
    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=backend_device[0] == "triton")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_second_derivatives_match_eager(train):
    bn, conv = make_bn(4).train(train), nn.Conv2d(4, 3, 3, padding=1).double()
    x = randn(2, 4, 4, 4, dtype=torch.float64)
    results = []
    for fn in (bn_relu_conv, eager):
        b, c = copy.deepcopy(bn), copy.deepcopy(conv)
        leaf = x.clone().requires_grad_()
        y = fn(leaf, b, c)
        (g,) = torch.autograd.grad(y.square().sum(), leaf, create_graph=True)
        g.square().sum().backward()
        results.append((g.detach(), leaf.grad, c.weight.grad, b.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


FALLBACKS = {
    "reflect-padding": lambda: nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect"),
    "same-padding": lambda: nn.Conv2d(4, 3, 3, padding="same"),
    "hooked": lambda: _hooked(nn.Conv2d(4, 3, 1)),
    "batchnorm-subclass": None,
}


def _hooked(conv):
    conv.register_forward_hook(lambda m, args, out: out * 2)
    return conv


@pytest.mark.parametrize("case", FALLBACKS, ids=FALLBACKS.keys())
def test_what_the_fused_path_does_not_take_runs_as_eager(case):
    bn = make_bn(4)
    conv = (FALLBACKS[case] or (lambda: nn.Conv2d(4, 3, 1)))().double()
    if case == "batchnorm-subclass":
        bn = _ScaledBatchNorm(4).double()
    x = randn(2, 4, 5, 5, dtype=torch.float64)
    for a, b in zip(run(bn_relu_conv, x, bn, conv), run(eager, x, bn, conv), strict=True):
        torch.testing.assert_close(a, b)


class _ScaledBatchNorm(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x) * 0.5


def test_autocast_matches_eager():
    bn, conv = make_bn(4, dtype=torch.float32), nn.Conv2d(4, 3, 3, padding=1)
    x = randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = run(bn_relu_conv, x, bn, conv), run(eager, x, bn, conv)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_bn_relu_matches_eager_and_leaves_its_input(backend_device, train, channels_last):
    backend, device = backend_device
    bn = make_bn(5, device=device).train(train)
    x = randn(2, 5, 4, 3, dtype=torch.float64, device=device, channels_last=channels_last)
    ours = run(lambda x, b, c: bn_relu(x, b), x, bn, nn.Identity())
    theirs = run(lambda x, b, c: torch.relu(b(x)), x, bn, nn.Identity())
    for a, b in zip(ours, theirs, strict=True):
        assert_close_to_reference(a, b, torch.float64, backend, device)
    before = x.clone()
    with torch.no_grad():
        y = bn_relu(x, bn.eval())
    assert torch.equal(x, before) and y.data_ptr() != x.data_ptr()
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_torch_compile_fullgraph(train):
    bn, conv = make_bn(6, dtype=torch.float32).train(train), nn.Conv2d(6, 4, 3, padding=1)
    x = randn(2, 6, 5, 5)
    expected = run(eager, x, bn, conv)
    torch._dynamo.reset()
    compiled = torch.compile(bn_relu_conv, fullgraph=True)
    for a, b in zip(run(compiled, x, bn, conv), expected, strict=True):
        torch.testing.assert_close(a, b)


BAD = {
    "x-not-tensor": (lambda bn, conv: bn_relu_conv(3, bn, conv), TypeError, "x must be"),
    "x-empty-list": (lambda bn, conv: bn_relu_conv([], bn, conv), TypeError, "non-empty"),
    "x-list-item": (lambda bn, conv: bn_relu_conv([randn(1, 2, 3, 3), "a"], bn, conv),
                    TypeError, r"x\[1\] must be a torch.Tensor"),
    "bn-not-batchnorm": (lambda bn, conv: bn_relu_conv(randn(1, 4, 3, 3), conv, conv),
                         TypeError, "bn must be"),
    "conv-not-conv": (lambda bn, conv: bn_relu_conv(randn(1, 4, 3, 3), bn, bn), TypeError,
                      "conv must be"),
    "bn-relu-x-not-tensor": (lambda bn, conv: bn_relu([1.0], bn), TypeError, "x must be"),
    "bn-relu-bn-none": (lambda bn, conv: bn_relu(randn(1, 4, 3, 3), None), TypeError,
                        "bn must be a torch.nn.BatchNorm2d, got NoneType"),
    "bn-relu-relu-not-bool": (lambda bn, conv: bn_relu(randn(1, 4, 3, 3), bn, relu=1),
                              TypeError, "relu must be a bool"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_bad_input_names_the_argument(case):
    call, error, words = case
    with pytest.raises(error, match=words):
        call(nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
