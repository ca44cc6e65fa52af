"""DenseBlock, DenseLayer and Transition against torchvision's _DenseBlock, _DenseLayer and
_Transition with the same weights (float64, every backend), and what the block keeps for
backward: its one feature buffer, not a concatenation per layer."""

import copy

import pytest
import torch
from helpers import assert_close_to_reference, randn, randomise_batch_norms, tolerance
from torchvision.models.densenet import _DenseBlock, _DenseLayer, _Transition

from fastcnn.nn import DenseBlock, DenseLayer, Transition


def randomised(module, dtype=torch.float64, device="cpu"):
    return randomise_batch_norms(module).to(dtype=dtype, device=device)


def pair(theirs, ours, dtype=torch.float64, device="cpu"):
    """(ours, theirs) with torchvision's random weights loaded into ours (strict)."""
    theirs = randomised(theirs, dtype, device)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours.to(dtype=dtype, device=device), theirs


def run(module, x):
    """module(x), x's gradient, the parameters' gradients and the running statistics."""
    leaf = x.detach().clone().requires_grad_()
    z = module(leaf)
    z.backward(torch.randn(z.shape, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64).to(z))
    return [z, leaf.grad, *(p.grad for p in module.parameters()),
            *(b for b in module.buffers() if b.is_floating_point())]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_block_matches_torchvision(backend_device, train, channels_last):
    backend, device = backend_device
    ours, theirs = pair(_DenseBlock(3, 5, 2, 3, 0.0), DenseBlock(3, 5, 2, 3), device=device)
    ours.train(train), theirs.train(train)
    x = randn(2, 5, 4, 3, dtype=torch.float64, device=device, channels_last=channels_last)
    for a, b in zip(run(ours, x), run(theirs, x), strict=True):
        assert_close_to_reference(a, b, torch.float64, backend, device)
    with torch.no_grad():
        y = ours(x)
        assert_close_to_reference(y, theirs(x), torch.float64, backend, device)
    assert y.shape == (2, 14, 4, 3)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_against_float64(dtype):
    """The output to the dtype's rounding, relative to its largest value (BatchNorm, ReLU
    and two convolutions per layer round in turn)."""
    ours, theirs = pair(_DenseBlock(2, 6, 2, 4, 0.0), DenseBlock(2, 6, 2, 4))
    ours.to(dtype)
    x = randn(2, 6, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        for train in (True, False):
            y, expected = ours.train(train)(x.to(dtype)), theirs.train(train)(x)
            assert y.dtype == dtype
            scale = expected.abs().max().item()
            atol = 4 * tolerance(dtype, convolution=True)["rtol"]
            torch.testing.assert_close(y.double() / scale, expected / scale, rtol=0, atol=atol)


def test_layer_takes_a_tensor_or_a_list_as_torchvisions():
    ours, theirs = pair(_DenseLayer(6, 3, 2, 0.0), DenseLayer(6, 3, 2))
    x = randn(2, 6, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours([x[:, :2], x[:, 2:]]), theirs([x[:, :2], x[:, 2:]]))


def test_transition_matches_torchvision(backend_device):
    backend, device = backend_device
    ours, theirs = pair(_Transition(6, 3), Transition(6, 3), device=device)
    x = randn(2, 6, 4, 6, dtype=torch.float64, device=device)
    for train in (True, False):
        for a, b in zip(run(ours.train(train), x), run(theirs.train(train), x), strict=True):
            assert_close_to_reference(a, b, torch.float64, backend, device)


def test_dropout_draws_as_torchvision():
    ours, theirs = pair(_DenseBlock(2, 4, 2, 3, 0.5), DenseBlock(2, 4, 2, 3, drop_rate=0.5))
    x = randn(2, 4, 3, 3, dtype=torch.float64)
    results = []
    for module in (ours, theirs):
        torch.manual_seed(7)
        results.append(run(module, x))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b)


def _saved_bytes(module, x):
    """Bytes kept for backward by a training step of module, each storage once, without
    the parameters."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return sum(storages.values())


def test_block_keeps_its_buffer_and_each_bottleneck():
    """Saved for backward: the block's one buffer (its output), each layer's bottleneck (the
    1x1 convolution's output) and per-channel vectors: linear in depth. torchvision keeps
    a concatenation and its normalised copy per layer, quadratic in depth."""
    growth, bn_size, c0, n, hw = 4, 4, 8, 2, 6 * 6
    for layers in (2, 4, 8):
        ours, theirs = pair(_DenseBlock(layers, c0, bn_size, growth, 0.0),
                            DenseBlock(layers, c0, bn_size, growth), dtype=torch.float32)
        x = randn(n, c0, 6, 6).requires_grad_()
        output = n * (c0 + layers * growth) * hw * 4
        bottlenecks = layers * n * bn_size * growth * hw * 4
        vectors = layers * 2 * 8 * (c0 + layers * growth + bn_size * growth) * 4
        assert _saved_bytes(ours, x) <= output + bottlenecks + vectors
        assert _saved_bytes(theirs, x) > 2 * (output + bottlenecks)


def test_changing_the_output_in_place_before_backward_is_an_error():
    block = DenseBlock(2, 3, 2, 2).double()
    x = randn(2, 3, 4, 4, dtype=torch.float64).requires_grad_()
    y = block(x)
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_forward_runs_no_cat(backend_device):
    _, device = backend_device
    block = DenseBlock(3, 4, 2, 2).to(device)
    x = randn(2, 4, 4, 4, device=device).requires_grad_()
    with torch.profiler.profile() as prof:
        block(x).sum().backward()
    names = {e.name for e in prof.events()}
    assert "aten::convolution" in names and "aten::cat" not in names


def test_gradcheck():
    block = DenseBlock(2, 3, 2, 2).double()
    x = randn(2, 3, 3, 3, dtype=torch.float64).requires_grad_()
    for train in (True, False):
        block.train(train)
        assert torch.autograd.gradcheck(block, (x,))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_torch_compile_fullgraph(train):
    ours, theirs = pair(_DenseBlock(2, 4, 2, 3, 0.0), DenseBlock(2, 4, 2, 3),
                        dtype=torch.float32)
    ours.train(train), theirs.train(train)
    twin = copy.deepcopy(ours)
    x = randn(2, 4, 5, 5)
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    for a, b in zip(run(compiled, x), run(twin, x), strict=True):
        torch.testing.assert_close(a, b)


def test_autocast_matches_torchvision():
    """Under bfloat16 autocast: torchvision's dtypes; its output and running statistics to
    bfloat16's rounding; its gradients up to the ReLU masks that rounding may flip (by
    norm)."""
    ours, theirs = pair(_DenseBlock(2, 4, 2, 3, 0.0), DenseBlock(2, 4, 2, 3),
                        dtype=torch.float32)
    x = randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        results = [run(m, x) for m in (ours, theirs)]
    rtol = tolerance(torch.bfloat16)["rtol"]
    for i, (a, b) in enumerate(zip(*results, strict=True)):
        assert a.dtype == b.dtype
        if i == 0 or i >= 2 + len(list(ours.parameters())):  # output, running statistics
            scale = b.abs().max().item()
            torch.testing.assert_close(a / scale, b / scale, rtol=0, atol=2 * rtol)
        else:
            assert (a - b).double().norm() <= 5 * rtol * b.double().norm()
