"""Module benchmarks shared by `fastcnn bench` and benchmarks/bench_modules.py: whole layers
of classic networks (GoogLeNet's inception 3a, DenseNet-121's first dense block) and
DenseNet-121 itself, timed and their peak memory measured.

fastcnn's module runs against the torchvision module it replaces, with the same weights
(torchvision's state_dict loaded into fastcnn's), eager and under torch.compile; the
Inception module also against fastcnn's own branches joined by torch.cat, which isolates
what writing in place saves. Times come from benchmarking's interleaved samples, memory
from benchmarking_memory.peak_memory_bytes over one more call.
"""

import copy
import dataclasses
import importlib
import re
import sys

import torch
import torchvision
from torchvision.models.densenet import _DenseBlock
from torchvision.models.googlenet import Inception

import fastcnn
from fastcnn import benchmarking
from fastcnn.benchmarking_memory import method, peak_memory_bytes

MODES = benchmarking.MODES


def _inception3a_branches():
    """GoogLeNet's inception 3a (torchvision's Inception(192, 64, 96, 128, 16, 32, 32))
    from fastcnn layers: BasicConv2d is ConvBNReLU with BatchNorm's eps 0.001."""
    def conv(in_channels, out_channels, kernel_size, padding=0):
        return fastcnn.nn.ConvBNReLU(in_channels, out_channels, kernel_size, padding=padding,
                                     eps=0.001)

    return [
        conv(192, 64, 1),
        torch.nn.Sequential(conv(192, 96, 1), conv(96, 128, 3, padding=1)),
        # torchvision's "5x5" branch is a 3x3 convolution, as in its pretrained weights
        torch.nn.Sequential(conv(192, 16, 1), conv(16, 32, 3, padding=1)),
        torch.nn.Sequential(fastcnn.nn.MaxPool2d(3, 1, 1, ceil_mode=True), conv(192, 32, 1)),
    ]


class CatBranches(torch.nn.Module):
    """torch.cat([branch(x) for branch in branches], 1): InceptionConcat without its writes
    into the output, with its state_dict keys (branches.0..., branches.1...)."""

    def __init__(self, branches):
        super().__init__()
        self.branches = torch.nn.ModuleList(branches)

    def forward(self, x):
        return torch.cat([branch(x) for branch in self.branches], 1)


def _inception_keys(state):
    """torchvision Inception's state_dict with InceptionConcat's keys: branchK. is
    branches.(K-1)."""
    return {re.sub(r"^branch(\d)\.", lambda m: f"branches.{int(m.group(1)) - 1}.", key): value
            for key, value in state.items()}


def _inception3a():
    theirs = Inception(192, 64, 96, 128, 16, 32, 32)
    state = _inception_keys(theirs.state_dict())
    ours = fastcnn.nn.InceptionConcat(_inception3a_branches())
    with_cat = CatBranches(_inception3a_branches())
    for module in (ours, with_cat):
        module.load_state_dict(state, strict=True)
    return {"fastcnn": ours, "fastcnn+cat": with_cat, "eager": theirs}


def _denseblock1():
    theirs = _DenseBlock(6, 64, 4, 32, 0.0)
    ours = fastcnn.nn.DenseBlock(6, 64, 4, 32)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return {"fastcnn": ours, "eager": theirs}


def _densenet121():
    theirs = torchvision.models.densenet121(weights=None)
    ours = fastcnn.models.densenet121(num_classes=1000)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return {"fastcnn": ours, "eager": theirs}


@dataclasses.dataclass(frozen=True)
class Module:
    make: object  # make() -> {implementation: module}, all with the same weights
    chw: tuple  # the input's (C, H, W)
    implementations: tuple  # make()'s keys; "eager" is torchvision's module
    # Default batch on "cuda", on "cpu", and in the "quick" CPU subset.
    batch: dict
    # The input is a batch of images (no gradient), not the activations of a layer before.
    images: bool = False
    # Whether torch.compile is a baseline without --full (a whole network compiles for
    # minutes on CPU).
    compile_by_default: bool = True
    # The passes of the quick CPU subset; none keeps the module out of it.
    quick_modes: tuple = ("forward+backward",)
    # What torch.compile adds, each compiled from a copy of the module in COMPILED:
    # "compile", and "fastcnn+compile" where fastcnn is eager's model converted.
    compiled: tuple = ("compile",)
    # A package make() imports that may be missing (timm): without it, no cases.
    requires: str = None


COMPILED = {"compile": "eager", "fastcnn+compile": "fastcnn"}


