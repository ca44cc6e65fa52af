"""InceptionConcat against torch.cat of its branches' outputs (the same modules: bit for
bit) and against eager PyTorch modules (float64), forward and backward, on every backend;
the forward runs no torch.cat and copies no output."""

import copy

import pytest
import torch
from helpers import assert_close_to_reference, randn, randomise_batch_norms
from torch import nn

import fastcnn
from fastcnn.nn import ConvBNReLU, ConvReLU, InceptionConcat, MaxPool2d


def make_inception(cin=6, dtype=torch.float64, device="cpu"):
    """An Inception module of every kind of branch fastcnn writes in place: Conv-BN-ReLU,
    a Sequential ending in one, the original GoogLeNet's Conv + ReLU with a real 5x5, a
    max-pool followed by a 1x1 projection, and a max-pool alone."""
    module = InceptionConcat([
        ConvBNReLU(cin, 4, 1),
        nn.Sequential(ConvBNReLU(cin, 3, 1), ConvBNReLU(3, 5, 3, padding=1)),
        nn.Sequential(ConvReLU(cin, 2, 1), ConvReLU(2, 3, 5, padding=2)),
        nn.Sequential(MaxPool2d(3, 1, 1, ceil_mode=True), ConvBNReLU(cin, 2, 1)),
        MaxPool2d(3, 1, 1),
    ])
    return randomise_batch_norms(module).to(dtype=dtype, device=device)


def eager_twin(module):
    """The same layers as plain PyTorch modules (a copy of the parameters)."""
    if isinstance(module, ConvBNReLU):
        return nn.Sequential(copy.deepcopy(module.conv), copy.deepcopy(module.bn), nn.ReLU())
    if isinstance(module, ConvReLU):
        conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                         module.stride, module.padding, module.dilation, module.groups)
        conv.load_state_dict(module.state_dict())
        return nn.Sequential(conv.to(module.weight), nn.ReLU())
    if isinstance(module, MaxPool2d):
        return nn.MaxPool2d(module.kernel_size, module.stride, module.padding, module.dilation,
                            ceil_mode=module.ceil_mode)
    return nn.Sequential(*(eager_twin(m) for m in module))


def run(fn, module, x, grad=None):
    """fn(x) and its backward from grad (or a fixed random one): the output, x's gradient,
    the parameters' gradients and the running statistics."""
    leaf = x.detach().clone().requires_grad_()
    z = fn(leaf)
    if grad is None:
        grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64).to(z)
    z.backward(grad)
    params = [p.grad for p in module.parameters()]
    stats = [b for b in module.buffers() if b.is_floating_point()]
    return [z, leaf.grad, *params, *stats]


def cat_of_branches(module):
    return lambda x: torch.cat([branch(x) for branch in module.branches], 1)


def check_same_bits_as_torch_cat(dtype, channels_last, train, device="cpu"):
    """Written in place or concatenated afterwards, the same numbers: outputs, gradients
    and running statistics equal bit for bit."""
    module = make_inception(dtype=dtype, device=device).train(train)
    twin = copy.deepcopy(module)
    x = randn(2, 6, 5, 4, dtype=dtype, device=device, channels_last=channels_last)
    ours = run(module, module, x)
    theirs = run(cat_of_branches(twin), twin, x)
    assert ours[0].shape == (2, 20, 5, 4) and ours[0].dtype == dtype
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.equal(module(x), cat_of_branches(twin)(x))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_same_bits_as_torch_cat_of_the_branches(backend_device, channels_last, train):
    check_same_bits_as_torch_cat(torch.float32, channels_last, train, backend_device[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_same_bits_as_torch_cat_in_every_dtype(dtype, channels_last, train):
    check_same_bits_as_torch_cat(dtype, channels_last, train)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_matches_eager_modules_in_float64(backend_device, channels_last, train):
    backend, device = backend_device
    module = make_inception(device=device).train(train)
    twin = eager_twin(module.branches).train(train)
    x = randn(2, 6, 5, 4, device=device, dtype=torch.float64, channels_last=channels_last)
    ours = run(module, module, x)
    theirs = run(lambda x: torch.cat([b(x) for b in twin], 1), twin, x)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert_close_to_reference(a, b, torch.float64, backend, device)
    assert ours[0].is_contiguous(memory_format=torch.channels_last) == channels_last
    with torch.no_grad():
        expected = torch.cat([b(x) for b in twin], 1)
        assert_close_to_reference(module(x), expected, torch.float64, backend, device)


def test_a_gradient_reaches_every_branch():
    module = make_inception().train()
    x = randn(2, 6, 5, 4, dtype=torch.float64).requires_grad_()
    module(x).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_backward_hands_each_branch_a_view_of_the_gradient():
    """What autograd passes to each branch's last node is a slice of the output's gradient
    itself, not a copy."""
    module = make_inception().train()
    x = randn(2, 6, 5, 4, dtype=torch.float64).requires_grad_()
    z = module(x)
    received = {}
    for i, (node, _) in enumerate(z.grad_fn.next_functions):
        node.register_prehook(lambda grads, i=i: received.update({i: grads[0]}))
    grad = torch.randn_like(z)
    z.backward(grad)
    received = [received[i] for i in sorted(received)]
    assert [g.shape[1] for g in received] == [4, 5, 3, 2, 6]
    offset = 0
    for g in received:
        assert g.untyped_storage().data_ptr() == grad.untyped_storage().data_ptr()
        assert g.data_ptr() == grad[:, offset:].data_ptr()
        offset += g.shape[1]


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "training"])
def test_forward_runs_no_cat_and_copies_no_output(grad):
    """torch.profiler sees no aten::cat and no copy the size of the output or of a branch's
    output when every branch ends in a fastcnn layer."""
    module = make_inception(dtype=torch.float32).train(grad)
    x = randn(2, 6, 5, 4).requires_grad_(grad)
    sizes = {(2, 20, 5, 4), (2, 4, 5, 4), (2, 5, 5, 4), (2, 3, 5, 4), (2, 2, 5, 4),
             (2, 6, 5, 4)}
    with torch.set_grad_enabled(grad), torch.profiler.profile(record_shapes=True) as prof:
        module(x)
    names = [e.name for e in prof.events()]
    assert "aten::conv2d" in names or "aten::convolution" in names  # the profiler saw ops
    assert "aten::cat" not in names
    copies = [e for e in prof.events() if e.name in ("aten::copy_", "aten::clone")
              and any(tuple(s) in sizes for s in e.input_shapes)]
    assert not copies, [(e.name, e.input_shapes) for e in copies]


