"""Peak tensor memory of one call, for the module benchmarks (`fastcnn bench`, benchmarks/).

On a GPU it is the CUDA caching allocator's own peak counter. On CPU, PyTorch keeps no such
counter, but its profiler, with profile_memory=True, records every allocation and free of
the CPU allocator (the "[memory]" events: a size in bytes, negative for a free, and a time);
their running sum, in time order, is the memory allocated since the call began, and its
highest value the peak. The profiler knows no size for a block allocated before it started,
so on CPU a free of such a block during the call is not subtracted (PyTorch warns about
it): callers free what they can before the call (the module benchmarks set gradients to
None first), and then both devices count the same.
"""

import contextlib
import os
import re
import sys
import tempfile

import torch

# Kineto's log lines, which it writes to stderr around every profiled call on some hosts
# ("USDT:2026-01-01 12:00:00 12:12 SyncActivityProfilerHandler.cpp:39] profiler_start").
_KINETO_LINE = re.compile(rb"^[A-Z]+:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ [\w.]+:\d+\] ")


@contextlib.contextmanager
def _without_kineto_lines():
    """Runs the body with stderr (file descriptor 2) going to a file, then writes to stderr
    what the body wrote there but kineto's log lines. KINETO_LOG_LEVEL would silence them,
    but kineto reads it only from the environment the process started with."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured if not _KINETO_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


def cpu_allocation_events(fn):
    """The sizes in bytes of the CPU allocations (positive) and frees (negative) that
    fn() made, in the order they happened. Only tensor memory of PyTorch's CPU allocator,
    made on this thread (autograd runs CPU backward here too)."""
    with _without_kineto_lines():
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                    profile_memory=True) as prof:
            fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())  # stable: events of one instant keep their order
    return [e.nbytes() for e in events]


def running_peak(sizes):
    """The highest running sum of sizes, starting from 0 (at least 0)."""
    total = peak = 0
    for size in sizes:
        total += size
        peak = max(peak, total)
    return peak


def peak_memory_bytes(fn, device):
    """The most tensor memory allocated on `device` at any moment during one call of fn(),
    above what was allocated when it began (on a GPU, freeing memory that existed before
    lowers it; on CPU that free is not seen, see the module's docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - start
    if device.type != "cpu":
        raise ValueError(f"peak memory is measured on cpu and cuda devices, not {device.type}")
    return running_peak(cpu_allocation_events(fn))


def method(device):
    """How peak_memory_bytes measures on `device`, in a few words for result files."""
    if torch.device(device).type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "torch.profiler profile_memory allocator events"
