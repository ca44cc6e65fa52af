"""Benchmark cases and timing shared by `fastcnn bench` and benchmarks/ (pytest-benchmark):
one list of real layer shapes, one way to build each implementation, one timer.

Every case is timed for fastcnn and for its baselines in the same run: native PyTorch in
eager mode and under torch.compile. Memory-bound ops also report achieved bandwidth and its
fraction of a device-to-device copy of the same bytes, measured in the same run. Whole
modules, timed and their peak memory measured, are in benchmarking_modules.py.
"""

import dataclasses
import functools
import math
import os
import pathlib
import platform
import statistics
import subprocess
import time

import torch
import torch.nn.functional as F

import fastcnn
from fastcnn import ops

IMPLEMENTATIONS = ("fastcnn", "eager", "compile")
MODES = ("forward", "forward+backward")


@dataclasses.dataclass(frozen=True)
class Op:
    ours: object  # fastcnn's function of one tensor
    theirs: object  # PyTorch's function of one tensor
    layers: dict  # layer name -> (C, H, W) of its input, from the networks that use the op
    # The fewest bytes one call must move, min_bytes(input shape, bytes per element, mode),
    # or None for a compute-bound op (no bandwidth is reported).
    min_bytes: object
    # (layer, layout) of the cases timed by default on CPU (`fastcnn bench`, `pytest
    # benchmarks/`); None: all of them.
    quick: tuple = None
    # For an op with parameters: make(case, device, ours) -> the function of one tensor
    # that fastcnn (ours=True) or PyTorch runs for the case, with modules of its own.
    # It replaces ours and theirs.
    make: object = None


# AlexNet's LRN: size 5, alpha 1e-4, beta 0.75, k 2 (Krizhevsky et al., 2012).
_LRN_ARGS = dict(size=5, alpha=1e-4, beta=0.75, k=2.0)


def _lrn_bytes(shape, element_size, mode):
    # forward reads x, writes y; backward reads x and dy, writes dx
    return {"forward": 2, "forward+backward": 5}[mode] * math.prod(shape) * element_size


# Overlapping pooling, 3x3 windows at stride 2 (Krizhevsky et al., 2012, section 3.4).
_MAX_POOL_ARGS = dict(kernel_size=3, stride=2)


def _max_pool_bytes(shape, element_size, mode):
    n, c, h, w = shape
    inputs = n * c * h * w
    outputs = n * c * ops.pooling.pooled_size(h, 3, 2, 0, 1, False) * \
        ops.pooling.pooled_size(w, 3, 2, 0, 1, False)
    if mode == "forward":  # reads x, writes y
        return (inputs + outputs) * element_size
    # forward also writes a byte per output; backward reads dy and those bytes, writes dx
    return 2 * (inputs + outputs) * element_size + 2 * outputs


def _relu_lrn_max_pool_torch(x, size, alpha, beta, k, kernel_size, stride):
    """ReLU -> LRN -> max-pool from PyTorch's functions: the fused op's baseline."""
    z = F.local_response_norm(torch.relu(x), size, alpha, beta, k)
    return F.max_pool2d(z, kernel_size, stride)


def _relu_lrn_max_pool_bytes(shape, element_size, mode):
    # max-pooling's traffic, with backward reading x as well (the ReLU and LRN recomputed)
    extra = 0 if mode == "forward" else math.prod(shape) * element_size
    return _max_pool_bytes(shape, element_size, mode) + extra


def _global_avg_pool_bytes(shape, element_size, mode):
    # forward reads x (its output is N x C); backward writes dx
    return {"forward": 1, "forward+backward": 2}[mode] * math.prod(shape) * element_size

# Conv -> BatchNorm -> ReLU layers of ResNet-50 (torchvision's names): layer -> conv
# arguments; the ReLU follows the addition of the block's identity where "residual" is set.
_CONV_BN_RELU_LAYERS = {
    "resnet50.layer1.0.conv2": dict(in_channels=64, out_channels=64, kernel_size=3, padding=1),
    "resnet50.layer1.1.conv1": dict(in_channels=256, out_channels=64, kernel_size=1),
    "resnet50.layer1.0.conv3": dict(in_channels=64, out_channels=256, kernel_size=1,
                                    residual=True),
}