def test_other_branches_are_copied_into_their_slice(backend_device):
    """A branch that ends in anything but a fastcnn layer (an activation, a module with
    hooks) runs as it is: the same numbers as torch.cat, hooks called."""
    _, device = backend_device
    calls = []
    hooked = ConvBNReLU(6, 3, 1)
    hooked.register_forward_hook(lambda m, args, out: calls.append(out.shape))
    module = randomise_batch_norms(InceptionConcat([
        nn.Sequential(nn.Conv2d(6, 3, 1), nn.Tanh()),
        hooked,
        nn.Sequential(ConvBNReLU(6, 2, 1), nn.Sequential(nn.Identity())),
        nn.MaxPool2d(3, 1, 1),
    ])).double().to(device)
    twin = copy.deepcopy(module)
    x = randn(2, 6, 4, 4, dtype=torch.float64, device=device)
    for a, b in zip(run(module, module, x), run(cat_of_branches(twin), twin, x)):
        assert torch.equal(a, b)
    assert calls == [(2, 3, 4, 4)] * 2


def test_branches_that_do_not_fit_get_torch_cats_answer():
    """Outputs that torch.cat promotes (float32 and float64) or refuses (other heights)."""
    x = randn(2, 6, 4, 4)
    mixed = InceptionConcat([ConvBNReLU(6, 2, 1),
                             nn.Sequential(_ToDouble(), ConvBNReLU(6, 2, 1).double())]).eval()
    with torch.no_grad():
        y = mixed(x)
        expected = torch.cat([b(x) for b in mixed.branches], 1)
    assert y.dtype == torch.float64 and torch.equal(y, expected)
    strided = InceptionConcat([ConvBNReLU(6, 2, 1), ConvBNReLU(6, 2, 1, stride=2)])
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        strided(x)
    with pytest.raises(ValueError, match="at least one branch"):
        InceptionConcat([])


class _ToDouble(nn.Module):
    def forward(self, x):
        return x.double()


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_torch_compile_fullgraph(train):
    module = make_inception(dtype=torch.float32).train(train)
    twin = copy.deepcopy(module)
    x = randn(2, 6, 5, 4)
    expected = run(cat_of_branches(twin), twin, x)
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    actual = run(compiled, module, x)
    for a, b in zip(actual, expected):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), cat_of_branches(twin)(x))


def test_state_dict_keys_are_the_branches():
    module = InceptionConcat([ConvBNReLU(3, 2, 1), nn.Sequential(ConvReLU(3, 2, 1))])
    assert list(module.state_dict()) == [
        "branches.0.conv.weight", "branches.0.bn.weight", "branches.0.bn.bias",
        "branches.0.bn.running_mean", "branches.0.bn.running_var",
        "branches.0.bn.num_batches_tracked", "branches.1.0.weight", "branches.1.0.bias"]
    assert isinstance(fastcnn.nn.ConvReLU(3, 2, 1), nn.Conv2d)
