"""fastcnn.optimize's contract on small models written here: what it swaps and reports,
the same numbers in eval and training mode, state_dicts both ways, inplace and restore,
models fx cannot trace, hooks, torch.compile, autocast, channels_last, SyncBatchNorm,
DistributedDataParallel, example_input, and bad arguments."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import check_compiled_model_matches_eager, randn, randomise_batch_norms, tolerance

import fastcnn
from fastcnn.convert import fused


class Block(nn.Module):
    """A ResNet basic block written by a user: module ReLU, functional ReLU, residual."""

    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class Net(nn.Module):
    def __init__(self, c=8, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
                                  nn.LocalResponseNorm(3))
        self.block = Block(c)
        self.pre = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = self.pre(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


EXPECTED = [
    ("stem", "0 -> 1 -> 2", "fastcnn conv_bn_relu"),
    ("stem.3", "MaxPool2d", "fastcnn.nn.MaxPool2d"),
    ("stem.4", "LocalResponseNorm", "fastcnn.nn.LocalResponseNorm"),
    ("block", "conv1 -> bn1 -> relu()", "fastcnn conv_bn_relu"),
    ("block", "conv2 -> bn2 -> + -> relu", "fastcnn conv_bn_relu + residual"),
    ("pre", "0 -> 1 -> 2", "fastcnn bn_relu_conv"),
    ("pool", "AdaptiveAvgPool2d", "fastcnn.nn.GlobalAvgPool2d"),
]


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return randomise_batch_norms(Net(), scale=0.5).to(dtype)


def _step(net, x):
    """One SGD step; (loss, gradients, state_dict after)."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = F.cross_entropy(net(x), torch.tensor([0, 3, 1]))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in net.named_parameters()}
    optimizer.step()
    return loss.detach(), grads, copy.deepcopy(net.state_dict())


def _rows(report):
    return [(s.path, s.source, s.target) for s in report.swapped]


def test_swaps_reported_and_numbers_equal_in_both_modes():
    net = _net()
    optimized = fastcnn.optimize(net)
    assert _rows(optimized.fastcnn_report) == EXPECTED
    assert optimized.fastcnn_report.left == []
    assert "fastcnn conv_bn_relu + residual" in str(optimized.fastcnn_report)
    x = randn(3, 3, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(optimized.eval()(x), net.eval()(x))
        # a rewritten forward takes its arguments by name too
        torch.testing.assert_close(optimized.block(x=optimized.stem(x)), net.block(net.stem(x)))
    expected, got = _step(net.train(), x), _step(optimized.train(), x)
    torch.testing.assert_close(got, expected)  # loss, every gradient, parameters, statistics
    # the original is untouched
    assert not hasattr(net, "fastcnn_report")
    assert all(not hasattr(m, "fastcnn_original_class") for m in net.modules())


def test_state_dict_both_ways_and_inplace_shares_parameters():
    net = _net()
    parameters = list(net.parameters())
    optimized = fastcnn.optimize(net, inplace=True)
    assert optimized is net
    assert all(a is b for a, b in zip(parameters, optimized.parameters()))
    other = _net()
    other.load_state_dict(optimized.state_dict(), strict=True)
    optimized.load_state_dict(_net().state_dict(), strict=True)


def test_restore_gives_back_the_original_classes():
    net = _net()
    classes = {path: type(m) for path, m in net.named_modules()}
    x = randn(3, 3, 12, 12, dtype=torch.float64)
    expected = net.eval()(x)
    fastcnn.optimize(net, inplace=True)
    assert any(type(m) is not classes[p] for p, m in net.named_modules())
    assert fastcnn.restore(net) is net
    assert {path: type(m) for path, m in net.named_modules()} == classes
    assert not hasattr(net, "fastcnn_report")
    assert not hasattr(net.pool, "flatten")
    torch.testing.assert_close(net(x), expected)


class CountsCalls(nn.Module):
    """A forward that updates a buffer in place, as BatchNorm's own does."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.extra = nn.BatchNorm2d(4)

    def forward(self, x):
        self.calls.add_(1)
        return self.extra(self.body(x))


def test_conversion_changes_no_state():
    """Tracing a forward must not run its in-place updates of buffers."""
    for net in (_net().train(), CountsCalls().train()):
        state = copy.deepcopy(net.state_dict())
        fastcnn.optimize(net, inplace=True)
        torch.testing.assert_close(net.state_dict(), state, rtol=0, atol=0)
    net(randn(2, 3, 4, 4))
    assert net.calls.item() == 1 and net.body[1].num_batches_tracked.item() == 1


def test_deepcopy_and_optimize_twice():
    optimized = fastcnn.optimize(_net())
    again = fastcnn.optimize(copy.deepcopy(optimized))
    assert again.fastcnn_report.swapped == []  # converted already
    x = randn(3, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(again.eval()(x), optimized.eval()(x))


class Untraceable(nn.Module):
    """A forward with control flow on a tensor's values, which torch.fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.body = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = -y
        return self.pool(self.body(y))


def test_untraceable_model_converted_by_structure():
    torch.manual_seed(0)
    net = randomise_batch_norms(Untraceable()).double().eval()
    optimized = fastcnn.optimize(net)
    report = optimized.fastcnn_report
    assert _rows(report) == [("body", "0 -> 1 -> 2", "fastcnn conv_bn_relu"),
                             ("pool", "MaxPool2d", "fastcnn.nn.MaxPool2d")]
    [left] = report.left
    assert (left.path, left.what) == ("", "Untraceable")
    assert "torch.fx cannot trace" in left.reason
    x = randn(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(optimized(x), net(x))
    torch.testing.assert_close(optimized(-x), net(-x))


def test_nothing_to_swap():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optimized = fastcnn.optimize(net)
    assert not optimized.fastcnn_report
    assert "0 swapped, 0 left" in str(optimized.fastcnn_report)
    assert [type(m) for m in optimized.modules()] == [type(m) for m in net.modules()]


def test_fastcnn_models_are_left_as_they_are():
    model = fastcnn.models.create_model("resnet18", num_classes=3)
    assert fastcnn.optimize(model).fastcnn_report.swapped == []


class Optional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

    def forward(self, x, scale=None):
        y = self.bn(self.conv(x))
        return y if scale is None else y * scale


def test_what_is_left_and_why():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4), nn.ReLU())
    assert _rows(fastcnn.optimize(net).fastcnn_report) == []
    [left] = fastcnn.optimize(net).fastcnn_report.left
    assert (left.path, left.what) == ("1", "SyncBatchNorm") and "not fused" in left.reason
    [left] = fastcnn.optimize(Optional()).fastcnn_report.left
    assert "optional argument (scale)" in left.reason
    hooked = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    calls = []
    hooked[1].register_forward_hook(lambda *args: calls.append(1))
    optimized = fastcnn.optimize(hooked)
    [left] = optimized.fastcnn_report.left
    assert (left.path, left.what) == ("1", "BatchNorm2d") and "hooks" in left.reason
    optimized(randn(1, 3, 4, 4))
    assert calls == [1]


def test_modules_replaced_after_optimize_run_as_they_are():
    """convert_sync_batchnorm (and any later swap of a submodule) is seen by the rewritten
    forwards, which look their modules up on every call."""
    net = _net().eval()
    optimized = nn.SyncBatchNorm.convert_sync_batchnorm(fastcnn.optimize(net))
    assert isinstance(optimized.block.bn1, nn.SyncBatchNorm)
    optimized.block.relu = nn.Tanh()
    net.block.relu = nn.Tanh()
    x = randn(3, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(optimized(x), net(x))


def test_training_mode_only():
    net = _net()
    optimized = fastcnn.optimize(net, training=False)
    block = type(optimized.block)
    assert block.fastcnn_original_class is Block
    x = randn(3, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(_step(optimized.train(), x), _step(net.train(), x))
    with torch.no_grad():
        torch.testing.assert_close(optimized.eval()(x), net.eval()(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_and_channels_last(dtype):
    net = _net(torch.float32).eval()
    optimized = fastcnn.optimize(net).to(memory_format=torch.channels_last)
    x = randn(3, 3, 12, 12).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(optimized(x), net(x), **tolerance(torch.float32,
                                                                     convolution=True))
        with torch.autocast("cpu", dtype=dtype):
            got, expected = optimized(x), net(x)
    torch.testing.assert_close(got, expected, **tolerance(dtype))


def test_compile_fullgraph():
    net = fastcnn.optimize(_net(torch.float32)).train()
    x = randn(3, 3, 12, 12)
    check_compiled_model_matches_eager(net.eval(), x, "cpp", net.block.conv2.weight)


def test_compiled_it_is_pytorch_composition():
    """Under torch.compile the swapped chains and layers are PyTorch's own ops, which the
    compiler fuses (the same graph as the original model's)."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    net = fastcnn.optimize(_net(torch.float32)).eval()
    torch.compile(net, backend=record, fullgraph=True)(randn(3, 3, 12, 12))
    [graph] = graphs
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert targets and not any("fastcnn" in t for t in targets)
    assert any("batch_norm" in t for t in targets) and any("local_response_norm" in t
                                                           for t in targets)


def test_distributed_data_parallel(tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0,
                            world_size=1)
    try:
        net = _net()
        ddp = nn.parallel.DistributedDataParallel(fastcnn.optimize(net))
        x = randn(3, 3, 12, 12, dtype=torch.float64)
        (loss, grads, _), (expected_loss, expected_grads, _) = (_step(ddp.train(), x),
                                                                _step(net.train(), x))
        torch.testing.assert_close(loss, expected_loss)
        torch.testing.assert_close({k.removeprefix("module."): g for k, g in grads.items()},
                                   expected_grads)
    finally:
        dist.destroy_process_group()


def test_example_input_checks_the_conversion(monkeypatch):
    x = randn(3, 3, 12, 12, dtype=torch.float64)
    net = _net().train()
    optimized = fastcnn.optimize(net, example_input=x)
    assert optimized.training and optimized.fastcnn_report.swapped
    assert torch.equal(optimized.block.bn1.running_mean, net.block.bn1.running_mean)
    broken = fused.conv_bn_act
    monkeypatch.setattr(fused, "conv_bn_act", lambda *args: broken(*args) * 1.01)
    with pytest.raises(RuntimeError, match="differs from the original"):
        fastcnn.optimize(net, inplace=True, example_input=x)
    assert all(not hasattr(m, "fastcnn_original_class") for m in net.modules())


def test_bad_arguments():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fastcnn.optimize("resnet50")
    with pytest.raises(TypeError, match="inplace must be a bool"):
        fastcnn.optimize(_net(), inplace=1)
    with pytest.raises(TypeError, match="training must be None"):
        fastcnn.optimize(_net(), training="eval")
