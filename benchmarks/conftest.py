"""pytest-benchmark settings for fastcnn's benchmarks.

`pytest benchmarks/` times a quick subset on CPU (each op's `quick` cases and each module's
training step at a small batch, as `fastcnn bench`) and every case on a GPU; --full times
every case anywhere. On a GPU a round is CALLS_PER_GPU_SAMPLE back-to-back calls
(pytest-benchmark's own table shows rounds; the summary, per call). After the run, a table
gives each op case's median for fastcnn, eager PyTorch and torch.compile, fastcnn's
speedups, and its bandwidth against a copy measured in the same run; a second table gives
each module's (bench_modules.py) medians and peak memory, a third each zoo model's
(bench_models.py: on CPU, inference of a few models at batch 8 unless --full; with
--full, fastcnn.optimize's rows add fastcnn+compile).
--save-results PATH writes them as JSON (the format of benchmarks/results/*.json and
`fastcnn bench --json`).
"""

import json

import pytest
import torch

from fastcnn import benchmarking, benchmarking_models, benchmarking_modules
from fastcnn.benchmarking_memory import peak_memory_bytes

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_medians = {}  # Case -> {implementation: median ms}
_module_runs = {}  # ModuleCase -> {implementation: (median ms, peak bytes)}, models too


def pytest_addoption(parser):
    group = parser.getgroup("fastcnn")
    group.addoption("--full", action="store_true", help="every case, not the CPU subset")
    group.addoption("--save-results", metavar="PATH", help="write the summary as JSON")


def benchmark_cases(config_full):
    if DEVICE == "cuda" or config_full:
        return benchmarking.cases(batch=128 if DEVICE == "cuda" else 16)
    return benchmarking.cases(batch=16, quick=True)


def benchmark_module_cases(config_full, specs=benchmarking_modules.MODULES):
    quick = DEVICE == "cpu" and not config_full
    return benchmarking_modules.module_cases(device=DEVICE, quick=quick, full=config_full,
                                             specs=specs)


def pytest_generate_tests(metafunc):
    for kind, specs in (("module", benchmarking_modules.MODULES),
                        ("model", benchmarking_models.MODELS)):
        if f"{kind}_case" in metafunc.fixturenames:
            pairs = [(case, implementation)
                     for case in benchmark_module_cases(metafunc.config.getoption("full"), specs)
                     for implementation in case.implementations]
            metafunc.parametrize((f"{kind}_case", f"{kind}_implementation"), pairs,
                                 ids=[f"{c.label}-{i}".replace(" ", "-") for c, i in pairs])
    if "case" in metafunc.fixturenames:
        op = metafunc.module.OP
        selected = [c for c in benchmark_cases(metafunc.config.getoption("full")) if c.op == op]
        metafunc.parametrize("case", selected, ids=[c.label.replace(" ", "-") for c in selected])
    if "implementation" in metafunc.fixturenames:
        metafunc.parametrize("implementation", benchmarking.IMPLEMENTATIONS)


@pytest.fixture
def time_case(benchmark):
    """Benchmarks one case with one implementation and keeps its median for the summary."""

    def run(case, implementation):
        step = benchmarking.build(case, implementation, DEVICE)
        calls = 1
        if DEVICE == "cuda":  # a round is several back-to-back calls, then a synchronize
            calls = benchmarking.CALLS_PER_GPU_SAMPLE
            one = step

            def step():
                for _ in range(calls):
                    one()
                torch.cuda.synchronize()

        benchmark.group = case.label
        benchmark.extra_info.update(op=case.op, layer=case.layer, layout=case.layout,
                                    mode=case.mode, implementation=implementation,
                                    calls_per_round=calls)
        benchmark.pedantic(step, rounds=10 if DEVICE == "cpu" else 30,
                           warmup_rounds=3, iterations=1)
        median_ms = benchmark.stats.stats.median * 1e3 / calls
        _medians.setdefault(case, {})[implementation] = median_ms

    return run


@pytest.fixture
def time_module(benchmark):
    """Benchmarks one module case with one implementation, then measures its peak memory
    over one more call (outside the timed rounds), and keeps both for the summary."""

    def run(case, implementation):
        step = benchmarking_modules.build(case, DEVICE, (implementation,))[implementation]
        calls = 1
        timed = step
        if DEVICE == "cuda":
            calls = benchmarking.CALLS_PER_GPU_SAMPLE

            def timed():
                for _ in range(calls):
                    step()
                torch.cuda.synchronize()

        benchmark.group = case.label
        benchmark.extra_info.update(module=case.module, layout=case.layout, mode=case.mode,
                                    implementation=implementation, calls_per_round=calls)
        benchmark.pedantic(timed, rounds=10 if DEVICE == "cpu" else 30, warmup_rounds=3,
                           iterations=1)
        step.clear()
        peak = peak_memory_bytes(step.run, DEVICE)
        benchmark.extra_info["peak_bytes"] = peak
        median_ms = benchmark.stats.stats.median * 1e3 / calls
        _module_runs.setdefault(case, {})[implementation] = (median_ms, peak)

    return run


def _module_rows(specs):
    rows = []
    for case, runs in _module_runs.items():
        if "fastcnn" in runs and case.module in specs:
            milliseconds = {name: ms for name, (ms, _) in runs.items()}
            peaks = {name: peak for name, (_, peak) in runs.items()}
            rows.append(benchmarking_modules.summarize(case, milliseconds, peaks, DEVICE))
    return rows


def _op_rows():
    rows = []
    copies = {}
    for case, milliseconds in _medians.items():
        if "fastcnn" not in milliseconds:
            continue
        key = (case.shape, case.dtype)
        if key not in copies:
            copies[key] = benchmarking.copy_seconds(case.shape, case.dtype, DEVICE) * 1e3
        rows.append(benchmarking.summarize(case, milliseconds, copies[key]))
    return rows


def pytest_terminal_summary(terminalreporter, config):
    rows = _op_rows()
    module_rows = _module_rows(benchmarking_modules.MODULES)
    model_rows = _module_rows(benchmarking_models.MODELS)
    if rows:
        implementations = [i for i in benchmarking.IMPLEMENTATIONS
                           if any(row.get(f"{i}_ms") is not None for row in rows)]
        terminalreporter.write_sep("=", f"fastcnn vs PyTorch on {DEVICE} (medians, same run)")
        terminalreporter.write_line(benchmarking.format_table(rows, tuple(implementations)))
    if module_rows:
        terminalreporter.write_sep("=", f"fastcnn's modules vs torchvision's on {DEVICE} "
                                        "(medians and peak memory)")
        terminalreporter.write_line(benchmarking_modules.format_table(module_rows))
        terminalreporter.write_line(benchmarking_modules.describe(DEVICE))
    if model_rows:
        terminalreporter.write_sep("=", f"fastcnn's zoo vs the same networks on PyTorch's "
                                        f"layers on {DEVICE} (medians and peak memory)")
        terminalreporter.write_line(benchmarking_modules.format_table(model_rows))
        terminalreporter.write_line(benchmarking_modules.describe(DEVICE))
    path = config.getoption("save_results")
    if path and (rows or module_rows or model_rows):
        with open(path, "w") as f:
            json.dump({"environment": benchmarking.environment(DEVICE), "results": rows,
                       "modules": module_rows, "models": model_rows}, f, indent=2)
            f.write("\n")
        terminalreporter.write_line(f"wrote {path}")