MODULES = {
    "googlenet.inception3a": Module(
        _inception3a, (192, 28, 28), ("fastcnn", "fastcnn+cat", "eager"),
        batch=dict(cuda=128, cpu=16, quick=16)),
    "densenet121.denseblock1": Module(
        _denseblock1, (64, 56, 56), ("fastcnn", "eager"), batch=dict(cuda=64, cpu=16, quick=4)),
    "densenet121": Module(
        _densenet121, (3, 224, 224), ("fastcnn", "eager"), batch=dict(cuda=32, cpu=16, quick=2),
        images=True, compile_by_default=False),
}


@dataclasses.dataclass(frozen=True)
class ModuleCase:
    module: str
    shape: tuple
    channels_last: bool
    mode: str
    implementations: tuple
    dtype: torch.dtype = torch.float32
    spec: Module = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def layout(self):
        return "channels_last" if self.channels_last else "NCHW"

    @property
    def label(self):
        return f"{self.module} {'x'.join(map(str, self.shape))} {self.layout} {self.mode}"


def module_cases(names=None, device="cpu", batch=None, layouts=(False, True), modes=MODES,
                 quick=False, full=False, compile=True, specs=MODULES):
    """Every (module, layout, mode) case of the named modules of specs (all by default).
    quick: the CPU subset, each module's quick passes in NCHW at its quick batch without
    torch.compile; full: torch.compile for every module. batch, when given, replaces every
    module's default. Modules whose `requires` cannot be imported are left out, said in
    one line on stderr."""
    kind = "quick" if quick else ("cuda" if torch.device(device).type == "cuda" else "cpu")
    selected, skipped = [], {}
    for name in names or tuple(specs):
        spec = specs[name]
        implementations = spec.implementations
        if compile and not quick and (full or spec.compile_by_default):
            implementations += spec.compiled
        cases = [ModuleCase(name, (batch or spec.batch[kind], *spec.chw), channels_last,
                            mode, implementations, spec=spec)
                 for channels_last in layouts for mode in modes
                 if not quick or (not channels_last and mode in spec.quick_modes)]
        missing = cases and spec.requires and _unavailable(spec.requires)
        if missing:
            skipped.setdefault(missing, []).append(name)
        else:
            selected += cases
    for reason, skipped_names in skipped.items():
        print(f"skipping {', '.join(skipped_names)}: {reason}", file=sys.stderr, flush=True)
    return selected


def _unavailable(package):
    """Why package cannot be imported (missing or broken), or None."""
    try:
        importlib.import_module(package)
    except Exception as error:
        return f"cannot import {package} ({type(error).__name__}: {error})"
    return None


class Step:
    """One call of a case with one module: a training step (gradients set to None, forward
    in train mode, backward from a fixed random gradient of the output, and for a whole
    network taking images an SGD step) or inference (eval mode, no autograd). It cycles
    through `inputs` inputs, as benchmarking.build does."""

    def __init__(self, module, case, device, inputs=2):
        self.module = module
        self.train = case.mode == "forward+backward"
        wants_grad = self.train and not case.spec.images
        self.inputs = [benchmarking.make_input(case, device, requires_grad=wants_grad)
                       for _ in range(inputs)]
        self.calls = 0
        self.grad = None
        # a small learning rate: the weights stay near where they started over the runs
        self.optimizer = (torch.optim.SGD(module.parameters(), lr=1e-6)
                          if self.train and case.spec.images else None)

    def clear(self):
        for tensor in (*self.module.parameters(), *self.inputs):
            tensor.grad = None

    def run(self):
        """The call without clearing the gradients first (what peak memory measures)."""
        x = self.inputs[self.calls % len(self.inputs)]
        self.calls += 1
        if not self.train:
            with torch.no_grad():
                self.module(x)
            return
        y = self.module(x)
        outputs = list(y) if isinstance(y, tuple) else [y]  # GoogLeNet's aux logits too
        if self.grad is None:
            self.grad = [torch.randn_like(output) for output in outputs]
        torch.autograd.backward(outputs, self.grad)
        if self.optimizer is not None:
            self.optimizer.step()

    def __call__(self):
        self.clear()
        self.run()


def build(case, device, implementations=None):
    """{implementation: Step} for the case's implementations (or those given), every
    module with the same weights."""
    implementations = implementations or case.implementations
    modules = case.spec.make()
    memory_format = torch.channels_last if case.channels_last else torch.contiguous_format
    for module in modules.values():
        module.to(device=device, dtype=case.dtype, memory_format=memory_format)
        module.train(case.mode == "forward+backward")
    for name, source in COMPILED.items():
        if name in implementations:
            modules[name] = benchmarking.compiled(copy.deepcopy(modules[source]))
    return {name: Step(modules[name], case, device) for name in implementations}


