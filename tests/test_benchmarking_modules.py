"""fastcnn.benchmarking_modules: which cases run where, that every implementation of a
module has the same weights, and the rows' ratios."""

import pytest
import torch

from fastcnn import benchmarking_modules as bm


def test_the_quick_subset_is_one_training_step_per_module_without_compile():
    cases = bm.module_cases(quick=True)
    assert [(c.module, c.layout, c.mode) for c in cases] == [
        (name, "NCHW", "forward+backward") for name in bm.MODULES]
    for case in cases:
        assert case.shape[0] == bm.MODULES[case.module].batch["quick"]
        assert "compile" not in case.implementations
        assert case.implementations[0] == "fastcnn"


def test_torch_compile_of_the_whole_network_only_with_full():
    def compiled(**kwargs):
        return {c.module for c in bm.module_cases(**kwargs) if "compile" in c.implementations}

    assert compiled(device="cuda") == {"googlenet.inception3a", "densenet121.denseblock1"}
    assert compiled(device="cuda", full=True) == set(bm.MODULES)
    assert compiled(full=True, compile=False) == set()
    cases = bm.module_cases(device="cuda", batch=3)
    assert len(cases) == 4 * len(bm.MODULES)  # both layouts, both passes
    assert {c.shape[0] for c in cases} == {3}


@pytest.mark.parametrize("name", list(bm.MODULES))
def test_every_implementation_computes_torchvisions_module(name):
    modules = bm.MODULES[name].make()
    assert tuple(modules) == bm.MODULES[name].implementations
    theirs = modules["eager"].eval()
    x = torch.randn(1, *bm.MODULES[name].chw)
    with torch.no_grad():
        expected = theirs(x)
        for implementation, module in modules.items():
            torch.testing.assert_close(module.eval()(x), expected, rtol=1e-4, atol=1e-5,
                                       msg=implementation)


def test_a_row_gives_times_peaks_and_ratios():
    case = bm.module_cases(names=("googlenet.inception3a",), batch=1, layouts=(False,),
                           modes=("forward+backward",), compile=False)[0]
    [row] = bm.run([case], "cpu", repeats=1, warmup=1)
    assert row["implementations"] == ["fastcnn", "fastcnn+cat", "eager"]
    for name in row["implementations"]:
        assert row[f"{name}_ms"] > 0 and row[f"{name}_peak_bytes"] > 0
    for name in ("fastcnn+cat", "eager"):
        assert row[f"speedup_vs_{name}"] == row[f"{name}_ms"] / row["fastcnn_ms"]
        assert row[f"memory_saving_vs_{name}"] == (
            1 - row["fastcnn_peak_bytes"] / row[f"{name}_peak_bytes"])
    table = bm.format_table([row])
    assert "googlenet.inception3a 1x192x28x28 NCHW forward+backward" in table
    assert "fastcnn+cat" in table and "fastcnn less memory" in table


def test_peak_memory_counts_the_same_call_alike_every_time():
    case = bm.module_cases(names=("densenet121.denseblock1",), batch=1, layouts=(False,),
                           modes=("forward+backward",), compile=False)[0]
    for step in bm.build(case, "cpu").values():
        step()
        peaks = set()
        for _ in range(2):
            step.clear()
            peaks.add(bm.peak_memory_bytes(step.run, "cpu"))
        assert len(peaks) == 1