def _conv_bn_relu(case, device, ours):
    """Conv2d -> BatchNorm2d (+ identity) -> ReLU for one case: inference (eval mode, no
    autograd) for "forward", a training step for "forward+backward"."""
    spec = dict(_CONV_BN_RELU_LAYERS[case.layer])
    with_residual = spec.pop("residual", False)
    conv = torch.nn.Conv2d(**spec, bias=False)
    bn = torch.nn.BatchNorm2d(spec["out_channels"])
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    for module in (conv, bn):
        module.to(device=device, dtype=case.dtype, memory_format=memory_format)
        module.train(case.mode == "forward+backward")
    residual = None
    if with_residual:
        n, _, h, w = case.shape
        residual = torch.randn(n, spec["out_channels"], h, w, dtype=case.dtype, device=device)
        residual = residual.contiguous(memory_format=memory_format)

    def eager(x):
        z = bn(conv(x))
        if residual is not None:
            z = z + residual
        return torch.relu(z)

    fn = eager
    if ours:
        fn = functools.partial(fastcnn.functional.conv_bn_relu, conv=conv, bn=bn,
                               residual=residual)
    if case.mode == "forward+backward":
        return fn
    return torch.no_grad()(fn)


OPS = {
    "conv_bn_relu": Op(
        ours=None,
        theirs=None,
        layers={name: (spec["in_channels"], 56, 56)
                for name, spec in _CONV_BN_RELU_LAYERS.items()},
        min_bytes=None,
        quick=(("resnet50.layer1.0.conv2", "NCHW"), ("resnet50.layer1.1.conv1", "NCHW")),
        make=_conv_bn_relu,
    ),
    "lrn": Op(
        ours=functools.partial(fastcnn.functional.local_response_norm, **_LRN_ARGS),
        theirs=functools.partial(F.local_response_norm, **_LRN_ARGS),
        layers={
            "alexnet.conv1": (96, 55, 55),  # after conv1 + ReLU
            "alexnet.conv2": (256, 27, 27),  # after conv2 + ReLU
        },
        min_bytes=_lrn_bytes,
        quick=(("alexnet.conv1", "NCHW"), ("alexnet.conv1", "channels_last")),
    ),
    "max_pool": Op(
        ours=functools.partial(fastcnn.functional.max_pool2d, **_MAX_POOL_ARGS),
        theirs=functools.partial(F.max_pool2d, **_MAX_POOL_ARGS),
        layers={
            "alexnet.pool1": (96, 55, 55),  # after conv1's LRN
            "alexnet.pool2": (256, 27, 27),  # after conv2's LRN
        },
        min_bytes=_max_pool_bytes,
        quick=(("alexnet.pool1", "NCHW"), ("alexnet.pool1", "channels_last")),
    ),
    "relu_lrn_max_pool": Op(
        ours=functools.partial(fastcnn.functional.relu_lrn_max_pool2d, **_LRN_ARGS,
                               **_MAX_POOL_ARGS),
        theirs=functools.partial(_relu_lrn_max_pool_torch, **_LRN_ARGS, **_MAX_POOL_ARGS),
        layers={
            "alexnet.conv1": (96, 55, 55),  # conv1's output, before its ReLU
            "alexnet.conv2": (256, 27, 27),  # conv2's output, before its ReLU
        },
        min_bytes=_relu_lrn_max_pool_bytes,
        quick=(("alexnet.conv1", "NCHW"),),
    ),
    "global_avg_pool": Op(
        ours=fastcnn.functional.global_avg_pool2d,
        theirs=functools.partial(F.adaptive_avg_pool2d, output_size=1),
        layers={
            "resnet50.avgpool": (2048, 7, 7),  # after the last bottleneck
            "densenet121.avgpool": (1024, 7, 7),  # after the last dense block
        },
        min_bytes=_global_avg_pool_bytes,
        quick=(("resnet50.avgpool", "NCHW"), ("resnet50.avgpool", "channels_last")),
    ),
}


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    layer: str
    shape: tuple
    channels_last: bool
    mode: str
    dtype: torch.dtype = torch.float32

    @property
    def layout(self):
        return "channels_last" if self.channels_last else "NCHW"

    @property
    def label(self):
        return f"{self.op} {self.layer} {'x'.join(map(str, self.shape))} {self.layout} {self.mode}"


def cases(ops=tuple(OPS), batch=16, layouts=(False, True), modes=MODES, quick=False):
    """Every (op, layer, layout, mode) case; with quick, only each op's quick ones."""
    selected = [
        Case(op, layer, (batch, *chw), channels_last, mode)
        for op in ops
        for layer, chw in OPS[op].layers.items()
        for channels_last in layouts
        for mode in modes
    ]
    if quick:
        selected = [c for c in selected
                    if OPS[c.op].quick is None or (c.layer, c.layout) in OPS[c.op].quick]
    return selected


def make_input(case, device, requires_grad=False):
    x = torch.randn(case.shape, dtype=case.dtype, device=device)
    if case.channels_last:
        x = x.to(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def compiled(fn):
    # Every case (shape, layout, with or without grad) is a specialisation of the same
    # function: allow enough of them that none silently falls back to eager.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, fullgraph=True, dynamic=False)


def build(case, implementation, device, inputs=2):
    """A callable running one step of `case` with `implementation`. It cycles through
    `inputs` fresh input tensors so that a GPU's L2 cache cannot hold the working set."""
    op = OPS[case.op]
    if op.make is not None:
        fn = op.make(case, device, ours=implementation == "fastcnn")
    else:
        fn = op.ours if implementation == "fastcnn" else op.theirs
    if implementation == "compile":
        fn = compiled(fn)
    backward = case.mode == "forward+backward"
    xs = [make_input(case, device, requires_grad=backward) for _ in range(inputs)]
    state = {"i": 0, "grad": None}

    def step():
        x = xs[state["i"] % len(xs)]
        state["i"] += 1
        y = fn(x)
        if backward:
            if state["grad"] is None:
                state["grad"] = torch.randn_like(y)
            x.grad = None
            y.backward(state["grad"])

    return step


# On a GPU, each timing sample covers this many back-to-back calls, so that launch
# latency overlaps with work as it does in a real network.
CALLS_PER_GPU_SAMPLE = 10


def sample(step, device):
    """Seconds per call of step() in one timing sample. On CPU a sample is one call timed
    by the wall clock; on a GPU it is CALLS_PER_GPU_SAMPLE calls between two CUDA events."""
    if torch.device(device).type != "cuda":
        begin = time.perf_counter()
        step()
        return time.perf_counter() - begin
    with torch.cuda.device(device):
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(CALLS_PER_GPU_SAMPLE):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / CALLS_PER_GPU_SAMPLE


def measure(step, device, repeats=10, warmup=2):
    """Median seconds per call of step(), over `repeats` samples after `warmup` calls."""
    for _ in range(warmup):
        step()
    return statistics.median(sample(step, device) for _ in range(repeats))


def copy_seconds(shape, dtype, device, repeats=10):
    """Median time of a device-to-device copy of one tensor of `shape` (read + write)."""
    src = torch.randn(shape, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    return measure(lambda: dst.copy_(src), device, repeats=repeats)


def summarize(case, milliseconds, copy_ms):
    """One result row: `milliseconds` maps implementation -> median ms (None if it could
    not run); copy_ms is a same-size device-to-device copy measured in the same run."""
    row = {"op": case.op, "layer": case.layer, "shape": list(case.shape),
           "layout": case.layout, "mode": case.mode, "dtype": str(case.dtype)}
    ours = milliseconds["fastcnn"]
    for implementation, ms in milliseconds.items():
        row[f"{implementation}_ms"] = ms
        if implementation != "fastcnn" and ms is not None:
            row[f"speedup_vs_{implementation}"] = ms / ours
    element_size = torch.finfo(case.dtype).bits // 8
    row["copy_gb_per_s"] = 2 * element_size * math.prod(case.shape) / copy_ms / 1e6
    min_bytes = OPS[case.op].min_bytes
    if min_bytes is None:  # compute-bound: bandwidth says nothing
        row["gb_per_s"] = row["fraction_of_copy_bandwidth"] = None
        return row
    row["gb_per_s"] = min_bytes(case.shape, element_size, case.mode) / ours / 1e6
    row["fraction_of_copy_bandwidth"] = row["gb_per_s"] / row["copy_gb_per_s"]
    return row


def medians_in_turn(steps, device, repeats, warmup_rounds):
    """Median milliseconds per call of each of `steps` (name -> step, each called once
    already), their warm-up calls and samples taken in turn: a, b, c, then c, b, a, ..."""
    samples = {name: [] for name in steps}
    order = list(steps.items())
    for round_ in range(warmup_rounds + repeats):
        for name, step in (order if round_ % 2 == 0 else reversed(order)):
            if round_ < warmup_rounds:
                step()
            else:
                samples[name].append(sample(step, device))
    return {name: statistics.median(times) * 1e3 for name, times in samples.items()}


def run(case_list, device, implementations=IMPLEMENTATIONS, repeats=10, log=None,
        warmup=2):
    """Times every case with every implementation; returns one summarize() row per case.

    Each implementation is built and called once (torch.compile compiles there); then
    they take their `warmup` calls and their samples in turn (fastcnn, eager, compile,
    fastcnn, ...; the order reversed every other round), so that a machine whose speed
    drifts during the run (shared hosts do) slows them alike, and the ratios between them
    hold better than the times themselves."""
    results = []
    copies = {}
    for case in case_list:
        milliseconds, errors, steps = {}, {}, {}
        for implementation in implementations:
            if log:
                log(f"{case.label}: {implementation}")
            try:
                step = build(case, implementation, device)
                step()  # torch.compile compiles here
                steps[implementation] = step
            except Exception as error:  # a baseline that cannot run here is reported
                if implementation == "fastcnn":
                    raise
                milliseconds[implementation] = None
                errors[f"{implementation}_error"] = f"{type(error).__name__}: {error}"
        milliseconds.update(medians_in_turn(steps, device, repeats, warmup - 1))
        key = (case.shape, case.dtype)
        if key not in copies:
            copies[key] = copy_seconds(case.shape, case.dtype, device) * 1e3
        results.append({**summarize(case, milliseconds, copies[key]), **errors})
    return results


def _source_revision():
    """The git commit of the fastcnn source tree, when it is a checkout (else None)."""
    root = pathlib.Path(fastcnn.__file__).resolve().parent.parent
    try:
        result = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


# Settings of the C allocator that change CPU timings: glibc's malloc gives tensors above
# its mmap threshold (at most 32 MB unless set) fresh pages from the kernel on every
# allocation, and page faults on them can cost more than the op; these variables (or
# another malloc preloaded) keep freed memory for reuse instead.
_ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                        "LD_PRELOAD")


def allocator():
    """The host allocator the CPU timings ran with: the C library, and the variables of
    _ALLOCATOR_VARIABLES that are set."""
    library, version = platform.libc_ver()
    settings = [f"{name}={os.environ[name]}" for name in _ALLOCATOR_VARIABLES
                if os.environ.get(name)]
    name = f"{library} {version}".strip() or "unknown C library"
    return f"{name} malloc, " + (", ".join(settings) if settings else "default settings")


def environment(device):
    """What the numbers were measured on."""
    info = fastcnn.backends.info()
    device = torch.device(device)
    return {
        "commit": _source_revision(),
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({info['cpu']}, {info['cpu_threads']} threads)"),
        "fastcnn": info["fastcnn"],
        "torch": info["torch"],
        "triton": info["triton"],
        "python": info["python"],
        "allocator": allocator() if device.type == "cpu" else None,
        "date": time.strftime("%Y-%m-%d"),
    }


def _ms(value):
    return "n/a" if value is None else f"{value:8.2f}"


def _ratio(value):
    return "n/a" if value is None else f"{value:6.1f}x"


def _bandwidth(row):
    if row["gb_per_s"] is None:
        return "n/a"
    return f"{row['gb_per_s']:6.1f} ({row['fraction_of_copy_bandwidth']:4.0%})"


def format_table(results, implementations=IMPLEMENTATIONS):
    """A plain-text table: median times, fastcnn's speedup over each baseline, bandwidth."""
    header = ["case", *(f"{name} ms" for name in implementations),
              *(f"vs {name}" for name in implementations[1:]), "GB/s (of copy)"]
    lines = []
    for row in results:
        label = f"{row['layer']} {'x'.join(map(str, row['shape']))} {row['layout']} {row['mode']}"
        lines.append([
            label,
            *(_ms(row.get(f"{name}_ms")) for name in implementations),
            *(_ratio(row.get(f"speedup_vs_{name}")) for name in implementations[1:]),
            _bandwidth(row),
        ])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(cells, widths)))
    rule = "-" * len(render(header))
    return "\n".join([render(header), rule, *map(render, lines)])
