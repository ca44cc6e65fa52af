"""The `fastcnn` command line (run as `python -m fastcnn`, as the console script does)."""

import importlib.util
import json
import pathlib
import subprocess
import sys

from fastcnn import benchmarking, benchmarking_modules

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fastcnn(*args):
    return subprocess.run([sys.executable, "-m", "fastcnn", *args], capture_output=True,
                          text=True, timeout=600)


def test_info_reports_versions_and_backends():
    result = fastcnn("info")
    assert result.returncode == 0, result.stderr
    assert "fastcnn " in result.stdout
    for name in ("reference", "cpp", "triton"):
        assert name in result.stdout


def test_info_json():
    result = fastcnn("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info["backends"]) == {"reference", "cpp", "triton"}


def test_bench_prints_a_table_and_writes_json(tmp_path):
    path = tmp_path / "results.json"
    result = fastcnn("bench", "--device", "cpu", "--batch", "1", "--repeats", "2", "--layout",
                     "nchw", "--no-compile", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert "alexnet.conv1 1x96x55x55 NCHW forward" in result.stdout
    assert "vs eager" in result.stdout
    data = json.loads(path.read_text())
    assert data["environment"]["torch"]
    assert data["environment"]["allocator"] == benchmarking.allocator()
    rows = data["results"]
    # on CPU, by default, each op's quick cases
    assert {(r["op"], r["layer"], r["mode"]) for r in rows} == {
        (c.op, c.layer, c.mode) for c in benchmarking.cases(batch=1, layouts=(False,), quick=True)}
    assert {r["op"] for r in rows} == set(benchmarking.OPS)
    for row in rows:
        assert row["fastcnn_ms"] > 0 and row["eager_ms"] > 0
        assert row["speedup_vs_eager"] == row["eager_ms"] / row["fastcnn_ms"]
        assert (row["gb_per_s"] is None) == (row["op"] == "conv_bn_relu")

    # then, by default, each module's quick case: a training step, with its peak memory
    assert "googlenet.inception3a 1x192x28x28 NCHW forward+backward" in result.stdout
    assert "fastcnn less memory" in result.stdout
    modules = data["modules"]
    assert [(r["module"], r["layout"], r["mode"]) for r in modules] == [
        (name, "NCHW", "forward+backward") for name in benchmarking_modules.MODULES]
    for row in modules:
        assert row["shape"][0] == 1
        assert row["implementations"][:1] == ["fastcnn"] and "eager" in row["implementations"]
        for name in row["implementations"]:
            assert row[f"{name}_ms"] > 0 and row[f"{name}_peak_bytes"] > 0
        assert row["memory_saving_vs_eager"] == (
            1 - row["fastcnn_peak_bytes"] / row["eager_peak_bytes"])

    # the README tables are rendered from such files
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    report.ROOT = tmp_path
    table = report.table(path)
    assert data["environment"]["allocator"] in table.splitlines()[0]
    assert "| lrn | alexnet.conv1 | 1x96x55x55 | NCHW | forward |" in table
    assert "| conv_bn_relu | resnet50.layer1.0.conv2 | 1x64x56x56 | NCHW | forward |" in table
    assert "| densenet121.denseblock1 | 1x64x56x56 | NCHW | forward+backward | eager |" in table


def test_bench_ops_times_every_case_of_an_op():
    result = fastcnn("bench", "--ops", "conv_bn_relu", "--batch", "1", "--repeats", "1",
                     "--layout", "channels_last", "--no-compile")
    assert result.returncode == 0, result.stderr
    for layer in ("resnet50.layer1.0.conv2", "resnet50.layer1.1.conv1",
                  "resnet50.layer1.0.conv3"):
        for mode in ("forward", "forward+backward"):
            assert f"{layer} 1x" in result.stdout and f"channels_last {mode}" in result.stdout
    assert "alexnet" not in result.stdout
    assert "densenet121" not in result.stdout  # naming ops leaves the modules out


def test_bench_modules_times_only_the_modules_named(tmp_path):
    path = tmp_path / "results.json"
    result = fastcnn("bench", "--modules", "googlenet.inception3a", "--batch", "1",
                     "--repeats", "1", "--layout", "channels_last", "--mode", "forward",
                     "--no-compile", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert "googlenet.inception3a 1x192x28x28 channels_last forward" in result.stdout
    assert "resnet50" not in result.stdout and "densenet121" not in result.stdout
    data = json.loads(path.read_text())
    assert data["results"] == []
    [row] = data["modules"]
    assert row["implementations"] == ["fastcnn", "fastcnn+cat", "eager"]
    # kineto's log lines, which the CPU memory measurement provokes, are left out
    assert "profiler_start" not in result.stderr


def test_bad_arguments_exit_with_a_message():
    result = fastcnn("bench", "--ops", "softmax")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    result = fastcnn("bench", "--modules", "densenet121", "--no-modules")
    assert result.returncode == 2
    assert "not allowed with" in result.stderr


def test_allocator_names_the_settings_that_change_cpu_timings(monkeypatch):
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES",
                 "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert benchmarking.allocator().endswith("malloc, default settings")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1000000000")
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    assert benchmarking.allocator().endswith(
        "malloc, MALLOC_MMAP_THRESHOLD_=1000000000, LD_PRELOAD=libjemalloc.so.2")


def test_run_warms_up_and_samples_the_implementations_in_turn(monkeypatch):
    calls = []
    monkeypatch.setattr(benchmarking, "build",
                        lambda case, implementation, device: lambda: calls.append(implementation))
    monkeypatch.setattr(benchmarking, "copy_seconds", lambda shape, dtype, device: 1e-3)
    case = benchmarking.cases(ops=("conv_bn_relu",), batch=1, layouts=(False,),
                              modes=("forward",))[0]
    warmup = 4
    rows = benchmarking.run([case], "cpu", implementations=("fastcnn", "eager"), repeats=3,
                            warmup=warmup)
    assert len(rows) == 1 and rows[0]["fastcnn_ms"] > 0
    # one call each as it is built, then warm-up and timed rounds alike, in turn
    rounds = [["fastcnn", "eager"] if r % 2 == 0 else ["eager", "fastcnn"]
              for r in range(warmup - 1 + 3)]
    assert calls == ["fastcnn", "eager"] + [name for names in rounds for name in names]
