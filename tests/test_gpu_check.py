"""benchmarks/gpu_check.sh, the prepared run of the GPU tests and benchmarks, on a machine
with no usable CUDA GPU: it says so in one line, exits 0 and writes nothing.

CUDA_VISIBLE_DEVICES="" hides any GPU, so that this holds on a GPU machine too, where the
script's own test phase runs this file. TRITON_INTERPRET=1, which tests/conftest.py sets
without a GPU, reaches the script and must change nothing."""

import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RESULTS = ROOT / "benchmarks" / "results"
NO_GPU = "gpu_check: no usable CUDA GPU here"


def run_check(tmp_path, python):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": python, "OUT": str(out)}
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    return result, out


def results_files():
    return {path.name: path.stat().st_mtime_ns for path in RESULTS.iterdir()}


def assert_stopped_at_the_probe(result, out, before):
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith(NO_GPU)] == [lines[-1]], result.stdout
    assert "install:" not in result.stdout
    assert results_files() == before
    assert list(out.iterdir()) == []


def test_without_a_gpu_it_says_so_and_does_nothing(tmp_path):
    before = results_files()
    result, out = run_check(tmp_path, sys.executable)
    assert_stopped_at_the_probe(result, out, before)
    assert "torch.cuda.is_available() is False" in result.stdout


def test_without_torch_it_says_so_too(tmp_path):
    # the same interpreter, isolated from its site-packages: no torch to import
    python = tmp_path / "python-without-torch"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I -S "$@"\n')
    python.chmod(0o755)
    before = results_files()
    result, out = run_check(tmp_path, str(python))
    assert_stopped_at_the_probe(result, out, before)
    assert "torch: not importable" in result.stdout


def test_the_whole_script_parses():
    # bash reads a script as it runs it: the run above never reaches the GPU phases
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout
