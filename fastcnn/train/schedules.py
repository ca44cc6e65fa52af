"""Learning-rate schedules of the papers, stepped once per epoch: "step" (divide by 10 at
fixed points, as AlexNet, VGG and ResNet did) and "cosine" (Loshchilov & Hutter, 2017,
SGDR without restarts), as torch.optim.lr_scheduler objects."""

import torch

SCHEDULES = ("step", "cosine")


def make_scheduler(name, optimizer, epochs, milestones=(0.5, 0.75), gamma=0.1):
    """A scheduler for `epochs` epochs, to step once after each.

    "step": MultiStepLR multiplying the rate by gamma (0.1) when each milestone is reached;
    milestones are fractions of the run (default half and three quarters, the points where
    ResNet's CIFAR-10 schedule divides by 10). "cosine": CosineAnnealingLR from the initial
    rate down to 0 at the last epoch.
    """
    if name == "step":
        steps = sorted({max(1, round(f * epochs)) for f in milestones})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma=gamma)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
