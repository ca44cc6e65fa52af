"""fastcnn.benchmarking_models: the quick subset, that both implementations of each
model compute the same network with the same weights, and the fastcnn.optimize rows
(their compiled copy, their ratios against compile, timm being optional)."""

import re
import sys

import pytest
import torch

from fastcnn import benchmarking_models as bmodels
from fastcnn import benchmarking_modules as bm

ZOO = [name for name in bmodels.MODELS if "." not in name]
OPTIMIZED = [name for name in bmodels.MODELS if "." in name]


def test_the_quick_subset_is_inference_at_batch_8():
    cases = bm.module_cases(quick=True, specs=bmodels.MODELS)
    assert [(c.module, c.shape[0], c.layout, c.mode, c.implementations) for c in cases] == [
        (name, 8, "NCHW", "forward", ("fastcnn", "eager"))
        for name in ("lenet5", "alexnet", "googlenet", "resnet50", "torchvision.googlenet",
                     "torchvision.resnet50")]
    full = bm.module_cases(device="cuda", full=True, specs=bmodels.MODELS)
    assert len(full) == 4 * len(bmodels.MODELS)
    assert all("compile" in c.implementations for c in full)


def test_the_optimize_rows_compile_both_copies_only_when_asked():
    assert sorted(OPTIMIZED) == sorted(
        [f"torchvision.{name}" for name in ("alexnet", "googlenet", "inception_v3", "resnet50",
                                             "vgg16", "densenet121")]
        + [f"timm.{name}" for name in ("resnet50", "seresnet50", "efficientnet_b0")])
    assert bmodels.MODELS["torchvision.inception_v3"].chw == (3, 299, 299)
    for kwargs in (dict(), dict(device="cuda"), dict(full=True, compile=False)):
        cases = bm.module_cases(names=OPTIMIZED, specs=bmodels.MODELS, **kwargs)
        assert {c.implementations for c in cases} == {("fastcnn", "eager")}
    cases = bm.module_cases(names=OPTIMIZED, full=True, specs=bmodels.MODELS)
    assert len(cases) == 4 * len(OPTIMIZED)
    assert {c.implementations for c in cases} == {
        ("fastcnn", "eager", "compile", "fastcnn+compile")}


@pytest.mark.parametrize("name", ZOO)
def test_both_implementations_compute_the_same_network(name):
    twins = bmodels.twins(name)
    assert tuple(twins) == bmodels.MODELS[name].implementations
    assert not any(type(m).__module__.startswith("fastcnn.nn")
                   for m in twins["eager"].modules())
    x = torch.randn(1, *bmodels.MODELS[name].chw)
    with torch.no_grad():
        expected = twins["eager"].eval()(x)
        torch.testing.assert_close(twins["fastcnn"].eval()(x), expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("name", OPTIMIZED)
def test_optimize_converts_a_copy_that_computes_the_same(name):
    if name.startswith("timm."):
        pytest.importorskip("timm")
    modules = bmodels.MODELS[name].make()
    assert tuple(modules) == bmodels.MODELS[name].implementations
    ours, theirs = modules["fastcnn"], modules["eager"]
    assert ours.fastcnn_report.swapped and not hasattr(theirs, "fastcnn_report")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(1, 3, 96, 96)  # smaller than the benchmark's, enough for every model
    with torch.no_grad():
        expected = theirs.eval()(x)
        torch.testing.assert_close(ours.eval()(x), expected, rtol=1e-4,
                                   atol=1e-4 * expected.abs().max().item())


def test_fastcnn_compile_is_a_copy_of_the_converted_model(monkeypatch):
    monkeypatch.setattr(bm.benchmarking, "compiled", lambda module: module)  # no compiling
    case = bm.module_cases(names=("torchvision.googlenet",), batch=1, layouts=(True,),
                           modes=("forward",), full=True, specs=bmodels.MODELS)[0]
    steps = bm.build(case, "cpu")
    assert tuple(steps) == ("fastcnn", "eager", "compile", "fastcnn+compile")
    ours, copy = steps["fastcnn"].module, steps["fastcnn+compile"].module
    assert copy is not ours and copy.fastcnn_report.swapped
    assert not any(p is q for p, q in zip(ours.parameters(), copy.parameters()))
    x = steps["fastcnn"].inputs[0]
    assert x.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), ours(x))
        torch.testing.assert_close(steps["compile"].module(x), steps["eager"].module(x))


def test_a_row_reports_fastcnn_compile_against_compile():
    case = bm.module_cases(names=("torchvision.resnet50",), layouts=(False,),
                           modes=("forward",), full=True, specs=bmodels.MODELS)[0]
    milliseconds = {"fastcnn": 10.0, "eager": 12.0, "compile": 9.0, "fastcnn+compile": 6.0}
    peaks = {"fastcnn": 1e5, "eager": 2e5, "compile": 1.5e5, "fastcnn+compile": 7.5e4}
    row = bm.summarize(case, milliseconds, peaks, "cpu")
    assert row["speedup_vs_eager"] == 1.2 and row["speedup_vs_compile"] == 0.9
    assert row["speedup_compiled"] == 1.5 and row["memory_saving_compiled"] == 0.5
    assert "speedup_vs_fastcnn+compile" not in row
    lines = bm.format_table([row]).splitlines()
    assert lines[2].startswith("torchvision.resnet50 8x3x224x224 NCHW forward  fastcnn")
    assert re.split(r"\s{2,}", lines[-1].strip()) == [
        "fastcnn+compile", "6.00", "1333.3", "0.1", "1.50x vs compile", "50% vs compile"]
    del milliseconds["fastcnn+compile"], peaks["fastcnn+compile"]  # it failed: n/a
    row = bm.summarize(case, milliseconds, peaks, "cpu")
    assert "speedup_compiled" not in row
    assert re.split(r"\s{2,}", bm.format_table([row]).splitlines()[-1].strip()) == [
        "fastcnn+compile", "n/a", "n/a", "n/a", "n/a"]

def test_the_timm_rows_are_skipped_without_timm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm fails
    cases = bm.module_cases(full=True, specs=bmodels.MODELS)
    assert {c.module for c in cases} == set(bmodels.MODELS) - {
        "timm.resnet50", "timm.seresnet50", "timm.efficientnet_b0"}
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("skipping timm.resnet50, timm.seresnet50, timm.efficientnet_b0: "
                           "cannot import timm")
    # not a word when no timm row was asked for
    assert bm.module_cases(quick=True, specs=bmodels.MODELS)
    assert capsys.readouterr().err == ""


def test_a_training_step_of_a_network_steps_its_optimizer():
    """forward+backward of a whole network is a training step with SGD: the weights move;
    inference leaves them."""
    case = bm.module_cases(names=("lenet5",), layouts=(False,), modes=("forward+backward",),
                           compile=False, specs=bmodels.MODELS)[0]
    step = bm.build(case, "cpu", ("fastcnn",))["fastcnn"]
    before = [p.detach().clone() for p in step.module.parameters()]
    step()
    assert step.optimizer is not None
    assert any(not torch.equal(a, p) for a, p in zip(before, step.module.parameters()))
    row = bm.summarize(case, {"fastcnn": 4.0}, {"fastcnn": 1e5}, "cpu")
    assert row["fastcnn_images_per_s"] == case.shape[0] * 1000 / 4.0
