"""pytest-benchmark settings for fastcnn's benchmarks.

`pytest benchmarks/` times a quick subset on CPU (each op's `quick` cases, as `fastcnn bench`)
and every case on a GPU; --full times every case anywhere. On a GPU a round is CALLS_PER_GPU_SAMPLE
back-to-back calls (pytest-benchmark's own table shows rounds; the summary, per call). After the run, a table gives each case's median
for fastcnn, eager PyTorch and torch.compile, fastcnn's speedups, and its bandwidth against
a copy measured in the same run. --save-results PATH writes that table as JSON (the format
of benchmarks/results/*.json and `fastcnn bench --json`).
"""

import json

import pytest
import torch

from fastcnn import benchmarking

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_medians = {}  # Case -> {implementation: median ms}


def pytest_addoption(parser):
    group = parser.getgroup("fastcnn")
    group.addoption("--full", action="store_true", help="every case, not the CPU subset")
    group.addoption("--save-results", metavar="PATH", help="write the summary as JSON")


def benchmark_cases(config_full):
    if DEVICE == "cuda" or config_full:
        return benchmarking.cases(batch=128 if DEVICE == "cuda" else 16)
    return benchmarking.cases(batch=16, quick=True)


def pytest_generate_tests(metafunc):
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


def pytest_terminal_summary(terminalreporter, config):
    complete = {case: ms for case, ms in _medians.items() if "fastcnn" in ms}
    if not complete:
        return
    rows = []
    copies = {}
    for case, milliseconds in complete.items():
        key = (case.shape, case.dtype)
        if key not in copies:
            copies[key] = benchmarking.copy_seconds(case.shape, case.dtype, DEVICE) * 1e3
        rows.append(benchmarking.summarize(case, milliseconds, copies[key]))
    implementations = [i for i in benchmarking.IMPLEMENTATIONS
                       if any(row.get(f"{i}_ms") is not None for row in rows)]
    terminalreporter.write_sep("=", f"fastcnn vs PyTorch on {DEVICE} (medians, same run)")
    terminalreporter.write_line(benchmarking.format_table(rows, tuple(implementations)))
    path = config.getoption("save_results")
    if path:
        with open(path, "w") as f:
            json.dump({"environment": benchmarking.environment(DEVICE), "results": rows}, f,
                      indent=2)
            f.write("\n")
        terminalreporter.write_line(f"wrote {path}")
