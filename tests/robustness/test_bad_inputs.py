"""Every op's table of bad and edge calls (cases_*.py), in child processes: each call
matches PyTorch's result or refusal, with no crash and no hang (harness.py)."""

import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

TABLES = ["cases_max_pool", "cases_global_avg_pool", "cases_lrn", "cases_conv_bn_relu",
          "cases_concat"]
MIN_CASES = 50  # the robustness issue's bar per op


@pytest.mark.parametrize("module", TABLES)
def test_bad_and_edge_calls_match_pytorch(module):
    cases = importlib.import_module(module).CASES
    names = [case.name for case in cases]
    assert len(set(names)) == len(names), "case names must be distinct"
    assert len(cases) >= MIN_CASES
    problems = harness.run_in_children(module, len(cases))
    report = "\n".join(f"  {names[i]}: {problem}" for i, problem in sorted(problems.items()))
    assert not problems, f"{len(problems)} of {len(cases)} calls differ from PyTorch:\n{report}"


def test_harness_survives_a_crash_and_a_hang(tmp_path, monkeypatch):
    """A case that kills its process and one that never returns each fail alone, and the
    cases after them still run."""
    table = tmp_path / "cases_broken.py"
    table.write_text(
        "import os, signal, time\n"
        "import torch\n"
        "from harness import Case\n"
        "ok = Case('ok', lambda t: torch.ones(2), lambda t: torch.ones(2))\n"
        "crash = Case('crash', lambda t: os.kill(os.getpid(), signal.SIGSEGV),\n"
        "             lambda t: torch.ones(2))\n"
        "hang = Case('hang', lambda t: time.sleep(3600), lambda t: torch.ones(2))\n"
        "wrong = Case('wrong', lambda t: torch.zeros(2), lambda t: torch.ones(2))\n"
        "CASES = [ok, crash, ok, hang, wrong, ok]\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setattr(harness, "TIME_LIMIT_S", 20)
    problems = harness.run_in_children("cases_broken", 6)
    assert sorted(problems) == [1, 3, 4]
    assert "died" in problems[1] and "hang" in problems[3] and "differs" in problems[4]
