"""fastcnn.benchmarking_memory on CPU: the profiler's allocator events give every allocation
and free with its exact size, in order, so their running sum is the memory in use. Each
test runs a sequence whose peak is known to the byte."""

import os

import pytest
import torch

from fastcnn.benchmarking_memory import cpu_allocation_events, peak_memory_bytes, running_peak


def test_running_peak():
    assert running_peak([]) == 0
    assert running_peak([4, 8, -4, 4, 3, -8, -4, -3]) == 15
    assert running_peak([-8, 12]) == 4  # memory freed that existed before counts against


def test_a_known_sequence_of_allocations_and_frees():
    def sequence():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 bytes
        b = torch.empty(2000, dtype=torch.float32)  # 12000 in use
        del a  # 8000
        c = torch.empty(500, dtype=torch.float64)  # 12000
        d = torch.empty(3000, dtype=torch.uint8)  # 15000: the peak
        del b, c, d

    assert cpu_allocation_events(sequence) == [4000, 8000, -4000, 4000, 3000, -8000, -4000,
                                               -3000]
    assert peak_memory_bytes(sequence, "cpu") == 15000


def test_memory_allocated_before_the_call_is_not_counted():
    kept = torch.empty(2000, dtype=torch.float32)

    def allocate():
        kept.add_(1)  # in place: no allocation
        return torch.empty(3000, dtype=torch.float32)

    assert peak_memory_bytes(allocate, "cpu") == 12000
    assert peak_memory_bytes(lambda: None, "cpu") == 0


def test_a_free_of_memory_allocated_before_the_call_is_not_seen_on_cpu():
    # The profiler has no size for a block allocated before it started: the module
    # benchmarks free such blocks (gradients) before measuring. Should PyTorch one day
    # report them, peak_memory_bytes's docstring and docs/performance.md must change.
    kept = [torch.empty(2000, dtype=torch.float32)]

    def free_then_allocate():
        kept.pop()  # frees 8000 bytes
        kept.append(torch.empty(3000, dtype=torch.float32))

    assert cpu_allocation_events(free_then_allocate) == [12000]


def test_a_training_step_counts_its_saved_tensors_and_backward():
    x = torch.randn(64, 256, requires_grad=True)
    size = x.numel() * x.element_size()

    def step():
        y = x.exp()  # kept for backward
        z = y * y
        z.backward(torch.ones_like(z))  # backward runs on this thread, its buffers count

    events = cpu_allocation_events(step)
    assert sum(events) == size  # all freed but x.grad
    # y, z, the gradient of z and a first gradient computed from it, at least, at once
    assert 4 * size <= running_peak(events) <= 6 * size


def test_exceptions_propagate_and_stderr_is_restored(capfd):
    def fails():
        os.write(2, b"a line of the caller's\n")
        raise RuntimeError("inside")

    with pytest.raises(RuntimeError, match="inside"):
        peak_memory_bytes(fails, "cpu")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "a line of the caller's\n" in err and err.endswith("after\n")
    assert "profiler_start" not in err  # kineto's own log lines are left out


def test_other_devices_are_refused():
    with pytest.raises(ValueError, match="cpu and cuda"):
        peak_memory_bytes(lambda: None, "meta")