def summarize(case, milliseconds, peaks, device):
    """One result row: median ms and peak bytes per implementation (None where it could
    not run), fastcnn's speedup over each baseline and its memory saving against it
    (1 - fastcnn's peak / the baseline's: above 0, fastcnn needs less); with fastcnn+compile,
    the same of fastcnn+compile against compile (speedup_compiled, memory_saving_compiled),
    as fastcnn+compile is no baseline."""
    row = {"module": case.module, "shape": list(case.shape), "layout": case.layout,
           "mode": case.mode, "dtype": str(case.dtype),
           "implementations": list(case.implementations), "peak_memory_by": method(device)}
    for name in case.implementations:
        row[f"{name}_ms"] = milliseconds.get(name)
        row[f"{name}_peak_bytes"] = peaks.get(name)
        if case.spec is not None and case.spec.images and milliseconds.get(name):
            row[f"{name}_images_per_s"] = case.shape[0] * 1000 / milliseconds[name]
    for name in case.implementations[1:]:
        if name != "fastcnn+compile" and milliseconds.get(name) is not None:
            row[f"speedup_vs_{name}"] = milliseconds[name] / milliseconds["fastcnn"]
            row[f"memory_saving_vs_{name}"] = 1 - peaks["fastcnn"] / peaks[name]
    if None not in (milliseconds.get("compile"), milliseconds.get("fastcnn+compile")):
        row["speedup_compiled"] = milliseconds["compile"] / milliseconds["fastcnn+compile"]
        row["memory_saving_compiled"] = 1 - peaks["fastcnn+compile"] / peaks["compile"]
    return row


def run(case_list, device, repeats=10, warmup=2, log=None):
    """Times every case with every implementation, in turn as benchmarking.run does, then
    measures each one's peak memory over one more call; returns one summarize() row per
    case. A baseline that fails is reported (None and its error); fastcnn failing raises."""
    results = []
    for case in case_list:
        if log:
            log(f"{case.label}: building")
        steps, errors = {}, {}
        for name, step in build(case, device).items():
            if log:
                log(f"{case.label}: {name}")
            try:
                step()  # torch.compile compiles here
                steps[name] = step
            except Exception as error:
                if name == "fastcnn":
                    raise
                errors[f"{name}_error"] = f"{type(error).__name__}: {error}"
        milliseconds = benchmarking.medians_in_turn(steps, device, repeats, warmup - 1)
        peaks = {}
        for name, step in steps.items():
            step.clear()
            peaks[name] = peak_memory_bytes(step.run, device)
        results.append({**summarize(case, milliseconds, peaks, device), **errors})
    return results


def _cell(value, fmt, unit=""):
    return "n/a" if value is None else format(value, fmt).replace("-0%", "0%") + unit


def format_table(rows):
    """A plain-text table, one line per implementation: median ms, peak MB, and on each
    baseline's line fastcnn's speedup over it and the memory it saves against it (on
    fastcnn+compile's line, its own against compile)."""
    header = ["case", "implementation", "ms", "images/s", "peak MB", "fastcnn speedup",
              "fastcnn less memory"]
    lines = []
    for row in rows:
        label = f"{row['module']} {'x'.join(map(str, row['shape']))} {row['layout']} {row['mode']}"
        for i, name in enumerate(row["implementations"]):
            peak, images = row.get(f"{name}_peak_bytes"), row.get(f"{name}_images_per_s")
            key, against = ("compiled", " vs compile") if name == "fastcnn+compile" else (
                f"vs_{name}", "")
            lines.append([
                label if i == 0 else "", name, _cell(row.get(f"{name}_ms"), ".2f"),
                "" if images is None else _cell(images, ".1f"),
                _cell(None if peak is None else peak / 1e6, ".1f"),
                "" if i == 0 else _cell(row.get(f"speedup_{key}"), ".2f", "x" + against),
                "" if i == 0 else _cell(row.get(f"memory_saving_{key}"), ".0%", against),
            ])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines)]
    render = lambda cells: "  ".join(str(c).rjust(w) if i > 1 else str(c).ljust(w)  # noqa: E731
                                     for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([render(header), "-" * len(render(header)), *map(render, lines)])


def describe(device):
    """What the module table's columns mean, for under it."""
    return ("images/s: the batch over the median time, for whole networks. peak MB: the "
            "most tensor memory allocated at once during one call, above what was allocated "
            f"before it (MB = 10^6 bytes; measured with {method(device)}). fastcnn speedup: "
            "that implementation's time over fastcnn's; fastcnn less memory: 1 - fastcnn's "
            "peak / its peak (on the line of fastcnn+compile, fastcnn.optimize's model under "
            "torch.compile: its own against compile). forward+backward is a training step "
            "(train mode, backward from a fixed gradient, and an SGD step for whole "
            "networks), forward inference (eval, no autograd).")
