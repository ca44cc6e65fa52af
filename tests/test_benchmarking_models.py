"""fastcnn.benchmarking_models: the quick subset, and that both implementations of each
model compute the same network with the same weights."""

import pytest
import torch

from fastcnn import benchmarking_models as bmodels
from fastcnn import benchmarking_modules as bm


def test_the_quick_subset_is_inference_of_four_models_at_batch_8():
    cases = bm.module_cases(quick=True, specs=bmodels.MODELS)
    assert [(c.module, c.shape[0], c.layout, c.mode, c.implementations) for c in cases] == [
        (name, 8, "NCHW", "forward", ("fastcnn", "eager"))
        for name in ("lenet5", "alexnet", "googlenet", "resnet50")]
    full = bm.module_cases(device="cuda", full=True, specs=bmodels.MODELS)
    assert len(full) == 4 * len(bmodels.MODELS)
    assert all("compile" in c.implementations for c in full)


@pytest.mark.parametrize("name", list(bmodels.MODELS))
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
