"""A plain supervised fit for tests that need a network that has learned something."""

from collections.abc import Iterable

import torch
from torch import nn

from tsa_ros.learning.supervised import poly_lr, set_lr, supervised_step


def fit(
    model: nn.Module,
    loader: Iterable,
    *,
    steps: int,
    lr: float = 1e-4,
    device: torch.device | str = 'cpu',
) -> list[float]:
    """Train ``model`` for ``steps`` steps with Adam and poly decay; returns the losses."""
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    batches = iter(())
    for step in range(steps):
        set_lr(optimizer, poly_lr(lr, step, steps))
        try:
            images, labels = next(batches)
        except StopIteration:  # a new epoch
            batches = iter(loader)
            images, labels = next(batches)
        losses.append(supervised_step(model, optimizer, images.to(device), labels.to(device)))
    return losses
