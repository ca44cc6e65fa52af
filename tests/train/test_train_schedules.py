"""Step and cosine learning-rate schedules, stepped per epoch."""

import math

import pytest
import torch

from fastcnn.train import make_scheduler


def rates(name, epochs, **kwargs):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    scheduler = make_scheduler(name, optimizer, epochs, **kwargs)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_step_divides_by_ten_at_half_and_three_quarters():
    assert rates("step", 8) == pytest.approx([0.1] * 4 + [0.01] * 2 + [0.001] * 2)
    assert rates("step", 10, milestones=(0.3,), gamma=0.5) == \
        pytest.approx([0.1] * 3 + [0.05] * 7)


def test_cosine_goes_from_the_rate_to_zero():
    seen = rates("cosine", 10)
    assert seen == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 10)) for e in range(10)])
    assert isinstance(make_scheduler("cosine", torch.optim.SGD(
        [torch.zeros(1, requires_grad=True)], lr=1), 3),
        torch.optim.lr_scheduler.CosineAnnealingLR)


def test_unknown_schedule():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    with pytest.raises(ValueError, match="unknown schedule 'linear'; choose one of step, cos"):
        make_scheduler("linear", optimizer, 5)
